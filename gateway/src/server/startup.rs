//! Start-up, step by step: read what is on disk, start the engine (recovering it), rebuild
//! users' state, start the event pumps, the market's sources, and what requests share.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tickgate_engine::runtime::{CommandTap, EngineHandle, EngineRuntime, RuntimeConfig};
use tickgate_engine::{AccountId, Event, ExecReport, Retention, UnixNanos, Watermark};
use tickgate_feed::{FeedDriver, FlowConfig, JournalReplay, Worker};

use super::recovery::{
    engine_spec, fund_demo_accounts, log_recovery, restore_history, HistoryRestore,
};
use crate::alerts::{AlertEvaluator, AlertHub};
use crate::auth::{Tokens, Users};
use crate::candles::Candles;
use crate::cluster::primary::{CommandLog, Primary};
use crate::cluster::replica::Replica;
use crate::cluster::route::{Remote, Route};
use crate::cluster::{ClusterConfig, ClusterStats, Role, Subjects};
use crate::config::Config;
use crate::events::{EventConsumer, Pacing, Pump, RingSource, Wake};
use crate::fanout::{Directory, MarketData, Writers};
use crate::history;
use crate::idempotency::KeyCache;
use crate::metrics::Metrics;
use crate::orders::{OrderProjection, OrderStore};
use crate::state::NodeInfo;
use crate::state::{AppState, WsContext};

/// Longest idle wait of the alert pump: the engine's publish hook wakes it sooner.
const ALERTS_IDLE_MAX: Duration = Duration::from_millis(50);
/// Password checks (argon2: ~19 MiB and tens of ms each) running at once, at most.
const LOGIN_CHECKS_MAX: usize = 4;

/// What start-up reads before the engine runs.
pub(super) struct Loaded {
    pub(super) tls: Option<Arc<crate::tls::Tls>>,
    pub(super) users: Users,
    pub(super) orders: Arc<OrderStore>,
    /// Users' order history (durable modes only).
    pub(super) history: Option<HistoryFiles>,
    pub(super) retention: Arc<Retention>,
    pub(super) candles: Arc<Candles>,
    /// The best bids/offers the journal's replay brings back.
    pub(super) replayed: Arc<crate::fanout::Replayed>,
}

/// The order history on disk and its retention watermark.
pub(super) struct HistoryFiles {
    dir: PathBuf,
    loaded: history::Loaded,
    mark: Watermark,
}

/// Reads the certificate, the users, the order history and the candles.
pub(super) async fn load(config: &Config) -> anyhow::Result<Loaded> {
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
    // The history is the engine's one durable consumer: recovery replays what it does
    // not have yet, pruning keeps it (see `tickgate_engine::retention`).
    let retention = Arc::new(Retention::new(config.shards.max(1)));
    let history = match config.durability.as_ref().map(|d| d.dir.join("history")) {
        Some(dir) => {
            let d = dir.clone();
            let (loaded, stored) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                // The mark is only a hint of how far the file reaches: a damaged one is
                // read as "nothing stored", so recovery replays all it can (more, never less).
                let stored = crate::orders::stored::load(&d).unwrap_or_else(|e| {
                    tracing::warn!("order history watermark unreadable, replaying all kept: {e}");
                    Vec::new()
                });
                Ok((history::load(&d)?, stored))
            })
            .await??;
            Some(HistoryFiles { dir, loaded, mark: retention.register(&stored) })
        }
        None => None,
    };
    // Candles: the saved store, then the trades the journal's replay brings back.
    let candles_dir = config.durability.as_ref().map(|d| d.dir.clone());
    let instruments = engine_spec().instruments.len();
    let candles = Arc::new(Candles::new(instruments, candles_dir.as_deref())?);
    let replayed = Arc::default();
    Ok(Loaded { tls, users, orders, history, retention, candles, replayed })
}

/// The running engine, and what its recovery replayed for the gateway.
pub(super) struct Started {
    pub(super) runtime: EngineRuntime,
    /// Users' execution reports the journal's replay brought back.
    replayed: Arc<Mutex<Vec<ExecReport>>>,
    /// Every shard started empty: accounts need their first funding.
    pub(super) fresh: bool,
}

/// This node's NATS side, once connected.
pub(super) struct Node {
    pub(super) config: ClusterConfig,
    pub(super) client: async_nats::Client,
    pub(super) stats: Arc<ClusterStats>,
    /// This process among the nodes (its id and a random part: ids may repeat across
    /// hosts): what it hands to all it recognizes when it comes back.
    pub(super) instance: String,
}

