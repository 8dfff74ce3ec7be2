//! Hugging Face `tokenizers` (`tokenizer.json`) → edgeq tokenizer blob.
//!
//! Two shapes of `model.type == "BPE"` are understood:
//!
//! * **byte-level BPE** (GPT-2, SmolLM2, Llama 3, Qwen2): the vocabulary is
//!   in GPT-2's byte-to-unicode alphabet, merges are applied by rank, and
//!   the pre-tokenizer regex is recognised from the `pre_tokenizer` tree
//!   (see [`detect_pretokenizer`]); built with [`build_byte_level_bpe`].
//! * **SentencePiece-style BPE** (Llama 2, Mistral, TinyLlama: `byte_fallback:
//!   true`, a `Metaspace` pre-tokenizer or a `Prepend("▁")`/`Replace(" ",
//!   "▁")` normalizer, pieces spelled with `'▁'`): converted to a
//!   SentencePiece-score blob ([`build_sentencepiece`]); see [`sp_scores`]
//!   for how merge ranks become scores.
//!
//! `tokenizer_config.json` (optional) supplies `add_bos_token` and the
//! `bos_token` / `eos_token` strings; ids fall back to the caller's (from
//! `config.json`).
use anyhow::{bail, ensure, Context, Result};
use edgeq_runtime::tokenizer::{
    build_byte_level_bpe, build_sentencepiece, AddedToken, BpeConfig, Pretokenizer, SentencePieceConfig, TokenType, Tokenizer,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// A converted tokenizer.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    /// The edgeq tokenizer blob.
    pub blob: Vec<u8>,
    /// Number of tokens in the blob.
    pub vocab_size: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    /// `"byte-level-bpe"` or `"sentencepiece-bpe"`.
    pub kind: &'static str,
    /// Warnings and notes for the user (approximations, ignored settings).
    pub notes: Vec<String>,
}

