//! `edgeq quantize`: which tensors get which scheme (the policy), and the
//! round-to-nearest (RTN) quantizer applied tensor by tensor with rayon.
use crate::tensor_data::TensorData;
use anyhow::{bail, Context, Result};
use edgeq_core::format::writer::{ActEntry, EqfWriter, PermEntry, TensorEntry};
use edgeq_core::{ActMode, Eqf, QuantSpec, Scheme, TensorRecord, TensorRole};
use globset::Glob;
use rayon::prelude::*;

/// What to do with each tensor.
pub struct Policy {
    /// Scheme for the linear layers of the blocks.
    pub linear: QuantSpec,
    /// Scheme for the token embedding and the classifier (8-bit or higher
    /// by default: they are the most sensitive tensors).
    pub embeddings: Option<QuantSpec>,
    /// Tensors (canonical names, e.g. `blk.*.ffn_down`) left as they are.
    pub skip: Vec<Pattern>,
    /// Per-module precision, first match wins: (pattern, scheme or `None`
    /// = keep as stored). Overridden tensors are not given to a calibrated
    /// method; they are quantized by RTN in their own scheme.
    pub overrides: Vec<(String, Pattern, Option<QuantSpec>)>,
}

/// A tensor-name pattern: a glob (`blk.*.ffn_down`), or with a `re:` prefix
/// a regular expression that must match the whole name
/// (`re:blk\.(0|1|2)\.attn_.*`).
#[derive(Debug, Clone)]
pub enum Pattern {
    Glob(globset::GlobMatcher),
    Regex(regex::Regex),
}

impl Pattern {
    pub fn new(p: &str) -> Result<Pattern> {
        Ok(match p.strip_prefix("re:") {
            Some(r) => Pattern::Regex(regex::Regex::new(&format!("^(?:{r})$")).with_context(|| format!("bad regular expression '{r}'"))?),
            None => Pattern::Glob(Glob::new(p).with_context(|| format!("bad glob '{p}'"))?.compile_matcher()),
        })
    }
    pub fn is_match(&self, name: &str) -> bool {
        match self {
            Pattern::Glob(g) => g.is_match(name),
            Pattern::Regex(r) => r.is_match(name),
        }
    }
}

/// Mixed-precision presets (`--policy`), composable with every method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Every linear layer.
    All,
    /// Only the MLP (gate, up, down); attention kept as stored.
    MlpOnly,
    /// Only attention (q, k, v, o); the MLP kept as stored.
    AttnOnly,
}

