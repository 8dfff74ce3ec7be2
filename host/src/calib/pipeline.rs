//! Sequential, block-by-block quantization (GPTQ's `llama_sequential`):
//! capture the inputs of block `l` by running the runtime's own
//! [`block_forward`](edgeq_runtime::block_forward) on every calibration
//! sample, quantize its linears in `true_sequential` order (q/k/v
//! together, then o, then gate/up, then down: each stage sees the inputs
//! produced by the already-quantized stages before it), recompute block
//! `l`'s outputs with the quantized weights, and feed those to block `l+1`.
//! Only one block's weights and the calibration activations are held at a
//! time.
use super::data::CalibSet;
use super::stats::InputStats;
use crate::algo::{output_rel_err, QuantizedLayer};
use crate::import::AlignedBytes;
use crate::quantize::Policy;
use crate::tensor_data::TensorData;
use anyhow::{Context, Result};
use edgeq_core::format::writer::{PermEntry, TensorEntry};
use edgeq_core::{QuantSpec, TensorRole, TensorView};
use edgeq_runtime::arena::{Activations, ArenaPlan, Buffers, MatmulOpts};
use edgeq_runtime::model::{Block, BlockPerms};
use edgeq_runtime::{block_forward_kv, rope_angles, Model, Observer};
use rayon::prelude::*;
use std::ops::ControlFlow;

/// One linear layer handed to a method.
pub struct LayerJob<'a> {
    pub name: &'a str,
    pub role: TensorRole,
    pub layer: usize,
    /// `[rows, cols]` f32, row-major.
    pub w: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// Input statistics (when the method asked for them).
    pub stats: Option<&'a InputStats>,
}

/// What the pipeline needs to know about a method.
pub struct MethodHooks<'f> {
    pub name: &'f str,
    /// Collect input statistics at all (RTN/HQQ need none).
    pub needs_inputs: bool,
    /// Accumulate `Σ xxᵀ` (GPTQ).
    pub hessian: bool,
    /// Input rows kept per stage (AWQ loss/clip, error reports).
    pub keep_rows: usize,
    pub quantize: &'f (dyn Fn(&LayerJob<'_>) -> Result<(QuantizedLayer, String)> + Sync),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    pub tensor: String,
    pub scheme: String,
    /// `||XWᵀ − XŴᵀ||² / ||XWᵀ||²` on (up to `keep_rows`) calibration inputs,
    /// or the weight error `||W − Ŵ||²/||W||²` when no inputs were collected.
    pub rel_err: f64,
    pub metric: &'static str,
    pub seconds: f64,
    pub note: String,
    /// Method-specific decisions and statistics (INT8 symmetry, smoothing,
    /// outlier columns), omitted when empty.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

const STAGES: [(TensorRole, &[TensorRole]); 4] = [
    (TensorRole::Wq, &[TensorRole::Wq, TensorRole::Wk, TensorRole::Wv]),
    (TensorRole::Wo, &[TensorRole::Wo]),
    (TensorRole::WGate, &[TensorRole::WGate, TensorRole::WUp]),
    (TensorRole::WDown, &[TensorRole::WDown]),
];

/// One linear as the pipeline holds it: role, spec, shape, current bytes
/// (original, then quantized) and its input permutation (act-order).
type Current = (TensorRole, QuantSpec, u32, u32, AlignedBytes, Option<Vec<u32>>);

/// The linears of one block as the pipeline holds them.
struct HostBlock<'a> {
    orig: Block<'a>,
    cur: Vec<Current>,
}

