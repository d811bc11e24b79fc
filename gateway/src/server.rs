//! Starting and stopping the whole system: engine, feed, fan-out hub, HTTP listener.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tickgate_engine::runtime::{EngineHandle, EngineRuntime, RuntimeConfig};
use tickgate_engine::types::format_fixed;
use tickgate_engine::{AccountId, EngineCounters, EngineSpec, Retention, UnixNanos};
use tickgate_feed::{FeedDriver, FlowConfig, Worker};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::alerts::{AlertEvaluator, AlertHub};
use crate::auth::{Tokens, Users};
use crate::config::Config;
use crate::events::{Pump, RingSource, Wake};
use crate::fanout::{Directory, MarketData, Writers};
use crate::history;
use crate::http;
use crate::metrics::Metrics;
use crate::orders::{OrderProjection, OrderStore};
use crate::sse::FirstRequest;
use crate::state::{AppState, WsContext};

/// Accounts the engine tables hold: users, plus the synthetic flow's range.
const ACCOUNTS_MAX: u32 = 4096;
/// How long shutdown waits for connections to close before it stops waiting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest idle wait of the alert pump: the engine's publish hook wakes it sooner.
const ALERTS_IDLE_MAX: Duration = Duration::from_millis(50);

/// A running server.
pub struct Server {
    addr: SocketAddr,
    engine: EngineHandle,
    runtime: EngineRuntime,
    hub: Pump,
    writers: Arc<Writers>,
    feed: Option<FeedDriver>,
    replay: Option<tickgate_feed::JournalReplay>,
    alerts: Arc<AlertHub>,
    alert_pump: Option<Pump>,
    metrics: Arc<Metrics>,
    directory: Arc<Directory>,
    orders: Arc<OrderStore>,
    history_sync: Option<Worker>,
    candles: Arc<crate::candles::Candles>,
    candles_save: Option<Worker>,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
    alive: mpsc::Receiver<()>,
    tls: Option<Arc<crate::tls::Tls>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Server {
    /// Starts everything and begins accepting connections.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        // A certificate that cannot be read stops the start, before anything else.
        let tls = match &config.tls {
            Some((cert, key)) => Some(Arc::new(crate::tls::Tls::load(cert, key)?)),
            None => None,
        };
        let users = match &config.users {
            Some(path) => Users::from_file(path)?,
            None => tokio::task::spawn_blocking(Users::demo).await??,
        };
        let orders = Arc::new(OrderStore::new(users.all().map(|u| u.account)));
        // Users' closed orders and fills from earlier runs (durable modes only).
        let history_dir = config.durability.as_ref().map(|d| d.dir.join("history"));
        let (history, stored) = match history_dir.clone() {
            Some(dir) => {
                tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                    Ok((history::load(&dir)?, crate::orders::stored::load(&dir)?))
                })
                .await??
            }
            None => (history::Loaded::default(), Vec::new()),
        };
        // The history is the engine's one durable consumer: recovery replays what it
        // does not have yet, pruning keeps it (see `tickgate_engine::retention`).
        let retention = Arc::new(Retention::new(config.shards.max(1)));
        let history_mark = history_dir.as_ref().map(|_| retention.register(&stored));
        // The engine's publish hook wakes both pumps.
        let (hub_wake, alert_wake) = (Wake::default(), Wake::default());
        let hook_wakes = (hub_wake.clone(), alert_wake.clone());
        let replayed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let replay_users: HashSet<AccountId> = users.all().map(|u| u.account).collect();
        let replay_sink = Arc::clone(&replayed);
        // Candles: the saved store, then the trades the journal's replay brings back.
        let candles_dir = config.durability.as_ref().map(|d| d.dir.clone());
        let spec = engine_spec();
        let candles =
            Arc::new(crate::candles::Candles::new(spec.instruments.len(), candles_dir.as_deref())?);
        let replay_candles = Arc::clone(&candles);
        let runtime_config = RuntimeConfig {
            spec,
            shards: config.shards,
            queue_capacity: config.queue_capacity,
            ring_capacity: config.ring_capacity,
            on_publish: Some(Arc::new(move || {
                hook_wakes.0.wake();
                hook_wakes.1.wake();
            })),
            durability: config.durability.clone(),
            clock: Arc::clone(&config.clock),
            // Users' reports since the newest snapshot come back from the journal; they are
            // applied over the history once the engine says which of its records are real.
            on_replay: Some(Arc::new(move |_, e: &tickgate_engine::Event| match e {
                tickgate_engine::Event::Exec(r) if replay_users.contains(&r.account) => {
                    replay_sink.lock().unwrap_or_else(|e| e.into_inner()).push(*r);
                }
                tickgate_engine::Event::Trade(t) => replay_candles.apply(std::slice::from_ref(t)),
                _ => {}
            })),
            retention: history_mark.as_ref().map(|_| Arc::clone(&retention)),
            ..RuntimeConfig::default()
        };
        let runtime =
            tokio::task::spawn_blocking(move || EngineRuntime::start(runtime_config)).await??;
        let fresh = log_recovery(&config, &runtime);
        let engine = runtime.handle();
        let metrics = Arc::new(Metrics::default());
        let directory =
            Arc::new(Directory::new(engine.instruments(), config.channel_ring_chunks, &candles));

        let history_sync = match (history_dir, history_mark) {
            (Some(dir), Some(mark)) => {
                for r in runtime.recoveries() {
                    mark.set(r.shard, UnixNanos(r.last_ts));
                }
                let restored = HistoryRestore { loaded: history, replayed: &replayed, dir, mark };
                Some(restore_history(&engine, &users, &orders, restored).await?)
            }
            _ => None,
        };
        if fresh && config.replay.is_none() {
            fund_demo_accounts(&engine, &users);
        } else if !fresh {
            // Orders still resting in the engine are always known, including those placed
            // before the snapshot recovery started from.
            let accounts: Vec<_> = users.all().map(|u| u.account).collect();
            for shard in 0..engine.shards() {
                let (e, a) = (engine.clone(), accounts.clone());
                for (instrument, o) in
                    tokio::task::spawn_blocking(move || e.open_orders(shard, a)).await??
                {
                    orders.restore_open(instrument, &o);
                }
            }
        }
        // Idempotency keys the engine remembers (from its snapshot and journal).
        let keys = Arc::new(crate::idempotency::KeyCache::default());
        if !fresh {
            let accounts: Vec<_> = users.all().map(|u| u.account).collect();
            for shard in 0..engine.shards() {
                let (e, a) = (engine.clone(), accounts.clone());
                keys.load(tokio::task::spawn_blocking(move || e.key_records(shard, a)).await??);
            }
        }
        let writers =
            Writers::start(Arc::clone(&directory), Arc::clone(&metrics), config.fanout_writers);
        let hub = {
            let (e, d, m) = (engine.clone(), Arc::clone(&directory), Arc::clone(&metrics));
            let (pacing, w, c) = (config.fanout, Arc::clone(&writers), Arc::clone(&candles));
            let projection = OrderProjection::new(Arc::clone(&orders), engine.shards());
            tokio::task::spawn_blocking(move || {
                // The source first, then the books' snapshots: every later delta is seen.
                let source = RingSource::new(&e);
                let market = MarketData::new(e, d, m, Arc::clone(&w), c);
                let consumers: Vec<Box<dyn crate::events::EventConsumer>> =
                    vec![Box::new(projection), Box::new(market)];
                Pump::start("fanout-hub", source, consumers, pacing.for_pump(w), &hub_wake)
            })
            .await?
        };
        let alerts = Arc::new(AlertHub::new(
            users.all().map(|u| u.account),
            engine.instruments().len(),
            config.sse_history,
            Arc::clone(&config.clock),
        ));
        let alert_pump = Some(Pump::start(
            "alerts",
            RingSource::new(&engine),
            vec![Box::new(AlertEvaluator::new(Arc::clone(&alerts), engine.instruments()))],
            crate::events::Pacing { idle: ALERTS_IDLE_MAX, pass: Box::new(|| Duration::ZERO) },
            &alert_wake,
        ));
        // The feed starts last, so the hub sees its market from the first command.
        let feed = config.feed_rate.map(|rate| {
            let flow = FlowConfig { seed: config.seed, ..FlowConfig::default() };
            if fresh {
                FeedDriver::start(engine.clone(), flow, rate)
            } else {
                // Its accounts were funded by the journaled first run.
                FeedDriver::resume(engine.clone(), flow, rate)
            }
        });

        // A replayed recording brings its own funding and flow.
        let replay = match &config.replay {
            Some((dir, speed)) => {
                let (e, d, s) = (engine.clone(), dir.clone(), *speed);
                let replay = tokio::task::spawn_blocking(move || {
                    tickgate_feed::JournalReplay::start(e, d, s)
                })
                .await??;
                let total = replay.stats().total.load(std::sync::atomic::Ordering::Relaxed);
                tracing::info!(dir = %dir.display(), speed = ?speed, commands = total, "replaying a journal");
                Some(replay)
            }
            None => None,
        };
        // Revocations outlive the process when there is a data directory to keep them in.
        let sessions = match &config.durability {
            Some(d) => crate::sessions::Sessions::persisted(d.dir.join("auth"))?,
            None => crate::sessions::Sessions::in_memory(),
        };
        let tokens = Arc::new(Tokens::with_clock(
            Arc::clone(&config.clock),
            config.jwt_secret.as_deref().map(str::as_bytes),
            config.token_lifetime,
            config.session_max,
            &users,
            sessions,
        ));

        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (alive_tx, alive) = mpsc::channel(1);
        let ws = Arc::new(WsContext {
            directory: Arc::clone(&directory),
            metrics: Arc::clone(&metrics),
            limits: config.ws.clone(),
            shutdown: shutdown_rx.clone(),
            alive: alive_tx.clone(),
            trading: crate::trading::Trading {
                engine: engine.clone(),
                orders: Arc::clone(&orders),
                keys,
            },
            tokens: Arc::clone(&tokens),
            writers: Arc::clone(&writers),
            links: Arc::new(crate::fanout::link::LinkConfig {
                metrics: Arc::clone(&metrics),
                write_batch_bytes_max: config.ws.write_batch_bytes_max,
                slow_gaps_max: config.ws.slow_gaps_max,
                slow_gap_window: config.ws.slow_gap_window,
                unread_bytes_max: config.ws.unread_bytes_max,
                clock: Arc::clone(&config.clock),
            }),
        });
        let state = Arc::new(AppState {
            engine: engine.clone(),
            metrics: Arc::clone(&metrics),
            ws,
            users,
            tokens,
            orders: Arc::clone(&orders),
            rest_limit: crate::throttle::UserRateLimit::new(config.rest_rate, config.rest_burst),
            alerts: Arc::clone(&alerts),
            sse: config.sse.clone(),
            digest_gate: Default::default(),
            admin_token: config.admin_token.clone(),
            body_timeout: config.body_timeout,
            login_throttle: crate::throttle::LoginThrottle::new(Arc::clone(&config.clock)),
            candles: Arc::clone(&candles),
            login_slots: tokio::sync::Semaphore::new(LOGIN_CHECKS_MAX),
            origins: crate::cors::Origins::new(config.cors_origins.clone(), tls.is_some()),
            tls: tls.is_some(),
        });
        let accept = tokio::spawn(accept_loop(
            listener,
            state,
            shutdown_rx,
            alive_tx,
            Handshake {
                timeout: config.handshake_timeout,
                pending: Arc::new(Semaphore::new(config.pending_connections_max)),
                tls: tls.clone(),
            },
        ));
        Ok(Server {
            addr,
            engine,
            runtime,
            hub,
            writers,
            feed,
            replay,
            alerts,
            alert_pump,
            metrics,
            directory,
            orders,
            history_sync,
            candles_save: candles_dir.map(|_| candles_saver(Arc::clone(&candles))),
            candles,
            shutdown,
            accept,
            alive,
            tls,
        })
    }

    /// Reads the TLS certificate and key files again (what SIGHUP does): new handshakes
    /// use them, open connections keep theirs. An error keeps the current ones.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => anyhow::bail!("the server runs without TLS"),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops the synthetic feed (if running); the engine keeps serving other commands.
    pub fn stop_feed(&mut self) {
        if let Some(feed) = self.feed.take() {
            feed.stop();
        }
    }

    /// The journal replay, when one runs.
    pub fn replay(&self) -> Option<&tickgate_feed::JournalReplay> {
        self.replay.as_ref()
    }

    /// Users' alert histories and price alerts.
    pub fn alerts(&self) -> &Arc<AlertHub> {
        &self.alerts
    }

    /// Channels.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// Stops accepting, closes every WebSocket with 1001, finishes HTTP requests, then
    /// stops the feed, the hub and the engine.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        // Open alert streams deliver this notice, then end.
        self.alerts.publish_system(&serde_json::json!({
            "notice": "shutting_down",
            "message": "the server is shutting down; reconnect with Last-Event-ID",
        }));
        let _ = self.shutdown.send(true);
        let _ = self.accept.await;
        // Every connection task holds a sender; all dropped = all closed.
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, self.alive.recv()).await;
        if drained.is_err() {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
        if let Some(feed) = self.feed.take() {
            feed.stop();
        }
        if let Some(replay) = self.replay.take() {
            replay.stop();
        }
        if let Some(pump) = self.alert_pump.take() {
            pump.stop();
        }
        let (hub, runtime, writers) = (self.hub, self.runtime, self.writers);
        let (history_sync, orders) = (self.history_sync, self.orders);
        let (candles, candles_save) = (self.candles, self.candles_save);
        let engines = tokio::task::spawn_blocking(move || {
            hub.stop();
            if let Some(save) = candles_save {
                save.stop();
                if let Err(e) = candles.save() {
                    tracing::error!("candles not saved: {e}");
                }
            }
            writers.stop();
            if let Some(sync) = history_sync {
                sync.stop();
                orders.flush_history();
                orders.sync_history();
            }
            runtime.shutdown()
        })
        .await?;
        let commands: u64 = engines.iter().map(|e| e.counters().commands).sum();
        tracing::info!(commands, "stopped");
        Ok(())
    }
}

