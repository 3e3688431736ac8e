//! bitsandbytes-style int8 (LLM.int8) and NF4/FP4 formats.
use crate::{naive_matmul, randn};
use biomistral::quantize::awq::RawTensor;
use biomistral::quantize::bnb::{Bnb4Kind, Bnb4Linear, Int8Linear, FP4_TABLE, NF4_TABLE};
use biomistral::quantize::bnb_ckpt::{bnb4_module_tensors, load_bnb4_linear, load_int8_linear, BnbConfig};
use biomistral::quantize::QuantLinear;
use rand::SeedableRng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

#[test]
fn nf4_and_fp4_dequantize_unit_vectors_to_the_code_tables() {
    for kind in [Bnb4Kind::Nf4, Bnb4Kind::Fp4] {
        let table = kind.table();
        // A block holding every table value times absmax 2.5 decodes to exactly those values.
        let w: Vec<f32> = table.iter().map(|t| t * 2.5).collect();
        let l = Bnb4Linear::quantize("w", kind, &w, 1, 16, 64, None).unwrap();
        assert_eq!(l.absmax(), &[2.5]);
        assert_eq!(l.dequantize(), w, "{kind:?}");
        // Unit vector e_3 * 0.75: absmax 0.75, code of 1.0 at index 3, code of 0.0 elsewhere.
        let mut e = vec![0f32; 64];
        e[3] = 0.75;
        let l = Bnb4Linear::quantize("e", kind, &e, 1, 64, 64, None).unwrap();
        assert_eq!(l.dequantize(), e, "{kind:?}");
        let one = table.iter().position(|&t| t == 1.0).unwrap() as u8;
        let zero = table.iter().position(|&t| t == 0.0).unwrap() as u8;
        assert_eq!(
            l.packed()[1],
            (zero << 4) | one,
            "element 2k high nibble, 2k+1 low nibble"
        );
        // Negative unit vector.
        e[3] = -0.75;
        let l = Bnb4Linear::quantize("e", kind, &e, 1, 64, 64, None).unwrap();
        assert_eq!(l.dequantize(), e, "{kind:?}");
    }
    // Hand-built bytes decode through bitsandbytes' definitions.
    let l = Bnb4Linear::from_parts(Bnb4Kind::Nf4, 1, 4, 64, vec![0x0F, 0x8D], vec![2.0], None).unwrap();
    assert_eq!(l.dequantize(), vec![-2.0, 2.0, 2.0 * NF4_TABLE[8], 2.0 * NF4_TABLE[13]]);
    assert_eq!(NF4_TABLE[13], 0.562_617_f32);
    // FP4: sign bit 3, e2m1 magnitudes (bias 3, subnormal 0.0625) normalised by the maximum 12.
    for (k, m) in [0.0f32, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0].iter().enumerate() {
        assert!((FP4_TABLE[k] - m / 12.0).abs() < 1e-7 && FP4_TABLE[k + 8] == -FP4_TABLE[k]);
    }
    let l = Bnb4Linear::from_parts(Bnb4Kind::Fp4, 1, 4, 64, vec![0x31, 0xB6], vec![3.0], None).unwrap();
    assert_eq!(l.dequantize(), vec![3.0, 3.0 * FP4_TABLE[1], -3.0, 0.5]);
    assert!(Bnb4Linear::from_parts(Bnb4Kind::Nf4, 2, 4, 64, vec![0; 3], vec![1.0], None).is_err());
}

#[test]
fn four_bit_round_trip_error_is_bounded_and_matmul_matches_dequantized() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (out, inf, n) = (37, 100, 5); // 3700 elements: last block partial, blocks straddle rows
    let w = randn(&mut rng, out * inf, 0.05);
    let x = randn(&mut rng, n * inf, 1.0);
    for kind in [Bnb4Kind::Nf4, Bnb4Kind::Fp4] {
        let l = Bnb4Linear::quantize("w", kind, &w, out, inf, 64, Some(vec![0.5; out])).unwrap();
        let deq = l.dequantize();
        // Largest gap between neighbouring codes bounds the error at half of it times absmax.
        let mut sorted = kind.table().to_vec();
        sorted.sort_by(f32::total_cmp);
        let gap = sorted.windows(2).map(|p| p[1] - p[0]).fold(0f32, f32::max);
        for (k, (a, b)) in w.iter().zip(&deq).enumerate() {
            let absmax = l.absmax()[k / 64];
            assert!((a - b).abs() <= 0.5 * gap * absmax + 1e-7, "{kind:?}[{k}]: {a} vs {b}");
        }
        // n = 5 runs the per-row kernel, n = 20 the dequantize + GEMM path.
        for n in [n, 20] {
            let x = randn(&mut rng, n * inf, 1.0);
            let want: Vec<f32> = naive_matmul(&x, &deq, n, inf, out).iter().map(|v| v + 0.5).collect();
            let got = l.forward_f32(&x, n).unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{kind:?} n{n}: {a} vs {b}");
            }
        }
        assert!(l.forward_f32(&x[1..], n).is_err());
    }
}

