//! `biomistral bench-bandwidth`: this machine's memory bandwidth, the ceiling for generation
//! speed (decoding reads every weight once per token), measured STREAM-style.
use clap::Args;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BandwidthArgs {
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Repetitions; the best is reported, as STREAM does.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BandwidthArgs) -> anyhow::Result<()> {
    super::common::set_threads(args.threads)?;
    bandwidth(args.reps, args.json)
}

/// Elements per array: 3 x 256 MiB of f32, far beyond any L3.
const STREAM_LEN: usize = 64 << 20;

/// Sum of `x` with 64 independent partial sums, so the loop is bound by loads, not by add
/// latency; with `prefetch`, each 256-byte step also prefetches 8 KiB ahead, as the decode
/// kernels do (`kernels::panel`). Added because a Q4_0 decode once read faster (38.8 GB/s) than
/// the plain sum (35.0, another run): both figures agree within 3% (27.3 / 27.1 GB/s at 1 thread,
/// 32.4 / 31.6 at 2), so the hardware prefetchers already saturate a sequential read and the
/// plain figure is the ceiling; the 38.8 was that host's run-to-run drift.
fn sum(x: &[f32], prefetch: bool) -> f32 {
    const AHEAD: usize = 8192;
    let mut acc = [0f32; 64];
    for (i, blk) in x.chunks_exact(64).enumerate() {
        #[cfg(target_arch = "x86_64")]
        if prefetch {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let p = x.as_ptr().wrapping_add(64 * i) as *const i8;
            for line in 0..4 {
                // SAFETY: SSE is part of x86_64; a prefetch is a hint and never dereferences its
                // address, which may lie past the slice.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(AHEAD + 64 * line)) };
            }
        }
        for (a, v) in acc.iter_mut().zip(blk) {
            *a += v;
        }
    }
    let _ = prefetch;
    acc.iter().sum::<f32>()
}

/// STREAM-style figures in GB/s (10^9 bytes): triad `a = b + s*c` counting 2 reads and 1 write,
/// and a read-only sum, which is what decoding does with weights, with and without software
/// prefetch. Best of `reps`, as STREAM reports.
fn bandwidth(reps: usize, json: bool) -> anyhow::Result<()> {
    use rayon::prelude::*;
    let chunk = 1 << 16;
    let mut a = vec![0f32; STREAM_LEN];
    let b = vec![1f32; STREAM_LEN];
    let c = vec![2f32; STREAM_LEN];
    // Touch every page first so page faults are not timed.
    a.par_chunks_mut(chunk).for_each(|x| x.fill(0.5));
    let bytes = (STREAM_LEN * 4) as f64;
    let (mut triad, mut read, mut read_prefetch) = (0f64, 0f64, 0f64);
    let mut sink = 0f32;
    for _ in 0..reps.max(1) + 1 {
        let t = Instant::now();
        a.par_chunks_mut(chunk)
            .zip(b.par_chunks(chunk).zip(c.par_chunks(chunk)))
            .for_each(|(x, (y, z))| {
                for ((xi, yi), zi) in x.iter_mut().zip(y).zip(z) {
                    *xi = yi + 3.0 * zi;
                }
            });
        triad = triad.max(3.0 * bytes / t.elapsed().as_secs_f64() / 1e9);
        for (best, prefetch) in [(&mut read, false), (&mut read_prefetch, true)] {
            let t = Instant::now();
            let s: f32 = a.par_chunks(chunk).map(|x| sum(x, prefetch)).sum();
            *best = best.max(bytes / t.elapsed().as_secs_f64() / 1e9);
            sink += s;
        }
    }
    let threads = rayon::current_num_threads();
    let v = serde_json::json!({
        "test": "bandwidth", "threads": threads, "array_bytes": STREAM_LEN * 4,
        "triad_gbps": triad, "read_gbps": read, "read_prefetch_gbps": read_prefetch,
        "checksum": sink,
    });
    if json {
        println!("{v}");
    } else {
        println!(
            "{threads} threads: triad {triad:.1} GB/s, read-only {read:.1} GB/s, read-only with prefetch {read_prefetch:.1} GB/s (best of {reps})"
        );
    }
    Ok(())
}
