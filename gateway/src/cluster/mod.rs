//! Scale-out over NATS: one engine node, any number of gateway nodes.
//!
//! The engine node runs the engine (journal, feed) as the single process does, and hands
//! the commands each shard applied, once journaled, to NATS. A gateway node runs a
//! *replica* of the engine: it starts from the engine node's snapshots and applies the
//! same commands in the same order with the same stamps. The engine is deterministic, so
//! the replica publishes the very events the engine node published (same sequences, same
//! bytes) and answers the same questions the same way; everything the single process
//! derives from events (books and channels, users' orders and fills, alerts) a gateway
//! derives locally, unchanged. What needs the one true engine (orders, cancels,
//! replaces, halts, order ids) goes to the engine node by request/reply.
//!
//! Why commands rather than events: a command is one record of at most 84 bytes where it
//! makes several events, so the hop carries a fraction of the bytes, and a gateway loses
//! nothing it could not rebuild: it holds the engine's whole state, not a projection.
//!
//! Subjects (prefix `tickgate` by default; see docs/OPERATIONS.md, "Scale-out"):
//!
//! | subject | who | what |
//! |---|---|---|
//! | `<p>.cmd.<shard>` | engine → gateways | batches of applied commands, and a heartbeat every second |
//! | `<p>.replay.<shard>` | request/reply | the commands from a sequence on (gap repair) |
//! | `<p>.snapshot.<shard>` | request/reply | the shard's state now (a gateway's start) |
//! | `<p>.submit.<shard>` | request/reply | an order, cancel, replace or halt to queue |
//! | `<p>.ids` | request/reply | a block of fresh order ids |
//! | `<p>.info` | request/reply | shard count and run id of the engine node |
//!
//! Delivery: everything rides core NATS (at most once). The commands subject need not be
//! more: every batch carries sequences, a gateway that sees one missing (a lost message,
//! a slow consumer at the broker, a reconnect) fetches the missing commands by replay
//! before applying anything later, and the heartbeat bounds how long a loss at the end
//! of a burst goes unnoticed. JetStream would add a second copy of what the journal
//! already keeps durably on the engine node.

pub mod alerts;
pub mod history;
pub mod primary;
pub mod replica;
pub mod route;
pub mod sessions;
pub mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// What this process is in a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Engine, feed and serving in one process (no NATS).
    All,
    /// The engine node: engine, journal, feed; serves `/healthz` and `/metrics` only.
    Engine,
    /// A gateway node: a replica of the engine; serves WebSocket, REST and SSE.
    Gateway,
}

impl Role {
    /// The role named on the command line.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "all" => Some(Role::All),
            "engine" => Some(Role::Engine),
            "gateway" => Some(Role::Gateway),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Engine => "engine",
            Role::Gateway => "gateway",
        }
    }
}

/// How this node reaches NATS.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Engine or gateway.
    pub role: Role,
    /// Server URL(s), comma-separated (`nats://host:4222`).
    pub url: String,
    /// This node's name in logs, metrics and NATS connection names.
    pub node: String,
    /// Subject prefix (several clusters can share one NATS).
    pub prefix: String,
    /// NATS credentials file (JWT + nkey seed).
    pub creds: Option<PathBuf>,
    /// NATS token.
    pub token: Option<String>,
    /// CA certificate (PEM) to verify a TLS NATS server with; implies TLS.
    pub ca: Option<PathBuf>,
    /// Messages a subscription buffers in this process before NATS counts it a slow
    /// consumer and drops (the gateway then repairs the gap).
    pub subscription_capacity: usize,
}

/// The subjects of one cluster.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Subjects { prefix: prefix.to_string() }
    }

    /// Batches of `shard`'s applied commands.
    pub fn commands(&self, shard: usize) -> String {
        format!("{}.cmd.{shard}", self.prefix)
    }

    /// Replay of `shard`'s commands.
    pub fn replay(&self, shard: usize) -> String {
        format!("{}.replay.{shard}", self.prefix)
    }

    /// `shard`'s state.
    pub fn snapshot(&self, shard: usize) -> String {
        format!("{}.snapshot.{shard}", self.prefix)
    }

    /// Commands to queue on `shard`.
    pub fn submit(&self, shard: usize) -> String {
        format!("{}.submit.{shard}", self.prefix)
    }

    /// Order id blocks.
    pub fn ids(&self) -> String {
        format!("{}.ids", self.prefix)
    }

    /// The engine node's description.
    pub fn info(&self) -> String {
        format!("{}.info", self.prefix)
    }

    /// The stamp of each shard's last command the engine node applied (a u64 per shard):
    /// what a gateway waits for before it acts on everything acknowledged so far.
    pub fn head(&self) -> String {
        format!("{}.head", self.prefix)
    }
}

