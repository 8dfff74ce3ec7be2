//! x86_64 AVX2 + FMA kernels (F16 weights also need F16C).
//!
//! Per 32-element block: the codes are widened to 4×8 i32 lanes, converted
//! to f32 and scaled exactly as the reference does (`(q−8)·s` or `q·s` with
//! one `vmulps`, then one `vaddps` of the min for asym: no FMA there, so the
//! dequantized weights are bit-identical to `dequantize_row`). The block is
//! then dotted with up to four activation vectors at once (prefill batches
//! reuse each dequantized block): per token `p = w0·x0`, `p = fma(w1, x1, p)`,
//! `p = fma(w2, x2, p)`, `p = fma(w3, x3, p)`, `acc += p`, and a horizontal
//! sum at the end of the row. The operations for a token do not depend on
//! how many tokens share the pass. The last block of a row with `cols % 32`
//! valid elements is dotted against a zero-padded copy of `x` (never read
//! past `cols`).
use crate::support::f16_to_f32;
use core::arch::x86_64::*;
use core::ops::Range;
use edgeq_core::{Scheme, TensorView};

const BLOCK: usize = 32;
/// Tokens per pass over a row.
const MAX_T: usize = 4;

/// CPUID/XGETBV detection of (AVX2, FMA, F16C), including the OS's saving
/// of the YMM state (without it AVX instructions fault).
#[cfg(not(feature = "std"))]
pub(crate) fn cpuid_features() -> (bool, bool, bool) {
    // SAFETY: CPUID leaves 0, 1 and 7 exist on every x86_64 CPU (leaf 7 is
    // only read when leaf 0 reports it).
    #[allow(unused_unsafe)]
    let (max_leaf, l1) = unsafe { (__cpuid(0).eax, __cpuid(1)) };
    let osxsave = l1.ecx & (1 << 27) != 0;
    let avx = l1.ecx & (1 << 28) != 0;
    let fma = l1.ecx & (1 << 12) != 0;
    let f16c = l1.ecx & (1 << 29) != 0;
    if !(osxsave && avx) || max_leaf < 7 {
        return (false, false, false);
    }
    let xcr0: u32;
    // SAFETY: XGETBV with ECX = 0 is valid when CPUID reports OSXSAVE
    // (checked above); it only reads XCR0 into EDX:EAX.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") xcr0, out("edx") _,
            options(nomem, nostack, preserves_flags));
    }
    if xcr0 & 0b110 != 0b110 {
        return (false, false, false);
    }
    // SAFETY: leaf 7 exists (max_leaf ≥ 7 checked above).
    #[allow(unused_unsafe)]
    let l7 = unsafe { __cpuid_count(7, 0) };
    let avx2 = l7.ebx & (1 << 5) != 0;
    (avx2, fma, f16c)
}

/// # Safety
/// The CPU supports AVX2 and FMA, and F16C when `f16c`; `lib::matmul`'s
/// checks (`args_ok`, `simd_view_ok`) passed for these arguments.
pub(crate) unsafe fn matmul(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: Range<usize>, scratch: &mut [f32], f16c: bool) {
    // SAFETY (all arms): the features each entry point enables are present
    // (this function's contract) and the arguments were validated.
    match w.scheme() {
        Scheme::Q4Sym => unsafe { q4_sym(y, w, x, t, rows) },
        Scheme::Q4Asym => unsafe { q4_asym(y, w, x, t, rows) },
        Scheme::Q8Sym => unsafe { q8_sym(y, w, x, t, rows) },
        Scheme::Q8Asym => unsafe { q8_asym(y, w, x, t, rows) },
        Scheme::F32 => unsafe { dense_f32(y, w, x, t, rows) },
        Scheme::F16 if f16c => unsafe { dense_f16(y, w, x, t, rows) },
        // FP8 whose scale is constant over every 32-element block.
        s if s.is_fp8() && f16c && (w.spec.granularity != edgeq_core::Granularity::Block || w.spec.group % BLOCK as u32 == 0) => unsafe {
            fp8_matmul(y, w, x, t, rows)
        },
        _ => crate::scalar::matmul(y, w, x, t, rows, scratch),
    }
}

