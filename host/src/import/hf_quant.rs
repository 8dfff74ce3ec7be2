//! Quantized Hugging Face checkpoints → EQF tensors: the GPTQ packing
//! (AutoGPTQ / GPTQModel `qweight`, `qzeros`, `scales`, `g_idx`) and FP8
//! (`float8_e4m3fn` weights with `weight_scale`, as llm-compressor's
//! compressed-tensors writes them, or `weight_scale_inv` with block scales,
//! as DeepSeek / Qwen FP8 releases do). See [`crate::export::hf`] for the
//! layouts.
//!
//! Carried exactly where EQF has the grid: GPTQ 4/8-bit symmetric with
//! groups that are multiples of 32 (or per channel) and no act-order
//! permutation → Q4/Q8 sym (same codes, same f16 scales); FP8 E4M3 per
//! tensor, per channel or in square blocks → EQF FP8 (same codes, same f32
//! scales). Asymmetric GPTQ becomes Q4/Q8 asym with `min = −scale·zero`
//! rounded to f16; anything else (act-order `g_idx`, 2/3-bit, odd groups) is
//! dequantized to f32. Each approximation is reported.
use anyhow::{bail, ensure, Context, Result};
use edgeq_core::{Granularity, QuantSpec, Scheme};
use half::f16;
use serde_json::Value;

/// The checkpoint's `quantization_config`.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantConfig {
    None,
    Gptq {
        bits: u32,
        /// Elements per group; -1 = per channel.
        group: i64,
        desc_act: bool,
        /// `checkpoint_format: gptq_v2` (GPTQModel): zeros stored as is,
        /// not minus one.
        v2: bool,
    },
    /// FP8 E4M3 weights; `block` = tile edge for block scaling.
    Fp8 {
        block: Option<u32>,
        /// Activation quantization the checkpoint declares (FP8_DYNAMIC:
        /// per token; FP8_BLOCK / DeepSeek-V3: per 128-group), run by edgeq
        /// dynamically; `None` = weight-only.
        acts: Option<edgeq_core::ActMode>,
    },
}

/// The activation mode of a compressed-tensors `input_activations` entry.
fn ct_acts(a: Option<&Value>) -> Option<edgeq_core::ActMode> {
    let a = a.filter(|v| v.is_object())?;
    if a.get("type").and_then(Value::as_str) != Some("float") || a.get("num_bits").and_then(Value::as_u64) != Some(8) {
        return None;
    }
    match (
        a.get("strategy").and_then(Value::as_str),
        a.get("group_size").and_then(Value::as_u64),
    ) {
        (Some("group"), Some(128)) => Some(edgeq_core::ActMode::Fp8Group128),
        // token, or static per-tensor scales: edgeq scales per token, dynamically
        _ => Some(edgeq_core::ActMode::Fp8Token),
    }
}

