//! Writing EQF models in other tools' formats: GGUF for llama.cpp
//! (`gguf.rs`), Hugging Face directories in the GPTQ, compressed-tensors FP8
//! or float layouts (`hf.rs`, with `hf_tokenizer.rs` for `tokenizer.json`).
pub mod gguf;
pub mod hf;
pub mod hf_tokenizer;

/// A byte-level BPE tokenizer's merges as (left, right) token ids in rank
/// order (the order GGUF and tokenizer.json list them in).
pub fn merges_by_rank(tok: &edgeq_runtime::tokenizer::Tokenizer<'_>) -> Vec<(u32, u32)> {
    let mut m: Vec<(u32, u32, u32)> = (0..tok.n_merges())
        .map(|i| {
            let (l, r, rank, _) = tok.merge_entry(i);
            (rank, l, r)
        })
        .collect();
    m.sort_unstable();
    m.into_iter().map(|(_, l, r)| (l, r)).collect()
}
