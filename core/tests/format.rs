//! Integration tests of the EQF reader and writer: a small valid file is
//! built with `EqfWriter`, parsed, truncated, bit-flipped and patched into
//! every malformed shape the reader must reject with a typed error.
#![cfg(feature = "alloc")]

use edgeq_core::config::{flags, ARCH_LLAMA};
use edgeq_core::format::writer::{EqfWriter, TensorEntry, WriteError};
use edgeq_core::format::{section, GLOBAL_LAYER, MAGIC, VERSION_MAJOR, VERSION_MINOR};
use edgeq_core::quant::quantize;
use edgeq_core::{Eqf, FormatError, ModelConfig, ParseOptions, QuantSpec, Scheme, TensorRole};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A byte buffer whose visible window starts at a chosen offset from a
/// 64-byte boundary (0 = aligned), without any `unsafe`.
struct Buf {
    store: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    fn with_misalignment(bytes: &[u8], misalign: usize) -> Buf {
        let mut store = vec![0u8; bytes.len() + 128];
        let base = store.as_ptr().align_offset(64);
        assert!(base < 64);
        let start = base + misalign;
        store[start..start + bytes.len()].copy_from_slice(bytes);
        Buf {
            store,
            start,
            len: bytes.len(),
        }
    }
    fn aligned(bytes: &[u8]) -> Buf {
        Self::with_misalignment(bytes, 0)
    }
    fn bytes(&self) -> &[u8] {
        &self.store[self.start..self.start + self.len]
    }
    fn prefix(&self, n: usize) -> &[u8] {
        &self.store[self.start..self.start + n]
    }
}

fn parse(bytes: &[u8]) -> Result<Eqf<'_>, FormatError> {
    Eqf::parse(bytes)
}

fn rd_u16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn rd_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn rd_u64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn wr_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn wr_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn wr_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

// Header field offsets (docs/FORMAT.md §2).
const H_MAJOR: usize = 8;
const H_MINOR: usize = 10;
const H_HEADER_SIZE: usize = 12;
const H_FILE_SIZE: usize = 16;
const H_N_SECTIONS: usize = 24;
const H_CRC: usize = 36;
// Section record field offsets (§3).
const S_KIND: usize = 0;
const S_FLAGS: usize = 4;
const S_OFFSET: usize = 8;
const S_SIZE: usize = 16;
const S_CRC: usize = 24;
// Tensor record field offsets (§6).
const T_ROLE: usize = 48;
const T_LAYER: usize = 50;
const T_SCHEME: usize = 52;
const T_GRAN: usize = 53;
const T_ROWS: usize = 56;
const T_COLS: usize = 60;
const T_GROUP: usize = 64;
const T_CRC: usize = 68;
const T_OFFSET: usize = 72;
const T_SIZE: usize = 80;
const T_REC: usize = 96;

#[derive(Debug, Clone, Copy)]
struct Sec {
    rec: usize, // offset of the directory record
    kind: u32,
    offset: usize,
    size: usize,
}

fn sections(b: &[u8]) -> Vec<Sec> {
    let n = rd_u32(b, H_N_SECTIONS) as usize;
    if n > 64 || 64 + 32 * n > b.len() {
        return Vec::new(); // corrupt directory: nothing to re-seal
    }
    (0..n)
        .map(|i| {
            let rec = 64 + 32 * i;
            Sec {
                rec,
                kind: rd_u32(b, rec + S_KIND),
                offset: rd_u64(b, rec + S_OFFSET) as usize,
                size: rd_u64(b, rec + S_SIZE) as usize,
            }
        })
        .collect()
}

fn sec(b: &[u8], kind: u32) -> Sec {
    sections(b).into_iter().find(|s| s.kind == kind).expect("section present")
}

/// Recomputes every section CRC (TENSOR_DATA stays 0) and then the header CRC.
fn fix_crcs(b: &mut [u8]) {
    for s in sections(b) {
        let in_file = s.offset.checked_add(s.size).is_some_and(|e| e <= b.len());
        if s.kind != section::TENSOR_DATA && in_file {
            let c = crc32fast::hash(&b[s.offset..s.offset + s.size]);
            wr_u32(b, s.rec + S_CRC, c);
        }
    }
    fix_header_crc(b);
}

/// Header CRC = CRC-32 of the 64 header bytes with `header_crc` zeroed,
/// followed by the section directory.
fn fix_header_crc(b: &mut [u8]) {
    let n = rd_u32(b, H_N_SECTIONS) as usize;
    if n > 64 || 64 + 32 * n > b.len() {
        return;
    }
    let mut h = crc32fast::Hasher::new();
    let mut head = [0u8; 64];
    head.copy_from_slice(&b[..64]);
    head[H_CRC..H_CRC + 4].fill(0);
    h.update(&head);
    h.update(&b[64..64 + 32 * n]);
    wr_u32(b, H_CRC, h.finalize());
}

/// Byte offset (in the file) of tensor record `i`.
fn trec(b: &[u8], i: usize) -> usize {
    sec(b, section::TENSOR_DIR).offset + i * T_REC
}

/// Deterministic pseudo-random generator (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        // uniform in [-1, 1)
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn config() -> ModelConfig {
    ModelConfig {
        arch: ARCH_LLAMA,
        flags: flags::TIED_EMBEDDINGS,
        dim: 64,
        hidden_dim: 172,
        n_layers: 1,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size: 32,
        max_seq_len: 128,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        rope_scaling: 0,
        rope_factor: 0.0,
        rope_low_freq_factor: 0.0,
        rope_high_freq_factor: 0.0,
        rope_original_max_pos: 0,
        rope_dim: 16,
        bos_id: 1,
        eos_id: 2,
        reserved: [0; 12],
    }
}

struct Src {
    role: TensorRole,
    layer: u16,
    spec: QuantSpec,
    rows: u32,
    cols: u32,
    values: Vec<f32>,
    data: Vec<u8>,
}

fn make(role: TensorRole, layer: u16, spec: QuantSpec, rows: u32, cols: u32, rng: &mut Rng) -> Src {
    let values: Vec<f32> = (0..rows as usize * cols as usize).map(|_| rng.f32()).collect();
    let n = spec.layout(rows, cols).unwrap().total_bytes as usize;
    // quantize wants a 4-byte aligned output buffer for nothing but speed;
    // a Vec<u8> from the global allocator is fine, TensorView checks later.
    let mut data = vec![0u8; n];
    quantize(spec, rows, cols, &values, &mut data).unwrap();
    Src {
        role,
        layer,
        spec,
        rows,
        cols,
        values,
        data,
    }
}

