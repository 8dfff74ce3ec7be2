//! The bodies of the host-side fuzz targets (one function per target, each
//! a thin binary in `fuzz_targets/`): the GGUF, safetensors and llama2.c
//! importers, the tokenizers and their converters, calibration JSONL. The
//! host is safe Rust (`deny(unsafe_code)` but for one read-only mmap) and
//! the runtime's tokenizer `forbid(unsafe_code)`, so these build without a
//! sanitizer; the no_std targets with unsafe SIMD underneath are in
//! `tests/fuzz` under AddressSanitizer. Every function feeds arbitrary
//! bytes to one reader and then exercises what it returned; the only
//! acceptable outcomes are `Ok` or `Err`: a panic (debug assertions and
//! overflow checks on), a hang or a huge allocation is a finding.
//! `scripts/fuzz.sh` runs them; the seed corpora come from
//! `cargo run -p edgeq-host --example fuzz_seeds`.
use edgeq_host::import::{self, AlignedBytes};
use edgeq_runtime::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
