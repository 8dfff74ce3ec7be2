//! The methods behind `--method`: one linear layer at a time (`edgeq
//! layer`, and the hook the sequential pipeline calls per layer).
use crate::algo::adaround::{adaround, AdaRoundConfig};
use crate::algo::gptq::{gptq_owned, GptqConfig, Hessian};
use crate::algo::hqq::HqqConfig;
use crate::algo::{self, Grid, QuantizedLayer};
use crate::calib::pipeline::{LayerJob, MethodHooks};
use anyhow::{bail, Result};

/// Settings of every method (each uses its own).
#[derive(Debug, Clone)]
pub struct MethodArgs {
    pub method: String,
    pub grid: Grid,
    /// GPTQ
    pub act_order: bool,
    pub static_groups: bool,
    pub damp: f64,
    pub blocksize: usize,
    /// HQQ
    pub hqq_axis: usize,
    pub hqq_iters: usize,
    /// AWQ
    pub duo_scaling: bool,
    pub clip: bool,
    /// AdaRound: iterations, regulariser weight, Adam learning rate, warm-up fraction.
    pub ada_iters: usize,
    pub ada_lambda: f32,
    pub ada_lr: f32,
    pub ada_warmup: f32,
}

impl MethodArgs {
    pub fn needs_calibration(&self) -> bool {
        matches!(self.method.as_str(), "gptq" | "awq" | "adaround")
    }
}

/// Quantizes one layer; `x` = calibration inputs (`n × cols`) when the method uses them.
pub fn quantize_layer(a: &MethodArgs, w: &[f32], rows: usize, cols: usize, x: Option<&[f32]>) -> Result<(QuantizedLayer, String)> {
    algo::ensure_finite(w, cols)?;
    match a.method.as_str() {
        "rtn" => Ok((algo::rtn::quantize(w, rows, cols, a.grid), String::new())),
        "gptq" => {
            let Some(x) = x else { bail!("gptq needs calibration activations") };
            let mut h = Hessian::new(cols);
            h.add_batch(x, x.len() / cols);
            gptq_with(a, w, rows, cols, h)
        }
        "adaround" => {
            let Some(x) = x else {
                bail!("adaround needs calibration activations")
            };
            let mut h = Hessian::new(cols);
            h.add_batch(x, x.len() / cols);
            adaround_with(a, w, rows, cols, h.matrix())
        }
        "hqq" => {
            let mut cfg = HqqConfig::for_bits(a.grid.bits);
            if a.grid.group > 0 {
                cfg.group = a.grid.group;
            }
            cfg.axis = a.hqq_axis;
            cfg.iters = a.hqq_iters;
            hqq_rows(w, rows, cols, &cfg)
        }
        "awq" => bail!("awq rescales the layer: use quantize_layer_effective"),
        m => bail!("--method {m}: unknown (rtn, gptq, awq, hqq, adaround)"),
    }
}

fn gptq_with(a: &MethodArgs, w: &[f32], rows: usize, cols: usize, h: Hessian) -> Result<(QuantizedLayer, String)> {
    algo::ensure_finite(w, cols)?;
    let mut cfg = GptqConfig::new(a.grid);
    cfg.act_order = a.act_order;
    // Act-order with dynamic groups scatters a group's columns: the layer is
    // stored with its columns reordered and an input permutation (EQF 1.3).
    cfg.static_groups = a.static_groups;
    cfg.percdamp = a.damp;
    cfg.blocksize = a.blocksize;
    cfg.damp_auto_increase = true;
    let (q, st) = gptq_owned(w, rows, cols, h, &cfg)?;
    let mut note = format!("damp {:.4}", st.percdamp);
    if st.damp_retries > 0 {
        note += &format!(" (Cholesky failed {} times: damping increased from {})", st.damp_retries, a.damp);
    }
    if st.dead_columns > 0 {
        note += &format!(", {} dead columns zeroed", st.dead_columns);
    }
    Ok((q, note))
}

