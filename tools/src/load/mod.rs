//! The load/latency probe.
//!
//! Each connection is a task on a small tokio runtime (one thread by default, so the
//! probe leaves the other core to the server). Per message it decodes only the 24-byte
//! header: type, channel, sequence and engine timestamp. Latency is receipt wall-clock
//! time minus the engine timestamp (both clocks are this machine's), recorded once per
//! read in the HDR histogram of the second it arrived in (shared by all connections, 2
//! significant digits); the whole run's is their sum. Sequences are checked per channel:
//! book deltas and trades must be contiguous, except across a resync snapshot or an
//! announced gap, which are counted.

mod books;
mod steal;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fastwebsockets::OpCode;
use hdrhistogram::Histogram;
use tickgate_engine::types::format_fixed;
use tickgate_engine::{BookSnapshot, L2Book, Price, Qty, Seq};
use tickgate_gateway::client;

use crate::frames::FrameReader;
use books::*;
use tickgate_gateway::protocol::{self, MsgType, FLAG_RESYNC};

/// Which channels each connection follows.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// Every symbol.
    All,
    /// `k` symbols, chosen per connection (round robin from its index).
    Spread(usize),
    /// One symbol for everyone.
    Hot(String),
}

/// Probe settings.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// WebSocket connections.
    pub connections: usize,
    /// Channel kinds to subscribe per symbol (`book`, `bbo`, `trades`).
    pub kinds: Vec<String>,
    /// Subscription pattern.
    pub pattern: Pattern,
    /// Symbols the server offers (from its instrument list).
    pub symbols: Vec<String>,
    /// `?format=json` instead of binary.
    pub json: bool,
    /// Measured time.
    pub duration: Duration,
    /// Time before measuring starts.
    pub warmup: Duration,
    /// Connect and hold the connections without subscribing (memory per idle connection).
    pub idle: bool,
    /// Rebuild every followed book from its snapshot and deltas and check it, at the end,
    /// against the REST book snapshot at the same sequence (subscribes with full depth).
    pub verify: bool,
    /// Where the REST book comes from (default: `addr`); e.g. the real server when `addr`
    /// is a capture replayer.
    pub rest_addr: Option<SocketAddr>,
    /// WSS instead of WS.
    pub tls: Option<Wss>,
    /// More connections that subscribe like the others, read for `stall_after`, then stop
    /// reading with their sockets open until the end (a slow or frozen client). They are
    /// left out of every figure: the report is the healthy connections'.
    pub stalled: usize,
    /// When the stalled connections stop reading, from the start of the run.
    pub stall_after: Duration,
}

/// How to connect with TLS: a client trusting the server's certificate, and the name the
/// certificate must carry.
#[derive(Clone)]
pub struct Wss {
    /// The TLS client.
    pub connector: tokio_rustls::TlsConnector,
    /// The server's name.
    pub name: String,
}

impl std::fmt::Debug for Wss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wss").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A TLS client that trusts the certificates in `ca` (PEM) and nothing else.
pub fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    // The provider the server uses (see gateway/src/tls.rs for why ring).
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// What one connection saw while measuring.
#[derive(Debug)]
struct ConnStats {
    messages: u64,
    bytes: u64,
    resyncs: u64,
    gaps: u64,
    snapshots: u64,
    seq_breaks: u64,
    closed: Option<u16>,
    books: BookCheck,
    /// One of the stalled connections (not counted in the report).
    stalled: bool,
}

impl ConnStats {
    fn empty() -> anyhow::Result<ConnStats> {
        Ok(ConnStats {
            messages: 0,
            bytes: 0,
            resyncs: 0,
            gaps: 0,
            snapshots: 0,
            seq_breaks: 0,
            closed: None,
            books: BookCheck::default(),
            stalled: false,
        })
    }
}

/// How evenly the connections were served: messages each received while measuring.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PerConnection {
    /// The fewest.
    pub min: u64,
    /// The first percentile (one connection in a hundred got fewer).
    pub p1: u64,
    /// The median.
    pub median: u64,
    /// The most.
    pub max: u64,
}

