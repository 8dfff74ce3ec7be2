//! `edgeq synth`: a random-weight Hugging Face checkpoint with a real
//! model's shapes, so that import, quantization and memory at scale can be
//! tested without downloads.
//!
//! The directory is what `save_pretrained` writes: `config.json` (the
//! model's real hyperparameters), the weights as safetensors shards of at
//! most `--shard-size` bytes (`model-00001-of-0000N.safetensors` plus
//! `model.safetensors.index.json`, or one `model.safetensors`), and a small
//! byte-level `tokenizer.json` (the real vocabularies are not
//! redistributable here; the model's `vocab_size` is kept, the tokenizer
//! just never emits the high ids).
//!
//! Weights are drawn as HF initializes them: linear and embedding weights
//! uniform with standard deviation `initializer_range` = 0.02, norm weights
//! 1, biases 0.02-uniform too, each tensor from its own seeded stream
//! (`--seed`, the tensor's index), so the output is the same bytes on every
//! machine. Tensors are generated and written a chunk at a time: memory
//! stays at a few MB whatever the model size (a 32B checkpoint is 65 GB on
//! disk). The directory appears atomically when complete.
use crate::calib::data::SplitMix;
use crate::model_file::write_dir_atomic_with;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Hyperparameters of a real checkpoint (its `config.json`).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub model_type: &'static str,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub tied: bool,
    pub qkv_bias: bool,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub max_pos: usize,
    /// Llama 3.1/3.2 `rope_scaling` (factor, low, high, original max position).
    pub llama3_rope: Option<(f64, f64, f64, usize)>,
    pub bos: u32,
    pub eos: u32,
}

/// The shapes `--shape` accepts: from the models' published `config.json`.
pub const SHAPES: [Shape; 4] = [
    Shape {
        name: "llama-3.2-1b",
        model_type: "llama",
        hidden: 2048,
        intermediate: 8192,
        layers: 16,
        heads: 32,
        kv_heads: 8,
        vocab: 128256,
        tied: true,
        qkv_bias: false,
        rope_theta: 500000.0,
        rms_eps: 1e-5,
        max_pos: 131072,
        llama3_rope: Some((32.0, 1.0, 4.0, 8192)),
        bos: 128000,
        eos: 128001,
    },
    Shape {
        name: "llama-3-8b",
        model_type: "llama",
        hidden: 4096,
        intermediate: 14336,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        vocab: 128256,
        tied: false,
        qkv_bias: false,
        rope_theta: 500000.0,
        rms_eps: 1e-5,
        max_pos: 8192,
        llama3_rope: None,
        bos: 128000,
        eos: 128001,
    },
    Shape {
        name: "qwen2.5-32b",
        model_type: "qwen2",
        hidden: 5120,
        intermediate: 27648,
        layers: 64,
        heads: 40,
        kv_heads: 8,
        vocab: 152064,
        tied: false,
        qkv_bias: true,
        rope_theta: 1000000.0,
        rms_eps: 1e-6,
        max_pos: 32768,
        llama3_rope: None,
        bos: 151643,
        eos: 151643,
    },
    // llama2.c's stories260K: small enough for tests.
    Shape {
        name: "stories260k",
        model_type: "llama",
        hidden: 64,
        intermediate: 172,
        layers: 5,
        heads: 8,
        kv_heads: 4,
        vocab: 512,
        tied: true,
        qkv_bias: false,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        max_pos: 512,
        llama3_rope: None,
        bos: 1,
        eos: 2,
    },
];

pub fn shape(name: &str) -> Result<Shape> {
    SHAPES.iter().copied().find(|s| s.name == name).with_context(|| {
        let names: Vec<_> = SHAPES.iter().map(|s| s.name).collect();
        format!("unknown --shape {name:?} (one of: {})", names.join(", "))
    })
}

/// Stored element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    BF16,
    F16,
    F32,
}

impl Dtype {
    pub fn parse(s: &str) -> Result<Dtype> {
        Ok(match s {
            "bf16" => Dtype::BF16,
            "f16" | "fp16" => Dtype::F16,
            "f32" | "fp32" => Dtype::F32,
            _ => bail!("unknown --dtype {s:?} (bf16, f16 or f32)"),
        })
    }
    fn bytes(self) -> usize {
        if self == Dtype::F32 {
            4
        } else {
            2
        }
    }
    fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::F32 => "F32",
        }
    }
    fn torch_name(self) -> &'static str {
        match self {
            Dtype::BF16 => "bfloat16",
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
        }
    }
}

