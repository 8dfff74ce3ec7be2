//! x86_64 AVX2 kernels for integer weights × quantized activations
//! ([`crate::act_q8`]), and the activation quantizer itself.
//!
//! One 32-element block: the weight codes become 32 bytes (Q4 nibbles are
//! spread to bytes 0..16 = elements 0..16 and 16..32 = elements 16..32),
//! `vpmaddubsw` multiplies unsigned by signed bytes into 16 i16 sums of two
//! products and `vpmaddwd` by ones widens them to 8 i32 lanes:
//! * Q4 (codes 0..15): `Σ q·a` directly (|pair| ≤ 2·15·127); sym subtracts
//!   `Σa` from each of the 8 lanes (= `−8·Σa` in total).
//! * Q8 sym (i8 codes): `|q|` times `a·sign(q)` (|pair| ≤ 2·128·127 <
//!   2¹⁵, no saturation since activation codes stop at ±127).
//! * Q8 asym (u8 codes): `q − 128` as i8, then as sym, plus `16·Σa` in each
//!   lane (= `128·Σa`).
//!
//! The lanes are exact integers; `acc = fma(s·d, lanes, acc)` per block and
//! token, with the `m·dsum` terms (asym; Q4 sym's `−8·s·dsum`) folded into
//! the same accumulators once per 8 blocks, one horizontal sum per row (see
//! [`crate::scalar_int`]). Rows go in groups of 8 blocks whose scales are
//! converted and multiplied in registers (no per-row scratch: on the
//! 576-column rows of a small model the scratch cost as much as the dot
//! products).
//!
//! Prefill (two or more tokens) runs 8-row tiles instead ([`int_tile`]):
//! the rows sit in the vector lanes, so a block costs a quarter of the
//! widening multiplies, conversions and FMAs of four rows and no horizontal
//! sums (SmolLM2-135M pp128 on one Zen 3 core: Q4 245 → 367 tokens/s). For one
//! token (decode) the tile is slower than the row kernel (its transposes
//! are not shared by several tokens; 4096² GEMV 476 → 1071 µs), so decode
//! keeps the row kernel, and a token's result in a batch of one may differ
//! in rounding from its result in a batch of two or more (which all agree).
use crate::act_q8::{block_scale, Q8Acts, QK};
use crate::support::f16_to_f32;
use crate::x86_avx2::hsum;
use core::arch::x86_64::*;
use core::ops::Range;
use edgeq_core::tensor::Scales;
use edgeq_core::{Scheme, TensorView};

/// Tokens per pass over a row.
const MAX_T: usize = 4;

/// Software prefetch distance in weight-code bytes (into the following
/// rows). The hardware prefetcher alone left the single-thread GEMV at
/// 55–65 % of the read bandwidth on Zen 3; 2 KiB ahead gives 80–85 %
/// (docs/PERFORMANCE.md). A prefetch never faults, so running past the
/// tensor's end is harmless (the address is formed with `wrapping_add`).
const PF: usize = 2048;

/// Quantizes `x` into `a` (bit-identical to `Q8Acts::quantize_scalar`).
///
/// # Safety
/// AVX2 available; `x` holds `a.t · a.cols` floats; `a`'s slices were
/// carved for `a.t · a.blocks` blocks.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize(a: &mut Q8Acts<'_>, x: &[f32]) {
    let (cols, blocks) = (a.cols, a.blocks);
    for i in 0..a.t {
        for b in 0..blocks {
            let e0 = b * QK;
            let n = (cols - e0).min(QK);
            let mut pad = [0.0f32; QK];
            let src = &x[i * cols + e0..i * cols + e0 + n];
            let p = if n == QK {
                src.as_ptr()
            } else {
                pad[..n].copy_from_slice(src);
                pad.as_ptr()
            };
            let k = i * blocks + b;
            // SAFETY: `p` points at 32 readable floats (a full block of `x`
            // or the local copy); `k < t·blocks` so the 32 codes at `k·32`
            // and entry `k` of the other slices exist (carve).
            unsafe {
                let v = [
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                ];
                let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
                // max(|x|, m): a NaN lane yields m (second operand), as the
                // scalar `>` comparison ignores NaN.
                let mut m = _mm256_setzero_ps();
                for vk in v {
                    m = _mm256_max_ps(_mm256_and_ps(vk, abs), m);
                }
                let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
                let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                let m1 = _mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2));
                let (d, id) = block_scale(_mm_cvtss_f32(m1));
                let (vid, lo, hi) = (_mm256_set1_ps(id), _mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
                let mut q = [_mm256_setzero_si256(); 4];
                for (qk, vk) in q.iter_mut().zip(v) {
                    let c = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(vk, vid), lo), hi);
                    *qk = _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(c));
                }
                let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
                let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
                let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2)));
                // i32 → i16 → i8 packs interleave 128-bit lanes; the
                // permutation restores element order.
                let p01 = _mm256_packs_epi32(q[0], q[1]);
                let p23 = _mm256_packs_epi32(q[2], q[3]);
                let p8 = _mm256_packs_epi16(p01, p23);
                let ordered = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm256_storeu_si256(a.codes.as_mut_ptr().add(k * QK) as *mut __m256i, ordered);
                let km = i * a.bs + b;
                *a.scales.get_unchecked_mut(km) = d;
                *a.sums.get_unchecked_mut(km) = sum;
                *a.dsums.get_unchecked_mut(km) = d * sum as f32;
            }
        }
    }
}

