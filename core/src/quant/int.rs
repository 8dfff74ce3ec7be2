//! Integer RTN with the GPTQ reference quantizer's conventions
//! (IST-DASLab `quant.py`), scales rounded to f16 before codes are chosen:
//!
//! * Q4 sym: range `[-amax, amax]`, `scale = 2·amax/15`, `q = clamp(rne(x/scale) + 8, 0, 15)`,
//!   value `scale·(q−8)`.
//! * Q8 sym: `scale = amax/127`, `q = clamp(rne(x/scale), −128, 127)` as `i8`,
//!   value `scale·q` (the common int8 absmax convention).
//! * Asym (Q4: maxq 15, Q8: maxq 255): range `[min(xmin,0), max(xmax,0)]`,
//!   `scale = (xmax−xmin)/maxq`, `zero = rne(−xmin/scale)`,
//!   `q = clamp(rne(x/scale) + zero, 0, maxq)`; stored as `scale` and
//!   `min = −scale·zero`, value `scale·q + min`.
//! * An all-zero group gets the reference's range `[-1, 1]`.
use crate::error::QuantError;
use crate::scheme::{Scheme, TensorLayout, BLOCK};
use crate::tensor::TensorView;
use half::f16;

/// Round half to even, as `torch.round`.
#[inline]
pub fn rne(x: f32) -> f32 {
    libm::rintf(x)
}

/// Scale (and min, for asym) of one group, and the code of each value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupParams {
    pub scheme: Scheme,
    pub scale: f16,
    pub min: f16,
    /// Zero point in code units (8 for Q4 sym, 0 for Q8 sym).
    pub zero: f32,
    pub maxq: f32,
    /// Lowest code (−128 for Q8 sym, else 0).
    pub minq: f32,
}