impl Node {
    fn subjects(&self) -> Subjects {
        Subjects::new(&self.config.prefix)
    }

    /// What request handlers know of this node.
    pub(super) fn info(&self) -> NodeInfo {
        let role = self.config.role;
        NodeInfo {
            role,
            id: self.config.node.clone(),
            instance: self.instance.clone(),
            stats: Arc::clone(&self.stats),
            link: (role == Role::Gateway).then(|| crate::cluster::alerts::Link {
                client: self.client.clone(),
                subjects: self.subjects(),
                stats: Arc::clone(&self.stats),
            }),
        }
    }
}

/// The engine this process runs: its own (the single process; the engine node, whose
/// commands are kept for the gateways from the first one), or a replica of the engine
/// node's (a gateway node).
pub(super) async fn start_core(
    config: &Config,
    loaded: &Loaded,
    wakes: [Wake; 2],
    node: Option<&Node>,
) -> anyhow::Result<(Started, Option<Replica>, Option<Arc<CommandLog>>)> {
    match node {
        Some(n) if n.config.role == Role::Gateway => {
            let (started, replica) = start_replica(config, wakes, n, &loaded.orders).await?;
            Ok((started, Some(replica), None))
        }
        Some(_) => {
            // Handed to NATS once everything is up (see `start_primary`).
            let log = CommandLog::new(&vec![0; config.shards.max(1)]);
            let started = start_engine(config, loaded, wakes, Some(log.tap())).await?;
            loaded.orders.set_shards(started.runtime.handle().shards());
            for r in started.runtime.recoveries() {
                // Before any new command: where this run starts.
                log.start_at(r.shard, r.next_seq - 1);
            }
            Ok((started, None, Some(log)))
        }
        None => {
            let started = start_engine(config, loaded, wakes, None).await?;
            loaded.orders.set_shards(started.runtime.handle().shards());
            Ok((started, None, None))
        }
    }
}

/// Connects to NATS when this process is a node of a deployment.
pub(super) async fn connect(config: &Config) -> anyhow::Result<Option<Node>> {
    let Some(c) = &config.cluster else { return Ok(None) };
    let stats = Arc::new(ClusterStats::default());
    let client = crate::cluster::connect(c, Arc::clone(&stats))
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS at {}: {e}", c.url))?;
    tracing::info!(node = %c.node, role = c.role.as_str(), url = %c.url, "connected to NATS");
    let random = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    let instance = format!("{}#{random:016x}", c.node);
    Ok(Some(Node { config: c.clone(), client, stats, instance }))
}

/// The engine node: hands what its engine applies to NATS and answers the gateways.
pub(super) async fn start_primary(
    config: &Config,
    node: &Node,
    started: &Started,
    log: Arc<CommandLog>,
    state: &AppState,
) -> anyhow::Result<Primary> {
    let engine = started.runtime.handle();
    for r in started.runtime.recoveries() {
        // Every report and trade up to the recovered commands is in the users' store and
        // the candles: a gateway starting from them need not wait for a new command on a
        // quiet shard.
        state.orders.mark_applied(r.shard, UnixNanos(r.last_ts));
        state.ws.directory.mark_applied(r.shard, r.last_ts);
    }
    let client = node.client.clone();
    let id = node.config.node.clone();
    let journal = config.durability.as_ref().map(|d| d.dir.clone());
    let keys = Arc::clone(&state.ws.trading.keys);
    let check = secret_check(config);
    Primary::start(client, node.subjects(), (engine, keys), log, (id, check), journal).await
}

/// The token secret's [`crate::auth::secret_check`] (a deployment's nodes are given one:
/// `--nats` requires `--jwt-secret`).
fn secret_check(config: &Config) -> String {
    crate::auth::secret_check(config.jwt_secret.as_deref().unwrap_or_default().as_bytes())
}

