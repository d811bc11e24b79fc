//! The error of decoding an engine state (a snapshot's state section). A leaf: the ledger,
//! the idempotency table and the engine's state codec each decode their part and report
//! through it, and none of them needs the others or the snapshot file around them.

use crate::binary::{ByteReader, Truncated};

/// The snapshot ended early or holds a value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot state invalid at byte {at}: {what}")]
pub struct StateError {
    /// Offset into the state section.
    pub at: usize,
    /// What is wrong.
    pub what: String,
}

impl StateError {
    /// The value just before `r`'s position is wrong: `what` says how.
    pub(crate) fn at(r: &ByteReader<'_>, what: impl Into<String>) -> Self {
        StateError { at: r.position(), what: what.into() }
    }
}

impl From<Truncated> for StateError {
    fn from(t: Truncated) -> Self {
        StateError { at: t.at, what: "truncated".into() }
    }
}
