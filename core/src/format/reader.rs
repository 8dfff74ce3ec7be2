//! The zero-copy, allocation-free EQF reader. Every offset, length,
//! alignment, scheme and checksum is validated before anything is returned,
//! so later accessors can index without further checks failing.
use super::records::*;
use crate::config::ModelConfig;
use crate::error::{FormatError, TensorName};
use crate::scheme::{Granularity, QuantSpec, Scheme, ALIGN};
use crate::tensor::TensorView;

/// What [`Eqf::parse_with`] verifies beyond structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// Check every tensor's CRC-32 (one pass over all weights; on by default,
    /// switch off for multi-GB memory-mapped models where it would page in
    /// the whole file).
    pub verify_tensor_checksums: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            verify_tensor_checksums: true,
        }
    }
}

/// A validated EQF image borrowed from a byte slice.
#[derive(Clone, Copy)]
pub struct Eqf<'a> {
    bytes: &'a [u8],
    header: &'a Header,
    config: &'a ModelConfig,
    tokenizer: &'a [u8],
    metadata: &'a [u8],
    tensors: &'a [TensorRecord],
    data: &'a [u8],
    act: super::act::ActSection<'a>,
    perm: super::perm::PermSection<'a>,
}

fn read<'a, T: bytemuck::Pod>(bytes: &'a [u8], off: u64, what: &'static str) -> Result<&'a T, FormatError> {
    let size = core::mem::size_of::<T>() as u64;
    let have = bytes.len() as u64;
    let end = off.checked_add(size).ok_or(FormatError::BadHeader("offset overflow"))?;
    if end > have {
        return Err(FormatError::Truncated { what, need: end, have });
    }
    bytemuck::try_from_bytes(&bytes[off as usize..end as usize]).map_err(|_| FormatError::Misaligned {
        what,
        align: core::mem::align_of::<T>() as u32,
    })
}

#[cfg(not(feature = "small-crc"))]
fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// CRC-32 (ISO-HDLC, the same as crc32fast) with a 256-entry table.
#[cfg(feature = "small-crc")]
fn crc(parts: &[&[u8]]) -> u32 {
    static CRC: crc::Crc<u32, crc::Table<1>> = crc::Crc::<u32, crc::Table<1>>::new(&crc::CRC_32_ISO_HDLC);
    let mut d = CRC.digest();
    for p in parts {
        d.update(p);
    }
    d.finalize()
}

/// CRC-32 of the header (with `header_crc` zeroed) and the section directory.
pub(crate) fn header_crc(header: &Header, dir: &[u8]) -> u32 {
    let mut h = *header;
    h.header_crc = 0;
    crc(&[bytemuck::bytes_of(&h), dir])
}

