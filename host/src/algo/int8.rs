//! The 8-bit weight quantizers of the W8 family, one linear layer at a time:
//! per-channel INT8, symmetric or asymmetric, and the helpers SmoothQuant
//! and LLM.int8() share (smoothing scales, per-token activation rounding).
//!
//! * symmetric, [`Convention::Max127`]: `scale = absmax/127`, codes in
//!   [−127, 127] (SmoothQuant's `quantize_weight_per_channel_absmax`,
//!   bitsandbytes' row-wise `CB = round(127·W/absmax)`);
//! * symmetric, [`Convention::Half255`]: compressed-tensors / llm-compressor,
//!   `scale = absmax / (255/2)`, codes clamped to [−128, 127];
//! * asymmetric: `scale = (max − min)/255` over the row with the range
//!   widened to include 0, `zero = round(−min/scale)` (compressed-tensors'
//!   asymmetric int8, stored as unsigned codes).
//!
//! Automatic symmetry (per layer, from the layer's input activations):
//! `score = exp(−|mean| / (std + 1e-8))`, symmetric when `score > threshold`
//! (0.6 by default).
use super::{rtn, Grid, QuantizedLayer};

/// Scale convention of symmetric INT8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Convention {
    /// `absmax/127`, codes ±127.
    Max127,
    /// `absmax/127.5`, codes −128..127 (compressed-tensors).
    Half255,
}

/// Per-channel INT8 of `w [rows, cols]`.
pub fn quantize(w: &[f32], rows: usize, cols: usize, sym: bool, conv: Convention) -> QuantizedLayer {
    let grid = Grid { bits: 8, group: 0, sym };
    if !sym {
        return rtn::quantize(w, rows, cols, grid);
    }
    let (div, lo) = match conv {
        Convention::Max127 => (127.0f32, -127.0f32),
        Convention::Half255 => (127.5, -128.0),
    };
    let mut q = QuantizedLayer {
        rows,
        cols,
        grid,
        codes: vec![0; rows * cols],
        scales: vec![0.0; rows],
        zeros: vec![128.0; rows],
        g_idx: None,
    };
    for (r, row) in w.chunks_exact(cols).enumerate() {
        let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / div } else { 1.0 / div };
        q.scales[r] = s;
        for (o, v) in q.codes[r * cols..(r + 1) * cols].iter_mut().zip(row) {
            *o = ((v / s).round_ties_even().clamp(lo, 127.0) + 128.0) as u8;
        }
    }
    q
}

/// Statistics of a layer's input that decide its symmetry.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Symmetry {
    pub mean: f64,
    pub std: f64,
    /// `exp(−|mean|/(std+1e-8))`
    pub score: f64,
    pub symmetric: bool,
}

impl Symmetry {
    /// From the sum and sum of squares of `n` input values.
    pub fn from_moments(sum: f64, sum_sq: f64, n: f64, threshold: f64) -> Symmetry {
        let mean = sum / n.max(1.0);
        let var = (sum_sq / n.max(1.0) - mean * mean).max(0.0);
        // torch's std is the unbiased one
        let std = (var * n / (n - 1.0).max(1.0)).sqrt();
        let score = (-mean.abs() / (std + 1e-8)).exp();
        Symmetry {
            mean,
            std,
            score,
            symmetric: score > threshold,
        }
    }

    pub fn of(x: &[f32], threshold: f64) -> Symmetry {
        let (s, s2) = x.iter().fold((0.0f64, 0.0f64), |(a, b), &v| (a + v as f64, b + (v as f64).powi(2)));
        Self::from_moments(s, s2, x.len() as f64, threshold)
    }
}

