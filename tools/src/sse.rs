//! The SSE probe: N alert streams against a running server, optionally with repeating
//! `crosses` alerts per user around the current mid price (so the live market fires them),
//! and
//! the delivery latency of `price` events from the engine timestamp of the triggering
//! trade or BBO change to receipt. Each stream is a raw HTTP/1.1 client that only looks
//! for `event: price` blocks and the `"ts":` field in them.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Probe settings.
#[derive(Clone, Debug)]
pub struct SseConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// Streams to open (spread round robin over the users).
    pub streams: usize,
    /// `(username, password)` of each user the streams log in as.
    pub users: Vec<(String, String)>,
    /// Symbol of the repeating `crosses` alert set per user; `None`: idle streams.
    pub alert_symbol: Option<String>,
    /// Alerts on each side of the mid (0: one alert at the mid).
    pub alert_spread: i64,
    /// Ticks between two alerts.
    pub alert_step: i64,
    /// Offset user `i`'s alerts by `i - users/2` ticks, so users' alerts sit at different
    /// prices and a price move fires a few users' alerts rather than everyone's.
    pub stagger: bool,
    /// Measured time.
    pub duration: Duration,
    /// Time before measuring starts (all streams are open by then).
    pub warmup: Duration,
}

/// What the streams saw.
#[derive(Debug)]
pub struct SseReport {
    /// Streams that got a `200` and stayed open to the end.
    pub open: usize,
    /// Streams that failed to open or ended early.
    pub failed: usize,
    /// `price` events received while measuring.
    pub events: u64,
    /// Latency, engine timestamp to receipt, nanoseconds.
    pub latency: Histogram<u64>,
    /// Measured seconds.
    pub seconds: f64,
}

impl SseReport {
    /// A table for the terminal.
    pub fn table(&self) -> String {
        let h = &self.latency;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        format!(
            "streams open {} (failed {})\nprice events {} ({:.0}/s)\nlatency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
            self.open,
            self.failed,
            self.events,
            self.events as f64 / self.seconds.max(1e-9),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1e6
        )
    }

