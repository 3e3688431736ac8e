//! Scoring text with a model: per-token log-likelihoods, windowed perplexity over long texts,
//! and full logits dumps comparable with transformers'.
use crate::error::{Error, Result};
use crate::model::{ForwardOpts, Logits, Model};
use candle_core::{Device, Tensor, D};

/// Negative log-likelihood of `ids[t]` given `ids[..t]`, for t in `from..ids.len()`, in f64.
/// log-softmax is computed in f32 (as transformers does), sums in f64.
pub fn token_nlls(model: &Model, ids: &[u32], from: usize) -> Result<Vec<f64>> {
    if ids.len() < 2 {
        return Ok(vec![]);
    }
    let t = Tensor::new(ids, &model.device)?.unsqueeze(0)?;
    let mut cache = model.new_cache();
    let logits = model
        .forward(&t, &mut cache, Logits::All, &ForwardOpts::default())?
        .squeeze(0)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = Tensor::new(&ids[1..], &Device::Cpu)?;
    let logp = logp.narrow(0, 0, ids.len() - 1)?.to_device(&Device::Cpu)?;
    let picked: Vec<f32> = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.to_vec1()?;
    Ok(picked
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 >= from.max(1))
        .map(|(_, &lp)| -(lp as f64))
        .collect())
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Perplexity {
    pub total_input_tokens: usize,
    pub total_predicted_tokens: usize,
    pub nll_sum: f64,
    pub mean_nll: f64,
    pub ppl: f64,
    /// Per-document NLL sums (JSONL mode).
    pub doc_nll_sums: Vec<f64>,
}

impl Perplexity {
    fn add(&mut self, n_input: usize, nlls: &[f64]) {
        self.total_input_tokens += n_input;
        self.total_predicted_tokens += nlls.len();
        let s: f64 = nlls.iter().sum();
        self.nll_sum += s;
        self.doc_nll_sums.push(s);
    }
    fn finish(mut self) -> Self {
        self.mean_nll = if self.total_predicted_tokens > 0 {
            self.nll_sum / self.total_predicted_tokens as f64
        } else {
            f64::NAN
        };
        self.ppl = self.mean_nll.exp();
        self
    }
}

/// Each document scored on its own (truncated to `max_tokens`).
pub fn perplexity_docs(
    model: &Model,
    docs: &[Vec<u32>],
    max_tokens: usize,
    mut progress: impl FnMut(),
) -> Result<Perplexity> {
    let mut p = Perplexity::default();
    for ids in docs {
        let ids = &ids[..ids.len().min(max_tokens)];
        let nlls = token_nlls(model, ids, 1)?;
        p.add(ids.len(), &nlls);
        progress();
    }
    Ok(p.finish())
}

/// Strided sliding-window perplexity over one long token stream: windows of `context` tokens
/// advancing by `stride`; each token is predicted once, with up to `context - stride` tokens of
/// left context beyond the first window (transformers' documented recipe).
pub fn perplexity_windowed(
    model: &Model,
    ids: &[u32],
    context: usize,
    stride: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    if context < 2 {
        return Err(Error::invalid("--context", "must be at least 2"));
    }
    if stride == 0 || stride > context {
        return Err(Error::invalid(
            "--stride",
            format!("{stride} (must be in 1..={context})"),
        ));
    }
    let mut p = Perplexity::default();
    let mut prev_end = 0usize;
    let mut begin = 0usize;
    p.total_input_tokens = ids.len();
    while prev_end < ids.len() {
        let end = (begin + context).min(ids.len());
        let window = &ids[begin..end];
        // Predict only the tokens not predicted by the previous window.
        let first_new = prev_end.max(begin + 1) - begin;
        let nlls = token_nlls(model, window, first_new)?;
        p.total_predicted_tokens += nlls.len();
        p.nll_sum += nlls.iter().sum::<f64>();
        prev_end = end;
        progress(end, ids.len());
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    Ok(p.finish())
}