#[test]
fn int8_rowwise_absmax_with_outlier_columns() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (out, inf, n) = (19, 70, 4);
    let mut w = randn(&mut rng, out * inf, 0.05);
    w[3 * inf + 10] = 9.0; // a weight outlier: column 10 is kept in f32
    let l = Int8Linear::quantize("w", &w, out, inf, 6.0, None).unwrap();
    assert_eq!(l.outlier_cols(), &[10]);
    let deq = l.dequantize();
    for r in 0..out {
        // The int8 scale ignores the outlier column, so the rest of row 3 keeps its precision.
        let s = l.row_scale()[r];
        assert!(s < 0.01, "row {r} scale {s}");
        for c in 0..inf {
            let (a, b) = (w[r * inf + c], deq[r * inf + c]);
            if c == 10 {
                assert_eq!(a, b);
            } else {
                assert!((a - b).abs() <= 0.5 * s + 1e-7);
            }
        }
    }
    // Unit vectors: absmax row scaling is exact for the largest element.
    let e: Vec<f32> = (0..8).map(|i| if i == 2 { -0.3 } else { 0.0 }).collect();
    let le = Int8Linear::quantize("e", &e, 1, 8, 6.0, None).unwrap();
    assert_eq!(le.codes()[2], -127);
    assert_eq!(le.dequantize(), e);

    // Activation outlier column 40 (value 50) goes through the f32 path.
    let mut x = randn(&mut rng, n * inf, 1.0);
    x[inf + 40] = 50.0;
    let got = l.forward_f32(&x, n).unwrap();
    let want = naive_matmul(&x, &deq, n, inf, out);
    for r in 0..n {
        let xr = &x[r * inf..(r + 1) * inf];
        // int8 activation error: half a step of the row's absmax over the non-outlier columns.
        let sx = xr
            .iter()
            .enumerate()
            .filter(|(c, _)| *c != 10 && *c != 40)
            .fold(0f32, |m, (_, v)| m.max(v.abs()))
            / 127.0;
        for o in 0..out {
            let wsum: f32 = deq[o * inf..(o + 1) * inf].iter().map(|v| v.abs()).sum();
            let (a, b) = (got[r * out + o], want[r * out + o]);
            assert!((a - b).abs() <= 0.5 * sx * wsum + 1e-4, "[{r},{o}] {a} vs {b}");
        }
    }
    // Without the decomposition the 50.0 would set the int8 scale of row 1; check it did not.
    let x1 = &x[inf..2 * inf];
    let exact: f32 = (0..inf).map(|i| x1[i] * deq[i]).sum();
    assert!((got[out] - exact).abs() < 0.05, "{} vs {exact}", got[out]);
    // Large batches take the dequantize + GEMM path: exact against the dequantized weight.
    let xb = randn(&mut rng, 20 * inf, 1.0);
    let (got_b, want_b) = (l.forward_f32(&xb, 20).unwrap(), naive_matmul(&xb, &deq, 20, inf, out));
    for (a, b) in got_b.iter().zip(&want_b) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // candle entry point through the trait
    let xt = candle_core::Tensor::from_vec(x.clone(), (n, inf), &candle_core::Device::Cpu).unwrap();
    let yt = l.forward(&xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(yt, got);
    // Bad input.
    assert!(Int8Linear::quantize("w", &w, out, inf + 1, 6.0, None).is_err());
    assert!(Int8Linear::quantize("w", &w, out, inf, -1.0, None).is_err());
    let mut nan = w.clone();
    nan[7] = f32::NAN;
    let e = Int8Linear::quantize("layer.w", &nan, out, inf, 6.0, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer.w"), "{e}");
}

// ---- Hugging Face bitsandbytes checkpoints ----

fn serialize(ts: &[(String, RawTensor)]) -> Vec<u8> {
    let views: Vec<_> = ts
        .iter()
        .map(|(n, t)| (n.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn bnb4_checkpoint_round_trip_and_double_quantization() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let w = randn(&mut rng, 37 * 100, 0.05);
    for kind in [Bnb4Kind::Nf4, Bnb4Kind::Fp4] {
        let l = Bnb4Linear::quantize("w", kind, &w, 37, 100, 64, None).unwrap();
        let bytes = serialize(&bnb4_module_tensors("m", &l));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let back = load_bnb4_linear(&st, "m", None).unwrap();
        assert_eq!(back.dequantize(), l.dequantize(), "{kind:?}");
    }
    // Double quantization: absmax = nested_quant_map[code] * nested_absmax + offset.
    let l = Bnb4Linear::quantize("w", Bnb4Kind::Nf4, &w[..256], 2, 128, 64, None).unwrap();
    let mut ts = bnb4_module_tensors("m", &l);
    let codes = [0u8, 100, 200, 255];
    ts[1].1 = RawTensor {
        dtype: Dtype::U8,
        shape: vec![4],
        data: codes.to_vec(),
    };
    let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let nmap: Vec<f32> = (0..256).map(|i| i as f32 / 255.0).collect();
    ts.push((
        "m.weight.nested_absmax".into(),
        RawTensor {
            dtype: Dtype::F32,
            shape: vec![1],
            data: f32b(&[2.0]),
        },
    ));
    ts.push((
        "m.weight.nested_quant_map".into(),
        RawTensor {
            dtype: Dtype::F32,
            shape: vec![256],
            data: f32b(&nmap),
        },
    ));
    let state = serde_json::json!({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 128],
        "nested_blocksize": 256, "nested_offset": 0.5, "nested_dtype": "float32"});
    let sb = state.to_string().into_bytes();
    ts[3].1 = RawTensor {
        dtype: Dtype::U8,
        shape: vec![sb.len()],
        data: sb,
    };
    let bytes = serialize(&ts);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let back = load_bnb4_linear(&st, "m", None).unwrap();
    let want_absmax: Vec<f32> = codes.iter().map(|&c| nmap[c as usize] * 2.0 + 0.5).collect();
    assert_eq!(back.absmax(), want_absmax.as_slice());
    let deq = back.dequantize();
    for (k, v) in deq.iter().enumerate() {
        let code = if k.is_multiple_of(2) {
            l.packed()[k / 2] >> 4
        } else {
            l.packed()[k / 2] & 0xF
        };
        assert_eq!(*v, NF4_TABLE[code as usize] * want_absmax[k / 64]);
    }
}

#[test]
fn int8_checkpoint_and_bad_bnb_checkpoints() {
    let codes: Vec<i8> = (0..6 * 10).map(|i| (i * 37 % 255 - 127) as i8).collect();
    let scb = [1.0f32, 2.0, 0.5, 127.0, 0.0, 3.0];
    let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ts = vec![
        (
            "m.weight".to_string(),
            RawTensor {
                dtype: Dtype::I8,
                shape: vec![6, 10],
                data: codes.iter().map(|&c| c as u8).collect(),
            },
        ),
        (
            "m.SCB".to_string(),
            RawTensor {
                dtype: Dtype::F32,
                shape: vec![6],
                data: f32b(&scb),
            },
        ),
    ];
    let bytes = serialize(&ts);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let l = load_int8_linear(&st, "m", 6.0, None).unwrap();
    let deq = l.dequantize();
    for (k, v) in deq.iter().enumerate() {
        assert!((v - codes[k] as f32 * scb[k / 10] / 127.0).abs() < 1e-6);
    }
    let e = load_int8_linear(&st, "x", 6.0, None).unwrap_err().to_string();
    assert!(e.contains("x.weight") && e.contains("missing"), "{e}");
    let bad = serialize(&[
        ts[0].clone(),
        (
            "m.SCB".to_string(),
            RawTensor {
                dtype: Dtype::F32,
                shape: vec![5],
                data: f32b(&scb[..5]),
            },
        ),
    ]);
    let e = load_int8_linear(&SafeTensors::deserialize(&bad).unwrap(), "m", 6.0, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("m.SCB"), "{e}");

    // 4-bit: missing quant state, foreign code table, wrong absmax count.
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let l = Bnb4Linear::quantize("w", Bnb4Kind::Nf4, &randn(&mut rng, 4 * 64, 0.1), 4, 64, 64, None).unwrap();
    let good = bnb4_module_tensors("m", &l);
    let check = |ts: &[(String, RawTensor)], want: &str| {
        let bytes = serialize(ts);
        let e = load_bnb4_linear(&SafeTensors::deserialize(&bytes).unwrap(), "m", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
    };
    check(&good[..3], "quant_state");
    let mut t = good.clone();
    t[2].1.data = f32b(&FP4_TABLE);
    check(&t, "m.weight.quant_map");
    let mut t = good.clone();
    t[1].1 = RawTensor {
        dtype: Dtype::F32,
        shape: vec![3],
        data: f32b(&[1.0, 1.0, 1.0]),
    };
    check(&t, "m.weight.absmax");

    // quantization_config
    let c = BnbConfig::from_json(
        &serde_json::json!({"quantization_config": {"quant_method": "bitsandbytes",
        "load_in_4bit": true, "bnb_4bit_quant_type": "nf4", "llm_int8_skip_modules": ["lm_head"]}}),
    )
    .unwrap();
    assert_eq!((c.load_in_4bit, c.quant_type, c.threshold), (true, Bnb4Kind::Nf4, 6.0));
    assert_eq!(c.skip_modules, vec!["lm_head".to_string()]);
    let e = BnbConfig::from_json(&serde_json::json!({"quant_method": "bitsandbytes"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("load_in_4bit"), "{e}");
}
