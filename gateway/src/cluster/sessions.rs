//! Sessions across nodes. Every node checks tokens itself (one shared secret); what ends
//! sessions (a logout: one session revoked, or a generation bump ending all of a user's)
//! is handed by the node that did it to every other (`<p>.sessions.changes`), which merges
//! it: merging is idempotent and order-free, so all nodes converge. A gateway node starts
//! from the engine node's whole state (`<p>.sessions.state`), which the engine node keeps
//! on disk like the single process does.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::{wire, Subjects};
use crate::sessions::Sessions;

impl Subjects {
    /// Session changes, for every node.
    pub fn session_changes(&self) -> String {
        format!("{}.sessions.changes", self.prefix)
    }

    /// The engine node's whole session state.
    pub fn session_state(&self) -> String {
        format!("{}.sessions.state", self.prefix)
    }
}

#[derive(Serialize, Deserialize)]
struct Change {
    node: String,
    delta: serde_json::Value,
}

/// A gateway node, before it serves: merges the engine node's whole state.
async fn catch_up(
    client: &async_nats::Client,
    subjects: &Subjects,
    sessions: &Sessions,
) -> anyhow::Result<()> {
    let state = super::fetch_pieces(client, subjects.session_state(), Bytes::new()).await?;
    sessions.merge(&state)?;
    Ok(())
}

/// Every node: hands its changes to the others and merges theirs; the engine node
/// (`serve_state`) also answers for its whole state, which any other node merges first
/// (after subscribing to the changes: none made meanwhile is missed).
pub async fn link(
    client: async_nats::Client,
    subjects: Subjects,
    tokens: Arc<crate::auth::Tokens>,
    node: String,
    serve_state: bool,
) -> anyhow::Result<JoinHandle<()>> {
    let (tx, mut local) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokens.sessions().set_announce(Box::new(move |delta| {
        let _ = tx.send(delta);
    }));
    let mut changes = client.subscribe(subjects.session_changes()).await?;
    if !serve_state {
        client.flush().await?;
        catch_up(&client, &subjects, tokens.sessions()).await?;
    }
    let mut state_requests = match serve_state {
        true => Some(client.subscribe(subjects.session_state()).await?),
        false => None,
    };
    Ok(tokio::spawn(async move {
        loop {
            let state_request = async {
                match &mut state_requests {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(delta) = local.recv() => {
                    let delta = serde_json::from_slice(&delta).unwrap_or_default();
                    let change = Change { node: node.clone(), delta };
                    if let Ok(payload) = serde_json::to_vec(&change) {
                        let _ = client.publish(subjects.session_changes(), Bytes::from(payload)).await;
                    }
                }
                Some(message) = changes.next() => {
                    let Ok(change) = serde_json::from_slice::<Change>(&message.payload) else {
                        tracing::warn!("a session change that is not one");
                        continue;
                    };
                    if change.node == node {
                        continue;
                    }
                    let (tokens, delta) = (Arc::clone(&tokens), change.delta.to_string());
                    // The engine node writes its file (fsync): off the async workers.
                    let merged = tokio::task::spawn_blocking(move || {
                        tokens.sessions().merge(delta.as_bytes())
                    })
                    .await;
                    if !matches!(merged, Ok(Ok(()))) {
                        tracing::warn!("a session change not merged");
                    }
                }
                Some(message) = state_request => {
                    let Some(reply) = message.reply.clone() else { continue };
                    let state = tokens.sessions().export();
                    let max = client.server_info().max_payload.saturating_sub(1024).max(1024);
                    for piece in wire::answer_pieces(Ok(state), max) {
                        let _ = client.publish(reply.clone(), piece).await;
                    }
                }
                else => return,
            }
        }
    }))
}
