//! The evaluation driver: for each task and shot set, build prompts, score them in batches through the
//! backend, append each sample as soon as it is scored, and skip what an earlier run already wrote.
use super::backend::Backend;
use super::metrics::{self, TaskResult};
use super::prompt::{build_prompt, shot_indices, ShotSource};
use super::report::{self, RunMeta, RunResults, SampleWriter};
use super::scorer::{self, Protocol, Sample};
use super::tasks::{self, Item, OnBadRow, TaskId};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub tasks: Vec<TaskId>,
    pub data_dir: PathBuf,
    pub out: PathBuf,
    /// Keep the first N items; they form the whole pool (shots included).
    pub limit: Option<usize>,
    pub shots: usize,
    pub shot_sets: usize,
    pub protocol: Protocol,
    pub lang: String,
    /// Take shots from this file (or `<dir>/<task>.{jsonl,json,csv}`) instead of the task's own pool.
    pub shots_from: Option<PathBuf>,
    pub seed: u64,
    /// Prompts per `last_logits` call.
    pub batch_size: usize,
    pub on_bad_row: OnBadRow,
    pub progress: bool,
    /// Extra backend settings recorded in results.json.
    pub backend_meta: serde_json::Map<String, serde_json::Value>,
}

impl EvalConfig {
    pub fn new(tasks: Vec<TaskId>, data_dir: PathBuf, out: PathBuf) -> Self {
        EvalConfig {
            tasks,
            data_dir,
            out,
            limit: None,
            shots: 3,
            shot_sets: 3,
            protocol: Protocol::Biomistral,
            lang: "en".into(),
            shots_from: None,
            seed: 0,
            batch_size: 8,
            on_bad_row: OnBadRow::Fail,
            progress: true,
            backend_meta: Default::default(),
        }
    }

