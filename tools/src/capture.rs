//! Market-data captures: what a WebSocket client received, frame by frame, with receipt
//! times, in a versioned file (format in `docs/CAPTURE.md`); the recorder that writes one
//! from a running server, and the replayer that serves one back to WebSocket clients at
//! 1x, Nx or full speed.

use std::io::{BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tickgate_engine::binary::ByteReader;
use tickgate_gateway::client::{self, Message};
use tokio::net::TcpListener;

/// First bytes of a capture file.
pub const MAGIC: &[u8; 8] = b"TGCAP001";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
/// A text frame (control replies, JSON market data).
pub const KIND_TEXT: u8 = 1;
/// A binary frame (protocol v1 market-data messages).
pub const KIND_BINARY: u8 = 2;
/// The largest frame payload a capture holds: a declared length above it is damage, not a
/// frame the recorder could have written (its client takes messages up to 64 MiB).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// The longest plausible time between two frames of a capture (a live channel has a
/// heartbeat every few seconds): a longer jump, or one backwards, is a damaged time.
const FRAME_GAP_MAX_NS: u64 = 24 * 3600 * 1_000_000_000;

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFrame {
    /// Wall-clock receipt time, ns since the epoch.
    pub received_ns: u64,
    /// [`KIND_TEXT`] or [`KIND_BINARY`].
    pub kind: u8,
    /// The frame's payload.
    pub payload: Vec<u8>,
}

/// A capture read back: its header and frames.
#[derive(Debug)]
pub struct Capture {
    /// The JSON header: `version`, `started_ns`, `server`, `channels`, `instruments`.
    pub header: Value,
    /// Frames in receipt order.
    pub frames: Vec<CapturedFrame>,
    /// Bytes at the end that did not form a whole frame (a recorder stopped mid-write).
    pub torn_bytes: usize,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// What the header must hold (docs/CAPTURE.md) to be served back: `Err` says what is
/// missing or of the wrong type.
fn check_header(header: &Value) -> Result<(), String> {
    let Some(fields) = header.as_object() else { return Err("is not a JSON object".into()) };
    /// A key, whether its value is right, and what it should be.
    type Field = (&'static str, fn(&Value) -> bool, &'static str);
    let kinds: [Field; 5] = [
        ("version", |v| v.as_u64() == Some(u64::from(VERSION)), "the capture's version"),
        ("started_ns", Value::is_u64, "a time in ns"),
        ("server", Value::is_string, "a string"),
        (
            "channels",
            |v| v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            "an array of channel names",
        ),
        (
            "instruments",
            |v| v.as_array().is_some_and(|a| a.iter().all(Value::is_object)),
            "an array of instruments",
        ),
    ];
    for (key, is, what) in kinds {
        match fields.get(key) {
            None => return Err(format!("has no `{key}`")),
            Some(v) if !is(v) => return Err(format!("has a `{key}` that is not {what}")),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Writes a capture: header first, then frames.
pub struct CaptureWriter<W: Write> {
    out: W,
}

impl<W: Write> CaptureWriter<W> {
    /// Starts a capture with its JSON header.
    pub fn new(mut out: W, header: &Value) -> anyhow::Result<Self> {
        let header = header.to_string();
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&(header.len() as u32).to_le_bytes())?;
        out.write_all(header.as_bytes())?;
        Ok(CaptureWriter { out })
    }

    /// Appends a frame: `u32 length | u64 receipt ns | u8 kind | u32 CRC32C | payload`.
    pub fn frame(&mut self, f: &CapturedFrame) -> anyhow::Result<()> {
        self.out.write_all(&(f.payload.len() as u32).to_le_bytes())?;
        self.out.write_all(&f.received_ns.to_le_bytes())?;
        self.out.write_all(&[f.kind])?;
        self.out.write_all(&crc32c::crc32c(&f.payload).to_le_bytes())?;
        self.out.write_all(&f.payload)?;
        Ok(())
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a whole capture, checking magic, version and every frame: its checksum, its kind,
/// a length a recorder could have written, a receipt time after the previous one and not a
/// day later. An incomplete last frame is reported as torn; anything else is an error
/// naming the file and the frame's offset.
pub fn read(path: &Path) -> anyhow::Result<Capture> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    let mut r = ByteReader::new(&bytes);
    if bytes.len() < 16 || r.bytes(MAGIC.len())? != MAGIC {
        bail!("{}: not a tickgate capture", path.display());
    }
    let version = r.u32()?;
    if version != VERSION {
        bail!("{}: capture version {version}, this build reads {VERSION}", path.display());
    }
    let header_len = r.u32()? as usize;
    let file = path.display();
    let header_bytes = r.bytes(header_len).with_context(|| format!("{file}: header cut short"))?;
    let header: Value = serde_json::from_slice(header_bytes)
        .with_context(|| format!("{file}: the capture header is not JSON"))?;
    if let Err(what) = check_header(&header) {
        bail!("{file}: the capture header {what}");
    }
    let mut frames: Vec<CapturedFrame> = Vec::new();
    loop {
        let at = r.position();
        let declared = r.clone().u32().map_or(0, |l| l as usize);
        if declared > FRAME_BYTES_MAX {
            bail!("{file}: damaged frame at offset {at}: a length of {declared} bytes");
        }
        // A frame that does not fit in what is left is a torn tail (the recorder stopped).
        let Ok((frame, crc, next)) = read_frame(&r) else { break };
        if crc32c::crc32c(&frame.payload) != crc {
            bail!("{file}: frame checksum mismatch at offset {at}");
        }
        if frame.kind != KIND_TEXT && frame.kind != KIND_BINARY {
            bail!("{file}: damaged frame at offset {at}: unknown kind {}", frame.kind);
        }
        if let Some(previous) = frames.last().map(|f| f.received_ns) {
            if frame.received_ns < previous || frame.received_ns - previous > FRAME_GAP_MAX_NS {
                bail!(
                    "{file}: damaged frame at offset {at}: received at {} ns, the frame before \
                     at {previous} ns",
                    frame.received_ns
                );
            }
        }
        frames.push(frame);
        r = next;
    }
    Ok(Capture { header, frames, torn_bytes: r.remaining() })
}

/// The frame at `r`'s position, its recorded checksum, and a reader past it.
fn read_frame<'a>(
    r: &ByteReader<'a>,
) -> Result<(CapturedFrame, u32, ByteReader<'a>), tickgate_engine::binary::Truncated> {
    let mut r = r.clone();
    let len = r.u32()? as usize;
    let received_ns = r.u64()?;
    let kind = r.u8()?;
    let crc = r.u32()?;
    let payload = r.bytes(len)?.to_vec();
    Ok((CapturedFrame { received_ns, kind, payload }, crc, r))
}

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// Channels to subscribe to (e.g. `book.BTC-USD`).
    pub channels: Vec<String>,
    /// Stop after this long.
    pub duration: Duration,
    /// Stop after this many frames (0: no limit).
    pub frames_max: u64,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

/// Records a capture of `config.channels` into `out`; returns the frames written. The
/// instruments in the header come from the server's `GET /api/v1/instruments`.
///
/// Nothing is written until the server has accepted the subscription, and the capture goes
/// to `<out>.partial`, renamed to `out` at the end (on time, after `frames_max`, when the
/// server closes, or on Ctrl-C): an unreachable server or a refused channel leaves an
/// existing `out` as it was.
pub async fn record(config: &RecordConfig, out: &Path) -> anyhow::Result<u64> {
    let addr = config.addr;
    let instruments =
        instruments(addr).await.with_context(|| format!("GET /api/v1/instruments from {addr}"))?;
    let mut ws =
        client::connect(addr, "/ws").await.with_context(|| format!("connecting to {addr}"))?;
    // Full-depth book snapshots, so a capture can rebuild whole books.
    let subscribe = json!({"op": "subscribe", "id": 1, "channels": config.channels, "depth": 1000});
    client::send_json(&mut ws, &subscribe).await?;
    // The welcome, then the subscription's answer: both are part of the capture.
    let mut first = Vec::new();
    loop {
        let frame = match client::next(&mut ws).await.context("the server closed at once")? {
            Message::Text(t) => t,
            Message::Binary(_) => bail!("market data before the subscription's answer"),
            Message::Close(code, reason) => bail!("the server closed: {code:?} {reason}"),
        };
        let reply: Value = serde_json::from_str(&frame).unwrap_or(Value::Null);
        first.push(CapturedFrame {
            received_ns: now_ns(),
            kind: KIND_TEXT,
            payload: frame.into_bytes(),
        });
        match reply["op"].as_str() {
            Some("subscribed") => break,
            Some("error") => bail!(
                "the server refused the subscription: {} ({})",
                reply["code"].as_str().unwrap_or("?"),
                reply["message"].as_str().unwrap_or("")
            ),
            _ => {}
        }
    }
    let header = json!({
        "version": VERSION,
        "started_ns": first.first().map_or_else(now_ns, |f| f.received_ns),
        "server": addr.to_string(),
        "channels": config.channels,
        "instruments": instruments,
    });
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut writer = CaptureWriter::new(BufWriter::new(file), &header)?;
    for frame in &first {
        writer.frame(frame)?;
    }
    // A reader task, so stopping on time never cancels a read in the middle of a frame.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<CapturedFrame>(4096);
    let reader = tokio::spawn(async move {
        // A read error is the end of the stream (the server went away).
        while let Ok(m) = client::next(&mut ws).await {
            let received_ns = now_ns();
            let frame = match m {
                Message::Text(t) => {
                    CapturedFrame { received_ns, kind: KIND_TEXT, payload: t.into_bytes() }
                }
                Message::Binary(b) => CapturedFrame { received_ns, kind: KIND_BINARY, payload: b },
                Message::Close(..) => break,
            };
            if tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + config.duration;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let (mut frames, mut bytes) = (first.len() as u64, 0u64);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                bytes += frame.payload.len() as u64;
                writer.frame(&frame)?;
                frames += 1;
                if config.frames_max > 0 && frames >= config.frames_max {
                    break;
                }
            }
            _ = ticker.tick(), if config.progress => {
                eprint!("\rrecorded {frames} frames, {:.1} MB", bytes as f64 / 1e6);
            }
            () = tokio::time::sleep_until(deadline) => break,
            _ = &mut interrupted => break,
        }
    }
    reader.abort();
    writer.finish()?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    if config.progress {
        eprintln!("\rrecorded {frames} frames, {:.1} MB to {}", bytes as f64 / 1e6, out.display());
    }
    Ok(frames)
}

async fn instruments(addr: SocketAddr) -> anyhow::Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req =
        format!("GET /api/v1/instruments HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let body = text.split("\r\n\r\n").nth(1).context("no body")?;
    let instruments = serde_json::from_str::<Value>(body)?["instruments"].clone();
    if !instruments.is_array() {
        bail!("no instruments in the answer: {}", text.lines().next().unwrap_or_default());
    }
    Ok(instruments)
}

/// What a replay has done so far, for its progress bar and summary.
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// Clients that connected.
    pub clients: AtomicU64,
    /// Frames sent, over all clients.
    pub frames: AtomicU64,
    /// Payload bytes sent, over all clients.
    pub bytes: AtomicU64,
    /// Furthest frame any client has reached.
    pub furthest: AtomicU64,
    /// One line per client that got the whole capture.
    pub finished: std::sync::Mutex<Vec<String>>,
}

impl ReplayStats {
    /// Takes the summary lines of clients that finished since the last call.
    pub fn take_finished(&self) -> Vec<String> {
        std::mem::take(&mut *self.finished.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Serves `capture` on `listener`: `GET /api/v1/instruments` answers the capture's
/// instruments, and every WebSocket client that connects (any path) gets the captured
/// frames in order, paced by their receipt times at `speed` times the
/// recorded pace (`None`: as fast as it reads), then a normal close. Runs until the task
/// is dropped.
pub async fn serve(listener: TcpListener, capture: Arc<Capture>, speed: Option<f64>) {
    serve_counted(listener, capture, speed, Arc::default()).await;
}

/// [`serve`], counting into `stats`.
pub async fn serve_counted(
    listener: TcpListener,
    capture: Arc<Capture>,
    speed: Option<f64>,
    stats: Arc<ReplayStats>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let capture = Arc::clone(&capture);
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let capture = Arc::clone(&capture);
                let stats = Arc::clone(&stats);
                async move {
                    if req.uri().path() == "/api/v1/instruments" {
                        // What the recorder asks before it records: recording a replay keeps
                        // the capture's instruments.
                        let body = json!({ "instruments": capture.header["instruments"] });
                        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        return Ok::<_, std::convert::Infallible>(r);
                    }
                    let Ok((response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"websocket only")));
                        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
                        return Ok::<_, std::convert::Infallible>(r);
                    };
                    tokio::spawn(async move {
                        if let Ok(ws) = upgrade.await {
                            let client = stats.clients.fetch_add(1, Ordering::Relaxed) + 1;
                            let started = Instant::now();
                            let line = match play(ws, &capture, speed, &stats).await {
                                Ok((frames, bytes)) => {
                                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                                    format!(
                                        "client {client}: {frames} frames, {:.1} MB in {secs:.3} s \
                                         ({:.0} frames/s, {:.1} MB/s)",
                                        bytes as f64 / 1e6,
                                        frames as f64 / secs,
                                        bytes as f64 / 1e6 / secs
                                    )
                                }
                                Err(e) => format!("client {client}: ended early: {e}"),
                            };
                            stats.finished.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                        }
                    });
                    let (parts, _) = response.into_parts();
                    Ok(Response::from_parts(parts, Full::new(Bytes::new())))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Sends the capture to one client; the frames and payload bytes it sent.
async fn play(
    mut ws: fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
    capture: &Capture,
    speed: Option<f64>,
    stats: &ReplayStats,
) -> anyhow::Result<(u64, u64)> {
    let start = Instant::now();
    let first = capture.frames.first().map_or(0, |f| f.received_ns);
    let mut bytes = 0u64;
    for (i, f) in capture.frames.iter().enumerate() {
        if let Some(speed) = speed.filter(|s| *s > 0.0) {
            let due = start
                + Duration::from_nanos((f.received_ns.saturating_sub(first) as f64 / speed) as u64);
            tokio::time::sleep_until(due.into()).await;
        }
        let opcode = if f.kind == KIND_TEXT { OpCode::Text } else { OpCode::Binary };
        ws.write_frame(Frame::new(true, opcode, None, Payload::Borrowed(&f.payload))).await?;
        bytes += f.payload.len() as u64;
        stats.frames.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(f.payload.len() as u64, Ordering::Relaxed);
        stats.furthest.fetch_max(i as u64 + 1, Ordering::Relaxed);
    }
    ws.write_frame(Frame::close(1000, b"end of capture")).await?;
    // Read what the client sent (its requests, its close) before the socket goes: closing
    // with unread input makes the kernel reset the connection, and a reset can discard
    // frames the client has not read yet.
    let drain = async {
        while let Ok(frame) = ws.read_frame().await {
            if frame.opcode == OpCode::Close {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    Ok((capture.frames.len() as u64, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header without what a replay serves (or of the wrong type) is refused by name.
    #[test]
    fn a_header_must_hold_what_a_replay_serves() {
        let whole = json!({"version": VERSION, "started_ns": 1, "server": "127.0.0.1:8080",
            "channels": ["book.BTC-USD"], "instruments": [{"symbol": "BTC-USD"}]});
        assert_eq!(check_header(&whole), Ok(()));
        assert_eq!(check_header(&json!([1])), Err("is not a JSON object".into()));
        for key in ["version", "started_ns", "server", "channels", "instruments"] {
            let mut missing = whole.clone();
            missing.as_object_mut().map(|o| o.remove(key));
            assert_eq!(check_header(&missing), Err(format!("has no `{key}`")));
            let mut wrong = whole.clone();
            wrong[key] = json!({"a": "b"});
            assert!(check_header(&wrong).is_err_and(|e| e.contains(key)), "{key}");
        }
        let mut later = whole.clone();
        later["version"] = json!(VERSION + 1);
        assert!(check_header(&later).is_err());
    }
}