fn adaround_with(a: &MethodArgs, w: &[f32], rows: usize, cols: usize, h: &[f64]) -> Result<(QuantizedLayer, String)> {
    algo::ensure_finite(w, cols)?;
    let mut cfg = AdaRoundConfig::new(a.grid);
    cfg.iters = a.ada_iters;
    cfg.lambda = a.ada_lambda;
    cfg.lr = a.ada_lr;
    cfg.warmup = a.ada_warmup;
    let (q, st) = adaround(w, rows, cols, h, &cfg)?;
    Ok((
        q,
        format!(
            "{} iterations: output loss {:.3e} (round-to-nearest {:.3e}, {:+.1}%), {} of {} weights rounded the other way, {} undecided",
            cfg.iters,
            st.rec_ada,
            st.rec_rtn,
            100.0 * (st.rec_ada / st.rec_rtn.max(1e-30) - 1.0),
            st.flipped,
            rows * cols,
            st.undecided
        ),
    ))
}

/// The pipeline hooks for `a` (GPTQ collects Hessians, AWQ input rows).
pub fn with_hooks<R>(a: &MethodArgs, f: impl FnOnce(&MethodHooks<'_>) -> R) -> R {
    let q = |job: &LayerJob<'_>| -> Result<(QuantizedLayer, String)> {
        if a.method == "gptq" {
            let st = job.stats.ok_or_else(|| anyhow::anyhow!("no calibration statistics"))?;
            let h = Hessian::from_matrix(st.hessian().unwrap_or_default(), job.cols, st.n)?;
            return gptq_with(a, job.w, job.rows, job.cols, h);
        }
        if a.method == "adaround" {
            let st = job.stats.ok_or_else(|| anyhow::anyhow!("no calibration statistics"))?;
            let h = st.hessian().ok_or_else(|| anyhow::anyhow!("no Hessian collected"))?;
            return adaround_with(a, job.w, job.rows, job.cols, &h);
        }
        quantize_layer(a, job.w, job.rows, job.cols, job.stats.map(|s| &s.rows[..]))
    };
    let hooks = MethodHooks {
        name: &a.method,
        needs_inputs: a.needs_calibration(),
        hessian: matches!(a.method.as_str(), "gptq" | "adaround"),
        keep_rows: 512,
        quantize: &q,
    };
    f(&hooks)
}

/// HQQ with EQF's per-row groups: when `cols` is not a multiple of the
/// group, hqq's flat reshape would make groups straddle rows, so the full
/// groups and the partial last group of every row are solved as two
/// matrices (each group's solve is independent; only the early-stop test,
/// a whole-tensor mean, is then taken per part) and stitched back.
fn hqq_rows(w: &[f32], rows: usize, cols: usize, cfg: &algo::hqq::HqqConfig) -> Result<(QuantizedLayer, String)> {
    let g = if cfg.group == 0 { cols } else { cfg.group };
    if cfg.axis != 1 || cols % g == 0 {
        let (q, st) = algo::hqq::hqq(w, rows, cols, cfg)?;
        return Ok((q, format!("{} iterations, mean |W-Ŵ| {:.3e}", st.iters_run, st.final_l1)));
    }
    let full = cols / g * g;
    let rem = cols - full;
    let part = |c0: usize, n: usize| -> Vec<f32> {
        (0..rows)
            .flat_map(|r| w[r * cols + c0..r * cols + c0 + n].iter().copied())
            .collect()
    };
    let mut cfg_rem = cfg.clone();
    cfg_rem.group = rem;
    let tail = algo::hqq::hqq(&part(full, rem), rows, rem, &cfg_rem)?.0;
    let head = if full > 0 {
        Some(algo::hqq::hqq(&part(0, full), rows, full, cfg)?.0)
    } else {
        None
    };
    let ng = cols.div_ceil(g);
    let grid = Grid {
        bits: cfg.bits,
        group: g,
        sym: false,
    };
    let mut q = QuantizedLayer {
        rows,
        cols,
        grid,
        codes: vec![0; rows * cols],
        scales: vec![0.0; rows * ng],
        zeros: vec![0.0; rows * ng],
        g_idx: None,
    };
    for r in 0..rows {
        if let Some(h) = &head {
            let hg = full / g;
            q.codes[r * cols..r * cols + full].copy_from_slice(&h.codes[r * full..(r + 1) * full]);
            q.scales[r * ng..r * ng + hg].copy_from_slice(&h.scales[r * hg..(r + 1) * hg]);
            q.zeros[r * ng..r * ng + hg].copy_from_slice(&h.zeros[r * hg..(r + 1) * hg]);
        }
        q.codes[r * cols + full..(r + 1) * cols].copy_from_slice(&tail.codes[r * rem..(r + 1) * rem]);
        q.scales[r * ng + ng - 1] = tail.scales[r];
        q.zeros[r * ng + ng - 1] = tail.zeros[r];
    }
    Ok((q, format!("partial last group of {rem} solved separately")))
}

