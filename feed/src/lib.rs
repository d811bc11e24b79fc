//! Where market activity comes from.
//!
//! - [`synthetic`]: a seeded, deterministic order-flow generator (market makers quoting
//!   around a drifting fair price, takers crossing the spread, cancels and replaces) that
//!   keeps every instrument lively. The same seed gives the same commands.
//! - [`driver`]: runs a generator against a live engine at a fixed rate on its own thread.

pub mod driver;
pub mod synthetic;

pub use driver::{FeedDriver, FeedStats};
pub use synthetic::{FlowConfig, OrderIds, SequentialIds, SyntheticFlow};
