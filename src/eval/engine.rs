//! [`Backend`] over the local inference engine (`source::LoadedModel`), so `eval` can score a model
//! folder or GGUF file directly. One prompt at a time, reusing the KV cache of the prefix each prompt
//! shares with the previous one (at least the instruction; with the same shots, the whole few-shot
//! block; in the log-likelihood protocol, the context every option shares). The cache outlives a
//! call, so prompts that share shots keep sharing across the harness's batch boundaries.
use super::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{ForwardOpts, KvCache, Logits};
use crate::source::LoadedModel;
use candle_core::{Device, Tensor, D};

pub struct EngineBackend {
    m: LoadedModel,
    name: String,
    cache: KvCache,
    /// The tokens `cache` holds.
    cached: Vec<u32>,
}

impl EngineBackend {
    pub fn new(m: LoadedModel, name: impl Into<String>) -> Self {
        let cache = m.model.new_cache();
        EngineBackend {
            m,
            name: name.into(),
            cache,
            cached: Vec::new(),
        }
    }

    /// Logits for `ids[from..]` (`Logits::All`: `[T - from, V]`; `Last`: `[1, V]`), computed on
    /// top of the cached prefix `ids` shares with the previous call, never later than `from`.
    fn extend(&mut self, ids: &[u32], from: usize, which: Logits) -> Result<Tensor> {
        let keep = common_prefix(&self.cached, ids).min(from);
        if let Err(e) = self.cache.truncate(keep) {
            self.reset();
            return Err(e);
        }
        self.cached.truncate(keep);
        let t = Tensor::new(&ids[keep..], &self.m.model.device)?.unsqueeze(0)?;
        let out = match self
            .m
            .model
            .forward(&t, &mut self.cache, which.clone(), &ForwardOpts::default())
        {
            Ok(o) => o,
            Err(e) => {
                // A failed forward may leave the cache part-written.
                self.reset();
                return Err(e);
            }
        };
        self.cached.extend_from_slice(&ids[keep..]);
        let out = out.squeeze(0)?.to_device(&Device::Cpu)?;
        Ok(match which {
            Logits::All => out.narrow(0, from - keep, ids.len() - from)?,
            _ => out,
        })
    }

    fn reset(&mut self) {
        self.cache = self.m.model.new_cache();
        self.cached.clear();
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Backend for EngineBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.m.tokenizer.encode(text, true)
    }

    fn decode_token(&self, id: u32) -> Result<String> {
        self.m.tokenizer.decode(&[id], false)
    }

    fn last_logits(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(prompts.len());
        for p in prompts {
            if p.is_empty() {
                return Err(Error::invalid("prompt", "empty token sequence"));
            }
            // At least the last token is always run, for its logits.
            let logits = self.extend(p, p.len() - 1, Logits::Last)?;
            out.push(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?);
        }
        Ok(out)
    }

    fn continuation_logprobs(&mut self, context: &[u32], continuation: &[u32]) -> Result<Vec<f32>> {
        if context.is_empty() {
            return Err(Error::invalid(
                "context",
                "empty: the first continuation token has nothing to condition on",
            ));
        }
        if continuation.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<u32> = context.iter().chain(continuation).copied().collect();
        // Position t predicts token t + 1: the continuation is predicted from positions ctx-1 .. end-2.
        let from = context.len() - 1;
        let logits = self
            .extend(&ids[..ids.len() - 1], from, Logits::All)?
            .to_dtype(candle_core::DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let targets = Tensor::new(continuation, &Device::Cpu)?.unsqueeze(1)?;
        Ok(logp.gather(&targets, 1)?.squeeze(1)?.to_vec1()?)
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn shared_prefix_length() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[5, 6], &[5, 6, 7]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
