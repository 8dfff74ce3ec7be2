//! GGUF (llama.cpp) → EQF: config from `{arch}.*` metadata, tokenizer from
//! `tokenizer.ggml.*`, and tensors carried exactly where EQF has the scheme
//! (Q8_0 → Q8 sym g32, Q4_0 → Q4 sym g32, Q4_1 → Q4 asym g32, F32/F16/BF16
//! as stored). Other block types go to the nearest EQF scheme, with the
//! error printed: Q4_K → Q4 asym g32 with the same codes (each 32-element
//! sub-block's `d·scale` and `dmin·min` rounded to f16: [`q4k_to_eqf`]);
//! 2–3-bit K-quants and IQ types → Q4 asym g32, 5–8-bit ones (Q5_*, Q6_K,
//! Q8_1, Q8_K) → Q8 sym g32, both by round-to-nearest of the dequantized
//! values. Norms and biases become f32.
use super::gguf::{GgmlType, GgufFile};
use super::ImportedModel;
use anyhow::{bail, ensure, Context, Result};
use edgeq_core::config::{flags, ARCH_LLAMA};
use edgeq_core::format::GLOBAL_LAYER;
use edgeq_core::{ModelConfig, QuantSpec, Scheme, TensorRole};
use edgeq_runtime::tokenizer::{
    build_byte_level_bpe, build_sentencepiece, AddedToken, BpeConfig, Pretokenizer, SentencePieceConfig, TokenType,
};
use std::collections::HashMap;
use std::path::Path;

pub fn import(path: &Path) -> Result<ImportedModel> {
    import_parsed(&GgufFile::open(path)?, path)
}