impl PerConnection {
    fn of(mut counts: Vec<u64>) -> PerConnection {
        counts.sort_unstable();
        let at = |q: f64| counts.get(((counts.len() - 1) as f64 * q) as usize).copied();
        match (counts.first(), counts.last()) {
            (Some(&min), Some(&max)) => PerConnection {
                min,
                p1: at(0.01).unwrap_or(min),
                median: at(0.5).unwrap_or(min),
                max,
            },
            _ => PerConnection::default(),
        }
    }
}

/// One measured second: the messages received in it and their latencies (ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Second {
    /// Messages received in that second.
    pub messages: u64,
    /// Median latency.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// The largest.
    pub max: u64,
}

impl Second {
    fn of(h: &Histogram<u64>) -> Second {
        Second {
            messages: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

/// The probe's result.
#[derive(Debug)]
pub struct Report {
    /// Stalled connections held to the end (not in any other figure).
    pub stalled: usize,
    /// Connections that completed the run.
    pub connections: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Messages received while measuring.
    pub messages: u64,
    /// Bytes received while measuring.
    pub bytes: u64,
    /// Resync snapshots received.
    pub resyncs: u64,
    /// Gap notices received.
    pub gaps: u64,
    /// Book and trade snapshots received (on subscribe and resyncs; not in `messages`).
    pub snapshots: u64,
    /// Sequence breaks not explained by a resync or gap (protocol violations).
    pub seq_breaks: u64,
    /// Connections closed by the server (code, count).
    pub closes: Vec<(Option<u16>, usize)>,
    /// Merged latency histogram, nanoseconds.
    pub latency: Histogram<u64>,
    /// Each measured second's latencies, by receipt time.
    pub timeline: Vec<Second>,
    /// CPU time the hypervisor took from the machine in each measured second.
    pub steal: steal::Steal,
    /// Messages per connection: the fewest, the first percentile, the median, the most.
    pub per_connection: PerConnection,
    /// Book verification (with `verify`).
    pub books: BookCheck,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn channels_for(config: &LoadConfig, index: usize) -> Vec<String> {
    let symbols: Vec<&String> = match &config.pattern {
        Pattern::All => config.symbols.iter().collect(),
        Pattern::Spread(k) => {
            (0..*k).map(|j| &config.symbols[(index + j) % config.symbols.len()]).collect()
        }
        Pattern::Hot(s) => config.symbols.iter().filter(|x| *x == s).collect(),
    };
    symbols.iter().flat_map(|s| config.kinds.iter().map(move |k| format!("{k}.{s}"))).collect()
}

/// The latency histograms all connections record into, once per read: one per connection
/// put every record in a cache miss at a thousand connections.
type SharedLatency = Arc<Mutex<Latencies>>;

/// Each measured second's latencies (when a tail happens: at a stall, at the closes,
/// throughout), the whole run's being their sum: each message is recorded once. At
/// 20 M msgs/s, recording took a quarter of the probe's time when it went into the whole
/// run's histogram (3 significant digits, ~140 KB, out of cache among the connections'
/// buffers) as well; with 2 digits (values within 1 %, ~17 KB) and once, a tenth.
#[derive(Debug)]
struct Latencies {
    /// When measuring began, in the probe's wall clock (ns since the Unix epoch).
    from_ns: u64,
    /// One per measured second, by receipt time.
    seconds: Vec<Histogram<u64>>,
    /// Reads that arrived after the last measured second (in the whole run only).
    outside: Histogram<u64>,
}

impl Latencies {
    fn new(from_ns: u64, seconds: usize) -> anyhow::Result<Latencies> {
        let hist = || Histogram::new_with_bounds(1_000, 60_000_000_000, 2);
        Ok(Latencies {
            from_ns,
            outside: hist()?,
            seconds: (0..seconds).map(|_| hist()).collect::<Result<_, _>>()?,
        })
    }

    /// The whole run's histogram.
    fn whole(&self) -> anyhow::Result<Histogram<u64>> {
        let mut all = self.outside.clone();
        for h in &self.seconds {
            all.add(h).map_err(|e| anyhow::anyhow!("merging latencies: {e:?}"))?;
        }
        Ok(all)
    }
}

/// Last sequence per channel for the contiguous kinds (book deltas, trades): a connection
/// follows a handful of channels, so a linear scan beats hashing.
#[derive(Debug, Default)]
struct LastSeqs(Vec<(u32, u64)>);

impl LastSeqs {
    /// Stores `seq` for `channel`; the previous one, if any.
    #[inline]
    fn insert(&mut self, channel: u32, seq: u64) -> Option<u64> {
        match self.0.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, last)) => Some(std::mem::replace(last, seq)),
            None => {
                self.0.push((channel, seq));
                None
            }
        }
    }
}

/// Connections handshaking at once, at most.
const CONNECTING_MAX: usize = 128;

async fn run_connection(
    config: LoadConfig,
    index: usize,
    (start_measuring, stop, stall_at): (Instant, Instant, Option<Instant>),
    latency: SharedLatency,
    handshakes: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<ConnStats> {
    let query = if config.json { "/ws?format=json" } else { "/ws" };
    let connecting = handshakes.acquire_owned().await?;
    let mut ws = match &config.tls {
        None => client::connect(config.addr, query).await.context("connect")?,
        Some(wss) => {
            let tcp = tokio::net::TcpStream::connect(config.addr).await.context("connect")?;
            tcp.set_nodelay(true)?;
            let server_name = rustls::pki_types::ServerName::try_from(wss.name.clone())?;
            let tls = wss.connector.connect(server_name, tcp).await.context("TLS handshake")?;
            client::connect_stream(tls, &wss.name, query, &[]).await.context("upgrade")?
        }
    };
    drop(connecting);
    let channels = channels_for(&config, index);
    if config.idle {
        tokio::time::sleep_until(stop.into()).await;
        return ConnStats::empty();
    }
    let depth = if config.verify { protocol::SNAPSHOT_DEPTH_MAX } else { 20 };
    client::send_json(
        &mut ws,
        &serde_json::json!({"op": "subscribe", "id": index, "channels": channels, "depth": depth}),
    )
    .await?;
    let mut reader = FrameReader::from_client(ws)?;
    let mut stats = ConnStats::empty()?;
    let mut last = LastSeqs::default();
    let mut last_json: HashMap<String, u64> = HashMap::new();
    // Latencies of one read, recorded together.
    let mut latencies: Vec<u64> = Vec::with_capacity(1024);
    let mut followed: HashMap<u32, Followed> = HashMap::new();
    let measure_from =
        now_ns() + start_measuring.saturating_duration_since(Instant::now()).as_nanos() as u64;
    let deadline = tokio::time::sleep_until(stop.into());
    tokio::pin!(deadline);
    // A stalled connection: reads until then, then holds its socket without reading.
    let stall = tokio::time::sleep_until(stall_at.unwrap_or(stop).into());
    tokio::pin!(stall);
    stats.stalled = stall_at.is_some();
    let mut open = true;
    // When the latest read arrived (its latencies go to that second of the timeline).
    let mut received = 0;
    // Frames the handshake already brought are handled before the first read.
    let mut first = true;
    'run: loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                biased;
                _ = &mut deadline => break,
                _ = &mut stall, if stats.stalled => {
                    (&mut deadline).await;
                    return Ok(stats);
                }
                more = reader.fill() => {
                    if !more? {
                        open = false;
                        break;
                    }
                }
            }
        }
        // One clock read per read syscall: every frame it brought arrived together.
        received = now_ns();
        let measuring = received >= measure_from && !stats.stalled;
        while let Some((opcode, range)) = reader.next_frame()? {
            let payload = reader.payload(range);
            if config.verify {
                match opcode {
                    OpCode::Text => learn_channels(payload, &mut followed),
                    OpCode::Binary => follow(payload, &mut followed),
                    _ => {}
                }
            }
            if measuring && matches!(opcode, OpCode::Binary | OpCode::Text) {
                stats.bytes += payload.len() as u64;
            }
            match opcode {
                OpCode::Binary => {
                    let seqs = &mut last;
                    count_binary(payload, received, measuring, seqs, &mut stats, &mut latencies)?;
                }
                OpCode::Text => {
                    let seqs = &mut last_json;
                    count_json(payload, received, measuring, seqs, &mut stats, &mut latencies);
                }
                OpCode::Ping => {
                    let ping = payload.to_vec();
                    reader.pong(&ping).await?;
                }
                OpCode::Close => {
                    stats.closed = Some(match payload {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]),
                        _ => 1005,
                    });
                    open = false;
                    break 'run;
                }
                _ => {}
            }
        }
        record(&latency, received, &mut latencies);
    }
    record(&latency, received, &mut latencies);
    if config.verify {
        let rest = config.rest_addr.unwrap_or(config.addr);
        stats.books = verify_books(&mut reader, open, rest, &mut followed).await;
    }
    Ok(stats)
}

