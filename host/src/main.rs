//! The `edgeq` command line.
#![forbid(unsafe_code)]
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edgeq_host::{
    eval, import, inspect, methods,
    model_file::{write_atomic, ModelFile},
    progress, quantize, text,
};
use edgeq_runtime::{arena_bytes_with, Sampler, SamplerConfig, Session, SessionOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "edgeq", version, about = "Quantize LLM checkpoints and run them from a GPU box down to a microcontroller.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Kernel implementation for every matrix product: scalar (the reference, bit-identical on
    /// every machine, e.g. to compare with a firmware run), x86_64-avx2-fma, x86_64-avx2-fma-f16c,
    /// aarch64-neon, aarch64-neon-dotprod, aarch64-neon-i8mm, riscv64-rvv. Default: the best this CPU
    /// supports.
    #[arg(long, global = true, env = "EDGEQ_KERNELS")]
    kernels: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Import a checkpoint into an EQF file: a llama2.c .bin, a GGUF file (Q8_0/Q4_0/Q4_1 kept exactly, K-quants to the nearest scheme), or a Hugging Face directory (float, GPTQ or FP8 weights kept exactly where EQF has the scheme).
    Import(ImportArgs),
    /// Quantize the linear layers of an EQF model.
    Quantize(QuantizeArgs),
    /// QuaRot: write the rotated float model (RMSNorm weights fused, randomized Hadamard rotation of the
    /// residual stream, online Hadamard on ffn_down's input). It computes the same logits as the input up to
    /// float rounding; check with `edgeq eval`, then quantize it (or use `quantize --rotate`).
    Rotate(RotateArgs),
    /// Generate text: the generated text alone goes to stdout, statistics to stderr.
    Run(RunArgs),
    /// Perplexity (mean negative log-likelihood per token) of a text file.
    Eval(EvalArgs),
    /// Show config, tensors, schemes, sizes and bits per weight of an EQF model.
    Inspect(InspectArgs),
    /// Calibration data tools.
    #[command(subcommand)]
    Calib(CalibCmd),
    /// Quantize ONE linear layer given as .npy files and write the dequantized weight (research interface).
    Layer(LayerArgs),
    /// Measure memory bandwidth, kernel throughput (every implementation side by side) and model decode speed.
    ///
    /// Kernel table: "GB/s" is weight bytes (codes, scales, mins) per second of the fastest product;
    /// "of BW" compares it with the STREAM-style read bandwidth measured at the start of the run;
    /// "of read" with a plain sum over the same number of bytes of another cold copy of the weights, on
    /// the same threads, timed alternately with the kernel (robust to bandwidth that drifts during the
    /// run, as on a shared VM).
    Bench(BenchArgs),
    /// Write an EQF model in another tool's format: GGUF for llama.cpp (Q4_0/Q4_1/Q8_0 carried bit-exactly) or a Hugging Face safetensors directory (GPTQ packing, compressed-tensors FP8, or float).
    Export(ExportArgs),
    /// Quantize one model with several methods and compare them on the same text: size, compression,
    /// quantization time and memory, perplexity, KL and top-1 vs the original, tokens/s and speedup vs
    /// 16-bit, generation sanity, pass/fail against acceptance criteria (with an optional fallback ladder).
    /// Writes OUT/quantization_summary.json, OUT/summary.md, plots, and OUT/<candidate>/validation_report.json.
    Compare(CompareArgs),
    /// Write a random-weight Hugging Face checkpoint with a real model's shapes (config.json, sharded
    /// safetensors and index, a small byte-level tokenizer.json): test import, quantization and memory at
    /// scale without downloads. Streams to disk (a few MB of memory whatever the size); seeded, so the same
    /// bytes on every machine.
    Synth(SynthArgs),
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Model shape, from its published config.json: llama-3.2-1b (1.24 B parameters, 2.5 GB in bf16),
    /// llama-3-8b (8.03 B, 16 GB), qwen2.5-32b (32.8 B, 65.5 GB), or stories260k (for tests).
    #[arg(long)]
    shape: String,
    /// Stored dtype of every tensor: bf16 (what these models ship in), f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Output directory (must not exist, or be empty); it appears only when complete.
    #[arg(long, short)]
    out: PathBuf,
    /// Keep only the first N transformer layers (embeddings and head as the real model): a smaller file with
    /// the real per-layer shapes.
    #[arg(long)]
    layers: Option<usize>,
    /// Largest safetensors shard, as save_pretrained's max_shard_size (5GB, 500MB, 64KB or bytes); one tensor
    /// larger than this gets a shard of its own.
    #[arg(long, default_value = "5GB")]
    shard_size: String,
    /// Seed of the weights (each tensor draws from its own stream derived from it).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args)]
struct RotateArgs {
    /// Input EQF model (any scheme; weights are dequantized, the output is f32).
    model: PathBuf,
    /// Seed of the random signs of the rotation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Leave ffn_down's input unrotated (no online Hadamard at run time).
    #[arg(long)]
    no_online_hadamard: bool,
    /// Output EQF file (written atomically).
    #[arg(short, long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// EQF model.
    model: PathBuf,
    /// Output: a .gguf file, or a directory for --format safetensors (written atomically: a
    /// temporary file or directory renamed into place).
    #[arg(short, long)]
    out: PathBuf,
    /// Output format: gguf (one file for llama.cpp) or safetensors (a Hugging Face model directory:
    /// config.json, model.safetensors, tokenizer.json, ... for transformers / vLLM), see --layout.
    #[arg(long, default_value = "gguf", value_parser = ["gguf", "safetensors"])]
    format: String,
    /// safetensors: how linear layers are stored. auto = gptq for integer models, fp8 for FP8 models,
    /// float otherwise; gptq = AutoGPTQ packing (qweight/qzeros/scales/g_idx + quantize_config.json),
    /// exact for Q4/Q8 sym; fp8 = compressed-tensors float8_e4m3 with f32 weight_scale (llm-compressor's
    /// layout), exact for FP8 E4M3; float = plain weights (quantized ones dequantized to f16). Layers in
    /// another scheme are requantized to the layout's grid, with the added error printed.
    #[arg(long, default_value = "auto", value_parser = ["auto", "gptq", "fp8", "float"])]
    layout: String,
    /// safetensors: largest shard in MB; bigger models are split into model-0000i-of-0000n.safetensors
    /// files with model.safetensors.index.json, as Hugging Face does.
    #[arg(long, default_value_t = 5000)]
    max_shard_mb: u64,
    /// gguf: GGUF type for tensors whose EQF scheme has no exact GGUF equivalent (anything but Q4 sym/asym and Q8 sym in
    /// groups of 32, and floats): auto = Q8_0 for 8-bit and FP8, Q4_0 / Q4_1 for 4-bit sym / asym. The added error
    /// of each such tensor is printed.
    #[arg(long, default_value = "auto", value_parser = ["auto", "q8_0", "q4_0", "q4_1", "f16", "bf16", "f32"])]
    requant: String,
    /// Print the per-tensor report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// The model to quantize, the quality reference: an EQF file, or a Hugging Face directory / GGUF file /
    /// llama.2c checkpoint, imported first into OUT/reference.eqf (reused while newer than the source).
    model: PathBuf,
    /// Evaluation text (UTF-8); its first --eval-chars characters are scored.
    #[arg(long)]
    text: PathBuf,
    /// Characters of --text scored (from the start).
    #[arg(long, default_value_t = 100_000)]
    eval_chars: usize,
    /// Calibration text or JSONL for GPTQ / AWQ; default: --text after the --eval-chars scored
    /// characters (disjoint from the evaluation slice).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration samples for GPTQ / AWQ / AdaRound / int8-auto / smoothquant / llm-int8.
    #[arg(long, default_value_t = 128)]
    calib_samples: usize,
    /// Methods, comma-separated: rtn, gptq, gptq-ao (GPTQ with act-order), awq, hqq, adaround (at each of
    /// --bits), quarot-rtn, quarot-gptq (QuaRot
    /// rotation, then RTN / GPTQ weights, int8 activations per token: W4A8; -a4 suffix: int4 activations, W4A4),
    /// int8 (per channel, RTN), int8-auto
    /// (per channel, symmetry decided per layer from calibration), smoothquant (W8A8), llm-int8 (W8A8 with f32
    /// outlier columns), fp8 (E4M3 per channel, activations per token), fp8-block (E4M3 128x128 blocks,
    /// activations per 128-group); each may take a mixed-precision policy after a colon:
    /// int8:mlp-only, int8:attn-only, gptq:sandwich5 (first and last 5 blocks kept). A 16-bit copy is always
    /// made as the speed and size baseline.
    #[arg(long, value_delimiter = ',', default_value = "rtn,gptq,awq,hqq,int8,fp8")]
    methods: Vec<String>,
    /// Weight bits of rtn / gptq / awq / hqq (comma-separated: 4,8).
    #[arg(long, value_delimiter = ',', default_value = "4")]
    bits: Vec<u32>,
    /// Group size of rtn / gptq / awq / hqq (a multiple of 32; -1 = per channel).
    #[arg(long, default_value_t = 32, allow_hyphen_values = true)]
    group: i64,
    /// Output directory (one subdirectory per candidate, reused by later runs with the same arguments).
    #[arg(short, long, default_value = "compare-out")]
    out: PathBuf,
    /// Tokens per evaluation window (non-overlapping windows; capped at the model's context).
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Score at most this many tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Pass only if perplexity rises by at most this many percent over the reference.
    #[arg(long, default_value_t = 2.0)]
    max_ppl_increase: f64,
    /// Pass only if decoding is at least this many times faster than the 16-bit model.
    #[arg(long, default_value_t = 1.5)]
    min_speedup: f64,
    /// Pass only if the file is at least this fraction of the ideal 16/bits times smaller than 16-bit
    /// (0.75: a 4-bit model at least 3x, an 8-bit one 1.5x).
    #[arg(long, default_value_t = 0.75)]
    min_compression: f64,
    /// When a candidate fails on quality, try in turn: twice the calibration data, half the group size,
    /// the first and last blocks unquantized, INT8; every attempt is recorded, the first passing kept.
    #[arg(long)]
    fallback: bool,
    /// Threads for the speed measurement (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Tokens of the decode (tg) and prefill (pp) speed tests.
    #[arg(long, default_value_t = 64)]
    speed_tokens: usize,
    /// Tokens generated per fixed prompt for the sanity check.
    #[arg(long, default_value_t = 32)]
    sanity_tokens: usize,
    /// Re-quantize candidates even when OUT holds a result made with the same arguments.
    #[arg(long)]
    force: bool,
    /// Print the summary JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Matrix shapes ROWSxCOLS (out x in) for the GEMV table.
    #[arg(long, value_delimiter = ',', default_value = "576x1536,4096x4096,4096x11008")]
    shapes: Vec<String>,
    /// Weight schemes (as `edgeq inspect` names them): q4-g32, q4a-g32, q8-g32, q8a-ch, f16, f32, ...
    #[arg(long, value_delimiter = ',', default_value = "q4-g32,q4a-g32,q8-g32,f16,f32")]
    schemes: Vec<String>,
    /// Thread counts to measure (each kernel and the bandwidth run with each).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Tokens per product in the kernel table: 1 is the GEMV of a decode step, more a prefill GEMM
    /// (e.g. 1,32); each count gets its rows, with multiply-adds per second in the GMAC/s column.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u32).range(1..=4096))]
    tokens: Vec<u32>,
    /// Minimum time per measurement, seconds (the fastest iteration is reported, and the median).
    #[arg(long, default_value_t = 0.3)]
    min_time: f64,
    /// Weights are rotated over copies totalling at least this many MB, so they come from memory, not
    /// the cache (set above the last-level cache; 0 measures cache-resident speed).
    #[arg(long, default_value_t = 256)]
    cold_mb: usize,
    /// Size of each array of the bandwidth run, MB (STREAM's rule: well above the last-level cache; small
    /// values only check that the run works, e.g. under an emulator, where the numbers mean nothing).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    bw_mb: u64,
    /// Also (or only, with --no-kernels) benchmark a model: llama-bench style tests on an EQF file.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Model tests: tgN (decode N tokens one at a time) and ppN (an N-token prompt in one batch).
    #[arg(long, value_delimiter = ',', default_value = "tg64,pp128")]
    tests: Vec<String>,
    /// Activation precisions for the model tests.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "q8,f32")]
    acts: Vec<Acts>,
    /// KV cache precisions for the model tests (f32, f16, q8; see `edgeq run --help`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    kv: Vec<Kv>,
    /// Repetitions of each model test (the fastest and the median are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Skip the kernel table.
    #[arg(long)]
    no_kernels: bool,
    /// Print JSON (one object with bandwidth, kernels and model rows) instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CalibCmd {
    /// Clean, deduplicate, filter and sample text or JSONL into a calibration set (JSONL with a "text" field).
    Prepare(PrepareArgs),
    /// Write the inputs a linear layer sees on a text (f32 model, exact activations) as a float32 .npy
    /// [tokens, in]: the --acts / --eval-acts of `edgeq layer`, from real data.
    Acts(ActsArgs),
}

#[derive(clap::Args)]
struct ActsArgs {
    /// EQF model.
    #[arg(long)]
    model: PathBuf,
    /// Canonical name of the linear layer, e.g. blk.3.ffn_down, blk.0.attn_q (q/k/v and gate/up share inputs).
    #[arg(long)]
    layer: String,
    /// Text (.txt or a calibration .jsonl), cut into windows of --seqlen tokens.
    #[arg(long)]
    text: PathBuf,
    /// Windows taken (random, seeded).
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    seqlen: usize,
    /// Skip this many characters of a .txt first (keep layer data disjoint from other slices).
    #[arg(long, default_value_t = 0)]
    skip_chars: usize,
    /// Seed of the window sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output .npy (written atomically).
    #[arg(short, long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct PrepareArgs {
    /// Input files: .jsonl/.json (one object per line) or plain text (paragraphs are instances).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The EQF model whose tokenizer counts tokens (and whose chat template renders "messages").
    #[arg(long)]
    model: PathBuf,
    /// JSON field holding the text.
    #[arg(long, default_value = "text")]
    field: String,
    /// Stratify the sample by this JSON field (proportional allocation per value).
    #[arg(long)]
    stratify_by: Option<String>,
    /// Number of instances to keep (default: all that pass the filters).
    #[arg(long)]
    samples: Option<usize>,
    /// Truncate each instance to this many tokens (up to the model's context; long contexts such as 75k-token trajectories are fine).
    #[arg(long, default_value_t = 2048)]
    max_tokens: usize,
    /// Drop instances shorter than this many tokens.
    #[arg(long, default_value_t = 16)]
    min_tokens: usize,
    /// Seed of the shuffle and the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A Jinja chat template file for "messages" records (default: the model's, when it has one).
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Skip malformed JSONL lines with a warning instead of stopping.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Print the statistics as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Output JSONL (written atomically).
    #[arg(short, long)]
    out: PathBuf,
}

/// Method settings shared by `quantize` and `layer`.
#[derive(clap::Args, Clone)]
struct MethodFlags {
    /// GPTQ: quantize columns in order of decreasing Hessian diagonal (desc_act). With groups, a group is
    /// a run of that order (scattered columns, AutoGPTQ's g_idx): the layer is stored with its columns
    /// reordered and an input permutation the runtime applies (EQF 1.3), unless --static-groups.
    #[arg(long)]
    act_order: bool,
    /// GPTQ: fit each group's scale on the original weights before any update (groups stay contiguous column
    /// ranges, no permutation is stored).
    #[arg(long)]
    static_groups: bool,
    /// GPTQ: dampening, as a fraction of the mean Hessian diagonal added to the diagonal.
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// GPTQ: columns per lazy-update block.
    #[arg(long, default_value_t = 128)]
    blocksize: usize,
    /// HQQ: axis along which groups run (1 = along a row, the default; 0 = along a column).
    #[arg(long, default_value_t = 1)]
    hqq_axis: usize,
    /// AWQ: AutoAWQ's duo scaling (s = x_mean^r / w_mean^(1-r)) instead of llm-awq's x_mean^r.
    #[arg(long)]
    duo_scaling: bool,
    /// AWQ: skip the weight-clipping search.
    #[arg(long)]
    no_clip: bool,
    /// HQQ: maximum proximal iterations (stops early when the error stops improving).
    #[arg(long, default_value_t = 20)]
    hqq_iters: usize,
    /// AdaRound: Adam iterations per layer (AIMET's default 10000; BRECQ uses 20000). Each costs rows x cols^2.
    #[arg(long, default_value_t = 10_000)]
    ada_iters: usize,
    /// AdaRound: weight lambda of the rounding regulariser sum(1 - |2h-1|^beta).
    #[arg(long, default_value_t = 0.01)]
    ada_lambda: f32,
    /// AdaRound: Adam learning rate on the rounding variables V.
    #[arg(long, default_value_t = 1e-3)]
    ada_lr: f32,
    /// AdaRound: fraction of the iterations before the regulariser starts (beta then anneals 20 -> 2).
    #[arg(long, default_value_t = 0.2)]
    ada_warmup: f32,
}

#[derive(clap::Args)]
struct LayerArgs {
    /// Weight of the layer, float .npy of shape [out, in].
    #[arg(long)]
    weight: PathBuf,
    /// Calibration activations feeding the layer, float .npy of shape [n, in] (GPTQ, AWQ).
    #[arg(long)]
    acts: Option<PathBuf>,
    /// Held-out activations: prints ||XWᵀ − XŴᵀ||² / ||XWᵀ||² on them.
    #[arg(long)]
    eval_acts: Option<PathBuf>,
    /// rtn, gptq, awq, hqq or adaround (learned rounding on RTN's grid; needs --acts); the 8-bit family: int8 (per channel, --int8), fp8 (--fp8-format, --fp8-scale;
    /// activations e4m3 per token, or per 128-group with block128), llm-int8 (--threshold) and smoothquant
    /// (--alpha; needs --acts). W8A8 methods compute the output with quantized activations.
    #[arg(long, default_value = "rtn")]
    method: String,
    /// With --method int8: sym, asym, or auto (from the symmetry score of --acts).
    #[arg(long, value_enum, default_value_t = Int8Arg::Sym)]
    int8: Int8Arg,
    /// With --method int8 --int8 auto: symmetric when exp(-|mean|/(std+1e-8)) of --acts is above this.
    #[arg(long, default_value_t = 0.6)]
    sym_threshold: f64,
    /// With --method int8, symmetric: 127 (absmax/127) or 127.5 (compressed-tensors, codes clamped to [-128, 127]).
    #[arg(long, default_value = "127")]
    int8_scale: String,
    /// With --method fp8: e4m3 or e5m2.
    #[arg(long, default_value = "e4m3")]
    fp8_format: String,
    /// With --method fp8: tensor, channel or block128 (128×128 tiles).
    #[arg(long, default_value = "channel")]
    fp8_scale: String,
    /// With --method smoothquant: migration strength α.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// With --method llm-int8: outlier threshold on |x|.
    #[arg(long, default_value_t = 6.0)]
    threshold: f32,
    /// Write the layer's output on the evaluation activations (--eval-acts, else --acts) here, float32 .npy
    /// [n, out], computed as the method runs it (W8A8 methods with quantized activations).
    #[arg(long)]
    out_y: Option<PathBuf>,
    /// Bits per weight: 4 or 8.
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Group size along the input dimension; -1 = one scale per output channel.
    #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
    group: i64,
    /// Symmetric grid (default: asymmetric with a zero point).
    #[arg(long)]
    sym: bool,
    #[command(flatten)]
    m: MethodFlags,
    /// Where to write the dequantized weight (float32 .npy, [out, in]).
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// Source: a llama2.c checkpoint (.bin), a GGUF file (.gguf), or a Hugging Face model directory (config.json,
    /// safetensors: float, GPTQ qweight/qzeros/scales/g_idx, or FP8 with weight_scale).
    src: PathBuf,
    /// Tokenizer for llama2.c checkpoints (llama2.c tokenizer.bin layout); default: tokenizer.bin beside SRC.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output EQF file (written atomically).
    #[arg(short, long)]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Int8Arg {
    Sym,
    Asym,
    Auto,
}

impl From<Int8Arg> for edgeq_host::calib::w8::Int8Mode {
    fn from(a: Int8Arg) -> Self {
        match a {
            Int8Arg::Sym => Self::Sym,
            Int8Arg::Asym => Self::Asym,
            Int8Arg::Auto => Self::Auto,
        }
    }
}

/// `--int8-scale`: 127 (absmax/127) or 127.5 (compressed-tensors).
fn int8_convention(s: &str) -> Result<edgeq_host::algo::int8::Convention> {
    Ok(match s {
        "127" => edgeq_host::algo::int8::Convention::Max127,
        "127.5" => edgeq_host::algo::int8::Convention::Half255,
        o => anyhow::bail!("--int8-scale {o}: expected 127 or 127.5"),
    })
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Fp8ActsArg {
    Auto,
    Token,
    Group128,
    None,
}

#[derive(clap::Args)]
struct QuantizeArgs {
    /// Input EQF model.
    input: PathBuf,
    /// Quantization method: rtn (round-to-nearest, no data), gptq, awq and adaround (need --calib), hqq (no data);
    /// the 8-bit family: int8 (per-channel INT8, --int8 sym|asym|auto; auto needs --calib), smoothquant
    /// (W8A8: smoothing folded into the norms, int8 weights per channel, int8 activations per token at run
    /// time; needs --calib), llm-int8 (int8 weights per channel, int8 activations per token with the
    /// outlier columns in f32; --calib finds outlier columns ahead of time, the runtime also detects them).
    #[arg(long, default_value = "rtn")]
    method: String,
    /// With --method int8: sym (scale absmax/127), asym (zero point, unsigned codes) or auto (per layer: symmetric
    /// when the input's symmetry score exp(-|mean|/(std+1e-8)) is above --sym-threshold).
    #[arg(long, value_enum, default_value_t = Int8Arg::Auto)]
    int8: Int8Arg,
    /// With --method int8 --int8 auto: symmetric when the symmetry score is above this.
    #[arg(long, default_value_t = 0.6)]
    sym_threshold: f64,
    /// With --method int8, symmetric layers: 127 (scale absmax/127, codes ±127) or 127.5 (compressed-tensors:
    /// absmax/127.5, codes clamped to [-128, 127]).
    #[arg(long, default_value = "127")]
    int8_scale: String,
    /// With --method smoothquant: migration strength α of s = max|X|^α / max|W|^(1-α).
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// With --method llm-int8: activation magnitude from which an input column is an outlier (kept in f32).
    #[arg(long, default_value_t = 6.0)]
    threshold: f32,
    /// With --fp8: activation quantization at run time. auto = per token for per-tensor/per-channel weights,
    /// per 128-group of a token for block weights (llm-compressor's FP8_DYNAMIC / FP8_BLOCK); token; group128;
    /// none (weight-only FP8, f32 activations).
    #[arg(long, value_enum, default_value_t = Fp8ActsArg::Auto)]
    fp8_acts: Fp8ActsArg,
    /// Calibration text (.txt: random windows; .jsonl from `edgeq calib prepare`: one sample per line).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration samples.
    #[arg(long, default_value_t = 128)]
    calib_samples: usize,
    /// Tokens per calibration sample (capped at the model's context).
    #[arg(long, default_value_t = 512)]
    calib_seqlen: usize,
    /// Skip this many characters of a .txt calibration file (keep calibration disjoint from an evaluation slice).
    #[arg(long, default_value_t = 0)]
    calib_skip_chars: usize,
    /// Seed of the calibration sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the calibrated methods run: auto (a CUDA GPU when this binary has the `cuda` feature and the
    /// driver finds one, else the CPU), cpu, or cuda[:N] (an error that says why when there is no usable GPU).
    /// On the GPU today: the Hessian statistics Σxxᵀ (GPTQ, AdaRound); the rest runs on the CPU (docs/GPU.md).
    #[arg(long, default_value = "auto")]
    device: edgeq_host::gpu::DeviceArg,
    #[command(flatten)]
    m: MethodFlags,
    /// Write the per-module report (scheme, error, time) as JSON here (default: OUT with .report.json).
    #[arg(long)]
    report: Option<PathBuf>,
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
    /// Leave tensors matching this glob as they are, by canonical name (e.g. 'blk.*.ffn_down', 'blk.0.*'), or this
    /// regular expression with a re: prefix, matched against the whole name (e.g. 're:blk\.(0|1)\.attn_[qk]'). Repeatable.
    #[arg(long)]
    skip: Vec<String>,
    /// Mixed precision preset: all (every linear layer), mlp-only (attention kept as stored), attn-only
    /// (the MLP kept as stored).
    #[arg(long, value_enum, default_value_t = PolicyPreset::All)]
    policy: PolicyPreset,
    /// Keep the first N and the last N blocks as stored ("sandwich": the most sensitive blocks at full precision).
    #[arg(long, default_value_t = 0)]
    sandwich: u32,
    /// Per-module scheme, GLOB=SCHEME by canonical name (or re:REGEX=SCHEME), first match wins, before --sandwich and --policy:
    /// e.g. 'blk.0.*=q8-ch', 'blk.*.ffn_down=q8-g32', 'blk.5.attn_*=keep'. SCHEME: q4-g32, q4a-g64, q8-ch, q8,
    /// fp8-e4m3-ch, f16, f32, keep. Overridden layers are quantized by RTN in their scheme (a calibrated
    /// method quantizes the others). Repeatable.
    #[arg(long = "override", value_name = "GLOB=SCHEME")]
    overrides: Vec<String>,
    /// Before quantizing, measure each block's sensitivity: quantize that block alone (RTN in the method's
    /// scheme), score NLL on --sensitivity-text, rank the blocks by the increase. Printed, and saved as
    /// OUT with .sensitivity.json.
    #[arg(long)]
    sensitivity: bool,
    /// Average bits per weight of the blocks' linear layers to meet: the sensitivity scan runs, then blocks
    /// are kept at --budget-high, most sensitive first, while the average stays within the budget (e.g. 5.0
    /// with q4-g32 at 4.5 and q8-ch at about 8.1 bits per weight keeps about one block in seven at 8 bits).
    #[arg(long)]
    budget_bits: Option<f64>,
    /// The scheme sensitive blocks get under --budget-bits (e.g. q8-ch, q8-g32, f16).
    #[arg(long, default_value = "q8-ch")]
    budget_high: String,
    /// Text the sensitivity scan scores (.txt); default: --calib when it is a .txt file.
    #[arg(long)]
    sensitivity_text: Option<PathBuf>,
    /// Tokens of that text the scan scores per block.
    #[arg(long, default_value_t = 2048)]
    sensitivity_tokens: usize,
    /// QuaRot: first rotate the model (RMSNorm weights fused into the linears, a randomized Hadamard rotation
    /// of the residual stream, an online Hadamard on each ffn_down input; the same function in float), then
    /// quantize the rotated weights with --method. Combine with --act-bits 8 (W4A8) or 4 (W4A4).
    #[arg(long)]
    rotate: bool,
    /// With --rotate: seed of the random signs of the rotation.
    #[arg(long, default_value_t = 0)]
    rotate_seed: u64,
    /// With --rotate: leave ffn_down's input unrotated (no online Hadamard at run time).
    #[arg(long)]
    no_online_hadamard: bool,
    /// Activations of the integer-weight linear layers of the blocks, quantized per token at run time:
    /// 16 = float (weight-only), 8 = int8 (absmax/127), 4 = int4 (clip*absmax/7). The classifier keeps float.
    #[arg(long, default_value = "16", value_parser = ["16", "8", "4"])]
    act_bits: String,
    /// With --act-bits 4: clip ratio of the per-token scale (QuaRot's a_clip_ratio; 1.0 = no clipping, its
    /// default; the paper's W4A4 results use 0.9).
    #[arg(long, default_value_t = 1.0)]
    act_clip: f32,
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
    /// Activation precision of integer-weight layers: q8 (8-bit activations per 32-block with
    /// int8 dot products, llama.cpp's scheme, fastest) or f32 (exact).
    #[arg(long, value_enum, default_value_t = Acts::Q8)]
    acts: Acts,
    /// Threads per matrix product (rows split across cores; default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// KV cache precision: f32 (exact, 4 bytes per value), f16 (2 bytes) or q8 (int8 per head
    /// vector with an f16 scale, about 1 byte per value: what a microcontroller's RAM holds).
    #[arg(long, value_enum, default_value_t = Kv::F32)]
    kv: Kv,
}

/// `--kv` values.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kv {
    F32,
    F16,
    Q8,
}

impl From<Kv> for edgeq_runtime::KvCache {
    fn from(k: Kv) -> Self {
        match k {
            Kv::F32 => edgeq_runtime::KvCache::F32,
            Kv::F16 => edgeq_runtime::KvCache::F16,
            Kv::Q8 => edgeq_runtime::KvCache::Q8,
        }
    }
}

/// `--acts` values.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Acts {
    F32,
    Q8,
}

