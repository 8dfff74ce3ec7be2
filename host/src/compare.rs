//! `edgeq compare`: quantize one model with several methods, evaluate every
//! result on the same tokens against the original, measure size and speed,
//! judge each against acceptance criteria (with an optional fallback ladder)
//! and write the answer to "which method, at what cost": a JSON summary, a
//! Markdown table, a per-candidate validation report and two SVG plots.
//!
//! Each candidate is quantized by running `edgeq quantize` as a child
//! process (its time and peak memory are its own, read from the report it
//! writes) into `OUT/<name>/model.eqf`; a candidate whose `args.json`
//! matches is reused, so an interrupted comparison resumes where it stopped.
//! Evaluation runs the reference and the candidates in lockstep on the same
//! windows ([`crate::eval::evaluate`]): perplexity, KL divergence and top-1
//! agreement; speed is llama-bench's `tg` / `pp` on each file
//! ([`crate::bench::model`]); generations are checked by [`crate::sanity`].
use crate::model_file::{write_atomic, ModelFile};
use anyhow::{bail, Context, Result};
use edgeq_runtime::{Activations, KvCache, Model};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A method to try: its name and the `edgeq quantize` arguments.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub name: String,
    pub method: String,
    pub bits: u32,
    /// Group size (0 = per channel).
    pub group: i64,
    pub args: Vec<String>,
    /// Which fallback step made it (empty for the first try).
    pub fallback: String,
}

/// The candidates for `--methods` at each of `--bits`. A method may carry a
/// mixed-precision policy after a colon: `int8:mlp-only`, `gptq:attn-only`,
/// `rtn:sandwich2` (first and last 2 blocks kept).
pub fn candidates(methods: &[String], bits: &[u32], group: i64, calib_samples: usize) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for spec in methods {
        let (m, policy) = match spec.split_once(':') {
            Some((m, p)) => (m, Some(p)),
            None => (spec.as_str(), None),
        };
        let extra: Vec<String> = match policy {
            None => vec![],
            Some(p @ ("mlp-only" | "attn-only")) => vec!["--policy".into(), p.into()],
            Some(p) if p.strip_prefix("sandwich").is_some_and(|n| n.parse::<u32>().is_ok()) => {
                vec!["--sandwich".into(), p["sandwich".len()..].into()]
            }
            Some(p) => bail!("--methods {spec}: unknown policy '{p}' (mlp-only, attn-only, sandwichN)"),
        };
        for mut c in base_candidates(&[m.to_string()], bits, group, calib_samples)? {
            if let Some(p) = policy {
                c.name = format!("{}-{p}", c.name);
                c.args.extend(extra.iter().cloned());
            }
            out.push(c);
        }
    }
    Ok(out)
}