/// Ids known from elsewhere (`config.json`), used when `tokenizer_config.json`
/// does not name the special tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fallback {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// Reads `dir/tokenizer.json` (required) and `dir/tokenizer_config.json`
/// (optional) and converts them.
pub fn from_dir(dir: &Path, fallback: Fallback) -> Result<HfTokenizer> {
    let tj = dir.join("tokenizer.json");
    if !tj.is_file() {
        let hint = if dir.join("tokenizer.model").is_file() {
            " (there is a SentencePiece tokenizer.model: convert it with `transformers`, e.g. \
             `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)` with a fast tokenizer, which writes tokenizer.json)"
        } else {
            " (download it from the model's repository, or save one with `AutoTokenizer.from_pretrained(...).save_pretrained(dir)`)"
        };
        bail!(
            "{}: no tokenizer.json in the model directory; edgeq needs the Hugging Face `tokenizers` file{hint}",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&tj).with_context(|| format!("cannot read {}", tj.display()))?;
    let tc = dir.join("tokenizer_config.json");
    let tc_text = if tc.is_file() {
        Some(std::fs::read_to_string(&tc).with_context(|| format!("cannot read {}", tc.display()))?)
    } else {
        None
    };
    from_json(&text, tc_text.as_deref(), fallback).with_context(|| format!("{}", tj.display()))
}

/// Converts the text of `tokenizer.json` (and of `tokenizer_config.json`).
pub fn from_json(tokenizer_json: &str, tokenizer_config: Option<&str>, fallback: Fallback) -> Result<HfTokenizer> {
    let root: Value = serde_json::from_str(tokenizer_json).context("tokenizer.json is not valid JSON")?;
    let tcfg: Option<Value> = match tokenizer_config {
        Some(t) => Some(serde_json::from_str(t).context("tokenizer_config.json is not valid JSON")?),
        None => None,
    };
    let model = root
        .get("model")
        .filter(|m| m.is_object())
        .context("tokenizer.json: no \"model\" object")?;
    let mtype = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
    ensure!(
        mtype == "BPE",
        "tokenizer.json: model type \"{mtype}\" is not supported (edgeq supports BPE: byte-level like GPT-2/Llama 3/Qwen2, or SentencePiece-style like Llama 2/Mistral)"
    );
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .context("tokenizer.json: model.vocab missing or not an object")?;
    let mut vocab_list: Vec<(&str, u32)> = Vec::with_capacity(vocab.len());
    for (s, id) in vocab {
        let id = id
            .as_u64()
            .filter(|&v| v < u32::MAX as u64)
            .with_context(|| format!("tokenizer.json: model.vocab[{s:?}] is not a token id"))?;
        vocab_list.push((s.as_str(), id as u32));
    }
    let merges = parse_merges(model)?;
    let added = parse_added(&root)?;

    let sp_style = model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false)
        || has_type(root.get("pre_tokenizer"), "Metaspace")
        || has_type(root.get("normalizer"), "Prepend");
    let mut notes = Vec::new();
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if let Some(s) = model.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) {
            bail!("tokenizer.json: model.{key} = {s:?} is not supported");
        }
    }
    if model.get("dropout").and_then(Value::as_f64).is_some_and(|d| d > 0.0) {
        notes.push("tokenizer.json: BPE dropout is ignored (edgeq tokenizes deterministically)".into());
    }

    // Special tokens: tokenizer_config.json strings, else config.json ids.
    let id_of = |s: &str| -> Option<u32> {
        added
            .iter()
            .find(|a| a.content == s)
            .map(|a| a.id)
            .or_else(|| vocab.get(s).and_then(Value::as_u64).map(|v| v as u32))
    };
    let special = |key: &str, fb: Option<u32>, notes: &mut Vec<String>| -> Option<u32> {
        let Some(s) = tcfg.as_ref().and_then(|c| c.get(key)).and_then(token_string) else {
            return fb;
        };
        match id_of(s) {
            Some(id) => {
                if let Some(f) = fb.filter(|&f| f != id) {
                    notes.push(format!(
                        "tokenizer_config.json {key} {s:?} is id {id}, config.json says {f}: using {id}"
                    ));
                }
                Some(id)
            }
            None => {
                notes.push(format!(
                    "tokenizer_config.json {key} {s:?} is not a token; using config.json's id {fb:?}"
                ));
                fb
            }
        }
    };
    let bos = special("bos_token", fallback.bos, &mut notes);
    let eos = special("eos_token", fallback.eos, &mut notes);
    let explicit_add_bos = tcfg.as_ref().and_then(|c| c.get("add_bos_token")).and_then(Value::as_bool);
    let template_bos = post_processor_adds_bos(root.get("post_processor"));

    let (blob, kind) = if sp_style {
        let add_bos = explicit_add_bos.or(template_bos).unwrap_or(true);
        (
            sentencepiece(&root, model, &vocab_list, &merges, &added, bos, eos, add_bos, &mut notes)?,
            "sentencepiece-bpe",
        )
    } else {
        let add_bos = explicit_add_bos.or(template_bos).unwrap_or(false);
        (
            byte_level(&root, model, &vocab_list, &merges, &added, bos, eos, add_bos, &mut notes)?,
            "byte-level-bpe",
        )
    };
    let t = Tokenizer::parse(&blob).map_err(|e| anyhow::anyhow!("internal error: converted tokenizer does not parse: {e}"))?;
    Ok(HfTokenizer {
        vocab_size: t.vocab_size(),
        bos: t.bos(),
        eos: t.eos(),
        add_bos: t.add_bos_default(),
        blob,
        kind,
        notes,
    })
}

/// `"<s>"` or `{"content": "<s>", ...}` (older `AddedToken` dumps).
fn token_string(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("content").and_then(Value::as_str))
}

/// Whether `v` (a normalizer / pre-tokenizer tree) is or contains a node of `ty`.
fn has_type(v: Option<&Value>, ty: &str) -> bool {
    nodes(v).iter().any(|n| n.get("type").and_then(Value::as_str) == Some(ty))
}

/// A node and, for `Sequence`, its children (flattened).
fn nodes(v: Option<&Value>) -> Vec<&Value> {
    let mut out = Vec::new();
    if let Some(v) = v.filter(|v| v.is_object()) {
        if v.get("type").and_then(Value::as_str) == Some("Sequence") {
            for key in ["pretokenizers", "normalizers", "processors", "decoders"] {
                if let Some(a) = v.get(key).and_then(Value::as_array) {
                    for c in a {
                        out.extend(nodes(Some(c)));
                    }
                }
            }
        } else {
            out.push(v);
        }
    }
    out
}