/// One 32-element weight block against activation codes.
trait WBlock {
    /// Code bytes per block.
    const BYTES: usize;
    const ASYM: bool;
    /// # Safety
    /// `p` valid for `BYTES` reads; AVX2 available.
    unsafe fn load(p: *const u8) -> __m256i;
    /// 8 i32 lanes summing to the block's exact `isum`.
    /// # Safety
    /// AVX2 available.
    unsafe fn dot(w: __m256i, a: __m256i, asum: i32) -> __m256i;
}

struct Q4Sym;
struct Q4Asym;
struct Q8Sym;
struct Q8Asym;

#[inline(always)]
unsafe fn q4_load(p: *const u8) -> __m256i {
    // SAFETY: 16 readable bytes at `p` (caller); register-only AVX2 ops.
    unsafe {
        let v = _mm_loadu_si128(p as *const __m128i);
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
    }
}

#[inline(always)]
unsafe fn pairs_to_lanes(p16: __m256i) -> __m256i {
    // SAFETY: register-only AVX2 op.
    unsafe { _mm256_madd_epi16(p16, _mm256_set1_epi16(1)) }
}

impl WBlock for Q4Sym {
    const BYTES: usize = 16;
    const ASYM: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: forwarded contract.
        unsafe { q4_load(p) }
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, a: __m256i, asum: i32) -> __m256i {
        // SAFETY: register-only AVX2 ops.
        unsafe { _mm256_sub_epi32(pairs_to_lanes(_mm256_maddubs_epi16(w, a)), _mm256_set1_epi32(asum)) }
    }
}

impl WBlock for Q4Asym {
    const BYTES: usize = 16;
    const ASYM: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: forwarded contract.
        unsafe { q4_load(p) }
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, a: __m256i, _asum: i32) -> __m256i {
        // SAFETY: register-only AVX2 ops.
        unsafe { pairs_to_lanes(_mm256_maddubs_epi16(w, a)) }
    }
}

#[inline(always)]
unsafe fn signed_dot(w: __m256i, a: __m256i) -> __m256i {
    // SAFETY: register-only AVX2 ops.
    unsafe { pairs_to_lanes(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))) }
}

impl WBlock for Q8Sym {
    const BYTES: usize = 32;
    const ASYM: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: 32 readable bytes at `p` (caller).
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, a: __m256i, _asum: i32) -> __m256i {
        // SAFETY: register-only AVX2 ops.
        unsafe { signed_dot(w, a) }
    }
}

impl WBlock for Q8Asym {
    const BYTES: usize = 32;
    const ASYM: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: 32 readable bytes at `p` (caller); q − 128 as i8.
        unsafe { _mm256_xor_si256(_mm256_loadu_si256(p as *const __m256i), _mm256_set1_epi8(-128)) }
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, a: __m256i, asum: i32) -> __m256i {
        // SAFETY: register-only AVX2 ops.
        unsafe { _mm256_add_epi32(signed_dot(w, a), _mm256_set1_epi32(asum << 4)) }
    }
}

