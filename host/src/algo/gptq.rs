//! GPTQ (Frantar et al., 2022) on one linear layer, following the
//! IST-DASLab reference (`gptq.py`: `GPTQ.add_batch`, `GPTQ.fasterquant`;
//! `quant.py`: `Quantizer.find_params`, `quantize`) step for step:
//!
//! * the Hessian is the reference's running average `H = 2/N · Σ xxᵀ`
//!   ([`Hessian::add_batch`]);
//! * dead columns (`H[i,i] == 0`) get `H[i,i] = 1` and `W[:, i] = 0`;
//! * static groups are fitted on the (dead-zeroed) weight in its original
//!   column order, before any permutation;
//! * act-order permutes columns by descending `diag(H)`; we use a *stable*
//!   sort (ties keep their original order), whereas `torch.argsort` does not
//!   promise stability — ties only happen for exactly equal diagonal entries;
//! * `damp = percdamp · mean(diag H)` is added to the diagonal, then
//!   `Hinv = chol_upper(chol_inverse(chol(H)))`;
//! * columns are processed in blocks of `blocksize` with the in-block
//!   rank-1 updates and the lazy `W[:, i2:] −= Err1 · Hinv[i1:i2, i2:]`
//!   after each block. Dynamic groups are fitted when `(i1+i) % groupsize
//!   == 0` on `W[:, i1+i .. i1+i+groupsize]` of the *global* `W`, exactly as
//!   the reference slices it: that copy has the previous blocks' lazy
//!   updates but not the current block's in-block updates (those live in
//!   the block copy `W1`), which matters when `groupsize < blocksize`.
//!
//! Numerics: `H`, the Cholesky factorizations and the inverse are computed
//! in f64 (the reference uses f32); `Hinv` is then rounded to f32 and the
//! weight updates, quantization and losses run in f32 as in the reference.
//! A Cholesky whose pivot falls below f32 resolution
//! (`L[i,i]² ≤ ε_f32 · A[i,i]`) is treated as a failure: the reference's f32
//! factorization of such a matrix either fails or returns garbage.
//!
//! When the factorization fails, `damp_auto_increase` follows GPTQModel:
//! `percdamp += 0.0025` ([`DAMP_AUTO_INCREMENT`]) and retry while
//! `percdamp < 1`; the retries and the damping used are reported in
//! [`GptqStats`] so the caller can log them.
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::linalg::solvers::Llt;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use rayon::prelude::*;

use super::{find_params, quantize_value, Grid, QuantizedLayer};

/// GPTQModel's `damp_auto_increment` default: the step added to `percdamp`
/// after each failed Cholesky when [`GptqConfig::damp_auto_increase`] is set.
pub const DAMP_AUTO_INCREMENT: f64 = 0.0025;

/// The layer's input Hessian `H = 2/N · Σ xᵢxᵢᵀ` (`cols × cols`, f64,
/// row-major and symmetric), accumulated as the reference's running average.
#[derive(Debug, Clone)]
pub struct Hessian {
    h: Vec<f64>,
    nsamples: usize,
    cols: usize,
}

impl Hessian {
    pub fn new(cols: usize) -> Self {
        Hessian {
            h: vec![0.0; cols * cols],
            nsamples: 0,
            cols,
        }
    }

