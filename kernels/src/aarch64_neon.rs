//! aarch64 NEON kernels (`core::arch::aarch64`, stable).
//!
//! Same structure as `x86_avx2.rs`, in 4-lane registers: per 32-element
//! block the codes widen to 8×4 i32 lanes, convert to f32 and scale as the
//! reference does (`vmulq` by the scale, then `vaddq` of the min for asym:
//! never fused, so weights are bit-exact). Per token
//! `pa = w0·x0 + w1·x1 + w2·x2 + w3·x3`, `pb` likewise for w4..w7 (one
//! multiply, three FMAs each), `acc += pa + pb`; `vaddvq` at the end of the
//! row. Up to four tokens share each dequantized block; the operations for
//! one token do not depend on how many share the pass. F16 weights convert
//! with `FCVTL`/`FCVTL2` (base ARMv8.0 AdvSIMD, via `asm!` because the
//! `float16x4_t` intrinsics are not stable), which is exact; FP8 weights
//! too, after a shift that makes each code an f16 (see `x86_avx2.rs`'s
//! `fp8_matmul` for the trick and the scaling per region).
use crate::support::f16_to_f32;
use core::arch::aarch64::*;
use core::ops::Range;
use edgeq_core::{Scheme, TensorView};

const BLOCK: usize = 32;
/// Tokens per pass over a row.
const MAX_T: usize = 4;

type W = [float32x4_t; 8];

/// # Safety
/// NEON available (compile time); `lib::matmul`'s checks (`args_ok`,
/// `simd_view_ok`) passed for these arguments.
pub(crate) unsafe fn matmul(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: Range<usize>, scratch: &mut [f32]) {
    // SAFETY (all arms): forwarded contract.
    match w.scheme() {
        Scheme::Q4Sym => unsafe { int_matmul::<Q4Sym>(y, w, x, t, rows) },
        Scheme::Q4Asym => unsafe { int_matmul::<Q4Asym>(y, w, x, t, rows) },
        Scheme::Q8Sym => unsafe { int_matmul::<Q8Sym>(y, w, x, t, rows) },
        Scheme::Q8Asym => unsafe { int_matmul::<Q8Asym>(y, w, x, t, rows) },
        Scheme::F32 => unsafe { dense_matmul::<F32Rows>(y, w, x, t, rows) },
        Scheme::F16 => unsafe { dense_matmul::<F16Rows>(y, w, x, t, rows) },
        // FP8 whose scale is constant over every 32-element block.
        s if s.is_fp8() && (w.spec.granularity != edgeq_core::Granularity::Block || w.spec.group % BLOCK as u32 == 0) => unsafe {
            fp8_matmul(y, w, x, t, rows)
        },
        _ => crate::scalar::matmul(y, w, x, t, rows, scratch),
    }
}

/// One 32-element block of integer codes → 8×4 f32 weights.
trait IntBlock {
    const BYTES: usize;
    const ASYM: bool;
    /// # Safety
    /// `p` is valid for `BYTES` reads.
    unsafe fn dequant(p: *const u8, s: float32x4_t, m: float32x4_t) -> W;
}

struct Q4Sym;
struct Q4Asym;
struct Q8Sym;
struct Q8Asym;

/// i8x16 → 4×f32x4 (`v·s`).
#[inline(always)]
fn widen_s8(v: int8x16_t, s: float32x4_t) -> [float32x4_t; 4] {
    // SAFETY: register-only NEON ops (NEON enabled at compile time).
    #[allow(unused_unsafe)]
    unsafe {
        let l = vmovl_s8(vget_low_s8(v));
        let h = vmovl_high_s8(v);
        let f = |q: int32x4_t| vmulq_f32(vcvtq_f32_s32(q), s);
        [
            f(vmovl_s16(vget_low_s16(l))),
            f(vmovl_high_s16(l)),
            f(vmovl_s16(vget_low_s16(h))),
            f(vmovl_high_s16(h)),
        ]
    }
}

