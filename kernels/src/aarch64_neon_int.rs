//! aarch64 NEON kernels for integer weights × quantized activations.
//!
//! Per 32-element block the codes meet the activation codes as i8 (Q4
//! nibbles 0..15; Q8 asym as `q − 128`) and give 4 i32 lanes summing to
//! `Σ code·a`, exactly:
//! * baseline NEON: `vmull_s8`/`vmlal_s8` into i16 (|pair| ≤ 2·128·127 <
//!   2¹⁵), `vpadalq_s16` into i32;
//! * `dotprod` (`sdot`, ARMv8.2; through `asm!` with `.arch_extension
//!   dotprod`, as the intrinsic is not stable): 4-way i8 dot products
//!   straight into i32 lanes.
//!
//! The block's `isum` differs from that by `K·Σa` (Q4 sym `K = −8`, Q8
//! asym `K = 128`), so `c_b·isum = c_b·lanes + K·s_g·dsum_b`, as on x86.
//! Four blocks at a time: their f16 scales (and mins) converted by one
//! `FCVTL`, `c = s·d` in one multiply per token; then per block
//! `acc[b % 2] += lanes · c_b` (`FMLA` by lane), and per 4 blocks
//! `macc += K·s·dsum (+ m·dsum for asym)`. Up to 4 tokens share each pass
//! over a row (prefill), and weight codes are prefetched 2 KiB ahead. See
//! [`crate::scalar_int`] for the bound.
use crate::act_q8::{Q8Acts, QK};
use core::arch::aarch64::*;
use core::ops::Range;
use edgeq_core::{Scheme, TensorView};

/// # Safety
/// NEON available (compile time), and `dotprod` when `dot`;
/// `support::q8_args_ok(y, w, a, &rows)` holds.
pub(crate) unsafe fn matmul(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>, dot: bool) {
    // SAFETY (all arms): forwarded contract.
    unsafe {
        match (w.scheme(), dot) {
            (Scheme::Q4Sym, false) => int_matmul::<Q4Sym, false>(y, w, a, rows),
            (Scheme::Q4Asym, false) => int_matmul::<Q4Asym, false>(y, w, a, rows),
            (Scheme::Q8Sym, false) => int_matmul::<Q8Sym, false>(y, w, a, rows),
            (Scheme::Q8Asym, false) => int_matmul::<Q8Asym, false>(y, w, a, rows),
            (Scheme::Q4Sym, true) => int_matmul::<Q4Sym, true>(y, w, a, rows),
            (Scheme::Q4Asym, true) => int_matmul::<Q4Asym, true>(y, w, a, rows),
            (Scheme::Q8Sym, true) => int_matmul::<Q8Sym, true>(y, w, a, rows),
            (Scheme::Q8Asym, true) => int_matmul::<Q8Asym, true>(y, w, a, rows),
            _ => crate::scalar_int::matmul(y, w, a, rows),
        }
    }
}

/// `acc + Σ_k a[4l+k]·b[4l+k]` per lane `l` (`SDOT`).
///
/// # Safety
/// The CPU implements FEAT_DotProd.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only instruction, available per the contract.
    unsafe {
        core::arch::asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// 4 i32 lanes of `Σ w·a` over 32 i8 pairs (two 16-byte halves).
#[inline(always)]
unsafe fn dot32<const DOT: bool>(w0: int8x16_t, w1: int8x16_t, a0: int8x16_t, a1: int8x16_t) -> int32x4_t {
    // SAFETY: register-only NEON ops (and SDOT when DOT, per the callers'
    // contract).
    unsafe {
        if DOT {
            sdot(sdot(vdupq_n_s32(0), w0, a0), w1, a1)
        } else {
            let p = vmlal_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(a0)), vget_high_s8(w0), vget_high_s8(a0));
            let q = vmlal_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(a1)), vget_high_s8(w1), vget_high_s8(a1));
            vpadalq_s16(vpaddlq_s16(p), q)
        }
    }
}

trait WBlock {
    const BYTES: usize;
    const ASYM: bool;
    /// The block's codes as two i8x16 halves (elements 0..16, 16..32).
    /// # Safety
    /// `p` valid for `BYTES` reads.
    unsafe fn load(p: *const u8) -> (int8x16_t, int8x16_t);
    /// The block's `isum` is `Σ lanes + K·Σa` (Q4 sym: codes stored as
    /// `q + 8`, so `K = −8`; Q8 asym: loaded as `q − 128`, `K = 128`): the
    /// term `c·K·Σa = K·s·dsum` goes to the `dsum` accumulator, as the
    /// asym `m·dsum` terms do.
    const K: f32;
}
struct Q4Sym;
struct Q4Asym;
struct Q8Sym;
struct Q8Asym;

