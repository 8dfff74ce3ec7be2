//! A typed, borrowed view of one tensor's bytes in any scheme.
use crate::error::QuantError;
use crate::scheme::{QuantSpec, Scheme, TensorLayout};
use half::{bf16, f16};

/// Per-group scales: `f16` for integer schemes, `f32` for FP8.
#[derive(Debug, Clone, Copy)]
pub enum Scales<'a> {
    None,
    F16(&'a [f16]),
    F32(&'a [f32]),
}

/// A tensor in place: codes, scales and mins sliced per the scheme's layout.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub spec: QuantSpec,
    pub layout: TensorLayout,
    pub codes: &'a [u8],
    pub scales: Scales<'a>,
    pub mins: &'a [f16],
}

impl<'a> TensorView<'a> {
    /// Slices `bytes` (exactly `layout.total_bytes` long, start aligned for
    /// the element type) into regions.
    pub fn new(spec: QuantSpec, rows: u32, cols: u32, bytes: &'a [u8]) -> Result<Self, QuantError> {
        let layout = spec.layout(rows, cols)?;
        if bytes.len() as u64 != layout.total_bytes {
            return Err(QuantError::BadLength {
                expected: layout.total_bytes as usize,
                actual: bytes.len(),
            });
        }
        // (every region lies inside `total_bytes`: the layout's invariant)
        let outside = QuantError::BadSpec("tensor layout region outside its bytes");
        let codes = bytes.get(..layout.codes_bytes as usize).ok_or(outside)?;
        let region = |off: u64, n: u64, size: u64| bytes.get(off as usize..(off + n * size) as usize).ok_or(outside);
        let misaligned = QuantError::BadSpec("tensor data misaligned for its element type");
        let (scales, mins) = if spec.scheme.is_int() {
            let s = bytemuck::try_cast_slice(region(layout.scales_offset, layout.n_scales, 2)?).map_err(|_| misaligned)?;
            let m = bytemuck::try_cast_slice(region(layout.mins_offset, layout.n_mins, 2)?).map_err(|_| misaligned)?;
            (Scales::F16(s), m)
        } else if spec.scheme.is_fp8() {
            let s = bytemuck::try_cast_slice(region(layout.scales_offset, layout.n_scales, 4)?).map_err(|_| misaligned)?;
            (Scales::F32(s), &[][..])
        } else {
            (Scales::None, &[][..])
        };
        // Float payloads must be castable too; check once here.
        match spec.scheme {
            Scheme::F32 => {
                bytemuck::try_cast_slice::<u8, f32>(codes).map_err(|_| misaligned)?;
            }
            Scheme::F16 | Scheme::BF16 => {
                bytemuck::try_cast_slice::<u8, u16>(codes).map_err(|_| misaligned)?;
            }
            _ => {}
        }
        Ok(TensorView {
            spec,
            layout,
            codes,
            scales,
            mins,
        })
    }

    pub fn rows(&self) -> usize {
        self.layout.rows as usize
    }
    pub fn cols(&self) -> usize {
        self.layout.cols as usize
    }
    pub fn scheme(&self) -> Scheme {
        self.spec.scheme
    }

