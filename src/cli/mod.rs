//! Command-line interface: one file per command, each an argument struct plus a call into the library.
use clap::{Parser, Subcommand};

pub mod merge;

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
        Command::Version => {
            println!("biomistral {}", biomistral::version());
            Ok(())
        }
        Command::Merge(args) => merge::run(args),
    }
}
