//! GGUF reader (versions 2 and 3, little-endian), ggml block-type tables,
//! dequantisation to `f32`, a few reference quantisers and a minimal writer.
//!
//! Layout of a GGUF file (all integers little-endian):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count   × { key: string, value_type: u32, value }
//! tensor_count × { name: string, n_dims: u32, ne: [u64; n_dims], ggml_type: u32, offset: u64 }
//! zero padding up to `general.alignment` (default 32)
//! tensor data; each tensor's `offset` is relative to the start of this section
//! ```
//!
//! A string is `len: u64` followed by `len` UTF-8 bytes; an array is
//! `elem_type: u32, count: u64` followed by the elements. `ne[0]` is the
//! fastest-varying dimension (row length).
//!
//! Every count, length and offset read from the file is checked against the
//! bytes that remain, so a truncated or hostile file yields an error rather
//! than a panic or an oversized allocation.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;

/// `"GGUF"` read as a little-endian `u32`.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
/// Key that overrides the alignment.
pub const GGUF_KEY_ALIGNMENT: &str = "general.alignment";
/// ggml tensors have at most four dimensions.
pub const GGML_MAX_DIMS: usize = 4;
/// Super-block size of the k-quants.
pub const QK_K: usize = 256;
/// Deepest array nesting accepted (guards the recursion against hostile files).
const MAX_ARRAY_DEPTH: u32 = 16;

// ---------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------

/// The type tag of a GGUF metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    pub fn from_u32(v: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Size on disk for fixed-size types; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes one value of this type can occupy on disk.
    fn min_encoded_size(self) -> usize {
        match self {
            GgufValueType::String => 8,
            GgufValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }

    pub fn name(self) -> &'static str {
        use GgufValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl fmt::Display for GgufValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A homogeneous GGUF array. Stored typed, so a 50k-entry vocabulary or a
/// large `u8` array costs no more memory than its payload.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    /// Array of arrays; each inner array has its own element type.
    Array(Vec<GgufArray>),
}

macro_rules! numeric_conv {
    ($arr:expr, $t:ty, $conv:expr) => {{
        let conv = $conv;
        match $arr {
            GgufArray::U8(v) => v.iter().map(|&x| conv(x as f64, x as i128)).collect(),
            GgufArray::I8(v) => v.iter().map(|&x| conv(x as f64, x as i128)).collect(),
            GgufArray::U16(v) => v.iter().map(|&x| conv(x as f64, x as i128)).collect(),
            GgufArray::I16(v) => v.iter().map(|&x| conv(x as f64, x as i128)).collect(),
            GgufArray::U32(v) => v.iter().map(|&x| conv(x as f64, x as i128)).collect(),
            GgufArray::I32(v) => v.iter().map(|&x| conv(x as f64, x as i128)).collect(),
            GgufArray::U64(v) => v.iter().map(|&x| conv(x as f64, x as i128)).collect(),
            GgufArray::I64(v) => v.iter().map(|&x| conv(x as f64, x as i128)).collect(),
            _ => None::<Vec<$t>>,
        }
    }};
}

impl GgufArray {
    pub fn elem_type(&self) -> GgufValueType {
        use GgufArray as A;
        use GgufValueType as T;
        match self {
            A::U8(_) => T::U8,
            A::I8(_) => T::I8,
            A::U16(_) => T::U16,
            A::I16(_) => T::I16,
            A::U32(_) => T::U32,
            A::I32(_) => T::I32,
            A::U64(_) => T::U64,
            A::I64(_) => T::I64,
            A::F32(_) => T::F32,
            A::F64(_) => T::F64,
            A::Bool(_) => T::Bool,
            A::String(_) => T::String,
            A::Array(_) => T::Array,
        }
    }

    pub fn len(&self) -> usize {
        use GgufArray as A;
        match self {
            A::U8(v) => v.len(),
            A::I8(v) => v.len(),
            A::U16(v) => v.len(),
            A::I16(v) => v.len(),
            A::U32(v) => v.len(),
            A::I32(v) => v.len(),
            A::U64(v) => v.len(),
            A::I64(v) => v.len(),
            A::F32(v) => v.len(),
            A::F64(v) => v.len(),
            A::Bool(v) => v.len(),
            A::String(v) => v.len(),
            A::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a scalar value (cloned); nested arrays come back as `GgufValue::Array`.
    pub fn get(&self, i: usize) -> Option<GgufValue> {
        use GgufArray as A;
        Some(match self {
            A::U8(v) => GgufValue::U8(*v.get(i)?),
            A::I8(v) => GgufValue::I8(*v.get(i)?),
            A::U16(v) => GgufValue::U16(*v.get(i)?),
            A::I16(v) => GgufValue::I16(*v.get(i)?),
            A::U32(v) => GgufValue::U32(*v.get(i)?),
            A::I32(v) => GgufValue::I32(*v.get(i)?),
            A::U64(v) => GgufValue::U64(*v.get(i)?),
            A::I64(v) => GgufValue::I64(*v.get(i)?),
            A::F32(v) => GgufValue::F32(*v.get(i)?),
            A::F64(v) => GgufValue::F64(*v.get(i)?),
            A::Bool(v) => GgufValue::Bool(*v.get(i)?),
            A::String(v) => GgufValue::String(v.get(i)?.clone()),
            A::Array(v) => GgufValue::Array(v.get(i)?.clone()),
        })
    }

    /// Iterator over the strings of a string array.
    pub fn str_iter(&self) -> Option<impl ExactSizeIterator<Item = &str> + '_> {
        match self {
            GgufArray::String(v) => Some(v.iter().map(String::as_str)),
            _ => None,
        }
    }

    pub fn as_str_array(&self) -> Option<Vec<&str>> {
        self.str_iter().map(|it| it.collect())
    }

    /// Borrow an `f32` array without copying.
    pub fn as_f32_slice(&self) -> Option<&[f32]> {
        match self {
            GgufArray::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Any numeric array converted to `f32` (f64 and integers are cast).
    pub fn as_f32_array(&self) -> Option<Vec<f32>> {
        match self {
            GgufArray::F32(v) => Some(v.clone()),
            GgufArray::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            other => numeric_conv!(other, f32, |f: f64, _i: i128| Some(f as f32)),
        }
    }

    /// Any numeric array converted to `f64`.
    pub fn as_f64_array(&self) -> Option<Vec<f64>> {
        match self {
            GgufArray::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
            GgufArray::F64(v) => Some(v.clone()),
            other => numeric_conv!(other, f64, |f: f64, _i: i128| Some(f)),
        }
    }

    /// Integer array converted to `i32`; `None` if not an integer array or a value does not fit.
    pub fn as_i32_array(&self) -> Option<Vec<i32>> {
        numeric_conv!(self, i32, |_f: f64, i: i128| i32::try_from(i).ok())
    }

    /// Integer array converted to `i64`; `None` if not an integer array or a value does not fit.
    pub fn as_i64_array(&self) -> Option<Vec<i64>> {
        numeric_conv!(self, i64, |_f: f64, i: i128| i64::try_from(i).ok())
    }

    /// Integer array converted to `u64`; `None` if not an integer array or a value is negative.
    pub fn as_u64_array(&self) -> Option<Vec<u64>> {
        numeric_conv!(self, u64, |_f: f64, i: i128| u64::try_from(i).ok())
    }

    /// Integer array converted to `u32`; `None` if not an integer array or a value does not fit.
    pub fn as_u32_array(&self) -> Option<Vec<u32>> {
        numeric_conv!(self, u32, |_f: f64, i: i128| u32::try_from(i).ok())
    }

    pub fn as_bool_array(&self) -> Option<&[bool]> {
        match self {
            GgufArray::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_u8_slice(&self) -> Option<&[u8]> {
        match self {
            GgufArray::U8(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_array_array(&self) -> Option<&[GgufArray]> {
        match self {
            GgufArray::Array(v) => Some(v),
            _ => None,
        }
    }

    /// Short human-readable rendering: type, length and the first `max_elems` elements.
    pub fn summary(&self, max_elems: usize) -> String {
        let n = self.len();
        let shown: Vec<String> = (0..n.min(max_elems))
            .filter_map(|i| self.get(i))
            .map(|v| v.summary(max_elems))
            .collect();
        let more = if n > max_elems { ", …" } else { "" };
        format!("[{}; {}] [{}{}]", self.elem_type(), n, shown.join(", "), more)
    }
}

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(GgufArray),
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        use GgufValue as V;
        use GgufValueType as T;
        match self {
            V::U8(_) => T::U8,
            V::I8(_) => T::I8,
            V::U16(_) => T::U16,
            V::I16(_) => T::I16,
            V::U32(_) => T::U32,
            V::I32(_) => T::I32,
            V::U64(_) => T::U64,
            V::I64(_) => T::I64,
            V::F32(_) => T::F32,
            V::F64(_) => T::F64,
            V::Bool(_) => T::Bool,
            V::String(_) => T::String,
            V::Array(_) => T::Array,
        }
    }

    fn as_i128(&self) -> Option<i128> {
        use GgufValue as V;
        Some(match *self {
            V::U8(x) => x as i128,
            V::I8(x) => x as i128,
            V::U16(x) => x as i128,
            V::I16(x) => x as i128,
            V::U32(x) => x as i128,
            V::I32(x) => x as i128,
            V::U64(x) => x as i128,
            V::I64(x) => x as i128,
            _ => return None,
        })
    }

    /// Any integer value that is non-negative, as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|x| u64::try_from(x).ok())
    }

    /// Any integer value that fits in `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_i128().and_then(|x| u32::try_from(x).ok())
    }

    /// Any integer value that fits in `usize`.
    pub fn as_usize(&self) -> Option<usize> {
        self.as_i128().and_then(|x| usize::try_from(x).ok())
    }

    /// Any integer value that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|x| i64::try_from(x).ok())
    }

    /// Any integer value that fits in `i32`.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_i128().and_then(|x| i32::try_from(x).ok())
    }

    /// Floats (f64 narrowed) and integers (cast) as `f32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(x) => Some(x),
            GgufValue::F64(x) => Some(x as f32),
            _ => self.as_i128().map(|x| x as f32),
        }
    }