/// What [`restore_history`] starts from.
struct HistoryRestore<'a> {
    /// The history file's records.
    loaded: history::Loaded,
    /// Users' reports the journal's replay brought back.
    replayed: &'a std::sync::Mutex<Vec<tickgate_engine::ExecReport>>,
    /// The history directory.
    dir: std::path::PathBuf,
    /// The history's retention watermark, set to the recovered journal's end.
    mark: tickgate_engine::Watermark,
}

/// Rebuilds users' orders and fills: the history file's records the recovered engine
/// knows of, then the journal's replayed reports past them; rewrites the file compactly
/// and starts the thread that syncs it.
async fn restore_history(
    engine: &EngineHandle,
    users: &Users,
    orders: &Arc<OrderStore>,
    restore: HistoryRestore<'_>,
) -> anyhow::Result<Worker> {
    let HistoryRestore { loaded, replayed, dir, mark } = restore;
    if loaded.torn_bytes > 0 {
        tracing::warn!(
            "torn order history tail cut: {} bytes at the end of {}",
            loaded.torn_bytes,
            dir.join(history::FILE).display()
        );
    }
    // A record past the engine's last report sequence for its account describes a command
    // the journal lost (a `batch-async` or `none` loss window, or a removed journal): the
    // order never happened as far as the engine knows, so neither does its history.
    let accounts: Vec<AccountId> = users.all().map(|u| u.account).collect();
    let mut known = std::collections::HashMap::new();
    for shard in 0..engine.shards() {
        let (e, a) = (engine.clone(), accounts.clone());
        let seqs = tokio::task::spawn_blocking(move || e.exec_seqs(shard, a)).await??;
        for (account, seq) in accounts.iter().zip(seqs) {
            known.insert((*account, shard), seq.map_or(0, |s| s.0));
        }
    }
    let total = loaded.entries.len();
    let kept: Vec<_> = loaded
        .entries
        .into_iter()
        .filter(|e| {
            let r = e.report();
            engine
                .shard_of(r.instrument)
                .and_then(|shard| known.get(&(r.account, shard)))
                .is_some_and(|last| r.seq.0 <= *last)
        })
        .collect();
    if kept.len() < total {
        tracing::warn!(
            dropped = total - kept.len(),
            "order history records past the recovered journal dropped"
        );
    }
    orders.load(&kept);
    let replayed = std::mem::take(&mut *replayed.lock().unwrap_or_else(|e| e.into_inner()));
    for r in &replayed {
        // Nobody waits for an answer before the server starts.
        let _ = orders.apply(r);
    }
    tracing::info!(records = kept.len(), replayed = replayed.len(), "order history restored");
    let o = Arc::clone(orders);
    let d = dir.clone();
    let writer =
        tokio::task::spawn_blocking(move || history::HistoryWriter::create(&d, o.dump())).await??;
    orders.attach_history(writer);
    orders.attach_watermark(mark, dir);
    let o = Arc::clone(orders);
    tokio::task::spawn_blocking(move || o.sync_history()).await?;
    let o = Arc::clone(orders);
    Ok(Worker::spawn("history-sync", move |stop| {
        let mut last = std::time::Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= Duration::from_secs(1) {
                o.sync_history();
                last = std::time::Instant::now();
            }
        }
    }))
}

