//! Price alerts in a deployment. They live on the engine node: a gateway node carries a
//! user's `POST`/`GET`/`DELETE /api/v1/alerts` out there (request/reply on
//! `<p>.alerts.api`), the engine node evaluates them against its market, and hands each
//! one that fires to every gateway node (`<p>.alerts.events`), which adds it to the
//! user's SSE history on that node: every stream on every node gets it once. System
//! notices (halts) travel the same way. A gateway node keeps no alert of its own, so its
//! restart loses none; the engine node's restart loses them, as the single process's does
//! (alerts are not journaled).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tickgate_engine::AccountId;
use tokio::task::JoinHandle;

use super::Subjects;
use crate::alerts::{AlertHub, Relay};
use crate::error::{ApiError, ErrorCode};

/// A new alert's request body (`POST /api/v1/alerts`).
#[derive(Debug, Deserialize, Serialize)]
pub struct NewAlert {
    /// The instrument.
    pub symbol: String,
    /// `above`, `below` or `crosses`.
    pub condition: String,
    /// The price, a decimal string.
    pub price: String,
    /// Fires on every crossing rather than once.
    #[serde(default)]
    pub repeat: bool,
}

/// What a request does to a user's alerts. On a gateway node it is carried out on the
/// engine node, where alerts live.
#[derive(Debug, Deserialize, Serialize)]
pub enum AlertOp {
    /// Add one.
    Create(NewAlert),
    /// List them.
    List,
    /// Delete one by id.
    Delete(String),
}

/// Carries an alert request out on the engine node: `(account, op)` to the response.
pub type Apply = Arc<dyn Fn(AccountId, AlertOp) -> Response<Full<Bytes>> + Send + Sync>;

/// A gateway node's way to the engine node's alerts.
#[derive(Clone, Debug)]
pub struct Link {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// The cluster's subjects.
    pub subjects: Subjects,
    /// This node's NATS counters (whether it is connected).
    pub stats: Arc<super::ClusterStats>,
}

#[derive(Serialize, Deserialize)]
struct ApiRequest {
    account: u32,
    op: AlertOp,
    /// The gateway's wall clock (ns since the epoch) past which the engine node may no
    /// longer take it (before the gateway stops waiting): a request that reaches it later
    /// is dropped (async-nats holds what is published while it reconnects, and sends it
    /// once back), so a request answered `503` did not take effect behind the client's
    /// back.
    #[serde(default)]
    deadline: Option<u64>,
}

fn now_nanos() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Serialize, Deserialize)]
struct ApiReply {
    status: u16,
    body: Value,
}

/// An alert event for every node: to one account, or (`None`) a system notice to all.
#[derive(Serialize, Deserialize)]
struct AlertEvent {
    /// The node it comes from (which has delivered it already).
    node: String,
    account: Option<u32>,
    kind: String,
    data: Value,
}

impl Subjects {
    /// Alert requests to the engine node.
    pub fn alerts_api(&self) -> String {
        format!("{}.alerts.api", self.prefix)
    }

    /// Alerts fired, and system notices, for every node.
    pub fn alerts_events(&self) -> String {
        format!("{}.alerts.events", self.prefix)
    }
}

/// A gateway node: carries `op` out on the engine node and answers as it does.
pub async fn forward(link: &Link, account: AccountId, op: AlertOp) -> Response<Full<Bytes>> {
    if !link.stats.connected.load(std::sync::atomic::Ordering::Acquire) {
        // As order entry: at once, rather than a request held until NATS is back.
        let why = "alerts live on the engine node, and this gateway has lost NATS (reconnecting)";
        return ApiError::new(ErrorCode::EngineUnavailable, why).response();
    }
    // Short of the wait by the clocks' greatest difference: the engine node takes it only
    // while this node still waits for the answer.
    let deadline = now_nanos() + (super::REQUEST_TIMEOUT - super::CLOCK_SKEW_MAX).as_nanos() as u64;
    let request = ApiRequest { account: account.0, op, deadline: Some(deadline) };
    let payload = match serde_json::to_vec(&request) {
        Ok(p) => Bytes::from(p),
        Err(e) => return ApiError::new(ErrorCode::Internal, e.to_string()).response(),
    };
    let reply = match link.client.request(link.subjects.alerts_api(), payload).await {
        Ok(reply) => reply,
        Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
            let why = "the engine node, where alerts live, did not answer in time: the request \
                       takes no effect if it reaches it later (GET /api/v1/alerts shows what \
                       stands)";
            return ApiError::new(ErrorCode::EngineUnavailable, why).response();
        }
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            let why = "alerts live on the engine node, which is not running (no responders)";
            return ApiError::new(ErrorCode::EngineUnavailable, why).response();
        }
        Err(e) => {
            let why = format!("alerts live on the engine node, which cannot be reached: {e}");
            return ApiError::new(ErrorCode::EngineUnavailable, why).response();
        }
    };
    match serde_json::from_slice::<ApiReply>(&reply.payload) {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            crate::reply::json_response(status, &r.body)
        }
        Err(e) => {
            ApiError::new(ErrorCode::Internal, format!("engine node's answer: {e}")).response()
        }
    }
}