impl GroupParams {
    /// Fits the group's parameters on `x` (RTN, reference quantizer).
    pub fn fit(scheme: Scheme, x: &[f32]) -> GroupParams {
        let (mut lo, mut hi) = (0.0f32, 0.0f32);
        for &v in x {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        Self::from_range(scheme, lo, hi)
    }

    /// Parameters for the range `[lo, hi]` (the reference clamps it to include 0).
    pub fn from_range(scheme: Scheme, lo: f32, hi: f32) -> GroupParams {
        let (mut lo, mut hi) = (lo.min(0.0), hi.max(0.0));
        match scheme {
            Scheme::Q8Sym => {
                let amax = (-lo).max(hi);
                let scale = f16::from_f32(if amax == 0.0 { 1.0 / 127.0 } else { amax / 127.0 });
                GroupParams {
                    scheme,
                    scale,
                    min: f16::ZERO,
                    zero: 0.0,
                    maxq: 127.0,
                    minq: -128.0,
                }
            }
            Scheme::Q4Sym => {
                let amax = (-lo).max(hi);
                let amax = if amax == 0.0 { 1.0 } else { amax };
                let scale = f16::from_f32(2.0 * amax / 15.0);
                GroupParams {
                    scheme,
                    scale,
                    min: f16::ZERO,
                    zero: 8.0,
                    maxq: 15.0,
                    minq: 0.0,
                }
            }
            _ => {
                let maxq = if scheme == Scheme::Q4Asym { 15.0 } else { 255.0 };
                if lo == 0.0 && hi == 0.0 {
                    lo = -1.0;
                    hi = 1.0;
                }
                let scale = f16::from_f32((hi - lo) / maxq);
                let s = scale.to_f32();
                let zero = if s > 0.0 { rne(-lo / s).clamp(0.0, maxq) } else { 0.0 };
                let min = f16::from_f32(-s * zero);
                GroupParams {
                    scheme,
                    scale,
                    min,
                    zero,
                    maxq,
                    minq: 0.0,
                }
            }
        }
    }

    /// The code for `x` (as f32; exact small integer).
    #[inline]
    pub fn code(&self, x: f32) -> f32 {
        let s = self.scale.to_f32();
        if s == 0.0 || !s.is_finite() {
            return self.zero;
        }
        (rne(x / s) + self.zero).clamp(self.minq, self.maxq)
    }

    /// The value a code stands for, as the kernels compute it.
    #[inline]
    pub fn value(&self, q: f32) -> f32 {
        let s = self.scale.to_f32();
        match self.scheme {
            Scheme::Q4Sym => s * (q - 8.0),
            Scheme::Q8Sym => s * q,
            _ => s * q + self.min.to_f32(),
        }
    }
}

/// Value of a Q4 sym / Q4 asym / Q8 sym / Q8 asym code given its group's scale and min.
#[inline]
pub fn code_value(scheme: Scheme, q: u8, scale: f32, min: f32) -> f32 {
    match scheme {
        Scheme::Q4Sym => scale * (q as f32 - 8.0),
        Scheme::Q8Sym => scale * (q as i8) as f32,
        _ => scale * q as f32 + min,
    }
}

/// Packs 32 4-bit codes (values 0..=15) into 16 bytes: byte j = c[j] | c[j+16] << 4.
#[inline]
pub fn pack_q4_block(codes: &[u8; BLOCK], out: &mut [u8]) {
    for j in 0..16 {
        out[j] = (codes[j] & 0xF) | (codes[j + 16] << 4);
    }
}

/// The 4-bit code of element `i` of a packed row.
#[inline]
pub fn q4_code(row: &[u8], i: usize) -> u8 {
    let (blk, j) = (i / BLOCK, i % BLOCK);
    let b = row[blk * 16 + (j % 16)];
    if j < 16 {
        b & 0xF
    } else {
        b >> 4
    }
}

pub(super) fn quantize(scheme: Scheme, l: &TensorLayout, src: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    let (cols, g, gpr) = (l.cols as usize, l.group_len as usize, l.groups_per_row as usize);
    let q4 = matches!(scheme, Scheme::Q4Sym | Scheme::Q4Asym);
    let mut block = [0u8; BLOCK];
    for r in 0..l.rows as usize {
        let x = &src[r * cols..(r + 1) * cols];
        for gi in 0..gpr {
            let start = gi * g;
            let end = (start + g).min(cols);
            let p = GroupParams::fit(scheme, &x[start..end]);
            if !p.scale.is_finite() || !p.min.is_finite() {
                return Err(QuantError::OutOfRange { index: r * cols + start });
            }
            let si = r * gpr + gi;
            let so = l.scales_offset as usize + 2 * si;
            out[so..so + 2].copy_from_slice(&p.scale.to_le_bytes());
            if scheme.is_asym() {
                let mo = l.mins_offset as usize + 2 * si;
                out[mo..mo + 2].copy_from_slice(&p.min.to_le_bytes());
            }
            let row = &mut out[r * l.row_stride as usize..(r + 1) * l.row_stride as usize];
            for b in 0..g / BLOCK {
                for (j, c) in block.iter_mut().enumerate() {
                    let i = start + b * BLOCK + j;
                    let q = if i < end { p.code(x[i]) } else { p.zero };
                    *c = if scheme == Scheme::Q8Sym { (q as i32 as i8) as u8 } else { q as u8 };
                }
                let e0 = start + b * BLOCK;
                if q4 {
                    pack_q4_block(&block, &mut row[e0 / 2..e0 / 2 + 16]);
                } else {
                    row[e0..e0 + BLOCK].copy_from_slice(&block);
                }
            }
        }
    }
    Ok(())
}

pub(super) fn dequantize_row(t: &TensorView<'_>, r: usize, out: &mut [f32]) {
    let scheme = t.scheme();
    let codes = t.row_codes(r);
    let scales = t.row_scales_f16(r);
    let mins = t.row_mins(r);
    if codes.is_empty() || scales.is_empty() {
        return out.fill(0.0); // past the last row
    }
    let g = (t.layout.group_len as usize).max(1);
    for (gi, (chunk, scale)) in out.chunks_mut(g).zip(scales).enumerate() {
        let s = scale.to_f32();
        let m = mins.get(gi).map_or(0.0, |m| m.to_f32());
        let e0 = gi * g;
        match scheme {
            Scheme::Q4Sym | Scheme::Q4Asym => {
                // 16-entry table of this group's values: same products as code_value
                let mut lut = [0.0f32; 16];
                for (q, v) in lut.iter_mut().enumerate() {
                    *v = code_value(scheme, q as u8, s, m);
                }
                for (bi, blk) in chunk.chunks_mut(BLOCK).enumerate() {
                    let o = (e0 + bi * BLOCK) / 2;
                    let Some(packed) = codes.get(o..o + 16).and_then(|p| <&[u8; 16]>::try_from(p).ok()) else {
                        return blk.fill(0.0);
                    };
                    if let Ok(blk) = <&mut [f32; BLOCK]>::try_from(&mut *blk) {
                        for j in 0..16 {
                            blk[j] = lut[(packed[j] & 0xF) as usize];
                            blk[j + 16] = lut[(packed[j] >> 4) as usize];
                        }
                    } else {
                        // partial last block of a row
                        for (j, o) in blk.iter_mut().enumerate() {
                            let b = packed[j % 16];
                            *o = lut[if j < 16 { b & 0xF } else { b >> 4 } as usize];
                        }
                    }
                }
            }
            _ => {
                for (o, &q) in chunk.iter_mut().zip(codes.get(e0..).unwrap_or(&[])) {
                    *o = code_value(scheme, q, s, m);
                }
            }
        }
    }
}