    /// A Hessian given directly (`cols × cols` row-major, symmetric).
    pub fn from_matrix(h: Vec<f64>, cols: usize, nsamples: usize) -> Result<Self> {
        ensure!(h.len() == cols * cols, "Hessian of {} values for {cols} columns", h.len());
        Ok(Hessian { h, nsamples, cols })
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Samples counted so far (rows, with [`Hessian::add_batch`]).
    pub fn nsamples(&self) -> usize {
        self.nsamples
    }
    /// `cols × cols`, row-major.
    pub fn matrix(&self) -> &[f64] {
        &self.h
    }

    /// Adds `n` input rows `x` (`n × cols`, row-major): `H *= N/(N+n);
    /// N += n; H += (√(2/N)·x)ᵀ(√(2/N)·x)`, so that `H = 2/N · Σ xxᵀ` over
    /// all rows. The rank-n update is a parallel faer matmul in f64 (lower
    /// triangle, then mirrored).
    pub fn add_batch(&mut self, x: &[f32], n: usize) {
        self.add_sequences(x, n, n);
    }

    /// Like [`Hessian::add_batch`] but counting `seqs` samples for the `n`
    /// rows, as the reference does: its `add_batch` counts `inp.shape[0]`
    /// of a `[batch, seq, hidden]` input (sequences, and 1 for a 2-D input),
    /// so its `H = 2/N_seq · Σ_tokens xxᵀ` is larger than the per-row
    /// average by the tokens per sequence. The codes do not depend on this
    /// scale (damping is relative to `mean(diag H)`), only the reported
    /// loss does: use this to reproduce the reference's `error` exactly.
    pub fn add_sequences(&mut self, x: &[f32], n: usize, seqs: usize) {
        let c = self.cols;
        assert_eq!(x.len(), n * c, "add_batch: {n} rows of {c} columns expected");
        if n == 0 {
            return;
        }
        assert!(seqs > 0, "add_sequences: {n} rows counted as 0 samples");
        let ratio = self.nsamples as f64 / (self.nsamples + seqs) as f64;
        self.nsamples += seqs;
        let s = (2.0 / self.nsamples as f64).sqrt();
        let xs: Vec<f64> = x.par_iter().map(|&v| v as f64 * s).collect();
        self.h.par_iter_mut().for_each(|v| *v *= ratio);
        let xr = MatRef::from_row_major_slice(&xs, n, c);
        triangular::matmul(
            MatMut::from_row_major_slice_mut(&mut self.h, c, c),
            BlockStructure::TriangularLower,
            Accum::Add,
            xr.transpose(),
            BlockStructure::Rectangular,
            xr,
            BlockStructure::Rectangular,
            1.0,
            Par::rayon(0),
        );
        // Lower → upper, in row blocks so that the transposed reads stay in cache.
        const B: usize = 64;
        for i0 in (0..c).step_by(B) {
            for j0 in (i0..c).step_by(B) {
                for i in i0..(i0 + B).min(c) {
                    for j in j0.max(i + 1)..(j0 + B).min(c) {
                        self.h[i * c + j] = self.h[j * c + i];
                    }
                }
            }
        }
    }
}

/// GPTQ settings (the reference's `fasterquant` arguments plus the grid).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqConfig {
    /// Bits, group (0 = per-channel, the reference's `groupsize=-1`), sym.
    pub grid: Grid,
    /// Columns per lazy-update block (reference default 128).
    pub blocksize: usize,
    /// Damping as a fraction of `mean(diag H)` (reference default 0.01).
    pub percdamp: f64,
    /// Quantize columns in order of descending `diag(H)` (`--act-order`).
    pub act_order: bool,
    /// Fit group parameters up front on the unpermuted weight
    /// (`--static-groups`); with act-order this keeps groups contiguous.
    pub static_groups: bool,
    /// On a failed Cholesky, retry with `percdamp += 0.0025` (GPTQModel)
    /// instead of failing.
    pub damp_auto_increase: bool,
}

impl GptqConfig {
    /// The reference defaults: blocksize 128, percdamp 0.01, no act-order,
    /// no static groups, no damp auto-increase.
    pub fn new(grid: Grid) -> Self {
        GptqConfig {
            grid,
            blocksize: 128,
            percdamp: 0.01,
            act_order: false,
            static_groups: false,
            damp_auto_increase: false,
        }
    }
}

/// What one GPTQ run did, for the caller's log.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqStats {
    /// The `percdamp` finally used (differs from the config after retries).
    pub percdamp: f64,
    /// The absolute damping added to the diagonal: `percdamp · mean(diag H)`.
    pub damp: f64,
    /// Failed Cholesky attempts before the one that succeeded.
    pub damp_retries: usize,
    /// Columns with `H[i,i] == 0`, whose weights were zeroed.
    pub dead_columns: usize,
    /// Sum of the reference's `Losses` (`Σ (w−q)²/d²/2`), its printed `error`.
    pub loss: f64,
    pub seconds: f64,
}

/// Quantizes `w` (`rows × cols`, row-major f32) with GPTQ against `h`.
/// Codes come back in the original column order; `g_idx` is `Some` only for
/// act-order with dynamic groups (and a permutation that is not the identity).
pub fn gptq(w: &[f32], rows: usize, cols: usize, h: &Hessian, cfg: &GptqConfig) -> Result<(QuantizedLayer, GptqStats)> {
    gptq_owned(w, rows, cols, h.clone(), cfg)
}