/// The engine node: answers gateways' alert requests and hands every alert that fires to
/// them. The task ends when dropped... by abort.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    hub: Arc<AlertHub>,
    apply: Apply,
    node: String,
) -> anyhow::Result<JoinHandle<()>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<AlertEvent>();
    let origin = node.clone();
    hub.set_relay(Relay(Box::new(move |account, kind, data| {
        let event = AlertEvent {
            node: origin.clone(),
            account: Some(account.0),
            kind: kind.to_string(),
            data: data.clone(),
        };
        let _ = tx.send(event);
    })));
    let mut requests = client.subscribe(subjects.alerts_api()).await?;
    let events = subjects.alerts_events();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(event) = rx.recv() => {
                    if let Ok(payload) = serde_json::to_vec(&event) {
                        let _ = client.publish(events.clone(), Bytes::from(payload)).await;
                    }
                }
                Some(message) = requests.next() => {
                    let Some(reply) = message.reply.clone() else { continue };
                    let answer = match serde_json::from_slice::<ApiRequest>(&message.payload) {
                        // Its gateway has answered `503` already (clocks within
                        // `CLOCK_SKEW_MAX`): drop it, unanswered.
                        Ok(r) if r.deadline.is_some_and(|d| now_nanos() > d) => continue,
                        Ok(r) => answer(apply(AccountId(r.account), r.op)).await,
                        Err(e) => ApiReply { status: 400, body: serde_json::json!({"error": {"code": "malformed", "message": e.to_string()}}) },
                    };
                    if let Ok(payload) = serde_json::to_vec(&answer) {
                        let _ = client.publish(reply, Bytes::from(payload)).await;
                    }
                }
                else => return,
            }
        }
    }))
}

async fn answer(response: Response<Full<Bytes>>) -> ApiReply {
    let status = response.status().as_u16();
    let body = match response.into_body().collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null),
        Err(never) => match never {},
    };
    ApiReply { status, body }
}

/// How often a gateway node looks whether its market data went stale or came back.
const STALE_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// A gateway node: adds the alerts and notices other nodes hand over to this node's
/// users' SSE histories, and tells them (and every WebSocket connection, through
/// `market`) when its market data goes stale (NATS lost, or the engine node silent) and
/// when it is live again.
pub async fn follow(
    client: async_nats::Client,
    subjects: Subjects,
    hub: Arc<AlertHub>,
    node: String,
    stats: Arc<super::ClusterStats>,
    market: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut events = client.subscribe(subjects.alerts_events()).await?;
    let stale_watch = tokio::spawn(watch_staleness(Arc::clone(&hub), stats, market));
    Ok(tokio::spawn(async move {
        let _abort_with_me = AbortOnDrop(stale_watch);
        while let Some(message) = events.next().await {
            let Ok(event) = serde_json::from_slice::<AlertEvent>(&message.payload) else {
                tracing::warn!("an alert event that is not one");
                continue;
            };
            if event.node == node {
                continue;
            }
            match event.account {
                Some(account) => {
                    hub.publish(AccountId(account), &event.kind, &event.data);
                }
                None => hub.publish_system(&event.data),
            }
        }
    }))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publishes `market_data_stale` / `market_data_live` system notices on changes, and the
/// state to WebSocket connections through `market`.
async fn watch_staleness(
    hub: Arc<AlertHub>,
    stats: Arc<super::ClusterStats>,
    market: tokio::sync::watch::Sender<bool>,
) {
    let mut stale = false;
    let mut ticker = tokio::time::interval(STALE_CHECK);
    loop {
        ticker.tick().await;
        let now = stats.stale_for_clients();
        if now == stale {
            continue;
        }
        stale = now;
        market.send_replace(stale);
        let notice = if stale {
            serde_json::json!({
                "notice": "market_data_stale",
                "message": "this gateway lost the engine node: market data and order entry \
                            pause until it is back (or connect to another gateway)",
            })
        } else {
            serde_json::json!({
                "notice": "market_data_live",
                "message": "this gateway follows the engine node again; nothing was lost",
            })
        };
        hub.publish_system(&notice);
    }
}

/// Hands a system notice this node published to its own users to every other node.
pub async fn broadcast_system(link: &Link, node: &str, data: &Value) {
    let event = AlertEvent {
        node: node.to_string(),
        account: None,
        kind: "system".into(),
        data: data.clone(),
    };
    if let Ok(payload) = serde_json::to_vec(&event) {
        let _ = link.client.publish(link.subjects.alerts_events(), Bytes::from(payload)).await;
    }
}
