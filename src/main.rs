//! The `biomistral` binary: parse the command line, run one command, map errors to an exit code.
mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
