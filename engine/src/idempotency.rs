//! Idempotency keys: the engine's memory of which keyed request became which order.
//!
//! A client that retries a request (a timeout, a dropped connection, a restart of the
//! server) sends the same key again. The key travels inside the journaled [`NewOrder`]
//! command, so the table below is rebuilt exactly by replaying the journal, and it is part
//! of every snapshot: a retry after any restart finds the order its first attempt created,
//! including one that was in flight when the process died and did execute.
//!
//! Keys are scoped per account and bounded per account ([`KEYS_PER_ACCOUNT_MAX`] newest,
//! none older than [`KEY_RETENTION_NS`]), so one account can never evict another's keys.
//! Age is measured with command timestamps, never a clock, so replay decides the same.
//!
//! [`NewOrder`]: crate::command::NewOrder

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;

use crate::binary::{ByteReader, ByteWriter};
// The key type travels inside `NewOrder`, so it lives with the commands; it is re-exported
// here, where the table that remembers keys is.
pub use crate::command::IdempotencyKey;
use crate::command::{NewOrder, OrderType};
use crate::state_error::StateError;
use crate::types::{AccountId, OrderId, UnixNanos};

/// Keys one account keeps (per engine shard); the oldest is forgotten first.
pub const KEYS_PER_ACCOUNT_MAX: usize = 10_000;
/// How long a key is remembered: 24 hours of engine time.
pub const KEY_RETENTION_NS: u64 = 24 * 3600 * 1_000_000_000;
// `KeyTable::insert` evicts down to the bound before it adds: a bound of 0 would keep one.
const _: () = assert!(KEYS_PER_ACCOUNT_MAX > 0);