    /// Floats and integers as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(x) => Some(x as f64),
            GgufValue::F64(x) => Some(x),
            _ => self.as_i128().map(|x| x as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_str_iter(&self) -> Option<impl ExactSizeIterator<Item = &str> + '_> {
        self.as_array()?.str_iter()
    }

    pub fn as_str_array(&self) -> Option<Vec<&str>> {
        self.as_array()?.as_str_array()
    }

    pub fn as_f32_slice(&self) -> Option<&[f32]> {
        self.as_array()?.as_f32_slice()
    }

    pub fn as_f32_array(&self) -> Option<Vec<f32>> {
        self.as_array()?.as_f32_array()
    }

    pub fn as_f64_array(&self) -> Option<Vec<f64>> {
        self.as_array()?.as_f64_array()
    }

    pub fn as_i32_array(&self) -> Option<Vec<i32>> {
        self.as_array()?.as_i32_array()
    }

    pub fn as_i64_array(&self) -> Option<Vec<i64>> {
        self.as_array()?.as_i64_array()
    }

    pub fn as_u32_array(&self) -> Option<Vec<u32>> {
        self.as_array()?.as_u32_array()
    }

    pub fn as_u64_array(&self) -> Option<Vec<u64>> {
        self.as_array()?.as_u64_array()
    }

    /// Short rendering: scalars in full, arrays as type, length and first `max_elems` elements.
    pub fn summary(&self, max_elems: usize) -> String {
        match self {
            GgufValue::String(s) => format!("{s:?}"),
            GgufValue::Array(a) => a.summary(max_elems),
            GgufValue::U8(x) => x.to_string(),
            GgufValue::I8(x) => x.to_string(),
            GgufValue::U16(x) => x.to_string(),
            GgufValue::I16(x) => x.to_string(),
            GgufValue::U32(x) => x.to_string(),
            GgufValue::I32(x) => x.to_string(),
            GgufValue::U64(x) => x.to_string(),
            GgufValue::I64(x) => x.to_string(),
            GgufValue::F32(x) => format!("{x:?}"),
            GgufValue::F64(x) => format!("{x:?}"),
            GgufValue::Bool(x) => x.to_string(),
        }
    }
}

impl From<u8> for GgufValue {
    fn from(v: u8) -> Self {
        GgufValue::U8(v)
    }
}
impl From<i8> for GgufValue {
    fn from(v: i8) -> Self {
        GgufValue::I8(v)
    }
}
impl From<u16> for GgufValue {
    fn from(v: u16) -> Self {
        GgufValue::U16(v)
    }
}
impl From<i16> for GgufValue {
    fn from(v: i16) -> Self {
        GgufValue::I16(v)
    }
}
impl From<u32> for GgufValue {
    fn from(v: u32) -> Self {
        GgufValue::U32(v)
    }
}
impl From<i32> for GgufValue {
    fn from(v: i32) -> Self {
        GgufValue::I32(v)
    }
}
impl From<u64> for GgufValue {
    fn from(v: u64) -> Self {
        GgufValue::U64(v)
    }
}
impl From<i64> for GgufValue {
    fn from(v: i64) -> Self {
        GgufValue::I64(v)
    }
}
impl From<f32> for GgufValue {
    fn from(v: f32) -> Self {
        GgufValue::F32(v)
    }
}
impl From<f64> for GgufValue {
    fn from(v: f64) -> Self {
        GgufValue::F64(v)
    }
}
impl From<bool> for GgufValue {
    fn from(v: bool) -> Self {
        GgufValue::Bool(v)
    }
}
impl From<String> for GgufValue {
    fn from(v: String) -> Self {
        GgufValue::String(v)
    }
}
impl From<&str> for GgufValue {
    fn from(v: &str) -> Self {
        GgufValue::String(v.to_owned())
    }
}
impl From<GgufArray> for GgufValue {
    fn from(v: GgufArray) -> Self {
        GgufValue::Array(v)
    }
}

// ---------------------------------------------------------------------------
// ggml tensor types
// ---------------------------------------------------------------------------

/// ggml tensor element types, with the numbering used in GGUF files.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    // 4 (Q4_2) and 5 (Q4_3) were removed from ggml.
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    /// Repacked Q4_0 (removed from current ggml, still found in older files).
    Q4_0_4_4 = 31,
    Q4_0_4_8 = 32,
    Q4_0_8_8 = 33,
    TQ1_0 = 34,
    TQ2_0 = 35,
    /// Repacked IQ4_NL (removed from current ggml).
    IQ4_NL_4_4 = 36,
    IQ4_NL_4_8 = 37,
    IQ4_NL_8_8 = 38,
    MXFP4 = 39,
}

impl GgmlType {
    pub const ALL: [GgmlType; 38] = {
        use GgmlType::*;
        [
            F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL,
            IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64, IQ1_M, BF16, Q4_0_4_4, Q4_0_4_8, Q4_0_8_8, TQ1_0, TQ2_0, IQ4_NL_4_4, IQ4_NL_4_8,
            IQ4_NL_8_8, MXFP4,
        ]
    };

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| *t as u32 == v)
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            Q4_0_4_4 | Q4_0_4_8 | Q4_0_8_8 | IQ4_NL_4_4 | IQ4_NL_4_8 | IQ4_NL_8_8 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => QK_K,
            IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S | IQ3_S | IQ2_S | IQ4_XS | IQ1_M => QK_K,
            TQ1_0 | TQ2_0 => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            F64 => 8,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            I64 => 8,
            Q4_0 => 2 + 16,
            Q4_1 => 2 + 2 + 16,
            Q5_0 => 2 + 4 + 16,
            Q5_1 => 2 + 2 + 4 + 16,
            Q8_0 => 2 + 32,
            Q8_1 => 2 + 2 + 32,
            Q2_K => 16 + 64 + 2 + 2,
            Q3_K => 32 + 64 + 12 + 2,
            Q4_K => 2 + 2 + 12 + 128,
            Q5_K => 2 + 2 + 12 + 32 + 128,
            Q6_K => 128 + 64 + 16 + 2,
            Q8_K => 4 + 256 + 2 * 16,
            IQ2_XXS => 2 + 2 * (QK_K / 8),
            IQ2_XS => 2 + 2 * (QK_K / 8) + QK_K / 32,
            IQ3_XXS => 2 + 3 * QK_K / 8,
            IQ1_S => 2 + QK_K / 8 + 2 * (QK_K / 32),
            IQ4_NL => 2 + 16,
            IQ3_S => 2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64,
            IQ2_S => 2 + QK_K / 4 + QK_K / 32 + QK_K / 32,
            IQ4_XS => 2 + 2 + QK_K / 64 + QK_K / 2,
            IQ1_M => QK_K / 8 + QK_K / 16 + QK_K / 32,
            Q4_0_4_4 | Q4_0_4_8 | Q4_0_8_8 => 18,
            IQ4_NL_4_4 | IQ4_NL_4_8 | IQ4_NL_8_8 => 18,
            TQ1_0 => 2 + QK_K / 64 + (QK_K - 4 * QK_K / 64) / 5,
            TQ2_0 => 2 + QK_K / 4,
            MXFP4 => 1 + 16,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | F64 | I8 | I16 | I32 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K
        )
    }

    /// Bytes used by `n_elements` elements; `None` if `n_elements` is not a
    /// whole number of blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if n_elements % bs != 0 {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size() as u64)
    }

    /// Bytes in one row of `ne0` elements (`None` if not a whole number of blocks).
    pub fn row_size(self, ne0: u64) -> Option<u64> {
        self.bytes_for(ne0)
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            Q4_0_4_4 => "Q4_0_4_4",
            Q4_0_4_8 => "Q4_0_4_8",
            Q4_0_8_8 => "Q4_0_8_8",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            IQ4_NL_4_4 => "IQ4_NL_4_4",
            IQ4_NL_4_8 => "IQ4_NL_4_8",
            IQ4_NL_8_8 => "IQ4_NL_8_8",
            MXFP4 => "MXFP4",
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for GgmlType {
    type Error = anyhow::Error;
    fn try_from(v: u32) -> Result<Self> {
        GgmlType::from_u32(v).ok_or_else(|| anyhow!("unknown ggml type {v}"))
    }
}

// ---------------------------------------------------------------------------
// Tensor infos and the file
// ---------------------------------------------------------------------------

/// One entry of the tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// `ne[0..n_dims]`; `ne[0]` is the fastest-varying (row length).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Product of `dims`.
    pub n_elements: u64,
    /// Exact byte size of the tensor's data.
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    pub fn n_dims(&self) -> usize {
        self.dims.len()
    }

    /// `dims` padded with 1s to four entries, as ggml's `ne`.
    pub fn ne(&self) -> [u64; GGML_MAX_DIMS] {
        let mut ne = [1u64; GGML_MAX_DIMS];
        ne[..self.dims.len()].copy_from_slice(&self.dims);
        ne
    }

    /// Bytes in one row (`ne[0]` elements).
    pub fn row_bytes(&self) -> u64 {
        self.ggml_type.row_size(self.dims.first().copied().unwrap_or(1)).unwrap_or(0)
    }
}

enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file whose tensor data stays memory-mapped.
pub struct GgufFile {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Where the file came from (`None` for [`GgufFile::from_bytes`]).
    pub path: Option<PathBuf>,
    data: Backing,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_size", &self.file_size())
            .finish()
    }
}