impl<'a> HostBlock<'a> {
    fn view(&self, role: TensorRole) -> Result<TensorView<'_>> {
        let (_, spec, rows, cols, bytes, _) = self.cur.iter().find(|c| c.0 == role).context("role")?;
        TensorView::new(*spec, *rows, *cols, bytes.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))
    }
    fn perm(&self, role: TensorRole) -> Option<&[u32]> {
        self.cur.iter().find(|c| c.0 == role).and_then(|c| c.5.as_deref())
    }
    fn block(&self) -> Result<Block<'_>> {
        Ok(Block {
            perm: BlockPerms {
                wq: self.perm(TensorRole::Wq),
                wk: self.perm(TensorRole::Wk),
                wv: self.perm(TensorRole::Wv),
                wo: self.perm(TensorRole::Wo),
                w_gate: self.perm(TensorRole::WGate),
                w_down: self.perm(TensorRole::WDown),
                w_up: self.perm(TensorRole::WUp),
            },
            attn_norm: self.orig.attn_norm,
            wq: self.view(TensorRole::Wq)?,
            wk: self.view(TensorRole::Wk)?,
            wv: self.view(TensorRole::Wv)?,
            wo: self.view(TensorRole::Wo)?,
            bq: self.orig.bq,
            bk: self.orig.bk,
            bv: self.orig.bv,
            ffn_norm: self.orig.ffn_norm,
            w_gate: self.view(TensorRole::WGate)?,
            w_down: self.view(TensorRole::WDown)?,
            w_up: self.view(TensorRole::WUp)?,
            act: Default::default(),
        })
    }
}