/// # Safety
/// AVX2 + FMA available, and F16C when `f16c`; `support::q8_args_ok(y, w,
/// a, &rows)` holds.
pub(crate) unsafe fn matmul(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>, f16c: bool) {
    // SAFETY (all arms): forwarded contract.
    unsafe {
        match (w.scheme(), f16c) {
            (Scheme::Q4Sym, false) => q4_sym(y, w, a, rows),
            (Scheme::Q4Asym, false) => q4_asym(y, w, a, rows),
            (Scheme::Q8Sym, false) => q8_sym(y, w, a, rows),
            (Scheme::Q8Asym, false) => q8_asym(y, w, a, rows),
            (Scheme::Q4Sym, true) => q4_sym_f16c(y, w, a, rows),
            (Scheme::Q4Asym, true) => q4_asym_f16c(y, w, a, rows),
            (Scheme::Q8Sym, true) => q8_sym_f16c(y, w, a, rows),
            (Scheme::Q8Asym, true) => q8_asym_f16c(y, w, a, rows),
            _ => crate::scalar_int::matmul(y, w, a, rows),
        }
    }
}

macro_rules! entry {
    ($name:ident, $ty:ty, $f16c:literal, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>) {
            // SAFETY: forwarded contract of `matmul`.
            unsafe { int_matmul::<$ty, $f16c>(y, w, a, rows) }
        }
    };
}
entry!(q4_sym, Q4Sym, false, "avx2,fma");
entry!(q4_asym, Q4Asym, false, "avx2,fma");
entry!(q8_sym, Q8Sym, false, "avx2,fma");
entry!(q8_asym, Q8Asym, false, "avx2,fma");
entry!(q4_sym_f16c, Q4Sym, true, "avx2,fma,f16c");
entry!(q4_asym_f16c, Q4Asym, true, "avx2,fma,f16c");
entry!(q8_sym_f16c, Q8Sym, true, "avx2,fma,f16c");
entry!(q8_asym_f16c, Q8Asym, true, "avx2,fma,f16c");

#[inline(always)]
unsafe fn int_matmul<B: WBlock, const F16C: bool>(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>) {
    let n_rows = w.rows();
    let Scales::F16(scales) = w.scales else { return };
    // Prefill (t ≥ 2): whole 8-row tiles aligned to multiples of 8
    // (`int_tile`), the rows before the first and after the last row by
    // row; which path a row takes depends on the range and on t ≥ 2 only,
    // so a token's result is the same in every batch of two or more.
    let (mut head, mut tail) = (rows.clone(), rows.end..rows.end);
    if a.t >= 2 {
        let t0 = rows.start.next_multiple_of(8);
        let t1 = t0.max(rows.end / 8 * 8);
        head = rows.start..t0.min(rows.end);
        tail = t1..rows.end;
        let mut r0 = t0;
        while r0 < t1 {
            let mut i0 = 0;
            while i0 < a.t {
                let n = (a.t - i0).min(MAX_T);
                // SAFETY: `q8_args_ok` gives r0 + 8 ≤ rows.end ≤ rows,
                // complete regions, tokens i0..i0+n ≤ t, y of t·rows floats.
                unsafe {
                    match n {
                        1 => int_tile::<B, F16C, 1>(y, w, scales, r0, a, i0),
                        2 => int_tile::<B, F16C, 2>(y, w, scales, r0, a, i0),
                        3 => int_tile::<B, F16C, 3>(y, w, scales, r0, a, i0),
                        _ => int_tile::<B, F16C, 4>(y, w, scales, r0, a, i0),
                    }
                }
                i0 += n;
            }
            r0 += 8;
        }
    }
    for r in head.chain(tail) {
        let mut i0 = 0;
        while i0 < a.t {
            let n = (a.t - i0).min(MAX_T);
            let mut out = [0.0f32; MAX_T];
            // SAFETY: `q8_args_ok` gives r < rows, complete code/scale/min
            // regions (`simd_view_ok`) and tokens i0..i0+n ≤ t.
            unsafe {
                if B::BYTES == 16 {
                    match n {
                        1 => out[..1].copy_from_slice(&q4_row::<B, F16C, 1>(w, scales, r, a, i0)),
                        2 => out[..2].copy_from_slice(&q4_row::<B, F16C, 2>(w, scales, r, a, i0)),
                        3 => out[..3].copy_from_slice(&q4_row::<B, F16C, 3>(w, scales, r, a, i0)),
                        _ => out.copy_from_slice(&q4_row::<B, F16C, 4>(w, scales, r, a, i0)),
                    }
                } else {
                    match n {
                        1 => out[..1].copy_from_slice(&int_row::<B, F16C, 1>(w, scales, r, a, i0)),
                        2 => out[..2].copy_from_slice(&int_row::<B, F16C, 2>(w, scales, r, a, i0)),
                        3 => out[..3].copy_from_slice(&int_row::<B, F16C, 3>(w, scales, r, a, i0)),
                        _ => out.copy_from_slice(&int_row::<B, F16C, 4>(w, scales, r, a, i0)),
                    }
                }
            }
            for (k, &o) in out[..n].iter().enumerate() {
                y[(i0 + k) * n_rows + r] = o;
            }
            i0 += n;
        }
    }
}

