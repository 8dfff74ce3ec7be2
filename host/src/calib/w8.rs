//! The 8-bit family over a whole model: per-channel INT8 (symmetric,
//! asymmetric or decided per layer), SmoothQuant W8A8 and LLM.int8().
//! As in the references, the activation statistics come from the
//! full-precision model (SmoothQuant's `get_act_scales`, the observers of
//! llm-compressor): one pass of the runtime's forward over the calibration
//! samples with an [`Observer`] on every linear input, then each layer is
//! quantized on its own.
//!
//! | method      | weights                         | activations (run time)            |
//! |-------------|---------------------------------|-----------------------------------|
//! | int8        | per channel, sym/asym/auto      | as the session says               |
//! | smoothquant | smoothed, per channel absmax/127| int8 per token (`Int8Token`)      |
//! | llm-int8    | per channel absmax/127          | int8 per token + f32 outlier columns (`LlmInt8`) |
//!
//! SmoothQuant (`smooth_lm` for Llama): the inputs of q/k/v and of gate/up
//! are divided by `s` (folded into attn_norm / ffn_norm) and the weights'
//! columns multiplied by `s`; o and down are W8A8 without smoothing.
use super::data::CalibSet;
use super::pipeline::LayerReport;
use crate::algo::int8::{self, Convention, Symmetry};
use crate::quantize::Policy;
use anyhow::{Context, Result};
use edgeq_core::format::writer::{ActEntry, TensorEntry};
use edgeq_core::{ActMode, QuantSpec, TensorRole};
use edgeq_runtime::arena::{Activations, MatmulOpts, SessionOptions};
use edgeq_runtime::{Model, Observer, Session};
use rayon::prelude::*;
use std::ops::ControlFlow;

/// Which 8-bit method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum W8Method {
    Int8,
    SmoothQuant,
    LlmInt8,
}

/// INT8 symmetry choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Int8Mode {
    Sym,
    Asym,
    /// Per layer from the input's symmetry score.
    Auto,
}

#[derive(Debug, Clone, Copy)]
pub struct W8Config {
    pub method: W8Method,
    pub int8_mode: Int8Mode,
    /// Symmetric when the score is above this (auto mode).
    pub sym_threshold: f64,
    pub convention: Convention,
    /// SmoothQuant migration strength.
    pub alpha: f32,
    /// LLM.int8 outlier threshold.
    pub threshold: f32,
}

impl Default for W8Config {
    fn default() -> Self {
        W8Config {
            method: W8Method::Int8,
            int8_mode: Int8Mode::Auto,
            sym_threshold: 0.6,
            convention: Convention::Max127,
            alpha: 0.5,
            threshold: 6.0,
        }
    }
}

/// Input rows kept per linear input for the output-error reports.
const KEEP_ROWS: usize = 256;

/// Statistics of one linear input stream.
#[derive(Clone)]
struct Acc {
    abs_max: Vec<f32>,
    sum: f64,
    sum_sq: f64,
    n: f64,
    rows: Vec<f32>,
}

impl Acc {
    fn new(cols: usize) -> Acc {
        Acc {
            abs_max: vec![0.0; cols],
            sum: 0.0,
            sum_sq: 0.0,
            n: 0.0,
            rows: Vec::new(),
        }
    }
    fn add(&mut self, x: &[f32]) {
        let cols = self.abs_max.len();
        for row in x.chunks_exact(cols) {
            for (m, &v) in self.abs_max.iter_mut().zip(row) {
                *m = m.max(v.abs());
                self.sum += v as f64;
                self.sum_sq += (v as f64) * (v as f64);
            }
        }
        self.n += x.len() as f64;
        let room = (KEEP_ROWS * cols).saturating_sub(self.rows.len());
        self.rows.extend_from_slice(&x[..room.min(x.len())]);
    }
    fn merge(&mut self, o: &Acc) {
        for (a, b) in self.abs_max.iter_mut().zip(&o.abs_max) {
            *a = a.max(*b);
        }
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
        self.n += o.n;
        let room = (KEEP_ROWS * self.abs_max.len()).saturating_sub(self.rows.len());
        self.rows.extend_from_slice(&o.rows[..room.min(o.rows.len())]);
    }
}

/// The four input streams of a block: q/k/v, o, gate/up, down.
fn slot(role: TensorRole) -> Option<usize> {
    match role {
        TensorRole::Wq | TensorRole::Wk | TensorRole::Wv => Some(0),
        TensorRole::Wo => Some(1),
        TensorRole::WGate | TensorRole::WUp => Some(2),
        TensorRole::WDown => Some(3),
        _ => None,
    }
}

