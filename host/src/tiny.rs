//! Tiny synthetic models (a few kB, random weights, every file format edgeq
//! reads): unit tests, the fuzz targets' seed corpora (`examples/fuzz_seeds`)
//! and the corruption tests use them where a real checkpoint would be too
//! big to mutate byte by byte. Deterministic: the same seed gives the same
//! bytes.
use crate::calib::data::SplitMix;
use crate::import::ImportedModel;
use anyhow::{Context, Result};
use edgeq_core::{ModelConfig, QuantSpec, TensorRole};
use edgeq_runtime::tokenizer::gpt2_byte_to_char;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::path::Path;

/// Shape of the tiny model: every matrix has 32-multiple rows and columns
/// (GGUF block types and 32-groups apply), grouped-query attention.
pub const DIM: usize = 32;
pub const HIDDEN: usize = 64;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const SEQ: usize = 64;

/// Extra pieces of the tiny SentencePiece vocabulary (after `<unk>`, `<s>`,
/// `</s>` and the 256 byte pieces), best-scored first.
const PIECES: [&str; 29] = [
    " t", "he", " the", " a", "in", "on", " s", "nd", " and", "ed", " w", "re", " h", "er", " b", "it", "ou", " o", " c", "an", " was",
    " Once", " upon", " time", " there", " little", " girl", " dog", ".",
];

/// A llama2.c `tokenizer.bin`: max piece length, then per piece score,
/// length, bytes. 288 pieces: `<unk>`, `<s>`, `</s>`, `<0x00>`..`<0xFF>`, words.
pub fn llama2c_tokenizer() -> Vec<u8> {
    let mut pieces: Vec<(String, f32)> = vec![("<unk>".into(), 0.0), ("\n<s>\n".into(), 0.0), ("\n</s>\n".into(), 0.0)];
    pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0)));
    pieces.extend(PIECES.iter().enumerate().map(|(i, p)| (p.to_string(), -(i as f32))));
    let mut out = (pieces.iter().map(|p| p.0.len()).max().unwrap_or(0) as i32).to_le_bytes().to_vec();
    for (p, score) in &pieces {
        out.extend(score.to_le_bytes());
        out.extend((p.len() as i32).to_le_bytes());
        out.extend(p.as_bytes());
    }
    out
}

/// Vocabulary size of [`llama2c_tokenizer`].
pub const VOCAB: usize = 3 + 256 + PIECES.len();

/// A llama2.c v0 checkpoint of the tiny model (shared classifier), weights
/// uniform in ±0.25 from `seed`, norms near 1.
pub fn llama2c_checkpoint(seed: u64) -> Vec<u8> {
    let (d, h, l, hs) = (DIM, HIDDEN, LAYERS, DIM / HEADS);
    let kvd = KV_HEADS * hs;
    let header = [d, h, l, HEADS, KV_HEADS, VOCAB, SEQ].map(|v| v as i32);
    let mut out: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut rng = SplitMix(seed);
    let mut push = |n: usize, around: f32| {
        for _ in 0..n {
            let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5; // [-0.5, 0.5)
            out.extend((around + 0.5 * u).to_le_bytes());
        }
    };
    push(VOCAB * d, 0.0);
    push(l * d, 1.0);
    push(l * d * d, 0.0);
    push(l * d * kvd, 0.0);
    push(l * d * kvd, 0.0);
    push(l * d * d, 0.0);
    push(l * d, 1.0);
    push(l * h * d, 0.0);
    push(l * d * h, 0.0);
    push(l * h * d, 0.0);
    push(d, 1.0);
    push(SEQ * hs / 2, 0.0); // freq_cis_real (unused: the runtime computes RoPE)
    push(SEQ * hs / 2, 0.0); // freq_cis_imag
    out
}

