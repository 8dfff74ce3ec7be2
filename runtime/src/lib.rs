//! edgeq runtime: a `no_std`, allocation-free Llama-family decoder that runs
//! straight from an EQF image (a `&[u8]`: mmap, flash, or a static).
//!
//! ```text
//! let model = Model::from_bytes(bytes)?;                 // validates everything once
//! let need = arena_bytes(&model.cfg, max_seq, 1);        // size the arena up front
//! let mut s = Session::new(&model, &mut arena, max_seq, 1)?;
//! let logits = s.step(token)?;                           // one decode step
//! ```
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod arena;
pub mod error;
pub mod forward;
pub mod model;
pub mod sampler;
pub mod tokenizer;

pub use arena::{arena_bytes, Activations, ArenaPlan, MatmulOpts};
pub use error::RuntimeError;
pub use forward::{block_forward, rope_angles, NoObserver, Observer, Session};
pub use model::Model;
pub use sampler::{Sampler, SamplerConfig};
