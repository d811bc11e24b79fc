//! Configuration: raw flags and environment (clap) in, validated [`Config`] out.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use tickgate_engine::durable::DurabilityConfig;
use tickgate_engine::journal::SyncMode;

use crate::cluster::Role;
use crate::limits::WsLimits;

/// A flag's integer parser that refuses values outside `range`, naming it (clap's error:
/// "invalid value '0' for '--x <X>': 0 is not in 1..=64"). An absurd value must stop the
/// start with a clear message, not panic later or be changed silently.
fn within<T>(range: std::ops::RangeInclusive<u64>) -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: Send + Sync + 'static + std::error::Error + ToString,
{
    clap::builder::RangedU64ValueParser::<T>::new().range(range)
}

/// Command-line flags; every one can also come from the environment.
#[derive(Parser, Debug, Clone)]
#[command(name = "tickgate", version, about = "A market-data trading backend in one process")]
pub struct Flags {
    /// Address to listen on (HTTP, WebSocket, metrics).
    #[arg(long, env = "TICKGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Engine shard threads (instruments are spread over them).
    #[arg(long, env = "TICKGATE_SHARDS", default_value_t = 1, global = true, value_parser = within::<usize>(1..=64))]
    pub shards: usize,
    /// Network I/O threads (HTTP, WebSocket and SSE connections); 0 = one per core. Fewer
    /// than the cores can serve more requests when something else on the machine (a load
    /// generator) takes a core; fan-out latency prefers one per core (docs/BENCHMARKS.md).
    #[arg(long, env = "TICKGATE_WORKERS", default_value_t = 0, value_parser = within::<usize>(0..=256))]
    pub workers: usize,
    /// Keep transparent huge pages for the heap. Off by default: the allocator asks for
    /// them, and a fault on fresh heap then zeroes 2 MiB on a hot thread (10,000
    /// subscribers stalled for seconds with them: docs/BENCHMARKS.md).
    #[arg(long, env = "TICKGATE_TRANSPARENT_HUGE_PAGES", value_parser = clap::builder::BoolishValueParser::new())]
    pub transparent_huge_pages: bool,
    /// Synthetic order flow in commands per second (0 = as fast as the engine takes them: a
    /// benchmark setting that keeps the engine's queue full, so users' orders wait and are
    /// refused `engine_busy`).
    #[arg(long, env = "TICKGATE_FEED_RATE", default_value_t = 20_000, value_parser = within::<u64>(0..=10_000_000))]
    pub feed_rate: u64,
    /// Turn the synthetic feed off.
    #[arg(long, env = "TICKGATE_NO_FEED", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_feed: bool,
    /// Instead of the synthetic feed, replay the command journal of this data directory
    /// (a recording of an earlier run) into the engine: same commands, same order.
    #[arg(long, env = "TICKGATE_REPLAY")]
    pub replay: Option<std::path::PathBuf>,
    /// Pace of --replay relative to the recording (e.g. 1, 10); 0: as fast as possible.
    #[arg(long, env = "TICKGATE_REPLAY_SPEED", default_value_t = 1.0)]
    pub replay_speed: f64,
    /// Stamps of --replay's commands: `recorded` (the recording's: the replay reaches the
    /// recorded state and publishes the recorded events) or `clock` (this server's clock,
    /// as live commands: for latency measured from the events' stamps; the state then
    /// differs where time counts, idempotency keys).
    #[arg(long, env = "TICKGATE_REPLAY_STAMPS", default_value = "recorded", value_parser = ["recorded", "clock"])]
    pub replay_stamps: String,
    /// Seed of the synthetic flow: the same seed gives the same market.
    #[arg(long, env = "TICKGATE_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Instrument whose best bid/ask the per-second summary shows.
    #[arg(long, env = "TICKGATE_SUMMARY_SYMBOL", default_value = "BTC-USD")]
    pub summary_symbol: String,
    /// Commands each engine queue holds before submitters are told to back off.
    #[arg(long, env = "TICKGATE_QUEUE_CAPACITY", default_value_t = 65_536, value_parser = within::<usize>(1..=16_777_216))]
    pub queue_capacity: usize,
    /// Events each engine ring keeps for readers.
    #[arg(long, env = "TICKGATE_RING_CAPACITY", default_value_t = 1 << 18, value_parser = within::<usize>(1024..=16_777_216))]
    pub ring_capacity: usize,
    /// Chunks each fan-out channel ring keeps (a client further behind is resynced).
    #[arg(long, env = "TICKGATE_CHANNEL_RING_CHUNKS", default_value_t = 1024, value_parser = within::<usize>(16..=65_536))]
    pub channel_ring_chunks: usize,
    /// Shortest fan-out pass in microseconds: a pass's events of one channel share a frame,
    /// so longer passes mean fewer, larger frames.
    #[arg(long, env = "TICKGATE_FANOUT_PASS_US", default_value_t = 200, value_parser = within::<u64>(0..=32_000))]
    pub fanout_pass_us: u64,
    /// How long an idle engine thread spins for the next command before it parks, in
    /// microseconds. Default: 50 (waking a parked thread costs tens of microseconds and a
    /// place in the run queue; docs/BENCHMARKS.md), 0 on NATS nodes (commands come in
    /// batches a millisecond or so apart there, and a spin would take the fan-out's CPU).
    #[arg(long, env = "TICKGATE_ENGINE_SPIN_US", value_parser = within::<u64>(0..=1_000_000))]
    pub engine_spin_us: Option<u64>,
    /// Fan-out writer threads, which write market data to WebSocket connections (each
    /// owns a share of them); 0 = one per two cores (the engine, the hub and the kernel's
    /// network stack need the others; docs/BENCHMARKS.md).
    #[arg(long, env = "TICKGATE_FANOUT_WRITERS", default_value_t = 0, value_parser = within::<usize>(0..=64))]
    pub fanout_writers: usize,
    /// After each round that wrote, a fan-out writer rests this share of the round's time,
    /// in percent (0 to 400), before the next: fewer, larger writes, and the cores for
    /// others in the meantime. `auto` (the default): 25 while the kernel's CPU pressure
    /// says tasks wait for a core (a fifth of the time or more), none otherwise; 0: never.
    #[arg(long, env = "TICKGATE_FANOUT_ROUND_REST_PCT", default_value = "auto")]
    pub fanout_round_rest_pct: crate::fanout::RestPolicy,
    /// Open WebSocket connections at most (more get HTTP 503).
    #[arg(long, env = "TICKGATE_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = within::<usize>(1..=1_000_000))]
    pub max_connections: usize,
    /// Of --max-connections, how many are kept for connections that bring a token or the
    /// session cookie to the upgrade (at most a tenth of --max-connections is kept):
    /// anonymous ones get 503 that many short.
    #[arg(long, env = "TICKGATE_WS_RESERVED_FOR_USERS", default_value_t = 100, value_parser = within::<usize>(0..=1_000_000))]
    pub ws_reserved_for_users: usize,
    /// WebSocket connections one user may hold authenticated at once (more: 503 at the
    /// upgrade, or `limit_exceeded` for `auth`).
    #[arg(long, env = "TICKGATE_WS_CONNECTIONS_PER_USER", default_value_t = 64, value_parser = within::<usize>(1..=1_000_000))]
    pub ws_connections_per_user: usize,
    /// Open orders one account may have; a new order past it is refused `limit_exceeded`.
    #[arg(long, env = "TICKGATE_OPEN_ORDERS_MAX", default_value_t = 1_000, value_parser = within::<usize>(1..=1_000_000))]
    pub open_orders_max: usize,
    /// Subscriptions per WebSocket connection at most.
    #[arg(long, env = "TICKGATE_MAX_SUBSCRIPTIONS", default_value_t = 64, value_parser = within::<usize>(1..=4_096))]
    pub max_subscriptions: usize,
    /// Largest inbound WebSocket message in bytes (larger: close 1009).
    #[arg(long, env = "TICKGATE_WS_MESSAGE_BYTES_MAX", default_value_t = 4096, value_parser = within::<usize>(128..=16_777_216))]
    pub ws_message_bytes_max: usize,
    /// Inbound WebSocket messages per second per connection.
    #[arg(long, env = "TICKGATE_WS_RATE", default_value_t = 20, value_parser = within::<u32>(1..=1_000_000))]
    pub ws_rate: u32,
    /// Inbound WebSocket burst per connection.
    #[arg(long, env = "TICKGATE_WS_BURST", default_value_t = 40, value_parser = within::<u32>(1..=1_000_000))]
    pub ws_burst: u32,
    /// Server ping period in milliseconds.
    #[arg(long, env = "TICKGATE_PING_MS", default_value_t = 20_000, value_parser = within::<u64>(1..=3_600_000))]
    pub ping_ms: u64,
    /// Silence after a ping, in milliseconds, that closes a connection (4001).
    #[arg(long, env = "TICKGATE_PONG_TIMEOUT_MS", default_value_t = 40_000, value_parser = within::<u64>(1..=3_600_000))]
    pub pong_timeout_ms: u64,
    /// Quiet time in milliseconds after which a subscribed channel gets a heartbeat.
    #[arg(long, env = "TICKGATE_HEARTBEAT_MS", default_value_t = 5_000, value_parser = within::<u64>(1..=3_600_000))]
    pub heartbeat_ms: u64,
    /// A write stalled this long (milliseconds) ends the connection (its socket is full, so
    /// no close frame can be sent).
    #[arg(long, env = "TICKGATE_WRITE_STALL_MS", default_value_t = 10_000, value_parser = within::<u64>(1..=3_600_000))]
    pub write_stall_ms: u64,
    /// Kernel send buffer per WebSocket connection, in bytes.
    #[arg(long, env = "TICKGATE_SOCKET_SEND_BUFFER", default_value_t = 256 * 1024, value_parser = within::<usize>(4_096..=67_108_864))]
    pub socket_send_buffer: usize,
    /// Market data a WebSocket client may have unread (written, its read receipt not yet
    /// back), in bytes, at most; at least 16 KiB. Each connection starts with 128 KiB (or
    /// this, if smaller) and doubles up to this while it reads but is held back, or reads
    /// so much that it answers more than 12 read receipts a second; beyond
    /// its allowance a client gets nothing more until it catches up: what a client that
    /// stops reading costs the server, once.
    #[arg(long, env = "TICKGATE_WS_UNREAD_BYTES", default_value_t = 1024 * 1024, value_parser = within::<u64>(16_384..=1_073_741_824))]
    pub ws_unread_bytes: u64,
    /// Growth of all WebSocket connections' allowances beyond their 128 KiB start,
    /// together, in bytes: what clients that freeze at once can cost beyond 128 KiB each
    /// (a connection whose allowance cannot grow is held back until its client reads).
    #[arg(long, env = "TICKGATE_WS_UNREAD_BYTES_TOTAL", default_value_t = 128 * 1024 * 1024, value_parser = within::<u64>(0..=68_719_476_736))]
    pub ws_unread_bytes_total: u64,
    /// Each WebSocket connection's allowance once its first read receipt came back (and
    /// the least it shrinks to), in bytes, within 16 KiB and `--ws-unread-bytes`; a new
    /// connection's trial before that is a quarter of it (at least 16 KiB). A receipt ping
    /// goes out per half allowance: a larger start means fewer receipts (each a pong the
    /// client writes and a wake-up of the connection's task) and a higher cost for every
    /// client that freezes. Default: 128 KiB, or `--ws-unread-bytes` if that is smaller.
    #[arg(long, env = "TICKGATE_WS_UNREAD_BYTES_START", value_parser = within::<u64>(16_384..=1_073_741_824))]
    pub ws_unread_bytes_start: Option<u64>,
    /// Time allowed to send the HTTP request head, in milliseconds.
    #[arg(long, env = "TICKGATE_HANDSHAKE_TIMEOUT_MS", default_value_t = 5_000, value_parser = within::<u64>(1..=3_600_000))]
    pub handshake_timeout_ms: u64,
    /// Connections that may wait for their first request head at once; more are answered
    /// `503` and closed at once (keep it well below the process's file limit).
    #[arg(long, env = "TICKGATE_PENDING_CONNECTIONS_MAX", default_value_t = 512, value_parser = within::<usize>(1..=1_000_000))]
    pub pending_connections_max: usize,
    /// Of those, connections from one client address (an IPv4 address, an IPv6 /64) at
    /// most; more from it are answered `503` and closed at once, while others still get in.
    #[arg(long, env = "TICKGATE_PENDING_CONNECTIONS_PER_ADDRESS", default_value_t = 128, value_parser = within::<u32>(1..=1_000_000))]
    pub pending_connections_per_address: u32,
    /// Time allowed to send a request body once its head arrived, in milliseconds (then
    /// `408` and the connection is closed).
    #[arg(long, env = "TICKGATE_BODY_TIMEOUT_MS", default_value_t = 10_000, value_parser = within::<u64>(1..=3_600_000))]
    pub body_timeout_ms: u64,
    /// Users file (JSON: username, argon2 password_hash, account); default: the demo users.
    #[arg(long, env = "TICKGATE_USERS")]
    pub users: Option<std::path::PathBuf>,
    /// Secret that signs tokens, at least 32 bytes (default: random per process, so tokens
    /// die with it).
    #[arg(long, env = "TICKGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Token lifetime in seconds.
    #[arg(long, env = "TICKGATE_TOKEN_LIFETIME_SECS", default_value_t = 900, value_parser = within::<u64>(1..=31_536_000))]
    pub token_lifetime_secs: u64,
    /// Longest a session lives from its login, refreshes included, in seconds (then
    /// refresh answers 401 and the user logs in again).
    #[arg(long, env = "TICKGATE_SESSION_MAX_SECS", default_value_t = 12 * 3600, value_parser = within::<u64>(1..=31_536_000))]
    pub session_max_secs: u64,
    /// Authenticated REST requests per second per user (0: unlimited); over it: 429.
    #[arg(long, env = "TICKGATE_REST_RATE", default_value_t = 1_000)]
    pub rest_rate: u32,
    /// Burst of authenticated REST requests per user.
    #[arg(long, env = "TICKGATE_REST_BURST", default_value_t = 2_000, value_parser = within::<u32>(1..=1_000_000))]
    pub rest_burst: u32,
    /// Events each user's alert history keeps for `Last-Event-ID` replay.
    #[arg(long, env = "TICKGATE_SSE_HISTORY", default_value_t = 1_000, value_parser = within::<usize>(1..=1_000_000))]
    pub sse_history: usize,
    /// Open SSE streams per user at most (more: 429).
    #[arg(long, env = "TICKGATE_SSE_STREAMS_PER_USER", default_value_t = 16, value_parser = within::<u64>(1..=1_000_000))]
    pub sse_streams_per_user: u64,
    /// Open SSE streams in total at most (more: 503).
    #[arg(long, env = "TICKGATE_SSE_STREAMS_MAX", default_value_t = 20_000, value_parser = within::<u64>(1..=1_000_000))]
    pub sse_streams_max: u64,
    /// SSE heartbeat comment period when idle, in milliseconds.
    #[arg(long, env = "TICKGATE_SSE_HEARTBEAT_MS", default_value_t = 15_000, value_parser = within::<u64>(100..=15_000))]
    pub sse_heartbeat_ms: u64,
    /// Bearer token of the operator endpoints (`/api/v1/admin/...`), at least 16 bytes;
    /// without it they answer 403.
    #[arg(long, env = "TICKGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Certificate chain (PEM) to serve HTTPS and WSS on the listener (with --tls-key);
    /// reloaded on SIGHUP. Without it: cleartext.
    #[arg(long, env = "TICKGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "TICKGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// An origin (`https://app.example.com`) whose pages may call the API, open SSE
    /// streams and WebSockets with credentials (CORS); repeatable, comma-separated in the
    /// environment. The server's own origin is always allowed.
    #[arg(long = "cors-origin", env = "TICKGATE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Data directory: command journal and snapshots (created if missing). Also accepted
    /// after a subcommand (`tickgate verify-journal --data-dir DIR`).
    #[arg(long, env = "TICKGATE_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: std::path::PathBuf,
    /// When an order counts as written: `fsync` (acknowledged means on disk),
    /// `batch-async` (synced every --sync-interval-ms: a crash loses at most that much),
    /// `none` (never synced; benchmarks only), `off` (no journal: state dies with the
    /// process).
    #[arg(long, env = "TICKGATE_DURABILITY", default_value = "fsync", value_parser = ["fsync", "batch-async", "none", "off"])]
    pub durability: String,
    /// Sync interval of `--durability batch-async`, in milliseconds.
    #[arg(long, env = "TICKGATE_SYNC_INTERVAL_MS", default_value_t = 10, value_parser = within::<u64>(1..=60_000))]
    pub sync_interval_ms: u64,
    /// Commands between two snapshots (0: never).
    #[arg(long, env = "TICKGATE_SNAPSHOT_EVERY", default_value_t = 1_000_000, value_parser = within::<u64>(0..=1_000_000_000_000))]
    pub snapshot_every: u64,
    /// Journal segment size in MiB before a new segment starts.
    #[arg(long, env = "TICKGATE_SEGMENT_MB", default_value_t = 64, value_parser = within::<u64>(1..=4_096))]
    pub segment_mb: u64,
    /// NATS server URL(s) of a scale-out deployment (`nats://host:4222`, comma-separated);
    /// needs --role engine or --role gateway. Without it: the single process.
    #[arg(long, env = "TICKGATE_NATS")]
    pub nats: Option<String>,
    /// `all`: everything in one process (no NATS); `engine`: the engine node (engine,
    /// journal, feed; serves /healthz and /metrics); `gateway`: a gateway node (serves
    /// clients, follows the engine node over --nats).
    #[arg(long, env = "TICKGATE_ROLE", default_value = "all", value_parser = ["all", "engine", "gateway"])]
    pub role: String,
    /// This node's name in logs, metrics and NATS (default: role and process id).
    #[arg(long, env = "TICKGATE_NODE_ID")]
    pub node_id: Option<String>,
    /// Prefix of every NATS subject (one NATS can carry several deployments).
    #[arg(long, env = "TICKGATE_NATS_PREFIX", default_value = "tickgate")]
    pub nats_prefix: String,
    /// NATS credentials file (JWT and nkey seed).
    #[arg(long, env = "TICKGATE_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// NATS authentication token.
    #[arg(long, env = "TICKGATE_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// CA certificate (PEM) of a TLS NATS server (turns TLS on).
    #[arg(long, env = "TICKGATE_NATS_CA")]
    pub nats_ca: Option<std::path::PathBuf>,
    /// Messages a NATS subscription buffers before the broker's messages are dropped
    /// (slow consumer; a gateway repairs the gap).
    #[arg(long, env = "TICKGATE_NATS_BUFFER", default_value_t = 65_536, value_parser = within::<usize>(1..=16_777_216))]
    pub nats_buffer: usize,
    /// A subcommand instead of running the server.
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

/// Things `tickgate` does besides serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Subcommand {
    /// Replays the journal in --data-dir from scratch (read-only) and prints, per shard,
    /// the digest of the final state and of the event stream, and the money totals.
    VerifyJournal {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Why flags were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address (port 0: any free port).
    pub listen: SocketAddr,
    /// Engine shard threads, 1..=64.
    pub shards: usize,
    /// Synthetic flow rate, commands/s; `None` when the feed is off.
    pub feed_rate: Option<u64>,
    /// Journal to replay instead of the synthetic feed, and its speed (`None`: full).
    pub replay: Option<(std::path::PathBuf, Option<f64>)>,
    /// The stamps replayed commands get.
    pub replay_stamps: tickgate_feed::ReplayStamps,
    /// Open orders one account may have.
    pub open_orders_max: usize,
    /// Synthetic flow seed.
    pub seed: u64,
    /// Instrument shown in the summary line; `None` turns the summary off.
    pub summary_symbol: Option<String>,
    /// Engine queue capacity per shard.
    pub queue_capacity: usize,
    /// Engine ring capacity per shard.
    pub ring_capacity: usize,
    /// Fan-out ring capacity per channel, in chunks.
    pub channel_ring_chunks: usize,
    /// Fan-out pacing.
    pub fanout: crate::fanout::Pacing,
    /// How long an idle engine thread spins before it parks.
    pub engine_spin: Duration,
    /// Fan-out writer threads (at least one).
    pub fanout_writers: usize,
    /// A writer's rest after each round.
    pub fanout_round_rest_pct: crate::fanout::RestPolicy,
    /// WebSocket limits.
    pub ws: WsLimits,
    /// Time allowed for the HTTP request head.
    pub handshake_timeout: Duration,
    /// Connections waiting for their first request head, at most.
    pub pending_connections_max: usize,
    /// Of those, from one client address at most.
    pub pending_connections_per_address: u32,
    /// Time allowed for a request body.
    pub body_timeout: Duration,
    /// Users file; `None`: demo users.
    pub users: Option<std::path::PathBuf>,
    /// Token signing secret; `None`: random.
    pub jwt_secret: Option<String>,
    /// Token lifetime.
    pub token_lifetime: Duration,
    /// Longest session.
    pub session_max: Duration,
    /// Authenticated REST requests per second per user (0: unlimited).
    pub rest_rate: u32,
    /// Burst of authenticated REST requests per user.
    pub rest_burst: u32,
    /// Events each user's alert history keeps.
    pub sse_history: usize,
    /// SSE limits.
    pub sse: crate::limits::SseLimits,
    /// Operator token; `None`: operator endpoints disabled.
    pub admin_token: Option<String>,
    /// Certificate and key files: serve TLS.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Origins allowed cross-origin requests with credentials.
    pub cors_origins: Vec<String>,
    /// Journal and snapshots; `None`: in memory only.
    pub durability: Option<tickgate_engine::durable::DurabilityConfig>,
    /// Where time comes from: the wall clock, or a test's manual clock.
    pub clock: tickgate_engine::SharedClock,
    /// This node's NATS side; `None`: the single process.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl TryFrom<Flags> for Config {
    type Error = ConfigError;

    fn try_from(f: Flags) -> Result<Self, ConfigError> {
        check_limits(&f)?;
        let cluster = cluster(&f)?;
        let gateway = cluster.as_ref().is_some_and(|c| c.role == Role::Gateway);
        // A gateway node keeps nothing of the engine's on disk, and the market is the
        // engine node's to make.
        let durability = if gateway { None } else { durability(&f)? };
        let feed = !f.no_feed && f.replay.is_none() && !gateway;
        let ws = ws_limits(&f);
        let ms = Duration::from_millis;
        let spin_us = f.engine_spin_us.unwrap_or(if cluster.is_some() { 0 } else { 50 });
        Ok(Config {
            listen: f.listen,
            shards: f.shards,
            feed_rate: feed.then_some(f.feed_rate),
            replay: f
                .replay
                .filter(|_| !gateway)
                .map(|dir| (dir, (f.replay_speed > 0.0).then_some(f.replay_speed))),
            open_orders_max: f.open_orders_max,
            replay_stamps: match f.replay_stamps.as_str() {
                "clock" => tickgate_feed::ReplayStamps::Clock,
                _ => tickgate_feed::ReplayStamps::Recorded,
            },
            seed: f.seed,
            summary_symbol: Some(f.summary_symbol),
            queue_capacity: f.queue_capacity,
            ring_capacity: f.ring_capacity,
            channel_ring_chunks: f.channel_ring_chunks,
            fanout: crate::fanout::Pacing { min_pass: Duration::from_micros(f.fanout_pass_us) },
            engine_spin: Duration::from_micros(spin_us),
            fanout_writers: match f.fanout_writers {
                0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
                n => n,
            },
            fanout_round_rest_pct: f.fanout_round_rest_pct,
            ws,
            handshake_timeout: ms(f.handshake_timeout_ms),
            pending_connections_max: f.pending_connections_max,
            pending_connections_per_address: f.pending_connections_per_address,
            body_timeout: ms(f.body_timeout_ms),
            users: f.users,
            jwt_secret: f.jwt_secret,
            token_lifetime: Duration::from_secs(f.token_lifetime_secs),
            session_max: Duration::from_secs(f.session_max_secs),
            durability,
            clock: tickgate_engine::WallClock::shared(),
            rest_rate: f.rest_rate,
            admin_token: f.admin_token,
            tls: f.tls_cert.zip(f.tls_key),
            cors_origins: f
                .cors_origins
                .iter()
                .filter_map(|o| cors_origin(o))
                .filter(|o| !o.is_empty())
                .collect(),
            sse_history: f.sse_history,
            sse: crate::limits::SseLimits {
                streams_per_user_max: f.sse_streams_per_user,
                streams_max: f.sse_streams_max,
                heartbeat: ms(f.sse_heartbeat_ms),
                ..crate::limits::SseLimits::default()
            },
            rest_burst: f.rest_burst,
            cluster,
        })
    }
}

/// The NATS side: `--nats` and `--role` go together, and nodes share a token secret.
fn cluster(f: &Flags) -> Result<Option<crate::cluster::ClusterConfig>, ConfigError> {
    let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
    let role = Role::parse(&f.role).unwrap_or(Role::All);
    let url = match (&f.nats, role) {
        (None, Role::All) => return Ok(None),
        (Some(_), Role::All) => {
            return invalid(
                "--nats needs a role: --role engine (the engine node) or --role gateway \
                 (a gateway node); without --nats, --role all runs everything in one process",
            )
        }
        (None, _) => return invalid("--role engine and --role gateway need --nats URL"),
        (Some(url), _) => url.clone(),
    };
    if f.jwt_secret.as_deref().is_none_or(str::is_empty) {
        return invalid(
            "every node of a deployment must sign and check tokens with the same secret: \
             give --jwt-secret (or TICKGATE_JWT_SECRET)",
        );
    }
    if f.nats_prefix.is_empty() || f.nats_prefix.contains(['*', '>', ' ']) {
        return invalid("--nats-prefix is a NATS subject without wildcards or spaces");
    }
    Ok(Some(crate::cluster::ClusterConfig {
        role,
        url,
        node: f
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", role.as_str(), std::process::id())),
        prefix: f.nats_prefix.clone(),
        creds: f.nats_creds.clone(),
        token: f.nats_token.clone(),
        ca: f.nats_ca.clone(),
        subscription_capacity: f.nats_buffer,
    }))
}

/// `text` as the browser's `Origin` header would carry it (`http`/`https`, host lowercase,
/// a trailing `/` taken off), or `None` when it is not an origin (a path, a query, a
/// wildcard, another scheme, `null`). An empty entry (`a,,b`) is `Some("")`, left out.
fn cors_origin(text: &str) -> Option<String> {
    let text = text.trim().trim_end_matches('/');
    if text.is_empty() {
        return Some(String::new());
    }
    let uri: hyper::Uri = text.parse().ok()?;
    let scheme = uri.scheme_str().filter(|s| matches!(*s, "http" | "https"))?;
    let authority = uri.authority()?;
    let plain = uri.path().is_empty() || uri.path() == "/";
    let bare = !authority.as_str().contains(['@', '*']) && uri.query().is_none();
    (plain && bare).then(|| format!("{scheme}://{}", authority.as_str().to_ascii_lowercase()))
}

/// The shortest token secret taken: HS256's hash length (RFC 7518, section 3.2).
pub const JWT_SECRET_MIN: usize = 32;
/// The shortest operator token taken.
pub const ADMIN_TOKEN_MIN: usize = 16;

/// Refuses limits and rates that cannot work, and secrets anyone could guess.
fn check_limits(f: &Flags) -> Result<(), ConfigError> {
    let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
    // Each number's own range is its flag's parser's (`within`); here, what depends on
    // more than one flag, or on the disk.
    if f.ws_unread_bytes_start.is_some_and(|start| start > f.ws_unread_bytes) {
        return invalid("--ws-unread-bytes-start must be at most --ws-unread-bytes");
    }
    // A secret anyone can guess signs tokens anyone can forge: an empty one (an unset
    // variable in a unit file) would have let any client be any user.
    if f.jwt_secret.as_ref().is_some_and(|s| s.len() < JWT_SECRET_MIN) {
        return invalid(&format!(
            "--jwt-secret (TICKGATE_JWT_SECRET) must be at least {JWT_SECRET_MIN} bytes (RFC \
             7518: an HS256 key as long as its hash); e.g. `head -c 32 /dev/urandom | base64`"
        ));
    }
    if f.admin_token.as_ref().is_some_and(|t| t.len() < ADMIN_TOKEN_MIN) {
        return invalid(&format!(
            "--admin-token (TICKGATE_ADMIN_TOKEN) must be at least {ADMIN_TOKEN_MIN} bytes; \
             leave it out to keep the operator endpoints off"
        ));
    }
    if let Some(bad) = f.cors_origins.iter().find(|o| cors_origin(o).is_none()) {
        return invalid(&format!(
            "--cors-origin {bad:?} is not an origin: scheme and host (and port), as a browser \
             sends it in Origin, e.g. https://app.example.com or http://localhost:3000"
        ));
    }
    let speed = f.replay_speed;
    if !(speed == 0.0 || (speed.is_finite() && (0.001..=1e6).contains(&speed))) {
        return invalid("--replay-speed must be 0 (as fast as possible) or from 0.001 to 1000000");
    }
    if f.replay.as_ref().zip(Some(&f.data_dir)).is_some_and(|(r, d)| r == d) {
        return invalid("--replay needs another directory than --data-dir");
    }
    if let Some(replay) = &f.replay {
        if !matches!(tickgate_engine::durable::recorded_shards(replay), Ok(Some(_))) {
            return Err(ConfigError::Invalid(format!(
                "--replay {}: no journal there (a data directory of an earlier run, with its \
                 SHARDS file or shard-<i> folders)",
                replay.display()
            )));
        }
    }
    Ok(())
}

/// The journal's configuration; `None` for `--durability off`.
fn durability(f: &Flags) -> Result<Option<DurabilityConfig>, ConfigError> {
    let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
    let mode = match f.durability.as_str() {
        "fsync" => SyncMode::Fsync,
        "batch-async" if f.sync_interval_ms > 0 => {
            SyncMode::BatchAsync(Duration::from_millis(f.sync_interval_ms))
        }
        "batch-async" => return invalid("--sync-interval-ms must be > 0"),
        "none" => SyncMode::None,
        _ => return Ok(None),
    };
    let mut d = DurabilityConfig::new(f.data_dir.clone());
    d.mode = mode;
    d.snapshot_every = f.snapshot_every;
    d.segment_bytes = f.segment_mb << 20;
    Ok(Some(d))
}

/// WebSocket limits from the flags (the rest at their defaults).
fn ws_limits(f: &Flags) -> WsLimits {
    let ms = Duration::from_millis;
    WsLimits {
        connections_max: f.max_connections,
        reserved_for_users: f.ws_reserved_for_users,
        connections_per_user_max: f.ws_connections_per_user,
        subscriptions_per_connection_max: f.max_subscriptions,
        ws_message_bytes_max: f.ws_message_bytes_max,
        inbound_rate_per_sec: f.ws_rate,
        inbound_burst: f.ws_burst,
        ping_interval: ms(f.ping_ms),
        pong_timeout: ms(f.pong_timeout_ms),
        heartbeat_interval: ms(f.heartbeat_ms),
        write_stall_timeout: ms(f.write_stall_ms),
        socket_send_buffer_bytes: f.socket_send_buffer,
        unread_bytes_max: f.ws_unread_bytes,
        unread_bytes_total: f.ws_unread_bytes_total,
        // 128 KiB unless given, or `--ws-unread-bytes` if that is smaller.
        unread_bytes_start: f
            .ws_unread_bytes_start
            .unwrap_or(crate::fanout::outbox::ALLOWANCE_START.min(f.ws_unread_bytes)),
        ..WsLimits::default()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::try_from(Flags::parse_from(["tickgate"])).expect("defaults are valid")
    }
}

impl Config {
    /// Defaults for tests: any free port on loopback, no feed, no summary line, no
    /// journal.
    pub fn for_tests() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            feed_rate: None,
            summary_symbol: None,
            durability: None,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn verify_journal_takes_the_data_dir_before_or_after_it() {
        for args in [
            &["tickgate", "--data-dir", "/tmp/x", "verify-journal", "--json"][..],
            &["tickgate", "verify-journal", "--data-dir", "/tmp/x", "--json"][..],
        ] {
            let flags = Flags::try_parse_from(args).expect("parses");
            assert_eq!(flags.data_dir, std::path::PathBuf::from("/tmp/x"), "{args:?}");
            assert!(matches!(flags.command, Some(Subcommand::VerifyJournal { json: true })));
        }
    }

