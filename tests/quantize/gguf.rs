//! GGUF block types: hand-built blocks decode to the values the GGUF spec defines, candle's
//! encoder writes that layout, and quantize → write GGUF → read → dequantize stays within each
//! format's error.
use crate::randn;
use biomistral::quantize::gguf_quant::quantize_for_gguf;
use biomistral::source::gguf::{qtensor_from_bytes, GgufFile, GgufWriter};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use half::f16;
use rand::SeedableRng;

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn hr(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// candle's decoding of one or more blocks.
fn candle_decode(dtype: GgmlDType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / dtype.type_size() * dtype.block_size();
    let q = qtensor_from_bytes(dtype, bytes, vec![n], &Device::Cpu).unwrap();
    q.dequantize(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap()
}

/// k-quant 6-bit (scale, min) of sub-block j from the 12 packed bytes (GGUF spec).
fn scale_min(j: usize, s: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((s[j] & 63) as f32, (s[j + 4] & 63) as f32)
    } else {
        let sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        let m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (sc as f32, m as f32)
    }
}

/// Pack 8 six-bit scales and mins into the 12-byte k-quant layout.
fn pack_scale_min(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    s
}

/// Independent decoder for one block, written from the GGUF spec (ggml block structs).
fn spec_decode(dtype: GgmlDType, b: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; dtype.block_size()];
    match dtype {
        GgmlDType::Q8_0 => {
            for (i, v) in y.iter_mut().enumerate() {
                *v = hr(b) * (b[2 + i] as i8) as f32;
            }
        }
        GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
            let (d, m, qs) = if dtype == GgmlDType::Q4_0 {
                (hr(b), None, &b[2..18])
            } else {
                (hr(b), Some(hr(&b[2..])), &b[4..20])
            };
            for j in 0..16 {
                let (lo, hi) = ((qs[j] & 0xF) as f32, (qs[j] >> 4) as f32);
                match m {
                    None => {
                        y[j] = (lo - 8.0) * d;
                        y[j + 16] = (hi - 8.0) * d;
                    }
                    Some(m) => {
                        y[j] = lo * d + m;
                        y[j + 16] = hi * d + m;
                    }
                }
            }
        }
        GgmlDType::Q4K | GgmlDType::Q5K => {
            let (d, dmin, sc) = (hr(b), hr(&b[2..]), &b[4..16]);
            let (qh, qs) = if dtype == GgmlDType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for c in 0..4 {
                for half in 0..2 {
                    let j = 2 * c + half;
                    let (s, m) = scale_min(j, sc);
                    for l in 0..32 {
                        let mut q = (qs[32 * c + l] >> (4 * half)) & 0xF;
                        if let Some(qh) = qh {
                            q += ((qh[l] >> j) & 1) << 4;
                        }
                        y[64 * c + 32 * half + l] = d * s * q as f32 - dmin * m;
                    }
                }
            }
        }
        GgmlDType::Q6K => {
            let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], hr(&b[208..]));
            for (e, v) in y.iter_mut().enumerate() {
                let (hh, t) = (e / 128, e % 128);
                let (k, l) = (t / 32, t % 32);
                let lo = (ql[64 * hh + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0xF;
                let hi = (qh[32 * hh + l] >> (2 * k)) & 3;
                let q = (lo | (hi << 4)) as i32 - 32;
                *v = d * (sc[8 * hh + l / 16 + 2 * k] as i8) as f32 * q as f32;
            }
        }
        _ => unreachable!("test covers the types above"),
    }
    y
}

#[test]
fn q8_0_q4_0_q4_1_known_blocks() {
    // q8_0: d = 0.5, q_i = i - 16 → x_i = (i - 16) / 2.
    let mut b = h(0.5).to_vec();
    b.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let want: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
    assert_eq!(candle_decode(GgmlDType::Q8_0, &b), want);
    assert_eq!(spec_decode(GgmlDType::Q8_0, &b), want);
    // q4_0: d = 0.25; byte j = j | (15 - j) << 4 → x_j = (j - 8) d, x_{j+16} = (7 - j) d.
    let mut b = h(0.25).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let want: Vec<f32> = (0..32)
        .map(|i| if i < 16 { i as f32 - 8.0 } else { 7.0 - (i - 16) as f32 } * 0.25)
        .collect();
    assert_eq!(candle_decode(GgmlDType::Q4_0, &b), want);
    assert_eq!(spec_decode(GgmlDType::Q4_0, &b), want);
    // q4_1: d = 0.5, m = -2 → x = q d + m.
    let mut b = h(0.5).to_vec();
    b.extend(h(-2.0));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let want: Vec<f32> = (0..32)
        .map(|i| if i < 16 { i as f32 } else { 15.0 - (i - 16) as f32 } * 0.5 - 2.0)
        .collect();
    assert_eq!(candle_decode(GgmlDType::Q4_1, &b), want);
    assert_eq!(spec_decode(GgmlDType::Q4_1, &b), want);
}