/// How long a request to the engine node waits for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How far apart the clocks of a gateway node and the engine node may be (a request's
/// deadline is the gateway's time; the engine node compares it with its own): NTP keeps
/// them within milliseconds.
pub const CLOCK_SKEW_MAX: Duration = Duration::from_secs(1);
/// Period of the engine node's per-shard heartbeat on the commands subject.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence on a commands subject after which a gateway calls its market data stale.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// How long the pieces of one answer (a snapshot, a history) may take to arrive, all of
/// them.
pub const PIECES_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `payload` to `subject` and collects the answer's pieces
/// ([`wire::answer_pieces`]) from a reply subject of its own.
pub async fn fetch_pieces(
    client: &async_nats::Client,
    subject: String,
    payload: bytes::Bytes,
) -> anyhow::Result<Vec<u8>> {
    use futures_util::StreamExt;
    let inbox = client.new_inbox();
    let mut pieces = client.subscribe(inbox.clone()).await?;
    client.publish_with_reply(subject, inbox, payload).await?;
    let mut whole = wire::Pieces::default();
    let collect = async {
        while let Some(piece) = pieces.next().await {
            if let Some(bytes) = whole.add(&piece.payload).map_err(anyhow::Error::msg)? {
                return Ok(bytes);
            }
        }
        anyhow::bail!("the reply subscription ended")
    };
    tokio::time::timeout(PIECES_TIMEOUT, collect).await.map_err(|_| {
        anyhow::anyhow!("no whole answer within {PIECES_TIMEOUT:?} (is the engine node running?)")
    })?
}

/// Connects to NATS: reconnecting forever with capped exponential backoff (NATS resends
/// subscriptions on reconnect), counting connection changes in `stats`.
pub async fn connect(
    config: &ClusterConfig,
    stats: std::sync::Arc<ClusterStats>,
) -> anyhow::Result<async_nats::Client> {
    if config.creds.is_none() && config.token.is_none() && !config.url.contains('@') {
        tracing::warn!(
            "NATS without credentials (--nats-token, --nats-creds or user@ in the URL): any \
             process that reaches the broker reads every order and can place orders for any \
             account (docs/OPERATIONS.md, Scale-out, Access)"
        );
    }
    let events = std::sync::Arc::clone(&stats);
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("tickgate-{}", config.node))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .subscription_capacity(config.subscription_capacity.max(64))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64 << attempts.min(6)).min(2_000))
        })
        .event_callback(move |event| {
            let stats = std::sync::Arc::clone(&events);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        stats.connected.store(true, Ordering::Release);
                        tracing::info!("NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        stats.connected.store(false, Ordering::Release);
                        stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        stats.slow_consumer.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            sid,
                            "NATS slow consumer: messages dropped, gaps will be repaired"
                        );
                    }
                    other => tracing::info!("NATS: {other}"),
                }
            }
        });
    if let Some(creds) = &config.creds {
        options = options.credentials_file(creds).await?;
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let urls: Vec<async_nats::ServerAddr> =
        config.url.split(',').map(|u| u.trim().parse()).collect::<Result<_, _>>()?;
    let client = options.connect(urls).await?;
    stats.connected.store(true, Ordering::Release);
    *stats.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.statistics());
    Ok(client)
}

