//! riscv64 "V" kernels for integer weights × quantized activations, in
//! `asm!` (`.option arch, +v`; V requires VLEN ≥ 128, so one register group
//! of LMUL 1 holds 16 bytes and LMUL 2 holds 32).
//!
//! Each 32-element block's integer dot product is computed in vector code
//! (`vwmul`/`vwmacc` to i16, `vwredsum` to i32: exact), then combined in
//! scalar code exactly as [`crate::scalar_int`] does, so results are
//! bit-identical to the reference.
use crate::act_q8::Q8Acts;
use core::arch::asm;
use core::ops::Range;
use edgeq_core::{Scheme, TensorView};

/// `Σ_j q_j·a_j` of a Q4 block (16 bytes of nibbles, codes 0..15).
///
/// # Safety
/// `w` valid for 16 reads, `a` for 32; V available.
#[inline(always)]
unsafe fn isum_q4(w: *const u8, a: *const i8) -> i32 {
    let out: i64;
    // SAFETY: reads 16 bytes at w and 32 at a (caller); clobbers only the
    // declared vector registers and vl/vtype.
    unsafe {
        asm!(
            ".option push",
            ".option arch, +v",
            "li {one}, 1",
            "vsetvli zero, {one}, e32, m1, ta, ma",
            "vmv.s.x v16, zero",
            "li {n}, 16",
            "vsetvli zero, {n}, e8, m1, ta, ma",
            "vle8.v v1, ({w})",
            "vle8.v v4, ({a0})",
            "vle8.v v5, ({a1})",
            "vand.vi v2, v1, 15",
            "vsrl.vi v3, v1, 4",
            "vwmul.vv v8, v2, v4",
            "vwmacc.vv v8, v3, v5",
            "vsetvli zero, {n}, e16, m2, ta, ma",
            "vwredsum.vs v16, v8, v16",
            "vsetvli zero, {one}, e32, m1, ta, ma",
            "vmv.x.s {o}, v16",
            ".option pop",
            w = in(reg) w,
            a0 = in(reg) a,
            a1 = in(reg) a.add(16),
            one = out(reg) _,
            n = out(reg) _,
            o = out(reg) out,
            out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v8") _, out("v9") _, out("v16") _,
            options(nostack, readonly),
        );
    }
    out as i32
}

/// `Σ_j q_j·a_j` of a Q8 block (32 codes, i8; with `FLIP` u8 codes are
/// read as `q − 128`).
///
/// # Safety
/// `w` and `a` valid for 32 reads; V available.
#[inline(always)]
unsafe fn isum_q8<const FLIP: bool>(w: *const u8, a: *const i8) -> i32 {
    let out: i64;
    let flip: i64 = if FLIP { -128 } else { 0 };
    // SAFETY: reads 32 bytes at w and at a (caller); clobbers only the
    // declared vector registers and vl/vtype.
    unsafe {
        asm!(
            ".option push",
            ".option arch, +v",
            "li {one}, 1",
            "vsetvli zero, {one}, e32, m1, ta, ma",
            "vmv.s.x v16, zero",
            "li {tmp}, 32",
            "vsetvli zero, {tmp}, e8, m2, ta, ma",
            "vle8.v v2, ({w})",
            "vle8.v v4, ({a})",
            "vxor.vx v2, v2, {flip}",
            "vwmul.vv v8, v2, v4",
            "vsetvli zero, {tmp}, e16, m4, ta, ma",
            "vwredsum.vs v16, v8, v16",
            "vsetvli zero, {one}, e32, m1, ta, ma",
            "vmv.x.s {o}, v16",
            ".option pop",
            w = in(reg) w,
            a = in(reg) a,
            flip = in(reg) flip,
            one = out(reg) _,
            tmp = out(reg) _,
            o = out(reg) out,
            out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _, out("v16") _,
            options(nostack, readonly),
        );
    }
    out as i32
}

/// # Safety
/// V available; `support::q8_args_ok(y, w, a, &rows)` holds.
pub(crate) unsafe fn matmul(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>) {
    let scheme = w.scheme();
    crate::scalar_int::combine(y, w, a, rows, |wb, ab, asum| {
        // SAFETY: `combine` passes the block's 16 or 32 code bytes and its 32
        // activation codes; V is available (contract).
        unsafe {
            match scheme {
                Scheme::Q4Sym => isum_q4(wb.as_ptr(), ab.as_ptr()) - 8 * asum,
                Scheme::Q4Asym => isum_q4(wb.as_ptr(), ab.as_ptr()),
                Scheme::Q8Sym => isum_q8::<false>(wb.as_ptr(), ab.as_ptr()),
                _ => isum_q8::<true>(wb.as_ptr(), ab.as_ptr()) + 128 * asum,
            }
        }
    });
}