/// Records one read's latencies (all received at `received`) in the shared histograms,
/// one lock per read. The messages of one command share a timestamp, so equal latencies
/// come in runs: one record per run.
fn record(latency: &SharedLatency, received: u64, latencies: &mut Vec<u64>) {
    let Some(&first) = latencies.first() else { return };
    let mut l = latency.lock().unwrap_or_else(|e| e.into_inner());
    let second = (received.saturating_sub(l.from_ns) / 1_000_000_000) as usize;
    let Latencies { seconds, outside, .. } = &mut *l;
    let h = seconds.get_mut(second).unwrap_or(outside);
    let (mut value, mut count) = (first, 0);
    for &v in latencies.iter() {
        if v != value {
            h.saturating_record_n(value, count);
            (value, count) = (v, 0);
        }
        count += 1;
    }
    h.saturating_record_n(value, count);
    latencies.clear();
}

/// Counts one binary frame's messages: sequence continuity per channel, snapshots,
/// resyncs, gaps, and the latency of each message (receipt minus engine timestamp).
fn count_binary(
    payload: &[u8],
    received: u64,
    measuring: bool,
    last: &mut LastSeqs,
    stats: &mut ConnStats,
    latencies: &mut Vec<u64>,
) -> anyhow::Result<()> {
    for msg in protocol::decode(payload) {
        let msg = msg?;
        match msg.msg_type {
            MsgType::BookSnapshot | MsgType::TradesSnapshot | MsgType::CandlesSnapshot => {
                if measuring {
                    stats.snapshots += 1;
                }
                if msg.flags & FLAG_RESYNC != 0 && measuring {
                    stats.resyncs += 1;
                }
                last.insert(msg.channel, msg.seq);
                continue;
            }
            MsgType::Gap => {
                if measuring {
                    stats.gaps += 1;
                }
                last.insert(msg.channel, msg.seq);
                continue;
            }
            MsgType::BookDelta | MsgType::Trade | MsgType::Candle => {
                if let Some(prev) = last.insert(msg.channel, msg.seq) {
                    if msg.seq != prev + 1 && measuring {
                        stats.seq_breaks += 1;
                    }
                }
            }
            MsgType::Bbo | MsgType::Heartbeat => {}
        }
        if measuring {
            stats.messages += 1;
            latencies.push(received.saturating_sub(msg.ts).max(1_000));
        }
    }
    Ok(())
}

