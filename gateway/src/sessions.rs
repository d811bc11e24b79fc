//! Sessions: what makes a signed token revocable.
//!
//! A login starts a session (a random `sid`, its start time `auth`) and every token of that
//! session, refreshed or not, carries both plus the user's generation (`gen`). A token is
//! good while its signature and expiry hold **and** its user still exists with the same
//! account, its generation is the user's current one (`POST /api/v1/auth/logout?all=true`
//! bumps it: every session of the user ends) and its session was not revoked (`POST
//! /api/v1/auth/logout` revokes the caller's). Revocations are kept until the session could
//! no longer be refreshed anyway, written to `<data-dir>/auth/sessions.json` when the
//! server has a data directory, and announced on a watch channel so that open WebSocket
//! connections and SSE streams of a revoked session close at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Revocations kept at most (each lives at most the session's maximum age).
const REVOKED_MAX: usize = 100_000;

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// Per user, the current generation (absent: 0).
    generations: HashMap<String, u64>,
    /// Revoked session ids, with when they stop mattering (seconds since the epoch).
    revoked: HashMap<u64, u64>,
}

/// Every user's generation and the revoked sessions.
pub struct Sessions {
    state: RwLock<State>,
    /// Held from a change until its file is written: changes reach the file one at a time,
    /// in order (never two writers on the temporary file, never an older state last).
    writer: std::sync::Mutex<()>,
    /// Bumped on every revocation: holders of a session re-check it.
    epoch: watch::Sender<u64>,
    file: Option<PathBuf>,
    /// Told of every change made here (not of merged ones), as a [`Sessions::merge`]able
    /// delta: a node of a deployment hands it to the others.
    announce: std::sync::OnceLock<Announce>,
}

/// Receives the JSON delta of each local change.
pub type Announce = Box<dyn Fn(Vec<u8>) + Send + Sync>;

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("file", &self.file).finish_non_exhaustive()
    }
}

/// Why the revocation state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    /// Reading the file failed.
    #[error("sessions file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file is not what this build writes.
    #[error("sessions file {0}: {1}")]
    Format(PathBuf, serde_json::Error),
}

impl Sessions {
    /// Sessions kept in memory only (tokens die with the process unless the secret is
    /// fixed; then revocations are forgotten on restart).
    pub fn in_memory() -> Sessions {
        Sessions {
            state: RwLock::default(),
            writer: std::sync::Mutex::new(()),
            epoch: watch::channel(0).0,
            file: None,
            announce: std::sync::OnceLock::new(),
        }
    }

    /// Sessions persisted in `dir/sessions.json` (loaded now if it exists).
    pub fn persisted(dir: PathBuf) -> Result<Sessions, SessionsError> {
        let file = dir.join("sessions.json");
        let state = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| SessionsError::Format(file.clone(), e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(SessionsError::Io(file, e)),
        };
        Ok(Sessions {
            state: RwLock::new(state),
            writer: std::sync::Mutex::new(()),
            epoch: watch::channel(0).0,
            file: Some(file),
            announce: std::sync::OnceLock::new(),
        })
    }

    /// The current generation of `user`.
    pub fn generation(&self, user: &str) -> u64 {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.generations.get(user).copied().unwrap_or(0)
    }

