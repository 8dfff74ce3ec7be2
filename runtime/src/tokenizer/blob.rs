//! Blob layout and up-front validation (see `docs/TOKENIZER.md`).
//!
//! ```text
//! off  size  field
//!   0     4  magic "EQTK"
//!   4     2  version (1)
//!   6     1  kind: 1 SentencePiece, 2 ByteLevelBpe
//!   7     1  pre-tokenizer: 0 GPT-2, 1 Llama-3, 2 Qwen2 (0 for SentencePiece)
//!   8     4  total_len: blob length in bytes, multiple of 4
//!  12     4  n_vocab
//!  16     4  bos (0xFFFF_FFFF = none)
//!  20     4  eos (0xFFFF_FFFF = none)
//!  24     4  flags
//!  28     4  max_token_len
//!  32     4  n_merges
//!  36     4  n_specials
//!  40     4  offsets_off   (n_vocab + 1) u32
//!  44     4  bytes_off     bytes_len u8
//!  48     4  bytes_len
//!  52     4  scores_off    n_vocab f32   (SentencePiece; 0 for BPE)
//!  56     4  types_off     n_vocab u8
//!  60     4  sorted_off    n_vocab u32
//!  64     4  merges_off    n_merges × {left, right, rank, result} u32 (0 if none)
//!  68     4  specials_off  n_specials u32 (0 if none)
//! ```

use core::cmp::Ordering;

use super::{cmp_concat, hex, le_u32, Pretokenizer, TokenType, Tokenizer, TokenizerError as E, TokenizerKind};

/// First four bytes of every tokenizer blob.
pub const MAGIC: [u8; 4] = *b"EQTK";
/// The format version this crate reads and writes.
pub const VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 72;
/// "No token" in the bos / eos fields (and a handy `prev` for decode).
pub const NO_TOKEN: u32 = u32::MAX;

/// Callers should put BOS first by default.
pub const FLAG_ADD_BOS: u32 = 1 << 0;
/// SentencePiece: prepend `" "` to non-empty text.
pub const FLAG_ADD_DUMMY_PREFIX: u32 = 1 << 1;
/// BPE: isolate every `\p{N}` character before the regex split (HF
/// `Digits(individual_digits=true)`, SmolLM2).
pub const FLAG_INDIVIDUAL_DIGITS: u32 = 1 << 2;
/// BPE: a pre-token that is itself in the vocabulary is emitted whole (HF
/// `ignore_merges`, Llama-3).
pub const FLAG_IGNORE_MERGES: u32 = 1 << 3;
const KNOWN_FLAGS: u32 = FLAG_ADD_BOS | FLAG_ADD_DUMMY_PREFIX | FLAG_INDIVIDUAL_DIGITS | FLAG_IGNORE_MERGES;

/// Header field byte offsets.
pub(crate) mod field {
    pub const VERSION: usize = 4;
    pub const KIND: usize = 6;
    pub const PRETOK: usize = 7;
    pub const TOTAL_LEN: usize = 8;
    pub const N_VOCAB: usize = 12;
    pub const BOS: usize = 16;
    pub const EOS: usize = 20;
    pub const FLAGS: usize = 24;
    pub const MAX_TOKEN_LEN: usize = 28;
    pub const N_MERGES: usize = 32;
    pub const N_SPECIALS: usize = 36;
    pub const OFFSETS_OFF: usize = 40;
    pub const BYTES_OFF: usize = 44;
    pub const BYTES_LEN: usize = 48;
    pub const SCORES_OFF: usize = 52;
    pub const TYPES_OFF: usize = 56;
    pub const SORTED_OFF: usize = 60;
    pub const MERGES_OFF: usize = 64;
    pub const SPECIALS_OFF: usize = 68;
}