/// One layer for the research interface: the quantized layer, a note, and
/// the effective dequantized weight (for AWQ `Q(W·s)·diag(1/s)`; the stored
/// layer is `W·diag(s)`, whose scales fold into the previous operation).
pub fn quantize_layer_effective(
    a: &MethodArgs,
    w: &[f32],
    rows: usize,
    cols: usize,
    x: Option<&[f32]>,
) -> Result<(QuantizedLayer, String, Vec<f32>)> {
    algo::ensure_finite(w, cols)?;
    if a.method == "awq" {
        let Some(x) = x else {
            bail!("awq needs calibration activations (--acts)")
        };
        let cfg = algo::awq::AwqConfig {
            duo_scaling: a.duo_scaling,
            clip: a.clip,
            ..Default::default()
        };
        let (q, s, st) = algo::awq::awq_linear(w, rows, cols, a.grid, x, &cfg)?;
        let mut deq = q.dequantize();
        algo::awq::unscale(&mut deq, cols, &s);
        return Ok((q, format!("best ratio {:.2}, scale loss {:.4e}", st.best_ratio, st.scale_loss), deq));
    }
    let (q, note) = quantize_layer(a, w, rows, cols, x)?;
    let deq = q.dequantize();
    Ok((q, note, deq))
}

/// Settings of the 8-bit methods in the research interface (`edgeq layer`).
#[derive(Debug, Clone)]
pub struct W8LayerArgs {
    /// int8, fp8, llm-int8 or smoothquant.
    pub method: String,
    pub int8: crate::calib::w8::Int8Mode,
    pub sym_threshold: f64,
    pub convention: crate::algo::int8::Convention,
    /// FP8 weights: scheme, and granularity as a spec (tensor / channel / block 128).
    pub fp8: edgeq_core::QuantSpec,
    pub alpha: f32,
    pub threshold: f32,
}

/// One layer through an 8-bit method.
pub struct W8LayerOut {
    /// The effective dequantized weight (SmoothQuant: `Q(W·s)·diag(1/s)`).
    pub deq: Vec<f32>,
    /// The layer output on the evaluation activations as the method computes
    /// it (W8A8 methods quantize the activations per token), `n × rows`.
    pub y: Option<Vec<f32>>,
    pub note: String,
    pub details: serde_json::Value,
}

pub fn is_w8(method: &str) -> bool {
    matches!(method, "int8" | "fp8" | "llm-int8" | "smoothquant")
}

/// `y = X Wᵀ`, `x` being `n × cols`.
fn linear_out(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    x.par_chunks_exact(cols)
        .flat_map_iter(|xi| {
            w.chunks_exact(cols)
                .take(rows)
                .map(move |wr| xi.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32)
        })
        .collect()
}

