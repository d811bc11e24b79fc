//! Counters for everything the gateway does and drops, rendered in Prometheus text format
//! at `/metrics`. Plain relaxed atomics: counting never slows the hot path down.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tickgate_engine::durable::JournalStats;
use tickgate_engine::runtime::EngineHandle;

/// A `# HELP` line: `text` joined on one line, its backslashes escaped as the text format
/// wants.
pub fn help(out: &mut String, name: &str, text: &str) {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let _ = writeln!(out, "# HELP {name} {}", text.replace('\\', "\\\\"));
}

macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $name:ident: $kind:literal,)*) => {
        /// Gateway counters and gauges.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// How long the fan-out writers' rounds take.
            pub fanout_rounds: RoundTimes,
        }

        impl Metrics {
            fn write_own(&self, out: &mut String) {
                $(
                    let name = concat!("tickgate_", stringify!($name));
                    help(out, name, concat!($($doc, " ",)*));
                    let _ = writeln!(out, "# TYPE {name} {}", $kind);
                    let _ = writeln!(out, "{name} {}", self.$name.load(Ordering::Relaxed));
                )*
                help(out, "tickgate_fanout_round_seconds", "How long the fan-out writers' rounds take.");
                self.fanout_rounds.render("tickgate_fanout_round_seconds", out);
            }
        }
    };
}

metrics! {
    /// SSE alert streams open now.
    sse_streams: "gauge",
    /// SSE alert streams opened since start.
    sse_streams_total: "counter",
    /// Reconnects whose Last-Event-ID was older than the history (sent a `reset`).
    sse_resets_total: "counter",
    /// Streams closed because the client did not keep up.
    sse_slow_closes_total: "counter",
    /// WebSocket connections open now.
    ws_connections: "gauge",
    /// WebSocket connections accepted since start.
    ws_connections_total: "counter",
    /// Upgrades refused because `max_connections` was reached (HTTP 503).
    ws_rejected_total: "counter",
    /// Upgrades refused for their credentials: a forged, expired or ended token (HTTP 401,
    /// or close 4401 for a page) or a cookie from another origin (close 4403).
    ws_auth_refusals_total: "counter",
    /// Frames written to WebSocket clients (market data and replies).
    ws_frames_sent_total: "counter",
    /// Write system calls (vectored) on WebSocket connections.
    ws_writes_total: "counter",
    /// Rests the fan-out writers took after a round (`--fanout-round-rest-pct`; with
    /// `auto`, only while the machine's CPU pressure says it is contended).
    fanout_rests_total: "counter",
    /// Market-data messages delivered to WebSocket clients.
    ws_messages_sent_total: "counter",
    /// Bytes written to WebSocket clients.
    ws_bytes_sent_total: "counter",
    /// Control messages received.
    ws_requests_total: "counter",
    /// Control messages answered with an error.
    ws_errors_total: "counter",
    /// Book/BBO subscribers that fell behind and got a resync snapshot.
    ws_resyncs_total: "counter",
    /// Trades subscribers that fell behind and got a gap notice.
    ws_gaps_total: "counter",
    /// Times a connection's socket was full, so its task took the writing over from the
    /// fan-out writer until it drained.
    ws_blocked_total: "counter",
    /// Times market data to a connection paused because it had its allowance of unread
    /// data (a quarter of `--ws-unread-bytes-start` while a new connection is on trial,
    /// then the start up to `--ws-unread-bytes`) without a read receipt back (see
    /// fanout::outbox).
    ws_receipt_holds_total: "counter",
    /// Connections closed as slow consumers (code 4008).
    ws_slow_closes_total: "counter",
    /// Connections closed for missing heartbeats (code 4001).
    ws_heartbeat_closes_total: "counter",
    /// Connections closed for protocol violations (1002, 1003, 1008, 1009).
    ws_protocol_closes_total: "counter",
    /// Orders canceled because the connection that asked for cancel-on-disconnect ended.
    ws_disconnect_cancels_total: "counter",
    /// Engine events the fan-out hub read.
    hub_events_total: "counter",
    /// Engine events the hub missed because its ring reader was lapped.
    hub_missed_total: "counter",
    /// Chunks the hub published.
    hub_chunks_total: "counter",
    /// Book channels rebuilt from an engine snapshot.
    hub_resyncs_total: "counter",
    /// HTTP requests served (excluding WebSocket traffic).
    http_requests_total: "counter",
    /// Connections accepted and closed at once: too many were waiting for a request head.
    connections_refused_total: "counter",
    /// Connections closed before a whole request head arrived (handshake timeout).
    handshake_timeouts_total: "counter",
    /// Connections without a complete request head yet.
    connections_pending: "gauge",
    /// TLS handshakes completed.
    tls_handshakes_total: "counter",
    /// TLS handshakes that failed (bad client hello, unknown protocol, no shared cipher).
    tls_handshake_failures_total: "counter",
    /// Logins refused with a wrong username or password.
    login_failures_total: "counter",
    /// Logins answered 429 by the throttle (see `throttle.rs`).
    login_throttled_total: "counter",
}

