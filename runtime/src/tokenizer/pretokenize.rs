//! Hand-written equivalents of the byte-level BPE pre-tokenizer regexes.
//!
//! Each function returns where the pre-token starting at `pos` ends, trying
//! the pattern's alternatives in order with the regex's greedy / backtracking
//! semantics. Every character is matched by some alternative, so the
//! pre-tokens tile the input. Work is linear in the input.

use super::unicode::{is_letter, is_number, is_space};
use super::Pretokenizer;

/// Calls `f` with every pre-token of `s` in order. With `individual_digits`
/// every `\p{N}` character is first isolated and the regex then runs on the
/// pieces between them (HF `Digits(individual_digits=true)` followed by
/// `ByteLevel(use_regex=true)`, llama.cpp's "smollm" pre-tokenizer).
pub(crate) fn for_each_pretoken<E>(
    s: &str,
    pat: Pretokenizer,
    individual_digits: bool,
    mut f: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    if !individual_digits {
        return split_regex(s, pat, &mut f);
    }
    let mut seg_start = 0;
    for (i, c) in s.char_indices() {
        if is_number(c) {
            let j = i + c.len_utf8();
            split_regex(s.get(seg_start..i).unwrap_or(""), pat, &mut f)?;
            f(s.get(i..j).unwrap_or(""))?;
            seg_start = j;
        }
    }
    split_regex(s.get(seg_start..).unwrap_or(""), pat, &mut f)
}

fn split_regex<E>(s: &str, pat: Pretokenizer, f: &mut impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    let mut pos = 0;
    while pos < s.len() {
        let end = match pat {
            Pretokenizer::Gpt2 => next_gpt2(s, pos),
            Pretokenizer::Llama3 => next_llama3(s, pos, 3),
            Pretokenizer::Qwen2 => next_llama3(s, pos, 1),
        };
        // `end > pos` always holds; guard anyway so that a bug cannot loop.
        let end = if end > pos { end } else { s.len() };
        f(s.get(pos..end).unwrap_or(""))?;
        pos = end;
    }
    Ok(())
}

/// The character at byte `i`, if any.
#[inline]
fn char_at(s: &str, i: usize) -> Option<char> {
    s.get(i..).and_then(|t| t.chars().next())
}

/// End of the run of characters satisfying `pred` starting at `i`.
fn run(s: &str, i: usize, pred: impl Fn(char) -> bool) -> usize {
    let Some(t) = s.get(i..) else { return i };
    for (k, c) in t.char_indices() {
        if !pred(c) {
            return i + k;
        }
    }
    s.len()
}

fn is_other(c: char) -> bool {
    !is_space(c) && !is_letter(c) && !is_number(c)
}

fn is_newline(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// `'s|'t|'re|'ve|'m|'ll|'d` at `pos` (which holds `'`): the match length.
fn contraction(s: &str, pos: usize, ignore_case: bool) -> Option<usize> {
    let b = s.as_bytes();
    let at = |k: usize| -> u8 {
        let c = b.get(pos + k).copied().unwrap_or(0);
        if ignore_case {
            c.to_ascii_lowercase()
        } else {
            c
        }
    };
    match (at(1), at(2)) {
        (b's' | b't' | b'm' | b'd', _) => Some(2),
        (b'r', b'e') | (b'v', b'e') | (b'l', b'l') => Some(3),
        _ => None,
    }
}

/// `\s+(?!\S)|\s+` at `pos` (a whitespace character).
fn whitespace_tail(s: &str, pos: usize) -> usize {
    // Maximal run, remembering where its last character starts.
    let mut last_start = pos;
    let mut end = pos;
    if let Some(t) = s.get(pos..) {
        end = s.len();
        for (k, c) in t.char_indices() {
            if !is_space(c) {
                end = pos + k;
                break;
            }
            last_start = pos + k;
        }
    }
    if end == s.len() || last_start == pos {
        // Followed by end of input, or a single character (`\s+`).
        end
    } else {
        // Give back the last space so that it can prefix the next word.
        last_start
    }
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
fn next_gpt2(s: &str, pos: usize) -> usize {
    let Some(c) = char_at(s, pos) else {
        return s.len();
    };
    if c == '\'' {
        if let Some(len) = contraction(s, pos, false) {
            return pos + len;
        }
    }
    let classes: [fn(char) -> bool; 3] = [is_letter, is_number, is_other];
    for class in classes {
        if c == ' ' {
            if char_at(s, pos + 1).is_some_and(class) {
                return run(s, pos + 1, class);
            }
        } else if class(c) {
            return run(s, pos, class);
        }
    }
    whitespace_tail(s, pos)
}

/// Llama-3 (`max_digits` 3) and Qwen2 (`max_digits` 1):
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
fn next_llama3(s: &str, pos: usize, max_digits: usize) -> usize {
    let Some(c) = char_at(s, pos) else {
        return s.len();
    };
    if c == '\'' {
        if let Some(len) = contraction(s, pos, true) {
            return pos + len;
        }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if is_letter(c) {
        return run(s, pos, is_letter);
    }
    if !is_newline(c) && !is_number(c) {
        let next = pos + c.len_utf8();
        if char_at(s, next).is_some_and(is_letter) {
            return run(s, next, is_letter);
        }
    }
    // \p{N}{1,max_digits}
    if is_number(c) {
        let mut end = pos;
        for (k, d) in s.get(pos..).unwrap_or("").chars().enumerate() {
            if k == max_digits || !is_number(d) {
                break;
            }
            end += d.len_utf8();
        }
        return end;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let other_start = if c == ' ' && char_at(s, pos + 1).is_some_and(is_other) {
        Some(pos + 1)
    } else if is_other(c) {
        Some(pos)
    } else {
        None
    };
    if let Some(i) = other_start {
        let e = run(s, i, is_other);
        return run(s, e, is_newline);
    }
    // Here `c` is whitespace. `\s*[\r\n]+`: up to the last newline of the run.
    let mut last_nl_end = None;
    if let Some(t) = s.get(pos..) {
        for (k, ch) in t.char_indices() {
            if !is_space(ch) {
                break;
            }
            if is_newline(ch) {
                last_nl_end = Some(pos + k + 1);
            }
        }
    }
    if let Some(e) = last_nl_end {
        return e;
    }
    whitespace_tail(s, pos)
}