// Entry points: each carries the target features; the generic bodies below
// are `#[inline(always)]` so they are compiled with them.
macro_rules! entry {
    ($name:ident, $body:ident, $ty:ty, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: Range<usize>) {
            // SAFETY: forwarded contract of `matmul`.
            unsafe { $body::<$ty>(y, w, x, t, rows) }
        }
    };
}
entry!(q4_sym, int_matmul, Q4Sym, "avx2,fma");
entry!(q4_asym, int_matmul, Q4Asym, "avx2,fma");
entry!(q8_sym, int_matmul, Q8Sym, "avx2,fma");
entry!(q8_asym, int_matmul, Q8Asym, "avx2,fma");
entry!(dense_f32, dense_matmul, F32Rows, "avx2,fma");
entry!(dense_f16, dense_matmul, F16Rows, "avx2,fma,f16c");

/// One 32-element block of integer codes → 4×8 f32 weights.
trait IntBlock {
    /// Code bytes per block.
    const BYTES: usize;
    const ASYM: bool;
    /// # Safety
    /// `p` is valid for `BYTES` reads; AVX2 is available.
    unsafe fn dequant(p: *const u8, s: __m256, m: __m256) -> [__m256; 4];
}

struct Q4Sym;
struct Q4Asym;
struct Q8Sym;
struct Q8Asym;

/// Low and high nibbles of a Q4 block: elements 0..16 and 16..32.
#[inline(always)]
unsafe fn q4_nibbles(p: *const u8) -> (__m128i, __m128i) {
    // SAFETY: `p` is valid for 16 bytes (caller); unaligned load.
    unsafe {
        let v = _mm_loadu_si128(p as *const __m128i);
        let mask = _mm_set1_epi8(0x0f);
        (_mm_and_si128(v, mask), _mm_and_si128(_mm_srli_epi16::<4>(v), mask))
    }
}

impl IntBlock for Q4Sym {
    const BYTES: usize = 16;
    const ASYM: bool = false;
    #[inline(always)]
    unsafe fn dequant(p: *const u8, s: __m256, _m: __m256) -> [__m256; 4] {
        // SAFETY: 16 readable bytes at `p` (caller); register-only AVX2 ops.
        unsafe {
            let (lo, hi) = q4_nibbles(p);
            // q − 8 in i8 is exact; `(q−8) as f32 · s` is the reference product.
            let eight = _mm_set1_epi8(8);
            let (lo, hi) = (_mm_sub_epi8(lo, eight), _mm_sub_epi8(hi, eight));
            // (Local macros, not closures: closures do not inherit the
            // caller's target features and their intrinsics would not inline.)
            macro_rules! f {
                ($v:expr) => {
                    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32($v)), s)
                };
            }
            [f!(lo), f!(_mm_unpackhi_epi64(lo, lo)), f!(hi), f!(_mm_unpackhi_epi64(hi, hi))]
        }
    }
}

impl IntBlock for Q4Asym {
    const BYTES: usize = 16;
    const ASYM: bool = true;
    #[inline(always)]
    unsafe fn dequant(p: *const u8, s: __m256, m: __m256) -> [__m256; 4] {
        // SAFETY: 16 readable bytes at `p` (caller); register-only AVX2 ops.
        unsafe {
            let (lo, hi) = q4_nibbles(p);
            // s·q, rounded, then + min, rounded: two ops as the reference.
            macro_rules! f {
                ($v:expr) => {
                    _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32($v)), s), m)
                };
            }
            [f!(lo), f!(_mm_unpackhi_epi64(lo, lo)), f!(hi), f!(_mm_unpackhi_epi64(hi, hi))]
        }
    }
}

impl IntBlock for Q8Sym {
    const BYTES: usize = 32;
    const ASYM: bool = false;
    #[inline(always)]
    unsafe fn dequant(p: *const u8, s: __m256, _m: __m256) -> [__m256; 4] {
        // SAFETY: 32 readable bytes at `p` (caller), read as 4×8 bytes.
        unsafe {
            macro_rules! f {
                ($k:expr) => {
                    _mm256_mul_ps(
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8 * $k) as *const __m128i))),
                        s,
                    )
                };
            }
            [f!(0), f!(1), f!(2), f!(3)]
        }
    }
}

