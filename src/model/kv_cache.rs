//! Per-layer key/value cache for incremental decoding.
use crate::error::Result;
use candle_core::Tensor;

#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![None; n_layers],
        }
    }

    /// Number of positions already cached.
    pub fn seq_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    /// Append this step's `[B, kv_heads, T, D]` keys and values; returns the full cached K and V.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.layers[layer] {
            None => (k.contiguous()?, v.contiguous()?),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Keep only the first `len` positions (used to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        for l in self.layers.iter_mut() {
            if let Some((k, v)) = l {
                if len == 0 {
                    *l = None;
                } else if k.dims()[2] > len {
                    *l = Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?));
                }
            }
        }
        Ok(())
    }

    /// Repeat a batch-1 cache `n` times along the batch (a shared prefix for a batch of prompts).
    pub fn expand_batch(&self, n: usize) -> Result<Self> {
        let mut out = self.clone();
        for l in out.layers.iter_mut().flatten() {
            let (k, v) = l;
            *k = Tensor::cat(&vec![&*k; n], 0)?;
            *v = Tensor::cat(&vec![&*v; n], 0)?;
        }
        Ok(out)
    }
}