#[test]
fn q4_k_q5_k_q6_k_known_blocks() {
    // Scales and mins above 15 exercise the high-bit packing of sub-blocks 4..8.
    let sc = [1u8, 5, 9, 63, 17, 33, 48, 2];
    let m = [0u8, 3, 62, 7, 20, 1, 40, 15];
    let (d, dmin) = (0.125f32, 0.0625f32);
    let q = |e: usize| ((e * 7 + 3) % 16) as u8;
    let q5 = |e: usize| ((e * 11 + 5) % 32) as u8;
    let expect = |code: &dyn Fn(usize) -> u8| -> Vec<f32> {
        (0..256)
            .map(|e| d * sc[e / 32] as f32 * code(e) as f32 - dmin * m[e / 32] as f32)
            .collect()
    };
    // q4_k: qs[32c + l] low nibble → element 64c + l, high nibble → 64c + 32 + l.
    let mut b = h(d).to_vec();
    b.extend(h(dmin));
    b.extend(pack_scale_min(&sc, &m));
    for c in 0..4 {
        b.extend((0..32).map(|l| q(64 * c + l) | (q(64 * c + 32 + l) << 4)));
    }
    assert_eq!(b.len(), 144);
    let want = expect(&q);
    assert_eq!(candle_decode(GgmlDType::Q4K, &b), want);
    assert_eq!(spec_decode(GgmlDType::Q4K, &b), want);
    // q5_k: the fifth bit of sub-block j's element l is bit j of qh[l].
    let mut b = h(d).to_vec();
    b.extend(h(dmin));
    b.extend(pack_scale_min(&sc, &m));
    b.extend((0..32).map(|l| (0..8).fold(0u8, |a, j| a | (((q5(32 * j + l) >> 4) & 1) << j))));
    for c in 0..4 {
        b.extend((0..32).map(|l| (q5(64 * c + l) & 0xF) | ((q5(64 * c + 32 + l) & 0xF) << 4)));
    }
    assert_eq!(b.len(), 176);
    let want = expect(&q5);
    assert_eq!(candle_decode(GgmlDType::Q5K, &b), want);
    assert_eq!(spec_decode(GgmlDType::Q5K, &b), want);
    // q6_k: x = d * scale[e / 16] * (q - 32), q = 4 low bits (ql) + 2 high bits (qh).
    let q6 = |e: usize| ((e * 5 + 1) % 64) as u8;
    let scales: Vec<i8> = (0..16).map(|i| i as i8 * 3 - 20).collect();
    let d6 = 0.03125f32;
    let (mut ql, mut qh) = (vec![0u8; 128], vec![0u8; 64]);
    for e in 0..256 {
        let (hh, t) = (e / 128, e % 128);
        let (k, l) = (t / 32, t % 32);
        ql[64 * hh + 32 * (k % 2) + l] |= (q6(e) & 0xF) << (4 * (k / 2));
        qh[32 * hh + l] |= (q6(e) >> 4) << (2 * k);
    }
    let mut b = ql;
    b.extend(qh);
    b.extend(scales.iter().map(|&s| s as u8));
    b.extend(h(d6));
    assert_eq!(b.len(), 210);
    let want: Vec<f32> = (0..256)
        .map(|e| d6 * scales[e / 16] as f32 * (q6(e) as f32 - 32.0))
        .collect();
    assert_eq!(candle_decode(GgmlDType::Q6K, &b), want);
    assert_eq!(spec_decode(GgmlDType::Q6K, &b), want);
}

#[test]
fn candle_encoder_writes_the_spec_layout() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let t = Tensor::from_vec(randn(&mut rng, 4 * 512, 0.02), (4, 512), &Device::Cpu).unwrap();
    for dtype in [
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let (used, bytes) = quantize_for_gguf("w", &t, dtype).unwrap();
        assert_eq!(used, dtype);
        let ours: Vec<f32> = bytes
            .chunks_exact(dtype.type_size())
            .flat_map(|b| spec_decode(dtype, b))
            .collect();
        let theirs = candle_decode(dtype, &bytes);
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{dtype:?}: {a} vs {b}");
        }
    }
}

fn rel_rms(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = a.iter().map(|x| x * x).sum();
    (num / den).sqrt()
}

#[test]
fn quantize_write_read_dequantize_round_trip() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let dev = Device::Cpu;
    let w = randn(&mut rng, 16 * 512, 0.02);
    let mat = Tensor::from_vec(w.clone(), (16, 512), &dev).unwrap();
    let norm = Tensor::from_vec(randn(&mut rng, 512, 1.0), 512, &dev).unwrap();
    let odd = Tensor::from_vec(randn(&mut rng, 8 * 40, 1.0), (8, 40), &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (dtype, bound) in [
        (GgmlDType::F16, 1e-3),
        (GgmlDType::BF16, 5e-3),
        (GgmlDType::Q8_0, 0.01),
        (GgmlDType::Q6K, 0.02),
        (GgmlDType::Q5K, 0.05),
        (GgmlDType::Q4K, 0.1),
        (GgmlDType::Q4_1, 0.12),
        (GgmlDType::Q4_0, 0.15),
    ] {
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        let mut wr = GgufWriter::default();
        for (name, t) in [("mat", &mat), ("norm", &norm), ("odd", &odd)] {
            let (used, bytes) = quantize_for_gguf(name, t, dtype).unwrap();
            wr.add_tensor(name, t.dims(), used, bytes).unwrap();
        }
        wr.write(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.tensor_info("mat").unwrap().dtype, dtype);
        let back = |n: &str| -> Vec<f32> {
            let q = f.qtensor(n, &dev).unwrap();
            q.dequantize(&dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let err = rel_rms(&w, &back("mat"));
        assert!(err < bound, "{dtype:?}: relative RMS error {err}");
        // 1-D tensors and rows that are not whole blocks stay exact F32 (for block types).
        for (n, t) in [("norm", &norm), ("odd", &odd)] {
            if dtype.block_size() > 1 {
                assert_eq!(f.tensor_info(n).unwrap().dtype, GgmlDType::F32, "{n}");
                assert_eq!(back(n), t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let t = Tensor::from_vec(vec![f32::NAN; 64], (2, 32), &Device::Cpu).unwrap();
    let e = quantize_for_gguf("blk.0.attn_q.weight", &t, GgmlDType::Q8_0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("non-finite"), "{e}");
    let t = Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(quantize_for_gguf("w", &t, GgmlDType::Q2K).is_err());
}