/// A gateway node: a replica of the engine node's engine, from its snapshots; its publish
/// hook wakes `wakes` as the engine's does.
pub(super) async fn start_replica(
    config: &Config,
    wakes: [Wake; 2],
    node: &Node,
    orders: &OrderStore,
) -> anyhow::Result<(Started, Replica)> {
    let runtime_config = RuntimeConfig {
        spec: engine_spec(),
        queue_capacity: config.queue_capacity,
        ring_capacity: config.ring_capacity,
        on_publish: Some(Arc::new(move || wakes.iter().for_each(Wake::wake))),
        clock: Arc::clone(&config.clock),
        // Its commands come in NATS-sized batches, a millisecond or so apart: by default
        // it parks between them (see `Config::engine_spin`).
        idle_spin: config.engine_spin,
        ..RuntimeConfig::default()
    };
    let (client, stats) = (node.client.clone(), Arc::clone(&node.stats));
    let (runtime, replica) = Replica::start(
        client.clone(),
        node.subjects(),
        runtime_config,
        (stats, secret_check(config)),
    )
    .await?;
    orders.set_shards(runtime.handle().shards());
    // Closed orders and fills from before the replica's start: the engine node's.
    let entries =
        crate::cluster::history::fetch(&client, &node.subjects(), &replica.started_at).await?;
    tracing::info!(records = entries.len(), "users' order history from the engine node");
    orders.load(&entries);
    let replayed = Arc::new(Mutex::new(Vec::new()));
    Ok((Started { runtime, replayed, fresh: false }, replica))
}

/// What nodes serve each other besides the engine: session changes both ways; the engine
/// node answers alert, history and session-state requests; gateway nodes follow what fires.
pub(super) async fn node_services(
    node: &Node,
    role: Role,
    state: &Arc<AppState>,
    market: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let (client, subjects, id) = (node.client.clone(), node.subjects(), node.instance.clone());
    let engine = role == Role::Engine;
    let tokens = Arc::clone(&state.tokens);
    let sessions = crate::cluster::sessions::link(
        client.clone(),
        subjects.clone(),
        tokens,
        id.clone(),
        engine,
    )
    .await?;
    if engine {
        let sources = crate::cluster::history::Sources {
            orders: Arc::clone(&state.orders),
            directory: Arc::clone(&state.ws.directory),
            candles: Arc::clone(&state.candles),
        };
        let history = crate::cluster::history::serve(client.clone(), subjects.clone(), sources);
        let on = Arc::clone(state);
        let apply: crate::cluster::alerts::Apply =
            Arc::new(move |account, op| crate::rest::alerts::apply(&on, account, op));
        let hub = Arc::clone(&state.alerts);
        let alerts = crate::cluster::alerts::serve(client, subjects, hub, apply, id);
        Ok(vec![sessions, history.await?, alerts.await?])
    } else {
        let (hub, stats) = (Arc::clone(&state.alerts), Arc::clone(&node.stats));
        let alerts =
            crate::cluster::alerts::follow(client, subjects, hub, id, stats, market).await?;
        Ok(vec![sessions, alerts])
    }
}

/// A gateway node: its trades channels and candles start with the engine node's.
pub(super) async fn seed_market(
    node: &Node,
    replica: &Replica,
    directory: &Directory,
    candles: &Candles,
) -> anyhow::Result<()> {
    let through = &replica.started_at;
    crate::cluster::history::seed_market(
        &node.client,
        &node.subjects(),
        through,
        directory,
        candles,
    )
    .await
}

/// Order entry's way to the engine: this process's, or the engine node's over NATS.
pub(super) fn route(engine: &EngineHandle, node: Option<&Node>) -> Route {
    match node {
        Some(n) if n.config.role == Role::Gateway => Route::Remote(Remote::new(
            n.client.clone(),
            n.subjects(),
            engine.clone(),
            Arc::clone(&n.stats),
        )),
        _ => Route::Local(engine.clone()),
    }
}

/// Starts the engine, recovering it from the journal; its publish hook wakes `wakes`;
/// `tap` (the engine node's) sees every command it applies.
pub(super) async fn start_engine(
    config: &Config,
    loaded: &Loaded,
    wakes: [Wake; 2],
    tap: Option<CommandTap>,
) -> anyhow::Result<Started> {
    let replayed = Arc::new(Mutex::new(Vec::new()));
    let users: HashSet<AccountId> = loaded.users.all().map(|u| u.account).collect();
    let (sink, candles) = (Arc::clone(&replayed), Arc::clone(&loaded.candles));
    let market = Arc::clone(&loaded.replayed);
    let runtime_config = RuntimeConfig {
        spec: engine_spec(),
        shards: config.shards,
        queue_capacity: config.queue_capacity,
        ring_capacity: config.ring_capacity,
        on_publish: Some(Arc::new(move || wakes.iter().for_each(Wake::wake))),
        durability: config.durability.clone(),
        clock: Arc::clone(&config.clock),
        // Users' reports since the start of recovery come back from the journal; they are
        // applied over the history once the engine says which of its records are real.
        on_replay: Some(Arc::new(move |_, e: &Event| match e {
            Event::Exec(r) if users.contains(&r.account) => {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(*r);
            }
            Event::Trade(t) => candles.apply(std::slice::from_ref(t)),
            Event::Bbo(_) => market.record(e),
            // Transfers change no order or fill, and no one is subscribed to an account's
            // live feed before the server starts.
            _ => {}
        })),
        retention: loaded.history.as_ref().map(|_| Arc::clone(&loaded.retention)),
        // 50 µs by default, 0 on an engine node (see `Config::engine_spin`).
        idle_spin: config.engine_spin,
        on_commands: tap,
        ..RuntimeConfig::default()
    };
    let runtime =
        tokio::task::spawn_blocking(move || EngineRuntime::start(runtime_config)).await??;
    let fresh = log_recovery(config, &runtime);
    Ok(Started { runtime, replayed, fresh })
}

