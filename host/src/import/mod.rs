//! Importers: each turns a checkpoint into an [`ImportedModel`] (config,
//! tokenizer blob, tensors as stored: f32/f16/bf16, or GGUF's quantized
//! blocks carried exactly where EQF has the scheme).
pub mod from_gguf;
pub mod gguf;
pub mod hf;
pub mod hf_quant;
pub mod hf_tokenizer;
pub mod llama2c;

use anyhow::{bail, Result};
use edgeq_core::format::writer::{EqfWriter, TensorEntry};
use edgeq_core::{ModelConfig, QuantSpec, TensorRole};
use std::path::Path;

pub use crate::tensor_data::{for_each_released, MappedBytes, TensorData};

pub struct ImportedModel {
    pub config: ModelConfig,
    pub tokenizer: Vec<u8>,
    pub tensors: Vec<TensorEntry<TensorData>>,
    /// Provenance, stored as the METADATA section.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Activation quantization the checkpoint declares (FP8 W8A8).
    pub acts: Vec<edgeq_core::format::writer::ActEntry>,
    /// Input permutations of act-order layers (GPTQ `desc_act` checkpoints).
    pub perms: Vec<edgeq_core::format::writer::PermEntry>,
}

impl ImportedModel {
    pub fn new(config: ModelConfig, tokenizer: Vec<u8>, source: &Path) -> Self {
        let mut metadata = serde_json::Map::new();
        metadata.insert(
            "source".into(),
            source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .into(),
        );
        metadata.insert("edgeq_version".into(), env!("CARGO_PKG_VERSION").into());
        ImportedModel {
            config,
            tokenizer,
            tensors: Vec::new(),
            metadata,
            acts: Vec::new(),
            perms: Vec::new(),
        }
    }

    /// Adds an f32 tensor.
    pub fn push(&mut self, role: TensorRole, layer: u16, rows: usize, cols: usize, data: &[f32]) {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.push_encoded(role, layer, QuantSpec::F32, rows, cols, bytes.to_vec());
    }

    /// Adds a tensor already encoded in `spec`'s layout.
    pub fn push_encoded(&mut self, role: TensorRole, layer: u16, spec: QuantSpec, rows: usize, cols: usize, data: Vec<u8>) {
        self.push_data(role, layer, spec, rows, cols, TensorData::Owned(data));
    }

    /// Adds a tensor whose bytes stay in a memory-mapped input until the
    /// output is written.
    pub fn push_mapped(&mut self, role: TensorRole, layer: u16, spec: QuantSpec, rows: usize, cols: usize, data: MappedBytes) {
        self.push_data(role, layer, spec, rows, cols, TensorData::Mapped(data));
    }

    fn push_data(&mut self, role: TensorRole, layer: u16, spec: QuantSpec, rows: usize, cols: usize, data: TensorData) {
        self.tensors.push(TensorEntry {
            role,
            layer,
            spec,
            rows: rows as u32,
            cols: cols as u32,
            data,
        });
    }

    /// Validates (config, tensor layouts) and serializes to EQF bytes.
    pub fn to_eqf(self) -> Result<Vec<u8>> {
        let bytes = self.writer()?.try_finish()?;
        // Self-check: what we write must be readable by the runtime.
        let mut aligned = AlignedBytes::from(&bytes[..]);
        edgeq_runtime::Model::from_bytes(aligned.as_mut_bytes())
            .map_err(|e| anyhow::anyhow!("internal error: the written model does not validate: {e}"))?;
        Ok(bytes)
    }

    /// [`ImportedModel::to_eqf`] straight to `path` (atomically), streamed
    /// from the tensors: the model is held once, not three times (tensors,
    /// file image, aligned copy for the check). The written file is then
    /// checked through a memory map. Returns its size.
    pub fn write_eqf(self, path: &Path) -> Result<u64> {
        use std::io::Write;
        let w = self.writer()?;
        crate::model_file::write_atomic_with(path, |out| w.finish_into(|b| out.write_all(b)).map_err(Into::into))?;
        let check = || -> Result<u64> {
            let f = crate::model_file::ModelFile::open(path)?;
            f.model()?;
            Ok(f.bytes().len() as u64)
        };
        check().map_err(|e| {
            let _ = std::fs::remove_file(path);
            e.context(format!(
                "internal error: the written model {} does not validate (removed)",
                path.display()
            ))
        })
    }

