//! Row-parallel matrix products (feature `threads`, with `std`), on the
//! spinning [`spin_pool`](crate::spin_pool) — see there for why not rayon.
//! Rows are split into `threads` contiguous ranges of whole 16-row chunks
//! (whole tiles for FP8 block scaling);
//! each range runs the single-threaded kernel on its own row view
//! ([`TensorView::row_slice`]), so results are bit-identical to
//! [`crate::matmul`] / [`crate::matmul_q8`] for any thread count.
//! [`matmul_q8_fused`] runs several products of one token's input (and an
//! elementwise epilogue) in one fork-join.
extern crate alloc;
extern crate std;
use crate::spin_pool;
use crate::Q8Acts;
use alloc::vec;
use alloc::vec::Vec;
use edgeq_core::TensorView;
use std::sync::Mutex;

/// Below this many weight bytes per thread the split costs more than it
/// saves (a fork-join on spinning workers costs ~1–2 µs).
const MIN_BYTES_PER_THREAD: u64 = 32 * 1024;

/// The row ranges `threads` threads split `w` into: `None` when it runs on
/// one thread (a small matrix). Ranges are whole 16-row chunks, or whole
/// tiles for FP8 block scaling (a tile's scale covers `group` rows).
pub fn ranges(w: &TensorView<'_>, threads: usize) -> Option<Vec<(usize, usize)>> {
    let rows = w.rows();
    let bytes = w.layout.total_bytes.max(1);
    let by_size = (bytes / MIN_BYTES_PER_THREAD).max(1) as usize;
    let chunk = crate::support::fp8_tile(w).map_or(16, |t| t.max(1));
    let n = threads.min(by_size).min(rows.div_ceil(chunk));
    // (a one-row probe: an empty slice is not a tensor, so `row_slice(0, 0)`
    // is always `None`, which once kept every product on one thread)
    if n <= 1 || w.row_slice(0, 1).is_none() {
        return None;
    }
    let per = rows.div_ceil(n).div_ceil(chunk) * chunk;
    let rs: Vec<_> = (0..n)
        .map(|k| (k * per, ((k + 1) * per).min(rows)))
        .filter(|(a, b)| a < b)
        .collect();
    (rs.len() > 1).then_some(rs)
}

/// A task of [`split`]: the row range and its output.
type RangeTask<'a> = dyn Fn((usize, usize), &mut [f32]) + Sync + 'a;