/// Writes the candles to disk every [`crate::candles::SAVE_EVERY`].
fn candles_saver(candles: Arc<crate::candles::Candles>) -> Worker {
    Worker::spawn("candles-save", move |stop| {
        let mut last = std::time::Instant::now();
        let mut failed = false;
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= crate::candles::SAVE_EVERY {
                last = std::time::Instant::now();
                match candles.save() {
                    Ok(()) => failed = false,
                    Err(e) => {
                        if !failed {
                            tracing::error!("candles not saved: {e} (retrying every save)");
                        }
                        failed = true;
                    }
                }
            }
        }
    })
}

/// The engine's tables: the default markets, users' accounts and the synthetic flow's.
pub fn engine_spec() -> EngineSpec {
    EngineSpec { accounts_max: ACCOUNTS_MAX, ..EngineSpec::default() }
}

/// Logs the durability mode and what recovery did; `true` when every shard started empty
/// (a first run, or no journal), so accounts need their initial funding.
fn log_recovery(config: &Config, runtime: &EngineRuntime) -> bool {
    let Some(d) = &config.durability else {
        tracing::warn!("durability off: state is in memory only and dies with the process");
        return true;
    };
    tracing::info!(mode = %d.mode, dir = %d.dir.display(), snapshot_every = d.snapshot_every, "journal");
    for r in runtime.recoveries() {
        for skipped in &r.skipped_snapshots {
            tracing::warn!(shard = r.shard, "snapshot passed over: {skipped}");
        }
        if let Some((path, bytes)) = &r.torn {
            tracing::warn!(
                shard = r.shard,
                "torn journal tail cut: {bytes} bytes at the end of {}",
                path.display()
            );
        }
        let rate = r.replayed as f64 / r.elapsed.as_secs_f64().max(1e-9);
        tracing::info!(
            shard = r.shard,
            snapshot = ?r.snapshot.as_ref().map(|(_, seq)| seq),
            replayed = r.replayed,
            next_seq = r.next_seq,
            elapsed_ms = r.elapsed.as_secs_f64() * 1e3,
            records_per_sec = rate as u64,
            "recovered"
        );
    }
    runtime.recoveries().iter().all(|r| r.is_fresh())
}