    /// Zero-shot prompts are identical across shot sets, so one set is enough.
    pub fn effective_shot_sets(&self) -> usize {
        if self.shots == 0 {
            1
        } else {
            self.shot_sets.max(1)
        }
    }
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A task's test pool and where its shots come from.
pub struct Pools {
    pub items: Vec<Item>,
    /// `None`: shots rotate through `items`. Translated sets: the English side of `items`, same rotation.
    /// `--shots-from`: a training pool, drawn with the seed (`drawn`).
    pub shots: Option<Vec<Item>>,
    pub drawn: bool,
    pub bad: Vec<tasks::BadRow>,
}

pub fn load_pools(task: TaskId, cfg: &EvalConfig) -> Result<Pools> {
    let mut loaded = tasks::load_task(task, &cfg.data_dir, &cfg.lang, cfg.on_bad_row)?;
    if let Some(n) = cfg.limit {
        loaded.items.truncate(n);
        loaded.english.truncate(n);
    }
    if loaded.items.is_empty() {
        return Err(Error::invalid("task", format!("{}: no items to evaluate", task.name())));
    }
    let shots = match &cfg.shots_from {
        None if loaded.english.is_empty() => None,
        None => Some(std::mem::take(&mut loaded.english)),
        Some(p) => {
            let file = shots_file(p, task)?;
            let l = tasks::load_file(&file, cfg.on_bad_row)?;
            if l.items.len() < cfg.shots {
                return Err(Error::format(
                    &file,
                    format!("{} usable items, fewer than --shots {}", l.items.len(), cfg.shots),
                ));
            }
            Some(l.items)
        }
    };
    let n = loaded.items.len();
    if cfg.shots_from.is_none() && cfg.shots > 0 && n <= cfg.shots * cfg.effective_shot_sets() {
        tracing::warn!(
            "{}: pool of {n} items is too small for distinct shots; shots will repeat or include the item itself",
            task.name()
        );
    }
    Ok(Pools {
        items: loaded.items,
        drawn: cfg.shots_from.is_some(),
        shots,
        bad: loaded.bad,
    })
}

fn shots_file(p: &Path, task: TaskId) -> Result<PathBuf> {
    if !p.is_dir() {
        return Ok(p.to_path_buf());
    }
    ["jsonl", "json", "csv"]
        .iter()
        .map(|ext| p.join(format!("{}.{ext}", task.name())))
        .find(|f| f.is_file())
        .ok_or_else(|| {
            Error::invalid(
                "shots-from",
                format!("{}: no {}.jsonl/.json/.csv", p.display(), task.name()),
            )
        })
}

/// The prompt and shot indices of item `i`, shot set `k`.
pub fn item_prompt(pools: &Pools, cfg: &EvalConfig, i: usize, k: usize) -> (String, Vec<usize>) {
    let source = match &pools.shots {
        Some(s) if pools.drawn => ShotSource::Drawn {
            len: s.len(),
            seed: cfg.seed,
        },
        _ => ShotSource::Rotating,
    };
    let shot_pool = pools.shots.as_deref().unwrap_or(&pools.items);
    let idx = shot_indices(source, i, pools.items.len(), k, cfg.shots);
    let shots: Vec<&Item> = idx.iter().map(|&j| &shot_pool[j]).collect();
    (build_prompt(&shots, &pools.items[i]), idx)
}

/// Run every task; returns the run's results (also written to `cfg.out`).
pub fn run_eval(backend: &mut dyn Backend, cfg: &EvalConfig) -> Result<RunResults> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let meta = RunMeta {
        model: backend.name(),
        protocol: cfg.protocol.name().into(),
        shots: cfg.shots,
        shot_sets: cfg.effective_shot_sets(),
        limit: cfg.limit,
        lang: cfg.lang.clone(),
        data_dir: cfg.data_dir.display().to_string(),
        shots_from: cfg.shots_from.as_ref().map(|p| p.display().to_string()),
        seed: cfg.seed,
        batch_size: cfg.batch_size,
        backend: cfg.backend_meta.clone(),
    };
    // A folder holds one configuration: resuming under other settings would mix incomparable samples
    // (the prompt hash catches changed data or shots, not a changed model or protocol).
    let mut results: Vec<TaskResult> = Vec::new();
    if cfg.out.join("results.json").is_file() {
        let prev = report::read_results(&cfg.out)?;
        let key = |m: &RunMeta| {
            (
                m.model.clone(),
                m.protocol.clone(),
                m.shots,
                m.limit,
                m.lang.clone(),
                m.shots_from.clone(),
                m.seed,
            )
        };
        if key(&prev.meta) != key(&meta) {
            return Err(Error::invalid(
                "out",
                format!(
                    "{} holds a run with other settings ({:?}); use a fresh --out",
                    cfg.out.display(),
                    key(&prev.meta)
                ),
            ));
        }
        // Keep the figures of tasks evaluated by earlier invocations into this folder.
        results = prev
            .tasks
            .into_iter()
            .filter(|t| TaskId::parse(&t.task).map_or(true, |id| !cfg.tasks.contains(&id)))
            .collect();
    } else {
        report::write_results_json(&cfg.out, &meta, &[], &[])?;
    }
    let mut bad_rows: Vec<String> = Vec::new();
    for &task in &cfg.tasks {
        let pools = load_pools(task, cfg)?;
        bad_rows.extend(pools.bad.iter().map(|b| b.to_string()));
        let samples = run_task(backend, cfg, task, &pools)?;
        let r = metrics::summarize(task.name(), &samples, pools.bad.len());
        tracing::info!(
            "{}: acc {:.4} ± {:.4} over {} item(s)",
            task.name(),
            r.acc_mean,
            r.acc_std,
            r.n
        );
        results.push(r);
        results.sort_by_key(|t| TaskId::parse(&t.task).map_or(usize::MAX, |id| id as usize));
        // Rewrite results after each task so a long run has usable figures before it ends.
        report::write_results_json(&cfg.out, &meta, &results, &bad_rows)?;
    }
    let run = RunResults {
        dir: cfg.out.clone(),
        meta,
        tasks: results,
    };
    report::write_report(&cfg.out, std::slice::from_ref(&run))?;
    Ok(run)
}

