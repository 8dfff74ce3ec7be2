//! The `edgeq` command line.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edgeq_host::{
    eval, import, inspect,
    model_file::{write_atomic, ModelFile},
    progress, quantize, text,
};
use edgeq_runtime::{arena_bytes, Sampler, SamplerConfig, Session};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "edgeq", version, about = "Quantize LLM checkpoints and run them from a GPU box down to a microcontroller.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Import a checkpoint into an EQF file, tensors kept as stored (f32/f16/bf16, or GGUF's quantized blocks).
    Import(ImportArgs),
    /// Quantize the linear layers of an EQF model.
    Quantize(QuantizeArgs),
    /// Generate text: the generated text alone goes to stdout, statistics to stderr.
    Run(RunArgs),
    /// Perplexity (mean negative log-likelihood per token) of a text file.
    Eval(EvalArgs),
    /// Show config, tensors, schemes, sizes and bits per weight of an EQF model.
    Inspect(InspectArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// Source: a llama2.c checkpoint (.bin), a GGUF file (.gguf), or a Hugging Face model directory.
    src: PathBuf,
    /// Tokenizer for llama2.c checkpoints (llama2.c tokenizer.bin layout); default: tokenizer.bin beside SRC.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output EQF file (written atomically).
    #[arg(short, long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct QuantizeArgs {
    /// Input EQF model.
    input: PathBuf,
    /// Quantization method. rtn: round-to-nearest with the GPTQ reference quantizer's conventions.
    #[arg(long, default_value = "rtn")]
    method: String,
    /// Bits per weight of the linear layers: 4 or 8 (16/32 store f16/f32).
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Group size along the input dimension (a multiple of 32); -1 or 0 = one scale per output channel.
    /// With --fp8, the tile edge of block scaling (e.g. 128), or -1 for per-channel.
    #[arg(long, default_value_t = 32, allow_hyphen_values = true)]
    group: i64,
    /// Symmetric codes (scale only). Default.
    #[arg(long, conflicts_with = "asym")]
    sym: bool,
    /// Asymmetric codes (scale and zero point).
    #[arg(long)]
    asym: bool,
    /// FP8 weights instead of integers: e4m3 or e5m2 (per channel, or block tiles with --group).
    #[arg(long)]
    fp8: Option<String>,
    /// Scheme of the token embedding and the classifier: keep, f32, f16, bf16, q8 (default), q8a, q4, q4a.
    /// They are the most sensitive tensors, so they stay at 8 bits unless asked.
    #[arg(long, default_value = "q8")]
    embed: String,
    /// Leave tensors matching this glob as they are, by canonical name (e.g. 'blk.*.ffn_down', 'blk.0.*'). Repeatable.
    #[arg(long)]
    skip: Vec<String>,
    /// Print the per-tensor report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Output EQF file (written atomically).
    #[arg(short, long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// EQF model.
    model: PathBuf,
    /// Prompt text; generation starts from BOS alone when omitted.
    #[arg(short, long, default_value = "")]
    prompt: String,
    /// Number of tokens to generate.
    #[arg(short = 'n', long = "tokens", default_value_t = 128)]
    tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(short, long, default_value_t = 0.8)]
    temp: f32,
    /// Nucleus (top-p) sampling threshold in (0, 1]; 1 disables it.
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Random seed (runs with the same seed and settings repeat exactly).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Context length of the session (default: the model's, at most 2048).
    #[arg(long)]
    ctx: Option<usize>,
    /// Stop at the end-of-sequence token (and at BOS, llama2.c's sequence delimiter).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    stop_at_eos: bool,
    /// Print the generated token ids on stderr.
    #[arg(long)]
    show_tokens: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// EQF model.
    model: PathBuf,
    /// UTF-8 text file to score.
    #[arg(long)]
    text: PathBuf,
    /// Use only the first N characters of the text.
    #[arg(long)]
    chars: Option<usize>,
    /// Tokens fed per window (context of each prediction is at most this).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Tokens between window starts; default = window (non-overlapping). Smaller strides give sliding windows.
    #[arg(long)]
    stride: Option<usize>,
    /// Score at most this many tokens (from the start of the text).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Prepend BOS to the text: auto (as the tokenizer says), yes, no.
    #[arg(long, default_value = "auto")]
    bos: String,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object (mean_nll, ppl, tokens, ...) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// EQF model.
    model: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Import(a) => cmd_import(a),
        Cmd::Quantize(a) => cmd_quantize(a),
        Cmd::Run(a) => cmd_run(a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Inspect(a) => cmd_inspect(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn cmd_import(a: ImportArgs) -> Result<()> {
    let t0 = Instant::now();
    let m = import::import(&a.src, a.tokenizer.as_deref())?;
    let n = m.tensors.len();
    let bytes = m.to_eqf()?;
    write_atomic(&a.out, &bytes)?;
    eprintln!(
        "imported {} -> {} ({n} tensors, {:.2} MB) in {:.2}s",
        a.src.display(),
        a.out.display(),
        bytes.len() as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cmd_quantize(a: QuantizeArgs) -> Result<()> {
    anyhow::ensure!(
        a.method == "rtn",
        "--method {}: only rtn is available in this build (gptq, awq, hqq are coming)",
        a.method
    );
    let t0 = Instant::now();
    let f = ModelFile::open(&a.input)?;
    let model = f.model()?;
    let linear = quantize::spec_from_args(a.bits, a.group, !a.asym, a.fp8.as_deref())?;
    let embed = quantize::spec_from_name(&a.embed, a.group)?;
    let policy = quantize::Policy::new(linear, embed, &a.skip)?;
    let pb = progress(model.eqf.tensors().len() as u64, "quantize");
    let (bytes, reports) = quantize::quantize_rtn(&model.eqf, &policy, &pb)?;
    pb.finish_and_clear();
    write_atomic(&a.out, &bytes)?;
    if a.json {
        let v: Vec<_> = reports.iter().map(|r| serde_json::json!({"tensor": r.name, "from": r.from, "to": r.to, "rel_err": r.rel_err})).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for r in &reports {
            eprintln!(
                "{:<24} {:>10} -> {:<12} rel.err {:.3e}",
                r.name, r.from, r.to, r.rel_err
            );
        }
    }
    eprintln!(
        "quantized {} tensors ({}) -> {} ({:.3} MB, was {:.3} MB) in {:.2}s",
        reports.len(),
        quantize::spec_name(&linear),
        a.out.display(),
        bytes.len() as f64 / 1e6,
        f.bytes().len() as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let f = ModelFile::open(&a.model)?;
    let model = f.model()?;
    let tok = text::tokenizer(&model)?;
    // BOS as the tokenizer says (llama2.c/Llama: yes; SmolLM2/Qwen2: no), and always for an empty prompt.
    let prompt = text::encode(
        &tok,
        &a.prompt,
        tok.add_bos_default() || a.prompt.is_empty(),
    )?;
    anyhow::ensure!(
        !prompt.is_empty(),
        "empty prompt and the vocabulary has no BOS token: pass --prompt"
    );
    let max_seq = a
        .ctx
        .unwrap_or(model.cfg.max_seq_len.min(2048) as usize)
        .min(model.cfg.max_seq_len as usize);
    anyhow::ensure!(
        prompt.len() < max_seq,
        "prompt of {} tokens does not fit the context of {max_seq}",
        prompt.len()
    );
    let batch = prompt.len().min(max_seq).min(512);
    let mut arena = vec![0u64; arena_bytes(&model.cfg, max_seq, batch).div_ceil(8)];
    let mut s = Session::new(&model, bytemuck::cast_slice_mut(&mut arena), max_seq, batch)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: a.temp,
        top_p: a.top_p,
        seed: a.seed,
    });
    let mut out = std::io::stdout().lock();
    // Echo the prompt text (without BOS) so the output reads as a continuation.
    out.write_all(&text::decode(&tok, &prompt)[..])?;
    let t0 = Instant::now();
    let mut logits = Vec::new();
    for chunk in prompt.chunks(batch) {
        logits = s
            .forward(chunk, None)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_vec();
    }
    let t_prefill = t0.elapsed().as_secs_f64();
    let mut prev = *prompt.last().unwrap_or(&model.cfg.bos_id);
    let mut generated = Vec::new();
    let t1 = Instant::now();
    for _ in 0..a.tokens {
        let next = sampler.sample(&mut logits);
        if a.stop_at_eos && (next == model.cfg.eos_id || next == model.cfg.bos_id) {
            break;
        }
        if let Ok(p) = tok.decode_piece(prev, next) {
            out.write_all(p)?;
            out.flush()?;
        }
        generated.push(next);
        prev = next;
        if s.pos() >= s.max_seq() {
            eprintln!("\n[context of {} tokens full]", s.max_seq());
            break;
        }
        logits.copy_from_slice(s.step(next).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    writeln!(out)?;
    let dt = t1.elapsed().as_secs_f64();
    if a.show_tokens {
        eprintln!(
            "tokens: {:?}",
            prompt.iter().chain(&generated).collect::<Vec<_>>()
        );
    }
    eprintln!(
        "prompt: {} tokens in {:.3}s ({:.1} tok/s); generated: {} tokens in {:.3}s ({:.1} tok/s); arena {:.2} MB",
        prompt.len(),
        t_prefill,
        prompt.len() as f64 / t_prefill.max(1e-9),
        generated.len(),
        dt,
        generated.len() as f64 / dt.max(1e-9),
        arena.len() as f64 * 8.0 / 1e6
    );
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .ok();
    }
    let f = ModelFile::open(&a.model)?;
    let model = f.model()?;
    let tok = text::tokenizer(&model)?;
    let raw = std::fs::read_to_string(&a.text)
        .with_context(|| format!("cannot read text file {}", a.text.display()))?;
    let body: String = match a.chars {
        Some(n) => raw.chars().take(n).collect(),
        None => raw,
    };
    let bos = match a.bos.as_str() {
        "auto" => tok.add_bos_default(),
        "yes" => true,
        "no" => false,
        o => anyhow::bail!("--bos {o}: expected auto, yes or no"),
    };
    let tokens = text::encode(&tok, &body, bos)?;
    let pb = progress(0, "eval");
    let r = eval::perplexity(
        &model,
        &tokens,
        a.window,
        a.stride.unwrap_or(a.window),
        a.max_tokens,
        &pb,
    )?;
    pb.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: mean NLL {:.4} nats/token, perplexity {:.4} over {} tokens ({} windows of {}, stride {}) in {:.2}s ({:.0} tok/s)",
            a.model.display(),
            r.mean_nll,
            r.ppl,
            r.tokens,
            r.windows,
            r.window,
            r.stride,
            r.seconds,
            r.tokens_per_second
        );
    }
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let f = ModelFile::open(&a.model)?;
    let model = f.model()?;
    let r = inspect::report(&model, f.bytes().len() as u64);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        inspect::print_human(&r);
    }
    Ok(())
}
