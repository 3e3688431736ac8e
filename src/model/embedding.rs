//! The token embedding table, kept as it is stored (f16 / bf16, or GGUF blocks) and widened to
//! the compute dtype only for the rows a forward pass looks up.
//!
//! Why: widening the whole table at load cost memory for rows that are only ever read one at
//! a time. Mistral's 32000 x 4096 table is 262 MB in f16 or bf16 and 73 MB in Q4_0, but 524 MB
//! as f32 (the compute dtype of small models) and 262 MB as bf16 (that of 7B ones). llama.cpp
//! likewise dequantizes only the rows it gathers.
use super::linear::Weight;
use crate::error::{Error, Result};
use crate::source::gguf::qtensor_from_bytes;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

#[derive(Clone, Debug)]
enum Table {
    /// Any float dtype; rows are converted after the gather.
    Dense(Tensor),
    /// GGUF blocks (CPU): the gathered rows' blocks are dequantized.
    Quant(Arc<QTensor>),
}

#[derive(Clone, Debug)]
pub struct Embedding {
    table: Table,
    /// The compute dtype rows come out in.
    dtype: DType,
    hidden: usize,
}

impl Embedding {
    /// From the checkpoint's weight `[vocab, hidden]`. On the CPU the table stays as stored;
    /// elsewhere it is widened to `dtype` on `device`, as before.
    pub fn new(w: Weight, dtype: DType, device: &Device) -> Result<Self> {
        let hidden = *w.dims().last().unwrap_or(&0);
        let table = match w {
            Weight::Dense(t) if device.is_cpu() && t.device().is_cpu() => Table::Dense(t),
            Weight::Quant(q) if device.is_cpu() && q.device().is_cpu() => Table::Quant(q),
            other => Table::Dense(other.to_dense(dtype)?.to_device(device)?),
        };
        Ok(Embedding { table, dtype, hidden })
    }

    /// A table already in the compute dtype (fine-tuning makes it a variable).
    pub fn dense(t: Tensor) -> Self {
        let hidden = *t.dims().last().unwrap_or(&0);
        Embedding {
            dtype: t.dtype(),
            table: Table::Dense(t),
            hidden,
        }
    }

    /// Rows `ids` (u32, any shape flattened) as `[n, hidden]` in the compute dtype. Ids are
    /// checked by the caller.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.table {
            Table::Dense(t) => Ok(t.index_select(ids, 0)?.to_dtype(self.dtype)?),
            Table::Quant(q) => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let data = q.data()?;
                let row = data.len() / q.shape().dims()[0];
                let mut rows = Vec::with_capacity(ids.len() * row);
                for &id in &ids {
                    let at = id as usize * row;
                    let bytes = data
                        .get(at..at + row)
                        .ok_or_else(|| Error::invalid("token id", format!("{id} is outside the embedding table")))?;
                    rows.extend_from_slice(bytes);
                }
                let blocks = qtensor_from_bytes(q.dtype(), &rows, vec![ids.len(), self.hidden], &Device::Cpu)?;
                Ok(blocks.dequantize(&Device::Cpu)?.to_dtype(self.dtype)?)
            }
        }
    }

    /// The table widened to the compute dtype, or as it is when it already has it (the same
    /// tensor then, so a head built from it shares its storage).
    pub fn to_dense(&self) -> Result<Tensor> {
        Ok(match &self.table {
            Table::Dense(t) => t.to_dtype(self.dtype)?,
            Table::Quant(q) => q.dequantize(&Device::Cpu)?.to_dtype(self.dtype)?,
        })
    }

    /// The stored table as a weight, for a head tied to it.
    pub fn weight(&self) -> Weight {
        match &self.table {
            Table::Dense(t) => Weight::Dense(t.clone()),
            Table::Quant(q) => Weight::Quant(q.clone()),
        }
    }

    /// The dense table's tensor, if that is how it is held.
    pub fn dense_tensor(&self) -> Option<&Tensor> {
        match &self.table {
            Table::Dense(t) => Some(t),
            Table::Quant(_) => None,
        }
    }

    /// Bytes the table holds.
    pub fn bytes(&self) -> usize {
        match &self.table {
            Table::Dense(t) => super::linear::tensor_bytes(t),
            Table::Quant(q) => q.storage_size_in_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    fn table() -> Tensor {
        let v: Vec<f32> = (0..8 * 64).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        Tensor::from_vec(v, (8, 64), &Device::Cpu).unwrap()
    }

    /// Looked-up rows equal the rows of the whole table widened at once, for dense tables
    /// in every float dtype and for GGUF blocks.
    #[test]
    fn rows_match_the_widened_table() {
        let ids = Tensor::new(&[3u32, 0, 7, 3], &Device::Cpu).unwrap();
        let t = table();
        let mut weights = vec![];
        for dt in [DType::F32, DType::F16, DType::BF16] {
            weights.push(Weight::Dense(t.to_dtype(dt).unwrap()));
        }
        for q in [GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::Q4K] {
            let t = if q == GgmlDType::Q4K {
                table().repeat((1, 4)).unwrap()
            } else {
                table()
            };
            weights.push(Weight::Quant(Arc::new(QTensor::quantize(&t, q).unwrap())));
        }
        for w in weights {
            for dtype in [DType::F32, DType::BF16] {
                let e = Embedding::new(w.clone(), dtype, &Device::Cpu).unwrap();
                let got = e.lookup(&ids).unwrap();
                let want = e.to_dense().unwrap().index_select(&ids, 0).unwrap();
                assert_eq!(got.dtype(), dtype);
                let (g, w) = (
                    got.to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                    want.to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                );
                assert_eq!(g, w, "{:?} as {dtype:?}", e.table);
                assert!(g.iter().any(|&v| v != 0.0));
            }
        }
    }

    #[test]
    fn stays_as_stored_on_the_cpu() {
        let q = Arc::new(QTensor::quantize(&table(), GgmlDType::Q4_0).unwrap());
        let e = Embedding::new(Weight::Quant(q.clone()), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(e.bytes(), q.storage_size_in_bytes());
        let h = Embedding::new(
            Weight::Dense(table().to_dtype(DType::F16).unwrap()),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(h.bytes(), 8 * 64 * 2);
        let bad = Tensor::new(&[8u32], &Device::Cpu).unwrap();
        assert!(e.lookup(&bad).unwrap_err().to_string().contains("token id"));
    }
}
