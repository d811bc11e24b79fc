//! CPU time the hypervisor took from this machine while the probe measured.
//!
//! On a virtual machine, a vCPU that the host does not run is "stolen" time
//! (`/proc/stat`'s eighth `cpu` field): every thread on it, the server's and the probe's,
//! stops, and latencies grow with nothing in the server to blame. The benchmark machine
//! lost up to 820 ms a second of its 2,000 in bursts (docs/BENCHMARKS.md), so the probe
//! reports it beside each second's latencies.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Clock ticks of `/proc/stat` per second (USER_HZ: 100 on Linux's usual architectures).
const TICKS_PER_SEC: u64 = 100;

/// The whole machine's stolen time so far, in clock ticks, and its CPU count, from the
/// text of `/proc/stat`. `None` when the kernel reports no steal field.
fn parse(stat: &str) -> Option<(u64, usize)> {
    let all = stat.lines().find(|l| l.starts_with("cpu "))?;
    let steal = all.split_ascii_whitespace().nth(8)?.parse().ok()?;
    let cpus = stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some((steal, cpus.max(1)))
}

fn read() -> Option<(u64, usize)> {
    parse(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Stolen time over the measured seconds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Steal {
    /// Per measured second, milliseconds stolen (summed over the CPUs).
    pub per_second_ms: Vec<u64>,
    /// CPUs of the machine.
    pub cpus: usize,
}

/// A watch under way (see [`Steal::watch`]).
#[derive(Debug)]
pub struct Watch {
    /// Dropped to end the watch early.
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Steal>,
    /// When the last second watched ends.
    end: Instant,
}

impl Watch {
    /// The seconds watched: all of them when the window is over or within a second of
    /// it (waiting for the last reading), those so far when the run ended earlier (every
    /// connection failed).
    pub fn finish(self) -> Steal {
        let Watch { stop, thread, end } = self;
        if Instant::now() + Duration::from_secs(1) < end {
            drop(stop);
            return thread.join().unwrap_or_default();
        }
        let steal = thread.join().unwrap_or_default();
        drop(stop);
        steal
    }
}

impl Steal {
    /// Watches from `from` for `seconds` seconds on a thread of its own (not the probe's:
    /// its readings stay on time when the probe is behind). Empty where `/proc/stat` has
    /// no steal field.
    pub fn watch(from: Instant, seconds: usize) -> Watch {
        let (stop, stopped) = mpsc::channel::<()>();
        // Sleeps until `until`; false when told to stop.
        let wait = move |until: Instant| {
            let left = until.saturating_duration_since(Instant::now());
            matches!(stopped.recv_timeout(left), Err(RecvTimeoutError::Timeout))
        };
        let end = from + Duration::from_secs(seconds as u64);
        let thread = std::thread::spawn(move || {
            if !wait(from) {
                return Steal::default();
            }
            let Some((mut before, cpus)) = read() else { return Steal::default() };
            let mut steal = Steal { per_second_ms: Vec::with_capacity(seconds), cpus };
            for n in 1..=seconds as u64 {
                if !wait(from + Duration::from_secs(n)) {
                    break;
                }
                let Some((now, _)) = read() else { break };
                steal.per_second_ms.push(now.saturating_sub(before) * 1000 / TICKS_PER_SEC);
                before = now;
            }
            steal
        });
        Watch { stop, thread, end }
    }

    /// The share of the machine's CPU time stolen over the measured seconds (0 to 1).
    pub fn share(&self) -> f64 {
        let total: u64 = self.per_second_ms.iter().sum();
        let available = self.per_second_ms.len() as f64 * self.cpus as f64 * 1000.0;
        if available > 0.0 {
            total as f64 / available
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The aggregate line's eighth value, and the per-CPU lines counted.
    #[test]
    fn steal_and_cpus_are_read_from_proc_stat() {
        let stat = "cpu  2919171 1609 1580074 4386160 62454 0 559167 89709 0 0\n\
                    cpu0 1459585 804 790037 2193080 31227 0 279583 44854 0 0\n\
                    cpu1 1459586 805 790037 2193080 31227 0 279584 44855 0 0\n\
                    intr 1 2 3\nctxt 99\n";
        assert_eq!(parse(stat), Some((89709, 2)));
        assert_eq!(parse("cpu  1 2 3 4\ncpu0 1 2 3 4\n"), None, "a kernel without steal");
        assert_eq!(parse("intr 1\n"), None);
    }

    /// The share is of every CPU's time over the seconds watched.
    #[test]
    fn the_share_is_of_all_cpus_time() {
        let s = Steal { per_second_ms: vec![0, 400, 200, 0], cpus: 2 };
        assert!((s.share() - 600.0 / 8000.0).abs() < 1e-9, "{}", s.share());
        assert_eq!(Steal::default().share(), 0.0);
    }

    /// On this machine: one reading a second, each a whole number of ticks.
    #[test]
    fn a_watch_reads_once_a_second() {
        if read().is_none() {
            return; // no steal field here
        }
        let s = Steal::watch(Instant::now(), 1).finish();
        assert_eq!(s.per_second_ms.len(), 1);
        assert!(s.cpus >= 1);
        // No more than every CPU's whole second (a wrong tick rate would overshoot).
        assert!(s.per_second_ms[0] <= s.cpus as u64 * 1000, "{s:?}");
    }

    /// A run that ends early ends its watch at once, with the seconds watched so far.
    #[test]
    fn an_early_finish_stops_the_watch() {
        let started = Instant::now();
        let s = Steal::watch(started + Duration::from_millis(50), 60).finish();
        assert!(started.elapsed() < Duration::from_secs(30), "the watch ran on");
        assert!(s.per_second_ms.is_empty(), "{s:?}");
    }
}
