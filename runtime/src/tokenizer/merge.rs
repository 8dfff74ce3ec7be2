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

// Written with `get` and iterators only: no index can fail (the link of
// the bare-metal C API is checked to hold no panic paths).

/// The merge candidate of the pair at `i`, `i + 1`.
fn pair<M: Merger>(m: &M, toks: &[u32], i: usize) -> u32 {
    match (toks.get(i), toks.get(i + 1)) {
        (Some(&a), Some(&b)) => m.find(a, b).unwrap_or(NONE),
        _ => NONE,
    }
}

fn pair_of<M: Merger>(m: &M, w: &[u32]) -> Option<u32> {
    match *w {
        [a, b] => m.find(a, b),
        _ => None,
    }
}

/// Removes `v[i]`, shifting the rest left (the last slot keeps a stale copy).
fn remove_at(v: &mut [u32], i: usize) {
    if let Some(tail) = v.get_mut(i..).filter(|t| !t.is_empty()) {
        tail.copy_within(1.., 0);
    }
}

fn merge_cached<M: Merger>(m: &M, toks: &mut [u32], cache: &mut [u32]) -> usize {
    let mut n = toks.len();
    for (i, c) in cache.iter_mut().enumerate() {
        *c = pair(m, toks, i);
    }
    while n >= 2 {
        let mut best: Option<(u32, usize, u32)> = None;
        for (i, &h) in cache.iter().take(n - 1).enumerate() {
            if h != NONE {
                let k = m.key(h);
                if best.is_none_or(|(bk, _, _)| k < bk) {
                    best = Some((k, i, h));
                }
            }
        }
        let Some((_, i, h)) = best else { break };
        if let Some(t) = toks.get_mut(i) {
            *t = m.result(h);
        }
        let (toks, cache) = (toks.get_mut(..n).unwrap_or(&mut []), cache.get_mut(..n - 1).unwrap_or(&mut []));
        remove_at(toks, i + 1);
        remove_at(cache, i);
        n -= 1;
        let toks = toks.get(..n).unwrap_or(&[]);
        if let Some(c) = i.checked_sub(1).and_then(|j| cache.get_mut(j)) {
            *c = pair(m, toks, i - 1);
        }
        if let Some(c) = cache.get_mut(i) {
            *c = pair(m, toks, i);
        }
    }
    n
}

fn merge_plain<M: Merger>(m: &M, toks: &mut [u32]) -> usize {
    let mut n = toks.len();
    while n >= 2 {
        let mut best: Option<(u32, usize, u32)> = None;
        for (i, w) in toks.get(..n).unwrap_or(&[]).windows(2).enumerate() {
            if let Some(h) = pair_of(m, w) {
                let k = m.key(h);
                if best.is_none_or(|(bk, _, _)| k < bk) {
                    best = Some((k, i, h));
                }
            }
        }
        let Some((_, i, h)) = best else { break };
        if let Some(t) = toks.get_mut(i) {
            *t = m.result(h);
        }
        remove_at(toks.get_mut(..n).unwrap_or(&mut []), i + 1);
        n -= 1;
    }
    n
}
