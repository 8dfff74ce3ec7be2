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

/// An EQF file mapped into memory (page-aligned, so 64-byte aligned), or
/// an image built in memory (e.g. a QuaRot-rotated model).
pub struct ModelFile {
    pub path: PathBuf,
    map: Backing,
}

enum Backing {
    Map(memmap2::Mmap),
    Owned(crate::import::AlignedBytes),
}

impl ModelFile {
    pub fn open(path: &Path) -> Result<ModelFile> {
        let f = File::open(path).with_context(|| format!("cannot open model file {}", path.display()))?;
        let map = map_readonly(&f, path)?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            map: Backing::Map(map),
        })
    }
    /// An image held in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> ModelFile {
        ModelFile {
            path: path.to_path_buf(),
            map: Backing::Owned(crate::import::AlignedBytes::from(bytes)),
        }
    }
    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Backing::Map(m) => m,
            Backing::Owned(b) => b.as_bytes(),
        }
    }
    /// Parses and validates the model (tensor checksums included).
    pub fn model(&self) -> Result<Model<'_>> {
        self.model_with(ParseOptions::default())
    }
    /// Parses and validates the model. A memory-mapped file's tensor
    /// checksums are checked one tensor at a time, each tensor's pages let
    /// go after its check ([`ModelFile::release`]): opening a multi-GB model
    /// does not leave all of it resident.
    pub fn model_with(&self, opts: ParseOptions) -> Result<Model<'_>> {
        let here = opts.verify_tensor_checksums && matches!(self.map, Backing::Map(_));
        let parse = ParseOptions {
            verify_tensor_checksums: opts.verify_tensor_checksums && !here,
        };
        let m = Model::from_bytes_with(self.bytes(), parse).map_err(|e| self.named(e))?;
        if here {
            for t in m.eqf.tensors() {
                // Core's `verify_tensor_checksum`, a piece at a time, each
                // piece let go after it (an embedding alone is ~0.5 GB).
                let mut h = crc32fast::Hasher::new();
                for p in m
                    .eqf
                    .tensor_bytes(t)
                    .map_err(|e| self.named(e))?
                    .chunks(crate::import::MappedBytes::PIECE)
                {
                    h.update(p);
                    self.release(p);
                }
                let actual = h.finalize();
                if actual != t.crc32 {
                    return Err(self.named(edgeq_core::FormatError::TensorChecksum {
                        tensor: edgeq_core::error::TensorName(t.name),
                        expected: t.crc32,
                        actual,
                    }));
                }
            }
        }
        Ok(m)
    }

    /// A parse or validation error, named with this file's path.
    fn named(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: {e}", self.path.display())
    }

    /// Lets the OS drop the resident pages of `bytes` (part of this file's
    /// mapping): they are read back from the file if touched again. A job
    /// that walks a big model block by block calls it for each block it has
    /// finished, so its resident memory stays at about one block. No-op for
    /// an image held in memory, or outside the mapping.
    pub fn release(&self, bytes: &[u8]) {
        if let Backing::Map(m) = &self.map {
            release_pages(m, bytes);
        }
    }
}

/// Lets the OS drop the resident pages of `bytes`, a part of the read-only
/// mapping `m` from [`map_readonly`]: they are read back from the file if
/// touched again. No-op outside the mapping and off Unix.
#[allow(unsafe_code)]
pub fn release_pages(m: &memmap2::Mmap, bytes: &[u8]) {
    #[cfg(unix)]
    {
        let (base, start) = (m.as_ptr() as usize, bytes.as_ptr() as usize);
        if !bytes.is_empty() && start >= base && start + bytes.len() <= base + m.len() {
            // SAFETY: `m` is a read-only private mapping of a file that
            // is never written in place (see map_readonly): MADV_DONTNEED
            // only drops page-table entries, and the next access faults
            // the same bytes back in from the file. (It would lose data
            // only in anonymous or written private pages, which this
            // mapping has none of.) The range is inside the mapping.
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start - base, bytes.len()) };
        }
    }
    #[cfg(not(unix))]
    let _ = (m, bytes);
}

