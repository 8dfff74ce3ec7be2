//! The fixed-size `#[repr(C)]` records of an EQF file, read in place.
use bytemuck::{Pod, Zeroable};

/// `EQF1` followed by CR LF SUB LF: detects text-mode transfers like PNG's.
pub const MAGIC: [u8; 8] = *b"EQF1\r\n\x1a\n";
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;

/// Section kinds.
pub mod section {
    pub const CONFIG: u32 = 1;
    pub const TOKENIZER: u32 = 2;
    pub const TENSOR_DIR: u32 = 3;
    pub const TENSOR_DATA: u32 = 4;
    pub const METADATA: u32 = 5;
    /// Activation quantization of W8A8 layers ([`super::act`]), EQF 1.1.
    pub const ACT_QUANT: u32 = 6;
    /// Column permutations of linear inputs ([`super::perm`], GPTQ
    /// act-order), EQF 1.3. Required: written without `FLAG_OPTIONAL`.
    pub const INPUT_PERM: u32 = 7;
    /// Section flag: readers that do not know this kind may skip it.
    pub const FLAG_OPTIONAL: u32 = 1;
}

/// The 64-byte file header.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Header {
    pub magic: [u8; 8],
    pub version_major: u16,
    pub version_minor: u16,
    /// Size of this header (64); later minor versions may grow it.
    pub header_size: u32,
    /// Total file size in bytes.
    pub file_size: u64,
    pub n_sections: u32,
    /// Offset of the section directory (right after the header).
    pub section_dir_offset: u32,
    pub flags: u32,
    /// CRC-32 (IEEE) of the header with this field zeroed, followed by the
    /// section directory bytes.
    pub header_crc: u32,
    pub reserved: [u8; 24],
}

/// One entry of the section directory (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct SectionRecord {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub size: u64,
    /// CRC-32 of the section bytes; 0 for TENSOR_DATA, whose tensors carry
    /// their own checksums.
    pub crc32: u32,
    pub reserved: u32,
}

/// What a tensor is in the model. Stored as a u16; the directory is sorted
/// by `(layer, role)`, global tensors using layer [`GLOBAL_LAYER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u16)]
pub enum TensorRole {
    TokEmbd = 0,
    OutputNorm = 1,
    Output = 2,
    AttnNorm = 10,
    Wq = 11,
    Wk = 12,
    Wv = 13,
    Wo = 14,
    Bq = 15,
    Bk = 16,
    Bv = 17,
    FfnNorm = 20,
    /// gate_proj (llama2.c w1)
    WGate = 21,
    /// down_proj (llama2.c w2)
    WDown = 22,
    /// up_proj (llama2.c w3)
    WUp = 23,
}

pub const GLOBAL_LAYER: u16 = 0xFFFF;

