//! `.npy` I/O for the research interface (`edgeq layer`): 2-D float arrays
//! (f32, f64 or f16 on disk; C order), read through `npyz`.
use anyhow::{bail, Context, Result};
use npyz::WriterBuilder;
use std::path::Path;

/// A row-major f32 matrix.
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

pub fn read(path: &Path) -> Result<Matrix> {
    let f = std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
    let npy = npyz::NpyFile::new(f).with_context(|| format!("{}: not a .npy file", path.display()))?;
    let shape = npy.shape().to_vec();
    if npy.order() != npyz::Order::C {
        bail!(
            "{}: Fortran-order arrays are not supported (save with np.ascontiguousarray)",
            path.display()
        );
    }
    let (rows, cols) = match shape[..] {
        [r, c] => (r as usize, c as usize),
        [c] => (1, c as usize),
        _ => bail!("{}: expected a 2-D array, got shape {shape:?}", path.display()),
    };
    let descr = npy.dtype().descr().trim_matches(|c| c == '\'' || c == '"').to_string();
    let data: Vec<f32> = match descr.as_str() {
        "<f4" => npy.into_vec::<f32>()?,
        "<f8" => npy.into_vec::<f64>()?.into_iter().map(|v| v as f32).collect(),
        "<f2" => npy.into_vec::<half::f16>()?.into_iter().map(|v| v.to_f32()).collect(),
        d => bail!("{}: dtype {d} not supported (float32, float64, float16)", path.display()),
    };
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: element {i} (row {}, col {}) is NaN or infinite",
            path.display(),
            i / cols.max(1),
            i % cols.max(1)
        );
    }
    Ok(Matrix { rows, cols, data })
}

/// Writes a float32 C-order `.npy` atomically.
pub fn write(path: &Path, m: &Matrix) -> Result<()> {
    let mut buf = Vec::new();
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[m.rows as u64, m.cols as u64])
            .writer(&mut buf)
            .begin_nd()?;
        w.extend(m.data.iter().copied())?;
        w.finish()?;
    }
    crate::model_file::write_atomic(path, &buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("edgeq-npy-{}", std::process::id()));
        let p = dir.join("a.npy");
        let m = Matrix {
            rows: 2,
            cols: 3,
            data: vec![1.0, -2.5, 3.0, 0.0, 1e-8, 7.0],
        };
        write(&p, &m).unwrap();
        let r = read(&p).unwrap();
        assert_eq!((r.rows, r.cols), (2, 3));
        assert_eq!(r.data, m.data);
    }
}
