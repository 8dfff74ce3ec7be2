//! Row-parallel matrix products on rayon's pool (feature `rayon`, with
//! `std`). Rows are split into `threads` contiguous ranges of whole
//! 16-row chunks; each range runs the single-threaded kernel on its own
//! row view ([`TensorView::row_slice`]), so results are bit-identical to
//! [`crate::matmul`] / [`crate::matmul_q8`] for any thread count.
extern crate alloc;
use crate::Q8Acts;
use alloc::vec;
use alloc::vec::Vec;
use edgeq_core::TensorView;

/// Below this many weight bytes per thread the split costs more than it
/// saves (a rayon join is a few microseconds).
const MIN_BYTES_PER_THREAD: u64 = 64 * 1024;

fn ranges(w: &TensorView<'_>, threads: usize) -> Option<Vec<(usize, usize)>> {
    let rows = w.rows();
    let bytes = w.layout.total_bytes.max(1);
    let by_size = (bytes / MIN_BYTES_PER_THREAD).max(1) as usize;
    let n = threads.min(by_size).min(rows.div_ceil(16));
    if n <= 1 || w.row_slice(0, 0).is_none() {
        return None;
    }
    let per = rows.div_ceil(n).div_ceil(16) * 16;
    Some(
        (0..n)
            .map(|k| (k * per, ((k + 1) * per).min(rows)))
            .filter(|(a, b)| a < b)
            .collect(),
    )
}

/// Copies per-range outputs `[t][r1−r0]` into `y` (`[t][rows]`).
fn scatter(y: &mut [f32], rows: usize, t: usize, parts: Vec<((usize, usize), Vec<f32>)>) {
    for ((r0, r1), part) in parts {
        let n = r1 - r0;
        for i in 0..t {
            y[i * rows + r0..i * rows + r1].copy_from_slice(&part[i * n..(i + 1) * n]);
        }
    }
}

/// [`crate::matmul`] over all rows of `w`, on up to `threads` threads.
pub fn matmul(threads: usize, y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, scratch: &mut [f32]) {
    let rows = w.rows();
    let Some(rs) = ranges(w, threads).filter(|_| crate::support::args_ok(y, w, x, t, &(0..rows), scratch)) else {
        return crate::matmul(y, w, x, t, 0..rows, scratch);
    };
    use rayon::prelude::*;
    if t == 1 {
        // One token: each range writes its own slice of `y` directly.
        let per = rs[0].1;
        y[..rows].par_chunks_mut(per).enumerate().for_each(|(k, out)| {
            let mut row = vec![0.0f32; w.cols()];
            if let Some(v) = w.row_slice(k * per, k * per + out.len()) {
                crate::matmul(out, &v, x, 1, 0..out.len(), &mut row);
            }
        });
        return;
    }
    let parts: Vec<_> = rs
        .into_par_iter()
        .map(|(r0, r1)| {
            let mut part = vec![0.0f32; t * (r1 - r0)];
            let mut row = vec![0.0f32; w.cols()];
            if let Some(v) = w.row_slice(r0, r1) {
                crate::matmul(&mut part, &v, x, t, 0..r1 - r0, &mut row);
            }
            ((r0, r1), part)
        })
        .collect();
    scatter(y, rows, t, parts);
}

/// [`crate::matmul_q8`] over all rows of `w`, on up to `threads` threads.
pub fn matmul_q8(threads: usize, y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>) {
    let rows = w.rows();
    let Some(rs) = ranges(w, threads).filter(|_| crate::support::q8_args_ok(y, w, a, &(0..rows))) else {
        return crate::matmul_q8(y, w, a, 0..rows);
    };
    use rayon::prelude::*;
    if a.t == 1 {
        let per = rs[0].1;
        y[..rows].par_chunks_mut(per).enumerate().for_each(|(k, out)| {
            if let Some(v) = w.row_slice(k * per, k * per + out.len()) {
                crate::matmul_q8(out, &v, a, 0..out.len());
            }
        });
        return;
    }
    let parts: Vec<_> = rs
        .into_par_iter()
        .map(|(r0, r1)| {
            let mut part = vec![0.0f32; a.t * (r1 - r0)];
            if let Some(v) = w.row_slice(r0, r1) {
                crate::matmul_q8(&mut part, &v, a, 0..r1 - r0);
            }
            ((r0, r1), part)
        })
        .collect();
    scatter(y, rows, a.t, parts);
}
