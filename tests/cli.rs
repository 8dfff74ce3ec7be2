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
    eval_nll_with(fx, model, &[])
}

/// [`eval_nll`] with extra `edgeq eval` flags.
fn eval_nll_with(fx: &Path, model: &str, extra: &[&str]) -> f64 {
    let text = fx.join("text/tinystories_val.txt");
    let mut args = vec![
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
    ];
    args.extend_from_slice(extra);
    let out = ok(&args);
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

/// The arena size from `edgeq run`'s statistics line ("... (N bytes, KV cache KV)").
fn run_arena_bytes(stderr: &str, kv: &str) -> usize {
    let tail = format!(" bytes, KV cache {kv})");
    let line = stderr
        .lines()
        .find(|l| l.contains(&tail))
        .unwrap_or_else(|| panic!("no stats line:\n{stderr}"));
    let head = &line[..line.find(&tail).unwrap()];
    head[head.rfind('(').unwrap() + 1..].parse().unwrap()
}

#[test]
fn stories260k_kv_cache_precisions() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("kv");
    let m = import_stories(&fx, &dir);
    // NLL cost of the cache precision (golden protocol, f32 weights and activations).
    let base = eval_nll_with(&fx, &m, &["--kv", "f32"]);
    let want = golden(&fx)["tinystories_val_nll"]["mean_nll"].as_f64().unwrap();
    assert!((base - want).abs() < 1e-3, "NLL {base} vs golden {want}");
    let d16 = eval_nll_with(&fx, &m, &["--kv", "f16"]) / base - 1.0;
    let d8 = eval_nll_with(&fx, &m, &["--kv", "q8"]) / base - 1.0;
    eprintln!("NLL f32 KV {base:.5}, f16 KV {:+.4}%, q8 KV {:+.4}%", d16 * 100.0, d8 * 100.0);
    assert!(d16.abs() < 0.001, "f16 KV cache changed NLL by {:.4}%", d16 * 100.0);
    assert!(d8.abs() < 0.01, "q8 KV cache changed NLL by {:.4}%", d8 * 100.0);

    // Greedy generation: f32 is the golden text; f16 and q8 run.
    let g = golden(&fx)["greedy_from_bos"]["text"].as_str().unwrap().to_string();
    let out = ok(&["run", &m, "--temp", "0", "-n", "128", "--kv", "f32"]);
    assert_eq!(out.trim_end_matches('\n'), g);
    for kv in ["f16", "q8"] {
        let out = ok(&["run", &m, "--temp", "0", "-n", "128", "--kv", kv]);
        assert!(out.starts_with("Once upon a time"), "{kv}: {out}");
        // The first sentences are unchanged (q8 first diverges after ~290 characters).
        assert_eq!(out[..120], g[..120], "{kv}");
    }

    // The microcontroller case: Q4 weights, 128 positions. The q8 cache
    // (40 KiB of codes + 10 KiB of f16 scales) saves 110 KiB over f32
    // (160 KiB) and the whole arena fits in 64 KiB of RAM.
    let q4 = dir.join("q4.eqf");
    let q4 = q4.to_str().unwrap();
    ok(&["quantize", &m, "--bits", "4", "--group", "32", "--sym", "-o", q4]);
    let mut arena = Vec::new();
    for kv in ["f32", "f16", "q8"] {
        let (success, out, err) = edgeq(&["run", q4, "--temp", "0", "-n", "200", "--ctx", "128", "--kv", kv]);
        assert!(success, "{kv}: {err}");
        assert!(out.starts_with("Once upon a time"), "{kv}: {out}");
        assert!(err.contains("context of 128 tokens full"), "{kv}: {err}");
        arena.push(run_arena_bytes(&err, kv));
    }
    eprintln!(
        "stories260K Q4, ctx 128: arena f32 {} / f16 {} / q8 {} bytes",
        arena[0], arena[1], arena[2]
    );
    assert_eq!(arena[0] - arena[1], 80 * 1024);
    assert_eq!(arena[0] - arena[2], 110 * 1024);
    assert!(arena[2] < 60 * 1024, "q8 arena {} bytes", arena[2]);
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

/// A quantize job killed at any moment (SIGKILL: no cleanup runs) never
/// leaves a partial file at the output path: an earlier result survives
/// intact until the new one is complete (temp file + fsync + rename).
#[test]
fn killed_quantize_never_leaves_a_partial_output() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("killed");
    let m = import_stories(&fx, &dir);
    let out = dir.join("out.eqf");
    let text = fx.join("text/tinystories_val.txt");
    std::fs::write(&out, b"an earlier result").unwrap();
    let mut finished = 0;
    for delay_ms in [30, 150, 400, 1000, 2500] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgeq"))
            .args(["quantize", &m, "--method", "gptq", "--bits", "4", "--group", "32", "--sym"])
            .args([
                "--calib",
                text.to_str().unwrap(),
                "--calib-samples",
                "32",
                "-o",
                out.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let bytes = std::fs::read(&out).unwrap();
        if bytes != b"an earlier result" {
            // The job won the race: then the file is complete and valid.
            assert!(status.success(), "killed after {delay_ms} ms but the output changed");
            ok(&["inspect", out.to_str().unwrap()]);
            finished += 1;
            std::fs::write(&out, b"an earlier result").unwrap();
        }
    }
    assert!(finished < 5, "every job finished before the kill: the test checked nothing");
    // Completed runs are deterministic (seeded sampling, ordered reductions
    // whatever the thread count).
    let (a, b) = (dir.join("a.eqf"), dir.join("b.eqf"));
    for (p, threads) in [(&a, "1"), (&b, "2")] {
        let out = Command::new(env!("CARGO_BIN_EXE_edgeq"))
            .env("RAYON_NUM_THREADS", threads)
            .args(["quantize", &m, "--method", "gptq", "--bits", "4", "--group", "32", "--sym"])
            .args(["--calib", text.to_str().unwrap(), "--calib-samples", "8", "-o", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "GPTQ with 1 and 2 threads gave different files"
    );
    // Long jobs resume: a run stopped after block 2 leaves its state in
    // OUT.partial/ (and no OUT); the next run continues from block 3 and
    // writes the file an uninterrupted run writes, then removes the state.
    let c = dir.join("c.eqf");
    let partial = dir.join("c.eqf.partial");
    let quantize = |method: &[&str], out: &Path, stop: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeq"));
        if let Some(s) = stop {
            cmd.env("EDGEQ_TEST_STOP_AFTER_BLOCK", s);
        }
        cmd.args(["quantize", &m, "--bits", "4", "--group", "32", "--sym"])
            .args(method)
            .args([
                "--calib",
                text.to_str().unwrap(),
                "--calib-samples",
                "8",
                "-o",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    // GPTQ (and with act-order, whose column permutations are saved too) and AWQ.
    let gptq: &[&str] = &["--method", "gptq"];
    for (method, reference) in [
        (gptq, a.clone()),
        (&["--method", "gptq", "--act-order"][..], dir.join("ref-ao.eqf")),
        (&["--method", "awq"][..], dir.join("ref-awq.eqf")),
    ] {
        if !reference.exists() {
            let o = quantize(method, &reference, None);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let o = quantize(method, &c, Some("2"));
        assert!(
            !o.status.success() && !c.exists() && partial.join("state.json").is_file(),
            "{method:?}"
        );
        let o = quantize(method, &c, None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("resuming from") && err.contains("blocks 0..3"), "{method:?}: {err}");
        assert!(
            std::fs::read(&c).unwrap() == std::fs::read(&reference).unwrap(),
            "{method:?}: the resumed run wrote a different file"
        );
        assert!(!partial.exists(), "the checkpoint is removed once the output is written");
        std::fs::remove_file(&c).unwrap();
    }
    let run = |stop: Option<&str>| quantize(gptq, &c, stop);
    // A checkpoint of other settings is not resumed from.
    let _ = run(Some("1"));
    let o = Command::new(env!("CARGO_BIN_EXE_edgeq"))
        .args(["quantize", &m, "--method", "gptq", "--bits", "4", "--group", "64", "--sym"])
        .args(["--calib", text.to_str().unwrap(), "--calib-samples", "8", "-o", c.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("resuming"));
}

/// `edgeq export` end to end: the GGUF imports back to the same tensors
/// where the mapping is exact, the report names what was requantized, and
/// a corrupt input is an error naming the file.
#[test]
fn export_gguf_round_trips_through_import() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("export");
    let m = import_stories(&fx, &dir);
    let q = dir.join("q.eqf");
    ok(&["quantize", &m, "--bits", "4", "--group", "32", "--sym", "-o", q.to_str().unwrap()]);
    let g = dir.join("q.gguf");
    let report: serde_json::Value =
        serde_json::from_str(&ok(&["export", q.to_str().unwrap(), "-o", g.to_str().unwrap(), "--json"])).unwrap();
    let rows = report.as_array().unwrap();
    let find = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(find("blk.0.attn_q.weight")["to"], "Q4_0");
    assert_eq!(find("blk.0.attn_q.weight")["exact"], true);
    assert_eq!(find("blk.0.ffn_down.weight")["to"], "F16"); // 172 columns
    let back = dir.join("back.eqf");
    ok(&["import", g.to_str().unwrap(), "-o", back.to_str().unwrap()]);
    let a = ok(&["run", q.to_str().unwrap(), "-n", "24", "--temp", "0", "--kernels", "scalar"]);
    let b = ok(&["run", back.to_str().unwrap(), "-n", "24", "--temp", "0", "--kernels", "scalar"]);
    assert_eq!(a, b, "greedy text after export + import");
    let cut = dir.join("cut.eqf");
    std::fs::write(&cut, &std::fs::read(&q).unwrap()[..1000]).unwrap();
    let (success, _, err) = edgeq(&["export", cut.to_str().unwrap(), "-o", dir.join("x.gguf").to_str().unwrap()]);
    assert!(!success && err.contains("cut.eqf"), "{err}");
    assert!(!dir.join("x.gguf").exists());
}

#[test]
fn export_safetensors_round_trips_through_import() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("export-hf");
    let m = import_stories(&fx, &dir);
    let q = dir.join("q.eqf");
    ok(&["quantize", &m, "--bits", "8", "--group", "32", "--sym", "-o", q.to_str().unwrap()]);
    let hf = dir.join("hf");
    let report: serde_json::Value = serde_json::from_str(&ok(&[
        "export",
        q.to_str().unwrap(),
        "--format",
        "safetensors",
        "-o",
        hf.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let rows = report.as_array().unwrap();
    let find = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(find("model.layers.0.self_attn.q_proj.weight")["to"], "gptq-8bit-g32");
    assert_eq!(find("model.layers.0.self_attn.q_proj.weight")["exact"], true);
    assert_eq!(find("model.layers.0.mlp.up_proj.weight")["to"], "gptq-8bit-g32"); // 172 rows pack in 8-bit words
    assert_eq!(find("model.layers.0.mlp.down_proj.weight")["to"], "F16"); // 172 columns are not whole groups of 32
    for f in [
        "config.json",
        "quantize_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(hf.join(f).is_file(), "{f} missing");
    }
    let back = dir.join("back.eqf");
    ok(&["import", hf.to_str().unwrap(), "-o", back.to_str().unwrap()]);
    let a = ok(&[
        "run",
        q.to_str().unwrap(),
        "-n",
        "24",
        "--temp",
        "0",
        "--kernels",
        "scalar",
        "--acts",
        "f32",
    ]);
    let b = ok(&[
        "run",
        back.to_str().unwrap(),
        "-n",
        "24",
        "--temp",
        "0",
        "--kernels",
        "scalar",
        "--acts",
        "f32",
    ]);
    assert_eq!(a, b, "greedy text after safetensors export + import");
    // A second export replaces the directory atomically; a failed one leaves it intact.
    ok(&["export", q.to_str().unwrap(), "--format", "safetensors", "-o", hf.to_str().unwrap()]);
    let cut = dir.join("cut.eqf");
    std::fs::write(&cut, &std::fs::read(&q).unwrap()[..1000]).unwrap();
    let (success, _, err) = edgeq(&[
        "export",
        cut.to_str().unwrap(),
        "--format",
        "safetensors",
        "-o",
        hf.to_str().unwrap(),
    ]);
    assert!(!success && err.contains("cut.eqf"), "{err}");
    assert!(hf.join("model.safetensors").is_file());
    // A corrupt checkpoint is a named error.
    let st = hf.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let (success, _, err) = edgeq(&["import", hf.to_str().unwrap(), "-o", dir.join("y.eqf").to_str().unwrap()]);
    assert!(!success && err.contains("model.safetensors"), "{err}");
    // FP8 with dynamic activations: compressed-tensors' input_activations carries the mode both ways.
    for (group, mode, strategy) in [("-1", "fp8-token", "token"), ("32", "fp8-g128", "group")] {
        let f = dir.join(format!("fp8{group}.eqf"));
        ok(&["quantize", &m, "--fp8", "e4m3", "--group", group, "-o", f.to_str().unwrap()]);
        let h = dir.join(format!("hf-fp8{group}"));
        ok(&["export", f.to_str().unwrap(), "--format", "safetensors", "-o", h.to_str().unwrap()]);
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(h.join("config.json")).unwrap()).unwrap();
        let ia = &cfg["quantization_config"]["config_groups"]["group_0"]["input_activations"];
        assert_eq!(
            (ia["strategy"].as_str(), ia["dynamic"].as_bool()),
            (Some(strategy), Some(true)),
            "{ia}"
        );
        let back = dir.join(format!("fp8{group}-back.eqf"));
        ok(&["import", h.to_str().unwrap(), "-o", back.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", back.to_str().unwrap(), "--json"])).unwrap();
        assert_eq!(v["activations"][mode], 35, "{}", v["activations"]);
    }
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
    // Perplexity over the first 1024 tokens of wiki.test.raw (two 512-token
    // windows): the same eval gives the NLL the rotated model must keep.
    let text = fx.join("text/wiki.test.raw");
    let eval = |p: &Path| -> serde_json::Value {
        let args = [
            "eval",
            p.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--chars",
            "20000",
            "--window",
            "512",
            "--max-tokens",
            "1024",
            "--json",
        ];
        serde_json::from_str(ok(&args).trim()).unwrap()
    };
    let v = eval(&m);
    let ppl = v["ppl"].as_f64().unwrap();
    eprintln!("SmolLM2-135M Q4_1 wiki.test.raw: ppl {ppl:.3} over {} tokens", v["tokens"]);
    assert!(ppl.is_finite() && ppl > 1.0 && ppl < 100.0, "{v}");
    assert_eq!(v["tokens"], 1024, "{v}");

    // Issue 11: QuaRot's rotation (dim 576 = 36·16, online Hadamard on the 1536 = 12·128 MLP) keeps the NLL.
    let rot = dir.join("smol-rot.eqf");
    ok(&["rotate", m.to_str().unwrap(), "-o", rot.to_str().unwrap()]);
    let (a, b) = (v["mean_nll"].as_f64().unwrap(), eval(&rot)["mean_nll"].as_f64().unwrap());
    eprintln!("SmolLM2-135M NLL {a:.7}, rotated {b:.7}");
    assert!((a - b).abs() < 1e-4, "rotated NLL {b} vs {a}");
    let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", rot.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(v["config"]["online_hadamard"], true);
    assert_eq!(v["format_version"], "1.2");
}

#[test]
fn help_explains_every_flag() {
    for cmd in [
        &["import"][..],
        &["quantize"],
        &["rotate"],
        &["run"],
        &["eval"],
        &["inspect"],
        &["layer"],
        &["calib", "prepare"],
        &["synth"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = ok(&args);
        let lines: Vec<&str> = out.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let is_flag = t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", "));
            if !is_flag {
                continue;
            }
            let flag = t.split([' ', ',']).find(|w| w.starts_with("--")).unwrap_or(t);
            if flag == "--help" || flag == "--version" {
                continue;
            }
            // Help text either follows on the same line (after two spaces) or on the next, more indented line.
            let same_line = t.split("  ").filter(|s| !s.trim().is_empty()).count() > 1;
            let next = lines.get(i + 1).map(|n| n.trim_start()).unwrap_or("");
            let next_line = !next.is_empty() && !next.starts_with('-');
            assert!(same_line || next_line, "{cmd:?} {flag} has no help text:\n{out}");
        }
    }
}

#[test]
fn stories260k_calibrated_methods_beat_rtn() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("methods");
    let m = import_stories(&fx, &dir);
    let text = fx.join("text/tinystories_val.txt");
    let t = text.to_str().unwrap();
    let out = |name: &str| dir.join(format!("{name}.eqf")).to_str().unwrap().to_string();
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
        &out("rtn"),
    ]);
    ok(&[
        "quantize",
        &m,
        "--method",
        "rtn",
        "--bits",
        "4",
        "--group",
        "32",
        "--asym",
        "-o",
        &out("rtn_asym"),
    ]);
    // Calibration from a slice disjoint from the evaluation slice (the first 6,000 characters).
    let calib = [
        "--calib",
        t,
        "--calib-skip-chars",
        "10000",
        "--calib-samples",
        "32",
        "--calib-seqlen",
        "256",
    ];
    for method in ["gptq", "awq"] {
        let mut args = vec!["quantize", &m, "--method", method, "--bits", "4", "--group", "32", "--sym"];
        args.extend(calib);
        let o = out(method);
        args.extend(["-o", &o]);
        ok(&args);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{method}.report.json"))).unwrap()).unwrap();
        assert_eq!(report["layers"].as_array().unwrap().len(), 35, "{method}: 5 blocks × 7 linears");
        assert!(report["peak_rss_mb"].as_f64().unwrap() > 0.0);
    }
    ok(&["quantize", &m, "--method", "hqq", "--bits", "4", "--group", "32", "-o", &out("hqq")]);
    // GPTQ act-order with dynamic groups (the reference's default): stored
    // with permuted columns (EQF 1.3), the runtime gathers the inputs.
    let mut args = vec![
        "quantize",
        &m,
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group",
        "32",
        "--sym",
        "--act-order",
    ];
    args.extend(calib);
    let ao = out("gptq_ao");
    args.extend(["-o", &ao]);
    ok(&args);
    let info: serde_json::Value = serde_json::from_str(&ok(&["inspect", &ao, "--json"])).unwrap();
    assert_eq!(info["format_version"], "1.3", "{}", info["format_version"]);
    let n_perm = info["input_perm_layers"].as_u64().unwrap();
    assert!(n_perm >= 10, "most of the 35 linears get a real permutation, got {n_perm}");
    assert!(ok(&["inspect", &ao]).contains("permuted input columns"));
    let models = ["rtn", "gptq", "awq", "rtn_asym", "hqq", "gptq_ao"].map(out);
    let mut args = vec!["eval"];
    args.extend(models.iter().map(|s| s.as_str()));
    args.extend(["--text", t, "--chars", "6000", "--window", "256", "--max-tokens", "1024", "--json"]);
    let v: serde_json::Value = serde_json::from_str(ok(&args).trim()).unwrap();
    let nll: Vec<f64> = v.as_array().unwrap().iter().map(|r| r["mean_nll"].as_f64().unwrap()).collect();
    eprintln!(
        "NLL rtn {:.4} gptq {:.4} awq {:.4} | rtn-asym {:.4} hqq {:.4}",
        nll[0], nll[1], nll[2], nll[3], nll[4]
    );
    assert!(nll[1] < nll[0], "GPTQ {} should beat RTN {}", nll[1], nll[0]);
    assert!(nll[2] < nll[0], "AWQ {} should beat RTN {}", nll[2], nll[0]);
    assert!(nll[4] < nll[3], "HQQ {} should beat RTN asym {}", nll[4], nll[3]);
    eprintln!("NLL gptq act-order (dynamic groups) {:.4}", nll[5]);
    assert!(nll[5] < nll[0], "GPTQ act-order {} should beat RTN {}", nll[5], nll[0]);
    // A GGUF export dequantizes the permuted layers (GGUF has no g_idx) and still runs.
    let gguf = dir.join("ao.gguf");
    let exp: serde_json::Value = serde_json::from_str(&ok(&["export", &ao, "-o", gguf.to_str().unwrap(), "--json"])).unwrap();
    let why: Vec<&str> = exp.as_array().unwrap().iter().filter_map(|r| r["why"].as_str()).collect();
    assert!(why.iter().any(|w| w.contains("g_idx")), "{why:?}");
    // A GPTQ safetensors export writes the permuted layers as desc_act with
    // their g_idx; importing it gives the same permuted layers back.
    let hf = dir.join("ao-hf");
    ok(&["export", &ao, "--format", "safetensors", "-o", hf.to_str().unwrap()]);
    let qc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(hf.join("quantize_config.json")).unwrap()).unwrap();
    assert_eq!(qc["desc_act"], true, "{qc}");
    let back = dir.join("ao-back.eqf");
    let (success, _, err) = edgeq(&["import", hf.to_str().unwrap(), "-o", back.to_str().unwrap()]);
    assert!(success, "{err}");
    assert!(err.contains("desc_act"), "{err}");
    let b: serde_json::Value = serde_json::from_str(&ok(&["inspect", back.to_str().unwrap(), "--json"])).unwrap();
    // q/k/v/o come back permuted; stories260K's 172-wide FFN does not pack in
    // GPTQ words and is exported dequantized (model column order, f16).
    assert_eq!(b["input_perm_layers"].as_u64(), Some(n_perm.min(20)), "{n_perm}");
    let run = |p: &str| ok(&["run", p, "-n", "24", "--temp", "0", "--kernels", "scalar"]);
    assert_eq!(
        run(&ao),
        run(back.to_str().unwrap()),
        "greedy text after a desc_act export + import"
    );
    // The side-by-side table.
    let mut args = vec!["eval"];
    args.extend(models.iter().map(|s| s.as_str()));
    args.extend(["--text", t, "--chars", "6000", "--max-tokens", "1024"]);
    let table = ok(&args);
    assert!(table.contains("ΔNLL") && table.lines().count() >= 6, "{table}");
}

#[test]
fn layer_research_interface() {
    use edgeq_host::npy::{write, Matrix};
    let dir = tmpdir("layer");
    // A layer with correlated inputs and a few outlier channels.
    let (rows, cols, n) = (64usize, 256usize, 1024usize);
    let mut seed = 0x1234_5678_u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
    };
    let w: Vec<f32> = (0..rows * cols).map(|_| rnd() * 0.1).collect();
    let mix: Vec<f32> = (0..16 * cols).map(|_| rnd()).collect();
    let mut x = vec![0.0f32; n * cols];
    for t in 0..n {
        let z: Vec<f32> = (0..16).map(|_| rnd()).collect();
        for c in 0..cols {
            let v: f32 = (0..16).map(|k| z[k] * mix[k * cols + c]).sum::<f32>() + 0.1 * rnd();
            x[t * cols + c] = if c % 64 == 0 { v * 20.0 } else { v };
        }
    }
    let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
    write(std::path::Path::new(&p("W.npy")), &Matrix { rows, cols, data: w }).unwrap();
    write(std::path::Path::new(&p("X.npy")), &Matrix { rows: n, cols, data: x }).unwrap();
    let mut err = std::collections::HashMap::new();
    for method in ["rtn", "gptq", "awq", "hqq"] {
        let out = p(&format!("{method}.npy"));
        let r = ok(&[
            "layer",
            "--weight",
            &p("W.npy"),
            "--acts",
            &p("X.npy"),
            "--method",
            method,
            "--bits",
            "4",
            "--group",
            "64",
            "--out",
            &out,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(r.trim()).unwrap();
        err.insert(method, v["out_rel_err"].as_f64().unwrap());
        let back = edgeq_host::npy::read(std::path::Path::new(&out)).unwrap();
        assert_eq!((back.rows, back.cols), (rows, cols));
    }
    eprintln!("layer output errors: {err:?}");
    assert!(err["gptq"] < err["rtn"] && err["awq"] < err["rtn"], "{err:?}");
    // The 8-bit family: W8A8 errors (activations quantized per token) on inputs with outlier channels.
    let w8 = |extra: &[&str]| -> serde_json::Value {
        let (wp, xp, qp, yp) = (p("W.npy"), p("X.npy"), p("q8.npy"), p("y.npy"));
        let mut a = vec!["layer", "--weight", &wp, "--acts", &xp, "--out", &qp, "--out-y", &yp, "--json"];
        a.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(ok(&a).trim()).unwrap();
        let y = edgeq_host::npy::read(std::path::Path::new(&p("y.npy"))).unwrap();
        assert_eq!((y.rows, y.cols), (n, rows), "{extra:?}");
        v
    };
    let e = |v: &serde_json::Value| v["method_out_rel_err"].as_f64().unwrap();
    let int8 = w8(&["--method", "int8", "--int8", "auto"]);
    assert_eq!(int8["details"]["symmetric"], true);
    assert!(e(&int8) < 1e-4, "{int8}");
    let plain = w8(&["--method", "llm-int8", "--threshold", "1e9"]);
    let llm = w8(&["--method", "llm-int8", "--threshold", "6"]);
    let sq = w8(&["--method", "smoothquant", "--alpha", "0.5"]);
    assert_eq!(llm["details"]["calibrated_outliers"].as_array().unwrap().len(), cols / 64, "{llm}");
    assert!(
        e(&llm) < e(&plain) / 4.0 && e(&sq) < e(&plain),
        "outliers: {} / smoothing: {} vs plain W8A8 {}",
        e(&llm),
        e(&sq),
        e(&plain)
    );
    for scale in ["tensor", "channel", "block128"] {
        let v = w8(&["--method", "fp8", "--fp8-scale", scale]);
        assert!(e(&v) < 1e-2 && v["out_rel_err"].as_f64().unwrap() < e(&v), "{scale}: {v}");
    }
    // A shape mismatch is a clear error.
    write(
        std::path::Path::new(&p("Xbad.npy")),
        &Matrix {
            rows: 4,
            cols: cols + 1,
            data: vec![0.0; 4 * (cols + 1)],
        },
    )
    .unwrap();
    let (success, _, e) = edgeq(&[
        "layer",
        "--weight",
        &p("W.npy"),
        "--acts",
        &p("Xbad.npy"),
        "--method",
        "gptq",
        "--out",
        &p("o.npy"),
    ]);
    assert!(!success && e.contains("Xbad.npy") && e.contains("features"), "{e}");
}

#[test]
fn calib_prepare_cleans_dedups_and_stratifies() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("prepare");
    let m = import_stories(&fx, &dir);
    let input = dir.join("in.jsonl");
    let mut lines = String::new();
    for i in 0..30 {
        let task = if i % 3 == 0 { "a" } else { "b" };
        lines += &format!("{{\"text\": \"Once upon a time  there was a   dog number {i} who liked to play.\", \"task\": \"{task}\"}}\n");
    }
    lines += "{\"text\": \"Once upon a time  there was a   dog number 1 who liked to play.\", \"task\": \"b\"}\n"; // duplicate
    lines += "this line is not json\n";
    std::fs::write(&input, lines).unwrap();
    let out = dir.join("calib.jsonl");
    let (success, _, e) = edgeq(&[
        "calib",
        "prepare",
        input.to_str().unwrap(),
        "--model",
        &m,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!success && e.contains("in.jsonl:32"), "bad line must be named: {e}");
    let stats = ok(&[
        "calib",
        "prepare",
        input.to_str().unwrap(),
        "--model",
        &m,
        "--stratify-by",
        "task",
        "--samples",
        "9",
        "--min-tokens",
        "4",
        "--skip-bad-lines",
        "--json",
        "-o",
        out.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["duplicates"], 1);
    assert_eq!(v["bad_lines"], 1);
    assert_eq!(v["instances"], 9);
    assert_eq!(v["per_stratum"]["a"], 3);
    assert_eq!(v["per_stratum"]["b"], 6);
    let body = std::fs::read_to_string(&out).unwrap();
    assert_eq!(body.lines().count(), 9);
    assert!(body.lines().all(|l| !l.contains("  ")), "whitespace is collapsed");
    // The prepared set calibrates a quantization run.
    let q = dir.join("g.eqf");
    ok(&[
        "quantize",
        &m,
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group",
        "32",
        "--calib",
        out.to_str().unwrap(),
        "-o",
        q.to_str().unwrap(),
    ]);
}

#[test]
fn compare_writes_the_summary_and_agrees_with_eval() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("compare");
    let m = import_stories(&fx, &dir);
    let text = fx.join("text/tinystories_val.txt");
    let out = dir.join("cmp");
    let args = [
        "compare",
        &m,
        "--text",
        text.to_str().unwrap(),
        "--eval-chars",
        "8000",
        "--window",
        "128",
        "--methods",
        "rtn,gptq,awq,hqq,int8,fp8",
        "--calib-samples",
        "4",
        "--speed-tokens",
        "16",
        "--sanity-tokens",
        "8",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    let s: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    for f in [
        "quantization_summary.json",
        "summary.md",
        "ppl_vs_size.svg",
        "ppl_vs_size.png",
        "layer_error.svg",
        "layer_error.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let rows = s["results"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["rtn-w4-g32", "gptq-w4-g32", "awq-w4-g32", "hqq-w4-g32", "int8-ch", "fp8-e4m3-ch"]
    );
    for r in rows {
        for k in [
            "size_mb",
            "bits_per_weight",
            "compression_vs_16bit",
            "mean_nll",
            "ppl",
            "ppl_increase_pct",
            "kl",
            "top1_agreement",
            "decode_tokens_per_second",
            "prefill_tokens_per_second",
            "speedup_vs_16bit",
            "quant_seconds",
        ] {
            assert!(r[k].as_f64().is_some_and(f64::is_finite), "{}: {k} = {}", r["name"], r[k]);
        }
        assert!(r["pass"].is_boolean() && r["failed"].is_array() && r["generations"].as_array().unwrap().len() == 3);
        let dir = std::path::Path::new(r["file"].as_str().unwrap()).parent().unwrap().to_path_buf();
        assert!(dir.join("validation_report.json").is_file());
        // The numbers are what `edgeq eval` prints for the same file and text.
        let e: serde_json::Value = serde_json::from_str(&ok(&[
            "eval",
            r["file"].as_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--chars",
            "8000",
            "--window",
            "128",
            "--json",
        ]))
        .unwrap();
        assert_eq!(e["mean_nll"].as_f64(), r["mean_nll"].as_f64(), "{}", r["name"]);
        assert_eq!(e["tokens"], r["tokens_scored"]);
        assert_eq!(e["file_bytes"], r["file_bytes"]);
    }
    let int8 = &rows[4];
    assert!(int8["ppl_increase_pct"].as_f64().unwrap().abs() < 1.0, "{int8}");
    assert!(int8["top1_agreement"].as_f64().unwrap() > rows[0]["top1_agreement"].as_f64().unwrap());
    // A second run reuses every candidate.
    let again: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert!(again["results"].as_array().unwrap().iter().all(|r| r["cached"] == true));
    assert_eq!(again["results"][1]["mean_nll"], s["results"][1]["mean_nll"]);
}

#[test]
fn mixed_precision_policies() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("policy");
    let m = import_stories(&fx, &dir);
    let schemes = |extra: &[&str]| -> std::collections::BTreeMap<String, String> {
        let q = dir.join("p.eqf");
        let mut args = vec!["quantize", &m, "--bits", "4", "--group", "32", "-o", q.to_str().unwrap()];
        args.extend_from_slice(extra);
        ok(&args);
        let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", q.to_str().unwrap(), "--json"])).unwrap();
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap().to_string(), t["scheme"].as_str().unwrap().to_string()))
            .collect()
    };
    let s = schemes(&["--policy", "mlp-only"]);
    assert_eq!((s["blk.2.attn_q"].as_str(), s["blk.2.ffn_up"].as_str()), ("f32", "q4-g32"));
    let s = schemes(&["--policy", "attn-only"]);
    assert_eq!((s["blk.2.attn_q"].as_str(), s["blk.2.ffn_up"].as_str()), ("q4-g32", "f32"));
    let s = schemes(&["--sandwich", "1"]);
    assert_eq!(
        (s["blk.0.attn_q"].as_str(), s["blk.4.ffn_down"].as_str(), s["blk.2.attn_q"].as_str()),
        ("f32", "f32", "q4-g32")
    );
    let s = schemes(&[
        "--override",
        "blk.1.*=q8-ch",
        "--override",
        "blk.*.ffn_down=keep",
        "--sandwich",
        "1",
    ]);
    assert_eq!(
        (
            s["blk.1.attn_q"].as_str(),
            s["blk.2.ffn_down"].as_str(),
            s["blk.2.ffn_up"].as_str(),
            s["blk.0.attn_k"].as_str()
        ),
        ("q8-ch", "f32", "q4-g32", "f32")
    );
    let (success, _, err) = edgeq(&["quantize", &m, "--override", "blk.1.*", "-o", dir.join("x.eqf").to_str().unwrap()]);
    assert!(!success && err.contains("GLOB=SCHEME"), "{err}");
    // regular expressions (re: prefix, whole name) in --skip and --override
    let s = schemes(&[
        "--skip",
        r"re:blk\.[0-2]\.attn_[qk]",
        "--override",
        r"re:blk\.4\.ffn_(up|gate)=q8-ch",
    ]);
    assert_eq!(
        (s["blk.1.attn_k"].as_str(), s["blk.1.attn_v"].as_str(), s["blk.3.attn_q"].as_str()),
        ("f32", "q4-g32", "q4-g32")
    );
    assert_eq!((s["blk.4.ffn_up"].as_str(), s["blk.4.ffn_down"].as_str()), ("q8-ch", "q4-g32"));
    let (success, _, err) = edgeq(&["quantize", &m, "--skip", "re:blk.(", "-o", dir.join("x.eqf").to_str().unwrap()]);
    assert!(!success && err.contains("regular expression"), "{err}");
}

/// Issue 11 on stories260K: the QuaRot-rotated float model scores the
/// original's NLL to 1e-4; QuaRot+GPTQ W4A8 (int8 activations per token at
/// run time) and AdaRound W4 each beat RTN W4 (same grid: 4-bit g32); W4A4
/// files carry int4 activation records (EQF 1.2).
#[test]
fn quarot_and_adaround_beat_rtn() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("quarot");
    let m = import_stories(&fx, &dir);
    let text = fx.join("text/tinystories_val.txt");
    let text = text.to_str().unwrap();
    let out = |n: &str| dir.join(format!("{n}.eqf")).to_str().unwrap().to_string();
    // 9,602 tokens: differences between 4-bit methods are a few hundredths of a nat, 1,024 tokens are too few.
    let nll = |model: &str| -> f64 {
        let v: serde_json::Value = serde_json::from_str(&ok(&[
            "eval", model, "--text", text, "--chars", "20000", "--window", "256", "--json",
        ]))
        .unwrap();
        assert_eq!(v["tokens"], 9602);
        v["mean_nll"].as_f64().unwrap()
    };
    let base = nll(&m);
    let rot = out("rot");
    ok(&["rotate", &m, "-o", &rot]);
    let nll_rot = nll(&rot);
    assert!((nll_rot - base).abs() < 1e-4, "rotated NLL {nll_rot} vs {base}");
    let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", &rot, "--json"])).unwrap();
    assert_eq!(v["config"]["tied_embeddings"], false, "the classifier is untied by the norm fusion");
    assert_eq!(
        v["config"]["online_hadamard"], false,
        "hidden 172 = 4·43 has no Hadamard construction"
    );

    // calibration disjoint from the evaluated characters
    let common = [
        "--bits",
        "4",
        "--group",
        "32",
        "--calib",
        text,
        "--calib-samples",
        "64",
        "--calib-seqlen",
        "512",
        "--calib-skip-chars",
        "20000",
    ];
    let q = |name: &str, extra: &[&str]| -> f64 {
        let o = out(name);
        let mut a = vec!["quantize", m.as_str()];
        a.extend(common);
        a.extend(extra);
        a.extend(["-o", o.as_str()]);
        ok(&a);
        nll(&o)
    };
    let rtn = q("rtn", &["--method", "rtn"]);
    let quarot = q("quarot", &["--method", "gptq", "--rotate", "--act-bits", "8"]);
    let ada = q("ada", &["--method", "adaround", "--ada-iters", "2000"]);
    eprintln!("NLL: reference {base:.4}, rtn {rtn:.4}, quarot-gptq w4a8 {quarot:.4}, adaround {ada:.4}");
    assert!(quarot < rtn - 0.01, "QuaRot+GPTQ W4A8 {quarot} should beat RTN W4 {rtn}");
    assert!(ada < rtn - 0.01, "AdaRound W4 {ada} should beat RTN W4 {rtn}");
    let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", &out("quarot"), "--json"])).unwrap();
    assert_eq!(v["activations"]["int8-token"], 35, "{}", v["activations"]);
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("ada.report.json")).unwrap()).unwrap();
    for l in rep["layers"].as_array().unwrap() {
        assert!(l["note"].as_str().unwrap().contains("weights rounded the other way"), "{l}");
    }

    // W4A4: int4 activations (clip 0.9) are stored and executed.
    let a4 = q("a4", &["--method", "rtn", "--rotate", "--act-bits", "4", "--act-clip", "0.9"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", &out("a4"), "--json"])).unwrap();
    assert_eq!(v["activations"]["int4-token"], 35, "{}", v["activations"]);
    assert_eq!(v["format_version"], "1.2");
    assert!(a4.is_finite() && a4 > rtn, "W4A4 {a4} costs more than weight-only W4 {rtn}");
}

/// The 8-bit family end to end on stories260K: INT8 (auto symmetry, with
/// the decision saved per layer), SmoothQuant W8A8, LLM.int8 and FP8
/// block-128 with per-group activations each stay within 1 % NLL, and the
/// W8A8 files carry their activation records (inspect shows them).
#[test]
fn eight_bit_family_within_one_percent() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("w8");
    let m = import_stories(&fx, &dir);
    let calib = fx.join("text/tinystories_val.txt");
    let calib = calib.to_str().unwrap();
    let base = eval_nll(&fx, &m);
    let out = |n: &str| dir.join(format!("{n}.eqf")).to_str().unwrap().to_string();
    let common = [
        "--calib",
        calib,
        "--calib-samples",
        "8",
        "--calib-seqlen",
        "128",
        "--calib-skip-chars",
        "6000",
    ];
    for (name, args, acts) in [
        ("int8", vec!["--method", "int8", "--int8", "auto"], None),
        ("int8-ct", vec!["--method", "int8", "--int8", "sym", "--int8-scale", "127.5"], None),
        ("sq", vec!["--method", "smoothquant", "--alpha", "0.5"], Some("int8-token")),
        ("llm", vec!["--method", "llm-int8", "--threshold", "1.0"], Some("llm-int8")),
        ("fp8b", vec!["--fp8", "e4m3", "--group", "128"], Some("fp8-g128")),
    ] {
        let mut a = vec!["quantize", m.as_str()];
        a.extend(args);
        if name != "fp8b" {
            a.extend(common);
        }
        let o = out(name);
        a.extend(["-o", o.as_str()]);
        ok(&a);
        let nll = eval_nll(&fx, &o);
        assert!((nll - base).abs() / base < 0.01, "{name}: NLL {nll} vs {base}");
        let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", &o, "--json"])).unwrap();
        let q = v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "blk.2.ffn_down")
            .unwrap()
            .clone();
        match acts {
            Some(mode) => {
                assert_eq!(v["activations"][mode], 35, "{name}: {}", v["activations"]);
                assert_eq!(v["format_version"], "1.1");
                assert!(q["activations"].as_str().unwrap().starts_with(mode));
            }
            None => assert_eq!(v["format_version"], "1.0"),
        }
        if name == "int8" {
            let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("int8.report.json")).unwrap()).unwrap();
            let layers = rep["layers"].as_array().unwrap();
            assert_eq!(layers.len(), 35);
            for l in layers {
                let st = &l["details"]["symmetry"];
                let score = st["score"].as_f64().unwrap();
                let expect = (-st["mean"].as_f64().unwrap().abs() / (st["std"].as_f64().unwrap() + 1e-8)).exp();
                assert!((score - expect).abs() < 1e-9);
                assert_eq!(l["details"]["symmetric"].as_bool().unwrap(), score > 0.6);
                assert_eq!(l["scheme"].as_str().unwrap(), if score > 0.6 { "q8-ch" } else { "q8a-ch" });
            }
        }
        if name == "llm" {
            // threshold 1.0 on this model: some calibrated outlier columns are stored
            let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("llm.report.json")).unwrap()).unwrap();
            let n: u64 = rep["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["details"]["calibrated_outliers"].as_u64().unwrap())
                .sum();
            assert!(n > 0, "no outlier columns at threshold 1");
        }
    }
    let (success, _, err) = edgeq(&["quantize", &m, "--method", "smoothquant", "-o", &out("x")]);
    assert!(!success && err.contains("--calib"), "{err}");
}