/// `"5GB"`, `"500MB"`, `"64KB"` (powers of 10, as `save_pretrained`'s
/// `max_shard_size`) or a number of bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_uppercase();
    let (num, mul) = [("GB", 1_000_000_000u64), ("MB", 1_000_000), ("KB", 1_000), ("B", 1)]
        .iter()
        .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.trim(), *m)))
        .unwrap_or((t.as_str(), 1));
    let n: f64 = num
        .parse()
        .with_context(|| format!("bad size {s:?} (e.g. 5GB, 500MB or a number of bytes)"))?;
    ensure!(n.is_finite() && n > 0.0, "bad size {s:?}: must be positive");
    Ok((n * mul as f64) as u64)
}

/// One tensor of the checkpoint: HF name, shape, how it is drawn.
struct Tensor {
    name: String,
    shape: Vec<usize>,
    /// Norm weights are ones; everything else uniform, std 0.02.
    ones: bool,
}

impl Tensor {
    fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The tensors of `s` with `layers` layers, in `save_pretrained`'s order.
fn tensors(s: &Shape, layers: usize) -> Vec<Tensor> {
    let hd = s.hidden / s.heads;
    let (q, kv, h, f) = (s.heads * hd, s.kv_heads * hd, s.hidden, s.intermediate);
    let t = |name: String, shape: Vec<usize>, ones: bool| Tensor { name, shape, ones };
    let mut v = vec![t("model.embed_tokens.weight".into(), vec![s.vocab, h], false)];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        v.push(t(format!("{p}.input_layernorm.weight"), vec![h], true));
        for (n, rows) in [("q", q), ("k", kv), ("v", kv)] {
            v.push(t(format!("{p}.self_attn.{n}_proj.weight"), vec![rows, h], false));
            if s.qkv_bias {
                v.push(t(format!("{p}.self_attn.{n}_proj.bias"), vec![rows], false));
            }
        }
        v.push(t(format!("{p}.self_attn.o_proj.weight"), vec![h, q], false));
        v.push(t(format!("{p}.post_attention_layernorm.weight"), vec![h], true));
        v.push(t(format!("{p}.mlp.gate_proj.weight"), vec![f, h], false));
        v.push(t(format!("{p}.mlp.up_proj.weight"), vec![f, h], false));
        v.push(t(format!("{p}.mlp.down_proj.weight"), vec![h, f], false));
    }
    v.push(t("model.norm.weight".into(), vec![h], true));
    if !s.tied {
        v.push(t("lm_head.weight".into(), vec![s.vocab, h], false));
    }
    v
}

/// `config.json` as `save_pretrained` writes it for this shape.
pub fn config_json(s: &Shape, layers: usize, dtype: Dtype) -> Value {
    let arch = if s.model_type == "qwen2" {
        "Qwen2ForCausalLM"
    } else {
        "LlamaForCausalLM"
    };
    let mut c = json!({
        "architectures": [arch],
        "model_type": s.model_type,
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.hidden / s.heads,
        "vocab_size": s.vocab,
        "max_position_embeddings": s.max_pos,
        "rope_theta": s.rope_theta,
        "rms_norm_eps": s.rms_eps,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": s.tied,
        "bos_token_id": s.bos,
        "eos_token_id": s.eos,
        "torch_dtype": dtype.torch_name(),
        "use_cache": true,
    });
    if s.model_type == "llama" {
        c["attention_bias"] = json!(false);
        c["mlp_bias"] = json!(false);
    }
    if let Some((factor, low, high, orig)) = s.llama3_rope {
        c["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": orig,
        });
    }
    c
}

/// What [`synth`] wrote.
#[derive(Debug)]
pub struct Written {
    pub shards: usize,
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
}