/// The tensors of the test model, deliberately added out of order.
fn model_tensors() -> Vec<Src> {
    let c = config();
    let (d, h, kv, v) = (c.dim, c.hidden_dim, c.kv_dim() as u32, c.vocab_size);
    let mut rng = Rng(42);
    vec![
        make(TensorRole::WDown, 0, QuantSpec::per_group(Scheme::Q4Asym, 64), d, h, &mut rng),
        make(TensorRole::TokEmbd, GLOBAL_LAYER, QuantSpec::float(Scheme::F16), v, d, &mut rng),
        make(TensorRole::Wq, 0, QuantSpec::per_group(Scheme::Q4Sym, 32), d, d, &mut rng),
        make(TensorRole::Wk, 0, QuantSpec::per_channel(Scheme::Q8Sym), kv, d, &mut rng),
        make(TensorRole::Wv, 0, QuantSpec::per_channel(Scheme::Q8Asym), kv, d, &mut rng),
        make(TensorRole::Wo, 0, QuantSpec::float(Scheme::BF16), d, d, &mut rng),
        make(TensorRole::AttnNorm, 0, QuantSpec::F32, 1, d, &mut rng),
        make(TensorRole::FfnNorm, 0, QuantSpec::F32, 1, d, &mut rng),
        make(
            TensorRole::WGate,
            0,
            QuantSpec {
                scheme: Scheme::Fp8E4M3,
                granularity: edgeq_core::Granularity::Block,
                group: 32,
            },
            h,
            d,
            &mut rng,
        ),
        make(
            TensorRole::WUp,
            0,
            QuantSpec {
                scheme: Scheme::Fp8E5M2,
                granularity: edgeq_core::Granularity::PerChannel,
                group: 0,
            },
            h,
            d,
            &mut rng,
        ),
        make(TensorRole::OutputNorm, GLOBAL_LAYER, QuantSpec::F32, 1, d, &mut rng),
    ]
}

const TOKENIZER: &[u8] = b"not a real tokenizer: the EQF reader treats this section as opaque bytes";

fn build(tensors: &[Src], metadata: &[u8]) -> Vec<u8> {
    build_with(tensors, metadata, Vec::new())
}

/// A writer holding `tensors`.
fn writer_with(tensors: &[Src]) -> EqfWriter {
    let mut w = EqfWriter::new(config(), TOKENIZER.to_vec());
    for t in tensors {
        w.add(TensorEntry {
            role: t.role,
            layer: t.layer,
            spec: t.spec,
            rows: t.rows,
            cols: t.cols,
            data: t.data.clone(),
        })
        .unwrap();
    }
    w
}

fn build_with(tensors: &[Src], metadata: &[u8], acts: Vec<edgeq_core::format::writer::ActEntry>) -> Vec<u8> {
    let mut w = writer_with(tensors);
    w.metadata = metadata.to_vec();
    w.acts = acts;
    w.finish()
}

fn valid_file() -> Vec<u8> {
    build(&model_tensors(), b"{\"source\":\"test\"}")
}

fn no_verify() -> ParseOptions {
    ParseOptions {
        verify_tensor_checksums: false,
    }
}

// ---------------------------------------------------------------------------
// Valid files
// ---------------------------------------------------------------------------

#[test]
fn valid_file_parses_and_exposes_everything() {
    let file = valid_file();
    let buf = Buf::aligned(&file);
    let eqf = parse(buf.bytes()).expect("valid file parses");
    assert_eq!(*eqf.config(), config());
    assert_eq!(eqf.tokenizer_bytes(), TOKENIZER);
    assert_eq!(eqf.metadata(), b"{\"source\":\"test\"}");
    assert_eq!(eqf.header().magic, MAGIC);
    assert_eq!(eqf.header().version_major, VERSION_MAJOR);
    assert_eq!(eqf.header().version_minor, VERSION_MINOR);
    assert_eq!(eqf.header().file_size, file.len() as u64);
    assert_eq!(eqf.file_bytes().len(), file.len());

    // Directory sorted by (layer, role), global tensors (0xFFFF) last.
    let keys: Vec<(u16, u16)> = eqf.tensors().iter().map(|t| (t.layer, t.role)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), 11);
    assert_eq!(eqf.tensors().last().unwrap().layer, GLOBAL_LAYER);

    let srcs = model_tensors();
    let mut row = vec![0f32; 256];
    for s in &srcs {
        let rec = eqf.find(s.role, s.layer).expect("find");
        let name = if s.layer == GLOBAL_LAYER {
            s.role.name().to_string()
        } else {
            format!("blk.{}.{}", s.layer, s.role.name())
        };
        assert_eq!(rec.name_str(), name);
        assert_eq!((rec.rows, rec.cols), (s.rows, s.cols));
        assert_eq!(rec.scheme, s.spec.scheme as u8);
        assert_eq!(rec.granularity, s.spec.granularity as u8);
        assert_eq!(rec.group, s.spec.group);
        assert_eq!(rec.offset % 64, 0);
        assert_eq!(rec.size as usize, s.data.len());
        assert_eq!(rec.crc32, crc32fast::hash(&s.data));

        let v = eqf.tensor(s.role, s.layer, s.rows, s.cols).expect("tensor");
        assert_eq!(v.spec, s.spec);
        assert_eq!((v.rows(), v.cols()), (s.rows as usize, s.cols as usize));
        let v2 = eqf.view(rec).unwrap();
        assert_eq!(v2.codes.as_ptr(), v.codes.as_ptr());
        // The bytes in place are exactly what was quantized.
        let data_sec = sec(buf.bytes(), section::TENSOR_DATA);
        let at = data_sec.offset + rec.offset as usize;
        assert_eq!(&buf.bytes()[at..at + s.data.len()], &s.data[..]);
        assert_eq!(v.codes.as_ptr() as usize % 64, 0, "tensor data 64-byte aligned in memory");

        // Dequantized rows match the reference dequantization of the same bytes
        // and approximate the source values.
        let tol = match s.spec.scheme {
            Scheme::F32 => 0.0,
            Scheme::F16 => 1e-3,
            Scheme::BF16 => 8e-3,
            Scheme::Q8Sym | Scheme::Q8Asym => 1e-2,
            Scheme::Q4Sym | Scheme::Q4Asym => 0.15,
            Scheme::Fp8E4M3 => 0.07,
            Scheme::Fp8E5M2 => 0.13,
        };
        for r in 0..s.rows as usize {
            v.dequantize_row(r, &mut row);
            for c in 0..s.cols as usize {
                let x = s.values[r * s.cols as usize + c];
                assert!((row[c] - x).abs() <= tol, "{name}[{r},{c}]: {} vs {x}", row[c]);
            }
        }
    }
    assert!(
        eqf.find(TensorRole::Output, GLOBAL_LAYER).is_none(),
        "tied embeddings: no output tensor"
    );
    assert!(eqf.find(TensorRole::Wq, 1).is_none());
    assert!(eqf.find(TensorRole::Bq, 0).is_none());
    assert_eq!(
        eqf.tensor(TensorRole::Wq, 1, 64, 64).unwrap_err(),
        FormatError::MissingTensor {
            role: TensorRole::Wq as u16,
            layer: 1
        }
    );
    match eqf.tensor(TensorRole::Wq, 0, 64, 65) {
        Err(FormatError::BadShape {
            expected_rows: 64,
            expected_cols: 65,
            rows: 64,
            cols: 64,
            tensor,
        }) => {
            assert_eq!(tensor.as_str(), "blk.0.attn_q")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn layout_of_sections_follows_the_spec() {
    let file = valid_file();
    let b = &file[..];
    let secs = sections(b);
    let kinds: Vec<u32> = secs.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            section::CONFIG,
            section::TOKENIZER,
            section::TENSOR_DIR,
            section::METADATA,
            section::TENSOR_DATA
        ]
    );
    let dir_end = 64 + 32 * secs.len();
    let mut prev_end = dir_end;
    for s in &secs {
        assert_eq!(s.offset % 64, 0);
        assert!(s.offset >= prev_end);
        assert!(s.offset - prev_end < 64, "no more padding than needed");
        assert!(b[prev_end..s.offset].iter().all(|&x| x == 0), "padding is zero");
        prev_end = s.offset + s.size;
        let flags = rd_u32(b, s.rec + S_FLAGS);
        assert_eq!(flags, if s.kind == section::METADATA { section::FLAG_OPTIONAL } else { 0 });
        let crc = rd_u32(b, s.rec + S_CRC);
        if s.kind == section::TENSOR_DATA {
            assert_eq!(crc, 0);
        } else {
            assert_eq!(crc, crc32fast::hash(&b[s.offset..s.offset + s.size]));
        }
    }
    assert_eq!(prev_end, b.len(), "the last section ends the file");
    assert_eq!(sec(b, section::CONFIG).size, 128);
    assert_eq!(sec(b, section::TENSOR_DIR).size, 11 * 96);
    assert_eq!(rd_u16(b, H_MAJOR), 1);
    assert_eq!(rd_u16(b, H_MINOR), 0);
    assert_eq!(rd_u32(b, H_HEADER_SIZE), 64);
    assert_eq!(rd_u64(b, H_FILE_SIZE), b.len() as u64);

    // Without metadata, there is no METADATA section and metadata() is empty.
    let file2 = build(&model_tensors(), b"");
    let kinds2: Vec<u32> = sections(&file2).iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds2,
        [section::CONFIG, section::TOKENIZER, section::TENSOR_DIR, section::TENSOR_DATA]
    );
    let buf2 = Buf::aligned(&file2);
    assert_eq!(parse(buf2.bytes()).unwrap().metadata(), b"");
}