/// Counters of this node's NATS side, in `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Connected to NATS now.
    pub connected: AtomicBool,
    /// Times the connection dropped.
    pub disconnects: AtomicU64,
    /// Times NATS dropped messages for this process (slow consumer).
    pub slow_consumer: AtomicU64,
    /// The NATS client's own counters (every message it sent: publishes, requests and
    /// replies), once connected.
    pub client: std::sync::Mutex<Option<std::sync::Arc<async_nats::Statistics>>>,
    /// Messages received on the commands subjects.
    pub messages_in: AtomicU64,
    /// Bytes received on the commands subjects.
    pub bytes_in: AtomicU64,
    /// Commands applied by this replica.
    pub commands_applied: AtomicU64,
    /// Gaps found on the commands subjects (and repaired by replay).
    pub gaps: AtomicU64,
    /// Commands fetched by replay.
    pub replayed: AtomicU64,
    /// Requests sent to the engine node that found no responder.
    pub no_responders: AtomicU64,
    /// Which shards' commands have been silent past [`STALE_AFTER`] (bit per shard).
    stale_shards: AtomicU64,
    /// Microseconds from the engine node's stamp of the last command received to its
    /// receipt here (clocks of both nodes assumed in step: one machine, or NTP).
    pub lag_us: AtomicU64,
}

impl ClusterStats {
    /// Marks `shard`'s commands silent or heard; `true` if that changed for the shard.
    pub fn set_stale(&self, shard: usize, stale: bool) -> bool {
        let bit = 1u64 << (shard % 64);
        let before = if stale {
            self.stale_shards.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.stale_shards.fetch_and(!bit, Ordering::AcqRel)
        };
        (before & bit != 0) != stale
    }

    /// Some shard's commands have been silent past [`STALE_AFTER`].
    pub fn is_stale(&self) -> bool {
        self.stale_shards.load(Ordering::Acquire) != 0
    }

    /// A gateway's market data is stale for its clients: NATS lost, or the engine node
    /// silent (what `/healthz` and the clients' stale notices say).
    pub fn stale_for_clients(&self) -> bool {
        !self.connected.load(Ordering::Acquire) || self.is_stale()
    }

    /// Prometheus lines.
    pub fn render(&self, node: &str, out: &mut String) {
        use std::fmt::Write;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let b = |c: &AtomicBool| u8::from(c.load(Ordering::Relaxed));
        let client = self.client.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let sent = |pick: fn(&async_nats::Statistics) -> u64| client.as_deref().map_or(0, pick);
        let lines = [
            (
                "tickgate_nats_connected",
                "gauge",
                u64::from(b(&self.connected)),
                "1 while connected to NATS.",
            ),
            (
                "tickgate_nats_disconnects_total",
                "counter",
                n(&self.disconnects),
                "Times the NATS connection was lost.",
            ),
            (
                "tickgate_nats_slow_consumer_total",
                "counter",
                n(&self.slow_consumer),
                "Messages the NATS client dropped because this node read too slowly.",
            ),
            (
                "tickgate_nats_messages_out_total",
                "counter",
                sent(|s| s.out_messages.load(Ordering::Relaxed)),
                "NATS messages this node sent: publishes, requests and replies.",
            ),
            (
                "tickgate_nats_bytes_out_total",
                "counter",
                sent(|s| s.out_bytes.load(Ordering::Relaxed)),
                "NATS payload bytes this node sent (no protocol overhead).",
            ),
            (
                "tickgate_nats_messages_in_total",
                "counter",
                n(&self.messages_in),
                "NATS messages received.",
            ),
            (
                "tickgate_nats_bytes_in_total",
                "counter",
                n(&self.bytes_in),
                "NATS payload bytes received.",
            ),
            (
                "tickgate_replica_commands_applied_total",
                "counter",
                n(&self.commands_applied),
                "Engine node commands this gateway's replica applied.",
            ),
            (
                "tickgate_replica_gaps_total",
                "counter",
                n(&self.gaps),
                "Gaps in the engine node's command stream, repaired by replay.",
            ),
            (
                "tickgate_replica_replayed_total",
                "counter",
                n(&self.replayed),
                "Commands fetched by replay to repair gaps.",
            ),
            (
                "tickgate_nats_no_responders_total",
                "counter",
                n(&self.no_responders),
                "Requests to the engine node that found no responder (engine down).",
            ),
            (
                "tickgate_replica_stale",
                "gauge",
                u64::from(self.is_stale()),
                "1 while some shard's commands have been silent too long (clients told stale).",
            ),
            (
                "tickgate_replica_lag_microseconds",
                "gauge",
                n(&self.lag_us),
                "From the engine node's timestamp to this replica, latest batch, in microseconds.",
            ),
        ];
        for (name, kind, value, text) in lines {
            crate::metrics::help(out, name, text);
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {value}");
        }
    }
}
