//! Deterministic synthetic order flow.
//!
//! Per instrument a fair price follows a mean-reverting random walk around the
//! instrument's reference price. Market makers post limit (and some post-only) orders a
//! few ticks away from fair, clustered near the top; takers send IOC and market orders that
//! cross the spread; old quotes are canceled (oldest first, some at random) and some are
//! replaced. No feedback from the engine is needed, so a seed fully determines the flow;
//! a cancel that races a fill is simply rejected, as it would be on a real venue.

use std::collections::VecDeque;
use std::ops::Range;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tickgate_engine::{
    AccountId, Amount, Asset, AssetId, CancelOrder, CommandKind, Instrument, InstrumentId,
    NewOrder, OrderId, OrderType, Price, Qty, ReplaceOrder, ReplaceQty, Side, StpMode, Transfer,
};

/// Where order ids come from.
pub trait OrderIds {
    /// A fresh unique id.
    fn next_order_id(&mut self) -> OrderId;
}

/// Ids counting up from a start value: for benches, tests and replays.
#[derive(Clone, Copy, Debug)]
pub struct SequentialIds(pub u64);

impl OrderIds for SequentialIds {
    fn next_order_id(&mut self) -> OrderId {
        self.0 += 1;
        OrderId(self.0)
    }
}

/// How the synthetic market behaves.
#[derive(Clone, Debug)]
pub struct FlowConfig {
    /// Seed: same seed, same flow.
    pub seed: u64,
    /// Accounts that quote.
    pub maker_accounts: Range<u32>,
    /// Accounts that take.
    pub taker_accounts: Range<u32>,
    /// Quotes each instrument keeps open before cancels take over.
    pub live_orders_per_instrument: usize,
    /// How far from fair, in ticks, makers quote at most.
    pub quote_depth_ticks: i64,
    /// Largest order, in lots.
    pub max_lots: i64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            seed: 42,
            maker_accounts: 1000..1008,
            taker_accounts: 1008..1016,
            live_orders_per_instrument: 2_000,
            quote_depth_ticks: 50,
            max_lots: 20,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Quote {
    id: OrderId,
    account: AccountId,
    price: i64,
    lots: i64,
}

#[derive(Debug)]
struct MarketFlow {
    id: InstrumentId,
    tick: i64,
    lot: i64,
    fair: i64,
    reference: i64,
    price_min: i64,
    price_max: i64,
    live: VecDeque<Quote>,
}

impl MarketFlow {
    /// `ticks` away from fair towards the aggressive side (buy: up, sell: down), clamped to
    /// the instrument's band; negative `ticks` go passive.
    fn price_from_fair(&self, side: Side, ticks: i64) -> i64 {
        let step = ticks * self.tick;
        let price = match side {
            Side::Buy => self.fair + step,
            Side::Sell => self.fair - step,
        };
        price.clamp(self.price_min, self.price_max)
    }
}

/// The generator. Call [`SyntheticFlow::next_command`] for each command.
#[derive(Debug)]
pub struct SyntheticFlow {
    rng: Xoshiro256PlusPlus,
    markets: Vec<MarketFlow>,
    config: FlowConfig,
}

impl SyntheticFlow {
    /// A generator for `instruments` (all of them, or those one shard owns).
    pub fn new(config: FlowConfig, instruments: &[Instrument]) -> Self {
        assert!(!config.maker_accounts.is_empty() && !config.taker_accounts.is_empty());
        let markets = instruments
            .iter()
            .map(|i| {
                let s = &i.spec;
                let tick = s.tick_size.0;
                let reference = (s.reference_price.0 / tick).max(1) * tick;
                MarketFlow {
                    id: i.id,
                    tick,
                    lot: s.lot_size.0,
                    fair: reference,
                    reference,
                    price_min: s.price_min.0,
                    price_max: s.price_max.0,
                    live: VecDeque::with_capacity(config.live_orders_per_instrument + 1),
                }
            })
            .collect();
        SyntheticFlow { rng: Xoshiro256PlusPlus::seed_from_u64(config.seed), markets, config }
    }

