//! bitsandbytes-style int8 (LLM.int8) and NF4/FP4 formats.
use crate::{naive_matmul, randn};
use biomistral::quantize::bnb::{Bnb4Kind, Bnb4Linear, Int8Linear, FP4_TABLE, NF4_TABLE};
use biomistral::quantize::QuantLinear;
use rand::SeedableRng;

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
