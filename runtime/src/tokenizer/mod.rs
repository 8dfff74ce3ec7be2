//! Zero-copy tokenizers that run without an allocator.
//!
//! A tokenizer lives in the model file as a *tokenizer section*: one
//! little-endian byte blob (layout in `docs/TOKENIZER.md` and [`blob`]).
//! [`Tokenizer::parse`] validates the whole blob once; afterwards encoding and
//! decoding only borrow from it and cannot index out of bounds or panic.
//!
//! Two kinds share one type:
//!
//! * [`TokenizerKind::SentencePiece`]: llama2.c `tokenizer.bin` semantics
//!   (score-driven merges over UTF-8 characters, byte fallback, dummy prefix).
//! * [`TokenizerKind::ByteLevelBpe`]: GPT-2 / Hugging Face `tokenizers`
//!   byte-level BPE (SmolLM2, Llama-3, Qwen2): special-token splitting,
//!   regex pre-tokenization written by hand, rank-driven merges over raw bytes.
//!
//! Encoding works in place in the caller's `&mut [u32]` buffer, like llama2.c.
//! The buffer must hold, at every moment, the tokens emitted so far plus the
//! unmerged pieces of the chunk being merged (one id per UTF-8 character or
//! byte-fallback byte for SentencePiece, one per byte of the current
//! pre-token for BPE). `text.len() + 2` slots always suffice. Spare room
//! beyond that is used as a cache that turns each merge step from a
//! dictionary lookup per pair into a scan of cached candidates.
//!
//! Host-side builders (feature `alloc`) live in [`build`].

mod blob;
mod bpe;
#[cfg(feature = "alloc")]
pub mod build;
mod merge;
mod pretokenize;
mod sentencepiece;
mod unicode;

#[cfg(test)]
mod tests;

use core::cmp::Ordering;
use core::fmt;

pub use blob::{FLAG_ADD_BOS, FLAG_ADD_DUMMY_PREFIX, FLAG_IGNORE_MERGES, FLAG_INDIVIDUAL_DIGITS, HEADER_LEN, MAGIC, NO_TOKEN, VERSION};
#[cfg(feature = "alloc")]
pub use build::{
    build_byte_level_bpe, build_sentencepiece, from_llama2c_bin, AddedToken, BpeConfig, SentencePieceConfig, TokenizerBuilder,
};
pub use unicode::{gpt2_byte_to_char, gpt2_char_to_byte};