    fn config(args: &[&str]) -> Result<Config, String> {
        let flags = Flags::try_parse_from(args).map_err(|e| e.to_string())?;
        Config::try_from(flags).map_err(|e| e.to_string())
    }

    /// A switch's variable takes the usual spellings (`1`, `yes`, `on`, `true` and their
    /// opposites), as the flag's name alone does on the command line.
    #[test]
    fn switches_take_boolish_values_from_the_environment() {
        use clap::{CommandFactory, FromArgMatches};
        // Each switch read from a variable of this test's own (setting TICKGATE_NO_FEED
        // here would race the other tests, which read it), through the flag's own parser.
        for (id, var) in [
            ("no_feed", "TICKGATE_TEST_BOOLISH_NO_FEED"),
            ("transparent_huge_pages", "TICKGATE_TEST_BOOLISH_THP"),
        ] {
            let parse = |value: &str| {
                std::env::set_var(var, value);
                let command = Flags::command().mut_arg(id, |a| a.env(var));
                let flags = command
                    .try_get_matches_from(["tickgate"])
                    .ok()
                    .and_then(|m| Flags::from_arg_matches(&m).ok());
                std::env::remove_var(var);
                flags.map(|f| if id == "no_feed" { f.no_feed } else { f.transparent_huge_pages })
            };
            for (value, meant) in [("1", true), ("yes", true), ("on", true), ("true", true)] {
                assert_eq!(parse(value), Some(meant), "{id}={value}");
            }
            for (value, meant) in [("0", false), ("no", false), ("off", false), ("false", false)] {
                assert_eq!(parse(value), Some(meant), "{id}={value}");
            }
            assert_eq!(parse("maybe"), None, "{id}: refused, not read as either");
        }
    }

