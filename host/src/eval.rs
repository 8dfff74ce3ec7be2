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
    /// Mean `KL(P_ref ‖ P_model)` per scored token, nats (with a reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// Fraction of scored positions where the most likely next token equals
    /// the reference's (with a reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
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
    let mut r = evaluate(&[model], false, tokens, protocol, max_tokens, acts, kv, progress)?;
    Ok(r.remove(0))
}

/// Scores several models on the same windows of the same tokens. With
/// `reference`, `models[0]` is the reference: every other model also gets
/// the mean KL divergence `KL(P_ref ‖ P_model)` per scored token and the
/// fraction of positions whose most likely next token agrees with the
/// reference's (the reference's own row has KL 0 and agreement 1). Windows
/// run in parallel; each holds one window of logits per model at a time.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    models: &[&Model<'_>],
    reference: bool,
    tokens: &[u32],
    protocol: Protocol,
    max_tokens: Option<usize>,
    acts: Activations,
    kv: KvCache,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<PplResult>> {
    let t0 = std::time::Instant::now();
    anyhow::ensure!(!models.is_empty(), "no model to evaluate");
    let max_seq = models.iter().map(|m| m.cfg.max_seq_len as usize).min().unwrap_or(0);
    let vocab = models[0].cfg.vocab_size as usize;
    anyhow::ensure!(
        models.iter().all(|m| m.cfg.vocab_size as usize == vocab),
        "the models have different vocabularies; they cannot be scored on the same tokens"
    );
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
    progress.set_length((plan.len() * models.len()) as u64);
    // Per window, per model: (Σ nll, Σ kl, top-1 agreements, count).
    type Sums = Vec<(f64, f64, usize, usize)>;
    let per_window: Vec<Result<Sums>> = plan
        .par_iter()
        .map(|&(start, len, first)| {
            let mut input = tokens[start..start + len - 1].to_vec();
            if let Some(b) = chunk_bos {
                input[0] = b;
            }
            let end = match max_tokens {
                Some(limit) => (len - 1).min(limit.saturating_sub(start)).max(first),
                None => len - 1,
            };
            let mut ref_logits: Vec<f32> = Vec::new();
            let mut sums = Vec::with_capacity(models.len());
            for (mi, model) in models.iter().enumerate() {
                let mut arena = vec![0u64; arena_bytes_with(&model.cfg, len, len, kv).div_ceil(8)];
                let opts = SessionOptions {
                    kv,
                    matmul: MatmulOpts { acts, threads: 1 },
                };
                let mut s = Session::with_options(model, bytemuck::cast_slice_mut(&mut arena), len, len, opts)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut logits = vec![0.0f32; (len - 1) * vocab];
                s.forward(&input, Some(&mut logits)).map_err(|e| anyhow::anyhow!("{e}"))?;
                let (mut nll, mut kl, mut agree) = (0.0f64, 0.0f64, 0usize);
                for i in first..end {
                    let row = &logits[i * vocab..(i + 1) * vocab];
                    nll += nll_of(row, tokens[start + i + 1] as usize);
                    if reference && mi > 0 {
                        let r = &ref_logits[i * vocab..(i + 1) * vocab];
                        kl += kl_of(r, row);
                        agree += (argmax(r) == argmax(row)) as usize;
                    } else if reference {
                        agree += 1;
                    }
                }
                sums.push((nll, kl, agree, end.saturating_sub(first)));
                if reference && mi == 0 {
                    ref_logits = logits;
                }
                progress.inc(1);
            }
            Ok(sums)
        })
        .collect();
    let mut totals = vec![(0.0f64, 0.0f64, 0usize, 0usize); models.len()];
    for r in per_window {
        for (t, w) in totals.iter_mut().zip(r?) {
            *t = (t.0 + w.0, t.1 + w.1, t.2 + w.2, t.3 + w.3);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let fed: usize = plan.iter().map(|p| p.1 - 1).sum();
    Ok(totals
        .into_iter()
        .map(|(nll, kl, agree, count)| {
            let mean = nll / count.max(1) as f64;
            PplResult {
                mean_nll: mean,
                ppl: mean.exp(),
                tokens: count,
                text_tokens: tokens.len(),
                windows: plan.len(),
                window,
                stride,
                protocol: name,
                kl: reference.then(|| kl / count.max(1) as f64),
                top1_agreement: reference.then(|| agree as f64 / count.max(1) as f64),
                seconds: secs,
                tokens_per_second: (fed * models.len()) as f64 / secs,
                kv: kv.name(),
            }
        })
        .collect())
}

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// `KL(softmax(p) ‖ softmax(q))` in nats, in f64.
pub fn kl_of(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let lse = |l: &[f32]| {
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max
    };
    let (lp, lq) = (lse(p_logits), lse(q_logits));
    p_logits
        .iter()
        .zip(q_logits)
        .map(|(&a, &b)| {
            let la = a as f64 - lp;
            la.exp() * (la - (b as f64 - lq))
        })
        .sum::<f64>()
        .max(0.0)
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
    fn kl_and_argmax() {
        let p = [1.0f32, 2.0, 3.0];
        assert!(super::kl_of(&p, &p).abs() < 1e-12);
        assert!((super::kl_of(&p, &[1.0, 2.0, 3.0].map(|x: f32| x + 5.0))).abs() < 1e-12); // shift-invariant
        let q = [3.0f32, 2.0, 1.0];
        let (ps, qs) = ([0.0900306f64, 0.2447285, 0.6652410], [0.6652410f64, 0.2447285, 0.0900306]);
        let want: f64 = ps.iter().zip(&qs).map(|(a, b)| a * (a / b).ln()).sum();
        assert!((super::kl_of(&p, &q) - want).abs() < 1e-6, "{} vs {want}", super::kl_of(&p, &q));
        assert_eq!((super::argmax(&p), super::argmax(&q), super::argmax(&[2.0, 2.0])), (2, 0, 0));
    }

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