    /// Deposits that fund every flow account generously in every asset (10^9 whole units).
    pub fn funding(&self, assets: &[Asset]) -> Vec<Transfer> {
        let accounts = self.config.maker_accounts.clone().chain(self.config.taker_accounts.clone());
        accounts
            .flat_map(|account| {
                assets.iter().enumerate().map(move |(i, asset)| Transfer {
                    account: AccountId(account),
                    asset: AssetId(i as u16),
                    amount: Amount(10i64.pow(u32::from(asset.precision)) * 1_000_000_000),
                    request_id: 0,
                })
            })
            .collect()
    }

    /// Every account the flow trades from.
    pub fn accounts(&self) -> impl Iterator<Item = u32> {
        self.config.maker_accounts.clone().chain(self.config.taker_accounts.clone())
    }

    /// The current fair price of the `n`th market (for displays and tests).
    pub fn fair(&self, n: usize) -> Option<Price> {
        self.markets.get(n).map(|m| Price(m.fair))
    }

    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift: unbiased enough for a synthetic market, and fast.
        ((u128::from(self.rng.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn pick(&mut self, range: &Range<u32>) -> AccountId {
        AccountId(range.start + self.below(u64::from(range.end - range.start)) as u32)
    }

    /// The next command.
    pub fn next_command(&mut self, ids: &mut impl OrderIds) -> CommandKind {
        let m = self.below(self.markets.len() as u64) as usize;
        // Drift: a mean-reverting walk, one tick at a time.
        if self.below(8) == 0 {
            let market = &self.markets[m];
            let pull = (market.reference - market.fair) * 64 / market.reference.max(1);
            let up = (self.below(128) as i64) < 64 + pull.clamp(-48, 48);
            let market = &mut self.markets[m];
            market.fair += if up { market.tick } else { -market.tick };
            market.fair = market.fair.clamp(market.price_min + 100 * market.tick, market.price_max);
        }
        let over = self.markets[m].live.len() >= self.config.live_orders_per_instrument;
        let roll = if over { 50 } else { self.below(100) };
        match roll {
            0..=49 => self.quote(m, ids),
            50..=79 => self.cancel(m).unwrap_or_else(|| self.quote(m, ids)),
            80..=84 => self.replace(m).unwrap_or_else(|| self.quote(m, ids)),
            85..=96 => self.take(m, ids, OrderType::Ioc),
            _ => self.take(m, ids, OrderType::Market),
        }
    }

    fn quote(&mut self, m: usize, ids: &mut impl OrderIds) -> CommandKind {
        let side = if self.below(2) == 0 { Side::Buy } else { Side::Sell };
        // The smaller of two uniforms: quotes cluster near the top of the book.
        let depth = self.config.quote_depth_ticks.max(1) as u64;
        let offset = 1 + self.below(depth).min(self.below(depth)) as i64;
        let lots = 1 + self.below(self.config.max_lots.max(1) as u64) as i64;
        let post_only = self.below(5) == 0;
        let account = self.pick(&self.config.maker_accounts.clone());
        let id = ids.next_order_id();
        let market = &mut self.markets[m];
        // Makers stay on their own side of fair.
        let price = market.price_from_fair(side, -offset);
        market.live.push_back(Quote { id, account, price, lots });
        CommandKind::New(NewOrder {
            key: None,
            order_id: id,
            client_order_id: id.0,
            account,
            instrument: market.id,
            side,
            order_type: if post_only { OrderType::PostOnly } else { OrderType::Limit },
            price: Price(price),
            qty: Qty(lots * market.lot),
            stp: StpMode::CancelResting,
        })
    }

    fn cancel(&mut self, m: usize) -> Option<CommandKind> {
        let oldest = self.below(2) == 0;
        let len = self.markets[m].live.len() as u64;
        if len == 0 {
            return None;
        }
        let at = if oldest { 0 } else { self.below(len) as usize };
        let market = &mut self.markets[m];
        let quote = market.live.swap_remove_front(at)?;
        Some(CommandKind::Cancel(CancelOrder {
            order_id: quote.id,
            account: quote.account,
            instrument: market.id,
        }))
    }

    fn replace(&mut self, m: usize) -> Option<CommandKind> {
        let len = self.markets[m].live.len() as u64;
        if len == 0 {
            return None;
        }
        let at = self.below(len) as usize;
        let quote = &mut self.markets[m].live[at];
        // Mostly size down at the same price (keeps priority); sometimes size up (loses
        // it). A replace of an order that has filled meanwhile is rejected, as on a venue.
        let lots = if quote.lots > 1 { quote.lots - 1 } else { quote.lots + 1 };
        quote.lots = lots;
        let quote = *quote;
        let market = &self.markets[m];
        Some(CommandKind::Replace(ReplaceOrder {
            order_id: quote.id,
            account: quote.account,
            instrument: market.id,
            price: Price(quote.price),
            qty: ReplaceQty::Open(Qty(lots * market.lot)),
        }))
    }

    fn take(&mut self, m: usize, ids: &mut impl OrderIds, order_type: OrderType) -> CommandKind {
        let side = if self.below(2) == 0 { Side::Buy } else { Side::Sell };
        let reach = self.below(4) as i64;
        let lots = 1 + self.below(self.config.max_lots.max(1) as u64 / 2 + 1) as i64;
        let account = self.pick(&self.config.taker_accounts.clone());
        let id = ids.next_order_id();
        let market = &self.markets[m];
        // Takers reach across fair.
        let price = market.price_from_fair(side, reach);
        CommandKind::New(NewOrder {
            key: None,
            order_id: id,
            client_order_id: id.0,
            account,
            instrument: market.id,
            side,
            order_type,
            price: if order_type == OrderType::Market { Price(0) } else { Price(price) },
            qty: Qty(lots * market.lot),
            stp: StpMode::CancelResting,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::{
        default_markets, Command, Engine, EngineSpec, Event, EventDigest, ExecKind, UnixNanos,
    };

    fn engine() -> Engine {
        let spec = EngineSpec { accounts_max: 1016, ..EngineSpec::default() };
        Engine::new(&spec, |_| true).expect("default markets")
    }

    fn run(seed: u64, n: usize) -> (EventDigest, Engine, Vec<Event>) {
        let mut engine = engine();
        let mut flow =
            SyntheticFlow::new(FlowConfig { seed, ..FlowConfig::default() }, engine.instruments());
        let mut events = Vec::new();
        for (i, t) in flow.funding(engine.assets()).into_iter().enumerate() {
            engine.process(
                &Command { ts: UnixNanos(i as u64), kind: CommandKind::Transfer(t) },
                &mut events,
            );
        }
        let mut ids = SequentialIds(0);
        let mut digest = EventDigest::default();
        for i in 0..n {
            let kind = flow.next_command(&mut ids);
            engine.process(&Command { ts: UnixNanos(1_000_000 + i as u64), kind }, &mut events);
        }
        for e in &events {
            digest.add(e);
        }
        (digest, engine, events)
    }

    #[test]
    fn same_seed_same_market() {
        let (a, _, _) = run(7, 20_000);
        let (b, _, _) = run(7, 20_000);
        let (c, _, _) = run(8, 20_000);
        assert_eq!(a, b);
        assert_ne!(a.value(), c.value());
    }

    #[test]
    fn every_instrument_is_lively_and_books_stay_sane() {
        let (_, engine, events) = run(1, 100_000);
        engine.check_invariants();
        let (_, specs) = default_markets();
        for (i, spec) in specs.iter().enumerate() {
            let id = InstrumentId(i as u32);
            let trades = events
                .iter()
                .filter(|e| matches!(e, Event::Trade(t) if t.instrument == id))
                .count();
            assert!(trades > 100, "{} traded only {trades} times", spec.symbol);
            let book = engine.book(id).expect("owned");
            assert!(book.best(Side::Buy).is_some() && book.best(Side::Sell).is_some(), "two-sided");
            assert!(book.order_count() <= 2 * FlowConfig::default().live_orders_per_instrument);
        }
        let reports =
            events.iter().filter(|e| matches!(e, Event::Exec(_) | Event::Transfer(_))).count();
        let rejects = events
            .iter()
            .filter(|e| matches!(e, Event::Exec(r) if r.kind == ExecKind::Rejected))
            .count();
        assert!(rejects * 4 < reports, "mostly valid flow: {rejects} rejects of {reports} reports");
    }
}