impl Policy {
    pub fn new(linear: QuantSpec, embeddings: Option<QuantSpec>, skip: &[String]) -> Result<Policy> {
        let skip = skip
            .iter()
            .map(|s| Pattern::new(s).with_context(|| format!("--skip '{s}'")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Policy {
            linear,
            embeddings,
            skip,
            overrides: Vec::new(),
        })
    }

    /// Adds mixed precision: `overrides` (`GLOB=SCHEME`, SCHEME a name like
    /// `q8-ch`, `q4-g64`, `f16`, or `keep`), then the first and last
    /// `sandwich` blocks kept as stored, then the preset; earlier rules win.
    pub fn with_mixed(mut self, overrides: &[String], sandwich: u32, n_layers: u32, preset: Preset) -> Result<Policy> {
        let mut rules: Vec<(String, Option<QuantSpec>)> = Vec::new();
        for o in overrides {
            let (pat, scheme) = o
                .rsplit_once('=')
                .with_context(|| format!("--override '{o}': expected GLOB=SCHEME, e.g. 'blk.0.*=q8-ch'"))?;
            let spec = match scheme {
                "keep" => None,
                s => Some(
                    spec_from_name(s, 32)
                        .ok()
                        .flatten()
                        .map_or_else(|| parse_spec_name(s), Ok)
                        .with_context(|| format!("--override '{o}'"))?,
                ),
            };
            rules.push((pat.to_string(), spec));
        }
        for l in 0..sandwich.min(n_layers) {
            rules.push((format!("blk.{l}.*"), None));
            rules.push((format!("blk.{}.*", n_layers - 1 - l), None));
        }
        match preset {
            Preset::All => {}
            Preset::MlpOnly => rules.push(("blk.*.attn_*".into(), None)),
            Preset::AttnOnly => rules.push(("blk.*.ffn_*".into(), None)),
        }
        for (pat, spec) in rules {
            let m = Pattern::new(&pat)?;
            self.overrides.push((pat, m, spec));
        }
        Ok(self)
    }

    fn override_of(&self, t: &TensorRecord) -> Option<Option<QuantSpec>> {
        self.overrides.iter().find(|o| o.1.is_match(t.name_str())).map(|o| o.2)
    }

    /// The target spec of a tensor, or None to keep it as stored.
    pub fn target(&self, t: &TensorRecord) -> Option<QuantSpec> {
        let role = TensorRole::from_u16(t.role)?;
        if self.skip.iter().any(|p| p.is_match(t.name_str())) || role.is_vector() {
            return None;
        }
        if let Some(o) = self.override_of(t) {
            return o;
        }
        match role {
            TensorRole::TokEmbd | TensorRole::Output => self.embeddings,
            r if r.is_linear() => Some(self.linear),
            _ => None,
        }
    }

    /// Whether a calibrated method (GPTQ, AWQ, HQQ) quantizes this tensor:
    /// a linear layer in the method's grid, not overridden.
    pub fn calibrated(&self, t: &TensorRecord) -> bool {
        self.override_of(t).is_none() && self.target(t).is_some()
    }
}

/// Parses a scheme name with bits/group/symmetry into a spec.
pub fn spec_from_args(bits: u32, group: i64, sym: bool, fp8: Option<&str>) -> Result<QuantSpec> {
    if let Some(f) = fp8 {
        let scheme = match f {
            "e4m3" => Scheme::Fp8E4M3,
            "e5m2" => Scheme::Fp8E5M2,
            _ => bail!("--fp8 must be e4m3 or e5m2"),
        };
        return Ok(match group {
            -1 | 0 => QuantSpec::per_channel(scheme),
            g => QuantSpec {
                scheme,
                granularity: edgeq_core::Granularity::Block,
                group: g as u32,
            },
        });
    }
    let scheme = match (bits, sym) {
        (4, true) => Scheme::Q4Sym,
        (4, false) => Scheme::Q4Asym,
        (8, true) => Scheme::Q8Sym,
        (8, false) => Scheme::Q8Asym,
        (16, _) => Scheme::F16,
        (32, _) => Scheme::F32,
        _ => bail!("--bits must be 4, 8, 16 or 32 (got {bits})"),
    };
    if bits >= 16 {
        return Ok(QuantSpec::float(scheme));
    }
    let spec = if group <= 0 {
        QuantSpec::per_channel(scheme)
    } else {
        QuantSpec::per_group(scheme, group as u32)
    };
    spec.validate().map_err(|e| anyhow::anyhow!("--group {group}: {e}"))?;
    Ok(spec)
}

/// Parses a short scheme name used for `--embed` (`keep` = leave as stored).
pub fn spec_from_name(name: &str, group: i64) -> Result<Option<QuantSpec>> {
    Ok(Some(match name {
        "keep" => return Ok(None),
        "f32" => QuantSpec::F32,
        "f16" => QuantSpec::float(Scheme::F16),
        "bf16" => QuantSpec::float(Scheme::BF16),
        "q8" => QuantSpec::per_channel(Scheme::Q8Sym),
        "q8a" => QuantSpec::per_channel(Scheme::Q8Asym),
        "q4" => spec_from_args(4, group, true, None)?,
        "q4a" => spec_from_args(4, group, false, None)?,
        _ => bail!("unknown scheme '{name}' (f32, f16, bf16, q8, q8a, q4, q4a, keep)"),
    }))
}

/// Report line of one quantized tensor.
pub struct TensorReport {
    pub name: String,
    pub from: String,
    pub to: String,
    /// ||W − Ŵ||² / ||W||²
    pub rel_err: f64,
}

/// Dequantizes a stored tensor to f32 (row-major), in the model's column
/// order: an act-order layer stored with permuted columns (INPUT_PERM) is
/// put back, `W[:, perm[i]] = W'[:, i]`.
pub fn to_f32(eqf: &Eqf<'_>, t: &TensorRecord) -> Result<Vec<f32>> {
    let v = eqf.view(t).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (rows, cols) = (v.rows(), v.cols());
    let mut out = vec![0.0f32; rows * cols];
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        v.dequantize_row(r, row);
    }
    if let Some(perm) = TensorRole::from_u16(t.role).and_then(|role| eqf.input_perm(role, t.layer)) {
        unpermute_cols(&mut out, cols, perm);
    }
    Ok(out)
}

