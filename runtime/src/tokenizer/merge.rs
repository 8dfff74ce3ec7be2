//! The in-place merge loop shared by both kinds.
//!
//! Tokens sit in `buf[..n]`. Each step merges the adjacent pair with the
//! smallest *key* (SentencePiece: highest score; BPE: lowest rank), the
//! leftmost one on ties, until no pair can merge. When `buf` has at least
//! `n - 1` spare slots after the tokens, they cache the merge candidate of
//! every pair so that a step costs one scan plus two lookups instead of
//! `n` lookups.

/// "No merge" in the candidate cache.
const NONE: u32 = u32::MAX;

pub(crate) trait Merger {
    /// A handle (never `u32::MAX`) for merging `left` and `right`, if allowed.
    fn find(&self, left: u32, right: u32) -> Option<u32>;
    /// Priority of a handle: smaller merges first.
    fn key(&self, handle: u32) -> u32;
    /// The token a handle produces.
    fn result(&self, handle: u32) -> u32;
}

/// Merges `buf[..n]` in place and returns the new token count.
pub(crate) fn merge_in_place<M: Merger>(m: &M, buf: &mut [u32], n: usize) -> usize {
    if n < 2 || buf.len() < n {
        return n;
    }
    let (toks, spare) = buf.split_at_mut(n);
    match spare.get_mut(..n - 1) {
        Some(cache) => merge_cached(m, toks, cache),
        None => merge_plain(m, toks),
    }
}

fn merge_cached<M: Merger>(m: &M, toks: &mut [u32], cache: &mut [u32]) -> usize {
    let mut n = toks.len();
    for i in 0..n - 1 {
        cache[i] = m.find(toks[i], toks[i + 1]).unwrap_or(NONE);
    }
    while n >= 2 {
        let mut best: Option<(u32, usize)> = None;
        for (i, &h) in cache[..n - 1].iter().enumerate() {
            if h != NONE {
                let k = m.key(h);
                if best.is_none_or(|(bk, _)| k < bk) {
                    best = Some((k, i));
                }
            }
        }
        let Some((_, i)) = best else { break };
        toks[i] = m.result(cache[i]);
        toks.copy_within(i + 2..n, i + 1);
        cache.copy_within(i + 1..n - 1, i);
        n -= 1;
        if i > 0 {
            cache[i - 1] = m.find(toks[i - 1], toks[i]).unwrap_or(NONE);
        }
        if i + 1 < n {
            cache[i] = m.find(toks[i], toks[i + 1]).unwrap_or(NONE);
        }
    }
    n
}

fn merge_plain<M: Merger>(m: &M, toks: &mut [u32]) -> usize {
    let mut n = toks.len();
    while n >= 2 {
        let mut best: Option<(u32, usize, u32)> = None;
        for i in 0..n - 1 {
            if let Some(h) = m.find(toks[i], toks[i + 1]) {
                let k = m.key(h);
                if best.is_none_or(|(bk, _, _)| k < bk) {
                    best = Some((k, i, h));
                }
            }
        }
        let Some((_, i, h)) = best else { break };
        toks[i] = m.result(h);
        toks.copy_within(i + 2..n, i + 1);
        n -= 1;
    }
    n
}