/// Everything that can go wrong when parsing a blob, encoding or decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TokenizerError {
    /// The blob is shorter than its header or than the length it declares.
    Truncated,
    /// The blob does not start with [`MAGIC`].
    BadMagic,
    /// Unknown format version.
    UnsupportedVersion(u16),
    /// Unknown tokenizer kind byte.
    UnknownKind(u8),
    /// Unknown pre-tokenizer byte.
    UnknownPretokenizer(u8),
    /// A header field is inconsistent (unknown flag bits, bad counts, a table
    /// present or absent contrary to the kind, a bad length).
    BadHeader,
    /// A table offset is not a multiple of 4 (relative to the blob start).
    Misaligned,
    /// A table does not lie inside the blob, overlaps another one, or is out
    /// of the canonical order.
    TableOutOfBounds,
    /// The token offset table is not monotonic or does not cover the bytes.
    BadTokenOffsets,
    /// A token type byte is unknown, or a byte-fallback token is not `<0xNN>`.
    BadTokenType,
    /// A token id stored in a table is `>= n_vocab`.
    IdOutOfRange,
    /// A table that must be sorted is not (or holds duplicates).
    NotSorted,
    /// A merge's result is not the concatenation of its two parts.
    BadMerge,
    /// A byte-level vocabulary lacks a single-byte token.
    MissingByteToken,
    /// A special token is empty or not valid UTF-8.
    BadSpecialToken,
    /// Encode needs a byte-fallback token that the vocabulary lacks.
    NoByteFallback,
    /// `add_bos` was requested but the tokenizer has no BOS token.
    NoBos,
    /// The caller's output buffer is too small.
    OutputTooSmall,
    /// A token id passed to decode is `>= n_vocab`.
    InvalidToken,
    /// Builder input is inconsistent (lengths differ, ids missing or
    /// duplicated, a string outside the GPT-2 byte alphabet, ...).
    InvalidInput,
    /// A merge's concatenation is not in the vocabulary (builder).
    MergeNotInVocab,
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("tokenizer blob truncated"),
            Self::BadMagic => f.write_str("tokenizer blob has bad magic"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported tokenizer blob version {v}"),
            Self::UnknownKind(k) => write!(f, "unknown tokenizer kind {k}"),
            Self::UnknownPretokenizer(p) => write!(f, "unknown pre-tokenizer {p}"),
            Self::BadHeader => f.write_str("inconsistent tokenizer header"),
            Self::Misaligned => f.write_str("tokenizer table offset not 4-byte aligned"),
            Self::TableOutOfBounds => f.write_str("tokenizer table out of bounds or out of order"),
            Self::BadTokenOffsets => f.write_str("token offsets not monotonic"),
            Self::BadTokenType => f.write_str("bad token type"),
            Self::IdOutOfRange => f.write_str("token id out of range in table"),
            Self::NotSorted => f.write_str("tokenizer table not sorted"),
            Self::BadMerge => f.write_str("merge result is not the concatenation of its parts"),
            Self::MissingByteToken => f.write_str("byte-level vocabulary lacks a single-byte token"),
            Self::BadSpecialToken => f.write_str("special token empty or not UTF-8"),
            Self::NoByteFallback => f.write_str("no byte-fallback token for an unknown character"),
            Self::NoBos => f.write_str("tokenizer has no BOS token"),
            Self::OutputTooSmall => f.write_str("token output buffer too small"),
            Self::InvalidToken => f.write_str("token id out of range"),
            Self::InvalidInput => f.write_str("invalid tokenizer builder input"),
            Self::MergeNotInVocab => f.write_str("merge result not in vocabulary"),
        }
    }
}

/// The algorithm family of a tokenizer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TokenizerKind {
    /// llama2.c / SentencePiece-BPE: merge the pair with the highest score.
    SentencePiece = 1,
    /// GPT-2 byte-level BPE: merge the pair with the lowest rank.
    ByteLevelBpe = 2,
}

/// The regex a byte-level BPE tokenizer splits text with before merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Pretokenizer {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    /// (SmolLM2, GPT-2, StarCoder).
    Gpt2 = 0,
    /// Llama-3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3 = 1,
    /// Qwen2: the Llama-3 pattern with `\p{N}` instead of `\p{N}{1,3}`.
    Qwen2 = 2,
}

/// Per-token type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum TokenType {
    /// Ordinary piece; decodes to its bytes.
    Normal = 0,
    /// Control / special token (BOS, EOS, `<|im_start|>`): decodes to nothing.
    Control = 1,
    /// SentencePiece byte fallback `<0xNN>`: decodes to the single raw byte.
    Byte = 2,
    /// User-defined / added non-special token: decodes to its bytes.
    UserDefined = 3,
    /// The unknown token (`<unk>`): decodes to its bytes.
    Unknown = 4,
}

impl TokenType {
    /// The type for a type byte, `None` for unknown bytes.
    pub const fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Normal),
            1 => Some(Self::Control),
            2 => Some(Self::Byte),
            3 => Some(Self::UserDefined),
            4 => Some(Self::Unknown),
            _ => None,
        }
    }
}

/// A validated, borrowed tokenizer blob.
#[derive(Debug, Clone, Copy)]
pub struct Tokenizer<'a> {
    kind: TokenizerKind,
    pretok: Pretokenizer,
    /// SentencePiece vocabulary without interior spaces: encode word by word.
    sp_word_split: bool,
    flags: u32,
    n_vocab: u32,
    bos: Option<u32>,
    eos: Option<u32>,
    max_token_len: u32,
    /// `n_vocab + 1` LE u32 offsets into `bytes`.
    offsets: &'a [u8],
    bytes: &'a [u8],
    /// `n_vocab` LE f32 (SentencePiece) or empty.
    scores: &'a [u8],
    /// `n_vocab` type bytes.
    types: &'a [u8],
    /// `n_vocab` LE u32 ids sorted by (bytes, id).
    sorted: &'a [u8],
    /// `n_merges` × (left, right, rank, result) LE u32, sorted by (left, right).
    merges: &'a [u8],
    /// `n_specials` LE u32 ids sorted by bytes.
    specials: &'a [u8],
}