fn base_candidates(methods: &[String], bits: &[u32], group: i64, calib_samples: usize) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for m in methods {
        match m.as_str() {
            "rtn" | "gptq" | "gptq-ao" | "awq" | "hqq" | "adaround" | "quarot-rtn" | "quarot-gptq" | "quarot-rtn-a4" | "quarot-gptq-a4" => {
                // QuaRot: rotate, then the weight method, with per-token int8 (int4 with -a4) activations.
                let (base, quarot, a) = match m.strip_prefix("quarot-") {
                    Some(rest) => match rest.strip_suffix("-a4") {
                        Some(b) => (b, true, "4"),
                        None => (rest, true, "8"),
                    },
                    None => (m.as_str(), false, ""),
                };
                for &b in bits {
                    if b != 4 && b != 8 {
                        bail!("--bits {b}: integer methods take 4 or 8");
                    }
                    // gptq-ao: GPTQ with act-order (dynamic groups, stored with input permutations)
                    let (base, act_order) = match base.strip_suffix("-ao") {
                        Some(b) => (b, true),
                        None => (base, false),
                    };
                    let mut args = s(&["--method", base, "--bits", &b.to_string(), "--group", &group.to_string()]);
                    if act_order {
                        args.push("--act-order".into());
                    }
                    if matches!(base, "gptq" | "awq" | "adaround") {
                        args.extend(s(&["--calib-samples", &calib_samples.to_string()]));
                    }
                    if quarot {
                        args.extend(s(&["--rotate", "--act-bits", a]));
                    }
                    let g = if group <= 0 { "ch".into() } else { group.to_string() };
                    out.push(Candidate {
                        name: if quarot {
                            format!("{m}-w{b}a{a}-g{g}").replace("-a4-", "-")
                        } else {
                            format!("{m}-w{b}-g{g}")
                        },
                        method: m.clone(),
                        bits: b,
                        group,
                        args,
                        fallback: String::new(),
                    });
                }
            }
            "int8" => out.push(Candidate {
                name: "int8-ch".into(),
                method: "int8".into(),
                bits: 8,
                group: 0,
                args: s(&["--method", "rtn", "--bits", "8", "--group", "-1"]),
                fallback: String::new(),
            }),
            "fp8" | "fp8-block" => {
                let g = if m == "fp8" { -1 } else { 128 };
                out.push(Candidate {
                    name: if g < 0 { "fp8-e4m3-ch".into() } else { "fp8-e4m3-b128".into() },
                    method: m.clone(),
                    bits: 8,
                    group: g.max(0),
                    args: s(&["--method", "rtn", "--fp8", "e4m3", "--group", &g.to_string()]),
                    fallback: String::new(),
                });
            }
            // The calibrated 8-bit family (statistics from the f32 model).
            "int8-auto" | "smoothquant" | "llm-int8" => {
                let (name, method) = match m.as_str() {
                    "int8-auto" => ("int8-auto-ch", "int8"),
                    "smoothquant" => ("smoothquant-w8a8", "smoothquant"),
                    _ => ("llm-int8", "llm-int8"),
                };
                out.push(Candidate {
                    name: name.into(),
                    method: m.clone(),
                    bits: 8,
                    group: 0,
                    args: s(&["--method", method, "--calib-samples", &calib_samples.to_string()]),
                    fallback: String::new(),
                });
            }
            "f16" => {}
            other => {
                bail!("--methods: unknown method '{other}' (rtn, gptq, gptq-ao, awq, hqq, adaround, quarot-rtn, quarot-gptq, quarot-rtn-a4, quarot-gptq-a4, int8, int8-auto, smoothquant, llm-int8, fp8, fp8-block)")
            }
        }
    }
    Ok(out)
}

/// The 16-bit model every candidate's compression and speed are measured against.
pub fn f16_candidate() -> Candidate {
    Candidate {
        name: "f16".into(),
        method: "f16".into(),
        bits: 16,
        group: 0,
        args: ["--method", "rtn", "--bits", "16", "--embed", "f16"]
            .iter()
            .map(|x| x.to_string())
            .collect(),
        fallback: String::new(),
    }
}

/// The next rung of the fallback ladder for a candidate that failed on
/// quality: more calibration data, then a smaller group, then the first and
/// last blocks kept unquantized ("sandwich"), then INT8.
pub fn fallback(c: &Candidate, n_layers: u32) -> Option<Candidate> {
    let mut next = c.clone();
    let has = |s: &str| c.fallback.split('+').any(|f| f == s);
    if matches!(c.method.as_str(), "gptq" | "gptq-ao" | "awq") && !has("more-calib") && !has("smaller-group") && !has("sandwich") {
        let i = next.args.iter().position(|a| a == "--calib-samples")?;
        let n: usize = next.args[i + 1].parse().ok()?;
        next.args[i + 1] = (n * 2).to_string();
        next.fallback = join(&c.fallback, "more-calib");
    } else if c.bits <= 4 && (c.group == 0 || c.group > 32) && !has("smaller-group") && !has("sandwich") {
        let g = if c.group == 0 { 128 } else { c.group / 2 };
        let i = next.args.iter().position(|a| a == "--group")?;
        next.args[i + 1] = g.to_string();
        next.group = g;
        next.fallback = join(&c.fallback, "smaller-group");
    } else if c.bits <= 4 && !has("sandwich") {
        next.args.extend([
            "--skip".into(),
            "blk.0.*".into(),
            "--skip".into(),
            format!("blk.{}.*", n_layers.saturating_sub(1)),
        ]);
        next.fallback = join(&c.fallback, "sandwich");
    } else if c.bits <= 4 {
        next = candidates(&["int8".into()], &[8], 0, 0).ok()?.remove(0);
        next.fallback = join(&c.fallback, "int8");
    } else {
        return None;
    }
    next.name = format!("{}+{}", c.name.split('+').next().unwrap_or(&c.name), next.fallback);
    Some(next)
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}+{b}")
    }
}