    /// `--cors-origin` takes origins only, as browsers send them.
    #[test]
    fn cors_origins_are_origins() {
        let taken = |o: &str| config(&["tickgate", "--cors-origin", o]).map(|c| c.cors_origins);
        assert_eq!(taken("https://App.Example.com/"), Ok(vec!["https://app.example.com".into()]));
        assert_eq!(taken("http://localhost:3000"), Ok(vec!["http://localhost:3000".into()]));
        assert_eq!(taken("https://a.example,,https://b.example").map(|o| o.len()), Ok(2));
        for bad in [
            "notanorigin",
            "app.example.com",
            "https://a.example/app",
            "ftp://a.example",
            "https://*.example.com",
            "null",
            "https://a.example?x=1",
        ] {
            let e = taken(bad).expect_err(bad);
            assert!(e.contains("is not an origin"), "{bad}: {e}");
        }
    }

    /// Secrets anyone could guess are refused at start, an empty one first of all.
    #[test]
    fn short_secrets_are_refused() {
        for short in ["", "s", &"s".repeat(JWT_SECRET_MIN - 1)] {
            let e = config(&["tickgate", "--jwt-secret", short]).err().unwrap_or_default();
            assert!(e.contains("at least 32 bytes (RFC 7518"), "{short:?}: {e}");
            assert!(!e.contains("  "), "one space between words: {e}");
        }
        let long = "s".repeat(JWT_SECRET_MIN);
        let taken = config(&["tickgate", "--jwt-secret", &long]).expect("a long enough secret");
        assert_eq!(taken.jwt_secret.as_deref(), Some(long.as_str()));
        for short in ["", "short-token"] {
            let e = config(&["tickgate", "--admin-token", short]).err().unwrap_or_default();
            assert!(e.contains("--admin-token"), "{short:?}: {e}");
        }
        let admin = config(&["tickgate", "--admin-token", "an-operator-token"]).expect("taken");
        assert_eq!(admin.admin_token.as_deref(), Some("an-operator-token"));
    }

