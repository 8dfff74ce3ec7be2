//! aarch64 `i8mm` (FEAT_I8MM, ARMv8.6-A: Cortex-A510/A710/X2 and later,
//! Neoverse V1/N2, Apple M2+) prefill kernels for integer weights ×
//! quantized activations.
//!
//! `SMMLA` multiplies a 2×8 i8 matrix by an 8×2 one into a 2×2 i32 tile:
//! with 8 codes of rows `r, r'` in one register and 8 activation codes of
//! tokens `i, j` in the other, one instruction gives the four dot products
//! `[r·i, r·j, r'·i, r'·j]` (32 multiply-adds, twice `SDOT`'s 16). Row-major
//! weights need no repacking: two rows' 16-byte halves are interleaved by
//! 64-bit `ZIP1`/`ZIP2`, once per block for every token pair. A 32-element
//! block is four `SMMLA`s per row pair and token pair, exact in i32 (Q4
//! codes 0..15, Q8 as i8, asym Q8 as `q − 128`), and each of the four
//! lanes is one output, so there are no horizontal sums: per block
//! `acc = fma(s·d, isum, acc)`, then `acc = fma(K·s, dsum, acc)` (Q4 sym
//! `K = −8`, Q8 asym `K = 128`) and `acc = fma(m, dsum, acc)` (asym).
//!
//! Used for two or more tokens (prefill); decode stays on the `SDOT` row
//! kernel. A row or token without a partner (odd counts, odd first row) is
//! paired with itself: the four lanes are independent, so its bits do not
//! depend on the partner, and every batch of two or more tokens gives the
//! same bits for a token (a lone token, on the `SDOT` kernel, may differ in
//! rounding, within the crate bound). `SMMLA` has no stable intrinsic: it
//! goes through `asm!` with `.arch_extension i8mm`.
use crate::aarch64_neon_int::f16x4_to_f32;
use crate::act_q8::{Q8Acts, QK};
use core::arch::aarch64::*;
use core::ops::Range;
use edgeq_core::{Scheme, TensorView};

/// `acc + A·Bᵀ` for `a = [A₀ (8 i8), A₁]`, `b = [B₀, B₁]`: lanes
/// `[A₀·B₀, A₀·B₁, A₁·B₀, A₁·B₁]` (`SMMLA`).
///
/// # Safety
/// The CPU implements FEAT_I8MM.
#[inline(always)]
unsafe fn smmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only instruction, available per the contract.
    unsafe {
        core::arch::asm!(
            ".arch_extension i8mm",
            "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Elements `8k..8k+8` of two 32-element blocks interleaved for `SMMLA`:
/// `[x₀ 0..8, y₀ 0..8]`, `[x₀ 8..16, y₀ 8..16]`, `[x₁ 0..8, y₁ 0..8]`,
/// `[x₁ 8..16, y₁ 8..16]` from the halves `x₀, x₁` and `y₀, y₁`.
#[inline(always)]
unsafe fn zip4(x: (int8x16_t, int8x16_t), y: (int8x16_t, int8x16_t)) -> [int8x16_t; 4] {
    // SAFETY: register-only NEON ops.
    unsafe {
        let (x0, x1, y0, y1) = (
            vreinterpretq_s64_s8(x.0),
            vreinterpretq_s64_s8(x.1),
            vreinterpretq_s64_s8(y.0),
            vreinterpretq_s64_s8(y.1),
        );
        [
            vreinterpretq_s8_s64(vzip1q_s64(x0, y0)),
            vreinterpretq_s8_s64(vzip2q_s64(x0, y0)),
            vreinterpretq_s8_s64(vzip1q_s64(x1, y1)),
            vreinterpretq_s8_s64(vzip2q_s64(x1, y1)),
        ]
    }
}

/// One 32-element weight block as i8 halves (elements 0..16, 16..32):
/// Q4 (`BYTES` 16) nibbles as 0..15, Q8 asym as `q − 128`, Q8 sym as is.
///
/// # Safety
/// `p` readable for `BYTES` bytes.
#[inline(always)]
unsafe fn load<const BYTES: usize, const ASYM: bool>(p: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: per the contract; register ops otherwise.
    unsafe {
        if BYTES == 16 {
            let v = vld1q_u8(p);
            (
                vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))),
                vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)),
            )
        } else if ASYM {
            let f = vdupq_n_u8(0x80);
            (
                vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), f)),
                vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p.add(16)), f)),
            )
        } else {
            (vld1q_s8(p as *const i8), vld1q_s8(p.add(16) as *const i8))
        }
    }
}