impl IntBlock for Q8Asym {
    const BYTES: usize = 32;
    const ASYM: bool = true;
    #[inline(always)]
    unsafe fn dequant(p: *const u8, s: __m256, m: __m256) -> [__m256; 4] {
        // SAFETY: 32 readable bytes at `p` (caller), read as 4×8 bytes.
        unsafe {
            macro_rules! f {
                ($k:expr) => {
                    _mm256_add_ps(
                        _mm256_mul_ps(
                            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8 * $k) as *const __m128i))),
                            s,
                        ),
                        m,
                    )
                };
            }
            [f!(0), f!(1), f!(2), f!(3)]
        }
    }
}

/// `w0·x0 + w1·x1 + w2·x2 + w3·x3` lane-wise (one multiply, three FMAs).
///
/// # Safety
/// `xp` is valid for 32 f32 reads; AVX2 + FMA available.
#[inline(always)]
unsafe fn block_dot(wv: &[__m256; 4], xp: *const f32) -> __m256 {
    // SAFETY: 32 readable floats at `xp` (caller); unaligned loads.
    unsafe {
        let mut p = _mm256_mul_ps(wv[0], _mm256_loadu_ps(xp));
        p = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(xp.add(8)), p);
        p = _mm256_fmadd_ps(wv[2], _mm256_loadu_ps(xp.add(16)), p);
        _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(xp.add(24)), p)
    }
}

/// Horizontal sum of 8 lanes: (lo + hi) halves, then pairs.
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register-only AVX ops (AVX2 available per caller).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
}

/// Runs `$row::<_, T>` over the tokens of row `$r` in passes of at most
/// [`MAX_T`] and stores the results (`$x` is the full activation slice).
macro_rules! token_passes {
    ($y:ident, $x:ident, $t:ident, $n_rows:ident, $cols:ident, $r:ident, |$xs:ident, $T:ident| $call:expr) => {{
        let mut i0 = 0;
        while i0 < $t {
            let n = ($t - i0).min(MAX_T);
            let $xs = &$x[i0 * $cols..];
            let mut out = [0.0f32; MAX_T];
            match n {
                1 => {
                    const $T: usize = 1;
                    out[..1].copy_from_slice(&$call)
                }
                2 => {
                    const $T: usize = 2;
                    out[..2].copy_from_slice(&$call)
                }
                3 => {
                    const $T: usize = 3;
                    out[..3].copy_from_slice(&$call)
                }
                _ => {
                    const $T: usize = 4;
                    out.copy_from_slice(&$call)
                }
            }
            for (k, &o) in out[..n].iter().enumerate() {
                $y[(i0 + k) * $n_rows + $r] = o;
            }
            i0 += n;
        }
    }};
}

/// # Safety
/// AVX2 + FMA available; `w` passed `simd_view_ok` and the slices `args_ok`.
#[inline(always)]
unsafe fn int_matmul<B: IntBlock>(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: Range<usize>) {
    let (n_rows, cols) = (w.rows(), w.cols());
    let g = w.layout.group_len as usize;
    for r in rows {
        let (codes, scales, mins) = (w.row_codes(r), w.row_scales_f16(r), w.row_mins(r));
        // SAFETY: `simd_view_ok` gives ⌈cols/32⌉ blocks of codes and one
        // scale (and min) per group, g a positive multiple of 32; `xs` holds
        // the remaining tokens, at least T·cols floats (`args_ok`).
        token_passes!(y, x, t, n_rows, cols, r, |xs, T| unsafe {
            int_row::<B, T>(codes, scales, mins, xs, cols, g)
        });
    }
}