/// `w[:, perm[i]] = stored[:, i]` in place, row by row.
pub fn unpermute_cols(w: &mut [f32], cols: usize, perm: &[u32]) {
    let mut tmp = vec![0.0f32; cols];
    for row in w.chunks_exact_mut(cols) {
        for (i, &p) in perm.iter().enumerate() {
            tmp[p as usize] = row[i];
        }
        row.copy_from_slice(&tmp);
    }
}

/// RTN-quantizes every tensor the policy selects; returns the new file and a report.
pub fn quantize_rtn(eqf: &Eqf<'_>, policy: &Policy, progress: &indicatif::ProgressBar) -> Result<(Vec<u8>, Vec<TensorReport>)> {
    let (w, reports) = quantize_rtn_except(
        eqf,
        policy,
        &std::collections::HashSet::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        progress,
    )?;
    Ok((w.try_finish()?, reports))
}

/// FP8 activation records (`mode`) for every block linear the policy
/// quantizes to FP8 (the classifier keeps f32 activations, as `lm_head`
/// is excluded in the FP8 recipes).
pub fn fp8_act_entries(eqf: &Eqf<'_>, policy: &Policy, mode: ActMode) -> Vec<ActEntry> {
    eqf.tensors()
        .iter()
        .filter(|t| t.layer != edgeq_core::format::GLOBAL_LAYER && policy.target(t).is_some_and(|s| s.scheme.is_fp8()))
        .filter_map(|t| {
            Some(ActEntry {
                role: TensorRole::from_u16(t.role)?,
                layer: t.layer,
                mode,
                threshold: 0.0,
                outliers: Vec::new(),
            })
        })
        .collect()
}

/// Per-token integer activation records (`bits` 8: int8; 4: int4 with the
/// clip ratio `clip`) for every block linear the policy quantizes to an
/// integer scheme whose groups are whole 32-blocks (what the int8 kernels
/// need). Returns the records and the names of the linears left with float
/// activations because their layout does not allow it (e.g. per-channel
/// scales over 172 columns).
pub fn int_act_entries(eqf: &Eqf<'_>, policy: &Policy, bits: u32, clip: f32) -> Result<(Vec<ActEntry>, Vec<String>)> {
    let (mode, threshold) = match bits {
        8 => (ActMode::Int8Token, 0.0),
        4 => {
            anyhow::ensure!(clip > 0.0 && clip <= 1.0, "--act-clip {clip}: must be in (0, 1]");
            (ActMode::Int4Token, clip)
        }
        b => bail!("activation bits {b}: 8 or 4"),
    };
    let mut out = Vec::new();
    let mut float = Vec::new();
    for t in eqf.tensors().iter().filter(|t| t.layer != edgeq_core::format::GLOBAL_LAYER) {
        let Some(role) = TensorRole::from_u16(t.role).filter(|r| r.is_linear()) else {
            continue;
        };
        let Some(spec) = policy.target(t) else { continue };
        if !spec.scheme.is_int() {
            continue;
        }
        if spec.layout(t.rows, t.cols).is_ok_and(|l| l.group_len % 32 == 0) {
            out.push(ActEntry {
                role,
                layer: t.layer,
                mode,
                threshold,
                outliers: Vec::new(),
            });
        } else {
            float.push(t.name_str().to_string());
        }
    }
    Ok((out, float))
}