/// `TemplateProcessing` whose `single` template starts with a special token:
/// the tokenizer adds BOS (Llama 3 has no `add_bos_token` in its config).
fn post_processor_adds_bos(v: Option<&Value>) -> Option<bool> {
    let tp = nodes(v)
        .into_iter()
        .find(|n| n.get("type").and_then(Value::as_str) == Some("TemplateProcessing"))?;
    let first = tp.get("single").and_then(Value::as_array).and_then(|a| a.first())?;
    Some(first.get("SpecialToken").is_some())
}

/// `model.merges`: `"a b"` strings (tokenizers < 0.20) or `["a", "b"]` pairs.
fn parse_merges(model: &Value) -> Result<Vec<(String, String)>> {
    let Some(m) = model.get("merges") else {
        return Ok(Vec::new());
    };
    let arr = m.as_array().context("tokenizer.json: model.merges is not an array")?;
    let mut out = Vec::with_capacity(arr.len());
    for (i, e) in arr.iter().enumerate() {
        let pair = match e {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                _ => None,
            },
            _ => None,
        };
        out.push(pair.with_context(|| format!("tokenizer.json: model.merges[{i}] = {e} is neither \"a b\" nor [\"a\", \"b\"]"))?);
    }
    Ok(out)
}

struct Added {
    id: u32,
    content: String,
    special: bool,
}

fn parse_added(root: &Value) -> Result<Vec<Added>> {
    let Some(arr) = root.get("added_tokens").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    arr.iter()
        .enumerate()
        .map(|(i, a)| {
            let id = a.get("id").and_then(Value::as_u64).filter(|&v| v < u32::MAX as u64);
            let content = a.get("content").and_then(Value::as_str);
            match (id, content) {
                (Some(id), Some(c)) if !c.is_empty() => Ok(Added {
                    id: id as u32,
                    content: c.to_string(),
                    special: a.get("special").and_then(Value::as_bool).unwrap_or(false),
                }),
                _ => bail!("tokenizer.json: added_tokens[{i}] needs an id and a non-empty content"),
            }
        })
        .collect()
}

/// Maps string merges to id pairs.
fn merge_ids(merges: &[(String, String)], ids: &HashMap<&str, u32>) -> Result<Vec<(u32, u32)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, (a, b))| match (ids.get(a.as_str()), ids.get(b.as_str())) {
            (Some(&x), Some(&y)) => Ok((x, y)),
            _ => bail!("tokenizer.json: merge {i} ({a:?} {b:?}) names a token that is not in model.vocab"),
        })
        .collect()
}

/// Ids of `vocab ∪ added` must be exactly `0..n`.
fn check_dense(vocab: &[(&str, u32)], added: &[Added]) -> Result<usize> {
    let mut seen: Vec<bool> = Vec::new();
    for id in vocab.iter().map(|v| v.1).chain(added.iter().map(|a| a.id)) {
        let id = id as usize;
        ensure!(id < 1 << 24, "tokenizer.json: token id {id} is implausibly large");
        if seen.len() <= id {
            seen.resize(id + 1, false);
        }
        seen[id] = true;
    }
    if let Some(gap) = seen.iter().position(|s| !s) {
        bail!(
            "tokenizer.json: no token has id {gap}, but ids go up to {} (ids must be dense)",
            seen.len() - 1
        );
    }
    ensure!(!seen.is_empty(), "tokenizer.json: empty vocabulary");
    Ok(seen.len())
}

