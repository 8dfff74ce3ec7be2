//! The optional ACT_QUANT section (kind 6, EQF 1.1): how the runtime
//! quantizes the *input* of a linear layer before the product (W8A8
//! methods). Weights stay valid without it: a reader that skips the
//! section runs those layers with f32 activations (more precise, slower).
//!
//! ```text
//! ActHeader  (16 bytes)   n_records, n_indices, reserved[2]
//! ActRecord  (20 bytes) × n_records, sorted strictly by (layer, role)
//! u32        × n_indices  outlier column indices (LLM.int8), per record
//!                          `first .. first+count`, strictly increasing, < cols
//! ```
use super::records::TensorRole;
use crate::error::FormatError;
use bytemuck::{Pod, Zeroable};

/// How the input activations of one linear layer are quantized, per token
/// (dynamically: scales are computed from each token's values at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum ActMode {
    /// Symmetric int8, one scale per token (`absmax/127`), int8×int8→int32
    /// products (SmoothQuant W8A8).
    Int8Token = 1,
    /// LLM.int8(): int8 per token on the regular columns, f32 on outlier
    /// columns (the stored list, plus every column where some token has
    /// `|x| ≥ threshold` in the current batch).
    LlmInt8 = 2,
    /// FP8 E4M3 per token (`scale = absmax/448`), saturating round-to-nearest-even.
    Fp8Token = 3,
    /// FP8 E4M3 per group of 128 consecutive activations of a token
    /// (DeepSeek-V3 / `FP8_BLOCK` activations).
    Fp8Group128 = 4,
    /// Symmetric int4 per token (`d = clip·absmax/7`, codes in −7..=7, held
    /// as int8 so the int8 kernels run it): QuaRot's W4A4. The record's
    /// `threshold` holds the clip ratio, in (0, 1]. EQF 1.2.
    Int4Token = 5,
}

impl ActMode {
    pub fn from_u8(v: u8) -> Option<ActMode> {
        Some(match v {
            1 => ActMode::Int8Token,
            2 => ActMode::LlmInt8,
            3 => ActMode::Fp8Token,
            4 => ActMode::Fp8Group128,
            5 => ActMode::Int4Token,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            ActMode::Int8Token => "int8-token",
            ActMode::LlmInt8 => "llm-int8",
            ActMode::Fp8Token => "fp8-token",
            ActMode::Fp8Group128 => "fp8-g128",
            ActMode::Int4Token => "int4-token",
        }
    }
}

/// The section header (16 bytes): n_records, n_indices, reserved[2].
pub type ActHeader = super::table::TableHeader;

/// One linear layer's activation quantization (20 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct ActRecord {
    pub layer: u16,
    pub role: u16,
    /// [`ActMode`] id.
    pub mode: u8,
    pub reserved0: u8,
    pub reserved1: u16,
    /// LLM.int8 outlier threshold (finite, > 0); the clip ratio in (0, 1]
    /// for int4-token; 0 for other modes.
    pub threshold: f32,
    /// First outlier index of this record in the index array.
    pub first: u32,
    /// Number of outlier columns (0 unless LLM.int8).
    pub count: u32,
}

const _: () = assert!(core::mem::size_of::<ActRecord>() == 20);

/// The activation quantization of one layer, borrowed from the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant<'a> {
    pub mode: ActMode,
    pub threshold: f32,
    /// Outlier input columns found at calibration, increasing.
    pub outliers: &'a [u32],
}

/// The parsed section: records and indices, validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActSection<'a> {
    records: &'a [ActRecord],
    indices: &'a [u32],
}

impl<'a> ActSection<'a> {
    /// Parses the section body. `cols_of(layer, role)` gives the input
    /// width of the tensor a record refers to (None: no such tensor).
    pub fn parse(body: &'a [u8], cols_of: impl Fn(u16, u16) -> Option<u32>) -> Result<ActSection<'a>, FormatError> {
        let bad = FormatError::BadActQuant;
        let names = ["ACT_QUANT section", "ACT_QUANT records", "ACT_QUANT indices"];
        let (records, indices): (&[ActRecord], _) = super::table::split(body, names, bad)?;
        let n_indices = indices.len() as u32;
        let mut prev = None;
        for r in records {
            let cols = super::table::linear_key(&mut prev, r.layer, r.role, &cols_of, bad)?;
            let mode = ActMode::from_u8(r.mode).ok_or(bad("unknown activation mode"))?;
            let llm = mode == ActMode::LlmInt8;
            if mode == ActMode::Int4Token {
                if !(r.threshold > 0.0 && r.threshold <= 1.0) {
                    return Err(bad("int4-token needs a clip ratio in (0, 1]"));
                }
            } else if llm != (r.threshold.is_finite() && r.threshold > 0.0) && (llm || r.threshold != 0.0) {
                return Err(bad("LLM.int8 needs a finite threshold > 0; other modes store 0"));
            }
            if !llm && r.count != 0 {
                return Err(bad("only LLM.int8 records list outlier columns"));
            }
            let end = r.first.checked_add(r.count).filter(|&e| e <= n_indices);
            let Some(end) = end else {
                return Err(bad("outlier list runs past the index array"));
            };
            let list = &indices[r.first as usize..end as usize];
            if list.windows(2).any(|w| w[0] >= w[1]) || list.last().is_some_and(|&c| c >= cols) {
                return Err(bad("outlier columns must increase strictly and be < the layer's input width"));
            }
        }
        Ok(ActSection { records, indices })
    }

    pub fn records(&self) -> &'a [ActRecord] {
        self.records
    }

    /// The activation quantization of `(role, layer)`, if any.
    pub fn get(&self, role: TensorRole, layer: u16) -> Option<ActQuant<'a>> {
        let key = (layer, role as u16);
        let i = self.records.binary_search_by(|r| (r.layer, r.role).cmp(&key)).ok()?;
        let r = &self.records[i];
        Some(ActQuant {
            mode: ActMode::from_u8(r.mode)?,
            threshold: r.threshold,
            outliers: self.indices.get(r.first as usize..r.first.checked_add(r.count)? as usize)?,
        })
    }
}