/// Like [`quantize_rtn`], but tensors whose `(layer, role)` is in `done`
/// are taken from `done_entries` (already quantized by another method), and
/// the file is returned unserialized: [`write_eqf`] streams it to disk
/// without a second copy of the tensor data in memory.
pub fn quantize_rtn_except(
    eqf: &Eqf<'_>,
    policy: &Policy,
    done: &std::collections::HashSet<(u16, u16)>,
    done_entries: Vec<TensorEntry<TensorData>>,
    done_perms: Vec<PermEntry>,
    acts: Vec<ActEntry>,
    progress: &indicatif::ProgressBar,
) -> Result<(EqfWriter<TensorData>, Vec<TensorReport>)> {
    progress.set_length(eqf.tensors().len() as u64);
    // (entry, input permutation kept with its bytes, report)
    type Out = (TensorEntry<TensorData>, Option<Vec<u32>>, Option<TensorReport>);
    let results: Vec<Result<Out>> = eqf
        .tensors()
        .par_iter()
        .filter(|t| !done.contains(&(t.layer, t.role)))
        .map(|t| {
            let spec = edgeq_core::format::record_spec(t).map_err(|e| anyhow::anyhow!("{e}"))?;
            let role = TensorRole::from_u16(t.role).context("unknown role")?;
            let target = policy.target(t).filter(|s| *s != spec);
            let entry = |spec, data| TensorEntry {
                role,
                layer: t.layer,
                spec,
                rows: t.rows,
                cols: t.cols,
                data: TensorData::Owned(data),
            };
            let out = match target {
                None => {
                    let data = eqf.tensor_bytes(t).map_err(|e| anyhow::anyhow!("{e}"))?;
                    (entry(spec, data.to_vec()), eqf.input_perm(role, t.layer).map(|p| p.to_vec()), None)
                }
                Some(to) => {
                    let (data, rel_err) = rtn_in_row_chunks(eqf, t, to)?;
                    let rep = TensorReport {
                        name: t.name_str().to_string(),
                        from: spec_name(&spec),
                        to: spec_name(&to),
                        rel_err,
                    };
                    // to_f32 gave the model's column order: no permutation
                    (entry(to, data), None, Some(rep))
                }
            };
            progress.inc(1);
            Ok(out)
        })
        .collect();
    let mut w = EqfWriter::with_sources(*eqf.config(), eqf.tokenizer_bytes().to_vec());
    w.metadata = eqf.metadata().to_vec();
    // Activation records: the new ones, and the input's for tensors that keep their bytes.
    w.acts = acts;
    for r in eqf.act_section().records() {
        let (Some(role), Some(t)) = (
            TensorRole::from_u16(r.role),
            eqf.tensors().iter().find(|t| (t.layer, t.role) == (r.layer, r.role)),
        ) else {
            continue;
        };
        let requantized =
            done.contains(&(r.layer, r.role)) || policy.target(t).is_some_and(|s| Some(s) != edgeq_core::format::record_spec(t).ok());
        if !requantized && !w.acts.iter().any(|a| (a.layer, a.role) == (r.layer, role)) {
            if let Some(a) = eqf.act_quant(role, r.layer) {
                w.acts.push(ActEntry {
                    role,
                    layer: r.layer,
                    mode: a.mode,
                    threshold: a.threshold,
                    outliers: a.outliers.to_vec(),
                });
            }
        }
    }
    let mut reports = Vec::new();
    for mut e in done_entries {
        // Layers a calibrated pipeline passed through in f32 (AWQ keeps the
        // smoothing scales folded into them) get their override's scheme,
        // or their stored float type back when they are kept.
        if e.spec == QuantSpec::F32 {
            if let Some(rec) = eqf.find(e.role, e.layer) {
                let stored = edgeq_core::format::record_spec(rec).map_err(|x| anyhow::anyhow!("{x}"))?;
                let to = policy.target(rec).or(Some(stored).filter(|s| s.scheme.is_float()));
                if let Some(to) = to.filter(|s| *s != QuantSpec::F32) {
                    let vals: Vec<f32> = e
                        .data
                        .to_vec()
                        .with_context(|| format!("tensor '{}'", rec.name_str()))?
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    let layout = to
                        .layout(e.rows, e.cols)
                        .map_err(|x| anyhow::anyhow!("tensor '{}': {x}", rec.name_str()))?;
                    let mut data = vec![0u8; layout.total_bytes as usize];
                    edgeq_core::quant::quantize(to, e.rows, e.cols, &vals, &mut data)
                        .map_err(|x| anyhow::anyhow!("tensor '{}': {x}", rec.name_str()))?;
                    e.spec = to;
                    e.data = TensorData::Owned(data);
                }
            }
        }
        w.add(e).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut perms = done_perms;
    for r in results {
        let (e, perm, rep) = r?;
        if let Some(perm) = perm {
            perms.push(PermEntry {
                role: e.role,
                layer: e.layer,
                perm,
            });
        }
        w.add(e).map_err(|e| anyhow::anyhow!("{e}"))?;
        reports.extend(rep);
    }
    for p in perms {
        w.add_perm(p.role, p.layer, p.perm).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok((w, reports))
}

/// Writes `w` to `path` atomically, streamed piece by piece, and returns the
/// file's size.
pub fn write_eqf(path: &std::path::Path, w: EqfWriter<TensorData>) -> Result<u64> {
    use std::io::Write;
    let mut n = 0u64;
    crate::model_file::write_atomic_with(path, |out| {
        w.finish_into(|b| {
            n += b.len() as u64;
            out.write_all(b)
        })
        .map_err(Into::into)
    })?;
    Ok(n)
}

/// Source elements dequantized at a time by [`rtn_in_row_chunks`] (64 MiB of f32).
const RTN_CHUNK_ELEMS: usize = 16 << 20;

/// RTN of tensor `t` to `to`, a chunk of rows at a time where the layout
/// allows it (float and integer schemes: rows are independent, their codes,
/// scales and minimums are row-major runs): the tensor is never held in
/// f32 (a 128256 × 2048 embedding would be 1.05 GB). FP8 schemes, whose
/// scales may span rows or the whole tensor, take the tensor at once.
/// Returns the encoded bytes (identical to quantizing the whole tensor) and
/// the relative reconstruction error.
fn rtn_in_row_chunks(eqf: &Eqf<'_>, t: &TensorRecord, to: QuantSpec) -> Result<(Vec<u8>, f64)> {
    rtn_in_row_chunks_of(eqf, t, to, RTN_CHUNK_ELEMS)
}

fn rtn_in_row_chunks_of(eqf: &Eqf<'_>, t: &TensorRecord, to: QuantSpec, chunk_elems: usize) -> Result<(Vec<u8>, f64)> {
    let name = t.name_str();
    let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("tensor '{name}': {e}");
    let layout = to.layout(t.rows, t.cols).map_err(|e| bad(&e))?;
    let (rows, cols) = (t.rows as usize, t.cols as usize);
    let chunk = if to.scheme.is_float() || to.scheme.is_int() {
        (chunk_elems / cols.max(1)).clamp(1, rows)
    } else {
        rows
    };
    let v = eqf.view(t).map_err(|e| bad(&e))?;
    let perm = TensorRole::from_u16(t.role).and_then(|role| eqf.input_perm(role, t.layer));
    let mut out = vec![0u8; layout.total_bytes as usize];
    let (mut num, mut den) = (0.0f64, 0.0f64);
    let mut w = Vec::new();
    for r0 in (0..rows).step_by(chunk) {
        let n = chunk.min(rows - r0);
        w.clear();
        w.resize(n * cols, 0.0f32);
        for (i, row) in w.chunks_exact_mut(cols).enumerate() {
            v.dequantize_row(r0 + i, row);
        }
        if let Some(perm) = perm {
            unpermute_cols(&mut w, cols, perm); // the model's column order
        }
        if let Some(i) = w.iter().position(|x| !x.is_finite()) {
            bail!(
                "tensor '{name}': weight [row {}, column {}] is {}: fix the checkpoint (or keep this tensor unquantized with --skip)",
                r0 + i / cols,
                i % cols,
                w[i]
            );
        }
        let lc = to.layout(n as u32, t.cols).map_err(|e| bad(&e))?;
        let mut part = vec![0u8; lc.total_bytes as usize];
        // quantize writes f16/f32 values with to_le_bytes: no alignment needed
        edgeq_core::quant::quantize(to, n as u32, t.cols, &w, &mut part).map_err(|e| bad(&e))?;
        let (a, b) = reconstruction_sums(&w, to, n as u32, t.cols, &part)?;
        (num, den) = (num + a, den + b);
        if n == rows {
            out = part;
            break;
        }
        // Rows r0..r0+n of each row-major region: codes, then f16 scales and minimums.
        let at = |off: u64, per_row: u64| (off + r0 as u64 * per_row) as usize;
        let codes = lc.codes_bytes as usize;
        out[at(0, layout.row_stride)..][..codes].copy_from_slice(&part[..codes]);
        let g = layout.groups_per_row as u64 * 2;
        for (off, off_c, count) in [
            (layout.scales_offset, lc.scales_offset, lc.n_scales),
            (layout.mins_offset, lc.mins_offset, lc.n_mins),
        ] {
            let len = count as usize * 2;
            out[at(off, g)..][..len].copy_from_slice(&part[off_c as usize..][..len]);
        }
    }
    Ok((out, if den > 0.0 { num / den } else { 0.0 }))
}

/// Σ (w − ŵ)² and Σ w² of `data` (`spec`'s encoding of `w`).
fn reconstruction_sums(w: &[f32], spec: QuantSpec, rows: u32, cols: u32, data: &[u8]) -> Result<(f64, f64)> {
    let aligned = crate::import::AlignedBytes::from(data);
    let v = edgeq_core::TensorView::new(spec, rows, cols, aligned.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut row = vec![0.0f32; cols as usize];
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for r in 0..rows as usize {
        v.dequantize_row(r, &mut row);
        for (a, b) in w[r * cols as usize..].iter().zip(&row) {
            num += ((a - b) as f64).powi(2);
            den += (*a as f64).powi(2);
        }
    }
    Ok((num, den))
}

/// Parses what [`spec_name`] prints: `q4-g32`, `q8a-ch`, `fp8-e4m3-b128`,
/// `fp8-e5m2-t`, `f16`, ...
pub fn parse_spec_name(name: &str) -> Result<QuantSpec> {
    use edgeq_core::Scheme::*;
    let all = [F32, F16, BF16, Q8Sym, Q8Asym, Q4Sym, Q4Asym, Fp8E4M3, Fp8E5M2];
    // Longest scheme name that prefixes `name` ("q4a" before "q4").
    let scheme = all
        .iter()
        .filter(|s| name.starts_with(s.name()))
        .max_by_key(|s| s.name().len())
        .copied()
        .ok_or_else(|| anyhow::anyhow!("unknown scheme {name:?}: expected e.g. q4-g32, q4a-g32, q8-ch, q8a-g64, f16, f32, fp8-e4m3-ch"))?;
    let rest = &name[scheme.name().len()..];
    let spec = match rest {
        "" if scheme.is_float() => QuantSpec::float(scheme),
        "-ch" if !scheme.is_float() => QuantSpec::per_channel(scheme),
        "-t" if scheme.is_fp8() => QuantSpec {
            granularity: edgeq_core::Granularity::PerTensor,
            ..QuantSpec::per_channel(scheme)
        },
        _ => {
            let (kind, g) = rest.split_at(rest.len().min(2));
            let g: u32 = g.parse().map_err(|_| anyhow::anyhow!("bad scheme name {name:?}"))?;
            match kind {
                "-g" if scheme.is_int() => QuantSpec::per_group(scheme, g),
                "-b" if scheme.is_fp8() => QuantSpec {
                    granularity: edgeq_core::Granularity::Block,
                    group: g,
                    ..QuantSpec::per_channel(scheme)
                },
                _ => anyhow::bail!("bad scheme name {name:?}"),
            }
        }
    };
    spec.layout(1, spec.group.max(32))?;
    Ok(spec)
}

pub fn spec_name(s: &QuantSpec) -> String {
    use edgeq_core::Granularity::*;
    match s.granularity {
        PerGroup => format!("{}-g{}", s.scheme.name(), s.group),
        PerChannel => format!("{}-ch", s.scheme.name()),
        Block => format!("{}-b{}", s.scheme.name(), s.group),
        PerTensor if s.scheme.is_fp8() => format!("{}-t", s.scheme.name()),
        PerTensor => s.scheme.name().to_string(),
    }
}

#[cfg(test)]
mod perm_tests {
    use crate::algo::gptq::{gptq, GptqConfig, Hessian};
    use crate::algo::Grid;
    use crate::import::AlignedBytes;
    use edgeq_core::format::writer::{EqfWriter, TensorEntry};
    use edgeq_core::{Eqf, QuantSpec, TensorRole};
    use edgeq_runtime::{Activations, MatmulOpts};

    fn logits(eqf: &[u8], toks: &[u32]) -> Vec<f32> {
        let b = AlignedBytes::from(eqf);
        let m = edgeq_runtime::Model::from_bytes(b.as_bytes()).unwrap();
        let mut arena = vec![0u8; edgeq_runtime::arena_bytes(&m.cfg, 16, 1)];
        let mut s = edgeq_runtime::Session::new(&m, &mut arena, 16, 1).unwrap();
        s.set_matmul(MatmulOpts {
            acts: Activations::F32,
            threads: 1,
        });
        let mut out = Vec::new();
        for &t in toks {
            out = s.step(t).unwrap().to_vec();
        }
        out
    }

    /// Copies `src` with `(role, layer 0)` replaced, and its permutation.
    fn replaced(src: &Eqf<'_>, role: TensorRole, spec: QuantSpec, data: Vec<u8>, perm: Option<Vec<u32>>) -> Vec<u8> {
        let mut w = EqfWriter::new(*src.config(), src.tokenizer_bytes().to_vec());
        for t in src.tensors() {
            let r = TensorRole::from_u16(t.role).unwrap();
            let (spec, data) = if (r, t.layer) == (role, 0) {
                (spec, data.clone())
            } else {
                (edgeq_core::format::record_spec(t).unwrap(), src.tensor_bytes(t).unwrap().to_vec())
            };
            w.add(TensorEntry {
                role: r,
                layer: t.layer,
                spec,
                rows: t.rows,
                cols: t.cols,
                data,
            })
            .unwrap();
        }
        if let Some(p) = perm {
            w.add_perm(role, 0, p).unwrap();
        }
        w.finish()
    }

    /// A GPTQ act-order layer with dynamic groups stored permuted (EQF 1.3)
    /// runs like the same weights stored densely in the model's order, and
    /// `to_f32` puts its columns back; without the permutation the model
    /// computes something else.
    #[test]
    fn act_order_layers_run_with_their_permutation() {
        let f32_file = crate::tiny::model(7).unwrap().to_eqf().unwrap();
        let b = AlignedBytes::from(&f32_file);
        let src = Eqf::parse(b.as_bytes()).unwrap();
        // One group (q: 32 columns) keeps the column order; ffn_down (64) has two.
        let (_, _, none) = {
            let t = src.find(TensorRole::Wq, 0).unwrap();
            let w = super::to_f32(&src, t).unwrap();
            let mut h = Hessian::new(t.cols as usize);
            h.add_batch(&w, t.rows as usize);
            let cfg = GptqConfig {
                act_order: true,
                ..GptqConfig::new(Grid {
                    bits: 4,
                    group: 32,
                    sym: true,
                })
            };
            gptq(&w, t.rows as usize, t.cols as usize, &h, &cfg)
                .unwrap()
                .0
                .to_eqf_permuted()
                .unwrap()
        };
        assert!(none.is_none());
        for role in [TensorRole::WDown] {
            let t = src.find(role, 0).unwrap();
            let (rows, cols) = (t.rows as usize, t.cols as usize);
            let w = super::to_f32(&src, t).unwrap();
            // calibration inputs with very unequal channel energies: a real act-order permutation
            let mut x = vec![0.0f32; 64 * cols];
            for (i, v) in x.iter_mut().enumerate() {
                let c = i % cols;
                *v = (((i * 7919) % 997) as f32 / 498.5 - 1.0) * (1.0 + (c * 37 % cols) as f32 / 4.0);
            }
            let mut h = Hessian::new(cols);
            h.add_batch(&x, 64);
            let grid = Grid {
                bits: 4,
                group: 32,
                sym: true,
            };
            let cfg = GptqConfig {
                act_order: true,
                ..GptqConfig::new(grid)
            };
            let (q, _) = gptq(&w, rows, cols, &h, &cfg).unwrap();
            let (spec, data, perm) = q.to_eqf_permuted().unwrap();
            let perm = perm.expect("permuted");
            let permuted = replaced(&src, role, spec, data.clone(), Some(perm.clone()));
            assert_eq!(u16::from_le_bytes([permuted[10], permuted[11]]), 3, "EQF 1.3");
            let pb = AlignedBytes::from(&permuted);
            let pe = Eqf::parse(pb.as_bytes()).unwrap();
            let dense = super::to_f32(&pe, pe.find(role, 0).unwrap()).unwrap();
            let reference = replaced(&src, role, QuantSpec::F32, bytemuck::cast_slice(&dense).to_vec(), None);
            let toks = [1u32, 5, 9, 2, 7, 3];
            let (a, r) = (logits(&permuted, &toks), logits(&reference, &toks));
            let d = a.iter().zip(&r).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-4, "{role:?}: permuted vs dense logits differ by {d}");
            // The same bytes without the permutation are a different model.
            let plain = replaced(&src, role, spec, data, None);
            let d = logits(&plain, &toks)
                .iter()
                .zip(&r)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(d > 1e-3, "{role:?}: the permutation must matter ({d})");
        }
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;
    use crate::import::AlignedBytes;
    use edgeq_core::Scheme;

    /// RTN a few rows at a time writes the bytes of RTN over the whole
    /// tensor, for every layout the chunked path takes (codes only, codes +
    /// scales, codes + scales + minimums, per-channel, padded groups), and
    /// FP8 (taken whole) still works.
    #[test]
    fn row_chunks_give_the_whole_tensors_bytes() {
        let eqf = crate::tiny::model(5).unwrap().to_eqf().unwrap();
        let buf = AlignedBytes::from(&eqf);
        let eqf = Eqf::parse(buf.as_bytes()).unwrap();
        let t = eqf.find(TensorRole::TokEmbd, edgeq_core::format::GLOBAL_LAYER).unwrap();
        for to in [
            QuantSpec::float(Scheme::F16),
            QuantSpec::float(Scheme::BF16),
            QuantSpec::per_group(Scheme::Q4Sym, 32),
            QuantSpec::per_group(Scheme::Q4Asym, 32),
            QuantSpec::per_group(Scheme::Q8Asym, 64),
            QuantSpec::per_channel(Scheme::Q8Sym),
            QuantSpec::per_channel(Scheme::Fp8E4M3),
        ] {
            to.layout(t.rows, t.cols).unwrap();
            let (whole, e_whole) = rtn_in_row_chunks_of(&eqf, t, to, usize::MAX).unwrap();
            let (chunked, e_chunked) = rtn_in_row_chunks_of(&eqf, t, to, 3 * t.cols as usize + 5).unwrap();
            assert!(t.rows > 3, "the test needs several chunks");
            assert_eq!(whole, chunked, "{to:?}");
            assert!(
                (e_whole - e_chunked).abs() <= 1e-9 * e_whole.max(1e-30),
                "{to:?}: {e_whole} vs {e_chunked}"
            );
            assert!(to.scheme.is_float() || e_whole > 0.0);
        }
    }
}
