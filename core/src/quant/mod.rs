//! Reference quantize / dequantize for every scheme: round-to-nearest (RTN)
//! with the conventions of the GPTQ reference quantizer for integer codes
//! (see `int.rs`), and saturating round-to-nearest-even for FP8 (`fp8.rs`).
//! These are the semantics every optimized kernel and every calibrated
//! method (GPTQ, AWQ, HQQ) must reproduce when it writes codes.
pub mod fp8;
pub mod int;

use crate::error::QuantError;
use crate::scheme::{QuantSpec, Scheme};
use crate::tensor::TensorView;
use half::{bf16, f16};

/// Quantizes a row-major `rows`×`cols` f32 tensor into `out`, which must be
/// exactly `spec.layout(rows, cols).total_bytes` long and 4-byte aligned
/// (the writer gives 64). NaN/Inf inputs are an error naming the index.
pub fn quantize(spec: QuantSpec, rows: u32, cols: u32, src: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    let layout = spec.layout(rows, cols)?;
    let n = rows as usize * cols as usize;
    if src.len() != n {
        return Err(QuantError::BadLength {
            expected: n,
            actual: src.len(),
        });
    }
    if out.len() as u64 != layout.total_bytes {
        return Err(QuantError::BadLength {
            expected: layout.total_bytes as usize,
            actual: out.len(),
        });
    }
    if let Some(index) = src.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    out.fill(0);
    match spec.scheme {
        Scheme::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        Scheme::F16 => {
            for (i, (o, v)) in out.chunks_exact_mut(2).zip(src).enumerate() {
                let h = f16::from_f32(*v);
                if h.is_infinite() {
                    return Err(QuantError::OutOfRange { index: i });
                }
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        Scheme::BF16 => {
            for (i, (o, v)) in out.chunks_exact_mut(2).zip(src).enumerate() {
                let h = bf16::from_f32(*v);
                if h.is_infinite() {
                    return Err(QuantError::OutOfRange { index: i });
                }
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        s if s.is_int() => int::quantize(spec.scheme, &layout, src, out)?,
        _ => fp8::quantize(spec, &layout, src, out),
    }
    Ok(())
}

/// Dequantizes row `r` of `t` into `out[..cols]` (nothing when `out` is
/// shorter; zeros past the last row: never a panic).
pub fn dequantize_row(t: &TensorView<'_>, r: usize, out: &mut [f32]) {
    let cols = t.cols();
    let Some(out) = out.get_mut(..cols) else { return };
    let range = r * cols..(r + 1) * cols;
    fn convert<T: Copy>(out: &mut [f32], src: Option<&[T]>, f: impl Fn(T) -> f32) {
        match src {
            Some(src) if src.len() >= out.len() => out.iter_mut().zip(src).for_each(|(o, &v)| *o = f(v)),
            _ => out.fill(0.0),
        }
    }
    match t.spec.scheme {
        Scheme::F32 => convert(out, t.as_f32().get(range), |v| v),
        Scheme::F16 => convert(out, t.as_f16().get(range), |v| v.to_f32()),
        Scheme::BF16 => convert(out, t.as_bf16().get(range), |v| v.to_f32()),
        s if s.is_int() => int::dequantize_row(t, r, out),
        s => {
            // value = table[code] · scale, the scale constant over runs of
            // the row (the whole row unless block-scaled).
            let Some(codes) = t.row_codes(r).get(..cols) else {
                return out.fill(0.0);
            };
            let table = fp8::table_of(s);
            let run = match t.spec.granularity {
                crate::scheme::Granularity::Block => (t.spec.group as usize).max(1),
                _ => cols.max(1),
            };
            for (c0, (o, q)) in out.chunks_mut(run).zip(codes.chunks(run)).enumerate() {
                let scale = t.fp8_scale(r, c0 * run);
                for (o, &q) in o.iter_mut().zip(q) {
                    *o = table[q as usize] * scale;
                }
            }
        }
    }
}
