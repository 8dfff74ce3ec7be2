//! Where the bytes of a tensor being written come from: memory, a
//! memory-mapped input (an imported shard), or a file spilled to disk (a
//! quantized block in a resumable job's checkpoint). The EQF writer asks
//! for each tensor's length and CRC up front and reads the bytes piece by
//! piece when their turn comes, so an import or a quantization writes a
//! model it does not hold.
use edgeq_core::format::writer::TensorBytes;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

/// Pieces are read (and mapped pages released) this many bytes at a time.
pub const PIECE: usize = 16 << 20;

pub enum TensorData {
    Owned(Vec<u8>),
    Mapped(MappedBytes),
    Spilled(SpilledBytes),
}

/// A byte range of a read-only memory-mapped input, with its CRC-32
/// computed when it was checked at import.
pub struct MappedBytes {
    map: Arc<memmap2::Mmap>,
    start: usize,
    len: usize,
    crc: u32,
}

impl MappedBytes {
    /// Pieces are read and released this many bytes at a time.
    pub const PIECE: usize = PIECE;

    /// `bytes` must lie inside `map`. Computes the CRC, a piece at a time,
    /// letting each piece's pages go after it.
    pub fn new(map: Arc<memmap2::Mmap>, bytes: &[u8]) -> Self {
        Self::checked(map, bytes, |_| Ok::<(), std::convert::Infallible>(())).unwrap_or_else(|e| match e {})
    }

    /// [`MappedBytes::new`] that also hands each piece to `check` in the
    /// same pass (an importer's NaN/Inf scan), stopping at its first error.
    pub fn checked<E>(map: Arc<memmap2::Mmap>, bytes: &[u8], mut check: impl FnMut(&[u8]) -> Result<(), E>) -> Result<Self, E> {
        let start = (bytes.as_ptr() as usize).wrapping_sub(map.as_ptr() as usize);
        assert!(
            start <= map.len() && bytes.len() <= map.len() - start,
            "MappedBytes::new: the bytes are not part of the mapping"
        );
        let mut crc = crc32fast::Hasher::new();
        for_each_released(&map, bytes, |p| {
            check(p)?;
            crc.update(p);
            Ok(())
        })?;
        Ok(MappedBytes {
            map,
            start,
            len: bytes.len(),
            crc: crc.finalize(),
        })
    }
}

/// Calls `f` on `bytes` (part of the read-only mapping `map`) in
/// [`PIECE`]-sized pieces, letting each piece's pages go after its call:
/// walking a multi-GB tensor keeps one piece resident.
pub fn for_each_released<E>(map: &memmap2::Mmap, bytes: &[u8], mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
    for p in bytes.chunks(PIECE) {
        let r = f(p);
        crate::model_file::release_pages(map, p);
        r?;
    }
    Ok(())
}

/// `len` bytes at `offset` of the file `path`, written earlier by this
/// process or a run it resumes, with the CRC-32 they had then. Reading
/// them checks the CRC again: a spill file changed on disk is an error,
/// not a silently corrupt output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpilledBytes {
    pub path: PathBuf,
    pub offset: u64,
    pub len: usize,
    pub crc: u32,
}

impl SpilledBytes {
    fn for_each_piece(&self, mut f: impl FnMut(&[u8]) -> Result<(), std::io::Error>) -> Result<(), std::io::Error> {
        let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display()));
        let mut file = std::fs::File::open(&self.path).map_err(named)?;
        file.seek(SeekFrom::Start(self.offset)).map_err(named)?;
        let mut buf = vec![0u8; self.len.min(PIECE)];
        let (mut left, mut crc) = (self.len, crc32fast::Hasher::new());
        while left > 0 {
            let b = &mut buf[..left.min(PIECE)];
            file.read_exact(b).map_err(|e| {
                named(std::io::Error::new(
                    e.kind(),
                    format!("{e} ({} bytes at offset {}: file truncated?)", self.len, self.offset),
                ))
            })?;
            crc.update(b);
            f(b)?;
            left -= b.len();
        }
        let actual = crc.finalize();
        if actual != self.crc {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: {} bytes at offset {} changed since they were written (CRC {:#010x}, expected {:#010x}); delete the file's directory and run again",
                    self.path.display(),
                    self.len,
                    self.offset,
                    actual,
                    self.crc
                ),
            ));
        }
        Ok(())
    }
}

