//! Perplexity: the mean negative log-likelihood of a text under the model,
//! computed with the runtime's own forward pass over windows of the token
//! stream, windows evaluated in parallel (one session each).
use anyhow::Result;
use edgeq_runtime::{arena_bytes_with, Activations, KvCache, MatmulOpts, Model, Session, SessionOptions};
use rayon::prelude::*;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct PplResult {
    pub mean_nll: f64,
    pub ppl: f64,
    /// Tokens scored (predicted).
    pub tokens: usize,
    /// Tokens in the encoded text.
    pub text_tokens: usize,
    pub windows: usize,
    pub window: usize,
    pub stride: usize,
    /// `sliding` (every token scored once) or `llama-cpp` (llama-perplexity's chunks).
    pub protocol: &'static str,
    pub seconds: f64,
    pub tokens_per_second: f64,
    /// KV cache precision of the sessions (`f32`, `f16`, `q8`).
    pub kv: &'static str,
}

/// Windows of `window` tokens starting every `stride` tokens; each window
/// scores the tokens that no earlier window scored (all of its predictions
/// when `stride == window`). Consecutive windows share one token so that
/// every token after the first is predicted exactly once.
pub fn plan_windows(n_tokens: usize, window: usize, stride: usize, max_tokens: Option<usize>) -> Vec<(usize, usize, usize)> {
    // (start, len, first scored prediction index within the window)
    let mut out = Vec::new();
    let mut scored_until = 0; // predictions of tokens[1..=scored_until] done
    let mut start = 0;
    let limit = max_tokens.unwrap_or(usize::MAX);
    while start + 1 < n_tokens && scored_until < limit {
        let len = (window + 1).min(n_tokens - start);
        let first = scored_until.saturating_sub(start); // predictions [first, len-1)
        out.push((start, len, first));
        scored_until = start + len - 1;
        if start + len >= n_tokens {
            break;
        }
        start += stride;
    }
    out
}

/// llama.cpp's `llama-perplexity` protocol: the token stream is cut into
/// `floor(n / ctx)` disjoint chunks of `ctx` tokens; each chunk is evaluated
/// from an empty cache and scores only its second half (the predictions at
/// positions `ctx/2 .. ctx-1`, i.e. `ctx - 1 - ctx/2` tokens per chunk). When
/// the model adds BOS, the first token of every chunk is replaced by BOS
/// (see [`Protocol::LlamaCpp`]).
pub fn plan_llama_cpp_chunks(n_tokens: usize, ctx: usize) -> Vec<(usize, usize, usize)> {
    if ctx < 2 {
        return Vec::new();
    }
    (0..n_tokens / ctx).map(|i| (i * ctx, ctx, ctx / 2)).collect()
}

/// Which tokens are scored, with what context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Windows of `window` tokens every `stride` tokens, every token after
    /// the first predicted exactly once ([`plan_windows`]).
    Sliding { window: usize, stride: usize },
    /// Exactly the tokens `llama-perplexity -c ctx` scores, with the first
    /// token of each chunk replaced by `bos` when given
    /// ([`plan_llama_cpp_chunks`]): numbers comparable one to one.
    LlamaCpp { ctx: usize, bos: Option<u32> },
}