/// Reads `quantization_config` from `config.json` (or `quantize_config.json`).
pub fn parse(config: &Value, quantize_config: Option<&Value>) -> Result<QuantConfig> {
    let Some(q) = config.get("quantization_config").filter(|v| !v.is_null()).or(quantize_config) else {
        return Ok(QuantConfig::None);
    };
    let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("gptq");
    match method {
        "gptq" => {
            let bits = q.get("bits").and_then(Value::as_u64).context("quantization_config.bits missing")? as u32;
            ensure!(
                matches!(bits, 2 | 4 | 8),
                "GPTQ with {bits} bits is not supported (2, 4 and 8 pack evenly into int32 words)"
            );
            let group = q.get("group_size").and_then(Value::as_i64).unwrap_or(128);
            ensure!(group == -1 || group > 0, "quantization_config.group_size {group} is invalid");
            let fmt = q.get("checkpoint_format").and_then(Value::as_str).unwrap_or("gptq");
            ensure!(
                fmt == "gptq" || fmt == "gptq_v2",
                "GPTQ checkpoint_format \"{fmt}\" is not supported (gptq, gptq_v2); marlin / bitblas repacked checkpoints must be converted back first"
            );
            Ok(QuantConfig::Gptq {
                bits,
                group,
                desc_act: q.get("desc_act").and_then(Value::as_bool).unwrap_or(false),
                v2: fmt == "gptq_v2",
            })
        }
        "compressed-tensors" => {
            let groups = q
                .get("config_groups")
                .and_then(Value::as_object)
                .context("compressed-tensors: no config_groups")?;
            let mut block = None;
            let mut acts = None;
            for (name, g) in groups {
                acts = acts.or(ct_acts(g.get("input_activations")));
                let w = g
                    .get("weights")
                    .with_context(|| format!("compressed-tensors: config_groups.{name} has no weights"))?;
                let ty = w.get("type").and_then(Value::as_str).unwrap_or("");
                let bits = w.get("num_bits").and_then(Value::as_u64).unwrap_or(0);
                ensure!(
                    ty == "float" && bits == 8,
                    "compressed-tensors: config_groups.{name} has {bits}-bit {ty} weights; only 8-bit float (FP8) is supported"
                );
                if w.get("strategy").and_then(Value::as_str) == Some("block") {
                    let b = w
                        .get("block_structure")
                        .and_then(Value::as_array)
                        .context("compressed-tensors: block strategy without block_structure")?;
                    let dims: Vec<u64> = b.iter().filter_map(Value::as_u64).collect();
                    ensure!(
                        dims.len() == 2 && dims[0] == dims[1],
                        "compressed-tensors: block_structure {b:?} is not square"
                    );
                    block = Some(dims[0] as u32);
                }
            }
            let fmt = q.get("format").and_then(Value::as_str).unwrap_or("float-quantized");
            ensure!(
                fmt == "float-quantized" || fmt == "naive-quantized",
                "compressed-tensors format \"{fmt}\" is not supported (float-quantized)"
            );
            Ok(QuantConfig::Fp8 { block, acts })
        }
        "fp8" => {
            let block = match q.get("weight_block_size").and_then(Value::as_array) {
                Some(b) => {
                    let dims: Vec<u64> = b.iter().filter_map(Value::as_u64).collect();
                    ensure!(dims.len() == 2 && dims[0] == dims[1], "fp8: weight_block_size {b:?} is not square");
                    Some(dims[0] as u32)
                }
                None => None,
            };
            let acts = match (q.get("activation_scheme").and_then(Value::as_str), block) {
                (Some("dynamic"), Some(128)) => Some(edgeq_core::ActMode::Fp8Group128),
                (Some("dynamic"), _) => Some(edgeq_core::ActMode::Fp8Token),
                _ => None,
            };
            Ok(QuantConfig::Fp8 { block, acts })
        }
        other => bail!("quant_method \"{other}\" is not supported (gptq, compressed-tensors FP8, fp8)"),
    }
}

fn i32s(b: &[u8]) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// A converted tensor: EQF bytes in `spec`, or dequantized f32 values.
pub enum Converted {
    Exact(QuantSpec, Vec<u8>),
    /// Carried with a rounding (asym min); the note says what.
    Approx(QuantSpec, Vec<u8>, String),
    F32(Vec<f32>, String),
    /// An act-order layer (`desc_act`, scattered `g_idx` groups) stored with
    /// its columns sorted by group: the bytes are in that order, and
    /// `perm[i]` is the checkpoint column of stored column `i` (EQF 1.3
    /// INPUT_PERM; the runtime gathers the input).
    Permuted(Box<Converted>, Vec<u32>),
}

/// The column order that makes `g_idx` groups contiguous ranges of
/// `group_len` (stable: by group, then by column), if the groups have
/// exactly those sizes (GPTQ's act-order groups do).
fn contiguous_order(gi: &[usize], group_len: usize) -> Option<Vec<u32>> {
    let mut perm: Vec<u32> = (0..gi.len() as u32).collect();
    perm.sort_by_key(|&c| gi[c as usize]);
    perm.iter()
        .enumerate()
        .all(|(i, &c)| gi[c as usize] == i / group_len)
        .then_some(perm)
}

