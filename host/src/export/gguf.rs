//! EQF → GGUF (llama.cpp): `llama` (or `qwen2` for models with q/k/v
//! biases) metadata, the tokenizer as `tokenizer.ggml.*`, and every tensor in
//! the GGUF type that holds it exactly where there is one:
//!
//! | EQF scheme | GGUF | exact |
//! |---|---|---|
//! | Q4 sym, groups of 32, f16 scales | Q4_0 | yes: same grid `(q − 8)·d`, same nibble order |
//! | Q4 asym, groups of 32 | Q4_1 | yes: `q·d + m` |
//! | Q8 sym, groups of 32 | Q8_0 | yes |
//! | F32 / F16 / BF16 | F32 / F16 / BF16 | yes |
//! | anything else | Q8_0 (8-bit, FP8), Q4_0 / Q4_1 (4-bit), or `--requant` | no: dequantized and requantized, the added error reported |
//!
//! Norms are written as F32 (llama.cpp requires it). q/k rows of models
//! whose RoPE rotates half-split pairs (`ROPE_HALF`, Hugging Face layout)
//! are permuted to llama.cpp's interleaved layout for `llama` (whole rows
//! move, so the permutation is exact); `qwen2` keeps them (llama.cpp runs it
//! with NEOX RoPE).
use crate::import::gguf::{self as g, GgmlType, GgufArray, GgufWriter};
use anyhow::{bail, ensure, Context, Result};
use edgeq_core::config::flags;
use edgeq_core::format::{record_spec, TensorRecord};
use edgeq_core::{Eqf, Granularity, Scheme, TensorRole, TensorView};
use edgeq_runtime::tokenizer::{gpt2_byte_to_char, Pretokenizer, TokenType, Tokenizer, TokenizerKind};
use serde::Serialize;

/// What became of one tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorExport {
    pub name: String,
    /// EQF scheme name (`q4-g32`, ...).
    pub from: String,
    /// GGUF type name (`Q4_0`, ...).
    pub to: String,
    /// Carried bit-exactly (no re-rounding).
    pub exact: bool,
    /// Relative squared error `‖W' − W‖² / ‖W‖²` added by requantizing
    /// (0 when exact).
    pub rel_err: f64,
    /// Why a tensor was requantized (empty when exact).
    pub why: String,
}

/// `--requant`: the GGUF type for tensors without an exact mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requant {
    /// Q8_0 for 8-bit and FP8 schemes, Q4_0 / Q4_1 for 4-bit sym / asym.
    Auto,
    To(GgmlType),
}

/// llama.cpp's name of an EQF tensor.
pub fn tensor_name(role: TensorRole, layer: u16) -> String {
    let l = layer;
    match role {
        TensorRole::TokEmbd => "token_embd.weight".into(),
        TensorRole::OutputNorm => "output_norm.weight".into(),
        TensorRole::Output => "output.weight".into(),
        TensorRole::AttnNorm => format!("blk.{l}.attn_norm.weight"),
        TensorRole::Wq => format!("blk.{l}.attn_q.weight"),
        TensorRole::Wk => format!("blk.{l}.attn_k.weight"),
        TensorRole::Wv => format!("blk.{l}.attn_v.weight"),
        TensorRole::Wo => format!("blk.{l}.attn_output.weight"),
        TensorRole::Bq => format!("blk.{l}.attn_q.bias"),
        TensorRole::Bk => format!("blk.{l}.attn_k.bias"),
        TensorRole::Bv => format!("blk.{l}.attn_v.bias"),
        TensorRole::FfnNorm => format!("blk.{l}.ffn_norm.weight"),
        TensorRole::WGate => format!("blk.{l}.ffn_gate.weight"),
        TensorRole::WDown => format!("blk.{l}.ffn_down.weight"),
        TensorRole::WUp => format!("blk.{l}.ffn_up.weight"),
    }
}

