//! [`Backend`] over the local inference engine (`source::LoadedModel`), so `eval` can score a model
//! folder or GGUF file directly. One prompt at a time, reusing the KV cache of the prefix shared by
//! all prompts of a call (at least the instruction; with the same shots, the whole few-shot block).
use super::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{ForwardOpts, Logits};
use crate::source::LoadedModel;
use candle_core::{Device, Tensor, D};

pub struct EngineBackend {
    m: LoadedModel,
    name: String,
}

impl EngineBackend {
    pub fn new(m: LoadedModel, name: impl Into<String>) -> Self {
        EngineBackend { m, name: name.into() }
    }

    /// Logits `[T, V]` (or `[1, V]` with `Logits::Last`) for `ids` after what `cache` holds, on the CPU.
    fn forward(&self, ids: &[u32], cache: &mut crate::model::KvCache, which: Logits) -> Result<Tensor> {
        let t = Tensor::new(ids, &self.m.model.device)?.unsqueeze(0)?;
        let out = self.m.model.forward(&t, cache, which, &ForwardOpts::default())?;
        Ok(out.squeeze(0)?.to_device(&Device::Cpu)?)
    }
}

fn common_prefix(prompts: &[Vec<u32>]) -> usize {
    let Some(first) = prompts.first() else { return 0 };
    prompts.iter().skip(1).fold(first.len(), |n, p| {
        first.iter().zip(p).take(n).take_while(|(a, b)| a == b).count()
    })
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
        if prompts.iter().any(Vec::is_empty) {
            return Err(Error::invalid("prompt", "empty token sequence"));
        }
        // Leave at least one token of every prompt outside the shared prefix, so each forward yields logits.
        let min_len = prompts.iter().map(Vec::len).min().unwrap_or(0);
        let prefix = common_prefix(prompts).min(min_len.saturating_sub(1));
        let mut cache = self.m.model.new_cache();
        if prefix > 0 {
            self.forward(&prompts[0][..prefix], &mut cache, Logits::Last)?;
        }
        let mut out = Vec::with_capacity(prompts.len());
        for p in prompts {
            let logits = self.forward(&p[prefix..], &mut cache, Logits::Last)?;
            out.push(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?);
            cache.truncate(prefix)?;
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
        let ids: Vec<u32> = context.iter().chain(continuation).copied().collect();
        let mut cache = self.m.model.new_cache();
        let logits = self
            .forward(&ids, &mut cache, Logits::All)?
            .to_dtype(candle_core::DType::F32)?;
        // Position t predicts token t + 1: the continuation is predicted from positions ctx-1 .. end-2.
        let logp = candle_nn::ops::log_softmax(&logits.narrow(0, context.len() - 1, continuation.len())?, D::Minus1)?;
        let targets = Tensor::new(continuation, &Device::Cpu)?.unsqueeze(1)?;
        Ok(logp.gather(&targets, 1)?.squeeze(1)?.to_vec1()?)
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn shared_prefix_length() {
        assert_eq!(common_prefix(&[vec![1, 2, 3], vec![1, 2, 4], vec![1, 2]]), 2);
        assert_eq!(common_prefix(&[vec![5, 6]]), 2);
        assert_eq!(common_prefix(&[]), 0);
    }
}
