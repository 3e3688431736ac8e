//! Quantize f32 weights into GGUF block types. The whole-model HF -> GGUF writer (names,
//! q/k permutation, metadata) is `source::convert::hf_to_gguf`; this is the per-tensor encoder.
//!
//! Block encoding is candle's (`QTensor::quantize`); tests/quantize.rs decodes hand-built and
//! candle-encoded blocks with an independent decoder written from the GGUF spec, so a layout
//! change in candle would be caught.
use crate::error::{Error, Result};
use crate::source::gguf::dtype_name;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

/// The block types we produce (the others candle knows are either activations-only or rarely
/// used for weights).
pub const SUPPORTED: [GgmlDType; 9] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5K,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

fn float_bytes(t: &Tensor, dtype: GgmlDType) -> candle_core::Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match dtype {
        GgmlDType::F16 => flat
            .to_dtype(DType::F16)?
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        GgmlDType::BF16 => flat
            .to_dtype(DType::BF16)?
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    })
}

/// Encode one tensor for a GGUF file as `dtype`, returning the type actually used and the
/// bytes. 1-D tensors (norms, biases) and matrices whose rows are not a whole number of blocks
/// stay F32, as llama.cpp's converter does.
pub fn quantize_for_gguf(name: &str, t: &Tensor, dtype: GgmlDType) -> Result<(GgmlDType, Vec<u8>)> {
    if !SUPPORTED.contains(&dtype) {
        return Err(Error::invalid(
            "GGUF type",
            format!("{} is not supported", dtype_name(dtype)),
        ));
    }
    let dims = t.dims();
    let row = dims.last().copied().unwrap_or(1);
    let keep_f32 = dims.len() < 2 || !row.is_multiple_of(dtype.block_size());
    let dtype = if keep_f32 { GgmlDType::F32 } else { dtype };
    let err = |e: candle_core::Error| Error::tensor(name, format!("quantizing to {}: {e}", dtype_name(dtype)));
    let f32t = t.to_dtype(DType::F32).map_err(err)?;
    let values = f32t.flatten_all().map_err(err)?.to_vec1::<f32>().map_err(err)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::tensor(name, format!("non-finite value at flat index {i}")));
    }
    match dtype {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => Ok((dtype, float_bytes(&f32t, dtype).map_err(err)?)),
        _ => {
            let m = f32t.reshape(((), row)).map_err(err)?;
            Ok((dtype, quantize_rows(&m, dtype).map_err(err)?))
        }
    }
}

/// `QTensor::quantize`'s bytes for a `[rows, cols]` matrix, by chunks of rows on the thread
/// pool: candle's runs on one thread, and at-load `--quant q4_0` of the 4-layer 7B shape took
/// 24.5 s (3.1 s so).
pub(crate) fn quantize_rows(w: &Tensor, t: GgmlDType) -> candle_core::Result<Vec<u8>> {
    use rayon::prelude::*;
    let (rows, cols) = w.dims2()?;
    // About a million values a task: enough to amortise the task, small enough to spread.
    let chunk = (1 << 20) / cols.max(1) + 1;
    let row_bytes = cols / t.block_size() * t.type_size();
    let mut out = vec![0u8; rows * row_bytes];
    out.par_chunks_mut(chunk * row_bytes)
        .enumerate()
        .try_for_each(|(c, dst)| -> candle_core::Result<()> {
            let (r0, n) = (c * chunk, chunk.min(rows - c * chunk));
            // Widened to f32 a chunk at a time (a whole f16 head as f32 took 0.56 GB more on
            // a 7B model), and a fresh copy: `quantize` reads a tensor's storage from its
            // start, whatever the view.
            let part = w
                .narrow(0, r0, n)?
                .to_dtype(candle_core::DType::F32)?
                .force_contiguous()?;
            dst.copy_from_slice(&QTensor::quantize(&part, t)?.data()?);
            Ok(())
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn quantizing_by_row_chunks_gives_candles_bytes() {
        // 4100 rows of 256: several chunks, the last one short.
        let w = Tensor::randn(0f32, 0.05, (4100, 256), &Device::Cpu).unwrap();
        for t in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            let want = QTensor::quantize(&w, t).unwrap();
            assert!(quantize_rows(&w, t).unwrap() == *want.data().unwrap(), "{t:?}");
            // A half-precision weight is widened chunk by chunk to the same values.
            let h = w.to_dtype(candle_core::DType::F16).unwrap();
            let want = QTensor::quantize(&h.to_dtype(candle_core::DType::F32).unwrap(), t).unwrap();
            assert!(quantize_rows(&h, t).unwrap() == *want.data().unwrap(), "{t:?} from f16");
        }
    }
}