/// SmoothQuant's migration scales for the linears fed by one input:
/// `s_j = max|X_j|^α / max_k max_r |W_k[r, j]|^(1−α)`, both maxima clamped
/// to ≥ 1e-5, `s` clamped to ≥ 1e-5 (`smooth_ln_fcs_llama_like`).
pub fn smooth_scales(act_max: &[f32], weights: &[(&[f32], usize)], alpha: f32) -> Vec<f32> {
    let cols = act_max.len();
    let mut w_max = vec![0.0f32; cols];
    for (w, rows) in weights {
        for row in w.chunks_exact(cols).take(*rows) {
            for (m, v) in w_max.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
    }
    act_max
        .iter()
        .zip(&w_max)
        .map(|(&a, &wm)| (a.max(1e-5).powf(alpha) / wm.max(1e-5).powf(1.0 - alpha)).max(1e-5))
        .collect()
}

/// Per-token symmetric int8 rounding of activations, as the runtime does it
/// (`d = absmax/127` over the token's non-outlier columns; outlier columns,
/// `outlier[j]`, pass unchanged): the `X̂` of a W8A8 layer.
pub fn fake_quant_tokens(x: &mut [f32], cols: usize, outlier: &[bool]) {
    for t in x.chunks_exact_mut(cols) {
        let amax = t
            .iter()
            .enumerate()
            .filter(|(j, _)| !outlier.get(*j).copied().unwrap_or(false))
            .fold(0.0f32, |m, (_, v)| m.max(v.abs()));
        let d = amax / 127.0;
        if !d.is_normal() {
            continue;
        }
        for (j, v) in t.iter_mut().enumerate() {
            if !outlier.get(j).copied().unwrap_or(false) {
                *v = (*v / d).round_ties_even().clamp(-127.0, 127.0) * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions_and_asymmetry() {
        let w = [1.0f32, -0.5, 0.25, 0.0, 2.0, 1.0, 0.5, -1.0];
        let q = quantize(&w, 2, 4, true, Convention::Max127);
        assert_eq!(q.scales, vec![1.0 / 127.0, 2.0 / 127.0]);
        assert_eq!(q.codes[0] as i32 - 128, 127);
        assert_eq!(q.codes[1] as i32 - 128, -64); // -63.5 rounds to even
        let q = quantize(&w, 2, 4, true, Convention::Half255);
        assert_eq!(q.scales[0], 1.0 / 127.5);
        assert_eq!(q.codes[0] as i32 - 128, 127); // 127.5 → 128 (even) → clamped to 127
        let q = quantize(&[0.0, 1.0, 3.0, 2.0], 1, 4, false, Convention::Max127);
        assert_eq!(q.zeros[0], 0.0);
        assert!((q.scales[0] - 3.0 / 255.0).abs() < 1e-9);
        assert_eq!(q.codes[2], 255);
        let deq = q.dequantize();
        assert!(deq
            .iter()
            .zip([0.0, 1.0, 3.0, 2.0])
            .all(|(a, b)| (a - b).abs() <= 1.5 / 255.0 * 3.0));
    }

    #[test]
    fn symmetry_score_decides() {
        let centred: Vec<f32> = (0..1000).map(|i| ((i % 7) as f32 - 3.0) * 0.5).collect();
        let s = Symmetry::of(&centred, 0.6);
        assert!(s.symmetric && s.score > 0.99, "{s:?}");
        let shifted: Vec<f32> = centred.iter().map(|v| v + 5.0).collect();
        let s = Symmetry::of(&shifted, 0.6);
        assert!(!s.symmetric && s.score < 0.1, "{s:?}");
    }

    #[test]
    fn smoothing_balances_the_ranges() {
        // α = 0.5: s = sqrt(max|X| / max|W|), so max|X/s| = max|W·s| per channel
        let act = [16.0f32, 1.0];
        let w = [1.0f32, 4.0, -0.25, 1.0];
        let s = smooth_scales(&act, &[(&w, 2)], 0.5);
        assert!((s[0] - 4.0).abs() < 1e-6 && (s[1] - 0.5).abs() < 1e-6, "{s:?}");
        assert!((act[0] / s[0] - 1.0 * s[0]).abs() < 1e-5);
        assert!((act[1] / s[1] - 4.0 * s[1]).abs() < 1e-5);
    }

    #[test]
    fn per_token_rounding_spares_outliers() {
        let mut x = vec![0.5f32, -1.0, 100.0, 0.3];
        fake_quant_tokens(&mut x, 4, &[false, false, true, false]);
        assert_eq!(x[2], 100.0);
        assert_eq!(x[1], -1.0);
        assert!((x[3] - (0.3f32 * 127.0).round() / 127.0).abs() < 1e-6);
    }
}