    /// Whether a session of `user` at generation `gen` with id `sid` still stands.
    pub fn stands(&self, user: &str, gen: u64, sid: u64) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.generations.get(user).copied().unwrap_or(0) == gen
            && !state.revoked.contains_key(&sid)
    }

    /// Ends session `sid` (it could live until `until`, seconds since the epoch). Blocks
    /// on the file write: call it off the async workers.
    pub fn revoke(&self, sid: u64, until: u64, now: u64) {
        self.change(|state| {
            if state.revoked.len() >= REVOKED_MAX {
                state.revoked.retain(|_, until| *until > now);
            }
            // Still full of live revocations: the one that ends soonest goes first.
            while state.revoked.len() >= REVOKED_MAX {
                let Some(soonest) = state.revoked.iter().min_by_key(|(_, u)| **u).map(|(s, _)| *s)
                else {
                    break;
                };
                state.revoked.remove(&soonest);
            }
            state.revoked.insert(sid, until);
        });
        let delta = State { revoked: HashMap::from([(sid, until)]), ..State::default() };
        self.announce(&delta);
    }

    /// Ends every session of `user`. Blocks on the file write, like [`Sessions::revoke`].
    ///
    /// The new generation is at least the wall clock in milliseconds: two nodes ending a
    /// user's sessions at nearly the same time pick different generations, and the later
    /// one wins everywhere once merged (a counter would give both the same one, and a
    /// login on the first node in between would survive the second's logout).
    pub fn revoke_all(&self, user: &str, now_ms: u64) {
        let mut generation = 0;
        self.change(|state| {
            let g = state.generations.entry(user.to_string()).or_insert(0);
            *g = (*g + 1).max(now_ms);
            generation = *g;
        });
        let delta = State {
            generations: HashMap::from([(user.to_string(), generation)]),
            ..State::default()
        };
        self.announce(&delta);
    }

    /// From now on, hands every local change to `announce` (set once).
    pub fn set_announce(&self, announce: Announce) {
        let _ = self.announce.set(announce);
    }

    fn announce(&self, delta: &State) {
        if let (Some(announce), Ok(bytes)) = (self.announce.get(), serde_json::to_vec(delta)) {
            announce(bytes);
        }
    }

    /// The whole state, as JSON (what another node [`Sessions::merge`]s to catch up).
    pub fn export(&self) -> Vec<u8> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        serde_json::to_vec(&*state).unwrap_or_default()
    }

    /// Takes in another node's state or delta: the higher generation of each user, every
    /// revocation. Merging is idempotent and order-free, so every node converges. Blocks on
    /// the file write, like [`Sessions::revoke`].
    pub fn merge(&self, bytes: &[u8]) -> Result<(), serde_json::Error> {
        let delta: State = serde_json::from_slice(bytes)?;
        self.change(|state| {
            for (user, generation) in delta.generations {
                let g = state.generations.entry(user).or_insert(0);
                *g = (*g).max(generation);
            }
            for (sid, until) in delta.revoked {
                let u = state.revoked.entry(sid).or_insert(0);
                *u = (*u).max(until);
            }
        });
        Ok(())
    }

    /// A receiver that changes on every revocation.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            f(&mut state);
            self.file.as_ref().map(|_| serde_json::to_vec(&*state))
        };
        if let (Some(file), Some(Ok(bytes))) = (&self.file, bytes) {
            if let Err(e) = crate::atomic_file::replace(file, &bytes) {
                tracing::error!("sessions file {} not written: {e} (revocations made now are forgotten on restart)", file.display());
            }
        }
        self.epoch.send_modify(|epoch| *epoch += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_converge_on_each_others_changes_in_any_order() {
        let (a, b) = (Sessions::in_memory(), Sessions::in_memory());
        let deltas = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&deltas);
        a.set_announce(Box::new(move |d| sink.lock().unwrap().push(d)));
        a.revoke(7, 100, 0);
        a.revoke_all("alice", 0);
        a.revoke_all("alice", 0);
        let deltas = deltas.lock().unwrap().clone();
        assert_eq!(deltas.len(), 3);
        // Applied out of order and twice: the same end state.
        for d in deltas.iter().rev().chain(deltas.iter()) {
            b.merge(d).expect("a delta");
        }
        let alice = a.generation("alice");
        assert!(b.stands("alice", alice, 1) && !b.stands("alice", alice - 1, 1), "a's generation");
        assert!(!b.stands("bob", 0, 7), "session 7 revoked");
        assert!(b.stands("bob", 0, 8));
        // A node starting later takes the whole state.
        let c = Sessions::in_memory();
        c.merge(&a.export()).expect("a state");
        assert_eq!(c.generation("alice"), alice);
        assert!(b.merge(b"not json").is_err());
    }

    #[test]
    fn revocations_survive_a_restart_and_are_announced() {
        let dir = std::env::temp_dir().join(format!("tickgate-sessions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sessions = Sessions::persisted(dir.clone()).expect("fresh");
        let watch = sessions.watch();
        assert!(sessions.stands("alice", 0, 7));
        sessions.revoke(7, 100, 0);
        assert!(watch.has_changed().expect("sender alive"));
        assert!(!sessions.stands("alice", 0, 7));
        assert!(sessions.stands("alice", 0, 8));
        sessions.revoke_all("alice", 0);
        assert!(!sessions.stands("alice", 0, 8), "old generation");
        assert!(sessions.stands("alice", 1, 8));
        assert!(sessions.stands("bob", 0, 9), "other users untouched");
        let restarted = Sessions::persisted(dir.clone()).expect("reads back");
        assert!(!restarted.stands("alice", 1, 7));
        assert_eq!(restarted.generation("alice"), 1);
        // Two nodes ending alice's sessions a moment apart pick different generations.
        restarted.revoke_all("alice", 1_000);
        assert_eq!(restarted.generation("alice"), 1_000, "at least the time in ms");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