/// EQF Q4/Q8 blocks of 32 as GGUF Q4_0 / Q4_1 / Q8_0 blocks, bit-exact;
/// `None` when the scheme has no exact GGUF type.
pub fn exact_blocks(v: &TensorView<'_>) -> Option<(GgmlType, Vec<u8>)> {
    let spec = v.spec;
    if spec.granularity != Granularity::PerGroup || spec.group != 32 || v.cols() % 32 != 0 {
        return None;
    }
    let (ty, code_bytes) = match spec.scheme {
        Scheme::Q4Sym => (GgmlType::Q4_0, 16),
        Scheme::Q4Asym => (GgmlType::Q4_1, 16),
        Scheme::Q8Sym => (GgmlType::Q8_0, 32),
        _ => return None,
    };
    let nb = v.cols() / 32;
    let mut out = Vec::with_capacity(v.rows() * nb * ty.type_size());
    for r in 0..v.rows() {
        let (codes, scales) = (v.row_codes(r), v.row_scales_f16(r));
        let mins = if ty == GgmlType::Q4_1 { v.row_mins(r) } else { &[] };
        for b in 0..nb {
            out.extend_from_slice(&scales[b].to_le_bytes());
            if ty == GgmlType::Q4_1 {
                out.extend_from_slice(&mins[b].to_le_bytes());
            }
            out.extend_from_slice(&codes[b * code_bytes..(b + 1) * code_bytes]);
        }
    }
    Some((ty, out))
}

fn encode(ty: GgmlType, w: &[f32]) -> Result<Vec<u8>> {
    Ok(match ty {
        GgmlType::F32 => g::encode_f32(w),
        GgmlType::F16 => g::encode_f16(w),
        GgmlType::BF16 => g::encode_bf16(w),
        GgmlType::Q8_0 => g::quantize_q8_0(w)?,
        GgmlType::Q4_0 => g::quantize_q4_0(w)?,
        GgmlType::Q4_1 => g::quantize_q4_1(w)?,
        other => bail!("--requant {}: only q8_0, q4_0, q4_1, f16, bf16 and f32 are written", other.name()),
    })
}

/// Converts one tensor: (type, bytes, report).
fn convert(eqf: &Eqf<'_>, t: &TensorRecord, name: &str, requant: Requant) -> Result<(GgmlType, Vec<u8>, TensorExport)> {
    let spec = record_spec(t).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let v = eqf.view(t).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let role = TensorRole::from_u16(t.role).context("unknown role")?;
    let report = |to: GgmlType, exact: bool, rel_err: f64, why: String| TensorExport {
        name: name.to_string(),
        from: crate::quantize::spec_name(&spec),
        to: to.name().to_string(),
        exact,
        rel_err,
        why,
    };
    // Vectors (norms, biases) and float matrices: the float type as stored.
    let float_ty = match spec.scheme {
        _ if role.is_vector() => Some(GgmlType::F32),
        Scheme::F32 => Some(GgmlType::F32),
        Scheme::F16 => Some(GgmlType::F16),
        Scheme::BF16 => Some(GgmlType::BF16),
        _ => None,
    };
    if let Some(ty) = float_ty {
        let w = crate::quantize::to_f32(eqf, t)?;
        let exact = spec.scheme.is_float(); // a quantized norm is widened: exact too
        return Ok((ty, encode(ty, &w)?, report(ty, exact || ty == GgmlType::F32, 0.0, String::new())));
    }
    let permuted = eqf.input_perm(role, t.layer).is_some();
    if let Some((ty, bytes)) = exact_blocks(&v).filter(|_| !permuted) {
        return Ok((ty, bytes, report(ty, true, 0.0, String::new())));
    }
    let mut why = if permuted {
        "act-order columns stored permuted (GGUF has no g_idx)".to_string()
    } else {
        "the scheme has no exact GGUF type".to_string()
    };
    let mut ty = match requant {
        Requant::To(ty) => ty,
        Requant::Auto if spec.scheme.code_bits() == 4 && spec.scheme.is_asym() => GgmlType::Q4_1,
        Requant::Auto if spec.scheme.code_bits() == 4 => GgmlType::Q4_0,
        Requant::Auto => GgmlType::Q8_0,
    };
    if ty.block_size() > 1 && v.cols() % ty.block_size() != 0 {
        // Rows that are not whole blocks: llama.cpp cannot hold them in a block type.
        why = format!("{} columns are not a multiple of {}", v.cols(), ty.block_size());
        ty = GgmlType::F16;
    } else if !permuted && spec.scheme.is_int() && spec.granularity == Granularity::PerGroup && spec.group == 32 {
        why = format!("{} columns are not a multiple of 32", v.cols());
    }
    let w = crate::quantize::to_f32(eqf, t)?;
    let bytes = encode(ty, &w)?;
    let back = g::dequantize(ty, &bytes, w.len())?;
    let (num, den) = w.iter().zip(&back).fold((0f64, 0f64), |(n, d), (a, b)| {
        (n + ((a - b) as f64).powi(2), d + (*a as f64).powi(2))
    });
    Ok((ty, bytes, report(ty, false, if den > 0.0 { num / den } else { 0.0 }, why)))
}

