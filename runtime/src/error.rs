//! Runtime errors.
use core::fmt;
use edgeq_core::FormatError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RuntimeError {
    /// The model file is malformed or lacks something the model needs.
    Format(FormatError),
    /// The arena is smaller than [`crate::arena_bytes`] says it must be.
    ArenaTooSmall {
        need: usize,
        have: usize,
    },
    /// The arena does not start 4-byte aligned.
    ArenaMisaligned,
    /// More tokens than the session's `max_seq` / `max_batch`.
    ContextFull {
        pos: usize,
        max_seq: usize,
    },
    BatchTooLarge {
        tokens: usize,
        max_batch: usize,
    },
    /// A token id outside the vocabulary.
    BadToken {
        token: u32,
        vocab: u32,
    },
    /// An [`crate::Observer`] stopped the forward pass (the session's
    /// position did not advance; its cache for these positions is partial).
    Interrupted,
    /// A caller-provided output buffer is too short.
    OutputTooSmall {
        need: usize,
        have: usize,
    },
}

impl From<FormatError> for RuntimeError {
    fn from(e: FormatError) -> Self {
        RuntimeError::Format(e)
    }
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RuntimeError::Format(e) => write!(f, "{e}"),
            RuntimeError::ArenaTooSmall { need, have } => {
                write!(f, "arena too small: need {need} bytes, have {have} (size it with arena_bytes)")
            }
            RuntimeError::ArenaMisaligned => write!(f, "arena must be 4-byte aligned"),
            RuntimeError::ContextFull { pos, max_seq } => {
                write!(f, "context full: position {pos} >= max_seq {max_seq}")
            }
            RuntimeError::BatchTooLarge { tokens, max_batch } => write!(
                f,
                "{tokens} tokens in one call but the session was sized for batches of {max_batch}"
            ),
            RuntimeError::BadToken { token, vocab } => {
                write!(f, "token id {token} outside the vocabulary of {vocab}")
            }
            RuntimeError::Interrupted => write!(f, "forward pass stopped by its observer"),
            RuntimeError::OutputTooSmall { need, have } => {
                write!(f, "output buffer holds {have} floats, {need} needed")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RuntimeError {}
