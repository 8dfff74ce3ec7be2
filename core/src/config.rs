//! The model configuration stored in the CONFIG section.
use crate::error::FormatError;
use bytemuck::{Pod, Zeroable};

/// How query/key dimensions are paired for rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RopeLayout {
    /// Adjacent pairs (2i, 2i+1) rotate together: llama2.c, Meta's original
    /// Llama code and GGUF (`rope type NORM`).
    Interleaved,
    /// Halves (i, i + head_dim/2) rotate together: Hugging Face `rotate_half`
    /// (GPT-NeoX style). HF Llama checkpoints store q/k rows permuted for this.
    Half,
}

/// Frequency scaling applied on top of `rope_theta`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RopeScaling {
    None,
    /// Llama 3.1 `rope_type: "llama3"` frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: u32,
    },
}

/// Architecture id: the only one today is a Llama-family decoder
/// (Llama 1/2/3, Mistral, Qwen2, SmolLM, TinyLlama, llama2.c models).
pub const ARCH_LLAMA: u32 = 1;

/// Flag bits of [`ModelConfig::flags`].
pub mod flags {
    /// The classifier re-uses the token embedding matrix.
    pub const TIED_EMBEDDINGS: u32 = 1 << 0;
    /// q/k/v projections have biases (Qwen2).
    pub const QKV_BIAS: u32 = 1 << 1;
    /// RoPE pairs halves instead of adjacent elements ([`super::RopeLayout::Half`]).
    pub const ROPE_HALF: u32 = 1 << 2;
    /// QuaRot: the input of every `ffn_down` is transformed online by the
    /// normalized Walsh–Hadamard transform of size `hidden_dim`
    /// (`edgeq_kernels::hadamard`), whose transpose is folded into the
    /// stored `ffn_down` weights. EQF 1.2.
    pub const ONLINE_HADAMARD: u32 = 1 << 3;
    /// Some linear layers have a permuted input (GPTQ act-order): the file
    /// has an INPUT_PERM section, and a session carves a gather buffer.
    /// Set if and only if that section is present. EQF 1.3.
    pub const INPUT_PERM: u32 = 1 << 4;
    /// Every flag bit this version knows.
    pub const KNOWN: u32 = TIED_EMBEDDINGS | QKV_BIAS | ROPE_HALF | ONLINE_HADAMARD | INPUT_PERM;
}

/// The CONFIG section, read in place (`#[repr(C)]`, 128 bytes, little-endian).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct ModelConfig {
    pub arch: u32,
    pub flags: u32,
    pub dim: u32,
    pub hidden_dim: u32,
    pub n_layers: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub vocab_size: u32,
    pub max_seq_len: u32,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// 0 = none, 1 = llama3.
    pub rope_scaling: u32,
    pub rope_factor: f32,
    pub rope_low_freq_factor: f32,
    pub rope_high_freq_factor: f32,
    pub rope_original_max_pos: u32,
    /// Dimensions of each head that are rotated (== head_dim for Llama).
    pub rope_dim: u32,
    pub bos_id: u32,
    pub eos_id: u32,
    pub reserved: [u32; 12],
}

impl ModelConfig {
    pub const SIZE: usize = core::mem::size_of::<ModelConfig>();

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads as usize * self.head_dim as usize
    }
    pub fn q_dim(&self) -> usize {
        self.n_heads as usize * self.head_dim as usize
    }
    pub fn tied_embeddings(&self) -> bool {
        self.flags & flags::TIED_EMBEDDINGS != 0
    }
    pub fn online_hadamard(&self) -> bool {
        self.flags & flags::ONLINE_HADAMARD != 0
    }
    /// Some linear inputs are permuted ([`flags::INPUT_PERM`]).
    pub fn input_perm(&self) -> bool {
        self.flags & flags::INPUT_PERM != 0
    }
    pub fn qkv_bias(&self) -> bool {
        self.flags & flags::QKV_BIAS != 0
    }
    pub fn rope_layout(&self) -> RopeLayout {
        if self.flags & flags::ROPE_HALF != 0 {
            RopeLayout::Half
        } else {
            RopeLayout::Interleaved
        }
    }
    pub fn rope_scaling(&self) -> RopeScaling {
        match self.rope_scaling {
            1 => RopeScaling::Llama3 {
                factor: self.rope_factor,
                low_freq_factor: self.rope_low_freq_factor,
                high_freq_factor: self.rope_high_freq_factor,
                original_max_position: self.rope_original_max_pos,
            },
            _ => RopeScaling::None,
        }
    }

    /// Checks every field for the ranges the runtime relies on, so that a
    /// corrupt config cannot cause overflow or out-of-bounds indexing later.
    pub fn validate(&self) -> Result<(), FormatError> {
        use FormatError::BadConfig;
        if self.arch != ARCH_LLAMA {
            return Err(BadConfig("unknown architecture id"));
        }
        if self.flags & !flags::KNOWN != 0 {
            return Err(BadConfig("unknown flag bits"));
        }
        const MAX: u32 = 1 << 20;
        for (v, what) in [
            (self.dim, "dim is zero or larger than 2^20"),
            (self.hidden_dim, "hidden_dim is zero or larger than 2^20"),
            (self.n_layers, "n_layers is zero or larger than 2^20"),
            (self.n_heads, "n_heads is zero or larger than 2^20"),
            (self.n_kv_heads, "n_kv_heads is zero or larger than 2^20"),
            (self.head_dim, "head_dim is zero or larger than 2^20"),
            (self.vocab_size, "vocab_size is zero or larger than 2^20"),
            (self.max_seq_len, "max_seq_len is zero or larger than 2^20"),
        ] {
            if v == 0 || v > MAX {
                return Err(BadConfig(what));
            }
        }
        if self.n_layers > 4096 {
            return Err(BadConfig("n_layers larger than 4096"));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(BadConfig("n_heads is not a multiple of n_kv_heads"));
        }
        if self.head_dim % 2 != 0 || self.rope_dim % 2 != 0 || self.rope_dim > self.head_dim || self.rope_dim == 0 {
            return Err(BadConfig("head_dim and rope_dim must be even, 0 < rope_dim <= head_dim"));
        }
        if (self.n_heads as u64) * (self.head_dim as u64) > MAX as u64 {
            return Err(BadConfig("n_heads * head_dim too large"));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(BadConfig("rope_theta must be finite and > 1"));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            return Err(BadConfig("rms_eps must be in (0, 1)"));
        }
        match self.rope_scaling {
            0 => {}
            1 => {
                let ok = self.rope_factor.is_finite()
                    && self.rope_factor >= 1.0
                    && self.rope_low_freq_factor.is_finite()
                    && self.rope_high_freq_factor.is_finite()
                    && self.rope_high_freq_factor > self.rope_low_freq_factor
                    && self.rope_low_freq_factor > 0.0
                    && self.rope_original_max_pos > 0;
                if !ok {
                    return Err(BadConfig("invalid llama3 rope scaling parameters"));
                }
            }
            _ => return Err(BadConfig("unknown rope scaling type")),
        }
        if self.bos_id >= self.vocab_size || self.eos_id >= self.vocab_size {
            return Err(BadConfig("bos/eos id outside the vocabulary"));
        }
        Ok(())
    }
}

const _: () = assert!(ModelConfig::SIZE == 128);
