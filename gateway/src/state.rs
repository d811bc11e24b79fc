//! What request handlers share: [`AppState`] for every route, [`WsContext`] for
//! WebSocket connections. A leaf of the HTTP side: the router, REST, SSE and WebSocket
//! modules depend on it, it depends on none of them.

use std::sync::Arc;

use tickgate_engine::runtime::EngineHandle;
use tokio::sync::watch;

use crate::fanout::Directory;
use crate::metrics::Metrics;

/// What request handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The engine.
    pub engine: EngineHandle,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// WebSocket context.
    pub ws: Arc<WsContext>,
    /// Users.
    pub users: crate::auth::Users,
    /// Token issuing and checking.
    pub tokens: Arc<crate::auth::Tokens>,
    /// Per-user request rate: REST requests and WebSocket order requests draw on it alike
    /// (the same as [`WsContext::user_rate`]).
    pub rest_limit: Arc<crate::throttle::UserRateLimit>,
    /// Users' orders and fills.
    pub orders: Arc<crate::orders::OrderStore>,
    /// Users' alert histories and price alerts.
    pub alerts: Arc<crate::alerts::AlertHub>,
    /// SSE limits.
    pub sse: crate::limits::SseLimits,
    /// Failed logins per username and address.
    pub login_throttle: crate::throttle::LoginThrottle,
    /// Candles of every instrument.
    pub candles: Arc<crate::candles::Candles>,
    /// Password checks (argon2) running at once, at most.
    pub login_slots: tokio::sync::Semaphore,
    /// Time allowed for a request body once its head arrived.
    pub body_timeout: std::time::Duration,
    /// Operator token; `None`: operator endpoints disabled.
    pub admin_token: Option<String>,
    /// When `/debug/digest` last ran (it walks the whole state on the engine thread).
    /// Two gates: anyone's, and the operator's (`--admin-token`), so that an anonymous
    /// poller cannot take the operator's turn.
    pub digest_gate: [std::sync::Mutex<Option<std::time::Instant>>; 2],
    /// Origins allowed cross-origin requests (CORS) and cookie-authenticated changes.
    pub origins: crate::cors::Origins,
    /// The listener speaks TLS (cookies are `Secure`).
    pub tls: bool,
    /// This node's place in a NATS deployment (`None`: the single process).
    pub node: Option<NodeInfo>,
}

impl AppState {
    /// Whether this process serves users (the single process, a gateway node); the engine
    /// node serves health, metrics and public market data only.
    pub fn serves_clients(&self) -> bool {
        self.node.as_ref().is_none_or(|n| n.role != crate::cluster::Role::Engine)
    }
}

/// A node of a NATS deployment.
#[derive(Debug)]
pub struct NodeInfo {
    /// Engine or gateway.
    pub role: crate::cluster::Role,
    /// Its name in logs and metrics.
    pub id: String,
    /// This process among the nodes (the id and a random part).
    pub instance: String,
    /// Its NATS counters.
    pub stats: Arc<crate::cluster::ClusterStats>,
    /// A gateway node's way to the engine node (for what lives there: alerts).
    pub link: Option<crate::cluster::alerts::Link>,
}

/// What every WebSocket connection shares.
#[derive(Debug)]
pub struct WsContext {
    /// Channels.
    pub directory: Arc<Directory>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub limits: crate::limits::WsLimits,
    /// Flips to `true` on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Upgraded by each WebSocket task and dropped when it ends; shutdown waits for all
    /// of them. Weak here: what holds the state for other reasons (a node's NATS
    /// services) must not keep shutdown waiting out its whole drain time.
    pub alive: tokio::sync::mpsc::WeakSender<()>,
    /// Order entry and users' execution reports.
    pub trading: crate::trading::Trading,
    /// Token verification for the `auth` message.
    pub tokens: Arc<crate::auth::Tokens>,
    /// The fan-out writer threads that write market data to connections.
    pub writers: Arc<crate::fanout::Writers>,
    /// What every connection's link shares (counters, write limits).
    pub links: Arc<crate::fanout::link::LinkConfig>,
    /// On a gateway node: whether its market data is stale (connections tell clients).
    pub market: Option<watch::Receiver<bool>>,
    /// Per-user request rate, shared with REST: a user's order requests over any number of
    /// connections count against one budget.
    pub user_rate: Arc<crate::throttle::UserRateLimit>,
    /// Authenticated connections per user.
    pub user_connections: Arc<crate::limits::UserConnections>,
}

impl WsContext {
    /// One of `account`'s authenticated connections (`--ws-connections-per-user`), or why
    /// not: the upgrade answers it `503`, `auth` `limit_exceeded`.
    pub fn user_slot(&self, account: u32) -> Result<crate::limits::UserSlot, String> {
        let max = self.limits.connections_per_user_max;
        self.user_connections
            .take(account, max)
            .ok_or_else(|| format!("at most {max} connections per user: close one first"))
    }
}
