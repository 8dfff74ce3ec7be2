//! Generation sanity check: greedy continuations of a few fixed prompts,
//! flagged when a quantized model is visibly broken: empty output, bytes
//! that are not text, or a repetition loop.
use anyhow::Result;
use edgeq_runtime::{arena_bytes_with, Activations, KvCache, MatmulOpts, Model, Session, SessionOptions};
use serde::Serialize;

/// The fixed prompts: a story opening, a fact, code.
pub const PROMPTS: [&str; 3] = ["Once upon a time", "The capital of France is", "def fibonacci(n):"];

/// One greedy continuation and what is wrong with it.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompt: String,
    pub text: String,
    pub tokens: usize,
    /// `empty`, `non-text`, `repetition-loop` (none: looks like text).
    pub flags: Vec<&'static str>,
}

/// Greedy (argmax) continuation of `prompt`: up to `n` tokens, stopping at EOS.
pub fn generate(model: &Model<'_>, prompt: &str, n: usize, acts: Activations) -> Result<Generation> {
    let tok = crate::text::tokenizer(model)?;
    let ids = crate::text::encode(&tok, prompt, tok.add_bos_default() || prompt.is_empty())?;
    let seq = (ids.len() + n).min(model.cfg.max_seq_len as usize);
    anyhow::ensure!(ids.len() < seq, "prompt {prompt:?} fills the model's context");
    let kv = KvCache::F32;
    let mut arena = vec![0u64; arena_bytes_with(&model.cfg, seq, 1, kv).div_ceil(8)];
    let opts = SessionOptions {
        kv,
        matmul: MatmulOpts { acts, threads: 1 },
    };
    let mut s = Session::with_options(model, bytemuck::cast_slice_mut(&mut arena), seq, 1, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut next = 0;
    for &t in &ids {
        next = crate::eval::argmax(s.step(t).map_err(|e| anyhow::anyhow!("{e}"))?) as u32;
    }
    let mut out = Vec::new();
    while out.len() < seq - ids.len() {
        if next == model.cfg.eos_id {
            break;
        }
        out.push(next);
        if ids.len() + out.len() >= seq {
            break;
        }
        next = crate::eval::argmax(s.step(next).map_err(|e| anyhow::anyhow!("{e}"))?) as u32;
    }
    let bytes = crate::text::decode(&tok, &out);
    let flags = flags(&out, &bytes);
    Ok(Generation {
        prompt: prompt.to_string(),
        text: String::from_utf8_lossy(&bytes).into_owned(),
        tokens: out.len(),
        flags,
    })
}

/// What is wrong with a generation (token ids and their decoded bytes).
pub fn flags(tokens: &[u32], bytes: &[u8]) -> Vec<&'static str> {
    let mut f = Vec::new();
    let text = std::str::from_utf8(bytes);
    if tokens.is_empty() || bytes.iter().all(|b| b.is_ascii_whitespace()) {
        f.push("empty");
    }
    // A model cut mid-character may end on a partial UTF-8 sequence: allow up to 3 bytes.
    let valid = match text {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && bytes.len() - e.valid_up_to() <= 3,
    };
    let control = String::from_utf8_lossy(bytes)
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    if !valid || control {
        f.push("non-text");
    }
    if repetition_loop(tokens) {
        f.push("repetition-loop");
    }
    f
}

/// Whether the sequence ends in a unit of 1–16 tokens repeated at least
/// three times, spanning at least 12 tokens ("the the the the ...",
/// "I am. I am. I am. ...").
pub fn repetition_loop(tokens: &[u32]) -> bool {
    (1..=16).any(|p| {
        let reps = (3usize).max(12usize.div_ceil(p));
        let span = p * reps;
        span <= tokens.len() && {
            let tail = &tokens[tokens.len() - span..];
            tail.chunks_exact(p).all(|c| c == &tail[..p])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_catch_broken_generations() {
        assert_eq!(flags(&[], b""), vec!["empty"]);
        assert_eq!(flags(&[5, 6, 7], b"a cat sat"), Vec::<&str>::new());
        assert_eq!(flags(&[5], b"\x00\x01"), vec!["non-text"]);
        assert_eq!(flags(&[5], b"ok \xFF\xFE bad"), vec!["non-text"]);
        assert_eq!(flags(&[5], b"cut \xE2\x82"), Vec::<&str>::new()); // partial last character
        let looped: Vec<u32> = (0..20).map(|i| [7, 8, 9][i % 3]).collect();
        assert!(repetition_loop(&looped));
        assert!(repetition_loop(&[1; 12]));
        assert!(!repetition_loop(&[1; 11]));
        let story: Vec<u32> = (0..64).map(|i| (i * 37 % 101) as u32).collect();
        assert!(!repetition_loop(&story));
    }

    #[test]
    fn generates_from_the_tiny_model() {
        let eqf = crate::tiny::model(3).unwrap().to_eqf().unwrap();
        let b = crate::import::AlignedBytes::from(&eqf);
        let m = Model::from_bytes(b.as_bytes()).unwrap();
        let g = generate(&m, PROMPTS[0], 8, Activations::F32).unwrap();
        assert!(g.tokens <= 8);
        let again = generate(&m, PROMPTS[0], 8, Activations::F32).unwrap();
        assert_eq!(g.text, again.text, "greedy is deterministic");
    }
}
