//! Calibration samples: token sequences cut from a text file or from the
//! JSONL that `edgeq calib prepare` writes (`{"text": ...}` per line).
use anyhow::{bail, Context, Result};
use edgeq_runtime::tokenizer::Tokenizer;
use std::path::Path;

/// Token sequences the calibration forward passes run on.
#[derive(Debug, Clone)]
pub struct CalibSet {
    pub samples: Vec<Vec<u32>>,
}

impl CalibSet {
    pub fn tokens(&self) -> usize {
        self.samples.iter().map(|s| s.len()).sum()
    }
}

/// SplitMix64: a tiny seeded generator for reproducible sampling.
pub struct SplitMix(pub u64);
impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Loads `n_samples` sequences of `seqlen` tokens (BOS first when the
/// tokenizer adds one). Plain text: the text (after skipping `skip_chars`
/// characters, so calibration can be disjoint from an evaluation slice) is
/// tokenized once and windows start at seeded random offsets, as GPTQ's
/// `get_wikitext2` does. JSONL: one sample per line (`text` field), cut to
/// `seqlen`; lines are taken in order.
pub fn load(path: &Path, tok: &Tokenizer<'_>, n_samples: usize, seqlen: usize, skip_chars: usize, seed: u64) -> Result<CalibSet> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("cannot read calibration file {}", path.display()))?;
    let bos = tok.add_bos_default() && tok.bos().is_some();
    let is_jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    let mut samples = Vec::new();
    if is_jsonl {
        for (i, line) in raw.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
            let text = v["text"]
                .as_str()
                .with_context(|| format!("{}:{}: no \"text\" field (run `edgeq calib prepare` first)", path.display(), i + 1))?;
            let mut t = crate::text::encode(tok, text, bos)?;
            t.truncate(seqlen);
            if t.len() >= 2 {
                samples.push(t);
            }
            if samples.len() == n_samples {
                break;
            }
        }
    } else {
        let text: String = raw.chars().skip(skip_chars).collect();
        let all = crate::text::encode(tok, &text, false)?;
        let body = seqlen - usize::from(bos);
        if all.len() <= body {
            bail!(
                "{}: only {} tokens after skipping {skip_chars} characters; need more than {body}",
                path.display(),
                all.len()
            );
        }
        let mut rng = SplitMix(seed);
        for _ in 0..n_samples {
            let start = rng.below(all.len() - body);
            let mut s = Vec::with_capacity(seqlen);
            if bos {
                s.push(tok.bos().unwrap_or(0));
            }
            s.extend_from_slice(&all[start..start + body]);
            samples.push(s);
        }
    }
    if samples.is_empty() {
        bail!("{}: no calibration samples", path.display());
    }
    Ok(CalibSet { samples })
}
