//! Assets and instruments: the static tables the engine is built with.
//!
//! Fixed-point scales are chosen so that every amount the engine computes is exact:
//! `notional = price * qty * 10^(quote_precision - price_precision - qty_precision)` in
//! quote minor units, `base = qty * 10^(base_precision - qty_precision)` in base minor
//! units. An instrument whose precisions do not allow that is refused at start-up, so no
//! fill can ever round money into or out of existence.

use crate::types::{Amount, AssetId, InstrumentId, Price, Qty};

/// An asset accounts hold balances in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asset {
    /// Ticker, e.g. `USD`.
    pub symbol: String,
    /// Decimals of the minor unit (USD at 6 counts micro-dollars).
    pub precision: u8,
}

/// What an instrument is, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstrumentSpec {
    /// Symbol, e.g. `BTC-USD`.
    pub symbol: String,
    /// The asset bought and sold.
    pub base: AssetId,
    /// The asset prices are quoted in.
    pub quote: AssetId,
    /// Decimals of a raw price.
    pub price_precision: u8,
    /// Decimals of a raw quantity.
    pub qty_precision: u8,
    /// Smallest price increment, raw.
    pub tick_size: Price,
    /// Smallest quantity increment, raw.
    pub lot_size: Qty,
    /// Lowest accepted limit price, raw (inclusive).
    pub price_min: Price,
    /// Highest accepted limit price, raw (inclusive).
    pub price_max: Price,
    /// Largest accepted order quantity, raw.
    pub qty_max: Qty,
    /// A plausible starting price, raw: where synthetic flow starts and UIs centre.
    pub reference_price: Price,
}

/// Why an instrument or asset table was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InstrumentError {
    /// The instrument names an asset that is not in the asset table.
    #[error("instrument {symbol}: unknown asset id {asset}")]
    UnknownAsset {
        /// Offending instrument.
        symbol: String,
        /// The missing asset id.
        asset: u16,
    },
    /// Precisions would make notional or base amounts inexact.
    #[error("instrument {symbol}: asset precision too small for price/qty precision")]
    Precision {
        /// Offending instrument.
        symbol: String,
    },
    /// Tick, lot, band or max quantity is not positive or not on its grid.
    #[error("instrument {symbol}: {what}")]
    Grid {
        /// Offending instrument.
        symbol: String,
        /// What is wrong.
        what: &'static str,
    },
    /// Two instruments share a symbol.
    #[error("duplicate instrument symbol {0}")]
    Duplicate(String),
}

/// A validated instrument with its derived scales.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instrument {
    /// Dense id, its index in the instrument table.
    pub id: InstrumentId,
    /// The configuration it was built from.
    pub spec: InstrumentSpec,
    quote_scale: i64,
    base_scale: i64,
}

impl Instrument {
    /// Validates `spec` against the asset table.
    pub fn new(
        id: InstrumentId,
        spec: InstrumentSpec,
        assets: &[Asset],
    ) -> Result<Self, InstrumentError> {
        let asset = |id: AssetId| {
            assets.get(usize::from(id.0)).ok_or_else(|| InstrumentError::UnknownAsset {
                symbol: spec.symbol.clone(),
                asset: id.0,
            })
        };
        let base = asset(spec.base)?;
        let quote = asset(spec.quote)?;
        let precision_err = || InstrumentError::Precision { symbol: spec.symbol.clone() };
        let quote_exp = quote
            .precision
            .checked_sub(spec.price_precision)
            .and_then(|p| p.checked_sub(spec.qty_precision))
            .ok_or_else(precision_err)?;
        let base_exp = base.precision.checked_sub(spec.qty_precision).ok_or_else(precision_err)?;
        let grid = |what| InstrumentError::Grid { symbol: spec.symbol.clone(), what };
        if spec.tick_size.0 <= 0 || spec.lot_size.0 <= 0 || spec.qty_max.0 <= 0 {
            return Err(grid("tick, lot and max quantity must be positive"));
        }
        if spec.price_min.0 <= 0 || spec.price_max.0 < spec.price_min.0 {
            return Err(grid("price band must be positive and ordered"));
        }
        if spec.price_min.0 % spec.tick_size.0 != 0 || spec.price_max.0 % spec.tick_size.0 != 0 {
            return Err(grid("price band must be on the tick grid"));
        }
        let quote_scale = 10i64.checked_pow(u32::from(quote_exp)).ok_or_else(precision_err)?;
        let base_scale = 10i64.checked_pow(u32::from(base_exp)).ok_or_else(precision_err)?;
        Ok(Instrument { id, spec, quote_scale, base_scale })
    }

    /// Quote amount of `qty` at `price`, exact; `None` on overflow.
    #[inline]
    pub fn notional(&self, price: Price, qty: Qty) -> Option<Amount> {
        let value = i128::from(price.0) * i128::from(qty.0) * i128::from(self.quote_scale);
        i64::try_from(value).ok().map(Amount)
    }

