//! `edgeq bench`: kernel throughput against this machine's measured memory
//! bandwidth, every implementation side by side (the scalar reference
//! first), and whole-model decode/prefill speed.
//!
//! Decode streams every weight once per token, so a GEMV's speed is read
//! bandwidth: each kernel row reports weight bytes per second and the
//! fraction of the STREAM-style read bandwidth measured in the same run
//! with the same thread count. Weights are rotated over enough copies to
//! exceed the last-level cache (`cold_bytes`), as in a real decode where a
//! model is far larger than the cache.
use anyhow::Result;
use edgeq_core::quant::quantize;
use edgeq_core::{QuantSpec, TensorView};
use edgeq_kernels::{act_q8, available, par, Implementation, Q8Acts};
use edgeq_runtime::{arena_bytes_with, Activations, KvCache, MatmulOpts, Model, Session, SessionOptions};
use rayon::prelude::*;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Runs `f` until `min_time` has passed (at least `min_iters` times) and
/// returns the fastest and median iteration.
fn time<F: FnMut(usize)>(min_time: Duration, min_iters: usize, mut f: F) -> (f64, f64) {
    let mut t = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while i < min_iters || start.elapsed() < min_time {
        let t0 = Instant::now();
        f(i);
        t.push(t0.elapsed().as_secs_f64());
        i += 1;
    }
    t.sort_by(|a, b| a.total_cmp(b));
    (t[0], t[t.len() / 2])
}

#[derive(Debug, Clone, Serialize)]
pub struct Bandwidth {
    pub threads: usize,
    /// Sum over a buffer far larger than the caches (GB/s = 1e9 B/s).
    pub read_gbs: f64,
    /// STREAM triad `a = b + s·c`, counting 3 arrays (GB/s).
    pub triad_gbs: f64,
}

/// STREAM-style bandwidth with `threads` threads over `bytes` per array.
pub fn bandwidth(threads: usize, bytes: usize, min_time: Duration) -> Bandwidth {
    let n = bytes / 4;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    pool.install(|| {
        let b: Vec<f32> = (0..n).into_par_iter().map(|i| (i % 7) as f32).collect();
        let c: Vec<f32> = (0..n).into_par_iter().map(|i| (i % 5) as f32).collect();
        let mut a = vec![0.0f32; n];
        let chunk = n.div_ceil(threads * 8).max(1024);
        let (read, _) = time(min_time, 3, |_| {
            let s: f32 = b.par_chunks(chunk).map(sum8).sum();
            std::hint::black_box(s);
        });
        let (triad, _) = time(min_time, 3, |_| {
            a.par_chunks_mut(chunk)
                .zip(b.par_chunks(chunk))
                .zip(c.par_chunks(chunk))
                .for_each(|((a, b), c)| {
                    for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                        *a = b + 3.0 * c;
                    }
                });
            std::hint::black_box(&a);
        });
        Bandwidth {
            threads,
            read_gbs: (n * 4) as f64 / read / 1e9,
            triad_gbs: (3 * n * 4) as f64 / triad / 1e9,
        }
    })
}

/// Times `f` and `g` alternately (`f(i)` then `g(i)`) until `min_time` has
/// passed, at least `min_iters` times; the fastest and median of each. Two
/// measurements taken side by side see the same machine: on a shared VM the
/// memory bandwidth drifts by a third within minutes, which a ratio against
/// a bandwidth measured earlier in the run inherits.
fn time_pair<F: FnMut(usize), G: FnMut(usize)>(min_time: Duration, min_iters: usize, mut f: F, mut g: G) -> [(f64, f64); 2] {
    let (mut tf, mut tg) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let mut i = 0;
    while i < min_iters || start.elapsed() < min_time {
        let t0 = Instant::now();
        f(i);
        tf.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        g(i);
        tg.push(t0.elapsed().as_secs_f64());
        i += 1;
    }
    [tf, tg].map(|mut t| {
        t.sort_by(|a, b| a.total_cmp(b));
        (t[0], t[t.len() / 2])
    })
}

/// Wrapping sum of `v` (weight codes, not floats) by [`quarters`].
fn sum_words(v: &[u64]) -> u64 {
    quarters(v, 0, u64::wrapping_add)
}

/// f32 sum by [`quarters`].
fn sum8(v: &[f32]) -> f32 {
    quarters(v, 0.0, |a, b| a + b)
}

