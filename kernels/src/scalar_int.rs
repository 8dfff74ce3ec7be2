//! Scalar reference for integer weights × [`Q8Acts`] (quantized
//! activations): Q4 and Q8, symmetric and asymmetric, any group length that
//! is a multiple of 32.
//!
//! For token `i`, row `r`, activation block `b` (in weight group `g`, with
//! f16 scale `s_g` and, for asym, min `m_g`) the block's integer dot product
//! is exact in i32:
//!
//! ```text
//! Q4 sym:   isum_b = Σ_j (q_j − 8) · a_j        Q4 asym:  Σ_j q_j · a_j
//! Q8 sym:   isum_b = Σ_j q_j · a_j  (q i8)      Q8 asym:  Σ_j q_j · a_j  (q u8)
//! y = Σ_b (s_g · d_b) · isum_b   +   Σ_b m_g · dsum_b      (asym only)
//! ```
//!
//! summed in block order, the `m_g` terms in a second accumulator added
//! last. SIMD kernels compute the same `isum_b` exactly (split into lanes,
//! with corrections such as `−8·Σa` folded into the lanes) and the same
//! `c_b = s_g · d_b`, and differ only in the float summation order, so the
//! crate-level bound holds with the terms `c_b · p_bk` (lane partials) and
//! `m_g · dsum_b`: the tests use `Σ_k |p_bk| ≤ Σ_j (|q_j| + 128)·|a_j|`.
use crate::act_q8::{Q8Acts, QK};
use crate::support::f16_to_f32;
use core::ops::Range;
use edgeq_core::{Scheme, TensorView};

/// Exact integer dot product of one 32-element weight block (raw code
/// bytes: 16 for Q4, 32 for Q8) with 32 activation codes.
#[inline]
pub fn block_isum(scheme: Scheme, w: &[u8], a: &[i8]) -> i32 {
    // (fixed-size views: no index below can fail; 0 for short slices)
    let Ok(a) = <&[i8; QK]>::try_from(a) else { return 0 };
    let mut s = 0i32;
    match scheme {
        Scheme::Q4Sym | Scheme::Q4Asym => {
            let Some(w) = w.get(..16).and_then(|w| <&[u8; 16]>::try_from(w).ok()) else {
                return 0;
            };
            let off = if scheme == Scheme::Q4Sym { 8 } else { 0 };
            for j in 0..16 {
                s += ((w[j] & 0xf) as i32 - off) * a[j] as i32;
                s += ((w[j] >> 4) as i32 - off) * a[j + 16] as i32;
            }
        }
        Scheme::Q8Sym => {
            let Some(w) = w.get(..QK).and_then(|w| <&[u8; QK]>::try_from(w).ok()) else {
                return 0;
            };
            for j in 0..QK {
                s += (w[j] as i8) as i32 * a[j] as i32;
            }
        }
        _ => {
            let Some(w) = w.get(..QK).and_then(|w| <&[u8; QK]>::try_from(w).ok()) else {
                return 0;
            };
            for j in 0..QK {
                s += w[j] as i32 * a[j] as i32;
            }
        }
    }
    s
}

/// Whether `w` can run against quantized activations of `cols` columns:
/// a Q4/Q8 scheme whose regions are complete (see
/// [`crate::support::simd_view_ok`]) with groups of whole 32-blocks.
pub fn supported(w: &TensorView<'_>) -> bool {
    matches!(w.scheme(), Scheme::Q4Sym | Scheme::Q4Asym | Scheme::Q8Sym | Scheme::Q8Asym) && crate::support::simd_view_ok(w)
}

/// `y[i][r] = Σ_c W[r][c] · x[i][c]` for the rows in `rows`, with `x` given
/// quantized. Returns without writing when arguments do not fit
/// (see [`crate::matmul_q8`]).
pub fn matmul(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>) {
    if !crate::support::q8_args_ok(y, w, a, &rows) {
        return;
    }
    let scheme = w.scheme();
    combine(y, w, a, rows, |wb, ab, _| block_isum(scheme, wb, ab));
}

/// The reference combination of exact block dot products, shared by every
/// implementation that computes `isum` in its own instructions and is then
/// bit-identical to the reference by construction (RVV, Cortex-M DSP):
/// `isum(weight block bytes, activation codes, Σ activation codes)` must
/// return [`block_isum`]'s value. Arguments as checked by
/// `support::q8_args_ok`.
#[inline(always)]
pub(crate) fn combine<F: Fn(&[u8], &[i8], i32) -> i32>(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>, isum: F) {
    let scheme = w.scheme();
    let n_rows = w.rows();
    let bpg = (w.layout.group_len as usize / QK).max(1);
    let wbytes = QK * scheme.code_bits() as usize / 8;
    let asym = scheme.is_asym();
    for r in rows {
        let codes = w.row_codes(r);
        let scales = w.row_scales_f16(r);
        let mins = w.row_mins(r);
        for i in 0..a.t {
            let (ac, ad, asums, ads) = (a.codes(i), a.scales(i), a.sums(i), a.dsums(i));
            let (mut acc, mut macc) = (0.0f32, 0.0f32);
            for b in 0..a.blocks {
                let (wb, ab) = (codes.get(b * wbytes..(b + 1) * wbytes), ac.get(b * QK..(b + 1) * QK));
                let (Some(wb), Some(ab), Some(&d), Some(&asum), Some(&ds)) = (wb, ab, ad.get(b), asums.get(b), ads.get(b)) else {
                    break;
                };
                let g = b / bpg;
                let isum = isum(wb, ab, asum);
                let c = scales.get(g).map_or(0.0, |s| f16_to_f32(s.to_bits())) * d;
                acc += c * isum as f32;
                if asym {
                    macc += mins.get(g).map_or(0.0, |m| f16_to_f32(m.to_bits())) * ds;
                }
            }
            if let Some(y) = y.get_mut(i * n_rows + r) {
                *y = acc + macc;
            }
        }
    }
}