    /// Base amount of `qty`, exact; `None` on overflow.
    #[inline]
    pub fn base_amount(&self, qty: Qty) -> Option<Amount> {
        qty.0.checked_mul(self.base_scale).map(Amount)
    }

    /// The largest lot-aligned quantity whose notional at `price` fits in `budget`.
    #[inline]
    pub fn affordable_qty(&self, price: Price, budget: Amount) -> Qty {
        let unit =
            i128::from(price.0) * i128::from(self.quote_scale) * i128::from(self.spec.lot_size.0);
        if unit <= 0 || budget.0 <= 0 {
            return Qty::ZERO;
        }
        let lots = i128::from(budget.0) / unit;
        let qty = lots.saturating_mul(i128::from(self.spec.lot_size.0));
        Qty(i64::try_from(qty).unwrap_or(i64::MAX))
    }
}

/// Builds the default asset table and instrument set: eight USD-quoted spot markets.
pub fn default_markets() -> (Vec<Asset>, Vec<InstrumentSpec>) {
    let names = [
        ("USD", 6),
        ("BTC", 8),
        ("ETH", 8),
        ("SOL", 6),
        ("XRP", 6),
        ("DOGE", 6),
        ("ADA", 6),
        ("AVAX", 6),
        ("LINK", 6),
    ];
    let assets = names
        .iter()
        .map(|(symbol, precision)| Asset { symbol: (*symbol).to_string(), precision: *precision })
        .collect();
    // (base asset, price precision, qty precision, reference price as raw)
    let table: [(u16, u8, u8, i64); 8] = [
        (1, 2, 4, 6_500_000), // BTC-USD 65000.00, 0.0001 BTC lots
        (2, 2, 3, 350_000),   // ETH-USD 3500.00, 0.001 ETH lots
        (3, 2, 2, 15_000),    // SOL-USD 150.00, 0.01 SOL lots
        (4, 4, 1, 6_000),     // XRP-USD 0.6000, 0.1 XRP lots
        (5, 5, 0, 15_000),    // DOGE-USD 0.15000, 1 DOGE lots
        (6, 4, 1, 4_500),     // ADA-USD 0.4500, 0.1 ADA lots
        (7, 2, 2, 3_500),     // AVAX-USD 35.00, 0.01 AVAX lots
        (8, 3, 2, 15_000),    // LINK-USD 15.000, 0.01 LINK lots
    ];
    let instruments = table
        .iter()
        .map(|&(base, price_precision, qty_precision, reference)| InstrumentSpec {
            symbol: format!("{}-USD", names[usize::from(base)].0),
            base: AssetId(base),
            quote: AssetId(0),
            price_precision,
            qty_precision,
            tick_size: Price(1),
            lot_size: Qty(1),
            price_min: Price(1),
            price_max: Price(reference * 100),
            qty_max: Qty(10i64.pow(u32::from(qty_precision)) * 1_000_000),
            reference_price: Price(reference),
        })
        .collect();
    (assets, instruments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn btc() -> Instrument {
        let (assets, specs) = default_markets();
        Instrument::new(InstrumentId(0), specs[0].clone(), &assets).expect("default is valid")
    }

    #[test]
    fn notional_is_exact() {
        let i = btc();
        // 65000.00 USD * 0.0001 BTC = 6.5 USD = 6_500_000 micro-dollars
        assert_eq!(i.notional(Price(6_500_000), Qty(1)), Some(Amount(6_500_000)));
        // 0.0001 BTC = 10_000 satoshi
        assert_eq!(i.base_amount(Qty(1)), Some(Amount(10_000)));
        assert_eq!(i.notional(Price(i64::MAX), Qty(i64::MAX)), None);
    }

    #[test]
    fn affordable_qty_rounds_down_to_lots() {
        let i = btc();
        assert_eq!(i.affordable_qty(Price(6_500_000), Amount(6_499_999)), Qty(0));
        assert_eq!(i.affordable_qty(Price(6_500_000), Amount(13_000_001)), Qty(2));
    }

    #[test]
    fn rejects_inexact_precision() {
        let (assets, mut specs) = default_markets();
        specs[0].qty_precision = 6; // 2 + 6 > USD's 6
        let err = Instrument::new(InstrumentId(0), specs[0].clone(), &assets).unwrap_err();
        assert!(matches!(err, InstrumentError::Precision { .. }));
    }

    #[test]
    fn default_set_is_valid() {
        let (assets, specs) = default_markets();
        assert_eq!(specs.len(), 8);
        for (i, spec) in specs.into_iter().enumerate() {
            Instrument::new(InstrumentId(i as u32), spec, &assets).expect("valid");
        }
    }
}