/// The tiny model, imported (f32 tensors).
pub fn model(seed: u64) -> Result<ImportedModel> {
    crate::import::llama2c::from_bytes(
        &llama2c_checkpoint(seed),
        Path::new("tiny.bin"),
        &llama2c_tokenizer(),
        Path::new("tiny-tok.bin"),
    )
}

/// The tiny model quantized to `scheme` (RTN) and exported to GGUF
/// (`edgeq export`): `f32`, `f16`, `q8-g32`, `q4-g32` and `q4a-g32` give
/// F32, F16, Q8_0, Q4_0 and Q4_1 matrices.
pub fn gguf(seed: u64, scheme: &str) -> Result<Vec<u8>> {
    let e = eqf(seed, scheme)?;
    let b = crate::import::AlignedBytes::from(&e);
    let parsed = edgeq_core::Eqf::parse(b.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(crate::export::gguf::export(&parsed, crate::export::gguf::Requant::Auto)?.0)
}

/// The tiny model as a Hugging Face directory's files: `config.json`, a
/// byte-level BPE `tokenizer.json` and `model.safetensors` in `dtype`.
pub fn hf_files(m: &ImportedModel, dtype: Dtype) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut cfg = llama_config_json(&m.config);
    cfg["vocab_size"] = 264.into(); // the byte-level tokenizer's size (256 bytes, 7 merges, 1 special)
    let tensors: Vec<HfTensor> = hf_tensors(m)
        .into_iter()
        .map(|mut t| {
            if t.name == "model.embed_tokens.weight" {
                t.shape[0] = 264;
                t.data.resize(264 * t.shape[1], 0.01);
            }
            t
        })
        .collect();
    Ok(vec![
        ("config.json", cfg.to_string().into_bytes()),
        ("tokenizer.json", byte_level_tokenizer_json().into_bytes()),
        ("model.safetensors", safetensors_bytes(&tensors, dtype)?),
    ])
}

/// Encodes f32 values as `dt` (F32, F16 or BF16) little-endian bytes.
pub fn encode(data: &[f32], dt: Dtype) -> Vec<u8> {
    match dt {
        Dtype::F16 => data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        Dtype::BF16 => data.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        _ => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// One safetensors file holding `tensors` as `dt`.
pub fn safetensors_bytes(tensors: &[HfTensor], dt: Dtype) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| encode(&t.data, dt)).collect();
    let mut views = Vec::new();
    for (t, b) in tensors.iter().zip(&bytes) {
        views.push((t.name.clone(), safetensors::tensor::TensorView::new(dt, t.shape.clone(), b)?));
    }
    Ok(safetensors::serialize(views, None)?)
}

/// A few calibration JSONL lines: plain text, chat messages, a stratum field.
pub fn calib_jsonl() -> String {
    [
        json!({"text": "Once upon a time there was a little girl.", "task": "story"}),
        json!({"text": "The dog was happy and the girl was happy.", "task": "story"}),
        json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Once upon a time"}], "task": "chat"}),
        json!({"text": "", "task": "empty"}),
    ]
    .iter()
    .map(|v| v.to_string() + "\n")
    .collect()
}

/// The chat template [`calib_jsonl`]'s `messages` lines are rendered with.
pub const CHAT_TEMPLATE: &str = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}";

/// Every EQF weight scheme the tiny model is quantized to for seeds and
/// corruption tests (RTN), by [`crate::quantize::parse_spec_name`] name.
pub const SCHEMES: [&str; 9] = [
    "f16",
    "bf16",
    "q8-ch",
    "q8a-g32",
    "q4-g32",
    "q4a-g32",
    "fp8-e4m3-ch",
    "fp8-e5m2-t",
    "fp8-e4m3-b32",
];

/// The tiny model quantized to `scheme` (f32 when `scheme` is "f32").
pub fn eqf(seed: u64, scheme: &str) -> Result<Vec<u8>> {
    requantize(&model(seed)?.to_eqf()?, scheme)
}

