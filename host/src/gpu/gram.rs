//! `Σ xxᵀ` on a CUDA device: the calibration statistics GPTQ's Hessian is
//! made of, accumulated with cuBLAS DGEMM (f64, as the CPU path) in device
//! memory and read back once per layer.
#![allow(unsafe_code)]
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use std::sync::{Arc, Mutex};

/// Checks that the CUDA driver and cuBLAS can be loaded, and that there is
/// a device; the error says which is missing.
pub fn probe() -> Result<(), String> {
    // SAFETY: these only try to dlopen the libraries (cudarc's documented
    // way to test for them without the panic `CudaContext::new` gives).
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver on this machine (libcuda.so could not be loaded)".into());
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err("the CUDA driver is present but cuBLAS (libcublas.so) could not be loaded".into());
    }
    match CudaContext::device_count() {
        Ok(0) => Err("the CUDA driver reports no devices".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the CUDA driver failed to start: {e}")),
    }
}

/// One CUDA device with a stream and a cuBLAS handle.
pub struct Gpu {
    pub name: String,
    pub memory: usize,
    stream: Arc<CudaStream>,
    blas: Mutex<CudaBlas>,
}

impl Gpu {
    pub fn open(ordinal: usize) -> Result<Gpu, String> {
        probe()?;
        let n = CudaContext::device_count().map_err(|e| e.to_string())? as usize;
        if ordinal >= n {
            return Err(format!("device {ordinal} does not exist ({n} CUDA device(s): 0..{n})"));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("cannot open CUDA device {ordinal}: {e}"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let memory = ctx.total_mem().unwrap_or(0);
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cannot start cuBLAS: {e}"))?;
        Ok(Gpu {
            name,
            memory,
            stream,
            blas: Mutex::new(blas),
        })
    }
}

/// A `cols × cols` f64 accumulator in device memory.
pub struct Gram {
    gpu: Arc<Gpu>,
    cols: usize,
    acc: CudaSlice<f64>,
}

impl Gram {
    pub fn new(gpu: Arc<Gpu>, cols: usize) -> Result<Gram, String> {
        let acc = gpu
            .stream
            .alloc_zeros::<f64>(cols * cols)
            .map_err(|e| format!("cannot allocate a {cols}×{cols} f64 Gram matrix on the GPU: {e}"))?;
        Ok(Gram { gpu, cols, acc })
    }

    /// `acc += XᵀX` for `n` rows of `cols` floats (`x` row-major).
    pub fn add(&mut self, x: &[f32], n: usize) -> Result<(), String> {
        let c = self.cols;
        let x64: Vec<f64> = x[..n * c].iter().map(|&v| v as f64).collect();
        let dx = self.gpu.stream.clone_htod(&x64).map_err(|e| e.to_string())?;
        // x is n×c row-major, i.e. the c×n column-major matrix A = Xᵀ:
        // acc (c×c) += A·Aᵀ, symmetric, so its layout needs no transpose.
        let cfg = GemmConfig {
            transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
            m: c as i32,
            n: c as i32,
            k: n as i32,
            alpha: 1.0f64,
            lda: c as i32,
            ldb: c as i32,
            beta: 1.0f64,
            ldc: c as i32,
        };
        let blas = self.gpu.blas.lock().map_err(|_| "cuBLAS handle poisoned".to_string())?;
        // SAFETY: A is c×n (lda c) in `dx`, which holds n·c values; C is
        // c×c (ldc c) in `acc`, which holds c·c; the sizes fit in i32 for
        // any layer edgeq quantizes (checked by the caller's shapes).
        unsafe { blas.gemm(cfg, &dx, &dx, &mut self.acc) }.map_err(|e| format!("cuBLAS DGEMM failed: {e}"))?;
        Ok(())
    }

    /// The accumulated matrix, row-major (= column-major: it is symmetric).
    pub fn to_host(&self) -> Result<Vec<f64>, String> {
        self.gpu
            .stream
            .clone_dtoh(&self.acc)
            .map_err(|e| format!("cannot read the Gram matrix back: {e}"))
    }

    /// `acc += m` (a host matrix of the same shape).
    pub fn add_host(&mut self, m: &[f64]) -> Result<(), String> {
        let mut h = self.to_host()?;
        for (a, b) in h.iter_mut().zip(m) {
            *a += b;
        }
        self.gpu.stream.memcpy_htod(&h, &mut self.acc).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPU against CPU on the same rows: the Hessian statistics agree to
    /// f64 rounding. Skips (with the reason) where there is no GPU.
    #[test]
    fn gram_matches_the_cpu() {
        if let Err(why) = probe() {
            eprintln!("skipped: {why}");
            return;
        }
        let gpu = Arc::new(Gpu::open(0).unwrap());
        let (n, c) = (300, 257);
        let x: Vec<f32> = (0..n * c).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0).collect();
        let mut g = Gram::new(gpu, c).unwrap();
        g.add(&x[..100 * c], 100).unwrap();
        g.add(&x[100 * c..], 200).unwrap();
        let got = g.to_host().unwrap();
        let mut cpu = crate::calib::stats::InputStats::new(c, true, 0);
        cpu.cpu_only();
        cpu.add(&x, n);
        let want = cpu.xtx_row_major().unwrap();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(&want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("GPU Σxxᵀ vs CPU: max |Δ| {worst:e} of max |v| {scale:e}");
        assert!(worst <= 1e-12 * scale, "{worst} vs {scale}");
    }
}
