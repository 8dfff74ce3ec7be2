//! EQF → a Hugging Face model directory (`config.json`, safetensors weights,
//! `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`), in
//! one of three layouts:
//!
//! * **GPTQ** (`quantize_config.json`, AutoGPTQ's `checkpoint_format: gptq`,
//!   what transformers/optimum, vLLM and GPTQModel load): each linear layer
//!   `X` becomes `X.qweight` (int32, `[in·bits/32, out]`: 32/bits codes per
//!   word along the input dimension, lowest bits first), `X.qzeros` (int32,
//!   `[groups, out·bits/32]`, the zero point minus one), `X.scales` (f16,
//!   `[groups, out]`) and `X.g_idx` (int32, `[in]`, `k / group_size`).
//!   Dequantization: `W[k, n] = scales[g, n] · (q[k, n] − (qzeros[g, n] + 1))`,
//!   `g = g_idx[k]`. EQF Q4/Q8 sym is this grid exactly (zero point 8 / 128,
//!   same f16 scales); asym maps when `min = −scale · z` for an integer `z`.
//! * **FP8** (llm-compressor's compressed-tensors `float-quantized` format,
//!   what vLLM loads): `X.weight` in `F8_E4M3` (OCP e4m3fn, as EQF stores it)
//!   and `X.weight_scale` (f32: `[out, 1]` per channel, `[1]` per tensor,
//!   `[⌈out/B⌉, ⌈in/B⌉]` for B×B blocks); `W = fp8 · scale`, exact.
//! * **float**: plain `X.weight` in the stored float type.
//!
//! Every other tensor is written in its float type (quantized embeddings and
//! classifiers are dequantized to f16/bf16), norms and biases in f32. Linear
//! layers whose scheme is not the layout's are requantized (round to nearest)
//! and reported with the error that adds, like the GGUF exporter.
//!
//! RoPE: Hugging Face's Llama rotates half-split pairs. Models with
//! interleaved pairs (llama2.c and GGUF imports) have their q/k rows (and
//! biases) permuted to the half-split order, which moves whole rows and so is
//! exact for every per-row or per-group scheme.
use super::gguf::TensorExport;
use super::hf_tokenizer;
use crate::import::AlignedBytes;
use anyhow::{bail, ensure, Context, Result};
use edgeq_core::config::flags;
use edgeq_core::format::{record_spec, TensorRecord};
use edgeq_core::quant::int::q4_code;
use edgeq_core::tensor::Scales;
use edgeq_core::{Eqf, Granularity, QuantSpec, Scheme, TensorRole, TensorView};
use edgeq_runtime::tokenizer::Tokenizer;
use half::{bf16, f16};
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// Which quantized layout the linear layers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// GPTQ for integer models, FP8 for FP8 models, float otherwise.
    Auto,
    Gptq,
    Fp8,
    Float,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Auto => "auto",
            Layout::Gptq => "gptq",
            Layout::Fp8 => "fp8",
            Layout::Float => "float",
        }
    }
}

/// Options of [`export`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub layout: Layout,
    /// Largest safetensors shard in bytes; above it the weights are split
    /// into `model-0000i-of-0000n.safetensors` with an index, as HF does.
    pub max_shard_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            layout: Layout::Auto,
            max_shard_bytes: 5 << 30,
        }
    }
}

/// The directory's files and what became of every tensor.
pub struct HfExport {
    /// The layout used (never `Auto`).
    pub layout: Layout,
    /// (file name, contents), written into the output directory.
    pub files: Vec<(String, Vec<u8>)>,
    pub reports: Vec<TensorExport>,
}

/// The Hugging Face module name of an EQF tensor (`model.layers.3.mlp.up_proj`);
/// parameters are `{module}.weight` and `{module}.bias` ([`param_name`]).
pub fn module_name(role: TensorRole, layer: u16) -> String {
    let l = layer;
    match role {
        TensorRole::TokEmbd => "model.embed_tokens".into(),
        TensorRole::OutputNorm => "model.norm".into(),
        TensorRole::Output => "lm_head".into(),
        TensorRole::AttnNorm => format!("model.layers.{l}.input_layernorm"),
        TensorRole::FfnNorm => format!("model.layers.{l}.post_attention_layernorm"),
        TensorRole::Wq | TensorRole::Bq => format!("model.layers.{l}.self_attn.q_proj"),
        TensorRole::Wk | TensorRole::Bk => format!("model.layers.{l}.self_attn.k_proj"),
        TensorRole::Wv | TensorRole::Bv => format!("model.layers.{l}.self_attn.v_proj"),
        TensorRole::Wo => format!("model.layers.{l}.self_attn.o_proj"),
        TensorRole::WGate => format!("model.layers.{l}.mlp.gate_proj"),
        TensorRole::WUp => format!("model.layers.{l}.mlp.up_proj"),
        TensorRole::WDown => format!("model.layers.{l}.mlp.down_proj"),
    }
}

/// The full parameter name (`…q_proj.weight`, `…q_proj.bias`).
pub fn param_name(role: TensorRole, layer: u16) -> String {
    let bias = matches!(role, TensorRole::Bq | TensorRole::Bk | TensorRole::Bv);
    format!("{}.{}", module_name(role, layer), if bias { "bias" } else { "weight" })
}