impl<'a> Eqf<'a> {
    /// Parses and fully validates an EQF image, tensor checksums included.
    /// `bytes` must start 64-byte aligned (mmap, or an aligned buffer).
    pub fn parse(bytes: &'a [u8]) -> Result<Eqf<'a>, FormatError> {
        Self::parse_with(bytes, ParseOptions::default())
    }

    pub fn parse_with(bytes: &'a [u8], opts: ParseOptions) -> Result<Eqf<'a>, FormatError> {
        if cfg!(target_endian = "big") {
            return Err(FormatError::UnsupportedEndian);
        }
        if (bytes.as_ptr() as usize) % ALIGN as usize != 0 {
            return Err(FormatError::Misaligned {
                what: "EQF buffer",
                align: ALIGN as u32,
            });
        }
        let have = bytes.len() as u64;
        if have < 8 || bytes[..8] != MAGIC {
            return Err(if have < 8 {
                FormatError::Truncated {
                    what: "header",
                    need: 64,
                    have,
                }
            } else {
                FormatError::BadMagic
            });
        }
        let header: &Header = read(bytes, 0, "header")?;
        if header.version_major != VERSION_MAJOR {
            return Err(FormatError::UnsupportedVersion {
                major: header.version_major,
                minor: header.version_minor,
            });
        }
        if header.header_size != 64 || header.section_dir_offset != 64 {
            return Err(FormatError::BadHeader("header_size / section_dir_offset must be 64"));
        }
        if header.file_size != have {
            return Err(if header.file_size > have {
                FormatError::Truncated {
                    what: "file",
                    need: header.file_size,
                    have,
                }
            } else {
                FormatError::BadHeader("file is longer than header.file_size (trailing bytes)")
            });
        }
        if header.n_sections == 0 || header.n_sections > 64 {
            return Err(FormatError::BadHeader("section count must be 1..=64"));
        }
        let dir_len = header.n_sections as u64 * 32;
        let dir_end = 64 + dir_len;
        if dir_end > have {
            return Err(FormatError::Truncated {
                what: "section directory",
                need: dir_end,
                have,
            });
        }
        let dir_bytes = &bytes[64..dir_end as usize];
        let actual = header_crc(header, dir_bytes);
        if actual != header.header_crc {
            return Err(FormatError::HeaderChecksum {
                expected: header.header_crc,
                actual,
            });
        }
        let sections: &[SectionRecord] = bytemuck::try_cast_slice(dir_bytes).map_err(|_| FormatError::Misaligned {
            what: "section directory",
            align: 8,
        })?;

        let mut found: [Option<&[u8]>; 8] = [None; 8];
        for s in sections {
            let end = s
                .offset
                .checked_add(s.size)
                .ok_or(FormatError::SectionOutOfBounds { kind: s.kind })?;
            if s.offset < dir_end || end > have {
                return Err(FormatError::SectionOutOfBounds { kind: s.kind });
            }
            if s.offset % ALIGN != 0 {
                return Err(FormatError::SectionMisaligned { kind: s.kind });
            }
            let body = &bytes[s.offset as usize..end as usize];
            if s.kind != section::TENSOR_DATA {
                let actual = crc(&[body]);
                if actual != s.crc32 {
                    return Err(FormatError::SectionChecksum {
                        kind: s.kind,
                        expected: s.crc32,
                        actual,
                    });
                }
            }
            match s.kind {
                1..=5 | section::ACT_QUANT | section::INPUT_PERM
                    if (s.kind != section::ACT_QUANT || cfg!(feature = "act-quant"))
                        && (s.kind != section::INPUT_PERM || cfg!(feature = "input-perm")) =>
                {
                    let slot = &mut found[s.kind as usize];
                    if slot.is_some() {
                        return Err(FormatError::DuplicateSection { kind: s.kind });
                    }
                    *slot = Some(body);
                }
                _ if s.flags & section::FLAG_OPTIONAL != 0 => {}
                _ => return Err(FormatError::UnknownSection { kind: s.kind }),
            }
        }
        let need = |k: u32| found[k as usize].ok_or(FormatError::MissingSection { kind: k });
        let config_bytes = need(section::CONFIG)?;
        if config_bytes.len() < ModelConfig::SIZE {
            return Err(FormatError::Truncated {
                what: "CONFIG section",
                need: ModelConfig::SIZE as u64,
                have: config_bytes.len() as u64,
            });
        }
        let config: &ModelConfig = read(config_bytes, 0, "CONFIG section")?;
        config.validate()?;
        let tokenizer = need(section::TOKENIZER)?;
        let dir = need(section::TENSOR_DIR)?;
        let data = need(section::TENSOR_DATA)?;
        let metadata = found[section::METADATA as usize].unwrap_or(&[]);
        if dir.len() % core::mem::size_of::<TensorRecord>() != 0 {
            return Err(FormatError::BadHeader("TENSOR_DIR size is not a multiple of 96"));
        }
        let tensors: &[TensorRecord] = bytemuck::try_cast_slice(dir).map_err(|_| FormatError::Misaligned {
            what: "tensor directory",
            align: 8,
        })?;
        #[cfg_attr(not(any(feature = "act-quant", feature = "input-perm")), allow(unused_mut))]
        let mut eqf = Eqf {
            bytes,
            header,
            config,
            tokenizer,
            metadata,
            tensors,
            data,
            act: Default::default(),
            perm: Default::default(),
        };
        eqf.validate_tensors(opts)?;
        #[cfg(feature = "act-quant")]
        if let Some(body) = found[section::ACT_QUANT as usize] {
            eqf.act = super::act::ActSection::parse(body, |layer, role| {
                let role = TensorRole::from_u16(role)?;
                eqf.find(role, layer).map(|t| t.cols)
            })?;
        }
        #[cfg(feature = "input-perm")]
        if let Some(body) = found[section::INPUT_PERM as usize] {
            eqf.perm = super::perm::PermSection::parse(body, |layer, role| {
                let role = TensorRole::from_u16(role)?;
                eqf.find(role, layer).map(|t| t.cols)
            })?;
        }
        if config.input_perm() != found[section::INPUT_PERM as usize].is_some() {
            return Err(FormatError::BadInputPerm(
                "the config's INPUT_PERM flag and the INPUT_PERM section must come together",
            ));
        }
        Ok(eqf)
    }

    fn validate_tensors(&self, opts: ParseOptions) -> Result<(), FormatError> {
        let mut prev: Option<(u16, u16)> = None;
        for (i, t) in self.tensors.iter().enumerate() {
            let n = t.name.iter().position(|&b| b == 0).unwrap_or(48);
            if n == 0 || core::str::from_utf8(&t.name[..n]).is_err() || t.name[n..].iter().any(|&b| b != 0) {
                return Err(FormatError::BadTensorName { index: i as u32 });
            }
            let name = TensorName(t.name);
            if prev.is_some_and(|p| p >= t.sort_key()) || TensorRole::from_u16(t.role).is_none() {
                return Err(FormatError::UnsortedTensors { tensor: name });
            }
            prev = Some(t.sort_key());
            let spec = record_spec(t)?;
            let layout = spec.layout(t.rows, t.cols).map_err(|_| FormatError::BadQuantSpec {
                tensor: name,
                why: "invalid scheme/granularity/group for this shape",
            })?;
            if layout.total_bytes != t.size {
                return Err(FormatError::TensorSize {
                    tensor: name,
                    expected: layout.total_bytes,
                    actual: t.size,
                });
            }
            if t.offset % ALIGN != 0 {
                return Err(FormatError::TensorMisaligned { tensor: name });
            }
            let end = t
                .offset
                .checked_add(t.size)
                .ok_or(FormatError::TensorOutOfBounds { tensor: name })?;
            if end > self.data.len() as u64 {
                return Err(FormatError::TensorOutOfBounds { tensor: name });
            }
            if opts.verify_tensor_checksums {
                self.verify_tensor_checksum(t)?;
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &'a ModelConfig {
        self.config
    }
    pub fn header(&self) -> &'a Header {
        self.header
    }
    /// The raw TOKENIZER section (parsed by `edgeq_runtime::tokenizer`).
    pub fn tokenizer_bytes(&self) -> &'a [u8] {
        self.tokenizer
    }
    /// The METADATA section (UTF-8 JSON), empty when absent.
    pub fn metadata(&self) -> &'a [u8] {
        self.metadata
    }
    /// The ACT_QUANT section (empty when absent).
    pub fn act_section(&self) -> &super::act::ActSection<'a> {
        &self.act
    }
    /// How the input of a linear layer is quantized at run time, if at all.
    pub fn act_quant(&self, role: TensorRole, layer: u16) -> Option<super::act::ActQuant<'a>> {
        self.act.get(role, layer)
    }
    /// The INPUT_PERM section (empty when absent).
    pub fn perm_section(&self) -> &super::perm::PermSection<'a> {
        &self.perm
    }
    /// The column permutation of a linear layer's input (GPTQ act-order):
    /// stored column `i` multiplies `x[perm[i]]`. `None`: columns in order.
    pub fn input_perm(&self, role: TensorRole, layer: u16) -> Option<&'a [u32]> {
        let cols = self.find(role, layer)?.cols;
        self.perm.get(role, layer, cols)
    }
    pub fn tensors(&self) -> &'a [TensorRecord] {
        self.tensors
    }
    pub fn file_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Binary search by `(layer, role)`.
    pub fn find(&self, role: TensorRole, layer: u16) -> Option<&'a TensorRecord> {
        let key = (layer, role as u16);
        self.tensors
            .binary_search_by(|t| t.sort_key().cmp(&key))
            .ok()
            .and_then(|i| self.tensors.get(i))
    }

    /// The raw bytes of a tensor (all its regions).
    /// Checks a tensor's data against its record's CRC-32 (what `parse`
    /// does for every tensor unless [`ParseOptions::verify_tensor_checksums`]
    /// is off: a host that maps a multi-GB file can check tensor by tensor
    /// and let each one's pages go before the next).
    pub fn verify_tensor_checksum(&self, t: &TensorRecord) -> Result<(), FormatError> {
        let actual = crc(&[self.tensor_bytes(t)?]);
        if actual != t.crc32 {
            return Err(FormatError::TensorChecksum {
                tensor: TensorName(t.name),
                expected: t.crc32,
                actual,
            });
        }
        Ok(())
    }

    pub fn tensor_bytes(&self, t: &TensorRecord) -> Result<&'a [u8], FormatError> {
        let out = FormatError::TensorOutOfBounds {
            tensor: TensorName(t.name),
        };
        // (in u64: on 32-bit targets `as usize` would truncate)
        let end = t.offset.checked_add(t.size).filter(|&e| e <= self.data.len() as u64).ok_or(out)?;
        self.data.get(t.offset as usize..end as usize).ok_or(out)
    }

    /// A typed view of a tensor's data. Records were validated in `parse`,
    /// so this only fails on a record not taken from this file.
    pub fn view(&self, t: &TensorRecord) -> Result<TensorView<'a>, FormatError> {
        let name = TensorName(t.name);
        let spec = record_spec(t)?;
        TensorView::new(spec, t.rows, t.cols, self.tensor_bytes(t)?).map_err(|_| FormatError::TensorSize {
            tensor: name,
            expected: 0,
            actual: t.size,
        })
    }

    /// Finds and views a tensor, checking its shape; `MissingTensor` if absent.
    pub fn tensor(&self, role: TensorRole, layer: u16, rows: u32, cols: u32) -> Result<TensorView<'a>, FormatError> {
        let t = self
            .find(role, layer)
            .ok_or(FormatError::MissingTensor { role: role as u16, layer })?;
        if t.rows != rows || t.cols != cols {
            return Err(FormatError::BadShape {
                tensor: TensorName(t.name),
                expected_rows: rows,
                expected_cols: cols,
                rows: t.rows,
                cols: t.cols,
            });
        }
        self.view(t)
    }
}

/// The quantization spec stored in a record.
pub fn record_spec(t: &TensorRecord) -> Result<QuantSpec, FormatError> {
    let name = TensorName(t.name);
    let scheme = Scheme::from_u8(t.scheme).ok_or(FormatError::UnknownScheme {
        tensor: name,
        scheme: t.scheme,
    })?;
    let granularity = Granularity::from_u8(t.granularity).ok_or(FormatError::BadQuantSpec {
        tensor: name,
        why: "unknown granularity",
    })?;
    let spec = QuantSpec {
        scheme,
        granularity,
        group: t.group,
    };
    spec.validate().map_err(|why| FormatError::BadQuantSpec { tensor: name, why })?;
    Ok(spec)
}