/// Demo balances for every user's account on every shard: 1,000,000 of the quote asset
/// and 1,000 of every other asset, so a fresh server can be traded on at once.
fn fund_demo_accounts(engine: &EngineHandle, users: &Users) {
    use tickgate_engine::{Amount, AssetId, Transfer};
    for user in users.all() {
        for shard in 0..engine.shards() {
            for (i, asset) in engine.assets().iter().enumerate() {
                let units = if i == 0 { 1_000_000 } else { 1_000 };
                let amount = Amount(10i64.pow(u32::from(asset.precision)) * units);
                let t = Transfer {
                    account: user.account,
                    asset: AssetId(i as u16),
                    amount,
                    request_id: 0,
                };
                if let Err(e) = engine.submit_transfer(shard, t) {
                    tracing::warn!(user = %user.username, "demo funding not queued: {e}");
                }
            }
        }
    }
}

/// How long a fresh connection may take to send its first request head, and how many may
/// be doing so at once.
struct Handshake {
    timeout: Duration,
    pending: Arc<Semaphore>,
    tls: Option<Arc<crate::tls::Tls>>,
}

/// Password checks (argon2, ~19 MiB each) running at once, at most.
const LOGIN_CHECKS_MAX: usize = 4;

/// The answer to a connection beyond the pending bound, written without waiting.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 82\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many connections waiting\"}}";

