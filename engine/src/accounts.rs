//! Accounts and risk: balances per asset with holds for open orders, positions per
//! instrument, and the private report sequence per account.
//!
//! Invariants (checked by [`Ledger::check_invariants`] and the property tests):
//! `0 <= held <= total` for every balance, and money only enters or leaves through
//! transfers, so the sum of every asset over all accounts changes by nothing else.

use crate::binary::{ByteReader, ByteWriter, Fnv64};
use crate::state_error::StateError;
use crate::types::{AccountId, Amount, AssetId, InstrumentId, Qty, Seq};

/// One account's balance of one asset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Everything the account owns.
    pub total: Amount,
    /// The part reserved for open orders.
    pub held: Amount,
}

impl Balance {
    /// What new orders and withdrawals may use.
    #[inline]
    pub fn available(&self) -> Amount {
        Amount(self.total.0 - self.held.0)
    }
}

/// The account could not fund a hold or debit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("insufficient available balance")]
pub struct InsufficientFunds;

/// Every account's balances, positions and report sequence, in dense tables allocated at
/// start-up (`accounts_max` x assets, `accounts_max` x instruments).
#[derive(Clone, Debug)]
pub struct Ledger {
    assets: usize,
    instruments: usize,
    balances: Vec<Balance>,
    positions: Vec<Qty>,
    exec_seq: Vec<Seq>,
    /// Accounts whose balances changed since [`Ledger::take_changed`], and their flags.
    changed: Vec<u32>,
    changed_flag: Vec<bool>,
}

impl Ledger {
    /// Zero balances for `accounts` accounts.
    pub fn new(accounts: u32, assets: usize, instruments: usize) -> Self {
        let n = accounts as usize;
        Ledger {
            assets,
            instruments,
            balances: vec![Balance::default(); n * assets],
            positions: vec![Qty::ZERO; n * instruments],
            exec_seq: vec![Seq(0); n],
            changed: Vec::new(),
            changed_flag: vec![false; n],
        }
    }

    /// Number of accounts.
    pub fn accounts(&self) -> u32 {
        self.exec_seq.len() as u32
    }

    /// Whether `account` exists.
    #[inline]
    pub fn contains(&self, account: AccountId) -> bool {
        (account.0 as usize) < self.exec_seq.len()
    }

    #[inline]
    fn slot(&self, account: AccountId, asset: AssetId) -> usize {
        account.0 as usize * self.assets + usize::from(asset.0)
    }

    /// Balance of `asset` held by `account`.
    #[inline]
    pub fn balance(&self, account: AccountId, asset: AssetId) -> Balance {
        self.balances[self.slot(account, asset)]
    }

    #[inline]
    fn balance_mut(&mut self, account: AccountId, asset: AssetId) -> &mut Balance {
        let a = account.0 as usize;
        if !self.changed_flag[a] {
            self.changed_flag[a] = true;
            self.changed.push(account.0);
        }
        let slot = self.slot(account, asset);
        &mut self.balances[slot]
    }

    /// Calls `f` with each account whose balances changed since the last call (a fill
    /// changes balances, so every position change is among them), with its balances per
    /// asset and positions per instrument; then forgets the changes.
    pub fn take_changed(&mut self, mut f: impl FnMut(AccountId, &[Balance], &[Qty])) {
        for &a in &self.changed {
            f(AccountId(a), self.row(a as usize), self.positions_of(a as usize));
            self.changed_flag[a as usize] = false;
        }
        self.changed.clear();
    }

    /// Calls `f` with every account's balances and positions (to publish a recovered
    /// state).
    pub fn for_each(&self, mut f: impl FnMut(AccountId, &[Balance], &[Qty])) {
        for a in 0..self.exec_seq.len() {
            f(AccountId(a as u32), self.row(a), self.positions_of(a));
        }
    }

    fn row(&self, a: usize) -> &[Balance] {
        &self.balances[a * self.assets..(a + 1) * self.assets]
    }

    fn positions_of(&self, a: usize) -> &[Qty] {
        &self.positions[a * self.instruments..(a + 1) * self.instruments]
    }

    /// Number of instruments positions are kept for.
    pub fn instruments(&self) -> usize {
        self.instruments
    }

    /// Net position (base quantity bought minus sold) of `account` in `instrument`.
    #[inline]
    pub fn position(&self, account: AccountId, instrument: InstrumentId) -> Qty {
        self.positions[account.0 as usize * self.instruments + instrument.0 as usize]
    }

    /// Reserves `amount` for an order.
    #[inline]
    pub fn hold(
        &mut self,
        account: AccountId,
        asset: AssetId,
        amount: Amount,
    ) -> Result<(), InsufficientFunds> {
        let b = self.balance_mut(account, asset);
        if amount.0 < 0 || b.available().0 < amount.0 {
            return Err(InsufficientFunds);
        }
        b.held.0 += amount.0;
        Ok(())
    }

    /// Whether `account`'s balance of `asset` satisfies `0 <= held <= total` (the ledger's
    /// invariant, for the engine's run-time assertions on the balances a command touched).
    #[inline]
    pub(crate) fn holds_within_total(&self, account: AccountId, asset: AssetId) -> bool {
        let b = self.balance(account, asset);
        b.held.0 >= 0 && b.held.0 <= b.total.0
    }

    /// Releases part of a hold.
    #[inline]
    pub fn release(&mut self, account: AccountId, asset: AssetId, amount: Amount) {
        let b = self.balance_mut(account, asset);
        debug_assert!(amount.0 >= 0 && amount.0 <= b.held.0, "release within hold");
        b.held.0 -= amount.0;
    }

