//! Quantization formats: `cargo test --test quantize`.
use rand::Rng;

mod awq;
mod awq_model;
mod awq_search;
mod bnb;
mod gguf;

pub fn randn(rng: &mut rand::rngs::StdRng, n: usize, scale: f32) -> Vec<f32> {
    // Sum of uniforms: close enough to normal for weight-like data, no extra dependency.
    (0..n)
        .map(|_| (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>() * scale)
        .collect()
}

pub fn naive_matmul(x: &[f32], w: &[f32], n: usize, inf: usize, out: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * out];
    for r in 0..n {
        for o in 0..out {
            y[r * out + o] = (0..inf)
                .map(|i| x[r * inf + i] as f64 * w[o * inf + i] as f64)
                .sum::<f64>() as f32;
        }
    }
    y
}