    /// The read-receipt allowance's start reaches the WebSocket limits (128 KiB unless
    /// set; the outbox clamps it into 16 KiB ..= `--ws-unread-bytes`).
    #[test]
    fn the_allowance_start_is_a_flag() {
        let default = config(&["tickgate"]).expect("defaults");
        assert_eq!(default.ws.unread_bytes_start, crate::fanout::outbox::ALLOWANCE_START);
        let set = config(&["tickgate", "--ws-unread-bytes-start", "1048576"]).expect("valid");
        assert_eq!(set.ws.unread_bytes_start, 1024 * 1024);
    }

    #[test]
    fn values_outside_a_flags_range_are_refused_not_changed() {
        for (flag, value, range) in [
            ("--sse-heartbeat-ms", "40000", "100..=15000"),
            ("--sse-heartbeat-ms", "0", "100..=15000"),
            ("--token-lifetime-secs", "18446744073709551615", "1..=31536000"),
            ("--channel-ring-chunks", "18446744073709551615", "16..=65536"),
            ("--queue-capacity", "18446744073709551615", "1..=16777216"),
            ("--pending-connections-max", "0", "1..=1000000"),
            ("--workers", "100000", "0..=256"),
            ("--fanout-writers", "100000", "0..=64"),
            ("--segment-mb", "17592186044416", "1..=4096"),
            ("--socket-send-buffer", "0", "4096..=67108864"),
            ("--rest-burst", "0", "1..=1000000"),
            ("--fanout-pass-us", "20000000", "0..=32000"),
        ] {
            let e = config(&["tickgate", flag, value]).unwrap_err();
            assert!(e.contains(flag) && e.contains(range), "{flag} {value}: {e}");
        }
        let set = ["tickgate", "--ws-unread-bytes", "65536", "--ws-unread-bytes-start", "131072"];
        let e = config(&set).unwrap_err();
        assert!(e.contains("--ws-unread-bytes-start must be at most"), "{e}");
        // Not given, the start fits under a smaller maximum.
        let small = config(&["tickgate", "--ws-unread-bytes", "32768"]).expect("valid");
        assert_eq!(small.ws.unread_bytes_start, 32_768);
        let e = config(&["tickgate", "--feed-rate", "1000000000000"]).unwrap_err();
        assert!(e.contains("0..=10000000"), "{e}");
        let e = config(&["tickgate", "--replay", "/nonexistent/tickgate-recording"]).unwrap_err();
        assert!(e.contains("no journal there"), "{e}");
    }