/// Writes an EQF integer tensor from unsigned codes (`rows`×`cols`), per-group
/// f16 scales and (asym) mins; padding codes are the zero point.
fn int_bytes(spec: QuantSpec, rows: usize, cols: usize, codes: &[u8], zeros: &[u8], scales: &[f16], mins: &[f16]) -> Result<Vec<u8>> {
    let l = spec.layout(rows as u32, cols as u32).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = vec![0u8; l.total_bytes as usize];
    let (gpr, g) = (l.groups_per_row as usize, l.group_len as usize);
    let q4 = spec.scheme.code_bits() == 4;
    let stride = l.row_stride as usize;
    for r in 0..rows {
        let row = &mut out[r * stride..(r + 1) * stride];
        for k in 0..l.padded_cols as usize {
            let u = if k < cols { codes[r * cols + k] } else { zeros[r * gpr + k / g] };
            let c = if spec.scheme == Scheme::Q8Sym { u.wrapping_sub(128) } else { u };
            if q4 {
                let (blk, j) = (k / 32, k % 32);
                let b = &mut row[blk * 16 + j % 16];
                *b |= if j < 16 { c & 0xF } else { c << 4 };
            } else {
                row[k] = c;
            }
        }
    }
    let so = l.scales_offset as usize;
    out[so..so + 2 * scales.len()].copy_from_slice(bytemuck::cast_slice(scales));
    if spec.scheme.is_asym() {
        let mo = l.mins_offset as usize;
        out[mo..mo + 2 * mins.len()].copy_from_slice(bytemuck::cast_slice(mins));
    }
    Ok(out)
}

