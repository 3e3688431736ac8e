//! Command-line interface: one file per command, each an argument struct plus a call into the library.
use clap::{Parser, Subcommand};

mod bench;
mod bench_bandwidth;
mod bench_quant_table;
mod bench_serve;
mod chat;
mod common;
mod convert;
mod eval;
mod eval_report;
mod generate;
mod init_random;
mod inspect;
mod merge;
mod merge_lora;
mod perplexity;
mod pretrain;
mod quantize;
mod score;
mod serve;
mod sft;
mod translate_benchmark;

#[derive(Parser)]
#[command(
    name = "biomistral",
    version,
    about = "Run, quantize, merge, evaluate, fine-tune and serve Mistral-architecture medical LLMs"
)]
pub struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate text from a prompt or a conversation.
    Generate(generate::GenerateArgs),
    /// Chat interactively with a model.
    Chat(chat::ChatArgs),
    /// Describe a model: architecture, tensors, files, tokenizer.
    Inspect(inspect::InspectArgs),
    /// Perplexity over a text file or per document over JSONL.
    Perplexity(perplexity::PerplexityArgs),
    /// Dump logits for prompts in the transformers reference layout.
    Score(score::ScoreArgs),
    /// Convert GGUF <-> Hugging Face folder.
    Convert(convert::ConvertArgs),
    /// Prompt-processing and generation speed (llama-bench style).
    Bench(bench::BenchArgs),
    /// Serve an OpenAI-compatible API and a chat page over HTTP.
    Serve(serve::ServeArgs),
    /// Memory bandwidth (STREAM-like triad and read-only sum): the ceiling for generation.
    BenchBandwidth(bench_bandwidth::BandwidthArgs),
    /// Load an OpenAI-compatible server with concurrent streams: aggregate t/s and TTFT.
    BenchServe(bench_serve::BenchServeArgs),
    /// Quantize a model: AutoAWQ int4 (awq search or rtn) or GGUF block types.
    Quantize(quantize::QuantizeArgs),
    /// Write a random-weight model of a real shape.
    InitRandom(init_random::InitRandomArgs),
    /// Run the medical benchmark (MMLU medical, MedQA, PubMedQA, MedMCQA) with BioMistral's protocol.
    Eval(Box<eval::EvalArgs>),
    /// Combine finished eval runs into one report (and optionally ensemble them).
    EvalReport(eval_report::EvalReportArgs),
    /// Machine-translate benchmark tasks through an OpenAI-compatible chat endpoint (for `eval --lang`).
    TranslateBenchmark(translate_benchmark::TranslateArgs),
    /// Continued pre-training on raw text (LoRA or full fine-tuning).
    Pretrain(pretrain::PretrainArgs),
    /// Supervised fine-tuning on a benchmark task or chat JSONL.
    Sft(sft::SftArgs),
    /// Merge a LoRA adapter into its base model.
    MergeLora(merge_lora::MergeLoraArgs),
    /// Print the version.
    Version,
    /// Merge models from a mergekit-style YAML config.
    Merge(merge::MergeArgs),
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(a) => common::in_pool(a.model.threads, || generate::run(a)),
        Command::Chat(a) => common::in_pool(a.model.threads, || chat::run(a)),
        Command::Inspect(a) => inspect::run(a),
        Command::Perplexity(a) => common::in_pool(a.model.threads, || perplexity::run(a)),
        Command::Score(a) => common::in_pool(a.model.threads, || score::run(a)),
        Command::Convert(a) => convert::run(a),
        Command::Bench(a) => bench::run(a),
        Command::InitRandom(a) => init_random::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Serve(a) => serve::run(a),
        Command::BenchServe(a) => bench_serve::run(a),
        Command::BenchBandwidth(a) => bench_bandwidth::run(a),
        Command::Eval(a) => common::in_pool(a.threads, || eval::run(*a)),
        Command::EvalReport(a) => eval_report::run(a),
        Command::TranslateBenchmark(a) => translate_benchmark::run(a),
        Command::Pretrain(a) => common::in_pool(a.model.threads, || pretrain::run(a)),
        Command::Sft(a) => common::in_pool(a.model.threads, || sft::run(a)),
        Command::MergeLora(a) => merge_lora::run(a),
        Command::Version => {
            println!("biomistral {}", biomistral::version());
            Ok(())
        }
        Command::Merge(args) => merge::run(args),
    }
}
