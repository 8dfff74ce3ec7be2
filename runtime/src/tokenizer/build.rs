//! Host-side writers of tokenizer blobs (feature `alloc`).
//!
//! * [`TokenizerBuilder`]: the general writer (raw token bytes, types,
//!   scores, merges by id, special ids).
//! * [`build_sentencepiece`]: SentencePiece-score kind from pieces + scores.
//! * [`build_byte_level_bpe`]: byte-level BPE from a GPT-2-alphabet vocabulary
//!   (`"Ġthe"`), merges as id pairs in rank order and HF added tokens.
//! * [`from_llama2c_bin`]: llama2.c `tokenizer.bin`.
//!
//! Every builder parses its own output before returning it, so a blob that
//! comes out of here is always accepted by [`Tokenizer::parse`].

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use super::blob::{field, HEADER_LEN, MAGIC, NO_TOKEN, VERSION};
use super::unicode::gpt2_char_to_byte;
use super::{
    Pretokenizer, TokenType, Tokenizer, TokenizerError as E, TokenizerKind, FLAG_ADD_BOS, FLAG_ADD_DUMMY_PREFIX, FLAG_IGNORE_MERGES,
    FLAG_INDIVIDUAL_DIGITS,
};

/// The general blob writer. Fill the public fields and call [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct TokenizerBuilder {
    /// Algorithm family.
    pub kind: TokenizerKind,
    /// Pre-tokenizer regex (byte-level BPE only; `Gpt2` for SentencePiece).
    pub pretokenizer: Pretokenizer,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// BOS id, if any.
    pub bos: Option<u32>,
    /// EOS id, if any.
    pub eos: Option<u32>,
    /// Raw bytes of every token; the index is the id.
    pub tokens: Vec<Vec<u8>>,
    /// One score per token (SentencePiece only; must be empty for BPE).
    pub scores: Vec<f32>,
    /// One type per token.
    pub types: Vec<TokenType>,
    /// BPE merges as (left id, right id) in rank order (rank = index). The
    /// result is the token whose bytes are `left ++ right` (lowest such id).
    /// A pair listed twice keeps its last rank, like HF `tokenizers`.
    pub merges: Vec<(u32, u32)>,
    /// Ids of special / added tokens split out of the text before
    /// pre-tokenization (BPE only).
    pub specials: Vec<u32>,
}

impl TokenizerBuilder {
    /// An empty builder of the given kind.
    pub fn new(kind: TokenizerKind) -> Self {
        Self {
            kind,
            pretokenizer: Pretokenizer::Gpt2,
            flags: 0,
            bos: None,
            eos: None,
            tokens: Vec::new(),
            scores: Vec::new(),
            types: Vec::new(),
            merges: Vec::new(),
            specials: Vec::new(),
        }
    }

    /// Serializes and validates the blob.
    pub fn build(&self) -> Result<Vec<u8>, E> {
        let n = self.tokens.len();
        if n == 0 || n >= u32::MAX as usize || self.types.len() != n {
            return Err(E::InvalidInput);
        }
        let sp = self.kind == TokenizerKind::SentencePiece;
        if sp && (self.scores.len() != n || !self.merges.is_empty() || !self.specials.is_empty()) {
            return Err(E::InvalidInput);
        }
        if !sp && !self.scores.is_empty() {
            return Err(E::InvalidInput);
        }
        for id in [self.bos, self.eos].into_iter().flatten() {
            if id as usize >= n {
                return Err(E::InvalidInput);
            }
        }

        // bytes -> lowest id
        let mut by_bytes: BTreeMap<&[u8], u32> = BTreeMap::new();
        for (id, t) in self.tokens.iter().enumerate() {
            by_bytes.entry(t.as_slice()).or_insert(id as u32);
        }
        let mut sorted: Vec<u32> = (0..n as u32).collect();
        sorted.sort_by(|&a, &b| self.tokens[a as usize].cmp(&self.tokens[b as usize]).then(a.cmp(&b)));

        // Merges: (left, right) -> (rank, result); later duplicates win.
        let mut merges: BTreeMap<(u32, u32), (u32, u32)> = BTreeMap::new();
        let mut concat = Vec::new();
        for (rank, &(l, r)) in self.merges.iter().enumerate() {
            let (lt, rt) = match (self.tokens.get(l as usize), self.tokens.get(r as usize)) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(E::InvalidInput),
            };
            concat.clear();
            concat.extend_from_slice(lt);
            concat.extend_from_slice(rt);
            let res = *by_bytes.get(concat.as_slice()).ok_or(E::MergeNotInVocab)?;
            let rank = u32::try_from(rank).map_err(|_| E::InvalidInput)?;
            merges.insert((l, r), (rank, res));
        }

        // Specials: unique bytes, sorted by bytes (lowest id on duplicates).
        let mut specials: BTreeMap<&[u8], u32> = BTreeMap::new();
        for &id in &self.specials {
            let t = self.tokens.get(id as usize).ok_or(E::InvalidInput)?;
            let e = specials.entry(t.as_slice()).or_insert(id);
            *e = (*e).min(id);
        }

