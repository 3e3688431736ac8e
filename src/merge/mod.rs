//! Model merging, reading mergekit's YAML configs (`biomistral merge CONFIG.yml --out DIR`).
//!
//! Methods: linear, slerp, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs,
//! breadcrumbs_ties, model_stock and passthrough (layer stacking through `slices`).
//!
//! # Semantics (mergekit 0.1.5 is the reference)
//! * `dtype:` casts every input tensor before the math. The task-arithmetic family then computes
//!   *in* that dtype (each torch op rounds to bf16/f16); linear, slerp and model_stock compute in
//!   f32 and round the result. Output dtype: `--dtype` > `out_dtype` > `dtype` > the input's.
//! * Parameter precedence: slice source > `models:` entry > slice > top level > method default.
//!   Filtered lists are scanned in order; the first entry whose `filter` is a substring of the
//!   tensor name (or absent / `*`) applies; if none does, lookup falls through to the next scope.
//!   Gradients are interpolated at `t = j/(L-1)` over a slice of `L` layers; tensors outside the
//!   layers (embeddings, final norm, lm_head) are evaluated at `t = 0` without slice or slice-source parameters.
//! * Defaults: linear normalize=true; task_arithmetic normalize=false; ties normalize=true,
//!   rescale=false; dare_* normalize=false, rescale=true; breadcrumbs* normalize=false,
//!   rescale=false, gamma=0.01; lambda=1.
//! * TIES keeps `max(1, int(density*numel))` largest |delta|. Which of several elements tied at
//!   the cut-off survive is decided by replaying torch's CPU argsort (libstdc++ introsort, see
//!   [`torch_sort`]); this matched mergekit's reference output exactly. Breadcrumbs uses the same
//!   replay of torch's ascending sort.
//! * SLERP works on the whole tensor flattened, falling back to linear interpolation when
//!   |cos| > 0.9995.
//!
//! # Where mergekit versions disagree
//! * DARE rescale: until early 2024 mergekit divided kept deltas by `density`
//!   (`rescaled_random`); since then (0.0.5+, and 0.1.5) `rescale: true` scales the kept deltas
//!   so their L1 norm equals the unmasked delta's. We follow 0.1.5 (L1 matching). For the same
//!   seed the two agree only in expectation.
//! * Default `normalize` for dare_ties changed from true to false and `rescale` became a
//!   parameter in the same period; 0.1.5's defaults are used. Set them explicitly for older configs.
//! * Breadcrumbs with `gamma` small enough that `int(numel*gamma) == 0` keeps the top of the range
//!   here; some mergekit releases dropped everything in that case.
//! * DARE draws are reproducible with `--seed` but use our own RNG (ChaCha via `rand`), so they
//!   match mergekit's statistics, not its exact masks (torch's RNG stream is not portable).
pub mod config;
pub mod execute;
pub mod input;
pub mod interpolate;
pub mod methods;
pub mod output;
pub mod params;
pub mod plan;
mod slices;
pub mod task_arithmetic;
pub mod tensor;
pub mod torch_sort;
pub mod writer;

use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tensor::Dtype;

pub use input::{locate_model, resolve_model};

#[derive(Clone, Debug)]
pub struct MergeOptions {
    pub config: PathBuf,
    pub out_dir: PathBuf,
    /// Maximum bytes of tensor data per shard.
    pub shard_size: u64,
    pub copy_tokenizer: bool,
    /// Overrides the config's output dtype.
    pub dtype: Option<Dtype>,
    /// Seed for the random methods (DARE); None draws one.
    pub seed: Option<u64>,
    /// Worker threads; None uses rayon's default (one per core).
    pub threads: Option<usize>,
    pub dry_run: bool,
    pub progress: bool,
}

