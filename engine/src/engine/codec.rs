//! The engine state as bytes, for snapshots (see [`crate::snapshot`] for the file around
//! it): table sizes, counters, the ledger, per owned market its channel sequences, last
//! top of book, trading status and resting orders in priority order (so restoring
//! re-inserts them in the same queue positions), then the idempotency keys.

use super::{Engine, EngineCounters, EngineSpec, Market};
use crate::binary::{ByteReader, ByteWriter};
use crate::book::RestingOrder;
use crate::command::{OrderType, StpMode};
use crate::idempotency::KeyTable;
use crate::state_error::StateError;
use crate::types::{AccountId, InstrumentId, OrderId, Price, Qty, Seq, Side};

impl Engine {
    /// Appends the whole state (see [`crate::snapshot`] for the file around it): table
    /// sizes, counters, the ledger, and per owned market its channel sequences, last top
    /// of book and resting orders in priority order.
    pub fn encode_state(&self, out: &mut Vec<u8>) {
        let mut w = ByteWriter::new(out);
        w.put_u32(self.assets.len() as u32);
        w.put_u32(self.instruments.len() as u32);
        let c = &self.counters;
        for v in [c.commands, c.rejects, c.trades, c.events, self.max_order_id] {
            w.put_u64(v);
        }
        self.ledger.encode_into(out);
        let mut w = ByteWriter::new(out);
        let owned: Vec<&Market> = self.markets.iter().flatten().collect();
        w.put_u32(owned.len() as u32);
        for m in owned {
            encode_market(m, &mut w);
        }
        self.keys.encode_into(out);
    }

    /// An engine built from `spec` (owning what `owns` says) with the state that
    /// [`Engine::encode_state`] wrote. The tables must match `spec` exactly and every order
    /// must be valid for its book; otherwise the state is refused.
    /// `with_keys`: the state ends with the idempotency keys (snapshot version 3 on).
    pub fn restore_state(
        spec: &EngineSpec,
        owns: impl Fn(InstrumentId) -> bool,
        bytes: &[u8],
        with_keys: bool,
    ) -> Result<Engine, StateError> {
        let mut e = Engine::new(spec, owns)
            .map_err(|err| StateError { at: 0, what: format!("engine spec: {err}") })?;
        let mut r = ByteReader::new(bytes);
        e.decode_header(&mut r)?;
        e.ledger.decode_from(&mut r)?;
        let owned = r.u32()? as usize;
        if owned != e.markets.iter().flatten().count() {
            let what = format!("snapshot holds {owned} markets, this shard owns others");
            return Err(StateError::at(&r, what));
        }
        for _ in 0..owned {
            let id = r.u32()?;
            let Some(Some(m)) = e.markets.get_mut(id as usize) else {
                let what = format!("instrument {id} is not owned by this shard");
                return Err(StateError::at(&r, what));
            };
            decode_market(m, &mut r)?;
        }
        if with_keys {
            e.keys = KeyTable::decode_from(&mut r)?;
        }
        if !r.finished() {
            return Err(StateError::at(&r, "bytes after the last market"));
        }
        Ok(e)
    }

    /// Reads the table sizes (which must be this engine's), the counters and the largest
    /// order id.
    fn decode_header(&mut self, r: &mut ByteReader<'_>) -> Result<(), StateError> {
        let (assets, instruments) = (r.u32()? as usize, r.u32()? as usize);
        if assets != self.assets.len() || instruments != self.instruments.len() {
            return Err(StateError::at(
                r,
                format!(
                    "tables differ: snapshot has {assets} assets and {instruments} instruments, \
                     this configuration {} and {}",
                    self.assets.len(),
                    self.instruments.len()
                ),
            ));
        }
        self.counters = EngineCounters {
            commands: r.u64()?,
            rejects: r.u64()?,
            trades: r.u64()?,
            events: r.u64()?,
        };
        self.max_order_id = r.u64()?;
        Ok(())
    }
}

/// One owned market: id, channel sequences, last top, status, then its resting orders.
fn encode_market(m: &Market, w: &mut ByteWriter<'_>) {
    w.put_u32(m.instrument.id.0);
    for v in [m.trades_seq.0, m.book_seq.0, m.bbo_seq.0] {
        w.put_u64(v);
    }
    let (bp, bq, ap, aq) = m.top;
    for v in [bp.0, bq.0, ap.0, aq.0] {
        w.put_i64(v);
    }
    w.put_u8(u8::from(m.halted));
    w.put_u32(m.book.order_count() as u32);
    for side in [Side::Buy, Side::Sell] {
        for o in m.book.orders(side) {
            w.put_u64(o.id.0);
            w.put_u64(o.client_order_id);
            w.put_u32(o.account.0);
            for v in [o.price.0, o.leaves.0, o.filled.0] {
                w.put_i64(v);
            }
            w.put_bytes(&[o.side.as_u8(), o.order_type.as_u8(), o.stp.as_u8()]);
        }
    }
}