/// u8x16 → 4×f32x4 (`v·s + m`, two roundings).
#[inline(always)]
fn widen_u8(v: uint8x16_t, s: float32x4_t, m: float32x4_t) -> [float32x4_t; 4] {
    // SAFETY: register-only NEON ops (NEON enabled at compile time).
    #[allow(unused_unsafe)]
    unsafe {
        let l = vmovl_u8(vget_low_u8(v));
        let h = vmovl_high_u8(v);
        let f = |q: uint32x4_t| vaddq_f32(vmulq_f32(vcvtq_f32_u32(q), s), m);
        [
            f(vmovl_u16(vget_low_u16(l))),
            f(vmovl_high_u16(l)),
            f(vmovl_u16(vget_low_u16(h))),
            f(vmovl_high_u16(h)),
        ]
    }
}

#[inline(always)]
fn join(a: [float32x4_t; 4], b: [float32x4_t; 4]) -> W {
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
}

/// Low and high nibbles of a Q4 block: elements 0..16 and 16..32.
#[inline(always)]
unsafe fn q4_nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    // SAFETY: `p` is valid for 16 bytes (caller).
    unsafe {
        let v = vld1q_u8(p);
        (vandq_u8(v, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(v))
    }
}

impl IntBlock for Q4Sym {
    const BYTES: usize = 16;
    const ASYM: bool = false;
    #[inline(always)]
    unsafe fn dequant(p: *const u8, s: float32x4_t, _m: float32x4_t) -> W {
        // SAFETY: 16 readable bytes at `p` (caller).
        unsafe {
            let (lo, hi) = q4_nibbles(p);
            let eight = vdupq_n_s8(8);
            let lo = vsubq_s8(vreinterpretq_s8_u8(lo), eight);
            let hi = vsubq_s8(vreinterpretq_s8_u8(hi), eight);
            join(widen_s8(lo, s), widen_s8(hi, s))
        }
    }
}

impl IntBlock for Q4Asym {
    const BYTES: usize = 16;
    const ASYM: bool = true;
    #[inline(always)]
    unsafe fn dequant(p: *const u8, s: float32x4_t, m: float32x4_t) -> W {
        // SAFETY: 16 readable bytes at `p` (caller).
        unsafe {
            let (lo, hi) = q4_nibbles(p);
            join(widen_u8(lo, s, m), widen_u8(hi, s, m))
        }
    }
}

impl IntBlock for Q8Sym {
    const BYTES: usize = 32;
    const ASYM: bool = false;
    #[inline(always)]
    unsafe fn dequant(p: *const u8, s: float32x4_t, _m: float32x4_t) -> W {
        // SAFETY: 32 readable bytes at `p` (caller).
        unsafe {
            let a = vld1q_s8(p as *const i8);
            let b = vld1q_s8(p.add(16) as *const i8);
            join(widen_s8(a, s), widen_s8(b, s))
        }
    }
}

impl IntBlock for Q8Asym {
    const BYTES: usize = 32;
    const ASYM: bool = true;
    #[inline(always)]
    unsafe fn dequant(p: *const u8, s: float32x4_t, m: float32x4_t) -> W {
        // SAFETY: 32 readable bytes at `p` (caller).
        unsafe {
            let a = vld1q_u8(p);
            let b = vld1q_u8(p.add(16));
            join(widen_u8(a, s, m), widen_u8(b, s, m))
        }
    }
}