/// The projections a GPTQ / FP8 checkpoint quantizes.
pub fn is_linear(role: TensorRole) -> bool {
    use TensorRole::*;
    matches!(role, Wq | Wk | Wv | Wo | WGate | WUp | WDown)
}

/// Reorders rows of `data` (`rows` rows of equal length) from interleaved
/// RoPE pairs to half-split ones: row `h·hd + 2i + j` moves to
/// `h·hd + j·hd/2 + i` (`permute()` of `convert_llama_weights_to_hf.py`).
pub fn interleaved_to_half<T: Copy>(data: &[T], rows: usize, head_dim: usize) -> Vec<T> {
    let len = data.len() / rows.max(1);
    let mut out = data.to_vec();
    let half = head_dim / 2;
    for r in 0..rows {
        let (h, k) = (r / head_dim, r % head_dim);
        let (i, j) = (k / 2, k % 2);
        let dst = h * head_dim + j * half + i;
        out[dst * len..(dst + 1) * len].copy_from_slice(&data[r * len..(r + 1) * len]);
    }
    out
}

/// One tensor of the checkpoint.
struct StTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// The GPTQ grid shared by every quantized linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct GptqGrid {
    bits: u32,
    /// Elements per scale along the input; 0 = one group per row.
    group: u32,
    sym: bool,
}

impl GptqGrid {
    fn of(spec: &QuantSpec) -> Option<GptqGrid> {
        if !spec.scheme.is_int() {
            return None;
        }
        Some(GptqGrid {
            bits: spec.scheme.code_bits(),
            group: if spec.granularity == Granularity::PerGroup { spec.group } else { 0 },
            sym: !spec.scheme.is_asym(),
        })
    }
    fn spec(self) -> QuantSpec {
        let scheme = match (self.bits, self.sym) {
            (4, true) => Scheme::Q4Sym,
            (4, false) => Scheme::Q4Asym,
            (_, true) => Scheme::Q8Sym,
            (_, false) => Scheme::Q8Asym,
        };
        if self.group == 0 {
            QuantSpec::per_channel(scheme)
        } else {
            QuantSpec::per_group(scheme, self.group)
        }
    }
    /// Codes per int32 word.
    fn per_word(self) -> usize {
        32 / self.bits as usize
    }
    /// Whether an `out`×`in` matrix packs in this grid.
    fn packs(self, rows: usize, cols: usize) -> bool {
        let w = self.per_word();
        rows % w == 0 && cols % w == 0 && (self.group == 0 || cols % self.group as usize == 0)
    }
}

/// Unsigned codes, integer zero points and f16 scales of an integer tensor, row-major.
struct IntRows {
    rows: usize,
    cols: usize,
    groups: usize,
    group_len: usize,
    codes: Vec<u8>,
    zeros: Vec<u8>,
    scales: Vec<f16>,
    /// Group of each (checkpoint) column when an act-order layer's groups
    /// are scattered (GPTQ `desc_act`); `None` = `k / group_len`.
    g_idx: Option<Vec<u32>>,
}

