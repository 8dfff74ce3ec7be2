//! What the observers accumulate on a linear layer's input stream:
//! `Σ xxᵀ` (for GPTQ's Hessian `H = 2/N · Σ xxᵀ`, the reference's running
//! average written in closed form), per-channel mean and max |x| (AWQ,
//! SmoothQuant, INT8), and a bounded subsample of the rows themselves
//! (AWQ's loss and clip search).
use faer::{Accum, Mat, MatRef, Par};

pub struct InputStats {
    pub cols: usize,
    /// Rows (tokens) seen.
    pub n: usize,
    /// `Σ xxᵀ` (cols × cols) on the CPU, when requested and not on the GPU
    /// (or for rows the GPU failed on).
    pub xtx: Option<Mat<f64>>,
    /// `Σ xxᵀ` on the GPU (`--device cuda`).
    #[cfg(feature = "cuda")]
    dev: Option<crate::gpu::gram::Gram>,
    /// Part of `Σ xxᵀ` could not be read back from the GPU: no Hessian.
    #[cfg(feature = "cuda")]
    gpu_failed: bool,
    pub abs_sum: Vec<f64>,
    pub abs_max: Vec<f32>,
    /// Up to `keep_rows` input rows, row-major.
    pub rows: Vec<f32>,
    pub keep_rows: usize,
}

impl InputStats {
    /// Stats of `cols`-wide inputs; `hessian`: also `Σ xxᵀ` (on the GPU
    /// when [`crate::gpu::select`] chose one); `keep_rows`: rows to keep.
    pub fn new(cols: usize, hessian: bool, keep_rows: usize) -> Self {
        #[cfg(feature = "cuda")]
        let dev = crate::gpu::gpu()
            .filter(|_| hessian)
            .and_then(|g| match crate::gpu::gram::Gram::new(g, cols) {
                Ok(d) => Some(d),
                Err(e) => {
                    eprintln!("warning: {e}; this layer's Hessian is accumulated on the CPU");
                    None
                }
            });
        #[cfg(feature = "cuda")]
        let on_gpu = dev.is_some();
        #[cfg(not(feature = "cuda"))]
        let on_gpu = false;
        InputStats {
            cols,
            n: 0,
            xtx: (hessian && !on_gpu).then(|| Mat::zeros(cols, cols)),
            #[cfg(feature = "cuda")]
            dev,
            #[cfg(feature = "cuda")]
            gpu_failed: false,
            abs_sum: vec![0.0; cols],
            abs_max: vec![0.0; cols],
            rows: Vec::new(),
            keep_rows,
        }
    }

    /// Adds `n` input rows of `cols` floats.
    pub fn add(&mut self, x: &[f32], n: usize) {
        let c = self.cols;
        let x = &x[..n * c];
        for row in x.chunks_exact(c) {
            for (j, &v) in row.iter().enumerate() {
                self.abs_sum[j] += v.abs() as f64;
                self.abs_max[j] = self.abs_max[j].max(v.abs());
            }
        }
        #[cfg(feature = "cuda")]
        if let Some(g) = &mut self.dev {
            match g.add(x, n) {
                Ok(()) => {
                    let room = self.keep_rows.saturating_sub(self.rows.len() / c);
                    self.rows.extend_from_slice(&x[..room.min(n) * c]);
                    self.n += n;
                    return;
                }
                Err(e) => {
                    // Nothing is lost: these rows (and later ones) go to the CPU matrix.
                    eprintln!("warning: GPU Σxxᵀ failed ({e}); continuing on the CPU");
                    self.xtx.get_or_insert_with(|| Mat::zeros(c, c));
                }
            }
        }
        if let Some(h) = &mut self.xtx {
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            // x64 is n×c row-major == c×n column-major: that view is Xᵀ.
            let xt = MatRef::from_column_major_slice(&x64, c, n);
            faer::linalg::matmul::matmul(h.as_mut(), Accum::Add, xt, xt.transpose(), 1.0, Par::Seq);
        }
        let room = self.keep_rows.saturating_sub(self.rows.len() / c);
        self.rows.extend_from_slice(&x[..room.min(n) * c]);
        self.n += n;
    }

