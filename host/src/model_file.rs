//! Reading EQF files (memory-mapped, so the runtime reads weights in place)
//! and writing any output atomically (temp file in the same directory,
//! fsync, rename): an interrupted job never leaves a half-written file at
//! the output path.
use anyhow::{Context, Result};
use edgeq_core::ParseOptions;
use edgeq_runtime::Model;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An EQF file mapped into memory (page-aligned, so 64-byte aligned).
pub struct ModelFile {
    pub path: PathBuf,
    map: memmap2::Mmap,
}

impl ModelFile {
    pub fn open(path: &Path) -> Result<ModelFile> {
        let f = File::open(path).with_context(|| format!("cannot open model file {}", path.display()))?;
        // SAFETY: the map is read-only; edgeq never writes model files in
        // place (outputs are renamed over), so the bytes cannot change under us
        // unless another program truncates the file, the usual mmap caveat.
        let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("cannot mmap {}", path.display()))?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            map,
        })
    }
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
    /// Parses and validates the model (tensor checksums included).
    pub fn model(&self) -> Result<Model<'_>> {
        self.model_with(ParseOptions::default())
    }
    pub fn model_with(&self, opts: ParseOptions) -> Result<Model<'_>> {
        Model::from_bytes_with(self.bytes(), opts).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let name = path.file_name().context("output path has no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
