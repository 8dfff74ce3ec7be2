//! AWQ (activation-aware weight quantization) on one linear layer, after
//! mit-han-lab/llm-awq (`awq/quantize/quantizer.py` `pseudo_quantize_tensor`,
//! `auto_scale.py` `_search_module_scale`, `auto_clip.py` `auto_clip_layer`)
//! with AutoAWQ's `duo_scaling` candidate formula as an option.
//!
//! The flow for one linear `W [rows, cols]` with calibration `X [n, cols]`:
//! 1. scale search ([`search_scale`]): for `r = i/n_grid`, `s = x_mean^r`
//!    (normalised), loss of `X·Wᵀ` vs `X·(Q(W·diag(s))·diag(1/s))ᵀ`; keep the
//!    first strict minimum;
//! 2. clip search ([`auto_clip`]) on `W·diag(s)` with `X·diag(1/s)`;
//! 3. [`pseudo_quantize`] of the clipped `W·diag(s)`.
//!
//! The returned [`QuantizedLayer`] represents `W·diag(s)`; the effective
//! weight is its dequantization times `diag(1/s)` ([`unscale`]). In a model
//! the `1/s` is folded into the previous op (norm weight / previous linear).
//!
//! Precision: the reference runs in fp16 on GPU (fp32 on CPU) and computes
//! the loss as `(org_out − out).float().pow(2).mean()`. Here the weights and
//! activations are f32, the output difference is formed as `X·(W − Ŵ)ᵀ` in
//! f32 (faer) and squared/summed in f64.
use super::{quantize_value, Grid, QuantizedLayer};
use anyhow::{bail, ensure, Result};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// llm-awq's default grid: `w_bit = 4`, `q_group_size = 128`,
/// `zero_point = True` (asymmetric).
pub const LLM_AWQ_GRID: Grid = Grid {
    bits: 4,
    group: 128,
    sym: false,
};

/// Search settings. The quantization grid itself (llm-awq's `w_bit`,
/// `q_group_size`, `zero_point`: defaults 4 / 128 / true, see
/// [`LLM_AWQ_GRID`] and [`AwqConfig::default_grid`]) is the `grid` argument
/// of [`awq_linear`], so that one [`Grid`] type drives every algorithm.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqConfig {
    /// Scale-search grid size (llm-awq and AutoAWQ: 20, ratios `0..n_grid` / n_grid).
    pub n_grid: usize,
    /// AutoAWQ's `duo_scaling`: `s = x_mean^r / (w_mean^(1−r) + 1e-4)`.
    /// llm-awq has no such option (= `false`, the default here); AutoAWQ
    /// defaults to `true`.
    pub duo_scaling: bool,
    /// Run the clip search (llm-awq skips it for q/k projections: "due to
    /// qk bmm, it is hard to clip precisely"; the pipeline sets this to false
    /// for them, `edgeq layer` keeps it on).
    pub clip: bool,
    /// Clip-search grid (llm-awq `auto_clip_layer` `n_grid = 20`).
    pub clip_n_grid: usize,
    /// Clip-search largest shrink (`max_shrink = 0.5`: candidates
    /// `i in 0..int(max_shrink·n_grid)`).
    pub max_shrink: f32,
    /// Clip-search token subsample (`n_sample_token = 512`).
    pub n_sample_token: usize,
}

impl Default for AwqConfig {
    fn default() -> Self {
        AwqConfig {
            n_grid: 20,
            duo_scaling: false,
            clip: true,
            clip_n_grid: 20,
            max_shrink: 0.5,
            n_sample_token: 512,
        }
    }
}

impl AwqConfig {
    /// AutoAWQ's defaults (`duo_scaling = True`), otherwise as llm-awq.
    pub fn autoawq() -> Self {
        AwqConfig {
            duo_scaling: true,
            ..Default::default()
        }
    }
    /// llm-awq's default grid (4-bit, group 128, zero point).
    pub fn default_grid() -> Grid {
        LLM_AWQ_GRID
    }
}

/// What the searches found.
#[derive(Debug, Clone)]
pub struct AwqStats {
    /// Ratio `r` of the chosen scales (`i / n_grid`).
    pub best_ratio: f32,
    /// Loss of the chosen scales (the scale search's own MSE).
    pub scale_loss: f64,
    /// Loss per ratio, `i = 0..n_grid` (`[0]` is plain RTN of `W`).
    pub scale_history: Vec<f64>,
    /// Clip search, when run.
    pub clip: Option<ClipStats>,
}

/// Clip-search summary: the per-(row, group) error it minimises, summed.
#[derive(Debug, Clone)]
pub struct ClipStats {
    /// Tokens the search used (after `0::step` subsampling).
    pub tokens: usize,
    /// Sum over (row, group) of the error with no clipping (candidate 0).
    pub err_before: f64,
    /// Sum over (row, group) of the chosen candidate's error.
    pub err_after: f64,
    /// (row, group) pairs whose range was shrunk.
    pub n_clipped: usize,
}