struct Stats {
    layers: Vec<[Acc; 4]>,
}

impl Observer for Stats {
    fn linear_input(&mut self, layer: usize, role: TensorRole, x: &[f32], n: usize) -> ControlFlow<()> {
        if let (Some(l), Some(i)) = (self.layers.get_mut(layer), slot(role)) {
            let cols = l[i].abs_max.len();
            l[i].add(&x[..n * cols]);
        }
        ControlFlow::Continue(())
    }
}

fn new_stats(model: &Model<'_>) -> Stats {
    let c = &model.cfg;
    let (dim, qd, hid) = (c.dim as usize, c.q_dim(), c.hidden_dim as usize);
    Stats {
        layers: (0..c.n_layers)
            .map(|_| [Acc::new(dim), Acc::new(qd), Acc::new(dim), Acc::new(hid)])
            .collect(),
    }
}

/// One sample through the model (f32 activations, a session sized for
/// `max_len`) with `obs` on every linear input; an observer's Break ends the
/// pass early without an error.
fn observe<O: Observer>(model: &Model<'_>, sample: &[u32], max_len: usize, obs: &mut O) -> Result<()> {
    let opts = SessionOptions {
        matmul: MatmulOpts {
            acts: Activations::F32,
            threads: 1,
        },
        ..Default::default()
    };
    let bytes = edgeq_runtime::arena_bytes_with(&model.cfg, max_len, max_len, opts.kv);
    let mut arena = vec![0u64; bytes.div_ceil(8)];
    let mut sess =
        Session::with_options(model, bytemuck::cast_slice_mut(&mut arena), max_len, max_len, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    match sess.forward_observed(sample, None, obs) {
        Ok(_) | Err(edgeq_runtime::RuntimeError::Interrupted) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Runs the model on every sample (f32 activations) and gathers the input statistics.
fn collect(model: &Model<'_>, calib: &CalibSet) -> Result<Stats> {
    let max_len = calib.samples.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let st = calib
        .samples
        .par_iter()
        .try_fold(
            || new_stats(model),
            |mut st, s| -> Result<Stats> {
                observe(model, s, max_len, &mut st)?;
                Ok(st)
            },
        )
        .try_reduce(
            || new_stats(model),
            |mut a, b| {
                for (x, y) in a.layers.iter_mut().zip(&b.layers) {
                    for (p, q) in x.iter_mut().zip(y) {
                        p.merge(q);
                    }
                }
                Ok(a)
            },
        )?;
    Ok(st)
}

/// Every input row of one linear layer over the samples (f32 model,
/// exact activations), in sample order: `edgeq calib acts`.
pub fn layer_inputs(model: &Model<'_>, calib: &CalibSet, layer: usize, role: TensorRole) -> Result<Vec<f32>> {
    struct Grab {
        layer: usize,
        role: TensorRole,
        rows: Vec<f32>,
    }
    impl Observer for Grab {
        fn linear_input(&mut self, layer: usize, role: TensorRole, x: &[f32], _n: usize) -> ControlFlow<()> {
            if layer == self.layer && slot(role) == slot(self.role) {
                self.rows.extend_from_slice(x);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let max_len = calib.samples.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let parts: Vec<Result<Vec<f32>>> = calib
        .samples
        .par_iter()
        .map(|s| {
            let mut g = Grab {
                layer,
                role,
                rows: Vec::new(),
            };
            observe(model, s, max_len, &mut g)?;
            Ok(g.rows)
        })
        .collect();
    let mut out = Vec::new();
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// One linear's tensor, and its report and activation record when the method quantized it.
type LayerOut = (TensorEntry, Option<(LayerReport, Option<ActEntry>)>);

/// What the 8-bit methods produce: tensors (quantized linears, plus the
/// rescaled norms and any kept-but-smoothed linear in f32 for the caller's
/// policy to store), reports, and the activation records.
pub struct W8Output {
    pub entries: Vec<TensorEntry>,
    pub reports: Vec<LayerReport>,
    pub acts: Vec<ActEntry>,
}

/// Quantizes every linear the policy gives to the method.
pub fn run(
    model: &Model<'_>,
    calib: Option<&CalibSet>,
    policy: &Policy,
    cfg: &W8Config,
    progress: &indicatif::ProgressBar,
) -> Result<W8Output> {
    let c = &model.cfg;
    let needs_calib = cfg.method == W8Method::SmoothQuant || (cfg.method == W8Method::Int8 && cfg.int8_mode == Int8Mode::Auto);
    let stats = match calib {
        Some(cs) => Some(collect(model, cs)?),
        None if needs_calib => anyhow::bail!("this method needs calibration statistics: pass --calib FILE"),
        None => None,
    };
    progress.set_length(c.n_layers as u64);
    let mut out = W8Output {
        entries: Vec::new(),
        reports: Vec::new(),
        acts: Vec::new(),
    };
    let f32_entry = |role, layer: usize, rows: usize, cols: usize, w: &[f32]| TensorEntry {
        role,
        layer: layer as u16,
        spec: QuantSpec::F32,
        rows: rows as u32,
        cols: cols as u32,
        data: bytemuck::cast_slice(w).to_vec(),
    };
    for l in 0..c.n_layers as usize {
        let b = model.block(l).map_err(|e| anyhow::anyhow!("{e}"))?;
        let acc = stats.as_ref().map(|s| &s.layers[l]);
        // f32 weights of the seven linears
        let mut lin: Vec<(TensorRole, usize, usize, Vec<f32>)> = TensorRole::BLOCK_LINEARS
            .iter()
            .map(|&role| {
                let t = model.eqf.find(role, l as u16).context("tensor")?;
                let w = crate::quantize::to_f32(&model.eqf, t)?;
                crate::algo::ensure_finite(&w, t.cols as usize).with_context(|| format!("tensor {}", t.name_str()))?;
                Ok((role, t.rows as usize, t.cols as usize, w))
            })
            .collect::<Result<_>>()?;
        let orig: Vec<Vec<f32>> = lin.iter().map(|x| x.3.clone()).collect();
        // SmoothQuant: per-channel scales of the two norm-fed groups, folded in.
        let mut smooth: [Option<Vec<f32>>; 4] = [None, None, None, None];
        if cfg.method == W8Method::SmoothQuant {
            let acc = acc.context("calibration statistics")?;
            for (slot_i, norm_role, group) in [
                (0, TensorRole::AttnNorm, &[TensorRole::Wq, TensorRole::Wk, TensorRole::Wv][..]),
                (2, TensorRole::FfnNorm, &[TensorRole::WGate, TensorRole::WUp][..]),
            ] {
                let ws: Vec<(&[f32], usize)> = lin.iter().filter(|x| group.contains(&x.0)).map(|x| (&x.3[..], x.1)).collect();
                let s = int8::smooth_scales(&acc[slot_i].abs_max, &ws, cfg.alpha);
                for x in lin.iter_mut().filter(|x| group.contains(&x.0)) {
                    for row in x.3.chunks_exact_mut(x.2) {
                        row.iter_mut().zip(&s).for_each(|(w, s)| *w *= s);
                    }
                }
                let norm = if norm_role == TensorRole::AttnNorm {
                    b.attn_norm
                } else {
                    b.ffn_norm
                };
                let folded: Vec<f32> = norm.iter().zip(&s).map(|(n, s)| n / s).collect();
                out.entries.push(f32_entry(norm_role, l, 1, folded.len(), &folded));
                smooth[slot_i] = Some(s);
            }
        }
        let results: Vec<Result<LayerOut>> = lin
            .par_iter()
            .zip(&orig)
            .map(|((role, rows, cols, w), w0)| {
                let (role, rows, cols) = (*role, *rows, *cols);
                let t = model.eqf.find(role, l as u16).context("tensor")?;
                let si = slot(role).context("slot")?;
                if !policy.calibrated(t) {
                    // kept: passed through (smoothed in f32 when its group was smoothed)
                    return Ok((f32_entry(role, l, rows, cols, w), None));
                }
                let t0 = std::time::Instant::now();
                let a = acc.map(|a| &a[si]);
                let (sym, sym_stats) = match (cfg.method, cfg.int8_mode) {
                    (W8Method::Int8, Int8Mode::Auto) => {
                        let a = a.context("calibration statistics")?;
                        let st = Symmetry::from_moments(a.sum, a.sum_sq, a.n, cfg.sym_threshold);
                        (st.symmetric, Some(st))
                    }
                    (W8Method::Int8, Int8Mode::Asym) => (false, None),
                    _ => (true, None),
                };
                let conv = if cfg.method == W8Method::Int8 { cfg.convention } else { Convention::Max127 };
                let q = int8::quantize(w, rows, cols, sym, conv);
                let deq = q.dequantize();
                let outliers: Vec<u32> = match (cfg.method, a) {
                    (W8Method::LlmInt8, Some(a)) => (0..cols as u32).filter(|&j| a.abs_max[j as usize] >= cfg.threshold).collect(),
                    _ => Vec::new(),
                };
                let (rel_err, metric) = match a.filter(|a| !a.rows.is_empty()) {
                    None => {
                        let num: f64 = w0.iter().zip(&deq).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                        let den: f64 = w0.iter().map(|a| (*a as f64).powi(2)).sum();
                        (num / den.max(f64::MIN_POSITIVE), "weight")
                    }
                    Some(a) if cfg.method == W8Method::Int8 => (crate::algo::output_rel_err(w0, &deq, &a.rows, rows, cols), "output"),
                    Some(a) => {
                        // the layer as the runtime runs it: X/s rounded per token (outliers kept), Ŵ = Q(W·s)
                        let mut xq = a.rows.clone();
                        if let Some(s) = &smooth[si] {
                            xq.chunks_exact_mut(cols).for_each(|r| r.iter_mut().zip(s).for_each(|(x, s)| *x /= s));
                        }
                        let mut mask = vec![false; cols];
                        outliers.iter().for_each(|&j| mask[j as usize] = true);
                        if cfg.method == W8Method::LlmInt8 {
                            for r in a.rows.chunks_exact(cols) {
                                r.iter().zip(mask.iter_mut()).for_each(|(v, m)| *m |= v.abs() >= cfg.threshold);
                            }
                        }
                        int8::fake_quant_tokens(&mut xq, cols, &mask);
                        (crate::algo::output_rel_err_xq(w0, &a.rows, &deq, &xq, rows, cols), "output (W8A8)")
                    }
                };
                let (spec, data) = q.to_eqf().with_context(|| format!("storing {}", t.name_str()))?;
                let details = match cfg.method {
                    W8Method::Int8 => serde_json::json!({
                        "mode": cfg.int8_mode, "symmetric": sym, "convention": conv,
                        "symmetry": sym_stats, "threshold": cfg.sym_threshold,
                    }),
                    W8Method::SmoothQuant => serde_json::json!({
                        "alpha": cfg.alpha, "smoothed": smooth[si].is_some(), "activations": "int8 per token",
                        "smooth_scale_range": smooth[si].as_ref().map(|s| [s.iter().copied().fold(f32::MAX, f32::min), s.iter().copied().fold(0.0, f32::max)]),
                    }),
                    W8Method::LlmInt8 => serde_json::json!({
                        "threshold": cfg.threshold, "calibrated_outliers": outliers.len(), "outlier_columns": outliers,
                    }),
                };
                let note = match (cfg.method, sym_stats) {
                    (_, Some(st)) => format!(
                        "{} (score {:.3} {} {}; mean {:.4} std {:.4})",
                        if sym { "sym" } else { "asym" },
                        st.score,
                        if sym { ">" } else { "≤" },
                        cfg.sym_threshold,
                        st.mean,
                        st.std
                    ),
                    (W8Method::LlmInt8, _) => format!("{} outlier columns ≥ {}", outliers.len(), cfg.threshold),
                    (W8Method::SmoothQuant, _) if smooth[si].is_some() => format!("smoothed (α {}), W8A8 per token", cfg.alpha),
                    (W8Method::SmoothQuant, _) => "W8A8 per token".into(),
                    _ => String::new(),
                };
                let act = match cfg.method {
                    W8Method::Int8 => None,
                    W8Method::SmoothQuant => Some(ActEntry {
                        role,
                        layer: l as u16,
                        mode: ActMode::Int8Token,
                        threshold: 0.0,
                        outliers: Vec::new(),
                    }),
                    W8Method::LlmInt8 => Some(ActEntry {
                        role,
                        layer: l as u16,
                        mode: ActMode::LlmInt8,
                        threshold: cfg.threshold,
                        outliers,
                    }),
                };
                let rep = LayerReport {
                    tensor: t.name_str().to_string(),
                    scheme: crate::quantize::spec_name(&spec),
                    rel_err,
                    metric,
                    seconds: t0.elapsed().as_secs_f64(),
                    note,
                    details,
                };
                let e = TensorEntry {
                    role,
                    layer: l as u16,
                    spec,
                    rows: rows as u32,
                    cols: cols as u32,
                    data,
                };
                Ok((e, Some((rep, act))))
            })
            .collect();
        for r in results {
            let (e, rep) = r?;
            match rep {
                Some((rep, act)) => {
                    out.reports.push(rep);
                    out.acts.extend(act);
                    out.entries.push(e);
                }
                // Kept layers only need writing when smoothing changed them.
                None if cfg.method == W8Method::SmoothQuant && slot(e.role).is_some_and(|i| smooth[i].is_some()) => out.entries.push(e),
                None => {}
            }
        }
        progress.inc(1);
    }
    Ok(out)
}
