//! The bodies of the fuzz targets (one function per target, each a thin
//! binary in `fuzz_targets/`). Every function feeds arbitrary bytes to one
//! reader and then exercises what it returned; the only acceptable outcomes
//! are `Ok` or `Err`: a panic, an out-of-bounds read (sanitizer), a hang or
//! a huge allocation is a finding. `scripts/fuzz.sh` runs them; the seed
//! corpora come from `cargo run -p edgeq-host --example fuzz_seeds`.
use edgeq_core::{Eqf, ParseOptions};
use edgeq_host::import::{self, AlignedBytes};
use edgeq_runtime::tokenizer::Tokenizer;
use edgeq_runtime::{Activations, KvCache, MatmulOpts, Model, Session, SessionOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Largest arena a fuzzed model may ask for (bigger configs are skipped:
/// the allocation, not the parser, would be what is tested).
const MAX_ARENA: usize = 16 << 20;

/// Splits `len u32 LE ‖ a ‖ b` (how two-file inputs are packed).
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 4 {
        return (data, &[]);
    }
    let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let rest = &data[4..];
    rest.split_at(n.min(rest.len()))
}

/// A per-process scratch directory (for readers that take paths).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("edgeq-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    })
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

/// GGUF reader: parse, read every tensor (dequantized), then convert to a
/// model the way `edgeq import` does.
pub fn gguf_reader(data: &[u8]) {
    let Ok(g) = import::gguf::GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = format!("{g:?}");
    for (_, v) in &g.metadata {
        let _ = v.summary(4);
    }
    for t in &g.tensors {
        let _ = g.tensor_data(t);
        if t.ggml_type.bytes_for(t.ne().iter().product()).is_some_and(|b| b <= 1 << 20) {
            let _ = g.tensor_f32(t);
        }
    }
    if let Ok(m) = import::from_gguf::import_parsed(&g, Path::new("fuzz.gguf")) {
        let _ = m.to_eqf();
    }
}

/// Hugging Face directory import: `len ‖ config.json ‖ (len ‖ tokenizer.json
/// ‖ model.safetensors)`, written to a scratch directory and imported.
pub fn safetensors_import(data: &[u8]) {
    let (config, rest) = split(data);
    let (tokenizer, weights) = split(rest);
    let dir = scratch().join("hf");
    let _ = std::fs::create_dir_all(&dir);
    for (name, bytes) in [
        ("config.json", config),
        ("tokenizer.json", tokenizer),
        ("model.safetensors", weights),
    ] {
        if std::fs::write(dir.join(name), bytes).is_err() {
            return;
        }
    }
    if let Ok(m) = import::hf::import(&dir) {
        let _ = m.to_eqf();
    }
}

/// llama2.c checkpoint and tokenizer.bin: `len ‖ checkpoint ‖ tokenizer`.
pub fn llama2c(data: &[u8]) {
    let (ckpt, tok) = split(data);
    if let Ok(m) = import::llama2c::from_bytes(ckpt, Path::new("fuzz.bin"), tok, Path::new("fuzz-tok.bin")) {
        let _ = m.to_eqf();
    }
}

/// Tokenizers built once: the tiny llama2.c vocabulary (SentencePiece) and
/// the byte-level BPE of the tiny Hugging Face directory.
fn tokenizers() -> &'static [Vec<u8>] {
    static T: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    T.get_or_init(|| {
        let sp = edgeq_runtime::tokenizer::from_llama2c_bin(&edgeq_host::tiny::llama2c_tokenizer()).expect("tiny tokenizer");
        let bpe = import::hf_tokenizer::from_json(&edgeq_host::tiny::byte_level_tokenizer_json(), None, Default::default())
            .expect("tiny byte-level tokenizer")
            .blob;
        vec![sp, bpe]
    })
}

/// Tokenizer: byte 0 picks the mode. 0: parse the rest as a tokenizer blob
/// and use it; 1: encode the rest (lossy UTF-8) with the built-in
/// tokenizers and decode the result; 2: decode the rest as u32 ids;
/// 3: convert the rest as a llama2.c tokenizer.bin.
pub fn tokenizer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let ids: Vec<u32> = rest.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let exercise = |tok: &Tokenizer<'_>, text: &str, ids: &[u32]| {
        let mut out = vec![0u32; text.len() + 2];
        if let Ok(n) = tok.encode(text, true, &mut out) {
            let _ = tok.decode(&out[..n]);
        }
        let _ = tok.encode(text, false, &mut out[..1]); // too small: an error
        let _ = tok.decode(ids);
        let mut prev = 0;
        for &t in ids {
            let _ = tok.decode_piece(prev, t);
            let _ = (tok.token_bytes(t), tok.score(t), tok.token_type(t));
            prev = t;
        }
        let _ = tok.lookup(text.as_bytes());
    };
    match mode % 4 {
        0 => {
            let blob = AlignedBytes::from(rest);
            if let Ok(t) = Tokenizer::parse(blob.as_bytes()) {
                exercise(&t, "Once upon a time", &[0, 1, 2, 3, 300, u32::MAX]);
            }
        }
        1 | 2 => {
            for blob in tokenizers() {
                let t = Tokenizer::parse(blob).expect("built-in tokenizer parses");
                if mode % 4 == 1 {
                    exercise(&t, &text, &[]);
                } else {
                    exercise(&t, "", &ids);
                }
            }
        }
        _ => {
            if let Ok(blob) = edgeq_runtime::tokenizer::from_llama2c_bin(rest) {
                let t = Tokenizer::parse(&blob).expect("a converted tokenizer parses");
                exercise(&t, "Once upon a time", &[0, 1, 2, 3]);
            }
        }
    }
}

/// tokenizer.json conversion on arbitrary text (optionally followed by a
/// tokenizer_config.json after a NUL byte); a converted tokenizer is used.
pub fn hf_tokenizer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (tj, tc) = match text.split_once('\0') {
        Some((a, b)) => (a, Some(b)),
        None => (&*text, None),
    };
    if let Ok(t) = import::hf_tokenizer::from_json(tj, tc, Default::default()) {
        let tok = Tokenizer::parse(&t.blob).expect("a converted tokenizer parses");
        let mut out = vec![0u32; 64];
        let _ = tok.encode("Once upon a time, 123 héllo 😀", t.add_bos, &mut out);
    }
}

/// `edgeq calib prepare` on arbitrary JSONL (strict and skipping bad lines),
/// with the tiny tokenizer and a chat template.
pub fn calib_prepare(data: &[u8]) {
    let path = scratch().join("calib.jsonl");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let tok = Tokenizer::parse(&tokenizers()[0]).expect("built-in tokenizer parses");
    for skip in [false, true] {
        let opts = edgeq_host::calib::prepare::PrepareOptions {
            field: "text".into(),
            stratify_by: Some("task".into()),
            samples: Some(3),
            max_tokens: 16,
            min_tokens: 1,
            seed: 0,
            chat_template: Some(edgeq_host::tiny::CHAT_TEMPLATE.into()),
            skip_bad_lines: skip,
        };
        let _ = edgeq_host::calib::prepare::prepare(&[path.as_path()], &tok, &opts);
    }
}
