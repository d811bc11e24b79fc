//! One instrument's price alerts, kept sorted by threshold so that a new price costs
//! O(log n + fired): alerts that do not fire are never looked at.

use std::collections::BTreeMap;

use tickgate_engine::{AccountId, InstrumentId};

/// When a price alert fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The price is at or above the threshold.
    Above,
    /// The price is at or below the threshold.
    Below,
    /// The price moves from one side of the threshold to the other (or onto it).
    Crosses,
}

impl Condition {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Above => "above",
            Condition::Below => "below",
            Condition::Crosses => "crosses",
        }
    }

    /// Inverse of [`Condition::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "above" => Some(Condition::Above),
            "below" => Some(Condition::Below),
            "crosses" => Some(Condition::Crosses),
            _ => None,
        }
    }
}

/// A price alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceAlert {
    /// Id (unique in the process).
    pub id: u64,
    /// Owner.
    pub account: AccountId,
    /// Market.
    pub instrument: InstrumentId,
    /// Condition.
    pub condition: Condition,
    /// Threshold (raw fixed-point price).
    pub price: i64,
    /// Fires again each time the condition becomes true again (otherwise: once, then gone).
    pub repeat: bool,
}

/// One fired alert: the alert and the price that fired it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fired {
    /// The alert (as it was when it fired).
    pub alert: PriceAlert,
    /// The last price that fired it.
    pub last: i64,
}

/// One instrument's price alerts.
///
/// `above` alerts that are armed wait in `above` (keyed by threshold): a price `p` fires
/// every key `<= p`. A repeating one then waits in `above_fired` until the price drops
/// below its threshold again (every key `> p` re-arms). `below` is the mirror image.
/// `crosses` alerts fire when a move from `a` to `b` passes their threshold: keys in
/// `(a, b]` going up, `[b, a)` going down. Each step is a range query on a sorted map.
#[derive(Debug, Default)]
pub struct AlertBook {
    pub(super) last: Option<i64>,
    above: BTreeMap<(i64, u64), PriceAlert>,
    above_fired: BTreeMap<(i64, u64), PriceAlert>,
    below: BTreeMap<(i64, u64), PriceAlert>,
    below_fired: BTreeMap<(i64, u64), PriceAlert>,
    crosses: BTreeMap<(i64, u64), PriceAlert>,
}

impl AlertBook {
    /// Arms an alert. An `above` or `below` alert whose condition already holds at the
    /// last price fires at once (returned): a one-shot one is then not kept, a repeating
    /// one waits to re-arm.
    pub fn insert(&mut self, alert: PriceAlert) -> Option<Fired> {
        let key = (alert.price, alert.id);
        let holds = |last: i64| match alert.condition {
            Condition::Above => last >= alert.price,
            Condition::Below => last <= alert.price,
            Condition::Crosses => false,
        };
        if let Some(last) = self.last.filter(|&l| holds(l)) {
            if alert.repeat {
                match alert.condition {
                    Condition::Above => self.above_fired.insert(key, alert),
                    _ => self.below_fired.insert(key, alert),
                };
            }
            return Some(Fired { alert, last });
        }
        match alert.condition {
            Condition::Above => self.above.insert(key, alert),
            Condition::Below => self.below.insert(key, alert),
            Condition::Crosses => self.crosses.insert(key, alert),
        };
        None
    }

    /// Removes an alert; whether it was there.
    pub fn remove(&mut self, alert: &PriceAlert) -> bool {
        let key = (alert.price, alert.id);
        [
            &mut self.above,
            &mut self.above_fired,
            &mut self.below,
            &mut self.below_fired,
            &mut self.crosses,
        ]
        .into_iter()
        .any(|m| m.remove(&key).is_some())
    }

    /// Number of alerts (armed or waiting to re-arm).
    pub fn len(&self) -> usize {
        self.above.len()
            + self.above_fired.len()
            + self.below.len()
            + self.below_fired.len()
            + self.crosses.len()
    }