/// Converts an already parsed GGUF image (`path` names it in messages and in
/// the EQF provenance).
pub fn import_parsed(g: &GgufFile, path: &Path) -> Result<ImportedModel> {
    let p = path.display();
    let arch = g.architecture().context("general.architecture missing")?.to_string();
    ensure!(
        arch == "llama" || arch == "qwen2",
        "{p}: architecture '{arch}' is not supported (llama, qwen2)"
    );
    let u = |k: &str| -> Result<u32> {
        g.arch_get(k)
            .and_then(|v| v.as_u32())
            .with_context(|| format!("{p}: metadata {arch}.{k} missing"))
    };
    let dim = u("embedding_length")?;
    let n_heads = u("attention.head_count")?;
    let n_kv = g.arch_get("attention.head_count_kv").and_then(|v| v.as_u32()).unwrap_or(n_heads);
    let head_dim = g
        .arch_get("attention.key_length")
        .and_then(|v| v.as_u32())
        .unwrap_or(dim / n_heads.max(1));
    let emb = g.tensor("token_embd.weight").context("tensor token_embd.weight missing")?;
    let vocab = g
        .arch_get("vocab_size")
        .and_then(|v| v.as_u32())
        .unwrap_or(emb.dims.get(1).copied().unwrap_or(0) as u32);
    let tied = g.tensor("output.weight").is_none();
    let qkv_bias = g.tensor("blk.0.attn_q.bias").is_some();
    if g.tensor("rope_freqs.weight").is_some() {
        eprintln!(
            "warning: {p}: rope_freqs.weight (Llama 3.1 frequency scaling) is ignored; contexts beyond the original length will degrade"
        );
    }
    let mut fl = if tied { flags::TIED_EMBEDDINGS } else { 0 } | if qkv_bias { flags::QKV_BIAS } else { 0 };
    if arch == "qwen2" {
        fl |= flags::ROPE_HALF; // llama.cpp runs qwen2 with NEOX-style rope
    }
    let tok = tokenizer(g, vocab).with_context(|| format!("{p}: tokenizer metadata"))?;
    let config = ModelConfig {
        arch: ARCH_LLAMA,
        flags: fl,
        dim,
        hidden_dim: u("feed_forward_length")?,
        n_layers: u("block_count")?,
        n_heads,
        n_kv_heads: n_kv,
        head_dim,
        vocab_size: vocab,
        max_seq_len: u("context_length")?,
        rope_theta: g.arch_get("rope.freq_base").and_then(|v| v.as_f32()).unwrap_or(10000.0),
        rms_eps: g
            .arch_get("attention.layer_norm_rms_epsilon")
            .and_then(|v| v.as_f32())
            .unwrap_or(1e-5),
        rope_dim: g.arch_get("rope.dimension_count").and_then(|v| v.as_u32()).unwrap_or(head_dim),
        bos_id: tok.1,
        eos_id: tok.2,
        ..bytemuck::Zeroable::zeroed()
    };
    config.validate().map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
    let mut m = ImportedModel::new(config, tok.0, path);
    m.metadata.insert("importer".into(), "gguf".into());
    if let Some(t) = g.get_str("tokenizer.chat_template") {
        m.metadata.insert("chat_template".into(), t.into());
    }
    if let Some(n) = g.get_str("general.name") {
        m.metadata.insert("name".into(), n.into());
    }

    let mut add = |name: &str, role: TensorRole, layer: u16, optional: bool| -> Result<()> {
        let Some(t) = g.tensor(name) else {
            if optional {
                return Ok(());
            }
            bail!("{p}: tensor {name} missing");
        };
        let cols = t.dims[0] as usize;
        let rows = t.dims.iter().skip(1).product::<u64>() as usize;
        let data = g.tensor_data(t)?;
        let vector = role.is_vector();
        match t.ggml_type {
            GgmlType::F32 => {
                let v: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                m.push(role, layer, rows, cols, &v);
            }
            GgmlType::F16 | GgmlType::BF16 if !vector => {
                let s = if t.ggml_type == GgmlType::F16 { Scheme::F16 } else { Scheme::BF16 };
                m.push_encoded(role, layer, QuantSpec::float(s), rows, cols, data.to_vec());
            }
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 if !vector => {
                let (spec, bytes) = blocks_to_eqf(t.ggml_type, rows, cols, data)?;
                m.push_encoded(role, layer, spec, rows, cols, bytes);
            }
            GgmlType::Q4_K if !vector && cols % 256 == 0 => {
                let (spec, bytes) = q4k_to_eqf(rows, cols, data).with_context(|| format!("{p}: tensor {name}"))?;
                let err = rel_err(spec, rows, cols, &bytes, &g.tensor_f32(t)?)?;
                eprintln!(
                    "note: {name}: Q4_K -> q4a-g32, same codes, per-32 scales and mins rounded to f16: relative squared error {err:.2e}"
                );
                m.push_encoded(role, layer, spec, rows, cols, bytes);
            }
            ty if !vector && cols % 32 == 0 && ty.block_size() > 1 => {
                let low = matches!(ty, GgmlType::Q2_K | GgmlType::Q3_K) || ty.name().starts_with("IQ");
                let spec = QuantSpec::per_group(if low { Scheme::Q4Asym } else { Scheme::Q8Sym }, 32);
                let v = g.tensor_f32(t)?;
                let l = spec.layout(rows as u32, cols as u32).map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut bytes = vec![0u8; l.total_bytes as usize];
                edgeq_core::quant::quantize(spec, rows as u32, cols as u32, &v, &mut bytes)
                    .map_err(|e| anyhow::anyhow!("{p}: tensor {name}: {e}"))?;
                let err = rel_err(spec, rows, cols, &bytes, &v)?;
                eprintln!(
                    "warning: {name}: {} has no exact EQF scheme; requantized to {}: relative squared error {err:.2e}",
                    ty.name(),
                    crate::quantize::spec_name(&spec)
                );
                m.push_encoded(role, layer, spec, rows, cols, bytes);
            }
            ty => {
                if !vector {
                    eprintln!("warning: {name}: {} has no exact EQF scheme; stored dequantized as f32", ty.name());
                }
                let v = g.tensor_f32(t)?;
                m.push(role, layer, rows, cols, &v);
            }
        }
        Ok(())
    };
    add("token_embd.weight", TensorRole::TokEmbd, GLOBAL_LAYER, false)?;
    add("output_norm.weight", TensorRole::OutputNorm, GLOBAL_LAYER, false)?;
    add("output.weight", TensorRole::Output, GLOBAL_LAYER, true)?;
    for l in 0..config.n_layers as u16 {
        for (suffix, role, opt) in [
            ("attn_norm.weight", TensorRole::AttnNorm, false),
            ("attn_q.weight", TensorRole::Wq, false),
            ("attn_k.weight", TensorRole::Wk, false),
            ("attn_v.weight", TensorRole::Wv, false),
            ("attn_output.weight", TensorRole::Wo, false),
            ("attn_q.bias", TensorRole::Bq, !qkv_bias),
            ("attn_k.bias", TensorRole::Bk, !qkv_bias),
            ("attn_v.bias", TensorRole::Bv, !qkv_bias),
            ("ffn_norm.weight", TensorRole::FfnNorm, false),
            ("ffn_gate.weight", TensorRole::WGate, false),
            ("ffn_down.weight", TensorRole::WDown, false),
            ("ffn_up.weight", TensorRole::WUp, false),
        ] {
            add(&format!("blk.{l}.{suffix}"), role, l, opt)?;
        }
    }
    Ok(m)
}

