//! `y = x W^T` for a few activation rows: output rows split over rayon threads.
use super::act::QuantActs;
use super::dot::DotFn;
use super::pack::PackedMatrix;
use rayon::prelude::*;

pub use super::dot::Kernel;

/// Weight bytes below which one task is not split further (rayon's per-task cost is about a
/// microsecond; 32 KiB of codes take a few).
const MIN_TASK_BYTES: usize = 32 << 10;
/// Tasks per thread, so a thread slowed by other work on the machine is helped out.
const TASKS_PER_THREAD: usize = 8;

/// Output rows per task for `w`.
fn rows_per_task(w: &PackedMatrix) -> usize {
    let bytes_per_row = (w.bytes() / w.rows).max(1);
    let by_size = w.bytes().div_ceil(MIN_TASK_BYTES);
    let tasks = (rayon::current_num_threads() * TASKS_PER_THREAD).min(by_size).max(1);
    w.rows
        .div_ceil(tasks)
        .max(MIN_TASK_BYTES.div_ceil(bytes_per_row).min(w.rows))
}

/// `y [n, rows] = x [n, cols] W^T` with `dot` from [`Kernel::dot_fn`] for `w.format`.
///
/// # Safety
/// `dot` must come from [`Kernel::dot_fn`] (which checks the CPU) for `w.format`.
pub unsafe fn matvec(w: &PackedMatrix, x: &QuantActs, dot: DotFn, y: &mut [f32]) {
    let n = x.rows();
    assert!(x.cols == w.cols && y.len() == n * w.rows);
    let chunk = rows_per_task(w);
    if n == 1 {
        let xr = x.row(0);
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, yc)| {
            for (k, v) in yc.iter_mut().enumerate() {
                // SAFETY: the caller guarantees `dot` suits this CPU and format.
                *v = unsafe { dot(w.row(c * chunk + k), xr) };
            }
        });
        return;
    }
    // Several rows: each weight row is used for all n while it is in cache; results come out
    // [rows, n] and are transposed.
    let mut yt = vec![0f32; n * w.rows];
    yt.par_chunks_mut(chunk * n).enumerate().for_each(|(c, yc)| {
        for (k, yo) in yc.chunks_exact_mut(n).enumerate() {
            let wr = w.row(c * chunk + k);
            for (r, v) in yo.iter_mut().enumerate() {
                // SAFETY: as above.
                *v = unsafe { dot(wr, x.row(r)) };
            }
        }
    });
    for (o, yo) in yt.chunks_exact(n).enumerate() {
        for (r, v) in yo.iter().enumerate() {
            y[r * w.rows + o] = *v;
        }
    }
}
