//! AdaRound (Nagel et al., 2020), with the defaults of the reference
//! implementations (Qualcomm AIMET `adaround`, BRECQ's `AdaRoundQuantizer`):
//! learn, per weight, whether to round down or up.
//!
//! On the RTN grid (min–max scale and zero per group, as `rtn`), each weight
//! becomes `w̃ = s·(clamp(⌊w/s⌋ + h(V) + z, 0, maxq) − z)` with the rectified
//! sigmoid `h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1)`, `ζ = 1.1`, `γ = −0.1`, and
//! `V` initialised so that `h(V)` equals the fractional part of `w/s`.
//! The loss is the layer's output reconstruction error plus the rounding
//! regulariser:
//!
//! ```text
//! L = mean_t ||(W̃ − W)·x_t||²  +  λ · Σ (1 − |2h − 1|^β)
//! ```
//!
//! (BRECQ's `lp_loss(p=2)`: summed over outputs, averaged over tokens),
//! `λ = 0.01`, `β` annealed linearly from 20 to 2 after a warm-up of 20 %
//! of the iterations during which the regulariser is off, Adam at
//! lr 1e-3 on `V` (β₁ 0.9, β₂ 0.999, ε 1e-8, PyTorch's defaults),
//! 10,000 iterations (AIMET's default). At the end `h = [V ≥ 0]`.
//!
//! The reconstruction term uses the calibration inputs through their
//! second moment `A = mean_t x_t x_tᵀ` (GPTQ's Hessian over 2): it equals
//! the full-batch loss exactly, its gradient is `2·(W̃ − W)·A`, and one
//! iteration costs `rows·cols²` independent of the number of tokens. The
//! references sample mini-batches of calibration data per iteration instead;
//! the full batch is their expectation. Rows are independent (the loss and
//! Adam are separable per row), so blocks of rows are optimised in parallel
//! with identical results.
use super::{rtn, Grid, QuantizedLayer};
use anyhow::{ensure, Result};
use rayon::prelude::*;

#[derive(Debug, Clone)]
pub struct AdaRoundConfig {
    pub grid: Grid,
    pub iters: usize,
    pub lr: f32,
    /// Weight of the rounding regulariser.
    pub lambda: f32,
    /// β from `beta.0` to `beta.1`.
    pub beta: (f32, f32),
    /// Fraction of the iterations before the regulariser starts.
    pub warmup: f32,
}

