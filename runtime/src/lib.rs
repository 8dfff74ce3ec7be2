//! edgeq runtime: a `no_std`, allocation-free Llama-family decoder that runs
//! straight from an EQF image.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod tokenizer;
