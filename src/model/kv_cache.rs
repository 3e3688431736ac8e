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
        self.layer_len(0)
    }

    /// Number of positions cached for one layer (0 past the last layer).
    pub fn layer_len(&self, layer: usize) -> usize {
        self.layers
            .get(layer)
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

    /// Batch size of the cached tensors (0 when empty).
    pub fn batch_size(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[0])
            .unwrap_or(0)
    }

    /// Add the rows of `other` below this cache's rows, left-padding whichever is shorter with
    /// zeros so both share one sequence axis (continuous batching: a freshly prefilled request
    /// joins the running batch). The caller masks the padded positions with `key_mask`.
    pub fn push_rows(&mut self, other: &KvCache) -> Result<()> {
        if self.layers.len() != other.layers.len() {
            return Err(crate::error::Error::invalid(
                "kv cache",
                format!("{} layers vs {}", self.layers.len(), other.layers.len()),
            ));
        }
        for (mine, theirs) in self.layers.iter_mut().zip(&other.layers) {
            let Some((ok, ov)) = theirs else { continue };
            *mine = Some(match mine.take() {
                None => (ok.clone(), ov.clone()),
                Some((k, v)) => {
                    let s = k.dims()[2].max(ok.dims()[2]);
                    let k = Tensor::cat(&[&left_pad(&k, s)?, &left_pad(ok, s)?], 0)?;
                    let v = Tensor::cat(&[&left_pad(&v, s)?, &left_pad(ov, s)?], 0)?;
                    (k, v)
                }
            });
        }
        Ok(())
    }

    /// Keep only batch rows `rows` (in that order); an empty list clears the cache.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        if rows.is_empty() {
            self.clear();
            return Ok(());
        }
        for l in self.layers.iter_mut().flatten() {
            let dev = l.0.device().clone();
            let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>().as_slice(), &dev)?;
            *l = (l.0.index_select(&idx, 0)?, l.1.index_select(&idx, 0)?);
        }
        Ok(())
    }

    /// Drop the first `n` positions of every row (left padding no row needs any more).
    pub fn drop_front(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        for l in self.layers.iter_mut() {
            if let Some((k, v)) = l {
                let s = k.dims()[2];
                if n >= s {
                    *l = None;
                } else {
                    *l = Some((
                        k.narrow(2, n, s - n)?.contiguous()?,
                        v.narrow(2, n, s - n)?.contiguous()?,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[B, H, S, D]` -> `[B, H, len, D]` with zeros in front.
fn left_pad(t: &Tensor, len: usize) -> Result<Tensor> {
    let (b, h, s, d) = t.dims4()?;
    if s >= len {
        return Ok(t.clone());
    }
    let z = Tensor::zeros((b, h, len - s, d), t.dtype(), t.device())?;
    Ok(Tensor::cat(&[&z, t], 2)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn filled(b: usize, s: usize, val: f32) -> Tensor {
        Tensor::full(val, (b, 1, s, 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn push_rows_left_pads_and_select_and_drop_front() {
        let mut a = KvCache::new(1);
        a.append(0, &filled(1, 3, 1.0), &filled(1, 3, 1.0)).unwrap();
        let mut b = KvCache::new(1);
        b.append(0, &filled(1, 5, 2.0), &filled(1, 5, 2.0)).unwrap();
        a.push_rows(&b).unwrap();
        assert_eq!((a.batch_size(), a.seq_len()), (2, 5));
        let k = a.layers[0].as_ref().unwrap().0.clone();
        let row0: Vec<f32> = k.narrow(0, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(row0, vec![0., 0., 0., 0., 1., 1., 1., 1., 1., 1.]);
        a.select_rows(&[1]).unwrap();
        assert_eq!((a.batch_size(), a.seq_len()), (1, 5));
        a.drop_front(2).unwrap();
        assert_eq!(a.seq_len(), 3);
        a.select_rows(&[]).unwrap();
        assert_eq!(a.seq_len(), 0);
    }
}