/// The acceptance criteria.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Criteria {
    /// Largest perplexity increase over the reference, percent.
    pub max_ppl_increase_pct: f64,
    /// Smallest decode speedup over the 16-bit model.
    pub min_speedup: f64,
    /// Smallest compression vs 16-bit, as a fraction of the ideal `16 / bits`.
    pub min_compression_fraction: f64,
}

/// Everything measured about one model file.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub method: String,
    pub bits: u32,
    pub group: i64,
    pub fallback: String,
    pub file: PathBuf,
    pub file_bytes: u64,
    pub size_mb: f64,
    pub bits_per_weight: f64,
    pub compression_vs_16bit: f64,
    pub quant_seconds: Option<f64>,
    pub quant_peak_rss_mb: Option<f64>,
    pub cached: bool,
    pub mean_nll: f64,
    pub ppl: f64,
    pub delta_nll_pct: f64,
    pub ppl_increase_pct: f64,
    pub kl: f64,
    pub top1_agreement: f64,
    pub tokens_scored: usize,
    pub decode_tokens_per_second: f64,
    pub prefill_tokens_per_second: f64,
    pub speedup_vs_16bit: f64,
    pub generations: Vec<crate::sanity::Generation>,
    /// Generation flags the reference does not have on the same prompt.
    pub broken_generations: Vec<String>,
    pub pass: bool,
    pub failed: Vec<String>,
}

/// Options of [`run`].
pub struct Options {
    pub model: PathBuf,
    pub text: PathBuf,
    pub eval_chars: usize,
    pub calib: Option<PathBuf>,
    pub calib_skip_chars: usize,
    pub out: PathBuf,
    pub window: usize,
    pub max_tokens: Option<usize>,
    pub criteria: Criteria,
    pub fallback: bool,
    pub threads: usize,
    pub speed_tokens: usize,
    pub sanity_tokens: usize,
    pub force: bool,
}

