//! Continuous batching. One engine thread owns the forward passes: requests wait in a bounded
//! queue, are prefilled one at a time between decode steps, then join the running batch, whose
//! rows share one left-padded KV cache. Every decode step is a single batched forward.
use super::metrics::Metrics;
use crate::error::Result;
use crate::generate::{Sampler, SamplingParams};
use crate::model::{ForwardOpts, KvCache, Logits};
use crate::source::tokenizer::StreamDecoder;
use crate::source::LoadedModel;
use candle_core::Tensor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// What one sequence should do.
#[derive(Debug, Clone)]
pub struct JobParams {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Log-probabilities of generated tokens, with this many alternatives.
    pub logprobs: Option<usize>,
    /// Log-probabilities of the prompt's tokens (echo scoring), with this many alternatives.
    pub prompt_logprobs: Option<usize>,
    /// Keep going past EOS (benchmarks, tests that need long generations).
    pub ignore_eos: bool,
}

/// A token with its log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// EOS or a stop string.
    Stop,
    /// max_tokens or the context is full.
    Length,
    /// The server is shutting down.
    Cancelled,
}

#[derive(Debug)]
pub enum Event {
    /// Per prompt token (the first has none: nothing predicts it).
    Prompt(Vec<Option<TokenInfo>>),
    /// Text that became final and the tokens generated since the previous delta.
    Delta {
        text: String,
        tokens: Vec<TokenInfo>,
    },
    Done {
        finish: Finish,
        completion_tokens: usize,
    },
    Error(String),
}

pub struct Job {
    pub params: JobParams,
    pub events: UnboundedSender<Event>,
    pub enqueued: Instant,
}

/// The submitting side of the engine's queue.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

pub enum SubmitError {
    Full,
    Closed,
}

impl Queue {
    pub fn submit(&self, job: Job) -> std::result::Result<(), SubmitError> {
        // Count before sending so the engine never sees a negative depth.
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
        }
    }
}

pub struct EngineConfig {
    pub max_batch: usize,
    pub max_queue: usize,
    pub ctx: usize,
}

/// Start the engine thread. It stops when every `Queue` clone is dropped; `cancel_all` ends
/// every running and queued sequence (shutdown grace period over).
pub fn start(
    model: Arc<LoadedModel>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    cancel_all: Arc<AtomicBool>,
) -> Result<(Queue, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_queue.max(1));
    let queue = Queue {
        tx,
        metrics: metrics.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("biomistral-engine".into())
        .spawn(move || {
            let mut e = Engine {
                m: model,
                cfg,
                metrics,
                cancel_all,
                rows: Vec::new(),
                cache: KvCache::default(),
            };
            e.cache = e.m.model.new_cache();
            // On a worker of the kernels' thread pool, so each matmul does not hand its loop
            // over to the pool and sleep (a context switch per call).
            rayon::scope(|_| e.run(rx))
        })
        .map_err(|e| crate::Error::Msg(format!("spawning the engine thread: {e}")))?;
    Ok((queue, handle))
}

struct Row {
    job: Job,
    sampler: Sampler,
    history: Vec<u32>,
    generated: usize,
    decoder: StreamDecoder,
    text: String,
    emitted: usize,
    /// Leading padding positions of this row in the shared cache.
    pad: usize,
    /// The last sampled token, not yet in the cache.
    next: u32,
    finished: Option<Finish>,
}

struct Engine {
    m: Arc<LoadedModel>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    cancel_all: Arc<AtomicBool>,
    rows: Vec<Row>,
    cache: KvCache,
}

