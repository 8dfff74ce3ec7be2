//! The forward pass of a Llama-family decoder, the one model definition of
//! edgeq: the host's calibration and evaluation run this same code (the host
//! calls [`block_forward`] block by block with an [`Observer`]).
//!
//! For each of the `n` tokens fed at positions `pos..pos+n`:
//! ```text
//! x = embed(token)
//! for each block:
//!     h = rmsnorm(x) · attn_norm
//!     q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv);  rope(q, k);  cache k, v
//!     x += Wo · attention(q, K[0..=p], V[0..=p])      (grouped-query, causal)
//!     h = rmsnorm(x) · ffn_norm
//!     x += Wdown · (silu(Wgate h) ⊙ (Wup h))
//! logits = Wcls · (rmsnorm(x) · output_norm)
//! ```
use crate::arena::{Activations, ArenaPlan, Buffers, MatmulOpts, Scratch, SessionOptions};
use crate::error::RuntimeError;
use crate::kv::{self, KvBufs, KvCache};
use crate::model::{Block, Model};
use core::ops::ControlFlow;
#[cfg(feature = "act-quant")]
use edgeq_core::ActMode;
use edgeq_core::{ActQuant, ModelConfig, RopeLayout, RopeScaling, TensorRole, TensorView};
use edgeq_kernels as k;

/// Sees the input of every linear layer as the forward pass runs
/// (calibration statistics, Hessians). `x` holds `n` vectors of the layer's
/// input width. q/k/v share one input (reported as `Wq`), gate/up too
/// (reported as `WGate`); the classifier's input is reported with layer
/// `usize::MAX` and role `Output`. Returning `Break` stops the pass right
/// there (calibration only needs a block up to the layer it is fitting).
pub trait Observer {
    fn linear_input(&mut self, layer: usize, role: TensorRole, x: &[f32], n: usize) -> ControlFlow<()>;
}

/// Observes nothing.
pub struct NoObserver;
impl Observer for NoObserver {
    #[inline]
    fn linear_input(&mut self, _: usize, _: TensorRole, _: &[f32], _: usize) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

// Slicing without panics. The bare-metal C API's link is checked to hold no
// panic path (scripts/test-capi.sh), and the compiler cannot see the sizes
// that `ArenaPlan` and the loader guarantee. So buffers are sliced with the
// helpers below: a buffer too short for a request (a caller bug, never an
// input) gives an empty slice, which every function here treats as nothing
// to do.

/// `v[..len]` (empty when `v` is shorter).
fn head<T>(v: &[T], len: usize) -> &[T] {
    v.get(..len).unwrap_or(&[])
}
fn head_mut<T>(v: &mut [T], len: usize) -> &mut [T] {
    v.get_mut(..len).unwrap_or(&mut [])
}
/// `v[at..at + len]` (empty when out of range).
fn sub<T>(v: &[T], at: usize, len: usize) -> &[T] {
    v.get(at..at + len).unwrap_or(&[])
}
fn sub_mut<T>(v: &mut [T], at: usize, len: usize) -> &mut [T] {
    v.get_mut(at..at + len).unwrap_or(&mut [])
}
/// The `w`-wide rows of `v` (one per token, or per head).
fn rows_of<T>(v: &[T], w: usize) -> core::slice::ChunksExact<'_, T> {
    v.chunks_exact(w.max(1))
}
fn rows_of_mut<T>(v: &mut [T], w: usize) -> core::slice::ChunksExactMut<'_, T> {
    v.chunks_exact_mut(w.max(1))
}

/// A decoding session: a KV cache and scratch in a caller arena.
pub struct Session<'m, 'a, 'r> {
    model: &'m Model<'a>,
    buf: Buffers<'r>,
    max_seq: usize,
    max_batch: usize,
    pos: usize,
}

/// `y = W·x` for `n` tokens. Integer weights with [`Activations::Q8`] run
/// as int8 dot products against `x` quantized per 32-block into `qa`
/// (llama.cpp's scheme); everything else against f32 activations (`row`:
/// one dequantized row for the scalar reference). With the `threads` feature
/// and `mm.threads > 1` rows are split across threads (same results).
///
/// A layer stored with an int8 activation mode (EQF ACT_QUANT) overrides
/// the session: [`ActMode::Int8Token`] quantizes `x` per token (one scale
/// per token, SmoothQuant W8A8), [`ActMode::LlmInt8`] does the same on the
/// regular columns and adds the outlier columns in f32 (LLM.int8()),
/// [`ActMode::Int4Token`] quantizes per token to ±7 (QuaRot W4A4).
///
/// A layer stored with a column permutation (GPTQ act-order, EQF
/// INPUT_PERM) multiplies the gathered input `xp[i] = x[perm[i]]`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    y: &mut [f32],
    w: &TensorView<'_>,
    x: &[f32],
    n: usize,
    row: &mut [f32],
    qa: &mut [f32],
    xp: &mut [f32],
    mm: MatmulOpts,
    act: Option<ActQuant<'_>>,
    perm: Option<&[u32]>,
) {
    let cols = w.cols();
    let x = match perm {
        None => x,
        Some(p) => {
            // The loader checked the permutation and sized `xp` (config flag).
            let (Some(xp), true) = (xp.get_mut(..n * cols), p.len() == cols && x.len() >= n * cols) else {
                return;
            };
            for (dst, src) in rows_of_mut(xp, cols).zip(rows_of(x, cols)) {
                for (d, &i) in dst.iter_mut().zip(p) {
                    *d = src.get(i as usize).copied().unwrap_or(0.0);
                }
            }
            &*xp
        }
    };
    #[cfg(feature = "act-quant")]
    if let Some(a) =
        act.filter(|a| matches!(a.mode, ActMode::Int8Token | ActMode::LlmInt8 | ActMode::Int4Token) && k::scalar_int::supported(w))
    {
        return matmul_int8_token(y, w, x, n, row, qa, mm, a);
    }
    #[cfg(not(feature = "act-quant"))]
    let _ = act;
    if mm.acts == Activations::Q8 && k::scalar_int::supported(w) {
        if let Some(mut a) = k::Q8Acts::carve(qa, n, w.cols()) {
            if a.quantize(x) {
                return matmul_q8(y, w, &a, mm);
            }
        }
    }
    #[cfg(feature = "threads")]
    if mm.threads > 1 {
        return k::par::matmul(mm.threads, y, w, x, n, row);
    }
    k::matmul(y, w, x, n, 0..w.rows(), row);
}

