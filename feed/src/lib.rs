//! Where market activity comes from.
//!
//! - [`synthetic`]: a seeded, deterministic order-flow generator (market makers quoting
//!   around a drifting fair price, takers crossing the spread, cancels and replaces) that
//!   keeps every instrument lively. The same seed gives the same commands.
//! - [`driver`]: runs a generator against a live engine at a fixed rate on its own thread.
//! - [`replay`]: replays a recorded command journal into a live engine at 1x, Nx or full
//!   speed.
//! - [`worker`]: a stoppable background thread.

pub mod driver;
pub mod replay;
pub mod synthetic;
pub mod worker;

pub use driver::{FeedDriver, FeedStats};
pub use replay::{JournalReplay, ReplayStamps, ReplayStats};
pub use synthetic::{FlowConfig, OrderIds, SequentialIds, SyntheticFlow};
pub use worker::Worker;