impl TensorData {
    /// The bytes (mapped or spilled ones are read from their file).
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.byte_len());
        self.for_each_piece(|p| {
            v.extend_from_slice(p);
            Ok::<(), std::io::Error>(())
        })?;
        Ok(v)
    }
}

impl TensorBytes for TensorData {
    type Error = std::io::Error;
    fn byte_len(&self) -> usize {
        match self {
            TensorData::Owned(v) => v.len(),
            TensorData::Mapped(m) => m.len,
            TensorData::Spilled(s) => s.len,
        }
    }
    fn crc32(&self) -> u32 {
        match self {
            TensorData::Owned(v) => crc32fast::hash(v),
            TensorData::Mapped(m) => m.crc,
            TensorData::Spilled(s) => s.crc,
        }
    }
    fn for_each_piece<E: From<std::io::Error>>(&self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        match self {
            TensorData::Owned(v) => f(v),
            TensorData::Mapped(m) => for_each_released(&m.map, &m.map[m.start..m.start + m.len], f),
            TensorData::Spilled(s) => {
                // The consumer's error is kept aside so the reader's is the only io::Error.
                let mut theirs = None;
                let r = s.for_each_piece(|p| {
                    f(p).map_err(|e| {
                        theirs = Some(e);
                        std::io::Error::other("stopped by the consumer")
                    })
                });
                match (theirs, r) {
                    (Some(e), _) => Err(e),
                    (None, r) => r.map_err(E::from),
                }
            }
        }
    }
}

/// An in-memory entry as a [`TensorData`] one.
pub fn owned(e: edgeq_core::format::writer::TensorEntry) -> edgeq_core::format::writer::TensorEntry<TensorData> {
    edgeq_core::format::writer::TensorEntry {
        role: e.role,
        layer: e.layer,
        spec: e.spec,
        rows: e.rows,
        cols: e.cols,
        data: TensorData::Owned(e.data),
    }
}

impl From<Vec<u8>> for TensorData {
    fn from(v: Vec<u8>) -> Self {
        TensorData::Owned(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spilled bytes read back in pieces with their CRC checked; a changed
    /// or truncated file is an error naming it.
    #[test]
    fn spilled_bytes_read_back_and_check_their_crc() {
        let dir = std::env::temp_dir().join(format!("edgeq-spilled-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("block-0.bin");
        let len = PIECE + 123;
        let bytes: Vec<u8> = (0..len + 10).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let s = SpilledBytes {
            path: p.clone(),
            offset: 10,
            len,
            crc: crc32fast::hash(&bytes[10..]),
        };
        let d = TensorData::Spilled(s.clone());
        assert_eq!(d.to_vec().unwrap(), &bytes[10..]);
        let mut pieces = Vec::new();
        d.for_each_piece(|b| {
            pieces.push(b.len());
            Ok::<(), std::io::Error>(())
        })
        .unwrap();
        assert_eq!(pieces, [PIECE, 123]);
        // The consumer's own error comes back as it was.
        let e = d.for_each_piece(|_| Err::<(), _>(anyhow::anyhow!("disk full"))).unwrap_err();
        assert_eq!(e.to_string(), "disk full");
        // A changed byte: the CRC no longer matches.
        let mut changed = bytes.clone();
        changed[len] ^= 1;
        std::fs::write(&p, &changed).unwrap();
        let e = d.to_vec().unwrap_err().to_string();
        assert!(e.contains("block-0.bin") && e.contains("changed since they were written"), "{e}");
        // Truncated.
        std::fs::write(&p, &bytes[..len]).unwrap();
        let e = d.to_vec().unwrap_err().to_string();
        assert!(e.contains("block-0.bin") && e.contains("truncated"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
