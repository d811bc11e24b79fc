//! The gateway's copy of the engine's idempotency keys: answers a retried request without
//! a trip through the engine, and holds a key while its first request is in flight.
//!
//! The engine is the authority (the key travels in the journaled command, see
//! `tickgate_engine::idempotency`): this copy is loaded from the engine's tables at start
//! and follows every keyed order placed through this process (on an engine node: every
//! keyed order of every gateway, see `cluster::primary`), with the same age and the bound
//! of all the shards' tables together. Should the two ever disagree, the engine refuses
//! the second order as a `duplicate_request` and the gateway asks the engine which order
//! the key belongs to.

use std::sync::Mutex;

use tickgate_engine::idempotency::{KeyTable, KEYS_PER_ACCOUNT_MAX};
use tickgate_engine::{AccountId, IdempotencyKey, KeyRecord, OrderId, UnixNanos};

/// Longest accepted idempotency key text.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// What a keyed request is, given the keys known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A new key: it now belongs to the order being placed.
    New,
    /// A retry of the request that created this order (at this engine time).
    Retry(OrderId, UnixNanos),
    /// The key was used for a different request.
    Reused,
}

/// Every user's keys, bounded per user.
#[derive(Debug, Default)]
pub struct KeyCache {
    table: Mutex<KeyTable>,
}

impl KeyCache {
    /// A copy of the tables of `shards` engine shards: it keeps what they keep together
    /// (each shard keeps its own accounts' newest keys), so loading them all at start
    /// pushes none out.
    pub fn for_shards(shards: usize) -> Self {
        let per_account = KEYS_PER_ACCOUNT_MAX.saturating_mul(shards.max(1));
        KeyCache { table: Mutex::new(KeyTable::keeping(per_account)) }
    }

    /// Loads keys the engine remembers (at start, before requests are served).
    pub fn load(&self, records: impl IntoIterator<Item = (AccountId, KeyRecord)>) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        for (account, record) in records {
            table.insert(account, record);
        }
    }

    /// Claims `key` of `account` for `order` (about to be placed with `fingerprint`), or
    /// says which earlier request holds it.
    pub fn claim(
        &self,
        account: AccountId,
        key: IdempotencyKey,
        fingerprint: u64,
        order: OrderId,
        now: UnixNanos,
    ) -> Claim {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match table.find(account, key, now) {
            Some(r) if r.fingerprint == fingerprint => Claim::Retry(r.order_id, r.ts),
            Some(_) => Claim::Reused,
            None => {
                table.insert(account, KeyRecord { key, order_id: order, fingerprint, ts: now });
                Claim::New
            }
        }
    }

    /// Gives `key` up again: the order it was claimed for never reached the engine.
    pub fn release(&self, account: AccountId, key: IdempotencyKey, order: OrderId) {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).remove(account, key, order);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::idempotency::KEY_RETENTION_NS;

    #[test]
    fn claims_retries_reuses_and_releases() {
        let cache = KeyCache::default();
        let (alice, bob) = (AccountId(1), AccountId(2));
        let key = IdempotencyKey::from_text("k1");
        let now = UnixNanos(10);
        assert_eq!(cache.claim(alice, key, 7, OrderId(1), now), Claim::New);
        assert_eq!(cache.claim(alice, key, 7, OrderId(2), now), Claim::Retry(OrderId(1), now));
        assert_eq!(cache.claim(alice, key, 8, OrderId(3), now), Claim::Reused);
        assert_eq!(cache.claim(bob, key, 8, OrderId(4), now), Claim::New, "per user");
        cache.release(alice, key, OrderId(1));
        assert_eq!(cache.claim(alice, key, 8, OrderId(5), now), Claim::New);
        let later = UnixNanos(10 + KEY_RETENTION_NS);
        assert_eq!(cache.claim(alice, key, 9, OrderId(6), later), Claim::New, "aged out");
    }

    #[test]
    fn one_user_cannot_evict_another() {
        let cache = KeyCache::default();
        let key = IdempotencyKey::from_text("bob's");
        let claim = |account: u32, key: IdempotencyKey, order: u64, ts: u64| {
            cache.claim(AccountId(account), key, 1, OrderId(order), UnixNanos(ts))
        };
        claim(2, key, 1, 0);
        for n in 0..KEYS_PER_ACCOUNT_MAX as u64 + 10 {
            claim(1, IdempotencyKey(u128::from(n)), 10 + n, 1);
        }
        assert_eq!(claim(2, key, 99, 2), Claim::Retry(OrderId(1), UnixNanos(0)));
        // Alice's oldest went first.
        assert_eq!(claim(1, IdempotencyKey(0), 98, 2), Claim::New);
        assert_eq!(claim(1, IdempotencyKey(500), 97, 2), Claim::Retry(OrderId(510), UnixNanos(1)));
    }

    /// Two shards each keep an account's 10,000 newest keys: the copy of both keeps all
    /// 20,000 (loaded shard after shard, the first shard's stay).
    #[test]
    fn a_copy_of_several_shards_keeps_what_they_all_keep() {
        let cache = KeyCache::for_shards(2);
        let alice = AccountId(1);
        let record = |n: u64| KeyRecord {
            key: IdempotencyKey(u128::from(n)),
            order_id: OrderId(n),
            fingerprint: 7,
            ts: UnixNanos(1),
        };
        let all = KEYS_PER_ACCOUNT_MAX as u64 * 2;
        cache.load((0..all).map(|n| (alice, record(n))));
        for n in [0, 1, all - 1] {
            let claim = cache.claim(alice, record(n).key, 7, OrderId(u64::MAX), UnixNanos(2));
            assert_eq!(claim, Claim::Retry(OrderId(n), UnixNanos(1)), "key {n}");
        }
        // One more pushes the oldest out, as each shard's own table would.
        cache.load([(alice, record(all))]);
        let first = cache.claim(alice, record(0).key, 7, OrderId(u64::MAX), UnixNanos(2));
        assert_eq!(first, Claim::New);
    }
}
