//! AWQ over a whole model, as llm-awq's `run_awq` + `pseudo_quantize_model_weight`:
//! block by block on the full-precision model's activations (the next
//! block's input is the fp block's output, as the reference computes it
//! before scaling), search the per-channel scales of four groups with the
//! loss on the output of the module they feed (`module2inspect`):
//!
//! | scaled linears | folded into     | loss on                               |
//! |----------------|-----------------|---------------------------------------|
//! | q, k, v        | attn_norm       | self-attention output (o_proj output) |
//! | o              | v (rows)        | o output — only when v and o shapes match (no GQA) |
//! | gate, up       | ffn_norm        | MLP output                            |
//! | down           | up (rows)       | down output                           |
//!
//! then fold the scales in, run the clip search on every linear but q/k,
//! and round all linears with AWQ's quantizer (`pseudo_quantize`). The
//! rescaled norms are part of the output.
use super::data::CalibSet;
use super::pipeline::{embed_samples, run_block, LayerReport};
use crate::algo::awq::{apply_clip, auto_clip, fake_quantize, linear_loss, pseudo_quantize, search_scale, weight_mean, AwqConfig};
use crate::algo::{output_rel_err, Grid};
use crate::import::AlignedBytes;
use crate::quantize::Policy;
use crate::tensor_data::TensorData;
use anyhow::{Context, Result};
use edgeq_core::format::writer::TensorEntry;
use edgeq_core::{QuantSpec, TensorRole, TensorView};
use edgeq_runtime::model::Block;
use edgeq_runtime::{Model, Observer};
use rayon::prelude::*;
use std::ops::ControlFlow;

/// Rows (tokens) kept per linear input for the per-token losses and clipping.
const KEEP_ROWS: usize = 4096;

fn f32_bytes(w: &[f32]) -> AlignedBytes {
    AlignedBytes::from(bytemuck::cast_slice(w))
}

/// The block's weights in f32, owned (scales are folded into them).
#[derive(Clone)]
struct FpBlock {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// (role, rows, cols, weights) for q, k, v, o, gate, down, up.
    lin: Vec<(TensorRole, usize, usize, Vec<f32>)>,
}

impl FpBlock {
    fn get(&self, r: TensorRole) -> &(TensorRole, usize, usize, Vec<f32>) {
        self.lin.iter().find(|l| l.0 == r).expect("all seven linears are loaded")
    }
    fn get_mut(&mut self, r: TensorRole) -> &mut (TensorRole, usize, usize, Vec<f32>) {
        self.lin.iter_mut().find(|l| l.0 == r).expect("all seven linears are loaded")
    }
}

/// f32 byte buffers backing a runtime [`Block`].
struct Views {
    bufs: Vec<(TensorRole, usize, usize, AlignedBytes)>,
}

impl Views {
    fn new(b: &FpBlock) -> Views {
        Views {
            bufs: b.lin.iter().map(|(r, rows, cols, w)| (*r, *rows, *cols, f32_bytes(w))).collect(),
        }
    }
    fn view(&self, r: TensorRole) -> TensorView<'_> {
        let (_, rows, cols, b) = self.bufs.iter().find(|x| x.0 == r).expect("present");
        TensorView::new(QuantSpec::F32, *rows as u32, *cols as u32, b.as_bytes()).expect("f32 layout")
    }
    fn block<'a>(&'a self, norms: &'a FpBlock, orig: &Block<'a>) -> Block<'a> {
        Block {
            attn_norm: &norms.attn_norm,
            wq: self.view(TensorRole::Wq),
            wk: self.view(TensorRole::Wk),
            wv: self.view(TensorRole::Wv),
            wo: self.view(TensorRole::Wo),
            bq: orig.bq,
            bk: orig.bk,
            bv: orig.bv,
            ffn_norm: &norms.ffn_norm,
            w_gate: self.view(TensorRole::WGate),
            w_down: self.view(TensorRole::WDown),
            w_up: self.view(TensorRole::WUp),
            act: Default::default(),
            // f32 weights in the model's column order
            perm: Default::default(),
        }
    }
}

/// Records the inputs of the four linear groups of one sample.
#[derive(Default)]
struct Capture {
    /// role → rows (n × cols), full sample.
    seen: Vec<(TensorRole, Vec<f32>)>,
    stop_at: Option<TensorRole>,
}