impl From<Acts> for edgeq_runtime::Activations {
    fn from(a: Acts) -> Self {
        match a {
            Acts::F32 => edgeq_runtime::Activations::F32,
            Acts::Q8 => edgeq_runtime::Activations::Q8,
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PolicyPreset {
    All,
    MlpOnly,
    AttnOnly,
}

impl From<PolicyPreset> for quantize::Preset {
    fn from(p: PolicyPreset) -> Self {
        match p {
            PolicyPreset::All => quantize::Preset::All,
            PolicyPreset::MlpOnly => quantize::Preset::MlpOnly,
            PolicyPreset::AttnOnly => quantize::Preset::AttnOnly,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EvalProtocol {
    Sliding,
    LlamaCpp,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// EQF model(s). With several, they are scored on the same tokens and printed side by side,
    /// each with its change against the first (put the unquantized baseline first).
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// UTF-8 text file to score.
    #[arg(long)]
    text: PathBuf,
    /// Reference model (e.g. the unquantized original): scored in lockstep with the models on the same
    /// windows, and every model also gets the mean KL divergence KL(reference || model) per token and
    /// the top-1 agreement (how often both predict the same next token). The reference is the first row.
    #[arg(long = "ref", value_name = "MODEL")]
    reference: Option<PathBuf>,
    /// Use only the first N characters of the text.
    #[arg(long)]
    chars: Option<usize>,
    /// Tokens fed per window (context of each prediction is at most this).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Tokens between window starts; default = window (non-overlapping). Smaller strides give sliding windows.
    #[arg(long)]
    stride: Option<usize>,
    /// Which tokens are scored: sliding (windows of --window every --stride tokens, every token
    /// after the first scored once) or llama-cpp (exactly what `llama-perplexity -c WINDOW` scores:
    /// disjoint chunks of --window tokens, BOS in place of each chunk's first token when the model
    /// adds BOS, only the second half of each chunk scored), to compare with llama.cpp one to one.
    #[arg(long, value_enum, default_value_t = EvalProtocol::Sliding)]
    protocol: EvalProtocol,
    /// Score at most this many tokens (from the start of the text).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Prepend BOS to the text: auto (as the tokenizer says), yes, no.
    #[arg(long, default_value = "auto")]
    bos: String,
    /// Activation precision of integer-weight layers: f32 (exact, the default: scores the weight
    /// quantization alone, as GPTQ/AWQ papers do) or q8 (8-bit activations per 32-block, what
    /// `edgeq run` executes by default, as llama.cpp does).
    #[arg(long, value_enum, default_value_t = Acts::F32)]
    acts: Acts,
    /// KV cache precision: f32 (exact, the default), f16, or q8 (int8 per head vector with an f16
    /// scale); scores what the cache precision costs.
    #[arg(long, value_enum, default_value_t = Kv::F32)]
    kv: Kv,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Also generate greedily from a few fixed prompts (--sanity-tokens each) and flag broken output:
    /// empty, non-text bytes, or a repetition loop (a unit of 1-16 tokens repeating to the end).
    #[arg(long)]
    sanity: bool,
    /// Tokens generated per prompt by --sanity.
    #[arg(long, default_value_t = 48)]
    sanity_tokens: usize,
    /// Also measure decode (tg) and prefill (pp) tokens/s of each model on this many tokens (llama-bench's
    /// tests, q8 activations, best of three, all --threads).
    #[arg(long, value_name = "TOKENS")]
    speed: Option<usize>,
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
    /// Also write every tensor, dequantized to f32, as DIR/<name>.npy (rows x cols): input for `edgeq layer`, or a
    /// reference to check other tools' readers against.
    #[arg(long, value_name = "DIR")]
    dequant_dir: Option<PathBuf>,
    /// Instead of the report, print the token ids of the UTF-8 text in FILE as a JSON array (BOS
    /// added as the tokenizer says): to check the tokenizer against another tool's.
    #[arg(long, value_name = "FILE")]
    tokenize: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    if let Some(k) = &cli.kernels {
        let ok = edgeq_kernels::implementation_by_name(k).is_some_and(|i| edgeq_kernels::force_implementation(Some(i)));
        if !ok {
            let avail: Vec<_> = edgeq_kernels::available().map(|i| i.name()).collect();
            eprintln!(
                "error: --kernels {k}: not available on this machine (available: {})",
                avail.join(", ")
            );
            std::process::exit(2);
        }
    }
    let r = match cli.cmd {
        Cmd::Import(a) => cmd_import(a),
        Cmd::Quantize(a) => cmd_quantize(a),
        Cmd::Rotate(a) => cmd_rotate(a),
        Cmd::Run(a) => cmd_run(a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Inspect(a) => cmd_inspect(a),
        Cmd::Layer(a) => cmd_layer(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Export(a) => cmd_export(a),
        Cmd::Compare(a) => cmd_compare(a),
        Cmd::Synth(a) => cmd_synth(a),
        Cmd::Calib(CalibCmd::Prepare(a)) => cmd_calib_prepare(a),
        Cmd::Calib(CalibCmd::Acts(a)) => cmd_calib_acts(a),
    };
    if let Err(e) = r {
        // `edgeq run ... | head`: a closed stdout is the reader's choice, not an error.
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn cmd_synth(a: SynthArgs) -> Result<()> {
    use edgeq_host::synth;
    let t0 = Instant::now();
    let shape = synth::shape(&a.shape)?;
    let dtype = synth::Dtype::parse(&a.dtype)?;
    let w = synth::synth(&shape, a.layers, dtype, synth::parse_size(&a.shard_size)?, a.seed, &a.out)?;
    eprintln!(
        "wrote {} ({}, {} layers, {} tensors, {:.3} B parameters, {:.2} GB in {} shard{}) in {:.1}s",
        a.out.display(),
        shape.name,
        a.layers.unwrap_or(shape.layers),
        w.tensors,
        w.params as f64 / 1e9,
        w.bytes as f64 / 1e9,
        w.shards,
        if w.shards == 1 { "" } else { "s" },
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cmd_import(a: ImportArgs) -> Result<()> {
    let t0 = Instant::now();
    let m = import::import(&a.src, a.tokenizer.as_deref())?;
    let n = m.tensors.len();
    let size = m.write_eqf(&a.out)?;
    eprintln!(
        "imported {} -> {} ({n} tensors, {:.2} MB) in {:.2}s",
        a.src.display(),
        a.out.display(),
        size as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cmd_quantize(mut a: QuantizeArgs) -> Result<()> {
    if let edgeq_host::gpu::DeviceArg::Cuda(_) = a.device {
        // Asked for explicitly: a clear error now, whatever the method.
        edgeq_host::gpu::select(a.device)?;
    }
    if a.sensitivity || a.budget_bits.is_some() {
        anyhow::ensure!(
            !a.rotate,
            "--sensitivity / --budget-bits do not combine with --rotate yet: rotate first with `edgeq rotate`, then scan the rotated file"
        );
        sensitivity_scan(&mut a)?;
    }
    if matches!(a.method.as_str(), "int8" | "smoothquant" | "llm-int8") {
        anyhow::ensure!(
            !a.rotate && a.act_bits == "16",
            "--rotate and --act-bits belong to the 4/8-bit weight methods; --method {} sets its own activations",
            a.method
        );
        return cmd_quantize_w8(a);
    }
    if a.method != "rtn" {
        return cmd_quantize_calibrated(a);
    }
    let t0 = Instant::now();
    let (f, rotation) = open_input(&a)?;
    let model = f.model()?;
    let linear = quantize::spec_from_args(a.bits, a.group, !a.asym, a.fp8.as_deref())?;
    let embed = quantize::spec_from_name(&a.embed, a.group)?;
    let policy =
        quantize::Policy::new(linear, embed, &a.skip)?.with_mixed(&a.overrides, a.sandwich, model.cfg.n_layers, a.policy.into())?;
    let pb = progress(model.eqf.tensors().len() as u64, "quantize");
    let fp8_acts = match (a.fp8.is_some(), a.fp8_acts) {
        (false, _) | (_, Fp8ActsArg::None) => None,
        (true, Fp8ActsArg::Token) => Some(edgeq_core::ActMode::Fp8Token),
        (true, Fp8ActsArg::Group128) => Some(edgeq_core::ActMode::Fp8Group128),
        (true, Fp8ActsArg::Auto) if linear.granularity == edgeq_core::Granularity::Block => Some(edgeq_core::ActMode::Fp8Group128),
        (true, Fp8ActsArg::Auto) => Some(edgeq_core::ActMode::Fp8Token),
    };
    let mut acts = fp8_acts.map_or_else(Vec::new, |m| quantize::fp8_act_entries(&model.eqf, &policy, m));
    if a.act_bits != "16" {
        anyhow::ensure!(a.fp8.is_none(), "--act-bits is for integer weights; FP8 weights take --fp8-acts");
        acts = int_acts(&a, &model, &policy)?;
    }
    let (w, reports) = quantize::quantize_rtn_except(&model.eqf, &policy, &Default::default(), Vec::new(), Vec::new(), acts, &pb)?;
    pb.finish_and_clear();
    let out_bytes = quantize::write_eqf(&a.out, w)?;
    if a.json {
        let v: Vec<_> = reports
            .iter()
            .map(|r| serde_json::json!({"tensor": r.name, "from": r.from, "to": r.to, "rel_err": r.rel_err}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for r in &reports {
            eprintln!("{:<24} {:>10} -> {:<12} rel.err {:.3e}", r.name, r.from, r.to, r.rel_err);
        }
    }
    // The same report as the calibrated methods write (errors are weight errors here).
    let secs = t0.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "method": "rtn", "bits": a.bits, "group": a.group, "sym": !a.asym, "fp8": a.fp8, "input": a.input, "output": a.out,
        "fp8_activations": fp8_acts.map(|m| m.name()), "act_bits": a.act_bits, "rotation": rotation,
        "seconds": secs, "peak_rss_mb": edgeq_host::calib::pipeline::peak_rss_mb(),
        "layers": reports.iter().map(|r| serde_json::json!({"tensor": r.name, "scheme": r.to, "metric": "weight", "rel_err": r.rel_err})).collect::<Vec<_>>(),
    });
    let rpath = a.report.clone().unwrap_or_else(|| a.out.with_extension("report.json"));
    write_atomic(&rpath, serde_json::to_string_pretty(&report)?.as_bytes())?;
    eprintln!(
        "quantized {} tensors ({}) -> {} ({:.3} MB, was {:.3} MB) in {:.2}s; report {}",
        reports.len(),
        quantize::spec_name(&linear),
        a.out.display(),
        out_bytes as f64 / 1e6,
        f.bytes().len() as f64 / 1e6,
        secs,
        rpath.display()
    );
    Ok(())
}

fn cmd_rotate(a: RotateArgs) -> Result<()> {
    let t0 = Instant::now();
    let f = ModelFile::open(&a.model)?;
    let (bytes, _) = rotate_model(&f, &a.model, a.seed, !a.no_online_hadamard)?;
    write_atomic(&a.out, &bytes)?;
    eprintln!(
        "rotated {} -> {} ({:.2} MB, f32) in {:.2}s",
        a.model.display(),
        a.out.display(),
        bytes.len() as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// QuaRot's rotation of `f` (named `path` in messages), with what it did on stderr.
fn rotate_model(f: &ModelFile, path: &Path, seed: u64, online: bool) -> Result<(Vec<u8>, edgeq_host::algo::quarot::RotateReport)> {
    let model = f.model()?;
    let (bytes, rep) =
        edgeq_host::algo::quarot::rotate(&model.eqf, seed, online).with_context(|| format!("rotating {}", path.display()))?;
    eprintln!(
        "QuaRot: residual stream rotated (dim {} = {}·2^m, seed {}), online Hadamard on ffn_down: {}{}",
        model.cfg.dim,
        rep.residual_k,
        rep.seed,
        if rep.online_hadamard { "yes" } else { "no" },
        if rep.untied_classifier { ", classifier untied" } else { "" },
    );
    for n in &rep.notes {
        eprintln!("QuaRot: {n}");
    }
    Ok((bytes, rep))
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let f = ModelFile::open(&a.model)?;
    let model = f.model()?;
    let tok = text::tokenizer(&model)?;
    // BOS as the tokenizer says (llama2.c/Llama: yes; SmolLM2/Qwen2: no), and always for an empty prompt.
    let prompt = text::encode(&tok, &a.prompt, tok.add_bos_default() || a.prompt.is_empty())?;
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
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    if threads > 1 {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().ok();
    }
    let opts = SessionOptions {
        kv: a.kv.into(),
        matmul: edgeq_runtime::MatmulOpts {
            acts: a.acts.into(),
            threads,
        },
    };
    let arena_len = arena_bytes_with(&model.cfg, max_seq, batch, opts.kv);
    let mut arena = vec![0u64; arena_len.div_ceil(8)];
    let mut s =
        Session::with_options(&model, bytemuck::cast_slice_mut(&mut arena), max_seq, batch, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        logits = s.forward(chunk, None).map_err(|e| anyhow::anyhow!("{e}"))?.to_vec();
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
        eprintln!("tokens: {:?}", prompt.iter().chain(&generated).collect::<Vec<_>>());
    }
    eprintln!(
        "prompt: {} tokens in {:.3}s ({:.1} tok/s); generated: {} tokens in {:.3}s ({:.1} tok/s); arena {:.2} MB ({} bytes, KV cache {})",
        prompt.len(),
        t_prefill,
        prompt.len() as f64 / t_prefill.max(1e-9),
        generated.len(),
        dt,
        generated.len() as f64 / dt.max(1e-9),
        arena_len as f64 / 1e6,
        arena_len,
        opts.kv.name()
    );
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    use edgeq_host::bench;
    let min_time = std::time::Duration::from_secs_f64(a.min_time.max(0.01));
    let mut out = std::io::stdout().lock();
    let json = a.json;
    let mut bw = Vec::new();
    if !a.no_kernels {
        if !json {
            writeln!(
                out,
                "kernels: {} (available: {})",
                edgeq_kernels::implementation().name(),
                edgeq_kernels::available().map(|i| i.name()).collect::<Vec<_>>().join(", ")
            )?;
        }
        for &t in &a.threads {
            let b = bench::bandwidth(t.max(1), (a.bw_mb as usize) << 20, min_time);
            if !json {
                writeln!(
                    out,
                    "memory bandwidth, {} thread(s): read {:.2} GB/s, triad {:.2} GB/s",
                    b.threads, b.read_gbs, b.triad_gbs
                )?;
            }
            bw.push(b);
        }
    }
    let mut kernels = Vec::new();
    if !a.no_kernels {
        let shapes = a
            .shapes
            .iter()
            .map(|s| {
                let (r, c) = s
                    .split_once('x')
                    .ok_or_else(|| anyhow::anyhow!("--shapes {s}: expected ROWSxCOLS"))?;
                Ok((r.parse()?, c.parse()?))
            })
            .collect::<Result<Vec<(usize, usize)>>>()?;
        let specs = a.schemes.iter().map(|s| quantize::parse_spec_name(s)).collect::<Result<Vec<_>>>()?;
        let cfg = bench::KernelBench {
            shapes,
            specs,
            threads: a.threads.iter().map(|&t| t.max(1)).collect(),
            tokens: a.tokens.iter().map(|&t| t as usize).collect(),
            min_time,
            cold_bytes: a.cold_mb << 20,
        };
        if !json {
            writeln!(
                out,
                "\n{:<11} {:<9} {:<22} {:>5} {:>3} {:>4} {:>10} {:>10} {:>8} {:>6} {:>7} {:>7}",
                "shape", "scheme", "implementation", "acts", "thr", "tok", "best µs", "median µs", "GB/s", "of BW", "of read", "GMAC/s"
            )?;
        }
        kernels = bench::kernels(&cfg, &bw, |r| {
            if !json {
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "{:<11} {:<9} {:<22} {:>5} {:>3} {:>4} {:>10.1} {:>10.1} {:>8.2} {:>5.0}% {:>6.0}% {:>7.1}",
                    r.shape,
                    r.scheme,
                    r.implementation,
                    r.activations,
                    r.threads,
                    r.tokens,
                    r.us,
                    r.median_us,
                    r.weight_gbs,
                    r.of_bandwidth * 100.0,
                    r.of_paired_read * 100.0,
                    r.gmacs
                );
            }
        })?;
    }
    let mut models = Vec::new();
    if let Some(path) = &a.model {
        let f = ModelFile::open(path)?;
        let model = f.model()?;
        if !json {
            writeln!(out, "\nmodel {} ({:.1} MB)", path.display(), f.bytes().len() as f64 / 1e6)?;
            writeln!(
                out,
                "{:<8} {:>5} {:>4} {:>3} {:>10} {:>12}",
                "test", "acts", "kv", "thr", "best t/s", "median t/s"
            )?;
        }
        for test in &a.tests {
            let (kind, n) = test.split_at(2.min(test.len()));
            anyhow::ensure!(kind == "tg" || kind == "pp", "--tests {test}: expected tgN or ppN");
            let n: usize = n.parse().map_err(|_| anyhow::anyhow!("--tests {test}: expected tgN or ppN"))?;
            for &acts in &a.acts {
                for &kv in &a.kv {
                    for &t in &a.threads {
                        let r = bench::model(&model, (kind, n), acts.into(), kv.into(), t.max(1), a.reps)?;
                        if !json {
                            writeln!(
                                out,
                                "{:<8} {:>5} {:>4} {:>3} {:>10.2} {:>12.2}",
                                r.test, r.activations, r.kv, r.threads, r.tokens_per_second, r.median_tokens_per_second
                            )?;
                        }
                        models.push(r);
                    }
                }
            }
        }
    }
    if json {
        let v = serde_json::json!({
            "implementation": edgeq_kernels::implementation().name(),
            "bandwidth": bw,
            "kernels": kernels,
            "model": models,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().ok();
    }
    let raw = std::fs::read_to_string(&a.text).with_context(|| format!("cannot read text file {}", a.text.display()))?;
    let body: String = match a.chars {
        Some(n) => raw.chars().take(n).collect(),
        None => raw,
    };
    let bos_of = |tok: &edgeq_runtime::tokenizer::Tokenizer<'_>| -> Result<bool> {
        Ok(match a.bos.as_str() {
            "auto" => tok.add_bos_default(),
            "yes" => true,
            "no" => false,
            o => anyhow::bail!("--bos {o}: expected auto, yes or no"),
        })
    };
    let protocol_of = |bos: bool, bos_id: u32| match a.protocol {
        EvalProtocol::Sliding => eval::Protocol::Sliding {
            window: a.window,
            stride: a.stride.unwrap_or(a.window),
        },
        EvalProtocol::LlamaCpp => eval::Protocol::LlamaCpp {
            ctx: a.window,
            bos: bos.then_some(bos_id),
        },
    };
    let mut results = Vec::new();
    if let Some(rp) = &a.reference {
        // Lockstep: the reference and every model on the same windows; KL and top-1 vs the reference.
        let paths: Vec<&PathBuf> = std::iter::once(rp).chain(&a.models).collect();
        let files = paths.iter().map(|p| ModelFile::open(p)).collect::<Result<Vec<_>>>()?;
        let models = files.iter().map(|f| f.model()).collect::<Result<Vec<_>>>()?;
        let tok = text::tokenizer(&models[0])?;
        let bos = bos_of(&tok)?;
        let tokens = text::encode(&tok, &body, bos)?;
        let pb = progress(0, "eval");
        let refs: Vec<&edgeq_runtime::Model<'_>> = models.iter().collect();
        let rs = eval::evaluate(
            &refs,
            true,
            &tokens,
            protocol_of(bos, models[0].cfg.bos_id),
            a.max_tokens,
            a.acts.into(),
            a.kv.into(),
            &pb,
        )
        .with_context(|| format!("scoring against the reference {}", rp.display()))?;
        pb.finish_and_clear();
        for ((p, f), (m, r)) in paths.iter().zip(&files).zip(models.iter().zip(rs)) {
            let info = inspect::report(m, f.bytes().len() as u64);
            results.push((
                (*p).clone(),
                r,
                f.bytes().len(),
                info["bits_per_weight"].as_f64().unwrap_or(f64::NAN),
            ));
        }
    }
    for path in a.models.iter().filter(|_| a.reference.is_none()) {
        let f = ModelFile::open(path)?;
        let model = f.model()?;
        let tok = text::tokenizer(&model)?;
        let bos = bos_of(&tok)?;
        let tokens = text::encode(&tok, &body, bos)?;
        let pb = progress(0, "eval");
        let protocol = protocol_of(bos, model.cfg.bos_id);
        let r = eval::perplexity(&model, &tokens, protocol, a.max_tokens, a.acts.into(), a.kv.into(), &pb)?;
        pb.finish_and_clear();
        let info = inspect::report(&model, f.bytes().len() as u64);
        results.push((
            path.clone(),
            r,
            f.bytes().len(),
            info["bits_per_weight"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    let mut speeds = Vec::new();
    if let Some(n) = a.speed {
        let threads = a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        for (p, _, _, _) in &results {
            let f = ModelFile::open(p)?;
            let m = f.model()?;
            let n = n.clamp(1, m.cfg.max_seq_len as usize - 1);
            let tg = edgeq_host::bench::model(&m, ("tg", n), edgeq_runtime::Activations::Q8, a.kv.into(), threads, 3)?;
            let pp = edgeq_host::bench::model(&m, ("pp", n), edgeq_runtime::Activations::Q8, a.kv.into(), threads, 3)?;
            speeds.push((tg.tokens_per_second, pp.tokens_per_second));
        }
    }
    let peak = edgeq_host::calib::pipeline::peak_rss_mb();
    let mut generations = Vec::new();
    if a.sanity {
        for (p, _, _, _) in &results {
            let f = ModelFile::open(p)?;
            let m = f.model()?;
            let gens = edgeq_host::sanity::PROMPTS
                .iter()
                .map(|pr| edgeq_host::sanity::generate(&m, pr, a.sanity_tokens, a.acts.into()))
                .collect::<Result<Vec<_>>>()?;
            generations.push(gens);
        }
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        let objs: Vec<serde_json::Value> = results
            .iter()
            .enumerate()
            .map(|(i, (p, r, size, bpw))| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["model"] = serde_json::json!(p);
                v["file_bytes"] = serde_json::json!(size);
                v["bits_per_weight"] = serde_json::json!(bpw);
                v["peak_rss_mb"] = serde_json::json!(peak);
                if let Some((tg, pp)) = speeds.get(i) {
                    v["decode_tokens_per_second"] = serde_json::json!(tg);
                    v["prefill_tokens_per_second"] = serde_json::json!(pp);
                }
                if let Some(g) = generations.get(i) {
                    v["generations"] = serde_json::json!(g);
                }
                v
            })
            .collect();
        if objs.len() == 1 {
            writeln!(out, "{}", serde_json::to_string(&objs[0])?)?;
        } else {
            writeln!(out, "{}", serde_json::to_string(&objs)?)?;
        }
    } else if results.len() == 1 {
        let (p, r, _, _) = &results[0];
        writeln!(
            out,
            "{}: mean NLL {:.4} nats/token, perplexity {:.4} over {} tokens ({} {} of {}, stride {}, KV cache {}) in {:.2}s ({:.0} tok/s)",
            p.display(),
            r.mean_nll,
            r.ppl,
            r.tokens,
            r.windows,
            if r.protocol == "sliding" { "windows" } else { "llama.cpp chunks" },
            r.window,
            r.stride,
            r.kv,
            r.seconds,
            r.tokens_per_second
        )?;
    } else {
        let base = results[0].1.mean_nll;
        let with_ref = results[0].1.kl.is_some();
        writeln!(
            out,
            "{:<40} {:>10} {:>7} {:>10} {:>10} {:>9}{}",
            "model",
            "size MB",
            "bpw",
            "mean NLL",
            "ppl",
            "ΔNLL",
            if with_ref {
                format!(" {:>10} {:>7}", "KL", "top-1")
            } else {
                String::new()
            }
        )?;
        for (p, r, size, bpw) in &results {
            let extra = match (r.kl, r.top1_agreement) {
                (Some(kl), Some(t)) => format!(" {kl:>10.2e} {:>6.2}%", t * 100.0),
                _ => String::new(),
            };
            writeln!(
                out,
                "{:<40} {:>10.3} {:>7.3} {:>10.4} {:>10.4} {:>+8.2}%{extra}",
                p.display().to_string(),
                *size as f64 / 1e6,
                bpw,
                r.mean_nll,
                r.ppl,
                (r.mean_nll / base - 1.0) * 100.0
            )?;
        }
        if with_ref {
            writeln!(
                out,
                "(KL: mean KL(reference || model) per token, nats; top-1: next-token argmax agreement; the first row is the reference)"
            )?;
        }
        writeln!(
            out,
            "({} tokens scored per model, windows of {}, stride {}, KV cache {})",
            results[0].1.tokens, results[0].1.window, results[0].1.stride, results[0].1.kv
        )?;
    }
    if !a.json {
        for ((p, _, _, _), (tg, pp)) in results.iter().zip(&speeds) {
            writeln!(out, "{}: decode {tg:.1} tok/s, prefill {pp:.1} tok/s", p.display())?;
        }
        if let Some(mb) = peak {
            writeln!(out, "peak memory of this process: {mb:.0} MB")?;
        }
        for ((p, _, _, _), gens) in results.iter().zip(&generations) {
            for g in gens {
                let flags = if g.flags.is_empty() { "ok".to_string() } else { g.flags.join(", ") };
                writeln!(out, "{} [{flags}] {:?} -> {:?}", p.display(), g.prompt, g.text)?;
            }
        }
    }
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let f = ModelFile::open(&a.model)?;
    let model = f.model()?;
    if let Some(p) = &a.tokenize {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read text file {}", p.display()))?;
        let tok = text::tokenizer(&model)?;
        let ids = text::encode(&tok, &text, tok.add_bos_default())?;
        println!("{}", serde_json::to_string(&ids)?);
        return Ok(());
    }
    let r = inspect::report(&model, f.bytes().len() as u64);
    if let Some(dir) = &a.dequant_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for t in model.eqf.tensors() {
            let data = edgeq_host::quantize::to_f32(&model.eqf, t).with_context(|| format!("tensor {}", t.name_str()))?;
            let m = edgeq_host::npy::Matrix {
                rows: t.rows as usize,
                cols: t.cols as usize,
                data,
            };
            edgeq_host::npy::write(&dir.join(format!("{}.npy", t.name_str())), &m)?;
        }
        eprintln!("wrote {} tensors to {}", model.eqf.tensors().len(), dir.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        inspect::print_human(&r)?;
    }
    Ok(())
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    use edgeq_host::export::gguf::{export, Requant};
    use edgeq_host::import::gguf::GgmlType;
    let f = ModelFile::open(&a.model)?;
    let model = f.model()?;
    if a.format == "safetensors" {
        return export_safetensors(&a, &model.eqf);
    }
    let requant = match a.requant.as_str() {
        "q8_0" => Requant::To(GgmlType::Q8_0),
        "q4_0" => Requant::To(GgmlType::Q4_0),
        "q4_1" => Requant::To(GgmlType::Q4_1),
        "f16" => Requant::To(GgmlType::F16),
        "bf16" => Requant::To(GgmlType::BF16),
        "f32" => Requant::To(GgmlType::F32),
        _ => Requant::Auto,
    };
    let (bytes, report) = export(&model.eqf, requant).with_context(|| format!("exporting {}", a.model.display()))?;
    write_atomic(&a.out, &bytes)?;
    let requantized: Vec<_> = report.iter().filter(|r| !r.exact).collect();
    for r in &requantized {
        eprintln!(
            "warning: {}: {} requantized to {} ({}): relative squared error {:.3e}",
            r.name, r.from, r.to, r.why, r.rel_err
        );
    }
    eprintln!(
        "wrote {} ({} bytes): {} tensors, {} carried exactly, {} requantized",
        a.out.display(),
        bytes.len(),
        report.len(),
        report.len() - requantized.len(),
        requantized.len()
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn cmd_compare(a: CompareArgs) -> Result<()> {
    use edgeq_host::compare;
    let cands = compare::candidates(&a.methods, &a.bits, a.group, a.calib_samples)?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let is_eqf = a.model.is_file() && {
        use std::io::Read;
        let mut magic = [0u8; 8];
        std::fs::File::open(&a.model).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic.starts_with(b"EQF1")
    };
    let model = if is_eqf {
        a.model.clone()
    } else {
        let r = a.out.join("reference.eqf");
        let newer = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if !(r.is_file() && newer(&r) >= newer(&a.model)) {
            eprintln!("importing {} -> {}", a.model.display(), r.display());
            let m = import::import(&a.model, None)?;
            write_atomic(&r, &m.to_eqf()?)?;
        }
        r
    };
    let opts = compare::Options {
        model,
        text: a.text.clone(),
        eval_chars: a.eval_chars,
        calib: a.calib.clone(),
        calib_skip_chars: a.eval_chars,
        out: a.out.clone(),
        window: a.window,
        max_tokens: a.max_tokens,
        criteria: compare::Criteria {
            max_ppl_increase_pct: a.max_ppl_increase,
            min_speedup: a.min_speedup,
            min_compression_fraction: a.min_compression,
        },
        fallback: a.fallback,
        threads,
        speed_tokens: a.speed_tokens,
        sanity_tokens: a.sanity_tokens,
        force: a.force,
    };
    let pb = progress(0, "compare");
    let summary = compare::run(&opts, &cands, &pb)?;
    pb.finish_and_clear();
    let md = std::fs::read_to_string(a.out.join("summary.md")).unwrap_or_default();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{md}");
    }
    eprintln!(
        "wrote {}/quantization_summary.json, summary.md and the plots (ppl_vs_size, layer_error: .svg and .png) in {:.1}s",
        a.out.display(),
        summary["seconds"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

fn export_safetensors(a: &ExportArgs, eqf: &edgeq_core::Eqf<'_>) -> Result<()> {
    use edgeq_host::export::hf::{export, Layout, Options};
    let layout = match a.layout.as_str() {
        "gptq" => Layout::Gptq,
        "fp8" => Layout::Fp8,
        "float" => Layout::Float,
        _ => Layout::Auto,
    };
    let opts = Options {
        layout,
        max_shard_bytes: a.max_shard_mb.max(1) * 1_000_000,
    };
    let out = export(eqf, opts).with_context(|| format!("exporting {}", a.model.display()))?;
    edgeq_host::model_file::write_dir_atomic(&a.out, &out.files)?;
    let changed: Vec<_> = out.reports.iter().filter(|r| !r.exact).collect();
    for r in &changed {
        eprintln!(
            "warning: {}: {} -> {} ({}): relative squared error {:.3e}",
            r.name,
            r.from,
            r.to,
            if r.why.is_empty() { "rounded" } else { &r.why },
            r.rel_err
        );
    }
    let bytes: usize = out.files.iter().map(|f| f.1.len()).sum();
    eprintln!(
        "wrote {} ({} layout, {} files, {} bytes): {} tensors, {} carried exactly, {} changed",
        a.out.display(),
        out.layout.name(),
        out.files.len(),
        bytes,
        out.reports.len(),
        out.reports.len() - changed.len(),
        changed.len()
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out.reports)?);
    }
    Ok(())
}

fn method_args(method: &str, bits: u32, group: i64, sym: bool, m: &MethodFlags) -> methods::MethodArgs {
    methods::MethodArgs {
        method: method.to_string(),
        grid: edgeq_host::algo::Grid {
            bits,
            group: if group <= 0 { 0 } else { group as usize },
            sym,
        },
        act_order: m.act_order,
        static_groups: m.static_groups,
        damp: m.damp,
        blocksize: m.blocksize,
        hqq_axis: m.hqq_axis,
        hqq_iters: m.hqq_iters,
        duo_scaling: m.duo_scaling,
        clip: !m.no_clip,
        ada_iters: m.ada_iters,
        ada_lambda: m.ada_lambda,
        ada_lr: m.ada_lr,
        ada_warmup: m.ada_warmup,
    }
}

/// What a resumable run must agree on with the checkpoint it continues:
/// edgeq's version, the input file (path, size, modification time), the
/// method and its settings, the policy, the rotation and the calibration
/// tokens.
fn run_key(a: &QuantizeArgs, ma: &methods::MethodArgs, calib: &edgeq_host::calib::data::CalibSet) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    calib.samples.hash(&mut h);
    let meta = std::fs::metadata(&a.input).ok();
    format!(
        "edgeq {} | input {} {:?} {:?} | {ma:?} | skip {:?} override {:?} sandwich {} policy {:?} embed {} | rotate {} seed {} online {} | calib {:016x}",
        env!("CARGO_PKG_VERSION"),
        a.input.display(),
        meta.as_ref().map(|m| m.len()),
        meta.and_then(|m| m.modified().ok()),
        a.skip,
        a.overrides,
        a.sandwich,
        a.policy,
        a.embed,
        a.rotate,
        a.rotate_seed,
        !a.no_online_hadamard,
        h.finish()
    )
}

/// The model `quantize` works on: the input file, or with `--rotate` its
/// QuaRot rotation (built in memory, f32).
fn open_input(a: &QuantizeArgs) -> Result<(ModelFile, Option<edgeq_host::algo::quarot::RotateReport>)> {
    let f = ModelFile::open(&a.input)?;
    if !a.rotate {
        return Ok((f, None));
    }
    let (bytes, rep) = rotate_model(&f, &a.input, a.rotate_seed, !a.no_online_hadamard)?;
    Ok((ModelFile::from_bytes(&a.input, &bytes), Some(rep)))
}

/// `--act-bits 8|4`: per-token activation records for the integer linears.
fn int_acts(
    a: &QuantizeArgs,
    model: &edgeq_runtime::Model<'_>,
    policy: &quantize::Policy,
) -> Result<Vec<edgeq_core::format::writer::ActEntry>> {
    let bits: u32 = a.act_bits.parse()?;
    let (acts, float) = quantize::int_act_entries(&model.eqf, policy, bits, a.act_clip)?;
    if !float.is_empty() {
        eprintln!(
            "note: {} linear layers keep float activations (their scale groups are not whole 32-column blocks, which the integer kernels need): {}",
            float.len(),
            float.join(", ")
        );
    }
    eprintln!("activations: int{bits} per token on {} linear layers", acts.len());
    Ok(acts)
}

/// `quantize` with a method that runs layer by layer through the sequential pipeline.
fn cmd_quantize_calibrated(a: QuantizeArgs) -> Result<()> {
    let t0 = Instant::now();
    let (device, note) = edgeq_host::gpu::select(a.device)?;
    if let Some(n) = note.filter(|_| device != edgeq_host::gpu::Device::Cpu) {
        eprintln!("{n}");
    }
    let (f, rotation) = open_input(&a)?;
    let model = f.model()?;
    let ma = method_args(&a.method, a.bits, a.group, !a.asym, &a.m);
    anyhow::ensure!(a.fp8.is_none(), "--fp8 is only available with --method rtn");
    let linear = ma.grid.spec()?;
    let embed = quantize::spec_from_name(&a.embed, a.group)?;
    let policy =
        quantize::Policy::new(linear, embed, &a.skip)?.with_mixed(&a.overrides, a.sandwich, model.cfg.n_layers, a.policy.into())?;
    let tok = text::tokenizer(&model)?;
    let calib = match (&a.calib, ma.needs_calibration()) {
        (Some(p), _) => {
            let seqlen = a.calib_seqlen.min(model.cfg.max_seq_len as usize);
            let c = edgeq_host::calib::data::load(p, &tok, a.calib_samples, seqlen, a.calib_skip_chars, a.seed)?;
            eprintln!(
                "calibration: {} samples, {} tokens from {}",
                c.samples.len(),
                c.tokens(),
                p.display()
            );
            c
        }
        (None, true) => anyhow::bail!("--method {} needs calibration data: pass --calib FILE (.txt or .jsonl)", a.method),
        (None, false) => edgeq_host::calib::data::CalibSet {
            samples: vec![vec![model.cfg.bos_id]],
        },
    };
    let pb = progress(0, &a.method);
    // Resumable: the state after each block goes to OUT.partial/ (removed once OUT is written).
    let ckpt = edgeq_host::calib::checkpoint::Checkpoint::new(&a.out, run_key(&a, &ma, &calib));
    let (entries, perms, reports) = if a.method == "awq" {
        let cfg = edgeq_host::algo::awq::AwqConfig {
            duo_scaling: a.m.duo_scaling,
            clip: !a.m.no_clip,
            ..Default::default()
        };
        let (entries, reports) = edgeq_host::calib::awq_pipeline::run(&model, &calib, &policy, ma.grid, &cfg, &pb, Some(&ckpt), Some(&f))?;
        (entries, Vec::new(), reports)
    } else {
        methods::with_hooks(&ma, |hooks| {
            edgeq_host::calib::pipeline::run(&model, &calib, &policy, hooks, &pb, Some(&ckpt), Some(&f))
        })?
    };
    pb.finish_and_clear();
    // Everything the pipeline did not quantize goes through the RTN policy (embeddings, skipped layers).
    let quantized: std::collections::HashSet<(u16, u16)> = entries.iter().map(|e| (e.layer, e.role as u16)).collect();
    let rest = quantize::Policy::new(linear, embed, &a.skip)?.with_mixed(&a.overrides, a.sandwich, model.cfg.n_layers, a.policy.into())?;
    let acts = if a.act_bits != "16" {
        int_acts(&a, &model, &rest)?
    } else {
        Vec::new()
    };
    let pb2 = progress(0, "finish");
    let (w, rtn_reports) = quantize::quantize_rtn_except(&model.eqf, &rest, &quantized, entries, perms, acts, &pb2)?;
    pb2.finish_and_clear();
    let out_bytes = quantize::write_eqf(&a.out, w)?;
    ckpt.finish();
    let secs = t0.elapsed().as_secs_f64();
    let peak = edgeq_host::calib::pipeline::peak_rss_mb();
    for r in &reports {
        eprintln!(
            "{:<24} {:<10} {} err {:.3e}  {:.2}s {}",
            r.tensor, r.scheme, r.metric, r.rel_err, r.seconds, r.note
        );
    }
    for r in &rtn_reports {
        eprintln!("{:<24} {:<10} weight err {:.3e}  (rtn)", r.name, r.to, r.rel_err);
    }
    let report = serde_json::json!({
        "method": a.method, "bits": a.bits, "group": a.group, "sym": !a.asym, "input": a.input, "output": a.out,
        "calibration": {"samples": calib.samples.len(), "tokens": calib.tokens(), "file": a.calib},
        "act_bits": a.act_bits, "rotation": rotation, "device": device.to_string(),
        "seconds": secs, "peak_rss_mb": peak, "layers": reports,
        "rtn_tensors": rtn_reports.iter().map(|r| serde_json::json!({"tensor": r.name, "scheme": r.to, "weight_rel_err": r.rel_err})).collect::<Vec<_>>(),
    });
    let rpath = write_report(&a, &report)?;
    eprintln!(
        "{} quantized {} layers -> {} ({:.3} MB) in {:.1}s, peak memory {:.0} MB; report {}",
        a.method,
        reports.len(),
        a.out.display(),
        out_bytes as f64 / 1e6,
        secs,
        peak.unwrap_or(f64::NAN),
        rpath.display()
    );
    Ok(())
}

/// Writes `quantize`'s JSON report (`--report`, default OUT.report.json;
/// also on stdout with `--json`) and returns its path.
fn write_report(a: &QuantizeArgs, report: &serde_json::Value) -> Result<PathBuf> {
    let rpath = a.report.clone().unwrap_or_else(|| a.out.with_extension("report.json"));
    write_atomic(&rpath, serde_json::to_string_pretty(report)?.as_bytes())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(rpath)
}

/// `--sensitivity` / `--budget-bits`: ranks the blocks and, with a budget,
/// adds `blk.N.*=HIGH` overrides for the blocks kept at high precision.
fn sensitivity_scan(a: &mut QuantizeArgs) -> Result<()> {
    let f = ModelFile::open(&a.input)?;
    let model = f.model()?;
    let low = match a.method.as_str() {
        "rtn" => quantize::spec_from_args(a.bits, a.group, !a.asym, a.fp8.as_deref())?,
        "int8" | "smoothquant" | "llm-int8" => edgeq_core::QuantSpec::per_channel(edgeq_core::Scheme::Q8Sym),
        _ => method_args(&a.method, a.bits, a.group, !a.asym, &a.m).grid.spec()?,
    };
    let high = quantize::parse_spec_name(&a.budget_high).with_context(|| format!("--budget-high {}", a.budget_high))?;
    let text_path = match (&a.sensitivity_text, &a.calib) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) if p.extension().is_some_and(|e| e == "txt") => p.clone(),
        _ => anyhow::bail!("the sensitivity scan scores a text: pass --sensitivity-text FILE.txt (or a .txt --calib)"),
    };
    let tok = text::tokenizer(&model)?;
    let raw = std::fs::read_to_string(&text_path).with_context(|| format!("cannot read {}", text_path.display()))?;
    let mut tokens = text::encode(&tok, &raw, tok.add_bos_default())?;
    tokens.truncate(a.sensitivity_tokens + 1);
    anyhow::ensure!(
        tokens.len() > 16,
        "{}: too little text for the sensitivity scan",
        text_path.display()
    );
    let window = 512.min(model.cfg.max_seq_len as usize);
    let pb = progress(0, "sensitivity");
    let t0 = Instant::now();
    let scan = edgeq_host::sensitivity::scan(&model, &tokens, low, high, window, &pb)?;
    pb.finish_and_clear();
    let mut by_rank = scan.blocks.clone();
    by_rank.sort_by_key(|b| b.rank);
    eprintln!(
        "sensitivity: each block alone in {} (base NLL {:.4} on {} tokens of {}, {:.1}s)",
        scan.low,
        scan.base_nll,
        tokens.len(),
        text_path.display(),
        t0.elapsed().as_secs_f64()
    );
    eprintln!("{:>5} {:>6} {:>10} {:>11}", "rank", "block", "NLL", "ΔNLL");
    for b in &by_rank {
        eprintln!("{:>5} {:>6} {:>10.4} {:>+11.5}", b.rank, b.block, b.nll, b.delta_nll);
    }
    let mut out = serde_json::json!({"scan": scan, "text": text_path});
    if let Some(budget) = a.budget_bits {
        let (promoted, avg) = edgeq_host::sensitivity::allocate(&scan, budget);
        let all_low: f64 =
            scan.blocks.iter().map(|b| b.bits_low as f64).sum::<f64>() / scan.blocks.iter().map(|b| b.params as f64).sum::<f64>();
        anyhow::ensure!(
            all_low <= budget + 1e-9,
            "--budget-bits {budget}: every block in {} already averages {all_low:.3} bits per weight; use a larger budget or a smaller scheme",
            scan.low
        );
        eprintln!(
            "budget {budget} bits/weight: blocks {promoted:?} in {} ({} in {}), linear layers average {avg:.3} bits/weight",
            a.budget_high,
            scan.blocks.len() - promoted.len(),
            scan.low
        );
        // the method's own overrides keep precedence: they come first
        a.overrides.extend(promoted.iter().map(|l| format!("blk.{l}.*={}", a.budget_high)));
        out["budget"] = serde_json::json!({"bits": budget, "high": a.budget_high, "promoted": promoted, "average_bits": avg});
    }
    let p = a.out.with_extension("sensitivity.json");
    write_atomic(&p, serde_json::to_string_pretty(&out)?.as_bytes())?;
    eprintln!("sensitivity report {}", p.display());
    Ok(())
}

/// `quantize` with the 8-bit family (int8, smoothquant, llm-int8).
fn cmd_quantize_w8(a: QuantizeArgs) -> Result<()> {
    use edgeq_host::calib::w8::{Int8Mode, W8Config, W8Method};
    let t0 = Instant::now();
    let f = ModelFile::open(&a.input)?;
    let model = f.model()?;
    anyhow::ensure!(a.fp8.is_none(), "--fp8 is only available with --method rtn");
    let cfg = W8Config {
        method: match a.method.as_str() {
            "int8" => W8Method::Int8,
            "smoothquant" => W8Method::SmoothQuant,
            _ => W8Method::LlmInt8,
        },
        int8_mode: a.int8.into(),
        sym_threshold: a.sym_threshold,
        convention: int8_convention(&a.int8_scale)?,
        alpha: a.alpha,
        threshold: a.threshold,
    };
    anyhow::ensure!(
        (0.0..=1.0).contains(&cfg.alpha) && cfg.threshold > 0.0 && cfg.threshold.is_finite(),
        "--alpha must be in [0, 1] and --threshold a positive number"
    );
    let asym = cfg.method == W8Method::Int8 && cfg.int8_mode == Int8Mode::Asym;
    let linear = edgeq_core::QuantSpec::per_channel(if asym {
        edgeq_core::Scheme::Q8Asym
    } else {
        edgeq_core::Scheme::Q8Sym
    });
    let embed = quantize::spec_from_name(&a.embed, a.group)?;
    let policy =
        quantize::Policy::new(linear, embed, &a.skip)?.with_mixed(&a.overrides, a.sandwich, model.cfg.n_layers, a.policy.into())?;
    let tok = text::tokenizer(&model)?;
    let calib = match &a.calib {
        Some(p) => {
            let seqlen = a.calib_seqlen.min(model.cfg.max_seq_len as usize);
            let c = edgeq_host::calib::data::load(p, &tok, a.calib_samples, seqlen, a.calib_skip_chars, a.seed)?;
            eprintln!(
                "calibration: {} samples, {} tokens from {}",
                c.samples.len(),
                c.tokens(),
                p.display()
            );
            Some(c)
        }
        None => None,
    };
    let pb = progress(0, &a.method);
    let w8 = edgeq_host::calib::w8::run(&model, calib.as_ref(), &policy, &cfg, &pb).with_context(|| format!("--method {}", a.method))?;
    pb.finish_and_clear();
    let done: std::collections::HashSet<(u16, u16)> = w8.entries.iter().map(|e| (e.layer, e.role as u16)).collect();
    let pb2 = progress(0, "finish");
    let n_acts = w8.acts.len();
    let (w, rtn_reports) = quantize::quantize_rtn_except(
        &model.eqf,
        &policy,
        &done,
        w8.entries.into_iter().map(edgeq_host::tensor_data::owned).collect(),
        Vec::new(),
        w8.acts,
        &pb2,
    )?;
    pb2.finish_and_clear();
    let out_bytes = quantize::write_eqf(&a.out, w)?;
    let secs = t0.elapsed().as_secs_f64();
    for r in &w8.reports {
        eprintln!("{:<24} {:<10} {} err {:.3e}  {}", r.tensor, r.scheme, r.metric, r.rel_err, r.note);
    }
    for r in &rtn_reports {
        eprintln!("{:<24} {:<10} weight err {:.3e}  (rtn)", r.name, r.to, r.rel_err);
    }
    let n_sym = w8.reports.iter().filter(|r| r.scheme.starts_with("q8-")).count();
    let report = serde_json::json!({
        "method": a.method, "bits": 8, "input": a.input, "output": a.out,
        "int8": {"mode": cfg.int8_mode, "sym_threshold": cfg.sym_threshold, "convention": cfg.convention,
                 "symmetric_layers": n_sym, "asymmetric_layers": w8.reports.len() - n_sym},
        "smoothquant": (cfg.method == W8Method::SmoothQuant).then(|| serde_json::json!({"alpha": cfg.alpha})),
        "llm_int8": (cfg.method == W8Method::LlmInt8).then(|| serde_json::json!({"threshold": cfg.threshold})),
        "activation_records": n_acts,
        "calibration": calib.as_ref().map(|c| serde_json::json!({"samples": c.samples.len(), "tokens": c.tokens(), "file": a.calib})),
        "seconds": secs, "peak_rss_mb": edgeq_host::calib::pipeline::peak_rss_mb(), "layers": w8.reports,
        "rtn_tensors": rtn_reports.iter().map(|r| serde_json::json!({"tensor": r.name, "scheme": r.to, "weight_rel_err": r.rel_err})).collect::<Vec<_>>(),
    });
    let rpath = write_report(&a, &report)?;
    eprintln!(
        "{} quantized {} layers ({} symmetric) -> {} ({:.3} MB, {} activation records) in {:.1}s; report {}",
        a.method,
        w8.reports.len(),
        n_sym,
        a.out.display(),
        out_bytes as f64 / 1e6,
        n_acts,
        secs,
        rpath.display()
    );
    Ok(())
}

fn cmd_layer(a: LayerArgs) -> Result<()> {
    if methods::is_w8(&a.method) {
        return cmd_layer_w8(a);
    }
    let t0 = Instant::now();
    let w = edgeq_host::npy::read(&a.weight)?;
    let ma = method_args(&a.method, a.bits, a.group, a.sym, &a.m);
    let x = match &a.acts {
        Some(p) => Some(edgeq_host::npy::read(p)?),
        None if ma.needs_calibration() => anyhow::bail!("--method {} needs --acts X.npy", a.method),
        None => None,
    };
    if let Some(x) = &x {
        anyhow::ensure!(
            x.cols == w.cols,
            "{}: activations have {} features but the weight has {} inputs",
            a.acts.as_ref().unwrap().display(),
            x.cols,
            w.cols
        );
    }
    let (_q, note, deq) = methods::quantize_layer_effective(&ma, &w.data, w.rows, w.cols, x.as_ref().map(|x| &x.data[..]))?;
    let secs = t0.elapsed().as_secs_f64();
    edgeq_host::npy::write(
        &a.out,
        &edgeq_host::npy::Matrix {
            rows: w.rows,
            cols: w.cols,
            data: deq.clone(),
        },
    )?;
    let eval = match (&a.eval_acts, &x) {
        (Some(p), _) => Some(edgeq_host::npy::read(p)?),
        (None, Some(x)) => Some(edgeq_host::npy::Matrix {
            rows: x.rows,
            cols: x.cols,
            data: x.data.clone(),
        }),
        _ => None,
    };
    let err = eval
        .as_ref()
        .map(|e| edgeq_host::algo::output_rel_err(&w.data, &deq, &e.data, w.rows, w.cols));
    let werr = {
        let num: f64 = w.data.iter().zip(&deq).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = w.data.iter().map(|a| (*a as f64).powi(2)).sum();
        num / den.max(f64::MIN_POSITIVE)
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"method": a.method, "bits": a.bits, "group": a.group, "sym": a.sym, "out_rel_err": err, "weight_rel_err": werr, "seconds": secs, "note": note})
        );
    } else {
        println!(
            "{} {}-bit g{} {}: output rel err {} weight rel err {:.4e} ({:.2}s) {}",
            a.method,
            a.bits,
            a.group,
            if a.sym { "sym" } else { "asym" },
            err.map(|e| format!("{e:.6e}"))
                .unwrap_or_else(|| "n/a (no --eval-acts/--acts)".into()),
            werr,
            secs,
            note
        );
    }
    Ok(())
}

/// `edgeq layer` with an 8-bit method.
fn cmd_layer_w8(a: LayerArgs) -> Result<()> {
    let t0 = Instant::now();
    let w = edgeq_host::npy::read(&a.weight)?;
    let read_acts = |p: &PathBuf| -> Result<edgeq_host::npy::Matrix> {
        let x = edgeq_host::npy::read(p)?;
        anyhow::ensure!(
            x.cols == w.cols,
            "{}: activations have {} features but the weight has {} inputs",
            p.display(),
            x.cols,
            w.cols
        );
        Ok(x)
    };
    let x = a.acts.as_ref().map(read_acts).transpose()?;
    let ev = a.eval_acts.as_ref().map(read_acts).transpose()?;
    let eval = ev.as_ref().or(x.as_ref());
    let fp8_scheme = match a.fp8_format.as_str() {
        "e4m3" => edgeq_core::Scheme::Fp8E4M3,
        "e5m2" => edgeq_core::Scheme::Fp8E5M2,
        o => anyhow::bail!("--fp8-format {o}: expected e4m3 or e5m2"),
    };
    let fp8 = match a.fp8_scale.as_str() {
        "tensor" => edgeq_core::QuantSpec {
            granularity: edgeq_core::Granularity::PerTensor,
            ..edgeq_core::QuantSpec::per_channel(fp8_scheme)
        },
        "channel" => edgeq_core::QuantSpec::per_channel(fp8_scheme),
        "block128" => edgeq_core::QuantSpec {
            granularity: edgeq_core::Granularity::Block,
            group: 128,
            ..edgeq_core::QuantSpec::per_channel(fp8_scheme)
        },
        o => anyhow::bail!("--fp8-scale {o}: expected tensor, channel or block128"),
    };
    let args = methods::W8LayerArgs {
        method: a.method.clone(),
        int8: a.int8.into(),
        sym_threshold: a.sym_threshold,
        convention: int8_convention(&a.int8_scale)?,
        fp8,
        alpha: a.alpha,
        threshold: a.threshold,
    };
    let out = methods::w8_layer(
        &args,
        &w.data,
        w.rows,
        w.cols,
        x.as_ref().map(|x| &x.data[..]),
        eval.map(|e| &e.data[..]),
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let m = |rows, cols, data: Vec<f32>| edgeq_host::npy::Matrix { rows, cols, data };
    edgeq_host::npy::write(&a.out, &m(w.rows, w.cols, out.deq.clone()))?;
    let werr = {
        let num: f64 = w.data.iter().zip(&out.deq).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = w.data.iter().map(|a| (*a as f64).powi(2)).sum();
        num / den.max(f64::MIN_POSITIVE)
    };
    // weight-only output error (X Ŵ) and the method's own output error (W8A8: X̂ Ŵ)
    let err = eval.map(|e| edgeq_host::algo::output_rel_err(&w.data, &out.deq, &e.data, w.rows, w.cols));
    let method_err = match (eval, &out.y) {
        (Some(e), Some(y)) => {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (xi, yi) in e.data.chunks_exact(w.cols).zip(y.chunks_exact(w.rows)) {
                for (r, wr) in w.data.chunks_exact(w.cols).enumerate() {
                    let t: f64 = xi.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    num += (t - yi[r] as f64).powi(2);
                    den += t * t;
                }
            }
            Some(num / den.max(f64::MIN_POSITIVE))
        }
        _ => None,
    };
    if let (Some(p), Some(y), Some(e)) = (&a.out_y, &out.y, eval) {
        edgeq_host::npy::write(p, &m(e.rows, w.rows, y.clone()))?;
    } else if a.out_y.is_some() {
        anyhow::bail!("--out-y needs activations to compute the output on (--eval-acts or --acts)");
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"method": a.method, "out_rel_err": err, "method_out_rel_err": method_err, "weight_rel_err": werr,
                "seconds": secs, "note": out.note, "details": out.details})
        );
    } else {
        let f = |e: Option<f64>| {
            e.map(|e| format!("{e:.6e}"))
                .unwrap_or_else(|| "n/a (no --eval-acts/--acts)".into())
        };
        println!(
            "{}: output rel err {} (weights only), {} (as run, activations quantized for W8A8), weight rel err {:.4e} ({:.2}s) {}",
            a.method,
            f(err),
            f(method_err),
            werr,
            secs,
            out.note
        );
    }
    Ok(())
}

fn cmd_calib_acts(a: ActsArgs) -> Result<()> {
    let f = ModelFile::open(&a.model)?;
    let model = f.model()?;
    let t = model
        .eqf
        .tensors()
        .iter()
        .find(|t| t.name_str() == a.layer && t.layer != edgeq_core::format::GLOBAL_LAYER)
        .with_context(|| {
            format!(
                "{}: no block linear layer named '{}' (e.g. blk.0.attn_q, blk.3.ffn_down)",
                a.model.display(),
                a.layer
            )
        })?;
    let role = edgeq_core::TensorRole::from_u16(t.role).context("role")?;
    anyhow::ensure!(role.is_linear(), "{} is not a linear layer", a.layer);
    let tok = text::tokenizer(&model)?;
    let seqlen = a.seqlen.min(model.cfg.max_seq_len as usize);
    let calib = edgeq_host::calib::data::load(&a.text, &tok, a.samples, seqlen, a.skip_chars, a.seed)?;
    let x = edgeq_host::calib::w8::layer_inputs(&model, &calib, t.layer as usize, role)?;
    let cols = t.cols as usize;
    edgeq_host::npy::write(
        &a.out,
        &edgeq_host::npy::Matrix {
            rows: x.len() / cols,
            cols,
            data: x,
        },
    )?;
    eprintln!("{}: {} input rows of {} to {}", a.layer, calib.tokens(), cols, a.out.display());
    Ok(())
}

fn cmd_calib_prepare(a: PrepareArgs) -> Result<()> {
    let f = ModelFile::open(&a.model)?;
    let model = f.model()?;
    let tok = text::tokenizer(&model)?;
    let chat_template = match &a.chat_template {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => serde_json::from_slice::<serde_json::Value>(model.eqf.metadata())
            .ok()
            .and_then(|m| m["chat_template"].as_str().map(String::from)),
    };
    let max_ctx = model.cfg.max_seq_len as usize;
    if a.max_tokens > max_ctx {
        eprintln!(
            "note: --max-tokens {} is beyond the model's context of {max_ctx}; instances are cut to {max_ctx}",
            a.max_tokens
        );
    }
    let opts = edgeq_host::calib::prepare::PrepareOptions {
        field: a.field.clone(),
        stratify_by: a.stratify_by.clone(),
        samples: a.samples,
        max_tokens: a.max_tokens.min(max_ctx),
        min_tokens: a.min_tokens,
        seed: a.seed,
        chat_template,
        skip_bad_lines: a.skip_bad_lines,
    };
    let inputs: Vec<&std::path::Path> = a.inputs.iter().map(|p| p.as_path()).collect();
    let (inst, stats) = edgeq_host::calib::prepare::prepare(&inputs, &tok, &opts)?;
    let mut out = String::new();
    for i in &inst {
        out.push_str(&serde_json::to_string(i)?);
        out.push('\n');
    }
    write_atomic(&a.out, out.as_bytes())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    }
    eprintln!(
        "{} instances, {} tokens (mean {:.1}, max {}) -> {}; read {}, removed: {} duplicates, {} empty, {} too short, {} bad lines; {} truncated",
        stats.instances,
        stats.total_tokens,
        stats.mean_tokens,
        stats.max_tokens,
        a.out.display(),
        stats.read,
        stats.duplicates,
        stats.empty,
        stats.too_short,
        stats.bad_lines,
        stats.truncated
    );
    for (k, n) in &stats.per_stratum {
        eprintln!("  {k}: {n}");
    }
    Ok(())
}
