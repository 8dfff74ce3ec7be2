//! Cortex-M4/M7/M33 (ARMv7E-M / ARMv8-M Mainline DSP extension) kernels for
//! integer weights × quantized activations: `SMLAD` (two 16×16 multiplies
//! and an accumulate per instruction) on byte pairs widened with
//! `SXTB16`/`UXTB16`, four products per two instructions, the CMSIS-NN idea.
//!
//! The integer dot product of each block is exact, and the block results
//! are combined in scalar code exactly as [`crate::scalar_int`] does, so the
//! results are bit-identical to the reference (the firmware check in
//! `scripts/test-targets.sh` compares them token for token with the host's
//! scalar run). Selected when the kernels crate is built for a
//! `thumbv7em-*` or `thumbv8m.main-*` target (see `build.rs`: stable Rust
//! has no `dsp` target-feature cfg).
use crate::act_q8::{Q8Acts, QK};
use core::arch::asm;
use core::ops::Range;
use edgeq_core::{Scheme, TensorView};

/// `acc + a.lo·b.lo + a.hi·b.hi` (signed 16-bit halves).
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let r: i32;
    // SAFETY: register-only instruction of the DSP extension, which every
    // target this module is compiled for has (`build.rs`).
    unsafe {
        asm!("smlad {r}, {a}, {b}, {c}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// Bytes 0 and 2 sign-extended to halves; with `ROR8`, bytes 1 and 3.
#[inline(always)]
fn sxtb16<const ROR8: bool>(x: u32) -> u32 {
    let r: u32;
    // SAFETY: register-only DSP instructions (see `smlad`).
    unsafe {
        if ROR8 {
            asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags));
        } else {
            asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags));
        }
    }
    r
}

/// Bytes 0 and 2 zero-extended to halves; with `ROR8`, bytes 1 and 3.
#[inline(always)]
fn uxtb16<const ROR8: bool>(x: u32) -> u32 {
    let r: u32;
    // SAFETY: register-only DSP instructions (see `smlad`).
    unsafe {
        if ROR8 {
            asm!("uxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags));
        } else {
            asm!("uxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags));
        }
    }
    r
}

#[inline(always)]
fn word(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Four unsigned weight bytes × four signed activation bytes.
#[inline(always)]
fn dot4_u(w: u32, a: u32, acc: i32) -> i32 {
    smlad(
        uxtb16::<true>(w),
        sxtb16::<true>(a),
        smlad(uxtb16::<false>(w), sxtb16::<false>(a), acc),
    )
}

/// Four signed weight bytes × four signed activation bytes.
#[inline(always)]
fn dot4_s(w: u32, a: u32, acc: i32) -> i32 {
    smlad(
        sxtb16::<true>(w),
        sxtb16::<true>(a),
        smlad(sxtb16::<false>(w), sxtb16::<false>(a), acc),
    )
}

/// Exact `Σ q_j·a_j` of one block (codes as stored: Q4 nibbles 0..15, Q8
/// sym i8, Q8 asym u8).
#[inline(always)]
fn isum(scheme: Scheme, w: &[u8], a: &[u8]) -> i32 {
    let mut s = 0i32;
    match scheme {
        Scheme::Q4Sym | Scheme::Q4Asym => {
            for j in (0..16).step_by(4) {
                let ww = word(w, j);
                s = dot4_u(ww & 0x0f0f_0f0f, word(a, j), s);
                s = dot4_u((ww >> 4) & 0x0f0f_0f0f, word(a, j + 16), s);
            }
        }
        Scheme::Q8Sym => {
            for j in (0..QK).step_by(4) {
                s = dot4_s(word(w, j), word(a, j), s);
            }
        }
        _ => {
            for j in (0..QK).step_by(4) {
                s = dot4_u(word(w, j), word(a, j), s);
            }
        }
    }
    s
}

/// `support::q8_args_ok(y, w, a, &rows)` must hold (checked by the caller).
pub(crate) fn matmul(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>) {
    let scheme = w.scheme();
    crate::scalar_int::combine(y, w, a, rows, |wb, ab, asum| {
        let raw = isum(scheme, wb, bytemuck::cast_slice(ab));
        if scheme == Scheme::Q4Sym {
            raw - 8 * asum
        } else {
            raw
        }
    });
}
