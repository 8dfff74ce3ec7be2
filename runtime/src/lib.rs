//! edgeq runtime: a `no_std`, allocation-free Llama-family decoder that runs
//! straight from an EQF image (a `&[u8]`: mmap, flash, or a static).
//!
//! ```text
//! let model = Model::from_bytes(bytes)?;                 // validates everything once
//! let need = arena_bytes(&model.cfg, max_seq, 1);        // size the arena up front
//! let mut s = Session::new(&model, &mut arena, max_seq, 1)?;
//! // or a smaller KV cache (f16, or int8 with a scale per head vector):
//! let need = arena_bytes_with(&model.cfg, max_seq, 1, KvCache::Q8);
//! let opts = SessionOptions { kv: KvCache::Q8, ..Default::default() };
//! let mut s = Session::with_options(&model, &mut arena, max_seq, 1, opts)?;
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
pub mod exp;
pub mod forward;
pub mod kv;
pub mod model;
pub mod sampler;
pub mod tokenizer;

pub use arena::{arena_bytes, arena_bytes_with, Activations, ArenaPlan, MatmulOpts, SessionOptions};
pub use error::RuntimeError;
pub use forward::{block_forward, block_forward_kv, rope_angles, NoObserver, Observer, Session};
pub use kv::KvCache;
pub use model::Model;
pub use sampler::{Sampler, SamplerConfig};