/// Runs `f(range, out)` for every range on the pool; `out` is the range's
/// slice of `y` when `t == 1`, else a `[t][range]` buffer scattered into
/// `y` afterwards.
fn split(y: &mut [f32], rows: usize, t: usize, rs: &[(usize, usize)], f: &RangeTask<'_>) {
    let pool = spin_pool::global(rs.len());
    if t == 1 {
        let mut outs: Vec<Mutex<&mut [f32]>> = Vec::with_capacity(rs.len());
        let mut rest = &mut y[..rows];
        for &(r0, r1) in rs {
            let (a, b) = core::mem::take(&mut rest).split_at_mut(r1 - r0);
            debug_assert!(r0 <= r1);
            outs.push(Mutex::new(a));
            rest = b;
        }
        pool.run(&|k| {
            if let (Some(&r), Some(out)) = (rs.get(k), outs.get(k)) {
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                f(r, &mut out);
            }
        });
        return;
    }
    let parts: Vec<Mutex<Vec<f32>>> = rs.iter().map(|&(r0, r1)| Mutex::new(vec![0.0f32; t * (r1 - r0)])).collect();
    pool.run(&|k| {
        if let (Some(&r), Some(part)) = (rs.get(k), parts.get(k)) {
            f(r, &mut part.lock().unwrap_or_else(|e| e.into_inner()));
        }
    });
    for (&(r0, r1), part) in rs.iter().zip(parts) {
        let part = part.into_inner().unwrap_or_else(|e| e.into_inner());
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
    split(y, rows, t, &rs, &|(r0, r1), out| {
        let mut row = vec![0.0f32; w.cols()];
        if let Some(v) = w.row_slice(r0, r1) {
            crate::matmul(out, &v, x, t, 0..r1 - r0, &mut row);
        }
    });
}

/// [`crate::matmul_q8`] over all rows of `w`, on up to `threads` threads.
pub fn matmul_q8(threads: usize, y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>) {
    let rows = w.rows();
    let Some(rs) = ranges(w, threads).filter(|_| crate::support::q8_args_ok(y, w, a, &(0..rows))) else {
        return crate::matmul_q8(y, w, a, 0..rows);
    };
    split(y, rows, a.t, &rs, &|(r0, r1), out| {
        if let Some(v) = w.row_slice(r0, r1) {
            crate::matmul_q8(out, &v, a, 0..r1 - r0);
        }
    });
}

/// One product of [`matmul_q8_fused`]: its output (`w.rows()` floats) and
/// weight.
pub type Job<'y, 'w> = (&'y mut [f32], &'w TensorView<'w>);

/// Epilogue of [`matmul_q8_fused`] on one thread's rows of jobs 0 and 1.
pub type Then<'a> = dyn Fn(&mut [f32], &[f32]) + Sync + 'a;

/// Products of the same activations in one fork-join instead of one each
/// (q, k and v; gate and up): thread `k` computes the `k`-th of `threads`
/// row ranges (whole 16-row chunks) of every job, then, when given,
/// `then(its rows of job 0's output, the same rows of job 1's)` — SwiGLU on
/// its own rows, so the elementwise work is split too. A decode step of a
/// small model is ~200 products of 10–100 µs, where each fork-join
/// (~1–2 µs) and each product too small to split (SmolLM2's k and v)
/// count. With one token the threads write `y` in place; with several
/// (prefill) each computes `[t][its rows]` buffers (`then` runs on those:
/// the same elements) that are copied into `y` afterwards. Each row is
/// computed by the single-threaded kernel, so the results equal
/// [`crate::matmul_q8`] per job (then `then` over all of it) bit for bit.
///
/// Returns `false`, writing nothing, unless `threads > 1`, every job fits
/// (`support::q8_args_ok`) and can be split by rows, and — with `then` —
/// jobs 0 and 1 have the same rows.
pub fn matmul_q8_fused(threads: usize, jobs: &mut [Job<'_, '_>], a: &Q8Acts<'_>, then: Option<&Then<'_>>) -> bool {
    let ok = threads > 1
        && jobs
            .iter()
            .all(|(y, w)| crate::support::q8_args_ok(y, w, a, &(0..w.rows())) && w.row_slice(0, 1).is_some())
        && then.is_none_or(|_| jobs.len() >= 2 && jobs[0].1.rows() == jobs[1].1.rows());
    if !ok {
        return false;
    }
    let range = |rows: usize, k: usize| {
        let per = rows.div_ceil(threads).div_ceil(16) * 16;
        ((k * per).min(rows), ((k + 1) * per).min(rows))
    };
    let views: Vec<&TensorView<'_>> = jobs.iter().map(|(_, w)| *w).collect();
    // Thread k's rows of job j: `work(k, j, out)` into `out` ([t][rows]).
    let work = |k: usize, w: &TensorView<'_>, out: &mut [f32]| {
        let (r0, r1) = range(w.rows(), k);
        if let Some(v) = w.row_slice(r0, r1).filter(|_| r0 < r1) {
            crate::matmul_q8(out, &v, a, 0..r1 - r0);
        }
    };
    if a.t == 1 {
        // Thread k's slices of every output, written in place.
        let mut parts: Vec<Vec<&mut [f32]>> = (0..threads).map(|_| Vec::with_capacity(jobs.len())).collect();
        for (y, w) in jobs.iter_mut() {
            let rows = w.rows();
            let mut rest = &mut y[..rows];
            for (k, part) in parts.iter_mut().enumerate() {
                let (r0, r1) = range(rows, k);
                let (mine, tail) = core::mem::take(&mut rest).split_at_mut(r1 - r0);
                part.push(mine);
                rest = tail;
            }
        }
        let parts: Vec<Mutex<Vec<&mut [f32]>>> = parts.into_iter().map(Mutex::new).collect();
        run_jobs(threads, &parts, &views, &work, then);
        return true;
    }
    let t = a.t;
    let parts: Vec<Mutex<Vec<Vec<f32>>>> = (0..threads)
        .map(|k| {
            Mutex::new(
                views
                    .iter()
                    .map(|w| {
                        let (r0, r1) = range(w.rows(), k);
                        vec![0.0f32; t * (r1 - r0)]
                    })
                    .collect(),
            )
        })
        .collect();
    run_jobs(threads, &parts, &views, &work, then);
    for (k, part) in parts.into_iter().enumerate() {
        let part = part.into_inner().unwrap_or_else(|e| e.into_inner());
        for ((y, w), p) in jobs.iter_mut().zip(&part) {
            let (rows, (r0, r1)) = (w.rows(), range(w.rows(), k));
            let n = r1 - r0;
            for i in 0..t {
                y[i * rows + r0..i * rows + r1].copy_from_slice(&p[i * n..(i + 1) * n]);
            }
        }
    }
    true
}

/// The fork-join of [`matmul_q8_fused`]: thread `k` runs `work(k, job's
/// weight, its output)` for every job into its own outputs `parts[k]`
/// (slices of `y`, or `[t][rows]` buffers), then `then` on jobs 0 and 1.
fn run_jobs<P: AsMut<[f32]> + Send>(
    threads: usize,
    parts: &[Mutex<Vec<P>>],
    views: &[&TensorView<'_>],
    work: &(dyn Fn(usize, &TensorView<'_>, &mut [f32]) + Sync),
    then: Option<&Then<'_>>,
) {
    spin_pool::global(threads).run(&|k| {
        let Some(part) = parts.get(k) else { return };
        let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
        for (w, out) in views.iter().zip(part.iter_mut()) {
            work(k, w, out.as_mut());
        }
        if let (Some(f), [g, u, ..]) = (then, &mut part[..]) {
            f(g.as_mut(), u.as_mut());
        }
    });
}
