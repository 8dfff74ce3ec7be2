//! edgeq tokenizer blob → Hugging Face `tokenizer.json` + `tokenizer_config.json`,
//! the inverse of [`crate::import::hf_tokenizer`]:
//!
//! * byte-level BPE: vocabulary in GPT-2's byte alphabet, merges in rank
//!   order, the pre-tokenizer that selects the same split regex (GPT-2,
//!   GPT-2 with individual digits as SmolLM2 has, Llama 3, Qwen2), ByteLevel
//!   decoder; added (control / user-defined) tokens as `added_tokens`.
//! * SentencePiece: the `LlamaTokenizerFast` layout `transformers` writes
//!   when it converts a SentencePiece model: BPE with `byte_fallback`, a
//!   `Prepend("▁")` + `Replace(" ", "▁")` normalizer, and merges generated
//!   the way its converter does: every split of a piece into two pieces of
//!   the vocabulary, pieces taken by decreasing score.
use crate::import::hf_tokenizer::{LLAMA3_REGEX, QWEN2_REGEX};
use anyhow::Result;
use edgeq_runtime::tokenizer::{
    gpt2_byte_to_char, Pretokenizer, TokenType, Tokenizer, TokenizerKind, FLAG_ADD_DUMMY_PREFIX, FLAG_INDIVIDUAL_DIGITS,
};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The token's spelling in `tokenizer.json`.
fn spelling(tok: &Tokenizer<'_>, id: u32) -> String {
    let bytes = tok.token_bytes(id).unwrap_or_default();
    let ty = tok.token_type(id).unwrap_or(TokenType::Normal);
    match (tok.kind(), ty) {
        (TokenizerKind::ByteLevelBpe, TokenType::Normal) => bytes.iter().map(|&b| gpt2_byte_to_char(b)).collect(),
        (TokenizerKind::ByteLevelBpe, _) => String::from_utf8_lossy(bytes).into_owned(),
        (_, TokenType::Byte | TokenType::Control | TokenType::Unknown) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::from_utf8_lossy(bytes).replace(' ', "\u{2581}"),
    }
}

fn added_token(id: u32, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": !special, "special": special})
}

/// `tokenizer.json` text for the tokenizer.
pub fn tokenizer_json(tok: &Tokenizer<'_>) -> Result<String> {
    let n = tok.vocab_size() as u32;
    let pieces: Vec<String> = (0..n).map(|id| spelling(tok, id)).collect();
    let types: Vec<TokenType> = (0..n).map(|id| tok.token_type(id).unwrap_or(TokenType::Normal)).collect();
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (p, ty)) in pieces.iter().zip(&types).enumerate() {
        // A duplicate spelling (possible in a SentencePiece model) keeps the first id.
        if !vocab.contains_key(p) {
            vocab.insert(p.clone(), id.into());
        }
        match ty {
            TokenType::Control | TokenType::Unknown => added.push(added_token(id as u32, p, true)),
            TokenType::UserDefined => added.push(added_token(id as u32, p, false)),
            _ => {}
        }
    }
    let root = if tok.kind() == TokenizerKind::ByteLevelBpe {
        let merges: Vec<Value> = super::merges_by_rank(tok)
            .into_iter()
            .map(|(l, r)| json!([pieces[l as usize], pieces[r as usize]]))
            .collect();
        let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
        let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
        let pre = match tok.pretokenizer() {
            Pretokenizer::Gpt2 if tok.flags() & FLAG_INDIVIDUAL_DIGITS != 0 => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            Pretokenizer::Gpt2 => byte_level(true),
            Pretokenizer::Llama3 => json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            Pretokenizer::Qwen2 => json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
        };
        let ignore_merges = tok.flags() & edgeq_runtime::tokenizer::FLAG_IGNORE_MERGES != 0;
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": post_processor(tok, &pieces),
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
        })
    } else {
        let merges = sentencepiece_merges(tok, &pieces, &types);
        let unk = types.iter().position(|t| *t == TokenType::Unknown).map(|i| pieces[i].clone());
        let mut normalizers = Vec::new();
        if tok.flags() & FLAG_ADD_DUMMY_PREFIX != 0 {
            normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
        }
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if tok.flags() & FLAG_ADD_DUMMY_PREFIX != 0 {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": post_processor(tok, &pieces),
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                      "ignore_merges": false, "vocab": vocab, "merges": merges}
        })
    };
    Ok(serde_json::to_string_pretty(&root)?)
}

/// BOS prepended by a `TemplateProcessing` when the tokenizer adds it.
fn post_processor(tok: &Tokenizer<'_>, pieces: &[String]) -> Value {
    match tok.bos().filter(|_| tok.add_bos_default()) {
        Some(b) => {
            let s = &pieces[b as usize];
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": s, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": s, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"SpecialToken": {"id": s, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {s: {"id": s, "ids": [b], "tokens": [s]}}})
        }
        None if tok.kind() == TokenizerKind::ByteLevelBpe => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
        None => Value::Null,
    }
}

