//! Quantization schemes and the byte layout of a tensor in each.
//!
//! Integer schemes (Q8, Q4) work in blocks of [`BLOCK`] = 32 elements along a
//! row; a group is a whole number of blocks. Rows are padded to whole groups
//! (padding codes dequantize to exactly 0), so kernels only ever see full
//! blocks of codes, while the *activation* length stays `cols`: the last
//! group of a row may be partial (e.g. hidden 172 with group 32 is 5 full
//! groups and one of 12).
//!
//! Tensor bytes = `[codes][pad to 64][scales][pad to 64][mins]`:
//! * Q8 sym: `i8` codes, value = scale·q.
//! * Q8 asym: `u8` codes, value = scale·q + min.
//! * Q4 sym: 4-bit codes, value = scale·(q − 8).
//! * Q4 asym: 4-bit codes, value = scale·q + min.
//! * Q4 packing, per 32-element block of 16 bytes: byte j holds element j in
//!   its low nibble and element j+16 in its high nibble (GGUF Q4_0's order,
//!   so a mask and a shift give 16 consecutive lanes each).
//! * Integer scales and mins are `f16`, one per (row, group), row-major.
//! * FP8 (E4M3/E5M2) codes are one byte per element, rows unpadded; scales
//!   are `f32`: one per tensor, per row, or per `group`×`group` block.
//! * F32/F16/BF16 are plain row-major arrays.
use crate::error::QuantError;

/// Elements per integer block.
pub const BLOCK: usize = 32;
/// Alignment of every region (and of every tensor, and of every section).
pub const ALIGN: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Scheme {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    Q8Sym = 3,
    Q8Asym = 4,
    Q4Sym = 5,
    Q4Asym = 6,
    Fp8E4M3 = 7,
    Fp8E5M2 = 8,
}

impl Scheme {
    pub fn from_u8(v: u8) -> Option<Scheme> {
        Some(match v {
            0 => Scheme::F32,
            1 => Scheme::F16,
            2 => Scheme::BF16,
            3 => Scheme::Q8Sym,
            4 => Scheme::Q8Asym,
            5 => Scheme::Q4Sym,
            6 => Scheme::Q4Asym,
            7 => Scheme::Fp8E4M3,
            8 => Scheme::Fp8E5M2,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Scheme::F32 => "f32",
            Scheme::F16 => "f16",
            Scheme::BF16 => "bf16",
            Scheme::Q8Sym => "q8",
            Scheme::Q8Asym => "q8a",
            Scheme::Q4Sym => "q4",
            Scheme::Q4Asym => "q4a",
            Scheme::Fp8E4M3 => "fp8-e4m3",
            Scheme::Fp8E5M2 => "fp8-e5m2",
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, Scheme::F32 | Scheme::F16 | Scheme::BF16)
    }
    pub fn is_int(self) -> bool {
        matches!(self, Scheme::Q8Sym | Scheme::Q8Asym | Scheme::Q4Sym | Scheme::Q4Asym)
    }
    pub fn is_fp8(self) -> bool {
        matches!(self, Scheme::Fp8E4M3 | Scheme::Fp8E5M2)
    }
    pub fn is_asym(self) -> bool {
        matches!(self, Scheme::Q8Asym | Scheme::Q4Asym)
    }
    /// Bits of one code (16/32 for float schemes).
    pub fn code_bits(self) -> u32 {
        match self {
            Scheme::F32 => 32,
            Scheme::F16 | Scheme::BF16 => 16,
            Scheme::Q8Sym | Scheme::Q8Asym | Scheme::Fp8E4M3 | Scheme::Fp8E5M2 => 8,
            Scheme::Q4Sym | Scheme::Q4Asym => 4,
        }
    }
}

/// Which elements share a scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Granularity {
    /// One scale for the whole tensor (FP8), or no scale (float schemes).
    PerTensor = 0,
    /// One scale per output row.
    PerChannel = 1,
    /// One scale per `group` consecutive elements of a row.
    PerGroup = 2,
    /// One scale per `group`×`group` tile (FP8 block scaling, e.g. 128×128).
    Block = 3,
}

impl Granularity {
    pub fn from_u8(v: u8) -> Option<Granularity> {
        Some(match v {
            0 => Granularity::PerTensor,
            1 => Granularity::PerChannel,
            2 => Granularity::PerGroup,
            3 => Granularity::Block,
            _ => return None,
        })
    }
}

/// A scheme with its scale granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QuantSpec {
    pub scheme: Scheme,
    pub granularity: Granularity,
    /// Group length (PerGroup) or tile edge (Block); 0 otherwise.
    pub group: u32,
}

impl QuantSpec {
    pub const F32: QuantSpec = QuantSpec::float(Scheme::F32);

    pub const fn float(scheme: Scheme) -> QuantSpec {
        QuantSpec {
            scheme,
            granularity: Granularity::PerTensor,
            group: 0,
        }
    }
    pub const fn per_group(scheme: Scheme, group: u32) -> QuantSpec {
        QuantSpec {
            scheme,
            granularity: Granularity::PerGroup,
            group,
        }
    }
    pub const fn per_channel(scheme: Scheme) -> QuantSpec {
        QuantSpec {
            scheme,
            granularity: Granularity::PerChannel,
            group: 0,
        }
    }