/// `Σ_k w_k·x_k` lane-wise as `(w0x0 + … + w3x3) + (w4x4 + … + w7x7)`.
///
/// # Safety
/// `xp` is valid for 32 f32 reads.
#[inline(always)]
unsafe fn block_dot(wv: &W, xp: *const f32) -> float32x4_t {
    // SAFETY: 32 readable floats at `xp` (caller).
    unsafe {
        let mut pa = vmulq_f32(wv[0], vld1q_f32(xp));
        let mut pb = vmulq_f32(wv[4], vld1q_f32(xp.add(16)));
        pa = vfmaq_f32(pa, wv[1], vld1q_f32(xp.add(4)));
        pb = vfmaq_f32(pb, wv[5], vld1q_f32(xp.add(20)));
        pa = vfmaq_f32(pa, wv[2], vld1q_f32(xp.add(8)));
        pb = vfmaq_f32(pb, wv[6], vld1q_f32(xp.add(24)));
        pa = vfmaq_f32(pa, wv[3], vld1q_f32(xp.add(12)));
        pb = vfmaq_f32(pb, wv[7], vld1q_f32(xp.add(28)));
        vaddq_f32(pa, pb)
    }
}

/// Runs `T`-token row kernels over the tokens of row `$r` in passes of at
/// most [`MAX_T`] and stores the results (`$x` is the full activation slice).
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
/// `w` passed `simd_view_ok` and the slices `args_ok`.
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

/// # Safety
/// `codes` holds at least `⌈cols/32⌉·B::BYTES` bytes, `scales` (and `mins`
/// for asym) one entry per group, `x` at least `T·cols` floats, `g` is a
/// positive multiple of 32.
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
    // SAFETY: loads at block offsets b < ⌈cols/32⌉ of `codes` and at `x`
    // offsets i·cols + b·32 + 32 ≤ T·cols for full blocks b < cols/32
    // (contract); the partial block reads a local copy of `x`.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); T];
        let params = |gi: usize| {
            let s = vdupq_n_f32(f16_to_f32(scales[gi].to_bits()));
            let m = if B::ASYM {
                vdupq_n_f32(f16_to_f32(mins[gi].to_bits()))
            } else {
                vdupq_n_f32(0.0)
            };
            (s, m)
        };
        let mut b = 0;
        let mut gi = 0;
        while b < full {
            let (s, m) = params(gi);
            let end = (b + bpg).min(full);
            while b < end {
                let wv = B::dequant(cp.add(b * B::BYTES), s, m);
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = vaddq_f32(*a, block_dot(&wv, xp.add(i * cols + b * BLOCK)));
                }
                b += 1;
            }
            gi += 1;
        }
        if full < nblk {
            let (s, m) = params(full / bpg);
            let wv = B::dequant(cp.add(full * B::BYTES), s, m);
            let e0 = full * BLOCK;
            for (i, a) in acc.iter_mut().enumerate() {
                let mut xb = [0.0f32; BLOCK];
                xb[..cols - e0].copy_from_slice(&x[i * cols + e0..i * cols + cols]);
                *a = vaddq_f32(*a, block_dot(&wv, xb.as_ptr()));
            }
        }
        let mut out = [0.0f32; T];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = vaddvq_f32(a);
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
    /// `p` is valid for 32 element reads.
    unsafe fn load(p: *const Self::E) -> W;
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
    unsafe fn load(p: *const f32) -> W {
        // SAFETY: 32 readable floats at `p` (caller).
        unsafe { core::array::from_fn(|k| vld1q_f32(p.add(4 * k))) }
    }
}

/// 8 halves → 2×4 floats with FCVTL/FCVTL2 (exact).
#[inline(always)]
fn cvt_f16x8(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: FCVTL/FCVTL2 (half → single) are base ARMv8.0 AdvSIMD
    // instructions (NEON enabled); register-only, no memory or flags.
    unsafe {
        core::arch::asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    (lo, hi)
}

impl DenseRows for F16Rows {
    type E = half::f16;
    const ZERO: half::f16 = half::f16::ZERO;
    fn data<'a>(w: &TensorView<'a>) -> &'a [half::f16] {
        w.as_f16()
    }
    #[inline(always)]
    unsafe fn load(p: *const half::f16) -> W {
        // SAFETY: 32 readable halves at `p` (caller).
        unsafe {
            let p = p as *const u16;
            let (a, b) = cvt_f16x8(vld1q_u16(p));
            let (c, d) = cvt_f16x8(vld1q_u16(p.add(8)));
            let (e, f) = cvt_f16x8(vld1q_u16(p.add(16)));
            let (g, h) = cvt_f16x8(vld1q_u16(p.add(24)));
            [a, b, c, d, e, f, g, h]
        }
    }
}