    /// Applies a transfer: credit when positive, debit of available funds when negative.
    pub fn transfer(
        &mut self,
        account: AccountId,
        asset: AssetId,
        amount: Amount,
    ) -> Result<(), InsufficientFunds> {
        let b = self.balance_mut(account, asset);
        let total = b.total.0.checked_add(amount.0).ok_or(InsufficientFunds)?;
        if amount.0 < 0 && b.available().0 < -amount.0 {
            return Err(InsufficientFunds);
        }
        b.total.0 = total;
        Ok(())
    }

    /// Moves `amount` of `asset` from one account's total to another's (a settlement leg).
    #[inline]
    pub fn settle_leg(&mut self, from: AccountId, to: AccountId, asset: AssetId, amount: Amount) {
        self.balance_mut(from, asset).total.0 -= amount.0;
        self.balance_mut(to, asset).total.0 += amount.0;
    }

    /// Adds `qty` (signed) to a position.
    #[inline]
    pub fn add_position(&mut self, account: AccountId, instrument: InstrumentId, qty: Qty) {
        let slot = account.0 as usize * self.instruments + instrument.0 as usize;
        self.positions[slot].0 += qty.0;
    }

    /// Last sequence on `account`'s private channel (`None`: no such account).
    pub fn exec_seq(&self, account: AccountId) -> Option<Seq> {
        self.exec_seq.get(account.0 as usize).copied()
    }

    /// Next sequence on `account`'s private channel.
    #[inline]
    pub fn next_exec_seq(&mut self, account: AccountId) -> Seq {
        let seq = &mut self.exec_seq[account.0 as usize];
        *seq = seq.next();
        *seq
    }

    /// Sum of `asset` over all accounts, in `i128` so it cannot overflow.
    pub fn asset_total(&self, asset: AssetId) -> i128 {
        self.balances
            .iter()
            .skip(usize::from(asset.0))
            .step_by(self.assets)
            .map(|b| i128::from(b.total.0))
            .sum()
    }

    /// Checks `0 <= held <= total` everywhere; for tests.
    pub fn check_invariants(&self) {
        for (i, b) in self.balances.iter().enumerate() {
            assert!(b.held.0 >= 0, "negative hold at balance {i}: {b:?}");
            assert!(b.held.0 <= b.total.0, "hold above total at balance {i}: {b:?}");
        }
    }

    /// Appends sizes, balances, positions and report sequences (for snapshots).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut w = ByteWriter::new(out);
        w.put_u32(self.accounts());
        for b in &self.balances {
            w.put_i64(b.total.0);
            w.put_i64(b.held.0);
        }
        for p in &self.positions {
            w.put_i64(p.0);
        }
        for s in &self.exec_seq {
            w.put_u64(s.0);
        }
    }

    /// Reads what [`Ledger::encode_into`] wrote into this ledger, which must have the same
    /// table sizes; balances must satisfy `0 <= held <= total`.
    pub(crate) fn decode_from(&mut self, r: &mut ByteReader<'_>) -> Result<(), StateError> {
        let accounts = r.u32()?;
        if accounts != self.accounts() {
            return Err(StateError::at(
                r,
                format!("snapshot has {accounts} accounts, this configuration {}", self.accounts()),
            ));
        }
        for b in &mut self.balances {
            let (total, held) = (r.i64()?, r.i64()?);
            if held < 0 || held > total {
                return Err(StateError::at(r, "balance with a hold outside 0..=total"));
            }
            *b = Balance { total: Amount(total), held: Amount(held) };
        }
        for p in &mut self.positions {
            *p = Qty(r.i64()?);
        }
        for s in &mut self.exec_seq {
            *s = Seq(r.u64()?);
        }
        Ok(())
    }

    /// Folds every balance, position and sequence into `hash` (FNV-1a), for state digests.
    pub fn digest_into(&self, hash: &mut u64) {
        let mut fnv = Fnv64::resume(*hash);
        for b in &self.balances {
            fnv.write_u64(b.total.0 as u64);
            fnv.write_u64(b.held.0 as u64);
        }
        for p in &self.positions {
            fnv.write_u64(p.0 as u64);
        }
        for s in &self.exec_seq {
            fnv.write_u64(s.0);
        }
        *hash = fnv.value();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: AccountId = AccountId(1);
    const B: AccountId = AccountId(2);
    const USD: AssetId = AssetId(0);

    #[test]
    fn holds_limit_availability() {
        let mut l = Ledger::new(4, 2, 1);
        l.transfer(A, USD, Amount(100)).unwrap();
        l.hold(A, USD, Amount(60)).unwrap();
        assert_eq!(l.hold(A, USD, Amount(41)), Err(InsufficientFunds));
        assert_eq!(l.transfer(A, USD, Amount(-41)), Err(InsufficientFunds));
        l.release(A, USD, Amount(60));
        l.transfer(A, USD, Amount(-100)).unwrap();
        assert_eq!(l.balance(A, USD), Balance::default());
        l.check_invariants();
    }

    #[test]
    fn settlement_conserves_totals() {
        let mut l = Ledger::new(4, 2, 1);
        l.transfer(A, USD, Amount(100)).unwrap();
        l.settle_leg(A, B, USD, Amount(30));
        assert_eq!(l.balance(B, USD).total, Amount(30));
        assert_eq!(l.asset_total(USD), 100);
        assert_eq!(l.next_exec_seq(A), Seq(1));
        assert_eq!(l.next_exec_seq(A), Seq(2));
        assert!(l.contains(AccountId(3)) && !l.contains(AccountId(4)));
    }
}