/// `--sensitivity` ranks the blocks by the NLL increase of quantizing each
/// alone; `--budget-bits` keeps the most sensitive at 8 bits within an
/// average bits-per-weight budget, and beats uniform 4-bit.
#[test]
fn sensitivity_scan_and_bit_budget() {
    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("budget");
    let m = import_stories(&fx, &dir);
    let text = fx.join("text/tinystories_val.txt");
    let out = |n: &str| dir.join(format!("{n}.eqf")).to_str().unwrap().to_string();
    let q4 = ["--bits", "4", "--group", "32", "--sensitivity-text", text.to_str().unwrap()];
    let mut a = vec!["quantize", m.as_str(), "--budget-bits", "5.5", "-o"];
    let b = out("budget");
    a.push(&b);
    a.extend(q4);
    ok(&a);
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("budget.sensitivity.json")).unwrap()).unwrap();
    let blocks = rep["scan"]["blocks"].as_array().unwrap();
    let mut ranks: Vec<u64> = blocks.iter().map(|b| b["rank"].as_u64().unwrap()).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, vec![1, 2, 3, 4, 5]);
    let top = blocks.iter().find(|b| b["rank"] == 1).unwrap();
    assert!(blocks
        .iter()
        .all(|b| b["delta_nll"].as_f64().unwrap() <= top["delta_nll"].as_f64().unwrap()));
    let promoted: Vec<u64> = rep["budget"]["promoted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(promoted, vec![top["block"].as_u64().unwrap()], "{rep}");
    let avg = rep["budget"]["average_bits"].as_f64().unwrap();
    assert!(avg <= 5.5 && avg > 4.5, "{avg}");
    // the file holds that mix, and the average is what the file stores
    let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", &b, "--json"])).unwrap();
    let (mut bits, mut params) = (0.0, 0.0);
    for t in v["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        if name.starts_with("blk.") && !name.ends_with("norm") {
            let n = t["shape"][0].as_f64().unwrap() * t["shape"][1].as_f64().unwrap();
            params += n;
            bits += t["bpw"].as_f64().unwrap() * n;
            let want = if name.starts_with(&format!("blk.{}.", promoted[0])) {
                "q8-ch"
            } else {
                "q4-g32"
            };
            assert_eq!(t["scheme"], want, "{name}");
        }
    }
    assert!((bits / params - avg).abs() < 0.05, "file {} vs reported {avg}", bits / params);
    let mut u = vec!["quantize", m.as_str(), "-o"];
    let uni = out("uniform");
    u.push(&uni);
    u.extend(&q4[..4]);
    ok(&u);
    assert!(eval_nll(&fx, &b) < eval_nll(&fx, &uni));
    // a budget below the low scheme is a clear error
    let mut a = vec!["quantize", m.as_str(), "--budget-bits", "3", "-o"];
    let x = out("x");
    a.push(&x);
    a.extend(q4);
    let (success, _, err) = edgeq(&a);
    assert!(!success && err.contains("already averages"), "{err}");
}

