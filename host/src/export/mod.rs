//! Writing EQF models in other tools' formats: GGUF for llama.cpp
//! (`gguf.rs`).
pub mod gguf;
