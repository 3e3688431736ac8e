//! The training loop: micro-batches with gradient accumulation, clipping, AdamW with the
//! warmup + cosine schedule, periodic evaluation and checkpoints, logs (progress bar, JSONL,
//! CSV) and a loss-curve SVG at the end.
use super::checkpoint::{self, State};
use super::data::{Example, Split};
use super::lora::{self, LoraConfig};
use super::optim::{clip_grads, lr_at, AdamW, AdamWConfig, Param};
use super::plot;
use crate::error::{Error, Result};
use crate::model::linear::{LinearKind, LoraDropout};
use crate::model::{ForwardOpts, Logits, Model};
use candle_core::{DType, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What is trained.
#[derive(Debug, Clone)]
pub enum Mode {
    Full,
    Lora(LoraConfig),
}

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub max_steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub optim: AdamWConfig,
    pub warmup_steps: usize,
    /// Max global gradient norm (0 disables clipping).
    pub clip: f64,
    pub seed: u64,
    /// Evaluate on the held-out set every N steps (0: only before and after).
    pub eval_every: usize,
    /// Checkpoint every N steps (0: never; the final weights are always written).
    pub save_every: usize,
    pub resume: bool,
    /// Stop after this many steps as if interrupted (tests of resuming).
    pub stop_after: Option<usize>,
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            max_steps: 100,
            batch_size: 1,
            grad_accum: 1,
            optim: AdamWConfig::default(),
            warmup_steps: 0,
            clip: 1.0,
            seed: 42,
            eval_every: 0,
            save_every: 0,
            resume: false,
            stop_after: None,
            progress: false,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        for (n, v) in [
            ("--max-steps", self.max_steps),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
        ] {
            if v == 0 {
                return Err(Error::invalid(n, "must be >= 1"));
            }
        }
        if !(self.optim.lr.is_finite() && self.optim.lr > 0.0) {
            return Err(Error::invalid("--lr", format!("{} must be > 0", self.optim.lr)));
        }
        if self.optim.weight_decay < 0.0 || self.clip < 0.0 {
            return Err(Error::invalid("--weight-decay/--clip", "must be >= 0"));
        }
        Ok(())
    }
}

/// Make the model trainable: variables for every weight (full) or fresh adapters (LoRA).
pub fn prepare(model: &mut Model, mode: &Mode, seed: u64) -> Result<(Vec<Param>, Option<LoraDropout>)> {
    match mode {
        Mode::Lora(cfg) => {
            cfg.validate()?;
            densify(model)?;
            // An adapter already on the model (loaded with --adapter) is trained further.
            let existing = model
                .projections_mut()
                .into_iter()
                .find_map(|(_, l)| l.lora.as_ref().map(|a| a.dropout_state.clone()));
            let drop = match existing {
                Some(d) => d,
                None => lora::attach(model, cfg, seed)?,
            };
            Ok((lora::params(model), Some(drop)))
        }
        Mode::Full => {
            let mut params = Vec::new();
            model.map_weights(|name, t| {
                let v = Var::from_tensor(t)?;
                params.push(Param {
                    name: name.to_string(),
                    var: v.clone(),
                    decay: t.rank() > 1,
                });
                Ok(v.as_tensor().clone())
            })?;
            Ok((params, None))
        }
    }
}

/// Dequantize block-quantized projections and head: candle's quantized matmul has no backward
/// pass, so gradients would silently stop there.
fn densify(model: &mut Model) -> Result<()> {
    let dt = model.dtype;
    for (_, l) in model.projections_mut() {
        if l.is_block_quant() {
            l.kind = LinearKind::Dense(l.base_dense(dt)?);
        }
    }
    if model.lm_head.is_block_quant() {
        model.lm_head.kind = LinearKind::Dense(model.lm_head.base_dense(dt)?);
    }
    Ok(())
}

