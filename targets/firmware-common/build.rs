//! Embeds the model named by `EDGEQ_MODEL` and writes the firmware's
//! compile-time configuration (`$OUT_DIR/config.rs`):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `EDGEQ_MODEL` | (required) | EQF file to embed in flash |
//! | `EDGEQ_TOKENS` | 64 | tokens to generate from BOS |
//! | `EDGEQ_MAX_SEQ` | 128 | context of the session (KV cache rows), at most the model's |
//! | `EDGEQ_TEMP` | 0 | sampling temperature (0 = greedy) |
//! | `EDGEQ_TOP_P` | 0.9 | nucleus threshold when `EDGEQ_TEMP` > 0 |
//! | `EDGEQ_SEED` | 42 | sampler seed |
//! | `EDGEQ_ACTS` | (the runtime's default) | activations of integer-weight layers: `f32` (exact) or `q8` (8-bit, the fast path) |
//! | `EDGEQ_KV` | `f32` | KV cache precision: `f32`, `f16` or `q8` (int8 with an f16 scale per head vector) |
//!
//! The model is validated here with the runtime (so a bad file fails the
//! build, not the board) and the arena is sized with
//! `edgeq_runtime::arena_bytes_with(cfg, max_seq, 1, kv)`: the same function
//! the firmware's `Session::with_options` checks against.
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    println!("cargo:rerun-if-env-changed={name}");
    match env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        _ => default,
    }
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=EDGEQ_MODEL");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let model_path = match env::var("EDGEQ_MODEL") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "set EDGEQ_MODEL to the EQF file to embed (e.g. EDGEQ_MODEL=$PWD/target/targets/stories260K-q8.eqf); \
             scripts/test-targets.sh makes them"
        ),
    };
    let model_path = fs::canonicalize(&model_path).unwrap_or_else(|e| panic!("EDGEQ_MODEL={}: {e}", model_path.display()));
    println!("cargo:rerun-if-changed={}", model_path.display());
    let bytes = fs::read(&model_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", model_path.display()));

    // Validate in a 64-byte aligned copy, as the firmware will see it.
    let mut lines = vec![Line([0; 64]); bytes.len().div_ceil(64)];
    let aligned: &mut [u8] = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), lines.len() * 64) };
    aligned[..bytes.len()].copy_from_slice(&bytes);
    let model = edgeq_runtime::Model::from_bytes(&aligned[..bytes.len()])
        .unwrap_or_else(|e| panic!("{} is not a valid model: {e}", model_path.display()));
    let cfg = model.cfg;

    let tokens: usize = var("EDGEQ_TOKENS", 64);
    let max_seq: usize = var("EDGEQ_MAX_SEQ", 128);
    let temp: f32 = var("EDGEQ_TEMP", 0.0);
    let top_p: f32 = var("EDGEQ_TOP_P", 0.9);
    let seed: u64 = var("EDGEQ_SEED", 42);
    let acts: String = var("EDGEQ_ACTS", String::new());
    let acts_name = if acts.is_empty() {
        "default".to_string()
    } else {
        acts.to_ascii_lowercase()
    };
    let acts = match acts.to_ascii_lowercase().as_str() {
        "" => "None",
        "f32" => "Some(edgeq_runtime::Activations::F32)",
        "q8" => "Some(edgeq_runtime::Activations::Q8)",
        o => panic!("EDGEQ_ACTS={o:?}: expected f32 or q8"),
    };
    let kv_name: String = var("EDGEQ_KV", "f32".to_string()).to_ascii_lowercase();
    let (kv, kv_variant) = match kv_name.as_str() {
        "f32" => (edgeq_runtime::KvCache::F32, "F32"),
        "f16" => (edgeq_runtime::KvCache::F16, "F16"),
        "q8" => (edgeq_runtime::KvCache::Q8, "Q8"),
        o => panic!("EDGEQ_KV={o:?}: expected f32, f16 or q8"),
    };
    let max_seq = max_seq.clamp(1, cfg.max_seq_len as usize);
    let arena = edgeq_runtime::arena_bytes_with(&cfg, max_seq, 1, kv);
    // Sampling with a temperature rewrites the logits: the firmware copies
    // them into a buffer of the vocabulary's size after the session's arena.
    let logits = if temp > 0.0 { 4 * cfg.vocab_size as usize } else { 0 };

    fs::copy(&model_path, out.join("model.eqf")).unwrap();
    let name = model_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut s = String::new();
    writeln!(s, "/// File name of the embedded model.").unwrap();
    writeln!(s, "pub const MODEL_NAME: &str = {name:?};").unwrap();
    writeln!(s, "/// Bytes of the embedded model.").unwrap();
    writeln!(s, "pub const MODEL_BYTES: usize = {};", bytes.len()).unwrap();
    writeln!(s, "/// Tokens generated from BOS.").unwrap();
    writeln!(s, "pub const TOKENS: usize = {tokens};").unwrap();
    writeln!(s, "/// Context of the session.").unwrap();
    writeln!(s, "pub const MAX_SEQ: usize = {max_seq};").unwrap();
    writeln!(s, "/// KV cache precision.").unwrap();
    writeln!(s, "pub const KV: edgeq_runtime::KvCache = edgeq_runtime::KvCache::{kv_variant};").unwrap();
    writeln!(s, "/// `edgeq_runtime::arena_bytes_with(cfg, MAX_SEQ, 1, KV)`.").unwrap();
    writeln!(s, "pub const SESSION_BYTES: usize = {arena};").unwrap();
    writeln!(
        s,
        "/// The session's arena plus, when sampling with a temperature, a copy of the logits."
    )
    .unwrap();
    writeln!(s, "pub const ARENA_BYTES: usize = {};", arena + logits).unwrap();
    writeln!(s, "/// Sampling temperature (0 = greedy).").unwrap();
    writeln!(s, "pub const TEMPERATURE: f32 = {temp:?};").unwrap();
    writeln!(
        s,
        "/// The temperature as text (printing an f32 would pull float formatting into flash)."
    )
    .unwrap();
    writeln!(s, "pub const TEMPERATURE_TEXT: &str = \"{temp:?}\";").unwrap();
    writeln!(s, "pub const TOP_P: f32 = {top_p:?};").unwrap();
    writeln!(s, "pub const SEED: u64 = {seed};").unwrap();
    writeln!(s, "/// Activations of integer-weight layers (`None`: the runtime's default).").unwrap();
    writeln!(s, "pub const ACTS: Option<edgeq_runtime::Activations> = {acts};").unwrap();
    writeln!(s, "pub const ACTS_NAME: &str = {acts_name:?};").unwrap();
    fs::write(out.join("config.rs"), s).unwrap();
}