    /// Checks that the combination is one the format defines.
    pub fn validate(&self) -> Result<(), &'static str> {
        use Granularity::*;
        match (self.scheme.is_float(), self.scheme.is_int(), self.granularity) {
            (true, _, PerTensor) if self.group == 0 => Ok(()),
            (true, _, _) => Err("float schemes take no granularity or group"),
            (_, true, PerChannel) if self.group == 0 => Ok(()),
            (_, true, PerGroup) => {
                if self.group == 0 || self.group % BLOCK as u32 != 0 || self.group > 1 << 16 {
                    Err("integer group size must be a positive multiple of 32 (at most 65536)")
                } else {
                    Ok(())
                }
            }
            (_, true, _) => Err("integer schemes are per-channel or per-group"),
            (false, false, PerTensor | PerChannel) if self.group == 0 => Ok(()),
            (false, false, Block) if self.group > 0 && self.group <= 1 << 16 => Ok(()),
            _ => Err("FP8 is per-tensor, per-channel or block (group = tile edge)"),
        }
    }

    /// Byte layout of a `rows`×`cols` tensor in this spec.
    pub fn layout(&self, rows: u32, cols: u32) -> Result<TensorLayout, QuantError> {
        self.validate().map_err(QuantError::BadSpec)?;
        if rows == 0 || cols == 0 {
            return Err(QuantError::BadSpec("tensor has a zero dimension"));
        }
        // Bounds that keep every size below 2^44 bytes, so none of the
        // arithmetic below can overflow (a hostile record cannot wrap a size).
        if rows > 1 << 31 || cols > 1 << 31 || rows as u64 * cols as u64 > 1 << 40 {
            return Err(QuantError::BadSpec("tensor larger than 2^40 elements"));
        }
        let (r, c) = (rows as u64, cols as u64);
        let up = |v: u64, m: u64| v.div_ceil(m) * m;
        let s = self.scheme;
        if s.is_float() {
            let stride = c * (s.code_bits() as u64 / 8);
            return Ok(TensorLayout {
                rows,
                cols,
                padded_cols: cols,
                group_len: cols,
                groups_per_row: 1,
                row_stride: stride,
                codes_bytes: r * stride,
                scales_offset: 0,
                n_scales: 0,
                mins_offset: 0,
                n_mins: 0,
                total_bytes: r * stride,
            });
        }
        if s.is_int() {
            let group_len = match self.granularity {
                // (validated non-zero; `max` lets the compiler see it)
                Granularity::PerGroup => self.group.max(1) as u64,
                _ => up(c, BLOCK as u64),
            };
            let groups = c.div_ceil(group_len);
            let padded = groups * group_len;
            let stride = padded * s.code_bits() as u64 / 8;
            let codes = r * stride;
            let n_scales = r * groups;
            let scales_offset = up(codes, ALIGN);
            let scales_end = scales_offset + 2 * n_scales;
            let (mins_offset, n_mins, total) = if s.is_asym() {
                let o = up(scales_end, ALIGN);
                (o, n_scales, o + 2 * n_scales)
            } else {
                (0, 0, scales_end)
            };
            return Ok(TensorLayout {
                rows,
                cols,
                padded_cols: padded as u32,
                group_len: group_len as u32,
                groups_per_row: groups as u32,
                row_stride: stride,
                codes_bytes: codes,
                scales_offset,
                n_scales,
                mins_offset,
                n_mins,
                total_bytes: total,
            });
        }
        // FP8
        let n_scales = match self.granularity {
            Granularity::PerTensor => 1,
            Granularity::PerChannel => r,
            _ => r.div_ceil(self.group.max(1) as u64) * c.div_ceil(self.group.max(1) as u64),
        };
        let codes = r * c;
        let scales_offset = up(codes, ALIGN);
        Ok(TensorLayout {
            rows,
            cols,
            padded_cols: cols,
            group_len: if self.granularity == Granularity::Block { self.group } else { cols },
            groups_per_row: if self.granularity == Granularity::Block {
                c.div_ceil(self.group.max(1) as u64) as u32
            } else {
                1
            },
            row_stride: c,
            codes_bytes: codes,
            scales_offset,
            n_scales,
            mins_offset: 0,
            n_mins: 0,
            total_bytes: scales_offset + 4 * n_scales,
        })
    }

    /// Storage cost in bits per weight, scales and padding included.
    pub fn bits_per_weight(&self, rows: u32, cols: u32) -> f64 {
        match self.layout(rows, cols) {
            Ok(l) => l.total_bytes as f64 * 8.0 / (rows as f64 * cols as f64),
            Err(_) => f64::NAN,
        }
    }
}

/// Where each region of a tensor lies, relative to the tensor's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TensorLayout {
    pub rows: u32,
    pub cols: u32,
    /// Row length in elements after padding to whole groups.
    pub padded_cols: u32,
    /// Elements per scale along a row (integer schemes), tile edge (FP8 block).
    pub group_len: u32,
    /// Scales per row (integer schemes) or tiles per row (FP8 block).
    pub groups_per_row: u32,
    /// Bytes from one row's codes to the next.
    pub row_stride: u64,
    pub codes_bytes: u64,
    pub scales_offset: u64,
    pub n_scales: u64,
    pub mins_offset: u64,
    pub n_mins: u64,
    pub total_bytes: u64,
}