/// Quantizes `c` into `OUT/<name>/model.eqf` by running `edgeq quantize`,
/// unless a previous run with the same arguments left it there.
fn quantize(o: &Options, c: &Candidate, exe: &Path) -> Result<(PathBuf, bool, Value)> {
    let dir = o.out.join(&c.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let model = dir.join("model.eqf");
    let report = dir.join("report.json");
    let meta = std::fs::metadata(&o.model).with_context(|| format!("cannot stat {}", o.model.display()))?;
    let mut args: Vec<String> = vec!["quantize".into(), o.model.display().to_string()];
    args.extend(c.args.iter().cloned());
    let calibrated = c
        .args
        .iter()
        .any(|a| matches!(a.as_str(), "gptq" | "awq" | "adaround" | "int8" | "smoothquant" | "llm-int8"));
    if calibrated {
        let calib = o.calib.as_ref().unwrap_or(&o.text);
        args.extend(["--calib".into(), calib.display().to_string()]);
        // calibration from the evaluation text skips the evaluated characters
        if o.calib.is_none() || o.calib.as_ref() == Some(&o.text) {
            args.extend(["--calib-skip-chars".into(), o.calib_skip_chars.to_string()]);
        }
    }
    args.extend([
        "-o".into(),
        model.display().to_string(),
        "--report".into(),
        report.display().to_string(),
    ]);
    let key = json!({"args": args, "input_bytes": meta.len(), "input_modified": meta.modified().ok().map(|t| format!("{t:?}"))});
    let key_path = dir.join("args.json");
    let cached = !o.force
        && model.is_file()
        && report.is_file()
        && std::fs::read(&key_path).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) == Some(key.clone());
    if !cached {
        let _ = std::fs::remove_file(&key_path);
        let log = dir.join("quantize.log");
        let logf = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let status = std::process::Command::new(exe)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(logf)
            .status()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!(
                "{}: `edgeq {}` failed ({status}); see {}:\n{}",
                c.name,
                args.join(" "),
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        write_atomic(&key_path, serde_json::to_string_pretty(&key)?.as_bytes())?;
    }
    let rep: Value = serde_json::from_slice(&std::fs::read(&report).with_context(|| format!("cannot read {}", report.display()))?)
        .with_context(|| format!("{}: not JSON", report.display()))?;
    Ok((model, cached, rep))
}

/// Measurements of one file that do not need the reference.
struct Measured {
    file_bytes: u64,
    bpw: f64,
    params: f64,
    decode: f64,
    prefill: f64,
    generations: Vec<crate::sanity::Generation>,
}

fn measure(m: &Model<'_>, file_bytes: u64, o: &Options) -> Result<Measured> {
    let info = crate::inspect::report(m, file_bytes);
    let n = o.speed_tokens.min(m.cfg.max_seq_len as usize - 1).max(1);
    let tg = crate::bench::model(m, ("tg", n), Activations::Q8, KvCache::F32, o.threads, 3)?;
    let pp = crate::bench::model(m, ("pp", n), Activations::Q8, KvCache::F32, o.threads, 3)?;
    let generations = crate::sanity::PROMPTS
        .iter()
        .map(|p| crate::sanity::generate(m, p, o.sanity_tokens, Activations::Q8))
        .collect::<Result<Vec<_>>>()?;
    Ok(Measured {
        file_bytes,
        bpw: info["bits_per_weight"].as_f64().unwrap_or(f64::NAN),
        params: info["params"].as_f64().unwrap_or(f64::NAN),
        decode: tg.tokens_per_second,
        prefill: pp.tokens_per_second,
        generations,
    })
}

/// The whole comparison: returns the summary JSON (also written to
/// `OUT/quantization_summary.json`, with `summary.md` and the plots).
pub fn run(o: &Options, cands: &[Candidate], progress: &indicatif::ProgressBar) -> Result<Value> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create {}", o.out.display()))?;
    let exe = std::env::current_exe().context("cannot find the edgeq executable")?;
    let base_file = ModelFile::open(&o.model)?;
    let base = base_file.model()?;
    let raw = std::fs::read_to_string(&o.text).with_context(|| format!("cannot read text file {}", o.text.display()))?;
    let body: String = raw.chars().take(o.eval_chars).collect();
    let tok = crate::text::tokenizer(&base)?;
    let tokens = crate::text::encode(&tok, &body, tok.add_bos_default())?;
    let protocol = crate::eval::Protocol::Sliding {
        window: o.window,
        stride: o.window,
    };
    let hidden = indicatif::ProgressBar::hidden();
    let score = |paths: &[&Path]| -> Result<Vec<crate::eval::PplResult>> {
        let files = paths.iter().map(|p| ModelFile::open(p)).collect::<Result<Vec<_>>>()?;
        let models = files.iter().map(|f| f.model()).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Model<'_>> = models.iter().collect();
        crate::eval::evaluate(
            &refs,
            true,
            &tokens,
            protocol,
            o.max_tokens,
            Activations::F32,
            KvCache::F32,
            &hidden,
        )
    };
    progress.set_length(cands.len() as u64 + 2);
    progress.set_message("reference");
    let base_m = measure(&base, base_file.bytes().len() as u64, o)?;
    let base_score = score(&[o.model.as_path()])?.remove(0);
    progress.inc(1);
    progress.set_message("f16");
    let f16c = f16_candidate();
    let (f16_path, _, _) = quantize(o, &f16c, &exe)?;
    let f16_file = ModelFile::open(&f16_path)?;
    let f16_m = measure(&f16_file.model()?, f16_file.bytes().len() as u64, o)?;
    progress.inc(1);
    let bytes16 = base_m.params * 2.0;

    let row_of = |c: &Candidate, path: &Path, cached: bool, rep: &Value, s: &crate::eval::PplResult, m: &Measured| -> Row {
        let ppl_inc = (s.ppl / base_score.ppl - 1.0) * 100.0;
        let broken: Vec<String> = m
            .generations
            .iter()
            .zip(&base_m.generations)
            .flat_map(|(g, b)| {
                g.flags
                    .iter()
                    .filter(|f| !b.flags.contains(f))
                    .map(move |f| format!("{:?}: {f}", g.prompt))
            })
            .collect();
        let compression = bytes16 / m.file_bytes as f64;
        let speedup = m.decode / f16_m.decode;
        let mut failed = Vec::new();
        if ppl_inc > o.criteria.max_ppl_increase_pct {
            failed.push(format!("perplexity +{ppl_inc:.2}% > +{}%", o.criteria.max_ppl_increase_pct));
        }
        if speedup < o.criteria.min_speedup {
            failed.push(format!("decode speedup {speedup:.2}x < {}x vs 16-bit", o.criteria.min_speedup));
        }
        let want = o.criteria.min_compression_fraction * 16.0 / c.bits as f64;
        if compression < want {
            failed.push(format!("compression {compression:.2}x < {want:.2}x vs 16-bit"));
        }
        if !broken.is_empty() {
            failed.push(format!("broken generations: {}", broken.join("; ")));
        }
        Row {
            name: c.name.clone(),
            method: c.method.clone(),
            bits: c.bits,
            group: c.group,
            fallback: c.fallback.clone(),
            file: path.to_path_buf(),
            file_bytes: m.file_bytes,
            size_mb: m.file_bytes as f64 / 1e6,
            bits_per_weight: m.bpw,
            compression_vs_16bit: compression,
            quant_seconds: rep["seconds"].as_f64(),
            quant_peak_rss_mb: rep["peak_rss_mb"].as_f64(),
            cached,
            mean_nll: s.mean_nll,
            ppl: s.ppl,
            delta_nll_pct: (s.mean_nll / base_score.mean_nll - 1.0) * 100.0,
            ppl_increase_pct: ppl_inc,
            kl: s.kl.unwrap_or(f64::NAN),
            top1_agreement: s.top1_agreement.unwrap_or(f64::NAN),
            tokens_scored: s.tokens,
            decode_tokens_per_second: m.decode,
            prefill_tokens_per_second: m.prefill,
            speedup_vs_16bit: speedup,
            generations: m.generations.clone(),
            broken_generations: broken,
            pass: failed.is_empty(),
            failed,
        }
    };

    // Quantize every candidate (child processes), then score them all in one lockstep pass.
    let mut quantized = Vec::new();
    let mut errors = Vec::new();
    for c in cands {
        progress.set_message(c.name.clone());
        match quantize(o, c, &exe) {
            Ok(q) => quantized.push((c.clone(), q)),
            Err(e) => {
                eprintln!("warning: {e:#}");
                errors.push(json!({"name": c.name, "error": format!("{e:#}")}));
            }
        }
        progress.inc(1);
    }
    progress.set_message("evaluating");
    let mut paths: Vec<&Path> = vec![o.model.as_path()];
    paths.extend(quantized.iter().map(|(_, q)| q.0.as_path()));
    let scores = score(&paths)?;
    let mut rows = Vec::new();
    let mut attempts_of = Vec::new();
    for ((c, (path, cached, rep)), s) in quantized.iter().zip(&scores[1..]) {
        let f = ModelFile::open(path)?;
        let m = measure(&f.model()?, f.bytes().len() as u64, o)?;
        let mut row = row_of(c, path, *cached, rep, s, &m);
        let mut attempts = Vec::new();
        // Fallback ladder on quality failures.
        let quality = |r: &Row| r.failed.iter().all(|f| !f.starts_with("perplexity") && !f.starts_with("broken"));
        let mut cur = c.clone();
        while o.fallback && !quality(&row) {
            let Some(next) = fallback(&cur, base.cfg.n_layers) else { break };
            progress.set_message(next.name.clone());
            let (p, cached, rep) = match quantize(o, &next, &exe) {
                Ok(q) => q,
                Err(e) => {
                    errors.push(json!({"name": next.name, "error": format!("{e:#}")}));
                    break;
                }
            };
            let s = score(&[o.model.as_path(), p.as_path()])?.remove(1);
            let f = ModelFile::open(&p)?;
            let m = measure(&f.model()?, f.bytes().len() as u64, o)?;
            attempts.push(std::mem::replace(&mut row, row_of(&next, &p, cached, &rep, &s, &m)));
            cur = next;
        }
        attempts_of.push(attempts);
        rows.push(row);
    }
    let f16_score = score(&[o.model.as_path(), f16_path.as_path()])?.remove(1);
    let f16_row = row_of(&f16c, &f16_path, true, &Value::Null, &f16_score, &f16_m);
    let base_row = row_of(
        &Candidate {
            name: "reference".into(),
            method: "none".into(),
            bits: (base_m.bpw.round() as u32).max(1),
            group: 0,
            args: vec![],
            fallback: String::new(),
        },
        &o.model,
        true,
        &Value::Null,
        &base_score,
        &base_m,
    );

    // Layer errors from the quantize reports, for the plot.
    let mut layer_errors = Vec::new();
    for (c, (_, _, rep)) in &quantized {
        let pts: Vec<(String, f64)> = rep["layers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| Some((l["tensor"].as_str()?.to_string(), l["rel_err"].as_f64()?)))
                    .filter(|(t, _)| t.starts_with("blk."))
                    .collect()
            })
            .unwrap_or_default();
        let metric = rep["layers"][0]["metric"].as_str().unwrap_or("weight");
        layer_errors.push((format!("{} ({metric})", c.name), pts));
    }
    crate::plots::ppl_vs_size(&o.out.join("ppl_vs_size.svg"), &base_row, &rows)?;
    crate::plots::layer_errors(&o.out.join("layer_error.svg"), &layer_errors)?;
    for p in ["ppl_vs_size", "layer_error"] {
        crate::plots::svg_to_png(&o.out.join(format!("{p}.svg")), &o.out.join(format!("{p}.png")))?;
    }

    let summary = json!({
        "model": o.model,
        "text": o.text,
        "eval": {"chars": body.chars().count(), "text_tokens": tokens.len(), "tokens_scored": base_score.tokens,
                 "window": base_score.window, "protocol": "sliding (non-overlapping windows)", "activations": "f32"},
        "speed": {"test": format!("tg{} / pp{}", o.speed_tokens, o.speed_tokens), "activations": "q8", "threads": o.threads},
        "criteria": o.criteria,
        "reference": base_row,
        "f16": f16_row,
        "results": rows.iter().zip(&attempts_of).map(|(r, a)| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["attempts"] = serde_json::to_value(a).unwrap_or_default();
            v
        }).collect::<Vec<_>>(),
        "errors": errors,
        "vs_rtn": vs_rtn(base_score.mean_nll, &rows),
        "seconds": t0.elapsed().as_secs_f64(),
    });
    for (r, a) in rows.iter().zip(&attempts_of) {
        let dir = r.file.parent().unwrap_or(&o.out);
        let mut v = serde_json::to_value(r)?;
        v["attempts"] = serde_json::to_value(a)?;
        v["reference"] = json!({"file": o.model, "mean_nll": base_score.mean_nll, "ppl": base_score.ppl});
        v["criteria"] = serde_json::to_value(o.criteria)?;
        write_atomic(&dir.join("validation_report.json"), serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    write_atomic(
        &o.out.join("quantization_summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    write_atomic(&o.out.join("summary.md"), markdown(&summary, &base_row, &f16_row, &rows).as_bytes())?;
    Ok(summary)
}

/// Each candidate against round-to-nearest at the same bits and group (when
/// that RTN candidate is in the comparison): NLL difference, and how much of
/// RTN's NLL increase over the reference it removes.
pub fn vs_rtn(base_nll: f64, rows: &[Row]) -> Vec<Value> {
    rows.iter()
        .filter(|r| r.method != "rtn")
        .filter_map(|r| {
            let rtn = rows
                .iter()
                .find(|x| x.method == "rtn" && x.bits == r.bits && x.group == r.group && x.fallback.is_empty())?;
            let (inc, inc_rtn) = (r.mean_nll - base_nll, rtn.mean_nll - base_nll);
            Some(json!({
                "name": r.name, "rtn": rtn.name, "mean_nll": r.mean_nll, "rtn_mean_nll": rtn.mean_nll,
                "delta_nll": r.mean_nll - rtn.mean_nll,
                "increase_removed_pct": if inc_rtn > 0.0 { Some(100.0 * (1.0 - inc / inc_rtn)) } else { None },
            }))
        })
        .collect()
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "–".into())
}

/// The Markdown report: the table, failures, and the plots.
pub fn markdown(summary: &Value, base: &Row, f16: &Row, rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# Quantization comparison: {}\n\nText: `{}`, {} tokens scored (windows of {}, f32 activations); speed: {} with q8 activations, {} thread(s). Criteria: perplexity increase ≤ {}%, decode speedup ≥ {}× vs 16-bit, compression ≥ {} × 16/bits.\n\n",
        summary["model"].as_str().unwrap_or(""),
        summary["text"].as_str().unwrap_or(""),
        summary["eval"]["tokens_scored"],
        summary["eval"]["window"],
        summary["speed"]["test"].as_str().unwrap_or(""),
        summary["speed"]["threads"],
        summary["criteria"]["max_ppl_increase_pct"],
        summary["criteria"]["min_speedup"],
        summary["criteria"]["min_compression_fraction"],
    ));
    s.push_str("| method | bits | group | size MB | bpw | vs 16-bit | quant s | peak MB | NLL | ppl | Δppl | KL | top-1 | tg tok/s | pp tok/s | speedup | pass |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (r, is_ref) in std::iter::once((base, true))
        .chain(std::iter::once((f16, true)))
        .chain(rows.iter().map(|r| (r, false)))
    {
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.2} | {:.2}× | {} | {} | {:.4} | {:.3} | {:+.2}% | {:.2e} | {:.1}% | {:.1} | {:.1} | {:.2}× | {} |\n",
            r.name,
            if r.name == "reference" { "–".to_string() } else { r.bits.to_string() },
            if r.name == "reference" || r.bits >= 16 {
                "–".to_string()
            } else if r.group > 0 {
                r.group.to_string()
            } else {
                "ch".into()
            },
            r.size_mb,
            r.bits_per_weight,
            r.compression_vs_16bit,
            opt(r.quant_seconds, 1),
            opt(r.quant_peak_rss_mb, 0),
            r.mean_nll,
            r.ppl,
            r.ppl_increase_pct,
            r.kl,
            r.top1_agreement * 100.0,
            r.decode_tokens_per_second,
            r.prefill_tokens_per_second,
            r.speedup_vs_16bit,
            if is_ref { "ref" } else if r.pass { "**pass**" } else { "fail" }
        ));
    }
    if let Some(v) = summary["vs_rtn"].as_array().filter(|v| !v.is_empty()) {
        s.push_str("\n## Against round-to-nearest (same bits and group)\n\n");
        for c in v {
            s.push_str(&format!(
                "* **{}**: NLL {:.4} vs {:.4} for {} ({:+.4} nats/token{})\n",
                c["name"].as_str().unwrap_or(""),
                c["mean_nll"].as_f64().unwrap_or(f64::NAN),
                c["rtn_mean_nll"].as_f64().unwrap_or(f64::NAN),
                c["rtn"].as_str().unwrap_or(""),
                c["delta_nll"].as_f64().unwrap_or(f64::NAN),
                c["increase_removed_pct"]
                    .as_f64()
                    .map(|p| if p >= 0.0 {
                        format!("; its NLL increase over the reference is {p:.0}% smaller than RTN's")
                    } else {
                        format!("; its NLL increase over the reference is {:.0}% larger than RTN's", -p)
                    })
                    .unwrap_or_default()
            ));
        }
    }
    let failing: Vec<&Row> = rows.iter().filter(|r| !r.pass).collect();
    if !failing.is_empty() {
        s.push_str("\n## Why candidates failed\n\n");
        for r in failing {
            s.push_str(&format!("* **{}**: {}\n", r.name, r.failed.join("; ")));
        }
    }
    if let Some(best) = rows.iter().filter(|r| r.pass).min_by(|a, b| a.file_bytes.cmp(&b.file_bytes)) {
        s.push_str(&format!(
            "\nSmallest passing model: **{}** ({:.3} MB, perplexity {:+.2}%).\n",
            best.name, best.size_mb, best.ppl_increase_pct
        ));
    }
    s.push_str("\n![perplexity vs size](ppl_vs_size.svg)\n\n![per-layer reconstruction error](layer_error.svg)\n\n");
    s.push_str("Layer errors: `weight` = relative weight error ‖Ŵ − W‖²/‖W‖² (RTN, HQQ, INT8, FP8); `output` = relative output error on the calibration activations ‖(Ŵ − W)X‖²/‖WX‖² (GPTQ, AWQ). PNG copies: `ppl_vs_size.png`, `layer_error.png`.\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_ladder_order() {
        let c = candidates(&["gptq".into()], &[4], 128, 64).unwrap().remove(0);
        let mut names = vec![c.name.clone()];
        let mut cur = c;
        while let Some(n) = fallback(&cur, 6) {
            names.push(n.name.clone());
            cur = n;
        }
        assert_eq!(
            names,
            [
                "gptq-w4-g128",
                "gptq-w4-g128+more-calib",
                "gptq-w4-g128+more-calib+smaller-group",
                "gptq-w4-g128+more-calib+smaller-group+sandwich",
                "gptq-w4-g128+more-calib+smaller-group+sandwich+int8",
            ]
        );
        let more = fallback(&candidates(&["gptq".into()], &[4], 128, 64).unwrap()[0], 6).unwrap();
        assert!(more.args.windows(2).any(|w| w == ["--calib-samples", "128"]), "{:?}", more.args);
        // gptq-ao: GPTQ with act-order, calibrated, on the same ladder
        let ao = candidates(&["gptq-ao".into()], &[4], 128, 64).unwrap().remove(0);
        assert_eq!(ao.name, "gptq-ao-w4-g128");
        assert!(ao.args.contains(&"--act-order".to_string()) && ao.args.windows(2).any(|w| w == ["--method", "gptq"]));
        assert!(fallback(&ao, 6).is_some_and(|n| n.name.ends_with("+more-calib")));
        let sandwich = fallback(&fallback(&candidates(&["rtn".into()], &[4], 32, 0).unwrap()[0], 6).unwrap(), 6);
        assert!(sandwich.is_some());
        let s = fallback(&candidates(&["rtn".into()], &[4], 32, 0).unwrap()[0], 6).unwrap();
        assert!(
            s.args
                .ends_with(&["--skip".into(), "blk.0.*".into(), "--skip".into(), "blk.5.*".into()]),
            "{:?}",
            s.args
        );
        // 8-bit candidates have no further rung.
        assert!(fallback(&candidates(&["int8".into()], &[8], 0, 0).unwrap()[0], 6).is_none());
        assert!(candidates(&["nope".into()], &[4], 32, 0).is_err());
        assert!(candidates(&["rtn".into()], &[3], 32, 0).is_err());
        let mixed = candidates(
            &["int8:mlp-only".into(), "int8:attn-only".into(), "int8:sandwich5".into()],
            &[4],
            32,
            0,
        )
        .unwrap();
        let names: Vec<&str> = mixed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["int8-ch-mlp-only", "int8-ch-attn-only", "int8-ch-sandwich5"]);
        assert!(mixed[2].args.ends_with(&["--sandwich".into(), "5".into()]));
        assert!(candidates(&["int8:half".into()], &[4], 32, 0).is_err());
    }

    #[test]
    fn eight_bit_family_candidates_are_calibrated() {
        let c = candidates(
            &["int8-auto".into(), "smoothquant".into(), "llm-int8:mlp-only".into()],
            &[4],
            32,
            16,
        )
        .unwrap();
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["int8-auto-ch", "smoothquant-w8a8", "llm-int8-mlp-only"]);
        for (c, m) in c.iter().zip(["int8", "smoothquant", "llm-int8"]) {
            assert_eq!(&c.args[..2], &["--method".to_string(), m.to_string()]);
            assert!(c.args.windows(2).any(|w| w == ["--calib-samples", "16"]), "{:?}", c.args);
        }
    }
}