impl IntRows {
    fn from_view(v: &TensorView<'_>) -> Result<IntRows> {
        let layout = v
            .spec
            .layout(v.rows() as u32, v.cols() as u32)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (rows, cols) = (v.rows(), v.cols());
        let (groups, group_len) = (layout.groups_per_row as usize, layout.group_len as usize);
        let scheme = v.scheme();
        let max = (1u32 << scheme.code_bits()) - 1;
        let mut out = IntRows {
            rows,
            cols,
            groups,
            group_len,
            codes: Vec::with_capacity(rows * cols),
            zeros: Vec::with_capacity(rows * groups),
            scales: Vec::with_capacity(rows * groups),
            g_idx: None,
        };
        for r in 0..rows {
            let codes = v.row_codes(r);
            for k in 0..cols {
                out.codes.push(match scheme {
                    Scheme::Q4Sym | Scheme::Q4Asym => q4_code(codes, k),
                    Scheme::Q8Sym => (codes[k] as i8 as i16 + 128) as u8,
                    _ => codes[k],
                });
            }
            let scales = v.row_scales_f16(r);
            out.scales.extend_from_slice(&scales[..groups]);
            match scheme {
                Scheme::Q4Sym => out.zeros.extend(std::iter::repeat_n(8u8, groups)),
                Scheme::Q8Sym => out.zeros.extend(std::iter::repeat_n(128u8, groups)),
                _ => {
                    // value = s·q + m = s·(q − z) with z = −m/s, rounded to an integer.
                    let mins = v.row_mins(r);
                    for g in 0..groups {
                        let (s, m) = (scales[g].to_f32(), mins[g].to_f32());
                        let z = if s > 0.0 {
                            (-m / s).round().clamp(0.0, max as f32) as u8
                        } else {
                            0
                        };
                        out.zeros.push(z);
                    }
                }
            }
        }
        Ok(out)
    }
    /// Puts an act-order layer stored with permuted columns (EQF
    /// INPUT_PERM) back in the model's column order, with its `g_idx`.
    fn unpermute_cols(&mut self, perm: &[u32]) {
        let mut codes = vec![0u8; self.codes.len()];
        for (dst, src) in codes.chunks_exact_mut(self.cols).zip(self.codes.chunks_exact(self.cols)) {
            for (i, &k) in perm.iter().enumerate() {
                dst[k as usize] = src[i];
            }
        }
        let mut g_idx = vec![0u32; self.cols];
        for (i, &k) in perm.iter().enumerate() {
            g_idx[k as usize] = (i / self.group_len) as u32;
        }
        self.codes = codes;
        self.g_idx = Some(g_idx);
    }
    fn group(&self, k: usize) -> usize {
        self.g_idx.as_ref().map_or(k / self.group_len, |g| g[k] as usize)
    }
    fn value(&self, r: usize, k: usize) -> f32 {
        let g = r * self.groups + self.group(k);
        self.scales[g].to_f32() * (self.codes[r * self.cols + k] as f32 - self.zeros[g] as f32)
    }
    fn permute_rows(&mut self, head_dim: usize) {
        self.codes = interleaved_to_half(&self.codes, self.rows, head_dim);
        self.zeros = interleaved_to_half(&self.zeros, self.rows, head_dim);
        self.scales = interleaved_to_half(&self.scales, self.rows, head_dim);
    }
    /// `qweight`, `qzeros`, `scales`, `g_idx` of module `m`.
    fn pack(&self, m: &str, bits: u32) -> Vec<StTensor> {
        let w = 32 / bits as usize;
        let (n, k) = (self.rows, self.cols);
        let mut qweight = vec![0u32; k / w * n];
        for r in 0..n {
            for c in 0..k {
                qweight[(c / w) * n + r] |= (self.codes[r * k + c] as u32) << (bits as usize * (c % w));
            }
        }
        let mut qzeros = vec![0u32; self.groups * n / w];
        let mut scales = Vec::with_capacity(self.groups * n);
        for g in 0..self.groups {
            for r in 0..n {
                let z = self.zeros[r * self.groups + g].wrapping_sub(1) as u32 & ((1 << bits) - 1);
                qzeros[g * (n / w) + r / w] |= z << (bits as usize * (r % w));
                scales.push(self.scales[r * self.groups + g]);
            }
        }
        let g_idx: Vec<i32> = (0..k).map(|c| self.group(c) as i32).collect();
        vec![
            st(
                format!("{m}.qweight"),
                Dtype::I32,
                vec![k / w, n],
                bytemuck::cast_slice(&qweight).to_vec(),
            ),
            st(
                format!("{m}.qzeros"),
                Dtype::I32,
                vec![self.groups, n / w],
                bytemuck::cast_slice(&qzeros).to_vec(),
            ),
            st(
                format!("{m}.scales"),
                Dtype::F16,
                vec![self.groups, n],
                bytemuck::cast_slice(&scales).to_vec(),
            ),
            st(format!("{m}.g_idx"), Dtype::I32, vec![k], bytemuck::cast_slice(&g_idx).to_vec()),
        ]
    }
}

fn st(name: String, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> StTensor {
    StTensor { name, dtype, shape, data }
}

/// `‖a − b‖² / ‖a‖²`.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (num, den) = a.iter().zip(b).fold((0f64, 0f64), |(n, d), (x, y)| {
        (n + ((x - y) as f64).powi(2), d + (*x as f64).powi(2))
    });
    if den > 0.0 {
        num / den
    } else {
        num
    }
}

/// Quantizes f32 values into `spec` (round to nearest) as EQF bytes.
fn rtn(spec: QuantSpec, rows: usize, cols: usize, w: &[f32]) -> Result<Vec<u8>> {
    let l = spec.layout(rows as u32, cols as u32).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = vec![0u8; l.total_bytes as usize];
    edgeq_core::quant::quantize(spec, rows as u32, cols as u32, w, &mut out).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(out)
}

