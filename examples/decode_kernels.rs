//! Read bandwidth of the single-token decode kernels, so each can be compared with the machine's
//! own limit (`biomistral bench-bandwidth`): `cargo run --release --example decode_kernels
//! [threads]`. Several copies of each matrix are cycled so every call streams from memory, not
//! cache, as in a real decode step.
use biomistral::kernels::half::{HalfKind, HalfMatrix};
use biomistral::kernels::{matvec, BlockFormat, Kernel, PackedMatrix, QuantActs};
use half::f16;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// Copies so that one cycle (> 400 MB) is far past the last-level cache.
const COPIES: usize = 4;

fn report(label: &str, bytes: usize, mut f: impl FnMut(usize)) {
    for i in 0..COPIES {
        f(i);
    }
    // Neighbours on a shared host move single figures by +-30%: the median and the best of
    // many calls are both shown.
    let mut t: Vec<f64> = (0..16 * COPIES)
        .map(|i| {
            let t = Instant::now();
            f(i % COPIES);
            t.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    let (med, best) = (t[t.len() / 2], t[0]);
    let gbs = |s: f64| bytes as f64 / s / 1e9;
    println!(
        "{label:>24}: median {:7.3} ms {:5.1} GB/s, best {:7.3} ms {:5.1} GB/s",
        med * 1e3,
        gbs(med),
        best * 1e3,
        gbs(best)
    );
}

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (rows, cols) = (14336, 4096);
    let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let xa = QuantActs::new(&x, cols);
    let panels = biomistral::kernels::panel::suits(Kernel::best());
    println!(
        "[{rows}, {cols}] matvec, {threads} thread(s), kernel {:?}",
        Kernel::best()
    );
    for f in [BlockFormat::Q4_0, BlockFormat::Q8_0] {
        // Random codes; each block's first two bytes are its f16 scale, 0x2000 (about 0.008).
        let bytes: Vec<u8> = (0..rows * cols / 32 * f.gguf_block_bytes().unwrap())
            .map(|i| {
                if i % f.gguf_block_bytes().unwrap() < 2 {
                    [0x00, 0x20][i % 2]
                } else {
                    rng.gen()
                }
            })
            .collect();
        let ms: Vec<_> = (0..COPIES)
            .map(|_| PackedMatrix::from_gguf_in(f, rows, cols, &bytes, panels && f == BlockFormat::Q4_0).unwrap())
            .collect();
        let mut y = vec![0f32; rows];
        report(&format!("{f:?}"), ms[0].bytes(), |i| {
            matvec(&ms[i], &xa, Kernel::best(), &mut y)
        });
    }
    let codes: Vec<u8> = (0..rows * cols).map(|_| rng.gen_range(0..16)).collect();
    let ng = rows * cols / 128;
    let scales = vec![f16::from_f32(0.01); ng];
    let mins = vec![f16::from_f32(-0.08); ng];
    let ms: Vec<_> = (0..COPIES)
        .map(|_| PackedMatrix::q4_1_grouped_in(rows, cols, &codes, scales.clone(), mins.clone(), panels).unwrap())
        .collect();
    let mut y = vec![0f32; rows];
    report("Q4_1G (AWQ g128)", ms[0].bytes(), |i| {
        matvec(&ms[i], &xa, Kernel::best(), &mut y)
    });
    // The f16 head of an AutoAWQ checkpoint: [32000, 4096].
    let hr = 32000;
    let bits: Vec<u16> = (0..hr * cols)
        .map(|_| f16::from_f32(rng.gen_range(-0.1..0.1)).to_bits())
        .collect();
    let hs: Vec<_> = (0..COPIES)
        .map(|_| HalfMatrix::new(HalfKind::F16, hr, cols, bits.clone()).unwrap())
        .collect();
    let mut y = vec![0f32; hr];
    report("f16 head [32000, 4096]", hs[0].bytes(), |i| hs[i].matvec(&x, 1, &mut y));
}
