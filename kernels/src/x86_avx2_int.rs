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
//! token, a horizontal sum per row, plus the asym `m·dsum` terms summed in
//! a scalar accumulator in block order (see [`crate::scalar_int`]).
use crate::act_q8::{block_scale, Q8Acts, QK};
use crate::support::f16_to_f32;
use crate::x86_avx2::hsum;
use core::arch::x86_64::*;
use core::ops::Range;
use edgeq_core::tensor::Scales;
use edgeq_core::{Scheme, TensorView};

/// Tokens per pass over a row.
const MAX_T: usize = 4;

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

/// Blocks whose scales are expanded at once (stack arrays of this size).
const CHUNK: usize = 64;

/// Per-call stack scratch of the row kernels (allocated once per call, not
/// per row: initialising it per row costs more than a short row's work).
struct RowScratch {
    /// Weight scale per block of the chunk (8 zeros of padding past it).
    s: [f32; CHUNK + 8],
    /// Min per block (asym), or −8·s (Q4 sym); padded like `s`.
    m: [f32; CHUNK + 8],
    /// Per token `c_b = s·d_b`: one per block (`int_row`), or
    /// `[c_b ×4, c_b+1 ×4]` per pair (`q4_row`).
    c: [[f32; 4 * (CHUNK + 8)]; MAX_T],
}

