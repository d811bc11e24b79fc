//! Users' order history across nodes. A gateway node's replica starts from the engine
//! node's current state: it knows every open order, but not the closed orders and fills
//! the engine node's history holds from before. So at start a gateway asks for that
//! history (`<p>.history`, with the stamp of the last command of each shard its replica
//! starts from); the engine node answers once its own projection has applied every report
//! up to those commands, with its store's compact history. Reports the gateway's replica
//! then publishes again are recognized and skipped (the store applies a report once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tickgate_engine::binary::ByteReader;
use tokio::task::JoinHandle;

use super::{wire, Subjects};
use crate::history::{Entry, RECORD};
use crate::orders::OrderStore;

/// How long the engine node waits for its projection to reach a gateway's start.
const CATCH_UP_MAX: Duration = Duration::from_secs(5);

impl Subjects {
    /// Users' order history, from the engine node.
    pub fn history(&self) -> String {
        format!("{}.history", self.prefix)
    }
}

/// The engine node: answers history requests from `orders`.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    orders: Arc<OrderStore>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut requests = client.subscribe(subjects.history()).await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply.clone() else { continue };
            let answer = answer(&orders, &message.payload).await;
            let max = client.server_info().max_payload.saturating_sub(1024).max(1024);
            for piece in wire::snapshot_pieces(answer, max) {
                let _ = client.publish(reply.clone(), piece).await;
            }
        }
    }))
}

async fn answer(orders: &OrderStore, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut through = Vec::new();
    let mut r = ByteReader::new(request);
    while r.remaining() > 0 {
        through.push(r.u64().map_err(|_| "a history request is u64 stamps".to_string())?);
    }
    let started = Instant::now();
    while through.iter().enumerate().any(|(shard, ts)| orders.applied_through(shard).0 < *ts) {
        if started.elapsed() > CATCH_UP_MAX {
            return Err("the engine node's order projection is behind; retry".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let entries = orders.dump();
    let mut out = Vec::with_capacity(entries.len() * RECORD);
    for e in &entries {
        e.encode(&mut out);
    }
    Ok(out)
}

/// A gateway node: the engine node's users' history up to (at least) the commands
/// stamped `through` (per shard).
pub async fn fetch(
    client: &async_nats::Client,
    subjects: &Subjects,
    through: &[u64],
) -> anyhow::Result<Vec<Entry>> {
    let mut request = BytesMut::with_capacity(through.len() * 8);
    for ts in through {
        request.put_u64_le(*ts);
    }
    let bytes = super::fetch_pieces(client, subjects.history(), Bytes::from(request)).await?;
    if bytes.len() % RECORD != 0 {
        anyhow::bail!("a history of {} bytes is not whole records", bytes.len());
    }
    bytes
        .chunks(RECORD)
        .map(|r| Entry::decode(r).ok_or_else(|| anyhow::anyhow!("a damaged history record")))
        .collect()
}
