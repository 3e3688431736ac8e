"""Drive a running `biomistral serve` with the official `openai` Python client.

Run by the Rust test `openai_python_client` (tests/serve.rs) when BIOMISTRAL_PYTHON is set:
    python tests/openai_client.py --base-url http://127.0.0.1:PORT/v1 --api-key KEY
Prints ALL OK and exits 0 when every check passes.
"""
import argparse
import math
import sys

import openai


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", default="none")
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=300)

    models = client.models.list()
    model = models.data[0].id
    check(len(models.data) == 1, f"models.list -> {model}")

    msgs = [{"role": "user", "content": "What is a fever?"}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0)
    text = r.choices[0].message.content
    check(isinstance(text, str) and r.choices[0].finish_reason in ("stop", "length"), "chat completion")
    check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "chat usage")

    r2 = client.chat.completions.create(
        model=model, messages=msgs, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2
    )
    lp = r2.choices[0].logprobs.content
    check(len(lp) > 0 and all(len(t.top_logprobs) == 2 for t in lp), "chat logprobs")
    check(all(t.logprob <= 0 for t in lp), "logprobs are <= 0")

    stream = client.chat.completions.create(
        model=model, messages=msgs, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check("".join(pieces) == text, "streamed chat equals the whole reply")
    check(finish in ("stop", "length") and usage is not None, "stream finish_reason and usage")

    prompt = "The kidneys filter"
    c = client.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    ch = c.choices[0]
    check(ch.text == prompt, "completions echo returns the prompt")
    tl = ch.logprobs.token_logprobs
    check(tl[0] is None and all(isinstance(x, float) and x <= 0 and math.isfinite(x) for x in tl[1:]),
          "echo logprobs: null first, then finite")

    c2 = client.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0, stream=True)
    check(len("".join(x.choices[0].text for x in c2 if x.choices)) > 0, "streamed completion")

    def raises(exc, what, **kw):
        try:
            client.chat.completions.create(**kw)
        except exc as e:
            check(True, f"{what} -> {type(e).__name__} {getattr(e, 'status_code', '')}")
            return
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"{what}: expected {exc.__name__}, got {type(e).__name__}: {e}")
        raise AssertionError(f"{what}: no exception")

    raises(openai.NotFoundError, "unknown model", model="no-such-model", messages=msgs, max_tokens=1)
    raises(openai.BadRequestError, "empty messages", model=model, messages=[], max_tokens=1)
    raises(openai.BadRequestError, "negative max_tokens", model=model, messages=msgs, max_tokens=-3)
    raises(openai.BadRequestError, "temperature out of range", model=model, messages=msgs, temperature=7)
    bad = openai.OpenAI(base_url=a.base_url, api_key="wrong-key", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("wrong key accepted")
    except openai.AuthenticationError:
        check(True, "wrong key -> AuthenticationError")
    print("ALL OK")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED:", e)
        sys.exit(1)
