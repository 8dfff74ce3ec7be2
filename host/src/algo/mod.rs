//! Weight quantization algorithms on one linear layer `W [out, in]`
//! (row-major f32): RTN, GPTQ, AWQ, HQQ. Each produces a [`QuantizedLayer`]
//! on an integer grid with the *reference implementation's* f32 parameters
//! (`w = scale · (q − zero)`); [`QuantizedLayer::to_eqf`] then stores it in
//! an EQF scheme (f16 scales, and f16 `min = −scale·zero` for asymmetric
//! grids), as GPTQ/AWQ exports store fp16 scales after choosing codes.
pub mod adaround;
pub mod awq;
pub mod gptq;
pub mod hqq;
pub mod int8;
pub mod quarot;
pub mod rtn;

use anyhow::{bail, ensure, Result};
use edgeq_core::{QuantSpec, Scheme};
use half::f16;

/// The integer grid: `bits` ∈ {4, 8}, `group` columns per scale (0 = one
/// scale per output row), symmetric or asymmetric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub bits: u32,
    pub group: usize,
    pub sym: bool,
}

impl Grid {
    pub fn maxq(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }
    /// Columns per group for a row of `cols` (the whole row when per-channel).
    pub fn group_len(&self, cols: usize) -> usize {
        if self.group == 0 {
            cols
        } else {
            self.group
        }
    }
    pub fn n_groups(&self, cols: usize) -> usize {
        cols.div_ceil(self.group_len(cols))
    }
    /// The EQF spec this grid is stored in.
    pub fn spec(&self) -> Result<QuantSpec> {
        let scheme = match (self.bits, self.sym) {
            (4, true) => Scheme::Q4Sym,
            (4, false) => Scheme::Q4Asym,
            (8, true) => Scheme::Q8Sym,
            (8, false) => Scheme::Q8Asym,
            (b, _) => bail!("{b}-bit grids cannot be stored in EQF (4 or 8 bits)"),
        };
        let spec = if self.group == 0 {
            QuantSpec::per_channel(scheme)
        } else {
            QuantSpec::per_group(scheme, self.group as u32)
        };
        spec.validate().map_err(|e| anyhow::anyhow!("group {}: {e}", self.group))?;
        Ok(spec)
    }
}

/// Fails on the first NaN or infinite weight, naming its row and column:
/// no method can quantize it, and silently producing garbage codes would
/// lose the problem. Callers add the tensor name.
pub fn ensure_finite(w: &[f32], cols: usize) -> anyhow::Result<()> {
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        anyhow::bail!(
            "weight [row {}, column {}] is {}: fix the checkpoint (or keep this tensor unquantized with --skip)",
            i / cols.max(1),
            i % cols.max(1),
            w[i]
        );
    }
    Ok(())
}

/// The reference quantizer's parameters for one set of values
/// (IST-DASLab `quant.py` `find_params`, `maxshrink`/grid search not used):
/// range widened to include 0; sym: `scale = 2·amax/maxq`, `zero = (maxq+1)/2`;
/// asym: `scale = (max−min)/maxq`, `zero = round(−min/scale)`; an all-zero
/// range becomes [−1, 1].
pub fn find_params(grid: &Grid, x: impl Iterator<Item = f32>) -> (f32, f32) {
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    for v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let maxq = grid.maxq();
    if grid.sym {
        hi = hi.max(-lo);
        if lo < 0.0 {
            lo = -hi;
        }
    }
    if lo == 0.0 && hi == 0.0 {
        lo = -1.0;
        hi = 1.0;
    }
    let scale = (hi - lo) / maxq;
    let zero = if grid.sym {
        (maxq + 1.0) / 2.0
    } else {
        (-lo / scale).round_ties_even()
    };
    (scale, zero)
}

/// `clamp(round(x/scale) + zero, 0, maxq)`, torch's round-half-even.
#[inline]
pub fn quantize_value(x: f32, scale: f32, zero: f32, maxq: f32) -> f32 {
    ((x / scale).round_ties_even() + zero).clamp(0.0, maxq)
}

/// A quantized linear layer: codes in `[0, 2^bits)` per element (original
/// column order), and `scale`/`zero` per (row, group).
#[derive(Debug, Clone)]
pub struct QuantizedLayer {
    pub rows: usize,
    pub cols: usize,
    pub grid: Grid,
    pub codes: Vec<u8>,
    /// `rows × n_groups`, row-major.
    pub scales: Vec<f32>,
    /// Zero points in code units (integers except for HQQ).
    pub zeros: Vec<f32>,
    /// Group of each column when groups are not contiguous column ranges
    /// (GPTQ act-order without static groups); `None` = `col / group_len`.
    pub g_idx: Option<Vec<u32>>,
}

