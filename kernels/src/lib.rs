//! edgeq kernels: the matrix products the runtime executes, for every
//! weight scheme. `scalar.rs` is the reference every SIMD kernel (one file
//! per architecture, added alongside) is tested against. `hadamard.rs` holds
//! the normalized Walsh–Hadamard transform QuaRot's online rotation runs.
//!
//! Convention: a weight `W` is `[rows, cols]` (`[out, in]`); activations are
//! `t` row-major vectors of `cols` floats; outputs are `t` vectors of `rows`.
//!
//! # Implementations and dispatch
//!
//! [`matmul`] runs one of (see [`implementation`]):
//! * `x86_64-avx2-fma[-f16c]`: x86_64 on an OS (not `target_os = "none"`,
//!   whose soft-float ABI forbids AVX). Chosen at run time, once: with the
//!   `std` feature by `is_x86_feature_detected!`, without it by CPUID and
//!   XGETBV (OS saves the YMM state); cached in a static.
//! * `aarch64-neon`: aarch64 with `target_feature = "neon"` (compile time;
//!   every aarch64 Linux target has it, soft-float bare metal does not).
//!   `aarch64-neon-dotprod` when the CPU also has `dotprod` (run time with
//!   `std`, `target_feature = "dotprod"` without): the quantized-activation
//!   kernels then use `sdot`. `aarch64-neon-i8mm` when it also has `i8mm`
//!   (ARMv8.6 `smmla`): products of two or more tokens (prefill) then run
//!   2-row × 2-token `smmla` tiles, decode stays on `sdot`.
//! * `riscv64-rvv`: riscv64. Stable Rust (1.95) has neither
//!   `is_riscv_feature_detected!` nor a stable `v` target feature (with
//!   `-C target-feature=+v` the cfg stays unset), so RVV is chosen when
//!   `cfg(target_feature = "v")` holds (future toolchains), or the crate was
//!   built with the environment variable `EDGEQ_RVV=1` (a compile-time
//!   switch: the binary then requires V), or — with the `std` feature on
//!   Linux — `getauxval(AT_HWCAP)` has the `V` bit (checked once, cached).
//! * `armv7em-dsp`: Cortex-M4/M7/M33 targets (`thumbv7em-*`,
//!   `thumbv8m.main-*`, chosen by `build.rs`): quantized-activation products
//!   with `SMLAD`, bit-identical to the reference; f32-activation products
//!   use the scalar reference.
//! * `scalar`: everything else, and every scheme a SIMD file has no kernel
//!   for (FP8, BF16; F16 on x86 without F16C).
//!
//! # Numerics contract
//!
//! Dequantization is bit-exact in every implementation: each weight is the
//! same f32 value `edgeq_core::quant::dequantize_row` gives (`s·(q−8)`,
//! `s·q`, `s·q + min` as one multiply, then one add for asym: never fused),
//! and F16 weights convert exactly. (An f16 scale has 11 significant bits
//! and a code at most 8, so `s·q` is exact in f32 and a fused `s·q + min`
//! would round identically; the kernels still keep multiply and add
//! separate.) Only the summation order differs (SIMD
//! kernels accumulate with FMA in their own lane layout), so for every
//! output `y = Σ_c w_c·x_c`, with `u = 2⁻²⁴`, `n = cols` and
//! `γ_n = n·u / (1 − n·u)`:
//!
//! ```text
//! |y_simd − y_scalar| ≤ 2·γ_n · Σ_c |w_c · x_c|  +  n · 2⁻¹⁴⁸
//! ```
//!
//! whenever no partial sum overflows and `n ≤ 2²²`. Derivation: in any
//! summation tree (with or without FMA) of the `n` products, a rounding
//! that involves term `c` is its product's (at most one) or an addition
//! joining two sub-sums that each hold at least one of the `n` terms (adding
//! padding products, which are exactly ±0, is exact), of which a path has at
//! most `n − 1`; so each result is within `γ_n·Σ|w_c·x_c|` of the exact sum
//! (Higham, *Accuracy and Stability*, §3.1), plus, with gradual underflow, at
//! most `2⁻¹⁵⁰` per product. Both sides obey it, hence the factor 2.
//!
//! FP8 weights are the exception to bit-exact dequantization on the x86
//! (F16C) and NEON paths: a code converts exactly to the f16 of
//! `value·2⁻⁸`, the products with `x` are summed, and the scale (`s·2⁸`) is
//! applied once per region of constant scale. Each term then carries one
//! more rounding (the scale's), so the bound holds with `γ_{n+1}` in place
//! of `γ_n`, and the underflow term is `n · 2⁻¹⁴⁸ · max(1, 2⁸·max|s|)`
//! (the reference rounds `value·s` first: also `n + 1` roundings). Every
//! implementation's result for token `i` is independent of `t` and of the
//! row range (the same operations run for one token or four), so batched
//! prefill and one-token decode agree bit for bit on a given machine, with
//! one exception: the x86 AVX2 integer × Q8-activation kernels run batches
//! of two or more tokens (prefill) in 8-row tiles with a different
//! summation order than single tokens (decode), so there a token's bits are
//! the same in every batch of two or more, and may differ alone (both
//! within the bound; 1.5× faster Q4 prefill, see `x86_avx2_int`).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "std")]
extern crate std;

