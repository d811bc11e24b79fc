//! A writer's rest between rounds, and when to take one.
//!
//! A writer runs flat out while connections have something new: each round ends and the
//! next starts at once. When the machine has a core to spare, that is the lowest latency.
//! When it has none (the writer shares its cores with the engine, other processes, or, in
//! a load test, the clients it writes to), the others wait for the writer's time slice,
//! and the writer's next round finds the clients' sockets barely read: more, smaller
//! writes than they can keep up with. A rest of a quarter of the round hands the cores
//! back: at 10,000 subscribers on two shared cores it took the probe's p99 from 217 to
//! 298 ms to 180 to 190 ms (docs/BENCHMARKS.md).
//!
//! [`RestPolicy::Auto`] (the default) rests only while the machine is **contended**: the
//! kernel's CPU pressure (`/proc/pressure/cpu`, the share of time at least one runnable
//! task waited for a core) over the last [`WINDOW`] was at least [`CONTENDED`]. A server
//! with cores to spare never rests; where the kernel has no pressure accounting, neither.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// The rest a writer takes after a round that wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestPolicy {
    /// Always this percentage of the round (0: never rest).
    Fixed(u32),
    /// [`AUTO_PCT`] of the round while the machine is contended, none otherwise.
    Auto,
}

impl std::str::FromStr for RestPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<RestPolicy, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(RestPolicy::Auto);
        }
        match s.parse::<u32>() {
            Ok(pct) if pct <= 400 => Ok(RestPolicy::Fixed(pct)),
            _ => Err(format!("{s:?} is neither `auto` nor a percentage 0..=400")),
        }
    }
}

impl std::fmt::Display for RestPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestPolicy::Fixed(pct) => write!(f, "{pct}"),
            RestPolicy::Auto => f.write_str("auto"),
        }
    }
}

/// The rest of [`RestPolicy::Auto`] on a contended machine, in percent of the round: of
/// 25 and 50 %, 25 gave the lower p99 at 10,000 subscribers (docs/BENCHMARKS.md).
pub const AUTO_PCT: u32 = 25;

/// The CPU pressure from which the machine counts as contended: a share of the time with
/// some task waiting for a core. Two shared cores measured 33 to 61 % with 1,000 or 10,000
/// subscribers and their probe, 7 to 8 % with 10 (docs/BENCHMARKS.md).
pub const CONTENDED: f64 = 0.20;

/// How long each pressure reading spans: long enough for a 100 ms round, short enough to
/// follow the load within a few rounds; each writer reads the file at most ten times a
/// second.
pub const WINDOW: Duration = Duration::from_millis(100);

/// The kernel's CPU pressure: the whole machine's (in a container too: what its
/// neighbours wait for counts, a CPU quota's throttling does not).
const PRESSURE: &str = "/proc/pressure/cpu";

/// The rest after a round that took `took`, under `policy`, with `contended` the latest
/// reading of [`Contention`]. `None`: no rest.
pub fn rest(took: Duration, policy: RestPolicy, contended: bool) -> Option<Duration> {
    let pct = match policy {
        RestPolicy::Fixed(pct) => pct,
        RestPolicy::Auto if contended => AUTO_PCT,
        RestPolicy::Auto => 0,
    };
    (pct > 0).then(|| took * pct / 100)
}

/// The `some` line's cumulative stall time in microseconds, from the text of
/// `/proc/pressure/cpu` (`some avg10=0.00 avg60=0.00 avg300=0.00 total=12345`).
fn some_total_us(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_ascii_whitespace().find_map(|field| field.strip_prefix("total=")?.parse().ok())
}

/// Whether the machine is contended, from the kernel's CPU pressure, read at most once a
/// [`WINDOW`].
#[derive(Debug)]
pub struct Contention {
    /// `/proc/pressure/cpu`, open (`None`: no pressure accounting; never contended).
    file: Option<File>,
    /// The reading that starts the current window: when, and the stall total then.
    since: Option<(Instant, u64)>,
    contended: bool,
    buf: Vec<u8>,
}

impl Contention {
    /// What `policy` needs: the kernel's pressure file for [`RestPolicy::Auto`] (absent
    /// before Linux 4.20 or with `psi=0`: the machine then never counts as contended, and
    /// the log says so), nothing otherwise.
    pub fn for_policy(policy: RestPolicy) -> Contention {
        let file = match policy {
            RestPolicy::Auto => File::open(PRESSURE)
                .inspect_err(|e| {
                    tracing::info!(
                        "{PRESSURE}: {e}; the fan-out writers' automatic rest stays off \
                         (--fanout-round-rest-pct sets one)"
                    )
                })
                .ok(),
            RestPolicy::Fixed(_) => None,
        };
        Contention { file, since: None, contended: false, buf: vec![0; 256] }
    }

    /// Whether the last complete window was contended, reading the file if the current
    /// window is over at `now`.
    pub fn contended(&mut self, now: Instant) -> bool {
        let due = self.since.is_none_or(|(at, _)| now.duration_since(at) >= WINDOW);
        if due {
            if let Some(total) = self.read() {
                self.observe(now, total);
            }
        }
        self.contended
    }

