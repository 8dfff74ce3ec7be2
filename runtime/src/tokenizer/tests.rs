//! Unit and property tests for the tokenizers (need feature `alloc` for the
//! builders; without it only the pre-tokenizer tests run).

extern crate alloc;
extern crate std;

use alloc::vec::Vec;

use super::pretokenize::for_each_pretoken;
use super::unicode::{gpt2_byte_to_char, gpt2_char_to_byte, is_letter};
use super::Pretokenizer;

fn pretokens(s: &str, pat: Pretokenizer, digits: bool) -> Vec<&str> {
    let mut v = Vec::new();
    // Collect owned ranges through pointer arithmetic-free slicing.
    let mut pos = 0;
    let _ = for_each_pretoken::<()>(s, pat, digits, |w| {
        v.push(&s[pos..pos + w.len()]);
        pos += w.len();
        Ok(())
    });
    assert_eq!(pos, s.len(), "pre-tokens must tile the input");
    v
}

#[test]
fn gpt2_byte_alphabet() {
    assert_eq!(gpt2_byte_to_char(b' '), 'Ġ');
    assert_eq!(gpt2_byte_to_char(b'\n'), 'Ċ');
    assert_eq!(gpt2_byte_to_char(b'a'), 'a');
    assert_eq!(gpt2_byte_to_char(0xAD), 'Ń');
    for b in 0..=255u8 {
        assert_eq!(gpt2_char_to_byte(gpt2_byte_to_char(b)), Some(b));
    }
    assert_eq!(gpt2_char_to_byte('€'), None);
}

#[test]
fn letter_class_is_general_category_l() {
    assert!(is_letter('a') && is_letter('é') && is_letter('न') && is_letter('日'));
    // Alphabetic but not \p{L}: Devanagari vowel sign E (Mn), circled A (So),
    // Roman numeral one (Nl).
    assert!(!is_letter('\u{947}') && !is_letter('Ⓐ') && !is_letter('Ⅰ'));
    assert!(!is_letter('1') && !is_letter(' ') && !is_letter('!'));
}

#[test]
fn pretokenize_gpt2() {
    let g = Pretokenizer::Gpt2;
    assert_eq!(
        pretokens("Hello world's  end\n\n", g, false),
        ["Hello", " world", "'s", " ", " end", "\n\n"]
    );
    assert_eq!(pretokens("I've 123 !!! ?x", g, false), ["I", "'ve", " 123", " !!!", " ?", "x"]);
    assert_eq!(pretokens("'S \t\tabc", g, false), ["'", "S", " \t", "\t", "abc"]);
    assert_eq!(pretokens("   ", g, false), ["   "]);
    assert_eq!(pretokens("नमस्ते", g, false), ["नमस", "्", "त", "े"]);
    // SmolLM2: digits isolated first, then the regex on the pieces between.
    assert_eq!(pretokens("a 123b", g, true), ["a", " ", "1", "2", "3", "b"]);
    assert_eq!(pretokens("x  1", g, true), ["x", "  ", "1"]);
}

#[test]
fn pretokenize_llama3_qwen2() {
    let l = Pretokenizer::Llama3;
    assert_eq!(
        pretokens("Hello World's 1234567 ...\n\nok  \n x", l, false),
        ["Hello", " World", "'s", " ", "123", "456", "7", " ...\n\n", "ok", "  \n", " x"]
    );
    assert_eq!(pretokens("I'RE (hello", l, false), ["I", "'RE", " (", "hello"]);
    assert_eq!(pretokens("(hello", l, false), ["(hello"]);
    assert_eq!(pretokens("a\r\n\r\nb", l, false), ["a", "\r\n\r\n", "b"]);
    assert_eq!(pretokens("12345", Pretokenizer::Qwen2, false), ["1", "2", "3", "4", "5"]);
    assert_eq!(pretokens("  1", Pretokenizer::Qwen2, false), [" ", " ", "1"]);
}

#[cfg(feature = "alloc")]
mod with_alloc {
    use super::*;
    use crate::tokenizer::*;
    use alloc::string::String;
    use alloc::vec;
    use proptest::prelude::*;

    // ---------- SentencePiece test vocabulary ----------

