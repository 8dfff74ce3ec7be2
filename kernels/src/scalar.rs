//! Scalar reference kernels. Semantics: each weight row is dequantized
//! exactly as `edgeq_core::quant::dequantize_row` does, then dotted with the
//! activations using [`dot`]'s fixed summation order.
use edgeq_core::{Scheme, TensorView};

/// 8-lane dot product: lane k sums a[8i+k]·b[8i+k]; lanes are added
/// pairwise ((0+4)+(2+6))+((1+5)+(3+7)), then the tail is added in order.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

pub fn matmul(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: core::ops::Range<usize>, scratch: &mut [f32]) {
    let (n_rows, cols) = (w.rows(), w.cols());
    if rows.end > n_rows || rows.start > rows.end || y.len() < t * n_rows || x.len() < t * cols || scratch.len() < cols {
        return;
    }
    let Some(row) = scratch.get_mut(..cols) else { return };
    let data = w.as_f32();
    for r in rows {
        let wr: &[f32] = if w.scheme() == Scheme::F32 {
            data.get(r * cols..(r + 1) * cols).unwrap_or(&[])
        } else {
            w.dequantize_row(r, row);
            row
        };
        for (i, xi) in x.chunks_exact(cols.max(1)).take(t).enumerate() {
            if let Some(y) = y.get_mut(i * n_rows + r) {
                *y = dot(wr, xi);
            }
        }
    }
}
