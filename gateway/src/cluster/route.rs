//! Where order entry goes: the engine in this process, or the engine node over NATS.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tickgate_engine::runtime::{EngineHandle, SubmitError};
use tickgate_engine::{CommandKind, OrderId};

use super::wire::{self, SubmitCode};
use super::{ClusterStats, Subjects, REQUEST_TIMEOUT};

/// The longest [`Route::caught_up`] waits for this node's replica.
pub const CAUGHT_UP_MAX: std::time::Duration = std::time::Duration::from_millis(250);

/// Why a command did not reach an engine, or may not have.
#[derive(Debug)]
pub enum RouteError {
    /// The engine said no.
    Refused(SubmitError),
    /// The engine node cannot be reached (NATS has no responder for it, or is down).
    Unreachable(String),
    /// Sent, but no answer came in time: it may have been queued.
    NoAnswer,
    /// A new order whose idempotency key another order holds (one placed through another
    /// gateway): not queued.
    KeyReused,
    /// A retry of the keyed order placed (through another gateway) as this order, at
    /// this engine time: not queued.
    Repeat(OrderId, tickgate_engine::UnixNanos),
}

/// Order entry's way to the engine.
#[derive(Clone, Debug)]
pub enum Route {
    /// The engine runs in this process.
    Local(EngineHandle),
    /// The engine runs on the engine node.
    Remote(Arc<Remote>),
}

/// The engine node, over NATS.
#[derive(Debug)]
pub struct Remote {
    client: async_nats::Client,
    subjects: Subjects,
    /// The replica: which shard owns what.
    replica: EngineHandle,
    /// Order ids left of the last block the engine node handed over.
    ids: Mutex<Range<u64>>,
    stats: Arc<ClusterStats>,
}

impl Remote {
    /// Order entry through `client` to the engine node `replica` follows.
    pub fn new(
        client: async_nats::Client,
        subjects: Subjects,
        replica: EngineHandle,
        stats: Arc<ClusterStats>,
    ) -> Arc<Remote> {
        Arc::new(Remote { client, subjects, replica, ids: Mutex::new(0..0), stats })
    }

    /// Not connected to NATS now: a request would wait in the client and go out on
    /// reconnection, late; say so at once instead.
    fn check_connected(&self) -> Result<(), RouteError> {
        if self.stats.connected.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(RouteError::Unreachable("this gateway has lost NATS (reconnecting)".into()))
        }
    }

    fn unreachable(&self, e: async_nats::RequestError) -> RouteError {
        match e.kind() {
            async_nats::RequestErrorKind::TimedOut => RouteError::NoAnswer,
            async_nats::RequestErrorKind::NoResponders => {
                self.stats.no_responders.fetch_add(1, Ordering::Relaxed);
                RouteError::Unreachable("the engine node is not running (no responders)".into())
            }
            _ => RouteError::Unreachable(format!("the engine node cannot be reached: {e}")),
        }
    }
}

impl Route {
    /// A fresh, engine-wide unique order id.
    pub async fn order_id(&self) -> Result<OrderId, RouteError> {
        let remote = match self {
            Route::Local(engine) => return Ok(engine.allocate_order_id()),
            Route::Remote(remote) => remote,
        };
        loop {
            if let Some(id) = remote.ids.lock().unwrap_or_else(|e| e.into_inner()).next() {
                return Ok(OrderId(id));
            }
            remote.check_connected()?;
            let reply =
                remote.client.request(remote.subjects.ids(), bytes::Bytes::new()).await.map_err(
                    |e| match remote.unreachable(e) {
                        RouteError::NoAnswer => RouteError::Unreachable(
                            "the engine node did not hand out order ids".into(),
                        ),
                        other => other,
                    },
                )?;
            let block = wire::decode_ids(&reply.payload).map_err(RouteError::Unreachable)?;
            if block.is_empty() {
                let why = "the engine node could not record the order ids it hands out";
                return Err(RouteError::Unreachable(why.into()));
            }
            *remote.ids.lock().unwrap_or_else(|e| e.into_inner()) = block;
        }
    }

    /// On a gateway node, waits until `orders` has applied every command the engine node
    /// had applied when asked (at most [`CAUGHT_UP_MAX`]): what another gateway has
    /// acknowledged is then known here too (its replica trails by a few milliseconds).
    /// Whether it caught up; the single process always has.
    pub async fn caught_up(&self, orders: &crate::orders::OrderStore) -> bool {
        let remote = match self {
            Route::Local(_) => return true,
            Route::Remote(remote) => remote,
        };
        if remote.check_connected().is_err() {
            return false;
        }
        let Ok(reply) = remote.client.request(remote.subjects.head(), bytes::Bytes::new()).await
        else {
            return false;
        };
        // A stamp per shard, or the engine node could not say (its queue not applied yet).
        if reply.payload.is_empty() || reply.payload.len() % 8 != 0 {
            return false;
        }
        let stamps: Vec<u64> = reply
            .payload
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect();
        let started = std::time::Instant::now();
        loop {
            let behind =
                stamps.iter().enumerate().any(|(shard, ts)| orders.applied_through(shard).0 < *ts);
            if !behind {
                return true;
            }
            if started.elapsed() > CAUGHT_UP_MAX {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Queues `kind` on the engine that owns its instrument.
    pub async fn submit(&self, kind: CommandKind) -> Result<(), RouteError> {
        let remote = match self {
            Route::Local(engine) => return engine.submit(kind).map_err(RouteError::Refused),
            Route::Remote(remote) => remote,
        };
        let shard = wire::instrument_of(kind)
            .and_then(|i| remote.replica.shard_of(i))
            .ok_or(RouteError::Refused(SubmitError::UnknownInstrument))?;
        remote.check_connected()?;
        let clock = remote.replica.clock();
        let deadline =
            tickgate_engine::UnixNanos(clock.now().0 + REQUEST_TIMEOUT.as_nanos() as u64);
        let reply = remote
            .client
            .request(remote.subjects.submit(shard), wire::submit_request(kind, deadline))
            .await
            .map_err(|e| remote.unreachable(e))?;
        SubmitCode::decode(&reply.payload)
    }
}