    const SP_EXTRA: &[(&str, f32)] = &[
        (" ", -100.0), // 259
        ("a", -100.0), // 260
        ("b", -100.0), // 261
        ("c", -100.0), // 262
        ("ab", -1.0),  // 263
        ("bc", -2.0),  // 264
        (" a", -3.0),  // 265
        (" ab", -0.5), // 266
        ("abc", -0.7), // 267
        ("é", -100.0), // 268
        ("q", -100.0), // 269
        ("r", -100.0), // 270
        ("s", -100.0), // 271
        ("qr", -5.0),  // 272
        ("rs", -5.0),  // 273
        ("ss", -1e10), // 274: at llama2.c's threshold, never merged
        ("ab", -9.0),  // 275: duplicate bytes; lookup gives 263
    ];

    fn sp_blob() -> Vec<u8> {
        let mut toks: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
        let mut scores = vec![0.0f32; 3];
        let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
        for b in 0..=255u8 {
            toks.push(std::format!("<0x{b:02X}>").into_bytes());
            scores.push(0.0);
            types.push(TokenType::Byte);
        }
        for (t, s) in SP_EXTRA {
            toks.push(t.as_bytes().to_vec());
            scores.push(*s);
            types.push(TokenType::Normal);
        }
        let refs: Vec<&[u8]> = toks.iter().map(|t| t.as_slice()).collect();
        let cfg = SentencePieceConfig {
            bos: Some(1),
            eos: Some(2),
            add_bos: true,
            add_dummy_prefix: true,
        };
        build_sentencepiece(&refs, &scores, &types, &cfg).unwrap()
    }

    /// Encodes with a roomy buffer, and checks that the smallest buffer that
    /// works gives the same tokens (that path runs without the pair cache)
    /// and that anything smaller is `OutputTooSmall`.
    fn enc(tok: &Tokenizer<'_>, s: &str, bos: bool) -> Vec<u32> {
        let mut out = vec![0u32; 2 * s.len() + 8];
        let n = tok.encode(s, bos, &mut out).unwrap();
        out.truncate(n);
        for size in 0..=s.len() + 2 {
            let mut small = vec![0u32; size];
            match tok.encode(s, bos, &mut small) {
                Ok(m) => {
                    assert_eq!(&small[..m], &out[..], "{s:?} with a {size}-slot buffer");
                    break;
                }
                Err(e) => assert_eq!(e, TokenizerError::OutputTooSmall),
            }
        }
        out
    }

    #[test]
    fn sp_encode_known() {
        let blob = sp_blob();
        let tok = Tokenizer::parse(&blob).unwrap();
        assert_eq!(tok.kind(), TokenizerKind::SentencePiece);
        assert_eq!(tok.vocab_size(), 259 + SP_EXTRA.len());
        assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
        assert_eq!(tok.lookup(b"ab"), Some(263));
        assert_eq!(tok.lookup(b"zz"), None);
        assert_eq!(tok.token_bytes(266), Some(&b" ab"[..]));
        // " a b c" -> "ab" (-1) -> " ab" (-0.5) beats "abc" (-0.7).
        assert_eq!(enc(&tok, "abc", false), [266, 262]);
        assert_eq!(enc(&tok, "cab", true), [1, 259, 262, 263]);
        assert_eq!(enc(&tok, "abab", false), [266, 263]);
        // Equal scores: the leftmost pair wins.
        assert_eq!(enc(&tok, "qrs", false), [259, 272, 271]);
        // Score -1e10 never merges.
        assert_eq!(enc(&tok, "ss", false), [259, 271, 271]);
        // Byte fallback: 'x' (0x78) and the three bytes of '日'.
        assert_eq!(enc(&tok, "xé", false), [259, 3 + 0x78, 268]);
        assert_eq!(enc(&tok, "日", false), [259, 3 + 0xE6, 3 + 0x97, 3 + 0xA5]);
        assert_eq!(enc(&tok, "", true), [1]);
        assert_eq!(enc(&tok, "", false), [] as [u32; 0]);
    }

