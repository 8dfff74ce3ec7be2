//! Hugging Face model directories (Llama, Mistral, Qwen2 families) → EQF.
//!
//! * `config.json`: dimensions, RoPE (`rope_theta`, `rope_scaling` of type
//!   `llama3`), tying, biases, special ids ([`parse_config`]).
//! * weights: `model.safetensors`, or shards listed by
//!   `model.safetensors.index.json`; each file is memory-mapped and read
//!   tensor by tensor. Matrices keep their stored dtype (F32 / F16 / BF16);
//!   norm weights and biases become F32 (the runtime requires it).
//! * tokenizer: `tokenizer.json` (+ `tokenizer_config.json`), see
//!   [`super::hf_tokenizer`].
//!
//! RoPE layout: Hugging Face's Llama code rotates *halves* of each head
//! (`rotate_half`: dimension `i` pairs with `i + head_dim/2`), and HF
//! checkpoints store the q/k projection rows in the order that makes this
//! right (`convert_llama_weights_to_hf.py` permutes Meta's interleaved rows).
//! edgeq's runtime implements both pairings, so the weights are kept exactly
//! as stored and the model is flagged [`flags::ROPE_HALF`]; no un-permuting.
use super::hf_quant::{self, Converted, QuantConfig};
use super::hf_tokenizer::{self, Fallback};
use super::{ImportedModel, MappedBytes};
use anyhow::{bail, ensure, Context, Result};
use edgeq_core::config::{flags, ARCH_LLAMA};
use edgeq_core::format::GLOBAL_LAYER;
use edgeq_core::{ModelConfig, QuantSpec, Scheme, TensorRole};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The model family named by `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

/// What `config.json` says, converted.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub family: Family,
    /// `bos_id` / `eos_id` are still 0 here: the tokenizer settles them.
    pub config: ModelConfig,
    /// `attention_bias` (Llama) or always (Qwen2): q/k/v biases expected.
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub model_type: String,
    pub torch_dtype: Option<String>,
    pub notes: Vec<String>,
}

/// Parses the text of `config.json`. Errors name `config.json` and the key.
pub fn parse_config(text: &str) -> Result<HfConfig> {
    let v: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
    ensure!(v.is_object(), "config.json: not a JSON object");
    let mut notes = Vec::new();
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    let req_u32 = |k: &str| -> Result<u32> {
        let x = get(k).with_context(|| format!("config.json: required key \"{k}\" is missing"))?;
        x.as_u64()
            .filter(|&n| n > 0 && n <= u32::MAX as u64)
            .map(|n| n as u32)
            .with_context(|| format!("config.json: \"{k}\" = {x} is not a positive integer"))
    };
    let opt_u32 = |k: &str| -> Result<Option<u32>> {
        match get(k) {
            None => Ok(None),
            Some(x) => x
                .as_u64()
                .filter(|&n| n <= u32::MAX as u64)
                .map(|n| Some(n as u32))
                .with_context(|| format!("config.json: \"{k}\" = {x} is not an integer")),
        }
    };
    let opt_f64 = |k: &str| -> Result<Option<f64>> {
        match get(k) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .with_context(|| format!("config.json: \"{k}\" = {x} is not a number")),
        }
    };
    let opt_bool = |k: &str| -> Result<Option<bool>> {
        match get(k) {
            None => Ok(None),
            Some(x) => x
                .as_bool()
                .map(Some)
                .with_context(|| format!("config.json: \"{k}\" = {x} is not a boolean")),
        }
    };

    // Family: architectures[0], else model_type.
    let model_type = get("model_type").and_then(Value::as_str).unwrap_or("").to_string();
    let arch = get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let family = match (arch, model_type.as_str()) {
        (Some("LlamaForCausalLM"), _) => Family::Llama,
        (Some("MistralForCausalLM"), _) => Family::Mistral,
        (Some("Qwen2ForCausalLM"), _) => Family::Qwen2,
        (None, "llama") => Family::Llama,
        (None, "mistral") => Family::Mistral,
        (None, "qwen2") => Family::Qwen2,
        (Some(a), _) => {
            bail!("config.json: architecture \"{a}\" is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)")
        }
        (None, "") => bail!("config.json: required key \"architectures\" (or \"model_type\") is missing"),
        (None, t) => bail!("config.json: model_type \"{t}\" is not supported (llama, mistral, qwen2)"),
    };
    if let Some(act) = get("hidden_act").and_then(Value::as_str) {
        ensure!(
            act == "silu",
            "config.json: \"hidden_act\" = \"{act}\" is not supported (the runtime's feed-forward is SwiGLU: silu)"
        );
    }
    if opt_bool("mlp_bias")? == Some(true) {
        bail!("config.json: \"mlp_bias\": true is not supported (the runtime's feed-forward has no biases)");
    }

    let dim = req_u32("hidden_size")?;
    let hidden = req_u32("intermediate_size")?;
    let n_layers = req_u32("num_hidden_layers")?;
    let n_heads = req_u32("num_attention_heads")?;
    let vocab = req_u32("vocab_size")?;
    let max_pos = req_u32("max_position_embeddings")?;
    let eps = opt_f64("rms_norm_eps")?.context("config.json: required key \"rms_norm_eps\" is missing")?;
    let n_kv = opt_u32("num_key_value_heads")?.unwrap_or(n_heads);
    ensure!(
        n_kv > 0 && n_heads % n_kv == 0,
        "config.json: \"num_attention_heads\" {n_heads} is not a multiple of \"num_key_value_heads\" {n_kv}"
    );
    let head_dim = match opt_u32("head_dim")? {
        Some(h) => h,
        None => {
            ensure!(
                dim % n_heads == 0,
                "config.json: \"hidden_size\" {dim} is not a multiple of \"num_attention_heads\" {n_heads} and there is no \"head_dim\""
            );
            dim / n_heads
        }
    };
    ensure!(
        head_dim > 0 && head_dim % 2 == 0,
        "config.json: head dimension {head_dim} must be even"
    );
    let rope_theta = opt_f64("rope_theta")?.unwrap_or(10000.0);
    if let Some(f) = opt_f64("partial_rotary_factor")?.filter(|&f| f != 1.0) {
        bail!("config.json: \"partial_rotary_factor\" = {f} is not supported");
    }

    // RoPE scaling.
    let (mut scaling, mut factor, mut lo, mut hi, mut orig) = (0u32, 0f32, 0f32, 0f32, 0u32);
    if let Some(rs) = get("rope_scaling") {
        let ty = rs
            .get("rope_type")
            .or_else(|| rs.get("type"))
            .and_then(Value::as_str)
            .context("config.json: \"rope_scaling\" has no \"rope_type\" (or \"type\")")?;
        match ty {
            "default" => {}
            "llama3" => {
                let f = |k: &str| -> Result<f64> {
                    rs.get(k).and_then(Value::as_f64).with_context(|| format!("config.json: required key \"rope_scaling.{k}\" (llama3) is missing or not a number"))
                };
                scaling = 1;
                factor = f("factor")? as f32;
                lo = f("low_freq_factor")? as f32;
                hi = f("high_freq_factor")? as f32;
                orig = f("original_max_position_embeddings")? as u32;
            }
            other => bail!("config.json: \"rope_scaling\" type \"{other}\" is not supported (only \"llama3\"); the runtime would compute wrong positions"),
        }
    }

    // Tying: transformers' default for these three families is false.
    let tied = opt_bool("tie_word_embeddings")?.unwrap_or(false);
    let qkv_bias = match family {
        Family::Qwen2 => true,
        _ => opt_bool("attention_bias")?.unwrap_or(false),
    };

    let bos_token_id = opt_u32("bos_token_id")?;
    let eos_token_id = match get("eos_token_id") {
        None => None,
        Some(Value::Array(a)) => {
            let ids: Vec<u64> = a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .with_context(|| format!("config.json: \"eos_token_id\" entry {x} is not an integer"))
                })
                .collect::<Result<_>>()?;
            if ids.len() > 1 {
                notes.push(format!(
                    "note: config.json lists several eos_token_id {ids:?}; the first, {}, is the model's EOS",
                    ids[0]
                ));
            }
            ids.first().map(|&i| i as u32)
        }
        Some(_) => opt_u32("eos_token_id")?,
    };

    // Sliding-window attention (Mistral v0.1; Qwen2 when enabled).
    let sw = opt_u32("sliding_window")?;
    let sw_on = match family {
        Family::Qwen2 => opt_bool("use_sliding_window")?.unwrap_or(false),
        _ => true,
    };
    if let Some(w) = sw.filter(|&w| sw_on && w > 0 && w < max_pos) {
        notes.push(format!(
            "warning: config.json: sliding_window {w} < max_position_embeddings {max_pos}: edgeq attends to the whole context, so outputs match only for contexts up to {w} tokens"
        ));
    }

    let config = ModelConfig {
        arch: ARCH_LLAMA,
        flags: flags::ROPE_HALF | if tied { flags::TIED_EMBEDDINGS } else { 0 } | if qkv_bias { flags::QKV_BIAS } else { 0 },
        dim,
        hidden_dim: hidden,
        n_layers,
        n_heads,
        n_kv_heads: n_kv,
        head_dim,
        vocab_size: vocab,
        max_seq_len: max_pos,
        rope_theta: rope_theta as f32,
        rms_eps: eps as f32,
        rope_scaling: scaling,
        rope_factor: factor,
        rope_low_freq_factor: lo,
        rope_high_freq_factor: hi,
        rope_original_max_pos: orig,
        rope_dim: head_dim,
        ..bytemuck::Zeroable::zeroed()
    };
    let torch_dtype = get("torch_dtype")
        .or_else(|| get("dtype"))
        .and_then(Value::as_str)
        .map(String::from);
    Ok(HfConfig {
        family,
        config,
        qkv_bias,
        bos_token_id,
        eos_token_id,
        model_type,
        torch_dtype,
        notes,
    })
}

/// The memory-mapped safetensors files of a directory.
struct Shards {
    files: Vec<(PathBuf, Arc<Mmap>)>,
}

impl Shards {
    fn open(dir: &Path) -> Result<Shards> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let names: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
            let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .with_context(|| format!("{}: no \"weight_map\" object", index.display()))?;
            let mut files: Vec<&str> = Vec::new();
            for (t, f) in map {
                let f = f
                    .as_str()
                    .with_context(|| format!("{}: weight_map[{t:?}] is not a file name", index.display()))?;
                ensure!(
                    !f.contains(['/', '\\']) && f != ".." && !f.is_empty(),
                    "{}: weight_map[{t:?}] = {f:?} is not a plain file name",
                    index.display()
                );
                if !files.contains(&f) {
                    files.push(f);
                }
            }
            files.sort_unstable();
            ensure!(!files.is_empty(), "{}: weight_map is empty", index.display());
            for f in &files {
                let p = dir.join(f);
                ensure!(
                    p.is_file(),
                    "{}: shard file {} listed in {} is missing",
                    dir.display(),
                    p.display(),
                    index.display()
                );
            }
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.is_file() {
            vec![single]
        } else {
            let hint = if dir.join("pytorch_model.bin").exists() || dir.join("pytorch_model.bin.index.json").exists() {
                " (pytorch_model.bin is not supported: convert the checkpoint to safetensors, e.g. `model.save_pretrained(dir, safe_serialization=True)`)"
            } else {
                ""
            };
            bail!(
                "{}: neither model.safetensors nor model.safetensors.index.json found{hint}",
                dir.display()
            );
        };
        let mut files = Vec::with_capacity(names.len());
        for p in names {
            let file = std::fs::File::open(&p).with_context(|| format!("cannot open {}", p.display()))?;
            let len = file.metadata().with_context(|| format!("cannot stat {}", p.display()))?.len();
            ensure!(len >= 8, "{}: not a safetensors file ({len} bytes: truncated?)", p.display());
            let map = crate::model_file::map_readonly(&file, &p)?;
            files.push((p, Arc::new(map)));
        }
        Ok(Shards { files })
    }
}

/// Every tensor of every shard, by name.
struct Weights<'a> {
    shards: &'a Shards,
    files: Vec<(&'a Path, SafeTensors<'a>)>,
    by_name: HashMap<String, usize>,
    used: HashSet<String>,
}

impl<'a> Weights<'a> {
    fn new(shards: &'a Shards) -> Result<Self> {
        let mut files = Vec::new();
        let mut by_name = HashMap::new();
        for (i, (p, map)) in shards.files.iter().enumerate() {
            let st = SafeTensors::deserialize(map)
                .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file (truncated or corrupt?): {e}", p.display()))?;
            for name in st.names() {
                if let Some(j) = by_name.insert(name.to_string(), i) {
                    bail!("tensor {name} is in both {} and {}", shards.files[j].0.display(), p.display());
                }
            }
            files.push((p.as_path(), st));
        }
        Ok(Weights {
            shards,
            files,
            by_name,
            used: HashSet::new(),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The mapping of the shard that holds tensor `name` (present).
    fn map_of(&self, name: &str) -> &'a Arc<Mmap> {
        &self.shards.files[self.by_name[name]].1
    }

    /// The tensor `name` in any dtype: (dtype, shape, raw LE bytes, file).
    fn take_raw(&mut self, name: &str) -> Result<(Dtype, Vec<usize>, &'a [u8], &'a Path)> {
        let Some(&i) = self.by_name.get(name) else {
            bail!("tensor {name} is missing");
        };
        self.used.insert(name.to_string());
        let (path, st) = &self.files[i];
        let t = st
            .tensor(name)
            .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))?;
        Ok((t.dtype(), t.shape().to_vec(), t.data(), path))
    }

    /// The dtype of tensor `name`, if present.
    fn dtype(&self, name: &str) -> Option<Dtype> {
        let &i = self.by_name.get(name)?;
        self.files[i].1.tensor(name).ok().map(|t| t.dtype())
    }

    /// The tensor `name` with exactly `shape`, as (dtype, raw LE bytes, file).
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<(Dtype, &'a [u8], &'a Path)> {
        let Some(&i) = self.by_name.get(name) else {
            let files: Vec<String> = self
                .files
                .iter()
                .map(|f| f.0.file_name().unwrap_or_default().to_string_lossy().into_owned())
                .collect();
            bail!("tensor {name} is missing (looked in {})", files.join(", "));
        };
        self.used.insert(name.to_string());
        let (path, st) = &self.files[i];
        let t = st
            .tensor(name)
            .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))?;
        ensure!(
            t.shape() == shape,
            "{}: tensor {name} has shape {:?}, config.json implies {shape:?}",
            path.display(),
            t.shape()
        );
        let dt = t.dtype();
        ensure!(
            matches!(dt, Dtype::F32 | Dtype::F16 | Dtype::BF16),
            "{}: tensor {name} has dtype {dt:?}; only F32, F16 and BF16 are supported",
            path.display()
        );
        Ok((dt, t.data(), path))
    }
}

/// Index of the first NaN / Inf element, checked on the raw bits.
fn first_non_finite(dt: Dtype, data: &[u8]) -> Option<usize> {
    match dt {
        Dtype::F32 => data
            .chunks_exact(4)
            .position(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7F80_0000 == 0x7F80_0000),
        Dtype::F16 => data
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7C00 == 0x7C00),
        Dtype::BF16 => data
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7F80 == 0x7F80),
        _ => None,
    }
}

/// [`first_non_finite`] of `data`, part of the read-only mapping `map`,
/// checked a piece at a time (pieces are whole elements), each piece's
/// pages let go after it: a checked tensor is not left resident.
/// Returns the tensor's [`MappedBytes`] (its CRC computed in the same
/// pass), or the index of the first non-finite element.
fn checked_mapped(map: &Arc<Mmap>, dt: Dtype, data: &[u8]) -> Result<MappedBytes, usize> {
    let mut seen = 0;
    MappedBytes::checked(Arc::clone(map), data, |p| match first_non_finite(dt, p) {
        Some(i) => Err(seen + i),
        None => {
            seen += p.len() * 8 / dt.bitsize();
            Ok(())
        }
    })
}

fn to_f32(dt: Dtype, data: &[u8]) -> Vec<f32> {
    match dt {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => unreachable!("dtype checked by Weights::take"),
    }
}

/// Imports a Hugging Face model directory.
pub fn import(dir: &Path) -> Result<ImportedModel> {
    let d = dir.display();
    let cfg_path = dir.join("config.json");
    ensure!(cfg_path.is_file(), "{d}: no config.json: not a Hugging Face model directory");
    let cfg_text = std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let hc = parse_config(&cfg_text).with_context(|| format!("{d}"))?;
    let mut notes = hc.notes.clone();
    let qcfg_path = dir.join("quantize_config.json");
    let qcfg: Option<Value> = if qcfg_path.is_file() {
        let t = std::fs::read_to_string(&qcfg_path).with_context(|| format!("cannot read {}", qcfg_path.display()))?;
        Some(serde_json::from_str(&t).with_context(|| format!("{}: not valid JSON", qcfg_path.display()))?)
    } else {
        None
    };
    let cfg_v: Value = serde_json::from_str(&cfg_text).unwrap_or_default();
    let quant = hf_quant::parse(&cfg_v, qcfg.as_ref()).with_context(|| format!("{d}: quantization_config"))?;
    let quant_notes = std::cell::RefCell::new(Vec::<String>::new());

    let tok = hf_tokenizer::from_dir(
        dir,
        Fallback {
            bos: hc.bos_token_id,
            eos: hc.eos_token_id,
        },
    )?;
    notes.extend(tok.notes.iter().cloned());
    let mut config = hc.config;
    let vocab = config.vocab_size as usize;
    ensure!(
        tok.vocab_size <= vocab,
        "{d}: tokenizer.json has {} tokens but config.json's vocab_size is {vocab}: the tokenizer could emit ids the model has no embedding for",
        tok.vocab_size
    );
    if tok.vocab_size < vocab {
        notes.push(format!(
            "note: the embedding has {vocab} rows, the tokenizer {} tokens (padding rows)",
            tok.vocab_size
        ));
    }
    let special = |what: &str, id: Option<u32>, notes: &mut Vec<String>| -> u32 {
        match id {
            Some(i) => i,
            None => {
                notes.push(format!(
                    "warning: no {what} token in tokenizer_config.json or config.json; using id 0"
                ));
                0
            }
        }
    };
    config.bos_id = special("BOS", tok.bos.or(hc.bos_token_id), &mut notes);
    config.eos_id = special("EOS", tok.eos.or(hc.eos_token_id), &mut notes);
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{d}: config.json gives an invalid model configuration: {e}"))?;

    let shards = Shards::open(dir)?;
    let mut w = Weights::new(&shards)?;
    let mut m = ImportedModel::new(config, tok.blob, dir);

    let (dim, hid, qd, kvd) = (config.dim as usize, config.hidden_dim as usize, config.q_dim(), config.kv_dim());
    let tied = config.tied_embeddings();
    // Matrices: stored dtype kept; every element checked for NaN / Inf.
    let matrix =
        |w: &mut Weights, m: &mut ImportedModel, name: &str, role: TensorRole, layer: u16, rows: usize, cols: usize| -> Result<()> {
            let base = name.strip_suffix(".weight").unwrap_or(name);
            let quantized = match quant {
                QuantConfig::Gptq { bits, group, v2, .. } if w.has(&format!("{base}.qweight")) => {
                    let (_, _, qweight, path) = w.take_raw(&format!("{base}.qweight"))?;
                    let (_, _, qzeros, _) = w.take_raw(&format!("{base}.qzeros"))?;
                    let (sdt, _, scales, _) = w.take_raw(&format!("{base}.scales"))?;
                    ensure!(sdt == Dtype::F16, "{}: {base}.scales is {sdt:?}, expected F16", path.display());
                    let g_idx = if w.has(&format!("{base}.g_idx")) {
                        Some(w.take_raw(&format!("{base}.g_idx"))?.2)
                    } else {
                        None
                    };
                    Some(
                        hf_quant::gptq(base, rows, cols, bits, group, v2, qweight, qzeros, scales, g_idx)
                            .with_context(|| format!("{}", path.display()))?,
                    )
                }
                _ if w.dtype(name) == Some(Dtype::F8_E4M3) => {
                    let (block, acts) = match quant {
                        QuantConfig::Fp8 { block, acts } => (block, acts),
                        _ => (None, None),
                    };
                    if let Some(mode) = acts.filter(|_| layer != edgeq_core::format::GLOBAL_LAYER) {
                        m.acts.push(edgeq_core::format::writer::ActEntry {
                            role,
                            layer,
                            mode,
                            threshold: 0.0,
                            outliers: Vec::new(),
                        });
                    }
                    let (_, shape, codes, path) = w.take_raw(name)?;
                    ensure!(
                        shape == [rows, cols],
                        "{}: tensor {name} has shape {shape:?}, config.json implies [{rows}, {cols}]",
                        path.display()
                    );
                    let scale_name = [format!("{base}.weight_scale"), format!("{base}.weight_scale_inv")]
                        .into_iter()
                        .find(|n| w.has(n))
                        .with_context(|| format!("{}: FP8 tensor {name} has no {base}.weight_scale", path.display()))?;
                    let (sdt, sshape, sbytes, _) = w.take_raw(&scale_name)?;
                    let scales: Vec<f32> = match sdt {
                        Dtype::F32 | Dtype::F16 | Dtype::BF16 => to_f32(sdt, sbytes),
                        o => bail!("{}: {scale_name} is {o:?}; expected a float", path.display()),
                    };
                    if w.has(&format!("{base}.input_scale")) {
                        w.take_raw(&format!("{base}.input_scale"))?;
                        quant_notes.borrow_mut().push(format!(
                            "note: {base}.input_scale (static FP8 activation scale) is ignored: edgeq quantizes activations dynamically"
                        ));
                    }
                    Some(hf_quant::fp8(base, rows, cols, codes, &scales, &sshape, block).with_context(|| format!("{}", path.display()))?)
                }
                _ => None,
            };
            let quantized = match quantized {
                Some(Converted::Permuted(inner, perm)) => {
                    quant_notes.borrow_mut().push(format!(
                        "note: {base}: act-order (desc_act) g_idx: stored with its columns sorted by group (EQF 1.3 input permutation)"
                    ));
                    m.perms.push(edgeq_core::format::writer::PermEntry { role, layer, perm });
                    Some(*inner)
                }
                q => q,
            };
            match quantized {
                Some(Converted::Permuted(..)) => bail!("{base}: nested input permutation"),
                Some(Converted::Exact(spec, bytes)) => {
                    m.push_encoded(role, layer, spec, rows, cols, bytes);
                    return Ok(());
                }
                Some(Converted::Approx(spec, bytes, why)) => {
                    quant_notes.borrow_mut().push(format!("note: {base}: {why}"));
                    m.push_encoded(role, layer, spec, rows, cols, bytes);
                    return Ok(());
                }
                Some(Converted::F32(v, why)) => {
                    quant_notes.borrow_mut().push(format!("warning: {base}: {why}"));
                    m.push(role, layer, rows, cols, &v);
                    return Ok(());
                }
                None => {}
            }
            let (dt, data, path) = w.take(name, &[rows, cols])?;
            // One pass: NaN/Inf check and CRC, a piece at a time.
            let mapped = match checked_mapped(w.map_of(name), dt, data) {
                Ok(m) => m,
                Err(i) => bail!(
                    "{}: tensor {name} has a NaN or infinite value at element {i} (row {}, column {})",
                    path.display(),
                    i / cols,
                    i % cols
                ),
            };
            let spec = match dt {
                Dtype::F32 => QuantSpec::F32,
                Dtype::F16 => QuantSpec::float(Scheme::F16),
                _ => QuantSpec::float(Scheme::BF16),
            };
            m.push_mapped(role, layer, spec, rows, cols, mapped);
            Ok(())
        };
    // Vectors (norm weights, biases): converted to f32.
    let vector = |w: &mut Weights, name: &str, n: usize| -> Result<Vec<f32>> {
        let (dt, data, path) = w.take(name, &[n])?;
        let v = to_f32(dt, data);
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!("{}: tensor {name} has a NaN or infinite value at element {i}", path.display());
        }
        Ok(v)
    };

    matrix(
        &mut w,
        &mut m,
        "model.embed_tokens.weight",
        TensorRole::TokEmbd,
        GLOBAL_LAYER,
        vocab,
        dim,
    )?;
    let norm = vector(&mut w, "model.norm.weight", dim)?;
    m.push(TensorRole::OutputNorm, GLOBAL_LAYER, 1, dim, &norm);
    if tied {
        if w.has("lm_head.weight") {
            w.used.insert("lm_head.weight".into());
            notes.push("note: lm_head.weight is ignored: tie_word_embeddings is true (the classifier is the embedding)".into());
        }
    } else {
        ensure!(
            w.has("lm_head.weight"),
            "{d}: tensor lm_head.weight is missing but config.json has tie_word_embeddings false (or unset); set \"tie_word_embeddings\": true if the model ties them"
        );
        matrix(&mut w, &mut m, "lm_head.weight", TensorRole::Output, GLOBAL_LAYER, vocab, dim)?;
    }
    // Biases the runtime does not have: accepted only when all zero.
    let zero_only = |w: &mut Weights, name: &str, n: usize, notes: &mut Vec<String>| -> Result<()> {
        if w.has(name) {
            let v = vector(w, name, n)?;
            ensure!(
                v.iter().all(|&x| x == 0.0),
                "{d}: tensor {name} is a non-zero bias; edgeq's runtime has no bias there"
            );
            notes.push(format!("note: {name} is all zero; ignored"));
        }
        Ok(())
    };
    let qkv_bias = hc.qkv_bias || w.has("model.layers.0.self_attn.q_proj.bias");
    if qkv_bias && !hc.qkv_bias {
        notes.push("note: the checkpoint has q/k/v biases though config.json does not enable attention_bias; they are used".into());
        m.config.flags |= flags::QKV_BIAS;
    }
    for l in 0..config.n_layers as usize {
        let p = format!("model.layers.{l}");
        let l16 = l as u16;
        let v = vector(&mut w, &format!("{p}.input_layernorm.weight"), dim)?;
        m.push(TensorRole::AttnNorm, l16, 1, dim, &v);
        matrix(
            &mut w,
            &mut m,
            &format!("{p}.self_attn.q_proj.weight"),
            TensorRole::Wq,
            l16,
            qd,
            dim,
        )?;
        matrix(
            &mut w,
            &mut m,
            &format!("{p}.self_attn.k_proj.weight"),
            TensorRole::Wk,
            l16,
            kvd,
            dim,
        )?;
        matrix(
            &mut w,
            &mut m,
            &format!("{p}.self_attn.v_proj.weight"),
            TensorRole::Wv,
            l16,
            kvd,
            dim,
        )?;
        matrix(
            &mut w,
            &mut m,
            &format!("{p}.self_attn.o_proj.weight"),
            TensorRole::Wo,
            l16,
            dim,
            qd,
        )?;
        if qkv_bias {
            for (x, role, n) in [("q", TensorRole::Bq, qd), ("k", TensorRole::Bk, kvd), ("v", TensorRole::Bv, kvd)] {
                let b = vector(&mut w, &format!("{p}.self_attn.{x}_proj.bias"), n)?;
                m.push(role, l16, 1, n, &b);
            }
        }
        zero_only(&mut w, &format!("{p}.self_attn.o_proj.bias"), dim, &mut notes)?;
        let v = vector(&mut w, &format!("{p}.post_attention_layernorm.weight"), dim)?;
        m.push(TensorRole::FfnNorm, l16, 1, dim, &v);
        matrix(
            &mut w,
            &mut m,
            &format!("{p}.mlp.gate_proj.weight"),
            TensorRole::WGate,
            l16,
            hid,
            dim,
        )?;
        matrix(&mut w, &mut m, &format!("{p}.mlp.up_proj.weight"), TensorRole::WUp, l16, hid, dim)?;
        matrix(
            &mut w,
            &mut m,
            &format!("{p}.mlp.down_proj.weight"),
            TensorRole::WDown,
            l16,
            dim,
            hid,
        )?;
        for (x, n) in [("gate", hid), ("up", hid), ("down", dim)] {
            zero_only(&mut w, &format!("{p}.mlp.{x}_proj.bias"), n, &mut notes)?;
        }
    }
    notes.extend(quant_notes.into_inner());
    let mut unused: Vec<&String> = w.by_name.keys().filter(|n| !w.used.contains(*n)).collect();
    if !unused.is_empty() {
        unused.sort();
        let shown: Vec<&str> = unused.iter().take(4).map(|s| s.as_str()).collect();
        let more = if unused.len() > 4 {
            format!(", … ({} in all)", unused.len())
        } else {
            String::new()
        };
        notes.push(format!(
            "note: {} tensor(s) not used by the model are ignored: {}{more}",
            unused.len(),
            shown.join(", ")
        ));
    }

    for n in &notes {
        eprintln!("{n}");
    }
    let md = &mut m.metadata;
    md.insert("importer".into(), "hf".into());
    md.insert("model_type".into(), hc.model_type.clone().into());
    md.insert("family".into(), format!("{:?}", hc.family).to_lowercase().into());
    if let Some(t) = &hc.torch_dtype {
        md.insert("torch_dtype".into(), t.clone().into());
    }
    md.insert("tokenizer".into(), tok.kind.into());
    if !notes.is_empty() {
        md.insert("import_notes".into(), notes.clone().into());
    }
    let by_scheme: BTreeMap<String, usize> = m.tensors.iter().fold(BTreeMap::new(), |mut acc, t| {
        *acc.entry(format!("{:?}", t.spec.scheme)).or_default() += 1;
        acc
    });
    md.insert("tensor_schemes".into(), serde_json::to_value(by_scheme)?);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::AlignedBytes;
    use crate::tiny::{byte_level_tokenizer_json, encode, hf_tensors, llama_config_json as stories_config, HfTensor as T};
    use edgeq_runtime::tokenizer::Tokenizer;
    use edgeq_runtime::{arena_bytes, Model, Session};
    use serde_json::json;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/stories260K");

    fn fixture(name: &str) -> Option<PathBuf> {
        let p = Path::new(FIXTURES).join(name);
        if p.is_file() {
            Some(p)
        } else {
            eprintln!("skipping: fixture {} is absent", p.display());
            None
        }
    }

    /// A fresh empty directory under the system temp dir (removed on drop).
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "edgeq-hf-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Writes the weights as `model.safetensors` (shards == 1) or as
    /// `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`.
    fn write_weights(dir: &Path, tensors: &[T], dt: Dtype, shards: usize) {
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| encode(&t.data, dt)).collect();
        let per = tensors.len().div_ceil(shards);
        let mut weight_map = serde_json::Map::new();
        for s in 0..shards {
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
                .iter()
                .zip(&bytes)
                .skip(s * per)
                .take(per)
                .map(|(t, b)| {
                    (
                        t.name.clone(),
                        safetensors::tensor::TensorView::new(dt, t.shape.clone(), b).unwrap(),
                    )
                })
                .collect();
            let file = if shards == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", s + 1, shards)
            };
            for (n, _) in &views {
                weight_map.insert(n.clone(), file.clone().into());
            }
            std::fs::write(dir.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        }
        if shards > 1 {
            let idx = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
            std::fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).unwrap();
        }
    }

    /// llama2.c's tok512.bin as the Llama-2-style tokenizer.json that
    /// transformers' `LlamaConverter` writes: pieces with '▁', byte pieces,
    /// and merges = every split of every piece, by descending piece score
    /// (`SentencePieceExtractor.extract`).
    fn sp_tokenizer_json(tok512: &[u8]) -> String {
        let mut p = 4;
        let mut pieces = Vec::new();
        while p < tok512.len() {
            let score = f32::from_le_bytes(tok512[p..p + 4].try_into().unwrap());
            let len = i32::from_le_bytes(tok512[p + 4..p + 8].try_into().unwrap()) as usize;
            let s = String::from_utf8(tok512[p + 8..p + 8 + len].to_vec())
                .unwrap()
                .replace(' ', "\u{2581}");
            pieces.push((s, score));
            p += 8 + len;
        }
        pieces[1].0 = "<s>".into();
        pieces[2].0 = "</s>".into();
        let ids: HashMap<&str, usize> = pieces.iter().enumerate().map(|(i, (s, _))| (s.as_str(), i)).collect();
        let mut order: Vec<usize> = (3 + 256..pieces.len()).collect();
        order.sort_by(|&a, &b| pieces[b].1.total_cmp(&pieces[a].1)); // stable: id order on ties
        let mut merges = Vec::new();
        for &i in &order {
            let s = &pieces[i].0;
            let mut local = Vec::new();
            for (k, _) in s.char_indices().skip(1) {
                let (l, r) = s.split_at(k);
                if let (Some(&a), Some(&b)) = (ids.get(l), ids.get(r)) {
                    local.push((a, b, l.to_string(), r.to_string()));
                }
            }
            local.sort();
            merges.extend(local.into_iter().map(|(_, _, l, r)| json!([l, r])));
        }
        let vocab: serde_json::Map<String, Value> = pieces.iter().enumerate().map(|(i, (s, _))| (s.clone(), i.into())).collect();
        json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<unk>", "special": true},
                {"id": 1, "content": "<s>", "special": true},
                {"id": 2, "content": "</s>", "special": true}],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]},
            "pre_tokenizer": null,
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true, "vocab": vocab, "merges": merges}
        })
        .to_string()
    }

    /// Logits after every token of each sequence (fed in one batch).
    fn logits(eqf: &[u8], seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let bytes = AlignedBytes::from(eqf);
        let model = Model::from_bytes(bytes.as_bytes()).unwrap();
        let vocab = model.cfg.vocab_size as usize;
        let (seq, batch) = (64, 16);
        let mut arena = vec![0u64; arena_bytes(&model.cfg, seq, batch).div_ceil(8)];
        let mut s = Session::new(&model, bytemuck::cast_slice_mut(&mut arena), seq, batch).unwrap();
        let mut out = Vec::new();
        for toks in seqs {
            s.reset();
            let mut all = vec![0f32; toks.len() * vocab];
            s.forward(toks, Some(&mut all)).unwrap();
            // and one more decode step, exercising the single-token path
            let next = s.step(toks[0]).unwrap().to_vec();
            all.extend(next);
            out.push(all);
        }
        out
    }

    fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0.0, f32::max)
    }

    const SEQS: fn() -> Vec<Vec<u32>> = || {
        vec![
            vec![1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315],
            vec![1, 5, 300, 511, 0, 2, 259, 260],
            vec![42],
        ]
    };

    #[test]
    fn stories260k_hf_directories_match_llama2c() {
        let (Some(bin), Some(tokbin)) = (fixture("stories260K.bin"), fixture("tok512.bin")) else {
            return;
        };
        let reference = crate::import::llama2c::import(&bin, &tokbin).unwrap();
        let cfg = reference.config;
        let tensors = hf_tensors(&reference);
        let want = logits(&reference.to_eqf().unwrap(), &SEQS());

        // (dtype, shards, tokenizer, tolerance)
        let tok512 = std::fs::read(&tokbin).unwrap();
        let sp_json = sp_tokenizer_json(&tok512);
        let bl_json = byte_level_tokenizer_json();
        for (dt, shards, tok_json, tol) in [
            (Dtype::F32, 1, &bl_json, 1e-4f32),
            (Dtype::F16, 2, &sp_json, 2e-2),
            (Dtype::BF16, 3, &bl_json, 0.25),
        ] {
            let dir = TempDir::new("stories");
            std::fs::write(dir.0.join("config.json"), stories_config(&cfg).to_string()).unwrap();
            std::fs::write(dir.0.join("tokenizer.json"), tok_json).unwrap();
            write_weights(&dir.0, &tensors, dt, shards);
            let m = import(&dir.0).unwrap();
            assert_eq!(m.config.flags, flags::ROPE_HALF | flags::TIED_EMBEDDINGS);
            assert_eq!((m.config.bos_id, m.config.eos_id), (1, 2));
            let c = m.config;
            assert_eq!(
                (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size),
                (
                    cfg.dim,
                    cfg.hidden_dim,
                    cfg.n_layers,
                    cfg.n_heads,
                    cfg.n_kv_heads,
                    cfg.head_dim,
                    cfg.vocab_size
                )
            );
            let want_scheme = match dt {
                Dtype::F32 => Scheme::F32,
                Dtype::F16 => Scheme::F16,
                _ => Scheme::BF16,
            };
            for t in &m.tensors {
                let s = if t.role.is_vector() { Scheme::F32 } else { want_scheme };
                assert_eq!(t.spec.scheme, s, "{:?} {}", t.role, t.layer);
            }
            let eqf = m.to_eqf().unwrap();
            let got = logits(&eqf, &SEQS());
            let d = max_abs_diff(&want, &got);
            // The same weights rounded to `dt` in the llama2.c model: isolates
            // the importer from the storage precision.
            let mut rounded = crate::import::llama2c::import(&bin, &tokbin).unwrap();
            for t in &mut rounded.tensors {
                let v: Vec<f32> = t
                    .data
                    .to_vec()
                    .unwrap()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                t.data = crate::import::TensorData::Owned(to_f32(dt, &encode(&v, dt)).iter().flat_map(|x| x.to_le_bytes()).collect());
            }
            let d_rounded = max_abs_diff(&logits(&rounded.to_eqf().unwrap(), &SEQS()), &got);
            eprintln!("{dt:?} x{shards}: max |Δlogit| = {d:e} vs f32 llama2.c, {d_rounded:e} vs llama2.c rounded to {dt:?}");
            assert!(d < tol, "{dt:?} with {shards} shard(s): max abs logit difference {d} >= {tol}");
            assert!(
                d_rounded < 1e-4,
                "{dt:?}: max abs logit difference to the rounded llama2.c model {d_rounded}"
            );
            if dt == Dtype::F32 {
                // The check has teeth: the same weights run with the
                // interleaved pairing give clearly different logits.
                let mut m2 = import(&dir.0).unwrap();
                m2.config.flags &= !flags::ROPE_HALF;
                let d_wrong = max_abs_diff(&want, &logits(&m2.to_eqf().unwrap(), &SEQS()));
                eprintln!("  (with the wrong RoPE pairing: {d_wrong:e})");
                assert!(d_wrong > 1e-2, "{d_wrong}");
            }
        }
    }

    /// The Llama-2-style tokenizer.json made from tok512 encodes exactly
    /// like llama2.c's tokenizer.bin.
    #[test]
    fn sentencepiece_tokenizer_json_matches_llama2c_tokenizer() {
        let Some(tokbin) = fixture("tok512.bin") else {
            return;
        };
        let bytes = std::fs::read(&tokbin).unwrap();
        let want_blob = edgeq_runtime::tokenizer::from_llama2c_bin(&bytes).unwrap();
        let want = Tokenizer::parse(&want_blob).unwrap();
        let t = hf_tokenizer::from_json(
            &sp_tokenizer_json(&bytes),
            None,
            Fallback {
                bos: Some(1),
                eos: Some(2),
            },
        )
        .unwrap();
        assert_eq!(t.kind, "sentencepiece-bpe");
        assert!(t.add_bos);
        let got = Tokenizer::parse(&t.blob).unwrap();
        for text in [
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
            "Hello world!  Tom said: \"I'm 3 years old\".\nThe end.",
            "héllo € 日本 ~[x]",
            "",
        ] {
            let (mut a, mut b) = (vec![0u32; text.len() + 4], vec![0u32; text.len() + 4]);
            let na = want.encode(text, true, &mut a).unwrap();
            let nb = got.encode(text, true, &mut b).unwrap();
            assert_eq!(&a[..na], &b[..nb], "{text:?}");
            assert_eq!(got.decode(&b[..nb]), text.as_bytes());
        }
    }

    /// A tiny synthetic model (no fixture): dim 8, 2 heads / 1 kv head,
    /// hidden 16, 1 layer, vocab 300.
    fn tiny(qwen: bool) -> (Value, Vec<T>) {
        let (dim, hid, nh, nkv, hd, vocab) = (8usize, 16usize, 2usize, 1usize, 4usize, 300usize);
        let mut seed = 0x1234_5678u32;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        let mut t = |name: &str, shape: &[usize]| T {
            name: name.to_string(),
            shape: shape.to_vec(),
            data: rnd(shape.iter().product()),
        };
        let mut ts = vec![
            t("model.embed_tokens.weight", &[vocab, dim]),
            t("model.norm.weight", &[dim]),
            t("lm_head.weight", &[vocab, dim]),
        ];
        let p = "model.layers.0";
        for (n, s) in [
            ("input_layernorm.weight", vec![dim]),
            ("self_attn.q_proj.weight", vec![nh * hd, dim]),
            ("self_attn.k_proj.weight", vec![nkv * hd, dim]),
            ("self_attn.v_proj.weight", vec![nkv * hd, dim]),
            ("self_attn.o_proj.weight", vec![dim, nh * hd]),
            ("post_attention_layernorm.weight", vec![dim]),
            ("mlp.gate_proj.weight", vec![hid, dim]),
            ("mlp.up_proj.weight", vec![hid, dim]),
            ("mlp.down_proj.weight", vec![dim, hid]),
            ("self_attn.rotary_emb.inv_freq", vec![hd / 2]),
        ] {
            ts.push(t(&format!("{p}.{n}"), &s));
        }
        if qwen {
            for (n, s) in [("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)] {
                ts.push(t(&format!("{p}.self_attn.{n}_proj.bias"), &[s]));
            }
        }
        let (arch, mt) = if qwen {
            ("Qwen2ForCausalLM", "qwen2")
        } else {
            ("MistralForCausalLM", "mistral")
        };
        let cfg = json!({
            "architectures": [arch], "model_type": mt, "hidden_size": dim, "intermediate_size": hid, "num_hidden_layers": 1,
            "num_attention_heads": nh, "num_key_value_heads": nkv, "vocab_size": vocab, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "sliding_window": 64, "tie_word_embeddings": false,
            "bos_token_id": null, "eos_token_id": [263, 2],
        });
        (cfg, ts)
    }

    fn write_dir(cfg: &Value, ts: &[T], dt: Dtype, shards: usize) -> TempDir {
        let dir = TempDir::new("tiny");
        std::fs::write(dir.0.join("config.json"), cfg.to_string()).unwrap();
        std::fs::write(dir.0.join("tokenizer.json"), byte_level_tokenizer_json()).unwrap();
        write_weights(&dir.0, ts, dt, shards);
        dir
    }

    fn err(dir: &TempDir) -> String {
        format!("{:#}", import(&dir.0).err().expect("import should fail"))
    }

    #[test]
    fn synthetic_mistral_and_qwen2_import_and_run() {
        for qwen in [false, true] {
            let (cfg, ts) = tiny(qwen);
            let dir = write_dir(&cfg, &ts, Dtype::BF16, 2);
            let m = import(&dir.0).unwrap();
            let want = flags::ROPE_HALF | if qwen { flags::QKV_BIAS } else { 0 };
            assert_eq!(m.config.flags, want);
            assert_eq!(m.config.eos_id, 263, "first of the eos_token_id list");
            assert_eq!(m.config.rope_theta, 1e6);
            let notes: Vec<String> = serde_json::from_value(m.metadata["import_notes"].clone()).unwrap();
            let joined = notes.join("\n");
            assert!(joined.contains("rotary_emb.inv_freq"), "{joined}");
            assert!(joined.contains("[263, 2]"), "{joined}");
            assert_eq!(joined.contains("sliding_window 64"), !qwen, "{joined}");
            let out = logits(&m.to_eqf().unwrap(), &[vec![1, 2, 3, 299]]);
            assert!(out[0].iter().all(|v| v.is_finite()));
        }
    }

    /// Logits after every token and after decode steps, with a KV cache of
    /// precision `kv`: the prompt fed in batches of 5, then 6 single steps.
    fn logits_kv(eqf: &[u8], toks: &[u32], kv: edgeq_runtime::KvCache) -> Vec<f32> {
        use edgeq_runtime::{arena_bytes_with, SessionOptions};
        let bytes = AlignedBytes::from(eqf);
        let model = Model::from_bytes(bytes.as_bytes()).unwrap();
        let (seq, batch) = (64, 5);
        let mut arena = vec![0u64; arena_bytes_with(&model.cfg, seq, batch, kv).div_ceil(8)];
        let opts = SessionOptions { kv, ..Default::default() };
        let mut s = Session::with_options(&model, bytemuck::cast_slice_mut(&mut arena), seq, batch, opts).unwrap();
        assert_eq!(s.kv_cache(), kv);
        let vocab = model.cfg.vocab_size as usize;
        let mut out = Vec::new();
        for chunk in toks.chunks(batch) {
            let mut all = vec![0f32; chunk.len() * vocab];
            s.forward(chunk, Some(&mut all)).unwrap();
            out.extend(all);
        }
        for &t in &toks[..6] {
            out.extend_from_slice(s.step(t).unwrap());
        }
        out
    }

    #[test]
    fn kv_cache_precisions_track_f32() {
        use edgeq_runtime::KvCache;
        let toks: Vec<u32> = (0..23u32).map(|i| (i * 37 + 5) % 300).collect();
        // Mistral (hidden 16 ≥ kv_dim 4: new rows in the FFN buffers), Qwen2
        // (q/k/v biases), and one with hidden 2 < kv_dim 4 (own scratch).
        for (qwen, narrow) in [(false, false), (true, false), (false, true)] {
            let (mut cfg, mut ts) = tiny(qwen);
            if narrow {
                cfg["intermediate_size"] = 2.into();
                for t in &mut ts {
                    if t.name.contains(".mlp.") {
                        t.shape = if t.name.contains("down") { vec![8, 2] } else { vec![2, 8] };
                        t.data.truncate(16);
                    }
                }
            }
            let dir = write_dir(&cfg, &ts, Dtype::F32, 1);
            let eqf = import(&dir.0).unwrap().to_eqf().unwrap();
            let want = logits_kv(&eqf, &toks, KvCache::F32);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (kv, tol) in [(KvCache::F32, 0.0), (KvCache::F16, 5e-4), (KvCache::Q8, 5e-3)] {
                let got = logits_kv(&eqf, &toks, kv);
                let d = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(
                    d <= tol * scale,
                    "qwen {qwen} narrow {narrow} {kv:?}: max diff {d} vs scale {scale}"
                );
                if kv != KvCache::F32 {
                    assert!(d > 0.0, "{kv:?} should differ from f32 somewhere");
                }
            }
        }
    }

    /// A non-finite value past the first piece is found at its element
    /// index, counted across pieces.
    #[test]
    fn non_finite_values_are_found_across_pieces() {
        let dir = TempDir::new("nonfinite");
        let p = dir.0.join("t.bin");
        let n = super::super::MappedBytes::PIECE / 2 * 2 + 1000; // bf16: two pieces and a bit
        let at = super::super::MappedBytes::PIECE / 2 + 7; // in the second piece
        let mut bytes = vec![0u8; 6 + 2 * n];
        bytes[6 + 2 * at..6 + 2 * at + 2].copy_from_slice(&half::bf16::NAN.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let map = crate::model_file::map_readonly(&std::fs::File::open(&p).unwrap(), &p).unwrap();
        let map = Arc::new(map);
        assert_eq!(checked_mapped(&map, Dtype::BF16, &map[6..]).err(), Some(at));
        let ok = checked_mapped(&map, Dtype::BF16, &map[6..6 + 2 * at]).unwrap();
        let want = crc32fast::hash(&map[6..6 + 2 * at]);
        assert_eq!(
            edgeq_core::format::writer::TensorBytes::crc32(&crate::import::TensorData::Mapped(ok)),
            want
        );
    }

    #[test]
    fn config_parsing() {
        let base = || {
            json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 256, "rms_norm_eps": 1e-5})
        };
        let c = parse_config(&base().to_string()).unwrap();
        assert_eq!(
            (c.config.n_kv_heads, c.config.head_dim, c.config.rope_theta, c.config.flags),
            (4, 16, 10000.0, flags::ROPE_HALF)
        );
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        v["attention_bias"] = true.into();
        v["tie_word_embeddings"] = true.into();
        let c = parse_config(&v.to_string()).unwrap();
        assert_eq!(
            (
                c.config.rope_scaling,
                c.config.rope_factor,
                c.config.rope_high_freq_factor,
                c.config.rope_original_max_pos
            ),
            (1, 8.0, 4.0, 8192)
        );
        assert_eq!(c.config.flags, flags::ROPE_HALF | flags::QKV_BIAS | flags::TIED_EMBEDDINGS);
        v["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
        let e = format!("{:#}", parse_config(&v.to_string()).unwrap_err());
        assert!(e.contains("config.json") && e.contains("yarn"), "{e}");
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        let e = format!("{:#}", parse_config(&v.to_string()).unwrap_err());
        assert!(e.contains("rope_scaling.low_freq_factor"), "{e}");
        let mut v = base();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        assert!(format!("{:#}", parse_config(&v.to_string()).unwrap_err()).contains("GPT2LMHeadModel"));
        for key in [
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "vocab_size",
            "max_position_embeddings",
            "rms_norm_eps",
        ] {
            let mut v = base();
            v.as_object_mut().unwrap().remove(key);
            let e = format!("{:#}", parse_config(&v.to_string()).unwrap_err());
            assert!(e.contains("config.json") && e.contains(key), "{e}");
        }
    }

    #[test]
    fn errors_name_file_and_tensor() {
        let (cfg, ts) = tiny(false);

        // missing config key
        let mut c = cfg.clone();
        c.as_object_mut().unwrap().remove("num_attention_heads");
        let e = err(&write_dir(&c, &ts, Dtype::F32, 1));
        assert!(e.contains("config.json") && e.contains("\"num_attention_heads\" is missing"), "{e}");

        // wrong tensor shape
        let mut bad: Vec<T> = ts
            .iter()
            .map(|t| T {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: t.data.clone(),
            })
            .collect();
        let q = bad.iter_mut().find(|t| t.name.ends_with("q_proj.weight")).unwrap();
        q.shape = vec![4, 16];
        let e = err(&write_dir(&cfg, &bad, Dtype::F32, 1));
        assert!(
            e.contains("model.layers.0.self_attn.q_proj.weight") && e.contains("model.safetensors") && e.contains("[4, 16]"),
            "{e}"
        );

        // truncated safetensors
        let dir = write_dir(&cfg, &ts, Dtype::F16, 2);
        let f = dir.0.join("model-00002-of-00002.safetensors");
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 10).unwrap();
        let e = err(&dir);
        assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("truncated"), "{e}");

        // NaN weight, in a matrix and in a norm
        for (which, dt) in [
            ("mlp.down_proj.weight", Dtype::BF16),
            ("post_attention_layernorm.weight", Dtype::F16),
            ("lm_head.weight", Dtype::F32),
        ] {
            let mut bad: Vec<T> = ts
                .iter()
                .map(|t| T {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    data: t.data.clone(),
                })
                .collect();
            bad.iter_mut().find(|t| t.name.ends_with(which)).unwrap().data[5] = f32::NAN;
            let e = err(&write_dir(&cfg, &bad, dt, 1));
            assert!(e.contains(which) && e.contains("NaN") && e.contains("model.safetensors"), "{e}");
        }

        // missing shard file
        let dir = write_dir(&cfg, &ts, Dtype::F32, 2);
        std::fs::remove_file(dir.0.join("model-00001-of-00002.safetensors")).unwrap();
        let e = err(&dir);
        assert!(
            e.contains("model-00001-of-00002.safetensors") && e.contains("missing") && e.contains("model.safetensors.index.json"),
            "{e}"
        );

        // missing tensor
        let fewer: Vec<T> = ts
            .iter()
            .filter(|t| !t.name.ends_with("up_proj.weight"))
            .map(|t| T {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: t.data.clone(),
            })
            .collect();
        let e = err(&write_dir(&cfg, &fewer, Dtype::F32, 1));
        assert!(e.contains("model.layers.0.mlp.up_proj.weight") && e.contains("missing"), "{e}");

        // untied model without lm_head
        let e = err(&write_dir(
            &cfg,
            &ts[..2]
                .iter()
                .chain(&ts[3..])
                .map(|t| T {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    data: t.data.clone(),
                })
                .collect::<Vec<_>>(),
            Dtype::F32,
            1,
        ));
        assert!(e.contains("lm_head.weight") && e.contains("tie_word_embeddings"), "{e}");

        // no tokenizer.json
        let dir = write_dir(&cfg, &ts, Dtype::F32, 1);
        std::fs::remove_file(dir.0.join("tokenizer.json")).unwrap();
        let e = err(&dir);
        assert!(e.contains("no tokenizer.json") && e.contains("save_pretrained"), "{e}");

        // no weights at all
        let dir = write_dir(&cfg, &ts, Dtype::F32, 1);
        std::fs::remove_file(dir.0.join("model.safetensors")).unwrap();
        std::fs::write(dir.0.join("pytorch_model.bin"), b"x").unwrap();
        let e = err(&dir);
        assert!(e.contains("model.safetensors") && e.contains("pytorch_model.bin"), "{e}");
    }
}
