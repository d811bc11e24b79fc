//! REST polling vs WebSocket push vs SSE, against a running server (with its feed on):
//!
//! 1. **One client, 50 updates**: how long each method takes to deliver 50 changes of one
//!    instrument's best bid/offer, how stale each change is on arrival (engine timestamp to
//!    receipt), and the bytes on the wire per update. Polling: `GET
//!    /api/v1/markets/SYM/book?depth=1` every `poll_interval` (a change is a new `seq`).
//!    WebSocket: the `bbo.SYM` channel (binary). SSE: a user's price alerts, set as
//!    repeating `crosses` alerts one tick apart around the mid.
//! 2. **N clients**: the request load N clients polling every `poll_interval` put on the
//!    server, against N WebSocket clients on the same channel: requests/s, updates/s
//!    delivered, and the server's CPU time (from `/proc/PID/stat` when given its pid).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fastwebsockets::OpCode;
use serde_json::{json, Value};
use tickgate_gateway::client;
use tickgate_gateway::protocol::{self, MsgType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Settings.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// Instrument.
    pub symbol: String,
    /// Updates to wait for in part 1.
    pub updates: usize,
    /// Poll period.
    pub poll_interval: Duration,
    /// Clients in part 2.
    pub clients: usize,
    /// Length of part 2.
    pub duration: Duration,
    /// Server pid, for its CPU time.
    pub server_pid: Option<u32>,
    /// A user for the SSE part (`name`, `password`).
    pub user: (String, String),
}

/// One method's result in part 1.
#[derive(Debug, Clone, Default)]
pub struct OneClient {
    /// Updates received.
    pub updates: usize,
    /// Time to receive them.
    pub elapsed: Duration,
    /// Median staleness on arrival, ms.
    pub staleness_p50_ms: f64,
    /// Worst staleness, ms.
    pub staleness_max_ms: f64,
    /// Bytes received (headers, frames, events).
    pub bytes: u64,
    /// Requests sent.
    pub requests: u64,
    /// Book changes that happened between two polls and were never seen (polling only).
    pub skipped: u64,
}

/// One method's result in part 2.
#[derive(Debug, Clone, Default)]
pub struct ManyClients {
    /// Requests per second the clients made.
    pub requests_per_sec: f64,
    /// Updates per second the clients received.
    pub updates_per_sec: f64,
    /// Server CPU seconds per wall second (1.0 = one core), if known.
    pub server_cpu: Option<f64>,
}