/// Fake-quantizes one group in place semantics of `pseudo_quantize_tensor`,
/// returning `(scale, zero)` and writing codes through `code`.
#[inline]
fn group_params(v: &[f32], grid: &Grid) -> (f32, f32) {
    let maxq = grid.maxq();
    if grid.sym {
        // zero_point=False branch: max_int = 2^(b−1)−1, min_int = −2^(b−1),
        // scales = amax.clamp(1e-5)/max_int, codes round(w/s) in
        // [min_int, max_int]; stored with the offset 2^(b−1) as zero.
        let amax = v.iter().fold(0.0f32, |a, &x| a.max(x.abs())).max(1e-5);
        let max_int = ((1u32 << (grid.bits - 1)) - 1) as f32;
        (amax / max_int, (maxq + 1.0) / 2.0)
    } else {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &x in v {
            lo = lo.min(x);
            hi = hi.max(x);
        }
        if hi - lo < 1e-5 {
            // A (near-)constant group: the reference's clamp would give
            // scale 1e-5/maxq and dequantize c to about 1e-5 (a constant 0.5
            // becomes 0); taking 0 into the range represents c exactly. Real
            // weight groups never have a range below 1e-5, so reference
            // parity is unaffected (robustness test: constant groups).
            (lo, hi) = (lo.min(0.0), hi.max(0.0));
        }
        let scale = (hi - lo).max(1e-5) / maxq;
        let zero = (-(lo / scale).round_ties_even()).clamp(0.0, maxq);
        (scale, zero)
    }
}

/// llm-awq `pseudo_quantize_tensor` on `W [rows, cols]`, per group of
/// `grid.group` columns (0 = whole row, the reference's `q_group_size=-1`):
/// asymmetric (`zero_point=True`): min/max of the group *without* forcing 0
/// into the range, `scale = (max−min).clamp(1e-5)/maxq`,
/// `zero = clamp(−round(min/scale), 0, maxq)`,
/// `q = clamp(round(w/scale) + zero, 0, maxq)`; symmetric: `scale =
/// amax.clamp(1e-5)/(2^(b−1)−1)`, `q = clamp(round(w/scale), −2^(b−1),
/// 2^(b−1)−1)` stored as `q + 2^(b−1)` with zero `2^(b−1)` (the reference's
/// symmetric branch is marked "we actually never used this" and fails on an
/// undefined `min_val`; this is its evident intent). A last group shorter
/// than `group` is quantized on its own (the reference asserts divisibility).
pub fn pseudo_quantize(w: &[f32], rows: usize, cols: usize, grid: Grid) -> QuantizedLayer {
    assert_eq!(w.len(), rows * cols, "weight is not rows × cols");
    let gl = grid.group_len(cols).max(1);
    let ng = grid.n_groups(cols);
    let maxq = grid.maxq();
    let mut q = QuantizedLayer {
        rows,
        cols,
        grid,
        codes: vec![0; rows * cols],
        scales: vec![0.0; rows * ng],
        zeros: vec![0.0; rows * ng],
        g_idx: None,
    };
    if cols == 0 {
        return q;
    }
    q.codes
        .par_chunks_mut(cols)
        .zip(q.scales.par_chunks_mut(ng))
        .zip(q.zeros.par_chunks_mut(ng))
        .zip(w.par_chunks(cols))
        .for_each(|(((codes, scales), zeros), row)| {
            for g in 0..ng {
                let (c0, c1) = (g * gl, ((g + 1) * gl).min(cols));
                let (s, z) = group_params(&row[c0..c1], &grid);
                scales[g] = s;
                zeros[g] = z;
                for c in c0..c1 {
                    codes[c] = quantize_value(row[c], s, z, maxq) as u8;
                }
            }
        });
    q
}

/// `pseudo_quantize(w)` dequantized (the reference's return value), written
/// to `out`.
pub fn fake_quantize(w: &[f32], rows: usize, cols: usize, grid: Grid, out: &mut [f32]) {
    assert_eq!(w.len(), rows * cols);
    assert_eq!(out.len(), rows * cols);
    if cols == 0 {
        return;
    }
    let gl = grid.group_len(cols).max(1);
    let ng = grid.n_groups(cols);
    out.par_chunks_mut(cols)
        .zip(w.par_chunks(cols))
        .for_each(|(o, row)| fake_quantize_row(row, &grid, gl, ng, o));
    fn fake_quantize_row(row: &[f32], grid: &Grid, gl: usize, ng: usize, o: &mut [f32]) {
        let maxq = grid.maxq();
        let cols = row.len();
        for g in 0..ng {
            let (c0, c1) = (g * gl, ((g + 1) * gl).min(cols));
            let (s, z) = group_params(&row[c0..c1], grid);
            for c in c0..c1 {
                o[c] = (quantize_value(row[c], s, z, maxq) - z) * s;
            }
        }
    }
}