pub fn perplexity(
    model: &Model<'_>,
    tokens: &[u32],
    protocol: Protocol,
    max_tokens: Option<usize>,
    acts: Activations,
    kv: KvCache,
    progress: &indicatif::ProgressBar,
) -> Result<PplResult> {
    let t0 = std::time::Instant::now();
    let max_seq = model.cfg.max_seq_len as usize;
    let (plan, window, stride, chunk_bos, name) = match protocol {
        Protocol::Sliding { window, stride } => {
            let window = window.min(max_seq - 1).max(1);
            let stride = stride.clamp(1, window);
            (
                plan_windows(tokens.len(), window, stride, max_tokens),
                window,
                stride,
                None,
                "sliding",
            )
        }
        Protocol::LlamaCpp { ctx, bos } => {
            anyhow::ensure!(
                (2..=max_seq).contains(&ctx),
                "--protocol llama-cpp: a context of {ctx} tokens needs 2..={max_seq} (the model's context length)"
            );
            anyhow::ensure!(
                tokens.len() >= 2 * ctx,
                "--protocol llama-cpp: the text has {} tokens; llama-perplexity needs at least 2 x {ctx} = {}",
                tokens.len(),
                2 * ctx
            );
            (plan_llama_cpp_chunks(tokens.len(), ctx), ctx, ctx, bos, "llama-cpp")
        }
    };
    anyhow::ensure!(!plan.is_empty(), "text too short: {} tokens, need at least 2", tokens.len());
    progress.set_length(plan.len() as u64);
    let vocab = model.cfg.vocab_size as usize;
    let per_window: Vec<Result<(f64, usize)>> = plan
        .par_iter()
        .map(|&(start, len, first)| {
            let seq = len; // positions fed
            let mut arena = vec![0u64; arena_bytes_with(&model.cfg, seq, seq, kv).div_ceil(8)];
            let opts = SessionOptions {
                kv,
                matmul: MatmulOpts { acts, threads: 1 },
            };
            let mut s =
                Session::with_options(model, bytemuck::cast_slice_mut(&mut arena), seq, seq, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut logits = vec![0.0f32; (len - 1) * vocab];
            let mut input = tokens[start..start + len - 1].to_vec();
            if let Some(b) = chunk_bos {
                input[0] = b;
            }
            s.forward(&input, Some(&mut logits)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut nll = 0.0f64;
            let mut count = 0;
            for i in first..len - 1 {
                if let Some(limit) = max_tokens {
                    if start + i >= limit {
                        break;
                    }
                }
                let row = &logits[i * vocab..(i + 1) * vocab];
                nll += nll_of(row, tokens[start + i + 1] as usize);
                count += 1;
            }
            progress.inc(1);
            Ok((nll, count))
        })
        .collect();
    let (mut total, mut count) = (0.0, 0);
    for r in per_window {
        let (n, c) = r?;
        total += n;
        count += c;
    }
    let mean = total / count as f64;
    let secs = t0.elapsed().as_secs_f64();
    Ok(PplResult {
        mean_nll: mean,
        ppl: mean.exp(),
        tokens: count,
        text_tokens: tokens.len(),
        windows: plan.len(),
        window,
        stride,
        protocol: name,
        seconds: secs,
        tokens_per_second: plan.iter().map(|p| p.1 - 1).sum::<usize>() as f64 / secs,
        kv: kv.name(),
    })
}

/// −log softmax(logits)[target], in f64.
pub fn nll_of(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    lse - logits[target] as f64
}

#[cfg(test)]
mod tests {
    use super::{plan_llama_cpp_chunks, plan_windows};

    #[test]
    fn llama_cpp_chunks_score_the_second_half_of_each_full_chunk() {
        // 1100 tokens, ctx 512: 2 chunks (the 76-token tail is dropped), 255 scored each.
        let plan = plan_llama_cpp_chunks(1100, 512);
        assert_eq!(plan, vec![(0, 512, 256), (512, 512, 256)]);
        let scored: usize = plan.iter().map(|&(_, len, first)| len - 1 - first).sum();
        assert_eq!(scored, 2 * 255);
        assert_eq!(plan_llama_cpp_chunks(1100, 1), vec![]);
        assert_eq!(plan_llama_cpp_chunks(511, 512), vec![]);
    }

    #[test]
    fn windows_score_every_token_once() {
        for (n, w, s) in [(10, 4, 4), (10, 4, 2), (11, 3, 1), (2, 8, 8), (1000, 256, 128)] {
            let plan = plan_windows(n, w, s, None);
            let mut scored = vec![0; n];
            for (start, len, first) in plan {
                assert!(len <= w + 1);
                for i in first..len - 1 {
                    scored[start + i + 1] += 1;
                }
            }
            assert_eq!(scored[0], 0);
            assert!(scored[1..].iter().all(|&c| c == 1), "{n} {w} {s}: {scored:?}");
        }
    }
}