    #[test]
    fn sp_decode() {
        let blob = sp_blob();
        let tok = Tokenizer::parse(&blob).unwrap();
        assert_eq!(tok.decode_piece(1, 266), Ok(&b"ab"[..]));
        assert_eq!(tok.decode_piece(260, 266), Ok(&b" ab"[..]));
        assert_eq!(tok.decode_piece(NO_TOKEN, 3 + 0xE6), Ok(&[0xE6u8][..]));
        assert_eq!(tok.decode_piece(NO_TOKEN, 1), Ok(&[][..]));
        assert_eq!(tok.decode_piece(NO_TOKEN, 100_000), Err(TokenizerError::InvalidToken));
        for s in ["abc", "xé日 qrs", "  a", "\n\tab"] {
            let t = enc(&tok, s, true);
            assert_eq!(tok.decode(&t), s.as_bytes());
        }
    }

    // ---------- byte-level BPE test vocabulary ----------

    fn gpt2(s: &str) -> String {
        s.bytes().map(gpt2_byte_to_char).collect()
    }

    fn bpe_blob(pretokenizer: Pretokenizer, individual_digits: bool, ignore_merges: bool) -> Vec<u8> {
        let mut vocab: Vec<(String, u32)> = (0..=255u8).map(|b| (gpt2_byte_to_char(b).into(), b as u32)).collect();
        let merged = [" t", "he", " the", "in", " a", "er", "12", "the"];
        for (i, m) in merged.iter().enumerate() {
            vocab.push((gpt2(m), 256 + i as u32));
        }
        let id = |s: &str| vocab.iter().find(|v| v.0 == gpt2(s)).unwrap().1;
        let merges: Vec<(u32, u32)> = [(" ", "t"), ("h", "e"), (" t", "he"), ("i", "n"), (" ", "a"), ("e", "r"), ("1", "2")]
            .iter()
            .map(|(l, r)| (id(l), id(r)))
            .collect();
        let added = [
            AddedToken {
                id: 264,
                content: "<|im_start|>",
                special: true,
            },
            AddedToken {
                id: 265,
                content: "<|im_end|>",
                special: true,
            },
            AddedToken {
                id: 266,
                content: "<tool>",
                special: false,
            },
            AddedToken {
                id: 267,
                content: "<|im",
                special: false,
            },
        ];
        let v: Vec<(&str, u32)> = vocab.iter().map(|(s, i)| (s.as_str(), *i)).collect();
        let cfg = BpeConfig {
            pretokenizer,
            individual_digits,
            ignore_merges,
            add_bos: false,
            bos: Some(264),
            eos: Some(265),
        };
        build_byte_level_bpe(&v, &merges, &added, &cfg).unwrap()
    }

    #[test]
    fn bpe_encode_known() {
        let blob = bpe_blob(Pretokenizer::Gpt2, false, false);
        let tok = Tokenizer::parse(&blob).unwrap();
        assert_eq!(tok.kind(), TokenizerKind::ByteLevelBpe);
        assert_eq!(tok.vocab_size(), 268);
        assert_eq!(tok.token_bytes(258), Some(&b" the"[..]));
        assert_eq!(tok.lookup(b" t"), Some(256));
        assert_eq!(enc(&tok, " the", false), [258]);
        assert_eq!(enc(&tok, "the thin", false), [116, 257, 256, 104, 259]);
        assert_eq!(enc(&tok, " 123", false), [32, 262, 51]);
        assert_eq!(
            enc(&tok, "<|im_start|>user\nhi<|im_end|><tool><|im", false),
            [264, 117, 115, 261, 10, 104, 105, 265, 266, 267]
        );
        assert_eq!(enc(&tok, "a<|im_star", false), [97, 267, 95, 115, 116, 97, 114]);
        assert_eq!(enc(&tok, "hi", true), [264, 104, 105]);
        assert_eq!(tok.decode(&[264, 104, 105, 265, 266]), b"hi<tool>");

        // SmolLM2: digits isolated.
        let blob = bpe_blob(Pretokenizer::Gpt2, true, false);
        let tok = Tokenizer::parse(&blob).unwrap();
        assert_eq!(enc(&tok, "a 123", false), [97, 32, 49, 50, 51]);

        // Llama-3: "the" is a token but has no merge path; ignore_merges emits it.
        let blob = bpe_blob(Pretokenizer::Llama3, false, true);
        let tok = Tokenizer::parse(&blob).unwrap();
        assert_eq!(enc(&tok, "the 12345", false), [263, 32, 262, 51, 52, 53]);
        let blob = bpe_blob(Pretokenizer::Llama3, false, false);
        let tok = Tokenizer::parse(&blob).unwrap();
        assert_eq!(enc(&tok, "the", false), [116, 257]);
    }