/// One GPTQ linear layer (`rows` = out features, `cols` = in features) from
/// its raw little-endian `qweight`, `qzeros`, `scales` (f16) and `g_idx`.
#[allow(clippy::too_many_arguments)]
pub fn gptq(
    name: &str,
    rows: usize,
    cols: usize,
    bits: u32,
    group: i64,
    v2: bool,
    qweight: &[u8],
    qzeros: &[u8],
    scales: &[u8],
    g_idx: Option<&[u8]>,
) -> Result<Converted> {
    let w = 32 / bits as usize;
    let mask = (1u32 << bits) - 1;
    let group_len = if group <= 0 { cols } else { group as usize };
    let groups = cols.div_ceil(group_len);
    ensure!(
        cols % w == 0 && rows % w == 0,
        "{name}: {rows}x{cols} does not pack {w} codes per int32 word"
    );
    ensure!(
        qweight.len() == cols / w * rows * 4,
        "{name}.qweight: {} bytes, expected [{}, {rows}] int32",
        qweight.len(),
        cols / w
    );
    ensure!(
        qzeros.len() == groups * rows / w * 4,
        "{name}.qzeros: {} bytes, expected [{groups}, {}] int32",
        qzeros.len(),
        rows / w
    );
    ensure!(
        scales.len() == groups * rows * 2,
        "{name}.scales: {} bytes, expected [{groups}, {rows}] f16",
        scales.len()
    );
    let qw: Vec<u32> = i32s(qweight).collect();
    let qz: Vec<u32> = i32s(qzeros).collect();
    let sc: Vec<f16> = scales.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect();
    if let Some(i) = sc.iter().position(|s| !s.is_finite()) {
        bail!(
            "{name}.scales: NaN or infinite scale at element {i} (group {}, output {})",
            i / rows,
            i % rows
        );
    }
    // Per-column group (g_idx), checked against the shapes.
    let gi: Vec<usize> = match g_idx {
        Some(b) => {
            ensure!(b.len() == cols * 4, "{name}.g_idx: {} bytes, expected [{cols}] int32", b.len());
            let v: Vec<usize> = i32s(b).map(|x| x as i32 as i64 as usize).collect();
            if let Some(k) = v.iter().position(|&g| g >= groups) {
                bail!("{name}.g_idx[{k}] = {} is out of range (groups: {groups})", v[k] as i64);
            }
            v
        }
        None => (0..cols).map(|k| k / group_len).collect(),
    };
    let trivial = gi.iter().enumerate().all(|(k, &g)| g == k / group_len);
    // Unpack: codes[r·cols + k], zeros[r·groups + g], scales[r·groups + g] (row-major, EQF order).
    let mut codes = vec![0u8; rows * cols];
    for k in 0..cols {
        for r in 0..rows {
            codes[r * cols + k] = ((qw[(k / w) * rows + r] >> (bits as usize * (k % w))) & mask) as u8;
        }
    }
    let mut zeros = vec![0u8; rows * groups];
    let mut scales_r = vec![f16::ZERO; rows * groups];
    for g in 0..groups {
        for r in 0..rows {
            let z = (qz[g * (rows / w) + r / w] >> (bits as usize * (r % w))) & mask;
            // v1 stores zero − 1 (wrapping: a zero point of 0 is stored as all ones).
            let z = if v2 { z } else { (z + 1) & mask };
            zeros[r * groups + g] = z as u8;
            scales_r[r * groups + g] = sc[g * rows + r];
        }
    }
    let value = |r: usize, k: usize| {
        let g = r * groups + gi[k];
        scales_r[g].to_f32() * (codes[r * cols + k] as f32 - zeros[g] as f32)
    };
    let dequant = || (0..rows * cols).map(|i| value(i / cols, i % cols)).collect::<Vec<f32>>();
    let grid_ok = matches!(bits, 4 | 8) && (group <= 0 || group_len % 32 == 0);
    if !grid_ok {
        return Ok(Converted::F32(
            dequant(),
            format!("{bits}-bit GPTQ in groups of {group}: no EQF grid, dequantized to f32"),
        ));
    }
    let perm = if trivial { None } else { contiguous_order(&gi, group_len) };
    if !trivial && perm.is_none() {
        return Ok(Converted::F32(
            dequant(),
            "act-order (desc_act) g_idx with groups of unequal size: dequantized to f32".into(),
        ));
    }
    // Act-order: columns sorted by group (stored order), groups now contiguous.
    let codes = match &perm {
        Some(p) => {
            let mut c = vec![0u8; rows * cols];
            for (dst, src) in c.chunks_exact_mut(cols).zip(codes.chunks_exact(cols)) {
                for (d, &k) in dst.iter_mut().zip(p) {
                    *d = src[k as usize];
                }
            }
            c
        }
        None => codes,
    };
    let wrap = |c: Converted| match perm.clone() {
        Some(p) => Converted::Permuted(Box::new(c), p),
        None => c,
    };
    let mid = 1u8 << (bits - 1);
    let sym = zeros.iter().all(|&z| z == mid);
    let spec = |s: Scheme| {
        if group <= 0 {
            QuantSpec::per_channel(s)
        } else {
            QuantSpec::per_group(s, group as u32)
        }
    };
    if sym {
        let s = spec(if bits == 4 { Scheme::Q4Sym } else { Scheme::Q8Sym });
        return Ok(wrap(Converted::Exact(s, int_bytes(s, rows, cols, &codes, &zeros, &scales_r, &[])?)));
    }
    let s = spec(if bits == 4 { Scheme::Q4Asym } else { Scheme::Q8Asym });
    let mins: Vec<f16> = scales_r
        .iter()
        .zip(&zeros)
        .map(|(s, &z)| f16::from_f32(-s.to_f32() * z as f32))
        .collect();
    let exact = scales_r
        .iter()
        .zip(&zeros)
        .zip(&mins)
        .all(|((s, &z), m)| m.to_f32() == -s.to_f32() * z as f32);
    let bytes = int_bytes(s, rows, cols, &codes, &zeros, &scales_r, &mins)?;
    if exact {
        Ok(wrap(Converted::Exact(s, bytes)))
    } else {
        Ok(wrap(Converted::Approx(
            s,
            bytes,
            "asymmetric GPTQ: min = −scale·zero rounded to f16".into(),
        )))
    }
}

