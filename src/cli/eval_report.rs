//! `biomistral eval-report`: combine finished eval runs into one table and charts, optionally ensembling them.
use anyhow::bail;
use biomistral::eval::report;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalReportArgs {
    /// Run folders written by `biomistral eval` (each holds results.json and samples_<task>.jsonl).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Also ensemble the runs (sum of per-letter probabilities, arg-max) into OUT/ensemble/.
    #[arg(long)]
    pub ensemble: bool,
    /// Where report.md, accuracy.svg and reliability.svg go.
    #[arg(long, default_value = "eval-report")]
    pub out: PathBuf,
}

pub fn run(args: EvalReportArgs) -> anyhow::Result<()> {
    let mut runs = args
        .dirs
        .iter()
        .map(|d| report::read_results(d))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&args.out)?;
    if args.ensemble {
        if runs.len() < 2 {
            bail!("--ensemble needs at least two run folders");
        }
        let ens = report::ensemble_runs(&runs, &args.out.join("ensemble"))?;
        runs.push(ens);
    }
    report::write_report(&args.out, &runs)?;
    print!("{}", report::markdown(&runs));
    Ok(())
}
