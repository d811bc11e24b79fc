//! Users' order history across nodes. A gateway node's replica starts from the engine
//! node's current state: it knows every open order, but not the closed orders and fills
//! the engine node's history holds from before. So at start a gateway asks for that
//! history (`<p>.history`, with the stamp of the last command of each shard its replica
//! starts from); the engine node answers once its own projection has applied every report
//! up to those commands, with its store's compact history. Reports the gateway's replica
//! then publishes again are recognized and skipped (the store applies a report once).
//!
//! Public market history the same way (`<p>.market`): each trades channel's recent
//! trades and the candles, which the gateway starts its channels and store with (trades
//! it then sees again are skipped by sequence).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tickgate_engine::binary::ByteReader;
use tokio::task::JoinHandle;

use serde_json::{json, Value};
use tickgate_engine::{Price, Qty, Side};

use super::{wire, Subjects};
use crate::candles::Candles;
use crate::fanout::Directory;
use crate::history::{Entry, RECORD};
use crate::orders::OrderStore;
use crate::protocol::{ChannelKind, TradeMsg, TRADES_KEPT};

/// How long the engine node waits for its projection to reach a gateway's start.
const CATCH_UP_MAX: Duration = Duration::from_secs(5);

impl Subjects {
    /// Users' order history, from the engine node.
    pub fn history(&self) -> String {
        format!("{}.history", self.prefix)
    }

    /// Recent trades and candles, from the engine node.
    pub fn market(&self) -> String {
        format!("{}.market", self.prefix)
    }
}

/// What the engine node answers history and market requests from.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Users' orders and fills.
    pub orders: Arc<OrderStore>,
    /// The channels (their recent trades).
    pub directory: Arc<Directory>,
    /// The candles.
    pub candles: Arc<Candles>,
}

/// The engine node: answers history and market requests.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    state: Sources,
) -> anyhow::Result<JoinHandle<()>> {
    let mut history = client.subscribe(subjects.history()).await?;
    let mut market = client.subscribe(subjects.market()).await?;
    Ok(tokio::spawn(async move {
        loop {
            let (message, is_history) = tokio::select! {
                Some(m) = history.next() => (m, true),
                Some(m) = market.next() => (m, false),
                else => return,
            };
            let Some(reply) = message.reply.clone() else { continue };
            // Each in a task of its own: one waiting for the engine node to catch up
            // holds up no other gateway's start.
            let (client, state) = (client.clone(), state.clone());
            tokio::spawn(async move {
                let answer = if is_history {
                    history_answer(&state.orders, &message.payload).await
                } else {
                    market_answer(&state, &message.payload).await
                };
                let max = client.server_info().max_payload.saturating_sub(1024).max(1024);
                for piece in wire::answer_pieces(answer, max) {
                    let _ = client.publish(reply.clone(), piece).await;
                }
            });
        }
    }))
}

/// Waits until `applied(shard)` (a consumer's progress) reaches the commands stamped
/// `request`'s stamps (one u64 per shard).
async fn catch_up(request: &[u8], applied: impl Fn(usize) -> u64) -> Result<(), String> {
    let mut through = Vec::new();
    let mut r = ByteReader::new(request);
    while r.remaining() > 0 {
        through.push(r.u64().map_err(|_| "a history request is u64 stamps".to_string())?);
    }
    if through.len() > 64 {
        return Err("more stamps than shards".into());
    }
    let started = Instant::now();
    while through.iter().enumerate().any(|(shard, ts)| applied(shard) < *ts) {
        if started.elapsed() > CATCH_UP_MAX {
            return Err("the engine node is behind the stamps asked for; retry".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn market_answer(state: &Sources, request: &[u8]) -> Result<Vec<u8>, String> {
    catch_up(request, |shard| state.directory.applied_through(shard)).await?;
    let mut trades = serde_json::Map::new();
    for channel in state.directory.all() {
        if channel.kind != ChannelKind::Trades {
            continue;
        }
        let (recent, _) = channel.recent_trades(TRADES_KEPT);
        let list: Vec<Value> = recent
            .iter()
            .map(|t| {
                json!([
                    t.seq,
                    t.ts,
                    t.price.0,
                    t.qty.0,
                    t.taker_side.as_u8(),
                    t.maker_order,
                    t.taker_order
                ])
            })
            .collect();
        trades.insert(channel.name.clone(), Value::Array(list));
    }
    let candles: Value = serde_json::from_slice(&state.candles.export()).unwrap_or(Value::Null);
    serde_json::to_vec(&json!({ "trades": trades, "candles": candles })).map_err(|e| e.to_string())
}

async fn history_answer(orders: &OrderStore, request: &[u8]) -> Result<Vec<u8>, String> {
    catch_up(request, |shard| orders.applied_through(shard).0).await?;
    let entries = orders.dump();
    let mut out = Vec::with_capacity(entries.len() * RECORD);
    for e in &entries {
        e.encode(&mut out);
    }
    Ok(out)
}

fn stamps(through: &[u64]) -> Bytes {
    let mut request = BytesMut::with_capacity(through.len() * 8);
    for ts in through {
        request.put_u64_le(*ts);
    }
    request.freeze()
}

/// A gateway node: starts its trades channels and candles with the engine node's, taken
/// after the commands stamped `through` (per shard).
pub async fn seed_market(
    client: &async_nats::Client,
    subjects: &Subjects,
    through: &[u64],
    directory: &Directory,
    candles: &Candles,
) -> anyhow::Result<()> {
    let bytes = super::fetch_pieces(client, subjects.market(), stamps(through)).await?;
    let market: Value = serde_json::from_slice(&bytes)?;
    candles.import(serde_json::to_vec(&market["candles"])?.as_slice())?;
    let Some(trades) = market["trades"].as_object() else {
        anyhow::bail!("no trades in the engine node's market");
    };
    for (name, list) in trades {
        let Some(channel) = directory.get(name) else { continue };
        let decoded: Vec<TradeMsg> =
            list.as_array().map(|l| l.iter().filter_map(trade_of).collect()).unwrap_or_default();
        channel.seed_trades(&decoded);
    }
    Ok(())
}

fn trade_of(v: &Value) -> Option<TradeMsg> {
    let n = |i: usize| v.get(i).and_then(Value::as_u64);
    let p = |i: usize| v.get(i).and_then(Value::as_i64);
    Some(TradeMsg {
        seq: n(0)?,
        ts: n(1)?,
        price: Price(p(2)?),
        qty: Qty(p(3)?),
        taker_side: Side::from_u8(u8::try_from(n(4)?).ok()?)?,
        maker_order: n(5)?,
        taker_order: n(6)?,
    })
}

/// A gateway node: the engine node's users' history up to (at least) the commands
/// stamped `through` (per shard).
pub async fn fetch(
    client: &async_nats::Client,
    subjects: &Subjects,
    through: &[u64],
) -> anyhow::Result<Vec<Entry>> {
    let bytes = super::fetch_pieces(client, subjects.history(), stamps(through)).await?;
    if bytes.len() % RECORD != 0 {
        anyhow::bail!("a history of {} bytes is not whole records", bytes.len());
    }
    bytes
        .chunks(RECORD)
        .map(|r| Entry::decode(r).ok_or_else(|| anyhow::anyhow!("a damaged history record")))
        .collect()
}
