//! The `biomistral` binary: parse the command line, run one command, map errors to an exit code.
mod cli;

use clap::Parser;

#[global_allocator]
static ALLOC: biomistral::hugepages::HugePageAlloc = biomistral::hugepages::HugePageAlloc;

fn main() {
    if std::env::var_os("BIOMISTRAL_HUGEPAGES").is_some_and(|v| v == "0") {
        biomistral::hugepages::set_enabled(false);
    }
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