/// # Safety
/// `w` passed `simd_view_ok`, slices `args_ok`.
unsafe fn dense_matmul<D: DenseRows>(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: Range<usize>) {
    let (n_rows, cols) = (w.rows(), w.cols());
    let data = D::data(w);
    for r in rows {
        let wr = &data[r * cols..(r + 1) * cols];
        // SAFETY: `wr` is one row of `cols` elements, `xs` at least T·cols
        // floats (`args_ok`).
        token_passes!(y, x, t, n_rows, cols, r, |xs, T| unsafe { dense_row::<D, T>(wr, xs, cols) });
    }
}

/// # Safety
/// `wr.len() ≥ cols`, `x.len() ≥ T·cols`.
#[inline(always)]
unsafe fn dense_row<D: DenseRows, const T: usize>(wr: &[D::E], x: &[f32], cols: usize) -> [f32; T] {
    let full = cols / BLOCK;
    debug_assert!(wr.len() >= cols && x.len() >= T * cols);
    let (wp, xp) = (wr.as_ptr(), x.as_ptr());
    // SAFETY: full blocks b < cols/32 read wr[b·32..b·32+32] and
    // x[i·cols + b·32..+32], in bounds (contract); the tail reads copies.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); T];
        for b in 0..full {
            let wv = D::load(wp.add(b * BLOCK));
            for (i, a) in acc.iter_mut().enumerate() {
                *a = vaddq_f32(*a, block_dot(&wv, xp.add(i * cols + b * BLOCK)));
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
                *a = vaddq_f32(*a, block_dot(&wv, xb.as_ptr()));
            }
        }
        let mut out = [0.0f32; T];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = vaddvq_f32(a);
        }
        out
    }
}

/// FP8 (E4M3 / E5M2) rows: each code widened to an f16 bit pattern (E5M2:
/// `c << 8`, the value; E4M3: the sign-extended code `<< 7` with bit 14
/// cleared, the value times 2⁻⁸) and converted with FCVTL; the products are
/// summed unscaled over each region of constant scale, then multiplied by
/// `scale · 2⁸` (E4M3) once per region. A block holding E4M3's NaN code
/// (magnitude 0x7F, which the shift would read as 480) decodes to NaN.
///
/// # Safety
/// `w` is FP8 with regions complete, its scale constant over each 32-column
/// block; `x`/`y` as in [`matmul`].
unsafe fn fp8_matmul(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: Range<usize>) {
    let (n_rows, cols) = (w.rows(), w.cols());
    let e4m3 = w.scheme() == Scheme::Fp8E4M3;
    for r in rows {
        let codes = &w.row_codes(r)[..cols];
        // SAFETY: `codes` is one row of `cols` codes, `xs` at least T·cols
        // floats (`args_ok`).
        token_passes!(y, x, t, n_rows, cols, r, |xs, T| unsafe {
            fp8_row::<T>(codes, e4m3, w, r, xs, cols)
        });
    }
}