/// Any f32 EQF image RTN-quantized to `scheme` (returned as is for "f32").
pub fn requantize(f32_eqf: &[u8], scheme: &str) -> Result<Vec<u8>> {
    if scheme == "f32" {
        return Ok(f32_eqf.to_vec());
    }
    let spec: QuantSpec = crate::quantize::parse_spec_name(scheme)?;
    let bytes = crate::import::AlignedBytes::from(f32_eqf);
    let eqf = edgeq_core::Eqf::parse(bytes.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let policy = crate::quantize::Policy::new(spec, None, &[])?;
    Ok(crate::quantize::quantize_rtn(&eqf, &policy, &indicatif::ProgressBar::hidden())?.0)
}

/// `eqf` with activation records on every block linear: FP8 models get
/// per-128-group FP8 activations; integer ones LLM.int8 (threshold 1, stored
/// outlier columns 1 and 5) on even blocks and per-token int8 on odd ones.
pub fn with_acts(eqf_bytes: &[u8]) -> Result<Vec<u8>> {
    use edgeq_core::format::writer::ActEntry;
    use edgeq_core::ActMode;
    let bytes = crate::import::AlignedBytes::from(eqf_bytes);
    let eqf = edgeq_core::Eqf::parse(bytes.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let acts = eqf
        .tensors()
        .iter()
        .filter_map(|t| {
            let role = edgeq_core::TensorRole::from_u16(t.role)?;
            let spec = edgeq_core::format::record_spec(t).ok()?;
            if t.layer == edgeq_core::format::GLOBAL_LAYER || !role.is_linear() || spec.scheme.is_float() {
                return None;
            }
            let (mode, threshold, outliers) = match (spec.scheme.is_fp8(), t.layer % 2) {
                (true, _) => (ActMode::Fp8Group128, 0.0, vec![]),
                (false, 0) => (ActMode::LlmInt8, 1.0, vec![1, 5]),
                _ => (ActMode::Int8Token, 0.0, vec![]),
            };
            Some(ActEntry {
                role,
                layer: t.layer,
                mode,
                threshold,
                outliers,
            })
        })
        .collect();
    let keep = crate::quantize::Policy::new(QuantSpec::F32, None, &["*".to_string()])?;
    let none = Default::default();
    Ok(
        crate::quantize::quantize_rtn_except(&eqf, &keep, &none, Vec::new(), Vec::new(), acts, &indicatif::ProgressBar::hidden())?
            .0
            .try_finish()?,
    )
}

/// The f32 image `eqf_bytes` with every block linear stored with permuted
/// input columns (EQF 1.3 INPUT_PERM): the same function, another layout.
/// Columns are reversed and rotated by the layer index (q/k/v share one).
pub fn with_perms(eqf_bytes: &[u8]) -> Result<Vec<u8>> {
    use edgeq_core::format::writer::{EqfWriter, TensorEntry};
    let bytes = crate::import::AlignedBytes::from(eqf_bytes);
    let eqf = edgeq_core::Eqf::parse(bytes.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut w = EqfWriter::new(*eqf.config(), eqf.tokenizer_bytes().to_vec());
    let mut perms = Vec::new();
    for t in eqf.tensors() {
        let role = edgeq_core::TensorRole::from_u16(t.role).context("role")?;
        let spec = edgeq_core::format::record_spec(t).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut data = eqf.tensor_bytes(t).map_err(|e| anyhow::anyhow!("{e}"))?.to_vec();
        if t.layer != edgeq_core::format::GLOBAL_LAYER && role.is_linear() {
            anyhow::ensure!(spec == QuantSpec::F32, "with_perms takes an f32 model");
            let cols = t.cols as usize;
            let perm: Vec<u32> = (0..cols).map(|i| ((cols - 1 - i + t.layer as usize) % cols) as u32).collect();
            let vals: Vec<f32> = crate::quantize::to_f32(&eqf, t)?;
            let stored: Vec<f32> = vals
                .chunks_exact(cols)
                .flat_map(|row| perm.iter().map(|&c| row[c as usize]))
                .collect();
            data = bytemuck::cast_slice(&stored).to_vec();
            perms.push((role, t.layer, perm));
        }
        w.add(TensorEntry {
            role,
            layer: t.layer,
            spec,
            rows: t.rows,
            cols: t.cols,
            data,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for (role, layer, perm) in perms {
        w.add_perm(role, layer, perm).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(w.finish())
}

/// An HF tensor: name, shape, f32 values.
pub struct HfTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A small byte-level BPE tokenizer.json: 256 byte tokens, a few merges,
/// `<|endoftext|>` as token 256 + merges.len().
pub fn byte_level_tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(gpt2_byte_to_char(b).to_string(), b.into());
    }
    let merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "o n", "Ġ s"];
    for m in merges {
        let id = vocab.len();
        vocab.insert(m.replace(' ', ""), id.into());
    }
    let eot = vocab.len();
    json!({
        "version": "1.0",
        "added_tokens": [{"id": eot, "content": "<|endoftext|>", "special": true, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    })
    .to_string()
}

/// HF's `permute()` from `convert_llama_weights_to_hf.py`:
/// `w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)`:
/// row `h*hd + 2i + j` (interleaved pairs) moves to `h*hd + j*hd/2 + i` (halves).
pub fn permute(w: &[f32], n_heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let hd = rows / n_heads;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * (hd / 2) + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The HF tensors of an f32 [`ImportedModel`] (llama2.c import), q/k permuted.
pub fn hf_tensors(m: &ImportedModel) -> Vec<HfTensor> {
    let c = m.config;
    let mut out = Vec::new();
    for t in &m.tensors {
        assert_eq!(t.spec, QuantSpec::F32);
        let mut data: Vec<f32> = t
            .data
            .to_vec()
            .expect("llama2.c tensors are in memory")
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (rows, cols) = (t.rows as usize, t.cols as usize);
        let l = t.layer;
        let (name, vector) = match t.role {
            TensorRole::TokEmbd => ("model.embed_tokens.weight".to_string(), false),
            TensorRole::OutputNorm => ("model.norm.weight".to_string(), true),
            TensorRole::Output => ("lm_head.weight".to_string(), false),
            TensorRole::AttnNorm => (format!("model.layers.{l}.input_layernorm.weight"), true),
            TensorRole::FfnNorm => (format!("model.layers.{l}.post_attention_layernorm.weight"), true),
            TensorRole::Wq => {
                data = permute(&data, c.n_heads as usize, rows, cols);
                (format!("model.layers.{l}.self_attn.q_proj.weight"), false)
            }
            TensorRole::Wk => {
                data = permute(&data, c.n_kv_heads as usize, rows, cols);
                (format!("model.layers.{l}.self_attn.k_proj.weight"), false)
            }
            TensorRole::Wv => (format!("model.layers.{l}.self_attn.v_proj.weight"), false),
            TensorRole::Wo => (format!("model.layers.{l}.self_attn.o_proj.weight"), false),
            TensorRole::WGate => (format!("model.layers.{l}.mlp.gate_proj.weight"), false),
            TensorRole::WUp => (format!("model.layers.{l}.mlp.up_proj.weight"), false),
            TensorRole::WDown => (format!("model.layers.{l}.mlp.down_proj.weight"), false),
            r => panic!("unexpected role {r:?}"),
        };
        let shape = if vector { vec![cols] } else { vec![rows, cols] };
        out.push(HfTensor { name, shape, data });
    }
    out
}

/// A Llama `config.json` for `c` (tied embeddings, f32).
pub fn llama_config_json(c: &ModelConfig) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.dim,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": true,
        "attention_bias": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    })
}

/// The logits after feeding `toks` one at a time to an EQF image (16-token
/// context, default kernels): what the exporters' round-trip tests compare.
pub fn last_logits(eqf: &[u8], toks: &[u32]) -> Result<Vec<f32>> {
    let b = crate::import::AlignedBytes::from(eqf);
    let m = edgeq_runtime::Model::from_bytes(b.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut arena = vec![0u8; edgeq_runtime::arena_bytes(&m.cfg, 16, 1)];
    let mut s = edgeq_runtime::Session::new(&m, &mut arena, 16, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    for &t in toks {
        out = s.step(t).map_err(|e| anyhow::anyhow!("{e}"))?.to_vec();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::AlignedBytes;

    /// Greedy tokens of a few steps: the tiny model runs and is deterministic.
    fn greedy(eqf: &[u8], n: usize) -> Vec<u32> {
        let bytes = AlignedBytes::from(eqf);
        let model = edgeq_runtime::Model::from_bytes(bytes.as_bytes()).unwrap();
        let mut arena = vec![0u8; edgeq_runtime::arena_bytes(&model.cfg, SEQ, 1)];
        let mut s = edgeq_runtime::Session::new(&model, &mut arena, SEQ, 1).unwrap();
        let mut t = 1;
        let mut out = Vec::new();
        for _ in 0..n {
            let logits = s.step(t).unwrap();
            assert!(logits.iter().all(|v| v.is_finite()));
            t = edgeq_runtime::sampler::argmax(logits);
            out.push(t);
        }
        out
    }

    /// Every block linear stored with permuted columns: same logits (up to
    /// the order of the sums), and `to_f32` gives the original weights back.
    #[test]
    fn permuted_layout_is_the_same_model() {
        let f = model(5).unwrap().to_eqf().unwrap();
        let p = with_perms(&f).unwrap();
        let toks = [1u32, 4, 9, 16, 25];
        let (a, b) = (last_logits(&f, &toks).unwrap(), last_logits(&p, &toks).unwrap());
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(d < 1e-4, "{d}");
        let (fa, pa) = (AlignedBytes::from(&f), AlignedBytes::from(&p));
        let (fe, pe) = (
            edgeq_core::Eqf::parse(fa.as_bytes()).unwrap(),
            edgeq_core::Eqf::parse(pa.as_bytes()).unwrap(),
        );
        assert_eq!(pe.perm_section().records().len(), 7 * LAYERS);
        for t in fe.tensors() {
            let q = pe.find(TensorRole::from_u16(t.role).unwrap(), t.layer).unwrap();
            assert_eq!(crate::quantize::to_f32(&fe, t).unwrap(), crate::quantize::to_f32(&pe, q).unwrap());
        }
    }

    #[test]
    fn every_format_of_the_tiny_model_loads() {
        let m = model(7).unwrap();
        assert_eq!(m.config.vocab_size as usize, VOCAB);
        let reference = greedy(&model(7).unwrap().to_eqf().unwrap(), 8);
        assert_eq!(reference, greedy(&eqf(7, "f32").unwrap(), 8));
        for s in SCHEMES {
            let e = eqf(7, s).unwrap();
            assert_eq!(greedy(&e, 4).len(), 4, "{s}");
        }
        // GGUF with f32 matrices imports back to the same model.
        let g = crate::import::gguf::GgufFile::from_bytes(gguf(7, "f32").unwrap()).unwrap();
        let back = crate::import::from_gguf::import_parsed(&g, Path::new("tiny.gguf")).unwrap();
        assert_eq!(reference, greedy(&back.to_eqf().unwrap(), 8));
        for s in ["f16", "q8-g32", "q4-g32", "q4a-g32"] {
            let g = crate::import::gguf::GgufFile::from_bytes(gguf(7, s).unwrap()).unwrap();
            crate::import::from_gguf::import_parsed(&g, Path::new("tiny.gguf")).unwrap();
        }
        // The HF directory imports.
        let dir = std::env::temp_dir().join(format!("edgeq-tiny-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in hf_files(&m, Dtype::BF16).unwrap() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let hf = crate::import::hf::import(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(hf.unwrap().config.vocab_size, 264);
    }
}
