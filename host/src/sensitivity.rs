//! `edgeq quantize --sensitivity` / `--budget-bits`: how much each block
//! costs when it alone is quantized, and the per-block precision that meets
//! an average bits-per-weight budget.
//!
//! The scan quantizes the linears of one block at a time (RTN in the
//! low-precision scheme, everything else as stored), scores the model's NLL
//! on a text slice, and ranks the blocks by the increase. The budget starts
//! every block at the low scheme and promotes blocks to the high scheme, most
//! sensitive first, while the average bits per weight of the blocks' linear
//! layers stays within the budget (HAWQ-style greedy allocation with a
//! measured, not estimated, sensitivity).
use crate::eval::{perplexity, Protocol};
use crate::quantize::{quantize_rtn, Policy};
use anyhow::Result;
use edgeq_core::{QuantSpec, TensorRole};
use edgeq_runtime::{Activations, KvCache, Model};

#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockSensitivity {
    pub block: usize,
    /// NLL with only this block quantized.
    pub nll: f64,
    /// `nll − base` (nats per token).
    pub delta_nll: f64,
    /// 1 = most sensitive.
    pub rank: usize,
    pub params: u64,
    /// Bits of the block's linears in the low / high scheme.
    pub bits_low: u64,
    pub bits_high: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Scan {
    pub low: String,
    pub base_nll: f64,
    pub tokens: usize,
    pub blocks: Vec<BlockSensitivity>,
}

/// Bits of `spec` on the linears of block `l`.
fn block_bits(model: &Model<'_>, l: usize, spec: QuantSpec) -> (u64, u64) {
    let (mut params, mut bits) = (0u64, 0f64);
    for t in model.eqf.tensors().iter().filter(|t| t.layer as usize == l) {
        if TensorRole::from_u16(t.role).is_some_and(|r| r.is_linear()) {
            params += t.rows as u64 * t.cols as u64;
            bits += spec.bits_per_weight(t.rows, t.cols) * (t.rows as u64 * t.cols as u64) as f64;
        }
    }
    (params, bits.round() as u64)
}

/// Quantizes each block alone to `low` and scores it on `tokens`.
pub fn scan(
    model: &Model<'_>,
    tokens: &[u32],
    low: QuantSpec,
    high: QuantSpec,
    window: usize,
    progress: &indicatif::ProgressBar,
) -> Result<Scan> {
    let proto = Protocol::Sliding { window, stride: window };
    let hidden = indicatif::ProgressBar::hidden();
    let nll = |m: &Model<'_>| -> Result<f64> { Ok(perplexity(m, tokens, proto, None, Activations::F32, KvCache::F32, &hidden)?.mean_nll) };
    let base = nll(model)?;
    let n = model.cfg.n_layers as usize;
    progress.set_length(n as u64);
    let mut blocks = Vec::new();
    for l in 0..n {
        // every tensor but block l's is skipped (kept as stored)
        let mut skip = vec!["tok_embd".to_string(), "output".to_string()];
        skip.extend((0..n).filter(|&k| k != l).map(|k| format!("blk.{k}.*")));
        let policy = Policy::new(low, None, &skip)?;
        let (bytes, _) = quantize_rtn(&model.eqf, &policy, &hidden)?;
        let bytes = crate::import::AlignedBytes::from(&bytes[..]);
        let m = Model::from_bytes(bytes.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let v = nll(&m)?;
        let (params, bits_low) = block_bits(model, l, low);
        blocks.push(BlockSensitivity {
            block: l,
            nll: v,
            delta_nll: v - base,
            rank: 0,
            params,
            bits_low,
            bits_high: block_bits(model, l, high).1,
        });
        progress.inc(1);
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| blocks[b].delta_nll.total_cmp(&blocks[a].delta_nll));
    for (r, &i) in order.iter().enumerate() {
        blocks[i].rank = r + 1;
    }
    Ok(Scan {
        low: crate::quantize::spec_name(&low),
        base_nll: base,
        tokens: tokens.len(),
        blocks,
    })
}

/// The blocks to keep at the high scheme so that the linears average at
/// most `budget` bits per weight: most sensitive first, skipping a block
/// that would overshoot (a less sensitive, smaller one may still fit).
/// Returns the promoted blocks and the resulting average.
pub fn allocate(scan: &Scan, budget: f64) -> (Vec<usize>, f64) {
    let params: u64 = scan.blocks.iter().map(|b| b.params).sum();
    let mut bits: u64 = scan.blocks.iter().map(|b| b.bits_low).sum();
    let mut by_rank: Vec<&BlockSensitivity> = scan.blocks.iter().collect();
    by_rank.sort_by_key(|b| b.rank);
    let mut promoted = Vec::new();
    for b in by_rank {
        let extra = b.bits_high.saturating_sub(b.bits_low);
        if b.delta_nll > 0.0 && (bits + extra) as f64 <= budget * params as f64 {
            bits += extra;
            promoted.push(b.block);
        }
    }
    promoted.sort_unstable();
    (promoted, bits as f64 / params.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(block: usize, delta: f64, rank: usize) -> BlockSensitivity {
        BlockSensitivity {
            block,
            nll: 0.0,
            delta_nll: delta,
            rank,
            params: 1000,
            bits_low: 4500,
            bits_high: 8500,
        }
    }

    #[test]
    fn budget_promotes_the_most_sensitive_blocks_that_fit() {
        let s = Scan {
            low: "q4-g32".into(),
            base_nll: 1.0,
            tokens: 10,
            blocks: vec![b(0, 0.5, 1), b(1, 0.01, 4), b(2, 0.2, 2), b(3, 0.1, 3)],
        };
        // 4 blocks at 4.5 bpw = 4.5; each promotion adds 1.0 to the average
        assert_eq!(allocate(&s, 4.5), (vec![], 4.5));
        assert_eq!(allocate(&s, 5.6), (vec![0], 5.5));
        assert_eq!(allocate(&s, 6.5), (vec![0, 2], 6.5));
        assert_eq!(allocate(&s, 100.0).0, vec![0, 1, 2, 3]);
    }
}
