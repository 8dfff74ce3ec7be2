//! llama2.c legacy (v0) checkpoints: a header of 7 little-endian i32
//! (`dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`;
//! negative vocab = separate classifier), then f32 weights in the order
//! token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final,
//! freq_cis_real, freq_cis_imag, [wcls]; every matrix `[out, in]`.
use super::ImportedModel;
use anyhow::{bail, ensure, Context, Result};
use edgeq_core::config::{flags, ARCH_LLAMA};
use edgeq_core::format::GLOBAL_LAYER;
use edgeq_core::{ModelConfig, TensorRole};
use std::path::Path;

pub fn import(path: &Path, tokenizer: &Path) -> Result<ImportedModel> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ctx = || format!("{}: not a llama2.c v0 checkpoint", path.display());
    ensure!(bytes.len() >= 28, "{}: file too short for the 28-byte header", ctx());
    let h: Vec<i32> = (0..7)
        .map(|i| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()))
        .collect();
    let (dim, hidden, n_layers, n_heads, n_kv, vocab_raw, seq_len) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
    if [dim, hidden, n_layers, n_heads, n_kv, seq_len]
        .iter()
        .any(|&v| v <= 0 || v > 1 << 20)
        || vocab_raw == 0
    {
        bail!(
            "{}: implausible header {h:?} (is this the v1/v2 'ak42' format? export it as legacy v0)",
            ctx()
        );
    }
    ensure!(
        dim % n_heads == 0 && n_heads % n_kv == 0,
        "{}: dim {dim} / heads {n_heads} / kv heads {n_kv} inconsistent",
        ctx()
    );
    let shared = vocab_raw > 0;
    let (dim, hidden, nl, nh, nkv, vocab, seq) = (
        dim as usize,
        hidden as usize,
        n_layers as usize,
        n_heads as usize,
        n_kv as usize,
        vocab_raw.unsigned_abs() as usize,
        seq_len as usize,
    );
    let hs = dim / nh;
    let kvd = nkv * hs;
    let sizes = [
        vocab * dim,
        nl * dim,
        nl * dim * dim,
        nl * dim * kvd,
        nl * dim * kvd,
        nl * dim * dim,
        nl * dim,
        nl * hidden * dim,
        nl * dim * hidden,
        nl * hidden * dim,
        dim,
        seq * hs / 2,
        seq * hs / 2,
        if shared { 0 } else { vocab * dim },
    ];
    let need = 28 + 4 * sizes.iter().sum::<usize>();
    ensure!(
        bytes.len() >= need,
        "{}: truncated: {} bytes, the header implies {need}",
        path.display(),
        bytes.len()
    );
    if bytes.len() > need {
        eprintln!("warning: {}: {} trailing bytes ignored", path.display(), bytes.len() - need);
    }
    let floats: Vec<f32> = bytes[28..need]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut off = 0;
    let mut parts = Vec::new();
    for s in sizes {
        parts.push(&floats[off..off + s]);
        off += s;
    }
    let config = ModelConfig {
        arch: ARCH_LLAMA,
        flags: if shared { flags::TIED_EMBEDDINGS } else { 0 },
        dim: dim as u32,
        hidden_dim: hidden as u32,
        n_layers: nl as u32,
        n_heads: nh as u32,
        n_kv_heads: nkv as u32,
        head_dim: hs as u32,
        vocab_size: vocab as u32,
        max_seq_len: seq as u32,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        rope_dim: hs as u32,
        bos_id: 1,
        eos_id: 2,
        ..bytemuck::Zeroable::zeroed()
    };
    let tok_bytes = std::fs::read(tokenizer).with_context(|| format!("cannot read tokenizer {}", tokenizer.display()))?;
    let tokenizer_blob =
        edgeq_runtime::tokenizer::from_llama2c_bin(&tok_bytes).map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer.display()))?;
    let n_tok = edgeq_runtime::tokenizer::Tokenizer::parse(&tokenizer_blob)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer.display()))?
        .vocab_size();
    ensure!(
        n_tok == vocab,
        "{} has {n_tok} tokens but {} has a vocabulary of {vocab}: wrong tokenizer?",
        tokenizer.display(),
        path.display()
    );

    let mut m = ImportedModel::new(config, tokenizer_blob, path);
    m.push(TensorRole::TokEmbd, GLOBAL_LAYER, vocab, dim, parts[0]);
    for l in 0..nl {
        let per = |i: usize, n: usize| &parts[i][l * n..(l + 1) * n];
        let l16 = l as u16;
        m.push(TensorRole::AttnNorm, l16, 1, dim, per(1, dim));
        m.push(TensorRole::Wq, l16, dim, dim, per(2, dim * dim));
        m.push(TensorRole::Wk, l16, kvd, dim, per(3, dim * kvd));
        m.push(TensorRole::Wv, l16, kvd, dim, per(4, dim * kvd));
        m.push(TensorRole::Wo, l16, dim, dim, per(5, dim * dim));
        m.push(TensorRole::FfnNorm, l16, 1, dim, per(6, dim));
        m.push(TensorRole::WGate, l16, hidden, dim, per(7, hidden * dim));
        m.push(TensorRole::WDown, l16, dim, hidden, per(8, dim * hidden));
        m.push(TensorRole::WUp, l16, hidden, dim, per(9, hidden * dim));
    }
    m.push(TensorRole::OutputNorm, GLOBAL_LAYER, 1, dim, parts[10]);
    if !shared {
        m.push(TensorRole::Output, GLOBAL_LAYER, vocab, dim, parts[13]);
    }
    Ok(m)
}
