//! [`Backend`] over the local inference engine (`source::LoadedModel`), so `eval` can score a model
//! folder or GGUF file directly. One prompt at a time, reusing the KV cache of the prefix each prompt
//! shares with the previous one (at least the instruction; with the same shots, the whole few-shot block).
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
        let mut cache = self.m.model.new_cache();
        let mut cached: &[u32] = &[];
        let mut out = Vec::with_capacity(prompts.len());
        for p in prompts {
            if p.is_empty() {
                return Err(Error::invalid("prompt", "empty token sequence"));
            }
            // Keep the KV cache of the prefix shared with the previous prompt (the harness orders prompts so
            // that those with the same shots are adjacent); at least one token is always run, for its logits.
            let keep = common_prefix(cached, p).min(p.len() - 1);
            cache.truncate(keep)?;
            let logits = self.forward(&p[keep..], &mut cache, Logits::Last)?;
            out.push(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?);
            cached = p;
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
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[5, 6], &[5, 6, 7]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