impl MergeOptions {
    pub fn new(config: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        MergeOptions {
            config: config.into(),
            out_dir: out_dir.into(),
            shard_size: 5_000_000_000,
            copy_tokenizer: false,
            dtype: None,
            seed: None,
            threads: None,
            dry_run: false,
            progress: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct MergeReport {
    /// The plan as text (printed by `--dry-run`).
    pub plan: String,
    pub tensors: usize,
    pub bytes: u64,
    pub seed: u64,
    /// Files written to the output folder (empty for a dry run).
    pub files: Vec<String>,
}

/// Build the plan for a config file (opens model headers, validates everything).
pub fn load_plan(config: &Path, dtype: Option<Dtype>) -> Result<(plan::Plan, String)> {
    let (cfg, yaml) = config::MergeConfig::from_file(config)?;
    let plan = plan::build(cfg, config.parent(), dtype)?;
    Ok((plan, yaml))
}

/// Run a merge. The output is assembled in a hidden sibling folder and renamed to `out_dir` only
/// when complete, so an interrupted or failed merge never leaves a folder that looks finished.
pub fn run_merge(opts: &MergeOptions) -> Result<MergeReport> {
    let (plan, yaml) = load_plan(&opts.config, opts.dtype)?;
    let seed = opts.seed.unwrap_or_else(rand::random);
    let mut report = MergeReport {
        plan: plan.describe(),
        tensors: plan.tensors.len(),
        bytes: plan.total_bytes(),
        seed,
        files: Vec::new(),
    };
    if opts.dry_run {
        return Ok(report);
    }
    let out = &opts.out_dir;
    if out.exists() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some() {
        return Err(Error::invalid(
            "--out",
            format!("{} exists and is not empty", out.display()),
        ));
    }
    let staging = crate::fsutil::StagedDir::new(out)?;
    write_all(&plan, &yaml, opts, seed, &staging.path)?;
    staging.commit()?;
    let mut files: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    files.sort();
    report.files = files;
    Ok(report)
}

fn write_all(plan: &plan::Plan, yaml: &str, opts: &MergeOptions, seed: u64, dir: &Path) -> Result<()> {
    let specs: Vec<writer::TensorSpec> = plan
        .tensors
        .iter()
        .map(|t| writer::TensorSpec {
            name: t.name.clone(),
            dtype: t.out_dtype.safetensors_name(),
            shape: t.shape.clone(),
            nbytes: t.out_bytes(),
        })
        .collect();
    let w = writer::ShardWriter::create(dir, &specs, opts.shard_size)?;
    let bar = progress_bar(plan.total_bytes(), opts.progress);
    let gate = MemoryGate::new(plan.tensors.iter().map(working_bytes).max().unwrap_or(0));
    let work = || {
        plan.tensors.par_iter().enumerate().try_for_each(|(i, task)| {
            let _permit = gate.acquire(working_bytes(task))?;
            let values = execute::compute(plan, task, seed)?;
            w.write(i, &task.out_dtype.encode(&values))?;
            bar.inc(task.out_bytes());
            bar.set_message(task.name.clone());
            Ok::<_, Error>(())
        })
    };
    match opts.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| Error::invalid("--threads", e.to_string()))?
            .install(work)?,
        None => work()?,
    }
    bar.finish_and_clear();
    w.finish(dir)?;
    output::write_config(plan, dir)?;
    output::write_generation_config(plan, dir)?;
    let wants_tokenizer =
        opts.copy_tokenizer || plan.config.tokenizer_source.is_some() || plan.config.chat_template.is_some();
    if wants_tokenizer {
        output::write_tokenizer(plan, dir)?;
    }
    let title = opts
        .out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merged model".into());
    output::write_model_card(plan, yaml, &title, dir)
}

/// Rough peak working memory of merging one tensor: f32 copies of every input, the deltas and
/// output, plus the sort buffers of the magnitude-based methods.
fn working_bytes(task: &plan::TensorTask) -> u64 {
    (task.numel() * (4 * (task.sources.len() + 2) + 9)) as u64
}

/// Caps the memory of tensors in flight: threads merge small tensors freely, but wait before
/// starting a large one while others hold the budget, keeping peak RSS a small multiple of the
/// largest tensor whatever `--threads` is.
struct MemoryGate {
    used: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
    budget: u64,
}

struct Permit<'a> {
    gate: &'a MemoryGate,
    bytes: u64,
}

impl MemoryGate {
    fn new(budget: u64) -> Self {
        MemoryGate {
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            budget: budget.max(1),
        }
    }

    fn acquire(&self, bytes: u64) -> Result<Permit<'_>> {
        let bytes = bytes.min(self.budget);
        let poisoned = |_| Error::msg("memory gate lock poisoned");
        let mut used = self.used.lock().map_err(poisoned)?;
        while *used > 0 && *used + bytes > self.budget {
            used = self.freed.wait(used).map_err(poisoned)?;
        }
        *used += bytes;
        Ok(Permit { gate: self, bytes })
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Ok(mut used) = self.gate.used.lock() {
            *used -= self.bytes;
        }
        self.gate.freed.notify_all();
    }
}

fn progress_bar(total: u64, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "merging [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}