/// Mean cross-entropy of a batch's targets, summed and divided by `norm` (the number of
/// targets in the whole optimizer step, so accumulated micro-batches add up to the mean).
/// Rows are right-padded; causal attention keeps padding from affecting real tokens.
pub fn batch_loss(model: &Model, batch: &[&Example], norm: f64, differentiable: bool) -> Result<(Tensor, f64)> {
    let len = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    if len < 2 {
        return Err(Error::invalid("batch", "sequences need at least two tokens"));
    }
    let t = len - 1;
    let (mut inp, mut tgt, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    for e in batch {
        for i in 0..t {
            inp.push(e.ids.get(i).copied().unwrap_or(0));
            tgt.push(e.ids.get(i + 1).copied().unwrap_or(0));
            mask.push(if e.target.get(i + 1).copied().unwrap_or(false) {
                1.0
            } else {
                0.0
            });
        }
    }
    let b = batch.len();
    let dev = &model.device;
    let inp = Tensor::from_vec(inp, (b, t), dev)?;
    let tgt = Tensor::from_vec(tgt, (b, t, 1), dev)?;
    let opts = ForwardOpts {
        differentiable,
        ..Default::default()
    };
    let logits = model.forward(&inp, &mut model.new_cache(), Logits::All, &opts)?;
    let mask = Tensor::from_vec(mask, (b, t), dev)?.to_dtype(logits.dtype())?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = logp.gather(&tgt, D::Minus1)?.squeeze(D::Minus1)?;
    let nll = (picked.neg()? * mask)?.sum_all()?;
    let sum = nll.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(((nll / norm)?, sum))
}

/// Mean NLL per target token over `examples` (no dropout, fused kernels).
pub fn evaluate(model: &Model, examples: &[Example], batch_size: usize) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        sum += batch_loss(model, &refs, 1.0, false)?.1;
        n += chunk.iter().map(|e| e.n_targets()).sum::<usize>();
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// Training sequence `k` of the run: epochs over the data, each in a seeded shuffled order.
struct Order {
    n: usize,
    seed: u64,
    epoch: Option<(usize, Vec<usize>)>,
}

impl Order {
    fn index(&mut self, k: usize) -> usize {
        let e = k / self.n;
        if self.epoch.as_ref().is_none_or(|(ep, _)| *ep != e) {
            let mut perm: Vec<usize> = (0..self.n).collect();
            perm.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
                self.seed ^ (e as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ));
            self.epoch = Some((e, perm));
        }
        self.epoch.as_ref().map(|(_, p)| p[k % self.n]).unwrap_or(0)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LogRow {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub eval_loss: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub steps: usize,
    pub start_step: usize,
    pub eval_loss_before: Option<f64>,
    pub eval_loss_after: Option<f64>,
    pub last_loss: f64,
    pub tokens_per_s: f64,
    pub trainable_params: usize,
}

pub struct Trainer<'m> {
    pub model: &'m mut Model,
    pub params: Vec<Param>,
    dropout: Option<LoraDropout>,
    pub opt: AdamW,
    cfg: TrainConfig,
    out: PathBuf,
}

impl<'m> Trainer<'m> {
    pub fn new(model: &'m mut Model, mode: &Mode, cfg: &TrainConfig, out: &Path) -> Result<Self> {
        cfg.validate()?;
        let (params, dropout) = prepare(model, mode, cfg.seed)?;
        Ok(Trainer {
            model,
            params,
            dropout,
            opt: AdamW::new(cfg.optim),
            cfg: cfg.clone(),
            out: out.to_path_buf(),
        })
    }

    /// One optimizer step over `batches` (the micro-batches); returns (loss, grad norm, tokens).
    pub fn step(&mut self, step: usize, batches: &[Vec<&Example>]) -> Result<(f64, f64, usize)> {
        let norm: usize = batches.iter().flatten().map(|e| e.n_targets()).sum();
        if norm == 0 {
            return Err(Error::invalid("batch", "no target tokens in this step"));
        }
        let mut acc: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let (mut loss_sum, mut tokens) = (0.0, 0);
        for (micro, b) in batches.iter().enumerate() {
            if let Some(d) = &self.dropout {
                let s = self.cfg.seed.wrapping_mul(1_000_003) ^ ((step as u64) << 20) ^ micro as u64;
                d.seed(Some(s));
            }
            let res = batch_loss(self.model, b, norm as f64, true);
            if let Some(d) = &self.dropout {
                d.seed(None);
            }
            let (loss, sum) = res?;
            loss_sum += sum;
            tokens += b.iter().map(|e| e.ids.len()).sum::<usize>();
            let grads = loss.backward()?;
            for (a, p) in acc.iter_mut().zip(&self.params) {
                if let Some(g) = grads.get(p.var.as_tensor()) {
                    *a = Some(match a.take() {
                        Some(x) => (x + g)?,
                        None => g.clone(),
                    });
                }
            }
        }
        let mut grads: Vec<Tensor> = acc
            .into_iter()
            .zip(&self.params)
            .map(|(g, p)| g.map(Ok).unwrap_or_else(|| p.var.as_tensor().zeros_like()))
            .collect::<candle_core::Result<_>>()?;
        let gn = clip_grads(&mut grads, self.cfg.clip)?;
        let lr = lr_at(self.cfg.optim.lr, step, self.cfg.warmup_steps, self.cfg.max_steps);
        self.opt.step(&self.params, &grads, lr)?;
        Ok((loss_sum / norm as f64, gn, tokens))
    }

    fn state(&self, step: usize) -> State {
        State {
            step,
            seed: self.cfg.seed,
            max_steps: self.cfg.max_steps,
            examples_seen: step * self.cfg.grad_accum * self.cfg.batch_size,
            n_params: self.params.len(),
        }
    }

    /// Run to `max_steps` (or `stop_after`), resuming from the newest checkpoint if asked.
    pub fn run(&mut self, data: &Split) -> Result<Summary> {
        if data.train.is_empty() {
            return Err(Error::invalid("data", "no training examples"));
        }
        let c = self.cfg.clone();
        let mut start = 0;
        if c.resume {
            match checkpoint::restore_latest(&self.out, &self.params, &mut self.opt)? {
                Some(s) => {
                    if s.max_steps != c.max_steps || s.seed != c.seed {
                        tracing::warn!(
                            "resuming a run made with --max-steps {} --seed {} under --max-steps {} --seed {}",
                            s.max_steps,
                            s.seed,
                            c.max_steps,
                            c.seed
                        );
                    }
                    start = s.step;
                }
                None => tracing::warn!("--resume: no checkpoint under {}, starting fresh", self.out.display()),
            }
        }
        std::fs::create_dir_all(&self.out).map_err(|e| Error::io(&self.out, e))?;
        let eval_loss_before = if start == 0 && !data.eval.is_empty() {
            Some(evaluate(self.model, &data.eval, c.batch_size)?)
        } else {
            None
        };
        let mut log = Log::open(&self.out, start > 0)?;
        let end = c.stop_after.map_or(c.max_steps, |s| s.min(c.max_steps));
        let bar = progress_bar(c.progress, c.max_steps, start);
        let mut order = Order {
            n: data.train.len(),
            seed: c.seed,
            epoch: None,
        };
        let per_step = c.grad_accum * c.batch_size;
        let (mut train_secs, mut tok_total) = (0f64, 0usize);
        let (mut last_loss, mut eval_after) = (f64::NAN, None);
        for step in start..end {
            let batches: Vec<Vec<&Example>> = (0..c.grad_accum)
                .map(|m| {
                    (0..c.batch_size)
                        .map(|j| &data.train[order.index(step * per_step + m * c.batch_size + j)])
                        .collect()
                })
                .collect();
            let ts = std::time::Instant::now();
            let lr = lr_at(c.optim.lr, step, c.warmup_steps, c.max_steps);
            let (loss, gn, tokens) = self.step(step, &batches)?;
            let secs = ts.elapsed().as_secs_f64();
            train_secs += secs;
            if !loss.is_finite() {
                return Err(Error::msg(format!("loss became {loss} at step {}", step + 1)));
            }
            tok_total += tokens;
            last_loss = loss;
            let done = step + 1;
            let eval_loss =
                if !data.eval.is_empty() && ((c.eval_every > 0 && done % c.eval_every == 0) || done == c.max_steps) {
                    let e = evaluate(self.model, &data.eval, c.batch_size)?;
                    eval_after = Some(e);
                    Some(e)
                } else {
                    None
                };
            let row = LogRow {
                step: done,
                loss,
                lr,
                grad_norm: gn,
                tokens_per_s: tokens as f64 / secs.max(1e-9),
                eval_loss,
            };
            log.write(&row)?;
            bar.set_position(done as u64);
            bar.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} |g| {gn:.3} {:.0} tok/s",
                row.tokens_per_s
            ));
            if c.save_every > 0 && done % c.save_every == 0 && done < c.max_steps {
                checkpoint::save(&self.out, &self.state(done), &self.params, &self.opt)?;
            }
        }
        bar.finish_and_clear();
        if end == c.max_steps {
            plot::write_loss_svg(&self.out.join("loss.svg"), &Log::read_rows(&self.out)?)?;
        }
        Ok(Summary {
            steps: end,
            start_step: start,
            eval_loss_before,
            eval_loss_after: eval_after,
            last_loss,
            tokens_per_s: tok_total as f64 / train_secs.max(1e-9),
            trainable_params: self.params.iter().map(|p| p.var.elem_count()).sum(),
        })
    }
}

