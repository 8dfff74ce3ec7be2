//! edgeq kernels: the matrix products the runtime executes, for every
//! weight scheme. `scalar.rs` is the reference every SIMD kernel (one file
//! per architecture, added alongside) is tested against.
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
//! * `riscv64-rvv`: riscv64. Stable Rust (1.95) has neither
//!   `is_riscv_feature_detected!` nor a stable `v` target feature (with
//!   `-C target-feature=+v` the cfg stays unset), so RVV is chosen when
//!   `cfg(target_feature = "v")` holds (future toolchains), or the crate was
//!   built with the environment variable `EDGEQ_RVV=1` (a compile-time
//!   switch: the binary then requires V), or — with the `std` feature on
//!   Linux — `getauxval(AT_HWCAP)` has the `V` bit (checked once, cached).
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
//! most `2⁻¹⁵⁰` per product. Both sides obey it, hence the factor 2. Every
//! implementation's result for token `i` is independent of `t` and of the
//! row range (the same operations run for one token or four), so batched
//! prefill and one-token decode agree bit for bit on a given machine.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "std")]
extern crate std;

pub mod scalar;
pub mod scalar_q8;

#[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
mod x86_avx2;

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod aarch64_neon;

#[cfg(target_arch = "riscv64")]
mod riscv_rvv;

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
    Rvv,
}

impl Implementation {
    pub fn name(self) -> &'static str {
        match self {
            Implementation::Scalar => "scalar",
            Implementation::Avx2Fma => "x86_64-avx2-fma",
            Implementation::Avx2FmaF16c => "x86_64-avx2-fma-f16c",
            Implementation::Neon => "aarch64-neon",
            Implementation::Rvv => "riscv64-rvv",
        }
    }
}

/// Run-time detection, done once: 0 = not yet, else `1 + index`.
#[cfg(any(
    all(target_arch = "x86_64", not(target_os = "none")),
    all(target_arch = "riscv64", feature = "std", target_os = "linux")
))]
mod cache {
    use super::Implementation;
    use core::sync::atomic::{AtomicU8, Ordering};

    static IMPL: AtomicU8 = AtomicU8::new(0);
    const ALL: [Implementation; 5] = [
        Implementation::Scalar,
        Implementation::Avx2Fma,
        Implementation::Avx2FmaF16c,
        Implementation::Neon,
        Implementation::Rvv,
    ];

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

/// The implementation [`matmul`] dispatches to (detected on first use).
#[inline]
pub fn implementation() -> Implementation {
    #[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
    {
        cache::get(detect_x86)
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        Implementation::Neon
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
    #[cfg(not(any(
        all(target_arch = "x86_64", not(target_os = "none")),
        all(target_arch = "aarch64", target_feature = "neon"),
        target_arch = "riscv64"
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
    if !scalar_q8::args_ok(y, w, x, t, &rows, scratch) {
        return;
    }
    if rows.is_empty() || t == 0 || !scalar_q8::simd_view_ok(w) {
        return scalar::matmul(y, w, x, t, rows, scratch);
    }
    match implementation() {
        #[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
        i @ (Implementation::Avx2Fma | Implementation::Avx2FmaF16c) => {
            // SAFETY: `implementation()` returned an AVX2 variant only after
            // detecting AVX2 + FMA (+ F16C for the F16C variant) on this CPU
            // with OS support; the arguments and `w`'s regions were checked
            // above (`args_ok`, `simd_view_ok`), as the kernels require.
            unsafe { x86_avx2::matmul(y, w, x, t, rows, scratch, i == Implementation::Avx2FmaF16c) }
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        Implementation::Neon => {
            // SAFETY: NEON is enabled at compile time; arguments and regions
            // were checked above (`args_ok`, `simd_view_ok`).
            unsafe { aarch64_neon::matmul(y, w, x, t, rows, scratch) }
        }
        #[cfg(target_arch = "riscv64")]
        Implementation::Rvv => {
            // SAFETY: `implementation()` returns Rvv only when V is enabled
            // at compile time or reported by the kernel in AT_HWCAP;
            // arguments were checked above (`args_ok`, `simd_view_ok`).
            unsafe { riscv_rvv::matmul(y, w, x, t, rows, scratch) }
        }
        _ => scalar::matmul(y, w, x, t, rows, scratch),
    }
}

/// Dot product of two equal-length f32 slices with 8 independent partial
/// sums (a fixed, vectorizable summation order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    scalar::dot(a, b)
}