/// Divides column `c` of `deq` (`rows × cols`) by `s[c]`: the effective
/// weight `Q(W·diag(s))·diag(1/s)` from the layer's dequantization.
pub fn unscale(deq: &mut [f32], cols: usize, s: &[f32]) {
    assert_eq!(s.len(), cols);
    if cols == 0 {
        return;
    }
    deq.par_chunks_mut(cols).for_each(|row| {
        for (v, &sc) in row.iter_mut().zip(s) {
            *v /= sc;
        }
    });
}

/// llm-awq `get_act_scale`: mean `|x|` per input channel over the tokens
/// of `x [n, cols]` (summed in f64).
pub fn act_mean(x: &[f32], cols: usize) -> Vec<f32> {
    let n = x.len().checked_div(cols).unwrap_or(0);
    let mut acc = vec![0.0f64; cols];
    for t in 0..n {
        for (a, &v) in acc.iter_mut().zip(&x[t * cols..(t + 1) * cols]) {
            *a += v.abs() as f64;
        }
    }
    acc.iter().map(|&a| (a / n.max(1) as f64) as f32).collect()
}

/// AutoAWQ `w_mean` for `duo_scaling`: `|w| / (amax|w| of its group + 1e-6)`,
/// averaged over the output rows. For several linears sharing an input,
/// concatenate their weights by rows first.
pub fn weight_mean(w: &[f32], rows: usize, cols: usize, group: usize) -> Vec<f32> {
    let gl = if group == 0 { cols } else { group };
    let mut acc = vec![0.0f64; cols];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        for c0 in (0..cols).step_by(gl.max(1)) {
            let c1 = (c0 + gl).min(cols);
            let amax = row[c0..c1].iter().fold(0.0f32, |a, &x| a.max(x.abs()));
            for c in c0..c1 {
                acc[c] += (row[c].abs() / (amax + 1e-6)) as f64;
            }
        }
    }
    acc.iter().map(|&a| (a / rows.max(1) as f64) as f32).collect()
}

/// The candidate scales for ratio `r` (llm-awq / AutoAWQ `_compute_best_scale`):
/// `s = x_mean^r` or, with `duo`, `x_mean^r / (w_mean^(1−r) + 1e-4)`;
/// `s = s.clamp(min=1e-4)`; `s /= sqrt(max(s)·min(s))`; non-finite entries
/// become 1 (AutoAWQ; llm-awq would assert later).
pub fn candidate_scales(x_mean: &[f32], w_mean: Option<&[f32]>, ratio: f64, duo: bool) -> Vec<f32> {
    let r = ratio as f32;
    let r1 = (1.0 - ratio) as f32;
    let mut s: Vec<f32> = if duo {
        let wm = w_mean.expect("duo_scaling needs w_mean");
        assert_eq!(wm.len(), x_mean.len());
        x_mean.iter().zip(wm).map(|(&x, &w)| x.powf(r) / (w.powf(r1) + 1e-4)).collect()
    } else {
        x_mean.iter().map(|&x| x.powf(r)).collect()
    };
    for v in s.iter_mut() {
        // torch clamp(min=) keeps NaN; f32::max would not.
        if !v.is_nan() {
            *v = v.max(1e-4);
        }
    }
    let (mut mx, mut mn) = (f32::NEG_INFINITY, f32::INFINITY);
    for &v in &s {
        mx = mx.max(v);
        mn = mn.min(v);
    }
    let norm = (mx * mn).sqrt();
    for v in s.iter_mut() {
        *v /= norm;
        if !v.is_finite() {
            *v = 1.0;
        }
    }
    s
}