impl TensorRole {
    /// The seven linear layers of a block, in directory order.
    pub const BLOCK_LINEARS: [TensorRole; 7] = [
        TensorRole::Wq,
        TensorRole::Wk,
        TensorRole::Wv,
        TensorRole::Wo,
        TensorRole::WGate,
        TensorRole::WDown,
        TensorRole::WUp,
    ];
    pub const ALL: [TensorRole; 15] = [
        TensorRole::TokEmbd,
        TensorRole::OutputNorm,
        TensorRole::Output,
        TensorRole::AttnNorm,
        TensorRole::Wq,
        TensorRole::Wk,
        TensorRole::Wv,
        TensorRole::Wo,
        TensorRole::Bq,
        TensorRole::Bk,
        TensorRole::Bv,
        TensorRole::FfnNorm,
        TensorRole::WGate,
        TensorRole::WDown,
        TensorRole::WUp,
    ];
    pub fn from_u16(v: u16) -> Option<TensorRole> {
        TensorRole::ALL.iter().copied().find(|r| *r as u16 == v)
    }
    pub fn is_global(self) -> bool {
        matches!(self, TensorRole::TokEmbd | TensorRole::OutputNorm | TensorRole::Output)
    }
    /// Canonical short name (`tok_embd`, `attn_q`, ...), as in `blk.3.attn_q`.
    pub fn name(self) -> &'static str {
        match self {
            TensorRole::TokEmbd => "tok_embd",
            TensorRole::OutputNorm => "output_norm",
            TensorRole::Output => "output",
            TensorRole::AttnNorm => "attn_norm",
            TensorRole::Wq => "attn_q",
            TensorRole::Wk => "attn_k",
            TensorRole::Wv => "attn_v",
            TensorRole::Wo => "attn_output",
            TensorRole::Bq => "attn_q_bias",
            TensorRole::Bk => "attn_k_bias",
            TensorRole::Bv => "attn_v_bias",
            TensorRole::FfnNorm => "ffn_norm",
            TensorRole::WGate => "ffn_gate",
            TensorRole::WDown => "ffn_down",
            TensorRole::WUp => "ffn_up",
        }
    }
    /// A linear layer's weight (a candidate for quantization).
    pub fn is_linear(self) -> bool {
        matches!(
            self,
            TensorRole::Wq
                | TensorRole::Wk
                | TensorRole::Wv
                | TensorRole::Wo
                | TensorRole::WGate
                | TensorRole::WDown
                | TensorRole::WUp
                | TensorRole::Output
        )
    }
    /// Norm weights and biases: always F32.
    pub fn is_vector(self) -> bool {
        matches!(
            self,
            TensorRole::OutputNorm | TensorRole::AttnNorm | TensorRole::FfnNorm | TensorRole::Bq | TensorRole::Bk | TensorRole::Bv
        )
    }
}

/// One entry of the tensor directory (96 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct TensorRecord {
    /// Canonical name, UTF-8, NUL-padded (`blk.0.attn_q`, `tok_embd`).
    pub name: [u8; 48],
    pub role: u16,
    pub layer: u16,
    pub scheme: u8,
    pub granularity: u8,
    pub reserved0: u16,
    /// Shape `[rows, cols]`, row-major; linear weights are `[out, in]`,
    /// vectors are `[1, n]`.
    pub rows: u32,
    pub cols: u32,
    pub group: u32,
    /// CRC-32 of the tensor's `size` bytes.
    pub crc32: u32,
    /// Offset from the start of the TENSOR_DATA section (multiple of 64).
    pub offset: u64,
    pub size: u64,
    pub reserved: [u8; 8],
}

impl TensorRecord {
    pub fn tensor_name(&self) -> crate::error::TensorName {
        crate::error::TensorName(self.name)
    }
    pub fn sort_key(&self) -> (u16, u16) {
        (self.layer, self.role)
    }
    pub fn name_str(&self) -> &str {
        let n = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..n]).unwrap_or("<non-utf8 name>")
    }
}

const _: () = assert!(core::mem::size_of::<Header>() == 64);
const _: () = assert!(core::mem::size_of::<SectionRecord>() == 32);
const _: () = assert!(core::mem::size_of::<TensorRecord>() == 96);

/// Writes `blk.{layer}.{role}` or `{role}` into a 48-byte name field.
pub fn canonical_name(role: TensorRole, layer: u16) -> [u8; 48] {
    let mut out = [0u8; 48];
    let mut n = 0;
    let mut push = |s: &[u8]| {
        for &b in s {
            if n < 48 {
                out[n] = b;
                n += 1;
            }
        }
    };
    if layer != GLOBAL_LAYER {
        push(b"blk.");
        let mut digits = [0u8; 5];
        let mut v = layer;
        let mut k = 0;
        loop {
            digits[k] = b'0' + (v % 10) as u8;
            k += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        digits[..k].reverse();
        push(&digits[..k]);
        push(b".");
    }
    push(role.name().as_bytes());
    out
}
