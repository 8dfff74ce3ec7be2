//! Tokenizers (placeholder module, being written).
