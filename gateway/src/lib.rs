//! The tickgate server: the engine, the synthetic feed and (as they land) the network
//! side, wired together in one process.
//!
//! [`config`] turns flags and environment into a validated [`Config`]; [`server::run`]
//! starts the engine shards and the feed, logs a one-line summary per second, and stops
//! cleanly when its shutdown future resolves.

pub mod config;
pub mod server;

pub use config::{Config, Flags};