/// Maps `file` (opened from `path`, named in errors) read-only. With
/// [`release_pages`], the host crate's only `unsafe`: every
/// memory-mapped reader goes through here.
#[allow(unsafe_code)]
pub fn map_readonly(file: &File, path: &Path) -> Result<memmap2::Mmap> {
    // SAFETY: the map is read-only; edgeq never writes an input file in place
    // (outputs are renamed over), so the bytes cannot change under us unless
    // another program truncates or rewrites the file while it is open, the
    // usual caveat of every mmap-based reader.
    unsafe { memmap2::Mmap::map(file) }.with_context(|| format!("cannot memory-map {}", path.display()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes).map_err(Into::into))
}

/// Writes a directory of files atomically: they are written and fsynced in a
/// temporary sibling directory, which then replaces `path` by renames (an
/// existing `path` is moved aside first and removed only after the new one
/// is in place). On any error `path` is untouched and the temporary
/// directory removed.
pub fn write_dir_atomic(path: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    write_dir_atomic_with(path, |tmp| {
        for (file, bytes) in files {
            anyhow::ensure!(!file.contains(['/', '\\']), "bad output file name {file:?}");
            let p = tmp.join(file);
            let mut f = File::create(&p).with_context(|| format!("cannot create {}", p.display()))?;
            f.write_all(bytes).with_context(|| format!("cannot write {}", p.display()))?;
            f.sync_all().with_context(|| format!("cannot fsync {}", p.display()))?;
        }
        Ok(())
    })
}

/// [`write_dir_atomic`] with the files written by `fill` into the
/// temporary directory it is given (each fsynced by `fill`), for outputs
/// too large to hold in memory.
pub fn write_dir_atomic_with(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create directory {}", parent.display()))?;
    let name = path.file_name().context("output path has no file name")?.to_string_lossy();
    if path.exists() {
        anyhow::ensure!(path.is_dir(), "{} exists and is not a directory", path.display());
    }
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        fill(&tmp)?;
        if let Ok(d) = File::open(&tmp) {
            let _ = d.sync_all();
        }
        let had_old = path.exists();
        if had_old {
            std::fs::rename(path, &old).with_context(|| format!("cannot move {} aside", path.display()))?;
        }
        if let Err(e) = std::fs::rename(&tmp, path) {
            if had_old {
                let _ = std::fs::rename(&old, path);
            }
            return Err(e).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()));
        }
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Streams an output to `path` atomically: `fill` writes into a temporary
/// file in the same directory, which is fsynced and renamed over `path` only
/// when `fill` succeeds; on any error the temporary file is removed and
/// `path` is untouched.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::io::BufWriter<File>) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let name = path.file_name().context("output path has no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w).with_context(|| format!("cannot write {}", tmp.display()))?;
        let f = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapped file is checked tensor by tensor (a flipped data byte is
    /// still a checksum error naming the file and the tensor), and after
    /// `release` its pages read back the same bytes.
    #[test]
    fn mapped_models_are_checked_per_tensor_and_released_pages_read_back() {
        let bytes = crate::tiny::model(3).unwrap().to_eqf().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.eqf");
        std::fs::write(&path, &bytes).unwrap();
        let f = ModelFile::open(&path).unwrap();
        let m = f.model().unwrap();
        let t = &m.eqf.tensors()[0];
        let data = m.eqf.tensor_bytes(t).unwrap();
        let before = data.to_vec();
        f.release(f.bytes());
        assert_eq!(data, &before[..]);
        assert_eq!(f.bytes(), &bytes[..]);

        // the same tensor with one byte changed
        let at = data.as_ptr() as usize - f.bytes().as_ptr() as usize + data.len() / 2;
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        let bad_path = dir.path().join("bad.eqf");
        std::fs::write(&bad_path, &bad).unwrap();
        let err = ModelFile::open(&bad_path).unwrap().model().err().unwrap().to_string();
        assert!(
            err.contains("bad.eqf") && err.contains("checksum") && err.contains(t.name_str()),
            "{err}"
        );
        // an in-memory image: the checksum is checked by the parser
        let err = ModelFile::from_bytes(&path, &bad).model().err().unwrap().to_string();
        assert!(err.contains("checksum") && err.contains(t.name_str()), "{err}");
    }
}