#[inline(always)]
unsafe fn q4_load(p: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: 16 readable bytes at `p` (caller).
    unsafe {
        let v = vld1q_u8(p);
        (
            vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))),
            vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)),
        )
    }
}

impl WBlock for Q4Sym {
    const BYTES: usize = 16;
    const ASYM: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (int8x16_t, int8x16_t) {
        // SAFETY: forwarded contract.
        unsafe { q4_load(p) }
    }
    const K: f32 = -8.0;
}
impl WBlock for Q4Asym {
    const BYTES: usize = 16;
    const ASYM: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (int8x16_t, int8x16_t) {
        // SAFETY: forwarded contract.
        unsafe { q4_load(p) }
    }
    const K: f32 = 0.0;
}
impl WBlock for Q8Sym {
    const BYTES: usize = 32;
    const ASYM: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (int8x16_t, int8x16_t) {
        // SAFETY: 32 readable bytes at `p` (caller).
        unsafe { (vld1q_s8(p as *const i8), vld1q_s8(p.add(16) as *const i8)) }
    }
    const K: f32 = 0.0;
}
impl WBlock for Q8Asym {
    const BYTES: usize = 32;
    const ASYM: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (int8x16_t, int8x16_t) {
        // SAFETY: 32 readable bytes at `p` (caller); q − 128 as i8.
        unsafe {
            let f = vdupq_n_u8(0x80);
            (
                vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), f)),
                vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p.add(16)), f)),
            )
        }
    }
    const K: f32 = 128.0;
}

/// Bytes ahead of the current weight block that are prefetched (as on
/// x86: a decode step streams every weight once).
const PF: usize = 2048;