/// Sum with 16 independent accumulators over 4 interleaved streams
/// (quarters of `v` read side by side, as a GEMV reads weight rows and
/// scales): vectorizes, and is bound neither by add latency nor by a single
/// stream's prefetcher.
#[inline(always)]
fn quarters<T: Copy>(v: &[T], zero: T, add: impl Fn(T, T) -> T) -> T {
    let q = v.len() / 16 * 4;
    let (a, rest) = v.split_at(q);
    let (b, rest) = rest.split_at(q);
    let (c, rest) = rest.split_at(q);
    let (d, tail) = rest.split_at(q);
    let mut acc = [[zero; 4]; 4];
    for (((a, b), c), d) in a
        .chunks_exact(4)
        .zip(b.chunks_exact(4))
        .zip(c.chunks_exact(4))
        .zip(d.chunks_exact(4))
    {
        for k in 0..4 {
            acc[0][k] = add(acc[0][k], a[k]);
            acc[1][k] = add(acc[1][k], b[k]);
            acc[2][k] = add(acc[2][k], c[k]);
            acc[3][k] = add(acc[3][k], d[k]);
        }
    }
    acc.iter().flatten().chain(tail).fold(zero, |s, &x| add(s, x))
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub shape: String,
    pub scheme: String,
    pub implementation: String,
    pub activations: String,
    pub threads: usize,
    /// Activation vectors per product: 1 is a GEMV (decode), more a GEMM
    /// (prefill: the weights are read once for all of them).
    pub tokens: usize,
    /// Fastest product, microseconds.
    pub us: f64,
    pub median_us: f64,
    /// Weight bytes (codes, scales, mins) per second, GB/s.
    pub weight_gbs: f64,
    /// `weight_gbs` / read bandwidth with the same thread count.
    pub of_bandwidth: f64,
    /// The same number of bytes read from another (cold) copy of the
    /// weights by a plain sum (`sum_words`) on the same threads, timed
    /// alternately with the kernel (fastest, GB/s).
    pub paired_read_gbs: f64,
    /// `weight_gbs` / `paired_read_gbs`: the kernel against a plain read
    /// of its bytes measured side by side, free of the drift between the
    /// run's bandwidth measurement and this row.
    pub of_paired_read: f64,
    /// Multiply-adds per second (rows · cols · tokens / time), billions.
    pub gmacs: f64,
}

/// A quantized weight in 64-byte-aligned storage, copied `copies` times.
struct Weights {
    buf: Vec<u64>,
    len: usize,
    stride: usize,
    copies: usize,
    spec: QuantSpec,
    rows: u32,
    cols: u32,
}

impl Weights {
    fn new(spec: QuantSpec, rows: usize, cols: usize, cold_bytes: usize) -> Result<Weights> {
        let len = spec.layout(rows as u32, cols as u32)?.total_bytes as usize;
        let stride = len.div_ceil(64) * 64;
        let copies = (cold_bytes / stride).max(1);
        let mut buf = vec![0u64; stride * copies / 8];
        let src: Vec<f32> = (0..rows * cols)
            .into_par_iter()
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761) >> 8;
                (h as f32 / (1u32 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        quantize(spec, rows as u32, cols as u32, &src, &mut bytes[..len])?;
        let (first, rest) = bytes.split_at_mut(stride);
        rest.par_chunks_mut(stride).for_each(|c| c[..len].copy_from_slice(&first[..len]));
        Ok(Weights {
            buf,
            len,
            stride,
            copies,
            spec,
            rows: rows as u32,
            cols: cols as u32,
        })
    }
    /// The words of copy `k` (rounded down to whole words).
    fn words(&self, k: usize) -> &[u64] {
        let o = (k % self.copies) * self.stride / 8;
        &self.buf[o..o + self.len / 8]
    }
    fn view(&self, k: usize) -> TensorView<'_> {
        let bytes: &[u8] = bytemuck::cast_slice(&self.buf);
        let o = (k % self.copies) * self.stride;
        TensorView::new(self.spec, self.rows, self.cols, &bytes[o..o + self.len]).expect("layout")
    }
}

pub struct KernelBench {
    pub shapes: Vec<(usize, usize)>,
    pub specs: Vec<QuantSpec>,
    pub threads: Vec<usize>,
    /// Token counts (1: GEMV, decode; more: GEMM, prefill).
    pub tokens: Vec<usize>,
    pub min_time: Duration,
    pub cold_bytes: usize,
}