/// Rebuilds users' orders and fills (history, replayed reports, orders resting in the
/// engine) and funds the demo accounts on a first run; the history's sync thread, if any.
pub(super) async fn restore_users(
    config: &Config,
    loaded: &mut Loaded,
    started: &Started,
) -> anyhow::Result<Option<Worker>> {
    let engine = started.runtime.handle();
    let history_sync = match loaded.history.take() {
        Some(HistoryFiles { dir, loaded: records, mark }) => {
            for r in started.runtime.recoveries() {
                mark.set(r.shard, UnixNanos(r.last_ts));
            }
            let replayed = &started.replayed;
            let restore = HistoryRestore { loaded: records, replayed, dir, mark };
            Some(restore_history(&engine, &loaded.users, &loaded.orders, restore).await?)
        }
        None => None,
    };
    if started.fresh && config.replay.is_none() {
        fund_demo_accounts(&engine, &loaded.users).await?;
    } else if !started.fresh {
        // Orders still resting in the engine are always known, including those placed
        // before the snapshot recovery started from.
        let accounts: Vec<_> = loaded.users.all().map(|u| u.account).collect();
        for shard in 0..engine.shards() {
            let (e, a) = (engine.clone(), accounts.clone());
            for (instrument, o) in
                tokio::task::spawn_blocking(move || e.open_orders(shard, a)).await??
            {
                loaded.orders.restore_open(instrument, &o);
            }
        }
    }
    Ok(history_sync)
}

/// The idempotency keys the engine remembers (from its snapshot and journal).
pub(super) async fn idempotency_keys(
    engine: &EngineHandle,
    users: &Users,
    fresh: bool,
) -> anyhow::Result<Arc<KeyCache>> {
    let keys = Arc::new(KeyCache::for_shards(engine.shards()));
    if !fresh {
        let accounts: Vec<_> = users.all().map(|u| u.account).collect();
        for shard in 0..engine.shards() {
            let (e, a) = (engine.clone(), accounts.clone());
            keys.load(tokio::task::spawn_blocking(move || e.key_records(shard, a)).await??);
        }
    }
    Ok(keys)
}

/// What the event pumps feed.
pub(super) struct Consumers {
    pub(super) directory: Arc<Directory>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) writers: Arc<Writers>,
    pub(super) orders: Arc<OrderStore>,
    pub(super) candles: Arc<Candles>,
    pub(super) alerts: Arc<AlertHub>,
    pub(super) replayed: Arc<crate::fanout::Replayed>,
}

/// Starts the two pumps: "fanout-hub" (users' orders, then market data) and "alerts".
pub(super) async fn start_pumps(
    config: &Config,
    engine: &EngineHandle,
    c: &Consumers,
    [hub_wake, alert_wake]: [Wake; 2],
) -> anyhow::Result<(Pump, Pump)> {
    let (e, d, m) = (engine.clone(), Arc::clone(&c.directory), Arc::clone(&c.metrics));
    let (pacing, w, candles) = (config.fanout, Arc::clone(&c.writers), Arc::clone(&c.candles));
    let replayed = Arc::clone(&c.replayed);
    let projection = OrderProjection::new(Arc::clone(&c.orders), engine.shards());
    let hub = tokio::task::spawn_blocking(move || {
        // The source first, then the books' snapshots: every later delta is seen.
        let source = RingSource::new(&e);
        let market = MarketData::new(e, d, m, Arc::clone(&w), candles, &replayed);
        let consumers: Vec<Box<dyn EventConsumer>> = vec![Box::new(projection), Box::new(market)];
        Pump::start("fanout-hub", source, consumers, pacing.for_pump(w), &hub_wake)
    })
    .await?;
    let alerts = Pump::start(
        "alerts",
        RingSource::new(engine),
        vec![Box::new(AlertEvaluator::new(
            Arc::clone(&c.alerts),
            engine.instruments(),
            engine.shards(),
        ))],
        Pacing { idle: ALERTS_IDLE_MAX, pass: Box::new(|| Duration::ZERO) },
        &alert_wake,
    );
    Ok((hub, alerts))
}

