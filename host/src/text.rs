//! Host conveniences over the runtime tokenizer (Vec-based encode/decode).
use anyhow::Result;
use edgeq_runtime::tokenizer::Tokenizer;

/// Encodes `text` (BOS first when `bos` and the vocabulary has one).
pub fn encode(tok: &Tokenizer<'_>, text: &str, bos: bool) -> Result<Vec<u32>> {
    let bos = bos && tok.bos().is_some();
    // A token covers at least one byte; +3 for BOS and a dummy prefix.
    let mut out = vec![0u32; text.len() + 3];
    let n = tok.encode(text, bos, &mut out).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    out.truncate(n);
    Ok(out)
}

/// Decodes a token sequence (the first token is the `prev` of the second, and so on).
pub fn decode(tok: &Tokenizer<'_>, tokens: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = u32::MAX;
    for &t in tokens {
        if let Ok(p) = tok.decode_piece(prev, t) {
            out.extend_from_slice(p);
        }
        prev = t;
    }
    out
}

pub fn tokenizer<'a>(model: &edgeq_runtime::Model<'a>) -> Result<Tokenizer<'a>> {
    Tokenizer::parse(model.eqf.tokenizer_bytes()).map_err(|e| anyhow::anyhow!("model tokenizer section: {e}"))
}