/// The whole comparison.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Part 1: polling, WebSocket, SSE.
    pub one: Vec<(&'static str, OneClient)>,
    /// Part 2: polling, WebSocket.
    pub many: Vec<(&'static str, ManyClients)>,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A keep-alive HTTP/1.1 connection for polling.
struct Poller {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Poller {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Poller> {
        Ok(Poller { stream: TcpStream::connect(addr).await?, buf: Vec::with_capacity(4096) })
    }

    /// One GET; returns (bytes received, JSON body).
    async fn get(&mut self, head: &str) -> anyhow::Result<(usize, Value)> {
        self.stream.write_all(head.as_bytes()).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("content-length")?;
            if self.buf.len() >= end + 4 + len {
                let body = serde_json::from_slice(&self.buf[end + 4..end + 4 + len])?;
                return Ok((end + 4 + len, body));
            }
        }
    }
}

async fn poll_one(c: &CompareConfig) -> anyhow::Result<OneClient> {
    let mut p = Poller::connect(c.addr).await?;
    let head = format!(
        "GET /api/v1/markets/{}/book?depth=1 HTTP/1.1\r\nHost: {}\r\n\r\n",
        c.symbol, c.addr
    );
    let start = Instant::now();
    let (mut last_seq, mut out, mut stale) = (None, OneClient::default(), Vec::new());
    let mut ticker = tokio::time::interval(c.poll_interval);
    while out.updates < c.updates && start.elapsed() < Duration::from_secs(120) {
        ticker.tick().await;
        let (bytes, body) = p.get(&head).await?;
        out.requests += 1;
        out.bytes += bytes as u64;
        let seq = body["seq"].as_u64();
        if seq.is_some() && seq != last_seq {
            if let (Some(prev), Some(now)) = (last_seq, seq) {
                out.skipped += now.saturating_sub(prev + 1);
            }
            if last_seq.is_some() {
                out.updates += 1;
                let ts = body["ts"].as_u64().unwrap_or(0);
                stale.push(now_ns().saturating_sub(ts) as f64 / 1e6);
            }
            last_seq = seq;
        }
    }
    out.elapsed = start.elapsed();
    out.staleness_max_ms = stale.iter().copied().fold(0.0, f64::max);
    out.staleness_p50_ms = median(&mut stale);
    Ok(out)
}

async fn ws_one(c: &CompareConfig) -> anyhow::Result<OneClient> {
    let mut ws = client::connect(c.addr, "/ws").await?;
    let channel = format!("bbo.{}", c.symbol);
    client::send_json(&mut ws, &json!({"op": "subscribe", "id": 1, "channels": [channel]})).await?;
    let start = Instant::now();
    let (mut out, mut stale, mut seen_snapshot) =
        (OneClient { requests: 1, ..OneClient::default() }, Vec::new(), false);
    while out.updates < c.updates {
        let frame = ws.read_frame().await?;
        // WebSocket framing: 2 bytes, 4 with a 16-bit length.
        out.bytes += frame.payload.len() as u64 + if frame.payload.len() < 126 { 2 } else { 4 };
        if frame.opcode != OpCode::Binary {
            continue;
        }
        let received = now_ns();
        for msg in protocol::decode(&frame.payload).map_while(Result::ok) {
            if msg.msg_type == MsgType::Bbo && out.updates < c.updates {
                if !seen_snapshot {
                    seen_snapshot = true; // the subscription's snapshot is not an update
                    continue;
                }
                out.updates += 1;
                stale.push(received.saturating_sub(msg.ts) as f64 / 1e6);
            }
        }
    }
    out.elapsed = start.elapsed();
    out.staleness_max_ms = stale.iter().copied().fold(0.0, f64::max);
    out.staleness_p50_ms = median(&mut stale);
    Ok(out)
}

async fn sse_one(c: &CompareConfig) -> anyhow::Result<OneClient> {
    let mut p = Poller::connect(c.addr).await?;
    let login = json!({"username": c.user.0, "password": c.user.1}).to_string();
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{login}",
        c.addr,
        login.len()
    );
    let (_, token) = p.get(&head).await?;
    let token = token["token"].as_str().context("login failed")?.to_string();
    let (_, book) = p
        .get(&format!(
            "GET /api/v1/markets/{}/book?depth=1 HTTP/1.1\r\nHost: {}\r\n\r\n",
            c.symbol, c.addr
        ))
        .await?;
    let bid = book["bids"][0][0].as_str().context("no bid")?;
    let ask = book["asks"][0][0].as_str().context("no ask")?;
    let decimals = bid.split('.').nth(1).map_or(0, str::len);
    let scale = 10f64.powi(decimals as i32);
    let mid = ((bid.parse::<f64>()? + ask.parse::<f64>()?) / 2.0 * scale).round() as i64;
    let mut alert_ids = Vec::new();
    for tick in -20..=20 {
        let price = format!("{:.*}", decimals, (mid + tick) as f64 / scale);
        let body =
            json!({"symbol": c.symbol, "condition": "crosses", "price": price, "repeat": true})
                .to_string();
        let head = format!(
            "POST /api/v1/alerts HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            c.addr,
            body.len()
        );
        let (_, alert) = p.get(&head).await?;
        alert_ids.extend(alert["id"].as_u64());
    }
    let mut s = TcpStream::connect(c.addr).await?;
    let head = format!(
        "GET /api/v1/alerts/stream HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        c.addr
    );
    s.write_all(head.as_bytes()).await?;
    let start = Instant::now();
    let (mut out, mut stale) = (OneClient { requests: 1, ..OneClient::default() }, Vec::new());
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    while out.updates < c.updates && start.elapsed() < Duration::from_secs(120) {
        let n = tokio::time::timeout(Duration::from_secs(120), s.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "stream ended");
        out.bytes += n as u64;
        let received = now_ns();
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 2);
            if block.contains("event: price") && out.updates < c.updates {
                if let Some(ts) = block
                    .split("\"ts\":")
                    .nth(1)
                    .and_then(|t| t.split(['}', ',']).next()?.parse::<u64>().ok())
                {
                    out.updates += 1;
                    stale.push(received.saturating_sub(ts) as f64 / 1e6);
                }
            }
        }
    }
    out.elapsed = start.elapsed();
    out.staleness_max_ms = stale.iter().copied().fold(0.0, f64::max);
    out.staleness_p50_ms = median(&mut stale);
    for id in alert_ids {
        let head = format!(
            "DELETE /api/v1/alerts/{id} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
            c.addr
        );
        let _ = p.get(&head).await;
    }
    Ok(out)
}

/// CPU seconds (user + system) the process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

