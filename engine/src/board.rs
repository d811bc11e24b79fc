//! Balances and positions published by the engine thread for lock-free reads.
//!
//! One row per account: a sequence stamp, `(total, held)` per asset and the net position
//! per instrument, all atomics. The engine thread rewrites the rows of accounts whose
//! balances changed in a batch, before it publishes the batch's events, so anyone who has
//! seen an execution report reads balances that include it. Readers never block the engine and never see a torn row: a seqlock
//! (odd stamp while writing; retry when the stamp moved), in safe atomics only.

use std::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};

use crate::accounts::Balance;
use crate::types::{AccountId, Amount, Qty};

/// One account as published: balances per asset, net position per instrument (indexed by
/// instrument id; instruments of other shards stay zero).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishedAccount {
    /// Per asset.
    pub balances: Vec<Balance>,
    /// Per instrument.
    pub positions: Vec<Qty>,
}

/// Every account's published balances and positions on one shard.
#[derive(Debug)]
pub(crate) struct BalanceBoard {
    assets: usize,
    instruments: usize,
    stamps: Vec<AtomicU64>,
    cells: Vec<AtomicI64>,
}

impl BalanceBoard {
    /// All zero, for `accounts` accounts of `assets` assets and `instruments` instruments.
    pub(crate) fn new(accounts: u32, assets: usize, instruments: usize) -> Self {
        let n = accounts as usize;
        BalanceBoard {
            assets,
            instruments,
            stamps: (0..n).map(|_| AtomicU64::new(0)).collect(),
            cells: (0..n * Self::width(assets, instruments)).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    fn width(assets: usize, instruments: usize) -> usize {
        assets * 2 + instruments
    }

    /// Publishes `account`'s row (engine thread only: one writer).
    pub(crate) fn write(&self, account: AccountId, row: &[Balance], positions: &[Qty]) {
        let a = account.0 as usize;
        let Some(stamp) = self.stamps.get(a) else { return };
        let s = stamp.load(Ordering::Relaxed);
        stamp.store(s + 1, Ordering::Relaxed);
        // The odd stamp is visible before any cell changes.
        fence(Ordering::Release);
        let base = a * Self::width(self.assets, self.instruments);
        for (i, b) in row.iter().take(self.assets).enumerate() {
            self.cells[base + 2 * i].store(b.total.0, Ordering::Relaxed);
            self.cells[base + 2 * i + 1].store(b.held.0, Ordering::Relaxed);
        }
        let base = base + 2 * self.assets;
        for (i, q) in positions.iter().take(self.instruments).enumerate() {
            self.cells[base + i].store(q.0, Ordering::Relaxed);
        }
        stamp.store(s + 2, Ordering::Release);
    }

    /// `account` as of the last published batch; `None` for an unknown account.
    pub(crate) fn read(&self, account: AccountId) -> Option<PublishedAccount> {
        let a = account.0 as usize;
        let stamp = self.stamps.get(a)?;
        let base = a * Self::width(self.assets, self.instruments);
        let mut out = PublishedAccount {
            balances: Vec::with_capacity(self.assets),
            positions: Vec::with_capacity(self.instruments),
        };
        loop {
            let before = stamp.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            out.balances.clear();
            out.positions.clear();
            for i in 0..self.assets {
                let total = self.cells[base + 2 * i].load(Ordering::Relaxed);
                let held = self.cells[base + 2 * i + 1].load(Ordering::Relaxed);
                out.balances.push(Balance { total: Amount(total), held: Amount(held) });
            }
            let positions = base + 2 * self.assets;
            for i in 0..self.instruments {
                out.positions.push(Qty(self.cells[positions + i].load(Ordering::Relaxed)));
            }
            // The cell loads happen before the second stamp load.
            fence(Ordering::Acquire);
            if stamp.load(Ordering::Relaxed) == before {
                return Some(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn readers_never_see_a_torn_row() {
        let board = Arc::new(BalanceBoard::new(4, 3, 2));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (board, stop) = (Arc::clone(&board), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) || reads < 1000 {
                    let row = board.read(AccountId(2)).expect("known account");
                    // The writer keeps every cell of a row equal to one value.
                    let v = row.balances[0].total.0;
                    assert!(
                        row.balances.iter().all(|b| b.total.0 == v && b.held.0 == -v),
                        "{row:?}"
                    );
                    assert!(row.positions.iter().all(|q| q.0 == 2 * v), "{row:?}");
                    reads += 1;
                }
                reads
            })
        };
        for v in 0..200_000i64 {
            let row = [Balance { total: Amount(v), held: Amount(-v) }; 3];
            board.write(AccountId(2), &row, &[Qty(2 * v); 2]);
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().expect("reader") >= 1000);
        let last = board.read(AccountId(2)).unwrap();
        assert_eq!(last.balances[1].total.0, 199_999);
        assert_eq!(last.positions, vec![Qty(399_998); 2]);
        assert_eq!(
            board.read(AccountId(1)).unwrap(),
            PublishedAccount { balances: vec![Balance::default(); 3], positions: vec![Qty(0); 2] }
        );
        assert!(board.read(AccountId(4)).is_none());
    }
}