/// Permutes rows from the half-split RoPE layout (pair `(i, i + hd/2)` of
/// each head) to the interleaved one (`(2i, 2i + 1)`), moving whole rows of
/// `row_bytes`.
fn half_to_interleaved(bytes: &[u8], rows: usize, head_dim: usize) -> Vec<u8> {
    let row_bytes = bytes.len() / rows.max(1);
    let mut out = vec![0u8; bytes.len()];
    let half = head_dim / 2;
    for r in 0..rows {
        let (h, k) = (r / head_dim, r % head_dim);
        let (j, i) = (k / half, k % half); // half layout: k = j·half + i
        let dst = h * head_dim + 2 * i + j;
        out[dst * row_bytes..(dst + 1) * row_bytes].copy_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
    }
    out
}

/// Writes the tokenizer as `tokenizer.ggml.*` metadata.
fn tokenizer_metadata(w: &mut GgufWriter, tok: &Tokenizer<'_>, chat_template: Option<&str>) -> Result<()> {
    let n = tok.vocab_size() as u32;
    let mut types = Vec::with_capacity(n as usize);
    let mut tokens = Vec::with_capacity(n as usize);
    let bpe = tok.kind() == TokenizerKind::ByteLevelBpe;
    for id in 0..n {
        let bytes = tok.token_bytes(id).unwrap_or_default();
        let ty = tok.token_type(id).unwrap_or(TokenType::Normal);
        types.push(match ty {
            TokenType::Normal => 1i32,
            TokenType::Unknown => 2,
            TokenType::Control => 3,
            TokenType::UserDefined => 4,
            TokenType::Byte => 6,
        });
        tokens.push(match (bpe, ty) {
            // Byte-level pieces are stored in GPT-2's printable alphabet;
            // added tokens verbatim.
            (true, TokenType::Normal) => bytes.iter().map(|&b| gpt2_byte_to_char(b)).collect(),
            (true, _) => String::from_utf8_lossy(bytes).into_owned(),
            (false, TokenType::Byte) => String::from_utf8_lossy(bytes).into_owned(),
            (false, _) => String::from_utf8_lossy(bytes).replace(' ', "\u{2581}"),
        });
    }
    if bpe {
        w.add_metadata("tokenizer.ggml.model", "gpt2");
        let pre = match (
            tok.pretokenizer(),
            tok.flags() & edgeq_runtime::tokenizer::FLAG_INDIVIDUAL_DIGITS != 0,
        ) {
            (Pretokenizer::Gpt2, true) => "smollm",
            (Pretokenizer::Gpt2, false) => "gpt-2",
            (Pretokenizer::Llama3, _) => "llama-bpe",
            (Pretokenizer::Qwen2, _) => "qwen2",
        };
        w.add_metadata("tokenizer.ggml.pre", pre);
        let merges: Vec<String> = super::merges_by_rank(tok)
            .into_iter()
            .map(|(l, r)| format!("{} {}", tokens[l as usize], tokens[r as usize]))
            .collect();
        w.add_metadata("tokenizer.ggml.tokens", GgufArray::String(tokens));
        w.add_metadata("tokenizer.ggml.token_type", GgufArray::I32(types));
        w.add_metadata("tokenizer.ggml.merges", GgufArray::String(merges));
    } else {
        w.add_metadata("tokenizer.ggml.model", "llama");
        let scores: Vec<f32> = (0..n).map(|id| tok.score(id).unwrap_or(0.0)).collect();
        w.add_metadata("tokenizer.ggml.tokens", GgufArray::String(tokens));
        w.add_metadata("tokenizer.ggml.scores", GgufArray::F32(scores));
        w.add_metadata("tokenizer.ggml.token_type", GgufArray::I32(types));
        let prefix = tok.flags() & edgeq_runtime::tokenizer::FLAG_ADD_DUMMY_PREFIX != 0;
        w.add_metadata("tokenizer.ggml.add_space_prefix", prefix);
    }
    if let Some(b) = tok.bos() {
        w.add_metadata("tokenizer.ggml.bos_token_id", b);
    }
    if let Some(e) = tok.eos() {
        w.add_metadata("tokenizer.ggml.eos_token_id", e);
    }
    w.add_metadata("tokenizer.ggml.add_bos_token", tok.add_bos_default());
    if let Some(t) = chat_template {
        w.add_metadata("tokenizer.chat_template", t);
    }
    Ok(())
}