async fn many(c: &CompareConfig, ws: bool) -> anyhow::Result<ManyClients> {
    let cpu_before = c.server_pid.and_then(cpu_seconds);
    let start = Instant::now();
    let end = start + c.duration;
    let mut tasks = Vec::with_capacity(c.clients);
    for i in 0..c.clients {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            // Spread the clients' first polls over one interval.
            tokio::time::sleep(c.poll_interval.mul_f64(i as f64 / c.clients as f64)).await;
            let (mut requests, mut updates) = (0u64, 0u64);
            if ws {
                let Ok(mut w) = client::connect(c.addr, "/ws").await else { return (0, 0) };
                let sub =
                    json!({"op": "subscribe", "id": 1, "channels": [format!("bbo.{}", c.symbol)]});
                if client::send_json(&mut w, &sub).await.is_err() {
                    return (0, 0);
                }
                requests += 1;
                while Instant::now() < end {
                    let left = end.saturating_duration_since(Instant::now());
                    let Ok(Ok(frame)) = tokio::time::timeout(left, w.read_frame()).await else {
                        break;
                    };
                    if frame.opcode == OpCode::Binary {
                        updates += protocol::decode(&frame.payload)
                            .map_while(Result::ok)
                            .filter(|m| m.msg_type == MsgType::Bbo)
                            .count() as u64;
                    }
                }
            } else {
                let Ok(mut p) = Poller::connect(c.addr).await else { return (0, 0) };
                let head = format!(
                    "GET /api/v1/markets/{}/book?depth=1 HTTP/1.1\r\nHost: {}\r\n\r\n",
                    c.symbol, c.addr
                );
                let mut ticker = tokio::time::interval(c.poll_interval);
                let mut last = None;
                while Instant::now() < end {
                    ticker.tick().await;
                    let Ok((_, body)) = p.get(&head).await else { break };
                    requests += 1;
                    let seq = body["seq"].as_u64();
                    if seq != last {
                        updates += 1;
                        last = seq;
                    }
                }
            }
            (requests, updates)
        }));
    }
    let (mut requests, mut updates) = (0u64, 0u64);
    for t in tasks {
        let (r, u) = t.await?;
        requests += r;
        updates += u;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = match (cpu_before, c.server_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some((b - a) / secs),
        _ => None,
    };
    Ok(ManyClients {
        requests_per_sec: requests as f64 / secs,
        updates_per_sec: updates as f64 / secs,
        server_cpu: cpu,
    })
}

/// Runs both parts.
pub async fn run(c: &CompareConfig) -> anyhow::Result<Comparison> {
    let mut out = Comparison::default();
    out.one.push(("REST polling", poll_one(c).await?));
    out.one.push(("WebSocket push", ws_one(c).await?));
    out.one.push(("SSE alerts", sse_one(c).await?));
    out.many.push(("REST polling", many(c, false).await?));
    out.many.push(("WebSocket push", many(c, true).await?));
    Ok(out)
}

impl Comparison {
    /// The tables.
    pub fn table(&self, c: &CompareConfig) -> String {
        let mut s = format!(
            "one client, {} updates of {} ({} ms polling)\n{:<16} {:>10} {:>14} {:>14} {:>10} {:>12} {:>10}\n",
            c.updates,
            c.symbol,
            c.poll_interval.as_millis(),
            "method",
            "time s",
            "stale p50 ms",
            "stale max ms",
            "requests",
            "bytes/update",
            "skipped"
        );
        for (name, r) in &self.one {
            s += &format!(
                "{name:<16} {:>10.2} {:>14.2} {:>14.2} {:>10} {:>12.0} {:>10}\n",
                r.elapsed.as_secs_f64(),
                r.staleness_p50_ms,
                r.staleness_max_ms,
                r.requests,
                r.bytes as f64 / r.updates.max(1) as f64,
                r.skipped
            );
        }
        s += "(staleness: receipt time minus the engine time of the change shown; skipped: book\n\
              changes that happened between two polls and were never seen)\n";
        s += &format!(
            "\n{} clients for {:.0} s\n{:<16} {:>12} {:>12} {:>16}\n",
            c.clients,
            c.duration.as_secs_f64(),
            "method",
            "requests/s",
            "updates/s",
            "server CPU cores"
        );
        for (name, r) in &self.many {
            let cpu = r.server_cpu.map_or("-".to_string(), |v| format!("{v:.2}"));
            s += &format!(
                "{name:<16} {:>12.0} {:>12.0} {:>16}\n",
                r.requests_per_sec, r.updates_per_sec, cpu
            );
        }
        s
    }
}