/// AWQ's scale grid search, generic over the loss (`loss(s)` gets the
/// candidate per-input-channel scales `s`, `len = x_mean.len()`, and returns
/// the error of the quantized module with `W·diag(s)` quantized and
/// `diag(1/s)` folded into the input; e.g. [`linear_loss`], or a block
/// output in the model pipeline). Ratios `r = i/n_grid` for `i in
/// 0..n_grid` (1.0 is not tried, as in the reference); the first strict
/// minimum wins (`loss < best`), so ties keep the smaller ratio. Returns
/// `(best s, best loss, loss per ratio)`. If no loss is below +∞ (all NaN
/// or ∞, where the reference raises), returns the ratio-0 scales (all 1)
/// with loss `+∞`.
pub fn search_scale(
    x_mean: &[f32],
    w_mean: Option<&[f32]>,
    n_grid: usize,
    duo: bool,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> (Vec<f32>, f64, Vec<f64>) {
    let mut best = f64::INFINITY;
    let mut best_s: Option<Vec<f32>> = None;
    let mut history = Vec::with_capacity(n_grid);
    for i in 0..n_grid {
        let ratio = i as f64 / n_grid as f64;
        let s = candidate_scales(x_mean, w_mean, ratio, duo);
        let l = loss(&s);
        history.push(l);
        if l < best {
            best = l;
            best_s = Some(s);
        }
    }
    let s = best_s.unwrap_or_else(|| vec![1.0; x_mean.len()]);
    (s, best, history)
}

/// `sum((X·Dᵀ)²)` in f64 for `x [n, cols]`, `d [rows, cols]`, in chunks of
/// tokens (f32 matmul through faer).
fn sq_out_norm(x: &[f32], d: &[f32], rows: usize, cols: usize) -> f64 {
    let n = x.len() / cols;
    const CHUNK: usize = 2048;
    let dt = MatRef::from_column_major_slice(d, cols, rows); // Dᵀ [cols, rows]
    let mut buf = vec![0.0f32; CHUNK.min(n.max(1)) * rows];
    let mut total = 0.0f64;
    let mut t0 = 0;
    while t0 < n {
        let t1 = (t0 + CHUNK).min(n);
        let m = t1 - t0;
        let xs = MatRef::from_row_major_slice(&x[t0 * cols..t1 * cols], m, cols);
        let out = &mut buf[..m * rows];
        let dst = MatMut::from_row_major_slice_mut(out, m, rows);
        faer::linalg::matmul::matmul(dst, Accum::Replace, xs, dt, 1.0f32, Par::rayon(0));
        total += out
            .par_chunks(rows.max(1))
            .map(|r| r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .sum::<f64>();
        t0 = t1;
    }
    total
}

/// The single-linear AWQ loss: mean over `n × rows` of
/// `(X·Wᵀ − X·(Q(W·diag(s))·diag(1/s))ᵀ)²`, `Q` = [`fake_quantize`] on `grid`.
/// Evaluated as `X·(W − Ŵ)ᵀ` in f32 and squared/summed in f64 (the
/// reference forms both outputs in fp16/fp32 and subtracts).
pub fn linear_loss(w: &[f32], rows: usize, cols: usize, grid: Grid, x: &[f32], s: &[f32]) -> f64 {
    assert_eq!(w.len(), rows * cols);
    assert_eq!(s.len(), cols);
    let n = x.len().checked_div(cols).unwrap_or(0);
    if n == 0 || rows == 0 {
        return 0.0;
    }
    let mut ws: Vec<f32> = w.to_vec();
    unscale_inv(&mut ws, cols, s);
    let mut deq = vec![0.0f32; rows * cols];
    fake_quantize(&ws, rows, cols, grid, &mut deq);
    unscale(&mut deq, cols, s);
    // D = W − Ŵ, reusing `ws`.
    ws.par_iter_mut()
        .zip(deq.par_iter())
        .zip(w.par_iter())
        .for_each(|((d, &q), &o)| *d = o - q);
    sq_out_norm(x, &ws, rows, cols) / (n as f64 * rows as f64)
}

/// Multiplies column `c` of `w` by `s[c]` (`W·diag(s)`).
fn unscale_inv(w: &mut [f32], cols: usize, s: &[f32]) {
    if cols == 0 {
        return;
    }
    w.par_chunks_mut(cols).for_each(|row| {
        for (v, &sc) in row.iter_mut().zip(s) {
            *v *= sc;
        }
    });
}

/// Result of [`auto_clip`]: `max_val` per (row, group), `rows × n_groups`.
#[derive(Debug, Clone)]
pub struct ClipResult {
    pub max_val: Vec<f32>,
    pub stats: ClipStats,
}

/// The token indices `auto_clip_layer` uses: `0::step`,
/// `step = max(1, n // n_sample_token)` (the reference has no `max(1, …)`
/// and fails below `n_sample_token` tokens; the maintainers' harness tiles
/// the calibration rows there, which gives the same mean error as step 1).
/// Note this is `ceil(n/step)` tokens, up to `2·n_sample_token − 1`.
pub fn clip_token_indices(n: usize, n_sample_token: usize) -> Vec<usize> {
    let step = (n / n_sample_token.max(1)).max(1);
    (0..n).step_by(step).collect()
}

/// llm-awq `auto_clip_layer` on `w [rows, cols]` (already scaled by `s`)
/// with `x [n, cols]` (already divided by `s`): for each row and group,
/// `org_max = max|w_g|`, candidates `max_val = org_max·(1 − i/n_grid)` for
/// `i in 0..int(max_shrink·n_grid)`, `w_c = clamp(w_g, −max_val, max_val)`,
/// `err = mean_t (x_t,g·Q(w_c) − x_t,g·w_g)²` on the subsampled tokens
/// ([`clip_token_indices`]); the first strict minimum below 1e9 wins
/// (otherwise `org_max`, i.e. no clip). Apply with [`apply_clip`].
#[allow(clippy::too_many_arguments)]
pub fn auto_clip(
    w: &[f32],
    rows: usize,
    cols: usize,
    grid: Grid,
    x: &[f32],
    n_grid: usize,
    max_shrink: f32,
    n_sample_token: usize,
) -> ClipResult {
    let n = x.len().checked_div(cols).unwrap_or(0);
    let idx = clip_token_indices(n, n_sample_token);
    let xs: Vec<f32> = idx.iter().flat_map(|&t| x[t * cols..(t + 1) * cols].iter().copied()).collect();
    auto_clip_sampled(w, rows, cols, grid, &xs, n_grid, max_shrink)
}

/// [`auto_clip`] on tokens already subsampled (and divided by `s`).
pub fn auto_clip_sampled(w: &[f32], rows: usize, cols: usize, grid: Grid, xs: &[f32], n_grid: usize, max_shrink: f32) -> ClipResult {
    assert_eq!(w.len(), rows * cols);
    let gl = grid.group_len(cols).max(1);
    let ng = grid.n_groups(cols);
    let nt = xs.len().checked_div(cols).unwrap_or(0);
    let n_cand = (max_shrink as f64 * n_grid as f64) as usize;
    let maxq = grid.maxq();
    // Per row: (max_val per group, err_before, err_after, n_clipped).
    let per_row: Vec<(Vec<f32>, f64, f64, usize)> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let row = &w[r * cols..(r + 1) * cols];
            let mut mv = vec![0.0f32; ng];
            let (mut eb, mut ea, mut nc) = (0.0f64, 0.0f64, 0usize);
            let mut diff = vec![0.0f32; gl];
            let mut cw = vec![0.0f32; gl];
            for (g, mv_g) in mv.iter_mut().enumerate() {
                let (c0, c1) = (g * gl, ((g + 1) * gl).min(cols));
                let wg = &row[c0..c1];
                let len = c1 - c0;
                let org_max = wg.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
                let mut best_max = org_max;
                let mut min_err = 1e9f64;
                let mut err0 = f64::NAN;
                for i in 0..n_cand {
                    let max_val = org_max * (1.0 - i as f64 / n_grid as f64) as f32;
                    for (c, &v) in cw[..len].iter_mut().zip(wg) {
                        *c = v.clamp(-max_val, max_val);
                    }
                    let (s, z) = group_params(&cw[..len], &grid);
                    for k in 0..len {
                        let q = (quantize_value(cw[k], s, z, maxq) - z) * s;
                        diff[k] = q - wg[k];
                    }
                    let mut err = 0.0f64;
                    for t in 0..nt {
                        let xt = &xs[t * cols + c0..t * cols + c1];
                        let mut acc = 0.0f32;
                        for k in 0..len {
                            acc += xt[k] * diff[k];
                        }
                        err += (acc as f64) * (acc as f64);
                    }
                    let err = if nt > 0 { err / nt as f64 } else { 0.0 };
                    if i == 0 {
                        err0 = err;
                    }
                    if err < min_err {
                        min_err = err;
                        best_max = max_val;
                    }
                }
                *mv_g = best_max;
                if n_cand > 0 {
                    eb += err0;
                    ea += if min_err < 1e9 { min_err } else { err0 };
                }
                if best_max != org_max {
                    nc += 1;
                }
            }
            (mv, eb, ea, nc)
        })
        .collect();
    let mut max_val = Vec::with_capacity(rows * ng);
    let mut stats = ClipStats {
        tokens: nt,
        err_before: 0.0,
        err_after: 0.0,
        n_clipped: 0,
    };
    for (mv, eb, ea, nc) in per_row {
        max_val.extend(mv);
        stats.err_before += eb;
        stats.err_after += ea;
        stats.n_clipped += nc;
    }
    ClipResult { max_val, stats }
}

