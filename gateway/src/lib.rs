//! The tickgate server: the engine, the synthetic feed and the network side, wired
//! together in one process.
//!
//! - [`auth`]: users (argon2 password hashes) and short-lived JWTs; [`sessions`]: their
//!   revocation (logout); [`throttle`]: login throttling.
//! - [`idempotency`]: the gateway's copy of the engine's idempotency keys.
//! - [`config`]: flags and environment in, validated [`Config`] out.
//! - [`server`]: starts the engine shards, the feed, the fan-out hub and the listener;
//!   stops them in order.
//! - [`http`]: the one listener's router (REST, SSE, WebSocket upgrade, health, metrics);
//!   the leaves it and the handlers share: [`state`] (what handlers share), [`request`]
//!   (query parameters, bearer tokens, cookies), [`reply`] (JSON answers), [`error`],
//!   [`limits`] (WebSocket and SSE limits).
//! - [`tls`]: HTTPS and WSS (rustls), reloadable certificates; [`cors`]: cross-origin
//!   requests and the origin checks of cookie sessions.
//! - [`rest`]: the `/api/v1` REST API: market data, login and sessions, account, orders,
//!   fills, positions, alerts; the OpenAPI document.
//! - [`candles`]: OHLCV candles from trades; [`web`]: the embedded web terminal.
//! - [`error`]: the one error type of every API answer (REST, SSE, WebSocket).
//! - [`events`]: the one shape of every engine-event consumer, and the pump threads that
//!   feed them.
//! - [`fanout`]: engine events to shared pre-framed chunks in per-channel rings (the hub),
//!   and the writer threads that write them to the connections.
//! - [`ws`]: per-connection tasks (client input, answers, pings, full sockets), control
//!   messages, backpressure.
//! - [`trading`]: order entry shared by REST and WebSocket; [`views`]: the JSON of orders
//!   and fills they answer with.
//! - [`alerts`], [`sse`]: per-user alert histories, price alerts, the SSE stream.
//! - [`orders`]: users' orders and fills from execution reports; request waiters and the
//!   gate that answers them once a command's reports are all applied.
//! - [`protocol`]: the wire format (binary and JSON) and WebSocket framing.
//! - [`client`]: a small WebSocket client for tests and tools.
//! - [`heap`]: transparent huge pages off for the process (page faults that zero 2 MiB
//!   stalled the hot threads).

pub mod alerts;
pub mod atomic_file;
pub mod auth;
pub mod candles;
pub mod canned;
pub mod client;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod error;
pub mod events;
pub mod fanout;
pub mod heap;
pub mod history;
pub mod http;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod orders;
pub mod protocol;
pub mod reply;
pub mod request;
pub mod rest;
pub mod server;
pub mod sessions;
pub mod sse;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod trading;
pub mod views;
pub mod web;
pub mod ws;

pub use config::{Config, Flags};
pub use server::Server;