/// One FP8 E4M3 linear layer from its codes and f32 scales of shape
/// `scale_shape` (`[]`/`[1]` per tensor, `[rows]`/`[rows, 1]` per channel,
/// `[⌈rows/B⌉, ⌈cols/B⌉]` blocks).
pub fn fp8(
    name: &str,
    rows: usize,
    cols: usize,
    codes: &[u8],
    scales: &[f32],
    scale_shape: &[usize],
    block: Option<u32>,
) -> Result<Converted> {
    ensure!(
        codes.len() == rows * cols,
        "{name}: {} FP8 codes for a {rows}x{cols} matrix",
        codes.len()
    );
    if let Some(i) = scales.iter().position(|s| !s.is_finite() || *s < 0.0) {
        bail!("{name}: weight_scale[{i}] = {} is not a finite non-negative scale", scales[i]);
    }
    if let Some(i) = codes.iter().position(|&c| c & 0x7F == 0x7F) {
        bail!("{name}: FP8 code at element {i} (row {}, column {}) is NaN", i / cols, i % cols);
    }
    let n: usize = scale_shape.iter().product();
    ensure!(
        n == scales.len(),
        "{name}: weight_scale shape {scale_shape:?} holds {n} values, found {}",
        scales.len()
    );
    let block_shape = |b: usize| scale_shape.len() == 2 && scale_shape[0] == rows.div_ceil(b) && scale_shape[1] == cols.div_ceil(b);
    let spec = if let Some(b) = block.filter(|&b| b > 0 && block_shape(b as usize)) {
        QuantSpec {
            scheme: Scheme::Fp8E4M3,
            granularity: Granularity::Block,
            group: b,
        }
    } else if n == 1 {
        QuantSpec {
            scheme: Scheme::Fp8E4M3,
            granularity: Granularity::PerTensor,
            group: 0,
        }
    } else if n == rows && (scale_shape.len() == 1 || scale_shape[1] == 1) {
        QuantSpec::per_channel(Scheme::Fp8E4M3)
    } else {
        let b = match block {
            Some(b) => b as usize,
            None => rows.div_ceil(scale_shape[0].max(1)),
        };
        ensure!(
            b > 0 && block_shape(b),
            "{name}: weight_scale shape {scale_shape:?} matches neither per-tensor, per-channel nor {b}x{b} blocks of a {rows}x{cols} matrix"
        );
        QuantSpec {
            scheme: Scheme::Fp8E4M3,
            granularity: Granularity::Block,
            group: b as u32,
        }
    };
    let l = spec.layout(rows as u32, cols as u32).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let mut out = vec![0u8; l.total_bytes as usize];
    out[..codes.len()].copy_from_slice(codes);
    let so = l.scales_offset as usize;
    out[so..so + 4 * scales.len()].copy_from_slice(bytemuck::cast_slice(scales));
    Ok(Converted::Exact(spec, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A 8×64 4-bit GPTQ layer in groups of 32, packed by hand: codes
    /// `(3k + n) % 16`, zero points `zero(g, n)`, scales `0.5 + n/16`.
    fn layer(zero: impl Fn(usize, usize) -> u32, v2: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let (n_out, k_in, groups) = (8, 64, 2);
        let mut qw = vec![0u32; k_in / 8 * n_out];
        for k in 0..k_in {
            for n in 0..n_out {
                qw[(k / 8) * n_out + n] |= (((3 * k + n) % 16) as u32) << (4 * (k % 8));
            }
        }
        let mut qz = vec![0u32; groups * n_out / 8];
        for g in 0..groups {
            for n in 0..n_out {
                let z = if v2 { zero(g, n) } else { zero(g, n).wrapping_sub(1) & 0xF };
                qz[g * (n_out / 8) + n / 8] |= z << (4 * (n % 8));
            }
        }
        let sc: Vec<u8> = (0..groups * n_out)
            .flat_map(|i| f16::from_f32(0.5 + (i % n_out) as f32 / 16.0).to_le_bytes())
            .collect();
        (bytemuck::cast_slice(&qw).to_vec(), bytemuck::cast_slice(&qz).to_vec(), sc)
    }

    fn values(c: &Converted, rows: usize, cols: usize) -> Vec<f32> {
        match c {
            Converted::Exact(s, b) | Converted::Approx(s, b, _) => {
                let a = crate::import::AlignedBytes::from(b);
                let v = edgeq_core::TensorView::new(*s, rows as u32, cols as u32, a.as_bytes()).unwrap();
                let mut out = vec![0f32; rows * cols];
                for r in 0..rows {
                    v.dequantize_row(r, &mut out[r * cols..(r + 1) * cols]);
                }
                out
            }
            Converted::F32(v, _) => v.clone(),
            Converted::Permuted(inner, perm) => {
                let mut v = values(inner, rows, cols);
                crate::quantize::unpermute_cols(&mut v, cols, perm);
                v
            }
        }
    }

    fn want(zero: impl Fn(usize, usize) -> u32) -> Vec<f32> {
        let mut w = vec![0f32; 8 * 64];
        for n in 0..8 {
            for k in 0..64 {
                let s = f16::from_f32(0.5 + n as f32 / 16.0).to_f32();
                w[n * 64 + k] = s * (((3 * k + n) % 16) as f32 - zero(k / 32, n) as f32);
            }
        }
        w
    }

    #[test]
    fn symmetric_gptq_is_carried_exactly_in_both_checkpoint_formats() {
        for v2 in [false, true] {
            let (qw, qz, sc) = layer(|_, _| 8, v2);
            let c = gptq("m", 8, 64, 4, 32, v2, &qw, &qz, &sc, None).unwrap();
            assert!(matches!(c, Converted::Exact(s, _) if s == QuantSpec::per_group(Scheme::Q4Sym, 32)));
            assert_eq!(values(&c, 8, 64), want(|_, _| 8));
        }
    }

    #[test]
    fn asymmetric_gptq_keeps_codes_and_reports_min_rounding() {
        let zero = |g: usize, n: usize| ((g * 5 + n) % 16) as u32; // includes 0, stored as 15 in v1
        let (qw, qz, sc) = layer(zero, false);
        let c = gptq("m", 8, 64, 4, 32, false, &qw, &qz, &sc, None).unwrap();
        let got = values(&c, 8, 64);
        let w = want(zero);
        let err = got.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-2, "{err}");
        assert!(matches!(c, Converted::Exact(s, _) | Converted::Approx(s, _, _) if s.scheme == Scheme::Q4Asym));
    }

    #[test]
    fn act_order_is_stored_permuted_with_its_g_idx() {
        let (qw, qz, sc) = layer(|g, _| 8 + g as u32, false);
        // desc_act: groups of 32 scattered over the columns (even → 0, odd → 1)
        let g_idx: Vec<i32> = (0..64).map(|k| k % 2).collect();
        let c = gptq("m", 8, 64, 4, 32, false, &qw, &qz, &sc, Some(bytemuck::cast_slice(&g_idx))).unwrap();
        let Converted::Permuted(inner, perm) = &c else {
            panic!("expected a permuted layer")
        };
        assert!(matches!(**inner, Converted::Exact(s, _) if s == QuantSpec::per_group(Scheme::Q4Asym, 32)));
        assert_eq!(&perm[..4], &[0, 2, 4, 6]);
        assert_eq!(&perm[32..34], &[1, 3]);
        let v = values(&c, 8, 64);
        let s0 = f16::from_f32(0.5).to_f32();
        assert_eq!(v[1], s0 * (3.0 - 9.0)); // row 0, column 1: code 3, group 1 (zero 9)
                                            // groups of unequal size cannot be made contiguous: f32
        let g_idx: Vec<i32> = (0..64).map(|k| (k % 3 == 0) as i32).collect();
        let c = gptq("m", 8, 64, 4, 32, false, &qw, &qz, &sc, Some(bytemuck::cast_slice(&g_idx))).unwrap();
        let Converted::F32(v, why) = &c else { panic!("expected f32") };
        assert!(why.contains("act-order"), "{why}");
        assert_eq!(v[1], s0 * (3.0 - 8.0)); // column 1 is in group 0 here
    }

    #[test]
    fn corrupt_gptq_tensors_are_named_errors() {
        let (qw, qz, sc) = layer(|_, _| 8, false);
        let e = |r: Result<Converted>| format!("{:#}", r.err().expect("error"));
        assert!(e(gptq("L.q", 8, 64, 4, 32, false, &qw[4..], &qz, &sc, None)).contains("L.q.qweight"));
        assert!(e(gptq("L.q", 8, 64, 4, 32, false, &qw, &qz[..2], &sc, None)).contains("L.q.qzeros"));
        let mut bad = sc.clone();
        bad[6..8].copy_from_slice(&f16::NAN.to_le_bytes());
        assert!(e(gptq("L.q", 8, 64, 4, 32, false, &qw, &qz, &bad, None)).contains("NaN"));
        let g: Vec<i32> = (0..64).map(|k| if k == 5 { 7 } else { 0 }).collect();
        assert!(e(gptq("L.q", 8, 64, 4, 32, false, &qw, &qz, &sc, Some(bytemuck::cast_slice(&g)))).contains("g_idx[5]"));
        assert!(e(gptq("L.q", 6, 64, 4, 32, false, &qw, &qz, &sc, None)).contains("does not pack"));
    }

    #[test]
    fn fp8_scales_select_the_granularity() {
        let codes: Vec<u8> = (0..64 * 48).map(|i| (i % 100) as u8).collect();
        let spec = |c: Converted| match c {
            Converted::Exact(s, _) => s,
            _ => panic!(),
        };
        assert_eq!(
            spec(fp8("m", 64, 48, &codes, &[2.0], &[1], None).unwrap()).granularity,
            Granularity::PerTensor
        );
        assert_eq!(
            spec(fp8("m", 64, 48, &codes, &[1.0; 64], &[64, 1], None).unwrap()).granularity,
            Granularity::PerChannel
        );
        let b = spec(fp8("m", 64, 48, &codes, &[1.0; 4], &[2, 2], Some(32)).unwrap());
        assert_eq!((b.granularity, b.group), (Granularity::Block, 32));
        let e = fp8("m", 64, 48, &codes, &[1.0; 6], &[3, 2], Some(32)).err().unwrap();
        assert!(format!("{e:#}").contains("weight_scale shape"));
        let mut nan = codes.clone();
        nan[50] = 0x7F;
        assert!(format!("{:#}", fp8("m", 64, 48, &nan, &[2.0], &[1], None).err().unwrap()).contains("NaN"));
    }

    #[test]
    fn quantization_config_parsing() {
        let g = parse(
            &json!({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": true}}),
            None,
        )
        .unwrap();
        assert_eq!(
            g,
            QuantConfig::Gptq {
                bits: 4,
                group: 128,
                desc_act: true,
                v2: false
            }
        );
        assert!(parse(&json!({"quantization_config": {"quant_method": "gptq", "bits": 3}}), None).is_err());
        assert!(parse(&json!({"quantization_config": {"quant_method": "awq", "bits": 4}}), None).is_err());
        let ct = json!({"quantization_config": {"quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]}}}}});
        assert_eq!(
            parse(&ct, None).unwrap(),
            QuantConfig::Fp8 {
                block: Some(128),
                acts: None
            }
        );
        assert_eq!(
            parse(&json!({}), Some(&json!({"bits": 8, "group_size": -1}))).unwrap(),
            QuantConfig::Gptq {
                bits: 8,
                group: -1,
                desc_act: false,
                v2: false
            }
        );
        assert_eq!(parse(&json!({}), None).unwrap(), QuantConfig::None);
    }
}