pub mod act_q8;
pub mod hadamard;
#[cfg(feature = "threads")]
pub mod par;
pub mod scalar;
pub mod scalar_int;
#[cfg(feature = "threads")]
pub mod spin_pool;
pub mod support;

pub use act_q8::Q8Acts;

#[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
mod x86_avx2;
#[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
mod x86_avx2_int;

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod aarch64_neon;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod aarch64_neon_i8mm;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod aarch64_neon_int;

#[cfg(edgeq_arm_dsp)]
mod arm_dsp_int;
#[cfg(target_arch = "riscv64")]
mod riscv_rvv;
#[cfg(target_arch = "riscv64")]
mod riscv_rvv_int;

use edgeq_core::TensorView;

/// The kernel family [`matmul`] uses on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    Scalar,
    /// AVX2 + FMA; F16 weights go to the scalar reference.
    Avx2Fma,
    /// AVX2 + FMA + F16C.
    Avx2FmaF16c,
    Neon,
    /// NEON + `dotprod` (`sdot`) for the quantized-activation kernels.
    NeonDot,
    /// `NeonDot`, and `i8mm` (`smmla`) for quantized-activation products
    /// of two or more tokens (prefill).
    NeonI8mm,
    Rvv,
    /// Cortex-M DSP extension (`SMLAD`) for the quantized-activation
    /// kernels; the scalar reference for everything else.
    ArmDsp,
}

impl Implementation {
    pub fn name(self) -> &'static str {
        match self {
            Implementation::Scalar => "scalar",
            Implementation::Avx2Fma => "x86_64-avx2-fma",
            Implementation::Avx2FmaF16c => "x86_64-avx2-fma-f16c",
            Implementation::Neon => "aarch64-neon",
            Implementation::NeonDot => "aarch64-neon-dotprod",
            Implementation::NeonI8mm => "aarch64-neon-i8mm",
            Implementation::Rvv => "riscv64-rvv",
            Implementation::ArmDsp => "armv7em-dsp",
        }
    }
}

/// Run-time detection, done once: 0 = not yet, else `1 + index`.
#[cfg(any(
    all(target_arch = "x86_64", not(target_os = "none")),
    all(target_arch = "aarch64", target_feature = "neon", feature = "std"),
    all(target_arch = "riscv64", feature = "std", target_os = "linux")
))]
mod cache {
    use super::Implementation;
    use core::sync::atomic::{AtomicU8, Ordering};

    static IMPL: AtomicU8 = AtomicU8::new(0);
    use super::ALL_IMPLS as ALL;