    /// Whether there are no alerts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last price seen.
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// A new last price: appends every alert it fires to `out`. One-shot alerts that fire
    /// are removed (the caller forgets them too).
    pub fn on_price(&mut self, price: i64, out: &mut Vec<Fired>) {
        let previous = self.last.replace(price);
        if previous == Some(price) {
            return;
        }
        // Re-arm repeating alerts whose condition stopped holding.
        move_range(&mut self.above_fired, &mut self.above, (price + 1, 0).., |_| true);
        move_range(&mut self.below_fired, &mut self.below, ..(price, 0), |_| true);
        // Fire.
        let fired_above: Vec<_> = self.above.range(..=(price, u64::MAX)).map(|(k, _)| *k).collect();
        for key in fired_above {
            if let Some(alert) = self.above.remove(&key) {
                out.push(Fired { alert, last: price });
                if alert.repeat {
                    self.above_fired.insert(key, alert);
                }
            }
        }
        let fired_below: Vec<_> = self.below.range((price, 0)..).map(|(k, _)| *k).collect();
        for key in fired_below {
            if let Some(alert) = self.below.remove(&key) {
                out.push(Fired { alert, last: price });
                if alert.repeat {
                    self.below_fired.insert(key, alert);
                }
            }
        }
        if let Some(previous) = previous {
            let crossed: Vec<_> = if price > previous {
                self.crosses.range((previous + 1, 0)..=(price, u64::MAX)).map(|(k, _)| *k).collect()
            } else {
                self.crosses.range((price, 0)..(previous, 0)).map(|(k, _)| *k).collect()
            };
            for key in crossed {
                let Some(alert) = self.crosses.get(&key).copied() else { continue };
                out.push(Fired { alert, last: price });
                if !alert.repeat {
                    self.crosses.remove(&key);
                }
            }
        }
    }
}

fn move_range<R: std::ops::RangeBounds<(i64, u64)>>(
    from: &mut BTreeMap<(i64, u64), PriceAlert>,
    to: &mut BTreeMap<(i64, u64), PriceAlert>,
    range: R,
    keep: impl Fn(&PriceAlert) -> bool,
) {
    let keys: Vec<_> = from.range(range).map(|(k, _)| *k).collect();
    for key in keys {
        if let Some(alert) = from.remove(&key) {
            if keep(&alert) {
                to.insert(key, alert);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: u64, condition: Condition, price: i64, repeat: bool) -> PriceAlert {
        PriceAlert {
            id,
            account: AccountId(1),
            instrument: InstrumentId(0),
            condition,
            price,
            repeat,
        }
    }

    fn fire(book: &mut AlertBook, price: i64) -> Vec<u64> {
        let mut out = Vec::new();
        book.on_price(price, &mut out);
        out.iter().map(|f| f.alert.id).collect()
    }

    #[test]
    fn above_and_below_fire_once_or_rearm() {
        let mut b = AlertBook::default();
        assert!(b.insert(alert(1, Condition::Above, 100, false)).is_none());
        assert!(b.insert(alert(2, Condition::Above, 105, true)).is_none());
        assert!(b.insert(alert(3, Condition::Below, 90, true)).is_none());
        assert_eq!(fire(&mut b, 95), Vec::<u64>::new());
        assert_eq!(fire(&mut b, 100), vec![1]);
        assert_eq!(fire(&mut b, 110), vec![2]);
        assert_eq!(fire(&mut b, 120), Vec::<u64>::new(), "repeating waits to re-arm");
        assert_eq!(fire(&mut b, 80), vec![3]);
        assert_eq!(fire(&mut b, 106), vec![2], "re-armed below its threshold, fires again");
        assert_eq!(fire(&mut b, 89), vec![3]);
        assert_eq!(b.len(), 2, "the one-shot alert is gone");
    }

    #[test]
    fn an_alert_already_true_fires_when_added() {
        let mut b = AlertBook::default();
        assert_eq!(fire(&mut b, 105), Vec::<u64>::new());
        let now = b.insert(alert(1, Condition::Above, 100, false)).expect("already above");
        assert_eq!((now.alert.id, now.last), (1, 105));
        assert!(b.is_empty(), "a one-shot alert that fired is not kept");
        assert!(b.insert(alert(2, Condition::Below, 110, true)).is_some());
        assert_eq!(fire(&mut b, 104), Vec::<u64>::new(), "waits to re-arm");
        assert_eq!(fire(&mut b, 111), Vec::<u64>::new());
        assert_eq!(fire(&mut b, 109), vec![2]);
        assert!(b.insert(alert(3, Condition::Above, 200, false)).is_none());
        assert!(b.insert(alert(4, Condition::Crosses, 109, false)).is_none());
    }

    #[test]
    fn crosses_fires_on_moves_through_the_threshold() {
        let mut b = AlertBook::default();
        assert!(b.insert(alert(1, Condition::Crosses, 100, true)).is_none());
        assert!(b.insert(alert(2, Condition::Crosses, 200, false)).is_none());
        assert_eq!(fire(&mut b, 50), Vec::<u64>::new(), "no previous price: nothing crossed");
        assert_eq!(fire(&mut b, 99), Vec::<u64>::new());
        assert_eq!(fire(&mut b, 100), vec![1], "touching counts");
        assert_eq!(fire(&mut b, 250), vec![2]);
        assert_eq!(fire(&mut b, 150), Vec::<u64>::new(), "one-shot is gone");
        assert_eq!(fire(&mut b, 99), vec![1]);
        assert!(b.remove(&alert(1, Condition::Crosses, 100, true)));
        assert_eq!(fire(&mut b, 300), Vec::<u64>::new());
        assert!(b.is_empty());
    }
}
