//! HQQ (half-quadratic quantization, calibration-free) after mobiusml/hqq
//! 0.2.8.post1: `hqq/core/quantize.py` `Quantizer.quantize` (grouping,
//! inverse-scale parameterisation, `round_zero`) and `hqq/core/optimize.py`
//! `optimize_weights_proximal_legacy` (the default `optimize_weights`).
//!
//! Grouping is hqq's reshape of the row-major weight: `axis = 1` →
//! `W.reshape(-1, group)` (groups of `group` consecutive elements, i.e.
//! per-row groups when `group | cols`), `axis = 0` → `W.reshape(group, -1)`
//! (group `j` = flat elements `j, j+N, j+2N, …`, `N = numel/group`: strided
//! down a column, which EQF's per-row groups cannot store). `group = 0`
//! stands for hqq's `group_size=None` (axis 1: one group per row; axis 0:
//! one per column).
//!
//! Parameters per group (f32, as hqq on CPU): `scale_inv = max_int/(max−min)`
//! (1 where `|max−min| ≤ 1e-4`), clamped to `≤ 2e4`; `zero = −min·scale_inv`,
//! rounded when `round_zero`; then the proximal solver refines `zero` only.
//! Codes `q = clamp(round(w·scale_inv + zero), 0, max_int)`; dequantization
//! `w = (q − zero)·s` with `s = 1/scale_inv`.
use super::{Grid, QuantizedLayer};
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

#[derive(Debug, Clone, PartialEq)]
pub struct HqqConfig {
    /// 2..=8 bits (EQF stores 4 and 8).
    pub bits: u32,
    /// Elements per group (hqq `group_size`, default 64); 0 = `None`.
    pub group: usize,
    /// hqq `axis`: 1 (groups along a row, the `BaseQuantizeConfig` default)
    /// or 0.
    pub axis: usize,
    /// Proximal solver `opt_params` (hqq defaults: `lp_norm 0.7, beta 1e1,
    /// kappa 1.01, iters 20`).
    pub lp_norm: f32,
    pub beta: f32,
    /// Read but NOT applied, as in hqq's `optimize_weights_proximal_legacy`
    /// (only `optimize_weights_proximal_v2` multiplies beta by kappa).
    pub kappa: f32,
    pub iters: usize,
    /// Stop at the first iteration whose mean `|W − W_r|` does not improve
    /// (the legacy solver always does; false runs all `iters`).
    pub early_stop: bool,
    /// Round the initial zero (hqq `BaseQuantizeConfig`: `nbits == 4`).
    pub round_zero: bool,
    /// Run the proximal solver (hqq `optimize=True`).
    pub optimize: bool,
}

impl Default for HqqConfig {
    fn default() -> Self {
        Self::for_bits(4)
    }
}