/// [`count_binary`] for a JSON text frame (`?format=json`: an array of messages; the
/// server's replies are objects, not counted): the same counts, the same sequence checks,
/// channels by name. A full parse per frame: JSON mode is for debugging, not for speed.
fn count_json(
    payload: &[u8],
    received: u64,
    measuring: bool,
    last: &mut HashMap<String, u64>,
    stats: &mut ConnStats,
    latencies: &mut Vec<u64>,
) {
    let Ok(serde_json::Value::Array(messages)) = serde_json::from_slice(payload) else { return };
    for m in &messages {
        let (Some(kind), Some(channel)) = (m["type"].as_str(), m["channel"].as_str()) else {
            continue;
        };
        let seq = m["seq"].as_u64().unwrap_or(0);
        match kind {
            "book_snapshot" | "trades_snapshot" | "candles_snapshot" => {
                if measuring {
                    stats.snapshots += 1;
                    stats.resyncs += u64::from(m["resync"].as_bool() == Some(true));
                }
                last.insert(channel.to_string(), seq);
                continue;
            }
            "gap" => {
                stats.gaps += u64::from(measuring);
                last.insert(channel.to_string(), seq);
                continue;
            }
            "book_delta" | "trade" | "candle" => {
                if let Some(prev) = last.insert(channel.to_string(), seq) {
                    if seq != prev + 1 && measuring {
                        stats.seq_breaks += 1;
                    }
                }
            }
            _ => {}
        }
        if measuring {
            if let Some(ts) = m["ts"].as_u64() {
                stats.messages += 1;
                latencies.push(received.saturating_sub(ts).max(1_000));
            }
        }
    }
}

