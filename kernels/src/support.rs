//! Scalar helpers shared by the SIMD kernels: an exact, cheap `f16 → f32`
//! for per-group scales, and the checks that make raw-pointer loads over a
//! [`TensorView`] sound (its fields are public, so a view can be built with
//! regions shorter than its layout says; such a view goes to the scalar
//! reference instead, which only ever slices).
use edgeq_core::tensor::Scales;
use edgeq_core::{Scheme, TensorView};

/// `f16` bits to `f32`, equal to `half::f16::to_f32` for every non-NaN input
/// (NaN stays NaN, quieted). Branches are on the exponent only, which is
/// the same for nearly all scales, so they predict well; no float
/// arithmetic touches a subnormal (subnormal halves are `m · 2⁻²⁴`, a normal
/// f32 product of two exact values), so FTZ/DAZ modes cannot change it.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let e = ((h >> 10) & 0x1f) as u32;
    let m = (h & 0x3ff) as u32;
    if e == 0 {
        let v = m as f32 * (1.0 / 16_777_216.0); // m·2⁻²⁴, exact
        f32::from_bits(v.to_bits() | sign)
    } else if e == 31 {
        let nan = if m != 0 { 0x0040_0000 } else { 0 };
        f32::from_bits(sign | 0x7f80_0000 | nan | (m << 13))
    } else {
        f32::from_bits(sign | ((e + 112) << 23) | (m << 13))
    }
}

/// True when every region a SIMD kernel reads for `w` is as long as its
/// layout needs: integer schemes (block codes, f16 scales, mins for asym),
/// F32 and F16. Other schemes return false (the kernels have no SIMD path).
pub fn simd_view_ok(w: &TensorView<'_>) -> bool {
    let l = &w.layout;
    let (rows, cols) = (l.rows as u64, l.cols as u64);
    let s = w.scheme();
    match s {
        Scheme::F32 => w.as_f32().len() as u64 >= rows * cols,
        Scheme::F16 => w.as_f16().len() as u64 >= rows * cols,
        _ if s.is_int() => {
            let (g, gpr) = (l.group_len as u64, l.groups_per_row as u64);
            let need_scales = rows * gpr;
            let scales_ok = match w.scales {
                Scales::F16(sc) => sc.len() as u64 >= need_scales,
                _ => false,
            };
            g != 0
                && g % 32 == 0
                && gpr * g >= cols
                && l.row_stride * 8 >= gpr * g * s.code_bits() as u64
                && w.codes.len() as u64 >= rows * l.row_stride
                && scales_ok
                && (!s.is_asym() || w.mins.len() as u64 >= need_scales)
        }
        _ if s.is_fp8() => {
            // Unpadded rows of one code per element, f32 scales.
            let scales_ok = match w.scales {
                Scales::F32(sc) => sc.len() as u64 >= l.n_scales,
                _ => false,
            };
            scales_ok && l.row_stride == cols && w.codes.len() as u64 >= rows * cols
        }
        _ => false,
    }
}

/// The argument checks of [`crate::scalar::matmul`] (overflow-safe).
#[inline]
pub fn args_ok(y: &[f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: &core::ops::Range<usize>, scratch: &[f32]) -> bool {
    let (n_rows, cols) = (w.rows(), w.cols());
    let (Some(ny), Some(nx)) = (t.checked_mul(n_rows), t.checked_mul(cols)) else {
        return false;
    };
    rows.end <= n_rows && rows.start <= rows.end && y.len() >= ny && x.len() >= nx && scratch.len() >= cols
}

/// The argument checks of the quantized-activation kernels: an integer
/// scheme with complete regions, activations with `w.cols()` columns, and
/// room in `y` for every token's `w.rows()` outputs.
#[inline]
pub fn q8_args_ok(y: &[f32], w: &TensorView<'_>, a: &crate::Q8Acts<'_>, rows: &core::ops::Range<usize>) -> bool {
    let n_rows = w.rows();
    crate::scalar_int::supported(w)
        && a.cols == w.cols()
        && rows.end <= n_rows
        && rows.start <= rows.end
        && a.t.checked_mul(n_rows).is_some_and(|n| y.len() >= n)
}

/// FP8 block scaling: the tile edge (one scale per `tile`×`tile` block, so
/// the scale is constant over `tile` columns and `tile` rows); `None` for
/// every other scheme and granularity (FP8 per tensor / per channel: one
/// scale over the whole row).
pub fn fp8_tile(w: &TensorView<'_>) -> Option<usize> {
    (w.spec.scheme.is_fp8() && w.spec.granularity == edgeq_core::Granularity::Block).then_some(w.spec.group as usize)
}