/// Products of one input `x` (`n` tokens) in one fork-join, with
/// `then` on each thread's rows of jobs 0 and 1 (SwiGLU) — see
/// `k::par::matmul_q8_fused`; bit-identical to one [`matmul`] per job
/// (then `then`). `false` when that path does not apply (one thread, f32
/// activations, a scheme without integer kernels): the caller then
/// runs [`matmul`] per job.
#[cfg(feature = "threads")]
fn fused(jobs: &mut [k::par::Job<'_, '_>], x: &[f32], n: usize, qa: &mut [f32], mm: MatmulOpts, then: Option<&k::par::Then<'_>>) -> bool {
    if mm.threads <= 1 || mm.acts != Activations::Q8 || !jobs.iter().all(|(_, w)| k::scalar_int::supported(w)) {
        return false;
    }
    let Some(mut a) = jobs.first().and_then(|(_, w)| k::Q8Acts::carve(qa, n, w.cols())) else {
        return false;
    };
    a.quantize(x) && k::par::matmul_q8_fused(mm.threads, jobs, &a, then)
}

/// The epilogue of [`fused`] (SwiGLU) without the `threads` feature.
#[cfg(not(feature = "threads"))]
type Epilogue = dyn Fn(&mut [f32], &[f32]);

#[cfg(not(feature = "threads"))]
fn fused(_: &mut [(&mut [f32], &TensorView<'_>)], _: &[f32], _: usize, _: &mut [f32], _: MatmulOpts, _: Option<&Epilogue>) -> bool {
    false
}

fn matmul_q8(y: &mut [f32], w: &TensorView<'_>, a: &k::Q8Acts<'_>, mm: MatmulOpts) {
    #[cfg(feature = "threads")]
    if mm.threads > 1 {
        return k::par::matmul_q8(mm.threads, y, w, a);
    }
    let _ = mm;
    k::matmul_q8(y, w, a, 0..w.rows());
}

/// W8A8 with per-token int8 activations. LLM.int8(): the outlier columns
/// (stored at calibration, plus every column where some token of this batch
/// has `|x| ≥ threshold`) are marked in a bit mask (the tail of the `row`
/// scratch), left out of the int8 product, and added back as
/// `Σ x[c] · W[r][c]` in f32 (the weight's own dequantized value, as
/// bitsandbytes does).
#[cfg(feature = "act-quant")]
#[allow(clippy::too_many_arguments)]
fn matmul_int8_token(
    y: &mut [f32],
    w: &TensorView<'_>,
    x: &[f32],
    n: usize,
    scratch: &mut [f32],
    qa: &mut [f32],
    mm: MatmulOpts,
    a: ActQuant<'_>,
) {
    let (rows, cols) = (w.rows(), w.cols());
    if x.len() < n * cols || y.len() < n * rows {
        return; // a caller bug; never a panic
    }
    let llm = a.mode == ActMode::LlmInt8;
    let split = scratch.len().saturating_sub(cols.div_ceil(32));
    let (wrow, bits) = scratch.split_at_mut(split);
    let mask: &mut [u32] = bytemuck::cast_slice_mut(bits);
    let words = if llm { cols.div_ceil(32).min(mask.len()) } else { 0 };
    let mask = head_mut(mask, words);
    mask.fill(0);
    let set = |m: &mut [u32], c: usize| {
        if let Some(wd) = m.get_mut(c / 32) {
            *wd |= 1 << (c % 32);
        }
    };
    if llm {
        for &c in a.outliers.iter().filter(|&&c| (c as usize) < cols) {
            set(mask, c as usize);
        }
        for xr in rows_of(x, cols).take(n) {
            for (c, v) in xr.iter().enumerate() {
                if v.abs() >= a.threshold {
                    set(mask, c);
                }
            }
        }
    }
    let Some(mut q) = k::Q8Acts::carve(qa, n, cols) else { return };
    let ok = if a.mode == ActMode::Int4Token {
        q.quantize_per_token_levels(x, mask, 7, a.threshold)
    } else {
        q.quantize_per_token(x, mask)
    };
    if !ok {
        return;
    }
    matmul_q8(y, w, &q, mm);
    let is_out = |c: usize| mask.get(c / 32).is_some_and(|&wd| wd >> (c % 32) & 1 != 0);
    let n_out: usize = mask.iter().map(|wd| wd.count_ones() as usize).sum();
    if n_out == 0 {
        return;
    }
    if n_out * 8 < cols {
        // few outliers (LLM.int8's usual case): one weight element at a time
        for c in (0..cols).filter(|&c| is_out(c)) {
            for r in 0..rows {
                let wv = w.element(r, c);
                for (yr, xr) in rows_of_mut(y, rows).zip(rows_of(x, cols)).take(n) {
                    if let (Some(y), Some(&x)) = (yr.get_mut(r), xr.get(c)) {
                        *y += x * wv;
                    }
                }
            }
        }
    } else if let Some(wrow) = wrow.get_mut(..cols) {
        // many (massive activations): dequantize each row once
        for r in 0..rows {
            w.dequantize_row(r, wrow);
            for (yr, xr) in rows_of_mut(y, rows).zip(rows_of(x, cols)).take(n) {
                let out = xr.iter().zip(&*wrow).enumerate().filter(|&(c, _)| is_out(c));
                if let Some(y) = yr.get_mut(r) {
                    *y += out.map(|(_, (x, w))| x * w).sum::<f32>();
                }
            }
        }
    }
}

/// FP8 activation modes quantize the shared input of a group of linears
/// (q/k/v, gate/up; the loader checks the group agrees) in place, after the
/// observer saw it; the products then run as usual on the rounded values.
#[cfg(not(feature = "act-quant"))]
fn fp8_acts(_: &mut [f32], _: usize, _: Option<ActQuant<'_>>) {}

#[cfg(feature = "act-quant")]
fn fp8_acts(x: &mut [f32], cols: usize, act: Option<ActQuant<'_>>) {
    match act.map(|a| a.mode) {
        Some(ActMode::Fp8Token) => x.chunks_mut(cols).for_each(|t| edgeq_core::quant::fp8::fake_quant_e4m3(t, cols)),
        Some(ActMode::Fp8Group128) => x.chunks_mut(cols).for_each(|t| edgeq_core::quant::fp8::fake_quant_e4m3(t, 128)),
        _ => {}
    }
}

pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / libm::sqrtf(ss + eps);
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // exp first (a loop that vectorizes), then the sum in index order
    crate::exp::exp_in_place(x, max);
    let sum: f32 = x.iter().sum();
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Fills `rope` (`n·rope_dim` floats: per position, cos then sin of each
/// rotated pair) for positions `pos..pos+n`.
pub fn rope_angles(rope: &mut [f32], c: &ModelConfig, pos: usize, n: usize) {
    let rd = c.rope_dim as usize;
    let half = rd / 2;
    for (i, cs) in rows_of_mut(rope, rd).take(n).enumerate() {
        let Some((cos, sin)) = cs.split_at_mut_checked(half) else {
            continue;
        };
        for (j, (cos, sin)) in cos.iter_mut().zip(sin).enumerate() {
            let mut freq = libm::pow(c.rope_theta as f64, -2.0 * j as f64 / rd as f64);
            if let RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } = c.rope_scaling()
            {
                let (f, lo, hi, old) = (
                    factor as f64,
                    low_freq_factor as f64,
                    high_freq_factor as f64,
                    original_max_position as f64,
                );
                let wavelen = 2.0 * core::f64::consts::PI / freq;
                if wavelen > old / lo {
                    freq /= f;
                } else if wavelen >= old / hi {
                    let smooth = (old / wavelen - lo) / (hi - lo);
                    freq = (1.0 - smooth) * freq / f + smooth * freq;
                }
            }
            let angle = (pos + i) as f64 * freq;
            *cos = libm::cos(angle) as f32;
            *sin = libm::sin(angle) as f32;
        }
    }
}

/// Rotates the first `rope_dim` dims of each `head_dim` head in `v`.
/// Pairs `(2i, 2i+1)` (interleaved) or `(i, i + rope_dim/2)` (half).
fn rope(v: &mut [f32], cs: &[f32], head_dim: usize, layout: RopeLayout) {
    let (cos, sin) = cs.split_at(cs.len() / 2);
    let turn = |x0: &mut f32, x1: &mut f32, (&cos, &sin): (&f32, &f32)| {
        (*x0, *x1) = (*x0 * cos - *x1 * sin, *x0 * sin + *x1 * cos);
    };
    for head in rows_of_mut(v, head_dim) {
        match layout {
            RopeLayout::Interleaved => {
                for (pair, cs) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                    if let [x0, x1] = pair {
                        turn(x0, x1, cs);
                    }
                }
            }
            RopeLayout::Half => {
                let (lo, hi) = head.split_at_mut(cos.len().min(head.len()));
                for ((x0, x1), cs) in lo.iter_mut().zip(hi).zip(cos.iter().zip(sin)) {
                    turn(x0, x1, cs);
                }
            }
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + crate::exp::exp(-x))
}

/// Shapes shared by every head's attention.
#[derive(Clone, Copy)]
struct AttnGeometry {
    /// Floats per cached position (all kv heads).
    kvd: usize,
    hd: usize,
    n_kv: usize,
    /// 1/√head_dim.
    scale: f32,
}

/// One query head against kv head `g` at positions `0..=p` (causal): scores
/// `q·k·scale` into `att` (`p + 1` floats), softmax, `out = Σ att_t · v_t`.
fn attend(q: &[f32], kv: &KvBufs<'_>, g: usize, p: usize, att: &mut [f32], out: &mut [f32], geo: AttnGeometry) {
    let AttnGeometry { kvd, hd, n_kv, scale } = geo;
    let kvh = g * hd;
    out.fill(0.0);
    let Some(att) = att.get_mut(..=p) else { return };
    // Position t's row of the cache holds every kv head; this head is `kvh..kvh + hd`.
    match kv {
        KvBufs::F32 { k: kc, .. } => {
            for (a, kt) in att.iter_mut().zip(rows_of(kc, kvd)) {
                *a = k::dot(q, sub(kt, kvh, hd)) * scale;
            }
        }
        KvBufs::F16 { k: kc, .. } => {
            for (a, kt) in att.iter_mut().zip(rows_of(kc, kvd)) {
                *a = kv::dot_f16(q, sub(kt, kvh, hd)) * scale;
            }
        }
        KvBufs::Q8 { k: kc, ks, .. } => {
            for ((a, kt), sk) in att.iter_mut().zip(rows_of(kc, kvd)).zip(ks.iter().skip(g).step_by(n_kv.max(1))) {
                *a = sk.to_f32() * kv::dot_i8(q, sub(kt, kvh, hd)) * scale;
            }
        }
    }
    softmax(att);
    match kv {
        KvBufs::F32 { v: vc, .. } => {
            for (&a, vt) in att.iter().zip(rows_of(vc, kvd)) {
                out.iter_mut().zip(sub(vt, kvh, hd)).for_each(|(o, v)| *o += a * v);
            }
        }
        KvBufs::F16 { v: vc, .. } => {
            for (&a, vt) in att.iter().zip(rows_of(vc, kvd)) {
                out.iter_mut().zip(sub(vt, kvh, hd)).for_each(|(o, v)| *o += a * v.to_f32());
            }
        }
        KvBufs::Q8 { v: vc, vs, .. } => {
            for ((&a, vt), sv) in att.iter().zip(rows_of(vc, kvd)).zip(vs.iter().skip(g).step_by(n_kv.max(1))) {
                let w = a * sv.to_f32();
                out.iter_mut().zip(sub(vt, kvh, hd)).for_each(|(o, &v)| *o += w * v as f32);
            }
        }
    }
}

/// The heads split across `mm.threads` threads (each its own contiguous
/// heads of every token and its own scores buffer): the same [`attend`]
/// calls, so the same results. `false` (nothing done) with one thread or
/// without the `threads` feature.
#[allow(clippy::too_many_arguments)]
fn attend_threaded(
    q: &[f32],
    kv: &KvBufs<'_>,
    xb: &mut [f32],
    n: usize,
    pos: usize,
    n_heads: usize,
    kv_mul: usize,
    geo: AttnGeometry,
    mm: MatmulOpts,
) -> bool {
    #[cfg(feature = "threads")]
    if mm.threads > 1 && n_heads > 1 {
        extern crate alloc;
        use alloc::{vec, vec::Vec};
        let threads = mm.threads.min(n_heads);
        let (hd, qd) = (geo.hd, n_heads * geo.hd);
        let per = n_heads.div_ceil(threads);
        // Thread k: heads k·per.., as one slice per token.
        let mut parts: Vec<Vec<&mut [f32]>> = (0..threads).map(|_| Vec::with_capacity(n)).collect();
        for tok in rows_of_mut(head_mut(xb, n * qd), qd) {
            let mut rest = tok;
            for part in parts.iter_mut() {
                let take = (per * hd).min(rest.len());
                let (mine, tail) = core::mem::take(&mut rest).split_at_mut(take);
                part.push(mine);
                rest = tail;
            }
        }
        let parts: Vec<std::sync::Mutex<Vec<&mut [f32]>>> = parts.into_iter().map(std::sync::Mutex::new).collect();
        k::spin_pool::global(threads).run(&|t| {
            let Some(part) = parts.get(t) else { return };
            let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
            let mut att = vec![0.0f32; pos + n];
            for (i, out) in part.iter_mut().enumerate() {
                for (j, o) in out.chunks_exact_mut(hd).enumerate() {
                    let h = t * per + j;
                    attend(
                        &q[i * qd + h * hd..i * qd + (h + 1) * hd],
                        kv,
                        h / kv_mul,
                        pos + i,
                        &mut att,
                        o,
                        geo,
                    );
                }
            }
        });
        return true;
    }
    let _ = (q, kv, xb, n, pos, n_heads, kv_mul, geo, mm);
    false
}

/// One decoder block on `n` tokens at positions `pos..pos+n`, in place on
/// `x` (`n·dim`). `kc`/`vc` are this block's caches (`max_seq·kv_dim`, rows
/// `0..pos` already filled); `rope` holds [`rope_angles`] for the positions;
/// `s` must be sized for batches of `n` (see [`ArenaPlan`]). An f32 cache;
/// [`block_forward_kv`] takes any precision.
#[allow(clippy::too_many_arguments)]
pub fn block_forward<O: Observer>(
    c: &ModelConfig,
    w: &Block<'_>,
    l: usize,
    x: &mut [f32],
    n: usize,
    pos: usize,
    kc: &mut [f32],
    vc: &mut [f32],
    rope_cs: &[f32],
    s: &mut Scratch<'_>,
    obs: &mut O,
) -> ControlFlow<()> {
    block_forward_kv(c, w, l, x, n, pos, KvBufs::F32 { k: kc, v: vc }, rope_cs, s, obs)
}

/// [`block_forward`] with this block's KV cache in any precision
/// ([`KvBufs::layer`]: `max_seq·kv_dim` values, Q8 scales `max_seq·n_kv_heads`;
/// F16/Q8 compute the new k, v rows in `new` when it holds `2·n·kv_dim`,
/// else in `s.hb`/`s.hb2`, which then need `n·kv_dim` each).
#[allow(clippy::too_many_arguments)]
pub fn block_forward_kv<O: Observer>(
    c: &ModelConfig,
    w: &Block<'_>,
    l: usize,
    x: &mut [f32],
    n: usize,
    pos: usize,
    mut kv: KvBufs<'_>,
    rope_cs: &[f32],
    s: &mut Scratch<'_>,
    obs: &mut O,
) -> ControlFlow<()> {
    let (dim, qd, kvd, hid) = (c.dim as usize, c.q_dim(), c.kv_dim(), c.hidden_dim as usize);
    let (hd, n_heads) = (c.head_dim as usize, c.n_heads as usize);
    let n_kv = c.n_kv_heads as usize;
    let kv_mul = n_heads.checked_div(n_kv).unwrap_or(1).max(1);
    let rd = c.rope_dim as usize;
    let eps = c.rms_eps;

    // Attention: q, k, v projections (k and v straight into an f32 cache,
    // else into `new` and then stored in the cache's precision).
    for (o, xi) in rows_of_mut(s.xb, dim).zip(rows_of(x, dim)).take(n) {
        rmsnorm(o, xi, w.attn_norm, eps);
    }
    if obs.linear_input(l, TensorRole::Wq, head(s.xb, n * dim), n).is_break() {
        return ControlFlow::Break(());
    }
    fp8_acts(head_mut(s.xb, n * dim), dim, w.act.wq);
    let h = head(s.xb, n * dim);
    {
        let (k_new, v_new) = match &mut kv {
            KvBufs::F32 { k, v } => (sub_mut(k, pos * kvd, n * kvd), sub_mut(v, pos * kvd, n * kvd)),
            KvBufs::F16 { new, .. } | KvBufs::Q8 { new, .. } => {
                if new.len() >= 2 * n * kvd {
                    head_mut(new, 2 * n * kvd).split_at_mut_checked(n * kvd).unwrap_or_default()
                } else {
                    (head_mut(s.hb, n * kvd), head_mut(s.hb2, n * kvd))
                }
            }
        };
        let plain = w.act.wq.is_none() && w.act.wk.is_none() && w.act.wv.is_none();
        let plain = plain && w.perm.wq.is_none() && w.perm.wk.is_none() && w.perm.wv.is_none();
        let jobs = &mut [(head_mut(s.q, n * qd), &w.wq), (&mut *k_new, &w.wk), (&mut *v_new, &w.wv)];
        if !(plain && fused(jobs, h, n, s.qa, s.mm, None)) {
            matmul(head_mut(s.q, n * qd), &w.wq, h, n, s.row, s.qa, s.xp, s.mm, w.act.wq, w.perm.wq);
            matmul(k_new, &w.wk, h, n, s.row, s.qa, s.xp, s.mm, w.act.wk, w.perm.wk);
            matmul(v_new, &w.wv, h, n, s.row, s.qa, s.xp, s.mm, w.act.wv, w.perm.wv);
        }
        let qkv = rows_of_mut(s.q, qd).zip(rows_of_mut(k_new, kvd)).zip(rows_of_mut(v_new, kvd));
        for (i, ((q, kk), vv)) in qkv.take(n).enumerate() {
            if let (Some(bq), Some(bk), Some(bv)) = (w.bq, w.bk, w.bv) {
                q.iter_mut().zip(bq).for_each(|(a, b)| *a += b);
                kk.iter_mut().zip(bk).for_each(|(a, b)| *a += b);
                vv.iter_mut().zip(bv).for_each(|(a, b)| *a += b);
            }
            let cs = sub(rope_cs, i * rd, rd);
            rope(q, cs, hd, c.rope_layout());
            rope(kk, cs, hd, c.rope_layout());
        }
    }
    // Store the new rows in a reduced-precision cache.
    fn rows<'b>(new: &'b [f32], hb: &'b [f32], hb2: &'b [f32], len: usize) -> (&'b [f32], &'b [f32]) {
        if new.len() >= 2 * len {
            head(new, 2 * len).split_at_checked(len).unwrap_or_default()
        } else {
            (head(hb, len), head(hb2, len))
        }
    }
    match &mut kv {
        KvBufs::F32 { .. } => {}
        KvBufs::F16 { k, v, new } => {
            let (k_new, v_new) = rows(new, s.hb, s.hb2, n * kvd);
            sub_mut(k, pos * kvd, n * kvd)
                .iter_mut()
                .zip(k_new)
                .for_each(|(d, &x)| *d = half::f16::from_f32(x));
            sub_mut(v, pos * kvd, n * kvd)
                .iter_mut()
                .zip(v_new)
                .for_each(|(d, &x)| *d = half::f16::from_f32(x));
        }
        KvBufs::Q8 { k, v, ks, vs, new } => {
            let (k_new, v_new) = rows(new, s.hb, s.hb2, n * kvd);
            // one scale per kv head of each new position
            for (new, cache, scales) in [(k_new, k, ks), (v_new, v, vs)] {
                let dst = rows_of_mut(sub_mut(cache, pos * kvd, n * kvd), hd);
                for ((src, dst), sc) in rows_of(new, hd).zip(dst).zip(sub_mut(scales, pos * n_kv, n * n_kv)) {
                    *sc = kv::quantize_q8(src, dst);
                }
            }
        }
    }
    // Causal grouped-query attention over the cache, into xb: head h of
    // token i reads kv head h / kv_mul at positions 0..=pos+i.
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let geo = AttnGeometry { kvd, hd, n_kv, scale };
    if !attend_threaded(head(s.q, n * qd), &kv, head_mut(s.xb, n * qd), n, pos, n_heads, kv_mul, geo, s.mm) {
        for (i, (q, out)) in rows_of(s.q, qd).zip(rows_of_mut(s.xb, qd)).take(n).enumerate() {
            for (h, (q, out)) in rows_of(q, hd).zip(rows_of_mut(out, hd)).enumerate() {
                attend(q, &kv, h / kv_mul, pos + i, s.att, out, geo);
            }
        }
    }
    if obs.linear_input(l, TensorRole::Wo, head(s.xb, n * qd), n).is_break() {
        return ControlFlow::Break(());
    }
    fp8_acts(head_mut(s.xb, n * qd), qd, w.act.wo);
    matmul(
        head_mut(s.xb2, n * dim),
        &w.wo,
        head(s.xb, n * qd),
        n,
        s.row,
        s.qa,
        s.xp,
        s.mm,
        w.act.wo,
        w.perm.wo,
    );
    x.iter_mut().zip(head(s.xb2, n * dim)).for_each(|(x, d)| *x += d);

    // Feed-forward (SwiGLU).
    for (o, xi) in rows_of_mut(s.xb, dim).zip(rows_of(x, dim)).take(n) {
        rmsnorm(o, xi, w.ffn_norm, eps);
    }
    if obs.linear_input(l, TensorRole::WGate, head(s.xb, n * dim), n).is_break() {
        return ControlFlow::Break(());
    }
    fp8_acts(head_mut(s.xb, n * dim), dim, w.act.w_gate);
    let h = head(s.xb, n * dim);
    let swiglu = |g: &mut [f32], u: &[f32]| g.iter_mut().zip(u).for_each(|(g, u)| *g = silu(*g) * u);
    let plain = w.act.w_gate.is_none() && w.act.w_up.is_none() && w.perm.w_gate.is_none() && w.perm.w_up.is_none();
    let jobs = &mut [(head_mut(s.hb, n * hid), &w.w_gate), (head_mut(s.hb2, n * hid), &w.w_up)];
    if !(plain && fused(jobs, h, n, s.qa, s.mm, Some(&swiglu))) {
        matmul(
            head_mut(s.hb, n * hid),
            &w.w_gate,
            h,
            n,
            s.row,
            s.qa,
            s.xp,
            s.mm,
            w.act.w_gate,
            w.perm.w_gate,
        );
        matmul(
            head_mut(s.hb2, n * hid),
            &w.w_up,
            h,
            n,
            s.row,
            s.qa,
            s.xp,
            s.mm,
            w.act.w_up,
            w.perm.w_up,
        );
        swiglu(head_mut(s.hb, n * hid), head(s.hb2, n * hid));
    }
    if c.online_hadamard() {
        // QuaRot: x·H/√hidden online; ffn_down stores W·H/√hidden (checked supported at load).
        rows_of_mut(head_mut(s.hb, n * hid), hid).for_each(|t| {
            k::hadamard::transform(t);
        });
    }
    if obs.linear_input(l, TensorRole::WDown, head(s.hb, n * hid), n).is_break() {
        return ControlFlow::Break(());
    }
    fp8_acts(head_mut(s.hb, n * hid), hid, w.act.w_down);
    matmul(
        head_mut(s.xb2, n * dim),
        &w.w_down,
        head(s.hb, n * hid),
        n,
        s.row,
        s.qa,
        s.xp,
        s.mm,
        w.act.w_down,
        w.perm.w_down,
    );
    x.iter_mut().zip(head(s.xb2, n * dim)).for_each(|(x, d)| *x += d);
    ControlFlow::Continue(())
}

impl<'m, 'a, 'r> Session<'m, 'a, 'r> {
    /// A session of up to `max_seq` positions fed in calls of at most
    /// `max_batch` tokens, with an f32 KV cache and [`MatmulOpts::default`];
    /// `arena` must hold `arena_bytes(cfg, max_seq, max_batch)`.
    pub fn new(model: &'m Model<'a>, arena: &'r mut [u8], max_seq: usize, max_batch: usize) -> Result<Self, RuntimeError> {
        Self::with_options(model, arena, max_seq, max_batch, SessionOptions::default())
    }

    /// [`Session::new`] with a KV cache precision and matmul options;
    /// `arena` must hold `arena_bytes_with(cfg, max_seq, max_batch, opts.kv)`.
    pub fn with_options(
        model: &'m Model<'a>,
        arena: &'r mut [u8],
        max_seq: usize,
        max_batch: usize,
        opts: SessionOptions,
    ) -> Result<Self, RuntimeError> {
        let max_seq = max_seq.min(model.cfg.max_seq_len as usize).max(1); // (`clamp` asserts min ≤ max)
        let max_batch = max_batch.clamp(1, max_seq);
        let plan = ArenaPlan::with_kv(&model.cfg, max_seq, max_batch, opts.kv);
        let mut buf = Buffers::carve(&plan, arena)?;
        buf.s.mm = opts.matmul;
        Ok(Session {
            model,
            buf,
            max_seq,
            max_batch,
            pos: 0,
        })
    }

    pub fn pos(&self) -> usize {
        self.pos
    }
    /// How linear layers run from now on (activation precision, threads).
    pub fn set_matmul(&mut self, mm: MatmulOpts) {
        self.buf.s.mm = mm;
    }
    pub fn matmul_opts(&self) -> MatmulOpts {
        self.buf.s.mm
    }
    pub fn max_seq(&self) -> usize {
        self.max_seq
    }
    /// Storage precision of the KV cache.
    pub fn kv_cache(&self) -> KvCache {
        self.buf.kv.precision()
    }
    /// Forgets the context (the KV cache is overwritten as positions refill).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Feeds one token and returns the logits for the next one.
    pub fn step(&mut self, token: u32) -> Result<&[f32], RuntimeError> {
        self.forward(&[token], None)
    }

    /// Feeds `tokens` (at most `max_batch`) at the current position. With
    /// `all_logits` (len ≥ n·vocab) the logits after every token are written
    /// there; the logits after the last token are always returned.
    pub fn forward(&mut self, tokens: &[u32], all_logits: Option<&mut [f32]>) -> Result<&[f32], RuntimeError> {
        self.forward_observed(tokens, all_logits, &mut NoObserver)
    }

    /// [`Session::forward`] with an observer of every linear layer's input.
    pub fn forward_observed<O: Observer>(
        &mut self,
        tokens: &[u32],
        all_logits: Option<&mut [f32]>,
        obs: &mut O,
    ) -> Result<&[f32], RuntimeError> {
        let m = self.model;
        let c = &m.cfg;
        let n = tokens.len();
        if n == 0 {
            return Ok(self.buf.logits);
        }
        if n > self.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                tokens: n,
                max_batch: self.max_batch,
            });
        }
        if self.pos + n > self.max_seq {
            return Err(RuntimeError::ContextFull {
                pos: self.pos + n - 1,
                max_seq: self.max_seq,
            });
        }
        if let Some(&t) = tokens.iter().find(|&&t| t >= c.vocab_size) {
            return Err(RuntimeError::BadToken {
                token: t,
                vocab: c.vocab_size,
            });
        }
        let vocab = c.vocab_size as usize;
        if let Some(ref out) = all_logits {
            if out.len() < n * vocab {
                return Err(RuntimeError::OutputTooSmall {
                    need: n * vocab,
                    have: out.len(),
                });
            }
        }
        let (dim, kvd) = (c.dim as usize, c.kv_dim());
        let b = &mut self.buf;

        // Embeddings and rotary angles.
        let emb = m.tok_embd()?;
        for (&t, x) in tokens.iter().zip(rows_of_mut(b.x, dim)) {
            emb.dequantize_row(t as usize, x);
        }
        rope_angles(b.rope, c, self.pos, n);

        // The blocks.
        let per_layer = self.max_seq * kvd;
        let per_layer_scales = self.max_seq * c.n_kv_heads as usize;
        for l in 0..c.n_layers as usize {
            let w = m.block(l)?;
            let kv = b.kv.layer(l, per_layer, per_layer_scales);
            if block_forward_kv(c, &w, l, b.x, n, self.pos, kv, b.rope, &mut b.s, obs).is_break() {
                return Err(RuntimeError::Interrupted);
            }
        }

        // Final norm and classifier.
        let norm = m.output_norm()?;
        let xb = &mut b.s.xb;
        for (o, xi) in rows_of_mut(xb, dim).zip(rows_of(b.x, dim)).take(n) {
            rmsnorm(o, xi, norm, c.rms_eps);
        }
        if obs.linear_input(usize::MAX, TensorRole::Output, head(xb, n * dim), n).is_break() {
            return Err(RuntimeError::Interrupted);
        }
        let cls = m.classifier()?;
        match all_logits {
            Some(out) => {
                matmul(
                    head_mut(out, n * vocab),
                    &cls,
                    head(xb, n * dim),
                    n,
                    b.s.row,
                    b.s.qa,
                    &mut [],
                    b.s.mm,
                    None,
                    None,
                );
                b.logits.iter_mut().zip(sub(out, (n - 1) * vocab, vocab)).for_each(|(d, &v)| *d = v);
            }
            None => matmul(
                b.logits,
                &cls,
                sub(xb, (n - 1) * dim, dim),
                1,
                b.s.row,
                b.s.qa,
                &mut [],
                b.s.mm,
                None,
                None,
            ),
        }
        self.pos += n;
        Ok(self.buf.logits)
    }
}