/// Runs the probe.
pub async fn run(config: LoadConfig) -> anyhow::Result<Report> {
    let begin = Instant::now();
    // Connecting many clients takes a moment: measure only after the warm-up.
    let start_measuring = begin + config.warmup;
    let stop = start_measuring + config.duration;
    let mut tasks = Vec::with_capacity(config.connections);
    let from_ns = now_ns() + config.warmup.as_nanos() as u64;
    let seconds = config.duration.as_secs_f64().ceil() as usize;
    let latency: SharedLatency = Arc::new(Mutex::new(Latencies::new(from_ns, seconds)?));
    let steal = steal::Steal::watch(start_measuring, seconds);
    // Handshakes in flight at once, like clients arriving rather than a flood (the server
    // refuses connections beyond --pending-connections-max that have no request yet, and
    // TLS handshakes take long enough for a thousand at once to get there).
    let handshakes = Arc::new(tokio::sync::Semaphore::new(CONNECTING_MAX));
    for index in 0..config.connections + config.stalled {
        let shared = Arc::clone(&latency);
        let stall_at = (index >= config.connections).then(|| begin + config.stall_after);
        tasks.push(tokio::spawn(run_connection(
            config.clone(),
            index,
            (start_measuring, stop, stall_at),
            shared,
            Arc::clone(&handshakes),
        )));
    }
    let (mut messages, mut bytes, mut resyncs, mut gaps, mut breaks) = (0, 0, 0, 0, 0);
    let mut snapshots = 0;
    let mut books = BookCheck::default();
    let mut closes: HashMap<Option<u16>, usize> = HashMap::new();
    let (mut counts, mut ok, mut stalled) = (Vec::with_capacity(tasks.len()), 0, 0);
    for t in tasks {
        match t.await? {
            Ok(s) if s.stalled => stalled += 1,
            Ok(s) => {
                ok += 1;
                messages += s.messages;
                bytes += s.bytes;
                resyncs += s.resyncs;
                gaps += s.gaps;
                snapshots += s.snapshots;
                breaks += s.seq_breaks;
                books.add(s.books);
                counts.push(s.messages);
                if let Some(code) = s.closed {
                    *closes.entry(Some(code)).or_default() += 1;
                }
            }
            Err(e) => {
                *closes.entry(None).or_default() += {
                    eprintln!("connection failed: {e:#}");
                    1
                }
            }
        }
    }
    let mut closes: Vec<_> = closes.into_iter().collect();
    closes.sort();
    let latencies = std::mem::replace(
        &mut *latency.lock().unwrap_or_else(|e| e.into_inner()),
        Latencies::new(0, 0)?,
    );
    let timeline = latencies.seconds.iter().map(Second::of).collect();
    let latency = latencies.whole()?;
    let steal = tokio::task::spawn_blocking(move || steal.finish()).await?;
    Ok(Report {
        connections: ok,
        stalled,
        seconds: config.duration.as_secs_f64(),
        messages,
        bytes,
        resyncs,
        gaps,
        snapshots,
        seq_breaks: breaks,
        closes,
        latency,
        timeline,
        steal,
        per_connection: PerConnection::of(counts),
        books,
    })
}

