//! EQF, the edgeq flat file format. The specification is `docs/FORMAT.md`;
//! this module is its reference reader ([`Eqf::parse`]) and writer
//! ([`writer::EqfWriter`], `alloc` feature).
//!
//! Layout: a 64-byte [`Header`], a directory of [`SectionRecord`]s, then the
//! sections, each 64-byte aligned: CONFIG ([`crate::ModelConfig`]),
//! TOKENIZER (see `docs/TOKENIZER.md`), TENSOR_DIR ([`TensorRecord`]s sorted
//! by (layer, role)), TENSOR_DATA (each tensor 64-byte aligned), and an
//! optional METADATA section of UTF-8 JSON (provenance; readers may ignore)
//! and the optional ACT_QUANT section ([`act`], activation quantization of
//! W8A8 layers), and the INPUT_PERM section ([`perm`], the column order of
//! GPTQ act-order layers).
pub mod act;
pub mod perm;
mod reader;
mod records;
mod table;
#[cfg(feature = "alloc")]
pub mod writer;

pub use act::{ActMode, ActQuant};
pub use reader::{record_spec, Eqf, ParseOptions};
pub use records::*;
