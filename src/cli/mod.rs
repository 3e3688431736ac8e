//! Command-line interface: one file per command, each an argument struct plus a call into the library.
use clap::{Parser, Subcommand};

mod eval;
mod eval_report;
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
    /// Print the crate version.
    Version,
    /// Run the medical benchmark (MMLU medical, MedQA, PubMedQA, MedMCQA) with BioMistral's protocol.
    Eval(Box<eval::EvalArgs>),
    /// Combine finished eval runs into one report (and optionally ensemble them).
    EvalReport(eval_report::EvalReportArgs),
    /// Machine-translate benchmark tasks through an OpenAI-compatible chat endpoint (for `eval --lang`).
    TranslateBenchmark(translate_benchmark::TranslateArgs),
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
        Command::Version => {
            println!("biomistral {}", biomistral::version());
            Ok(())
        }
        Command::Eval(args) => eval::run(*args),
        Command::EvalReport(args) => eval_report::run(args),
        Command::TranslateBenchmark(args) => translate_benchmark::run(args),
    }
}