/// Every byte value, so that a byte-fallback token can decode to a borrowed
/// one-byte slice.
static BYTE_VALUES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

#[inline]
pub(crate) fn le_u32(b: &[u8], index: usize) -> u32 {
    let start = index.saturating_mul(4);
    match b.get(start..start.saturating_add(4)) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

impl<'a> Tokenizer<'a> {
    /// Validates `blob` and borrows it. The slice may be longer than the blob
    /// (trailing padding is ignored); it needs no particular alignment.
    pub fn parse(blob: &'a [u8]) -> Result<Self, TokenizerError> {
        blob::parse(blob)
    }

    /// The algorithm family.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The pre-tokenizer regex (meaningful for [`TokenizerKind::ByteLevelBpe`]).
    pub fn pretokenizer(&self) -> Pretokenizer {
        self.pretok
    }

    /// Raw header flags (`FLAG_*`).
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Whether the model expects BOS at the start of a prompt (header flag).
    pub fn add_bos_default(&self) -> bool {
        self.flags & FLAG_ADD_BOS != 0
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.n_vocab as usize
    }

    /// Beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Length in bytes of the longest token.
    pub fn max_token_len(&self) -> usize {
        self.max_token_len as usize
    }

    /// The stored bytes of a token (for SentencePiece byte-fallback tokens the
    /// text `<0xNN>`; for byte-level BPE the raw bytes, not the GPT-2
    /// characters).
    pub fn token_bytes(&self, id: u32) -> Option<&'a [u8]> {
        if id >= self.n_vocab {
            return None;
        }
        let s = le_u32(self.offsets, id as usize) as usize;
        let e = le_u32(self.offsets, id as usize + 1) as usize;
        self.bytes.get(s..e)
    }

    /// Bytes of a token known to be valid (empty if not).
    #[inline]
    pub(crate) fn piece(&self, id: u32) -> &'a [u8] {
        self.token_bytes(id).unwrap_or(&[])
    }

    /// The type of a token.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        if id >= self.n_vocab {
            return None;
        }
        self.types.get(id as usize).and_then(|&b| TokenType::from_u8(b))
    }

    /// The SentencePiece score of a token (`None` for byte-level BPE).
    pub fn score(&self, id: u32) -> Option<f32> {
        if id >= self.n_vocab || self.scores.is_empty() {
            return None;
        }
        Some(f32::from_bits(le_u32(self.scores, id as usize)))
    }

    /// The id of the token whose bytes are exactly `bytes` (the lowest id if
    /// several tokens share the same bytes).
    pub fn lookup(&self, bytes: &[u8]) -> Option<u32> {
        self.lookup_by(|t| t.cmp(bytes))
    }

    /// Lookup of the concatenation `a ++ b` without building it.
    pub(crate) fn lookup_concat(&self, a: &[u8], b: &[u8]) -> Option<u32> {
        self.lookup_by(|t| cmp_concat(t, a, b))
    }

    /// Binary search over the sorted id table; `cmp(token)` orders a token
    /// relative to the key.
    fn lookup_by(&self, cmp: impl Fn(&[u8]) -> Ordering) -> Option<u32> {
        let (mut lo, mut hi) = (0usize, self.n_vocab as usize);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let id = le_u32(self.sorted, mid);
            if cmp(self.piece(id)) == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo < self.n_vocab as usize {
            let id = le_u32(self.sorted, lo);
            if cmp(self.piece(id)) == Ordering::Equal {
                return Some(id);
            }
        }
        None
    }

    /// Encodes `text` into `out`, optionally preceded by BOS; returns the
    /// number of tokens written. Never panics; see the module docs for how
    /// much room `out` needs (`text.len() + 2` always suffices).
    pub fn encode(&self, text: &str, add_bos: bool, out: &mut [u32]) -> Result<usize, TokenizerError> {
        let mut n = 0;
        if add_bos {
            let bos = self.bos.ok_or(TokenizerError::NoBos)?;
            push(out, &mut n, bos)?;
        }
        match self.kind {
            TokenizerKind::SentencePiece => sentencepiece::encode(self, text, out, n),
            TokenizerKind::ByteLevelBpe => bpe::encode(self, text, out, n),
        }
    }

    /// The raw bytes token `token` stands for when it follows `prev`
    /// (`prev` may be anything, e.g. [`NO_TOKEN`] at the start).
    ///
    /// * control tokens decode to nothing;
    /// * byte-fallback tokens `<0xNN>` decode to the single byte `0xNN`;
    /// * SentencePiece: after BOS, a leading space is stripped (llama2.c).
    ///
    /// Pieces are bytes, not text: a multi-byte UTF-8 character may be split
    /// across tokens, so a streaming caller must buffer incomplete UTF-8
    /// sequences itself before printing.
    pub fn decode_piece(&self, prev: u32, token: u32) -> Result<&'a [u8], TokenizerError> {
        let piece = self.token_bytes(token).ok_or(TokenizerError::InvalidToken)?;
        match self.token_type(token) {
            Some(TokenType::Control) => return Ok(&[]),
            Some(TokenType::Byte) => {
                // Validated by `parse` to be `<0xNN>`.
                let b = match (piece.get(3).and_then(|&c| hex(c)), piece.get(4).and_then(|&c| hex(c))) {
                    (Some(h), Some(l)) => (h << 4) | l,
                    _ => return Err(TokenizerError::BadTokenType),
                };
                let b = b as usize;
                return Ok(BYTE_VALUES.get(b..b + 1).unwrap_or(&[]));
            }
            _ => {}
        }
        if self.kind == TokenizerKind::SentencePiece && Some(prev) == self.bos {
            if let Some((&b' ', rest)) = piece.split_first() {
                return Ok(rest);
            }
        }
        Ok(piece)
    }

    /// Decodes a token sequence to bytes (ids out of range are skipped).
    #[cfg(feature = "alloc")]
    pub fn decode(&self, tokens: &[u32]) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec::Vec::new();
        let mut prev = NO_TOKEN;
        for &t in tokens {
            if let Ok(p) = self.decode_piece(prev, t) {
                v.extend_from_slice(p);
            }
            prev = t;
        }
        v
    }

    /// Number of BPE merges (0 for SentencePiece).
    pub fn n_merges(&self) -> usize {
        self.merges.len() / 16
    }

    pub(crate) fn n_specials(&self) -> usize {
        self.specials.len() / 4
    }

    pub(crate) fn special_id(&self, i: usize) -> u32 {
        le_u32(self.specials, i)
    }

    /// Merge entry `i` (table order, sorted by pair; `i < n_merges()`, else
    /// zeros): (left, right, rank, result). Exporters sort by rank.
    pub fn merge_entry(&self, i: usize) -> (u32, u32, u32, u32) {
        let b = i.saturating_mul(4);
        (
            le_u32(self.merges, b),
            le_u32(self.merges, b + 1),
            le_u32(self.merges, b + 2),
            le_u32(self.merges, b + 3),
        )
    }

    /// Index of the merge for the pair (left, right).
    pub(crate) fn find_merge(&self, left: u32, right: u32) -> Option<usize> {
        let key = (left, right);
        let (mut lo, mut hi) = (0usize, self.n_merges());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (l, r, _, _) = self.merge_entry(mid);
            match (l, r).cmp(&key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Some(mid),
            }
        }
        None
    }
}

pub(crate) fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Orders `t` relative to the concatenation `a ++ b`.
pub(crate) fn cmp_concat(t: &[u8], a: &[u8], b: &[u8]) -> Ordering {
    let k = t.len().min(a.len());
    match t[..k].cmp(&a[..k]) {
        Ordering::Equal => {}
        o => return o,
    }
    if t.len() < a.len() {
        return Ordering::Less;
    }
    t[a.len()..].cmp(b)
}

#[inline]
pub(crate) fn push(out: &mut [u32], n: &mut usize, id: u32) -> Result<(), TokenizerError> {
    let slot = out.get_mut(*n).ok_or(TokenizerError::OutputTooSmall)?;
    *slot = id;
    *n += 1;
    Ok(())
}
