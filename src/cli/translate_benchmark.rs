//! `biomistral translate-benchmark`: write `<data-dir>/<lang>/<task>.json` for `eval --lang`.
use biomistral::eval::translate::{translate_task, TranslateConfig};
use biomistral::eval::TaskId;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct TranslateArgs {
    /// Target language.
    #[arg(long, value_parser = ["fr", "zh", "ar", "de", "pt", "ru", "es"])]
    pub to: String,
    /// OpenAI-compatible server (`http://host:8000/v1`); the API key is read from $OPENAI_API_KEY.
    #[arg(long)]
    pub endpoint: String,
    /// Model name sent to the server.
    #[arg(long)]
    pub model: String,
    /// Comma-separated task ids, or `all`.
    #[arg(long, default_value = "all")]
    pub tasks: String,
    /// Benchmark files (default: $BIOMISTRAL_DATA, else ../shared/data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output folder (default: <data-dir>/<lang>); re-running resumes from its cache files.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Translate only the first N items of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Extra attempts per request after transient HTTP failures.
    #[arg(long, default_value_t = 3)]
    pub retries: usize,
}

pub fn run(args: TranslateArgs) -> anyhow::Result<()> {
    let data_dir = super::eval::data_dir(&args.data_dir);
    let cfg = TranslateConfig {
        out: args.out.clone().unwrap_or_else(|| data_dir.join(&args.to)),
        to: args.to,
        endpoint: args.endpoint,
        model: args.model,
        api_key: std::env::var("OPENAI_API_KEY").ok().filter(|k| !k.is_empty()),
        data_dir,
        limit: args.limit,
        retries: args.retries,
    };
    for task in TaskId::parse_list(&args.tasks)? {
        let s = translate_task(&cfg, task)?;
        println!(
            "{:28} {} item(s), {} from cache, {} flagged broken -> {}",
            task.name(),
            s.items,
            s.from_cache,
            s.broken.len(),
            cfg.out.join(format!("{}.json", task.name())).display()
        );
        for (id, why) in &s.broken {
            eprintln!("  {id}: {why}");
        }
    }
    Ok(())
}