        let total_bytes: usize = self.tokens.iter().map(Vec::len).sum();
        let max_len = self.tokens.iter().map(Vec::len).max().unwrap_or(0);
        let u32_of = |v: usize| u32::try_from(v).map_err(|_| E::InvalidInput);

        let mut out = vec![0u8; HEADER_LEN];
        let align = |out: &mut Vec<u8>| {
            while out.len() % 4 != 0 {
                out.push(0);
            }
        };
        let offsets_off = out.len();
        let mut acc = 0usize;
        out.extend_from_slice(&0u32.to_le_bytes());
        for t in &self.tokens {
            acc += t.len();
            out.extend_from_slice(&u32_of(acc)?.to_le_bytes());
        }
        let bytes_off = out.len();
        for t in &self.tokens {
            out.extend_from_slice(t);
        }
        align(&mut out);
        let scores_off = if sp {
            let off = out.len();
            for s in &self.scores {
                out.extend_from_slice(&s.to_le_bytes());
            }
            off
        } else {
            0
        };
        let types_off = out.len();
        out.extend(self.types.iter().map(|&t| t as u8));
        align(&mut out);
        let sorted_off = out.len();
        for id in &sorted {
            out.extend_from_slice(&id.to_le_bytes());
        }
        let merges_off = if merges.is_empty() { 0 } else { out.len() };
        for (&(l, r), &(rank, res)) in &merges {
            for v in [l, r, rank, res] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let specials_off = if specials.is_empty() { 0 } else { out.len() };
        for id in specials.values() {
            out.extend_from_slice(&id.to_le_bytes());
        }
        align(&mut out);
        let total_len = out.len();

        let mut put = |off: usize, v: u32| out[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(field::TOTAL_LEN, u32_of(total_len)?);
        put(field::N_VOCAB, n as u32);
        put(field::BOS, self.bos.unwrap_or(NO_TOKEN));
        put(field::EOS, self.eos.unwrap_or(NO_TOKEN));
        put(field::FLAGS, self.flags);
        put(field::MAX_TOKEN_LEN, u32_of(max_len)?);
        put(field::N_MERGES, u32_of(merges.len())?);
        put(field::N_SPECIALS, u32_of(specials.len())?);
        put(field::OFFSETS_OFF, u32_of(offsets_off)?);
        put(field::BYTES_OFF, u32_of(bytes_off)?);
        put(field::BYTES_LEN, u32_of(total_bytes)?);
        put(field::SCORES_OFF, u32_of(scores_off)?);
        put(field::TYPES_OFF, u32_of(types_off)?);
        put(field::SORTED_OFF, u32_of(sorted_off)?);
        put(field::MERGES_OFF, u32_of(merges_off)?);
        put(field::SPECIALS_OFF, u32_of(specials_off)?);
        out[..4].copy_from_slice(&MAGIC);
        out[field::VERSION..field::VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
        out[field::KIND] = self.kind as u8;
        out[field::PRETOK] = if sp { 0 } else { self.pretokenizer as u8 };

        Tokenizer::parse(&out)?;
        Ok(out)
    }
}

/// Options of a SentencePiece-score tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentencePieceConfig {
    /// BOS id, if any.
    pub bos: Option<u32>,
    /// EOS id, if any.
    pub eos: Option<u32>,
    /// Sets `FLAG_ADD_BOS` (a hint for callers).
    pub add_bos: bool,
    /// Prepend `" "` to non-empty text (`FLAG_ADD_DUMMY_PREFIX`).
    pub add_dummy_prefix: bool,
}

/// SentencePiece-score blob. `tokens[i]` are the raw bytes of piece `i` with
/// SentencePiece's `'▁'` already replaced by `' '` (as llama2.c's export
/// does); byte-fallback pieces are the text `<0xNN>` typed
/// [`TokenType::Byte`].
pub fn build_sentencepiece(tokens: &[&[u8]], scores: &[f32], types: &[TokenType], cfg: &SentencePieceConfig) -> Result<Vec<u8>, E> {
    let mut b = TokenizerBuilder::new(TokenizerKind::SentencePiece);
    b.tokens = tokens.iter().map(|t| t.to_vec()).collect();
    b.scores = scores.to_vec();
    b.types = types.to_vec();
    b.bos = cfg.bos;
    b.eos = cfg.eos;
    b.flags = (if cfg.add_bos { FLAG_ADD_BOS } else { 0 }) | (if cfg.add_dummy_prefix { FLAG_ADD_DUMMY_PREFIX } else { 0 });
    b.build()
}

/// Options of a byte-level BPE tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpeConfig {
    /// Split regex: GPT-2 (SmolLM2), Llama-3 or Qwen2.
    pub pretokenizer: Pretokenizer,
    /// Isolate every digit first (HF `Digits(individual_digits=true)`, SmolLM2).
    pub individual_digits: bool,
    /// Emit a pre-token whole when it is in the vocabulary (HF
    /// `ignore_merges`, Llama-3).
    pub ignore_merges: bool,
    /// Sets `FLAG_ADD_BOS` (Llama-3: true; SmolLM2 / Qwen2: false).
    pub add_bos: bool,
    /// BOS id, if any.
    pub bos: Option<u32>,
    /// EOS id, if any.
    pub eos: Option<u32>,
}