/// The known split regexes, as written in `tokenizer.json` (after JSON unescaping).
pub const LLAMA3_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Pre-tokenizer of a byte-level BPE `tokenizer.json`: (regex, individual
/// digits). Rules:
/// * `ByteLevel` alone (with its built-in regex) → GPT-2;
/// * a `Digits { individual_digits: true }` in a `Sequence` → individual digits;
/// * a `Split` whose regex has `\p{N}{1,3}` → Llama 3;
/// * a `Split` whose regex has `[^\r\n\p{L}\p{N}]?\p{L}+` and a lone `\p{N}` → Qwen2;
/// * anything else → GPT-2 with a warning.
pub fn detect_pretokenizer(pre: Option<&Value>, notes: &mut Vec<String>) -> (Pretokenizer, bool) {
    let ns = nodes(pre);
    let mut result = None;
    let mut digits = false;
    let mut other = Vec::new();
    for n in &ns {
        let ty = n.get("type").and_then(Value::as_str).unwrap_or("?");
        match ty {
            "ByteLevel" => {
                if n.get("add_prefix_space").and_then(Value::as_bool) == Some(true) {
                    notes.push("warning: tokenizer.json: ByteLevel add_prefix_space=true is not supported; text is encoded without a leading space".into());
                }
                if n.get("use_regex").and_then(Value::as_bool).unwrap_or(true) {
                    result.get_or_insert(Pretokenizer::Gpt2);
                }
            }
            "Digits" => {
                if n.get("individual_digits").and_then(Value::as_bool) == Some(true) {
                    digits = true;
                } else {
                    other.push("Digits(individual_digits=false)".to_string());
                }
            }
            "Split" => {
                let re = n
                    .get("pattern")
                    .and_then(|p| p.get("Regex").or_else(|| p.get("String")))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let (p, exact) = if re.contains(r"\p{N}{1,3}") {
                    (Some(Pretokenizer::Llama3), re == LLAMA3_REGEX)
                } else if re.contains(r"[^\r\n\p{L}\p{N}]?\p{L}+") && re.contains(r"|\p{N}|") {
                    (Some(Pretokenizer::Qwen2), re == QWEN2_REGEX)
                } else if re == GPT2_REGEX {
                    (Some(Pretokenizer::Gpt2), true)
                } else {
                    (None, false)
                };
                match p {
                    Some(p) => {
                        if !exact {
                            notes.push(format!("warning: tokenizer.json: split regex {re:?} is not exactly the {p:?} pattern edgeq implements; using that pattern"));
                        }
                        // A Split replaces ByteLevel's own regex.
                        result = Some(p);
                    }
                    None => other.push(format!("Split({re:?})")),
                }
            }
            t => other.push(t.to_string()),
        }
    }
    if !other.is_empty() || result.is_none() {
        let what = if ns.is_empty() {
            "no pre-tokenizer".to_string()
        } else {
            format!("pre-tokenizer parts {other:?}")
        };
        notes.push(format!(
            "warning: tokenizer.json: {what} not recognised; using the GPT-2 split pattern (tokenization may differ from Hugging Face)"
        ));
    }
    (result.unwrap_or(Pretokenizer::Gpt2), digits)
}

#[allow(clippy::too_many_arguments)]
fn byte_level(
    root: &Value,
    model: &Value,
    vocab: &[(&str, u32)],
    merges: &[(String, String)],
    added: &[Added],
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    notes: &mut Vec<String>,
) -> Result<Vec<u8>> {
    check_dense(vocab, added)?;
    let ids: HashMap<&str, u32> = vocab.iter().copied().collect();
    let pairs = merge_ids(merges, &ids)?;
    match root.get("normalizer").filter(|n| !n.is_null()) {
        None => {}
        Some(n) if has_type(Some(n), "NFC") && nodes(Some(n)).len() == 1 => {
            notes.push("note: tokenizer.json: the NFC normalizer is not applied; pass NFC-normalized text".into())
        }
        Some(n) => notes.push(format!(
            "warning: tokenizer.json: normalizer {} is ignored",
            n.get("type").and_then(Value::as_str).unwrap_or("?")
        )),
    }
    let (pretokenizer, individual_digits) = detect_pretokenizer(root.get("pre_tokenizer"), notes);
    let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);
    // Vocab entries that an added token overrides need not be GPT-2 strings.
    for &(s, id) in vocab {
        if !added.iter().any(|a| a.id == id) && s.chars().any(|c| edgeq_runtime::tokenizer::gpt2_char_to_byte(c).is_none()) {
            bail!("tokenizer.json: vocab entry {s:?} (id {id}) is not in the GPT-2 byte alphabet: not a byte-level BPE tokenizer");
        }
    }
    let added_refs: Vec<AddedToken<'_>> = added
        .iter()
        .map(|a| AddedToken {
            id: a.id,
            content: &a.content,
            special: a.special,
        })
        .collect();
    let cfg = BpeConfig {
        pretokenizer,
        individual_digits,
        ignore_merges,
        add_bos,
        bos,
        eos,
    };
    build_byte_level_bpe(vocab, &pairs, &added_refs, &cfg)
        .map_err(|e| anyhow::anyhow!("tokenizer.json: building the byte-level BPE tokenizer: {e}"))
}