/// The market's sources: the synthetic feed, or a replayed recording. They start last, so
/// the hub sees their market from the first command.
pub(super) async fn start_sources(
    config: &Config,
    engine: &EngineHandle,
    fresh: bool,
) -> anyhow::Result<(Option<FeedDriver>, Option<JournalReplay>)> {
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
            let (e, d, s, t) = (engine.clone(), dir.clone(), *speed, config.replay_stamps);
            let replay =
                tokio::task::spawn_blocking(move || JournalReplay::start(e, d, s, t)).await??;
            let total = replay.stats().total.load(std::sync::atomic::Ordering::Relaxed);
            let stamps = config.replay_stamps;
            tracing::info!(dir = %dir.display(), speed = ?speed, ?stamps, commands = total, "replaying a journal");
            Some(replay)
        }
        None => None,
    };
    Ok((feed, replay))
}

/// What every connection and request needs besides the consumers.
pub(super) struct Serving {
    pub(super) shutdown: tokio::sync::watch::Receiver<bool>,
    pub(super) alive: tokio::sync::mpsc::WeakSender<()>,
    pub(super) keys: Arc<KeyCache>,
    pub(super) route: Route,
    pub(super) node: Option<NodeInfo>,
    /// A gateway node's market data freshness (`true`: stale).
    pub(super) market: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Tokens, the WebSocket context and the state every request handler shares.
pub(super) fn app_state(
    config: &Config,
    engine: &EngineHandle,
    loaded: Loaded,
    c: &Consumers,
    serving: Serving,
) -> anyhow::Result<Arc<AppState>> {
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
        &loaded.users,
        sessions,
    ));
    let trading = crate::trading::Trading {
        engine: engine.clone(),
        route: serving.route,
        orders: Arc::clone(&loaded.orders),
        keys: serving.keys,
        open_orders_max: config.open_orders_max,
        placing: Arc::default(),
    };
    let user_rate =
        Arc::new(crate::throttle::UserRateLimit::new(config.rest_rate, config.rest_burst));
    let ws = Arc::new(WsContext {
        directory: Arc::clone(&c.directory),
        metrics: Arc::clone(&c.metrics),
        limits: config.ws.clone(),
        shutdown: serving.shutdown,
        alive: serving.alive,
        trading,
        tokens: Arc::clone(&tokens),
        writers: Arc::clone(&c.writers),
        links: Arc::new(crate::fanout::link::LinkConfig {
            metrics: Arc::clone(&c.metrics),
            write_batch_bytes_max: config.ws.write_batch_bytes_max,
            slow_gaps_max: config.ws.slow_gaps_max,
            slow_gap_window: config.ws.slow_gap_window,
            unread_bytes_max: config.ws.unread_bytes_max,
            unread_bytes_start: config.ws.unread_bytes_start,
            allowances: crate::fanout::outbox::AllowancePool::new(config.ws.unread_bytes_total),
            held_max: config.ws.write_stall_timeout,
            clock: Arc::clone(&config.clock),
        }),
        market: serving.market,
        user_rate: Arc::clone(&user_rate),
        user_connections: Arc::default(),
    });
    let tls = loaded.tls.is_some();
    Ok(Arc::new(AppState {
        engine: engine.clone(),
        metrics: Arc::clone(&c.metrics),
        ws,
        users: loaded.users,
        tokens,
        orders: loaded.orders,
        rest_limit: user_rate,
        alerts: Arc::clone(&c.alerts),
        sse: config.sse.clone(),
        digest_gate: Default::default(),
        admin_token: config.admin_token.clone(),
        body_timeout: config.body_timeout,
        login_throttle: crate::throttle::LoginThrottle::new(Arc::clone(&config.clock)),
        candles: Arc::clone(&c.candles),
        login_slots: tokio::sync::Semaphore::new(LOGIN_CHECKS_MAX),
        origins: crate::cors::Origins::new(config.cors_origins.clone(), tls),
        tls,
        node: serving.node,
    }))
}