fn progress_bar(show: bool, total: usize, start: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template("train {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_position(start as u64);
    b
}

/// `train_log.jsonl` and `train_log.csv`, appended to when resuming.
struct Log {
    jsonl: std::fs::File,
    csv: std::fs::File,
}

const JSONL: &str = "train_log.jsonl";

impl Log {
    fn open(out: &Path, append: bool) -> Result<Self> {
        let open = |name: &str| -> Result<(std::fs::File, bool)> {
            let p = out.join(name);
            let existed = append && p.exists();
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(append)
                .write(true)
                .truncate(!append)
                .open(&p)
                .map_err(|e| Error::io(&p, e))?;
            Ok((f, existed))
        };
        let (jsonl, _) = open(JSONL)?;
        let (mut csv, existed) = open("train_log.csv")?;
        if !existed {
            writeln!(csv, "step,loss,lr,grad_norm,tokens_per_s,eval_loss").map_err(|e| Error::io(out, e))?;
        }
        Ok(Log { jsonl, csv })
    }

    fn write(&mut self, r: &LogRow) -> Result<()> {
        let line = serde_json::to_string(r).map_err(|e| Error::msg(e.to_string()))?;
        let io = |e| Error::io(JSONL, e);
        writeln!(self.jsonl, "{line}").map_err(io)?;
        let ev = r.eval_loss.map(|e| e.to_string()).unwrap_or_default();
        writeln!(
            self.csv,
            "{},{},{},{},{},{}",
            r.step, r.loss, r.lr, r.grad_norm, r.tokens_per_s, ev
        )
        .map_err(io)
    }

    /// (step, loss, eval_loss) of every logged step, the latest entry per step winning.
    fn read_rows(out: &Path) -> Result<Vec<(usize, f64, Option<f64>)>> {
        let text = crate::fsutil::read_to_string(&out.join(JSONL))?;
        let mut rows = std::collections::BTreeMap::new();
        for l in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                if let (Some(s), Some(loss)) = (v["step"].as_u64(), v["loss"].as_f64()) {
                    rows.insert(s as usize, (loss, v["eval_loss"].as_f64()));
                }
            }
        }
        Ok(rows.into_iter().map(|(s, (l, e))| (s, l, e)).collect())
    }
}