/// Adds the input of `role` to the stats and stops the block there.
struct Collect<'s> {
    role: TensorRole,
    stats: &'s mut InputStats,
}
impl Observer for Collect<'_> {
    fn linear_input(&mut self, _: usize, role: TensorRole, x: &[f32], n: usize) -> ControlFlow<()> {
        if role == self.role {
            self.stats.add(x, n);
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Runs block `l` on one sample (`x`: len×dim, updated in place) with a fresh cache.
pub(crate) fn run_block<O: Observer>(
    model: &Model<'_>,
    b: &Block<'_>,
    l: usize,
    x: &mut [f32],
    len: usize,
    rope: &[f32],
    obs: &mut O,
) -> ControlFlow<()> {
    let c = &model.cfg;
    // Blocks being quantized may hold act-order layers: room to gather their inputs.
    let with_perm = edgeq_core::ModelConfig {
        flags: c.flags | edgeq_core::config::flags::INPUT_PERM,
        ..*c
    };
    let plan = ArenaPlan::new(&with_perm, len, len);
    let one_layer = ArenaPlan {
        kcache: len * c.kv_dim(),
        vcache: len * c.kv_dim(),
        ..plan
    };
    let mut arena = vec![0u64; one_layer.bytes().div_ceil(8)];
    let Ok(buf) = Buffers::carve(&one_layer, bytemuck::cast_slice_mut(&mut arena)) else {
        return ControlFlow::Break(());
    };
    let mut s = buf.s;
    // Calibration follows the reference implementations: exact f32 activations.
    s.mm = MatmulOpts {
        acts: Activations::F32,
        threads: 1,
    };
    block_forward_kv(c, b, l, x, len, 0, buf.kv, rope, &mut s, obs)
}

/// The pipeline's new tensors (spilled to the checkpoint's block files when
/// there is one), the act-order layers' input permutations, the reports.
pub type PipelineOut = (Vec<TensorEntry<TensorData>>, Vec<PermEntry>, Vec<LayerReport>);

/// Quantizes every linear layer the policy selects, block by block.
/// Returns the new linear tensors (others are the caller's business) and
/// the input permutations of act-order layers.
/// With a checkpoint, the state after each block is saved there, and a run
/// finding a matching one continues after its last block. With `file` (the
/// mapped file `model` was parsed from), each finished block's pages are
/// let go ([`release_block`]).
pub fn run(
    model: &Model<'_>,
    calib: &CalibSet,
    policy: &Policy,
    hooks: &MethodHooks<'_>,
    progress: &indicatif::ProgressBar,
    ckpt: Option<&super::checkpoint::Checkpoint>,
    file: Option<&crate::model_file::ModelFile>,
) -> Result<PipelineOut> {
    let c = &model.cfg;
    let (rope, mut xs) = embed_samples(model, calib)?;
    let mut perms = Vec::new();
    let t_start = std::time::Instant::now();
    progress.set_length(c.n_layers as u64 * 5);
    let mut entries = Vec::new();
    let mut reports = Vec::new();
    let mut first = 0;
    if let Some(ck) = ckpt {
        let lens: Vec<usize> = calib.samples.iter().map(|s| s.len()).collect();
        let resume = ck
            .load(&lens, c.dim as usize)
            .with_context(|| format!("cannot resume from {} (delete it to start over)", ck.dir.display()))?;
        if let Some(r) = resume.filter(|r| r.next_block <= c.n_layers as usize) {
            crate::log_line(
                progress,
                &format!("resuming from {}: blocks 0..{} already quantized", ck.dir.display(), r.next_block),
            );
            (first, entries, perms, reports, xs) = (r.next_block, r.entries, r.perms, r.reports, r.xs);
            progress.inc(first as u64 * 5);
        }
    }
    // A test hook: stop (as a crash would) after saving this block.
    let stop_after: Option<usize> = std::env::var("EDGEQ_TEST_STOP_AFTER_BLOCK").ok().and_then(|v| v.parse().ok());
    for l in first..c.n_layers as usize {
        let orig = model.block(l).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut hb = HostBlock { orig, cur: Vec::new() };
        for role in TensorRole::BLOCK_LINEARS {
            let t = model.eqf.find(role, l as u16).context("tensor")?;
            let spec = edgeq_core::format::record_spec(t).map_err(|e| anyhow::anyhow!("{e}"))?;
            hb.cur.push((
                role,
                spec,
                t.rows,
                t.cols,
                AlignedBytes::from(model.eqf.tensor_bytes(t).map_err(|e| anyhow::anyhow!("{e}"))?),
                model.eqf.input_perm(role, l as u16).map(|p| p.to_vec()),
            ));
        }
        for (input_role, roles) in STAGES {
            let targets: Vec<_> = roles
                .iter()
                .copied()
                .filter_map(|r| model.eqf.find(r, l as u16).filter(|t| policy.calibrated(t)).map(|t| (r, t)))
                .collect();
            if targets.is_empty() {
                progress.inc(1);
                continue;
            }
            let cols = targets[0].1.cols as usize;
            let stats = if hooks.needs_inputs {
                let block = hb.block()?;
                // One accumulator per thread over a contiguous run of
                // samples, merged in order: at most `threads` Hessians
                // (cols² f64 each: 537 MB for an 8192-column down_proj) are
                // alive at once, where rayon's fold makes one per split.
                let per = calib.samples.len().div_ceil(rayon::current_num_threads().max(1)).max(1);
                let parts: Vec<InputStats> = calib
                    .samples
                    .par_chunks(per)
                    .zip(xs.par_chunks(per))
                    .map(|(samples, xs)| {
                        let mut acc = InputStats::new(cols, hooks.hessian, hooks.keep_rows);
                        for (s, x) in samples.iter().zip(xs) {
                            let mut x = x.clone();
                            let _ = run_block(
                                model,
                                &block,
                                l,
                                &mut x,
                                s.len(),
                                &rope,
                                &mut Collect {
                                    role: input_role,
                                    stats: &mut acc,
                                },
                            );
                        }
                        acc
                    })
                    .collect();
                let mut parts = parts.into_iter();
                let mut st = parts
                    .next()
                    .unwrap_or_else(|| InputStats::new(cols, hooks.hessian, hooks.keep_rows));
                for p in parts {
                    st.merge(&p);
                }
                Some(st)
            } else {
                None
            };
            // The stage's linears are independent given the inputs.
            let results: Vec<Result<(TensorRole, QuantizedLayer, LayerReport)>> = targets
                .par_iter()
                .map(|(role, t)| {
                    let t0 = std::time::Instant::now();
                    let (rows, cols) = (t.rows as usize, t.cols as usize);
                    // the model's column order (an act-order input is put back)
                    let w = crate::quantize::to_f32(&model.eqf, t)?;
                    crate::algo::ensure_finite(&w, cols).with_context(|| format!("tensor {}", t.name_str()))?;
                    let job = LayerJob {
                        name: t.name_str(),
                        role: *role,
                        layer: l,
                        w: &w,
                        rows,
                        cols,
                        stats: stats.as_ref(),
                    };
                    let (q, note) = (hooks.quantize)(&job).with_context(|| format!("{} of tensor {}", hooks.name, t.name_str()))?;
                    let deq = q.dequantize();
                    let (rel_err, metric) = match stats.as_ref().filter(|s| !s.rows.is_empty()) {
                        Some(s) => (output_rel_err(&w, &deq, &s.rows, rows, cols), "output"),
                        None => {
                            let num: f64 = w.iter().zip(&deq).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                            let den: f64 = w.iter().map(|a| (*a as f64).powi(2)).sum();
                            (num / den.max(f64::MIN_POSITIVE), "weight")
                        }
                    };
                    let spec = q.grid.spec()?;
                    let rep = LayerReport {
                        tensor: t.name_str().to_string(),
                        scheme: crate::quantize::spec_name(&spec),
                        rel_err,
                        metric,
                        seconds: t0.elapsed().as_secs_f64(),
                        note,
                        details: serde_json::Value::Null,
                    };
                    Ok((*role, q, rep))
                })
                .collect();
            for r in results {
                let (role, q, rep) = r?;
                let (spec, bytes, perm) = q.to_eqf_permuted().with_context(|| format!("storing {}", rep.tensor))?;
                let slot = hb.cur.iter_mut().find(|c| c.0 == role).context("role")?;
                slot.1 = spec;
                slot.4 = AlignedBytes::from(&bytes);
                slot.5 = perm.clone();
                if let Some(perm) = perm {
                    perms.push(PermEntry {
                        role,
                        layer: l as u16,
                        perm,
                    });
                }
                entries.push(TensorEntry {
                    role,
                    layer: l as u16,
                    spec,
                    rows: q.rows as u32,
                    cols: q.cols as u32,
                    data: TensorData::Owned(bytes),
                });
                reports.push(rep);
            }
            progress.inc(1);
        }
        crate::log_line(
            progress,
            &format!(
                "block {}/{}: {} layers quantized, {:.1}s elapsed",
                l + 1,
                c.n_layers,
                reports.len(),
                t_start.elapsed().as_secs_f64()
            ),
        );
        // Recompute the block's outputs with its quantized weights.
        let block = hb.block()?;
        calib.samples.par_iter().zip(xs.par_iter_mut()).for_each(|(s, x)| {
            let _ = run_block(model, &block, l, x, s.len(), &rope, &mut edgeq_runtime::NoObserver);
        });
        progress.inc(1);
        if let Some(ck) = ckpt {
            ck.save(l + 1, &mut entries, &perms, &reports, &xs)?;
            if stop_after == Some(l) {
                anyhow::bail!("stopped after block {l} (EDGEQ_TEST_STOP_AFTER_BLOCK)");
            }
        }
        release_block(model, l, file);
    }
    Ok((entries, perms, reports))
}

/// Lets the OS drop the resident pages of block `l`'s tensors in `file`
/// (read back from the file if touched again): a block-by-block job over a
/// memory-mapped model keeps about one block resident, not the whole file.
pub(crate) fn release_block(model: &Model<'_>, l: usize, file: Option<&crate::model_file::ModelFile>) {
    let Some(f) = file else { return };
    for t in model.eqf.tensors().iter().filter(|t| t.layer as usize == l) {
        if let Ok(b) = model.eqf.tensor_bytes(t) {
            f.release(b);
        }
    }
}

/// Rotary angles for the longest sample, and every sample's embeddings
/// (the first block's inputs).
pub(crate) fn embed_samples(model: &Model<'_>, calib: &CalibSet) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let c = &model.cfg;
    let dim = c.dim as usize;
    let max_len = calib.samples.iter().map(|s| s.len()).max().unwrap_or(1);
    let mut rope = vec![0.0f32; max_len * c.rope_dim as usize];
    rope_angles(&mut rope, c, 0, max_len);
    let emb = model.tok_embd().map_err(|e| anyhow::anyhow!("{e}"))?;
    let xs = calib
        .samples
        .iter()
        .map(|s| {
            let mut x = vec![0.0f32; s.len() * dim];
            for (i, &t) in s.iter().enumerate() {
                emb.dequantize_row(t as usize, &mut x[i * dim..(i + 1) * dim]);
            }
            x
        })
        .collect();
    Ok((rope, xs))
}

/// Peak resident memory of this process (VmHWM), in MB, where the OS says.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
