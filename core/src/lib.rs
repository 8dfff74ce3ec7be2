//! edgeq-core: the EQF flat file format, the quantization schemes and their
//! reference (round-to-nearest) quantize / dequantize math.
//!
//! Everything here is `no_std`, allocation-free and panic-free on any input:
//! every malformed byte gives a typed [`FormatError`].
//! The `alloc` feature adds the EQF writer.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod config;
pub mod error;
pub mod format;
pub mod quant;
pub mod scheme;
pub mod tensor;

pub use config::{ModelConfig, RopeLayout, RopeScaling};
pub use error::FormatError;
pub use format::{ActMode, ActQuant, Eqf, ParseOptions, TensorRecord, TensorRole};
pub use scheme::{Granularity, QuantSpec, Scheme, TensorLayout};
pub use tensor::TensorView;
