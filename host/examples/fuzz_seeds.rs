//! Writes the seed corpora of the fuzz targets (`tests/fuzz`) into
//! `DIR/<target>/`: small valid inputs built from the tiny synthetic model
//! (`edgeq_host::tiny`), so each target starts from files that parse and
//! mutates from there. Generated, never committed; `scripts/fuzz.sh` runs it.
//!
//! `cargo run --release -p edgeq-host --example fuzz_seeds -- DIR [FIXTURES]`
//! (FIXTURES: `../shared/fixtures`, adds the real tok512.bin tokenizer).
use anyhow::{Context, Result};
use edgeq_host::tiny;
use std::path::{Path, PathBuf};

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    std::fs::write(d.join(name), bytes).with_context(|| format!("cannot write {}/{name}", d.display()))
}

/// `len as u32 LE` + `a` + `b`: how two-file targets split their input.
fn pair(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = (a.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().context("usage: fuzz_seeds DIR [FIXTURES]")?);
    let fixtures = args.get(1).map(PathBuf::from);

    // EQF reader and runtime session: the tiny model in every scheme (byte 0
    // of a session input picks options, so seeds carry a 0 prefix).
    for scheme in std::iter::once("f32").chain(tiny::SCHEMES) {
        let e = tiny::eqf(1, scheme)?;
        put(&dir, "eqf_reader", &format!("tiny-{scheme}.eqf"), &e)?;
        put(&dir, "session", &format!("tiny-{scheme}.eqf"), &[&[0u8][..], &e].concat())?;
    }
    // EQF 1.1: activation records (LLM.int8 outliers, per-token int8, FP8 groups).
    for scheme in ["q8-ch", "fp8-e4m3-b32"] {
        let e = tiny::with_acts(&tiny::eqf(1, scheme)?)?;
        put(&dir, "eqf_reader", &format!("tiny-{scheme}-acts.eqf"), &e)?;
        put(&dir, "session", &format!("tiny-{scheme}-acts.eqf"), &[&[0u8][..], &e].concat())?;
    }
    // EQF 1.3: every block linear with permuted input columns (INPUT_PERM).
    let e = tiny::with_perms(&tiny::eqf(1, "f32")?)?;
    put(&dir, "eqf_reader", "tiny-f32-perms.eqf", &e)?;
    put(&dir, "session", "tiny-f32-perms.eqf", &[&[0u8][..], &e].concat())?;
    // GGUF: the tiny model with every directly mapped matrix type.
    for scheme in ["f32", "f16", "q8-g32", "q4-g32", "q4a-g32"] {
        put(&dir, "gguf_reader", &format!("tiny-{scheme}.gguf"), &tiny::gguf(1, scheme)?)?;
    }
    let m = tiny::model(1)?;
    // Hugging Face directory: config.json, tokenizer.json, model.safetensors
    // (input = pair(config, pair(tokenizer, safetensors))).
    for dt in [safetensors::Dtype::F32, safetensors::Dtype::BF16] {
        let files = tiny::hf_files(&m, dt)?;
        let get = |n: &str| files.iter().find(|f| f.0 == n).map(|f| f.1.clone()).unwrap_or_default();
        let input = pair(&get("config.json"), &pair(&get("tokenizer.json"), &get("model.safetensors")));
        put(&dir, "safetensors_import", &format!("tiny-{dt:?}"), &input)?;
        put(&dir, "hf_tokenizer", "byte-level.json", &get("tokenizer.json"))?;
    }
    // Quantized Hugging Face directories (GPTQ packing, compressed-tensors
    // FP8) written by the exporter: the same three-file input.
    for scheme in ["q4-g32", "q8-ch", "fp8-e4m3-ch", "fp8-e4m3-b32"] {
        let e = edgeq_host::import::AlignedBytes::from(&tiny::eqf(1, scheme)?);
        let eqf = edgeq_core::Eqf::parse(e.as_bytes()).map_err(|x| anyhow::anyhow!("{x}"))?;
        let out = edgeq_host::export::hf::export(&eqf, Default::default())?;
        let get = |n: &str| out.files.iter().find(|f| f.0 == n).map(|f| f.1.clone()).unwrap_or_default();
        let input = pair(&get("config.json"), &pair(&get("tokenizer.json"), &get("model.safetensors")));
        put(&dir, "safetensors_import", &format!("tiny-{scheme}-{}", out.layout.name()), &input)?;
    }
    // llama2.c checkpoint + tokenizer.bin.
    let tok = tiny::llama2c_tokenizer();
    put(&dir, "llama2c", "tiny", &pair(&tiny::llama2c_checkpoint(1), &tok))?;
    // Tokenizer: byte 0 picks the mode (see the target).
    put(&dir, "tokenizer", "parse-llama2c", &[&[0u8][..], &tok].concat())?;
    put(
        &dir,
        "tokenizer",
        "encode",
        b"\x01Once upon a time, there was a little girl.\n\xe2\x96\x81 \xf0\x9f\x98\x80",
    )?;
    put(
        &dir,
        "tokenizer",
        "decode",
        &[&[2u8][..], &[1u8, 0, 0, 0, 40, 1, 0, 0, 3, 0, 0, 0]].concat(),
    )?;
    // The real stories260K from the fixtures: its tokenizer, and the model
    // as Q4 EQF (279 kB: f32 embeddings; under fuzz.sh's 320 KiB input limit).
    if let Some(f) = &fixtures {
        let s = f.join("stories260K");
        if let Ok(real) = std::fs::read(s.join("tok512.bin")) {
            put(&dir, "tokenizer", "parse-tok512", &[&[0u8][..], &real].concat())?;
            let m = edgeq_host::import::llama2c::import(&s.join("stories260K.bin"), &s.join("tok512.bin"))?;
            let e = tiny::requantize(&m.to_eqf()?, "q4-g32")?;
            put(&dir, "eqf_reader", "stories260K-q4-g32.eqf", &e)?;
            put(&dir, "session", "stories260K-q4-g32.eqf", &[&[0u8][..], &e].concat())?;
        }
    }
    // Calibration JSONL.
    put(&dir, "calib_prepare", "tiny.jsonl", tiny::calib_jsonl().as_bytes())?;
    println!("seed corpora written to {}", dir.display());
    Ok(())
}