/// Converts a parsed EQF model to GGUF bytes and a per-tensor report.
pub fn export(eqf: &Eqf<'_>, requant: Requant) -> Result<(Vec<u8>, Vec<TensorExport>)> {
    let c = *eqf.config();
    ensure!(
        c.rope_scaling == 0,
        "this model uses RoPE scaling (Llama 3.1 style), which the GGUF exporter does not write yet"
    );
    let qkv_bias = c.flags & flags::QKV_BIAS != 0;
    let rope_half = c.flags & flags::ROPE_HALF != 0;
    ensure!(
        !qkv_bias || rope_half,
        "a model with q/k/v biases exports as qwen2, which llama.cpp runs with half-split RoPE; this one is interleaved"
    );
    let arch = if qkv_bias { "qwen2" } else { "llama" };
    let meta: serde_json::Value = serde_json::from_slice(eqf.metadata()).unwrap_or_default();
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", arch);
    let name = meta
        .get("name")
        .or_else(|| meta.get("source"))
        .and_then(|v| v.as_str())
        .unwrap_or("edgeq model");
    w.add_metadata("general.name", name);
    w.add_metadata("general.quantized_by", format!("edgeq {}", env!("CARGO_PKG_VERSION")));
    let u = |k: &str| format!("{arch}.{k}");
    w.add_metadata(u("context_length"), c.max_seq_len);
    w.add_metadata(u("embedding_length"), c.dim);
    w.add_metadata(u("feed_forward_length"), c.hidden_dim);
    w.add_metadata(u("block_count"), c.n_layers);
    w.add_metadata(u("attention.head_count"), c.n_heads);
    w.add_metadata(u("attention.head_count_kv"), c.n_kv_heads);
    w.add_metadata(u("attention.layer_norm_rms_epsilon"), c.rms_eps);
    w.add_metadata(u("rope.freq_base"), c.rope_theta);
    w.add_metadata(u("rope.dimension_count"), c.rope_dim);
    if c.head_dim * c.n_heads != c.dim {
        w.add_metadata(u("attention.key_length"), c.head_dim);
        w.add_metadata(u("attention.value_length"), c.head_dim);
    }
    w.add_metadata(u("vocab_size"), c.vocab_size);
    let tok = Tokenizer::parse(eqf.tokenizer_bytes()).map_err(|e| anyhow::anyhow!("the model's tokenizer: {e}"))?;
    tokenizer_metadata(&mut w, &tok, meta.get("chat_template").and_then(|v| v.as_str()))?;

    let mut reports = Vec::new();
    let mut records: Vec<&TensorRecord> = eqf.tensors().iter().collect();
    // llama.cpp's order: globals first, then blocks in order.
    records.sort_by_key(|t| (t.layer != edgeq_core::format::GLOBAL_LAYER, t.layer, t.role));
    let mut counts = std::collections::BTreeMap::<&'static str, usize>::new();
    for t in records {
        let role = TensorRole::from_u16(t.role).with_context(|| format!("tensor {}: unknown role {}", t.name_str(), t.role))?;
        let name = tensor_name(role, t.layer);
        let (ty, mut bytes, rep) = convert(eqf, t, &name, requant)?;
        let rows = t.rows as usize;
        if rope_half && arch == "llama" && matches!(role, TensorRole::Wq | TensorRole::Wk) {
            bytes = half_to_interleaved(&bytes, rows, c.head_dim as usize);
        }
        let dims: Vec<u64> = if role.is_vector() {
            vec![t.cols as u64]
        } else {
            vec![t.cols as u64, t.rows as u64]
        };
        w.add_tensor(&name, ty, &dims, bytes).with_context(|| format!("tensor {name}"))?;
        if !role.is_vector() {
            *counts.entry(ty.name()).or_default() += 1;
        }
        reports.push(rep);
    }
    // general.file_type: llama.cpp's LLAMA_FTYPE of the dominant matrix type.
    let main = counts.iter().max_by_key(|(_, n)| **n).map(|(t, _)| *t).unwrap_or("F32");
    let ftype: u32 = match main {
        "F16" => 1,
        "Q4_0" => 2,
        "Q4_1" => 3,
        "Q8_0" => 7,
        "BF16" => 32,
        _ => 0,
    };
    w.add_metadata("general.file_type", ftype);
    Ok((w.to_bytes()?, reports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{from_gguf, gguf::GgufFile, AlignedBytes};
    use std::path::Path;

    /// (name, scheme, bytes) of every tensor of an EQF image.
    fn tensors(eqf: &[u8]) -> Vec<(String, String, Vec<u8>)> {
        let b = AlignedBytes::from(eqf);
        let e = Eqf::parse(b.as_bytes()).unwrap();
        let mut v: Vec<_> = e
            .tensors()
            .iter()
            .map(|t| {
                let spec = crate::quantize::spec_name(&record_spec(t).unwrap());
                (t.name_str().to_string(), spec, e.tensor_bytes(t).unwrap().to_vec())
            })
            .collect();
        v.sort();
        v
    }

    fn export_bytes(eqf: &[u8], requant: Requant) -> (Vec<u8>, Vec<TensorExport>) {
        let b = AlignedBytes::from(eqf);
        export(&Eqf::parse(b.as_bytes()).unwrap(), requant).unwrap()
    }

    fn reimport(gguf: Vec<u8>) -> Vec<u8> {
        let g = GgufFile::from_bytes(gguf).unwrap();
        from_gguf::import_parsed(&g, Path::new("x.gguf")).unwrap().to_eqf().unwrap()
    }

    fn logits(eqf: &[u8], toks: &[u32]) -> Vec<f32> {
        crate::tiny::last_logits(eqf, toks).unwrap()
    }

    /// EQF → GGUF → EQF gives identical tensors for the exactly mapped
    /// schemes, and the same logits.
    #[test]
    fn exact_schemes_round_trip_bit_for_bit() {
        for scheme in ["q4-g32", "q4a-g32", "q8-g32", "f16", "bf16", "f32"] {
            let eqf = crate::tiny::eqf(11, scheme).unwrap();
            let (gguf, rep) = export_bytes(&eqf, Requant::Auto);
            assert!(rep.iter().all(|r| r.exact && r.rel_err == 0.0), "{scheme}: {rep:?}");
            let back = reimport(gguf);
            assert_eq!(tensors(&eqf), tensors(&back), "{scheme}");
            assert_eq!(logits(&eqf, &[1, 50, 260]), logits(&back, &[1, 50, 260]), "{scheme}");
        }
    }

    #[test]
    fn other_schemes_are_requantized_with_their_error_reported() {
        for (scheme, want) in [("q4-g64", "Q4_0"), ("q4a-g128", "Q4_1"), ("q8-ch", "Q8_0"), ("fp8-e4m3-ch", "Q8_0")] {
            let eqf = crate::tiny::eqf(11, scheme).unwrap();
            let (gguf, rep) = export_bytes(&eqf, Requant::Auto);
            let mats: Vec<_> = rep.iter().filter(|r| r.from == scheme).collect();
            assert!(
                !mats.is_empty() && mats.iter().all(|r| !r.exact && r.to == want),
                "{scheme}: {mats:?}"
            );
            // (a coarser grid can land exactly on the 32-block grid: error 0 is possible, not for all)
            assert!(
                mats.iter().all(|r| r.rel_err < 0.02) && mats.iter().any(|r| r.rel_err > 0.0),
                "{scheme}: {mats:?}"
            );
            reimport(gguf); // loads
        }
        let eqf = crate::tiny::eqf(11, "q4-g64").unwrap();
        let (_, rep) = export_bytes(&eqf, Requant::To(GgmlType::Q8_0));
        assert!(rep.iter().filter(|r| r.from == "q4-g64").all(|r| r.to == "Q8_0"));
    }

    /// A Hugging Face import (half-split RoPE rows) exports as llama with
    /// interleaved q/k rows: the re-imported model computes the same logits.
    #[test]
    fn half_split_rope_rows_are_permuted_for_llama() {
        let m = crate::tiny::model(4).unwrap();
        let dir = std::env::temp_dir().join(format!("edgeq-export-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in crate::tiny::hf_files(&m, safetensors::Dtype::F32).unwrap() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let hf = crate::import::hf::import(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let eqf = hf.unwrap().to_eqf().unwrap();
        let (gguf, _) = export_bytes(&eqf, Requant::Auto);
        let back = reimport(gguf);
        let (a, b) = (logits(&eqf, &[1, 70, 200]), logits(&back, &[1, 70, 200]));
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "max logit difference {d}");
    }

    /// SmolLM2's GGUF → EQF → GGUF: every tensor's bytes, the vocabulary,
    /// token types and merges come back identical.
    #[test]
    fn smollm2_gguf_round_trips() {
        let p = std::env::var_os("EDGEQ_SMOLLM2_GGUF")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
        if !p.exists() {
            eprintln!("SKIP: {} not found (run scripts/fetch-smollm2.sh)", p.display());
            return;
        }
        let orig = GgufFile::open(&p).unwrap();
        let eqf = from_gguf::import(&p).unwrap().to_eqf().unwrap();
        let (gguf, rep) = export_bytes(&eqf, Requant::Auto);
        assert!(rep.iter().all(|r| r.exact), "{:?}", rep.iter().find(|r| !r.exact));
        let out = GgufFile::from_bytes(gguf).unwrap();
        assert_eq!(orig.tensors.len(), out.tensors.len());
        for t in &orig.tensors {
            let u = out.tensor(&t.name).unwrap_or_else(|| panic!("{} missing", t.name));
            assert_eq!((t.ggml_type, &t.dims), (u.ggml_type, &u.dims), "{}", t.name);
            assert!(
                orig.tensor_data(t).unwrap() == out.tensor_data(u).unwrap(),
                "{} data differs",
                t.name
            );
        }
        for k in [
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.pre",
        ] {
            assert_eq!(orig.get(k), out.get(k), "{k}");
        }
        for k in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
            assert_eq!(orig.get(k).and_then(|v| v.as_u64()), out.get(k).and_then(|v| v.as_u64()), "{k}");
        }
    }
}
