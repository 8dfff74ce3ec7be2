//! llama2.c `run.c` `encode()` semantics.
//!
//! 1. BOS (done by the caller, [`super::Tokenizer::encode`]);
//! 2. if the text is non-empty and `FLAG_ADD_DUMMY_PREFIX` is set, `" "`;
//! 3. every UTF-8 character's token, or, when the character is not in the
//!    vocabulary, one byte-fallback token per byte: the id of `<0xNN>` if the
//!    vocabulary has it, else `byte + 3` (llama2.c);
//! 4. repeatedly merge the adjacent pair whose concatenation is a token with
//!    the highest score (the leftmost on ties; scores must be `> -1e10`, as
//!    llama2.c's initial `best_score`), until none. Like llama2.c the merge
//!    pass runs over the whole sequence, BOS included.

use super::merge::{merge_in_place, Merger};
use super::{push, Tokenizer, TokenizerError, FLAG_ADD_DUMMY_PREFIX};

pub(crate) fn encode(tok: &Tokenizer<'_>, text: &str, out: &mut [u32], mut n: usize) -> Result<usize, TokenizerError> {
    if !tok.sp_word_split {
        if !text.is_empty() && tok.flags & FLAG_ADD_DUMMY_PREFIX != 0 {
            push_char(tok, ' ', out, &mut n)?;
        }
        for c in text.chars() {
            push_char(tok, c, out, &mut n)?;
        }
        return Ok(merge_in_place(&SpMerger(tok), out, n));
    }
    // No piece has an interior space, so no merge crosses the start of a
    // word (a space and what follows it): merging each word on its own is
    // the whole-text result (the leftmost-best order within a word is
    // unchanged), in time linear in the number of words. The first "word"
    // includes what the caller already pushed (BOS), as llama2.c merges it too.
    let mut start = 0;
    let mut chars = text.chars();
    let dummy = !text.is_empty() && tok.flags & FLAG_ADD_DUMMY_PREFIX != 0;
    let mut next = if dummy { Some(' ') } else { chars.next() };
    while let Some(c) = next {
        if c == ' ' && n > start {
            let merged = merge_in_place(&SpMerger(tok), out.get_mut(start..).unwrap_or(&mut []), n - start);
            n = start + merged;
            start = n;
        }
        push_char(tok, c, out, &mut n)?;
        next = chars.next();
    }
    let merged = merge_in_place(&SpMerger(tok), out.get_mut(start..).unwrap_or(&mut []), n - start);
    Ok(start + merged)
}

fn push_char(tok: &Tokenizer<'_>, c: char, out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
    let mut buf = [0u8; 4];
    let s = c.encode_utf8(&mut buf).as_bytes();
    if let Some(id) = tok.lookup(s) {
        return push(out, n, id);
    }
    for &b in s {
        push(out, n, byte_fallback(tok, b)?)?;
    }
    Ok(())
}

/// The token for raw byte `b`: `<0xNN>` if present, else `b + 3`.
pub(crate) fn byte_fallback(tok: &Tokenizer<'_>, b: u8) -> Result<u32, TokenizerError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let name = [b'<', b'0', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize], b'>'];
    if let Some(id) = tok.lookup(&name) {
        return Ok(id);
    }
    let id = b as u32 + 3;
    if (id as usize) < tok.vocab_size() {
        Ok(id)
    } else {
        Err(TokenizerError::NoByteFallback)
    }
}

struct SpMerger<'t, 'a>(&'t Tokenizer<'a>);

/// llama2.c's initial `best_score`: a pair must score strictly above it.
const MIN_SCORE: f32 = -1e10;

impl Merger for SpMerger<'_, '_> {
    fn find(&self, left: u32, right: u32) -> Option<u32> {
        let t = self.0;
        let id = t.lookup_concat(t.piece(left), t.piece(right))?;
        // NaN and scores <= -1e10 never merge, exactly as `score > best_score`.
        if t.score(id)? > MIN_SCORE {
            Some(id)
        } else {
            None
        }
    }

    fn key(&self, handle: u32) -> u32 {
        let s = self.0.score(handle).unwrap_or(MIN_SCORE);
        // -0.0 and 0.0 tie, as in a float comparison.
        let s = if s == 0.0 { 0.0f32 } else { s };
        let bits = s.to_bits();
        // Total order of non-NaN floats as u32, then inverted: higher score
        // -> smaller key.
        let ordered = if bits & 0x8000_0000 != 0 { !bits } else { bits | 0x8000_0000 };
        !ordered
    }

    fn result(&self, handle: u32) -> u32 {
        handle
    }
}
