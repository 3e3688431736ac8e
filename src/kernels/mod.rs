//! Quantized kernels for GGUF Q8_0, Q4_0 and Q4_1 weights: matrix-vector products for decoding
//! and an int8 GEMM for prompt processing.
//!
//! Decoding one token multiplies each weight matrix by one activation row, so the time goes
//! into streaming the weights from memory and turning their codes into products. Plan:
//! * [`pack`]: at load, a GGUF block matrix is split into codes, f16 scales (and Q4_1 minimums)
//!   so the kernels stream plain byte arrays; Q4 codes of four blocks are interleaved so that
//!   the low nibbles of 64 bytes are two whole blocks and the high nibbles the next two.
//! * [`act`]: each activation row is quantized once per call to int8 per 32-block (scale `d`
//!   and `s = d * sum(q)`), then reused by every output row.
//! * [`dot`]: per format, the block dot products as `u8 codes x i8 activations` in integers
//!   (AVX-512 VNNI `vpdpbusd`, AVX2 `vpmaddubsw`, or scalar), scaled per block in f32. The
//!   codes' offsets (Q4_0's 8, Q8_0's 128 after a sign flip) and Q4_1's minimums are applied
//!   once per row through the activation block sums `s`.
//! * [`gemm`]: many activation rows (prompt processing): an int8 GEMM with per-32-block
//!   activation scales over weight panels unpacked into VNNI order; [`kquant`] feeds it GGUF
//!   Q4_K / Q5_K rows.
//! * [`half`]: f16 / bf16 weights against f32 activations (widened in registers).
//! * [`matvec`]: picks the best kernel once (runtime CPU detection) and splits output rows
//!   over rayon threads.
pub mod act;
pub mod attention;
pub mod dot;
pub mod gemm;
pub mod half;
pub mod kquant;
pub mod matvec;
pub mod pack;

pub use act::QuantActs;
pub use matvec::{matvec, Kernel};
pub use pack::{BlockFormat, PackedMatrix};

/// Weights per GGUF block of the formats handled here.
pub const QK: usize = 32;
