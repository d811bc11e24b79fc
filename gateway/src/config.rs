//! Configuration: raw flags and environment (clap) in, validated [`Config`] out.

use clap::Parser;

/// Command-line flags; every one can also come from the environment.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "tickgate",
    version,
    about = "A market-data trading backend in one process"
)]
pub struct Flags {
    /// Engine shard threads (instruments are spread over them).
    #[arg(long, env = "TICKGATE_SHARDS", default_value_t = 1)]
    pub shards: usize,
    /// Synthetic order flow in commands per second (0 = as fast as the engine takes them).
    #[arg(long, env = "TICKGATE_FEED_RATE", default_value_t = 20_000)]
    pub feed_rate: u64,
    /// Turn the synthetic feed off.
    #[arg(long, env = "TICKGATE_NO_FEED")]
    pub no_feed: bool,
    /// Seed of the synthetic flow: the same seed gives the same market.
    #[arg(long, env = "TICKGATE_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Instrument whose best bid/ask the per-second summary shows.
    #[arg(long, env = "TICKGATE_SUMMARY_SYMBOL", default_value = "BTC-USD")]
    pub summary_symbol: String,
    /// Commands each engine queue holds before submitters are told to back off.
    #[arg(long, env = "TICKGATE_QUEUE_CAPACITY", default_value_t = 65_536)]
    pub queue_capacity: usize,
    /// Events each engine ring keeps for readers.
    #[arg(long, env = "TICKGATE_RING_CAPACITY", default_value_t = 1 << 20)]
    pub ring_capacity: usize,
}

/// Why flags were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Engine shard threads, 1..=64.
    pub shards: usize,
    /// Synthetic flow rate, commands/s; `None` when the feed is off.
    pub feed_rate: Option<u64>,
    /// Synthetic flow seed.
    pub seed: u64,
    /// Instrument shown in the summary line.
    pub summary_symbol: String,
    /// Engine queue capacity per shard.
    pub queue_capacity: usize,
    /// Engine ring capacity per shard.
    pub ring_capacity: usize,
}

impl TryFrom<Flags> for Config {
    type Error = ConfigError;

    fn try_from(f: Flags) -> Result<Self, ConfigError> {
        if !(1..=64).contains(&f.shards) {
            return Err(ConfigError::Invalid(format!(
                "--shards must be 1..=64, got {}",
                f.shards
            )));
        }
        if f.queue_capacity == 0 || f.ring_capacity < 1024 {
            return Err(ConfigError::Invalid(
                "--queue-capacity must be > 0 and --ring-capacity >= 1024".into(),
            ));
        }
        Ok(Config {
            shards: f.shards,
            feed_rate: (!f.no_feed).then_some(f.feed_rate),
            seed: f.seed,
            summary_symbol: f.summary_symbol,
            queue_capacity: f.queue_capacity,
            ring_capacity: f.ring_capacity,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::try_from(Flags::parse_from(["tickgate"])).expect("defaults are valid")
    }
}