impl GgufFile {
    /// Memory-map and parse a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).with_context(|| format!("cannot open GGUF file {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot stat GGUF file {}", path.display()))?
            .len();
        let backing = if len == 0 {
            // Mapping an empty file fails on some platforms; parse reports it.
            Backing::Owned(Vec::new())
        } else {
            let map = crate::model_file::map_readonly(&file, path)?;
            Backing::Mmap(map)
        };
        let mut g = Self::parse(backing).with_context(|| format!("invalid GGUF file {}", path.display()))?;
        g.path = Some(path.to_path_buf());
        Ok(g)
    }

    /// Parse a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Backing::Owned(bytes)).context("invalid GGUF data")
    }

    fn parse(backing: Backing) -> Result<Self> {
        let buf = backing.bytes();
        let file_size = buf.len() as u64;
        let mut r = Reader { buf, pos: 0 };

        let magic = r.take(4, "magic")?;
        ensure!(magic == GGUF_MAGIC, "bad magic {:02x?} (expected \"GGUF\")", magic);
        let version = r.u32("version")?;
        if version == 1 {
            bail!("GGUF version 1 is not supported (only versions 2 and 3)");
        }
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            bail!("big-endian GGUF files are not supported");
        }
        ensure!(version == 2 || version == 3, "unsupported GGUF version {version} (only 2 and 3)");
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata KV count")?;

        // Each KV takes at least 8 (key len) + 4 (type) + 1 (value) bytes.
        let n_kv = r.check_count(n_kv, 13, "metadata KV count")?;
        // Each tensor info takes at least 8 + 4 + 4 + 8 bytes.
        let n_tensors_usize = {
            let remaining_after_kv = r.remaining().saturating_sub(n_kv * 13) as u64;
            ensure!(
                n_tensors <= remaining_after_kv / 24,
                "tensor count {n_tensors} is impossible: file has only {} bytes left",
                r.remaining()
            );
            n_tensors as usize
        };

        let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv);
        for i in 0..n_kv {
            let start = r.pos;
            let key = r.string("key").with_context(|| format!("metadata KV #{i} at offset {start}"))?;
            let value = (|| -> Result<GgufValue> {
                let ty = r.u32("value type")?;
                read_value(&mut r, ty, 0)
            })()
            .with_context(|| format!("metadata KV #{i} '{key}' at offset {start}"))?;
            if metadata.iter().any(|(k, _)| *k == key) {
                bail!("duplicate metadata key '{key}' (KV #{i})");
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == GGUF_KEY_ALIGNMENT) {
            None => GGUF_DEFAULT_ALIGNMENT,
            Some((_, v)) => {
                let a = v
                    .as_u64()
                    .ok_or_else(|| anyhow!("{GGUF_KEY_ALIGNMENT} must be an unsigned integer, got {:?}", v))?;
                ensure!(a != 0 && a.is_power_of_two(), "{GGUF_KEY_ALIGNMENT} = {a} is not a power of two");
                a
            }
        };

        let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors_usize);
        for i in 0..n_tensors_usize {
            let start = r.pos;
            let name = r
                .string("tensor name")
                .with_context(|| format!("tensor info #{i} at offset {start}"))?;
            let info = read_tensor_info(&mut r, name.clone(), alignment)
                .with_context(|| format!("tensor info #{i} '{name}' at offset {start}"))?;
            tensors.push(info);
        }
        {
            let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                bail!("duplicate tensor name '{}'", w[0]);
            }
        }

        let data_offset = align_up(r.pos as u64, alignment).ok_or_else(|| anyhow!("data section offset overflows"))?;
        if !tensors.is_empty() {
            ensure!(
                data_offset <= file_size,
                "data section would start at {data_offset}, past the end of the {file_size}-byte file"
            );
        }
        let data_size = file_size.saturating_sub(data_offset);
        for t in &tensors {
            let end = t.offset.checked_add(t.n_bytes);
            match end {
                Some(end) if end <= data_size => {}
                _ => bail!(
                    "tensor '{}' ({} {:?}, {} bytes at data offset {}) extends past the end of the file \
                     (data section is {} bytes, starting at {})",
                    t.name,
                    t.ggml_type,
                    t.dims,
                    t.n_bytes,
                    t.offset,
                    data_size,
                    data_offset
                ),
            }
        }

        Ok(GgufFile {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            path: None,
            data: backing,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    pub fn file_size(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Metadata value by key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Metadata value by key, or an error naming the key and file.
    pub fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key)
            .ok_or_else(|| anyhow!("{}: metadata key '{key}' is missing", self.display_name()))
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `"{architecture}.{suffix}"`, e.g. `arch_get("block_count")`.
    pub fn arch_get(&self, suffix: &str) -> Option<&GgufValue> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.{suffix}"))
    }

    /// Tensor info by name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Raw bytes of a tensor, exactly `info.n_bytes` long.
    pub fn tensor_data(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let what = || format!("{}: tensor '{}'", self.display_name(), info.name);
        let expect = info
            .ggml_type
            .bytes_for(info.n_elements)
            .ok_or_else(|| anyhow!("{}: size is not a whole number of blocks", what()))?;
        ensure!(
            expect == info.n_bytes,
            "{}: recorded size {} does not match {} for {} {:?}",
            what(),
            info.n_bytes,
            expect,
            info.ggml_type,
            info.dims
        );
        let start = self
            .data_offset
            .checked_add(info.offset)
            .ok_or_else(|| anyhow!("{}: offset overflows", what()))?;
        let end = start
            .checked_add(info.n_bytes)
            .ok_or_else(|| anyhow!("{}: size overflows", what()))?;
        let bytes = self.bytes();
        ensure!(
            end <= bytes.len() as u64,
            "{}: bytes {start}..{end} lie outside the {}-byte file",
            what(),
            bytes.len()
        );
        Ok(&bytes[start as usize..end as usize])
    }

    /// Raw bytes of a tensor by name.
    pub fn tensor_data_by_name(&self, name: &str) -> Result<&[u8]> {
        let info = self
            .tensor(name)
            .ok_or_else(|| anyhow!("{}: no tensor named '{name}'", self.display_name()))?;
        self.tensor_data(info)
    }

    /// A tensor dequantised to `f32` (row-major, `ne[0]` fastest).
    pub fn tensor_f32(&self, info: &GgufTensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_data(info)?;
        let n = usize::try_from(info.n_elements).map_err(|_| anyhow!("tensor '{}' is too large for this platform", info.name))?;
        dequantize(info.ggml_type, bytes, n).with_context(|| format!("{}: dequantising tensor '{}'", self.display_name(), info.name))
    }

    fn display_name(&self) -> Cow<'_, str> {
        match &self.path {
            Some(p) => Cow::Owned(p.display().to_string()),
            None => Cow::Borrowed("<in-memory GGUF>"),
        }
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    debug_assert!(a.is_power_of_two());
    Some(x.checked_add(a - 1)? & !(a - 1))
}

fn read_tensor_info(r: &mut Reader<'_>, name: String, alignment: u64) -> Result<GgufTensorInfo> {
    let n_dims = r.u32("n_dims")?;
    ensure!(
        (1..=GGML_MAX_DIMS as u32).contains(&n_dims),
        "n_dims = {n_dims} (must be 1..={GGML_MAX_DIMS})"
    );
    let mut dims = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        let ne = r.u64("dimension")?;
        ensure!(ne <= i64::MAX as u64, "dimension ne[{d}] = {ne} is out of range");
        dims.push(ne);
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| anyhow!("element count of dims {dims:?} overflows"))?;
    let ty_raw = r.u32("ggml type")?;
    let ggml_type = GgmlType::from_u32(ty_raw).ok_or_else(|| anyhow!("tensor '{name}' has unknown ggml type {ty_raw}"))?;
    let bs = ggml_type.block_size() as u64;
    ensure!(
        dims[0] % bs == 0,
        "tensor '{name}': row length ne[0] = {} is not a multiple of the {} block size {bs}",
        dims[0],
        ggml_type
    );
    let n_bytes = ggml_type
        .bytes_for(n_elements)
        .ok_or_else(|| anyhow!("tensor '{name}': byte size overflows"))?;
    let offset = r.u64("data offset")?;
    ensure!(
        offset % alignment == 0,
        "tensor '{name}': data offset {offset} is not a multiple of the alignment {alignment}"
    );
    Ok(GgufTensorInfo {
        name,
        dims,
        ggml_type,
        offset,
        n_elements,
        n_bytes,
    })
}

fn read_value(r: &mut Reader<'_>, ty_raw: u32, depth: u32) -> Result<GgufValue> {
    let ty = GgufValueType::from_u32(ty_raw).ok_or_else(|| anyhow!("unknown metadata value type {ty_raw}"))?;
    Ok(match ty {
        GgufValueType::U8 => GgufValue::U8(r.u8("u8")?),
        GgufValueType::I8 => GgufValue::I8(r.u8("i8")? as i8),
        GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(r.array("u16")?)),
        GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(r.array("i16")?)),
        GgufValueType::U32 => GgufValue::U32(r.u32("u32")?),
        GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(r.array("i32")?)),
        GgufValueType::U64 => GgufValue::U64(r.u64("u64")?),
        GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(r.array("i64")?)),
        GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(r.array("f32")?)),
        GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(r.array("f64")?)),
        GgufValueType::Bool => GgufValue::Bool(r.u8("bool")? != 0),
        GgufValueType::String => GgufValue::String(r.string("string")?),
        GgufValueType::Array => GgufValue::Array(read_array(r, depth + 1)?),
    })
}