/// Re-lays GGUF Q8_0 / Q4_0 / Q4_1 blocks (32 elements each) as EQF's
/// planar codes + f16 scales (+ f16 mins); bit-exact, nibble order shared.
pub fn blocks_to_eqf(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Result<(QuantSpec, Vec<u8>)> {
    ensure!(cols % 32 == 0, "row length {cols} is not a multiple of 32");
    let (scheme, bsize) = match ty {
        GgmlType::Q8_0 => (Scheme::Q8Sym, 34),
        GgmlType::Q4_0 => (Scheme::Q4Sym, 18),
        GgmlType::Q4_1 => (Scheme::Q4Asym, 20),
        _ => bail!("{} is not a directly mapped block type", ty.name()),
    };
    let spec = QuantSpec::per_group(scheme, 32);
    let l = spec.layout(rows as u32, cols as u32).map_err(|e| anyhow::anyhow!("{e}"))?;
    let nb = rows * cols / 32;
    ensure!(
        data.len() == nb * bsize,
        "expected {} bytes of {} blocks, got {}",
        nb * bsize,
        ty.name(),
        data.len()
    );
    let mut out = vec![0u8; l.total_bytes as usize];
    let code_bytes = if scheme == Scheme::Q8Sym { 32 } else { 16 };
    for (b, blk) in data.chunks_exact(bsize).enumerate() {
        out[l.scales_offset as usize + 2 * b..][..2].copy_from_slice(&blk[0..2]);
        let q = match ty {
            GgmlType::Q4_1 => {
                out[l.mins_offset as usize + 2 * b..][..2].copy_from_slice(&blk[2..4]);
                &blk[4..]
            }
            _ => &blk[2..],
        };
        // blocks are row-major and rows hold whole blocks: block b's codes
        // start at b * code_bytes in the (unpadded) code region
        out[b * code_bytes..(b + 1) * code_bytes].copy_from_slice(q);
    }
    Ok((spec, out))
}

/// GGUF Q4_K super-blocks (256 elements: f16 `d`, `dmin`, eight 6-bit scales
/// and mins, 128 bytes of 4-bit codes) as EQF Q4 asym in groups of 32: each
/// sub-block keeps its codes; its scale `d·sc` and min `−dmin·m` are rounded
/// to f16 (the only difference from llama.cpp's values).
pub fn q4k_to_eqf(rows: usize, cols: usize, data: &[u8]) -> Result<(QuantSpec, Vec<u8>)> {
    ensure!(cols % 256 == 0, "row length {cols} is not a multiple of 256");
    let nb = rows * cols / 256;
    ensure!(
        data.len() == nb * 144,
        "expected {} bytes of Q4_K blocks, got {}",
        nb * 144,
        data.len()
    );
    let spec = QuantSpec::per_group(Scheme::Q4Asym, 32);
    let l = spec.layout(rows as u32, cols as u32).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = vec![0u8; l.total_bytes as usize];
    let f16_at = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    for (b, blk) in data.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        ensure!(d.is_finite() && dmin.is_finite(), "Q4_K block {b} has a NaN or infinite scale");
        let (scales, qs) = (&blk[4..16], &blk[16..144]);
        for s in 0..8 {
            let (sc, mn) = super::gguf::get_scale_min_k4(s, scales);
            let g = b * 8 + s; // EQF group index (rows hold whole super-blocks)
            let scale = half::f16::from_f32(d * sc as f32);
            let min = half::f16::from_f32(-(dmin * mn as f32));
            out[l.scales_offset as usize + 2 * g..][..2].copy_from_slice(&scale.to_le_bytes());
            out[l.mins_offset as usize + 2 * g..][..2].copy_from_slice(&min.to_le_bytes());
            let q = &qs[(s / 2) * 32..(s / 2) * 32 + 32];
            let code = |i: usize| if s % 2 == 0 { q[i] & 0xF } else { q[i] >> 4 };
            let dst = &mut out[g * 16..g * 16 + 16];
            for j in 0..16 {
                dst[j] = code(j) | (code(j + 16) << 4);
            }
        }
    }
    Ok((spec, out))
}