async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
    handshake: Handshake,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Until its first request head is in, a connection holds one of a bounded number
        // of places: a flood of connections that send nothing (or a few bytes) can never
        // use up the file descriptors the server needs.
        let Ok(pending) = Arc::clone(&handshake.pending).try_acquire_owned() else {
            state.metrics.connections_refused_total.fetch_add(1, Ordering::Relaxed);
            // A fresh socket's send buffer is empty: this never blocks, and what does not
            // fit is not worth waiting for.
            // Under TLS there is no HTTP before the handshake: the connection just closes.
            if handshake.tls.is_none() {
                let _ = stream.try_write(REFUSED);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        let alive = alive.clone();
        let deadline = tokio::time::Instant::now() + handshake.timeout;
        let handshake_timeout = handshake.timeout;
        let tls = handshake.tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            state.metrics.connections_pending.fetch_add(1, Ordering::Relaxed);
            let head = FirstHead { deadline, timeout: handshake_timeout };
            let connection = Connection { peer, state: &state, shutdown, head, pending };
            match tls {
                Some(acceptor) => serve_tls(stream, acceptor, connection).await,
                None => serve_connection(stream, connection).await,
            }
            drop(alive);
        });
    }
}

/// When a fresh connection's first request head must be complete, and the time allowed
/// for every later head (hyper restarts its header timer for each request, so it also
/// bounds a keep-alive connection's idle time).
struct FirstHead {
    deadline: tokio::time::Instant,
    timeout: Duration,
}

