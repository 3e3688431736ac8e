//! Rough CPU timing of the quantized matmuls against a dense f32 candle matmul:
//! `cargo run --release --example quant_bench [out] [in] [n]`.
use biomistral::quantize::bnb::{Bnb4Kind, Bnb4Linear, Int8Linear};
use biomistral::quantize::{pseudo_quantize, AwqLinear, QuantLinear};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn time<F: FnMut()>(label: &str, reps: usize, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!("{label:>24}: {:8.2} ms", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
}

fn main() -> biomistral::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (out, inf, n) = (
        args.first().copied().unwrap_or(4096),
        args.get(1).copied().unwrap_or(4096),
        args.get(2).copied().unwrap_or(1),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let w: Vec<f32> = (0..out * inf).map(|_| rng.gen_range(-0.05..0.05)).collect();
    let x: Vec<f32> = (0..n * inf).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let wh: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
    let awq = AwqLinear::new(&pseudo_quantize("w", &wh, out, inf, 128)?, None)?;
    let nf4 = Bnb4Linear::quantize("w", Bnb4Kind::Nf4, &w, out, inf, 64, None)?;
    let int8 = Int8Linear::quantize("w", &w, out, inf, 6.0, None)?;
    let wt = Tensor::from_vec(w, (out, inf), &Device::Cpu)?.t()?.contiguous()?;
    let xt = Tensor::from_vec(x.clone(), (n, inf), &Device::Cpu)?;
    println!("[{n}, {inf}] x [{out}, {inf}]^T");
    let reps = 5;
    time("dense f32 (candle)", reps, || drop(xt.matmul(&wt).unwrap()));
    time("awq int4 g128", reps, || drop(awq.forward_f32(&x, n).unwrap()));
    time("nf4 b64", reps, || drop(nf4.forward_f32(&x, n).unwrap()));
    time("int8 (LLM.int8)", reps, || drop(int8.forward_f32(&x, n).unwrap()));
    Ok(())
}