    /// The same as JSON.
    pub fn json(&self) -> Value {
        let h = &self.latency;
        json!({
            "streams_open": self.open,
            "streams_failed": self.failed,
            "price_events": self.events,
            "seconds": self.seconds,
            "latency_ns": {
                "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
                "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999),
                "max": h.max(), "count": h.len(),
            },
        })
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// One HTTP/1.1 request with `Connection: close`; status and JSON body.
async fn http(addr: SocketAddr, head: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    let request = format!(
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).context("status line")?;
    let json = text.split("\r\n\r\n").nth(1).and_then(|b| serde_json::from_str(b).ok());
    Ok((status, json.unwrap_or(Value::Null)))
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> anyhow::Result<String> {
    let body = json!({"username": user, "password": password}).to_string();
    let (status, v) = http(addr, "POST /api/v1/auth/login HTTP/1.1", &body).await?;
    if status != 200 {
        bail!("login of {user} failed: {status} {v}");
    }
    Ok(v["token"].as_str().context("token")?.to_string())
}

/// Sets repeating `crosses` alerts at the current mid of `symbol` and at 1 to
/// `spread` ticks on either side of it (more alerts, fired more often).
async fn set_alerts(
    addr: SocketAddr,
    token: &str,
    symbol: &str,
    spread: i64,
    step: i64,
    offset: i64,
) -> anyhow::Result<String> {
    let (_, book) =
        http(addr, &format!("GET /api/v1/markets/{symbol}/book?depth=1 HTTP/1.1"), "").await?;
    let bid = book["bids"][0][0].as_str().context("the book has no bid yet")?;
    let ask = book["asks"][0][0].as_str().context("the book has no ask yet")?;
    let decimals = bid.split('.').nth(1).map_or(0, str::len);
    let scale = 10f64.powi(decimals as i32);
    let (bid, ask): (f64, f64) = (bid.parse()?, ask.parse()?);
    let mid = ((bid + ask) / 2.0 * scale).round() as i64 + offset;
    let head = format!("POST /api/v1/alerts HTTP/1.1\r\nAuthorization: Bearer {token}");
    for tick in -spread..=spread {
        let price = format!("{:.*}", decimals, (mid + tick * step) as f64 / scale);
        let body =
            json!({"symbol": symbol, "condition": "crosses", "price": price, "repeat": true});
        let (status, v) = http(addr, &head, &body.to_string()).await?;
        if status != 201 {
            bail!("alert not set: {status} {v}");
        }
    }
    Ok(format!("{:.*} +/- {spread} x {step} ticks", decimals, mid as f64 / scale))
}

/// Reads one stream until `end`; returns (stayed open, events, histogram).
async fn stream(
    addr: SocketAddr,
    token: String,
    measure_from: Instant,
    end: Instant,
) -> (bool, u64, Histogram<u64>) {
    let mut h = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("bounds");
    let Ok(mut s) = TcpStream::connect(addr).await else { return (false, 0, h) };
    let request = format!(
        "GET /api/v1/alerts/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    if s.write_all(request.as_bytes()).await.is_err() {
        return (false, 0, h);
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut events = 0u64;
    let mut ok = false;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (ok, events, h);
        }
        let n = match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return (ok, events, h),
            Ok(Ok(0)) | Ok(Err(_)) => return (false, events, h),
            Ok(Ok(n)) => n,
        };
        let received = now_ns();
        buf.extend_from_slice(&chunk[..n]);
        if !ok {
            if !buf.starts_with(b"HTTP/1.1 200") {
                if buf.len() >= 12 {
                    return (false, 0, h);
                }
                continue;
            }
            ok = true;
        }
        // Blocks end with a blank line; only `price` events are timed. Chunk-size lines of
        // the chunked encoding sit between blocks and are skipped by the search.
        while let Some(end_at) = find(&buf, b"\n\n") {
            let block = &buf[..end_at];
            if find(block, b"event: price").is_some() && Instant::now() >= measure_from {
                if let Some(ts) = field_u64(block, b"\"ts\":") {
                    h.saturating_record(received.saturating_sub(ts).max(1_000));
                    events += 1;
                }
            }
            buf.drain(..end_at + 2);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn field_u64(block: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(block, key)? + key.len();
    let digits: Vec<u8> = block[at..].iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Runs the probe.
pub async fn run(config: SseConfig) -> anyhow::Result<SseReport> {
    let mut tokens = Vec::new();
    let half = config.users.len() as i64 / 2;
    for (user, password) in &config.users {
        let token = login(config.addr, user, password).await?;
        if let Some(symbol) = &config.alert_symbol {
            let offset = if config.stagger { tokens.len() as i64 - half } else { 0 };
            let (spread, step) = (config.alert_spread, config.alert_step);
            let at = set_alerts(config.addr, &token, symbol, spread, step, offset).await?;
            if tokens.len() < 3 {
                eprintln!("{user}: repeating crosses alerts on {symbol} at {at}");
            }
        }
        tokens.push(token);
    }
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let mut tasks = Vec::with_capacity(config.streams);
    for i in 0..config.streams {
        let token = tokens[i % tokens.len()].clone();
        tasks.push(tokio::spawn(stream(config.addr, token, measure_from, end)));
        if i % 500 == 499 {
            // Do not flood the listen backlog.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut report = SseReport {
        open: 0,
        failed: 0,
        events: 0,
        latency: Histogram::new_with_bounds(1_000, 60_000_000_000, 3)?,
        seconds: config.duration.as_secs_f64(),
    };
    for t in tasks {
        let (ok, events, h) = t.await?;
        if ok {
            report.open += 1;
        } else {
            report.failed += 1;
        }
        report.events += events;
        report.latency.add(&h)?;
    }
    Ok(report)
}