#[test]
fn writer_rejects_bad_tensors() {
    let mut w = EqfWriter::new(config(), vec![]);
    let bad = TensorEntry {
        role: TensorRole::Wq,
        layer: 0,
        spec: QuantSpec::per_group(Scheme::Q4Sym, 32),
        rows: 64,
        cols: 64,
        data: vec![0; 3],
    };
    assert!(matches!(w.add(bad), Err(WriteError::BadTensor { .. })));
    let bad_spec = TensorEntry {
        role: TensorRole::Wq,
        layer: 0,
        spec: QuantSpec::per_group(Scheme::Q4Sym, 48),
        rows: 64,
        cols: 64,
        data: vec![],
    };
    assert!(matches!(w.add(bad_spec), Err(WriteError::BadTensor { .. })));
    let ok = TensorEntry {
        role: TensorRole::AttnNorm,
        layer: 3,
        spec: QuantSpec::F32,
        rows: 1,
        cols: 4,
        data: vec![0; 16],
    };
    w.add(ok.clone()).unwrap();
    assert_eq!(
        w.add(ok),
        Err(WriteError::Duplicate {
            name: "blk.3.attn_norm".into()
        })
    );
}

#[test]
fn empty_tokenizer_and_no_tensors_parse() {
    let w = EqfWriter::new(config(), vec![]);
    let file = w.finish();
    let buf = Buf::aligned(&file);
    let eqf = parse(buf.bytes()).unwrap();
    assert!(eqf.tensors().is_empty());
    assert!(eqf.tokenizer_bytes().is_empty());
    assert!(eqf.find(TensorRole::TokEmbd, GLOBAL_LAYER).is_none());
}

// ---------------------------------------------------------------------------
// Robustness: truncation and bit flips
// ---------------------------------------------------------------------------

#[test]
fn every_truncation_is_an_error() {
    let file = valid_file();
    let buf = Buf::aligned(&file);
    for n in 0..file.len() {
        let r = Eqf::parse(buf.prefix(n));
        assert!(r.is_err(), "prefix of {n} bytes parsed");
        let r2 = Eqf::parse_with(buf.prefix(n), no_verify());
        assert!(r2.is_err(), "prefix of {n} bytes parsed (no verify)");
        if n >= 8 {
            // Past the magic, a short file is reported as truncated.
            assert!(
                matches!(r.err().unwrap(), FormatError::Truncated { .. }),
                "prefix {n}: {:?}",
                Eqf::parse(buf.prefix(n)).err()
            );
        }
    }
    assert!(Eqf::parse(buf.prefix(file.len())).is_ok());
}

/// Which bytes of the file are protected by which check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cover {
    /// Header, section directory, and every section but TENSOR_DATA.
    Checked,
    /// A tensor's bytes: covered by its CRC only when tensor checksums are verified.
    TensorData,
    /// Alignment padding between sections or between tensors: covered by no CRC.
    Padding,
}

fn coverage(b: &[u8]) -> Vec<Cover> {
    let mut cov = vec![Cover::Padding; b.len()];
    let n = rd_u32(b, H_N_SECTIONS) as usize;
    cov[..64 + 32 * n].fill(Cover::Checked);
    for s in sections(b) {
        if s.kind != section::TENSOR_DATA {
            cov[s.offset..s.offset + s.size].fill(Cover::Checked);
        }
    }
    let data = sec(b, section::TENSOR_DATA);
    let dir = sec(b, section::TENSOR_DIR);
    for i in 0..dir.size / T_REC {
        let r = dir.offset + i * T_REC;
        let (o, s) = (rd_u64(b, r + T_OFFSET) as usize, rd_u64(b, r + T_SIZE) as usize);
        cov[data.offset + o..data.offset + o + s].fill(Cover::TensorData);
    }
    cov
}

#[test]
fn single_bit_flips_never_panic_and_are_detected() {
    let file = valid_file();
    let cov = coverage(&file);
    let mut buf = Buf::aligned(&file);
    let mut rng = Rng(0xED6E_0001);
    let mut counts = [0usize; 3];
    // Every bit of the header + directory, then 4000 random bits.
    let n_sections = rd_u32(&file, H_N_SECTIONS) as usize;
    let mut positions: Vec<usize> = (0..(64 + 32 * n_sections) * 8).collect();
    positions.extend((0..4000).map(|_| rng.below(file.len() as u64 * 8) as usize));
    for bit in positions {
        let (byte, mask) = (bit / 8, 1u8 << (bit % 8));
        buf.store[buf.start + byte] ^= mask;
        let strict = Eqf::parse(buf.bytes()).map(|_| ());
        let lax = Eqf::parse_with(buf.bytes(), no_verify()).map(|_| ());
        buf.store[buf.start + byte] ^= mask;
        match cov[byte] {
            Cover::Checked => {
                counts[0] += 1;
                assert!(strict.is_err(), "flip of bit {bit} (byte {byte}) not detected");
                assert!(lax.is_err(), "flip of bit {bit} (byte {byte}) not detected without tensor CRCs");
            }
            Cover::TensorData => {
                counts[1] += 1;
                assert!(matches!(strict, Err(FormatError::TensorChecksum { .. })), "byte {byte}: {strict:?}");
                assert_eq!(lax, Ok(()), "byte {byte}: tensor data is not checked without tensor CRCs");
            }
            Cover::Padding => {
                // Alignment padding is covered by no checksum, and the
                // reader does not require it to be zero: either answer is
                // acceptable, a panic is not (and we got here).
                counts[2] += 1;
            }
        }
    }
    assert!(counts[0] > 1000 && counts[1] > 1000, "{counts:?}");
    // Untouched buffer is still fine.
    assert!(Eqf::parse(buf.bytes()).is_ok());
}

