//! edgeq kernels: the matrix products the runtime executes, for every
//! weight scheme. `scalar.rs` is the reference every SIMD kernel (one file
//! per architecture, added alongside) is tested against.
//!
//! Convention: a weight `W` is `[rows, cols]` (`[out, in]`); activations are
//! `t` row-major vectors of `cols` floats; outputs are `t` vectors of `rows`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "std")]
extern crate std;

pub mod scalar;

use edgeq_core::TensorView;

/// `y[i][r] = Σ_c W[r][c] · x[i][c]` for `i < t`, rows `rows.start..rows.end`.
///
/// `y` holds `t` vectors of `W.rows()`; only the given row range is written,
/// so callers may split rows across threads. `scratch` needs `W.cols()`
/// floats (one dequantized row). Slices that are too short are a caller bug
/// and make the call return without writing (never a panic, never UB).
#[inline]
pub fn matmul(
    y: &mut [f32],
    w: &TensorView<'_>,
    x: &[f32],
    t: usize,
    rows: core::ops::Range<usize>,
    scratch: &mut [f32],
) {
    scalar::matmul(y, w, x, t, rows, scratch)
}

/// Dot product of two equal-length f32 slices with 8 independent partial
/// sums (a fixed, vectorizable summation order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    scalar::dot(a, b)
}