impl Report {
    /// A human table.
    pub fn table(&self) -> String {
        let q = |p: f64| self.latency.value_at_quantile(p) as f64 / 1e3;
        format!(
            "connections       {} (and {} stalled, not counted)\n\
             delivered msgs/s  {:.0}\n\
             delivered MB/s    {:.1}\n\
             latency us        p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}\n\
             per connection    min {} p1 {} median {} max {} messages\n\
             resyncs {}  gaps {}  sequence breaks {}  closes {:?}\n\
             books verified {}  mismatched {}  unverified {}\n\
             p99 ms per second {}\n\
             stolen ms per second {} (of {} CPUs' time: {:.1} %)\n",
            self.connections,
            self.stalled,
            self.messages as f64 / self.seconds,
            self.bytes as f64 / self.seconds / 1e6,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.latency.max() as f64 / 1e3,
            self.per_connection.min,
            self.per_connection.p1,
            self.per_connection.median,
            self.per_connection.max,
            self.resyncs,
            self.gaps,
            self.seq_breaks,
            self.closes,
            self.books.verified,
            self.books.mismatched,
            self.books.unverified,
            self.timeline
                .iter()
                .map(|s| format!("{:.1}", s.p99 as f64 / 1e6))
                .collect::<Vec<_>>()
                .join(" "),
            self.steal.per_second_ms.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
            self.steal.cpus,
            self.steal.share() * 100.0,
        )
    }

    /// Machine-readable form.
    pub fn json(&self) -> serde_json::Value {
        let q = |p: f64| self.latency.value_at_quantile(p);
        serde_json::json!({
            "connections": self.connections,
            "stalled": self.stalled,
            "seconds": self.seconds,
            "messages": self.messages,
            "messages_per_sec": self.messages as f64 / self.seconds,
            "bytes_per_sec": self.bytes as f64 / self.seconds,
            "latency_ns": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": self.latency.max() },
            "per_connection_messages": {
                "min": self.per_connection.min,
                "p1": self.per_connection.p1,
                "median": self.per_connection.median,
                "max": self.per_connection.max,
            },
            "resyncs": self.resyncs,
            "gaps": self.gaps,
            "snapshots": self.snapshots,
            "sequence_breaks": self.seq_breaks,
            "books": { "verified": self.books.verified, "mismatched": self.books.mismatched, "unverified": self.books.unverified },
            "closes": self.closes.iter().map(|(c, n)| serde_json::json!({"code": c, "count": n})).collect::<Vec<_>>(),
            "timeline": self.timeline.iter().enumerate().map(|(n, s)| serde_json::json!({"messages": s.messages, "p50_ns": s.p50, "p99_ns": s.p99, "max_ns": s.max, "steal_ms": self.steal.per_second_ms.get(n)})).collect::<Vec<_>>(),
            "steal_share": self.steal.share(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{record, Latencies, PerConnection};
    use std::sync::{Arc, Mutex};

    /// Each read's latencies count in the whole run and in the second they arrived in;
    /// reads outside the measured seconds only in the whole.
    #[test]
    fn latencies_land_in_the_second_they_arrived() {
        let from = 1_000_000_000_000;
        let shared = Arc::new(Mutex::new(Latencies::new(from, 3).unwrap()));
        record(&shared, from + 1_500_000_000, &mut vec![2_000_000, 4_000_000, 4_000_000]);
        record(&shared, from + 2_000_000_000, &mut vec![9_000_000]);
        record(&shared, from + 7_000_000_000, &mut vec![1_000_000, 1_000_000, 3_000_000]);
        let l = shared.lock().unwrap();
        let all = l.whole().unwrap();
        assert_eq!(all.len(), 7);
        assert_eq!(all.count_at(4_000_000), 2, "a run of equal latencies counts each");
        assert_eq!((all.count_at(1_000_000), all.count_at(3_000_000)), (2, 1));
        let counts: Vec<u64> = l.seconds.iter().map(|h| h.len()).collect();
        assert_eq!(counts, [0, 3, 1]);
        assert!((8_900_000..=9_100_000).contains(&l.seconds[2].max()));
    }

    #[test]
    fn per_connection_counts_show_the_starved_few() {
        let mut counts: Vec<u64> = (1..=200).map(|n| 1_000 + n).collect();
        counts[7] = 0;
        counts[99] = 3;
        let p = PerConnection::of(counts);
        assert_eq!((p.min, p.p1, p.max), (0, 3, 1_200));
        assert!((1_090..=1_110).contains(&p.median), "{p:?}");
        assert_eq!(PerConnection::of(Vec::new()), PerConnection::default());
        let one = PerConnection::of(vec![5]);
        assert_eq!((one.min, one.p1, one.median, one.max), (5, 5, 5, 5));
    }
}
