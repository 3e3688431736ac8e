//! AWQ search on a synthetic two-linear block (norm → W1 → W2) with salient input channels:
//! scales folded into the norm / W1 keep the fp output, and scale + clip search beats RTN.
use crate::randn;
use biomistral::quantize::awq_search::{
    apply_clip, fake_quantize, fold_into_linear, fold_into_norm, scale_columns, search_best_scale, search_clip,
    AwqSearchOptions,
};
use biomistral::Result;
use candle_core::{Device, Tensor};
use rand::SeedableRng;

struct Block {
    norm: Tensor, // [d]
    w1: Tensor,   // [h, d]
    w2: Tensor,   // [d, h]
}

impl Block {
    fn normed(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_mul(&self.norm)?)
    }
    fn forward_with(&self, x: &Tensor, w1: &Tensor, w2: &Tensor) -> Result<Tensor> {
        Ok(self.normed(x)?.matmul(&w1.t()?)?.matmul(&w2.t()?)?)
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, &self.w1, &self.w2)
    }
}

fn mse(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn awq_search_beats_rtn_on_salient_channels() {
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let (n, d, h, gs) = (256, 64, 128, 32);
    let mut xv = randn(&mut rng, n * d, 1.0);
    for r in 0..n {
        for c in [3, 17, 40] {
            xv[r * d + c] *= 20.0; // salient activation channels
        }
    }
    let x = Tensor::from_vec(xv, (n, d), &dev).unwrap();
    let mut w1v = randn(&mut rng, h * d, 0.05);
    for c in 0..d {
        w1v[5 * d + c] *= 10.0; // makes hidden channel 5 salient for W2
    }
    let block = Block {
        norm: Tensor::from_vec(randn(&mut rng, d, 0.2), d, &dev)
            .unwrap()
            .affine(1.0, 1.0)
            .unwrap(),
        w1: Tensor::from_vec(w1v, (h, d), &dev).unwrap(),
        w2: Tensor::from_vec(randn(&mut rng, d * h, 0.05), (d, h), &dev).unwrap(),
    };
    let reference = block.forward(&x).unwrap();
    let opts = AwqSearchOptions {
        group_size: gs,
        ..Default::default()
    };

    // Plain RTN baseline.
    let rtn_out = block
        .forward_with(
            &x,
            &fake_quantize("w1", &block.w1, gs).unwrap(),
            &fake_quantize("w2", &block.w2, gs).unwrap(),
        )
        .unwrap();
    let rtn = mse(&reference, &rtn_out);

    // Scale group 1: W1 reads norm(x); the whole block is inspected.
    let x1 = block.normed(&x).unwrap();
    let rows = |t: &Tensor, r: std::ops::Range<usize>| t.narrow(0, r.start, r.len()).unwrap();
    let s1 = search_best_scale(std::slice::from_ref(&block.w1), &x1, &opts, &|ws, r| {
        block.forward_with(&rows(&x, r), &ws[0], &block.w2)
    })
    .unwrap();
    assert!(s1.ratio.is_some(), "a non-trivial scaling must win here");
    assert!(s1.loss < s1.rtn_loss);
    // The same search a few sequences at a time (16 sequences of 16 rows, 3 per forward, so
    // the last chunk is short): the same choice and the same loss up to summation order.
    let chunked = AwqSearchOptions {
        seq_len: 16,
        chunk_rows: 48,
        ..opts.clone()
    };
    assert_eq!(
        biomistral::quantize::awq_search::row_chunks(n, &chunked).len(),
        6,
        "256 rows in chunks of 48"
    );
    let calls = std::cell::Cell::new(0);
    let s1c = search_best_scale(std::slice::from_ref(&block.w1), &x1, &chunked, &|ws, r| {
        assert!(r.len() <= 48 && r.start % 16 == 0, "{r:?}");
        calls.set(calls.get() + 1);
        block.forward_with(&rows(&x, r), &ws[0], &block.w2)
    })
    .unwrap();
    assert_eq!(
        calls.get(),
        6 * (opts.n_grid + 2),
        "reference, RTN and each grid step per chunk"
    );
    assert_eq!((s1c.ratio, &s1c.scales), (s1.ratio, &s1.scales));
    assert!(
        (s1c.loss - s1.loss).abs() <= 1e-5 * s1.loss,
        "{} vs {}",
        s1c.loss,
        s1.loss
    );
    let scaled = Block {
        norm: fold_into_norm(&block.norm, &s1.scales).unwrap(),
        w1: scale_columns(&block.w1, &s1.scales).unwrap(),
        w2: block.w2.clone(),
    };
    // Folding leaves the fp block unchanged.
    assert!(mse(&reference, &scaled.forward(&x).unwrap()) < 1e-8);

    // Scale group 2: W2 reads W1's output; fold into W1's rows.
    let x2 = scaled.normed(&x).unwrap().matmul(&scaled.w1.t().unwrap()).unwrap();
    let s2 = search_best_scale(std::slice::from_ref(&scaled.w2), &x2, &opts, &|ws, r| {
        Ok(rows(&x2, r).matmul(&ws[0].t()?)?)
    })
    .unwrap();
    let scaled = Block {
        norm: scaled.norm.clone(),
        w1: fold_into_linear(&scaled.w1, &s2.scales).unwrap(),
        w2: scale_columns(&scaled.w2, &s2.scales).unwrap(),
    };
    assert!(mse(&reference, &scaled.forward(&x).unwrap()) < 1e-8);

    // Clip search on the scaled weights with their (scaled) inputs, then quantize.
    let x1 = scaled.normed(&x).unwrap();
    let x2 = x1.matmul(&scaled.w1.t().unwrap()).unwrap();
    let c1 = search_clip("w1", &scaled.w1, &x1, &opts).unwrap();
    let c2 = search_clip("w2", &scaled.w2, &x2, &opts).unwrap();
    let q1 = fake_quantize("w1", &apply_clip("w1", &scaled.w1, &c1, gs).unwrap(), gs).unwrap();
    let q2 = fake_quantize("w2", &apply_clip("w2", &scaled.w2, &c2, gs).unwrap(), gs).unwrap();
    let awq = mse(&reference, &scaled.forward_with(&x, &q1, &q2).unwrap());
    eprintln!(
        "block output MSE: RTN {rtn:.3e}, AWQ {awq:.3e} (ratios {:?} / {:?})",
        s1.ratio, s2.ratio
    );
    assert!(awq < 0.7 * rtn, "AWQ {awq} vs RTN {rtn}");

    // Bad input names the problem.
    let e = search_clip("w1", &block.w1, &x2, &opts).unwrap_err().to_string();
    assert!(e.contains("w1"), "{e}");
    assert!(search_best_scale(&[], &x1, &opts, &|_, _| Ok(x1.clone())).is_err());
}
