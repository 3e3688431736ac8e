//! `y = x W^T` for a few activation rows: output rows split over rayon threads.
use super::act::QuantActs;
use super::pack::PackedMatrix;
use rayon::prelude::*;

pub use super::dot::Kernel;

/// Weight bytes below which one task is not split further (rayon's per-task cost is about a
/// microsecond; 32 KiB of codes take a few).
const MIN_TASK_BYTES: usize = 32 << 10;
/// Tasks per thread, so a thread slowed by other work on the machine is helped out.
const TASKS_PER_THREAD: usize = 8;

/// Output rows per task for a matrix of `rows` rows holding `bytes` bytes.
pub(crate) fn rows_per_task(rows: usize, bytes: usize) -> usize {
    let bytes_per_row = (bytes / rows.max(1)).max(1);
    let by_size = bytes.div_ceil(MIN_TASK_BYTES);
    let tasks = (rayon::current_num_threads() * TASKS_PER_THREAD).min(by_size).max(1);
    rows.div_ceil(tasks)
        .max(MIN_TASK_BYTES.div_ceil(bytes_per_row).min(rows))
        .max(1)
}

/// `y [n, rows]` with `y[r * rows + o] = dot(o, r)`, tasks of `chunk` weight rows: each weight
/// row is used for all n input rows while it is in cache; results come out [rows, n] and are
/// transposed.
pub(crate) fn by_weight_rows(
    rows: usize,
    n: usize,
    chunk: usize,
    y: &mut [f32],
    dot: impl Fn(usize, usize) -> f32 + Sync,
) {
    let mut yt = vec![0f32; n * rows];
    yt.par_chunks_mut(chunk * n).enumerate().for_each(|(c, yc)| {
        for (k, yo) in yc.chunks_exact_mut(n).enumerate() {
            for (r, v) in yo.iter_mut().enumerate() {
                *v = dot(c * chunk + k, r);
            }
        }
    });
    transpose_into(&yt, n, rows, y);
}

/// `y [n, rows]` from results `yt [rows, n]`.
pub(crate) fn transpose_into(yt: &[f32], n: usize, rows: usize, y: &mut [f32]) {
    for (o, yo) in yt.chunks_exact(n).enumerate() {
        for (r, v) in yo.iter().enumerate() {
            y[r * rows + o] = *v;
        }
    }
}

/// `y [n, rows] = x [n, cols] W^T` on `kernel` (which must run on this CPU: see
/// [`Kernel::is_available`]). Panel-layout matrices take the panel kernels, SIMD unless
/// `kernel` is [`Kernel::Scalar`].
pub fn matvec(w: &PackedMatrix, x: &QuantActs, kernel: Kernel, y: &mut [f32]) {
    if w.panels {
        return super::panel::matvec_panels(w, x, kernel != Kernel::Scalar, y);
    }
    let dot = kernel.dot_fn(w.format).expect("matvec on a kernel this CPU cannot run");
    let n = x.rows();
    assert!(x.cols == w.cols && y.len() == n * w.rows);
    let chunk = rows_per_task(w.rows, w.bytes());
    if n == 1 {
        let xr = x.row(0);
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, yc)| {
            for (k, v) in yc.iter_mut().enumerate() {
                // SAFETY: `dot_fn` checked the CPU features for this format.
                *v = unsafe { dot(w.row(c * chunk + k), xr) };
            }
        });
        return;
    }
    // SAFETY: as above.
    by_weight_rows(w.rows, n, chunk, y, |o, r| unsafe { dot(w.row(o), x.row(r)) });
}