/// `f16 → f32` of 4 lanes (`FCVTL`, base ARMv8 with an FPU: the f16
/// vector types are not stable in Rust, so through `asm!`). Exact, as
/// [`crate::support::f16_to_f32`].
///
/// # Safety
/// NEON available.
#[inline(always)]
pub(crate) unsafe fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: register-only instruction of the base architecture.
    unsafe {
        core::arch::asm!(
            "fcvtl {o:v}.4s, {i:v}.4h",
            o = lateout(vreg) out,
            i = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// # Safety
/// As [`matmul`]. Rows are processed one at a time; up to 4 tokens share
/// each pass over a row (prefill), so a weight block is loaded once per
/// 4 tokens. Each token's arithmetic is the same whatever the grouping.
#[inline(always)]
unsafe fn int_matmul<B: WBlock, const DOT: bool>(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>) {
    let n_rows = w.rows();
    let bpg = (w.layout.group_len as usize / QK).max(1);
    for r in rows {
        let row = (w.row_codes(r), w.row_scales_f16(r), w.row_mins(r));
        let mut i = 0;
        while i < a.t {
            // SAFETY (each arm): forwarded contract; tokens i..i+T exist.
            let (t, out) = unsafe {
                match a.t - i {
                    1 => (1, pad(row_pass::<B, DOT, 1>(row, bpg, a, i))),
                    2 | 3 => (2, pad(row_pass::<B, DOT, 2>(row, bpg, a, i))),
                    _ => (4, row_pass::<B, DOT, 4>(row, bpg, a, i)),
                }
            };
            for (k, v) in out.iter().take(t).enumerate() {
                if let Some(y) = y.get_mut((i + k) * n_rows + r) {
                    *y = *v;
                }
            }
            i += t;
        }
    }
}

fn pad<const T: usize>(v: [f32; T]) -> [f32; 4] {
    let mut out = [0.0; 4];
    out.iter_mut().zip(v).for_each(|(o, v)| *o = v);
    out
}

/// One row against tokens `i0..i0 + T`, 4 blocks per step: the 4 blocks'
/// scales (and mins) converted with one `FCVTL`, `c = s·d` for 4 blocks in
/// one multiply per token, then per block `acc[b % 2] += lanes · c_b`
/// (`FMLA` by lane). The asym `m·dsum` terms go to a vector accumulator.
///
/// # Safety
/// As [`matmul`]; `i0 + T ≤ a.t`.
#[inline(always)]
unsafe fn row_pass<B: WBlock, const DOT: bool, const T: usize>(
    (codes, scales, mins): (&[u8], &[half::f16], &[half::f16]),
    bpg: usize,
    a: &Q8Acts<'_>,
    i0: usize,
) -> [f32; T] {
    let nb = a.blocks;
    // SAFETY: `q8_args_ok` gives complete regions: the row holds ≥ nb
    // weight blocks and one scale (min) per group; each token's codes hold
    // nb·32 bytes, and its scales, sums and dsums `meta_stride(nb)` (a
    // multiple of 8, zero-padded), so 4 of them can be read from any block
    // index below nb.
    unsafe {
        let ap: [*const i8; T] = core::array::from_fn(|k| a.codes(i0 + k).as_ptr());
        let dp: [*const f32; T] = core::array::from_fn(|k| a.scales.as_ptr().add((i0 + k) * a.bs));
        let dsp: [*const f32; T] = core::array::from_fn(|k| a.dsums.as_ptr().add((i0 + k) * a.bs));
        let (wp, sc, mn) = (codes.as_ptr(), scales.as_ptr() as *const u16, mins.as_ptr() as *const u16);
        let mut acc = [[vdupq_n_f32(0.0); 2]; T];
        let mut macc = [vdupq_n_f32(0.0); T];
        // The group of block b, kept by counting (no division per block).
        let (mut g, mut in_g) = (0usize, 0usize);
        let mut b = 0;
        while b < nb {
            let wb = wp.add(b * B::BYTES);
            core::arch::asm!("prfm pldl1keep, [{p}]", p = in(reg) wb.wrapping_add(PF), options(nostack, readonly, preserves_flags));
            if B::BYTES * 4 > 64 {
                core::arch::asm!("prfm pldl1keep, [{p}]", p = in(reg) wb.wrapping_add(PF + 64), options(nostack, readonly, preserves_flags));
            }
            // Scales (mins) of blocks b..b+4; zero past the last block.
            let (s4, m4) = if bpg == 1 && b + 4 <= nb {
                g += 4;
                (vld1_u16(sc.add(b)), if B::ASYM { vld1_u16(mn.add(b)) } else { vdup_n_u16(0) })
            } else {
                let (mut s, mut m) = ([0u16; 4], [0u16; 4]);
                for k in 0..4 {
                    if b + k < nb {
                        s[k] = *sc.add(g);
                        if B::ASYM {
                            m[k] = *mn.add(g);
                        }
                        in_g += 1;
                        if in_g == bpg {
                            (g, in_g) = (g + 1, 0);
                        }
                    }
                }
                (vld1_u16(s.as_ptr()), vld1_u16(m.as_ptr()))
            };
            let s4 = f16x4_to_f32(s4);
            let c4: [float32x4_t; T] = core::array::from_fn(|k| vmulq_f32(s4, vld1q_f32(dp[k].add(b))));
            macro_rules! block {
                ($j:literal) => {
                    if b + $j < nb {
                        let (w0, w1) = B::load(wb.add($j * B::BYTES));
                        for k in 0..T {
                            let ab = ap[k].add((b + $j) * QK);
                            let lanes = dot32::<DOT>(w0, w1, vld1q_s8(ab), vld1q_s8(ab.add(16)));
                            acc[k][$j % 2] = vfmaq_laneq_f32::<$j>(acc[k][$j % 2], vcvtq_f32_s32(lanes), c4[k]);
                        }
                    }
                };
            }
            block!(0);
            block!(1);
            block!(2);
            block!(3);
            if B::ASYM || B::K != 0.0 {
                let (m4, ks4) = (f16x4_to_f32(m4), vmulq_n_f32(s4, B::K)); // (K·s exact: a power of two)
                for k in 0..T {
                    let ds = vld1q_f32(dsp[k].add(b));
                    if B::K != 0.0 {
                        macc[k] = vfmaq_f32(macc[k], ks4, ds);
                    }
                    if B::ASYM {
                        macc[k] = vfmaq_f32(macc[k], m4, ds);
                    }
                }
            }
            b += 4;
        }
        core::array::from_fn(|k| vaddvq_f32(vaddq_f32(acc[k][0], acc[k][1])) + vaddvq_f32(macc[k]))
    }
}