/// [`gptq`] consuming the Hessian: its matrix becomes the working copy, so
/// a `cols × cols` f64 matrix fewer is alive at once (537 MB for a
/// Llama-3.2-1B `down_proj`, 8192 columns).
pub fn gptq_owned(w: &[f32], rows: usize, cols: usize, h: Hessian, cfg: &GptqConfig) -> Result<(QuantizedLayer, GptqStats)> {
    let t0 = Instant::now();
    let shape = format!("[{rows}, {cols}]");
    let grid = cfg.grid;
    ensure!(w.len() == rows * cols, "GPTQ on layer {shape}: weight has {} values", w.len());
    ensure!(h.cols == cols, "GPTQ on layer {shape}: Hessian is for {} columns", h.cols);
    ensure!(h.nsamples > 0, "GPTQ on layer {shape}: the Hessian has no calibration samples");
    ensure!((1..=8).contains(&grid.bits), "GPTQ: {}-bit grid", grid.bits);
    ensure!(cfg.blocksize > 0, "GPTQ: blocksize 0");
    ensure!((0.0..1.0).contains(&cfg.percdamp), "GPTQ: percdamp {} outside [0, 1)", cfg.percdamp);
    ensure!(
        h.h.iter().all(|v| v.is_finite()),
        "GPTQ on layer {shape}: the Hessian has non-finite entries"
    );

    let maxq = grid.maxq();
    let per_channel = grid.group == 0;
    let gl = grid.group_len(cols);
    let ng = grid.n_groups(cols);
    let static_groups = cfg.static_groups && !per_channel;

    let mut w = w.to_vec();
    let mut scales = vec![0.0f32; rows * ng];
    let mut zeros = vec![0.0f32; rows * ng];

    // Per-channel: the reference fits once on the whole weight, before the
    // dead columns are zeroed.
    if per_channel {
        for r in 0..rows {
            let (s, z) = find_params(&grid, w[r * cols..(r + 1) * cols].iter().copied());
            scales[r] = s;
            zeros[r] = z;
        }
    }

    let mut hm = h.h;
    let mut dead_columns = 0;
    for i in 0..cols {
        if hm[i * cols + i] == 0.0 {
            hm[i * cols + i] = 1.0;
            for r in 0..rows {
                w[r * cols + i] = 0.0;
            }
            dead_columns += 1;
        }
    }

    if static_groups {
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            for g in 0..ng {
                let (s, z) = find_params(&grid, row[g * gl..((g + 1) * gl).min(cols)].iter().copied());
                scales[r * ng + g] = s;
                zeros[r * ng + g] = z;
            }
        }
    }

    let mut perm: Vec<usize> = (0..cols).collect();
    if cfg.act_order {
        let diag: Vec<f64> = (0..cols).map(|i| hm[i * cols + i]).collect();
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    }
    let identity = perm.iter().enumerate().all(|(j, &p)| j == p);
    if !identity {
        let mut wp = vec![0.0f32; rows * cols];
        wp.par_chunks_mut(cols).zip(w.par_chunks(cols)).for_each(|(dst, src)| {
            for (d, &p) in dst.iter_mut().zip(&perm) {
                *d = src[p];
            }
        });
        w = wp;
        let mut hp = vec![0.0f64; cols * cols];
        hp.par_chunks_mut(cols).enumerate().for_each(|(i, dst)| {
            let src = &hm[perm[i] * cols..(perm[i] + 1) * cols];
            for (d, &p) in dst.iter_mut().zip(&perm) {
                *d = src[p];
            }
        });
        hm = hp;
    }

    let inv = damped_hinv(&hm, cols, cfg, &shape)?;
    drop(hm);
    let hinv = inv.hinv;

    let bs = cfg.blocksize;
    let mut codes_p = vec![0u8; rows * cols];
    let mut row_loss = vec![0.0f64; rows];
    let mut err1 = vec![0.0f32; rows * bs.min(cols)];
    for i1 in (0..cols).step_by(bs) {
        let i2 = (i1 + bs).min(cols);
        let count = i2 - i1;
        let e_all = &mut err1[..rows * count];
        (
            w.par_chunks(cols),
            e_all.par_chunks_mut(count),
            codes_p.par_chunks_mut(cols),
            scales.par_chunks_mut(ng),
            zeros.par_chunks_mut(ng),
            row_loss.par_iter_mut(),
        )
            .into_par_iter()
            .for_each(|(wrow, e, crow, srow, zrow, loss)| {
                // W1: this block of the row, receiving the in-block updates.
                let mut w1 = wrow[i1..i2].to_vec();
                for i in 0..count {
                    let j = i1 + i;
                    let g = if per_channel {
                        0
                    } else if static_groups {
                        perm[j] / gl
                    } else {
                        let k = j / gl;
                        if j % gl == 0 {
                            // The global (block-start) W, as the reference slices it.
                            let (s, z) = find_params(&grid, wrow[j..(j + gl).min(cols)].iter().copied());
                            srow[k] = s;
                            zrow[k] = z;
                        }
                        k
                    };
                    let (s, z) = (srow[g], zrow[g]);
                    let x = w1[i];
                    let code = quantize_value(x, s, z, maxq);
                    let diff = x - s * (code - z);
                    let d = hinv[j * cols + j];
                    *loss += (diff * diff / (d * d)) as f64 / 2.0;
                    let err = diff / d;
                    for (wv, &hv) in w1[i..].iter_mut().zip(&hinv[j * cols + j..j * cols + i2]) {
                        *wv -= err * hv;
                    }
                    e[i] = err;
                    crow[j] = code as u8;
                }
            });
        if i2 < cols {
            let e = MatRef::from_row_major_slice(&err1[..rows * count], rows, count);
            let hb = MatRef::from_row_major_slice_with_stride(&hinv[i1 * cols..], count, cols, cols).subcols(i2, cols - i2);
            let dst = MatMut::from_row_major_slice_mut(&mut w, rows, cols).subcols_mut(i2, cols - i2);
            matmul(dst, Accum::Add, e, hb, -1.0f32, Par::rayon(0));
        }
    }

    // Back to the original column order.
    let codes = if identity {
        codes_p
    } else {
        let mut c = vec![0u8; rows * cols];
        c.par_chunks_mut(cols).zip(codes_p.par_chunks(cols)).for_each(|(dst, src)| {
            for (j, &p) in perm.iter().enumerate() {
                dst[p] = src[j];
            }
        });
        c
    };
    let g_idx = if per_channel || static_groups || identity {
        None
    } else {
        let mut g = vec![0u32; cols];
        for (j, &p) in perm.iter().enumerate() {
            g[p] = (j / gl) as u32;
        }
        Some(g)
    };

    let stats = GptqStats {
        percdamp: inv.percdamp,
        damp: inv.damp,
        damp_retries: inv.retries,
        dead_columns,
        loss: row_loss.iter().sum(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((
        QuantizedLayer {
            rows,
            cols,
            grid,
            codes,
            scales,
            zeros,
            g_idx,
        },
        stats,
    ))
}

struct DampedInverse {
    /// Upper Cholesky factor of `(H + damp·I)⁻¹`, `n × n` row-major f32
    /// (zeros below the diagonal).
    hinv: Vec<f32>,
    percdamp: f64,
    damp: f64,
    retries: usize,
}

fn damped_hinv(h: &[f64], n: usize, cfg: &GptqConfig, shape: &str) -> Result<DampedInverse> {
    let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    let mut retries = 0usize;
    loop {
        let percdamp = cfg.percdamp + retries as f64 * DAMP_AUTO_INCREMENT;
        if percdamp >= 1.0 {
            bail!(
                "GPTQ on layer {shape}: the damped Hessian is still not positive definite at \
                 percdamp {percdamp:.4} after {retries} auto-increase retries"
            );
        }
        let damp = percdamp * mean;
        match upper_chol_of_inverse(h, n, damp) {
            Ok(hinv) => {
                return Ok(DampedInverse {
                    hinv,
                    percdamp,
                    damp,
                    retries,
                })
            }
            Err(e) if cfg.damp_auto_increase => {
                let _ = e;
                retries += 1;
            }
            Err(e) => bail!(
                "GPTQ on layer {shape}: Cholesky of the damped Hessian failed ({e}) at percdamp \
                 {percdamp}; raise percdamp, add calibration samples, or enable damp auto-increase"
            ),
        }
    }
}

/// `chol_upper(chol_inverse(chol(H + damp·I)))`, the reference's `Hinv`,
/// by one factorization and one triangular inverse (⅔ n³ flops, where
/// the reference's three steps take about 2 n³).
///
/// With `J` the reversal permutation, let `J (H + damp·I) J = L Lᵀ` (the
/// Cholesky factor of H with rows and columns reversed). Then
/// `H + damp·I = V Vᵀ` with `V = J L J` upper triangular, and `U = V⁻¹ =
/// J L⁻¹ J` is upper triangular with a positive diagonal and `Uᵀ U =
/// (V Vᵀ)⁻¹ = H⁻¹`. That makes it *the* upper Cholesky factor of `H⁻¹`,
/// the matrix the reference gets from its second factorization. Both
/// factorizations the reference would attempt in f32 are checked for f32
/// failure: the pivots of `H`'s (here, reversed) factorization, and the
/// pivots `U_jj²` of `H⁻¹`'s against its diagonal `(H⁻¹)_jj = Σ_k U_kj²`.
fn upper_chol_of_inverse(h: &[f64], n: usize, damp: f64) -> std::result::Result<Vec<f32>, String> {
    let r = |i: usize| n - 1 - i;
    let a = Mat::from_fn(n, n, |i, j| h[r(i) * n + r(j)] + if i == j { damp } else { 0.0 });
    let llt = Llt::new(a.as_ref(), Side::Lower).map_err(|e| format!("H: {e:?}"))?;
    check_pivots(llt.L(), a.as_ref(), "H")?;
    drop(a);
    let mut m = Mat::<f64>::zeros(n, n);
    faer::linalg::triangular_inverse::invert_lower_triangular(m.as_mut(), llt.L(), Par::rayon(0));
    drop(llt);
    // U[i][j] = M[r(i)][r(j)]: row i of U is row r(i) of M reversed, column j is column r(j).
    let mut u = vec![0.0f32; n * n];
    u.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate().skip(i) {
            *v = m[(r(i), r(j))] as f32;
        }
    });
    for j in 0..n {
        let piv = m[(r(j), r(j))] * m[(r(j), r(j))];
        let diag: f64 = (r(j)..n).map(|p| m[(p, r(j))] * m[(p, r(j))]).sum();
        if !piv.is_finite() || piv <= f32::EPSILON as f64 * diag {
            return Err(format!(
                "H⁻¹: pivot {j} is {piv:e}, not positive at f32 precision (diagonal {diag:e})"
            ));
        }
    }
    Ok(u)
}