/// Writes the checkpoint of `shape` (`layers` of them, `None` = the real
/// count) to `out` (must not exist, or be an empty directory).
pub fn synth(shape: &Shape, layers: Option<usize>, dtype: Dtype, shard_size: u64, seed: u64, out: &Path) -> Result<Written> {
    let layers = layers.unwrap_or(shape.layers);
    ensure!(layers >= 1, "--layers must be at least 1");
    if out.exists() {
        let empty = out.read_dir().map(|mut d| d.next().is_none()).unwrap_or(false);
        ensure!(empty, "{} exists and is not an empty directory: choose a new --out", out.display());
    }
    let all = tensors(shape, layers);
    // Shards in order, each up to `shard_size` bytes of data (one tensor
    // larger than that gets a shard of its own), as save_pretrained.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut filled = 0u64;
    for (i, t) in all.iter().enumerate() {
        let b = (t.elems() * dtype.bytes()) as u64;
        if filled + b > shard_size && !shards.last().is_some_and(Vec::is_empty) {
            shards.push(Vec::new());
            filled = 0;
        }
        filled += b;
        if let Some(last) = shards.last_mut() {
            last.push(i);
        }
    }
    let n = shards.len();
    let file_name = |k: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", k + 1)
        }
    };
    let total: u64 = all.iter().map(|t| (t.elems() * dtype.bytes()) as u64).sum();
    write_dir_atomic_with(out, |dir| {
        let mut weight_map = serde_json::Map::new();
        for (k, members) in shards.iter().enumerate() {
            let name = file_name(k);
            write_shard(&dir.join(&name), &all, members, dtype, seed)?;
            for &i in members {
                weight_map.insert(all[i].name.clone(), json!(name));
            }
        }
        if n > 1 {
            let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            write_small(&dir.join("model.safetensors.index.json"), &serde_json::to_vec_pretty(&index)?)?;
        }
        write_small(
            &dir.join("config.json"),
            &serde_json::to_vec_pretty(&config_json(shape, layers, dtype))?,
        )?;
        write_small(&dir.join("tokenizer.json"), &serde_json::to_vec(&tokenizer_json(shape)?)?)?;
        Ok(())
    })?;
    Ok(Written {
        shards: n,
        tensors: all.len(),
        params: all.iter().map(|t| t.elems() as u64).sum(),
        bytes: total,
    })
}

/// The small byte-level BPE tokenizer of the tests (256 byte tokens, a
/// few merges), with the model's BOS and EOS as added special tokens at
/// their real ids (Llama 3: 128000, 128001; Qwen2.5: 151643) and unused
/// filler tokens before them, so that `config.json`'s ids exist.
fn tokenizer_json(s: &Shape) -> Result<Value> {
    let mut t: Value = serde_json::from_str(&crate::tiny::byte_level_tokenizer_json())?;
    let vocab = t["model"]["vocab"].as_object_mut().context("tokenizer vocab")?;
    let first_free = vocab.len();
    let (lo, hi) = (s.bos.min(s.eos) as usize, s.bos.max(s.eos) as usize);
    if hi < first_free {
        return Ok(t); // the ids are ordinary tokens (stories260k: 1, 2)
    }
    ensure!(
        lo >= first_free && hi < s.vocab,
        "BOS/EOS ids {lo}/{hi} do not fit the synthetic vocabulary"
    );
    for id in first_free..lo {
        vocab.insert(format!("<unused{id}>"), json!(id));
    }
    let special = |id: u32, content: &str| json!({"id": id, "content": content, "special": true, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false});
    t["added_tokens"] = if s.bos == s.eos {
        json!([special(s.bos, "<|endoftext|>")])
    } else {
        json!([special(s.bos, "<|begin_of_text|>"), special(s.eos, "<|end_of_text|>")])
    };
    Ok(t)
}

fn write_small(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot fsync {}", path.display()))
}