    /// The stall total now (a read at offset 0 makes the kernel write the file afresh).
    fn read(&mut self) -> Option<u64> {
        let file = self.file.as_ref()?;
        let n = file.read_at(&mut self.buf, 0).ok()?;
        some_total_us(std::str::from_utf8(&self.buf[..n]).ok()?)
    }

    /// A reading of the stall total at `now`: ends the window, starts the next.
    fn observe(&mut self, now: Instant, total_us: u64) {
        if let Some((at, before)) = self.since {
            let span = now.duration_since(at).as_micros() as f64;
            let stalled = total_us.saturating_sub(before) as f64;
            self.contended = span > 0.0 && stalled / span >= CONTENDED;
        }
        self.since = Some((now, total_us));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy's forms on the command line: `auto` or a percentage up to 400.
    #[test]
    fn a_policy_is_auto_or_a_bounded_percentage() {
        assert_eq!("auto".parse(), Ok(RestPolicy::Auto));
        assert_eq!("AUTO".parse(), Ok(RestPolicy::Auto));
        assert_eq!("0".parse(), Ok(RestPolicy::Fixed(0)));
        assert_eq!("400".parse(), Ok(RestPolicy::Fixed(400)));
        for bad in ["401", "-1", "", "25%", "sometimes"] {
            let e = bad.parse::<RestPolicy>().unwrap_err();
            assert!(e.contains("neither `auto` nor a percentage 0..=400"), "{bad}: {e}");
        }
        assert_eq!(RestPolicy::Auto.to_string(), "auto");
        assert_eq!(RestPolicy::Fixed(25).to_string(), "25");
    }

    /// A fixed rest is its share of the round whatever the machine; the automatic one is
    /// a quarter on a contended machine and nothing otherwise.
    #[test]
    fn a_rest_is_its_share_of_the_round() {
        let round = Duration::from_millis(100);
        for contended in [false, true] {
            assert_eq!(rest(round, RestPolicy::Fixed(0), contended), None);
            assert_eq!(rest(round, RestPolicy::Fixed(25), contended), Some(round / 4));
            assert_eq!(rest(round, RestPolicy::Fixed(400), contended), Some(round * 4));
        }
        assert_eq!(rest(round, RestPolicy::Auto, false), None);
        assert_eq!(rest(round, RestPolicy::Auto, true), Some(round / 4));
        assert_eq!(rest(Duration::ZERO, RestPolicy::Auto, true), Some(Duration::ZERO));
    }

    /// The kernel's format, both lines; anything else reads as no value.
    #[test]
    fn the_stall_total_is_read_from_the_some_line() {
        let text = "some avg10=1.50 avg60=2.65 avg300=8.70 total=9716510014\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_total_us(text), Some(9_716_510_014));
        assert_eq!(some_total_us("full avg10=0.00 total=5\n"), None);
        assert_eq!(some_total_us("some avg10=0.00 total=x\n"), None);
        assert_eq!(some_total_us(""), None);
    }

    /// Contended from a window with a fifth or more of its time stalled, until a window
    /// with less; the first reading only starts a window.
    #[test]
    fn contention_follows_the_share_of_each_window_stalled() {
        let mut c = Contention { file: None, since: None, contended: false, buf: Vec::new() };
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        c.observe(t0, 1_000_000);
        assert!(!c.contended, "one reading is no window");
        c.observe(t0 + ms(100), 1_000_000 + 20_000); // 20 ms of 100
        assert!(c.contended);
        c.observe(t0 + ms(200), 1_020_000 + 50_000);
        assert!(c.contended);
        c.observe(t0 + ms(300), 1_070_000 + 19_000); // 19 %
        assert!(!c.contended);
        c.observe(t0 + ms(300), 1_089_000 + 5_000); // no time passed: no share
        assert!(!c.contended);
        // A total that went backwards (never, but not a reason to panic): no stall.
        c.observe(t0 + ms(400), 10);
        assert!(!c.contended);
    }

    /// Without the file (a fixed policy opens none), never contended; with it (this
    /// kernel), readings come once a window, and each reads the file afresh: more
    /// spinning threads than cores make tasks wait, and the next reading shows it.
    #[test]
    fn the_pressure_file_is_read_once_a_window() {
        let mut none = Contention::for_policy(RestPolicy::Fixed(25));
        assert!(none.file.is_none());
        assert!(!none.contended(Instant::now()));
        assert!(none.since.is_none());
        let mut c = Contention::for_policy(RestPolicy::Auto);
        let Some(first) = c.read() else {
            return; // no pressure accounting here: nothing more to read
        };
        let spin_until = Instant::now() + Duration::from_millis(300);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spinners: Vec<_> = (0..=cores)
            .map(|_| {
                std::thread::spawn(move || {
                    while Instant::now() < spin_until {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        for s in spinners {
            s.join().expect("a spinning thread");
        }
        let after = c.read().expect("a second reading");
        assert!(after > first, "tasks waited for a core, yet the total stayed at {first}");
        let t0 = Instant::now();
        c.contended(t0);
        let started = c.since.map(|(at, _)| at);
        assert_eq!(started, Some(t0));
        c.contended(t0 + WINDOW / 2);
        assert_eq!(c.since.map(|(at, _)| at), started, "inside the window: no reading");
        c.contended(t0 + WINDOW);
        assert_eq!(c.since.map(|(at, _)| at), Some(t0 + WINDOW));
    }
}