/// GEMV (one token) or GEMM (`tokens` > 1) of every shape × token count ×
/// scheme × implementation × activation precision × thread count.
pub fn kernels(cfg: &KernelBench, bw: &[Bandwidth], mut on_row: impl FnMut(&KernelRow)) -> Result<Vec<KernelRow>> {
    let mut rows_out = Vec::new();
    for &(rows, cols) in &cfg.shapes {
        for &spec in &cfg.specs {
            let w = Weights::new(spec, rows, cols, cfg.cold_bytes)?;
            let int = edgeq_kernels::scalar_int::supported(&w.view(0));
            let imps: Vec<Implementation> = available().collect();
            for &t in &cfg.tokens {
                let t = t.max(1);
                let x: Vec<f32> = (0..t * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
                let mut abuf = vec![0.0f32; act_q8::words(t, cols)];
                let mut acts = Q8Acts::carve(&mut abuf, t, cols).expect("carve");
                acts.quantize(&x);
                let mut y = vec![0.0f32; t * rows];
                let mut scratch = vec![0.0f32; cols];
                for &threads in &cfg.threads {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
                    let read = bw.iter().find(|b| b.threads == threads).map_or(f64::NAN, |b| b.read_gbs);
                    for &imp in &imps {
                        // The f16c variant only differs for F16 weights.
                        if imp == Implementation::Avx2Fma
                            && imps.contains(&Implementation::Avx2FmaF16c)
                            && spec.scheme != edgeq_core::Scheme::F16
                        {
                            continue;
                        }
                        // Threads always run the dispatched implementation.
                        if threads > 1 && imp != edgeq_kernels::implementation() {
                            continue;
                        }
                        for q8 in [false, true] {
                            if q8 && !int {
                                continue;
                            }
                            // The plain read takes the copy half a rotation
                            // away from the kernel's, so it is as cold.
                            let chunk = (w.len / 8).div_ceil(threads * 8).max(1024);
                            let [(best, median), (read_best, _)] = pool.install(|| {
                                time_pair(
                                    cfg.min_time,
                                    5,
                                    |k| {
                                        let v = w.view(k);
                                        match (q8, threads) {
                                            (true, 1) => {
                                                edgeq_kernels::matmul_q8_with(imp, &mut y, &v, &acts, 0..rows);
                                            }
                                            (false, 1) => {
                                                edgeq_kernels::matmul_with(imp, &mut y, &v, &x, t, 0..rows, &mut scratch);
                                            }
                                            (true, _) => par::matmul_q8(threads, &mut y, &v, &acts),
                                            (false, _) => par::matmul(threads, &mut y, &v, &x, t, &mut scratch),
                                        }
                                        std::hint::black_box(&y);
                                    },
                                    |k| {
                                        let words = w.words(k + w.copies / 2);
                                        let s = if threads == 1 {
                                            sum_words(words)
                                        } else {
                                            words.par_chunks(chunk).map(sum_words).reduce(|| 0, u64::wrapping_add)
                                        };
                                        std::hint::black_box(s);
                                    },
                                )
                            });
                            let gbs = w.len as f64 / best / 1e9;
                            let paired = (w.len / 8 * 8) as f64 / read_best / 1e9;
                            let row = KernelRow {
                                shape: format!("{rows}x{cols}"),
                                scheme: crate::quantize::spec_name(&spec),
                                implementation: imp.name().to_string(),
                                activations: if q8 { "q8" } else { "f32" }.to_string(),
                                threads,
                                tokens: t,
                                us: best * 1e6,
                                median_us: median * 1e6,
                                weight_gbs: gbs,
                                of_bandwidth: gbs / read,
                                paired_read_gbs: paired,
                                of_paired_read: gbs / paired,
                                gmacs: (rows * cols * t) as f64 / best / 1e9,
                            };
                            on_row(&row);
                            rows_out.push(row);
                        }
                    }
                }
            }
        }
    }
    Ok(rows_out)
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub test: String,
    pub activations: String,
    /// KV cache precision.
    pub kv: String,
    pub threads: usize,
    pub tokens_per_second: f64,
    pub median_tokens_per_second: f64,
}

/// llama-bench's tests on one model: `tg N` decodes N tokens one at a time
/// from an empty context, `pp N` feeds an N-token prompt in one batch.
pub fn model(m: &Model<'_>, test: (&str, usize), acts: Activations, kv: KvCache, threads: usize, reps: usize) -> Result<ModelRow> {
    let (kind, n) = test;
    let seq = (n + 1).min(m.cfg.max_seq_len as usize);
    let batch = if kind == "pp" { seq } else { 1 };
    let mut arena = vec![0u64; arena_bytes_with(&m.cfg, seq, batch, kv).div_ceil(8)];
    let opts = SessionOptions {
        kv,
        matmul: MatmulOpts { acts, threads },
    };
    let mut s = Session::with_options(m, bytemuck::cast_slice_mut(&mut arena), seq, batch, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let vocab = m.cfg.vocab_size;
    let tokens: Vec<u32> = (0..seq as u32).map(|i| (i * 7919 + 1) % vocab).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        s.reset();
        let t0 = Instant::now();
        pool.install(|| -> Result<()> {
            if kind == "pp" {
                s.forward(&tokens[..n.min(seq)], None).map_err(|e| anyhow::anyhow!("{e}"))?;
            } else {
                for &t in &tokens[..n.min(seq)] {
                    s.step(t).map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            Ok(())
        })?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let n = n.min(seq) as f64;
    Ok(ModelRow {
        test: format!("{kind}{}", n as usize),
        activations: match acts {
            Activations::F32 => "f32",
            Activations::Q8 => "q8",
        }
        .to_string(),
        kv: kv.name().to_string(),
        threads,
        tokens_per_second: n / times[0],
        median_tokens_per_second: n / times[times.len() / 2],
    })
}
