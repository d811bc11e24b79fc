//! Command-line instruments for tuning tickgate.
//!
//! - [`load`]: N WebSocket clients against a running server: delivered messages/s and
//!   bytes/s, end-to-end latency (engine timestamp to receipt, HDR histogram), sequence
//!   continuity, resyncs, gaps and closes.
//! - [`sse`]: N SSE alert streams: delivery latency of price alerts.
//! - [`users`]: users files for `tickgate --users`.
//! - [`capture`]: market-data captures: the recorder and the replayer.
//! - [`plot`]: latency percentile plots (SVG).
//! - [`compare`]: REST polling vs WebSocket push vs SSE.

pub mod capture;
pub mod compare;
pub mod frames;
pub mod load;
pub mod plot;
pub mod sse;
pub mod users;