/// A float tensor of `values` in `dtype`.
fn float_bytes(dtype: Dtype, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    match dtype {
        Dtype::F16 => {
            let h: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
            (bytemuck::cast_slice(&h).to_vec(), h.iter().map(|x| x.to_f32()).collect())
        }
        Dtype::BF16 => {
            let h: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
            (bytemuck::cast_slice(&h).to_vec(), h.iter().map(|x| x.to_f32()).collect())
        }
        _ => (bytemuck::cast_slice(values).to_vec(), values.to_vec()),
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// The layout `Auto` resolves to, from the linear layers' schemes.
fn resolve(layout: Layout, specs: &[QuantSpec]) -> Layout {
    if layout != Layout::Auto {
        return layout;
    }
    let int = specs.iter().filter(|s| s.scheme.is_int()).count();
    let fp8 = specs.iter().filter(|s| s.scheme.is_fp8()).count();
    match (int, fp8) {
        (0, 0) => Layout::Float,
        (i, f) if i >= f => Layout::Gptq,
        _ => Layout::Fp8,
    }
}

/// Converts a parsed EQF model into a Hugging Face model directory.
pub fn export(eqf: &Eqf<'_>, opts: Options) -> Result<HfExport> {
    let c = *eqf.config();
    ensure!(
        c.rope_dim == c.head_dim,
        "this model rotates {} of {} head dimensions (partial RoPE); Hugging Face's Llama rotates all of them",
        c.rope_dim,
        c.head_dim
    );
    let permute = c.flags & flags::ROPE_HALF == 0;
    let qkv_bias = c.flags & flags::QKV_BIAS != 0;
    let head_dim = c.head_dim as usize;
    let tok = Tokenizer::parse(eqf.tokenizer_bytes()).map_err(|e| anyhow::anyhow!("the model's tokenizer: {e}"))?;
    let meta: Value = serde_json::from_slice(eqf.metadata()).unwrap_or_default();

    let mut records: Vec<(&TensorRecord, TensorRole, QuantSpec)> = Vec::new();
    for t in eqf.tensors() {
        let role = TensorRole::from_u16(t.role).with_context(|| format!("tensor {}: unknown role {}", t.name_str(), t.role))?;
        let spec = record_spec(t).map_err(|e| anyhow::anyhow!("tensor {}: {e}", t.name_str()))?;
        records.push((t, role, spec));
    }
    records.sort_by_key(|(t, _, _)| (t.layer != edgeq_core::format::GLOBAL_LAYER, t.layer, t.role));
    let linear_specs: Vec<QuantSpec> = records.iter().filter(|r| is_linear(r.1)).map(|r| r.2).collect();
    let layout = resolve(opts.layout, &linear_specs);

    // The one grid / granularity of the quantized layers: the most common one.
    let most_common = |keys: Vec<(u32, u32, bool)>| {
        let mut n: BTreeMap<(u32, u32, bool), usize> = BTreeMap::new();
        for k in keys {
            *n.entry(k).or_default() += 1;
        }
        n.into_iter().max_by_key(|(k, c)| (*c, std::cmp::Reverse(*k))).map(|(k, _)| k)
    };
    let grid = most_common(
        linear_specs
            .iter()
            .filter_map(GptqGrid::of)
            .map(|g| (g.bits, g.group, g.sym))
            .collect(),
    )
    .map(|(bits, group, sym)| GptqGrid { bits, group, sym })
    .unwrap_or(GptqGrid {
        bits: 4,
        group: 128,
        sym: true,
    });
    let fp8_spec = most_common(
        linear_specs
            .iter()
            .filter(|s| s.scheme == Scheme::Fp8E4M3)
            .map(|s| (s.granularity as u32, s.group, true))
            .collect(),
    )
    .map(|(g, group, _)| QuantSpec {
        scheme: Scheme::Fp8E4M3,
        granularity: Granularity::from_u8(g as u8).unwrap_or(Granularity::PerChannel),
        group,
    })
    .unwrap_or(QuantSpec::per_channel(Scheme::Fp8E4M3));
    // Quantized embeddings are dequantized to this type (the torch_dtype).
    let float_dtype = if layout == Layout::Fp8 { Dtype::BF16 } else { Dtype::F16 };

    let mut tensors: Vec<StTensor> = Vec::new();
    let mut reports = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for &(t, role, spec) in &records {
        let name = param_name(role, t.layer);
        let module = module_name(role, t.layer);
        let (rows, cols) = (t.rows as usize, t.cols as usize);
        let permute_this = permute && matches!(role, TensorRole::Wq | TensorRole::Wk | TensorRole::Bq | TensorRole::Bk);
        let w = crate::quantize::to_f32(eqf, t).with_context(|| format!("tensor {name}"))?;
        let v = eqf.view(t).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let from = crate::quantize::spec_name(&spec);
        let report = |to: String, back: &[f32], why: String| TensorExport {
            name: name.clone(),
            from: from.clone(),
            to,
            exact: back.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()),
            rel_err: rel_err(&w, back),
            why,
        };
        // Vectors: f32, permuted like their rows.
        if role.is_vector() {
            let data = if permute_this {
                interleaved_to_half(&w, rows * cols, head_dim)
            } else {
                w.clone()
            };
            tensors.push(st(
                name.clone(),
                Dtype::F32,
                vec![rows * cols],
                bytemuck::cast_slice(&data).to_vec(),
            ));
            reports.push(report("F32".into(), &w, String::new()));
            continue;
        }
        let float_out = |dtype: Dtype, tensors: &mut Vec<StTensor>| -> Vec<f32> {
            let (mut bytes, back) = float_bytes(dtype, &w);
            if permute_this {
                let row_bytes = bytes.len() / rows;
                let chunks: Vec<&[u8]> = bytes.chunks_exact(row_bytes).collect();
                bytes = interleaved_to_half(&chunks, rows, head_dim).concat();
            }
            tensors.push(st(name.clone(), dtype, vec![rows, cols], bytes));
            back
        };
        let stored_float = match spec.scheme {
            Scheme::F32 => Some(Dtype::F32),
            Scheme::F16 => Some(Dtype::F16),
            Scheme::BF16 => Some(Dtype::BF16),
            _ => None,
        };
        if !is_linear(role) || layout == Layout::Float {
            let dtype = stored_float.unwrap_or(float_dtype);
            let back = float_out(dtype, &mut tensors);
            let why = if stored_float.is_some() {
                String::new()
            } else {
                "dequantized: the layout stores this tensor as a float".into()
            };
            reports.push(report(format!("{dtype:?}"), &back, why));
            continue;
        }
        match layout {
            Layout::Gptq => {
                if !grid.packs(rows, cols) {
                    let back = float_out(float_dtype, &mut tensors);
                    skipped.push(module.clone());
                    let why = format!(
                        "{rows}x{cols} does not pack in {}-bit words{}: left unquantized (listed in quantize_config.json)",
                        grid.bits,
                        if grid.group > 0 {
                            format!(" / groups of {}", grid.group)
                        } else {
                            String::new()
                        }
                    );
                    reports.push(report(format!("{float_dtype:?}"), &back, why));
                    continue;
                }
                let (mut ir, why) = if GptqGrid::of(&spec) == Some(grid) {
                    let mut ir = IntRows::from_view(&v)?;
                    // act-order: the checkpoint's column order, groups as g_idx (desc_act)
                    if let Some(perm) = eqf.input_perm(role, t.layer) {
                        ir.unpermute_cols(perm);
                    }
                    (ir, String::new())
                } else {
                    let bytes = AlignedBytes::from(&rtn(grid.spec(), rows, cols, &w)?);
                    let view = TensorView::new(grid.spec(), rows as u32, cols as u32, bytes.as_bytes())
                        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                    (
                        IntRows::from_view(&view)?,
                        format!(
                            "{from} is not the checkpoint's grid {}: requantized",
                            crate::quantize::spec_name(&grid.spec())
                        ),
                    )
                };
                let back: Vec<f32> = (0..rows * cols).map(|i| ir.value(i / cols, i % cols)).collect();
                let why = if why.is_empty() && !spec.scheme.is_asym() {
                    why
                } else if why.is_empty() {
                    "zero points rounded to integers (GPTQ stores integer zeros)".into()
                } else {
                    why
                };
                if permute_this {
                    ir.permute_rows(head_dim);
                }
                tensors.extend(ir.pack(&module, grid.bits));
                reports.push(report(format!("gptq-{}bit-g{}", grid.bits, grid.group), &back, why));
            }
            Layout::Fp8 => {
                let requant;
                let (view, why) = if spec == fp8_spec && eqf.input_perm(role, t.layer).is_none() {
                    (v, String::new())
                } else {
                    requant = AlignedBytes::from(&rtn(fp8_spec, rows, cols, &w)?);
                    let view = TensorView::new(fp8_spec, rows as u32, cols as u32, requant.as_bytes())
                        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                    let why = format!(
                        "{from} is not the checkpoint's {}: requantized",
                        crate::quantize::spec_name(&fp8_spec)
                    );
                    (view, why)
                };
                let spec_out = view.spec;
                let mut back = vec![0f32; rows * cols];
                for r in 0..rows {
                    view.dequantize_row(r, &mut back[r * cols..(r + 1) * cols]);
                }
                let mut codes = view.codes[..rows * cols].to_vec();
                let mut scales = match view.scales {
                    Scales::F32(s) => s.to_vec(),
                    _ => bail!("{name}: FP8 tensor without f32 scales"),
                };
                let scale_shape = match spec_out.granularity {
                    Granularity::PerTensor => vec![1],
                    Granularity::PerChannel => vec![rows, 1],
                    _ => vec![rows.div_ceil(spec_out.group as usize), cols.div_ceil(spec_out.group as usize)],
                };
                if permute_this {
                    // Rows move within a head; blocks that hold whole heads keep their scales.
                    ensure!(
                        spec_out.granularity != Granularity::Block || spec_out.group as usize % head_dim == 0,
                        "{name}: {}-row FP8 blocks split {head_dim}-row heads, so the q/k rows cannot be permuted to Hugging Face's RoPE layout exactly; requantize per channel first",
                        spec_out.group
                    );
                    let chunks: Vec<&[u8]> = codes.chunks_exact(cols).collect();
                    codes = interleaved_to_half(&chunks, rows, head_dim).concat();
                    if spec_out.granularity == Granularity::PerChannel {
                        scales = interleaved_to_half(&scales, rows, head_dim);
                    }
                }
                tensors.push(st(name.clone(), Dtype::F8_E4M3, vec![rows, cols], codes));
                tensors.push(st(
                    format!("{module}.weight_scale"),
                    Dtype::F32,
                    scale_shape,
                    bytemuck::cast_slice(&scales).to_vec(),
                ));
                reports.push(report("F8_E4M3".into(), &back, why));
            }
            _ => unreachable!("float handled above"),
        }
    }

    // config.json
    let family_qwen = qkv_bias;
    let mut config = json!({
        "architectures": [if family_qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": if family_qwen { "qwen2" } else { "llama" },
        "hidden_size": c.dim,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": c.tied_embeddings(),
        "bos_token_id": c.bos_id,
        "eos_token_id": c.eos_id,
        "torch_dtype": dtype_name(float_dtype),
        "use_cache": true,
    });
    if !family_qwen {
        config["attention_bias"] = json!(false);
        config["mlp_bias"] = json!(false);
    }
    if c.rope_scaling != 0 {
        config["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": c.rope_factor,
            "low_freq_factor": c.rope_low_freq_factor,
            "high_freq_factor": c.rope_high_freq_factor,
            "original_max_position_embeddings": c.rope_original_max_pos,
        });
    }
    let quant_cfg = match layout {
        Layout::Gptq => {
            let mut q = json!({
                "quant_method": "gptq",
                "checkpoint_format": "gptq",
                "bits": grid.bits,
                "group_size": if grid.group == 0 { -1 } else { grid.group as i64 },
                "sym": grid.sym,
                "desc_act": c.input_perm(),
                "static_groups": false,
                "true_sequential": true,
                "damp_percent": 0.01,
                "lm_head": false,
                "model_file_base_name": "model",
                "meta": {"quantizer": [format!("edgeq:{}", env!("CARGO_PKG_VERSION"))]},
            });
            if !skipped.is_empty() {
                // transformers/optimum: the modules quantized in every block
                // (when the skipped ones are the same in every block);
                // GPTQModel: per-module exclusions.
                let suffix = |m: &str| m.splitn(4, '.').nth(3).unwrap_or(m).to_string();
                let all = [
                    "self_attn.q_proj",
                    "self_attn.k_proj",
                    "self_attn.v_proj",
                    "self_attn.o_proj",
                    "mlp.gate_proj",
                    "mlp.up_proj",
                    "mlp.down_proj",
                ];
                let skipped_suffixes: std::collections::BTreeSet<String> = skipped.iter().map(|m| suffix(m)).collect();
                let uniform = skipped.len() == skipped_suffixes.len() * c.n_layers as usize;
                if uniform {
                    let keep: Vec<&str> = all.iter().copied().filter(|s| !skipped_suffixes.contains(*s)).collect();
                    q["modules_in_block_to_quantize"] = json!([keep]);
                }
                let dynamic: serde_json::Map<String, Value> = skipped
                    .iter()
                    .map(|m| (format!("-:^{}$", m.replace('.', "\\.")), json!({})))
                    .collect();
                q["dynamic"] = Value::Object(dynamic);
            }
            Some(q)
        }
        Layout::Fp8 => {
            let (strategy, block) = match fp8_spec.granularity {
                Granularity::PerTensor => ("tensor", Value::Null),
                Granularity::Block => ("block", json!([fp8_spec.group, fp8_spec.group])),
                _ => ("channel", Value::Null),
            };
            let mut ignore = vec![json!("lm_head")];
            ignore.extend(skipped.iter().map(|m| json!(m)));
            // Dynamic FP8 activations, when every exported FP8 linear runs them the same way.
            let modes: std::collections::BTreeSet<Option<edgeq_core::ActMode>> = eqf
                .tensors()
                .iter()
                .filter(|t| t.layer != edgeq_core::format::GLOBAL_LAYER && t.scheme == fp8_spec.scheme as u8)
                .filter_map(|t| {
                    TensorRole::from_u16(t.role)
                        .filter(|r| r.is_linear())
                        .map(|r| eqf.act_quant(r, t.layer).map(|a| a.mode))
                })
                .collect();
            let input_activations = match modes.iter().collect::<Vec<_>>()[..] {
                [Some(edgeq_core::ActMode::Fp8Token)] => json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "token",
                    "dynamic": true, "group_size": null, "observer": null}),
                [Some(edgeq_core::ActMode::Fp8Group128)] => json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "group",
                    "dynamic": true, "group_size": 128, "observer": null}),
                _ => Value::Null,
            };
            Some(json!({
                "quant_method": "compressed-tensors",
                "format": "float-quantized",
                "quantization_status": "compressed",
                "config_groups": {"group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 8, "type": "float", "symmetric": true, "strategy": strategy,
                                "block_structure": block, "group_size": null, "dynamic": false, "observer": "minmax"},
                    "input_activations": input_activations,
                    "output_activations": null,
                }},
                "ignore": ignore,
                "kv_cache_scheme": null,
            }))
        }
        _ => None,
    };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(q) = &quant_cfg {
        config["quantization_config"] = q.clone();
        if layout == Layout::Gptq {
            files.push(("quantize_config.json".into(), serde_json::to_vec_pretty(q)?));
        }
    }
    files.push(("config.json".into(), serde_json::to_vec_pretty(&config)?));
    files.push((
        "generation_config.json".into(),
        serde_json::to_vec_pretty(&json!({"bos_token_id": c.bos_id, "eos_token_id": c.eos_id}))?,
    ));
    files.push(("tokenizer.json".into(), hf_tokenizer::tokenizer_json(&tok)?.into_bytes()));
    let template = meta.get("chat_template").and_then(Value::as_str);
    files.push((
        "tokenizer_config.json".into(),
        hf_tokenizer::tokenizer_config_json(&tok, template, c.max_seq_len)?.into_bytes(),
    ));
    files.extend(shards(tensors, opts.max_shard_bytes)?);
    Ok(HfExport { layout, files, reports })
}