fn read_array(r: &mut Reader<'_>, depth: u32) -> Result<GgufArray> {
    ensure!(depth <= MAX_ARRAY_DEPTH, "arrays nested deeper than {MAX_ARRAY_DEPTH} levels");
    let et_raw = r.u32("array element type")?;
    let et = GgufValueType::from_u32(et_raw).ok_or_else(|| anyhow!("unknown array element type {et_raw}"))?;
    let count = r.u64("array length")?;
    let n = r.check_count(count, et.min_encoded_size(), "array length")?;

    macro_rules! fixed {
        ($variant:ident, $t:ty) => {{
            const S: usize = std::mem::size_of::<$t>();
            let bytes = r.take(n * S, concat!("array of ", stringify!($t)))?;
            GgufArray::$variant(bytes.chunks_exact(S).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect())
        }};
    }

    Ok(match et {
        GgufValueType::U8 => GgufArray::U8(r.take(n, "array of u8")?.to_vec()),
        GgufValueType::I8 => GgufArray::I8(r.take(n, "array of i8")?.iter().map(|&b| b as i8).collect()),
        GgufValueType::Bool => GgufArray::Bool(r.take(n, "array of bool")?.iter().map(|&b| b != 0).collect()),
        GgufValueType::U16 => fixed!(U16, u16),
        GgufValueType::I16 => fixed!(I16, i16),
        GgufValueType::U32 => fixed!(U32, u32),
        GgufValueType::I32 => fixed!(I32, i32),
        GgufValueType::U64 => fixed!(U64, u64),
        GgufValueType::I64 => fixed!(I64, i64),
        GgufValueType::F32 => fixed!(F32, f32),
        GgufValueType::F64 => fixed!(F64, f64),
        GgufValueType::String => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(r.string("string").with_context(|| format!("array element #{i}"))?);
            }
            GgufArray::String(v)
        }
        GgufValueType::Array => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(read_array(r, depth + 1).with_context(|| format!("array element #{i}"))?);
            }
            GgufArray::Array(v)
        }
    })
}

/// Bounds-checked little-endian cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            bail!(
                "unexpected end of file at offset {} reading {what}: need {n} bytes, {} left",
                self.pos,
                self.remaining()
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().unwrap())
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in
    /// what is left of the file, and returns it as `usize`.
    fn check_count(&self, count: u64, min_size: usize, what: &str) -> Result<usize> {
        let max = (self.remaining() / min_size.max(1)) as u64;
        ensure!(
            count <= max,
            "{what} {count} at offset {} is impossible: only {} bytes remain (at most {max} items fit)",
            self.pos.saturating_sub(8),
            self.remaining()
        );
        Ok(count as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let len = usize::try_from(len).ok().filter(|&l| l <= self.remaining()).ok_or_else(|| {
            anyhow!(
                "{what} length {len} at offset {at} exceeds the {} bytes left in the file",
                self.remaining()
            )
        })?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| anyhow!("{what} at offset {at} is not valid UTF-8: {e}"))
    }
}

