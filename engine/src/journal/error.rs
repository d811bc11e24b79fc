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
    /// The data directory was written with another shard count (see
    /// [`crate::durable::check_shards`]).
    #[error(
        "data directory {dir} was written with {recorded} shards, not {asked}: start with \
         --shards {recorded} (instrument i belongs to shard i % shards: another count would \
         recover the wrong books from the wrong journals)"
    )]
    ShardsChanged {
        /// The data directory.
        dir: PathBuf,
        /// The count it was written with.
        recorded: usize,
        /// The count asked for.
        asked: usize,
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
