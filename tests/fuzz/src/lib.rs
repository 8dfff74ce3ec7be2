//! The bodies of the fuzz targets of the no_std side (one function per
//! target, each a thin binary in `fuzz_targets/`): the EQF reader and a
//! runtime session, whose SIMD kernels are the project's unsafe code, run
//! under AddressSanitizer. The host readers' targets are in
//! `tests/fuzz-host` (safe Rust, built without a sanitizer). Every function
//! feeds arbitrary bytes to one reader and then exercises what it returned;
//! the only acceptable outcomes are `Ok` or `Err`: a panic, an
//! out-of-bounds read (sanitizer), a hang or a huge allocation is a
//! finding. `scripts/fuzz.sh` runs them; the seed corpora come from
//! `cargo run -p edgeq-host --example fuzz_seeds`.
use edgeq_core::{Eqf, ParseOptions};
use edgeq_runtime::tokenizer::Tokenizer;
use edgeq_runtime::{Activations, KvCache, MatmulOpts, Model, Session, SessionOptions};

/// Largest arena a fuzzed model may ask for (bigger configs are skipped:
/// the allocation, not the parser, would be what is tested).
const MAX_ARENA: usize = 16 << 20;

/// A 64-byte-aligned copy of the input (the EQF reader's alignment).
struct AlignedBytes {
    blocks: Vec<[u64; 8]>,
    len: usize,
}

impl AlignedBytes {
    fn from(bytes: &[u8]) -> Self {
        let mut a = AlignedBytes {
            blocks: vec![[0u64; 8]; bytes.len().div_ceil(64)],
            len: bytes.len(),
        };
        a.as_mut_bytes().copy_from_slice(bytes);
        a
    }
    fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<[u64; 8], u8>(&self.blocks)[..self.len]
    }
    fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<[u64; 8], u8>(&mut self.blocks)[..self.len]
    }
}

/// Recomputes the header and section CRC-32s of an EQF image in place
/// (docs/FORMAT.md §2-3), so that a mutated file reaches the structural
/// validation behind the checksums instead of stopping at the first CRC.
fn reseal(b: &mut [u8]) {
    let rd32 = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let rd64 = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    if b.len() < 64 {
        return;
    }
    let n = rd32(b, 24) as usize;
    if n > 64 || 64 + 32 * n > b.len() {
        return;
    }
    for i in 0..n {
        let rec = 64 + 32 * i;
        let (kind, off, size) = (rd32(b, rec), rd64(b, rec + 8) as usize, rd64(b, rec + 16) as usize);
        if kind != edgeq_core::format::section::TENSOR_DATA && off.checked_add(size).is_some_and(|e| e <= b.len()) {
            let c = crc32fast::hash(&b[off..off + size]);
            b[rec + 24..rec + 28].copy_from_slice(&c.to_le_bytes());
        }
    }
    let mut h = crc32fast::Hasher::new();
    let mut head = [0u8; 64];
    head.copy_from_slice(&b[..64]);
    head[36..40].fill(0);
    h.update(&head);
    h.update(&b[64..64 + 32 * n]);
    b[36..40].copy_from_slice(&h.finalize().to_le_bytes());
}

/// EQF reader: the bytes as given (with and without tensor checksums), then
/// a copy with resealed header/section checksums (structural checks); every
/// tensor of a file that parses is read through its view (a few rows
/// dequantized, row slices).
pub fn eqf_reader(data: &[u8]) {
    let mut resealed = AlignedBytes::from(data);
    reseal(resealed.as_mut_bytes());
    let bytes = AlignedBytes::from(data);
    for (b, verify) in [(&bytes, true), (&bytes, false), (&resealed, false)] {
        let Ok(eqf) = Eqf::parse_with(
            b.as_bytes(),
            ParseOptions {
                verify_tensor_checksums: verify,
            },
        ) else {
            continue;
        };
        let _ = (eqf.config(), eqf.header(), eqf.metadata(), eqf.tokenizer_bytes());
        let mut row = Vec::new();
        for t in eqf.tensors() {
            let _ = edgeq_core::format::record_spec(t);
            let Ok(v) = eqf.view(t) else { continue };
            row.resize(v.cols(), 0.0);
            for r in 0..v.rows().min(3) {
                v.dequantize_row(r, &mut row);
            }
            if let Some(s) = v.row_slice(0, v.rows().min(2)) {
                if s.rows() > 0 {
                    s.dequantize_row(0, &mut row);
                }
            }
        }
    }
}

/// Runtime session on arbitrary bytes: byte 0 picks the options (bit 0
/// verify checksums, bits 1-2 KV precision, bit 3 f32 activations, bit 4
/// batch of 2), the rest is the EQF image. A model that loads is run for a
/// few tokens (single steps and a batch) with its own tokenizer. Header and
/// section checksums are resealed (bit 5 clear) so mutations reach the model.
pub fn session(data: &[u8]) {
    let Some((&opt, image)) = data.split_first() else { return };
    let mut bytes = AlignedBytes::from(image);
    if opt & 32 == 0 {
        reseal(bytes.as_mut_bytes());
    }
    let Ok(model) = Model::from_bytes_with(
        bytes.as_bytes(),
        ParseOptions {
            verify_tensor_checksums: opt & 1 != 0,
        },
    ) else {
        return;
    };
    let kv = [KvCache::F32, KvCache::F16, KvCache::Q8, KvCache::F32][usize::from(opt >> 1 & 3)];
    let acts = if opt & 8 != 0 { Activations::F32 } else { Activations::Q8 };
    let batch = if opt & 16 != 0 { 2 } else { 1 };
    let max_seq = (model.cfg.max_seq_len as usize).clamp(1, 6);
    let need = edgeq_runtime::arena_bytes_with(&model.cfg, max_seq, batch, kv);
    if need > MAX_ARENA {
        return;
    }
    let mut arena = vec![0u8; need];
    let opts = SessionOptions {
        kv,
        matmul: MatmulOpts { acts, threads: 1 },
    };
    let Ok(mut s) = Session::with_options(&model, &mut arena, max_seq, batch, opts) else {
        return;
    };
    let vocab = model.cfg.vocab_size;
    let mut ids = vec![model.cfg.bos_id, 0, vocab.saturating_sub(1), vocab, u32::MAX];
    if let Ok(tok) = Tokenizer::parse(model.eqf.tokenizer_bytes()) {
        let mut out = [0u32; 8];
        if let Ok(n) = tok.encode("Once upon", true, &mut out) {
            ids.extend_from_slice(&out[..n]);
        }
    }
    for chunk in ids.chunks(batch) {
        match s.forward(chunk, None) {
            Ok(logits) => {
                let _ = edgeq_runtime::sampler::argmax(logits);
            }
            Err(_) => s.reset(),
        }
    }
}