impl Engine {
    fn run(&mut self, rx: Receiver<Job>) {
        loop {
            while self.rows.len() < self.cfg.max_batch {
                let job = if self.rows.is_empty() {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) if self.cancel_all.load(Ordering::Relaxed) => return,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(_) => break,
                    }
                };
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                self.admit(job);
            }
            if self.rows.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            let n = self.rows.len();
            if let Err(e) = self.step() {
                tracing::error!("decode step failed: {e}");
                for r in &mut self.rows {
                    let _ = r.job.events.send(Event::Error(format!("decode failed: {e}")));
                    r.finished = Some(Finish::Cancelled);
                }
            }
            self.metrics.observe_step(n, t0.elapsed());
            if let Err(e) = self.retire() {
                tracing::error!("dropping finished rows failed: {e}");
                self.rows.clear();
                self.cache.clear();
                self.metrics.in_flight.store(0, Ordering::Relaxed);
            }
        }
    }

    fn cancelled(&self, job: &Job) -> bool {
        self.cancel_all.load(Ordering::Relaxed) || job.events.is_closed()
    }

    /// Prefill one request alone, sample its first token and let it join the batch.
    fn admit(&mut self, job: Job) {
        if self.cancelled(&job) {
            let _ = job.events.send(Event::Done {
                finish: Finish::Cancelled,
                completion_tokens: 0,
            });
            return;
        }
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let (sampler, last, last_lp, cache) = match self.prefill(&job) {
            Ok(x) => x,
            Err(e) => {
                let _ = job.events.send(Event::Error(format!("prefill failed: {e}")));
                self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        };
        let mut row = Row {
            history: job.params.prompt.clone(),
            job,
            sampler,
            generated: 0,
            decoder: StreamDecoder::new(false),
            text: String::new(),
            emitted: 0,
            pad: 0,
            next: 0,
            finished: None,
        };
        if row.job.params.max_tokens == 0 {
            row.finished = Some(Finish::Length);
        } else {
            self.metrics.observe_ttft(row.job.enqueued.elapsed());
            self.take_token(&mut row, &last, last_lp.as_deref());
        }
        if row.finished.is_some() {
            self.finish(row);
        } else {
            self.join(row, cache);
        }
    }

    /// The prompt's forward pass: a sampler, the last position's logits (and log-probabilities
    /// when the request wants them) and the row's cache.
    #[allow(clippy::type_complexity)]
    fn prefill(&self, job: &Job) -> Result<(Sampler, Vec<f32>, Option<Vec<f32>>, KvCache)> {
        let p = &job.params;
        let sampler = Sampler::new(p.sampling.clone())?;
        let t = Tensor::new(p.prompt.as_slice(), &self.m.model.device)?.unsqueeze(0)?;
        let mut cache = self.m.model.new_cache();
        let which = if p.prompt_logprobs.is_some() {
            Logits::All
        } else {
            Logits::Last
        };
        let logits = self.m.model.forward(&t, &mut cache, which, &ForwardOpts::default())?;
        let (last, last_lp) = self.prompt_events(job, &logits)?;
        Ok((sampler, last, last_lp, cache))
    }

    /// Send prompt log-probabilities if asked; return the last position's logits and
    /// log-probabilities (the latter only if the request wants logprobs).
    fn prompt_events(&self, job: &Job, logits: &Tensor) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let p = &job.params;
        // [1, V] (last position) or [1, T, V] (every position) -> [T, V].
        let rows = match logits.rank() {
            2 => logits.clone(),
            _ => logits.squeeze(0)?,
        };
        let t = rows.dim(0)?;
        let last: Vec<f32> = rows.get(t - 1)?.to_vec1()?;
        if p.prompt_logprobs.is_none() && p.logprobs.is_none() {
            return Ok((last, None));
        }
        let lsm = log_softmax_rows(&rows)?;
        if let Some(top) = p.prompt_logprobs {
            let mut infos = vec![None];
            for (i, &id) in p.prompt.iter().enumerate().skip(1) {
                infos.push(Some(token_info(&lsm[i - 1], id, top)));
            }
            let _ = job.events.send(Event::Prompt(infos));
        }
        Ok((last, lsm.last().cloned()))
    }

    fn join(&mut self, mut row: Row, cache: KvCache) {
        let old = self.cache.seq_len();
        let len = cache.seq_len();
        if self.rows.is_empty() {
            self.cache = cache;
            row.pad = 0;
        } else {
            if let Err(e) = self.cache.push_rows(&cache) {
                let _ = row
                    .job
                    .events
                    .send(Event::Error(format!("joining the batch failed: {e}")));
                self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            let s = self.cache.seq_len();
            for r in &mut self.rows {
                r.pad += s - old;
            }
            row.pad = s - len;
        }
        self.rows.push(row);
    }

    /// One batched forward over every running row.
    fn step(&mut self) -> Result<()> {
        let dev = self.m.model.device.clone();
        let b = self.rows.len();
        let s = self.cache.seq_len();
        let ids: Vec<u32> = self.rows.iter().map(|r| r.next).collect();
        let tokens = Tensor::from_vec(ids, (b, 1), &dev)?;
        let padded = self.rows.iter().any(|r| r.pad > 0);
        // Without padding every row sits at the same position: the plain single-sequence path.
        let (mask, pos) = if padded {
            let mut mask = Vec::with_capacity(b * (s + 1));
            let mut pos = Vec::with_capacity(b);
            for r in &self.rows {
                mask.extend((0..=s).map(|k| u32::from(k >= r.pad)));
                pos.push((s - r.pad) as u32);
            }
            (
                Some(Tensor::from_vec(mask, (b, s + 1), &dev)?),
                Some(Tensor::from_vec(pos, (b, 1), &dev)?),
            )
        } else {
            (None, None)
        };
        let opts = ForwardOpts {
            key_mask: mask.as_ref(),
            positions: pos.as_ref(),
            ..Default::default()
        };
        let logits = self.m.model.forward(&tokens, &mut self.cache, Logits::Last, &opts)?;
        let lsm = if self.rows.iter().any(|r| r.job.params.logprobs.is_some()) {
            Some(log_softmax_rows(&logits)?)
        } else {
            None
        };
        let logits: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut rows = std::mem::take(&mut self.rows);
        for (i, (r, l)) in rows.iter_mut().zip(&logits).enumerate() {
            if self.cancelled(&r.job) {
                r.finished = Some(Finish::Cancelled);
            } else {
                self.take_token(r, l, lsm.as_ref().map(|m| m[i].as_slice()));
            }
        }
        self.rows = rows;
        Ok(())
    }

    /// Drop finished rows from the batch and padding that no remaining row needs.
    fn retire(&mut self) -> Result<()> {
        for r in &mut self.rows {
            if r.finished.is_none() && self.cancel_all.load(Ordering::Relaxed) {
                r.finished = Some(Finish::Cancelled);
            }
        }
        if self.rows.iter().all(|r| r.finished.is_none()) {
            return Ok(());
        }
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&i| self.rows[i].finished.is_none())
            .collect();
        let rows = std::mem::take(&mut self.rows);
        for r in rows {
            if r.finished.is_some() {
                self.finish(r);
            } else {
                self.rows.push(r);
            }
        }
        self.cache.select_rows(&keep)?;
        let min_pad = self.rows.iter().map(|r| r.pad).min().unwrap_or(0);
        self.cache.drop_front(min_pad)?;
        for r in &mut self.rows {
            r.pad -= min_pad;
        }
        Ok(())
    }

    fn finish(&self, mut r: Row) {
        let finish = r.finished.unwrap_or(Finish::Cancelled);
        if finish != Finish::Cancelled && r.emitted < r.text.len() {
            let _ = r.job.events.send(Event::Delta {
                text: r.text[r.emitted..].to_string(),
                tokens: Vec::new(),
            });
            r.emitted = r.text.len();
        }
        let _ = r.job.events.send(Event::Done {
            finish,
            completion_tokens: r.generated,
        });
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sample from `logits`, stream what became final, and decide whether the row is done.
    fn take_token(&self, r: &mut Row, logits: &[f32], logprobs: Option<&[f32]>) {
        let id = r.sampler.sample(logits, &r.history);
        let info = match (r.job.params.logprobs, logprobs) {
            (Some(k), Some(lp)) => Some(token_info(lp, id, k)),
            _ => None,
        };
        r.history.push(id);
        r.generated += 1;
        r.next = id;
        self.metrics.completion_tokens.fetch_add(1, Ordering::Relaxed);
        let p = &r.job.params;
        let tok = &self.m.tokenizer;
        if !p.ignore_eos && self.m.eos_ids.contains(&id) {
            r.text.push_str(&r.decoder.flush(tok).unwrap_or_default());
            r.finished = Some(Finish::Stop);
            return;
        }
        let piece = r.decoder.push(tok, id).unwrap_or_default();
        r.text.push_str(&piece);
        let mut safe = r.text.len();
        if let Some(pos) = p.stop.iter().filter_map(|s| r.text.find(s.as_str())).min() {
            r.text.truncate(pos);
            r.finished = Some(Finish::Stop);
            safe = pos;
        } else {
            safe -= crate::generate::held_back(&r.text, &p.stop);
        }
        let text = if safe > r.emitted {
            let t = r.text[r.emitted..safe].to_string();
            r.emitted = safe;
            t
        } else {
            String::new()
        };
        if !text.is_empty() || info.is_some() {
            let tokens = info.into_iter().collect();
            if r.job.events.send(Event::Delta { text, tokens }).is_err() {
                r.finished = Some(Finish::Cancelled);
                return;
            }
        }
        if r.finished.is_none() && (r.generated >= p.max_tokens || r.history.len() >= self.cfg.ctx) {
            r.text.push_str(&r.decoder.flush(tok).unwrap_or_default());
            r.finished = Some(Finish::Length);
        }
    }
}