#[test]
fn random_multi_byte_corruption_never_panics() {
    let file = valid_file();
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let mut f = file.clone();
        let k = 1 + rng.below(8);
        for _ in 0..k {
            let i = rng.below(f.len() as u64) as usize;
            f[i] = rng.next() as u8;
        }
        // Re-seal the checksums half of the time so that structural checks,
        // not only the CRCs, get exercised.
        if rng.below(2) == 0 {
            fix_crcs(&mut f);
        }
        let buf = Buf::aligned(&f);
        let _ = Eqf::parse(buf.bytes());
        if let Ok(e) = Eqf::parse_with(buf.bytes(), no_verify()) {
            // Whatever parsed must be usable without panicking.
            let mut row = vec![0f32; 1 << 12];
            for t in e.tensors() {
                if let Ok(v) = e.view(t) {
                    if v.cols() <= row.len() {
                        for r in 0..v.rows() {
                            v.dequantize_row(r, &mut row);
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Specific malformations, each with its typed error
// ---------------------------------------------------------------------------

fn patched(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut file = valid_file();
    f(&mut file);
    file
}

fn parse_err(file: &[u8]) -> FormatError {
    let buf = Buf::aligned(file);
    let e = Eqf::parse(buf.bytes()).err().expect("must not parse");
    let e2 = Eqf::parse_with(buf.bytes(), no_verify()).err().expect("must not parse (no verify)");
    assert_eq!(e, e2);
    e
}

#[test]
fn misaligned_buffer() {
    let file = valid_file();
    for mis in [1, 2, 4, 8, 16, 32, 63] {
        let buf = Buf::with_misalignment(&file, mis);
        assert_eq!(
            Eqf::parse(buf.bytes()).err(),
            Some(FormatError::Misaligned {
                what: "EQF buffer",
                align: 64
            }),
            "misaligned by {mis}"
        );
    }
}

#[test]
fn wrong_magic() {
    for i in 0..8 {
        let f = patched(|f| {
            f[i] ^= 0x20;
            fix_crcs(f);
        });
        assert_eq!(parse_err(&f), FormatError::BadMagic);
    }
    // Text-mode transfer: CR LF -> LF.
    let mut f = valid_file();
    f.remove(4);
    assert_eq!(parse_err(&f), FormatError::BadMagic);
    assert_eq!(
        parse_err(b"EQF"),
        FormatError::Truncated {
            what: "header",
            need: 64,
            have: 3
        }
    );
    assert_eq!(
        parse_err(&MAGIC),
        FormatError::Truncated {
            what: "header",
            need: 64,
            have: 8
        }
    );
}

#[test]
fn wrong_major_version() {
    for major in [0u16, 2, 0xFFFF] {
        let f = patched(|f| {
            wr_u16(f, H_MAJOR, major);
            fix_crcs(f);
        });
        assert_eq!(parse_err(&f), FormatError::UnsupportedVersion { major, minor: 0 });
    }
    // A newer minor version is accepted (same major).
    let f = patched(|f| {
        wr_u16(f, H_MINOR, 7);
        fix_crcs(f);
    });
    let buf = Buf::aligned(&f);
    assert_eq!(Eqf::parse(buf.bytes()).unwrap().header().version_minor, 7);
}

#[test]
fn trailing_garbage() {
    let mut f = valid_file();
    f.extend_from_slice(&[0u8; 64]);
    assert_eq!(
        parse_err(&f),
        FormatError::BadHeader("file is longer than header.file_size (trailing bytes)")
    );
    let mut f = valid_file();
    f.push(0xAA);
    assert_eq!(
        parse_err(&f),
        FormatError::BadHeader("file is longer than header.file_size (trailing bytes)")
    );
}

#[test]
fn header_checksum_mismatch() {
    let f = patched(|f| {
        f[40] ^= 1; // reserved byte in the header
    });
    assert!(matches!(parse_err(&f), FormatError::HeaderChecksum { .. }));
    let f = patched(|f| {
        let c = rd_u32(f, H_CRC);
        wr_u32(f, H_CRC, c ^ 0x8000_0000);
    });
    match parse_err(&f) {
        FormatError::HeaderChecksum { expected, actual } => {
            assert_eq!(expected ^ 0x8000_0000, actual)
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn bad_header_fields() {
    let f = patched(|f| {
        wr_u32(f, H_HEADER_SIZE, 128);
        fix_crcs(f);
    });
    assert!(matches!(parse_err(&f), FormatError::BadHeader(_)));
    for n in [0u32, 65, u32::MAX] {
        let f = patched(|f| {
            wr_u32(f, H_N_SECTIONS, n);
        });
        assert_eq!(parse_err(&f), FormatError::BadHeader("section count must be 1..=64"));
    }
    let f = patched(|f| {
        let n = f.len() as u64;
        wr_u64(f, H_FILE_SIZE, n + 1);
        fix_crcs(f);
    });
    assert!(matches!(parse_err(&f), FormatError::Truncated { what: "file", .. }));
}

#[test]
fn section_checksum_mismatch() {
    for kind in [section::CONFIG, section::TOKENIZER, section::TENSOR_DIR, section::METADATA] {
        let f = patched(|f| {
            let s = sec(f, kind);
            f[s.offset + s.size - 1] ^= 0x10;
        });
        assert!(
            matches!(parse_err(&f), FormatError::SectionChecksum { kind: k, .. } if k == kind),
            "kind {kind}"
        );
    }
}

#[test]
fn section_bounds_alignment_duplicates_and_unknown_kinds() {
    // Runs past the end of the file.
    let f = patched(|f| {
        let s = sec(f, section::TENSOR_DATA);
        wr_u64(f, s.rec + S_SIZE, s.size as u64 + 1);
        fix_header_crc(f);
    });
    assert_eq!(
        parse_err(&f),
        FormatError::SectionOutOfBounds {
            kind: section::TENSOR_DATA
        }
    );
    // offset + size overflows.
    let f = patched(|f| {
        let s = sec(f, section::TOKENIZER);
        wr_u64(f, s.rec + S_SIZE, u64::MAX - 10);
        fix_header_crc(f);
    });
    assert_eq!(parse_err(&f), FormatError::SectionOutOfBounds { kind: section::TOKENIZER });
    // Overlaps the header / directory.
    let f = patched(|f| {
        let s = sec(f, section::CONFIG);
        wr_u64(f, s.rec + S_OFFSET, 64);
        fix_header_crc(f);
    });
    assert_eq!(parse_err(&f), FormatError::SectionOutOfBounds { kind: section::CONFIG });
    // Not 64-byte aligned.
    let f = patched(|f| {
        let s = sec(f, section::TOKENIZER);
        wr_u64(f, s.rec + S_OFFSET, s.offset as u64 + 8);
        wr_u64(f, s.rec + S_SIZE, s.size as u64 - 8);
        fix_crcs(f);
    });
    assert_eq!(parse_err(&f), FormatError::SectionMisaligned { kind: section::TOKENIZER });
    // The same kind twice.
    let f = patched(|f| {
        let s = sec(f, section::METADATA);
        wr_u32(f, s.rec + S_KIND, section::TOKENIZER);
        fix_crcs(f);
    });
    assert_eq!(parse_err(&f), FormatError::DuplicateSection { kind: section::TOKENIZER });
    // A required section missing.
    let f = patched(|f| {
        let s = sec(f, section::TOKENIZER);
        wr_u32(f, s.rec + S_KIND, section::METADATA);
        let m = sec(f, section::METADATA);
        wr_u32(f, m.rec + S_KIND, 99);
        wr_u32(f, m.rec + S_FLAGS, section::FLAG_OPTIONAL);
        fix_crcs(f);
    });
    assert_eq!(parse_err(&f), FormatError::MissingSection { kind: section::TOKENIZER });
    // Unknown kind: an error when required, skipped when optional.
    let f = patched(|f| {
        let m = sec(f, section::METADATA);
        wr_u32(f, m.rec + S_KIND, 0x1234);
        wr_u32(f, m.rec + S_FLAGS, 0);
        fix_crcs(f);
    });
    assert_eq!(parse_err(&f), FormatError::UnknownSection { kind: 0x1234 });
    let f = patched(|f| {
        let m = sec(f, section::METADATA);
        wr_u32(f, m.rec + S_KIND, 0x1234);
        fix_crcs(f);
    });
    let buf = Buf::aligned(&f);
    let e = Eqf::parse(buf.bytes()).expect("unknown optional sections are skipped");
    assert_eq!(e.metadata(), b"");
}

#[test]
fn bad_config() {
    let f = patched(|f| {
        let s = sec(f, section::CONFIG);
        wr_u32(f, s.offset, 2); // arch
        fix_crcs(f);
    });
    assert_eq!(parse_err(&f), FormatError::BadConfig("unknown architecture id"));
    let f = patched(|f| {
        let s = sec(f, section::CONFIG);
        wr_u32(f, s.offset + 72, 32); // bos_id == vocab_size
        fix_crcs(f);
    });
    assert_eq!(parse_err(&f), FormatError::BadConfig("bos/eos id outside the vocabulary"));
    // CONFIG shorter than 128 bytes.
    let f = patched(|f| {
        let s = sec(f, section::CONFIG);
        wr_u64(f, s.rec + S_SIZE, 64);
        fix_crcs(f);
    });
    assert_eq!(
        parse_err(&f),
        FormatError::Truncated {
            what: "CONFIG section",
            need: 128,
            have: 64
        }
    );
}

#[test]
fn unknown_scheme_byte() {
    for scheme in [9u8, 0x80, 0xFF] {
        let f = patched(|f| {
            let r = trec(f, 2);
            f[r + T_SCHEME] = scheme;
            fix_crcs(f);
        });
        match parse_err(&f) {
            FormatError::UnknownScheme { tensor, scheme: s } => {
                assert_eq!(s, scheme);
                assert_eq!(tensor.as_str(), "blk.0.attn_k");
            }
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn bad_granularity_or_group() {
    let f = patched(|f| {
        let r = trec(f, 0); // blk.0.attn_norm, F32
        f[r + T_GRAN] = 9;
        fix_crcs(f);
    });
    assert!(matches!(
        parse_err(&f),
        FormatError::BadQuantSpec {
            why: "unknown granularity",
            ..
        }
    ));
    let f = patched(|f| {
        let r = trec(f, 1); // blk.0.attn_q, Q4 sym g32
        wr_u32(f, r + T_GROUP, 48);
        fix_crcs(f);
    });
    assert!(matches!(parse_err(&f), FormatError::BadQuantSpec { .. }));
}

#[test]
fn tensor_size_mismatch() {
    let f = patched(|f| {
        let r = trec(f, 1);
        let s = rd_u64(f, r + T_SIZE);
        wr_u64(f, r + T_SIZE, s - 2);
        fix_crcs(f);
    });
    match parse_err(&f) {
        FormatError::TensorSize { expected, actual, .. } => assert_eq!(expected, actual + 2),
        e => panic!("{e:?}"),
    }
    // A shape that does not match the stored size.
    let f = patched(|f| {
        let r = trec(f, 1);
        wr_u32(f, r + T_ROWS, 65);
        fix_crcs(f);
    });
    assert!(matches!(parse_err(&f), FormatError::TensorSize { .. }));
}

#[test]
fn tensor_out_of_bounds() {
    // The last tensor (highest offset) moved one aligned step past its spot:
    // its offset + size now runs past the data section.
    let f = patched(|f| {
        let dir = sec(f, section::TENSOR_DIR);
        let data = sec(f, section::TENSOR_DATA);
        let n = dir.size / T_REC;
        let last = (0..n).max_by_key(|&i| rd_u64(f, dir.offset + i * T_REC + T_OFFSET)).unwrap();
        let r = dir.offset + last * T_REC;
        let size = rd_u64(f, r + T_SIZE);
        let new_off = (data.size as u64).div_ceil(64) * 64;
        assert!(new_off + size > data.size as u64);
        wr_u64(f, r + T_OFFSET, new_off);
        fix_crcs(f);
    });
    assert!(matches!(parse_err(&f), FormatError::TensorOutOfBounds { .. }));
    // offset + size overflowing u64.
    let f = patched(|f| {
        let r = trec(f, 0);
        wr_u64(f, r + T_OFFSET, u64::MAX - 63);
        fix_crcs(f);
    });
    match parse_err(&f) {
        FormatError::TensorOutOfBounds { tensor } => assert_eq!(tensor.as_str(), "blk.0.attn_norm"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn tensor_misaligned() {
    let f = patched(|f| {
        let r = trec(f, 3);
        let o = rd_u64(f, r + T_OFFSET);
        wr_u64(f, r + T_OFFSET, o + 4);
        fix_crcs(f);
    });
    assert!(matches!(parse_err(&f), FormatError::TensorMisaligned { .. }));
}

#[test]
fn tensor_checksum_mismatch() {
    let f = patched(|f| {
        let r = trec(f, 4);
        let c = rd_u32(f, r + T_CRC);
        wr_u32(f, r + T_CRC, !c);
        fix_crcs(f);
    });
    let buf = Buf::aligned(&f);
    assert!(matches!(Eqf::parse(buf.bytes()), Err(FormatError::TensorChecksum { .. })));
    assert!(Eqf::parse_with(buf.bytes(), no_verify()).is_ok());
}

#[test]
fn unsorted_or_duplicate_records() {
    // Swap records 1 and 2 (blk.0.attn_q and blk.0.attn_k).
    let f = patched(|f| {
        let (a, b) = (trec(f, 1), trec(f, 2));
        let ra: Vec<u8> = f[a..a + T_REC].to_vec();
        let rb: Vec<u8> = f[b..b + T_REC].to_vec();
        f[a..a + T_REC].copy_from_slice(&rb);
        f[b..b + T_REC].copy_from_slice(&ra);
        fix_crcs(f);
    });
    match parse_err(&f) {
        FormatError::UnsortedTensors { tensor } => assert_eq!(tensor.as_str(), "blk.0.attn_q"),
        e => panic!("{e:?}"),
    }
    // Record 2 a copy of record 1.
    let f = patched(|f| {
        let (a, b) = (trec(f, 1), trec(f, 2));
        let ra: Vec<u8> = f[a..a + T_REC].to_vec();
        f[b..b + T_REC].copy_from_slice(&ra);
        fix_crcs(f);
    });
    assert!(matches!(parse_err(&f), FormatError::UnsortedTensors { .. }));
    // Same (layer, role) with a different name and data: still a duplicate.
    let f = patched(|f| {
        let (a, b) = (trec(f, 1), trec(f, 2));
        let role = rd_u16(f, a + T_ROLE);
        wr_u16(f, b + T_ROLE, role);
        fix_crcs(f);
    });
    assert!(matches!(parse_err(&f), FormatError::UnsortedTensors { .. }));
    // Global tensors sorted before a layer's.
    let f = patched(|f| {
        let r = trec(f, 0);
        wr_u16(f, r + T_LAYER, GLOBAL_LAYER);
        fix_crcs(f);
    });
    assert!(matches!(parse_err(&f), FormatError::UnsortedTensors { .. }));
    // Unknown role id.
    let f = patched(|f| {
        let r = trec(f, 0);
        wr_u16(f, r + T_ROLE, 9);
        fix_crcs(f);
    });
    assert!(matches!(parse_err(&f), FormatError::UnsortedTensors { .. }));
}

#[test]
fn bad_tensor_names() {
    for (i, patch) in [&b"\0"[..], &b"\xFF\xFE"[..]].into_iter().enumerate() {
        let f = patched(|f| {
            let r = trec(f, 3);
            f[r..r + patch.len()].copy_from_slice(patch);
            fix_crcs(f);
        });
        assert_eq!(parse_err(&f), FormatError::BadTensorName { index: 3 }, "case {i}");
    }
    // Garbage after the NUL terminator.
    let f = patched(|f| {
        let r = trec(f, 3);
        f[r + 47] = b'x';
        fix_crcs(f);
    });
    assert_eq!(parse_err(&f), FormatError::BadTensorName { index: 3 });
    // The TENSOR_DIR size must be a whole number of records.
    let f = patched(|f| {
        let s = sec(f, section::TENSOR_DIR);
        wr_u64(f, s.rec + S_SIZE, s.size as u64 - 1);
        fix_crcs(f);
    });
    assert_eq!(parse_err(&f), FormatError::BadHeader("TENSOR_DIR size is not a multiple of 96"));
}

/// Tensor shapes whose byte size overflows u64 must be rejected, not panic
/// (debug) or wrap (release).
///
/// BUG (core/src/scheme.rs, `QuantSpec::layout`): `r * stride`,
/// `c * (bits / 8)`, `scales_offset + 2 * n_scales` and `scales_offset +
/// 4 * n_scales` are unchecked u64 arithmetic. A TENSOR_DIR record with
/// rows = cols = 0xFFFF_FFFF (F32) panics with "attempt to multiply with
/// overflow" inside `Eqf::parse` in debug builds; in release, rows = cols =
/// 2^31 (F32) wraps `total_bytes` to 0, so a record with size 0 passes
/// validation and `dequantize_row` then indexes out of bounds.
#[test]
fn huge_shapes_are_rejected_without_panic() {
    for (scheme, gran, group, rows, cols, size) in [
        (Scheme::F32 as u8, 0u8, 0u32, u32::MAX, u32::MAX, 0u64),
        (Scheme::F32 as u8, 0, 0, 1 << 31, 1 << 31, 0),
        (Scheme::Q8Sym as u8, 2, 1 << 16, u32::MAX, u32::MAX, 0),
        (Scheme::Fp8E4M3 as u8, 1, 0, u32::MAX, u32::MAX, 0),
    ] {
        let f = patched(|f| {
            let r = trec(f, 0);
            f[r + T_SCHEME] = scheme;
            f[r + T_GRAN] = gran;
            wr_u32(f, r + T_GROUP, group);
            wr_u32(f, r + T_ROWS, rows);
            wr_u32(f, r + T_COLS, cols);
            wr_u64(f, r + T_SIZE, size);
            wr_u32(f, r + T_CRC, 0); // CRC-32 of zero bytes
            fix_crcs(f);
        });
        let buf = Buf::aligned(&f);
        let r = std::panic::catch_unwind(|| Eqf::parse(buf.bytes()).map(|_| ()));
        assert!(matches!(r, Ok(Err(_))), "{scheme} {rows}x{cols}: {r:?}");
    }
}

// ---------------------------------------------------------------------------
// Golden vector: the byte layout must not drift silently.
// ---------------------------------------------------------------------------

fn golden_config() -> ModelConfig {
    ModelConfig {
        arch: 1,
        flags: 0,
        dim: 32,
        hidden_dim: 64,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 16,
        vocab_size: 8,
        max_seq_len: 16,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        rope_scaling: 0,
        rope_factor: 0.0,
        rope_low_freq_factor: 0.0,
        rope_high_freq_factor: 0.0,
        rope_original_max_pos: 0,
        rope_dim: 16,
        bos_id: 1,
        eos_id: 2,
        reserved: [0; 12],
    }
}

/// A tiny file: 2 tensors (`blk.0.attn_norm` F32 [1,32] of 1.0, and
/// `blk.0.attn_q` Q4 sym g32 [32,32] of x[r][c] = (c - 16) / 8),
/// tokenizer bytes "tok", no metadata.
fn golden_file() -> Vec<u8> {
    let mut w = EqfWriter::new(golden_config(), b"tok".to_vec());
    let norm: Vec<u8> = [1.0f32; 32].iter().flat_map(|v| v.to_le_bytes()).collect();
    w.add(TensorEntry {
        role: TensorRole::AttnNorm,
        layer: 0,
        spec: QuantSpec::F32,
        rows: 1,
        cols: 32,
        data: norm,
    })
    .unwrap();
    let spec = QuantSpec::per_group(Scheme::Q4Sym, 32);
    let src: Vec<f32> = (0..32 * 32).map(|i| ((i % 32) as f32 - 16.0) / 8.0).collect();
    let mut q = vec![0u8; spec.layout(32, 32).unwrap().total_bytes as usize];
    quantize(spec, 32, 32, &src, &mut q).unwrap();
    w.add(TensorEntry {
        role: TensorRole::Wq,
        layer: 0,
        spec,
        rows: 32,
        cols: 32,
        data: q,
    })
    .unwrap();
    w.finish()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Header (64 bytes) + section directory (4 × 32 bytes) of [`golden_file`],
/// one 16-byte line per row. Mirrored in docs/FORMAT.md §12.
const GOLDEN_PREFIX: &str = "\
455146310d0a1a0a0100000040000000
00050000000000000400000040000000
00000000738a3d4a0000000000000000
00000000000000000000000000000000
0100000000000000c000000000000000
80000000000000004636b90700000000
02000000000000004001000000000000
030000000000000026d6bc9400000000
03000000000000008001000000000000
c000000000000000f54aaf5b00000000
04000000000000004002000000000000
c0020000000000000000000000000000
";

#[test]
fn golden_header_and_directory() {
    let f = golden_file();
    let lines: Vec<String> = f[..64 + 4 * 32].chunks(16).map(hex).collect();
    let got = lines.join("\n");
    if std::env::var_os("EQF_PRINT_GOLDEN").is_some() {
        println!("{got}");
        println!("len {}", f.len());
        for (i, l) in f.chunks(16).enumerate() {
            println!("{:08x}: {}", i * 16, hex(l));
        }
    }
    assert_eq!(got, GOLDEN_PREFIX.trim());
    assert_eq!(f.len(), GOLDEN_LEN);
    assert_eq!(crc32fast::hash(&f), GOLDEN_FILE_CRC, "whole-file CRC-32");
    let buf = Buf::aligned(&f);
    let e = Eqf::parse(buf.bytes()).unwrap();
    assert_eq!(e.tensors().len(), 2);
    assert_eq!(e.tokenizer_bytes(), b"tok");
}

const GOLDEN_LEN: usize = 1280;
const GOLDEN_FILE_CRC: u32 = 0xa9c0_4ea8;

// ---------------------------------------------------------------------------
// ACT_QUANT (EQF 1.1): activation quantization records
// ---------------------------------------------------------------------------

fn file_with_acts(acts: Vec<edgeq_core::format::writer::ActEntry>) -> Vec<u8> {
    build_with(&model_tensors(), b"", acts)
}

fn act(role: TensorRole, mode: edgeq_core::ActMode, threshold: f32, outliers: Vec<u32>) -> edgeq_core::format::writer::ActEntry {
    edgeq_core::format::writer::ActEntry {
        role,
        layer: 0,
        mode,
        threshold,
        outliers,
    }
}

#[test]
fn act_section_round_trips_and_marks_version_1_1() {
    use edgeq_core::ActMode::*;
    assert_eq!(
        rd_u16(&valid_file(), 10),
        VERSION_MINOR,
        "files without activation records stay 1.0"
    );
    let file = file_with_acts(vec![
        act(TensorRole::WDown, LlmInt8, 6.0, vec![3, 17, 100]),
        act(TensorRole::Wq, Int8Token, 0.0, vec![]),
        act(TensorRole::WGate, Fp8Group128, 0.0, vec![]),
    ]);
    assert_eq!(rd_u16(&file, 10), 1);
    let buf = Buf::aligned(&file);
    let e = parse(buf.bytes()).unwrap();
    let s = sec(&file, section::ACT_QUANT);
    assert_eq!(s.size, 16 + 20 * 3 + 4 * 3);
    let down = e.act_quant(TensorRole::WDown, 0).unwrap();
    assert_eq!((down.mode, down.threshold, down.outliers), (LlmInt8, 6.0, &[3u32, 17, 100][..]));
    assert_eq!(e.act_quant(TensorRole::Wq, 0).unwrap().mode, Int8Token);
    assert_eq!(e.act_quant(TensorRole::WGate, 0).unwrap().mode, Fp8Group128);
    assert!(e.act_quant(TensorRole::Wk, 0).is_none());
    // records are sorted by (layer, role) whatever the insertion order
    let roles: Vec<u16> = e.act_section().records().iter().map(|r| r.role).collect();
    assert_eq!(
        roles,
        vec![TensorRole::Wq as u16, TensorRole::WGate as u16, TensorRole::WDown as u16]
    );
}

/// QuaRot's int4 activations (mode 5) make the file 1.2, as does the
/// ONLINE_HADAMARD config flag.
#[test]
fn int4_activations_mark_version_1_2() {
    use edgeq_core::ActMode::*;
    let file = file_with_acts(vec![
        act(TensorRole::Wq, Int4Token, 0.9, vec![]),
        act(TensorRole::Wk, Int8Token, 0.0, vec![]),
    ]);
    assert_eq!(rd_u16(&file, 10), 2);
    let buf = Buf::aligned(&file);
    let e = parse(buf.bytes()).unwrap();
    let q = e.act_quant(TensorRole::Wq, 0).unwrap();
    assert_eq!((q.mode, q.threshold), (Int4Token, 0.9));
    assert_eq!(Int4Token.name(), "int4-token");
}

#[test]
fn corrupt_act_sections_are_typed_errors() {
    use edgeq_core::ActMode::*;
    let file = file_with_acts(vec![
        act(TensorRole::Wq, Int8Token, 0.0, vec![]),
        act(TensorRole::WDown, LlmInt8, 6.0, vec![3, 17]),
    ]);
    let s = sec(&file, section::ACT_QUANT);
    let rec = |i: usize| s.offset + 16 + 20 * i;
    let idx = s.offset + 16 + 40;
    let bad = |f: &dyn Fn(&mut Vec<u8>), what: &str| {
        let mut b = file.clone();
        f(&mut b);
        fix_crcs(&mut b);
        let buf = Buf::aligned(&b);
        match parse(buf.bytes()) {
            Err(FormatError::BadActQuant(why)) => assert!(why.contains(what), "{why:?} should mention {what:?}"),
            other => panic!("{what}: {:?}", other.err()),
        }
    };
    bad(&|b| b[rec(0) + 4] = 9, "unknown activation mode");
    bad(&|b| wr_u16(b, rec(1) + 2, TensorRole::Wq as u16), "sorted");
    bad(&|b| wr_u16(b, rec(0) + 2, TensorRole::AttnNorm as u16), "not a block's linear");
    bad(&|b| wr_u16(b, rec(0), 7), "does not have");
    bad(&|b| wr_u32(b, idx + 4, 100_000), "input width");
    bad(&|b| wr_u32(b, idx + 4, 2), "increase strictly");
    bad(&|b| wr_u32(b, rec(1) + 12, 1), "past the index array");
    bad(&|b| wr_u32(b, rec(1) + 8, f32::NAN.to_bits()), "threshold");
    bad(&|b| wr_u32(b, rec(0) + 16, 1), "only LLM.int8");
    bad(&|b| wr_u32(b, s.offset, 3), "size");
    // int4-token (mode 5) carries its clip ratio in (0, 1]
    bad(&|b| b[rec(0) + 4] = 5, "clip ratio");
    bad(
        &|b| {
            b[rec(0) + 4] = 5;
            wr_u32(b, rec(0) + 8, 1.5f32.to_bits());
        },
        "clip ratio",
    );
    // a checksum mismatch is caught before the contents are looked at
    let mut b = file.clone();
    b[rec(0) + 4] = 9;
    let buf = Buf::aligned(&b);
    assert!(matches!(parse(buf.bytes()), Err(FormatError::SectionChecksum { kind: 6, .. })));
}

fn file_with_perms(perms: &[(TensorRole, Vec<u32>)]) -> Vec<u8> {
    let mut w = writer_with(&model_tensors());
    for (role, p) in perms {
        w.add_perm(*role, 0, p.clone()).unwrap();
    }
    w.finish()
}

/// A pseudo-random permutation of 0..n (Fisher–Yates with SplitMix64).
fn shuffled(n: u32, seed: u64) -> Vec<u32> {
    let mut rng = Rng(seed);
    let mut p: Vec<u32> = (0..n).collect();
    for i in (1..n as usize).rev() {
        p.swap(i, rng.below(i as u64 + 1) as usize);
    }
    p
}

/// GPTQ act-order layers: the INPUT_PERM section (kind 7, required), the
/// config flag and version 1.3; q and k share one stored run.
#[test]
fn input_perms_round_trip_and_mark_version_1_3() {
    let c = config();
    let (pq, pd) = (shuffled(c.dim, 1), shuffled(c.hidden_dim, 2));
    let file = file_with_perms(&[
        (TensorRole::WDown, pd.clone()),
        (TensorRole::Wq, pq.clone()),
        (TensorRole::Wk, pq.clone()),
    ]);
    assert_eq!(rd_u16(&file, 10), 3);
    let s = sec(&file, section::INPUT_PERM);
    // 3 records, two runs (perm + inverse each): q and k share theirs.
    assert_eq!(s.size, 16 + 8 * 3 + 4 * 2 * (c.dim + c.hidden_dim) as usize);
    let flags_at = sec(&file, section::CONFIG).offset + 4;
    assert_ne!(rd_u32(&file, flags_at) & edgeq_core::config::flags::INPUT_PERM, 0);
    let buf = Buf::aligned(&file);
    let e = parse(buf.bytes()).unwrap();
    assert!(e.config().input_perm());
    assert_eq!(e.input_perm(TensorRole::Wq, 0), Some(&pq[..]));
    assert_eq!(e.input_perm(TensorRole::Wk, 0), Some(&pq[..]));
    assert_eq!(e.input_perm(TensorRole::WDown, 0), Some(&pd[..]));
    assert_eq!(e.input_perm(TensorRole::Wv, 0), None);
    assert_eq!(e.perm_section().records().len(), 3);
    // Without perms the flag is cleared and the file is unchanged.
    assert_eq!(file_with_perms(&[]), build(&model_tensors(), b""));
}

#[test]
fn writer_rejects_bad_perms() {
    let c = config();
    let mut w = writer_with(&model_tensors());
    let mut dup = shuffled(c.dim, 3);
    dup[1] = dup[0];
    for (role, layer, p, what) in [
        (TensorRole::Wq, 0, dup, "not a permutation"),
        (TensorRole::Wq, 0, shuffled(c.dim - 1, 3), "not a permutation"),
        (TensorRole::Wq, 1, shuffled(c.dim, 3), "not added"),
        (TensorRole::AttnNorm, 0, shuffled(c.dim, 3), "linear"),
        (TensorRole::TokEmbd, GLOBAL_LAYER, shuffled(c.dim, 3), "linear"),
    ] {
        match w.add_perm(role, layer, p) {
            Err(edgeq_core::format::writer::WriteError::BadTensor { why, .. }) => assert!(why.contains(what), "{why}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    w.add_perm(TensorRole::Wq, 0, shuffled(c.dim, 3)).unwrap();
    assert!(matches!(
        w.add_perm(TensorRole::Wq, 0, shuffled(c.dim, 4)),
        Err(edgeq_core::format::writer::WriteError::Duplicate { .. })
    ));
}

#[test]
fn corrupt_perm_sections_are_typed_errors() {
    let c = config();
    let file = file_with_perms(&[(TensorRole::Wq, shuffled(c.dim, 5)), (TensorRole::WDown, shuffled(c.hidden_dim, 6))]);
    let s = sec(&file, section::INPUT_PERM);
    let rec = |i: usize| s.offset + 16 + 8 * i;
    let idx = s.offset + 16 + 16;
    let flags_at = sec(&file, section::CONFIG).offset + 4;
    let bad = |f: &dyn Fn(&mut Vec<u8>), what: &str| {
        let mut b = file.clone();
        f(&mut b);
        fix_crcs(&mut b);
        let buf = Buf::aligned(&b);
        match parse(buf.bytes()) {
            Err(FormatError::BadInputPerm(why)) => assert!(why.contains(what), "{why:?} should mention {what:?}"),
            other => panic!("{what}: {:?}", other.err()),
        }
    };
    // a repeated column (the inverse no longer matches)
    bad(
        &|b| {
            let v = rd_u32(b, idx);
            wr_u32(b, idx + 4, v)
        },
        "not a permutation",
    );
    bad(&|b| wr_u32(b, idx, 1_000_000), "not a permutation");
    // a corrupt inverse
    bad(&|b| wr_u32(b, idx + 4 * c.dim as usize, 7), "not a permutation");
    bad(&|b| wr_u16(b, rec(1) + 2, TensorRole::Wq as u16), "sorted");
    bad(&|b| wr_u16(b, rec(0) + 2, TensorRole::FfnNorm as u16), "not a block's linear");
    bad(&|b| wr_u16(b, rec(0), 3), "does not have");
    bad(&|b| wr_u32(b, rec(1) + 4, 2 * c.dim + 1), "past the index array");
    bad(&|b| wr_u32(b, s.offset, 3), "size");
    // the flag and the section come together
    bad(
        &|b| {
            let v = rd_u32(b, flags_at);
            wr_u32(b, flags_at, v & !edgeq_core::config::flags::INPUT_PERM)
        },
        "flag",
    );
    let plain = build(&model_tensors(), b"");
    let mut b = plain.clone();
    let at = sec(&b, section::CONFIG).offset + 4;
    let v = rd_u32(&b, at);
    wr_u32(&mut b, at, v | edgeq_core::config::flags::INPUT_PERM);
    fix_crcs(&mut b);
    let buf = Buf::aligned(&b);
    assert!(matches!(parse(buf.bytes()), Err(FormatError::BadInputPerm(_))));
    // a reader without the section kind would refuse, not skip: it is not optional
    let flags = rd_u32(&file, s.rec + 4);
    assert_eq!(flags & section::FLAG_OPTIONAL, 0);
    assert!(format!("{}", FormatError::BadInputPerm("x")).contains("INPUT_PERM"));
}