    #[test]
    fn bpe_linear_in_text() {
        let blob = bpe_blob(Pretokenizer::Gpt2, false, false);
        let tok = Tokenizer::parse(&blob).unwrap();
        let text: String = "the thin inner 123 ".repeat(20_000);
        let mut out = vec![0u32; text.len() + 2];
        let t0 = std::time::Instant::now();
        let n = tok.encode(&text, false, &mut out).unwrap();
        assert_eq!(tok.decode(&out[..n]), text.as_bytes());
        let spaces = " ".repeat(200_000);
        let n = tok.encode(&spaces, false, &mut out).unwrap();
        assert_eq!(n, 200_000);
        std::println!("encoded {} + {} bytes in {:?}", text.len(), spaces.len(), t0.elapsed());
        assert!(t0.elapsed().as_secs() < 20);
    }

    proptest! {
        #[test]
        fn bpe_round_trip(s in any::<String>(), mix in "[a-e1-3 '\\n\\t.!é日]{0,40}") {
            for (p, d, i) in [
                (Pretokenizer::Gpt2, false, false),
                (Pretokenizer::Gpt2, true, false),
                (Pretokenizer::Llama3, false, true),
                (Pretokenizer::Qwen2, false, false),
            ] {
                let blob = bpe_blob(p, d, i);
                let tok = Tokenizer::parse(&blob).unwrap();
                for text in [&s, &mix] {
                    let mut out = vec![0u32; text.len() + 2];
                    let n = tok.encode(text, false, &mut out).unwrap();
                    prop_assert_eq!(tok.decode(&out[..n]), text.as_bytes());
                }
            }
        }

        #[test]
        fn sp_round_trip(s in any::<String>()) {
            let blob = sp_blob();
            let tok = Tokenizer::parse(&blob).unwrap();
            let mut out = vec![0u32; 4 * s.len() + 2];
            let n = tok.encode(&s, true, &mut out).unwrap();
            prop_assert_eq!(tok.decode(&out[..n]), s.as_bytes());
        }
    }

    // ---------- malformed blobs ----------

    fn exercise(tok: &Tokenizer<'_>) {
        let mut out = [0u32; 64];
        for s in ["", "abc the", "<|im_start|>x 12é日", "  \n\n ab'S"] {
            let _ = tok.encode(s, false, &mut out);
            let _ = tok.encode(s, true, &mut out);
            let _ = tok.encode(s, true, &mut out[..3]);
        }
        for id in 0..tok.vocab_size() as u32 + 2 {
            let _ = tok.decode_piece(1, id);
            let _ = tok.token_bytes(id);
        }
    }

    #[test]
    fn truncated_blobs_are_rejected() {
        for blob in [sp_blob(), bpe_blob(Pretokenizer::Llama3, true, true)] {
            for k in 0..blob.len() {
                assert!(Tokenizer::parse(&blob[..k]).is_err(), "prefix of {k} bytes accepted");
            }
            // Trailing bytes are ignored; an odd start address is fine.
            let mut padded = vec![0u8; 1];
            padded.extend_from_slice(&blob);
            padded.extend_from_slice(&[0xAA; 7]);
            let tok = Tokenizer::parse(&padded[1..]).unwrap();
            exercise(&tok);
        }
    }