#[inline(always)]
unsafe fn int_matmul<B: WBlock, const F16C: bool>(y: &mut [f32], w: &TensorView<'_>, a: &Q8Acts<'_>, rows: Range<usize>) {
    let n_rows = w.rows();
    let Scales::F16(scales) = w.scales else { return };
    let mut sc = RowScratch {
        s: [0.0; CHUNK + 8],
        m: [0.0; CHUNK + 8],
        c: [[0.0; 4 * (CHUNK + 8)]; MAX_T],
    };
    let sc = &mut sc;
    for r in rows {
        let mut i0 = 0;
        while i0 < a.t {
            let n = (a.t - i0).min(MAX_T);
            let mut out = [0.0f32; MAX_T];
            // SAFETY: `q8_args_ok` gives r < rows, complete code/scale/min
            // regions (`simd_view_ok`) and tokens i0..i0+n ≤ t.
            unsafe {
                if B::BYTES == 16 {
                    match n {
                        1 => out[..1].copy_from_slice(&q4_row::<B, F16C, 1>(w, scales, r, a, i0, sc)),
                        2 => out[..2].copy_from_slice(&q4_row::<B, F16C, 2>(w, scales, r, a, i0, sc)),
                        3 => out[..3].copy_from_slice(&q4_row::<B, F16C, 3>(w, scales, r, a, i0, sc)),
                        _ => out.copy_from_slice(&q4_row::<B, F16C, 4>(w, scales, r, a, i0, sc)),
                    }
                } else {
                    match n {
                        1 => out[..1].copy_from_slice(&int_row::<B, F16C, 1>(w, scales, r, a, i0, sc)),
                        2 => out[..2].copy_from_slice(&int_row::<B, F16C, 2>(w, scales, r, a, i0, sc)),
                        3 => out[..3].copy_from_slice(&int_row::<B, F16C, 3>(w, scales, r, a, i0, sc)),
                        _ => out.copy_from_slice(&int_row::<B, F16C, 4>(w, scales, r, a, i0, sc)),
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

/// f16 → f32 of `n` consecutive values (exact either way; at most `dst.len()`).
///
/// # Safety
/// `src` valid for `n` reads; F16C available when `F16C`.
#[inline(always)]
unsafe fn widen<const F16C: bool>(src: *const half::f16, n: usize, dst: &mut [f32]) {
    let n = n.min(dst.len());
    let mut j = 0;
    if F16C {
        while j + 8 <= n {
            // SAFETY: 8 readable halves at `src + j` (j + 8 ≤ n); the
            // store stays inside `dst` (j + 8 ≤ n ≤ dst.len()).
            unsafe {
                let h = _mm_loadu_si128(src.add(j) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(j), _mm256_cvtph_ps(h));
            }
            j += 8;
        }
    }
    while j < n {
        // SAFETY: j < n readable halves.
        dst[j] = f16_to_f32(unsafe { (*src.add(j)).to_bits() });
        j += 1;
    }
}

/// Weight scale (and, with `mins`, min) of each block `b0..b0+nb` of a row
/// into `s[..nb]` (`m[..nb]`): vector-converted when groups are single
/// blocks, one per group otherwise.
///
/// # Safety
/// `sp` (and `mins`) hold the row's `⌈(b0+nb)/bpg⌉` groups; `nb ≤ s.len(),
/// m.len()`; F16C available when `F16C`.
#[inline(always)]
unsafe fn chunk_scales<const F16C: bool>(
    sp: *const half::f16,
    mins: Option<*const half::f16>,
    b0: usize,
    nb: usize,
    bpg: usize,
    s: &mut [f32],
    m: &mut [f32],
) {
    // SAFETY: reads groups (b0 + j) / bpg < ⌈(b0+nb)/bpg⌉ (contract).
    unsafe {
        if bpg == 1 {
            widen::<F16C>(sp.add(b0), nb, s);
            if let Some(mp) = mins {
                widen::<F16C>(mp.add(b0), nb, m);
            }
        } else {
            // One conversion per group, filled over its blocks (a per-channel
            // row is one group: converting per block cost 1.6x the product).
            let n = nb.min(s.len()).min(m.len());
            let mut j = 0;
            while j < n {
                let g = (b0 + j) / bpg;
                let end = ((g + 1) * bpg - b0).min(n);
                s[j..end].fill(f16_to_f32((*sp.add(g)).to_bits()));
                if let Some(mp) = mins {
                    m[j..end].fill(f16_to_f32((*mp.add(g)).to_bits()));
                }
                j = end;
            }
        }
    }
}

/// Row `r` against tokens `i0..i0+T`: per chunk of blocks, the weight
/// scales `s` (and mins `m`) are expanded per block, `c_b = s·d_b` and the
/// `m·dsum_b` terms are vectorized per token, then every block's integer
/// lanes are accumulated as `acc = fma(c_b, lanes, acc)` into two
/// accumulators (even and odd blocks of the chunk) to hide FMA latency.
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
    sc: &mut RowScratch,
) -> [f32; T] {
    let gpr = w.layout.groups_per_row as usize;
    let bpg = w.layout.group_len as usize / QK;
    let blocks = a.blocks;
    let RowScratch { s, m, c } = sc;
    // SAFETY: row `r`'s codes start at r·stride and hold gpr·bpg ≥ blocks
    // blocks; scales/mins hold gpr entries per row (groups g < gpr are
    // read: g = b / bpg for b < blocks); activation blocks (i, b) for
    // i < t, b < blocks lie inside the carved slices.
    unsafe {
        let wp = w.codes.as_ptr().add(r * w.layout.row_stride as usize);
        let sp = scales.as_ptr().add(r * gpr);
        let mp = w.mins.as_ptr().add(if B::ASYM { r * gpr } else { 0 });
        let (ac, ad, asum, ads) = (a.codes.as_ptr(), a.scales.as_ptr(), a.sums.as_ptr(), a.dsums.as_ptr());
        let mut acc0 = [_mm256_setzero_ps(); T];
        let mut acc1 = [_mm256_setzero_ps(); T];
        let mut macc = [_mm256_setzero_ps(); T];
        let mut b0 = 0;
        while b0 < blocks {
            let nb = (blocks - b0).min(CHUNK);
            // Per-block weight scales (and mins) of this chunk.
            chunk_scales::<F16C>(sp, if B::ASYM { Some(mp) } else { None }, b0, nb, bpg, s, m);
            s[nb..nb + 8].fill(0.0);
            m[nb..nb + 8].fill(0.0);
            for k in 0..T {
                // Meta entries are padded to a multiple of 8 (zeros).
                let km = (i0 + k) * a.bs + b0;
                let mut j = 0;
                while j < nb {
                    let cv = _mm256_mul_ps(_mm256_loadu_ps(s.as_ptr().add(j)), _mm256_loadu_ps(ad.add(km + j)));
                    _mm256_storeu_ps(c[k].as_mut_ptr().add(j), cv);
                    if B::ASYM {
                        macc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(m.as_ptr().add(j)), _mm256_loadu_ps(ads.add(km + j)), macc[k]);
                    }
                    j += 8;
                }
            }
            // Integer dot products, two blocks per step.
            let mut j = 0;
            while j + 2 <= nb {
                let b = b0 + j;
                let wv0 = B::load(wp.add(b * B::BYTES));
                let wv1 = B::load(wp.add((b + 1) * B::BYTES));
                for k in 0..T {
                    let (kb, km) = ((i0 + k) * blocks + b, (i0 + k) * a.bs + b);
                    let p0 = B::dot(wv0, _mm256_loadu_si256(ac.add(kb * QK) as *const __m256i), *asum.add(km));
                    let p1 = B::dot(wv1, _mm256_loadu_si256(ac.add((kb + 1) * QK) as *const __m256i), *asum.add(km + 1));
                    acc0[k] = _mm256_fmadd_ps(_mm256_broadcast_ss(&c[k][j]), _mm256_cvtepi32_ps(p0), acc0[k]);
                    acc1[k] = _mm256_fmadd_ps(_mm256_broadcast_ss(&c[k][j + 1]), _mm256_cvtepi32_ps(p1), acc1[k]);
                }
                j += 2;
            }
            if j < nb {
                let b = b0 + j;
                let wv0 = B::load(wp.add(b * B::BYTES));
                for k in 0..T {
                    let (kb, km) = ((i0 + k) * blocks + b, (i0 + k) * a.bs + b);
                    let p0 = B::dot(wv0, _mm256_loadu_si256(ac.add(kb * QK) as *const __m256i), *asum.add(km));
                    acc0[k] = _mm256_fmadd_ps(_mm256_broadcast_ss(&c[k][j]), _mm256_cvtepi32_ps(p0), acc0[k]);
                }
            }
            b0 += nb;
        }
        let mut out = [0.0f32; T];
        for k in 0..T {
            out[k] = hsum(_mm256_add_ps(acc0[k], acc1[k]));
            if B::ASYM {
                out[k] += hsum(macc[k]);
            }
        }
        out
    }
}

/// Q4 row `r` against tokens `i0..i0+T`, two blocks per step: 32 bytes of
/// nibbles hold blocks `b, b+1`; their low nibbles (elements 0..16 of
/// both) and high nibbles (16..32) meet the activations' pair layout, so
/// one `vpmaddubsw` per nibble half and one `vpmaddwd` give 8 i32 lanes,
/// 0..4 for block `b` and 4..8 for block `b+1`, scaled by
/// `[c_b ×4, c_b+1 ×4]`. Sym's `−8·Σa` and asym's `m·Σa` terms are
/// `k_b · dsum_b` (`k = −8·s` or `m`), accumulated 8 blocks per FMA. Two
/// accumulators alternate pairs. The operations for one token do not depend
/// on `T`.
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
    sc: &mut RowScratch,
) -> [f32; T] {
    let gpr = w.layout.groups_per_row as usize;
    let bpg = w.layout.group_len as usize / QK;
    let blocks = a.blocks;
    let np = blocks.div_ceil(2);
    let RowScratch { s, m: kk, c: c2 } = sc;
    // SAFETY: as in `int_row`; in addition the pair layout of token i holds
    // np·64 bytes, and a weight load of 32 bytes at block b is only made
    // when b + 1 < blocks (the last odd block loads 16 bytes).
    unsafe {
        let wp = w.codes.as_ptr().add(r * w.layout.row_stride as usize);
        let sp = scales.as_ptr().add(r * gpr);
        let mp = w.mins.as_ptr().add(if B::ASYM { r * gpr } else { 0 });
        let (ap, ad, ads) = (a.pairs.as_ptr(), a.scales.as_ptr(), a.dsums.as_ptr());
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let spread = [
            _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
            _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
            _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5),
            _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7),
        ];
        let mut acc0 = [_mm256_setzero_ps(); T];
        let mut acc1 = [_mm256_setzero_ps(); T];
        let mut kacc = [_mm256_setzero_ps(); T];
        let mut b0 = 0;
        while b0 < blocks {
            let nb = (blocks - b0).min(CHUNK);
            {
                chunk_scales::<F16C>(sp, if B::ASYM { Some(mp) } else { None }, b0, nb, bpg, s, kk);
                if !B::ASYM {
                    for j in 0..nb {
                        kk[j] = -8.0 * s[j];
                    }
                }
                s[nb..nb + 8].fill(0.0);
                kk[nb..nb + 8].fill(0.0);
            }
            for k in 0..T {
                // Meta entries are padded to a multiple of 8 (zeros).
                let km = (i0 + k) * a.bs + b0;
                let mut j = 0;
                while j < nb {
                    let (dv, dsv) = (_mm256_loadu_ps(ad.add(km + j)), _mm256_loadu_ps(ads.add(km + j)));
                    let cv = _mm256_mul_ps(_mm256_loadu_ps(s.as_ptr().add(j)), dv);
                    for (q, idx) in spread.iter().enumerate() {
                        _mm256_storeu_ps(c2[k].as_mut_ptr().add(4 * j + 8 * q), _mm256_permutevar8x32_ps(cv, *idx));
                    }
                    kacc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(kk.as_ptr().add(j)), dsv, kacc[k]);
                    j += 8;
                }
            }
            // One pair: 32 bytes of nibbles (16 for a last odd block). A
            // macro, not a closure: closures do not inherit the enclosing
            // `target_feature`, and their intrinsics would not inline.
            macro_rules! pair {
                ($j:expr, $wv:expr, $acc:expr) => {{
                    let (j, wv): (usize, __m256i) = ($j, $wv);
                    let lo = _mm256_and_si256(wv, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(wv), mask);
                    for k in 0..T {
                        let pp = ap.add(((i0 + k) * np + (b0 + j) / 2) * 2 * QK);
                        let s16 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, _mm256_loadu_si256(pp as *const __m256i)),
                            _mm256_maddubs_epi16(hi, _mm256_loadu_si256(pp.add(QK) as *const __m256i)),
                        );
                        let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones));
                        $acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(c2[k].as_ptr().add(4 * j)), lanes, $acc[k]);
                    }
                }};
            }
            // Pairs alternate between the accumulators: pairs 0, 2, ... of
            // the chunk into acc0, 1, 3, ... into acc1.
            let full = if b0 + nb == blocks { nb / 2 * 2 } else { nb };
            let mut j = 0;
            while j + 4 <= full {
                let w0 = _mm256_loadu_si256(wp.add((b0 + j) * 16) as *const __m256i);
                let w1 = _mm256_loadu_si256(wp.add((b0 + j + 2) * 16) as *const __m256i);
                pair!(j, w0, acc0);
                pair!(j + 2, w1, acc1);
                j += 4;
            }
            if j + 2 <= full {
                pair!(j, _mm256_loadu_si256(wp.add((b0 + j) * 16) as *const __m256i), acc0);
                j += 2;
            }
            if j < nb {
                // The row's last block, alone (its pair partner is zeros).
                let wv = _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(wp.add((b0 + j) * 16) as *const __m128i));
                if (j / 2) % 2 == 0 {
                    pair!(j, wv, acc0);
                } else {
                    pair!(j, wv, acc1);
                }
            }
            b0 += nb;
        }
        let mut out = [0.0f32; T];
        for k in 0..T {
            out[k] = hsum(_mm256_add_ps(acc0[k], acc1[k])) + hsum(kacc[k]);
        }
        out
    }
}
