//! Writing EQF models in other tools' formats: GGUF for llama.cpp
//! (`gguf.rs`), Hugging Face directories in the GPTQ, compressed-tensors FP8
//! or float layouts (`hf.rs`, with `hf_tokenizer.rs` for `tokenizer.json`).
pub mod gguf;
pub mod hf;
pub mod hf_tokenizer;