/// Merges of a SentencePiece vocabulary as `transformers`' converter makes
/// them: pieces by decreasing score (id order on ties), each with every
/// split into two vocabulary pieces (ordered by the ids of the halves).
fn sentencepiece_merges(tok: &Tokenizer<'_>, pieces: &[String], types: &[TokenType]) -> Vec<Value> {
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(pieces.len());
    for (i, (p, t)) in pieces.iter().zip(types).enumerate() {
        if *t == TokenType::Normal {
            ids.entry(p.as_str()).or_insert(i);
        }
    }
    let mut order: Vec<usize> = (0..pieces.len())
        .filter(|&i| types[i] == TokenType::Normal && pieces[i].chars().count() > 1)
        .collect();
    let score = |i: usize| tok.score(i as u32).unwrap_or(0.0);
    order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
    let mut merges = Vec::new();
    for &i in &order {
        let s = &pieces[i];
        let mut local = Vec::new();
        for (k, _) in s.char_indices().skip(1) {
            let (l, r) = s.split_at(k);
            if let (Some(&a), Some(&b)) = (ids.get(l), ids.get(r)) {
                local.push((a, b));
            }
        }
        local.sort_unstable();
        merges.extend(local.into_iter().map(|(a, b)| json!([pieces[a], pieces[b]])));
    }
    merges
}

/// `tokenizer_config.json`: special tokens, BOS policy, chat template.
pub fn tokenizer_config_json(tok: &Tokenizer<'_>, chat_template: Option<&str>, max_len: u32) -> Result<String> {
    let name = |id: Option<u32>| id.map(|i| Value::String(spelling(tok, i))).unwrap_or(Value::Null);
    let unk = (0..tok.vocab_size() as u32).find(|&i| tok.token_type(i) == Some(TokenType::Unknown));
    let class = if tok.kind() == TokenizerKind::ByteLevelBpe {
        "PreTrainedTokenizerFast"
    } else {
        "LlamaTokenizerFast"
    };
    let mut v = json!({
        "tokenizer_class": class,
        "bos_token": name(tok.bos()),
        "eos_token": name(tok.eos()),
        "unk_token": name(unk),
        "add_bos_token": tok.add_bos_default(),
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": max_len,
    });
    if tok.kind() != TokenizerKind::ByteLevelBpe {
        // No `add_prefix_space` key: LlamaTokenizerFast then rebuilds itself
        // from the slow tokenizer (tokenizer.model), which is not written;
        // the dummy prefix lives in tokenizer.json's normalizer instead.
        v["legacy"] = json!(false);
    }
    if let Some(t) = chat_template {
        v["chat_template"] = json!(t);
    }
    Ok(serde_json::to_string_pretty(&v)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::hf_tokenizer::{from_json, Fallback};

    fn round_trip(blob: &[u8], texts: &[&str]) {
        let tok = Tokenizer::parse(blob).unwrap();
        let tj = tokenizer_json(&tok).unwrap();
        let tc = tokenizer_config_json(&tok, Some("{{ messages }}"), 512).unwrap();
        let back = from_json(&tj, Some(&tc), Fallback { bos: None, eos: None }).unwrap();
        let tok2 = Tokenizer::parse(&back.blob).unwrap();
        assert_eq!(tok2.vocab_size(), tok.vocab_size());
        assert_eq!(
            (tok2.bos(), tok2.eos(), tok2.add_bos_default()),
            (tok.bos(), tok.eos(), tok.add_bos_default())
        );
        for t in texts {
            let (a, b) = (
                crate::text::encode(&tok, t, true).unwrap(),
                crate::text::encode(&tok2, t, true).unwrap(),
            );
            assert_eq!(a, b, "{t:?}");
        }
    }

    const TEXTS: &[&str] = &[
        "Once upon a time, there was a little girl named Lily.",
        "The year 2024 had 366 days; 3.14159 is pi.\n\nNew  lines\tand tabs ünïcödé 漢字 🙂",
        "",
        " leading space",
    ];

    #[test]
    fn sentencepiece_tokenizer_round_trips_through_tokenizer_json() {
        round_trip(&crate::tiny::model(1).unwrap().tokenizer, TEXTS);
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/stories260K"));
        if !dir.is_dir() {
            eprintln!("skipping the stories260K half: {} is absent", dir.display());
            return;
        }
        let m = crate::import::llama2c::import(&dir.join("stories260K.bin"), &dir.join("tok512.bin")).unwrap();
        round_trip(&m.tokenizer, TEXTS);
    }

    #[test]
    fn byte_level_tokenizer_round_trips_through_tokenizer_json() {
        let t = from_json(
            &crate::tiny::byte_level_tokenizer_json(),
            None,
            Fallback { bos: None, eos: Some(263) },
        )
        .unwrap();
        round_trip(&t.blob, TEXTS);
    }
}