/// `‖W' − W‖² / ‖W‖²` of EQF bytes against the values they replace.
fn rel_err(spec: QuantSpec, rows: usize, cols: usize, bytes: &[u8], reference: &[f32]) -> Result<f64> {
    let a = super::AlignedBytes::from(bytes);
    let v = edgeq_core::TensorView::new(spec, rows as u32, cols as u32, a.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut row = vec![0f32; cols];
    let (mut num, mut den) = (0f64, 0f64);
    for r in 0..rows {
        v.dequantize_row(r, &mut row);
        for (x, y) in row.iter().zip(&reference[r * cols..(r + 1) * cols]) {
            num += ((x - y) as f64).powi(2);
            den += (*y as f64).powi(2);
        }
    }
    Ok(if den > 0.0 { num / den } else { num })
}

/// Builds the tokenizer blob; returns (blob, bos, eos).
fn tokenizer(g: &GgufFile, vocab: u32) -> Result<(Vec<u8>, u32, u32)> {
    let model = g.get_str("tokenizer.ggml.model").context("tokenizer.ggml.model missing")?;
    let tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_str_array())
        .context("tokenizer.ggml.tokens missing")?;
    ensure!(
        tokens.len() == vocab as usize,
        "{} tokens but a vocabulary of {vocab}",
        tokens.len()
    );
    let types: Vec<i32> = g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_i32_array())
        .unwrap_or_else(|| vec![1; tokens.len()]);
    let bos = g.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32);
    let eos = g.get_u64("tokenizer.ggml.eos_token_id").map(|v| v as u32);
    let err = |e| anyhow::anyhow!("building tokenizer: {e:?}");
    let blob = match model {
        "gpt2" => {
            let merges = g
                .get("tokenizer.ggml.merges")
                .and_then(|v| v.as_str_array())
                .context("tokenizer.ggml.merges missing")?;
            let ids: HashMap<&str, u32> = tokens.iter().enumerate().map(|(i, t)| (*t, i as u32)).collect();
            let mut pairs = Vec::with_capacity(merges.len());
            for (i, mg) in merges.iter().enumerate() {
                let (a, b) = mg.split_once(' ').with_context(|| format!("merge {i} '{mg}' has no space"))?;
                let (Some(&a), Some(&b)) = (ids.get(a), ids.get(b)) else {
                    bail!("merge {i} '{mg}' names a token not in the vocabulary")
                };
                pairs.push((a, b));
            }
            let mut vocab_list = Vec::new();
            let mut added = Vec::new();
            for (i, t) in tokens.iter().enumerate() {
                match types.get(i).copied().unwrap_or(1) {
                    3 | 4 => added.push(AddedToken {
                        id: i as u32,
                        content: t,
                        special: types[i] == 3,
                    }),
                    _ => vocab_list.push((*t, i as u32)),
                }
            }
            let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
            let (pretokenizer, individual_digits, ignore_merges) = match pre {
                "smollm" => (Pretokenizer::Gpt2, true, false),
                "llama-bpe" | "llama3" => (Pretokenizer::Llama3, false, true),
                "qwen2" => (Pretokenizer::Qwen2, false, false),
                "gpt-2" | "gpt2" | "default" | "starcoder" => (Pretokenizer::Gpt2, false, false),
                other => {
                    eprintln!("warning: pre-tokenizer '{other}' is not known to edgeq; using the GPT-2 pattern");
                    (Pretokenizer::Gpt2, false, false)
                }
            };
            let cfg = BpeConfig {
                pretokenizer,
                individual_digits,
                ignore_merges,
                add_bos: g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
                bos,
                eos,
            };
            build_byte_level_bpe(&vocab_list, &pairs, &added, &cfg).map_err(err)?
        }
        "llama" => {
            let scores: Vec<f32> = g
                .get("tokenizer.ggml.scores")
                .and_then(|v| v.as_f32_array())
                .unwrap_or_else(|| vec![0.0; tokens.len()]);
            let pieces: Vec<Vec<u8>> = tokens.iter().map(|t| t.replace('\u{2581}', " ").into_bytes()).collect();
            let refs: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
            let tt: Vec<TokenType> = types
                .iter()
                .map(|&t| match t {
                    2 => TokenType::Unknown,
                    3 => TokenType::Control,
                    4 => TokenType::UserDefined,
                    6 => TokenType::Byte,
                    _ => TokenType::Normal,
                })
                .collect();
            let cfg = SentencePieceConfig {
                bos,
                eos,
                add_bos: g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(true),
                add_dummy_prefix: g.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true),
            };
            build_sentencepiece(&refs, &scores, &tt, &cfg).map_err(err)?
        }
        other => bail!("tokenizer model '{other}' is not supported (gpt2, llama)"),
    };
    Ok((blob, bos.unwrap_or(0).min(vocab - 1), eos.unwrap_or(0).min(vocab - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random Q4_K blocks land in Q4 asym g32 with the same codes: every
    /// value within f16 rounding of the scale and min of llama.cpp's.
    #[test]
    fn q4_k_blocks_keep_their_codes() {
        let mut rng = crate::calib::data::SplitMix(7);
        let (rows, cols) = (3, 512);
        let mut data = Vec::new();
        for _ in 0..rows * cols / 256 {
            let mut blk: Vec<u8> = (0..144).map(|_| rng.next_u64() as u8).collect();
            blk[0..2].copy_from_slice(&half::f16::from_f32(0.01 + (rng.next_u64() % 100) as f32 * 1e-3).to_le_bytes());
            blk[2..4].copy_from_slice(&half::f16::from_f32((rng.next_u64() % 100) as f32 * 1e-3).to_le_bytes());
            data.extend(blk);
        }
        let want = super::super::gguf::dequantize(GgmlType::Q4_K, &data, rows * cols).unwrap();
        let (spec, bytes) = q4k_to_eqf(rows, cols, &data).unwrap();
        let a = super::super::AlignedBytes::from(&bytes);
        let v = edgeq_core::TensorView::new(spec, rows as u32, cols as u32, a.as_bytes()).unwrap();
        let mut got = vec![0f32; rows * cols];
        for r in 0..rows {
            v.dequantize_row(r, &mut got[r * cols..(r + 1) * cols]);
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // |Δ| ≤ f16 rounding of d·sc (× code ≤ 15) and of dmin·m
            let tol = 2f32.powi(-10) * (w.abs() + 64.0 * 0.11 * 63.0 * 2f32.powi(-1)) + 1e-6;
            assert!((g - w).abs() <= tol, "element {i}: {g} vs {w}");
        }
        assert!(rel_err(spec, rows, cols, &bytes, &want).unwrap() < 1e-6);
        assert!(q4k_to_eqf(rows, cols, &data[1..]).is_err());
        assert!(q4k_to_eqf(rows, 100, &data).is_err());
    }
}