/// `[*x, *y, *x, *y]`.
///
/// # Safety
/// `x` and `y` readable.
#[inline(always)]
unsafe fn alternate(x: *const f32, y: *const f32) -> float32x4_t {
    // SAFETY: reads per the contract; register ops otherwise.
    unsafe {
        let h = vld1_lane_f32::<1>(y, vld1_dup_f32(x));
        vcombine_f32(h, h)
    }
}

/// The f16 values `*p[k]` as `[v₀, v₀, v₁, v₁]` and `[v₂, v₂, v₃, v₃]` (one
/// `FCVTL` for the scales, or mins, of two row pairs).
///
/// # Safety
/// The four pointers readable.
#[inline(always)]
unsafe fn pairs4(p: [*const half::f16; 4]) -> [float32x4_t; 2] {
    // SAFETY: reads per the contract; register ops otherwise.
    unsafe {
        let mut h = vdup_n_u16(0);
        h = vld1_lane_u16::<0>(p[0] as *const u16, h);
        h = vld1_lane_u16::<1>(p[1] as *const u16, h);
        h = vld1_lane_u16::<2>(p[2] as *const u16, h);
        h = vld1_lane_u16::<3>(p[3] as *const u16, h);
        let f = f16x4_to_f32(h);
        [vzip1q_f32(f, f), vzip2q_f32(f, f)]
    }
}

/// `y[i][r] = Σ W[r]·a[i]` for the rows in `rows` and all `a.t` tokens.
///
/// # Safety
/// NEON (compile time) and FEAT_I8MM (run time) available;
/// `support::q8_args_ok(y, w, a, &rows)` holds and `w` is Q4 or Q8.
pub(crate) unsafe fn matmul(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>) {
    // SAFETY (all arms): forwarded contract.
    unsafe {
        match w.scheme() {
            Scheme::Q4Sym => tiles::<16, false>(y, w, a, rows, -8.0),
            Scheme::Q4Asym => tiles::<16, true>(y, w, a, rows, 0.0),
            Scheme::Q8Sym => tiles::<32, false>(y, w, a, rows, 0.0),
            Scheme::Q8Asym => tiles::<32, true>(y, w, a, rows, 128.0),
            _ => crate::scalar_int::matmul(y, w, a, rows),
        }
    }
}

/// Row pairs (aligned to even rows; a row without a partner goes with
/// itself) × token pairs (the last token of an odd count with itself), two
/// of each per pass (a 4 × 4 tile: each weight block's interleave is shared
/// by both token pairs, each activation block's by both row pairs); a
/// lone last pair is passed twice.
///
/// # Safety
/// As [`matmul`]; `BYTES` is the scheme's code bytes per block.
#[inline(always)]
unsafe fn tiles<const BYTES: usize, const ASYM: bool>(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>, k: f32) {
    let n_rows = w.rows();
    // The next pair starting at `x` of `start..end`: (x, x + 1) when x is
    // even and x + 1 in range, else (x, x).
    let pair = |x: usize, end: usize| if x % 2 == 0 && x + 1 < end { (x, x + 1) } else { (x, x) };
    let mut r = rows.start;
    while r < rows.end {
        let p0 = pair(r, rows.end);
        let p1 = if p0.1 + 1 < rows.end { pair(p0.1 + 1, rows.end) } else { p0 };
        let mut i = 0;
        while i < a.t {
            let q0 = pair(i, a.t);
            let q1 = if q0.1 + 1 < a.t { pair(q0.1 + 1, a.t) } else { q0 };
            // SAFETY: every row < rows.end ≤ w.rows() and token < a.t
            // (`q8_args_ok`), forwarded contract otherwise.
            let o = unsafe { tile::<BYTES, ASYM>(w, a, [p0, p1], [q0, q1], k) };
            // Lanes [r·i, r·j, r2·i, r2·j] of each (row pair, token pair);
            // a self-paired row or token writes the same value twice.
            for (&(r1, r2), op) in [p0, p1].iter().zip(&o) {
                for (&(i1, i2), oq) in [q0, q1].iter().zip(op) {
                    for (lane, (rr, ii)) in [(r1, i1), (r1, i2), (r2, i1), (r2, i2)].into_iter().enumerate() {
                        if let Some(v) = y.get_mut(ii * n_rows + rr) {
                            *v = oq[lane];
                        }
                    }
                }
            }
            i = q1.1 + 1;
        }
        r = p1.1 + 1;
    }
}