/// 32 FP8 codes at `cp` → 8×4 f32 (E4M3: the values times 2⁻⁸).
///
/// # Safety
/// 32 readable bytes at `cp`.
#[inline(always)]
unsafe fn fp8_block(cp: *const u8, e4m3: bool) -> W {
    // SAFETY: two 16-byte loads within the 32 bytes (contract); the rest
    // are register-only NEON ops (NEON enabled at compile time).
    unsafe {
        let (c0, c1) = (vld1q_u8(cp), vld1q_u8(cp.add(16)));
        if e4m3 {
            let m = vdupq_n_u8(0x7F);
            if vmaxvq_u8(vorrq_u8(vceqq_u8(vandq_u8(c0, m), m), vceqq_u8(vandq_u8(c1, m), m))) != 0 {
                // NaN·x is NaN for every x: the block's dot products are NaN.
                return [vdupq_n_f32(f32::NAN); 8];
            }
        }
        let h = |c: uint8x8_t| -> uint16x8_t {
            if e4m3 {
                vandq_u16(
                    vshlq_n_u16::<7>(vreinterpretq_u16_s16(vmovl_s8(vreinterpret_s8_u8(c)))),
                    vdupq_n_u16(0xBF80),
                )
            } else {
                vshll_n_u8::<8>(c)
            }
        };
        let (a, b) = cvt_f16x8(h(vget_low_u8(c0)));
        let (c, d) = cvt_f16x8(h(vget_high_u8(c0)));
        let (e, f) = cvt_f16x8(h(vget_low_u8(c1)));
        let (g, hh) = cvt_f16x8(h(vget_high_u8(c1)));
        [a, b, c, d, e, f, g, hh]
    }
}

/// # Safety
/// `codes.len() ≥ cols`, `x.len() ≥ T·cols`.
#[inline(always)]
unsafe fn fp8_row<const T: usize>(codes: &[u8], e4m3: bool, w: &TensorView<'_>, r: usize, x: &[f32], cols: usize) -> [f32; T] {
    let full = cols / BLOCK;
    let pre = if e4m3 { 256.0 } else { 1.0 };
    // Columns per region of constant scale: a block-scaling tile, or the row.
    let tile = crate::support::fp8_tile(w).unwrap_or(usize::MAX);
    let (cp, xp) = (codes.as_ptr(), x.as_ptr());
    let mut tile_of = 0;
    // SAFETY: register-only NEON ops (NEON enabled at compile time).
    let (mut acc, mut part) = unsafe { ([vdupq_n_f32(0.0); T], [vdupq_n_f32(0.0); T]) };
    // Adds the finished region's sums, scaled by the scale of column c0.
    let flush = |acc: &mut [float32x4_t; T], part: &mut [float32x4_t; T], c0: usize| {
        let s = w.fp8_scale(r, c0) * pre;
        for (a, p) in acc.iter_mut().zip(part.iter_mut()) {
            // SAFETY: register-only NEON ops (NEON enabled at compile time).
            unsafe {
                *a = vfmaq_n_f32(*a, *p, s);
                *p = vdupq_n_f32(0.0);
            }
        }
    };
    // SAFETY: full blocks read codes[b·32..+32] and x[i·cols + b·32..+32]
    // in bounds (contract); the tail reads zero-padded copies (code 0 is 0).
    unsafe {
        for b in 0..full {
            if (b * BLOCK) / tile != tile_of {
                flush(&mut acc, &mut part, tile_of * tile);
                tile_of = (b * BLOCK) / tile;
            }
            let wv = fp8_block(cp.add(b * BLOCK), e4m3);
            for (i, p) in part.iter_mut().enumerate() {
                *p = vaddq_f32(*p, block_dot(&wv, xp.add(i * cols + b * BLOCK)));
            }
        }
        let e0 = full * BLOCK;
        if e0 < cols {
            if e0 / tile != tile_of {
                flush(&mut acc, &mut part, tile_of * tile);
                tile_of = e0 / tile;
            }
            let mut cb = [0u8; BLOCK];
            cb[..cols - e0].copy_from_slice(&codes[e0..cols]);
            let wv = fp8_block(cb.as_ptr(), e4m3);
            for (i, p) in part.iter_mut().enumerate() {
                let mut xb = [0.0f32; BLOCK];
                xb[..cols - e0].copy_from_slice(&x[i * cols + e0..i * cols + cols]);
                *p = vaddq_f32(*p, block_dot(&wv, xb.as_ptr()));
            }
        }
    }
    if cols > 0 {
        flush(&mut acc, &mut part, tile_of.saturating_mul(tile).min(cols - 1));
    }
    let mut out = [0.0f32; T];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: register-only NEON op (NEON enabled at compile time).
        *o = unsafe { vaddvq_f32(a) };
    }
    out
}