impl QuantizedLayer {
    pub fn group_of(&self, col: usize) -> usize {
        match &self.g_idx {
            Some(g) => g[col] as usize,
            None => col / self.grid.group_len(self.cols),
        }
    }

    /// The dequantized weight with the algorithm's own f32 parameters.
    pub fn dequantize(&self) -> Vec<f32> {
        let ng = self.grid.n_groups(self.cols);
        let mut out = vec![0.0f32; self.rows * self.cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                let g = r * ng + self.group_of(c);
                out[r * self.cols + c] = self.scales[g] * (self.codes[r * self.cols + c] as f32 - self.zeros[g]);
            }
        }
        out
    }

    /// Stores a layer whose groups may be scattered (GPTQ act-order with
    /// dynamic groups): columns are reordered so that each group is a
    /// contiguous range, `W' = W[:, perm]` (stable: by group, then by column),
    /// and `perm` comes back for the file's INPUT_PERM section (the runtime
    /// gathers `x[perm]`). `None` when the columns keep their order.
    pub fn to_eqf_permuted(&self) -> Result<(QuantSpec, Vec<u8>, Option<Vec<u32>>)> {
        let Some(g_idx) = &self.g_idx else {
            let (spec, bytes) = self.to_eqf()?;
            return Ok((spec, bytes, None));
        };
        ensure!(
            g_idx.len() == self.cols,
            "g_idx has {} entries for {} columns",
            g_idx.len(),
            self.cols
        );
        let (gl, ng) = (self.grid.group_len(self.cols), self.grid.n_groups(self.cols));
        let mut perm: Vec<u32> = (0..self.cols as u32).collect();
        perm.sort_by_key(|&c| g_idx[c as usize]);
        // Group g must then fill exactly the columns g·gl .. (g+1)·gl.
        for (i, &c) in perm.iter().enumerate() {
            ensure!(
                g_idx[c as usize] as usize == i / gl && (i / gl) < ng,
                "groups of unequal size (column {c} in group {}): cannot store them as contiguous groups",
                g_idx[c as usize]
            );
        }
        if perm.iter().enumerate().all(|(i, &c)| i == c as usize) {
            let plain = QuantizedLayer {
                g_idx: None,
                ..self.clone()
            };
            let (spec, bytes) = plain.to_eqf()?;
            return Ok((spec, bytes, None));
        }
        let mut codes = vec![0u8; self.codes.len()];
        for (dst, src) in codes.chunks_exact_mut(self.cols).zip(self.codes.chunks_exact(self.cols)) {
            for (d, &c) in dst.iter_mut().zip(&perm) {
                *d = src[c as usize];
            }
        }
        let stored = QuantizedLayer {
            codes,
            g_idx: None,
            ..self.clone()
        };
        let (spec, bytes) = stored.to_eqf()?;
        Ok((spec, bytes, Some(perm)))
    }

    /// Stores the layer in EQF: same codes, f16 scale, f16 `min = −scale·zero`.
    /// Layers with scattered groups go through [`QuantizedLayer::to_eqf_permuted`].
    pub fn to_eqf(&self) -> Result<(QuantSpec, Vec<u8>)> {
        ensure!(
            self.g_idx.is_none(),
            "act-order groups are not contiguous: store the layer with its column permutation (to_eqf_permuted)"
        );
        let spec = self.grid.spec()?;
        let l = spec
            .layout(self.rows as u32, self.cols as u32)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(l.groups_per_row as usize == self.grid.n_groups(self.cols), "group layout mismatch");
        let mut out = vec![0u8; l.total_bytes as usize];
        let ng = l.groups_per_row as usize;
        for r in 0..self.rows {
            for g in 0..ng {
                let i = r * ng + g;
                let (s, z) = (self.scales[i], self.zeros[i]);
                let so = l.scales_offset as usize + 2 * i;
                ensure!(f16::from_f32(s).is_finite(), "scale {s} of row {r} group {g} overflows f16");
                out[so..so + 2].copy_from_slice(&f16::from_f32(s).to_le_bytes());
                if spec.scheme.is_asym() {
                    let mo = l.mins_offset as usize + 2 * i;
                    out[mo..mo + 2].copy_from_slice(&f16::from_f32(-s * z).to_le_bytes());
                } else {
                    ensure!(z == (self.grid.maxq() + 1.0) / 2.0, "symmetric grid with zero {z}");
                }
            }
            let row = &mut out[r * l.row_stride as usize..(r + 1) * l.row_stride as usize];
            let pad = if self.grid.sym { (self.grid.maxq() as u32).div_ceil(2) } else { 0 };
            for c in 0..l.padded_cols as usize {
                let q = if c < self.cols { self.codes[r * self.cols + c] as u32 } else { pad };
                match spec.scheme {
                    Scheme::Q8Sym => row[c] = (q as i32 - 128) as i8 as u8,
                    Scheme::Q8Asym => row[c] = q as u8,
                    _ => {
                        let (blk, j) = (c / 32, c % 32);
                        let b = &mut row[blk * 16 + j % 16];
                        if j < 16 {
                            *b = (*b & 0xF0) | q as u8;
                        } else {
                            *b = (*b & 0x0F) | ((q as u8) << 4);
                        }
                    }
                }
            }
        }
        Ok((spec, out))
    }
}