/// INT8 / FP8 / LLM.int8 / SmoothQuant on one layer. `x`: calibration
/// inputs (INT8 auto symmetry, SmoothQuant's `max|X|`, LLM.int8's stored
/// outlier columns); `eval`: inputs the output is computed on.
pub fn w8_layer(a: &W8LayerArgs, w: &[f32], rows: usize, cols: usize, x: Option<&[f32]>, eval: Option<&[f32]>) -> Result<W8LayerOut> {
    use crate::algo::int8::{self, Convention, Symmetry};
    use crate::calib::w8::Int8Mode;
    algo::ensure_finite(w, cols)?;
    let abs_max = |x: &[f32]| {
        let mut m = vec![0.0f32; cols];
        for r in x.chunks_exact(cols) {
            m.iter_mut().zip(r).for_each(|(m, v)| *m = m.max(v.abs()));
        }
        m
    };
    Ok(match a.method.as_str() {
        "int8" => {
            let sym = match (a.int8, x) {
                (Int8Mode::Sym, _) => (true, None),
                (Int8Mode::Asym, _) => (false, None),
                (Int8Mode::Auto, Some(x)) => {
                    let st = Symmetry::of(x, a.sym_threshold);
                    (st.symmetric, Some(st))
                }
                (Int8Mode::Auto, None) => bail!("--int8 auto decides from the layer's inputs: pass --acts X.npy"),
            };
            let deq = int8::quantize(w, rows, cols, sym.0, a.convention).dequantize();
            W8LayerOut {
                y: eval.map(|e| linear_out(&deq, rows, cols, e)),
                deq,
                note: format!(
                    "{}{}",
                    if sym.0 { "sym" } else { "asym" },
                    sym.1.map_or(String::new(), |s| format!(" (score {:.3})", s.score))
                ),
                details: serde_json::json!({"symmetric": sym.0, "symmetry": sym.1, "convention": a.convention}),
            }
        }
        "fp8" => {
            let spec = a.fp8;
            let l = spec.layout(rows as u32, cols as u32).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut bytes = vec![0u8; l.total_bytes as usize];
            edgeq_core::quant::quantize(spec, rows as u32, cols as u32, w, &mut bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
            let aligned = crate::import::AlignedBytes::from(&bytes);
            let v = edgeq_core::TensorView::new(spec, rows as u32, cols as u32, aligned.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut deq = vec![0.0f32; rows * cols];
            deq.chunks_exact_mut(cols).enumerate().for_each(|(r, o)| v.dequantize_row(r, o));
            // activations as the FP8 recipes run them: per token, or per 128-group with block weights
            let group = if spec.granularity == edgeq_core::Granularity::Block {
                128
            } else {
                cols
            };
            let y = eval.map(|e| {
                let mut xq = e.to_vec();
                xq.chunks_exact_mut(cols)
                    .for_each(|t| edgeq_core::quant::fp8::fake_quant_e4m3(t, group));
                linear_out(&deq, rows, cols, &xq)
            });
            W8LayerOut {
                deq,
                y,
                note: format!(
                    "{}, activations e4m3 per {}",
                    crate::quantize::spec_name(&spec),
                    if group == 128 { "128-group" } else { "token" }
                ),
                details: serde_json::json!({"scheme": crate::quantize::spec_name(&spec), "activation_group": group}),
            }
        }
        "llm-int8" => {
            let deq = int8::quantize(w, rows, cols, true, Convention::Max127).dequantize();
            let calibrated: Vec<usize> = x.map_or_else(Vec::new, |x| {
                abs_max(x).iter().enumerate().filter(|m| *m.1 >= a.threshold).map(|m| m.0).collect()
            });
            let mut n_out = calibrated.len();
            let y = eval.map(|e| {
                let mut mask = vec![false; cols];
                calibrated.iter().for_each(|&j| mask[j] = true);
                abs_max(e).iter().zip(mask.iter_mut()).for_each(|(m, o)| *o |= *m >= a.threshold);
                n_out = mask.iter().filter(|m| **m).count();
                let mut xq = e.to_vec();
                int8::fake_quant_tokens(&mut xq, cols, &mask);
                linear_out(&deq, rows, cols, &xq)
            });
            W8LayerOut {
                deq,
                y,
                note: format!(
                    "{} calibrated outlier columns, {} on the evaluated batch (|x| ≥ {})",
                    calibrated.len(),
                    n_out,
                    a.threshold
                ),
                details: serde_json::json!({"threshold": a.threshold, "calibrated_outliers": calibrated, "batch_outliers": n_out}),
            }
        }
        "smoothquant" => {
            let Some(x) = x else {
                bail!("smoothquant computes max|X| per channel: pass --acts X.npy")
            };
            let s = int8::smooth_scales(&abs_max(x), &[(w, rows)], a.alpha);
            let ws: Vec<f32> = w.chunks_exact(cols).flat_map(|r| r.iter().zip(&s).map(|(w, s)| w * s)).collect();
            let wq = int8::quantize(&ws, rows, cols, true, Convention::Max127).dequantize();
            let y = eval.map(|e| {
                let mut xq: Vec<f32> = e.chunks_exact(cols).flat_map(|r| r.iter().zip(&s).map(|(x, s)| x / s)).collect();
                int8::fake_quant_tokens(&mut xq, cols, &[]);
                linear_out(&wq, rows, cols, &xq)
            });
            let deq = wq.chunks_exact(cols).flat_map(|r| r.iter().zip(&s).map(|(w, s)| w / s)).collect();
            let (lo, hi) = s.iter().fold((f32::MAX, 0.0f32), |(l, h), v| (l.min(*v), h.max(*v)));
            W8LayerOut {
                deq,
                y,
                note: format!("α {}, smoothing scales {lo:.3e}..{hi:.3e}, W8A8 per token", a.alpha),
                details: serde_json::json!({"alpha": a.alpha, "smooth_scales": s}),
            }
        }
        m => bail!("--method {m}: not an 8-bit method"),
    })
}