/// What a new order asks for, minus its id and owner: two requests with one key are "the
/// same request" exactly when their fingerprints are equal. A stable hash, like the key's.
pub fn fingerprint(o: &NewOrder) -> u64 {
    let price = if o.order_type == OrderType::Market { 0 } else { o.price.0 };
    let mut bytes = [0u8; 35];
    bytes[..4].copy_from_slice(&o.instrument.0.to_le_bytes());
    bytes[4] = o.side.as_u8();
    bytes[5] = o.order_type.as_u8();
    bytes[6] = o.stp.as_u8();
    bytes[7..15].copy_from_slice(&price.to_le_bytes());
    bytes[15..23].copy_from_slice(&o.qty.0.to_le_bytes());
    bytes[23..31].copy_from_slice(&o.client_order_id.to_le_bytes());
    bytes[31..35].copy_from_slice(&o.account.0.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// One remembered key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key.
    pub key: IdempotencyKey,
    /// The order its first request created (accepted or rejected).
    pub order_id: OrderId,
    /// [`fingerprint`] of that request.
    pub fingerprint: u64,
    /// Engine timestamp of that request.
    pub ts: UnixNanos,
}

impl KeyRecord {
    fn expired(&self, now: UnixNanos) -> bool {
        now.0.saturating_sub(self.ts.0) >= KEY_RETENTION_NS
    }
}

/// Every account's remembered keys (one engine shard's, or a gateway's copy of them).
#[derive(Debug)]
pub struct KeyTable {
    index: FxHashMap<(AccountId, IdempotencyKey), KeyRecord>,
    /// Per account, oldest first: the eviction order. `BTreeMap` so that encoding and the
    /// digest visit accounts in one order on every run.
    order: BTreeMap<AccountId, VecDeque<KeyRecord>>,
    /// Keys kept per account: [`KEYS_PER_ACCOUNT_MAX`] for a shard's table.
    per_account: usize,
}

impl Default for KeyTable {
    fn default() -> Self {
        KeyTable::keeping(KEYS_PER_ACCOUNT_MAX)
    }
}

impl KeyTable {
    /// A table keeping `per_account` keys per account (a copy of several shards' tables
    /// keeps what they all keep: [`KEYS_PER_ACCOUNT_MAX`] times their number).
    pub fn keeping(per_account: usize) -> Self {
        KeyTable {
            index: FxHashMap::default(),
            order: BTreeMap::new(),
            per_account: per_account.max(1),
        }
    }

    /// The live record of `key` for `account` at engine time `now`.
    pub fn find(
        &self,
        account: AccountId,
        key: IdempotencyKey,
        now: UnixNanos,
    ) -> Option<KeyRecord> {
        self.index.get(&(account, key)).copied().filter(|r| !r.expired(now))
    }

    /// Remembers `record` for `account`, forgetting that account's expired keys and, past
    /// the bound, its oldest.
    pub fn insert(&mut self, account: AccountId, record: KeyRecord) {
        let queue = self.order.entry(account).or_default();
        while let Some(oldest) = queue.front().copied() {
            if !(oldest.expired(record.ts) || queue.len() >= self.per_account) {
                break;
            }
            queue.pop_front();
            // An expired key may have been used again since: that newer record stays.
            if self.index.get(&(account, oldest.key)) == Some(&oldest) {
                self.index.remove(&(account, oldest.key));
            }
        }
        queue.push_back(record);
        self.index.insert((account, record.key), record);
        debug_assert!(queue.len() <= self.per_account);
    }

    /// Forgets `key` of `account` if it belongs to `order` (whose command never reached an
    /// engine).
    pub fn remove(&mut self, account: AccountId, key: IdempotencyKey, order: OrderId) {
        if self.index.get(&(account, key)).is_some_and(|r| r.order_id == order) {
            self.index.remove(&(account, key));
            if let Some(queue) = self.order.get_mut(&account) {
                queue.retain(|r| !(r.key == key && r.order_id == order));
            }
        }
    }

    /// Every live record, accounts in id order, each oldest first.
    pub fn records(&self) -> impl Iterator<Item = (AccountId, KeyRecord)> + '_ {
        self.order.iter().flat_map(|(a, q)| {
            q.iter().filter(|r| self.index.get(&(*a, r.key)) == Some(*r)).map(|r| (*a, *r))
        })
    }

    /// Appends the table: `u32` count, then per record account, key, order id,
    /// fingerprint, timestamp.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let mut w = ByteWriter::new(out);
        w.put_u32(self.records().count() as u32);
        for (account, r) in self.records() {
            w.put_u32(account.0);
            w.put_u128(r.key.0);
            w.put_u64(r.order_id.0);
            w.put_u64(r.fingerprint);
            w.put_u64(r.ts.0);
        }
    }

    /// Inverse of [`KeyTable::encode_into`].
    pub(crate) fn decode_from(r: &mut ByteReader<'_>) -> Result<KeyTable, StateError> {
        let count = r.u32()?;
        let mut table = KeyTable::default();
        for _ in 0..count {
            let account = AccountId(r.u32()?);
            let key = IdempotencyKey(r.u128()?);
            let record = KeyRecord {
                key,
                order_id: OrderId(r.u64()?),
                fingerprint: r.u64()?,
                ts: UnixNanos(r.u64()?),
            };
            table.insert(account, record);
        }
        Ok(table)
    }

    /// Folds the table into a state digest.
    pub(crate) fn digest_into(&self, fold: &mut impl FnMut(u64)) {
        for (account, r) in self.records() {
            fold(u64::from(account.0));
            fold(r.key.0 as u64);
            fold((r.key.0 >> 64) as u64);
            fold(r.order_id.0);
            fold(r.fingerprint);
            fold(r.ts.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: u128, order: u64, ts: u64) -> KeyRecord {
        KeyRecord {
            key: IdempotencyKey(key),
            order_id: OrderId(order),
            fingerprint: 7,
            ts: UnixNanos(ts),
        }
    }

    #[test]
    fn keys_are_per_account_bounded_and_aged() {
        let mut t = KeyTable::default();
        let (a, b) = (AccountId(1), AccountId(2));
        t.insert(b, record(1, 100, 0));
        for n in 0..KEYS_PER_ACCOUNT_MAX as u64 + 5 {
            t.insert(a, record(u128::from(n), n, 1));
        }
        // `a` lost its five oldest; `b`'s key with the same text is untouched.
        assert_eq!(t.find(a, IdempotencyKey(4), UnixNanos(1)), None);
        assert_eq!(
            t.find(a, IdempotencyKey(5), UnixNanos(1)).map(|r| r.order_id),
            Some(OrderId(5))
        );
        assert_eq!(
            t.find(b, IdempotencyKey(1), UnixNanos(1)).map(|r| r.order_id),
            Some(OrderId(100))
        );
        // Age: a key is gone after the retention, and a reuse after that is a new record
        // that evicting the old one does not remove.
        let later = UnixNanos(KEY_RETENTION_NS);
        assert_eq!(t.find(b, IdempotencyKey(1), later), None);
        t.insert(b, record(1, 101, KEY_RETENTION_NS));
        assert_eq!(t.find(b, IdempotencyKey(1), later).map(|r| r.order_id), Some(OrderId(101)));
        assert_eq!(t.order[&b].len(), 1, "the expired record was dropped on insert");
    }

    #[test]
    fn encoding_round_trips_in_order() {
        let mut t = KeyTable::default();
        t.insert(AccountId(3), record(u128::MAX - 1, 1, 10));
        t.insert(AccountId(1), record(5, 2, 11));
        t.insert(AccountId(3), record(6, 3, 12));
        let mut bytes = Vec::new();
        t.encode_into(&mut bytes);
        let back = KeyTable::decode_from(&mut ByteReader::new(&bytes)).expect("decodes");
        assert_eq!(back.records().collect::<Vec<_>>(), t.records().collect::<Vec<_>>());
        assert!(KeyTable::decode_from(&mut ByteReader::new(&bytes[..bytes.len() - 1])).is_err());
    }

    #[test]
    fn key_hash_is_stable() {
        // Stored in journals and snapshots: a change here would forget every key.
        assert_eq!(IdempotencyKey::from_text("k1"), IdempotencyKey::from_text("k1"));
        assert_ne!(IdempotencyKey::from_text("k1"), IdempotencyKey::from_text("k2"));
        assert_eq!(
            IdempotencyKey::from_text("order-1").0,
            0x5a8a_4096_13f9_0ad0_af63_a0f8_35ca_6746
        );
    }
}
