//! Byte-level BPE encode (GPT-2 / HF `tokenizers`).
//!
//! 1. Special / added tokens that occur literally in the text are split out
//!    as whole tokens (leftmost match, longest on ties of position, like HF's
//!    leftmost-longest added-vocabulary matcher). `lstrip` / `rstrip` /
//!    `single_word` options of HF added tokens are not supported.
//! 2. The text between them is pre-tokenized (see `pretokenize`).
//! 3. Each pre-token starts as one token per byte and the adjacent pair with
//!    the lowest merge rank is merged (leftmost on ties) until none remains.
//!    With `FLAG_IGNORE_MERGES` a pre-token that is itself a token is emitted
//!    whole first (Llama-3).
//!
//! No Unicode normalization is applied (Qwen2's tokenizer specifies NFC; the
//! host must normalize such input if it may be non-NFC).

use super::merge::{merge_in_place, Merger};
use super::pretokenize::for_each_pretoken;
use super::{push, Tokenizer, TokenizerError, FLAG_IGNORE_MERGES, FLAG_INDIVIDUAL_DIGITS};

pub(crate) fn encode(tok: &Tokenizer<'_>, text: &str, out: &mut [u32], mut n: usize) -> Result<usize, TokenizerError> {
    let bytes = text.as_bytes();
    let mut chunk_start = 0;
    if tok.n_specials() > 0 {
        // First bytes of all specials, to skip most positions cheaply.
        let mut first = [0u32; 8];
        for i in 0..tok.n_specials() {
            if let Some(&b) = tok.piece(tok.special_id(i)).first() {
                first[(b >> 5) as usize] |= 1 << (b & 31);
            }
        }
        let mut p = 0;
        while p < bytes.len() {
            let b = bytes[p];
            if first[(b >> 5) as usize] & (1 << (b & 31)) != 0 && text.is_char_boundary(p) {
                if let Some((id, len)) = match_special(tok, &bytes[p..]) {
                    encode_chunk(tok, text.get(chunk_start..p).unwrap_or(""), out, &mut n)?;
                    push(out, &mut n, id)?;
                    p += len;
                    chunk_start = p;
                    continue;
                }
            }
            p += 1;
        }
    }
    encode_chunk(tok, text.get(chunk_start..).unwrap_or(""), out, &mut n)?;
    Ok(n)
}

/// The longest special token that `s` starts with.
fn match_special(tok: &Tokenizer<'_>, s: &[u8]) -> Option<(u32, usize)> {
    let first = *s.first()?;
    let ns = tok.n_specials();
    // Specials are sorted by bytes: find the block starting with `first`.
    let lo = partition(ns, |i| tok.piece(tok.special_id(i)).first().is_some_and(|&b| b < first));
    let mut best: Option<(u32, usize)> = None;
    for i in lo..ns {
        let id = tok.special_id(i);
        let p = tok.piece(id);
        if p.first() != Some(&first) {
            break;
        }
        if s.starts_with(p) && best.is_none_or(|(_, l)| p.len() > l) {
            best = Some((id, p.len()));
        }
    }
    best
}

/// First index in `0..n` for which `pred` is false (`pred` monotone).
fn partition(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

fn encode_chunk(tok: &Tokenizer<'_>, chunk: &str, out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
    let digits = tok.flags & FLAG_INDIVIDUAL_DIGITS != 0;
    for_each_pretoken(chunk, tok.pretok, digits, |w| encode_word(tok, w.as_bytes(), out, n))
}

fn encode_word(tok: &Tokenizer<'_>, word: &[u8], out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
    if word.is_empty() {
        return Ok(());
    }
    if word.len() > 1 && tok.flags & FLAG_IGNORE_MERGES != 0 {
        if let Some(id) = tok.lookup(word) {
            return push(out, n, id);
        }
    }
    let start = *n;
    for &b in word {
        // Byte-level vocabularies may lack bytes that never occur in UTF-8
        // text (SmolLM2 has no 0xC0, 0xF5..=0xFF, ...); such bytes are
        // dropped, as HF `tokenizers` does when the model has no unk token.
        if let Some(id) = tok.lookup(&[b]) {
            push(out, n, id)?;
        }
    }
    let count = *n - start;
    let buf = out.get_mut(start..).ok_or(TokenizerError::OutputTooSmall)?;
    *n = start + merge_in_place(&BpeMerger(tok), buf, count);
    Ok(())
}

struct BpeMerger<'t, 'a>(&'t Tokenizer<'a>);

impl Merger for BpeMerger<'_, '_> {
    fn find(&self, left: u32, right: u32) -> Option<u32> {
        self.0.find_merge(left, right).map(|i| i as u32)
    }

    fn key(&self, handle: u32) -> u32 {
        self.0.merge_entry(handle as usize).2
    }

    fn result(&self, handle: u32) -> u32 {
        self.0.merge_entry(handle as usize).3
    }
}