/// llm-awq `apply_clip`: `w = clamp(w, −max_val, max_val)` per (row, group).
pub fn apply_clip(w: &mut [f32], rows: usize, cols: usize, grid: Grid, max_val: &[f32]) {
    let gl = grid.group_len(cols).max(1);
    let ng = grid.n_groups(cols);
    assert_eq!(max_val.len(), rows * ng);
    for r in 0..rows {
        for c in 0..cols {
            let m = max_val[r * ng + c / gl];
            let v = &mut w[r * cols + c];
            *v = v.clamp(-m, m);
        }
    }
}

/// AWQ on a single linear (`module2inspect` = the linear itself): scale
/// search with [`linear_loss`] on all of `x`, then (if `cfg.clip`) clip
/// search on `W·diag(s)` with `X·diag(1/s)`, then [`pseudo_quantize`] of the
/// clipped `W·diag(s)` on `grid`. Returns the layer (of `W·diag(s)`), `s`
/// (dequantize, then [`unscale`] for the effective weight) and stats.
pub fn awq_linear(
    w: &[f32],
    rows: usize,
    cols: usize,
    grid: Grid,
    x: &[f32],
    cfg: &AwqConfig,
) -> Result<(QuantizedLayer, Vec<f32>, AwqStats)> {
    ensure!(
        rows > 0 && cols > 0 && w.len() == rows * cols,
        "weight has {} values, not {rows} × {cols}",
        w.len()
    );
    ensure!(
        x.len() % cols == 0 && !x.is_empty(),
        "activations ({} values) are not n × {cols} with n > 0",
        x.len()
    );
    ensure!(grid.bits >= 2 && grid.bits <= 8, "{}-bit AWQ grid", grid.bits);
    ensure!(cfg.n_grid > 0, "n_grid must be positive");
    let x_mean = act_mean(x, cols);
    let w_mean = cfg.duo_scaling.then(|| weight_mean(w, rows, cols, grid.group_len(cols)));
    let (s, best, history) = search_scale(&x_mean, w_mean.as_deref(), cfg.n_grid, cfg.duo_scaling, |s| {
        linear_loss(w, rows, cols, grid, x, s)
    });
    if !best.is_finite() {
        bail!("AWQ scale search found no finite loss: {history:?}");
    }
    let best_i = history.iter().position(|&l| l == best).unwrap_or(0);
    let mut ws = w.to_vec();
    unscale_inv(&mut ws, cols, &s);
    let clip = if cfg.clip {
        let n = x.len() / cols;
        let idx = clip_token_indices(n, cfg.n_sample_token);
        let mut xs = Vec::with_capacity(idx.len() * cols);
        for &t in &idx {
            xs.extend(x[t * cols..(t + 1) * cols].iter().zip(&s).map(|(&v, &sc)| v / sc));
        }
        let cr = auto_clip_sampled(&ws, rows, cols, grid, &xs, cfg.clip_n_grid, cfg.max_shrink);
        apply_clip(&mut ws, rows, cols, grid, &cr.max_val);
        Some(cr.stats)
    } else {
        None
    };
    let q = pseudo_quantize(&ws, rows, cols, grid);
    Ok((
        q,
        s,
        AwqStats {
            best_ratio: (best_i as f64 / cfg.n_grid as f64) as f32,
            scale_loss: best,
            scale_history: history,
            clip,
        },
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::algo::output_rel_err;

    /// Small deterministic PRNG (xorshift + Box–Muller).
    pub(crate) struct Rng(u64);
    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
        }
        pub fn u(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        pub fn normal(&mut self) -> f32 {
            let (a, b) = (self.u().max(1e-12), self.u());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        }
    }

    /// A layer whose inputs have a few (1 %) large channels.
    fn outlier_layer(rows: usize, cols: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * 0.05).collect();
        let mut ch: Vec<f32> = (0..cols).map(|_| (0.3 * rng.normal()).exp()).collect();
        for c in (0..cols).step_by(100) {
            ch[(c + 37) % cols] *= 30.0;
        }
        let mut acts = |m: usize| -> Vec<f32> { (0..m * cols).map(|i| rng.normal() * ch[i % cols]).collect() };
        let x = acts(n);
        let xe = acts(n / 2);
        (w, x, xe)
    }

    fn eff(q: &QuantizedLayer, s: &[f32]) -> Vec<f32> {
        let mut d = q.dequantize();
        unscale(&mut d, q.cols, s);
        d
    }

    #[test]
    fn awq_beats_rtn_with_outlier_channels() {
        let (rows, cols, n) = (64, 512, 1024);
        let (w, x, xe) = outlier_layer(rows, cols, n, 7);
        for group in [128, 32] {
            let grid = Grid {
                bits: 4,
                group,
                sym: false,
            };
            let rtn = pseudo_quantize(&w, rows, cols, grid).dequantize();
            let e_rtn = output_rel_err(&w, &rtn, &xe, rows, cols);
            let (q, s, st) = awq_linear(&w, rows, cols, grid, &x, &AwqConfig::default()).unwrap();
            let e_awq = output_rel_err(&w, &eff(&q, &s), &xe, rows, cols);
            let (q2, s2, _) = awq_linear(&w, rows, cols, grid, &x, &AwqConfig::autoawq()).unwrap();
            let e_duo = output_rel_err(&w, &eff(&q2, &s2), &xe, rows, cols);
            eprintln!("g{group}: rtn {e_rtn:.4e} awq {e_awq:.4e} (r={}) duo {e_duo:.4e}", st.best_ratio);
            assert!(st.best_ratio > 0.0);
            assert!(e_awq < 0.9 * e_rtn, "g{group}: awq {e_awq} vs rtn {e_rtn}");
            assert!(e_duo < e_rtn, "g{group}: duo {e_duo} vs rtn {e_rtn}");
            // The stored layer round-trips through EQF.
            q.to_eqf().unwrap();
        }
    }

    #[test]
    fn uniform_activations_choose_ratio_zero() {
        let (rows, cols, n) = (16, 256, 64);
        let mut rng = Rng::new(3);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
        // |x| = 1 on every channel: every candidate is s ≡ 1, all losses tie.
        let x: Vec<f32> = (0..n * cols).map(|_| if rng.u() < 0.5 { -1.0 } else { 1.0 }).collect();
        let grid = LLM_AWQ_GRID;
        let xm = act_mean(&x, cols);
        assert!(xm.iter().all(|&v| v == 1.0));
        let (s, best, hist) = search_scale(&xm, None, 20, false, |s| linear_loss(&w, rows, cols, grid, &x, s));
        assert!(s.iter().all(|&v| v == 1.0));
        assert_eq!(hist.len(), 20);
        assert_eq!(best, hist[0]);
        let (_, _, st) = awq_linear(&w, rows, cols, grid, &x, &AwqConfig::default()).unwrap();
        assert_eq!(st.best_ratio, 0.0);
        // Ties keep the first candidate even with a constant loss.
        let (_, _, h) = search_scale(&[2.0, 3.0], None, 5, false, |_| 1.0);
        assert_eq!(h, vec![1.0; 5]);
        let mut k = 0;
        let (s, l, _) = search_scale(&[2.0, 8.0], None, 4, false, |_| {
            k += 1;
            [3.0, 1.0, 1.0, 2.0][k - 1]
        });
        assert_eq!(l, 1.0);
        // ratio 1/4: s = [2, 8]^0.25 / sqrt(8^0.25 · 2^0.25) = [2^−0.25, 2^0.25]
        assert!((s[0] - 0.8408964).abs() < 1e-6 && (s[1] - 1.1892071).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn clip_search_never_increases_its_loss() {
        let (rows, cols, n) = (32, 256, 700);
        let (w, x, _) = outlier_layer(rows, cols, n, 11);
        for grid in [
            LLM_AWQ_GRID,
            Grid {
                bits: 4,
                group: 32,
                sym: false,
            },
            Grid {
                bits: 4,
                group: 64,
                sym: true,
            },
        ] {
            let cr = auto_clip(&w, rows, cols, grid, &x, 20, 0.5, 512);
            assert_eq!(cr.stats.tokens, 700); // step max(1, 700/512) = 1
            assert!(cr.stats.err_after <= cr.stats.err_before, "{grid:?} {:?}", cr.stats);
            // Recompute each group's error with and without the clip.
            let mut wc = w.clone();
            apply_clip(&mut wc, rows, cols, grid, &cr.max_val);
            let (a, b) = (
                pseudo_quantize(&wc, rows, cols, grid).dequantize(),
                pseudo_quantize(&w, rows, cols, grid).dequantize(),
            );
            let gl = grid.group_len(cols);
            for r in 0..rows {
                for g in 0..grid.n_groups(cols) {
                    let (mut ea, mut eb) = (0.0f64, 0.0f64);
                    for t in 0..n {
                        let (mut sa, mut sb) = (0.0f64, 0.0f64);
                        for c in g * gl..(g + 1) * gl {
                            let xv = x[t * cols + c] as f64;
                            sa += xv * (a[r * cols + c] - w[r * cols + c]) as f64;
                            sb += xv * (b[r * cols + c] - w[r * cols + c]) as f64;
                        }
                        ea += sa * sa;
                        eb += sb * sb;
                    }
                    assert!(ea <= eb * (1.0 + 1e-4) + 1e-9, "{grid:?} r{r} g{g}: {ea} > {eb}");
                }
            }
        }
        assert_eq!(clip_token_indices(16384, 512).len(), 512);
        assert_eq!(clip_token_indices(1000, 512).len(), 1000);
        assert_eq!(clip_token_indices(1100, 512), (0..1100).step_by(2).collect::<Vec<_>>());
    }

    #[test]
    fn pseudo_quantize_hand_example() {
        // One row, two groups of 4 at 2 bits (maxq 3).
        let w = [-1.0f32, -0.2, 0.5, 2.0, 0.1, 0.2, 0.3, 0.4];
        let grid = Grid {
            bits: 2,
            group: 4,
            sym: false,
        };
        let q = pseudo_quantize(&w, 1, 8, grid);
        // g0: min −1, max 2 → scale 1, zero −round(−1) = 1;
        //     codes round(w) + 1 = [0, 1, 1 (0.5→0 ties even), 3].
        // g1: min 0.1, max 0.4 → scale 0.1, zero clamp(−round(1), 0, 3) = 0
        //     (the range is not widened to 0); codes round(w/0.1) = [1,2,3,4→3].
        assert_eq!(q.codes, vec![0, 1, 1, 3, 1, 2, 3, 3]);
        assert_eq!(q.zeros, vec![1.0, 0.0]);
        assert!((q.scales[0] - 1.0).abs() < 1e-7 && (q.scales[1] - 0.1).abs() < 1e-7);
        let d = q.dequantize();
        let want = [-1.0, 0.0, 0.0, 2.0, 0.1, 0.2, 0.3, 0.3];
        for (a, b) in d.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{d:?}");
        }
        let mut fq = vec![0.0; 8];
        fake_quantize(&w, 1, 8, grid, &mut fq);
        assert_eq!(fq, d);
        // 4-bit symmetric: amax 2 → scale 2/7 (f32: 0.2857143, so −1/scale =
        // −3.4999998 rounds to −3); round(w/scale) in [−8, 7], +8.
        let q = pseudo_quantize(
            &w,
            1,
            8,
            Grid {
                bits: 4,
                group: 0,
                sym: true,
            },
        );
        assert_eq!(&q.codes[..4], &[5, 7, 10, 15]);
        assert_eq!(q.zeros, vec![8.0]);
        q.to_eqf().unwrap();
        // Constant group: the reference's scale would clamp to 1e-5/maxq and
        // dequantize a constant 0.5 group to 1e-5; edgeq takes 0 into a
        // range below 1e-5, so scale = 0.5/15, zero 0, code 15: exact.
        let q = pseudo_quantize(
            &[0.5; 4],
            1,
            4,
            Grid {
                bits: 4,
                group: 4,
                sym: false,
            },
        );
        assert!((q.scales[0] - 0.5 / 15.0).abs() < 1e-9);
        assert_eq!(q.zeros[0], 0.0);
        assert!(q.dequantize().iter().all(|&v| (v - 0.5).abs() < 1e-6));
    }

    fn read_npy(path: &str) -> (Vec<u64>, Vec<f32>) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let f = npyz::NpyFile::new(&bytes[..]).unwrap();
        let shape = f.shape().to_vec();
        (shape, f.into_vec::<f32>().unwrap())
    }

    pub(crate) fn write_npy(path: &str, data: &[f32], rows: usize, cols: usize) {
        use npyz::WriterBuilder;
        let mut out = Vec::new();
        let mut wr = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[rows as u64, cols as u64])
            .writer(&mut out)
            .begin_nd()
            .unwrap();
        wr.extend(data.iter().copied()).unwrap();
        wr.finish().unwrap();
        std::fs::write(path, out).unwrap();
    }

    /// `(W, rows, cols, X, out dir)` from the parity env vars.
    type PeerInput = (Vec<f32>, usize, usize, Vec<f32>, String);

    pub(crate) fn load_wx() -> Option<PeerInput> {
        let (wp, xp, out) = (
            std::env::var("EDGEQ_PEER_W").ok()?,
            std::env::var("EDGEQ_PEER_X").ok()?,
            std::env::var("EDGEQ_PEER_OUT").ok()?,
        );
        let (ws, w) = read_npy(&wp);
        let (xs, x) = read_npy(&xp);
        assert_eq!(ws.len(), 2);
        assert_eq!(*xs.last().unwrap(), ws[1]);
        Some((w, ws[0] as usize, ws[1] as usize, x, out))
    }

    /// Parity run: `EDGEQ_PEER_W=W.npy EDGEQ_PEER_X=X.npy EDGEQ_PEER_OUT=dir`
    /// writes `dir/awq_w4g128.npy` (effective weight, clip on) and
    /// `dir/awq_w4g128_noclip.npy`, `dir/awq_w4g128_duo.npy`, to score with
    /// `peer_harness.py run … --candidate edgeq=dir/awq_w4g128.npy`.
    /// `EDGEQ_PEER_GROUP` (default 128; 0 = per row) changes the group; the
    /// file names keep `w4g128`.
    #[test]
    #[ignore]
    fn peer_parity_awq() {
        let Some((w, rows, cols, x, out)) = load_wx() else {
            eprintln!("EDGEQ_PEER_W / EDGEQ_PEER_X / EDGEQ_PEER_OUT not set");
            return;
        };
        let group = std::env::var("EDGEQ_PEER_GROUP").map(|g| g.parse().unwrap()).unwrap_or(128);
        let grid = Grid { group, ..LLM_AWQ_GRID };
        for (name, cfg) in [
            ("awq_w4g128", AwqConfig::default()),
            (
                "awq_w4g128_noclip",
                AwqConfig {
                    clip: false,
                    ..Default::default()
                },
            ),
            ("awq_w4g128_duo", AwqConfig::autoawq()),
            (
                "awq_w4g128_duo_noclip",
                AwqConfig {
                    clip: false,
                    ..AwqConfig::autoawq()
                },
            ),
        ] {
            let t = std::time::Instant::now();
            let (q, s, st) = awq_linear(&w, rows, cols, grid, &x, &cfg).unwrap();
            let wq = eff(&q, &s);
            eprintln!(
                "{name}: ratio {} loss {:.6e} clip {:?} in {:.2?}\n  history {:?}",
                st.best_ratio,
                st.scale_loss,
                st.clip,
                t.elapsed(),
                st.scale_history
            );
            write_npy(&format!("{out}/{name}.npy"), &wq, rows, cols);
        }
        let rtn = pseudo_quantize(&w, rows, cols, grid).dequantize();
        write_npy(&format!("{out}/rtn_w4g128_awq.npy"), &rtn, rows, cols);
    }
}