/// Scores for a SentencePiece-score blob built from HF BPE merges.
///
/// edgeq's SentencePiece encoder (llama2.c semantics) repeatedly merges the
/// adjacent pair whose concatenation is the vocabulary piece with the
/// *highest score* (leftmost on ties), and never merges into a piece scoring
/// `<= -1e10`. HF's BPE repeatedly applies the merge of *lowest rank*
/// (leftmost on ties). Scoring each piece `-(rank of the first merge that
/// creates it)` makes the two orders identical: the lowest rank is the
/// highest score. Pieces that no merge creates must never be produced by
/// merging (HF cannot produce them), so multi-character ones score `-1e10`;
/// single characters (and byte pieces) are never the result of a merge, so
/// their score is irrelevant: they get 0, like llama2.c's `<0xNN>` pieces.
///
/// One difference remains: HF merges a specific (left, right) pair, edgeq any
/// pair whose concatenation is the piece. Tokenizers converted from
/// SentencePiece by `transformers` list *every* split of a piece as a merge
/// at adjacent ranks, so for them (Llama 2, Mistral, TinyLlama) the two agree.
pub fn sp_scores(pieces: &[String], merges: &[(String, String)]) -> Vec<f32> {
    let mut by_piece: HashMap<&str, usize> = HashMap::with_capacity(pieces.len());
    for (i, p) in pieces.iter().enumerate() {
        by_piece.entry(p.as_str()).or_insert(i);
    }
    let mut scores: Vec<Option<f32>> = vec![None; pieces.len()];
    let mut cat = String::new();
    for (rank, (a, b)) in merges.iter().enumerate() {
        cat.clear();
        cat.push_str(a);
        cat.push_str(b);
        if let Some(&i) = by_piece.get(cat.as_str()) {
            scores[i].get_or_insert(-(rank as f32));
        }
    }
    pieces
        .iter()
        .zip(scores)
        .map(|(p, s)| s.unwrap_or(if p.chars().count() <= 1 { 0.0 } else { -1e10 }))
        .collect()
}

fn is_byte_piece(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() == 6 && b.starts_with(b"<0x") && b[5] == b'>' && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit()
}