fn progress_bar(cfg: &EvalConfig, len: usize, task: TaskId) -> indicatif::ProgressBar {
    if !cfg.progress {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template("{msg:28} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(task.name());
    pb
}

/// Score the pending (item, shot set) pairs of one task and return all its samples in pool order.
fn run_task(backend: &mut dyn Backend, cfg: &EvalConfig, task: TaskId, pools: &Pools) -> Result<Vec<Sample>> {
    let n_letters = pools.items.iter().map(|it| it.options.len()).max().unwrap_or(0);
    let ctx = TaskCtx {
        protocol: cfg.protocol,
        task,
        pools,
        letter_ids: scorer::letter_token_ids(&*backend, n_letters)?,
    };
    let path = report::samples_path(&cfg.out, task.name());
    let mut done: HashMap<(usize, usize), Sample> = HashMap::new();
    for s in report::read_samples(&path)? {
        done.insert((s.item, s.shot_set), s);
    }
    let sets = cfg.effective_shot_sets();
    let n = pools.items.len();
    let mut writer = SampleWriter::open(&path)?;
    // Check that resumed samples were made from the same prompts: a changed data file, shot rule or
    // language must not be mixed silently into one result.
    let mut todo = Vec::new();
    for k in 0..sets {
        for i in 0..n {
            let (prompt, shot_items) = item_prompt(pools, cfg, i, k);
            let sha = sha256_hex(&prompt);
            match done.get(&(i, k)) {
                Some(s) if s.prompt_sha256 != sha => {
                    return Err(Error::format(
                        &path,
                        format!("item {i} shot set {k} was scored on a different prompt (sha256 {} != {sha}); data, shots or language changed: use a fresh --out", s.prompt_sha256),
                    ))
                }
                Some(_) => {}
                None => todo.push(Pending {
                    item: i,
                    shot_set: k,
                    prompt,
                    shot_items,
                    sha,
                }),
            }
        }
    }
    // Prompts with the same shots share everything but the test item: with the rotation rule, item i of
    // set k and item i+3 of set k-1 use the same three shots. Scoring them back to back lets a backend
    // reuse the KV cache of instruction + shots (EngineBackend reuses the prefix shared with the previous
    // prompt), which is most of each prompt.
    todo.sort_by(|a, b| (&a.shot_items, a.shot_set, a.item).cmp(&(&b.shot_items, b.shot_set, b.item)));
    let pb = progress_bar(cfg, todo.len(), task);
    for batch in todo.chunks(cfg.batch_size.max(1)) {
        let encoded = batch
            .iter()
            .map(|p| backend.encode(&p.prompt))
            .collect::<Result<Vec<_>>>()?;
        let new = score_batch(backend, &ctx, batch, &encoded)?;
        writer.append(&new)?;
        for s in new {
            done.insert((s.item, s.shot_set), s);
        }
        pb.inc(batch.len() as u64);
    }
    pb.finish_and_clear();
    let mut all: Vec<Sample> = done.into_values().filter(|s| s.item < n && s.shot_set < sets).collect();
    all.sort_by_key(|s| (s.shot_set, s.item));
    Ok(all)
}

/// What scoring needs to know about the task being run.
struct TaskCtx<'a> {
    protocol: Protocol,
    task: TaskId,
    pools: &'a Pools,
    /// Token id of each option letter after `(`.
    letter_ids: Vec<u32>,
}

/// An (item, shot set) pair still to score.
struct Pending {
    item: usize,
    shot_set: usize,
    prompt: String,
    shot_items: Vec<usize>,
    sha: String,
}

fn score_batch(
    backend: &mut dyn Backend,
    ctx: &TaskCtx,
    batch: &[Pending],
    encoded: &[Vec<u32>],
) -> Result<Vec<Sample>> {
    let mut out = Vec::with_capacity(batch.len());
    let logits = match ctx.protocol {
        Protocol::Biomistral => {
            let l = backend.last_logits(encoded)?;
            if l.len() != batch.len() {
                return Err(Error::msg(format!(
                    "backend returned {} logit rows for {} prompts",
                    l.len(),
                    batch.len()
                )));
            }
            Some(l)
        }
        Protocol::Loglik => None,
    };
    for (b, p) in batch.iter().enumerate() {
        let item = &ctx.pools.items[p.item];
        let base = Sample {
            task: ctx.task.name().into(),
            item: p.item,
            id: item.id.clone(),
            shot_set: p.shot_set,
            shot_items: p.shot_items.clone(),
            gold: item.gold_letter().to_string(),
            top1_id: None,
            top1_str: String::new(),
            top1_prob: 0.0,
            correct: false,
            letter_probs: Default::default(),
            n_prompt_tokens: encoded[b].len(),
            prompt_sha256: p.sha.clone(),
            option_loglik: None,
            correct_norm: None,
        };
        let s = match &logits {
            Some(l) => {
                let sc = scorer::score_biomistral(&*backend, &l[b], &ctx.letter_ids, item)?;
                Sample {
                    top1_id: Some(sc.top1_id),
                    top1_str: sc.top1_str,
                    top1_prob: sc.top1_prob,
                    correct: sc.correct,
                    letter_probs: sc.letter_probs,
                    ..base
                }
            }
            None => {
                let sc = scorer::score_loglik(backend, &p.prompt, &encoded[b], item)?;
                let probs = scorer::loglik_letter_probs(&sc.loglik);
                let pred = tasks::letter(sc.pred).to_string();
                Sample {
                    top1_id: Some(sc.first_tokens[sc.pred]),
                    top1_prob: probs.get(&pred).copied().unwrap_or(0.0),
                    correct: sc.pred == item.gold,
                    correct_norm: Some(sc.pred_norm == item.gold),
                    top1_str: pred,
                    letter_probs: probs,
                    option_loglik: Some(sc.loglik),
                    ..base
                }
            }
        };
        out.push(s);
    }
    Ok(out)
}
