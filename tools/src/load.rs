//! The load/latency probe.
//!
//! Each connection is a task on a small tokio runtime (one thread by default, so the
//! probe leaves the other core to the server). Per message it decodes only the 24-byte
//! header: type, channel, sequence and engine timestamp. Latency is receipt wall-clock
//! time minus the engine timestamp (both clocks are this machine's), recorded in an HDR
//! histogram per connection and merged at the end. Sequences are checked per channel:
//! book deltas and trades must be contiguous, except across a resync snapshot or an
//! announced gap, which are counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fastwebsockets::OpCode;
use hdrhistogram::Histogram;
use tickgate_gateway::client;
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
}

/// What one connection saw while measuring.
#[derive(Debug)]
struct ConnStats {
    messages: u64,
    bytes: u64,
    resyncs: u64,
    gaps: u64,
    seq_breaks: u64,
    closed: Option<u16>,
    latency: Histogram<u64>,
}

impl ConnStats {
    fn empty() -> anyhow::Result<ConnStats> {
        Ok(ConnStats {
            messages: 0,
            bytes: 0,
            resyncs: 0,
            gaps: 0,
            seq_breaks: 0,
            closed: None,
            latency: Histogram::new_with_bounds(1_000, 60_000_000_000, 3)?,
        })
    }
}

/// The probe's result.
#[derive(Debug)]
pub struct Report {
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
    /// Sequence breaks not explained by a resync or gap (protocol violations).
    pub seq_breaks: u64,
    /// Connections closed by the server (code, count).
    pub closes: Vec<(Option<u16>, usize)>,
    /// Merged latency histogram, nanoseconds.
    pub latency: Histogram<u64>,
    /// Fewest and most messages one connection got.
    pub per_connection: (u64, u64),
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

async fn run_connection(
    config: LoadConfig,
    index: usize,
    start_measuring: Instant,
    stop: Instant,
) -> anyhow::Result<ConnStats> {
    let query = if config.json { "/ws?format=json" } else { "/ws" };
    let mut ws = client::connect(config.addr, query).await.context("connect")?;
    let channels = channels_for(&config, index);
    if config.idle {
        tokio::time::sleep_until(stop.into()).await;
        return ConnStats::empty();
    }
    client::send_json(
        &mut ws,
        &serde_json::json!({"op": "subscribe", "id": index, "channels": channels, "depth": 20}),
    )
    .await?;
    let mut stats = ConnStats::empty()?;
    // Last sequence per channel for the contiguous kinds (book deltas, trades).
    let mut last: HashMap<u32, u64> = HashMap::new();
    loop {
        let now = Instant::now();
        if now >= stop {
            break;
        }
        let frame = match tokio::time::timeout(stop - now, ws.read_frame()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(f)) => f,
        };
        let measuring = Instant::now() >= start_measuring;
        match frame.opcode {
            OpCode::Binary => {
                let received = now_ns();
                if measuring {
                    stats.bytes += frame.payload.len() as u64;
                }
                for msg in protocol::decode(&frame.payload) {
                    let msg = msg?;
                    match msg.msg_type {
                        MsgType::BookSnapshot | MsgType::TradesSnapshot => {
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
                        MsgType::BookDelta | MsgType::Trade => {
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
                        stats.latency.saturating_record(received.saturating_sub(msg.ts).max(1_000));
                    }
                }
            }
            OpCode::Text if measuring => {
                // JSON mode: count messages by their timestamps without a full parse.
                stats.bytes += frame.payload.len() as u64;
                let received = now_ns();
                let text = std::str::from_utf8(&frame.payload).unwrap_or_default();
                for part in text.split("\"ts\":").skip(1) {
                    let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(ts) = digits.parse::<u64>() {
                        stats.messages += 1;
                        stats.latency.saturating_record(received.saturating_sub(ts).max(1_000));
                    }
                }
            }
            OpCode::Close => {
                let p = &frame.payload;
                stats.closed =
                    Some(if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 });
                break;
            }
            _ => {}
        }
    }
    Ok(stats)
}

/// Runs the probe.
pub async fn run(config: LoadConfig) -> anyhow::Result<Report> {
    let begin = Instant::now();
    // Connecting many clients takes a moment: measure only after the warm-up.
    let start_measuring = begin + config.warmup;
    let stop = start_measuring + config.duration;
    let mut tasks = Vec::with_capacity(config.connections);
    for index in 0..config.connections {
        tasks.push(tokio::spawn(run_connection(config.clone(), index, start_measuring, stop)));
    }
    let mut latency = Histogram::new_with_bounds(1_000, 60_000_000_000, 3)?;
    let (mut messages, mut bytes, mut resyncs, mut gaps, mut breaks) = (0, 0, 0, 0, 0);
    let mut closes: HashMap<Option<u16>, usize> = HashMap::new();
    let (mut fewest, mut most, mut ok) = (u64::MAX, 0, 0);
    for t in tasks {
        match t.await? {
            Ok(s) => {
                ok += 1;
                messages += s.messages;
                bytes += s.bytes;
                resyncs += s.resyncs;
                gaps += s.gaps;
                breaks += s.seq_breaks;
                fewest = fewest.min(s.messages);
                most = most.max(s.messages);
                if let Some(code) = s.closed {
                    *closes.entry(Some(code)).or_default() += 1;
                }
                latency.add(&s.latency)?;
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
    Ok(Report {
        connections: ok,
        seconds: config.duration.as_secs_f64(),
        messages,
        bytes,
        resyncs,
        gaps,
        seq_breaks: breaks,
        closes,
        latency,
        per_connection: (if ok == 0 { 0 } else { fewest }, most),
    })
}

impl Report {
    /// A human table.
    pub fn table(&self) -> String {
        let q = |p: f64| self.latency.value_at_quantile(p) as f64 / 1e3;
        format!(
            "connections       {}\n\
             delivered msgs/s  {:.0}\n\
             delivered MB/s    {:.1}\n\
             latency us        p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}\n\
             per connection    min {} max {} messages\n\
             resyncs {}  gaps {}  sequence breaks {}  closes {:?}\n",
            self.connections,
            self.messages as f64 / self.seconds,
            self.bytes as f64 / self.seconds / 1e6,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.latency.max() as f64 / 1e3,
            self.per_connection.0,
            self.per_connection.1,
            self.resyncs,
            self.gaps,
            self.seq_breaks,
            self.closes,
        )
    }

    /// Machine-readable form.
    pub fn json(&self) -> serde_json::Value {
        let q = |p: f64| self.latency.value_at_quantile(p);
        serde_json::json!({
            "connections": self.connections,
            "seconds": self.seconds,
            "messages": self.messages,
            "messages_per_sec": self.messages as f64 / self.seconds,
            "bytes_per_sec": self.bytes as f64 / self.seconds,
            "latency_ns": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": self.latency.max() },
            "per_connection_messages": { "min": self.per_connection.0, "max": self.per_connection.1 },
            "resyncs": self.resyncs,
            "gaps": self.gaps,
            "sequence_breaks": self.seq_breaks,
            "closes": self.closes.iter().map(|(c, n)| serde_json::json!({"code": c, "count": n})).collect::<Vec<_>>(),
        })
    }
}