/// One safetensors file, streamed: the header (`u64` length, then JSON with
/// each tensor's dtype, shape and data offsets, space-padded to 8 bytes, as
/// the `safetensors` crate writes it), then each tensor's data in order,
/// generated a chunk at a time.
fn write_shard(path: &Path, all: &[Tensor], members: &[usize], dtype: Dtype, seed: u64) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    for &i in members {
        let t = &all[i];
        let len = t.elems() * dtype.bytes();
        header.insert(
            t.name.clone(),
            json!({"dtype": dtype.safetensors_name(), "shape": t.shape, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))?;
    h.resize(h.len().next_multiple_of(8), b' ');
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let io = |e: std::io::Error| anyhow::Error::from(e).context(format!("cannot write {}", path.display()));
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    let mut buf = Vec::with_capacity(1 << 20);
    for &i in members {
        let t = &all[i];
        let mut rng = SplitMix(seed ^ (i as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let mut left = t.elems();
        while left > 0 {
            let n = left.min((1 << 20) / 4);
            buf.clear();
            for _ in 0..n {
                // uniform on [−√3·σ, √3·σ): standard deviation σ = 0.02
                let v = if t.ones {
                    1.0
                } else {
                    ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * (0.02 * 3f32.sqrt())
                };
                match dtype {
                    Dtype::BF16 => buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                    Dtype::F16 => buf.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                    Dtype::F32 => buf.extend_from_slice(&v.to_le_bytes()),
                }
            }
            w.write_all(&buf).map_err(io)?;
            left -= n;
        }
    }
    let f = w.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().with_context(|| format!("cannot fsync {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    #[test]
    fn sizes_parse_like_save_pretrained() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("500mb").unwrap(), 500_000_000);
        assert_eq!(parse_size("64KB").unwrap(), 64_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err() && parse_size("0GB").is_err());
    }

    #[test]
    fn tokenizer_has_the_real_special_ids() {
        let t = tokenizer_json(&shape("llama-3.2-1b").unwrap()).unwrap();
        let added = t["added_tokens"].as_array().unwrap();
        assert_eq!((added[0]["id"].as_u64(), added[1]["id"].as_u64()), (Some(128000), Some(128001)));
        assert_eq!(t["model"]["vocab"].as_object().unwrap().len(), 128000);
        let q = tokenizer_json(&shape("qwen2.5-32b").unwrap()).unwrap();
        assert_eq!(q["added_tokens"].as_array().unwrap().len(), 1);
        assert_eq!(q["model"]["vocab"].as_object().unwrap().len(), 151643);
    }

    #[test]
    fn parameter_counts_are_the_real_models() {
        let count = |name: &str| {
            let s = shape(name).unwrap();
            tensors(&s, s.layers).iter().map(|t| t.elems() as u64).sum::<u64>()
        };
        // The published totals: Llama-3.2-1B 1.236 B, Llama-3-8B 8.030 B, Qwen2.5-32B 32.76 B.
        assert_eq!(count("llama-3.2-1b"), 1_235_814_400);
        assert_eq!(count("llama-3-8b"), 8_030_261_248);
        assert_eq!(count("qwen2.5-32b"), 32_763_876_352);
    }

    #[test]
    fn shards_are_valid_safetensors_and_the_index_names_every_tensor() {
        let dir = std::env::temp_dir().join(format!("edgeq-synth-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = shape("stories260k").unwrap();
        let w = synth(&s, Some(2), Dtype::BF16, 40_000, 7, &dir).unwrap();
        assert!(w.shards > 1, "{w:?}");
        let index: Value = serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), w.tensors);
        let mut seen = 0;
        for k in 0..w.shards {
            let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, w.shards);
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (t, view) in st.tensors() {
                assert_eq!(map[&t], json!(name));
                assert_eq!(view.dtype(), safetensors::Dtype::BF16);
                let vals: Vec<f32> = view
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect();
                if t.ends_with("norm.weight") {
                    assert!(vals.iter().all(|&v| v == 1.0), "{t}");
                } else {
                    let std = (vals.iter().map(|v| v * v).sum::<f32>() / vals.len() as f32).sqrt();
                    assert!((std - 0.02).abs() < 0.002, "{t}: std {std}");
                }
                seen += 1;
            }
        }
        assert_eq!(seen, w.tensors);
        // Same seed, same bytes; the directory must be new.
        assert!(synth(&s, Some(2), Dtype::BF16, 40_000, 7, &dir).is_err());
        let dir2 = dir.with_extension("again");
        let _ = std::fs::remove_dir_all(&dir2);
        synth(&s, Some(2), Dtype::BF16, 40_000, 7, &dir2).unwrap();
        for k in 0..w.shards {
            let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, w.shards);
            assert_eq!(std::fs::read(dir.join(&name)).unwrap(), std::fs::read(dir2.join(&name)).unwrap());
        }
        // And the HF importer reads it.
        let m = crate::import::import(&dir, None).unwrap();
        assert_eq!(m.config.n_layers, 2);
        assert_eq!(m.config.vocab_size, 512);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&dir2);
    }
}
