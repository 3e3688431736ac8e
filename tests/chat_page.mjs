// Headless Chromium check of the chat page (run by the Rust test `chat_page_in_chromium` when
// BIOMISTRAL_CHROMIUM_TEST=1):
//   node tests/chat_page.mjs http://127.0.0.1:PORT API_KEY
// Needs playwright-core (BIOMISTRAL_PLAYWRIGHT_DIR: a folder where `npm i playwright-core` ran)
// and Chromium (BIOMISTRAL_CHROMIUM, default /usr/bin/chromium). Prints ALL OK on success.
import { createRequire } from "node:module";

const require = createRequire((process.env.BIOMISTRAL_PLAYWRIGHT_DIR || process.cwd()) + "/");
const { chromium } = require("playwright-core");
const [base, apiKey] = process.argv.slice(2);

function check(cond, what) {
  if (!cond) throw new Error("FAILED: " + what);
  console.log("ok:", what);
}

const browser = await chromium.launch({
  executablePath: process.env.BIOMISTRAL_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(120000);
  await page.goto(base + "/");
  check((await page.textContent("#advisory")).includes("research tool"), "advisory banner shown");
  if (apiKey) {
    await page.fill("#apikey", apiKey);
    await page.dispatchEvent("#apikey", "change");
  }
  await page.waitForFunction(() => !["…", ""].includes(document.getElementById("model").textContent));
  check(!(await page.textContent("#model")).includes("API key"), "model listed with the pasted key");
  await page.fill("#temperature", "0");
  await page.fill("#max_tokens", "16");
  // Count DOM updates of the reply: more than one means it streamed in pieces.
  await page.evaluate(() => {
    window.updates = 0;
    new MutationObserver(() => window.updates++).observe(document.getElementById("log"),
      { childList: true, subtree: true, characterData: true });
  });
  await page.fill("#input", "What is a fever?");
  await page.click("#send");
  await page.waitForFunction(() => document.getElementById("status").textContent === "done");
  const reply = await page.textContent(".msg.assistant .text");
  console.log("reply:", JSON.stringify(reply));
  check(reply.length > 0, "a reply arrived");
  check(await page.evaluate(() => window.updates > 3), "the reply streamed in several pieces");
  check((await page.$$(".msg.error")).length === 0, "no error shown");

  // Stop button: a long reply is cut short.
  await page.fill("#max_tokens", "400");
  await page.fill("#input", "Write a long essay about the history of medicine.");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll(".msg.assistant .text")[1]?.textContent.length > 0);
  await page.click("#stop");
  await page.waitForFunction(() => document.getElementById("status").textContent === "stopped");
  check(true, "stop button ends generation");
  console.log("ALL OK");
} finally {
  await browser.close();
}
