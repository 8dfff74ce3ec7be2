//! The reference EQF writer (`alloc` feature). Tensors are added in any
//! order; `finish` sorts them by (layer, role), lays every section and
//! tensor out on 64-byte boundaries, and fills in all checksums.
use super::reader::header_crc;
use super::records::*;
use crate::config::ModelConfig;
use crate::scheme::{QuantSpec, ALIGN};
use alloc::string::String;
use alloc::vec::Vec;

/// Where a tensor's encoded bytes come from when the file is written: an
/// owned buffer, or (on the host) a slice of a memory-mapped input that is
/// read when its turn comes, so a converter need not hold the model.
pub trait TensorBytes {
    /// What reading the bytes can fail with (a file-backed source).
    type Error;
    /// Number of bytes.
    fn byte_len(&self) -> usize;
    /// CRC-32 (IEEE) of the bytes.
    fn crc32(&self) -> u32;
    /// Hands the bytes to `f`, in order, in one or more pieces (a source
    /// may load each piece before its call and release it after).
    fn for_each_piece<E: From<Self::Error>>(&self, f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E>;
}

impl TensorBytes for Vec<u8> {
    type Error = core::convert::Infallible;
    fn byte_len(&self) -> usize {
        self.len()
    }
    fn crc32(&self) -> u32 {
        crc32fast::hash(self)
    }
    fn for_each_piece<E: From<Self::Error>>(&self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        f(self)
    }
}

/// One tensor to write: its already-encoded bytes in `spec`'s layout.
#[derive(Debug, Clone)]
pub struct TensorEntry<D = Vec<u8>> {
    pub role: TensorRole,
    /// [`GLOBAL_LAYER`] for global tensors.
    pub layer: u16,
    pub spec: QuantSpec,
    pub rows: u32,
    pub cols: u32,
    pub data: D,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Data length does not match the spec's layout for the shape.
    BadTensor { name: String, why: &'static str },
    /// Two tensors share (layer, role).
    Duplicate { name: String },
}

impl core::fmt::Display for WriteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WriteError::BadTensor { name, why } => write!(f, "tensor '{name}': {why}"),
            WriteError::Duplicate { name } => write!(f, "tensor '{name}' added twice"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WriteError {}

pub struct EqfWriter<D = Vec<u8>> {
    pub config: ModelConfig,
    pub tokenizer: Vec<u8>,
    /// Optional UTF-8 JSON provenance (source, method, settings).
    pub metadata: Vec<u8>,
    /// Activation quantization of W8A8 layers (the ACT_QUANT section,
    /// written when non-empty, which makes the file EQF 1.1).
    pub acts: Vec<ActEntry>,
    /// Column permutations of linear inputs ([`EqfWriter::add_perm`]; the
    /// INPUT_PERM section: when non-empty the writer sets the config's
    /// `INPUT_PERM` flag and the file is EQF 1.3).
    perms: Vec<PermEntry>,
    tensors: Vec<TensorEntry<D>>,
}

/// A linear layer stored with permuted input columns ([`super::perm`]):
/// stored column `i` multiplies input `x[perm[i]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermEntry {
    pub role: TensorRole,
    pub layer: u16,
    pub perm: Vec<u32>,
}

/// How the runtime quantizes one linear layer's input ([`super::act`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ActEntry {
    pub role: TensorRole,
    pub layer: u16,
    pub mode: super::act::ActMode,
    /// LLM.int8 threshold (0 for other modes).
    pub threshold: f32,
    /// LLM.int8 outlier columns, increasing.
    pub outliers: Vec<u32>,
}

/// `put` and the number of bytes it has been given.
struct Sink<F> {
    put: F,
    pos: u64,
}

impl<F> Sink<F> {
    fn write<E>(&mut self, b: &[u8]) -> Result<(), E>
    where
        F: FnMut(&[u8]) -> Result<(), E>,
    {
        self.pos += b.len() as u64;
        (self.put)(b)
    }
    /// Zeros up to file offset `to`.
    fn pad_to<E>(&mut self, to: u64) -> Result<(), E>
    where
        F: FnMut(&[u8]) -> Result<(), E>,
    {
        const ZEROS: [u8; ALIGN as usize] = [0; ALIGN as usize];
        while self.pos < to {
            self.write(&ZEROS[..(to - self.pos).min(ALIGN) as usize])?;
        }
        Ok(())
    }
}

impl EqfWriter {
    pub fn new(config: ModelConfig, tokenizer: Vec<u8>) -> Self {
        Self::with_sources(config, tokenizer)
    }
}

impl<D: TensorBytes<Error = core::convert::Infallible>> EqfWriter<D> {
    /// Serializes the whole file.
    pub fn finish(self) -> Vec<u8> {
        let Ok(v) = self.try_finish();
        v
    }
}

impl<D: TensorBytes> EqfWriter<D> {
    /// A writer whose tensor bytes are `D`s ([`TensorBytes`]).
    pub fn with_sources(config: ModelConfig, tokenizer: Vec<u8>) -> Self {
        EqfWriter {
            config,
            tokenizer,
            metadata: Vec::new(),
            acts: Vec::new(),
            perms: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn add(&mut self, t: TensorEntry<D>) -> Result<(), WriteError> {
        let name = String::from(
            TensorRecord {
                name: canonical_name(t.role, t.layer),
                ..bytemuck::Zeroable::zeroed()
            }
            .name_str(),
        );
        let layout = t.spec.layout(t.rows, t.cols).map_err(|_| WriteError::BadTensor {
            name: name.clone(),
            why: "invalid spec for shape",
        })?;
        if layout.total_bytes != t.data.byte_len() as u64 {
            return Err(WriteError::BadTensor {
                name,
                why: "data length does not match the scheme's layout",
            });
        }
        if self.tensors.iter().any(|o| o.role == t.role && o.layer == t.layer) {
            return Err(WriteError::Duplicate { name });
        }
        self.tensors.push(t);
        Ok(())
    }

    /// Marks an added block linear as stored with permuted input columns:
    /// stored column `i` multiplies input `x[perm[i]]` (GPTQ act-order).
    pub fn add_perm(&mut self, role: TensorRole, layer: u16, perm: Vec<u32>) -> Result<(), WriteError> {
        let name = String::from(
            TensorRecord {
                name: canonical_name(role, layer),
                ..bytemuck::Zeroable::zeroed()
            }
            .name_str(),
        );
        let bad = |why| WriteError::BadTensor { name: name.clone(), why };
        let Some(t) = self.tensors.iter().find(|t| t.role == role && t.layer == layer) else {
            return Err(bad("input permutation for a tensor that was not added"));
        };
        if !role.is_linear() || role == TensorRole::Output || layer == GLOBAL_LAYER {
            return Err(bad("only a block's linear layers can have an input permutation"));
        }
        let mut seen = alloc::vec![false; t.cols as usize];
        if perm.len() != t.cols as usize
            || !perm
                .iter()
                .all(|&c| seen.get_mut(c as usize).is_some_and(|s| !core::mem::replace(s, true)))
        {
            return Err(bad("input permutation is not a permutation of 0..cols"));
        }
        if self.perms.iter().any(|p| p.role == role && p.layer == layer) {
            return Err(WriteError::Duplicate { name });
        }
        self.perms.push(PermEntry { role, layer, perm });
        Ok(())
    }

    pub fn tensors(&self) -> &[TensorEntry<D>] {
        &self.tensors
    }

    /// The ACT_QUANT section body (records sorted by (layer, role)).
    fn act_section(&mut self) -> Vec<u8> {
        use super::act::ActRecord;
        self.acts.sort_by_key(|a| (a.layer, a.role as u16));
        let mut records = Vec::with_capacity(self.acts.len());
        let mut indices = Vec::new();
        for a in &self.acts {
            records.push(ActRecord {
                layer: a.layer,
                role: a.role as u16,
                mode: a.mode as u8,
                reserved0: 0,
                reserved1: 0,
                threshold: a.threshold,
                first: indices.len() as u32,
                count: a.outliers.len() as u32,
            });
            indices.extend_from_slice(&a.outliers);
        }
        super::table::write(&records, &indices)
    }

    /// The INPUT_PERM section body: records sorted by (layer, role); a
    /// record whose permutation equals an earlier one of the same layer
    /// (q/k/v share their input) shares its run.
    fn perm_section(&mut self) -> Vec<u8> {
        use super::perm::PermRecord;
        self.perms.sort_by_key(|p| (p.layer, p.role as u16));
        let mut runs: Vec<(u16, &[u32], u32)> = Vec::new();
        let mut records = Vec::new();
        let mut indices: Vec<u32> = Vec::new();
        for p in &self.perms {
            let first = match runs.iter().find(|(l, r, _)| *l == p.layer && *r == &p.perm[..]) {
                Some(&(_, _, first)) => first,
                None => {
                    let first = indices.len() as u32;
                    indices.extend_from_slice(&p.perm);
                    let mut inv = alloc::vec![0u32; p.perm.len()];
                    for (i, &c) in p.perm.iter().enumerate() {
                        if let Some(v) = inv.get_mut(c as usize) {
                            *v = i as u32;
                        }
                    }
                    indices.extend_from_slice(&inv);
                    runs.push((p.layer, &p.perm[..], first));
                    first
                }
            };
            records.push(PermRecord {
                layer: p.layer,
                role: p.role as u16,
                first,
            });
        }
        super::table::write(&records, &indices)
    }

    /// Serializes the whole file into memory; fails only if reading a
    /// tensor's bytes does.
    pub fn try_finish(self) -> Result<Vec<u8>, D::Error> {
        let mut out = Vec::new();
        self.finish_into(|b| {
            out.extend_from_slice(b);
            Ok::<(), D::Error>(())
        })?;
        Ok(out)
    }

    /// Serializes the whole file through `put`, piece by piece in file
    /// order: the same bytes as [`EqfWriter::finish`], without gathering
    /// the tensor data into one buffer (a model being written to disk is
    /// held once, in the writer).
    pub fn finish_into<E: From<D::Error>>(mut self, put: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let act = self.act_section();
        let perm = self.perm_section();
        if self.perms.is_empty() {
            self.config.flags &= !crate::config::flags::INPUT_PERM;
        } else {
            self.config.flags |= crate::config::flags::INPUT_PERM;
        }
        self.tensors.sort_by_key(|t| (t.layer, t.role as u16));
        // The directory: each tensor at the next ALIGN boundary of TENSOR_DATA.
        let mut data_len = 0u64;
        let mut records = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let offset = data_len.div_ceil(ALIGN) * ALIGN;
            data_len = offset + t.data.byte_len() as u64;
            records.push(TensorRecord {
                name: canonical_name(t.role, t.layer),
                role: t.role as u16,
                layer: t.layer,
                scheme: t.spec.scheme as u8,
                granularity: t.spec.granularity as u8,
                reserved0: 0,
                rows: t.rows,
                cols: t.cols,
                group: t.spec.group,
                crc32: t.data.crc32(),
                offset,
                size: t.data.byte_len() as u64,
                reserved: [0; 8],
            });
        }
        let dir: Vec<u8> = bytemuck::cast_slice(&records).to_vec();
        let mut sections: Vec<(u32, u32, &[u8])> = alloc::vec![
            (section::CONFIG, 0, bytemuck::bytes_of(&self.config)),
            (section::TOKENIZER, 0, &self.tokenizer[..]),
            (section::TENSOR_DIR, 0, &dir[..]),
        ];
        if !self.metadata.is_empty() {
            sections.push((section::METADATA, section::FLAG_OPTIONAL, &self.metadata[..]));
        }
        if !self.acts.is_empty() {
            sections.push((section::ACT_QUANT, section::FLAG_OPTIONAL, &act[..]));
        }
        if !self.perms.is_empty() {
            // Required: a reader that cannot apply the permutations must refuse the file.
            sections.push((section::INPUT_PERM, 0, &perm[..]));
        }
        sections.push((section::TENSOR_DATA, 0, &[])); // written from the tensors below
        let size = |kind: u32, body: &[u8]| {
            if kind == section::TENSOR_DATA {
                data_len
            } else {
                body.len() as u64
            }
        };

        let dir_end = 64 + 32 * sections.len() as u64;
        let mut offset = dir_end.div_ceil(ALIGN) * ALIGN;
        let mut recs = Vec::new();
        for (kind, flags, body) in &sections {
            let crc32 = if *kind == section::TENSOR_DATA { 0 } else { crc32fast::hash(body) };
            recs.push(SectionRecord {
                kind: *kind,
                flags: *flags,
                offset,
                size: size(*kind, body),
                crc32,
                reserved: 0,
            });
            offset = (offset + size(*kind, body)).div_ceil(ALIGN) * ALIGN;
        }
        let file_size = recs.last().map(|r| r.offset + r.size).unwrap_or(dir_end);
        let mut header = Header {
            magic: MAGIC,
            version_major: VERSION_MAJOR,
            // 1.0 files stay byte-identical; the ACT_QUANT section is 1.1;
            // QuaRot's online Hadamard and int4 activations are 1.2;
            // act-order input permutations are 1.3.
            version_minor: if !self.perms.is_empty() {
                3
            } else if self.config.online_hadamard() || self.acts.iter().any(|a| a.mode == crate::ActMode::Int4Token) {
                2
            } else if self.acts.is_empty() {
                VERSION_MINOR
            } else {
                1
            },
            header_size: 64,
            file_size,
            n_sections: recs.len() as u32,
            section_dir_offset: 64,
            flags: 0,
            header_crc: 0,
            reserved: [0; 24],
        };
        let dir_bytes: &[u8] = bytemuck::cast_slice(&recs);
        header.header_crc = header_crc(&header, dir_bytes);
        let mut out = Sink { put, pos: 0 };
        out.write(bytemuck::bytes_of(&header))?;
        out.write(dir_bytes)?;
        for ((kind, _, body), r) in sections.iter().zip(&recs) {
            out.pad_to(r.offset)?;
            if *kind != section::TENSOR_DATA {
                out.write(body)?;
                continue;
            }
            for (t, rec) in self.tensors.iter().zip(&records) {
                out.pad_to(r.offset + rec.offset)?;
                t.data.for_each_piece(|b| out.write(b))?;
            }
        }
        debug_assert_eq!(out.pos, file_size);
        Ok(())
    }
}
