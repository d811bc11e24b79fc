//! The state digest (equal digests mean equal state: replay and recovery tests compare
//! them) and the full invariant check the tests run after every command.

use super::Engine;
use crate::binary::Fnv64;
use crate::types::{AccountId, AssetId, Side};

impl Engine {
    /// Digest of the whole state: balances, holds, positions, report sequences, channel
    /// sequences and every resting order in priority order. Equal digests mean equal state.
    pub fn state_digest(&self) -> u64 {
        let mut hash = Fnv64::OFFSET_BASIS;
        self.ledger.digest_into(&mut hash);
        let mut fnv = Fnv64::resume(hash);
        let mut fold = |v: u64| fnv.write_u64(v);
        for m in self.markets.iter().flatten() {
            fold(u64::from(m.instrument.id.0));
            fold(m.trades_seq.0);
            fold(m.book_seq.0);
            fold(m.bbo_seq.0);
            fold(u64::from(m.halted));
            for side in [Side::Buy, Side::Sell] {
                for o in m.book.orders(side) {
                    fold(o.id.0);
                    fold(u64::from(o.account.0));
                    fold(o.price.0 as u64);
                    fold(o.leaves.0 as u64);
                    fold(o.filled.0 as u64);
                }
            }
        }
        self.keys.digest_into(&mut fold);
        fnv.value()
    }

    /// Checks book and ledger invariants, and that holds equal what open orders need;
    /// for tests. Panics with a description on failure.
    pub fn check_invariants(&self) {
        self.ledger.check_invariants();
        let assets = self.assets.len();
        let accounts = self.ledger.accounts() as usize;
        let mut expected = vec![0i64; accounts * assets];
        for m in self.markets.iter().flatten() {
            m.book.check_invariants();
            for side in [Side::Buy, Side::Sell] {
                for o in m.book.orders(side) {
                    let (asset, amount) = match side {
                        Side::Buy => {
                            (m.instrument.spec.quote, m.instrument.notional(o.price, o.leaves))
                        }
                        Side::Sell => (m.instrument.spec.base, m.instrument.base_amount(o.leaves)),
                    };
                    let amount = amount.expect("validated amounts");
                    expected[o.account.0 as usize * assets + usize::from(asset.0)] += amount.0;
                }
            }
        }
        // Only meaningful when this engine owns every instrument (one shard).
        if self.markets.iter().all(Option::is_some) {
            for a in 0..accounts {
                for s in 0..assets {
                    let held = self.ledger.balance(AccountId(a as u32), AssetId(s as u16)).held;
                    assert_eq!(held.0, expected[a * assets + s], "hold of account {a} asset {s}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CommandKind, TradingStatus, Transfer};
    use crate::engine::EngineSpec;
    use crate::event::Event;
    use crate::types::{Amount, InstrumentId, UnixNanos};

    fn apply(e: &mut Engine, kind: CommandKind) {
        let mut out: Vec<Event> = Vec::new();
        e.process(&Command { ts: UnixNanos(1), kind }, &mut out);
    }

    #[test]
    fn digest_sees_balances_and_market_state_and_nothing_else() {
        let spec = EngineSpec { accounts_max: 2, ..EngineSpec::default() };
        let mut e = Engine::new(&spec, |_| true).expect("default spec is valid");
        let fresh = Engine::new(&spec, |_| true).expect("default spec is valid").state_digest();
        assert_eq!(e.state_digest(), fresh, "a function of the state only");
        let deposit =
            Transfer { account: AccountId(1), asset: AssetId(0), amount: Amount(5), request_id: 0 };
        apply(&mut e, CommandKind::Transfer(deposit));
        let funded = e.state_digest();
        assert_ne!(funded, fresh);
        let halt = TradingStatus { instrument: InstrumentId(1), halted: true };
        apply(&mut e, CommandKind::Status(halt));
        assert_ne!(e.state_digest(), funded, "trading status is state");
        // Engine-wide counters are not: two engines in the same state digest equal.
        let resume = TradingStatus { instrument: InstrumentId(1), halted: false };
        apply(&mut e, CommandKind::Status(resume));
        assert_eq!(e.state_digest(), funded);
        e.check_invariants();
    }
}
