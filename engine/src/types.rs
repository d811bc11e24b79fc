//! Domain newtypes. Everything inside the engine is an integer: prices in ticks of the
//! instrument's price precision, quantities in units of its quantity precision, asset
//! amounts in the asset's minor units. Wire formats convert at the edge.

use std::fmt;

macro_rules! newtype {
    ($(#[$meta:meta])* $name:ident($inner:ty)) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

newtype!(
    /// A price as a raw fixed-point integer at the instrument's price precision
    /// (e.g. `6512345` is 65123.45 at precision 2).
    Price(i64)
);
newtype!(
    /// A quantity as a raw fixed-point integer at the instrument's quantity precision.
    Qty(i64)
);
newtype!(
    /// An amount of an asset in its minor units (e.g. micro-dollars at precision 6).
    Amount(i64)
);
newtype!(
    /// Engine-wide unique order id, allocated by the submitter before the command is queued.
    OrderId(u64)
);
newtype!(
    /// Dense account index (`0..accounts_max`).
    AccountId(u32)
);
newtype!(
    /// Dense instrument index into the engine's instrument table.
    InstrumentId(u32)
);
newtype!(
    /// Dense asset index into the engine's asset table.
    AssetId(u16)
);
newtype!(
    /// A gap-free per-channel sequence number; the first event of a channel has sequence 1.
    Seq(u64)
);
newtype!(
    /// Nanoseconds since the Unix epoch, assigned when a command is ingested.
    UnixNanos(u64)
);

impl InstrumentId {
    /// The shard that owns this instrument in an engine of `shards` shards (instrument `i`
    /// belongs to shard `i % shards`): the one rule, for the engine and whoever must know
    /// where an instrument's sequences count.
    pub fn shard(self, shards: usize) -> usize {
        self.0 as usize % shards.max(1)
    }
}

impl Qty {
    /// The zero quantity.
    pub const ZERO: Qty = Qty(0);
}

impl Seq {
    /// The sequence that follows this one.
    #[inline]
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

/// Side of an order or a book level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Side {
    /// Bid side: the order buys the base asset.
    Buy = 0,
    /// Ask side: the order sells the base asset.
    Sell = 1,
}

impl Side {
    /// The other side.
    #[inline]
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }

    /// Wire code (0 = buy, 1 = sell).
    #[inline]
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Inverse of [`Side::as_u8`].
    #[inline]
    pub fn from_u8(code: u8) -> Option<Side> {
        match code {
            0 => Some(Side::Buy),
            1 => Some(Side::Sell),
            _ => None,
        }
    }

    /// Lower-case name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// Formats a raw fixed-point integer with `precision` decimals, without floats.
pub fn format_fixed(raw: i64, precision: u8) -> String {
    Fixed(raw, precision).to_string()
}

/// A raw fixed-point integer and its number of decimals, displayed as a decimal string
/// (`Fixed(-1505, 2)` shows `-15.05`): for `write!` into a buffer without allocating,
/// on the JSON and REST paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fixed(pub i64, pub u8);

impl Fixed {
    /// Writes the digits into the end of `buf`; returns where they start.
    fn render(self, buf: &mut [u8; 48]) -> usize {
        let Fixed(raw, precision) = self;
        let mut abs = raw.unsigned_abs();
        let mut at = buf.len();
        // Decimals (at most 19 are meaningful for an i64; more are leading zeros, and
        // past 26 the buffer is full: no instrument comes near that).
        for _ in 0..usize::from(precision).min(26) {
            at -= 1;
            buf[at] = b'0' + (abs % 10) as u8;
            abs /= 10;
        }
        if precision > 0 {
            at -= 1;
            buf[at] = b'.';
        }
        loop {
            at -= 1;
            buf[at] = b'0' + (abs % 10) as u8;
            abs /= 10;
            if abs == 0 {
                break;
            }
        }
        if raw < 0 {
            at -= 1;
            buf[at] = b'-';
        }
        at
    }
}

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.1 > 26 {
            // Beyond the buffer: every digit of an i64 is behind the point (rare; slower).
            let sign = if self.0 < 0 { "-" } else { "" };
            f.write_str(sign)?;
            f.write_str("0.")?;
            for _ in 0..self.1 - 19 {
                f.write_str("0")?;
            }
            return write!(f, "{:019}", self.0.unsigned_abs());
        }
        let mut buf = [0u8; 48];
        let at = self.render(&mut buf);
        // Only ASCII digits, '.' and '-' were written.
        f.write_str(std::str::from_utf8(&buf[at..]).unwrap_or_default())
    }
}

/// Parses a decimal string into a raw fixed-point integer with exactly `precision`
/// decimals. More decimals than the precision, or an overflow, is an error.
pub fn parse_fixed(text: &str, precision: u8) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || frac_part.len() > usize::from(precision)
    {
        return None;
    }
    let mut value: i64 = 0;
    for b in int_part.bytes() {
        value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    for i in 0..usize::from(precision) {
        let digit = frac_part.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        value = value.checked_mul(10)?.checked_add(digit)?;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_round_trips() {
        assert_eq!(format_fixed(6512345, 2), "65123.45");
        assert_eq!(format_fixed(-5, 3), "-0.005");
        assert_eq!(format_fixed(42, 0), "42");
        // The same digits as the formatting machinery gives, at every precision.
        let reference = |raw: i64, precision: u8| {
            if precision == 0 {
                return raw.to_string();
            }
            let sign = if raw < 0 { "-" } else { "" };
            let abs = u128::from(raw.unsigned_abs());
            let width = usize::from(precision);
            if precision >= 20 {
                return format!("{sign}0.{abs:0width$}");
            }
            let scale = 10u128.pow(u32::from(precision));
            format!("{sign}{}.{:0width$}", abs / scale, abs % scale)
        };
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for precision in (0..=40u8).chain([255]) {
            for raw in [0, 1, -1, 9, -10, 6_512_345, i64::MAX, i64::MIN, i64::MIN + 1] {
                assert_eq!(format_fixed(raw, precision), reference(raw, precision));
            }
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let raw = (x as i64) >> (x % 60);
                assert_eq!(format_fixed(raw, precision), reference(raw, precision), "{raw}");
            }
        }
        assert_eq!(parse_fixed("65123.45", 2), Some(6512345));
        assert_eq!(parse_fixed("65123.4", 2), Some(6512340));
        assert_eq!(parse_fixed("1", 4), Some(10000));
        assert_eq!(parse_fixed("-0.005", 3), Some(-5));
        assert_eq!(parse_fixed(".5", 1), Some(5));
    }

    #[test]
    fn fixed_point_rejects_garbage() {
        assert_eq!(parse_fixed("1.234", 2), None);
        assert_eq!(parse_fixed("abc", 2), None);
        assert_eq!(parse_fixed("", 2), None);
        assert_eq!(parse_fixed(".", 2), None);
        assert_eq!(parse_fixed("1e5", 2), None);
        assert_eq!(parse_fixed("99999999999999999999", 0), None);
    }
}
