//! aarch64 NEON kernels for integer weights × quantized activations.
//!
//! Per 32-element block the codes meet the activation codes as i8 (Q4
//! nibbles 0..15; Q8 asym as `q − 128`) and give 4 i32 lanes summing to the
//! block's exact `isum` (after corrections folded into the lanes, as on
//! x86: `−2·Σa` per lane for Q4 sym, `+32·Σa` per lane for Q8 asym):
//! * baseline NEON: `vmull_s8`/`vmlal_s8` into i16 (|pair| ≤ 2·128·127 <
//!   2¹⁵), `vpadalq_s16` into i32;
//! * `dotprod` (`sdot`, ARMv8.2; through `asm!` with `.arch_extension
//!   dotprod`, as the intrinsic is not stable): 4-way i8 dot products
//!   straight into i32 lanes.
//!
//! Then `acc = fma(lanes, c_b, acc)` with two accumulators (even and odd
//! blocks), the asym `m·dsum` terms in a scalar accumulator; see
//! [`crate::scalar_int`] for the bound.
use crate::act_q8::{Q8Acts, QK};
use crate::support::f16_to_f32;
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
    /// Per-lane correction (4 lanes) from the block's activation sum.
    fn fix(asum: i32) -> i32;
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
    #[inline(always)]
    fn fix(asum: i32) -> i32 {
        -2 * asum
    }
}
impl WBlock for Q4Asym {
    const BYTES: usize = 16;
    const ASYM: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (int8x16_t, int8x16_t) {
        // SAFETY: forwarded contract.
        unsafe { q4_load(p) }
    }
    #[inline(always)]
    fn fix(_: i32) -> i32 {
        0
    }
}
impl WBlock for Q8Sym {
    const BYTES: usize = 32;
    const ASYM: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (int8x16_t, int8x16_t) {
        // SAFETY: 32 readable bytes at `p` (caller).
        unsafe { (vld1q_s8(p as *const i8), vld1q_s8(p.add(16) as *const i8)) }
    }
    #[inline(always)]
    fn fix(_: i32) -> i32 {
        0
    }
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
    #[inline(always)]
    fn fix(asum: i32) -> i32 {
        32 * asum
    }
}

/// # Safety
/// As [`matmul`].
#[inline(always)]
unsafe fn int_matmul<B: WBlock, const DOT: bool>(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>) {
    let n_rows = w.rows();
    let bpg = w.layout.group_len as usize / QK;
    for r in rows {
        let (codes, scales, mins) = (w.row_codes(r), w.row_scales_f16(r), w.row_mins(r));
        for i in 0..a.t {
            let (ac, ad, asums, ads) = (a.codes(i), a.scales(i), a.sums(i), a.dsums(i));
            // SAFETY: `q8_args_ok` gives complete regions: the row holds
            // ≥ blocks weight blocks and one scale (min) per group; each
            // token's codes hold blocks·32 bytes.
            unsafe {
                let mut acc = [vdupq_n_f32(0.0); 2];
                let mut macc = 0.0f32;
                let (wp, apn) = (codes.as_ptr(), ac.as_ptr());
                for b in 0..a.blocks {
                    let g = b / bpg;
                    let (w0, w1) = B::load(wp.add(b * B::BYTES));
                    let (a0, a1) = (vld1q_s8(apn.add(b * QK)), vld1q_s8(apn.add(b * QK + 16)));
                    let lanes = vaddq_s32(dot32::<DOT>(w0, w1, a0, a1), vdupq_n_s32(B::fix(*asums.get_unchecked(b))));
                    let c = f16_to_f32(scales.get_unchecked(g).to_bits()) * *ad.get_unchecked(b);
                    acc[b % 2] = vfmaq_n_f32(acc[b % 2], vcvtq_f32_s32(lanes), c);
                    if B::ASYM {
                        macc += f16_to_f32(mins.get_unchecked(g).to_bits()) * *ads.get_unchecked(b);
                    }
                }
                y[i * n_rows + r] = vaddvq_f32(vaddq_f32(acc[0], acc[1])) + macc;
            }
        }
    }
}