    #[test]
    fn the_writers_rest_is_automatic_by_default_and_bounded() {
        use crate::fanout::RestPolicy;
        let defaults = config(&["tickgate"]).expect("defaults");
        assert_eq!(defaults.fanout_round_rest_pct, RestPolicy::Auto);
        let set = config(&["tickgate", "--fanout-round-rest-pct", "25"]).expect("valid");
        assert_eq!(set.fanout_round_rest_pct, RestPolicy::Fixed(25));
        let off = config(&["tickgate", "--fanout-round-rest-pct", "0"]).expect("valid");
        assert_eq!(off.fanout_round_rest_pct, RestPolicy::Fixed(0));
        let e = config(&["tickgate", "--fanout-round-rest-pct", "401"]).unwrap_err();
        assert!(e.contains("neither `auto` nor a percentage 0..=400"), "{e}");
    }

    #[test]
    fn nats_and_a_role_go_together_with_a_shared_secret() {
        let single = config(&["tickgate"]).expect("the single process");
        assert!(single.cluster.is_none());
        let e = config(&["tickgate", "--nats", "nats://h:4222"]).unwrap_err();
        assert!(e.contains("--nats needs a role"), "{e}");
        let e = config(&["tickgate", "--role", "gateway"]).unwrap_err();
        assert!(e.contains("need --nats"), "{e}");
        let e = config(&["tickgate", "--nats", "nats://h:4222", "--role", "engine"]).unwrap_err();
        assert!(e.contains("--jwt-secret"), "{e}");
        let bad_role = config(&["tickgate", "--role", "primary"]).unwrap_err();
        assert!(bad_role.contains("primary"), "{bad_role}");
        let secret = "s".repeat(JWT_SECRET_MIN);
        let args =
            ["tickgate", "--nats", "nats://h:4222", "--role", "gateway", "--jwt-secret", &secret];
        let gateway = config(&args).expect("a gateway node");
        let cluster = gateway.cluster.expect("a node");
        assert_eq!((cluster.role, cluster.prefix.as_str()), (Role::Gateway, "tickgate"));
        // A gateway keeps nothing of the engine's and makes no market.
        assert!(gateway.durability.is_none() && gateway.feed_rate.is_none());
        let mut engine = args;
        engine[4] = "engine";
        let engine = config(&engine).expect("an engine node");
        assert!(engine.durability.is_some() && engine.feed_rate.is_some());
        assert_eq!((gateway.engine_spin, engine.engine_spin), (Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn the_engine_spins_unless_told_or_on_a_nats_node() {
        let spin = |args: &[&str]| config(args).expect("valid").engine_spin.as_micros();
        assert_eq!(spin(&["tickgate"]), 50);
        assert_eq!(spin(&["tickgate", "--durability", "off"]), 50);
        assert_eq!(spin(&["tickgate", "--engine-spin-us", "0"]), 0);
    }
}