/// Dot products of one row's `T` tokens.
///
/// # Safety
/// `codes` holds at least `⌈cols/32⌉·B::BYTES` bytes, `scales` (and `mins`
/// for asym) one entry per group, `x` at least `T·cols` floats, `g` is a
/// positive multiple of 32; AVX2 + FMA available.
#[inline(always)]
unsafe fn int_row<B: IntBlock, const T: usize>(
    codes: &[u8],
    scales: &[half::f16],
    mins: &[half::f16],
    x: &[f32],
    cols: usize,
    g: usize,
) -> [f32; T] {
    let bpg = g / BLOCK;
    let full = cols / BLOCK;
    let nblk = cols.div_ceil(BLOCK);
    debug_assert!(codes.len() >= nblk * B::BYTES && x.len() >= T * cols);
    let (cp, xp) = (codes.as_ptr(), x.as_ptr());
    // SAFETY: register ops, and loads at block offsets b < ⌈cols/32⌉ of
    // `codes` and `x` offsets i·cols + b·32 + 32 ≤ T·cols for full blocks
    // b < cols/32 (contract); the partial block reads a local copy.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); T];
        // A macro, not a closure (closures do not inherit target features).
        macro_rules! params {
            ($gi:expr) => {{
                let gi: usize = $gi;
                let s = _mm256_set1_ps(f16_to_f32(scales[gi].to_bits()));
                let m = if B::ASYM {
                    _mm256_set1_ps(f16_to_f32(mins[gi].to_bits()))
                } else {
                    _mm256_setzero_ps()
                };
                (s, m)
            }};
        }
        let mut b = 0;
        let mut gi = 0;
        while b < full {
            let (s, m) = params!(gi);
            let end = (b + bpg).min(full);
            while b < end {
                let wv = B::dequant(cp.add(b * B::BYTES), s, m);
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_add_ps(*a, block_dot(&wv, xp.add(i * cols + b * BLOCK)));
                }
                b += 1;
            }
            gi += 1;
        }
        if full < nblk {
            let (s, m) = params!(full / bpg);
            let wv = B::dequant(cp.add(full * B::BYTES), s, m);
            let e0 = full * BLOCK;
            for (i, a) in acc.iter_mut().enumerate() {
                let mut xb = [0.0f32; BLOCK];
                xb[..cols - e0].copy_from_slice(&x[i * cols + e0..i * cols + cols]);
                *a = _mm256_add_ps(*a, block_dot(&wv, xb.as_ptr()));
            }
        }
        let mut out = [0.0f32; T];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
        out
    }
}

/// Rows of plain float weights (F32, F16).
trait DenseRows {
    type E: Copy;
    const ZERO: Self::E;
    fn data<'a>(w: &TensorView<'a>) -> &'a [Self::E];
    /// # Safety
    /// `p` is valid for 32 element reads; the needed features are available.
    unsafe fn load(p: *const Self::E) -> [__m256; 4];
}

struct F32Rows;
struct F16Rows;

impl DenseRows for F32Rows {
    type E = f32;
    const ZERO: f32 = 0.0;
    fn data<'a>(w: &TensorView<'a>) -> &'a [f32] {
        w.as_f32()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [__m256; 4] {
        // SAFETY: 32 readable floats at `p` (caller).
        unsafe {
            [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ]
        }
    }
}

impl DenseRows for F16Rows {
    type E = half::f16;
    const ZERO: half::f16 = half::f16::ZERO;
    fn data<'a>(w: &TensorView<'a>) -> &'a [half::f16] {
        w.as_f16()
    }
    #[inline(always)]
    unsafe fn load(p: *const half::f16) -> [__m256; 4] {
        // SAFETY: 32 readable halves at `p` (caller); F16C available
        // (caller). VCVTPH2PS is exact (every f16 is an f32).
        unsafe {
            macro_rules! f {
                ($k:expr) => {
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(8 * $k) as *const __m128i))
                };
            }
            [f!(0), f!(1), f!(2), f!(3)]
        }
    }
}

/// # Safety
/// Features of `D` available; `w` passed `simd_view_ok`, slices `args_ok`.
#[inline(always)]
unsafe fn dense_matmul<D: DenseRows>(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: Range<usize>) {
    let (n_rows, cols) = (w.rows(), w.cols());
    let data = D::data(w);
    for r in rows {
        let wr = &data[r * cols..(r + 1) * cols];
        // SAFETY: `wr` is one row of `cols` elements, `xs` at least T·cols
        // floats (`args_ok`); features per this function's contract.
        token_passes!(y, x, t, n_rows, cols, r, |xs, T| unsafe { dense_row::<D, T>(wr, xs, cols) });
    }
}

