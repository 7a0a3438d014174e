//! The storage error type and the mapping of I/O failures onto it.

use std::io;

use super::FillId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("storage is full")]
    Full,
    #[error("corrupt data in {key_or_fill}: {detail}")]
    Corrupt { key_or_fill: String, detail: String },
    #[error(
        "fill content mismatch: expected {expected_len} bytes, got {got_len} \
         (sha256 matches: {sha256_matches})"
    )]
    Integrity {
        expected_len: u64,
        got_len: u64,
        sha256_matches: bool,
    },
    #[error("chunk out of order for fill {fill}: expected index {expected}, got {got}")]
    OutOfOrder {
        fill: FillId,
        expected: u32,
        got: u32,
    },
    #[error("fill {0} is unknown or already committed or aborted")]
    UnknownFill(FillId),
    #[error("record namespace longer than 255 bytes")]
    NamespaceTooLong,
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull => StoreError::Full,
            _ => StoreError::Io(e.to_string()),
        }
    }
}
