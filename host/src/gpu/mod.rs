//! Device selection and the GPU backend (feature `cuda`, on by default).
//!
//! The binary links no CUDA library: `cudarc` loads libcuda and cuBLAS at
//! run time (`dynamic-loading`), so the same `edgeq` runs on machines with
//! and without a GPU. [`select`] probes for the driver before anything can
//! touch it (cudarc's `CudaContext::new` panics when libcuda is absent).
//!
//! What runs on the GPU today: the Hessian statistics `Σ xxᵀ` of the
//! calibrated methods (GPTQ and the other Hessian users), accumulated on the
//! device with cuBLAS DGEMM per calibration sample and read back once per
//! layer ([`gram`]). Everything else runs on the CPU. See docs/GPU.md for
//! what has been measured on a real GPU and what has not.
#[cfg(feature = "cuda")]
pub mod gram;

use anyhow::{bail, Result};
use std::sync::OnceLock;

/// `--device`: where the calibrated methods run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    /// The GPU when there is one (and this binary has the `cuda` feature), else the CPU.
    Auto,
    Cpu,
    /// CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceArg::Auto),
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" | "gpu" => Ok(DeviceArg::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceArg::Cuda(n)),
                _ => Err(format!("{s:?}: expected auto, cpu, cuda or cuda:N (N the device ordinal)")),
            },
        }
    }
}

/// The device chosen for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA device: ordinal, name, memory in bytes.
    Cuda {
        ordinal: usize,
        name: String,
        memory: usize,
    },
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda { ordinal, name, memory } => {
                write!(f, "cuda:{ordinal} ({name}, {:.1} GiB)", *memory as f64 / (1u64 << 30) as f64)
            }
        }
    }
}

/// Why there is no usable GPU (for `auto`'s note and `cuda`'s error).
pub fn no_gpu_reason() -> Option<String> {
    #[cfg(not(feature = "cuda"))]
    {
        Some("this edgeq was built without the `cuda` feature (rebuild with `cargo build --release -p edgeq-host --features cuda`)".into())
    }
    #[cfg(feature = "cuda")]
    {
        gram::probe().err()
    }
}

#[cfg(feature = "cuda")]
static GPU: OnceLock<Option<std::sync::Arc<gram::Gpu>>> = OnceLock::new();
static CHOSEN: OnceLock<Device> = OnceLock::new();

/// Resolves `--device` once for the process. `cuda` without a usable GPU
/// is an error that says why; `auto` falls back to the CPU and says why.
/// Returns the device and, for `auto`, a note to print.
pub fn select(arg: DeviceArg) -> Result<(Device, Option<String>)> {
    if let Some(d) = CHOSEN.get() {
        return Ok((d.clone(), None));
    }
    let (dev, note) = match arg {
        DeviceArg::Cpu => (Device::Cpu, None),
        DeviceArg::Auto => match open(0) {
            Ok(d) => {
                let note = format!("device: {d} (auto; --device cpu to stay on the CPU)");
                (d, Some(note))
            }
            Err(why) => (Device::Cpu, Some(format!("device: cpu (auto: {why})"))),
        },
        DeviceArg::Cuda(n) => match open(n) {
            Ok(d) => (d, None),
            Err(why) => bail!("--device cuda:{n}: {why}; use --device cpu (or auto, which falls back to the CPU)"),
        },
    };
    let _ = CHOSEN.set(dev.clone());
    Ok((dev, note))
}

/// The device [`select`] chose (the CPU if it was never called).
pub fn current() -> Device {
    CHOSEN.get().cloned().unwrap_or(Device::Cpu)
}

#[cfg(feature = "cuda")]
fn open(ordinal: usize) -> std::result::Result<Device, String> {
    let g = gram::Gpu::open(ordinal)?;
    let d = Device::Cuda {
        ordinal,
        name: g.name.clone(),
        memory: g.memory,
    };
    let _ = GPU.set(Some(std::sync::Arc::new(g)));
    Ok(d)
}

#[cfg(not(feature = "cuda"))]
fn open(_ordinal: usize) -> std::result::Result<Device, String> {
    Err(no_gpu_reason().unwrap_or_default())
}

/// The GPU opened by [`select`], if any.
#[cfg(feature = "cuda")]
pub fn gpu() -> Option<std::sync::Arc<gram::Gpu>> {
    GPU.get().and_then(|g| g.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_arguments_parse() {
        assert_eq!("auto".parse(), Ok(DeviceArg::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceArg::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceArg::Cuda(3)));
        let e = "cuda:x".parse::<DeviceArg>().unwrap_err();
        assert!(e.contains("cuda:N"), "{e}");
        assert!("tpu".parse::<DeviceArg>().is_err());
    }

    /// Without a GPU, asking for one is an error that says why, and `auto`
    /// says it fell back. (With one, the GPU tests in `gram` run instead.)
    #[test]
    fn without_a_gpu_cuda_is_a_clear_error() {
        let Some(why) = no_gpu_reason() else {
            eprintln!("skipped: a GPU is present ({})", open(0).map(|d| d.to_string()).unwrap_or_default());
            return;
        };
        assert!(!why.is_empty());
        assert!(open(0).is_err());
    }
}