// ---------------------------------------------------------------------------
// Dequantisation
// ---------------------------------------------------------------------------

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantise `n` elements of type `ty` stored in `bytes` (which must be
/// exactly the size `ty` needs for `n` elements).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// Like [`dequantize`], writing into `out` (`out.len()` elements).
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let n = out.len();
    let bs = ty.block_size();
    let ts = ty.type_size();
    ensure!(n % bs == 0, "{n} elements is not a multiple of the {ty} block size {bs}");
    let need = (n / bs)
        .checked_mul(ts)
        .ok_or_else(|| anyhow!("size of {n} {ty} elements overflows"))?;
    ensure!(bytes.len() == need, "{n} {ty} elements need {need} bytes, got {}", bytes.len());
    let blocks = bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs));
    use GgmlType::*;
    match ty {
        F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes(b.try_into().unwrap());
            }
        }
        F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        BF16 => {
            for (b, y) in blocks {
                y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        F64 => {
            for (b, y) in blocks {
                y[0] = f64::from_le_bytes(b.try_into().unwrap()) as f32;
            }
        }
        I8 => {
            for (b, y) in blocks {
                y[0] = b[0] as i8 as f32;
            }
        }
        I16 => {
            for (b, y) in blocks {
                y[0] = i16::from_le_bytes([b[0], b[1]]) as f32;
            }
        }
        I32 => {
            for (b, y) in blocks {
                y[0] = i32::from_le_bytes(b.try_into().unwrap()) as f32;
            }
        }
        Q8_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
                    *yj = (q as i8) as f32 * d;
                }
            }
        }
        Q8_1 => {
            // { d: f16, s: f16, qs: [i8; 32] }; s = d * sum(qs) is redundant.
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for (yj, &q) in y.iter_mut().zip(&b[4..36]) {
                    *yj = (q as i8) as f32 * d;
                }
            }
        }
        Q4_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                for j in 0..16 {
                    y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
                    y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        Q4_1 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                for j in 0..16 {
                    y[j] = (qs[j] & 0x0F) as f32 * d + m;
                    y[j + 16] = (qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        Q5_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes(b[2..6].try_into().unwrap());
                let qs = &b[6..22];
                for j in 0..16 {
                    let xh0 = (((qh >> j) << 4) & 0x10) as u8;
                    let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
                    let x0 = ((qs[j] & 0x0F) | xh0) as i32 - 16;
                    let x1 = ((qs[j] >> 4) | xh1) as i32 - 16;
                    y[j] = x0 as f32 * d;
                    y[j + 16] = x1 as f32 * d;
                }
            }
        }
        Q5_1 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qh = u32::from_le_bytes(b[4..8].try_into().unwrap());
                let qs = &b[8..24];
                for j in 0..16 {
                    let xh0 = (((qh >> j) << 4) & 0x10) as u8;
                    let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
                    let x0 = (qs[j] & 0x0F) | xh0;
                    let x1 = (qs[j] >> 4) | xh1;
                    y[j] = x0 as f32 * d + m;
                    y[j + 16] = x1 as f32 * d + m;
                }
            }
        }
        Q2_K => {
            // { scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16 }
            for (b, y) in blocks {
                let scales = &b[0..16];
                let qs_all = &b[16..80];
                let d = f16_at(b, 80);
                let min = f16_at(b, 82);
                let mut yi = 0;
                let mut is = 0;
                for n in 0..2 {
                    let q = &qs_all[n * 32..n * 32 + 32];
                    let mut shift = 0;
                    for _ in 0..4 {
                        let sc = scales[is];
                        is += 1;
                        let dl = d * (sc & 0xF) as f32;
                        let ml = min * (sc >> 4) as f32;
                        for &ql in &q[0..16] {
                            y[yi] = dl * ((ql >> shift) & 3) as f32 - ml;
                            yi += 1;
                        }
                        let sc = scales[is];
                        is += 1;
                        let dl = d * (sc & 0xF) as f32;
                        let ml = min * (sc >> 4) as f32;
                        for &ql in &q[16..32] {
                            y[yi] = dl * ((ql >> shift) & 3) as f32 - ml;
                            yi += 1;
                        }
                        shift += 2;
                    }
                }
            }
        }
        Q3_K => {
            // { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 }
            const KMASK1: u32 = 0x0303_0303;
            const KMASK2: u32 = 0x0f0f_0f0f;
            for (b, y) in blocks {
                let hm = &b[0..32];
                let qs_all = &b[32..96];
                let d_all = f16_at(b, 108);
                let mut aux = [0u32; 4];
                for (k, a) in aux.iter_mut().take(3).enumerate() {
                    *a = u32::from_le_bytes(b[96 + 4 * k..100 + 4 * k].try_into().unwrap());
                }
                let tmp = aux[2];
                aux[2] = ((aux[0] >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4);
                aux[3] = ((aux[1] >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4);
                aux[0] = (aux[0] & KMASK2) | ((tmp & KMASK1) << 4);
                aux[1] = (aux[1] & KMASK2) | (((tmp >> 2) & KMASK1) << 4);
                let mut scales = [0i8; 16];
                for (k, a) in aux.iter().enumerate() {
                    for (l, byte) in a.to_le_bytes().iter().enumerate() {
                        scales[4 * k + l] = *byte as i8;
                    }
                }
                let mut yi = 0;
                let mut is = 0;
                let mut m: u8 = 1;
                for n in 0..2 {
                    let q = &qs_all[n * 32..n * 32 + 32];
                    let mut shift = 0;
                    for _ in 0..4 {
                        for half in 0..2 {
                            let dl = d_all * (scales[is] as i32 - 32) as f32;
                            is += 1;
                            for l in 0..16 {
                                let idx = half * 16 + l;
                                let low = ((q[idx] >> shift) & 3) as i32;
                                let sub = if hm[idx] & m != 0 { 0 } else { 4 };
                                y[yi] = dl * (low - sub) as f32;
                                yi += 1;
                            }
                        }
                        shift += 2;
                        m = m.wrapping_shl(1);
                    }
                }
            }
        }
        Q4_K => {
            // { d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let min = f16_at(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                let mut is = 0;
                for (j, yc) in y.chunks_exact_mut(64).enumerate() {
                    let q = &qs[j * 32..j * 32 + 32];
                    let (sc1, m1) = get_scale_min_k4(is, scales);
                    let (sc2, m2) = get_scale_min_k4(is + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
                    for l in 0..32 {
                        yc[l] = d1 * (q[l] & 0xF) as f32 - m1;
                        yc[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                    is += 2;
                }
            }
        }
        Q5_K => {
            // { d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let min = f16_at(b, 2);
                let scales = &b[4..16];
                let qh = &b[16..48];
                let qs = &b[48..176];
                let mut is = 0;
                let mut u1: u8 = 1;
                let mut u2: u8 = 2;
                for (j, yc) in y.chunks_exact_mut(64).enumerate() {
                    let ql = &qs[j * 32..j * 32 + 32];
                    let (sc1, m1) = get_scale_min_k4(is, scales);
                    let (sc2, m2) = get_scale_min_k4(is + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
                    for l in 0..32 {
                        let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                        let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                        yc[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                        yc[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
                    }
                    is += 2;
                    u1 = u1.wrapping_shl(2);
                    u2 = u2.wrapping_shl(2);
                }
            }
        }
        Q6_K => {
            // { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }
            for (b, y) in blocks {
                let d = f16_at(b, 208);
                for (n, yc) in y.chunks_exact_mut(128).enumerate() {
                    let ql = &b[n * 64..n * 64 + 64];
                    let qh = &b[128 + n * 32..128 + n * 32 + 32];
                    let sc = &b[192 + n * 8..192 + n * 8 + 8];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        yc[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        yc[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        yc[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        yc[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
        Q8_K => {
            // { d: f32, qs: [i8; 256], bsums: [i16; 16] }
            for (b, y) in blocks {
                let d = f32::from_le_bytes(b[0..4].try_into().unwrap());
                for (yj, &q) in y.iter_mut().zip(&b[4..260]) {
                    *yj = d * (q as i8) as f32;
                }
            }
        }
        other => bail!("dequantisation of {other} tensors is not supported"),
    }
    Ok(())
}

/// ggml's `get_scale_min_k4`: unpack the 6-bit scale and min number `j` of a Q4_K/Q5_K block.
#[inline]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

// ---------------------------------------------------------------------------
// Reference quantisers (bit-compatible with ggml's quantize_row_*_ref)
// ---------------------------------------------------------------------------

/// Quantise to Q8_0 like ggml's `quantize_row_q8_0_ref`. `x.len()` must be a multiple of 32.
pub fn quantize_q8_0(x: &[f32]) -> Result<Vec<u8>> {
    ensure!(x.len() % 32 == 0, "Q8_0 needs a multiple of 32 values, got {}", x.len());
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for blk in x.chunks_exact(32) {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(blk.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    Ok(out)
}

/// Quantise to Q4_0 like ggml's `quantize_row_q4_0_ref`. `x.len()` must be a multiple of 32.
pub fn quantize_q4_0(x: &[f32]) -> Result<Vec<u8>> {
    ensure!(x.len() % 32 == 0, "Q4_0 needs a multiple of 32 values, got {}", x.len());
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for blk in x.chunks_exact(32) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in blk {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for j in 0..16 {
            let x0 = blk[j] * id;
            let x1 = blk[j + 16] * id;
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            out.push(xi0 | (xi1 << 4));
        }
    }
    Ok(out)
}

/// Quantise to Q4_1 like ggml's `quantize_row_q4_1_ref`. `x.len()` must be a multiple of 32.
pub fn quantize_q4_1(x: &[f32]) -> Result<Vec<u8>> {
    ensure!(x.len() % 32 == 0, "Q4_1 needs a multiple of 32 values, got {}", x.len());
    let mut out = Vec::with_capacity(x.len() / 32 * 20);
    for blk in x.chunks_exact(32) {
        let min = blk.iter().copied().fold(f32::MAX, f32::min);
        let max = blk.iter().copied().fold(-f32::MAX, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_bits().to_le_bytes());
        for j in 0..16 {
            let x0 = (blk[j] - min) * id;
            let x1 = (blk[j + 16] - min) * id;
            let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
            out.push(xi0 | (xi1 << 4));
        }
    }
    Ok(out)
}

/// `f32` values as little-endian F16 bytes.
pub fn encode_f16(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes()).collect()
}

/// `f32` values as little-endian BF16 bytes.
pub fn encode_bf16(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes()).collect()
}

/// `f32` values as little-endian F32 bytes.
pub fn encode_f32(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

struct PendingTensor {
    name: String,
    ggml_type: GgmlType,
    dims: Vec<u64>,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory: metadata KVs in insertion order, tensors
/// with their data aligned to `general.alignment` (default 32).
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// A version-3 writer.
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Choose the version written (2 or 3; the layouts are identical for little-endian).
    pub fn with_version(mut self, version: u32) -> Result<Self> {
        ensure!(version == 2 || version == 3, "can only write GGUF v2 or v3");
        self.version = version;
        Ok(self)
    }

    /// Add a metadata KV; an existing key is replaced in place.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: impl Into<GgufValue>) -> &mut Self {
        let key = key.into();
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Set the data alignment (written as `general.alignment: u32`).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<&mut Self> {
        ensure!(
            alignment != 0 && alignment.is_power_of_two(),
            "alignment {alignment} is not a power of two"
        );
        Ok(self.add_metadata(GGUF_KEY_ALIGNMENT, GgufValue::U32(alignment)))
    }

    fn alignment(&self) -> Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == GGUF_KEY_ALIGNMENT) {
            None => Ok(GGUF_DEFAULT_ALIGNMENT),
            Some((_, v)) => {
                let a = v
                    .as_u64()
                    .filter(|a| *a != 0 && a.is_power_of_two())
                    .ok_or_else(|| anyhow!("invalid {GGUF_KEY_ALIGNMENT} value {v:?}"))?;
                Ok(a)
            }
        }
    }

    /// Add a tensor of raw bytes; `dims` is `ne[]` with `ne[0]` fastest.
    pub fn add_tensor(&mut self, name: impl Into<String>, ggml_type: GgmlType, dims: &[u64], data: Vec<u8>) -> Result<&mut Self> {
        let name = name.into();
        ensure!(
            (1..=GGML_MAX_DIMS).contains(&dims.len()),
            "tensor '{name}': {} dims (must be 1..={GGML_MAX_DIMS})",
            dims.len()
        );
        ensure!(
            dims[0] % ggml_type.block_size() as u64 == 0,
            "tensor '{name}': ne[0] = {} is not a multiple of the {ggml_type} block size {}",
            dims[0],
            ggml_type.block_size()
        );
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow!("tensor '{name}': element count overflows"))?;
        let need = ggml_type.bytes_for(n).ok_or_else(|| anyhow!("tensor '{name}': size overflows"))?;
        ensure!(
            data.len() as u64 == need,
            "tensor '{name}': {ggml_type} {dims:?} needs {need} bytes, got {}",
            data.len()
        );
        ensure!(!self.tensors.iter().any(|t| t.name == name), "duplicate tensor name '{name}'");
        self.tensors.push(PendingTensor {
            name,
            ggml_type,
            dims: dims.to_vec(),
            data,
        });
        Ok(self)
    }

    /// Add an F32 tensor.
    pub fn add_f32_tensor(&mut self, name: impl Into<String>, dims: &[u64], x: &[f32]) -> Result<&mut Self> {
        self.add_tensor(name, GgmlType::F32, dims, encode_f32(x))
    }

    /// Serialise to a byte vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Serialise to a file, atomically (temporary file, fsync, rename).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        crate::model_file::write_atomic_with(path, |w| self.write_to(w)).with_context(|| format!("writing GGUF file {}", path.display()))
    }

    /// Serialise to any writer.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<()> {
        let alignment = self.alignment()?;
        let mut w = CountingWriter { inner: w, pos: 0 };
        w.put(&GGUF_MAGIC)?;
        w.put(&self.version.to_le_bytes())?;
        w.put(&(self.tensors.len() as u64).to_le_bytes())?;
        w.put(&(self.metadata.len() as u64).to_le_bytes())?;
        for (k, v) in &self.metadata {
            write_string(&mut w, k)?;
            w.put(&(v.value_type() as u32).to_le_bytes())?;
            write_value(&mut w, v)?;
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            write_string(&mut w, &t.name)?;
            w.put(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.put(&d.to_le_bytes())?;
            }
            w.put(&(t.ggml_type as u32).to_le_bytes())?;
            w.put(&offset.to_le_bytes())?;
            offsets.push(offset);
            offset = align_up(offset + t.data.len() as u64, alignment).unwrap();
        }
        w.pad_to(alignment)?;
        let data_start = w.pos;
        for (t, off) in self.tensors.iter().zip(offsets) {
            debug_assert_eq!(w.pos - data_start, off);
            w.put(&t.data)?;
            w.pad_to(alignment)?;
        }
        Ok(())
    }
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    pos: u64,
}

impl<W: Write> CountingWriter<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.inner.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, alignment: u64) -> Result<()> {
        let pad = align_up(self.pos, alignment).unwrap() - self.pos;
        self.put(&vec![0u8; pad as usize])
    }
}

fn write_string<W: Write>(w: &mut CountingWriter<'_, W>, s: &str) -> Result<()> {
    w.put(&(s.len() as u64).to_le_bytes())?;
    w.put(s.as_bytes())
}

fn write_value<W: Write>(w: &mut CountingWriter<'_, W>, v: &GgufValue) -> Result<()> {
    match v {
        GgufValue::U8(x) => w.put(&[*x]),
        GgufValue::I8(x) => w.put(&[*x as u8]),
        GgufValue::U16(x) => w.put(&x.to_le_bytes()),
        GgufValue::I16(x) => w.put(&x.to_le_bytes()),
        GgufValue::U32(x) => w.put(&x.to_le_bytes()),
        GgufValue::I32(x) => w.put(&x.to_le_bytes()),
        GgufValue::U64(x) => w.put(&x.to_le_bytes()),
        GgufValue::I64(x) => w.put(&x.to_le_bytes()),
        GgufValue::F32(x) => w.put(&x.to_le_bytes()),
        GgufValue::F64(x) => w.put(&x.to_le_bytes()),
        GgufValue::Bool(x) => w.put(&[*x as u8]),
        GgufValue::String(s) => write_string(w, s),
        GgufValue::Array(a) => write_array(w, a),
    }
}

fn write_array<W: Write>(w: &mut CountingWriter<'_, W>, a: &GgufArray) -> Result<()> {
    w.put(&(a.elem_type() as u32).to_le_bytes())?;
    w.put(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                w.put(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        GgufArray::U8(v) => w.put(v),
        GgufArray::I8(v) => each!(v),
        GgufArray::U16(v) => each!(v),
        GgufArray::I16(v) => each!(v),
        GgufArray::U32(v) => each!(v),
        GgufArray::I32(v) => each!(v),
        GgufArray::U64(v) => each!(v),
        GgufArray::I64(v) => each!(v),
        GgufArray::F32(v) => each!(v),
        GgufArray::F64(v) => each!(v),
        GgufArray::Bool(v) => {
            for b in v {
                w.put(&[*b as u8])?;
            }
            Ok(())
        }
        GgufArray::String(v) => {
            for s in v {
                write_string(w, s)?;
            }
            Ok(())
        }
        GgufArray::Array(v) => {
            for inner in v {
                write_array(w, inner)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift PRNG for test data.
    struct Rng(u64);
    impl Rng {
        fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn f32(&mut self) -> f32 {
            (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next_u64() as u8).collect()
        }
    }

    fn all_types_metadata() -> Vec<(String, GgufValue)> {
        let v: Vec<(&str, GgufValue)> = vec![
            ("general.architecture", "llama".into()),
            ("t.u8", GgufValue::U8(200)),
            ("t.i8", GgufValue::I8(-100)),
            ("t.u16", GgufValue::U16(60000)),
            ("t.i16", GgufValue::I16(-30000)),
            ("t.u32", GgufValue::U32(4_000_000_000)),
            ("t.i32", GgufValue::I32(-2_000_000_000)),
            ("t.u64", GgufValue::U64(u64::MAX - 5)),
            ("t.i64", GgufValue::I64(i64::MIN + 7)),
            ("t.f32", GgufValue::F32(1.5e-5)),
            ("t.f64", GgufValue::F64(-2.25e100)),
            ("t.bool_t", GgufValue::Bool(true)),
            ("t.bool_f", GgufValue::Bool(false)),
            ("t.str", "héllo ☃ wörld".into()),
            ("t.str_empty", "".into()),
            ("t.a_u8", GgufArray::U8(vec![0, 1, 255]).into()),
            ("t.a_i8", GgufArray::I8(vec![-128, 0, 127]).into()),
            ("t.a_u16", GgufArray::U16(vec![1, 65535]).into()),
            ("t.a_i16", GgufArray::I16(vec![-32768, 32767]).into()),
            ("t.a_u32", GgufArray::U32(vec![7, 8, 9]).into()),
            ("t.a_i32", GgufArray::I32(vec![-1, 2, -3, 4]).into()),
            ("t.a_u64", GgufArray::U64(vec![u64::MAX, 0]).into()),
            ("t.a_i64", GgufArray::I64(vec![i64::MIN, i64::MAX]).into()),
            ("t.a_f32", GgufArray::F32(vec![0.5, -1.25, 3.0]).into()),
            ("t.a_f64", GgufArray::F64(vec![1e-300, 2.5]).into()),
            ("t.a_bool", GgufArray::Bool(vec![true, false, true]).into()),
            ("t.a_str", GgufArray::String(vec!["a".into(), "".into(), "Ġthe".into()]).into()),
            ("t.a_empty", GgufArray::F32(vec![]).into()),
            (
                "t.a_nested",
                GgufArray::Array(vec![
                    GgufArray::I32(vec![1, 2]),
                    GgufArray::String(vec!["x".into()]),
                    GgufArray::Array(vec![GgufArray::U8(vec![9]), GgufArray::Bool(vec![])]),
                    GgufArray::F64(vec![]),
                ])
                .into(),
            ),
        ];
        v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    struct TestTensors {
        f32v: Vec<f32>,
        f16v: Vec<f32>,
        bf16v: Vec<f32>,
        q8v: Vec<f32>,
        q40v: Vec<f32>,
        q41v: Vec<f32>,
    }

    fn build_test_file(version: u32) -> (Vec<u8>, Vec<(String, GgufValue)>, TestTensors) {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let tt = TestTensors {
            f32v: (0..24).map(|_| rng.f32() * 10.0).collect(),
            f16v: (0..32).map(|_| rng.f32()).collect(),
            bf16v: (0..6).map(|_| rng.f32() * 3.0).collect(),
            q8v: (0..128).map(|_| rng.f32() * 4.0).collect(),
            q40v: (0..96).map(|_| rng.f32()).collect(),
            q41v: (0..64).map(|_| rng.f32() + 0.5).collect(),
        };
        let meta = all_types_metadata();
        let mut w = GgufWriter::new().with_version(version).unwrap();
        for (k, v) in &meta {
            w.add_metadata(k.clone(), v.clone());
        }
        w.add_f32_tensor("f32", &[8, 3], &tt.f32v).unwrap();
        w.add_tensor("f16", GgmlType::F16, &[16, 2], encode_f16(&tt.f16v)).unwrap();
        w.add_tensor("bf16", GgmlType::BF16, &[6], encode_bf16(&tt.bf16v)).unwrap();
        w.add_tensor("q8_0", GgmlType::Q8_0, &[64, 2], quantize_q8_0(&tt.q8v).unwrap())
            .unwrap();
        w.add_tensor("q4_0", GgmlType::Q4_0, &[32, 3, 1], quantize_q4_0(&tt.q40v).unwrap())
            .unwrap();
        // 64 elements of Q4_1 = 40 bytes: pads to the 32-byte alignment at the end.
        w.add_tensor("q4_1", GgmlType::Q4_1, &[64], quantize_q4_1(&tt.q41v).unwrap())
            .unwrap();
        (w.to_bytes().unwrap(), meta, tt)
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y} (tol {tol})");
        }
    }

    #[test]
    fn gguf_roundtrip_every_type() {
        for version in [2u32, 3] {
            let (bytes, meta, tt) = build_test_file(version);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.gguf");
            std::fs::write(&path, &bytes).unwrap();
            let g = GgufFile::open(&path).unwrap();
            assert_eq!(g.version, version);
            assert_eq!(g.alignment, 32);
            assert_eq!(g.data_offset % 32, 0);
            assert_eq!(g.metadata, meta, "metadata must round-trip in order");
            assert_eq!(g.tensors.len(), 6);

            // Accessors.
            assert_eq!(g.architecture(), Some("llama"));
            assert_eq!(g.get("t.u8").unwrap().as_u64(), Some(200));
            assert_eq!(g.get("t.i8").unwrap().as_u64(), None);
            assert_eq!(g.get("t.i8").unwrap().as_i64(), Some(-100));
            assert_eq!(g.get("t.u64").unwrap().as_u64(), Some(u64::MAX - 5));
            assert_eq!(g.get("t.u64").unwrap().as_i64(), None);
            assert_eq!(g.get("t.u32").unwrap().as_u32(), Some(4_000_000_000));
            assert_eq!(g.get_f32("t.f32"), Some(1.5e-5));
            assert_eq!(g.get("t.f64").unwrap().as_f64(), Some(-2.25e100));
            assert_eq!(g.get_bool("t.bool_t"), Some(true));
            assert_eq!(g.get_str("t.str"), Some("héllo ☃ wörld"));
            assert_eq!(g.get("t.str").unwrap().as_u64(), None);
            assert_eq!(g.get("t.a_str").unwrap().as_str_array(), Some(vec!["a", "", "Ġthe"]));
            assert_eq!(g.get("t.a_str").unwrap().as_str_iter().unwrap().len(), 3);
            assert_eq!(g.get("t.a_f32").unwrap().as_f32_array(), Some(vec![0.5, -1.25, 3.0]));
            assert_eq!(g.get("t.a_f32").unwrap().as_f32_slice(), Some(&[0.5, -1.25, 3.0][..]));
            assert_eq!(g.get("t.a_i32").unwrap().as_i32_array(), Some(vec![-1, 2, -3, 4]));
            assert_eq!(g.get("t.a_u8").unwrap().as_i32_array(), Some(vec![0, 1, 255]));
            assert_eq!(g.get("t.a_u64").unwrap().as_i32_array(), None);
            assert_eq!(g.get("t.a_i32").unwrap().as_u64_array(), None);
            assert_eq!(g.get("t.a_f32").unwrap().as_i32_array(), None);
            let nested = g.get("t.a_nested").unwrap().as_array().unwrap();
            assert_eq!(nested.elem_type(), GgufValueType::Array);
            assert_eq!(nested.as_array_array().unwrap()[1].as_str_array(), Some(vec!["x"]));
            assert!(g.get("t.a_empty").unwrap().as_array().unwrap().is_empty());
            assert!(g.get("missing").is_none());
            assert!(g.require("missing").is_err());

            // Tensors.
            let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]);
            let t = g.tensor("f32").unwrap();
            assert_eq!((t.ggml_type, t.dims.clone(), t.n_elements), (GgmlType::F32, vec![8, 3], 24));
            assert_eq!(t.ne(), [8, 3, 1, 1]);
            assert_eq!(t.row_bytes(), 32);
            assert_eq!(g.tensor_data(t).unwrap(), &encode_f32(&tt.f32v)[..]);
            assert_eq!(g.tensor_f32(t).unwrap(), tt.f32v);

            let t = g.tensor("f16").unwrap();
            assert_eq!(t.n_bytes, 64);
            assert_close(&g.tensor_f32(t).unwrap(), &tt.f16v, 1e-3, "f16");

            let t = g.tensor("bf16").unwrap();
            assert_close(&g.tensor_f32(t).unwrap(), &tt.bf16v, 3.0 / 128.0, "bf16");

            let t = g.tensor("q8_0").unwrap();
            assert_eq!((t.n_bytes, t.dims.clone()), (4 * 34, vec![64, 2]));
            assert_eq!(g.tensor_data(t).unwrap(), &quantize_q8_0(&tt.q8v).unwrap()[..]);
            assert_close(&g.tensor_f32(t).unwrap(), &tt.q8v, 4.0 / 127.0 * 0.51 + 4e-3, "q8_0");

            let t = g.tensor("q4_0").unwrap();
            assert_eq!((t.n_bytes, t.dims.clone()), (3 * 18, vec![32, 3, 1]));
            assert_close(&g.tensor_f32(t).unwrap(), &tt.q40v, 1.0 / 8.0 + 1e-3, "q4_0");

            let t = g.tensor("q4_1").unwrap();
            assert_eq!(t.n_bytes, 40);
            assert_close(&g.tensor_f32(t).unwrap(), &tt.q41v, 2.0 / 15.0 * 0.51 + 2e-3, "q4_1");

            for t in &g.tensors {
                assert_eq!(t.offset % 32, 0);
                assert_eq!(g.tensor_data(t).unwrap().len() as u64, t.n_bytes);
            }
            // Same result from memory.
            let m = GgufFile::from_bytes(bytes.clone()).unwrap();
            assert_eq!(m.metadata, g.metadata);
            assert_eq!(m.tensors, g.tensors);
        }
    }

    #[test]
    fn gguf_custom_alignment() {
        let mut w = GgufWriter::new();
        w.set_alignment(64).unwrap();
        w.add_metadata("a", 1u32);
        w.add_f32_tensor("x", &[3], &[1.0, 2.0, 3.0]).unwrap();
        w.add_f32_tensor("y", &[5], &[4.0; 5]).unwrap();
        let g = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        assert_eq!(g.alignment, 64);
        assert_eq!(g.data_offset % 64, 0);
        assert_eq!(g.tensor("y").unwrap().offset, 64);
        assert_eq!(g.tensor_f32(g.tensor("y").unwrap()).unwrap(), vec![4.0; 5]);
        assert!(GgufWriter::new().set_alignment(48).is_err());
    }

    #[test]
    fn gguf_type_sizes() {
        use GgmlType::*;
        let expect = [
            (F32, 1, 4),
            (F16, 1, 2),
            (Q4_0, 32, 18),
            (Q4_1, 32, 20),
            (Q5_0, 32, 22),
            (Q5_1, 32, 24),
            (Q8_0, 32, 34),
            (Q8_1, 32, 36),
            (Q2_K, 256, 84),
            (Q3_K, 256, 110),
            (Q4_K, 256, 144),
            (Q5_K, 256, 176),
            (Q6_K, 256, 210),
            (Q8_K, 256, 292),
            (IQ2_XXS, 256, 66),
            (IQ2_XS, 256, 74),
            (IQ3_XXS, 256, 98),
            (IQ1_S, 256, 50),
            (IQ4_NL, 32, 18),
            (IQ3_S, 256, 110),
            (IQ2_S, 256, 82),
            (IQ4_XS, 256, 136),
            (I8, 1, 1),
            (I16, 1, 2),
            (I32, 1, 4),
            (I64, 1, 8),
            (F64, 1, 8),
            (IQ1_M, 256, 56),
            (BF16, 1, 2),
            (TQ1_0, 256, 54),
            (TQ2_0, 256, 66),
            (MXFP4, 32, 17),
        ];
        for (t, bs, ts) in expect {
            assert_eq!((t.block_size(), t.type_size()), (bs, ts), "{t}");
            assert_eq!(GgmlType::from_u32(t as u32), Some(t));
        }
        assert_eq!(GgmlType::from_u32(4), None);
        assert_eq!(GgmlType::from_u32(5), None);
        assert_eq!(GgmlType::from_u32(40), None);
        assert_eq!(Q4_K.bytes_for(576 * 256), Some(576 * 144));
        assert_eq!(Q4_K.bytes_for(100), None);
        assert_eq!(Q8_0 as u32, 8);
        assert_eq!(BF16 as u32, 30);
    }

    #[test]
    fn gguf_dequant_hand_blocks() {
        let d = f16::from_f32(0.5).to_bits().to_le_bytes();
        let m = f16::from_f32(-1.0).to_bits().to_le_bytes();
        // Q4_0: qs[j] = j | (15 - j) << 4.
        let mut b = d.to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
        }
        // Q4_1: x = d q + m.
        let mut b = d.to_vec();
        b.extend_from_slice(&m);
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.5 - 1.0);
            assert_eq!(y[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
        // Q8_0.
        let mut b = d.to_vec();
        b.extend((0..32i32).map(|j| (j * 8 - 128) as i8 as u8));
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, (j as f32 * 8.0 - 128.0) * 0.5);
        }
        // Q5_0: high bit j of qh gives element j's fifth bit, bit j+16 element j+16's.
        let mut b = d.to_vec();
        let qh: u32 = 0b1010_0000_0000_0000_0000_0000_0000_0101;
        b.extend_from_slice(&qh.to_le_bytes());
        b.extend(std::iter::repeat_n(0x21u8, 16));
        let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        for j in 0..32 {
            let low = if j < 16 { 1 } else { 2 };
            let hi = (qh >> j) & 1;
            assert_eq!(y[j], ((low + 16 * hi) as f32 - 16.0) * 0.5, "q5_0[{j}]");
        }
        // Wrong sizes are errors.
        assert!(dequantize(GgmlType::Q8_0, &b, 32).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0; 34], 31).is_err());
        assert!(dequantize(GgmlType::IQ2_XXS, &[0; 66], 256).is_err());
    }

    /// Element-wise restatement of the Q6_K layout, independent of the loop
    /// structure in `dequantize_into`.
    fn q6_k_ref(b: &[u8], i: usize) -> f32 {
        let d = f16_at(b, 208);
        let (n, r) = (i / 128, i % 128);
        let (quarter, l) = (r / 32, r % 32);
        let qlb = b[n * 64 + l + (quarter & 1) * 32];
        let low = if quarter >= 2 { qlb >> 4 } else { qlb & 0xF };
        let high = (b[128 + n * 32 + l] >> (2 * quarter)) & 3;
        let sc = b[192 + n * 8 + l / 16 + 2 * quarter] as i8;
        d * sc as f32 * ((low | (high << 4)) as i32 - 32) as f32
    }

    fn q4_k_ref(b: &[u8], i: usize) -> f32 {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let s = &b[4..16];
        let (chunk, r) = (i / 64, i % 64);
        let (half, l) = (r / 32, r % 32);
        let k = 2 * chunk + half; // 0..8
                                  // 6-bit scales/mins: k < 4 in the low 6 bits of s[k]/s[k+4]; k >= 4 split
                                  // into a low nibble of s[k+4] and the top 2 bits of s[k-4]/s[k].
        let (sc, mn) = if k < 4 {
            (s[k] & 0x3F, s[k + 4] & 0x3F)
        } else {
            ((s[k + 4] & 0x0F) | ((s[k - 4] & 0xC0) >> 2), (s[k + 4] >> 4) | ((s[k] & 0xC0) >> 2))
        };
        let qb = b[16 + chunk * 32 + l];
        let q = if half == 1 { qb >> 4 } else { qb & 0xF };
        d * sc as f32 * q as f32 - dmin * mn as f32
    }

    fn random_block(rng: &mut Rng, ts: usize, f16_at_pos: &[usize]) -> Vec<u8> {
        let mut b = rng.bytes(ts);
        for &p in f16_at_pos {
            let v = f16::from_f32(rng.f32() * 0.1);
            b[p..p + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        }
        b
    }

    #[test]
    fn gguf_dequant_k_quants_match_elementwise_reference() {
        let mut rng = Rng(99);
        for _ in 0..20 {
            let b = random_block(&mut rng, 210, &[208]);
            let y = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
            for (i, v) in y.iter().enumerate() {
                assert_eq!(*v, q6_k_ref(&b, i), "q6_K[{i}]");
            }
            let b = random_block(&mut rng, 144, &[0, 2]);
            let y = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
            for (i, v) in y.iter().enumerate() {
                assert_eq!(*v, q4_k_ref(&b, i), "q4_K[{i}]");
            }
        }
        // Every supported type decodes random blocks without panicking, to finite values.
        for t in GgmlType::ALL.iter().copied().filter(|t| t.can_dequantize()) {
            let nb = 3;
            let mut bytes = Vec::new();
            for _ in 0..nb {
                let mut blk = rng.bytes(t.type_size());
                if t.is_quantized() || t == GgmlType::F16 || t == GgmlType::BF16 {
                    // Keep the f16 scales finite.
                    for p in (0..blk.len()).step_by(2) {
                        blk[p + 1] &= 0x3B;
                    }
                }
                if matches!(t, GgmlType::F32 | GgmlType::Q8_K) {
                    blk[0..4].copy_from_slice(&0.25f32.to_le_bytes());
                }
                if t == GgmlType::F64 {
                    blk.copy_from_slice(&1.5f64.to_le_bytes());
                }
                bytes.extend(blk);
            }
            let y = dequantize(t, &bytes, nb * t.block_size()).unwrap();
            assert!(y.iter().all(|v| v.is_finite()), "{t}");
        }
    }

    fn patch(bytes: &[u8], at: usize, new: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[at..at + new.len()].copy_from_slice(new);
        b
    }

    fn err_string(bytes: Vec<u8>) -> String {
        match GgufFile::from_bytes(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn gguf_truncated_files_are_errors() {
        let (bytes, _, _) = build_test_file(3);
        let full = GgufFile::from_bytes(bytes.clone()).unwrap();
        let end_of_data = full.tensors.iter().map(|t| full.data_offset + t.offset + t.n_bytes).max().unwrap() as usize;
        for len in 0..bytes.len() {
            let r = GgufFile::from_bytes(bytes[..len].to_vec());
            if len < end_of_data {
                assert!(r.is_err(), "truncated to {len} of {} parsed", bytes.len());
            } else {
                // Only the final padding was cut: the data is all there.
                let g = r.unwrap();
                for t in &g.tensors {
                    g.tensor_data(t).unwrap();
                }
            }
        }
        // Through the file path too, and the error names the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.gguf");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let e = format!("{:#}", GgufFile::open(&path).unwrap_err());
        assert!(e.contains("short.gguf"), "{e}");
        std::fs::write(&path, b"").unwrap();
        assert!(GgufFile::open(&path).is_err());
        assert!(GgufFile::open(dir.path().join("absent.gguf")).is_err());
    }

    #[test]
    fn gguf_corrupted_headers_are_errors() {
        let (bytes, _, _) = build_test_file(3);
        assert!(err_string(patch(&bytes, 0, b"GGUG")).contains("magic"));
        assert!(err_string(patch(&bytes, 4, &1u32.to_le_bytes())).contains("version 1"));
        assert!(err_string(patch(&bytes, 4, &3u32.to_be_bytes())).contains("big-endian"));
        assert!(err_string(patch(&bytes, 4, &7u32.to_le_bytes())).contains("version 7"));
        for n in [u64::MAX, 1 << 40, 1 << 20, 100_000] {
            let e = err_string(patch(&bytes, 8, &n.to_le_bytes()));
            assert!(e.contains("tensor count") || e.contains("tensor info"), "{e}");
            let e = err_string(patch(&bytes, 16, &n.to_le_bytes()));
            assert!(e.contains("KV"), "{e}");
        }
        // More KVs / tensors than present: the table is misread, but must still fail cleanly.
        for n in 30u64..40 {
            err_string(patch(&bytes, 16, &n.to_le_bytes()));
        }
        for n in 7u64..40 {
            err_string(patch(&bytes, 8, &n.to_le_bytes()));
        }
        // First key length.
        for n in [u64::MAX, 1 << 33, bytes.len() as u64] {
            let e = err_string(patch(&bytes, 24, &n.to_le_bytes()));
            assert!(e.contains("KV #0") && e.contains("length"), "{e}");
        }

        // A single array KV: key "a" at 24..33, type at 33, elem type at 37, count at 41.
        let mut w = GgufWriter::new();
        w.add_metadata("a", GgufArray::U32(vec![1, 2, 3]));
        let arr = w.to_bytes().unwrap();
        assert!(GgufFile::from_bytes(arr.clone()).is_ok());
        for n in [u64::MAX, 1 << 62, 1 << 31, 4] {
            let e = err_string(patch(&arr, 41, &n.to_le_bytes()));
            assert!(e.contains("'a'"), "{e}");
        }
        for et in [8u32, 9] {
            // Same count read as strings / arrays: runs out of bytes.
            assert!(GgufFile::from_bytes(patch(&arr, 37, &et.to_le_bytes())).is_err());
        }
        assert!(err_string(patch(&arr, 37, &13u32.to_le_bytes())).contains("element type 13"));
        assert!(err_string(patch(&arr, 33, &77u32.to_le_bytes())).contains("value type 77"));

        // Invalid UTF-8 in a key.
        let e = err_string(patch(&arr, 32, &[0xFF]));
        assert!(e.contains("UTF-8"), "{e}");

        // Deeply nested arrays must not overflow the stack.
        let mut deep = Vec::new();
        deep.extend_from_slice(b"GGUF");
        deep.extend_from_slice(&3u32.to_le_bytes());
        deep.extend_from_slice(&0u64.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
        deep.push(b'k');
        deep.extend_from_slice(&9u32.to_le_bytes());
        for _ in 0..100_000 {
            deep.extend_from_slice(&9u32.to_le_bytes());
            deep.extend_from_slice(&1u64.to_le_bytes());
        }
        assert!(err_string(deep).contains("nested"));

        // Duplicate key.
        let mut w = GgufWriter::new();
        w.add_metadata("a", 1u8).add_metadata("b", 2u8);
        let dup = w.to_bytes().unwrap();
        let kb = 24 + 8 + 1 + 4 + 1 + 8;
        assert!(err_string(patch(&dup, kb, b"a")).contains("duplicate"));

        // Bad alignment values.
        for a in [0u32, 3, 48] {
            let mut w = GgufWriter::new();
            w.add_metadata(GGUF_KEY_ALIGNMENT, a);
            assert!(w.to_bytes().is_err());
            w.add_metadata(GGUF_KEY_ALIGNMENT, 32u32);
            let b = w.to_bytes().unwrap();
            // general.alignment value sits right after key (8 + 17 bytes) and type (4).
            let pos = 24 + 8 + GGUF_KEY_ALIGNMENT.len() + 4;
            let e = err_string(patch(&b, pos, &a.to_le_bytes()));
            assert!(e.contains("alignment"), "{e}");
        }

        // One tensor "t" with 2 dims: n_dims at 33, ne0 37, ne1 45, type 53, offset 57.
        let mut w = GgufWriter::new();
        w.add_f32_tensor("t", &[4, 2], &[0.0; 8]).unwrap();
        let tb = w.to_bytes().unwrap();
        let g = GgufFile::from_bytes(tb.clone()).unwrap();
        assert_eq!(g.tensor("t").unwrap().dims, vec![4, 2]);
        for nd in [0u32, 5, u32::MAX] {
            assert!(err_string(patch(&tb, 33, &nd.to_le_bytes())).contains("n_dims"));
        }
        for ne in [u64::MAX, 1 << 62, 1 << 40, 5] {
            let e = err_string(patch(&tb, 37, &ne.to_le_bytes()));
            assert!(e.contains("'t'"), "{e}");
        }
        // Overflowing element count.
        let e = err_string(patch(&patch(&tb, 37, &(1u64 << 40).to_le_bytes()), 45, &(1u64 << 40).to_le_bytes()));
        assert!(e.contains("overflow"), "{e}");
        let e = err_string(patch(&tb, 53, &99u32.to_le_bytes()));
        assert!(e.contains("unknown ggml type 99") && e.contains("'t'"), "{e}");
        // Q8_0 with ne0 = 4 is not a whole block.
        let e = err_string(patch(&tb, 53, &8u32.to_le_bytes()));
        assert!(e.contains("block size"), "{e}");
        // Larger type than the data holds.
        let e = err_string(patch(&tb, 53, &(GgmlType::F64 as u32).to_le_bytes()));
        assert!(e.contains("past the end"), "{e}");
        for off in [1u64, 31, 33] {
            assert!(err_string(patch(&tb, 57, &off.to_le_bytes())).contains("alignment"));
        }
        for off in [32u64, 1 << 40, u64::MAX - 31] {
            let e = err_string(patch(&tb, 57, &off.to_le_bytes()));
            assert!(e.contains("past the end"), "{e}");
        }

        // Duplicate tensor names.
        let mut w = GgufWriter::new();
        w.add_f32_tensor("a", &[1], &[0.0]).unwrap();
        w.add_f32_tensor("b", &[1], &[0.0]).unwrap();
        assert!(w.add_f32_tensor("a", &[1], &[0.0]).is_err());
        let b = w.to_bytes().unwrap();
        // Second name byte: 24 + (8 + 1 + 4 + 8 + 4 + 8) + 8.
        assert!(err_string(patch(&b, 24 + 33 + 8, b"a")).contains("duplicate tensor"));
    }

    #[test]
    fn gguf_random_corruption_never_panics() {
        let (bytes, _, _) = build_test_file(3);
        let header_len = GgufFile::from_bytes(bytes.clone()).unwrap().data_offset as usize;
        let mut rng = Rng(7);
        let mut n_ok = 0;
        for iter in 0..3000 {
            let mut b = bytes.clone();
            let n_flips = 1 + (rng.next_u64() % 4) as usize;
            for _ in 0..n_flips {
                let at = (rng.next_u64() as usize) % header_len;
                b[at] = match iter % 3 {
                    0 => rng.next_u64() as u8,
                    1 => b[at] ^ (1 << (rng.next_u64() % 8)),
                    _ => 0xFF,
                };
            }
            if iter % 5 == 0 {
                let cut = (rng.next_u64() as usize) % b.len();
                b.truncate(cut);
            }
            if let Ok(g) = GgufFile::from_bytes(b) {
                n_ok += 1;
                for t in &g.tensors {
                    let data = g.tensor_data(t).unwrap();
                    assert_eq!(data.len() as u64, t.n_bytes);
                    if t.ggml_type.can_dequantize() && t.n_elements < 1 << 20 {
                        let _ = g.tensor_f32(t).unwrap();
                    }
                }
            }
        }
        // Some flips land in values (e.g. f32 metadata) and stay valid.
        assert!(n_ok > 0);
    }

    fn smollm2_path() -> PathBuf {
        if let Ok(p) = std::env::var("EDGEQ_SMOLLM2_GGUF") {
            return PathBuf::from(p);
        }
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    #[test]
    fn gguf_smollm2_real_file() {
        let path = smollm2_path();
        if !path.exists() {
            println!(
                "SKIPPED gguf_smollm2_real_file: {} not found (run scripts/fetch-smollm2.sh)",
                path.display()
            );
            return;
        }
        let g = GgufFile::open(&path).unwrap();
        println!("{g:?}");
        for (k, v) in &g.metadata {
            println!("  {k} = {}", v.summary(6));
        }
        for t in &g.tensors {
            println!(
                "  tensor {} {} {:?} off={} bytes={}",
                t.name, t.ggml_type, t.dims, t.offset, t.n_bytes
            );
        }
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.get_u64("llama.block_count"), Some(30));
        assert_eq!(g.get_u64("llama.embedding_length"), Some(576));
        assert_eq!(g.get_u64("llama.attention.head_count"), Some(9));
        assert_eq!(g.get_u64("llama.attention.head_count_kv"), Some(3));
        assert_eq!(g.arch_get("block_count").and_then(|v| v.as_u64()), Some(30));
        let tokens = g.get("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens.as_str_iter().unwrap().len(), 49152);
        assert_eq!(g.get_str("tokenizer.ggml.model"), Some("gpt2"));

        let file_size = g.file_size();
        for t in &g.tensors {
            let data = g.tensor_data(t).unwrap();
            assert_eq!(data.len() as u64, t.n_bytes, "{}", t.name);
            assert!(g.data_offset + t.offset + t.n_bytes <= file_size, "{}", t.name);
            assert_eq!(t.ggml_type.bytes_for(t.n_elements), Some(t.n_bytes));
        }
        let emb = g.tensor("token_embd.weight").unwrap();
        assert_eq!(emb.dims, vec![576, 49152]);
        // Tensors must not overlap.
        let mut spans: Vec<(u64, u64)> = g.tensors.iter().map(|t| (t.offset, t.offset + t.n_bytes)).collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));

        // Dequantise one tensor of each type present; values must be finite and sane.
        let mut seen = Vec::new();
        for t in &g.tensors {
            if seen.contains(&t.ggml_type) {
                continue;
            }
            seen.push(t.ggml_type);
            let y = g.tensor_f32(t).unwrap();
            let max = y.iter().fold(0f32, |a, v| a.max(v.abs()));
            let mean_abs = y.iter().map(|v| v.abs() as f64).sum::<f64>() / y.len() as f64;
            println!("  dequant {} ({}): max|x| = {max}, mean|x| = {mean_abs:.5}", t.name, t.ggml_type);
            assert!(y.iter().all(|v| v.is_finite()), "{}", t.name);
            assert!(max > 0.0 && max < 1e4, "{}: max {max}", t.name);
        }
    }
}