/// Weights as `model.safetensors`, or shards of at most `max` bytes and
/// `model.safetensors.index.json`.
fn shards(tensors: Vec<StTensor>, max: u64) -> Result<Vec<(String, Vec<u8>)>> {
    let mut groups: Vec<Vec<StTensor>> = vec![Vec::new()];
    let mut size = 0u64;
    let total: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();
    for t in tensors {
        let n = t.data.len() as u64;
        if size > 0 && size + n > max {
            groups.push(Vec::new());
            size = 0;
        }
        size += n;
        groups.last_mut().expect("one group").push(t);
    }
    let count = groups.len();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let mut files = Vec::new();
    let mut weight_map = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        let file = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        };
        let mut views = Vec::with_capacity(g.len());
        for t in g {
            let v = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map_err(|e| anyhow::anyhow!("tensor {}: {e}", t.name))?;
            views.push((t.name.clone(), v));
            weight_map.insert(t.name.clone(), file.clone());
        }
        let bytes = safetensors::tensor::serialize(views, Some(meta.clone())).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        files.push((file, bytes));
    }
    if count > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        files.push(("model.safetensors.index.json".into(), serde_json::to_vec_pretty(&index)?));
    }
    if count == 0 {
        bail!("no tensors");
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::AlignedBytes;
    use std::path::{Path, PathBuf};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("edgeq-hf-export-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn export_to(eqf: &[u8], layout: Layout, max_shard_bytes: u64) -> (TempDir, HfExport) {
        let b = AlignedBytes::from(eqf);
        let e = Eqf::parse(b.as_bytes()).unwrap();
        let out = export(&e, Options { layout, max_shard_bytes }).unwrap();
        let dir = TempDir::new(layout.name());
        crate::model_file::write_dir_atomic(&dir.0, &out.files).unwrap();
        (dir, out)
    }

    fn reimport(dir: &Path) -> Vec<u8> {
        crate::import::hf::import(dir).unwrap().to_eqf().unwrap()
    }

    /// (name, scheme, dequantized values) of every tensor, q/k rows (and
    /// biases) in Hugging Face's half-split order.
    fn values(eqf: &[u8]) -> Vec<(String, String, Vec<f32>)> {
        let b = AlignedBytes::from(eqf);
        let e = Eqf::parse(b.as_bytes()).unwrap();
        let c = *e.config();
        let mut v: Vec<_> = e
            .tensors()
            .iter()
            .map(|t| {
                let role = TensorRole::from_u16(t.role).unwrap();
                let mut w = crate::quantize::to_f32(&e, t).unwrap();
                if c.flags & flags::ROPE_HALF == 0 && matches!(role, TensorRole::Wq | TensorRole::Wk) {
                    w = interleaved_to_half(&w, t.rows as usize, c.head_dim as usize);
                }
                let spec = crate::quantize::spec_name(&record_spec(t).unwrap());
                (t.name_str().to_string(), spec, w)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn logits(eqf: &[u8], toks: &[u32]) -> Vec<f32> {
        crate::tiny::last_logits(eqf, toks).unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// EQF → HF → EQF carries the exactly mapped schemes bit for bit (same
    /// scheme, same values), gives the same logits, and exporting the
    /// re-imported model again writes the same files.
    #[test]
    fn exact_schemes_round_trip_through_hf_layouts() {
        for (scheme, layout) in [
            ("q4-g32", Layout::Gptq),
            ("q8-g32", Layout::Gptq),
            ("q4-ch", Layout::Gptq),
            ("fp8-e4m3-ch", Layout::Fp8),
            ("fp8-e4m3-t", Layout::Fp8),
            ("fp8-e4m3-b32", Layout::Fp8),
            ("f32", Layout::Float),
            ("bf16", Layout::Float),
        ] {
            let eqf = crate::tiny::eqf(5, scheme).unwrap();
            let (dir, out) = export_to(&eqf, Layout::Auto, 5 << 30);
            assert_eq!(out.layout, layout, "{scheme}");
            let linear: Vec<_> = out.reports.iter().filter(|r| r.from == scheme).collect();
            assert!(!linear.is_empty(), "{scheme}");
            assert!(
                out.reports.iter().all(|r| r.exact && r.rel_err == 0.0),
                "{scheme}: {:?}",
                out.reports
            );
            let back = reimport(&dir.0);
            let (a, b) = (values(&eqf), values(&back));
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert_eq!((&x.0, &x.1), (&y.0, &y.1), "{scheme}");
                assert!(x.2.iter().zip(&y.2).all(|(p, q)| p.to_bits() == q.to_bits()), "{scheme}: {}", x.0);
            }
            let toks = [1, 50, 260, 7, 99];
            let d = max_diff(&logits(&eqf, &toks), &logits(&back, &toks));
            assert!(d < 1e-4, "{scheme}: logits differ by {d}");
            let (dir2, _) = export_to(&back, Layout::Auto, 5 << 30);
            for (f, bytes) in &out.files {
                assert_eq!(&std::fs::read(dir2.0.join(f)).unwrap(), bytes, "{scheme}: {f} differs on re-export");
            }
        }
    }

    /// The GPTQ packing, spelled out element by element from AutoGPTQ's
    /// dequantization, equals edgeq's values.
    #[test]
    fn gptq_tensors_dequantize_like_autogptq() {
        let eqf = crate::tiny::eqf(9, "q4-g32").unwrap();
        let (dir, _) = export_to(&eqf, Layout::Gptq, 5 << 30);
        let bytes = std::fs::read(dir.0.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want = values(&eqf);
        let i32s = |n: &str| -> (Vec<usize>, Vec<i32>) {
            let t = st.tensor(n).unwrap();
            assert_eq!(t.dtype(), Dtype::I32, "{n}");
            (
                t.shape().to_vec(),
                t.data()
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        };
        for (eqf_name, module) in [
            ("blk.1.attn_k", "model.layers.1.self_attn.k_proj"),
            ("blk.0.ffn_down", "model.layers.0.mlp.down_proj"),
        ] {
            let (qs, qweight) = i32s(&format!("{module}.qweight"));
            let (zs, qzeros) = i32s(&format!("{module}.qzeros"));
            let (_, g_idx) = i32s(&format!("{module}.g_idx"));
            let sc = st.tensor(&format!("{module}.scales")).unwrap();
            let scales: Vec<f16> = sc.data().chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect();
            let (k_in, n_out) = (qs[0] * 8, qs[1]);
            assert_eq!(zs[1] * 8, n_out);
            let w = &want.iter().find(|t| t.0 == eqf_name).unwrap().2;
            for k in 0..k_in {
                for n in 0..n_out {
                    let q = (qweight[(k / 8) * n_out + n] >> (4 * (k % 8))) & 0xF;
                    let g = g_idx[k] as usize;
                    let z = ((qzeros[g * (n_out / 8) + n / 8] >> (4 * (n % 8))) & 0xF) + 1;
                    let v = scales[g * n_out + n].to_f32() * (q - z) as f32;
                    assert_eq!(v.to_bits(), w[n * k_in + k].to_bits(), "{module}[{n}, {k}]");
                }
            }
        }
        let cfg: Value = serde_json::from_slice(&std::fs::read(dir.0.join("config.json")).unwrap()).unwrap();
        let q = &cfg["quantization_config"];
        assert_eq!(
            (
                q["quant_method"].as_str(),
                q["bits"].as_u64(),
                q["group_size"].as_i64(),
                q["sym"].as_bool()
            ),
            (Some("gptq"), Some(4), Some(32), Some(true))
        );
        assert_eq!(cfg["torch_dtype"], "float16");
    }

    /// Schemes without an exact layout are requantized and their error
    /// reported; asymmetric GPTQ rounds its zero points.
    #[test]
    fn inexact_schemes_report_their_error() {
        for (scheme, layout, bound) in [
            ("q4a-g32", Layout::Gptq, 1e-4),
            ("q4-g64", Layout::Fp8, 1e-2),
            ("fp8-e5m2-t", Layout::Gptq, 0.05),
            ("q8-ch", Layout::Float, 1e-6),
        ] {
            let eqf = crate::tiny::eqf(5, scheme).unwrap();
            let (dir, out) = export_to(&eqf, layout, 5 << 30);
            let linear: Vec<_> = out.reports.iter().filter(|r| r.from == scheme).collect();
            assert!(!linear.is_empty(), "{scheme}");
            for r in &linear {
                assert!(!r.exact && r.rel_err > 0.0 && r.rel_err < bound, "{scheme} -> {layout:?}: {r:?}");
            }
            let back = reimport(&dir.0);
            let toks = [1, 50, 260];
            let (a, b) = (logits(&eqf, &toks), logits(&back, &toks));
            assert!(max_diff(&a, &b) < 0.5, "{scheme}: {}", max_diff(&a, &b));
        }
    }

    /// Big models are sharded with an index, and the shards import.
    #[test]
    fn shards_with_index() {
        let eqf = crate::tiny::eqf(5, "q4-g32").unwrap();
        let (dir, out) = export_to(&eqf, Layout::Gptq, 20_000);
        let names: Vec<&str> = out.files.iter().map(|f| f.0.as_str()).collect();
        assert!(names.contains(&"model.safetensors.index.json"), "{names:?}");
        assert!(names.iter().filter(|n| n.starts_with("model-0000")).count() > 1, "{names:?}");
        let (one, _) = export_to(&eqf, Layout::Gptq, 5 << 30);
        let a = values(&reimport(&dir.0));
        let b = values(&reimport(&one.0));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.2, y.2, "{}", x.0);
        }
    }

    /// Interleaved-RoPE rows are permuted to the half-split order.
    #[test]
    fn interleaved_to_half_matches_hf_permute() {
        let (rows, cols, heads) = (16, 3, 2);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        assert_eq!(
            interleaved_to_half(&w, rows, rows / heads),
            crate::tiny::permute(&w, heads, rows, cols)
        );
    }
}