/// Row `r` against tokens `i0..i0+T`, in groups of 8 blocks: the group's
/// weight scales (and mins) are converted at once (`group8`), `c_b = s·d_b`
/// is one multiply per token, each block's `c_b` is an in-lane broadcast of
/// it, and the block's integer lanes are accumulated as
/// `acc = fma(c_b, lanes, acc)` into two accumulators (even and odd blocks)
/// to hide FMA latency; asym's `m·dsum_b` terms are one FMA per group into
/// the first (a separate accumulator would spill at four tokens).
/// The operations for one token do not depend on `T`.
///
/// # Safety
/// `r < w.rows()`, `i0 + T ≤ a.t`, `w`'s regions complete
/// (`simd_view_ok`), `a.cols == w.cols()`; AVX2 + FMA (+ F16C) available.
#[inline(always)]
unsafe fn int_row<B: WBlock, const F16C: bool, const T: usize>(
    w: &TensorView<'_>,
    scales: &[half::f16],
    r: usize,
    a: &Q8Acts<'_>,
    i0: usize,
) -> [f32; T] {
    let gpr = w.layout.groups_per_row as usize;
    let bpg = w.layout.group_len as usize / QK;
    let blocks = a.blocks;
    // SAFETY: row `r`'s codes start at r·stride and hold gpr·bpg ≥ blocks
    // blocks; scales/mins hold gpr entries per row (groups g < gpr are
    // read: g = b / bpg for b < blocks); activation blocks (i, b) for
    // i < t, b < blocks lie inside the carved slices; activation meta is
    // read 8 entries from b0 (a multiple of 8) < blocks ≤ bs, and bs is a
    // multiple of 8.
    unsafe {
        let wp = w.codes.as_ptr().add(r * w.layout.row_stride as usize);
        let sp = scales.as_ptr().add(r * gpr);
        let mp = w.mins.as_ptr().add(if B::ASYM { r * gpr } else { 0 });
        let (ac, ad, asum, ads) = (a.codes.as_ptr(), a.scales.as_ptr(), a.sums.as_ptr(), a.dsums.as_ptr());
        let lane = [
            _mm256_set1_epi32(0),
            _mm256_set1_epi32(1),
            _mm256_set1_epi32(2),
            _mm256_set1_epi32(3),
        ];
        let mut acc0 = [_mm256_setzero_ps(); T];
        let mut acc1 = [_mm256_setzero_ps(); T];
        let mut b0 = 0;
        while b0 < blocks {
            let nb = (blocks - b0).min(8);
            // The weight codes `PF` bytes ahead (four cache lines per group).
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(b0 * B::BYTES + PF + 64 * l) as *const i8);
            }
            // Lanes past the row are zeros (`group8`).
            let s8 = group8::<F16C>(sp, b0, nb, bpg);
            let m8 = if B::ASYM {
                group8::<F16C>(mp, b0, nb, bpg)
            } else {
                _mm256_setzero_ps()
            };
            let mut clo = [_mm256_setzero_ps(); T];
            let mut chi = [_mm256_setzero_ps(); T];
            for k in 0..T {
                let km = (i0 + k) * a.bs + b0;
                let c8 = _mm256_mul_ps(s8, _mm256_loadu_ps(ad.add(km)));
                if B::ASYM {
                    acc0[k] = _mm256_fmadd_ps(m8, _mm256_loadu_ps(ads.add(km)), acc0[k]);
                }
                clo[k] = _mm256_permute2f128_ps::<0x00>(c8, c8);
                chi[k] = _mm256_permute2f128_ps::<0x11>(c8, c8);
            }
            // Block j of the group: its c is lane j % 4 of `clo` (j < 4) or
            // `chi`, broadcast in-lane. Blocks alternate accumulators.
            macro_rules! block {
                ($j:expr, $acc:expr) => {{
                    let j: usize = $j;
                    let b = b0 + j;
                    let wv = B::load(wp.add(b * B::BYTES));
                    for k in 0..T {
                        let (kb, km) = ((i0 + k) * blocks + b, (i0 + k) * a.bs + b);
                        let p = B::dot(wv, _mm256_loadu_si256(ac.add(kb * QK) as *const __m256i), *asum.add(km));
                        let c = _mm256_permutevar_ps(if j < 4 { clo[k] } else { chi[k] }, lane[j % 4]);
                        $acc[k] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(p), $acc[k]);
                    }
                }};
            }
            let mut j = 0;
            while j + 2 <= nb {
                block!(j, acc0);
                block!(j + 1, acc1);
                j += 2;
            }
            if j < nb {
                block!(j, acc0);
            }
            b0 += 8;
        }
        let mut out = [0.0f32; T];
        for k in 0..T {
            out[k] = hsum(_mm256_add_ps(acc0[k], acc1[k]));
        }
        out
    }
}