/// A fresh connection and what serving it needs.
struct Connection<'a> {
    peer: SocketAddr,
    state: &'a Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    head: FirstHead,
    pending: OwnedSemaphorePermit,
}

/// Serves one cleartext connection: a raw alert stream, or hyper.
async fn serve_connection(stream: tokio::net::TcpStream, c: Connection<'_>) {
    // The pending gauge follows the permit: decremented when the head is in or the
    // connection ends, whichever comes first.
    let pending = PendingGuard { permit: Some(c.pending), metrics: Arc::clone(&c.state.metrics) };
    let deadline = c.head.deadline;
    match crate::sse::first_request(&stream, deadline).await {
        FirstRequest::Closed => return,
        FirstRequest::Stream => {
            // The guard (permit and gauge) is given back once the stream's head is in.
            crate::sse::serve_raw(stream, c.state, deadline, pending).await;
            return;
        }
        FirstRequest::Other => {}
    }
    serve_http(TokioIo::new(stream), c.peer, c.state, c.shutdown, c.head, pending).await;
}

/// Serves one TLS connection: the handshake (within the first head's deadline), then
/// hyper; SSE streams go through hyper (over HTTP/2, many share one connection).
async fn serve_tls(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    c: Connection<'_>,
) {
    let pending = PendingGuard { permit: Some(c.pending), metrics: Arc::clone(&c.state.metrics) };
    let metrics = &c.state.metrics;
    match tokio::time::timeout_at(c.head.deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            metrics.tls_handshakes_total.fetch_add(1, Ordering::Relaxed);
            serve_http(TokioIo::new(stream), c.peer, c.state, c.shutdown, c.head, pending).await;
        }
        Ok(Err(e)) => {
            metrics.tls_handshake_failures_total.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TLS handshake with {} failed: {e}", c.peer);
        }
        Err(_) => {
            metrics.handshake_timeouts_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 (prior knowledge, or `h2` by ALPN under TLS:
/// hyper reads the connection preface) until the peer or shutdown ends it.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    state: &Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    head: FirstHead,
    pending: PendingGuard,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let deadline = head.deadline;
    let pending = Arc::new(std::sync::Mutex::new(pending));
    let (service_state, service_pending) = (Arc::clone(state), Arc::clone(&pending));
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        // A whole request head arrived: the connection leaves the pending ones.
        drop(take_permit(&service_pending));
        req.extensions_mut().insert(crate::request::PeerAddr(peer));
        http::handle(req, Arc::clone(&service_state))
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(head.timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_STREAMS_MAX)
        // A dead peer's streams (SSE) are noticed even when nothing is sent on them.
        .keep_alive_interval(HTTP2_PING_INTERVAL)
        .keep_alive_timeout(HTTP2_PING_TIMEOUT);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut first_head_due = true;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("http connection error: {e}");
                }
                return;
            }
            // The first head's deadline is the accept time's, whatever the peek took.
            () = tokio::time::sleep_until(deadline), if first_head_due => {
                first_head_due = false;
                if take_permit(&pending).is_some() {
                    state.metrics.handshake_timeouts_total.fetch_add(1, Ordering::Relaxed);
                    return; // dropping hyper's connection closes the socket
                }
            }
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await;
                return;
            }
        }
    }
}