    fn writer(self) -> Result<EqfWriter<TensorData>> {
        self.config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut w = EqfWriter::with_sources(self.config, self.tokenizer);
        w.metadata = serde_json::to_vec(&self.metadata)?;
        w.acts = self.acts;
        for t in self.tensors {
            w.add(t).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for p in self.perms {
            w.add_perm(p.role, p.layer, p.perm).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(w)
    }
}

#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Block64([u8; 64]);

/// A 64-byte-aligned copy of some bytes (tests and in-memory round trips).
pub struct AlignedBytes {
    blocks: Vec<Block64>,
    len: usize,
}

impl AlignedBytes {
    pub fn from(bytes: &[u8]) -> Self {
        let mut blocks = vec![Block64([0; 64]); bytes.len().div_ceil(64)];
        bytemuck::cast_slice_mut::<Block64, u8>(&mut blocks)[..bytes.len()].copy_from_slice(bytes);
        AlignedBytes { blocks, len: bytes.len() }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Block64, u8>(&self.blocks)[..self.len]
    }
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<Block64, u8>(&mut self.blocks)[..self.len]
    }
}

/// Imports any supported source: a Hugging Face directory, a `.gguf` file,
/// or a llama2.c checkpoint (with `tokenizer`).
pub fn import(src: &Path, tokenizer: Option<&Path>) -> Result<ImportedModel> {
    if src.is_dir() {
        return hf::import(src);
    }
    let ext = src.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if ext == "gguf" {
        return from_gguf::import(src);
    }
    let tok = match tokenizer {
        Some(t) => t.to_path_buf(),
        None => {
            let t = src.with_file_name("tokenizer.bin");
            if !t.exists() {
                bail!(
                    "{}: a llama2.c checkpoint needs its tokenizer: pass --tokenizer tokenizer.bin",
                    src.display()
                );
            }
            t
        }
    };
    llama2c::import(src, &tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeq_core::format::writer::TensorBytes;
    use std::sync::Arc;

    /// A mapped tensor larger than a piece: its CRC, its bytes and the
    /// pieces the writer gets are those of the slice.
    #[test]
    fn mapped_bytes_are_read_in_pieces() {
        let dir = std::env::temp_dir().join(format!("edgeq-mapped-bytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.bin");
        let len = 2 * MappedBytes::PIECE + 4099;
        std::fs::write(&p, (0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
        let map = Arc::new(crate::model_file::map_readonly(&std::fs::File::open(&p).unwrap(), &p).unwrap());
        let slice = &map[3..len - 5];
        let d = TensorData::Mapped(MappedBytes::new(Arc::clone(&map), slice));
        assert_eq!(d.byte_len(), len - 8);
        assert_eq!(d.crc32(), crc32fast::hash(slice));
        assert_eq!(d.to_vec().unwrap(), slice);
        let mut pieces = Vec::new();
        d.for_each_piece(|b| {
            pieces.push(b.len());
            Ok::<(), std::io::Error>(())
        })
        .unwrap();
        assert_eq!(pieces, [MappedBytes::PIECE, MappedBytes::PIECE, 4099 - 8]);
        // An error from the consumer stops the walk.
        let mut calls = 0;
        assert_eq!(
            d.for_each_piece(|_| {
                calls += 1;
                Err(std::io::Error::other("full"))
            })
            .map_err(|e| e.to_string()),
            Err("full".to_string())
        );
        assert_eq!(calls, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The streamed file is the in-memory image, byte for byte (every
    /// importer writes through `write_eqf`; `to_eqf` is what the tests and
    /// the quantizers compare against).
    #[test]
    fn write_eqf_streams_the_same_bytes_as_to_eqf() {
        let dir = std::env::temp_dir().join(format!("edgeq-write-eqf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.eqf");
        let size = crate::tiny::model(11).unwrap().write_eqf(&p).unwrap();
        let want = crate::tiny::model(11).unwrap().to_eqf().unwrap();
        assert_eq!(size as usize, want.len());
        assert_eq!(std::fs::read(&p).unwrap(), want);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