/// f16 values of blocks `b0..b0+nb` (`1 ≤ nb ≤ 8`, lanes past `nb` zero) as 8
/// f32: a scale (or min) per block, read from one f16 per group.
///
/// # Safety
/// `p` holds the row's `⌈(b0+nb)/bpg⌉` groups; F16C available when `F16C`.
#[inline(always)]
unsafe fn group8<const F16C: bool>(p: *const half::f16, b0: usize, nb: usize, bpg: usize) -> __m256 {
    // SAFETY: reads groups (b0 + j) / bpg, j < nb (contract); register ops.
    unsafe {
        if F16C && bpg == 1 && nb == 8 {
            return _mm256_cvtph_ps(_mm_loadu_si128(p.add(b0) as *const __m128i));
        }
        if F16C && nb == 8 && bpg == 2 {
            // g64: [s0 s0 s1 s1 s2 s2 s3 s3].
            let x = _mm_loadl_epi64(p.add(b0 / 2) as *const __m128i);
            return _mm256_cvtph_ps(_mm_unpacklo_epi16(x, x));
        }
        if F16C && nb == 8 && bpg == 4 {
            // g128: [s0 ×4, s1 ×4].
            let x = _mm_cvtsi32_si128((p.add(b0 / 4) as *const i32).read_unaligned());
            let x = _mm_unpacklo_epi16(x, x);
            return _mm256_cvtph_ps(_mm_unpacklo_epi32(x, x));
        }
        let (mut g, mut k) = (b0 / bpg, b0 % bpg);
        if F16C && nb == 8 && k + 8 <= bpg {
            // One group over the 8 blocks (g256 and wider, per channel).
            return _mm256_cvtph_ps(_mm_set1_epi16((*p.add(g)).to_bits() as i16));
        }
        // The row's last group, and other group lengths: the f16 bits per
        // block, zeros past `nb`.
        let mut h = [0u16; 8];
        for hj in h.iter_mut().take(nb) {
            *hj = (*p.add(g)).to_bits();
            k += 1;
            if k == bpg {
                (g, k) = (g + 1, 0);
            }
        }
        if F16C {
            _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i))
        } else {
            let v = h.map(f16_to_f32);
            _mm256_loadu_ps(v.as_ptr())
        }
    }
}