impl AdaRoundConfig {
    pub fn new(grid: Grid) -> Self {
        AdaRoundConfig {
            grid,
            iters: 10_000,
            lr: 1e-3,
            lambda: 0.01,
            beta: (20.0, 2.0),
            warmup: 0.2,
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AdaRoundStats {
    /// Reconstruction loss `mean_t ||ΔW x_t||²` of round-to-nearest and of the learned rounding.
    pub rec_rtn: f64,
    pub rec_ada: f64,
    /// Weights rounded the other way than round-to-nearest.
    pub flipped: usize,
    /// Soft values still away from {0, 1} (|2h−1| < 0.99) before the final hard rounding.
    pub undecided: usize,
}

const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `h(V)` and `dh/dV`.
fn rect_sigmoid(v: f32) -> (f32, f32) {
    let s = sigmoid(v);
    let h = s * (ZETA - GAMMA) + GAMMA;
    if h <= 0.0 {
        (0.0, 0.0)
    } else if h >= 1.0 {
        (1.0, 0.0)
    } else {
        (h, (ZETA - GAMMA) * s * (1.0 - s))
    }
}

/// `mean_t ||ΔW x_t||² = Σ_r Δw_r·A·Δw_rᵀ`.
fn rec_loss(dw: &[f32], a: &[f32], rows: usize, cols: usize) -> f64 {
    (0..rows)
        .into_par_iter()
        .map(|r| {
            let d = &dw[r * cols..(r + 1) * cols];
            let mut s = 0.0f64;
            for i in 0..cols {
                let ai = &a[i * cols..(i + 1) * cols];
                let dot: f32 = ai.iter().zip(d).map(|(x, y)| x * y).sum();
                s += d[i] as f64 * dot as f64;
            }
            s
        })
        .sum()
}

/// AdaRound on `w [rows, cols]` with `h = 2/n·Σ xxᵀ` (GPTQ's Hessian, `cols × cols`).
pub fn adaround(w: &[f32], rows: usize, cols: usize, h: &[f64], cfg: &AdaRoundConfig) -> Result<(QuantizedLayer, AdaRoundStats)> {
    ensure!(w.len() == rows * cols, "weight has {} values, expected {rows}×{cols}", w.len());
    ensure!(h.len() == cols * cols, "Hessian has {} values for {cols} columns", h.len());
    ensure!(
        cfg.iters > 0 && cfg.lr > 0.0 && cfg.lambda >= 0.0,
        "AdaRound: iterations and lr must be > 0"
    );
    let a: Vec<f32> = h.iter().map(|&v| (v * 0.5) as f32).collect();
    let mut q = rtn::quantize(w, rows, cols, cfg.grid);
    let maxq = cfg.grid.maxq();
    let ng = cfg.grid.n_groups(cols);
    let gl = cfg.grid.group_len(cols);
    // Per element: scale, zero, floor(w/s).
    let sz = |r: usize, c: usize| (q.scales[r * ng + c / gl], q.zeros[r * ng + c / gl]);
    let mut base = vec![0.0f32; rows * cols];
    let mut v0 = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let (s, _) = sz(r, c);
            let x = w[r * cols + c] / s;
            let f = x.floor();
            let rest = (x - f).clamp(0.0, 1.0);
            base[r * cols + c] = f;
            // h(V0) = rest: V0 = −ln((ζ−γ)/(rest−γ) − 1)
            v0[r * cols + c] = -(((ZETA - GAMMA) / (rest - GAMMA)) - 1.0).ln();
        }
    }
    let deq = |r: usize, c: usize, hval: f32| {
        let (s, z) = sz(r, c);
        s * ((base[r * cols + c] + hval + z).clamp(0.0, maxq) - z)
    };
    let dw_rtn: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let (s, z) = sz(r, c);
            s * (q.codes[i] as f32 - z) - w[i]
        })
        .collect();
    let rec_rtn = rec_loss(&dw_rtn, &a, rows, cols);

    // Optimise blocks of rows independently (separable loss, elementwise Adam).
    const RB: usize = 8;
    let warm = (cfg.warmup * cfg.iters as f32) as usize;
    let mut v = v0;
    v.par_chunks_mut(RB * cols).enumerate().for_each(|(bi, vb)| {
        let e0 = bi * RB * cols;
        let len = vb.len();
        let nr = len / cols;
        // per element: scale, zero, floor(w/s) + z, w
        let mut sc = vec![0.0f32; len];
        let mut zp = vec![0.0f32; len];
        for i in 0..len {
            (sc[i], zp[i]) = sz((e0 + i) / cols, i % cols);
        }
        let fz: Vec<f32> = (0..len).map(|i| base[e0 + i] + zp[i]).collect();
        let wb = &w[e0..e0 + len];
        let (mut m1, mut m2) = (vec![0.0f32; len], vec![0.0f32; len]);
        let (mut dw, mut g, mut dh, mut hv, mut dsig) = (
            vec![0.0f32; len],
            vec![0.0f32; len],
            vec![0.0f32; len],
            vec![0.0f32; len],
            vec![0.0f32; len],
        );
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let (mut b1t, mut b2t) = (1.0f32, 1.0f32);
        for t in 0..cfg.iters {
            for i in 0..len {
                let (hh, d) = rect_sigmoid(vb[i]);
                hv[i] = hh;
                dsig[i] = d;
                let pre = fz[i] + hh;
                // d w̃ / d h = s inside the grid, 0 where clamped
                dh[i] = if pre > 0.0 && pre < maxq { d * sc[i] } else { 0.0 };
                dw[i] = sc[i] * (pre.clamp(0.0, maxq) - zp[i]) - wb[i];
            }
            // g = 2·ΔW·A (A symmetric): row r of g = 2 Σ_j ΔW[r][j]·A[j]
            for r in 0..nr {
                let gr = &mut g[r * cols..(r + 1) * cols];
                gr.fill(0.0);
                for (j, &d) in dw[r * cols..(r + 1) * cols].iter().enumerate() {
                    if d != 0.0 {
                        let aj = &a[j * cols..(j + 1) * cols];
                        let d2 = 2.0 * d;
                        gr.iter_mut().zip(aj).for_each(|(o, &x)| *o += d2 * x);
                    }
                }
            }
            let reg = if t >= warm {
                let rel = (t - warm) as f32 / (cfg.iters - warm).max(1) as f32;
                Some(cfg.beta.1 + (cfg.beta.0 - cfg.beta.1) * (1.0 - rel).max(0.0))
            } else {
                None
            };
            b1t *= b1;
            b2t *= b2;
            let (c1, c2) = (1.0 / (1.0 - b1t), 1.0 / (1.0 - b2t));
            for i in 0..len {
                let mut gv = g[i] * dh[i];
                if let Some(beta) = reg {
                    // d/dh λ(1 − |2h−1|^β) = −2λβ·|2h−1|^(β−1)·sign(2h−1)
                    let u = 2.0 * hv[i] - 1.0;
                    if u != 0.0 && dsig[i] != 0.0 {
                        let dr = -2.0 * cfg.lambda * beta * u.abs().powf(beta - 1.0) * u.signum();
                        gv += dr * dsig[i];
                    }
                }
                m1[i] = b1 * m1[i] + (1.0 - b1) * gv;
                m2[i] = b2 * m2[i] + (1.0 - b2) * gv * gv;
                vb[i] -= cfg.lr * (m1[i] * c1) / ((m2[i] * c2).sqrt() + eps);
            }
        }
    });

    let mut st = AdaRoundStats {
        rec_rtn,
        ..Default::default()
    };
    let mut dw = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            let (hs, _) = rect_sigmoid(v[i]);
            if (2.0 * hs - 1.0).abs() < 0.99 {
                st.undecided += 1;
            }
            let hard = if v[i] >= 0.0 { 1.0 } else { 0.0 };
            let (_, z) = sz(r, c);
            let code = (base[i] + hard + z).clamp(0.0, maxq);
            if code as u8 != q.codes[i] {
                st.flipped += 1;
            }
            q.codes[i] = code as u8;
            dw[i] = deq(r, c, hard) - w[i];
        }
    }
    st.rec_ada = rec_loss(&dw, &a, rows, cols);
    Ok((q, st))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Learned rounding lowers the output error below round-to-nearest on
    /// correlated inputs, every code stays on RTN's grid within one step of
    /// w/s, and the regulariser decides (almost) every weight.
    #[test]
    fn beats_round_to_nearest_on_the_output() {
        let (rows, cols, n) = (16, 64, 256);
        let mut seed = 5;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        // correlated inputs: a few shared factors plus noise
        let f: Vec<f32> = (0..4 * cols).map(|_| lcg(&mut seed) * 2.0).collect();
        let mut x = vec![0.0f32; n * cols];
        for t in 0..n {
            let z: Vec<f32> = (0..4).map(|_| lcg(&mut seed)).collect();
            for c in 0..cols {
                x[t * cols + c] = (0..4).map(|k| z[k] * f[k * cols + c]).sum::<f32>() + 0.1 * lcg(&mut seed);
            }
        }
        let mut h = vec![0.0f64; cols * cols];
        for t in 0..n {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += 2.0 / n as f64 * x[t * cols + i] as f64 * x[t * cols + j] as f64;
                }
            }
        }
        let grid = Grid {
            bits: 4,
            group: 32,
            sym: false,
        };
        let cfg = AdaRoundConfig::new(grid);
        let (q, st) = adaround(&w, rows, cols, &h, &cfg).unwrap();
        assert!(st.rec_ada < 0.8 * st.rec_rtn, "{st:?}");
        assert!(st.flipped > 0 && st.undecided * 20 < rows * cols, "{st:?}");
        let rtn = rtn::quantize(&w, rows, cols, grid);
        assert_eq!(q.scales, rtn.scales);
        for i in 0..rows * cols {
            let (s, z) = (
                q.scales[(i / cols) * 2 + (i % cols) / 32],
                q.zeros[(i / cols) * 2 + (i % cols) / 32],
            );
            let fl = (w[i] / s).floor() + z;
            assert!(q.codes[i] as f32 == fl.clamp(0.0, 15.0) || q.codes[i] as f32 == (fl + 1.0).clamp(0.0, 15.0));
        }
        // The reported loss is the real output error.
        let deq = q.dequantize();
        let mut e = 0.0f64;
        for t in 0..n {
            for r in 0..rows {
                let d: f32 = (0..cols).map(|c| (deq[r * cols + c] - w[r * cols + c]) * x[t * cols + c]).sum();
                e += (d as f64).powi(2) / n as f64;
            }
        }
        assert!((e - st.rec_ada).abs() < 1e-3 * e.max(1e-9), "{e} vs {}", st.rec_ada);
    }
}
