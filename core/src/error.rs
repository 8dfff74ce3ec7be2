//! Typed errors for parsing EQF files and for the quantization math.
use core::fmt;

/// A tensor name as stored in the file (NUL-padded UTF-8), kept inline so
/// errors stay `Copy` and allocation-free.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TensorName(pub [u8; 48]);

impl TensorName {
    pub fn as_str(&self) -> &str {
        let n = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        core::str::from_utf8(&self.0[..n]).unwrap_or("<non-utf8 name>")
    }
}
impl fmt::Debug for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}
impl fmt::Display for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
#[cfg(feature = "defmt")]
impl defmt::Format for TensorName {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(f, "{=str}", self.as_str())
    }
}

/// Everything that can be wrong with an EQF image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FormatError {
    /// The buffer is shorter than the structure being read needs.
    Truncated { what: &'static str, need: u64, have: u64 },
    /// The buffer does not start 64-byte aligned (tensor data is read in place).
    Misaligned { what: &'static str, align: u32 },
    /// The first 8 bytes are not the EQF magic.
    BadMagic,
    /// A major version this reader does not know.
    UnsupportedVersion { major: u16, minor: u16 },
    /// The file is big-endian-only data on a big-endian host (EQF is little-endian).
    UnsupportedEndian,
    /// A header field is out of range.
    BadHeader(&'static str),
    /// The header + section directory checksum does not match.
    HeaderChecksum { expected: u32, actual: u32 },
    /// A section runs past the end of the file or overlaps the header.
    SectionOutOfBounds { kind: u32 },
    /// A section does not start on a 64-byte boundary.
    SectionMisaligned { kind: u32 },
    /// A section's CRC-32 does not match its bytes.
    SectionChecksum { kind: u32, expected: u32, actual: u32 },
    /// A required section is absent.
    MissingSection { kind: u32 },
    /// The same section kind appears twice.
    DuplicateSection { kind: u32 },
    /// A required section kind this reader does not understand.
    UnknownSection { kind: u32 },
    /// The model config has an invalid or inconsistent value.
    BadConfig(&'static str),
    /// A tensor record has a scheme byte this reader does not know.
    UnknownScheme { tensor: TensorName, scheme: u8 },
    /// A tensor record has an unknown granularity or an invalid group size.
    BadQuantSpec { tensor: TensorName, why: &'static str },
    /// A tensor's data range runs outside the data section.
    TensorOutOfBounds { tensor: TensorName },
    /// A tensor's data does not start on a 64-byte boundary.
    TensorMisaligned { tensor: TensorName },
    /// A tensor's stored size does not equal what its scheme and shape need.
    TensorSize { tensor: TensorName, expected: u64, actual: u64 },
    /// A tensor's CRC-32 does not match its bytes.
    TensorChecksum { tensor: TensorName, expected: u32, actual: u32 },
    /// A tensor record's name is not NUL-padded UTF-8.
    BadTensorName { index: u32 },
    /// Tensor records are not sorted by (layer, role), or appear twice.
    UnsortedTensors { tensor: TensorName },
    /// A tensor the model needs is missing.
    MissingTensor { role: u16, layer: u16 },
    /// A tensor has the wrong shape for the model config.
    BadShape {
        tensor: TensorName,
        expected_rows: u32,
        expected_cols: u32,
        rows: u32,
        cols: u32,
    },
    /// A tensor's scheme cannot be used for its role (e.g. quantized norm weights).
    SchemeNotAllowed { tensor: TensorName },
    /// The ACT_QUANT section is inconsistent.
    BadActQuant(&'static str),
    /// The INPUT_PERM section is inconsistent.
    BadInputPerm(&'static str),
}

fn section_name(kind: u32) -> &'static str {
    match kind {
        1 => "CONFIG",
        2 => "TOKENIZER",
        3 => "TENSOR_DIR",
        4 => "TENSOR_DATA",
        5 => "METADATA",
        6 => "ACT_QUANT",
        7 => "INPUT_PERM",
        _ => "unknown",
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FormatError::*;
        match *self {
            Truncated { what, need, have } => write!(
                f,
                "file truncated: {what} needs {need} bytes, only {have} present (re-copy or re-export the file)"
            ),
            Misaligned { what, align } => write!(
                f,
                "{what} is not {align}-byte aligned (load the file into an aligned buffer or mmap it)"
            ),
            BadMagic => write!(f, "not an EQF file (bad magic; expected b\"EQF1\\r\\n\\x1a\\n\")"),
            UnsupportedVersion { major, minor } => write!(
                f,
                "EQF version {major}.{minor} is not supported by this reader (format 1.x); upgrade edgeq"
            ),
            UnsupportedEndian => write!(f, "EQF is little-endian; this big-endian host cannot read it in place"),
            BadHeader(why) => write!(f, "corrupt EQF header: {why}"),
            HeaderChecksum { expected, actual } => write!(
                f,
                "EQF header/section directory checksum mismatch (stored {expected:#010x}, computed {actual:#010x}): the file is corrupt"
            ),
            SectionOutOfBounds { kind } => write!(
                f,
                "section {} ({kind}) lies outside the file: truncated or corrupt",
                section_name(kind)
            ),
            SectionMisaligned { kind } => write!(f, "section {} ({kind}) is not 64-byte aligned", section_name(kind)),
            SectionChecksum { kind, expected, actual } => write!(
                f,
                "section {} checksum mismatch (stored {expected:#010x}, computed {actual:#010x}): the file is corrupt",
                section_name(kind)
            ),
            MissingSection { kind } => write!(f, "required section {} ({kind}) is missing", section_name(kind)),
            DuplicateSection { kind } => write!(f, "section {} ({kind}) appears twice", section_name(kind)),
            UnknownSection { kind } => write!(f, "unknown required section kind {kind}: written by a newer edgeq?"),
            BadConfig(why) => write!(f, "invalid model config: {why}"),
            UnknownScheme { tensor, scheme } => write!(f, "tensor '{tensor}': unknown scheme id {scheme}"),
            BadQuantSpec { tensor, why } => write!(f, "tensor '{tensor}': {why}"),
            TensorOutOfBounds { tensor } => write!(f, "tensor '{tensor}': data runs past the end of the data section (truncated file?)"),
            TensorMisaligned { tensor } => write!(f, "tensor '{tensor}': data is not 64-byte aligned"),
            TensorSize { tensor, expected, actual } => write!(
                f,
                "tensor '{tensor}': stored size {actual} bytes but its scheme and shape need {expected}"
            ),
            TensorChecksum { tensor, expected, actual } => write!(
                f,
                "tensor '{tensor}': checksum mismatch (stored {expected:#010x}, computed {actual:#010x}): the data is corrupt"
            ),
            BadTensorName { index } => write!(f, "tensor record {index}: name is not NUL-padded UTF-8"),
            UnsortedTensors { tensor } => write!(f, "tensor '{tensor}': directory not sorted by (layer, role) or duplicate entry"),
            MissingTensor { role, layer } => write!(f, "missing tensor: role {role} of layer {layer}"),
            BadShape {
                tensor,
                expected_rows,
                expected_cols,
                rows,
                cols,
            } => write!(
                f,
                "tensor '{tensor}': shape [{rows}, {cols}] but the config needs [{expected_rows}, {expected_cols}]"
            ),
            SchemeNotAllowed { tensor } => write!(
                f,
                "tensor '{tensor}': this scheme is not allowed for this tensor (norms and biases must be F32)"
            ),
            BadActQuant(why) => write!(
                f,
                "corrupt ACT_QUANT section (activation quantization): {why}; re-quantize the model, or drop the section to run with f32 activations"
            ),
            BadInputPerm(why) => write!(
                f,
                "corrupt INPUT_PERM section (act-order column permutations): {why}; re-copy or re-quantize the model"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FormatError {}

/// Errors from the reference quantizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum QuantError {
    /// An input value is NaN or infinite (index of the first one).
    NonFinite { index: usize },
    /// A finite value too large for the scheme (its scale, min or value
    /// would overflow f16/bf16); index of the first such value's group or element.
    OutOfRange { index: usize },
    /// The output or input buffer has the wrong length.
    BadLength { expected: usize, actual: usize },
    /// The spec is not valid for this shape (see [`crate::QuantSpec::validate`]).
    BadSpec(&'static str),
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            QuantError::NonFinite { index } => write!(
                f,
                "weight {index} is NaN or infinite: fix the checkpoint (or exclude the tensor with --skip)"
            ),
            QuantError::OutOfRange { index } => write!(
                f,
                "value {index} is too large for this scheme's f16 scales or values: use f32/fp8 or --skip this tensor"
            ),
            QuantError::BadLength { expected, actual } => write!(f, "buffer length {actual}, expected {expected}"),
            QuantError::BadSpec(why) => write!(f, "invalid quantization spec: {why}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for QuantError {}
