//! `biomistral bench-serve`: load an OpenAI-compatible server (ours, llama.cpp's, vLLM) with N
//! concurrent streaming chat requests and report aggregate generated tokens/s and
//! time-to-first-token percentiles. Any server speaking the API can be measured the same way, so
//! the comparison is like for like.
use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// Base URL of the API, e.g. http://127.0.0.1:8080/v1
    #[arg(long)]
    pub endpoint: String,
    /// `model` sent with each request (default: the first id the server lists at /models).
    #[arg(long)]
    pub model: Option<String>,
    /// Concurrency levels to measure, one after another.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub streams: Vec<usize>,
    /// Requests each stream sends one after another.
    #[arg(long, default_value_t = 4)]
    pub requests_per_stream: usize,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Ask the server to ignore end-of-sequence so every reply has max_tokens tokens
    /// (llama.cpp and vLLM honour `ignore_eos`; servers that do not simply stop early).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Bearer token, if the server wants one.
    #[arg(long, env = "BIOMISTRAL_API_KEY")]
    pub api_key: Option<String>,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Print one JSON object per concurrency level instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Short medical questions; request i gets `PROMPTS[i % len]` so streams do not all share one
/// prompt (which would flatter a server's prefix cache).
const PROMPTS: [&str; 8] = [
    "What are the first-line treatments for community-acquired pneumonia in adults?",
    "Explain the mechanism of action of metformin.",
    "List the common symptoms of hypothyroidism.",
    "What is the difference between type 1 and type 2 diabetes?",
    "How is acute myocardial infarction diagnosed?",
    "Describe the stages of chronic kidney disease.",
    "What are the risk factors for osteoporosis?",
    "Summarise the management of anaphylaxis.",
];

struct Outcome {
    ttft: Duration,
    total: Duration,
    tokens: usize,
}

/// One streaming chat request; tokens are counted as content-bearing SSE chunks (one token per
/// chunk for both our server and llama.cpp's).
fn one_request(args: &BenchServeArgs, model: &str, agent: &ureq::Agent, prompt: &str) -> anyhow::Result<Outcome> {
    let url = format!("{}/chat/completions", args.endpoint.trim_end_matches('/'));
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "stream": true,
    });
    if args.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    let mut req = agent.post(&url).set("Content-Type", "application/json");
    if let Some(k) = &args.api_key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let start = Instant::now();
    let resp = req.send_string(&body.to_string()).map_err(|e| match e {
        ureq::Error::Status(code, r) => anyhow::anyhow!("{url}: HTTP {code}: {}", r.into_string().unwrap_or_default()),
        e => anyhow::anyhow!("{url}: {e}"),
    })?;
    let mut ttft = None;
    let mut tokens = 0;
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.with_context(|| format!("{url}: reading the stream"))?;
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).with_context(|| format!("{url}: bad SSE event {data:?}"))?;
        let has_text = v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|s| !s.is_empty());
        if has_text {
            tokens += 1;
            ttft.get_or_insert_with(|| start.elapsed());
        }
    }
    let total = start.elapsed();
    Ok(Outcome {
        ttft: ttft.unwrap_or(total),
        total,
        tokens,
    })
}

/// The first model id the server lists.
fn served_model(args: &BenchServeArgs) -> anyhow::Result<String> {
    let url = format!("{}/models", args.endpoint.trim_end_matches('/'));
    let mut req = ureq::get(&url);
    if let Some(k) = &args.api_key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let v: Value = req
        .call()
        .with_context(|| format!("{url}: listing models (or pass --model)"))?
        .into_json()
        .with_context(|| format!("{url}: not JSON"))?;
    v["data"][0]["id"]
        .as_str()
        .map(String::from)
        .with_context(|| format!("{url}: no model listed (pass --model)"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn level(args: &BenchServeArgs, model: &str, streams: usize) -> anyhow::Result<Value> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(args.timeout))
        .build();
    let start = Instant::now();
    let results: Vec<anyhow::Result<Vec<Outcome>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..streams)
            .map(|k| {
                let agent = agent.clone();
                s.spawn(move || {
                    (0..args.requests_per_stream)
                        .map(|r| one_request(args, model, &agent, PROMPTS[(k + r * streams) % PROMPTS.len()]))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
            })
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let mut outcomes = Vec::new();
    for r in results {
        outcomes.extend(r?);
    }
    let tokens: usize = outcomes.iter().map(|o| o.tokens).sum();
    let mut ttft: Vec<f64> = outcomes.iter().map(|o| o.ttft.as_secs_f64() * 1e3).collect();
    ttft.sort_by(f64::total_cmp);
    let mean_latency = outcomes.iter().map(|o| o.total.as_secs_f64()).sum::<f64>() / outcomes.len().max(1) as f64;
    Ok(json!({
        "endpoint": args.endpoint,
        "model": model,
        "streams": streams,
        "requests": outcomes.len(),
        "max_tokens": args.max_tokens,
        "generated_tokens": tokens,
        "wall_s": wall,
        "aggregate_tps": tokens as f64 / wall,
        "ttft_p50_ms": percentile(&ttft, 50.0),
        "ttft_p99_ms": percentile(&ttft, 99.0),
        "mean_request_s": mean_latency,
    }))
}

pub fn run(args: BenchServeArgs) -> anyhow::Result<()> {
    if args.streams.contains(&0) || args.requests_per_stream == 0 || args.max_tokens == 0 {
        anyhow::bail!("--streams, --requests-per-stream and --max-tokens must be >= 1");
    }
    let model = match &args.model {
        Some(m) => m.clone(),
        None => served_model(&args)?,
    };
    if !args.json {
        println!("| streams | requests | tokens | aggregate t/s | TTFT p50 (ms) | TTFT p99 (ms) |");
        println!("|---|---|---|---|---|---|");
    }
    for &n in &args.streams {
        let v = level(&args, &model, n)?;
        if args.json {
            println!("{v}");
        } else {
            println!(
                "| {n} | {} | {} | {:.1} | {:.0} | {:.0} |",
                v["requests"],
                v["generated_tokens"],
                v["aggregate_tps"].as_f64().unwrap_or(f64::NAN),
                v["ttft_p50_ms"].as_f64().unwrap_or(f64::NAN),
                v["ttft_p99_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
