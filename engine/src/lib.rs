//! tickgate's engine: deterministic limit order books, matching, accounts and events.
//!
//! Data flow: a [`Command`] (new order, cancel, replace, transfer) enters an [`Engine`]
//! shard, which validates it, checks and holds funds in the [`Ledger`], matches it
//! against the instrument's [`OrderBook`] and pushes [`Event`]s (execution and transfer
//! reports, trades, book deltas, best bid/offer) into an [`EventSink`]. The [`runtime`]
//! runs each shard on its own thread behind a bounded lock-free command queue and
//! publishes events into an [`EventRing`] that any number of readers consume at their own
//! pace.
//!
//! With durability on ([`durable`]), every command is appended to the [`journal`] before
//! the engine sees it, and [`snapshot`]s of the engine state bound how much of the journal
//! recovery replays. Both formats (and the gateway's order history and the tools'
//! captures) are read and written through [`binary`]'s bounds-checked little-endian
//! reader and writer.
//!
//! Everything inside is integer fixed-point (`Price`, `Qty`, `Amount`); no wall clock or
//! randomness reaches the matching core, so the same commands always give the same events.

// The matching core: private, reached through the types re-exported below.
mod accounts;
mod board;
mod book;
mod command;
mod engine;
mod event;
mod instrument;
mod l2;
mod retention;
mod ring;
mod state_error;

// Around it, the parts other crates use by path: the runtime and its handle, durability
// (journal, snapshots, recovery), the clock, the shared binary format, idempotency keys,
// and the domain types.
pub mod binary;
pub mod clock;
pub mod durable;
pub mod idempotency;
pub mod journal;
pub mod runtime;
pub mod snapshot;
pub mod types;

pub use accounts::{Balance, Ledger};
pub use board::PublishedAccount;
pub use book::{BookSnapshot, OrderBook, RestingOrder};
pub use clock::{Clock, ManualClock, SharedClock, WallClock};
pub use command::{
    CancelOrder, Command, CommandKind, NewOrder, OrderType, RejectReason, ReplaceOrder, ReplaceQty,
    StpMode, TradingStatus, Transfer, UnknownReasonCode,
};
pub use engine::{ChannelSeqs, Engine, EngineCounters, EngineSpec, EventSink};
pub use event::{
    Bbo, BookDelta, Event, EventDigest, ExecKind, ExecReport, Trade, TransferReport, EVENT_WORDS,
};
pub use idempotency::{IdempotencyKey, KeyRecord};
pub use instrument::{default_markets, Asset, Instrument, InstrumentSpec};
pub use l2::{L2Book, Level};
pub use retention::{Retention, Watermark};
pub use ring::{EventRing, ReadOutcome, RingReader, RingWriter};
pub use types::{
    AccountId, Amount, AssetId, InstrumentId, OrderId, Price, Qty, Seq, Side, UnixNanos,
};