/// Rows `r0..r0+8` against tokens `i0..i0+T` (prefill): the 8 rows sit in
/// the 8 i32/f32 lanes, so no horizontal sums. Per block the rows' code
/// bytes are transposed in registers ([`dwords8`]) so that lane `r` holds 4
/// bytes of row `r`, and each such chunk meets a broadcast of the matching
/// 4 activation codes in one `vpmaddubsw`:
/// * Q4: a 16-byte block gives four chunks, their low nibbles elements
///   `4k..4k+4` and high nibbles `16+4k..`; the 8 products of a block are
///   summed in i16 (each at most 2·15·127 in magnitude, the sum at most
///   30480 < 2¹⁵) and widened once with `vpmaddwd`;
/// * Q8: eight chunks (two 16-byte halves), multiplied as `|q|·(a·sign q)`
///   (asym codes as `q − 128`) and widened per chunk (a pair reaches
///   2·128·127: no i16 carry); asym adds `128·Σa` to each row's sum.
///
/// That gives each row's exact `Σ q·a` for the block; then, as in the row
/// kernels, `acc = fma(s·d, isum, acc)` and `acc = fma(k, dsum, acc)` with
/// `k = −8·s` (Q4 sym) or `m` (asym). Per 256 multiply-adds and token, Q4
/// takes 8 `vpmaddubsw`, one `vpmaddwd`, one conversion and two FMAs,
/// against 8, 4, 4 and 5 for four rows of [`q4_row`] (plus their horizontal
/// sums).
///
/// # Safety
/// `r0 + 8 ≤ w.rows()`, `i0 + T ≤ a.t`, `y` holds `a.t · w.rows()` floats,
/// `w`'s regions complete (`simd_view_ok`), `a.cols == w.cols()`, a Q4 or
/// Q8 scheme matching `B`; AVX2 + FMA (+ F16C) available.
#[inline(always)]
unsafe fn int_tile<B: WBlock, const F16C: bool, const T: usize>(
    y: &mut [f32],
    w: &TensorView<'_>,
    scales: &[half::f16],
    r0: usize,
    a: &Q8Acts<'_>,
    i0: usize,
) {
    let gpr = w.layout.groups_per_row as usize;
    let bpg = w.layout.group_len as usize / QK;
    let stride = w.layout.row_stride as usize;
    let (blocks, n_rows) = (a.blocks, w.rows());
    let q4 = B::BYTES == 16;
    // SAFETY: rows r0..r0+8 hold `blocks` blocks of B::BYTES code bytes
    // from r·stride, and gpr scales (and mins) each; groups b / bpg < gpr
    // are read. Activation codes of block (i, b) are 32 bytes at
    // (i·blocks + b)·32, scales, sums and dsums at i·bs + b, for i < t,
    // b < blocks (carve). y[(i0+k)·rows + r0 ..+8] lies inside y (contract).
    unsafe {
        let wp = w.codes.as_ptr().add(r0 * stride);
        let sp = scales.as_ptr().add(r0 * gpr);
        let mp = w.mins.as_ptr().add(if B::ASYM { r0 * gpr } else { 0 });
        let (ac, ad, asum, ads) = (a.codes.as_ptr(), a.scales.as_ptr(), a.sums.as_ptr(), a.dsums.as_ptr());
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        // The activation codes of token i0 + i, block b, from byte o.
        let act4 =
            |i: usize, b: usize, o: usize| _mm256_set1_epi32((ac.add(((i0 + i) * blocks + b) * QK + o) as *const i32).read_unaligned());
        let mut acc = [_mm256_setzero_ps(); T];
        let (mut s8, mut k8) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for b in 0..blocks {
            if b % bpg == 0 {
                s8 = column8::<F16C>(sp, gpr, b / bpg);
                if B::ASYM {
                    k8 = column8::<F16C>(mp, gpr, b / bpg);
                } else if q4 {
                    k8 = _mm256_mul_ps(s8, _mm256_set1_ps(-8.0));
                }
            }
            let mut isum = [_mm256_setzero_si256(); T];
            if q4 {
                let mut s16 = [_mm256_setzero_si256(); T];
                for (k, &tk) in dwords8(wp.add(b * 16), stride).iter().enumerate() {
                    let lo = _mm256_and_si256(tk, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(tk), mask);
                    for (i, s) in s16.iter_mut().enumerate() {
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, act4(i, b, 4 * k)),
                            _mm256_maddubs_epi16(hi, act4(i, b, 16 + 4 * k)),
                        );
                        *s = _mm256_add_epi16(*s, p);
                    }
                }
                for (v, s) in isum.iter_mut().zip(s16) {
                    *v = _mm256_madd_epi16(s, ones);
                }
            } else {
                for half in 0..2 {
                    for (k, &tk) in dwords8(wp.add(b * 32 + half * 16), stride).iter().enumerate() {
                        let q = if B::ASYM {
                            _mm256_xor_si256(tk, _mm256_set1_epi8(-128))
                        } else {
                            tk
                        };
                        let qa = _mm256_sign_epi8(q, q);
                        for (i, v) in isum.iter_mut().enumerate() {
                            let p = _mm256_maddubs_epi16(qa, _mm256_sign_epi8(act4(i, b, half * 16 + 4 * k), q));
                            *v = _mm256_add_epi32(*v, _mm256_madd_epi16(p, ones));
                        }
                    }
                }
                if B::ASYM {
                    for (i, v) in isum.iter_mut().enumerate() {
                        *v = _mm256_add_epi32(*v, _mm256_set1_epi32(*asum.add((i0 + i) * a.bs + b) << 7));
                    }
                }
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let km = (i0 + i) * a.bs + b;
                let c = _mm256_mul_ps(s8, _mm256_broadcast_ss(&*ad.add(km)));
                *acc = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(isum[i]), *acc);
                if q4 || B::ASYM {
                    *acc = _mm256_fmadd_ps(k8, _mm256_broadcast_ss(&*ads.add(km)), *acc);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(y.as_mut_ptr().add((i0 + i) * n_rows + r0), *acc);
        }
    }
}