/// Streams one HTTP/2 connection may have open at once (each SSE stream is one).
const HTTP2_STREAMS_MAX: u32 = 256;
/// HTTP/2 keep-alive pings, and how long to wait for their answer.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection's place among those without a request head yet.
pub(crate) struct PendingGuard {
    permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl PendingGuard {
    fn take(&mut self) -> Option<OwnedSemaphorePermit> {
        let permit = self.permit.take();
        if permit.is_some() {
            self.metrics.connections_pending.fetch_sub(1, Ordering::Relaxed);
        }
        permit
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        drop(self.take());
    }
}

fn take_permit(guard: &std::sync::Mutex<PendingGuard>) -> Option<OwnedSemaphorePermit> {
    guard.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Runs the server until `shutdown` resolves, logging a one-line summary every second.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let summary_symbol = config.summary_symbol.clone();
    let feed_rate = config.feed_rate;
    // SIGHUP: read the TLS certificate and key again (renewal without a restart). Taken
    // before the listener announces itself, so a renewal hook never kills a starting server.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let server = Server::start(config).await?;
    tracing::info!(
        shards = server.engine().shards(),
        instruments = server.engine().instruments().len(),
        feed_rate = ?feed_rate,
        "engine started"
    );
    let secure = if server.tls.is_some() { "s" } else { "" };
    tracing::info!(
        "listening on http{secure}://{} (WebSocket: ws{secure}://{}/ws)",
        server.local_addr(),
        server.local_addr()
    );
    let summary = summary_loop(server.engine().clone(), summary_symbol);
    tokio::pin!(shutdown, summary);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutting down");
                break;
            }
            () = &mut summary => break,
            Some(()) = hangup.recv() => match server.reload_tls() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => tracing::warn!("TLS certificate not reloaded: {e:#}"),
            },
        }
    }
    server.shutdown().await
}

/// One line per second: rates and the top of book of one instrument.
async fn summary_loop(handle: EngineHandle, symbol: Option<String>) {
    let Some(symbol) = symbol else {
        return std::future::pending().await;
    };
    let instrument = handle.instrument_by_symbol(&symbol).cloned();
    if instrument.is_none() {
        tracing::warn!(%symbol, "summary symbol is not an instrument; showing rates only");
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let (mut last, mut at) = (handle.counters(), Instant::now());
    loop {
        ticker.tick().await;
        let (now, elapsed) = (handle.counters(), at.elapsed().as_secs_f64().max(1e-9));
        let rate = |f: fn(&EngineCounters) -> u64| (f(&now) - f(&last)) as f64 / elapsed;
        let top = match &instrument {
            Some(i) => {
                let (h, id) = (handle.clone(), i.id);
                let snap = tokio::task::spawn_blocking(move || h.book_snapshot(id, 1)).await;
                let p = i.spec.price_precision;
                let side = |l: Option<&(tickgate_engine::Price, tickgate_engine::Qty)>| {
                    l.map_or_else(|| "-".to_string(), |(px, _)| format_fixed(px.0, p))
                };
                match snap {
                    Ok(Ok(s)) => format!(
                        "{} {} / {}",
                        i.spec.symbol,
                        side(s.bids.first()),
                        side(s.asks.first())
                    ),
                    _ => "engine busy".to_string(),
                }
            }
            None => String::new(),
        };
        tracing::info!(
            "commands/s {:>9.0}  trades/s {:>8.0}  events/s {:>9.0}  {}",
            rate(|c| c.commands),
            rate(|c| c.trades),
            rate(|c| c.events),
            top
        );
        (last, at) = (now, Instant::now());
    }
}