#[cfg(all(test, feature = "act-quant"))]
mod tests {
    extern crate std;
    use super::*;
    use edgeq_core::format::act::ActMode;
    use edgeq_core::{QuantSpec, Scheme};
    use std::vec;
    use std::vec::Vec;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The W8A8 paths against their definition: per-token int8 codes on the
    /// regular columns, f32 on the outlier columns (calibrated ∪ dynamic).
    #[test]
    fn int8_token_and_llm_int8_follow_their_definition() {
        let (rows, cols, n) = (5usize, 70usize, 3usize);
        let mut seed = 7;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let spec = QuantSpec::per_channel(Scheme::Q8Sym);
        let l = spec.layout(rows as u32, cols as u32).unwrap();
        let mut store = vec![0u64; (l.total_bytes as usize).div_ceil(8)];
        let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut store)[..l.total_bytes as usize];
        edgeq_core::quant::quantize(spec, rows as u32, cols as u32, &w, bytes).unwrap();
        let wv = TensorView::new(spec, rows as u32, cols as u32, bytes).unwrap();
        let mut x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
        x[cols + 10] = 20.0; // a dynamic outlier (token 1, column 10)
        let calibrated = [40u32];
        // threshold 6: two outlier columns (element path); 0.9: most columns (row path)
        for (mode, outliers, threshold) in [
            (ActMode::Int8Token, &[][..], 0.0),
            (ActMode::LlmInt8, &calibrated[..], 6.0),
            (ActMode::LlmInt8, &calibrated[..], 0.9),
            (ActMode::Int4Token, &[][..], 0.9),
            (ActMode::Int4Token, &[][..], 1.0),
        ] {
            let a = ActQuant { mode, threshold, outliers };
            let mut y = vec![0.0f32; n * rows];
            let mut row = vec![0.0f32; cols + cols.div_ceil(32)];
            let mut qa = vec![0.0f32; k::act_q8::words(n, cols)];
            let mm = MatmulOpts {
                acts: Activations::F32,
                threads: 1,
            };
            matmul(&mut y, &wv, &x, n, &mut row, &mut qa, &mut [], mm, Some(a), None);
            let dynamic = |j: usize| (0..n).any(|t| x[t * cols + j].abs() >= threshold);
            let is_out = |j: usize| mode == ActMode::LlmInt8 && (j == 40 || dynamic(j));
            if mode == ActMode::LlmInt8 {
                let k = (0..cols).filter(|&j| is_out(j)).count();
                assert!(if threshold > 1.0 { k == 2 } else { k * 8 >= cols }, "{k} outliers at {threshold}");
            }
            let (mut err, mut exact_err) = (0.0f64, 0.0f64);
            for t in 0..n {
                let xt = &x[t * cols..(t + 1) * cols];
                let amax = (0..cols).filter(|&j| !is_out(j)).map(|j| xt[j].abs()).fold(0.0f32, f32::max);
                // int4-token: d = clip·amax/7, codes ±7 (threshold holds the clip ratio)
                let (d, qm) = if mode == ActMode::Int4Token {
                    (threshold * amax / 7.0, 7.0)
                } else {
                    (amax / 127.0, 127.0)
                };
                for r in 0..rows {
                    let (mut want, mut exact) = (0.0f64, 0.0f64);
                    for j in 0..cols {
                        let wj = wv.element(r, j) as f64;
                        exact += xt[j] as f64 * wj;
                        want += if is_out(j) {
                            xt[j] as f64 * wj
                        } else {
                            (xt[j] * (1.0 / d)).round_ties_even().clamp(-qm, qm) as f64 * d as f64 * wj
                        };
                    }
                    let got = y[t * rows + r] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{mode:?} t{t} r{r}: {got} vs {want}"
                    );
                    err = err.max((got - exact).abs());
                    exact_err = exact_err.max(exact.abs());
                }
            }
            // token 1's outlier makes per-token int8 coarse; LLM.int8 keeps it exact
            if mode == ActMode::LlmInt8 {
                assert!(err < 0.05, "LLM.int8 error {err}");
            } else {
                assert!(err > 0.05, "per-token int8 with an outlier should be coarse ({err})");
            }
        }
    }

    #[test]
    fn fp8_activation_rounding_is_per_token_or_group() {
        let mut x: Vec<f32> = (0..256).map(|i| (i as f32 - 100.0) * 0.37).collect();
        let orig = x.clone();
        fp8_acts(
            &mut x,
            256,
            Some(ActQuant {
                mode: ActMode::Fp8Group128,
                threshold: 0.0,
                outliers: &[],
            }),
        );
        for (g, (a, b)) in x.chunks(128).zip(orig.chunks(128)).enumerate() {
            let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // the group's largest value maps to E4M3's 448 and back; others within 1/16 relative (3 mantissa bits)
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() <= q.abs() / 15.0 + amax * 1e-6, "group {g}: {q} -> {p}");
            }
        }
        assert_ne!(x, orig);
    }
}