impl Observer for Capture {
    fn linear_input(&mut self, _: usize, role: TensorRole, x: &[f32], _n: usize) -> ControlFlow<()> {
        self.seen.push((role, x.to_vec()));
        if Some(role) == self.stop_at {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Q(W·diag(s))·diag(1/s), the candidate weight of a scale search.
fn fake_scaled(w: &[f32], rows: usize, cols: usize, grid: Grid, s: &[f32]) -> Vec<f32> {
    let ws: Vec<f32> = w.chunks_exact(cols).flat_map(|r| r.iter().zip(s).map(|(a, b)| a * b)).collect();
    let mut q = vec![0.0; rows * cols];
    fake_quantize(&ws, rows, cols, grid, &mut q);
    for row in q.chunks_exact_mut(cols) {
        row.iter_mut().zip(s).for_each(|(a, b)| *a /= b);
    }
    q
}

/// y = x·Wᵀ for n rows of x.
fn linear(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let n = x.len() / cols;
    let bytes = f32_bytes(w);
    let v = TensorView::new(QuantSpec::F32, rows as u32, cols as u32, bytes.as_bytes()).expect("f32");
    let mut y = vec![0.0; n * rows];
    let mut scratch = vec![0.0; cols];
    for (xi, yi) in x.chunks(cols * 64).zip(y.chunks_mut(rows * 64)) {
        edgeq_kernels::matmul(yi, &v, xi, xi.len() / cols, 0..rows, &mut scratch);
    }
    y
}

fn mse(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len().max(1) as f64
}

fn mean_abs(x: &[f32], cols: usize) -> Vec<f32> {
    crate::algo::awq::act_mean(x, cols)
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Model<'_>,
    calib: &CalibSet,
    policy: &Policy,
    grid: Grid,
    cfg: &AwqConfig,
    progress: &indicatif::ProgressBar,
    ckpt: Option<&super::checkpoint::Checkpoint>,
    file: Option<&crate::model_file::ModelFile>,
) -> Result<(Vec<TensorEntry<TensorData>>, Vec<LayerReport>)> {
    let c = &model.cfg;
    let (dim, hid) = (c.dim as usize, c.hidden_dim as usize);
    let (rope, mut xs) = embed_samples(model, calib)?;
    let t_start = std::time::Instant::now();
    progress.set_length(c.n_layers as u64);
    let (mut entries, mut reports) = (Vec::new(), Vec::new());
    // Resumable like the GPTQ pipeline: after each block the tensors, the
    // reports and the next block's inputs are saved in the checkpoint.
    let mut first = 0;
    if let Some(ck) = ckpt {
        let lens: Vec<usize> = calib.samples.iter().map(|s| s.len()).collect();
        let resume = ck
            .load(&lens, dim)
            .with_context(|| format!("cannot resume from {} (delete it to start over)", ck.dir.display()))?;
        if let Some(r) = resume.filter(|r| r.next_block <= c.n_layers as usize) {
            crate::log_line(
                progress,
                &format!("resuming from {}: blocks 0..{} already searched", ck.dir.display(), r.next_block),
            );
            (first, entries, reports, xs) = (r.next_block, r.entries, r.reports, r.xs);
            progress.inc(first as u64);
        }
    }
    let stop_after: Option<usize> = std::env::var("EDGEQ_TEST_STOP_AFTER_BLOCK").ok().and_then(|v| v.parse().ok());
    for l in first..c.n_layers as usize {
        let orig = model.block(l).map_err(|e| anyhow::anyhow!("{e}"))?;
        let deq = |v: &TensorView<'_>| {
            let mut w = vec![0.0f32; v.rows() * v.cols()];
            for (r, row) in w.chunks_exact_mut(v.cols()).enumerate() {
                v.dequantize_row(r, row);
            }
            (v.rows(), v.cols(), w)
        };
        let mut fb = FpBlock {
            attn_norm: orig.attn_norm.to_vec(),
            ffn_norm: orig.ffn_norm.to_vec(),
            lin: Vec::new(),
        };
        let p = &orig.perm;
        for (role, v, perm) in [
            (TensorRole::Wq, &orig.wq, p.wq),
            (TensorRole::Wk, &orig.wk, p.wk),
            (TensorRole::Wv, &orig.wv, p.wv),
            (TensorRole::Wo, &orig.wo, p.wo),
            (TensorRole::WGate, &orig.w_gate, p.w_gate),
            (TensorRole::WDown, &orig.w_down, p.w_down),
            (TensorRole::WUp, &orig.w_up, p.w_up),
        ] {
            let (r, cc, mut w) = deq(v);
            if let Some(perm) = perm {
                crate::quantize::unpermute_cols(&mut w, cc, perm);
            }
            crate::algo::ensure_finite(&w, cc).with_context(|| format!("tensor blk.{l}.{}", role.name()))?;
            fb.lin.push((role, r, cc, w));
        }
        let fp = fb.clone();

        // 1. fp pass: capture every linear input, and the next block's input.
        let views = Views::new(&fb);
        let block = views.block(&fb, &orig);
        let inputs: Vec<Vec<f32>> = xs.clone();
        let caps: Vec<Capture> = calib
            .samples
            .par_iter()
            .zip(xs.par_iter_mut())
            .map(|(s, x)| {
                let mut cap = Capture::default();
                let _ = run_block(model, &block, l, x, s.len(), &rope, &mut cap);
                cap
            })
            .collect();
        let rows_of = |role: TensorRole, cap: &[Capture]| -> Vec<f32> {
            let mut out = Vec::new();
            for c in cap {
                for (r, v) in &c.seen {
                    if *r == role {
                        out.extend_from_slice(v);
                    }
                }
            }
            out
        };
        let x_qkv_all = rows_of(TensorRole::Wq, &caps);
        let x_gu_all = rows_of(TensorRole::WGate, &caps);
        let qd = c.q_dim();
        let attn_fp: Vec<Vec<f32>> = caps
            .iter()
            .map(|c| {
                c.seen
                    .iter()
                    .find(|s| s.0 == TensorRole::Wo)
                    .map(|s| s.1.clone())
                    .unwrap_or_default()
            })
            .collect();
        let keep = |x: Vec<f32>, cols: usize| -> Vec<f32> {
            let n = x.len() / cols;
            if n <= KEEP_ROWS {
                return x;
            }
            let step = n.div_ceil(KEEP_ROWS);
            (0..n).step_by(step).flat_map(|t| x[t * cols..(t + 1) * cols].to_vec()).collect()
        };
        let mut x_o = keep(rows_of(TensorRole::Wo, &caps), qd);
        let mut x_gu = keep(x_gu_all.clone(), dim);
        let mut x_down = keep(rows_of(TensorRole::WDown, &caps), hid);
        let mut x_qkv = keep(x_qkv_all.clone(), dim);
        drop(caps);

        // 2. Scale search for the four groups (on the unmodified fp block).
        let wmean_of = |roles: &[TensorRole]| -> Option<Vec<f32>> {
            if !cfg.duo_scaling {
                return None;
            }
            let cols = fp.get(roles[0]).2;
            let mut cat = Vec::new();
            let mut rows = 0;
            for r in roles {
                cat.extend_from_slice(&fp.get(*r).3);
                rows += fp.get(*r).1;
            }
            Some(weight_mean(&cat, rows, cols, grid.group))
        };
        // q, k, v: loss on the attention output through o_proj.
        let (wo_rows, wo_cols, wo) = (fp.get(TensorRole::Wo).1, fp.get(TensorRole::Wo).2, fp.get(TensorRole::Wo).3.clone());
        let o_fp: Vec<Vec<f32>> = attn_fp.iter().map(|a| linear(&wo, wo_rows, wo_cols, a)).collect();
        let xm = mean_abs(&x_qkv_all, dim);
        let wm = wmean_of(&[TensorRole::Wq, TensorRole::Wk, TensorRole::Wv]);
        let (s_qkv, loss_qkv, _) = search_scale(&xm, wm.as_deref(), cfg.n_grid, cfg.duo_scaling, |s| {
            let mut cand = fp.clone();
            for r in [TensorRole::Wq, TensorRole::Wk, TensorRole::Wv] {
                let e = cand.get_mut(r);
                e.3 = fake_scaled(&e.3, e.1, e.2, grid, s);
            }
            let v = Views::new(&cand);
            let b = v.block(&cand, &orig);
            let total: f64 = calib
                .samples
                .par_iter()
                .zip(inputs.par_iter())
                .zip(o_fp.par_iter())
                .map(|((smp, x), ofp)| {
                    let mut x = x.clone();
                    let mut cap = Capture {
                        stop_at: Some(TensorRole::Wo),
                        ..Default::default()
                    };
                    let _ = run_block(model, &b, l, &mut x, smp.len(), &rope, &mut cap);
                    let a = cap
                        .seen
                        .iter()
                        .find(|s| s.0 == TensorRole::Wo)
                        .map(|s| s.1.clone())
                        .unwrap_or_default();
                    let o = linear(&wo, wo_rows, wo_cols, &a);
                    mse(&o, ofp) * o.len() as f64
                })
                .sum();
            total / o_fp.iter().map(|o| o.len()).sum::<usize>().max(1) as f64
        });
        // v -> o, only when the shapes match (llm-awq skips it under GQA).
        let (v_rows, o_cols) = (fp.get(TensorRole::Wv).1, fp.get(TensorRole::Wo).2);
        let s_vo = if v_rows == o_cols && orig.bv.is_none() {
            let xm = mean_abs(&x_o, o_cols);
            let wm = wmean_of(&[TensorRole::Wo]);
            Some(
                search_scale(&xm, wm.as_deref(), cfg.n_grid, cfg.duo_scaling, |s| {
                    linear_loss(&wo, wo_rows, wo_cols, grid, &x_o, s)
                })
                .0,
            )
        } else {
            None
        };
        // gate, up: loss on the MLP output.
        let (g, u, d) = (
            fp.get(TensorRole::WGate).clone(),
            fp.get(TensorRole::WUp).clone(),
            fp.get(TensorRole::WDown).clone(),
        );
        let mlp = |wg: &[f32], wu: &[f32]| -> Vec<f32> {
            let a = linear(wg, g.1, g.2, &x_gu);
            let b = linear(wu, u.1, u.2, &x_gu);
            let h: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a / (1.0 + (-a).exp()) * b).collect();
            linear(&d.3, d.1, d.2, &h)
        };
        let mlp_fp = mlp(&g.3, &u.3);
        let xm = mean_abs(&x_gu_all, dim);
        let wm = wmean_of(&[TensorRole::WGate, TensorRole::WUp]);
        let (s_gu, loss_gu, _) = search_scale(&xm, wm.as_deref(), cfg.n_grid, cfg.duo_scaling, |s| {
            mse(
                &mlp(&fake_scaled(&g.3, g.1, g.2, grid, s), &fake_scaled(&u.3, u.1, u.2, grid, s)),
                &mlp_fp,
            )
        });
        // up -> down.
        let xm = mean_abs(&x_down, hid);
        let wm = wmean_of(&[TensorRole::WDown]);
        let (s_ud, loss_ud, _) = search_scale(&xm, wm.as_deref(), cfg.n_grid, cfg.duo_scaling, |s| {
            linear_loss(&d.3, d.1, d.2, grid, &x_down, s)
        });

        // 3. Fold the scales (llm-awq apply_scale), inputs too.
        let scale_cols = |w: &mut [f32], cols: usize, s: &[f32]| {
            w.chunks_exact_mut(cols)
                .for_each(|r| r.iter_mut().zip(s).for_each(|(a, b)| *a *= b))
        };
        let div_rows = |w: &mut [f32], cols: usize, s: &[f32]| {
            w.chunks_exact_mut(cols)
                .zip(s)
                .for_each(|(r, b)| r.iter_mut().for_each(|a| *a /= b))
        };
        let div_cols_x = |x: &mut [f32], cols: usize, s: &[f32]| {
            x.chunks_exact_mut(cols)
                .for_each(|r| r.iter_mut().zip(s).for_each(|(a, b)| *a /= b))
        };
        fb.attn_norm.iter_mut().zip(&s_qkv).for_each(|(a, b)| *a /= b);
        for r in [TensorRole::Wq, TensorRole::Wk, TensorRole::Wv] {
            let e = fb.get_mut(r);
            scale_cols(&mut e.3, e.2, &s_qkv);
        }
        div_cols_x(&mut x_qkv, dim, &s_qkv);
        if let Some(s) = &s_vo {
            let e = fb.get_mut(TensorRole::Wv);
            div_rows(&mut e.3, e.2, s);
            let e = fb.get_mut(TensorRole::Wo);
            scale_cols(&mut e.3, e.2, s);
            div_cols_x(&mut x_o, o_cols, s);
        }
        fb.ffn_norm.iter_mut().zip(&s_gu).for_each(|(a, b)| *a /= b);
        for r in [TensorRole::WGate, TensorRole::WUp] {
            let e = fb.get_mut(r);
            scale_cols(&mut e.3, e.2, &s_gu);
        }
        div_cols_x(&mut x_gu, dim, &s_gu);
        {
            let e = fb.get_mut(TensorRole::WUp);
            div_rows(&mut e.3, e.2, &s_ud);
            let e = fb.get_mut(TensorRole::WDown);
            scale_cols(&mut e.3, e.2, &s_ud);
            div_cols_x(&mut x_down, hid, &s_ud);
        }

        // 4. Clip (all but q/k), then AWQ's rounding of every linear.
        let scaled = fb.clone();
        let xin = |r: TensorRole| -> &[f32] {
            match r {
                TensorRole::Wq | TensorRole::Wk | TensorRole::Wv => &x_qkv,
                TensorRole::Wo => &x_o,
                TensorRole::WGate | TensorRole::WUp => &x_gu,
                _ => &x_down,
            }
        };
        let results: Vec<Result<(TensorEntry, Option<LayerReport>)>> = fb
            .lin
            .par_iter_mut()
            .map(|(role, rows, cols, w)| {
                let t0 = std::time::Instant::now();
                let rec = model.eqf.find(*role, l as u16).context("tensor")?;
                let name = rec.name_str().to_string();
                if !policy.calibrated(rec) {
                    return Ok((
                        TensorEntry {
                            role: *role,
                            layer: l as u16,
                            spec: QuantSpec::F32,
                            rows: *rows as u32,
                            cols: *cols as u32,
                            data: bytemuck::cast_slice(w).to_vec(),
                        },
                        None,
                    ));
                }
                let mut note = String::new();
                if cfg.clip && !matches!(role, TensorRole::Wq | TensorRole::Wk) {
                    let cr = auto_clip(
                        w,
                        *rows,
                        *cols,
                        grid,
                        xin(*role),
                        cfg.clip_n_grid,
                        cfg.max_shrink,
                        cfg.n_sample_token,
                    );
                    apply_clip(w, *rows, *cols, grid, &cr.max_val);
                    note = format!("clipped {} groups", cr.stats.n_clipped);
                }
                let q = pseudo_quantize(w, *rows, *cols, grid);
                let (spec, data) = q.to_eqf().with_context(|| format!("storing {name}"))?;
                let before = &scaled.get(*role).3;
                let rel_err = output_rel_err(before, &q.dequantize(), xin(*role), *rows, *cols);
                let rep = LayerReport {
                    tensor: name,
                    scheme: crate::quantize::spec_name(&spec),
                    rel_err,
                    metric: "output (scaled layer)",
                    seconds: t0.elapsed().as_secs_f64(),
                    note,
                    details: serde_json::Value::Null,
                };
                Ok((
                    TensorEntry {
                        role: *role,
                        layer: l as u16,
                        spec,
                        rows: *rows as u32,
                        cols: *cols as u32,
                        data,
                    },
                    Some(rep),
                ))
            })
            .collect();
        for r in results {
            let (e, rep) = r?;
            entries.push(crate::tensor_data::owned(e));
            reports.extend(rep);
        }
        for (role, v) in [(TensorRole::AttnNorm, &fb.attn_norm), (TensorRole::FfnNorm, &fb.ffn_norm)] {
            entries.push(TensorEntry {
                role,
                layer: l as u16,
                spec: QuantSpec::F32,
                rows: 1,
                cols: dim as u32,
                data: TensorData::Owned(bytemuck::cast_slice(v).to_vec()),
            });
        }
        if let Some(r) = reports.iter_mut().rev().find(|r| r.tensor.ends_with("attn_q")) {
            r.note = format!(
                "scale loss qkv {loss_qkv:.3e}, gate/up {loss_gu:.3e}, down {loss_ud:.3e}{}",
                if s_vo.is_none() { ", v->o skipped (shapes differ)" } else { "" }
            );
        }
        crate::log_line(
            progress,
            &format!(
                "block {}/{}: scales and clips searched, {:.1}s elapsed",
                l + 1,
                c.n_layers,
                t_start.elapsed().as_secs_f64()
            ),
        );
        progress.inc(1);
        if let Some(ck) = ckpt {
            ck.save(l + 1, &mut entries, &[], &reports, &xs)?;
            if stop_after == Some(l) {
                anyhow::bail!("stopped after block {l} (EDGEQ_TEST_STOP_AFTER_BLOCK)");
            }
        }
        super::pipeline::release_block(model, l, file);
    }
    Ok((entries, reports))
}