/// A pivot below f32 resolution of its diagonal entry (or non-finite)
/// counts as a failed factorization, as it would in the reference's f32.
fn check_pivots(l: MatRef<'_, f64>, a: MatRef<'_, f64>, what: &str) -> std::result::Result<(), String> {
    for i in 0..l.nrows() {
        let p = l[(i, i)] * l[(i, i)];
        if !p.is_finite() || p <= f32::EPSILON as f64 * a[(i, i)].abs() {
            return Err(format!(
                "{what}: pivot {i} is {p:e}, not positive at f32 precision (diagonal {:e})",
                a[(i, i)]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{output_rel_err, rtn};

    /// splitmix64 + Box–Muller: a seeded normal generator for the tests.
    struct Rng(u64);
    impl Rng {
        fn u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn unif(&mut self) -> f64 {
            ((self.u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.unif(), self.unif());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
        fn normals(&mut self, n: usize) -> Vec<f64> {
            (0..n).map(|_| self.normal()).collect()
        }
    }

    /// A weight `rows × cols` and correlated activations `X = Z·A` (random
    /// mixing `A`, per-channel log-normal scales): calibration and held-out.
    struct Layer {
        rows: usize,
        cols: usize,
        w: Vec<f32>,
        x: Vec<f32>,
        n: usize,
        x_eval: Vec<f32>,
    }

    fn layer(seed: u64, rows: usize, cols: usize, n: usize) -> Layer {
        let mut rng = Rng(seed);
        let w: Vec<f32> = rng.normals(rows * cols).iter().map(|v| (v / (cols as f64).sqrt()) as f32).collect();
        let a = rng.normals(cols * cols);
        let ch: Vec<f64> = (0..cols).map(|_| (0.5 * rng.normal()).exp()).collect();
        let mut acts = |n: usize| -> Vec<f32> {
            let z = rng.normals(n * cols);
            let mut x = vec![0.0f32; n * cols];
            for t in 0..n {
                for j in 0..cols {
                    let mut s = 0.0;
                    for k in 0..cols {
                        s += z[t * cols + k] * a[k * cols + j];
                    }
                    x[t * cols + j] = (s * ch[j] / (cols as f64).sqrt()) as f32;
                }
            }
            x
        };
        let x = acts(n);
        let x_eval = acts(n);
        Layer {
            rows,
            cols,
            w,
            x,
            n,
            x_eval,
        }
    }

    fn hessian(l: &Layer) -> Hessian {
        let mut h = Hessian::new(l.cols);
        // Two batches, to go through the running average.
        let k = l.n / 3;
        h.add_batch(&l.x[..k * l.cols], k);
        h.add_batch(&l.x[k * l.cols..], l.n - k);
        h
    }

    fn grids() -> Vec<Grid> {
        let mut v = vec![];
        for group in [32, 128, 0] {
            for sym in [true, false] {
                v.push(Grid { bits: 4, group, sym });
            }
        }
        v
    }

    #[test]
    fn add_batch_is_the_running_average_of_2xxt() {
        let l = layer(1, 4, 24, 50);
        let h = hessian(&l);
        assert_eq!(h.nsamples(), 50);
        let c = l.cols;
        for i in 0..c {
            for j in 0..c {
                let e: f64 = (0..l.n).map(|t| l.x[t * c + i] as f64 * l.x[t * c + j] as f64).sum::<f64>() * 2.0 / l.n as f64;
                let v = h.matrix()[i * c + j];
                assert!((v - e).abs() <= 1e-9 * (1.0 + e.abs()), "H[{i},{j}] {v} vs {e}");
            }
        }
    }

    /// Counting sequences instead of rows (the reference's convention)
    /// scales H, hence the loss, but leaves the codes unchanged.
    #[test]
    fn hessian_scale_changes_only_the_loss() {
        let l = layer(7, 32, 128, 240);
        let h_rows = hessian(&l);
        let mut h_seqs = Hessian::new(l.cols);
        h_seqs.add_sequences(&l.x[..120 * l.cols], 120, 2);
        h_seqs.add_sequences(&l.x[120 * l.cols..], 120, 2);
        assert_eq!(h_seqs.nsamples(), 4);
        for (a, b) in h_rows.matrix().iter().zip(h_seqs.matrix()) {
            assert!((a * 60.0 - b).abs() <= 1e-9 * (1.0 + b.abs()));
        }
        let cfg = GptqConfig {
            act_order: true,
            ..GptqConfig::new(Grid {
                bits: 4,
                group: 32,
                sym: false,
            })
        };
        let (q1, s1) = gptq(&l.w, l.rows, l.cols, &h_rows, &cfg).unwrap();
        let (q2, s2) = gptq(&l.w, l.rows, l.cols, &h_seqs, &cfg).unwrap();
        let same = q1.codes.iter().zip(&q2.codes).filter(|(a, b)| a == b).count();
        assert!(same as f64 >= 0.999 * q1.codes.len() as f64, "{same}");
        assert!((s2.loss / s1.loss / 60.0 - 1.0).abs() < 1e-2, "{s1:?} {s2:?}");
    }

    /// With `H = c·I` there is nothing to compensate: GPTQ is RTN, in every
    /// mode (act-order's stable sort keeps the identity order).
    #[test]
    fn identity_hessian_degenerates_to_rtn() {
        let (rows, cols) = (16, 200);
        let l = layer(2, rows, cols, 1);
        let mut hm = vec![0.0; cols * cols];
        for i in 0..cols {
            hm[i * cols + i] = 3.5;
        }
        let h = Hessian::from_matrix(hm, cols, 10).unwrap();
        for grid in grids() {
            for (act_order, static_groups) in [(false, false), (true, false), (true, true), (false, true)] {
                for blocksize in [128, 48] {
                    let cfg = GptqConfig {
                        act_order,
                        static_groups,
                        blocksize,
                        ..GptqConfig::new(grid)
                    };
                    let (q, st) = gptq(&l.w, rows, cols, &h, &cfg).unwrap();
                    let r = rtn::quantize(&l.w, rows, cols, grid);
                    assert_eq!(q.codes, r.codes, "{cfg:?}");
                    assert_eq!(q.scales, r.scales, "{cfg:?}");
                    assert_eq!(q.zeros, r.zeros, "{cfg:?}");
                    assert!(q.g_idx.is_none());
                    assert_eq!(st.damp_retries, 0);
                    assert_eq!(st.dead_columns, 0);
                }
            }
        }
    }

    /// Correlated activations: GPTQ's held-out output error beats RTN's in
    /// every mode.
    #[test]
    fn beats_rtn_on_correlated_activations() {
        let l = layer(3, 128, 256, 512);
        let h = hessian(&l);
        for grid in grids() {
            let rtn_q = rtn::quantize(&l.w, l.rows, l.cols, grid);
            let e_rtn = output_rel_err(&l.w, &rtn_q.dequantize(), &l.x_eval, l.rows, l.cols);
            for (act_order, static_groups) in [(false, false), (true, false), (true, true), (false, true)] {
                let cfg = GptqConfig {
                    act_order,
                    static_groups,
                    ..GptqConfig::new(grid)
                };
                let (q, st) = gptq(&l.w, l.rows, l.cols, &h, &cfg).unwrap();
                let e = output_rel_err(&l.w, &q.dequantize(), &l.x_eval, l.rows, l.cols);
                eprintln!(
                    "{grid:?} act_order={act_order} static={static_groups}: gptq {e:.4e} rtn {e_rtn:.4e} loss {:.3e}",
                    st.loss
                );
                assert!(e < e_rtn * 0.9, "{cfg:?}: gptq {e} vs rtn {e_rtn}");
                assert!(st.loss > 0.0 && st.loss.is_finite());
                let contiguous = !act_order || static_groups || grid.group == 0;
                assert_eq!(q.g_idx.is_none(), contiguous, "{cfg:?}");
                assert!(q.codes.iter().all(|&c| (c as f32) <= grid.maxq()));
            }
        }
    }

    #[test]
    fn dead_columns_become_zero() {
        let mut l = layer(4, 32, 96, 200);
        let dead = [0usize, 5, 37, 95];
        for t in 0..l.n {
            for &c in &dead {
                l.x[t * l.cols + c] = 0.0;
            }
        }
        let h = hessian(&l);
        for grid in grids() {
            for (act_order, static_groups) in [(false, false), (true, false), (true, true)] {
                let cfg = GptqConfig {
                    act_order,
                    static_groups,
                    ..GptqConfig::new(grid)
                };
                let (q, st) = gptq(&l.w, l.rows, l.cols, &h, &cfg).unwrap();
                assert_eq!(st.dead_columns, dead.len());
                let d = q.dequantize();
                for r in 0..l.rows {
                    for &c in &dead {
                        assert_eq!(d[r * l.cols + c], 0.0, "{cfg:?} r{r} c{c}");
                    }
                }
            }
        }
    }

    /// Act-order with static groups keeps groups contiguous: the layer goes
    /// to EQF and reads back like `dequantize()` up to the f16 scales.
    #[test]
    fn act_order_static_groups_stores_in_eqf() {
        let l = layer(5, 24, 160, 300);
        let h = hessian(&l);
        for grid in [
            Grid {
                bits: 4,
                group: 32,
                sym: true,
            },
            Grid {
                bits: 4,
                group: 32,
                sym: false,
            },
            Grid {
                bits: 8,
                group: 0,
                sym: false,
            },
        ] {
            let cfg = GptqConfig {
                act_order: true,
                static_groups: true,
                ..GptqConfig::new(grid)
            };
            let (q, _) = gptq(&l.w, l.rows, l.cols, &h, &cfg).unwrap();
            assert!(q.g_idx.is_none());
            let deq = q.dequantize();
            let (spec, bytes) = q.to_eqf().unwrap();
            let aligned = crate::import::AlignedBytes::from(&bytes);
            let v = edgeq_core::TensorView::new(spec, l.rows as u32, l.cols as u32, aligned.as_bytes()).unwrap();
            let mut row = vec![0.0; l.cols];
            for r in 0..l.rows {
                v.dequantize_row(r, &mut row);
                for c in 0..l.cols {
                    let s = q.scales[r * grid.n_groups(l.cols) + q.group_of(c)];
                    let (a, b) = (deq[r * l.cols + c], row[c]);
                    assert!((a - b).abs() <= s * grid.maxq() * 2e-3 + 1e-6, "{grid:?} r{r} c{c}: {a} vs {b}");
                }
            }
        }
        // Dynamic groups under act-order are scattered: stored with the
        // columns sorted by group and the permutation (EQF INPUT_PERM).
        for sym in [true, false] {
            let grid = Grid { bits: 4, group: 32, sym };
            let cfg = GptqConfig {
                act_order: true,
                ..GptqConfig::new(grid)
            };
            let (q, _) = gptq(&l.w, l.rows, l.cols, &h, &cfg).unwrap();
            assert!(q.g_idx.is_some());
            assert!(q.to_eqf().is_err());
            let (spec, bytes, perm) = q.to_eqf_permuted().unwrap();
            let perm = perm.expect("a real permutation");
            let g = q.g_idx.as_ref().unwrap();
            for (i, &c) in perm.iter().enumerate() {
                assert_eq!(g[c as usize] as usize, i / 32, "stored column {i} is in group {}", i / 32);
            }
            let aligned = crate::import::AlignedBytes::from(&bytes);
            let v = edgeq_core::TensorView::new(spec, l.rows as u32, l.cols as u32, aligned.as_bytes()).unwrap();
            let mut back = vec![0.0f32; l.rows * l.cols];
            back.chunks_exact_mut(l.cols)
                .enumerate()
                .for_each(|(r, row)| v.dequantize_row(r, row));
            crate::quantize::unpermute_cols(&mut back, l.cols, &perm);
            let deq = q.dequantize();
            for (i, (a, b)) in deq.iter().zip(&back).enumerate() {
                let s = q.scales[(i / l.cols) * q.grid.n_groups(l.cols) + q.group_of(i % l.cols)];
                assert!((a - b).abs() <= s * grid.maxq() * 2e-3 + 1e-6, "{i}: {a} vs {b}");
            }
        }
    }

    /// Rank-deficient calibration (n < cols): without damping the Cholesky
    /// fails with a message naming the layer; with auto-increase it succeeds
    /// and says how many retries it took.
    /// The one-factorization `Hinv` against the reference's three steps
    /// (chol, cholesky_inverse, chol upper), done here with faer in f64.
    #[test]
    fn upper_chol_of_inverse_matches_the_three_step_reference() {
        let l = layer(11, 8, 96, 300);
        let n = l.cols;
        let h = hessian(&l);
        let damp = 0.01 * (0..n).map(|i| h.h[i * n + i]).sum::<f64>() / n as f64;
        let got = upper_chol_of_inverse(&h.h, n, damp).unwrap();
        let a = Mat::from_fn(n, n, |i, j| h.h[i * n + j] + if i == j { damp } else { 0.0 });
        let inv = faer::linalg::solvers::DenseSolveCore::inverse(&Llt::new(a.as_ref(), Side::Lower).unwrap());
        let llt2 = Llt::new(inv.as_ref(), Side::Lower).unwrap();
        let mut worst = 0.0f64;
        for i in 0..n {
            for j in 0..n {
                let want = if j >= i { llt2.L()[(j, i)] } else { 0.0 };
                worst = worst.max((got[i * n + j] as f64 - want).abs() / llt2.L()[(j, j)].abs());
            }
        }
        assert!(worst < 1e-6, "max relative difference {worst:e}");
    }

    #[test]
    fn singular_hessian_errors_or_auto_increases_damp() {
        let l = layer(6, 16, 128, 64);
        let h = hessian(&l);
        let grid = Grid {
            bits: 4,
            group: 32,
            sym: false,
        };
        let cfg = GptqConfig {
            percdamp: 0.0,
            ..GptqConfig::new(grid)
        };
        let e = gptq(&l.w, l.rows, l.cols, &h, &cfg).unwrap_err().to_string();
        assert!(e.contains("[16, 128]") && e.contains("Cholesky"), "{e}");
        let cfg = GptqConfig {
            damp_auto_increase: true,
            ..cfg
        };
        let (q, st) = gptq(&l.w, l.rows, l.cols, &h, &cfg).unwrap();
        assert!(st.damp_retries >= 1, "{st:?}");
        assert!((st.percdamp - st.damp_retries as f64 * DAMP_AUTO_INCREMENT).abs() < 1e-12);
        assert!(st.damp > 0.0);
        assert!(q.dequantize().iter().all(|v| v.is_finite()));
    }

    fn read_npy(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
        let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let npy = npyz::NpyFile::new(std::io::BufReader::new(f)).unwrap();
        let shape = npy.shape().iter().map(|&d| d as usize).collect();
        (shape, npy.into_vec::<f32>().unwrap())
    }

    /// Parity with the reference harness (`peer_harness.py`): reads
    /// `$EDGEQ_GPTQ_PARITY_DIR/{W,X[,X_eval]}.npy`, runs every config in
    /// `$EDGEQ_GPTQ_PARITY_CFGS` (`;`-separated, each a `,` list of
    /// `g<N>`, `sym`, `act`, `static`; default `g128`) and writes
    /// `Wq_<cfg>.npy` (dequantized) to `$EDGEQ_GPTQ_PARITY_OUT`.
    #[test]
    #[ignore]
    fn parity_dump() {
        use npyz::WriterBuilder;
        use std::path::PathBuf;
        let dir = PathBuf::from(std::env::var("EDGEQ_GPTQ_PARITY_DIR").expect("EDGEQ_GPTQ_PARITY_DIR"));
        let out = PathBuf::from(std::env::var("EDGEQ_GPTQ_PARITY_OUT").unwrap_or_else(|_| dir.display().to_string()));
        let cfgs = std::env::var("EDGEQ_GPTQ_PARITY_CFGS").unwrap_or_else(|_| "g128".into());
        let (ws, w) = read_npy(&dir.join("W.npy"));
        let (xs, x) = read_npy(&dir.join("X.npy"));
        let (rows, cols) = (ws[0], ws[1]);
        let n = x.len() / cols;
        assert_eq!(*xs.last().unwrap(), cols);
        let xe = if dir.join("X_eval.npy").exists() {
            read_npy(&dir.join("X_eval.npy")).1
        } else {
            x.clone()
        };
        let t = Instant::now();
        // The harness feeds X as one 2-D batch: the reference counts 1 sample.
        let mut h = Hessian::new(cols);
        h.add_sequences(&x, n, 1);
        eprintln!("hessian {rows}x{cols} n={n}: {:.2}s", t.elapsed().as_secs_f64());
        for c in cfgs.split(';') {
            let mut grid = Grid {
                bits: 4,
                group: 128,
                sym: false,
            };
            let mut cfg = GptqConfig::new(grid);
            for tok in c.split(',') {
                match tok {
                    "sym" => grid.sym = true,
                    "act" => cfg.act_order = true,
                    "static" => cfg.static_groups = true,
                    g if g.starts_with('g') => grid.group = g[1..].parse().unwrap(),
                    o => panic!("unknown token {o}"),
                }
            }
            cfg.grid = grid;
            let (q, st) = gptq(&w, rows, cols, &h, &cfg).unwrap();
            let d = q.dequantize();
            let e = output_rel_err(&w, &d, &xe, rows, cols);
            let r = rtn::quantize(&w, rows, cols, grid).dequantize();
            let er = output_rel_err(&w, &r, &xe, rows, cols);
            eprintln!("{c}: out_rel_err {e:.6e} (rtn {er:.6e}) {st:?}");
            let name = out.join(format!("Wq_{}.npy", c.replace(',', "_")));
            let f = std::fs::File::create(&name).unwrap();
            let mut wr = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&[rows as u64, cols as u64])
                .writer(std::io::BufWriter::new(f))
                .begin_nd()
                .unwrap();
            wr.extend(d).unwrap();
            wr.finish().unwrap();
        }
    }
}