    pub fn merge(&mut self, o: &InputStats) {
        self.n += o.n;
        for j in 0..self.cols {
            self.abs_sum[j] += o.abs_sum[j];
            self.abs_max[j] = self.abs_max[j].max(o.abs_max[j]);
        }
        if let (Some(a), Some(b)) = (&mut self.xtx, &o.xtx) {
            *a += b;
        } else if let (None, Some(b)) = (&self.xtx, &o.xtx) {
            self.xtx = Some(b.clone());
        }
        #[cfg(feature = "cuda")]
        if let Some(b) = &o.dev {
            match b.to_host() {
                Ok(m) => {
                    if !matches!(self.dev.as_mut().map(|a| a.add_host(&m)), Some(Ok(()))) {
                        let h = self.xtx.get_or_insert_with(|| Mat::zeros(self.cols, self.cols));
                        *h += MatRef::from_column_major_slice(&m, self.cols, self.cols);
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    self.gpu_failed = true;
                }
            }
        }
        let room = self.keep_rows.saturating_sub(self.rows.len() / self.cols);
        let take = room.min(o.rows.len() / self.cols);
        self.rows.extend_from_slice(&o.rows[..take * self.cols]);
    }

    /// Mean |x| per input channel.
    pub fn mean_abs(&self) -> Vec<f32> {
        self.abs_sum.iter().map(|&s| (s / self.n.max(1) as f64) as f32).collect()
    }

    /// Keeps `Σ xxᵀ` on the CPU (tests comparing the two devices).
    pub fn cpu_only(&mut self) {
        #[cfg(feature = "cuda")]
        if self.dev.take().is_some() && self.xtx.is_none() {
            self.xtx = Some(Mat::zeros(self.cols, self.cols));
        }
    }

    /// `Σ xxᵀ`, row-major f64 (the GPU's part read back), if collected.
    pub fn xtx_row_major(&self) -> Option<Vec<f64>> {
        let c = self.cols;
        #[cfg(feature = "cuda")]
        if self.gpu_failed {
            return None;
        }
        #[cfg(feature = "cuda")]
        let dev = match &self.dev {
            Some(g) => match g.to_host() {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!("error: {e}");
                    return None;
                }
            },
            None => None,
        };
        #[cfg(not(feature = "cuda"))]
        let dev: Option<Vec<f64>> = None;
        if dev.is_none() && self.xtx.is_none() {
            return None;
        }
        let mut out = dev.unwrap_or_else(|| vec![0.0; c * c]);
        if let Some(h) = &self.xtx {
            for i in 0..c {
                for j in 0..c {
                    out[i * c + j] += h[(i, j)];
                }
            }
        }
        Some(out)
    }

    /// GPTQ's Hessian `2/N · Σ xxᵀ`, row-major f64.
    pub fn hessian(&self) -> Option<Vec<f64>> {
        let k = 2.0 / self.n.max(1) as f64;
        let mut out = self.xtx_row_major()?;
        for v in &mut out {
            *v *= k;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulates_and_merges() {
        let x: Vec<f32> = (0..12).map(|i| i as f32 - 5.0).collect(); // 4 rows × 3
        let mut a = InputStats::new(3, true, 3);
        a.add(&x[..6], 2);
        let mut b = InputStats::new(3, true, 3);
        b.add(&x[6..], 2);
        a.merge(&b);
        let mut whole = InputStats::new(3, true, 3);
        whole.add(&x, 4);
        assert_eq!(a.n, 4);
        assert_eq!(a.hessian(), whole.hessian());
        assert_eq!(a.mean_abs(), whole.mean_abs());
        assert_eq!(a.rows, whole.rows);
        assert_eq!(a.rows.len(), 9);
        let h = whole.hessian().unwrap();
        // H[0][1] = 2/4 Σ x0·x1
        let s: f64 = x.chunks(3).map(|r| r[0] as f64 * r[1] as f64).sum();
        assert!((h[1] - 0.5 * s).abs() < 1e-9);
    }
}