/// An HF `added_tokens` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddedToken<'s> {
    /// Token id (may repeat an id of the vocabulary, or extend it).
    pub id: u32,
    /// The literal text (not GPT-2-mapped).
    pub content: &'s str,
    /// `true`: control token, skipped on decode; `false`: user-defined.
    pub special: bool,
}

/// Byte-level BPE blob.
///
/// `vocab` holds HF `model.vocab` entries `(string, id)` in the GPT-2
/// byte-to-unicode alphabet (`"Ġthe"`); they are converted to raw bytes.
/// `merges` are `(left id, right id)` in rank order. `added` tokens are split
/// out of text literally; their `content` is raw text and replaces the vocab
/// string of the same id. Together, ids must cover `0..n` exactly.
pub fn build_byte_level_bpe(vocab: &[(&str, u32)], merges: &[(u32, u32)], added: &[AddedToken<'_>], cfg: &BpeConfig) -> Result<Vec<u8>, E> {
    let n = vocab
        .iter()
        .map(|v| v.1)
        .chain(added.iter().map(|a| a.id))
        .max()
        .ok_or(E::InvalidInput)? as usize
        + 1;
    // Ids must be dense, so there cannot be more of them than entries.
    if n > vocab.len() + added.len() {
        return Err(E::InvalidInput);
    }
    let mut tokens: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut types = vec![TokenType::Normal; n];
    for a in added {
        let slot = &mut tokens[a.id as usize];
        if slot.is_some() {
            return Err(E::InvalidInput);
        }
        *slot = Some(a.content.as_bytes().to_vec());
        types[a.id as usize] = if a.special { TokenType::Control } else { TokenType::UserDefined };
    }
    for &(s, id) in vocab {
        let slot = &mut tokens[id as usize];
        if types[id as usize] != TokenType::Normal {
            continue; // overridden by an added token
        }
        if slot.is_some() {
            return Err(E::InvalidInput);
        }
        let bytes: Option<Vec<u8>> = s.chars().map(gpt2_char_to_byte).collect();
        *slot = Some(bytes.ok_or(E::InvalidInput)?);
    }
    let mut b = TokenizerBuilder::new(TokenizerKind::ByteLevelBpe);
    b.tokens = tokens.into_iter().collect::<Option<Vec<_>>>().ok_or(E::InvalidInput)?;
    b.types = types;
    b.merges = merges.to_vec();
    b.specials = added.iter().map(|a| a.id).collect();
    b.pretokenizer = cfg.pretokenizer;
    b.bos = cfg.bos;
    b.eos = cfg.eos;
    b.flags = (if cfg.add_bos { FLAG_ADD_BOS } else { 0 })
        | (if cfg.individual_digits { FLAG_INDIVIDUAL_DIGITS } else { 0 })
        | (if cfg.ignore_merges { FLAG_IGNORE_MERGES } else { 0 });
    b.build()
}

/// Converts llama2.c's `tokenizer.bin` (`max_token_length: i32`, then per
/// token `score: f32, len: i32, bytes[len]`, all little-endian, until end of
/// file) to a SentencePiece-score blob with BOS = 1, EOS = 2, `add_bos` and
/// `add_dummy_prefix`. Token 0 is typed unknown, 1 and 2 control, `<0xNN>`
/// pieces byte-fallback, the rest normal.
pub fn from_llama2c_bin(bytes: &[u8]) -> Result<Vec<u8>, E> {
    let rd = |p: usize| -> Result<[u8; 4], E> { bytes.get(p..p + 4).and_then(|s| s.try_into().ok()).ok_or(E::Truncated) };
    let max_len = i32::from_le_bytes(rd(0)?);
    if max_len < 0 {
        return Err(E::InvalidInput);
    }
    let mut p = 4;
    let (mut tokens, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
    while p < bytes.len() {
        let score = f32::from_le_bytes(rd(p)?);
        let len = i32::from_le_bytes(rd(p + 4)?);
        let len = usize::try_from(len).map_err(|_| E::InvalidInput)?;
        p += 8;
        let t = bytes.get(p..p.checked_add(len).ok_or(E::Truncated)?).ok_or(E::Truncated)?;
        p += len;
        let id = tokens.len();
        let is_byte = t.len() == 6 && t.starts_with(b"<0x") && t[5] == b'>' && super::hex(t[3]).is_some() && super::hex(t[4]).is_some();
        types.push(match id {
            0 => TokenType::Unknown,
            1 | 2 => TokenType::Control,
            _ if is_byte => TokenType::Byte,
            _ => TokenType::Normal,
        });
        tokens.push(t);
        scores.push(score);
    }
    let n = tokens.len();
    let cfg = SentencePieceConfig {
        bos: (n > 1).then_some(1),
        eos: (n > 2).then_some(2),
        add_bos: true,
        add_dummy_prefix: true,
    };
    build_sentencepiece(&tokens, &scores, &types, &cfg)
}