/// FP8 (E4M3 / E5M2) rows through F16C, 16 codes per conversion: an FP8
/// code is the top of an f16 bit pattern. E5M2 is f16 with its low byte
/// cut (`c << 8` is the value itself); E4M3's 7 magnitude bits shifted left
/// by 7 land in f16's exponent and mantissa with a bias of 15 instead of 7,
/// so the f16 is the value times 2⁻⁸ (subnormals included: every E4M3 value
/// is exact in f16). Per 32 codes: two sign-extending widenings, two
/// shift/mask pairs, four `vcvtph2ps`; the products are summed unscaled
/// over each region of constant scale and multiplied by `scale · 2⁸` once
/// (per row for per-tensor / per-channel scales, per tile for 128×128
/// blocks). E4M3 has no infinity and one NaN magnitude (0x7F), which the
/// f16 trick would read as 480: a block holding it decodes to NaN (a
/// compare and a movemask per block).
///
/// # Safety
/// `w` is FP8 with regions complete, its scale constant over each 32-column
/// block; `x`/`y` as in [`matmul`]; AVX2, FMA and F16C available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fp8_matmul(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: Range<usize>) {
    let (n_rows, cols) = (w.rows(), w.cols());
    let e4m3 = w.scheme() == Scheme::Fp8E4M3;
    for r in rows {
        let codes = &w.row_codes(r)[..cols];
        // SAFETY: `codes` is one row of `cols` codes, `xs` at least T·cols
        // floats (`args_ok`); AVX2, FMA and F16C per this function's contract.
        token_passes!(y, x, t, n_rows, cols, r, |xs, T| unsafe {
            fp8_row::<T>(codes, e4m3, w, r, xs, cols)
        });
    }
}

/// 32 FP8 codes at `cp` → 4×8 f32: the value times 2⁻⁸ for E4M3, the value
/// for E5M2 (see [`fp8_matmul`]).
///
/// # Safety
/// 32 readable bytes at `cp`; AVX2 and F16C available.
#[inline(always)]
unsafe fn fp8_block(cp: *const u8, e4m3: bool) -> [__m256; 4] {
    // SAFETY: one unaligned 32-byte load (contract); register-only ops.
    unsafe {
        let c = _mm256_loadu_si256(cp as *const __m256i);
        if e4m3 {
            let mag = _mm256_and_si256(c, _mm256_set1_epi8(0x7F));
            if _mm256_movemask_epi8(_mm256_cmpeq_epi8(mag, _mm256_set1_epi8(0x7F))) != 0 {
                // A NaN weight makes every dot product with the block NaN
                // (NaN·x is NaN for every x, 0 and ∞ included), as in the
                // reference: no need to decode the rest.
                return [_mm256_set1_ps(f32::NAN); 4];
            }
        }
        // A macro, not a closure (closures may not inherit target features).
        macro_rules! half {
            ($h:expr) => {
                if e4m3 {
                    // sign-extended: the sign lands in bit 15 (and bit 14, cleared)
                    _mm256_and_si256(
                        _mm256_slli_epi16::<7>(_mm256_cvtepi8_epi16($h)),
                        _mm256_set1_epi16(0xBF80u16 as i16),
                    )
                } else {
                    _mm256_slli_epi16::<8>(_mm256_cvtepu8_epi16($h))
                }
            };
        }
        let (lo, hi) = (half!(_mm256_castsi256_si128(c)), half!(_mm256_extracti128_si256::<1>(c)));
        [
            _mm256_cvtph_ps(_mm256_castsi256_si128(lo)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(lo)),
            _mm256_cvtph_ps(_mm256_castsi256_si128(hi)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(hi)),
        ]
    }
}