    #[test]
    fn corrupted_blobs_never_panic() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut ok, mut err) = (0, 0);
        for blob in [sp_blob(), bpe_blob(Pretokenizer::Gpt2, false, false)] {
            for iter in 0..3000 {
                let mut b = blob.clone();
                for _ in 0..1 + rnd() % 3 {
                    // Half of the flips hit the header, where they matter most.
                    let i = if iter % 2 == 0 {
                        rnd() as usize % 72
                    } else {
                        rnd() as usize % b.len()
                    };
                    b[i] ^= 1 << (rnd() % 8);
                }
                match Tokenizer::parse(&b) {
                    Ok(tok) => {
                        ok += 1;
                        exercise(&tok);
                    }
                    Err(e) => {
                        err += 1;
                        let _ = std::format!("{e}");
                    }
                }
            }
        }
        std::println!("corrupted blobs: {ok} parsed, {err} rejected");
        assert!(err > 0);
    }

    #[test]
    fn builder_rejects_bad_input() {
        let v = [("a", 0u32), ("b", 1)];
        let cfg = BpeConfig {
            pretokenizer: Pretokenizer::Gpt2,
            individual_digits: false,
            ignore_merges: false,
            add_bos: false,
            bos: None,
            eos: None,
        };
        // Missing single-byte tokens are allowed (SmolLM2 lacks some);
        // encode drops those bytes.
        let blob = build_byte_level_bpe(&v, &[], &[], &cfg).unwrap();
        let tok = Tokenizer::parse(&blob).unwrap();
        let mut out = [0u32; 8];
        let n = tok.encode("abc", false, &mut out).unwrap();
        assert_eq!(&out[..n], &[0, 1]);
        // Merge result not in vocab.
        let full: Vec<(String, u32)> = (0..=255u8).map(|b| (gpt2_byte_to_char(b).into(), b as u32)).collect();
        let full: Vec<(&str, u32)> = full.iter().map(|(s, i)| (s.as_str(), *i)).collect();
        assert_eq!(
            build_byte_level_bpe(&full, &[(97, 98)], &[], &cfg),
            Err(TokenizerError::MergeNotInVocab)
        );
        // Gap in ids.
        let mut gap = full.clone();
        gap.push(("ab", 300));
        assert_eq!(build_byte_level_bpe(&gap, &[], &[], &cfg), Err(TokenizerError::InvalidInput));
        // Byte-typed token that is not <0xNN>.
        let cfg = SentencePieceConfig {
            bos: None,
            eos: None,
            add_bos: false,
            add_dummy_prefix: false,
        };
        assert_eq!(
            build_sentencepiece(&[b"<0xZZ>"], &[0.0], &[TokenType::Byte], &cfg),
            Err(TokenizerError::BadTokenType)
        );
        assert_eq!(from_llama2c_bin(&[1, 0, 0, 0, 0, 0]), Err(TokenizerError::Truncated));
    }

    // ---------- llama2.c stories260K tokenizer ----------

    #[test]
    fn llama2c_tok512() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/stories260K/tok512.bin");
        let Ok(bin) = std::fs::read(path) else {
            std::println!("skipping llama2c_tok512: {path} not found");
            return;
        };
        let blob = from_llama2c_bin(&bin).unwrap();
        let tok = Tokenizer::parse(&blob).unwrap();
        assert_eq!(tok.vocab_size(), 512);
        assert!(tok.add_bos_default());
        let text = "Once upon a time, there was a little girl named Lily.";
        let ids = enc(&tok, text, true);
        assert_eq!(ids, [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426]);
        assert_eq!(tok.decode(&ids), text.as_bytes());
        // Non-ASCII goes through byte fallback and back.
        let s = "Lily saw a 🐶 — ünïcödé!";
        let ids = enc(&tok, s, true);
        assert_eq!(tok.decode(&ids), s.as_bytes());
    }

    /// Word-by-word SentencePiece encoding (linear time) equals llama2.c's
    /// whole-text merge loop on real text and on awkward spacing.
    #[test]
    fn sp_word_split_equals_whole_text() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/stories260K/tok512.bin");
        let Ok(bin) = std::fs::read(path) else {
            std::println!("skipping sp_word_split_equals_whole_text: {path} not found");
            return;
        };
        let blob = from_llama2c_bin(&bin).unwrap();
        let split = Tokenizer::parse(&blob).unwrap();
        assert!(split.sp_word_split, "tok512 has no interior spaces");
        let mut whole = split;
        whole.sp_word_split = false;
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/text/tinystories_val.txt"
        ))
        .unwrap_or_default();
        let mut cases: std::vec::Vec<std::string::String> = text
            .chars()
            .take(20000)
            .collect::<std::string::String>()
            .split("\n")
            .map(|l| l.into())
            .collect();
        cases.extend(
            ["", " ", "  a  b ", "a\n b", "\u{1F600} x  ", "   "]
                .iter()
                .map(|s| std::string::String::from(*s)),
        );
        for c in &cases {
            for bos in [false, true] {
                assert_eq!(enc(&split, c, bos), enc(&whole, c, bos), "{c:?}");
            }
        }
    }
}
