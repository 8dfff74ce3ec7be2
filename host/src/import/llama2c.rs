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
    let tok_bytes = std::fs::read(tokenizer).with_context(|| format!("cannot read tokenizer {}", tokenizer.display()))?;
    from_bytes(&bytes, path, &tok_bytes, tokenizer)
}

/// Parses a checkpoint and its tokenizer held in memory (`path` and
/// `tokenizer` name them in messages).
pub fn from_bytes(bytes: &[u8], path: &Path, tok_bytes: &[u8], tokenizer: &Path) -> Result<ImportedModel> {
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
    // Sizes in f32s; checked, since a hostile header can ask for 2^80 floats.
    let prod = |v: &[usize]| v.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    let sizes = [
        prod(&[vocab, dim]),
        prod(&[nl, dim]),
        prod(&[nl, dim, dim]),
        prod(&[nl, dim, kvd]),
        prod(&[nl, dim, kvd]),
        prod(&[nl, dim, dim]),
        prod(&[nl, dim]),
        prod(&[nl, hidden, dim]),
        prod(&[nl, dim, hidden]),
        prod(&[nl, hidden, dim]),
        Some(dim),
        prod(&[seq, hs]).map(|n| n / 2),
        prod(&[seq, hs]).map(|n| n / 2),
        if shared { Some(0) } else { prod(&[vocab, dim]) },
    ];
    let need = sizes
        .iter()
        .try_fold(0usize, |a, &b| a.checked_add(b?))
        .and_then(|n| n.checked_mul(4)?.checked_add(28));
    let (Some(need), Some(sizes)) = (need, sizes.into_iter().collect::<Option<Vec<usize>>>()) else {
        bail!("{}: implausible header {h:?}: the weights it implies do not fit in memory", ctx());
    };
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
    for &s in &sizes {
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
    let tokenizer_blob =
        edgeq_runtime::tokenizer::from_llama2c_bin(tok_bytes).map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header(h: [i32; 7]) -> Vec<u8> {
        h.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Fuzz finding (llama2c target): a header whose implied size overflows
    /// usize panicked with "attempt to multiply with overflow" (and in
    /// release builds wrapped to a small size, then sliced out of bounds).
    #[test]
    fn header_implying_more_than_usize_is_an_error() {
        let tok = crate::tiny::llama2c_tokenizer();
        let b = header([1 << 20, 1 << 20, 1 << 20, 1, 1, 1, 1 << 20]);
        let e = from_bytes(&b, Path::new("x.bin"), &tok, Path::new("t.bin")).err().unwrap();
        assert!(format!("{e:#}").contains("do not fit in memory"), "{e:#}");
    }

    #[test]
    fn tiny_checkpoint_imports_and_truncations_are_errors() {
        let tok = crate::tiny::llama2c_tokenizer();
        let ckpt = crate::tiny::llama2c_checkpoint(3);
        assert!(from_bytes(&ckpt, Path::new("x.bin"), &tok, Path::new("t.bin")).is_ok());
        for n in [0, 27, 28, 29, ckpt.len() / 2, ckpt.len() - 1] {
            let e = from_bytes(&ckpt[..n], Path::new("x.bin"), &tok, Path::new("t.bin")).err().unwrap();
            assert!(format!("{e:#}").contains("x.bin"), "{e:#}");
        }
        // A tokenizer of the wrong size is named.
        let e = from_bytes(&ckpt, Path::new("x.bin"), &tok[..tok.len() - 20], Path::new("t.bin"))
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("t.bin"), "{e:#}");
    }
}
