//! The methods behind `--method`: one linear layer at a time (`edgeq
//! layer`, and the hook the sequential pipeline calls per layer).
use crate::algo::gptq::{gptq, GptqConfig, Hessian};
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
    /// The result will be stored in EQF (forces static groups with act-order).
    pub store: bool,
    /// AWQ
    pub duo_scaling: bool,
    pub clip: bool,
}

impl MethodArgs {
    pub fn needs_calibration(&self) -> bool {
        matches!(self.method.as_str(), "gptq" | "awq")
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
            gptq_with(a, w, rows, cols, &h)
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
        m => bail!("--method {m}: unknown (rtn, gptq, awq, hqq)"),
    }
}

fn gptq_with(a: &MethodArgs, w: &[f32], rows: usize, cols: usize, h: &Hessian) -> Result<(QuantizedLayer, String)> {
    algo::ensure_finite(w, cols)?;
    let mut cfg = GptqConfig::new(a.grid);
    cfg.act_order = a.act_order;
    // EQF groups are contiguous column ranges: act-order with groups needs static groups to be stored.
    cfg.static_groups = a.static_groups || (a.act_order && a.grid.group > 0 && a.store);
    cfg.percdamp = a.damp;
    cfg.blocksize = a.blocksize;
    cfg.damp_auto_increase = true;
    let (q, st) = gptq(w, rows, cols, h, &cfg)?;
    let mut note = format!("damp {:.4}", st.percdamp);
    if st.damp_retries > 0 {
        note += &format!(" (Cholesky failed {} times: damping increased from {})", st.damp_retries, a.damp);
    }
    if st.dead_columns > 0 {
        note += &format!(", {} dead columns zeroed", st.dead_columns);
    }
    Ok((q, note))
}

/// The pipeline hooks for `a` (GPTQ collects Hessians, AWQ input rows).
pub fn with_hooks<R>(a: &MethodArgs, f: impl FnOnce(&MethodHooks<'_>) -> R) -> R {
    let q = |job: &LayerJob<'_>| -> Result<(QuantizedLayer, String)> {
        if a.method == "gptq" {
            let st = job.stats.ok_or_else(|| anyhow::anyhow!("no calibration statistics"))?;
            let h = Hessian::from_matrix(st.hessian().unwrap_or_default(), job.cols, st.n)?;
            return gptq_with(a, job.w, job.rows, job.cols, &h);
        }
        quantize_layer(a, job.w, job.rows, job.cols, job.stats.map(|s| &s.rows[..]))
    };
    let hooks = MethodHooks {
        name: &a.method,
        needs_inputs: a.needs_calibration(),
        hessian: a.method == "gptq",
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