/// Inverse of [`encode_market`] after the id: fills the (fresh) market `m`.
fn decode_market(m: &mut Market, r: &mut ByteReader<'_>) -> Result<(), StateError> {
    m.trades_seq = Seq(r.u64()?);
    m.book_seq = Seq(r.u64()?);
    m.bbo_seq = Seq(r.u64()?);
    m.top = (Price(r.i64()?), Qty(r.i64()?), Price(r.i64()?), Qty(r.i64()?));
    m.halted = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(StateError::at(r, "trading status")),
    };
    let count = r.u32()?;
    for _ in 0..count {
        let order = decode_order(r)?;
        if m.book.contains(order.id) {
            let what = format!("order {} is not a valid resting order", order.id.0);
            return Err(StateError::at(r, what));
        }
        m.book.insert(order).map_err(|_| StateError::at(r, "book capacity exceeded"))?;
    }
    Ok(())
}

/// One resting order, checked to be one a book can hold.
fn decode_order(r: &mut ByteReader<'_>) -> Result<RestingOrder, StateError> {
    let id = OrderId(r.u64()?);
    let client_order_id = r.u64()?;
    let account = AccountId(r.u32()?);
    let (price, leaves, filled) = (Price(r.i64()?), Qty(r.i64()?), Qty(r.i64()?));
    let side = Side::from_u8(r.u8()?).ok_or_else(|| StateError::at(r, "side"))?;
    let order_type = OrderType::from_u8(r.u8()?).ok_or_else(|| StateError::at(r, "type"))?;
    let stp = StpMode::from_u8(r.u8()?).ok_or_else(|| StateError::at(r, "stp mode"))?;
    if leaves.0 <= 0 || filled.0 < 0 || price.0 <= 0 {
        return Err(StateError::at(r, format!("order {} is not a valid resting order", id.0)));
    }
    Ok(RestingOrder { id, client_order_id, account, price, leaves, filled, side, order_type, stp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CommandKind, NewOrder, Transfer};
    use crate::event::Event;
    use crate::idempotency::IdempotencyKey;
    use crate::types::{Amount, AssetId, UnixNanos};

    /// An engine with balances, resting orders on both sides, a trade and a keyed order.
    fn engine() -> (EngineSpec, Engine) {
        let spec = EngineSpec { accounts_max: 4, ..EngineSpec::default() };
        let mut e = Engine::new(&spec, |_| true).expect("default spec is valid");
        let mut out: Vec<Event> = Vec::new();
        let (tick, lot) = (spec.instruments[0].tick_size.0, spec.instruments[0].lot_size.0);
        let mut commands = Vec::new();
        for (account, asset) in [(1, 0), (1, 1), (2, 0), (2, 1)] {
            let t = Transfer {
                account: AccountId(account),
                asset: AssetId(asset),
                amount: Amount(1 << 50),
                request_id: 0,
            };
            commands.push(CommandKind::Transfer(t));
        }
        // A bid, an ask (keyed), and a sell that trades one lot against the bid.
        let orders =
            [(1, 1, Side::Buy, 99, 3), (2, 2, Side::Sell, 101, 3), (3, 2, Side::Sell, 99, 1)];
        for (i, account, side, price, lots) in orders {
            commands.push(CommandKind::New(NewOrder {
                key: (i == 2).then_some(IdempotencyKey(77)),
                order_id: OrderId(i),
                client_order_id: i,
                account: AccountId(account),
                instrument: InstrumentId(0),
                side,
                order_type: OrderType::Limit,
                price: Price(tick * price),
                qty: Qty(lot * lots),
                stp: StpMode::None,
            }));
        }
        for (ts, kind) in commands.into_iter().enumerate() {
            e.process(&Command { ts: UnixNanos(ts as u64 + 1), kind }, &mut out);
        }
        assert!(
            e.counters().trades > 0
                && e.book(InstrumentId(0)).is_some_and(|b| b.order_count() == 2)
        );
        (spec, e)
    }

    #[test]
    fn state_round_trips_to_the_same_digest_and_bytes() {
        let (spec, e) = engine();
        let mut bytes = Vec::new();
        e.encode_state(&mut bytes);
        let back = Engine::restore_state(&spec, |_| true, &bytes, true).expect("restores");
        assert_eq!(back.state_digest(), e.state_digest());
        assert_eq!(back.counters(), e.counters());
        let mut again = Vec::new();
        back.encode_state(&mut again);
        assert_eq!(again, bytes);
    }

    #[test]
    fn every_cut_or_extension_of_the_state_is_refused() {
        let (spec, e) = engine();
        let mut bytes = Vec::new();
        e.encode_state(&mut bytes);
        for cut in 0..bytes.len() {
            let err = Engine::restore_state(&spec, |_| true, &bytes[..cut], true)
                .expect_err("a cut state is not a state");
            assert!(err.at <= cut, "{err}");
        }
        bytes.push(0);
        let err = Engine::restore_state(&spec, |_| true, &bytes, true).expect_err("extra byte");
        assert_eq!(err.what, "bytes after the last market");
    }
}