    #[inline]
    pub fn get(detect: fn() -> Implementation) -> Implementation {
        match IMPL.load(Ordering::Relaxed) {
            0 => {
                let i = detect();
                let k = ALL.iter().position(|&a| a == i).unwrap_or(0);
                IMPL.store(k as u8 + 1, Ordering::Relaxed);
                i
            }
            k => ALL[(k as usize - 1) % ALL.len()],
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
fn detect_x86() -> Implementation {
    // Miri interprets no CPUID (and none of the SIMD paths): scalar.
    if cfg!(miri) {
        return Implementation::Scalar;
    }
    #[cfg(feature = "std")]
    let (avx2, fma, f16c) = (
        std::is_x86_feature_detected!("avx2"),
        std::is_x86_feature_detected!("fma"),
        std::is_x86_feature_detected!("f16c"),
    );
    #[cfg(not(feature = "std"))]
    let (avx2, fma, f16c) = x86_avx2::cpuid_features();
    match (avx2 && fma, f16c) {
        (true, true) => Implementation::Avx2FmaF16c,
        (true, false) => Implementation::Avx2Fma,
        _ => Implementation::Scalar,
    }
}

/// NEON, with `dotprod` when the CPU has it, and `i8mm` when it has both:
/// detected at run time with `std`, from the compile-time target features
/// without.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
fn detect_arm() -> Implementation {
    #[cfg(feature = "std")]
    let (dot, i8mm) = (
        std::arch::is_aarch64_feature_detected!("dotprod"),
        std::arch::is_aarch64_feature_detected!("i8mm"),
    );
    #[cfg(not(feature = "std"))]
    let (dot, i8mm) = (cfg!(target_feature = "dotprod"), cfg!(target_feature = "i8mm"));
    if dot && i8mm {
        Implementation::NeonI8mm
    } else if dot {
        Implementation::NeonDot
    } else {
        Implementation::Neon
    }
}

#[cfg(all(target_arch = "riscv64", feature = "std", target_os = "linux"))]
fn detect_riscv() -> Implementation {
    extern "C" {
        fn getauxval(kind: core::ffi::c_ulong) -> core::ffi::c_ulong;
    }
    const AT_HWCAP: core::ffi::c_ulong = 16;
    // SAFETY: getauxval is provided by the C library std links on Linux
    // (glibc ≥ 2.16, musl); it only reads the process's auxiliary vector.
    let hwcap = unsafe { getauxval(AT_HWCAP) };
    if hwcap & (1 << (b'V' - b'A')) != 0 {
        Implementation::Rvv
    } else {
        Implementation::Scalar
    }
}

/// Whether RVV is enabled at compile time (see the crate docs).
#[cfg(target_arch = "riscv64")]
const RVV_STATIC: bool =
    cfg!(target_feature = "v") || matches!(option_env!("EDGEQ_RVV"), Some(v) if v.len() == 1 && v.as_bytes()[0] == b'1');

/// A forced implementation: 0 = none, else `1 + index` in [`ALL_IMPLS`].
static FORCED: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
const ALL_IMPLS: [Implementation; 8] = [
    Implementation::Scalar,
    Implementation::Avx2Fma,
    Implementation::Avx2FmaF16c,
    Implementation::Neon,
    Implementation::NeonDot,
    Implementation::NeonI8mm,
    Implementation::Rvv,
    Implementation::ArmDsp,
];

/// Makes [`matmul`] and [`matmul_q8`] use `imp` from now on (process-wide),
/// or the detected best again with `None`; false (and no change) when `imp`
/// is not available here. Forcing `Scalar` gives results bit-identical to
/// the reference on every machine, e.g. to compare a host run with a
/// firmware run token for token.
pub fn force_implementation(imp: Option<Implementation>) -> bool {
    use core::sync::atomic::Ordering;
    match imp {
        None => FORCED.store(0, Ordering::Relaxed),
        Some(i) if is_available(i) => {
            let k = ALL_IMPLS.iter().position(|&a| a == i).unwrap_or(0);
            FORCED.store(k as u8 + 1, Ordering::Relaxed);
        }
        Some(_) => return false,
    }
    true
}

/// Parses an implementation name as [`Implementation::name`] prints it.
pub fn implementation_by_name(name: &str) -> Option<Implementation> {
    ALL_IMPLS.iter().copied().find(|i| i.name() == name)
}

/// The implementation [`matmul`] dispatches to: the one forced with
/// [`force_implementation`], else the best detected (on first use).
#[inline]
pub fn implementation() -> Implementation {
    match FORCED.load(core::sync::atomic::Ordering::Relaxed) {
        0 => detected(),
        k => ALL_IMPLS[(k as usize - 1) % ALL_IMPLS.len()],
    }
}

/// The best implementation this machine supports.
#[inline]
pub fn detected() -> Implementation {
    #[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
    {
        cache::get(detect_x86)
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon", feature = "std"))]
    {
        cache::get(detect_arm)
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon", not(feature = "std")))]
    {
        detect_arm()
    }
    #[cfg(target_arch = "riscv64")]
    {
        if RVV_STATIC {
            return Implementation::Rvv;
        }
        #[cfg(all(feature = "std", target_os = "linux"))]
        {
            cache::get(detect_riscv)
        }
        #[cfg(not(all(feature = "std", target_os = "linux")))]
        {
            Implementation::Scalar
        }
    }
    #[cfg(edgeq_arm_dsp)]
    {
        Implementation::ArmDsp
    }
    #[cfg(not(any(
        all(target_arch = "x86_64", not(target_os = "none")),
        all(target_arch = "aarch64", target_feature = "neon"),
        target_arch = "riscv64",
        edgeq_arm_dsp
    )))]
    {
        Implementation::Scalar
    }
}

/// `y[i][r] = Σ_c W[r][c] · x[i][c]` for `i < t`, rows `rows.start..rows.end`.
///
/// `y` holds `t` vectors of `W.rows()`; only the given row range is written,
/// so callers may split rows across threads. `scratch` needs `W.cols()`
/// floats (one dequantized row). Slices that are too short are a caller bug
/// and make the call return without writing (never a panic, never UB).
///
/// Runs the SIMD kernel of [`implementation`] for Q4/Q8 (sym and asym),
/// F32 and F16 weights, the scalar reference otherwise; results agree with
/// [`scalar::matmul`] within the bound in the crate docs.
#[inline]
pub fn matmul(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: core::ops::Range<usize>, scratch: &mut [f32]) {
    matmul_with(implementation(), y, w, x, t, rows, scratch);
}

/// `y[i][r] = Σ_c W[r][c] · x[i][c]` for the rows in `rows`, with the
/// activations `x` given quantized ([`Q8Acts`]): integer dot products with
/// i32 accumulation (see [`scalar_int`] for the reference and its bound).
///
/// Requires a Q4/Q8 weight ([`scalar_int::supported`]) and `a.cols() ==
/// W.cols()`; `y` holds `a.tokens()` vectors of `W.rows()`. Arguments that
/// do not fit make the call return without writing (never a panic).
#[inline]
pub fn matmul_q8(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: core::ops::Range<usize>) {
    matmul_q8_with(implementation(), y, w, a, rows);
}

/// [`matmul_q8`] with a chosen implementation; returns false (writing
/// nothing) when `imp` is not available on this machine (see
/// [`available`]) or the arguments do not fit.
pub fn matmul_q8_with(imp: Implementation, y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: core::ops::Range<usize>) -> bool {
    if !support::q8_args_ok(y, w, a, &rows) || !is_available(imp) {
        return false;
    }
    match imp {
        #[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
        i @ (Implementation::Avx2Fma | Implementation::Avx2FmaF16c) => {
            // SAFETY: `is_available` confirmed AVX2 + FMA (+ F16C for the
            // F16C variant) on this CPU; the arguments passed `q8_args_ok`.
            unsafe { x86_avx2_int::matmul(y, w, a, rows, i == Implementation::Avx2FmaF16c) }
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        Implementation::NeonI8mm if a.t >= 2 => {
            // SAFETY: NEON is enabled at compile time; `is_available`
            // confirmed i8mm; arguments passed `q8_args_ok`, and `w` is an
            // integer scheme (other schemes go to the reference inside).
            unsafe { aarch64_neon_i8mm::matmul(y, w, a, rows) }
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        i @ (Implementation::Neon | Implementation::NeonDot | Implementation::NeonI8mm) => {
            // SAFETY: NEON is enabled at compile time; `is_available`
            // confirmed dotprod for NeonDot and NeonI8mm; arguments passed
            // `q8_args_ok`.
            unsafe { aarch64_neon_int::matmul(y, w, a, rows, i != Implementation::Neon) }
        }
        #[cfg(target_arch = "riscv64")]
        Implementation::Rvv => {
            // SAFETY: `is_available` confirmed V; arguments passed `q8_args_ok`.
            unsafe { riscv_rvv_int::matmul(y, w, a, rows) }
        }
        #[cfg(edgeq_arm_dsp)]
        Implementation::ArmDsp => arm_dsp_int::matmul(y, w, a, rows),
        _ => scalar_int::matmul(y, w, a, rows),
    }
    true
}

/// [`matmul`] with a chosen implementation (for tests and benchmarks that
/// compare implementations side by side); false when `imp` is not available
/// here or the arguments do not fit.
pub fn matmul_with(
    imp: Implementation,
    y: &mut [f32],
    w: &TensorView<'_>,
    x: &[f32],
    t: usize,
    rows: core::ops::Range<usize>,
    scratch: &mut [f32],
) -> bool {
    if !support::args_ok(y, w, x, t, &rows, scratch) || !is_available(imp) {
        return false;
    }
    if rows.is_empty() || t == 0 || !support::simd_view_ok(w) {
        scalar::matmul(y, w, x, t, rows, scratch);
        return true;
    }
    match imp {
        #[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
        i @ (Implementation::Avx2Fma | Implementation::Avx2FmaF16c) => {
            // SAFETY: `is_available` confirmed the features of `i`; the
            // arguments and regions were checked above.
            unsafe { x86_avx2::matmul(y, w, x, t, rows, scratch, i == Implementation::Avx2FmaF16c) }
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        Implementation::Neon | Implementation::NeonDot | Implementation::NeonI8mm => {
            // SAFETY: NEON is enabled at compile time; arguments checked.
            unsafe { aarch64_neon::matmul(y, w, x, t, rows, scratch) }
        }
        #[cfg(target_arch = "riscv64")]
        Implementation::Rvv => {
            // SAFETY: `is_available` confirmed V; arguments checked.
            unsafe { riscv_rvv::matmul(y, w, x, t, rows, scratch) }
        }
        _ => scalar::matmul(y, w, x, t, rows, scratch),
    }
    true
}

/// Whether `imp` can run on this machine: the detected implementation,
/// any weaker variant of the same family, and always `Scalar`.
pub fn is_available(imp: Implementation) -> bool {
    let best = detected();
    match imp {
        Implementation::Scalar => true,
        Implementation::Avx2Fma => matches!(best, Implementation::Avx2Fma | Implementation::Avx2FmaF16c),
        Implementation::Neon => matches!(best, Implementation::Neon | Implementation::NeonDot | Implementation::NeonI8mm),
        Implementation::NeonDot => matches!(best, Implementation::NeonDot | Implementation::NeonI8mm),
        other => other == best,
    }
}

/// Every implementation available on this machine, reference first.
pub fn available() -> impl Iterator<Item = Implementation> {
    ALL_IMPLS.into_iter().filter(|&i| is_available(i))
}

/// Dot product of two equal-length f32 slices with 8 independent partial
/// sums (a fixed, vectorizable summation order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    scalar::dot(a, b)
}