/// # Safety
/// `codes.len() ≥ cols`, `x.len() ≥ T·cols`; AVX2, FMA and F16C available.
#[inline(always)]
unsafe fn fp8_row<const T: usize>(codes: &[u8], e4m3: bool, w: &TensorView<'_>, r: usize, x: &[f32], cols: usize) -> [f32; T] {
    let full = cols / BLOCK;
    // The decoded values are the weights' times 2⁻⁸ (E4M3) or 1 (E5M2).
    let pre = if e4m3 { 256.0 } else { 1.0 };
    // Columns per region of constant scale: a block-scaling tile, or the row.
    let tile = crate::support::fp8_tile(w).unwrap_or(usize::MAX);
    // SAFETY: full blocks read codes[b·32..+32] and x[i·cols + b·32..+32]
    // in bounds (contract); the tail reads zero-padded copies (code 0 is 0).
    unsafe {
        let (cp, xp) = (codes.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); T];
        let mut part = [_mm256_setzero_ps(); T];
        let mut tile_of = 0;
        // Adds the finished region's sums, scaled by the scale of column c0.
        macro_rules! flush {
            ($c0:expr) => {{
                let sv = _mm256_set1_ps(w.fp8_scale(r, $c0) * pre);
                for (a, p) in acc.iter_mut().zip(part.iter_mut()) {
                    *a = _mm256_fmadd_ps(*p, sv, *a);
                    *p = _mm256_setzero_ps();
                }
            }};
        }
        for b in 0..full {
            if (b * BLOCK) / tile != tile_of {
                flush!(tile_of * tile);
                tile_of = (b * BLOCK) / tile;
            }
            let wv = fp8_block(cp.add(b * BLOCK), e4m3);
            for (i, p) in part.iter_mut().enumerate() {
                *p = _mm256_add_ps(*p, block_dot(&wv, xp.add(i * cols + b * BLOCK)));
            }
        }
        let e0 = full * BLOCK;
        if e0 < cols {
            if e0 / tile != tile_of {
                flush!(tile_of * tile);
                tile_of = e0 / tile;
            }
            let mut cb = [0u8; BLOCK];
            cb[..cols - e0].copy_from_slice(&codes[e0..cols]);
            let wv = fp8_block(cb.as_ptr(), e4m3);
            for (i, p) in part.iter_mut().enumerate() {
                let mut xb = [0.0f32; BLOCK];
                xb[..cols - e0].copy_from_slice(&x[i * cols + e0..i * cols + cols]);
                *p = _mm256_add_ps(*p, block_dot(&wv, xb.as_ptr()));
            }
        }
        if cols > 0 {
            flush!(tile_of.saturating_mul(tile).min(cols - 1));
        }
        let mut out = [0.0f32; T];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
        out
    }
}

/// # Safety
/// `wr.len() ≥ cols`, `x.len() ≥ T·cols`; features of `D` available.
#[inline(always)]
unsafe fn dense_row<D: DenseRows, const T: usize>(wr: &[D::E], x: &[f32], cols: usize) -> [f32; T] {
    let full = cols / BLOCK;
    debug_assert!(wr.len() >= cols && x.len() >= T * cols);
    let (wp, xp) = (wr.as_ptr(), x.as_ptr());
    // SAFETY: full blocks b < cols/32 read wr[b·32..b·32+32] and
    // x[i·cols + b·32..+32], in bounds (contract); the tail reads copies.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..full {
            let wv = D::load(wp.add(b * BLOCK));
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, block_dot(&wv, xp.add(i * cols + b * BLOCK)));
            }
        }
        let e0 = full * BLOCK;
        if e0 < cols {
            let mut wb = [D::ZERO; BLOCK];
            wb[..cols - e0].copy_from_slice(&wr[e0..cols]);
            let wv = D::load(wb.as_ptr());
            for (i, a) in acc.iter_mut().enumerate() {
                let mut xb = [0.0f32; BLOCK];
                xb[..cols - e0].copy_from_slice(&x[i * cols + e0..i * cols + cols]);
                *a = _mm256_add_ps(*a, block_dot(&wv, xb.as_ptr()));
            }
        }
        let mut out = [0.0f32; T];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
        out
    }
}