impl HqqConfig {
    /// hqq's `BaseQuantizeConfig(nbits, group_size=64, axis=1)` defaults.
    pub fn for_bits(bits: u32) -> Self {
        HqqConfig {
            bits,
            group: 64,
            axis: 1,
            lp_norm: 0.7,
            beta: 10.0,
            kappa: 1.01,
            iters: 20,
            early_stop: true,
            round_zero: bits == 4,
            optimize: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HqqStats {
    /// Solver iterations run (including the one that stopped it).
    pub iters_run: usize,
    /// True when the solver stopped before `iters`.
    pub early_stopped: bool,
    /// Mean `|W − W_r|` at each iteration (with the zero entering it).
    pub error_history: Vec<f64>,
    /// Mean `|W − Ŵ|` of the final codes/zeros.
    pub final_l1: f64,
    /// The same before optimisation (min/max parameters, zero rounded if asked).
    pub initial_l1: f64,
}

/// HQQ's result in its own grouping: codes in the original element order,
/// one forward `scale` and float `zero` per group.
#[derive(Debug, Clone)]
pub struct HqqLayer {
    pub rows: usize,
    pub cols: usize,
    pub bits: u32,
    pub axis: usize,
    /// Elements per group.
    pub group_len: usize,
    /// Row-major `rows × cols`.
    pub codes: Vec<u8>,
    /// `s = 1/scale_inv` per group, in hqq's group order.
    pub scales: Vec<f32>,
    pub zeros: Vec<f32>,
}

impl HqqLayer {
    fn n_groups(&self) -> usize {
        (self.rows * self.cols) / self.group_len
    }
    /// Group of flat element `e`, and its position in the group.
    #[inline]
    fn locate(&self, e: usize) -> usize {
        if self.axis == 1 {
            e / self.group_len
        } else {
            e % self.n_groups()
        }
    }

    /// hqq `Quantizer.dequantize`: `(q − zero)·scale`, any axis.
    pub fn dequant(&self) -> Vec<f32> {
        (0..self.rows * self.cols)
            .map(|e| {
                let g = self.locate(e);
                (self.codes[e] as f32 - self.zeros[g]) * self.scales[g]
            })
            .collect()
    }

    /// The layer as a [`QuantizedLayer`] (asymmetric grid, float zeros):
    /// only axis 1 with groups inside rows (`group_len | cols`) maps onto
    /// EQF's per-row groups.
    pub fn to_quantized_layer(&self) -> Result<QuantizedLayer> {
        if self.axis != 1 {
            bail!(
                "HQQ axis 0 groups run down the columns ({} elements strided by {}), \
                 which EQF's per-row groups cannot store: use axis 1 to export, or \
                 HqqLayer::dequant for the weight",
                self.group_len,
                self.n_groups()
            );
        }
        ensure!(
            self.cols % self.group_len == 0,
            "HQQ axis-1 groups of {} straddle rows of {} columns: not storable in EQF",
            self.group_len,
            self.cols
        );
        let group = if self.group_len == self.cols { 0 } else { self.group_len };
        Ok(QuantizedLayer {
            rows: self.rows,
            cols: self.cols,
            grid: Grid {
                bits: self.bits,
                group,
                sym: false,
            },
            codes: self.codes.clone(),
            scales: self.scales.clone(),
            zeros: self.zeros.clone(),
            g_idx: None,
        })
    }

    /// EQF export (axis 1 only, see [`Self::to_quantized_layer`]).
    pub fn to_eqf(&self) -> Result<(edgeq_core::QuantSpec, Vec<u8>)> {
        self.to_quantized_layer()?.to_eqf()
    }
}

/// hqq `shrink_lp_op`: `sign(x)·relu(|x| − |x|^(p−1)/beta)` for `p < 1`
/// (and `p > 1`), `sign(x)·relu(|x| − 1/beta)` for `p = 1`. At `x = 0` the
/// `p < 1` power is ∞ and the result 0, as in torch.
#[inline]
pub fn shrink_lp(x: f32, beta: f32, p: f32) -> f32 {
    let a = x.abs();
    let t = if p == 1.0 {
        a - 1.0 / beta
    } else {
        a - (1.0 / beta) * a.powf(p - 1.0)
    };
    if t > 0.0 {
        t.copysign(x)
    } else {
        0.0
    }
}

/// Runs HQQ and returns it as a [`QuantizedLayer`] (axis 1 with row-aligned
/// groups; otherwise an error: use [`hqq_groups`] and [`HqqLayer::dequant`]).
pub fn hqq(w: &[f32], rows: usize, cols: usize, cfg: &HqqConfig) -> Result<(QuantizedLayer, HqqStats)> {
    let (l, st) = hqq_groups(w, rows, cols, cfg)?;
    Ok((l.to_quantized_layer()?, st))
}

/// HQQ in its own grouping (any axis).
pub fn hqq_groups(w: &[f32], rows: usize, cols: usize, cfg: &HqqConfig) -> Result<(HqqLayer, HqqStats)> {
    let numel = rows * cols;
    ensure!(numel > 0 && w.len() == numel, "weight has {} values, not {rows} × {cols}", w.len());
    ensure!((1..=8).contains(&cfg.bits), "{}-bit HQQ", cfg.bits);
    ensure!(cfg.axis <= 1, "axis must be 0 or 1, not {}", cfg.axis);
    ensure!(w.iter().all(|v| v.is_finite()), "weight has non-finite values");
    let glen = match (cfg.group, cfg.axis) {
        (0, 1) => cols,
        (0, _) => rows,
        (g, _) => g,
    };
    ensure!(numel % glen == 0, "group_size {glen} does not divide the {rows} × {cols} tensor");
    let ng = numel / glen;
    // Gather the groups contiguously: G[k][i].
    let gather = |k: usize, i: usize| if cfg.axis == 1 { k * glen + i } else { i * ng + k };
    let mut gw = vec![0.0f32; numel];
    gw.par_chunks_mut(glen).enumerate().for_each(|(k, g)| {
        for (i, v) in g.iter_mut().enumerate() {
            *v = w[gather(k, i)];
        }
    });
    let max_v = ((1u32 << cfg.bits) - 1) as f32;

    // Initial parameters (inverse scale).
    let mut scale = vec![0.0f32; ng];
    let mut zero = vec![0.0f32; ng];
    scale
        .par_iter_mut()
        .zip(zero.par_iter_mut())
        .zip(gw.par_chunks(glen))
        .for_each(|((s, z), g)| {
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for &v in g {
                lo = lo.min(v);
                hi = hi.max(v);
            }
            let denom = hi - lo;
            let mut sc = max_v / denom;
            if denom.abs() <= 1e-4 {
                sc = 1.0;
            }
            sc = sc.min(2e4);
            let mut zz = -lo * sc;
            if cfg.round_zero {
                zz = zz.round_ties_even();
            }
            *s = sc;
            *z = zz;
        });

    let l1 = |zero: &[f32]| -> f64 {
        gw.par_chunks(glen)
            .zip(scale.par_iter())
            .zip(zero.par_iter())
            .map(|((g, &s), &z)| {
                g.iter()
                    .map(|&v| {
                        let q = (v * s + z).round_ties_even().clamp(0.0, max_v);
                        (v - (q - z) / s).abs() as f64
                    })
                    .sum::<f64>()
            })
            .sum::<f64>()
            / numel as f64
    };
    let initial_l1 = l1(&zero);

    // optimize_weights_proximal_legacy: beta constant (kappa unused), zero
    // updated every step, stop at the first non-improving step (after its
    // zero update, which is what gets returned).
    let mut history = Vec::new();
    let mut early = false;
    if cfg.optimize {
        let (beta, p) = (cfg.beta, cfg.lp_norm);
        let mut best = f32::INFINITY;
        for _ in 0..cfg.iters {
            let sum: f64 = gw
                .par_chunks(glen)
                .zip(scale.par_iter())
                .zip(zero.par_iter_mut())
                .map(|((g, &s), z)| {
                    let z0 = *z;
                    let (mut err, mut acc) = (0.0f64, 0.0f64);
                    for &v in g {
                        let q = (v * s + z0).round_ties_even().clamp(0.0, max_v);
                        let r = (q - z0) / s;
                        let e = shrink_lp(v - r, beta, p);
                        acc += (q - (v - e) * s) as f64;
                        err += (v - r).abs() as f64;
                    }
                    *z = (acc / glen as f64) as f32;
                    err
                })
                .sum();
            // torch compares f32 means.
            let cur = (sum / numel as f64) as f32;
            history.push(cur as f64);
            if cur < best {
                best = cur;
            } else if cfg.early_stop {
                early = true;
                break;
            }
        }
    }

    // Final codes with the returned zero, scattered back to element order.
    let mut codes = vec![0u8; numel];
    for k in 0..ng {
        let (s, z) = (scale[k], zero[k]);
        for i in 0..glen {
            let v = gw[k * glen + i];
            codes[gather(k, i)] = (v * s + z).round_ties_even().clamp(0.0, max_v) as u8;
        }
    }
    let final_l1 = l1(&zero);
    let layer = HqqLayer {
        rows,
        cols,
        bits: cfg.bits,
        axis: cfg.axis,
        group_len: glen,
        codes,
        scales: scale.iter().map(|&s| 1.0 / s).collect(),
        zeros: zero,
    };
    let iters_run = history.len();
    Ok((
        layer,
        HqqStats {
            iters_run,
            early_stopped: early,
            error_history: history,
            final_l1,
            initial_l1,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::awq::tests::{load_wx, write_npy, Rng};
    use crate::algo::rtn;

    fn gaussian(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..rows * cols).map(|_| rng.normal() * 0.02).collect()
    }

    fn mean_abs(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).sum::<f64>() / a.len() as f64
    }

    #[test]
    fn hqq_beats_min_max_rtn_on_l1() {
        let (rows, cols) = (128, 512);
        let w = gaussian(rows, cols, 5);
        let (q, st) = hqq(&w, rows, cols, &HqqConfig::default()).unwrap();
        let d = q.dequantize();
        let e_hqq = mean_abs(&w, &d);
        let grid = Grid {
            bits: 4,
            group: 64,
            sym: false,
        };
        let e_rtn = mean_abs(&w, &rtn::quantize(&w, rows, cols, grid).dequantize());
        let e_awq_rtn = mean_abs(&w, &crate::algo::awq::pseudo_quantize(&w, rows, cols, grid).dequantize());
        let (noopt, _) = hqq(
            &w,
            rows,
            cols,
            &HqqConfig {
                optimize: false,
                ..Default::default()
            },
        )
        .unwrap();
        let e_noopt = mean_abs(&w, &noopt.dequantize());
        eprintln!(
            "l1: hqq {e_hqq:.4e} ({} iters, {:?}) rtn(gptq) {e_rtn:.4e} rtn(awq) {e_awq_rtn:.4e} noopt {e_noopt:.4e}",
            st.iters_run, st.error_history
        );
        assert!((st.final_l1 - e_hqq).abs() < 1e-3 * e_hqq);
        assert!(e_hqq < e_rtn && e_hqq < e_awq_rtn && e_hqq < e_noopt);
        assert!(st.final_l1 < st.initial_l1);
        // Stores in EQF (Q4 asym g64) and reads back.
        let (spec, bytes) = q.to_eqf().unwrap();
        let aligned = crate::import::AlignedBytes::from(&bytes);
        let v = edgeq_core::TensorView::new(spec, rows as u32, cols as u32, aligned.as_bytes()).unwrap();
        let mut row = vec![0.0; cols];
        for r in [0, rows - 1] {
            v.dequantize_row(r, &mut row);
            for c in 0..cols {
                let s = q.scales[r * 8 + c / 64];
                assert!((row[c] - d[r * cols + c]).abs() <= s * 16.0 * 2e-3 + 1e-6);
            }
        }
    }

    #[test]
    fn early_stop_when_converged() {
        let (rows, cols) = (64, 256);
        let w = gaussian(rows, cols, 9);
        let cfg = HqqConfig {
            iters: 500,
            ..Default::default()
        };
        let (_, st) = hqq(&w, rows, cols, &cfg).unwrap();
        assert!(st.early_stopped && st.iters_run < 500, "{:?}", st.error_history);
        let h = &st.error_history;
        // Strictly improving until the last (stopping) step.
        assert!(h[..h.len() - 1].windows(2).all(|p| p[1] < p[0]));
        assert!(h[h.len() - 1] >= h[h.len() - 2]);
        let (_, full) = hqq(
            &w,
            rows,
            cols,
            &HqqConfig {
                iters: 30,
                early_stop: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(full.iters_run, 30);
        assert!(!full.early_stopped);
    }

    #[test]
    fn both_axes_run() {
        let (rows, cols) = (128, 192);
        let w = gaussian(rows, cols, 2);
        for axis in [0, 1] {
            let cfg = HqqConfig {
                axis,
                ..Default::default()
            };
            let (l, st) = hqq_groups(&w, rows, cols, &cfg).unwrap();
            let d = l.dequant();
            let e = mean_abs(&w, &d);
            assert!((st.final_l1 - e).abs() < 1e-3 * e, "axis {axis}");
            assert!(st.final_l1 < st.initial_l1);
            assert_eq!(l.scales.len(), rows * cols / 64);
            if axis == 1 {
                let q = l.to_quantized_layer().unwrap();
                assert_eq!(q.dequantize(), d);
                l.to_eqf().unwrap();
            } else {
                let err = l.to_eqf().unwrap_err().to_string();
                assert!(err.contains("axis 0"), "{err}");
                assert!(hqq(&w, rows, cols, &cfg).is_err());
                // Group 0 of axis 0 = flat elements 0, N, 2N, … (N = numel/64).
                let n = rows * cols / 64;
                let g0: Vec<f32> = (0..64).map(|i| w[i * n]).collect();
                let (lo, hi) = g0.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                assert!((l.scales[0] - (hi - lo) / 15.0).abs() < 1e-6);
            }
        }
        // group_size None: one group per row (axis 1) / column (axis 0).
        let (l, _) = hqq_groups(
            &w,
            rows,
            cols,
            &HqqConfig {
                group: 0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(l.to_quantized_layer().unwrap().grid.group, 0);
        let (l, _) = hqq_groups(
            &w,
            rows,
            cols,
            &HqqConfig {
                group: 0,
                axis: 0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(l.scales.len(), cols);
    }

    #[test]
    fn shrink_op_branches() {
        assert_eq!(shrink_lp(0.0, 10.0, 0.7), 0.0);
        assert_eq!(shrink_lp(0.05, 10.0, 1.0), 0.0);
        assert!((shrink_lp(-0.5, 10.0, 1.0) + 0.4).abs() < 1e-7);
        let x = 2.0f32;
        assert!((shrink_lp(x, 10.0, 0.7) - (2.0 - 0.1 * 2.0f32.powf(-0.3))).abs() < 1e-6);
        assert!((shrink_lp(-x, 10.0, 0.7) + (2.0 - 0.1 * 2.0f32.powf(-0.3))).abs() < 1e-6);
    }

    /// Parity run (see `awq::tests::peer_parity_awq`): writes
    /// `$EDGEQ_PEER_OUT/hqq_w4g64_axis1.npy`, `…axis0.npy`, `…axis1_noopt.npy`.
    #[test]
    #[ignore]
    fn peer_parity_hqq() {
        let Some((w, rows, cols, _x, out)) = load_wx() else {
            eprintln!("EDGEQ_PEER_W / EDGEQ_PEER_X / EDGEQ_PEER_OUT not set");
            return;
        };
        for (name, cfg) in [
            ("hqq_w4g64_axis1", HqqConfig::default()),
            (
                "hqq_w4g64_axis0",
                HqqConfig {
                    axis: 0,
                    ..Default::default()
                },
            ),
            (
                "hqq_w4g64_axis1_noopt",
                HqqConfig {
                    optimize: false,
                    ..Default::default()
                },
            ),
        ] {
            let (l, st) = hqq_groups(&w, rows, cols, &cfg).unwrap();
            eprintln!(
                "{name}: {} iters, l1 {:.6e} -> {:.6e}, {:?}",
                st.iters_run, st.initial_l1, st.final_l1, st.error_history
            );
            write_npy(&format!("{out}/{name}.npy"), &l.dequant(), rows, cols);
        }
    }
}