    /// The codes of row `r` (`row_stride` bytes; empty past the last row).
    pub fn row_codes(&self, r: usize) -> &'a [u8] {
        let s = self.layout.row_stride as usize;
        self.codes.get(r * s..(r + 1) * s).unwrap_or(&[])
    }
    /// Integer schemes: the f16 scales of row `r` (empty otherwise and past
    /// the last row).
    pub fn row_scales_f16(&self, r: usize) -> &'a [f16] {
        let g = self.layout.groups_per_row as usize;
        match self.scales {
            Scales::F16(s) => s.get(r * g..(r + 1) * g).unwrap_or(&[]),
            _ => &[],
        }
    }
    /// Asymmetric integer schemes: the f16 mins of row `r` (empty otherwise
    /// and past the last row).
    pub fn row_mins(&self, r: usize) -> &'a [f16] {
        let g = self.layout.groups_per_row as usize;
        self.mins.get(r * g..(r + 1) * g).unwrap_or(&[])
    }
    /// F32 payload (only for `Scheme::F32`).
    pub fn as_f32(&self) -> &'a [f32] {
        bytemuck::try_cast_slice(self.codes).unwrap_or(&[])
    }
    pub fn as_f16(&self) -> &'a [f16] {
        bytemuck::try_cast_slice(self.codes).unwrap_or(&[])
    }
    pub fn as_bf16(&self) -> &'a [bf16] {
        bytemuck::try_cast_slice(self.codes).unwrap_or(&[])
    }
    /// FP8: the scale that applies to element (r, c).
    pub fn fp8_scale(&self, r: usize, c: usize) -> f32 {
        let Scales::F32(s) = self.scales else {
            return 0.0;
        };
        use crate::scheme::Granularity::*;
        let i = match self.spec.granularity {
            PerTensor => 0,
            PerChannel => r,
            _ => {
                let b = self.spec.group.max(1) as usize;
                (r / b) * self.layout.groups_per_row as usize + c / b
            }
        };
        s.get(i).copied().unwrap_or(0.0)
    }

    /// The rows `r0..r1` as a view of their own (for splitting a product
    /// across threads); `None` for an empty or out-of-range slice, and for
    /// FP8 block scaling when `r0` is not on a tile edge (a tile's scale
    /// covers `group` rows).
    pub fn row_slice(&self, r0: usize, r1: usize) -> Option<TensorView<'a>> {
        use crate::scheme::Granularity;
        let l = &self.layout;
        if r0 > r1 || r1 > l.rows as usize {
            return None;
        }
        let fp8 = self.spec.scheme.is_fp8();
        let tile = self.spec.group as usize;
        if fp8 && self.spec.granularity == Granularity::Block && (tile == 0 || r0 % tile != 0) {
            return None;
        }
        let n = (r1 - r0) as u32;
        let layout = self.spec.layout(n, l.cols).ok()?;
        let stride = l.row_stride as usize;
        let codes = self.codes.get(r0 * stride..r1 * stride)?;
        let g = l.groups_per_row as usize;
        let scales = match self.scales {
            Scales::F16(s) => Scales::F16(s.get(r0 * g..r1 * g)?),
            // FP8: one scale, one per row, or one per tile of `tile` rows
            Scales::F32(s) => Scales::F32(match self.spec.granularity {
                Granularity::PerTensor => s,
                Granularity::PerChannel => s.get(r0..r1)?,
                Granularity::Block => s.get(r0 / tile * g..r1.div_ceil(tile) * g)?,
                Granularity::PerGroup => return None,
            }),
            other => other,
        };
        let mins = if self.mins.is_empty() {
            self.mins
        } else {
            self.mins.get(r0 * g..r1 * g)?
        };
        Some(TensorView {
            spec: self.spec,
            layout,
            codes,
            scales,
            mins,
        })
    }

    /// Element `(r, c)` dequantized with the reference semantics (the value
    /// [`TensorView::dequantize_row`] gives); 0 outside the tensor.
    pub fn element(&self, r: usize, c: usize) -> f32 {
        use crate::quant::{fp8, int};
        if r >= self.rows() || c >= self.cols() {
            return 0.0;
        }
        let i = r * self.cols() + c;
        match self.spec.scheme {
            Scheme::F32 => self.as_f32().get(i).copied().unwrap_or(0.0),
            Scheme::F16 => self.as_f16().get(i).map_or(0.0, |v| v.to_f32()),
            Scheme::BF16 => self.as_bf16().get(i).map_or(0.0, |v| v.to_f32()),
            Scheme::Fp8E4M3 | Scheme::Fp8E5M2 => {
                let code = self.codes.get(i).copied().unwrap_or(0);
                fp8::table_of(self.spec.scheme)[code as usize] * self.fp8_scale(r, c)
            }
            scheme => {
                let g = c / self.layout.group_len.max(1) as usize;
                let s = self.row_scales_f16(r).get(g).map_or(0.0, |v| v.to_f32());
                let m = self.row_mins(r).get(g).map_or(0.0, |v| v.to_f32());
                let row = self.row_codes(r);
                let q = if scheme.code_bits() == 4 {
                    int::q4_code(row, c)
                } else {
                    row.get(c).copied().unwrap_or(0)
                };
                int::code_value(scheme, q, s, m)
            }
        }
    }

    /// Dequantizes row `r` into `out[..cols]` (reference semantics).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        crate::quant::dequantize_row(self, r, out)
    }
}