fn rd32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Walks the tables in canonical order, checking alignment and bounds.
struct Cursor<'a> {
    blob: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Table at `off` of `count × elem` bytes. `off == 0` means absent and is
    /// only allowed when the table is empty.
    fn table(&mut self, off: u32, count: u32, elem: usize) -> Result<&'a [u8], E> {
        let len = (count as usize).checked_mul(elem).ok_or(E::TableOutOfBounds)?;
        if off == 0 {
            return if len == 0 { Ok(&[]) } else { Err(E::TableOutOfBounds) };
        }
        let off = off as usize;
        if off % 4 != 0 {
            return Err(E::Misaligned);
        }
        if off < self.pos {
            return Err(E::TableOutOfBounds);
        }
        let end = off.checked_add(len).ok_or(E::TableOutOfBounds)?;
        let t = self.blob.get(off..end).ok_or(E::TableOutOfBounds)?;
        self.pos = end;
        Ok(t)
    }
}

pub(crate) fn parse(blob: &[u8]) -> Result<Tokenizer<'_>, E> {
    let hdr = blob.get(..HEADER_LEN).ok_or(E::Truncated)?;
    if hdr[..4] != MAGIC {
        return Err(E::BadMagic);
    }
    let version = u16::from_le_bytes([hdr[field::VERSION], hdr[field::VERSION + 1]]);
    if version != VERSION {
        return Err(E::UnsupportedVersion(version));
    }
    let kind = match hdr[field::KIND] {
        1 => TokenizerKind::SentencePiece,
        2 => TokenizerKind::ByteLevelBpe,
        k => return Err(E::UnknownKind(k)),
    };
    let pretok = match hdr[field::PRETOK] {
        0 => Pretokenizer::Gpt2,
        1 => Pretokenizer::Llama3,
        2 => Pretokenizer::Qwen2,
        p => return Err(E::UnknownPretokenizer(p)),
    };
    let total_len = rd32(hdr, field::TOTAL_LEN) as usize;
    if total_len < HEADER_LEN || total_len % 4 != 0 {
        return Err(E::BadHeader);
    }
    let blob = blob.get(..total_len).ok_or(E::Truncated)?;
    let n_vocab = rd32(hdr, field::N_VOCAB);
    // NO_TOKEN must never be a valid id.
    if n_vocab == 0 || n_vocab == u32::MAX {
        return Err(E::BadHeader);
    }
    let opt_id = |v: u32| -> Result<Option<u32>, E> {
        match v {
            NO_TOKEN => Ok(None),
            v if v < n_vocab => Ok(Some(v)),
            _ => Err(E::IdOutOfRange),
        }
    };
    let bos = opt_id(rd32(hdr, field::BOS))?;
    let eos = opt_id(rd32(hdr, field::EOS))?;
    let flags = rd32(hdr, field::FLAGS);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(E::BadHeader);
    }
    let max_token_len = rd32(hdr, field::MAX_TOKEN_LEN);
    let n_merges = rd32(hdr, field::N_MERGES);
    let n_specials = rd32(hdr, field::N_SPECIALS);
    match kind {
        TokenizerKind::SentencePiece => {
            if n_merges != 0 || n_specials != 0 || hdr[field::PRETOK] != 0 {
                return Err(E::BadHeader);
            }
            if flags & (FLAG_INDIVIDUAL_DIGITS | FLAG_IGNORE_MERGES) != 0 {
                return Err(E::BadHeader);
            }
        }
        TokenizerKind::ByteLevelBpe => {
            if flags & FLAG_ADD_DUMMY_PREFIX != 0 {
                return Err(E::BadHeader);
            }
        }
    }

    let mut cur = Cursor { blob, pos: HEADER_LEN };
    let offsets = cur.table(rd32(hdr, field::OFFSETS_OFF), n_vocab.checked_add(1).ok_or(E::BadHeader)?, 4)?;
    let bytes = cur.table(rd32(hdr, field::BYTES_OFF), rd32(hdr, field::BYTES_LEN), 1)?;
    let scores_off = rd32(hdr, field::SCORES_OFF);
    let scores = match kind {
        TokenizerKind::SentencePiece => {
            if scores_off == 0 {
                return Err(E::BadHeader);
            }
            cur.table(scores_off, n_vocab, 4)?
        }
        TokenizerKind::ByteLevelBpe => {
            if scores_off != 0 {
                return Err(E::BadHeader);
            }
            &[]
        }
    };
    let types = cur.table(rd32(hdr, field::TYPES_OFF), n_vocab, 1)?;
    let sorted = cur.table(rd32(hdr, field::SORTED_OFF), n_vocab, 4)?;
    let merges = cur.table(rd32(hdr, field::MERGES_OFF), n_merges, 16)?;
    let specials = cur.table(rd32(hdr, field::SPECIALS_OFF), n_specials, 4)?;

    // Token offsets: start at 0, monotonic, end at bytes_len.
    let n = n_vocab as usize;
    if le_u32(offsets, 0) != 0 || le_u32(offsets, n) as usize != bytes.len() {
        return Err(E::BadTokenOffsets);
    }
    let mut longest = 0u32;
    let mut prev = 0u32;
    for i in 1..=n {
        let o = le_u32(offsets, i);
        if o < prev {
            return Err(E::BadTokenOffsets);
        }
        longest = longest.max(o - prev);
        prev = o;
    }
    if longest != max_token_len {
        return Err(E::BadHeader);
    }

    let mut tok = Tokenizer {
        kind,
        pretok,
        sp_word_split: false,
        flags,
        n_vocab,
        bos,
        eos,
        max_token_len,
        offsets,
        bytes,
        scores,
        types,
        sorted,
        merges,
        specials,
    };

    // Types; byte-fallback tokens must read `<0xNN>`.
    for id in 0..n_vocab {
        match tok.token_type(id) {
            None => return Err(E::BadTokenType),
            Some(TokenType::Byte) => {
                let p = tok.piece(id);
                let ok = p.len() == 6 && p.starts_with(b"<0x") && p[5] == b'>' && hex(p[3]).is_some() && hex(p[4]).is_some();
                if !ok {
                    return Err(E::BadTokenType);
                }
            }
            Some(_) => {}
        }
    }

    // Sorted ids: strictly increasing by (bytes, id), all < n_vocab. With
    // n_vocab entries this makes it a permutation of 0..n_vocab.
    let mut prev: Option<u32> = None;
    for i in 0..n {
        let id = le_u32(sorted, i);
        if id >= n_vocab {
            return Err(E::IdOutOfRange);
        }
        if let Some(p) = prev {
            match tok.piece(p).cmp(tok.piece(id)).then(p.cmp(&id)) {
                Ordering::Less => {}
                _ => return Err(E::NotSorted),
            }
        }
        prev = Some(id);
    }

    // Merges: strictly increasing (left, right); result = left ++ right.
    let mut prev: Option<(u32, u32)> = None;
    for i in 0..tok.n_merges() {
        let (l, r, _rank, res) = tok.merge_entry(i);
        if l >= n_vocab || r >= n_vocab || res >= n_vocab {
            return Err(E::IdOutOfRange);
        }
        if let Some(p) = prev {
            if p >= (l, r) {
                return Err(E::NotSorted);
            }
        }
        prev = Some((l, r));
        if cmp_concat(tok.piece(res), tok.piece(l), tok.piece(r)) != Ordering::Equal {
            return Err(E::BadMerge);
        }
    }

    // Specials: non-empty UTF-8, strictly increasing by bytes.
    let mut prev: Option<u32> = None;
    for i in 0..tok.n_specials() {
        let id = tok.special_id(i);
        if id >= n_vocab {
            return Err(E::IdOutOfRange);
        }
        let p = tok.piece(id);
        if p.is_empty() || core::str::from_utf8(p).is_err() {
            return Err(E::BadSpecialToken);
        }
        if let Some(q) = prev {
            if tok.piece(q) >= p {
                return Err(E::NotSorted);
            }
        }
        prev = Some(id);
    }

    // SentencePiece: when no piece has a space after its first byte, no
    // merge can cross the start of a word, so encoding word by word gives
    // exactly the whole-text result in linear rather than quadratic time.
    tok.sp_word_split = kind == TokenizerKind::SentencePiece && (0..n_vocab).all(|id| !tok.piece(id).iter().skip(1).any(|&b| b == b' '));
    // Byte-level BPE need not cover all 256 bytes: encode drops bytes
    // without a token (see bpe.rs), as HF `tokenizers` does.
    Ok(tok)
}