/// 16 bytes of each of 8 rows (`p + j·stride`, `j < 8`) transposed by
/// dwords: lane `j` of vector `k` holds bytes `4k..4k+4` of row `j`. Rows
/// `j` and `j + 4` share a load (the two halves), then a 4×4 dword
/// transpose in each half (unpacks by 32 and 64 bits).
///
/// # Safety
/// The 8 × 16 bytes are readable; AVX2 available.
#[inline(always)]
unsafe fn dwords8(p: *const u8, stride: usize) -> [__m256i; 4] {
    // SAFETY: reads per the contract; register ops otherwise.
    unsafe {
        let row = |j: usize| p.add(j * stride) as *const __m128i;
        let y0 = _mm256_loadu2_m128i(row(4), row(0));
        let y1 = _mm256_loadu2_m128i(row(5), row(1));
        let y2 = _mm256_loadu2_m128i(row(6), row(2));
        let y3 = _mm256_loadu2_m128i(row(7), row(3));
        let (l01, l23) = (_mm256_unpacklo_epi32(y0, y1), _mm256_unpacklo_epi32(y2, y3));
        let (h01, h23) = (_mm256_unpackhi_epi32(y0, y1), _mm256_unpackhi_epi32(y2, y3));
        [
            _mm256_unpacklo_epi64(l01, l23),
            _mm256_unpackhi_epi64(l01, l23),
            _mm256_unpacklo_epi64(h01, h23),
            _mm256_unpackhi_epi64(h01, h23),
        ]
    }
}

/// `p[j·gpr + g]` for `j < 8` (one group's scale, or min, of 8 rows) as 8
/// f32 lanes.
///
/// # Safety
/// Those 8 entries are readable; F16C available when `F16C`.
#[inline(always)]
unsafe fn column8<const F16C: bool>(p: *const half::f16, gpr: usize, g: usize) -> __m256 {
    // SAFETY: entries j·gpr + g, j < 8, are readable (contract); the rest
    // are register ops (F16C per contract). Inserted into a register, not
    // stored to a local array and reloaded as one vector (8 small stores
    // then a wide load defeat store-to-load forwarding: a stall per group).
    unsafe {
        let h = |j: usize| (*p.add(j * gpr + g)).to_bits() as i16;
        if F16C {
            _mm256_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7)))
        } else {
            let f = |j: usize| f16_to_f32(h(j) as u16);
            _mm256_setr_ps(f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7))
        }
    }
}