#[allow(clippy::too_many_arguments)]
fn sentencepiece(
    root: &Value,
    model: &Value,
    vocab: &[(&str, u32)],
    merges: &[(String, String)],
    added: &[Added],
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    notes: &mut Vec<String>,
) -> Result<Vec<u8>> {
    let n = check_dense(vocab, added)?;
    let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false);
    let unk = model.get("unk_token").and_then(Value::as_str);
    // Pieces in HF spelling ('▁' for space); added tokens fill ids the vocab lacks.
    let mut pieces: Vec<Option<String>> = vec![None; n];
    let mut types = vec![TokenType::Normal; n];
    for &(s, id) in vocab {
        pieces[id as usize] = Some(s.to_string());
        if byte_fallback && is_byte_piece(s) {
            types[id as usize] = TokenType::Byte;
        } else if Some(s) == unk {
            types[id as usize] = TokenType::Unknown;
        }
    }
    for a in added {
        let i = a.id as usize;
        if pieces[i].is_none() {
            pieces[i] = Some(a.content.clone());
        }
        types[i] = if Some(a.content.as_str()) == unk {
            TokenType::Unknown
        } else if a.special {
            TokenType::Control
        } else {
            notes.push(format!(
                "note: tokenizer.json: added token {:?} (id {}) is not split out of text by the SentencePiece encoder",
                a.content, a.id
            ));
            TokenType::UserDefined
        };
    }
    let pieces: Vec<String> = pieces.into_iter().map(|p| p.unwrap_or_default()).collect();
    let scores = sp_scores(&pieces, merges);
    // Merge names must exist (as for byte-level BPE), catching corrupt files.
    let ids: HashMap<&str, u32> = vocab.iter().copied().collect();
    merge_ids(merges, &ids)?;

    // Dummy prefix: Metaspace prepend_scheme (or legacy add_prefix_space),
    // or a Prepend("▁") normalizer.
    let meta = nodes(root.get("pre_tokenizer"))
        .into_iter()
        .find(|n| n.get("type").and_then(Value::as_str) == Some("Metaspace"));
    let add_dummy_prefix = match meta {
        Some(m) => match m.get("prepend_scheme").and_then(Value::as_str) {
            Some("never") => false,
            Some(_) => true,
            None => m.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true),
        },
        None => has_type(root.get("normalizer"), "Prepend") || root.get("normalizer").is_none_or(Value::is_null),
    };
    if let Some(rep) = meta.and_then(|m| m.get("replacement")).and_then(Value::as_str) {
        ensure!(
            rep == "\u{2581}",
            "tokenizer.json: Metaspace replacement {rep:?} is not supported (only '\u{2581}')"
        );
    }
    if !byte_fallback {
        notes.push("warning: tokenizer.json: no byte_fallback; characters outside the vocabulary will fail to encode unless ids 3.. are byte tokens".into());
    }
    let raw: Vec<Vec<u8>> = pieces.iter().map(|p| p.replace('\u{2581}', " ").into_bytes()).collect();
    let refs: Vec<&[u8]> = raw.iter().map(|p| &p[..]).collect();
    let cfg = SentencePieceConfig {
        bos,
        eos,
        add_bos,
        add_dummy_prefix,
    };
    build_sentencepiece(&refs, &scores, &types, &cfg)
        .map_err(|e| anyhow::anyhow!("tokenizer.json: building the SentencePiece tokenizer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeq_runtime::tokenizer::{gpt2_byte_to_char, TokenizerKind};

    fn encode(t: &HfTokenizer, text: &str) -> Vec<u32> {
        let tok = Tokenizer::parse(&t.blob).unwrap();
        let mut out = vec![0u32; text.len() + 8];
        let n = tok.encode(text, false, &mut out).unwrap();
        out.truncate(n);
        out
    }

    /// A byte-level vocabulary: the 256 byte chars (id = byte) plus `extra`.
    fn byte_vocab(extra: &[&str]) -> serde_json::Map<String, Value> {
        let mut v = serde_json::Map::new();
        for b in 0..=255u8 {
            v.insert(gpt2_byte_to_char(b).to_string(), b.into());
        }
        for (i, e) in extra.iter().enumerate() {
            v.insert(e.to_string(), (256 + i).into());
        }
        v
    }

    fn bpe_json(pre: Value, merges: Value, extra: &[&str], added: Value) -> String {
        serde_json::json!({
            "version": "1.0",
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "byte_fallback": false, "ignore_merges": false,
                      "vocab": byte_vocab(extra), "merges": merges}
        })
        .to_string()
    }

    #[test]
    fn byte_level_string_and_array_merges() {
        let added = serde_json::json!([{"id": 260, "content": "<|endoftext|>", "special": true}]);
        let pre = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let extra = ["he", "ll", "Ġw", "hell"];
        let a = bpe_json(
            pre.clone(),
            serde_json::json!(["h e", "l l", "Ġ w", "he ll"]),
            &extra,
            added.clone(),
        );
        let b = bpe_json(
            pre,
            serde_json::json!([["h", "e"], ["l", "l"], ["Ġ", "w"], ["he", "ll"]]),
            &extra,
            added,
        );
        let cfg = r#"{"bos_token": null, "eos_token": "<|endoftext|>", "add_bos_token": false}"#;
        for j in [a, b] {
            let t = from_json(&j, Some(cfg), Fallback { bos: Some(260), eos: None }).unwrap();
            assert_eq!(t.kind, "byte-level-bpe");
            assert_eq!(t.vocab_size, 261);
            assert_eq!(t.eos, Some(260));
            assert_eq!(t.bos, Some(260), "bos null in tokenizer_config -> fallback");
            assert!(!t.add_bos);
            let tok = Tokenizer::parse(&t.blob).unwrap();
            assert_eq!(tok.kind(), TokenizerKind::ByteLevelBpe);
            assert_eq!(tok.pretokenizer(), Pretokenizer::Gpt2);
            // "hello world" -> hell o Ġw o r l d
            assert_eq!(
                encode(&t, "hello world"),
                vec![259, b'o' as u32, 258, b'o' as u32, b'r' as u32, b'l' as u32, b'd' as u32]
            );
            assert_eq!(encode(&t, "a<|endoftext|>"), vec![b'a' as u32, 260]);
            assert!(t.notes.is_empty(), "{:?}", t.notes);
        }
    }

    #[test]
    fn pretokenizer_detection() {
        let mut notes = Vec::new();
        let bl = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true});
        assert_eq!(detect_pretokenizer(Some(&bl), &mut notes), (Pretokenizer::Gpt2, false));
        let smol = serde_json::json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, bl]});
        assert_eq!(detect_pretokenizer(Some(&smol), &mut notes), (Pretokenizer::Gpt2, true));
        assert!(notes.is_empty(), "{notes:?}");
        let split = |re: &str| {
            serde_json::json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
        };
        assert_eq!(
            detect_pretokenizer(Some(&split(LLAMA3_REGEX)), &mut notes),
            (Pretokenizer::Llama3, false)
        );
        assert_eq!(
            detect_pretokenizer(Some(&split(QWEN2_REGEX)), &mut notes),
            (Pretokenizer::Qwen2, false)
        );
        assert!(notes.is_empty(), "{notes:?}");
        // The JSON text escapes backslashes: check the unescaped match too.
        let raw = r#"{"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}"#;
        let v: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(detect_pretokenizer(Some(&v), &mut notes).0, Pretokenizer::Llama3);
        assert!(notes.is_empty(), "{notes:?}");
        // Unknown -> GPT-2 with a warning.
        let ws = serde_json::json!({"type": "Whitespace"});
        assert_eq!(detect_pretokenizer(Some(&ws), &mut notes), (Pretokenizer::Gpt2, false));
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("Whitespace"), "{notes:?}");
    }

    #[test]
    fn llama3_style_flags_and_template_bos() {
        let pre = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
        let added = serde_json::json!([{"id": 257, "content": "<|begin_of_text|>", "special": true},
                                       {"id": 258, "content": "<|end_of_text|>", "special": true}]);
        let mut v: Value = serde_json::from_str(&bpe_json(pre, serde_json::json!(["h e"]), &["he"], added)).unwrap();
        v["model"]["ignore_merges"] = true.into();
        v["post_processor"] = serde_json::json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]});
        let cfg = r#"{"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|end_of_text|>"}}"#;
        let t = from_json(&v.to_string(), Some(cfg), Fallback::default()).unwrap();
        let tok = Tokenizer::parse(&t.blob).unwrap();
        assert_eq!(tok.pretokenizer(), Pretokenizer::Llama3);
        assert_ne!(tok.flags() & edgeq_runtime::tokenizer::FLAG_IGNORE_MERGES, 0);
        assert_eq!((t.bos, t.eos, t.add_bos), (Some(257), Some(258), true));
        assert_eq!(
            encode(&t, "12345 he"),
            vec![b'1' as u32, b'2' as u32, b'3' as u32, b'4' as u32, b'5' as u32, b' ' as u32, 256]
        );
    }

    /// A tiny Llama-2-style (SentencePiece converted by transformers) tokenizer.json.
    fn sp_json(merges: Value) -> String {
        let mut vocab = serde_json::Map::new();
        let mut push = |s: &str| {
            let id = vocab.len();
            vocab.insert(s.to_string(), id.into());
        };
        for s in ["<unk>", "<s>", "</s>"] {
            push(s);
        }
        for b in 0..=255u32 {
            push(&format!("<0x{b:02X}>"));
        }
        // 259.. : chars, then merged pieces
        for s in ["▁", "a", "b", "c", "▁a", "ab", "▁ab", "abc", "bc"] {
            push(s);
        }
        serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<unk>", "special": true},
                {"id": 1, "content": "<s>", "special": true},
                {"id": 2, "content": "</s>", "special": true}],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": null,
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]},
            "decoder": {"type": "Sequence", "decoders": []},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true,
                      "vocab": vocab, "merges": merges}
        })
        .to_string()
    }

    #[test]
    fn sentencepiece_style() {
        // ids: ▁=259 a=260 b=261 c=262 ▁a=263 ab=264 ▁ab=265 abc=266 bc=267
        // rank order: a b (ab) < ▁ a (▁a) < ▁ ab / ▁a b (▁ab) < b c (bc) < ab c (abc)
        let merges = serde_json::json!(["a b", "▁ a", "▁ ab", "▁a b", "b c", "ab c"]);
        let t = from_json(
            &sp_json(merges),
            None,
            Fallback {
                bos: Some(1),
                eos: Some(2),
            },
        )
        .unwrap();
        assert_eq!(t.kind, "sentencepiece-bpe");
        assert_eq!((t.bos, t.eos, t.add_bos, t.vocab_size), (Some(1), Some(2), true, 268));
        let tok = Tokenizer::parse(&t.blob).unwrap();
        assert_eq!(tok.kind(), TokenizerKind::SentencePiece);
        assert_eq!(tok.token_bytes(263), Some(&b" a"[..]));
        assert_eq!(tok.token_type(0), Some(TokenType::Unknown));
        assert_eq!(tok.token_type(1), Some(TokenType::Control));
        assert_eq!(tok.token_type(3 + 0x41), Some(TokenType::Byte));
        assert_eq!(tok.score(264), Some(-0.0));
        assert_eq!(tok.score(263), Some(-1.0));
        assert_eq!(tok.score(265), Some(-2.0), "first merge creating the piece");
        assert_eq!(tok.score(266), Some(-5.0));
        // " abc" -> ▁ a b c -> (a b) -> ▁ ab c -> (▁ ab) -> ▁ab c; abc never forms
        // because ▁ab outranks ab+c, as in HF BPE.
        assert_eq!(encode(&t, "abc"), vec![265, 262]);
        // "bc": b c -> bc (rank 4), dummy prefix stays alone.
        assert_eq!(encode(&t, "bc"), vec![259, 267]);
        // unknown char -> byte fallback <0xE2><0x82><0xAC> for "€"
        assert_eq!(encode(&t, "a€"), vec![263, 3 + 0xE2, 3 + 0x82, 3 + 0xAC]);
        // Array merges give the same blob.
        let arr = serde_json::json!([["a", "b"], ["▁", "a"], ["▁", "ab"], ["▁a", "b"], ["b", "c"], ["ab", "c"]]);
        assert_eq!(
            from_json(
                &sp_json(arr),
                None,
                Fallback {
                    bos: Some(1),
                    eos: Some(2)
                }
            )
            .unwrap()
            .blob,
            t.blob
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let pre = serde_json::json!({"type": "ByteLevel"});
        let bad_merge = bpe_json(pre.clone(), serde_json::json!(["h zz"]), &["he"], serde_json::json!([]));
        let e = from_json(&bad_merge, None, Fallback::default()).unwrap_err().to_string();
        assert!(e.contains("merge 0") && e.contains("zz"), "{e}");
        let gap = bpe_json(
            pre,
            serde_json::json!([]),
            &["he"],
            serde_json::json!([{"id": 300, "content": "<x>", "special": true}]),
        );
        let e = from_json(&gap, None, Fallback::default()).unwrap_err().to_string();
        assert!(e.contains("no token has id 257"), "{e}");
        let wp = r#"{"model": {"type": "WordPiece", "vocab": {}}}"#;
        let e = from_json(wp, None, Fallback::default()).unwrap_err().to_string();
        assert!(e.contains("WordPiece"), "{e}");
    }
}