/// The 2×2 outputs of each row pair and token pair.
///
/// # Safety
/// As [`matmul`]; every row `< w.rows()`, every token `< a.t`.
#[inline(always)]
unsafe fn tile<const BYTES: usize, const ASYM: bool>(
    w: &TensorView<'_>,
    a: &Q8Acts<'_>,
    rp: [(usize, usize); 2],
    tp: [(usize, usize); 2],
    k: f32,
) -> [[[f32; 4]; 2]; 2] {
    let bpg = (w.layout.group_len as usize / QK).max(1);
    let blocks = a.blocks;
    // SAFETY: `q8_args_ok` gives complete regions: each row holds ≥ blocks
    // weight blocks of BYTES bytes and one scale (min) per group (groups
    // b / bpg < groups_per_row are read); each token's codes hold blocks·32
    // bytes and its scales and dsums `meta_stride(blocks)` entries.
    unsafe {
        let wp = rp.map(|(r, r2)| (w.row_codes(r).as_ptr(), w.row_codes(r2).as_ptr()));
        let sp = rp.map(|(r, r2)| (w.row_scales_f16(r).as_ptr(), w.row_scales_f16(r2).as_ptr()));
        let mp = rp.map(|(r, r2)| (w.row_mins(r).as_ptr(), w.row_mins(r2).as_ptr()));
        let ap = tp.map(|(i, j)| (a.codes(i).as_ptr(), a.codes(j).as_ptr()));
        let dp = tp.map(|(i, j)| (a.scales.as_ptr().add(i * a.bs), a.scales.as_ptr().add(j * a.bs)));
        let dsp = tp.map(|(i, j)| (a.dsums.as_ptr().add(i * a.bs), a.dsums.as_ptr().add(j * a.bs)));
        let mut acc = [[vdupq_n_f32(0.0); 2]; 2];
        let mut s = [vdupq_n_f32(0.0); 2];
        let mut ks = [vdupq_n_f32(0.0); 2];
        let mut m = [vdupq_n_f32(0.0); 2];
        for b in 0..blocks {
            if b % bpg == 0 {
                let g = b / bpg;
                s = pairs4([sp[0].0.add(g), sp[0].1.add(g), sp[1].0.add(g), sp[1].1.add(g)]);
                ks = s.map(|v| vmulq_n_f32(v, k)); // K·s: exact (a power of two)
                if ASYM {
                    m = pairs4([mp[0].0.add(g), mp[0].1.add(g), mp[1].0.add(g), mp[1].1.add(g)]);
                }
            }
            let wv = wp.map(|(w0, w1)| zip4(load::<BYTES, ASYM>(w0.add(b * BYTES)), load::<BYTES, ASYM>(w1.add(b * BYTES))));
            let av = ap.map(|(ai, aj)| {
                let (pa, pb) = (ai.add(b * QK), aj.add(b * QK));
                zip4((vld1q_s8(pa), vld1q_s8(pa.add(16))), (vld1q_s8(pb), vld1q_s8(pb.add(16))))
            });
            let d = dp.map(|(di, dj)| alternate(di.add(b), dj.add(b)));
            let ds = dsp.map(|(di, dj)| alternate(di.add(b), dj.add(b)));
            for p in 0..2 {
                for q in 0..2 {
                    let mut isum = vdupq_n_s32(0);
                    for c in 0..4 {
                        isum = smmla(isum, wv[p][c], av[q][c]);
                    }
                    let mut o = vfmaq_f32(acc[p][q], vmulq_f32(s[p], d[q]), vcvtq_f32_s32(isum));
                    if k != 0.0 {
                        o = vfmaq_f32(o, ks[p], ds[q]);
                    }
                    if ASYM {
                        o = vfmaq_f32(o, m[p], ds[q]);
                    }
                    acc[p][q] = o;
                }
            }
        }
        let mut out = [[[0.0f32; 4]; 2]; 2];
        for p in 0..2 {
            for q in 0..2 {
                vst1q_f32(out[p][q].as_mut_ptr(), acc[p][q]);
            }
        }
        out
    }
}
