//! End-to-end tests of the `edgeq` binary on real weights.
//!
//! Fixtures come from `../shared/fixtures` beside the checkout (or
//! `$EDGEQ_FIXTURES`); SmolLM2 from `target/models` (fetched by
//! `scripts/fetch-smollm2.sh`, or `$EDGEQ_SMOLLM2_GGUF`). Tests whose inputs
//! are absent print why and pass without checking.
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> Option<PathBuf> {
    let p = std::env::var_os("EDGEQ_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/fixtures"));
    if p.join("stories260K/stories260K.bin").exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: fixtures not found at {} (set EDGEQ_FIXTURES or put ../shared beside the checkout)",
            p.display()
        );
        None
    }
}

fn smollm2() -> Option<PathBuf> {
    let p = std::env::var_os("EDGEQ_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIP: {} not found (run scripts/fetch-smollm2.sh)", p.display());
        None
    }
}

fn edgeq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeq")).args(args).output().expect("spawn edgeq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = edgeq(args);
    assert!(success, "edgeq {args:?} failed:\n{stderr}");
    stdout
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgeq-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn golden(fx: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fx.join("stories260K/golden.json")).unwrap()).unwrap()
}

/// Imports stories260K into `dir/s.eqf`.
fn import_stories(fx: &Path, dir: &Path) -> String {
    let out = dir.join("s.eqf");
    let s = fx.join("stories260K");
    ok(&[
        "import",
        s.join("stories260K.bin").to_str().unwrap(),
        "--tokenizer",
        s.join("tok512.bin").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    out.to_str().unwrap().to_string()
}

/// The golden NLL protocol: first 6,000 characters, windows of 256, the first 1,024 predictions.
fn eval_nll(fx: &Path, model: &str) -> f64 {
    let text = fx.join("text/tinystories_val.txt");
    let out = ok(&[
        "eval",
        model,
        "--text",
        text.to_str().unwrap(),
        "--chars",
        "6000",
        "--window",
        "256",
        "--max-tokens",
        "1024",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["tokens"], 1024);
    assert_eq!(v["text_tokens"], 2893, "tokenization of the eval text changed");
    let nll = v["mean_nll"].as_f64().unwrap();
    assert!((v["ppl"].as_f64().unwrap() - nll.exp()).abs() < 1e-9);
    nll
}

#[test]
fn stories260k_greedy_matches_golden() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("greedy");
    let m = import_stories(&fx, &dir);
    let out = ok(&["run", &m, "--temp", "0", "-n", "128"]);
    let g = golden(&fx);
    assert_eq!(out.trim_end_matches('\n'), g["greedy_from_bos"]["text"].as_str().unwrap());
}

#[test]
fn stories260k_nll_and_rtn_quantization() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("nll");
    let m = import_stories(&fx, &dir);
    let base = eval_nll(&fx, &m);
    let want = golden(&fx)["tinystories_val_nll"]["mean_nll"].as_f64().unwrap();
    assert!((base - want).abs() < 1e-3, "NLL {base} vs golden {want}");

    let q8 = dir.join("q8.eqf");
    ok(&[
        "quantize",
        &m,
        "--method",
        "rtn",
        "--bits",
        "8",
        "--group",
        "-1",
        "--sym",
        "-o",
        q8.to_str().unwrap(),
    ]);
    let d8 = eval_nll(&fx, q8.to_str().unwrap()) / base - 1.0;
    assert!(d8.abs() < 0.005, "Q8 per-channel changed NLL by {:.3}%", d8 * 100.0);

    let q4 = dir.join("q4.eqf");
    ok(&[
        "quantize",
        &m,
        "--method",
        "rtn",
        "--bits",
        "4",
        "--group",
        "32",
        "--sym",
        "-o",
        q4.to_str().unwrap(),
    ]);
    let d4 = eval_nll(&fx, q4.to_str().unwrap()) / base - 1.0;
    assert!(d4 < 0.10 && d4 > -0.02, "Q4 g32 changed NLL by {:.3}%", d4 * 100.0);
    eprintln!("NLL f32 {base:.5}, Q8 {:+.3}%, Q4 g32 {:+.3}%", d8 * 100.0, d4 * 100.0);

    // Every linear layer is quantized (w2 included), embeddings at 8 bits.
    let info: serde_json::Value = serde_json::from_str(&ok(&["inspect", q4.to_str().unwrap(), "--json"])).unwrap();
    for t in info["tensors"].as_array().unwrap() {
        let (name, scheme) = (t["name"].as_str().unwrap(), t["scheme"].as_str().unwrap());
        if name.contains("norm") {
            assert_eq!(scheme, "f32", "{name}");
        } else if name == "tok_embd" {
            assert_eq!(scheme, "q8-ch");
        } else {
            assert_eq!(scheme, "q4-g32", "{name}");
        }
    }
}

#[test]
fn quantize_is_deterministic_and_skip_works() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("det");
    let m = import_stories(&fx, &dir);
    let (a, b) = (dir.join("a.eqf"), dir.join("b.eqf"));
    for p in [&a, &b] {
        ok(&[
            "quantize",
            &m,
            "--bits",
            "4",
            "--group",
            "64",
            "--asym",
            "--skip",
            "blk.*.ffn_down",
            "-o",
            p.to_str().unwrap(),
        ]);
    }
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same inputs must give identical files"
    );
    let info: serde_json::Value = serde_json::from_str(&ok(&["inspect", a.to_str().unwrap(), "--json"])).unwrap();
    let scheme = |n: &str| {
        info["tensors"].as_array().unwrap().iter().find(|t| t["name"] == n).unwrap()["scheme"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(scheme("blk.0.ffn_down"), "f32");
    assert_eq!(scheme("blk.0.ffn_up"), "q4a-g64");
    // No temporary files left next to the output.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn corrupt_files_give_clear_errors() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("corrupt");
    let m = import_stories(&fx, &dir);
    let bytes = std::fs::read(&m).unwrap();
    let cut = dir.join("cut.eqf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (success, _, err) = edgeq(&["run", cut.to_str().unwrap(), "-n", "4"]);
    assert!(!success && err.contains("cut.eqf") && err.contains("truncated"), "{err}");

    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 100] ^= 0x10; // inside the last tensor's data
    let bad = dir.join("flip.eqf");
    std::fs::write(&bad, &flipped).unwrap();
    let (success, _, err) = edgeq(&["run", bad.to_str().unwrap(), "-n", "4"]);
    assert!(!success && err.contains("checksum"), "{err}");

    let (success, _, err) = edgeq(&["run", dir.join("missing.eqf").to_str().unwrap()]);
    assert!(!success && err.contains("missing.eqf"), "{err}");
}

#[test]
fn smollm2_gguf_imports_runs_and_evaluates() {
    let (Some(gguf), Some(fx)) = (smollm2(), fixtures()) else {
        return;
    };
    let dir = tmpdir("smol");
    let m = dir.join("smol.eqf");
    ok(&["import", gguf.to_str().unwrap(), "-o", m.to_str().unwrap()]);
    let out = ok(&[
        "run",
        m.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "-n",
        "8",
        "--temp",
        "0",
    ]);
    assert!(out.starts_with("The capital of France is"), "{out}");
    assert!(out["The capital of France is".len()..].contains("Paris"), "{out}");
    let text = fx.join("text/wiki.test.raw");
    let r = ok(&[
        "eval",
        m.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--chars",
        "20000",
        "--window",
        "512",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(r.trim()).unwrap();
    let ppl = v["ppl"].as_f64().unwrap();
    eprintln!("SmolLM2-135M Q4_1 wiki.test.raw[..20000]: ppl {ppl:.3} over {} tokens", v["tokens"]);
    assert!(ppl.is_finite() && ppl > 1.0 && ppl < 100.0, "{v}");
}

#[test]
fn help_explains_every_flag() {
    for cmd in ["import", "quantize", "run", "eval", "inspect"] {
        let out = ok(&[cmd, "--help"]);
        for line in out.lines().filter(|l| l.trim_start().starts_with("--")) {
            let flag = line.trim_start().split_whitespace().next().unwrap();
            if flag == "--help" || flag == "--version" {
                continue;
            }
            assert!(
                line.trim().len() > flag.len() + 8
                    || out.contains(&format!("{flag}")) && line.split("  ").filter(|s| !s.trim().is_empty()).count() > 1,
                "{cmd} {flag} has no help text:\n{out}"
            );
        }
    }
}