/// Q4 row `r` against tokens `i0..i0+T`, two blocks per step: 32 bytes of
/// nibbles hold blocks `b, b+1`; their low nibbles (elements 0..16 of
/// both) and high nibbles (16..32) meet the activations' pair layout, so
/// one `vpmaddubsw` per nibble half and one `vpmaddwd` give 8 i32 lanes,
/// 0..4 for block `b` and 4..8 for block `b+1`, scaled by
/// `[c_b ×4, c_b+1 ×4]`. The row goes in groups of 8 blocks: their scales
/// are converted at once, `c = s·d` is one multiply per token, and each
/// pair's `[c_b ×4, c_b+1 ×4]` is one in-lane permute of it (registers
/// only: no per-row scratch, which dominated short rows). Sym's `−8·Σa` and
/// asym's `m·Σa` terms are `k_b · dsum_b` (`k = −8·s` or `m`), one FMA per
/// group into the first accumulator. Two accumulators alternate pairs. The operations for one token do
/// not depend on `T`.
///
/// # Safety
/// As [`int_row`], for a Q4 scheme.
#[inline(always)]
unsafe fn q4_row<B: WBlock, const F16C: bool, const T: usize>(
    w: &TensorView<'_>,
    scales: &[half::f16],
    r: usize,
    a: &Q8Acts<'_>,
    i0: usize,
) -> [f32; T] {
    let gpr = w.layout.groups_per_row as usize;
    let bpg = w.layout.group_len as usize / QK;
    let blocks = a.blocks;
    let np = blocks.div_ceil(2);
    // SAFETY: as in `int_row`; in addition the pair layout of token i holds
    // np·64 bytes, and a weight load of 32 bytes at block b is only made
    // when b + 1 < blocks (the last odd block loads 16 bytes). Activation
    // meta is read 8 entries from b0 (a multiple of 8) < blocks ≤ bs, and
    // bs is a multiple of 8.
    unsafe {
        let wp = w.codes.as_ptr().add(r * w.layout.row_stride as usize);
        let sp = scales.as_ptr().add(r * gpr);
        let mp = w.mins.as_ptr().add(if B::ASYM { r * gpr } else { 0 });
        let (ap, ad, ads) = (a.pairs.as_ptr(), a.scales.as_ptr(), a.dsums.as_ptr());
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        // In-lane picks: [x0 ×4 | x1 ×4] and [x2 ×4 | x3 ×4] of a vector
        // whose two halves both hold x0..x4.
        let pick = [_mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3)];
        let mut acc0 = [_mm256_setzero_ps(); T];
        let mut acc1 = [_mm256_setzero_ps(); T];
        let mut b0 = 0;
        while b0 < blocks {
            let nb = (blocks - b0).min(8);
            // The weight codes `PF` bytes ahead (two cache lines per group).
            _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(b0 * 16 + PF) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(b0 * 16 + PF + 64) as *const i8);
            // Lanes past the row are zeros (`group8`), so the padded
            // activation meta entries (zeros) never meet an inf scale.
            let s8 = group8::<F16C>(sp, b0, nb, bpg);
            let k8 = if B::ASYM {
                group8::<F16C>(mp, b0, nb, bpg)
            } else {
                _mm256_mul_ps(s8, _mm256_set1_ps(-8.0))
            };
            // Per token: c for blocks 0..4 of the group in both halves, and
            // for blocks 4..8.
            let mut clo = [_mm256_setzero_ps(); T];
            let mut chi = [_mm256_setzero_ps(); T];
            for k in 0..T {
                let km = (i0 + k) * a.bs + b0;
                let c8 = _mm256_mul_ps(s8, _mm256_loadu_ps(ad.add(km)));
                acc0[k] = _mm256_fmadd_ps(k8, _mm256_loadu_ps(ads.add(km)), acc0[k]);
                clo[k] = _mm256_permute2f128_ps::<0x00>(c8, c8);
                chi[k] = _mm256_permute2f128_ps::<0x11>(c8, c8);
            }
            // Pair q of the group (blocks b0+2q, b0+2q+1). A macro, not a
            // closure: closures do not inherit the enclosing
            // `target_feature`, and their intrinsics would not inline.
            macro_rules! pair {
                ($q:expr, $wv:expr, $acc:expr) => {{
                    let (q, wv): (usize, __m256i) = ($q, $wv);
                    let lo = _mm256_and_si256(wv, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(wv), mask);
                    for k in 0..T {
                        let pp = ap.add(((i0 + k) * np + b0 / 2 + q) * 2 * QK);
                        let s16 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, _mm256_loadu_si256(pp as *const __m256i)),
                            _mm256_maddubs_epi16(hi, _mm256_loadu_si256(pp.add(QK) as *const __m256i)),
                        );
                        let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones));
                        let c = _mm256_permutevar_ps(if q < 2 { clo[k] } else { chi[k] }, pick[q % 2]);
                        $acc[k] = _mm256_fmadd_ps(c, lanes, $acc[k]);
                    }
                }};
            }
            macro_rules! load {
                ($q:expr) => {
                    _mm256_loadu_si256(wp.add((b0 + 2 * $q) * 16) as *const __m256i)
                };
            }
            if nb == 8 {
                pair!(0, load!(0), acc0);
                pair!(1, load!(1), acc1);
                pair!(2, load!(2), acc0);
                pair!(3, load!(3), acc1);
            } else {
                // The row's last group: whole pairs, then a last odd block
                // alone (its pair partner is zeros).
                let mut q = 0;
                while 2 * q + 2 <= nb {
                    if q % 2 == 0 {
                        pair!(q, load!(q), acc0);
                    } else {
                        pair!(q, load!(q), acc1);
                    }
                    q += 1;
                }
                if 2 * q < nb {
                    let wv = _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(wp.add((b0 + 2 * q) * 16) as *const __m128i));
                    if q % 2 == 0 {
                        pair!(q, wv, acc0);
                    } else {
                        pair!(q, wv, acc1);
                    }
                }
            }
            b0 += 8;
        }
        let mut out = [0.0f32; T];
        for k in 0..T {
            out[k] = hsum(_mm256_add_ps(acc0[k], acc1[k]));
        }
        out
    }
}