/// `edgeq synth` writes a sharded checkpoint that the HF importer reads and
/// the runtime runs (random weights: the text is noise, the pipeline is
/// real); a bad shape is a clear error and an existing output is refused.
#[test]
fn synth_checkpoint_imports_and_runs() {
    let d = tmpdir("synth");
    let ck = d.join("ck");
    let _ = std::fs::remove_dir_all(&ck);
    let args = [
        "synth",
        "--shape",
        "stories260k",
        "--layers",
        "2",
        "--shard-size",
        "50KB",
        "--seed",
        "3",
        "-o",
    ];
    let (success, _, err) = edgeq(&[&args[..], &[ck.to_str().unwrap()]].concat());
    assert!(success, "{err}");
    assert!(err.contains("2 layers") && err.contains("shards"), "{err}");
    assert!(ck.join("model.safetensors.index.json").exists());
    let eqf = d.join("synth.eqf");
    ok(&["import", ck.to_str().unwrap(), "-o", eqf.to_str().unwrap()]);
    let (success, _, err) = edgeq(&["run", eqf.to_str().unwrap(), "-n", "4", "--temp", "0"]);
    assert!(success, "{err}");
    let (success, _, err) = edgeq(&[&args[..], &[ck.to_str().unwrap()]].concat());
    assert!(!success && err.contains("not an empty directory"), "{err}");
    let (success, _, err) = edgeq(&["synth", "--shape", "llama-9b", "-o", d.join("x").to_str().unwrap()]);
    assert!(!success && err.contains("unknown --shape") && err.contains("llama-3-8b"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `--device cuda` on a machine without a usable GPU fails up front with
/// the reason and the alternative (on a GPU machine it gets past the
/// device and fails on the missing input instead).
#[test]
fn device_cuda_without_a_gpu_is_a_clear_error() {
    let dir = tmpdir("device");
    let out = dir.join("q.eqf");
    let (success, _, err) = edgeq(&[
        "quantize",
        dir.join("missing.eqf").to_str().unwrap(),
        "--method",
        "gptq",
        "--device",
        "cuda",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!success, "{err}");
    if !err.contains("--device cuda:0") {
        assert!(err.contains("missing.eqf"), "{err}");
        eprintln!("skipped: a GPU is present");
        return;
    }
    assert!(
        err.contains("use --device cpu") && (err.contains("CUDA") || err.contains("cuda")),
        "{err}"
    );
    let (success, _, err) = edgeq(&["quantize", "m.eqf", "--device", "tpu", "-o", out.to_str().unwrap()]);
    assert!(!success && err.contains("cuda:N"), "{err}");
}

/// `edgeq bench`: the bandwidth line, a kernel row for every available
/// implementation of each scheme (the side-by-side table), and llama-bench
/// style model rows; small sizes, so only the structure is checked.
#[test]
fn bench_measures_every_implementation_and_the_model() {
    let common = [
        "bench",
        "--shapes",
        "64x256",
        "--schemes",
        "q4-g32,q8-g32",
        "--threads",
        "1",
        "--min-time",
        "0.01",
    ];
    let small = ["--cold-mb", "0", "--bw-mb", "4", "--json"];
    let v: serde_json::Value = serde_json::from_str(&ok(&[&common[..], &small[..]].concat())).unwrap();
    let bw = &v["bandwidth"][0];
    assert_eq!(bw["threads"], 1);
    assert!(
        bw["read_gbs"].as_f64().unwrap() > 0.0 && bw["triad_gbs"].as_f64().unwrap() > 0.0,
        "{bw}"
    );
    let rows = v["kernels"].as_array().unwrap();
    let imps: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["implementation"].as_str().unwrap()).collect();
    assert!(imps.contains("scalar"), "the reference is in the table: {imps:?}");
    for scheme in ["q4-g32", "q8-g32"] {
        for imp in &imps {
            assert!(
                rows.iter()
                    .any(|r| r["scheme"] == scheme && r["implementation"] == *imp && r["us"].as_f64().unwrap() > 0.0),
                "no {scheme} row for {imp}"
            );
        }
    }
    // Each row's side-by-side plain read of the same bytes, and the ratio.
    for r in rows {
        let (read, of) = (r["paired_read_gbs"].as_f64().unwrap(), r["of_paired_read"].as_f64().unwrap());
        let gbs = r["weight_gbs"].as_f64().unwrap();
        assert!(read > 0.0 && (of - gbs / read).abs() <= 1e-9 * of.abs().max(1.0), "{r}");
    }
    let (fine, _, err) = edgeq(&[&common[..], &["--bw-mb", "0"]].concat());
    assert!(!fine && err.contains("--bw-mb"), "{err}");

    let Some(fx) = fixtures() else { return };
    let dir = tmpdir("bench");
    let m = import_stories(&fx, &dir);
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "bench",
        "--no-kernels",
        "--model",
        &m,
        "--tests",
        "tg8,pp16",
        "--acts",
        "q8",
        "--reps",
        "1",
        "--json",
    ]))
    .unwrap();
    let models = v["model"].as_array().unwrap();
    for test in ["tg8", "pp16"] {
        let r = models
            .iter()
            .find(|r| r["test"] == test)
            .unwrap_or_else(|| panic!("no {test} row: {v}"));
        assert!(r["tokens_per_second"].as_f64().unwrap() > 0.0, "{r}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
