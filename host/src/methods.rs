//! The methods behind `--method`: one linear layer at a time (`edgeq
//! layer`, and the hook the sequential pipeline calls per layer).
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
}

impl MethodArgs {
    pub fn needs_calibration(&self) -> bool {
        matches!(self.method.as_str(), "gptq" | "awq")
    }
}

/// Quantizes one layer; `x` = calibration inputs (`n × cols`) when the method uses them.
pub fn quantize_layer(a: &MethodArgs, w: &[f32], rows: usize, cols: usize, x: Option<&[f32]>) -> Result<(QuantizedLayer, String)> {
    match a.method.as_str() {
        "rtn" => Ok((algo::rtn::quantize(w, rows, cols, a.grid), String::new())),
        m => {
            let _ = x;
            bail!("--method {m}: not available in this build (rtn)")
        }
    }
}

/// The pipeline hooks for `a` (GPTQ collects Hessians, AWQ input rows).
pub fn with_hooks<R>(a: &MethodArgs, f: impl FnOnce(&MethodHooks<'_>) -> R) -> R {
    let q = |job: &LayerJob<'_>| quantize_layer(a, job.w, job.rows, job.cols, job.stats.map(|s| &s.rows[..]));
    let hooks = MethodHooks {
        name: &a.method,
        needs_inputs: a.needs_calibration(),
        hessian: a.method == "gptq",
        keep_rows: 512,
        quantize: &q,
    };
    f(&hooks)
}