/// `||X Wᵀ − X Ŵᵀ||² / ||X Wᵀ||²` in f64, `x` being `n × cols`.
pub fn output_rel_err(w: &[f32], wq: &[f32], x: &[f32], rows: usize, cols: usize) -> f64 {
    output_rel_err_xq(w, x, wq, x, rows, cols)
}

/// `||X Wᵀ − X̂ Ŵᵀ||² / ||X Wᵀ||²` in f64: the error of a layer whose
/// weights *and* inputs are quantized (W8A8; `xq = X̂`, `n × cols` like `x`).
///
/// Two f64 GEMMs on all threads (faer). The f32 values are exact in f64.
/// When `xq` is `x`, the numerator is `||X (W − Ŵ)ᵀ||²`, and `W − Ŵ` is
/// exact in f64 too, so no digits are lost to cancellation. (This was a
/// scalar loop of `n · rows` dot products on one thread: 45 % of a
/// Llama-3.2-1B GPTQ run went to this report-only number.)
pub fn output_rel_err_xq(w: &[f32], x: &[f32], wq: &[f32], xq: &[f32], rows: usize, cols: usize) -> f64 {
    use faer::{linalg::matmul::matmul, Accum, Mat, Par};
    let n = (x.len() / cols.max(1)).min(xq.len() / cols.max(1));
    if n == 0 || rows == 0 || cols == 0 {
        return 0.0;
    }
    let mat = |v: &[f32], r: usize| Mat::<f64>::from_fn(r, cols, |i, j| v[i * cols + j] as f64);
    let prod = |a: &Mat<f64>, b: &Mat<f64>| {
        let mut out = Mat::<f64>::zeros(n, rows);
        matmul(out.as_mut(), Accum::Replace, a.as_ref(), b.transpose(), 1.0, Par::rayon(0));
        out
    };
    let x64 = mat(x, n);
    let w64 = mat(w, rows);
    let exact = prod(&x64, &w64);
    let diff = if std::ptr::eq(x, xq) {
        let d = Mat::<f64>::from_fn(rows, cols, |i, j| w[i * cols + j] as f64 - wq[i * cols + j] as f64);
        prod(&x64, &d)
    } else {
        let mut q = prod(&mat(xq, n), &mat(wq, rows));
        q -= &exact;
        q
    };
    let sq = |m: &Mat<f64>| (0..m.ncols()).map(|j| m.col(j).iter().map(|v| v * v).sum::<f64>()).sum::<f64>();
    let (num, den) = (sq(&diff), sq(&exact));
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GEMM form against the definition, dot product by dot product.
    #[test]
    fn output_rel_err_matches_the_definition() {
        let (n, rows, cols) = (37, 19, 70);
        let mut s = 7u64;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
        let wq: Vec<f32> = w.iter().map(|v| (v * 8.0).round() / 8.0).collect();
        let xq: Vec<f32> = x.iter().map(|v| (v * 64.0).round() / 64.0).collect();
        let naive = |xq: &[f32]| {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for i in 0..n {
                for r in 0..rows {
                    let dot = |a: &[f32], b: &[f32]| (0..cols).map(|j| a[i * cols + j] as f64 * b[r * cols + j] as f64).sum::<f64>();
                    let (a, b) = (dot(&x, &w), dot(xq, &wq));
                    num += (a - b).powi(2);
                    den += a * a;
                }
            }
            num / den
        };
        for (got, want) in [
            (output_rel_err(&w, &wq, &x, rows, cols), naive(&x)),
            (output_rel_err_xq(&w, &x, &wq, &xq, rows, cols), naive(&xq)),
        ] {
            assert!(want > 1e-5 && (got - want).abs() <= 1e-9 * want, "{got} vs {want}");
        }
        assert_eq!(output_rel_err(&w, &w, &x, rows, cols), 0.0);
        assert_eq!(output_rel_err(&w, &wq, &[], rows, cols), 0.0);
    }
}