/// Upper bounds of [`RoundTimes`]' buckets, in microseconds: a quarter of a millisecond
/// to half a second, doubling.
const ROUND_BOUNDS_US: [u64; 12] =
    [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000];

/// The fan-out writers' rounds that wrote something, by how long they took: a Prometheus
/// histogram. A connection waits up to a round for its next write, so the rounds are what
/// market data's latency is made of (docs/OPERATIONS.md, "Tuning"). One observation per
/// round: relaxed adds on the writer's thread.
#[derive(Debug, Default)]
pub struct RoundTimes {
    /// Rounds per bucket (not cumulative), the last for those longer than every bound.
    counts: [AtomicU64; ROUND_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl RoundTimes {
    /// Counts one round of `took`.
    pub fn observe(&self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = ROUND_BOUNDS_US.partition_point(|&bound| bound < us);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (n, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match ROUND_BOUNDS_US.get(n) {
                Some(&us) => {
                    let le = us as f64 / 1e6;
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

impl Metrics {
    /// Prometheus text for the gateway's and the engine's counters.
    pub fn render(&self, engine: &EngineHandle) -> String {
        let mut out = String::with_capacity(4096);
        self.write_own(&mut out);
        let c = engine.counters();
        for (name, value, text) in [
            ("engine_commands_total", c.commands, "Commands the engine applied."),
            ("engine_rejects_total", c.rejects, "Commands the engine refused."),
            ("engine_trades_total", c.trades, "Trades."),
            ("engine_events_total", c.events, "Events the engine published."),
        ] {
            help(&mut out, &format!("tickgate_{name}"), text);
            let _ = writeln!(out, "# TYPE tickgate_{name} counter\ntickgate_{name} {value}");
        }
        help(&mut out, "tickgate_engine_queue_depth", "Commands waiting in each shard's queue.");
        let _ = writeln!(out, "# TYPE tickgate_engine_queue_depth gauge");
        for shard in 0..engine.shards() {
            let _ = writeln!(
                out,
                "tickgate_engine_queue_depth{{shard=\"{shard}\"}} {}",
                engine.queue_len(shard)
            );
        }
        // The journal's work per shard: commands per batch and batches per sync show how
        // well group commit amortizes each `fdatasync`.
        let journals: Vec<_> =
            (0..engine.shards()).filter_map(|s| Some((s, engine.journal_stats(s)?))).collect();
        if !journals.is_empty() {
            type Stat = fn(&JournalStats) -> &AtomicU64;
            let stats: [(&str, Stat, &str); 5] = [
                ("journal_records_total", |j| &j.records, "Commands journaled."),
                ("journal_batches_total", |j| &j.batches, "Journal writes (group commits)."),
                ("journal_syncs_total", |j| &j.syncs, "Journal syncs to disk."),
                ("journal_bytes_total", |j| &j.bytes, "Bytes journaled."),
                ("journal_snapshots_total", |j| &j.snapshots, "Snapshots written."),
            ];
            for (name, stat, text) in stats {
                help(&mut out, &format!("tickgate_{name}"), text);
                let _ = writeln!(out, "# TYPE tickgate_{name} counter");
                for (shard, j) in &journals {
                    let value = stat(j).load(Ordering::Relaxed);
                    let _ = writeln!(out, "tickgate_{name}{{shard=\"{shard}\"}} {value}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Rounds land in the first bucket whose bound they do not exceed; the text has
    /// cumulative buckets up to `+Inf`, the sum in seconds and the count.
    #[test]
    fn round_times_render_as_a_prometheus_histogram() {
        let rounds = RoundTimes::default();
        for us in [100, 250, 251, 3_000, 3_000, 600_000] {
            rounds.observe(Duration::from_micros(us));
        }
        let mut out = String::new();
        rounds.render("r", &mut out);
        let line = |le: &str| {
            let key = format!("r_bucket{{le=\"{le}\"}} ");
            out.lines().find_map(|l| l.strip_prefix(key.as_str())).map(str::to_owned)
        };
        assert!(out.starts_with("# TYPE r histogram\n"), "{out}");
        assert_eq!(line("0.00025").as_deref(), Some("2"), "{out}");
        assert_eq!(line("0.0005").as_deref(), Some("3"));
        assert_eq!(line("0.002").as_deref(), Some("3"));
        assert_eq!(line("0.004").as_deref(), Some("5"));
        assert_eq!(line("0.512").as_deref(), Some("5"));
        assert_eq!(line("+Inf").as_deref(), Some("6"));
        assert!(out.contains("r_sum 0.606601\nr_count 6\n"), "{out}");
    }
}