/// Log-softmax of `[N, V]` logits as the rest of the engine computes it (`scoring`): in f32,
/// as transformers does, so served logprobs equal `biomistral score`'s.
fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?.to_vec2()?)
}

/// `lp` is one row of log-probabilities.
fn token_info(lp: &[f32], id: u32, top: usize) -> TokenInfo {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top);
    if top > 0 {
        let mut idx: Vec<usize> = (0..lp.len()).collect();
        let k = top.min(lp.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| lp[b].total_cmp(&lp[a]));
        idx.truncate(k);
        idx.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
        best = idx.into_iter().map(|i| (i as u32, lp[i])).collect();
    }
    TokenInfo {
        id,
        logprob: lp.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY),
        top: best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalises() {
        let t = Tensor::new(&[[1.0f32, 2.0, 3.0]], &candle_core::Device::Cpu).unwrap();
        let lp = log_softmax_rows(&t).unwrap();
        let total: f64 = lp[0].iter().map(|&x| (x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let info = token_info(&[-3.0, -1.0, -2.0], 0, 2);
        assert_eq!(info.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn holdback() {
        let stops = vec!["###".to_string()];
        assert_eq!(crate::generate::held_back("a ##", &stops), 2);
        assert_eq!(crate::generate::held_back("a", &stops), 0);
    }
}
