//! Starting and stopping the whole system: engine, feed, fan-out hub, HTTP listener.

mod accept;
mod recovery;
mod startup;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tickgate_engine::runtime::{EngineHandle, EngineRuntime};
use tickgate_engine::types::format_fixed;
use tickgate_engine::EngineCounters;
use tickgate_feed::{FeedDriver, Worker};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::alerts::AlertHub;
use crate::cluster::primary::Primary;
use crate::cluster::replica::Replica;
use crate::cluster::Role;
use crate::config::Config;
use crate::events::{Pump, Wake};
use crate::fanout::{Directory, Writers};
use crate::metrics::Metrics;
use crate::orders::OrderStore;
use accept::{accept_loop, Handshake};
use recovery::candles_saver;
pub use recovery::engine_spec;

/// How long shutdown waits for connections to close before it stops waiting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The engine node's NATS side.
    primary: Option<Primary>,
    /// A gateway node's replica followers.
    replica: Option<Replica>,
    /// Alerts and histories between the engine node and gateway nodes.
    node_services: Vec<JoinHandle<()>>,
    nats: Option<async_nats::Client>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Server {
    /// Starts everything and begins accepting connections.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        // First, before anything is opened or written: a port in use (a second start, a
        // mistyped port) must not leave a data directory behind, locked to a shard count.
        // Connections wait in the backlog until the server is ready.
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let node = startup::connect(&config).await?;
        let role = node.as_ref().map_or(Role::All, |n| n.config.role);
        let mut loaded = startup::load(&config).await?;
        let wakes = [Wake::default(), Wake::default()];
        let (started, mut replica, log) =
            startup::start_core(&config, &loaded, wakes.clone(), node.as_ref()).await?;
        let engine = started.runtime.handle();
        let history_sync = startup::restore_users(&config, &mut loaded, &started).await?;
        let keys = startup::idempotency_keys(&engine, &loaded.users, started.fresh).await?;
        let metrics = Arc::new(Metrics::default());
        let candles = Arc::clone(&loaded.candles);
        let directory =
            Arc::new(Directory::new(engine.instruments(), config.channel_ring_chunks, &candles));
        if let (Some(n), Some(r)) = (&node, &replica) {
            startup::seed_market(n, r, &directory, &candles).await?;
        }
        let writers = Writers::start(
            Arc::clone(&directory),
            Arc::clone(&metrics),
            config.fanout_writers,
            config.fanout_round_rest_pct,
        );
        let alerts = Arc::new(AlertHub::new(
            loaded.users.all().map(|u| u.account),
            engine.instruments().len(),
            config.sse_history,
            Arc::clone(&config.clock),
        ));
        let consumers = startup::Consumers {
            directory,
            metrics,
            writers,
            orders: Arc::clone(&loaded.orders),
            candles,
            alerts,
            replayed: Arc::clone(&loaded.replayed),
        };
        let (hub, alert_pump) = startup::start_pumps(&config, &engine, &consumers, wakes).await?;
        if let Some(r) = &mut replica {
            // Its consumers read the replica's rings now: it may start applying.
            r.follow();
        }
        let (feed, replay) = startup::start_sources(&config, &engine, started.fresh).await?;

        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (alive_tx, alive) = mpsc::channel(1);
        let tls = loaded.tls.clone();
        let node_info = node.as_ref().map(startup::Node::info);
        let (market_tx, market_rx) = watch::channel(false);
        let serving = startup::Serving {
            market: (role == Role::Gateway).then_some(market_rx),
            shutdown: shutdown_rx.clone(),
            alive: alive_tx.downgrade(),
            keys,
            route: startup::route(&engine, node.as_ref()),
            node: node_info,
        };
        let state = startup::app_state(&config, &engine, loaded, &consumers, serving)?;
        let handshake = Handshake {
            timeout: config.handshake_timeout,
            pending: accept::PendingPlaces::new(
                config.pending_connections_max,
                config.pending_connections_per_address,
            ),
            tls: tls.clone(),
        };
        let node_services = match &node {
            Some(n) => startup::node_services(n, role, &state, market_tx).await?,
            None => Vec::new(),
        };
        // Last: a gateway that hears from the engine node finds all it asks for answered.
        let primary = match (&node, log) {
            (Some(n), Some(log)) => {
                Some(startup::start_primary(&config, n, &started, log, &state).await?)
            }
            _ => None,
        };
        let accept = tokio::spawn(accept_loop(listener, state, shutdown_rx, alive_tx, handshake));
        let startup::Consumers { directory, metrics, writers, orders, candles, alerts, .. } =
            consumers;
        let candles_save = config.durability.as_ref().map(|_| candles_saver(Arc::clone(&candles)));
        Ok(Server {
            addr,
            engine,
            runtime: started.runtime,
            hub,
            writers,
            feed,
            replay,
            alerts,
            alert_pump: Some(alert_pump),
            metrics,
            directory,
            orders,
            history_sync,
            candles_save,
            candles,
            shutdown,
            accept,
            alive,
            tls,
            primary,
            replica,
            node_services,
            nats: node.map(|n| n.client),
        })
    }

    /// Resolves when this gateway node's replica can no longer follow the engine node
    /// (never on other nodes): the node must stop rather than serve a wrong state.
    pub async fn diverged(&mut self) -> crate::cluster::replica::Diverged {
        match &mut self.replica {
            Some(r) => match r.diverged.recv().await {
                Some(d) => d,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
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
        if let Some(replica) = self.replica.take() {
            replica.stop();
        }
        drop(self.primary.take());
        self.node_services.drain(..).for_each(|t| t.abort());
        if let Some(nats) = self.nats.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), nats.flush()).await;
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

/// Runs the server until `shutdown` resolves, logging a one-line summary every second.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let summary_symbol = config.summary_symbol.clone();
    let feed_rate = config.feed_rate;
    // SIGHUP: read the TLS certificate and key again (renewal without a restart). Taken
    // before the listener announces itself, so a renewal hook never kills a starting server.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut server = Server::start(config).await?;
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
    let watch = watch_engine(server.engine().clone());
    tokio::pin!(shutdown, summary, watch);
    let mut fatal = None;
    loop {
        tokio::select! {
            d = server.diverged() => {
                tracing::error!("{d}; stopping (restart this gateway node to start afresh)");
                fatal = Some(d);
                break;
            }
            () = &mut shutdown => {
                tracing::info!("shutting down");
                break;
            }
            () = &mut summary => break,
            () = &mut watch => break,
            Some(()) = hangup.recv() => match server.reload_tls() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => tracing::warn!("TLS certificate not reloaded: {e:#}"),
            },
        }
    }
    server.shutdown().await?;
    match fatal {
        Some(d) => Err(d.into()),
        None => Ok(()),
    }
}

/// Logs, once each, a journal failure (the engine refuses every command from then on:
/// `/healthz` says `failing`) and a snapshot warning (nothing lost, but an operator should
/// look), as soon as they happen: the engine itself does not log.
async fn watch_engine(handle: EngineHandle) {
    let (mut failure_logged, mut warning_logged) = (false, false);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        ticker.tick().await;
        if !failure_logged {
            if let Some(failure) = handle.durability_failure() {
                tracing::error!(
                    "the journal failed: {failure}; every command is refused from now on \
                     (503 journal_failed; /healthz says failing): fix the cause, then restart \
                     to recover from what is on disk"
                );
                failure_logged = true;
            }
        }
        if !warning_logged {
            if let Some(warning) = handle.snapshot_warning() {
                tracing::warn!(
                    "snapshot or pruning failed: {warning}; nothing is lost (the \
                    journal keeps everything), but recovery replays more until it is fixed"
                );
                warning_logged = true;
            }
        }
    }
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
