//! Why a journal (or a snapshot) could not be read or written.

use std::io;
use std::path::{Path, PathBuf};

/// Why a journal could not be read (or written).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing failed.
    #[error("journal {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is damaged or inconsistent at a known place.
    #[error("journal {path} at offset {offset}: {what}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Byte offset of the bad record (or header).
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

impl JournalError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        JournalError::Io { path: path.to_path_buf(), source }
    }

    pub(super) fn corrupt(path: &Path, offset: usize, what: impl Into<String>) -> Self {
        JournalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, what: what.into() }
    }
}
