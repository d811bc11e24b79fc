//! What is queued for one connection: its subscriptions' cursors, the frames waiting for
//! the socket (coalesced into one frame per write), TLS records, and read receipts.
//!
//! **Read receipts.** A socket full is not the only sign of a client that stopped reading:
//! the client's kernel takes whatever its receive buffer holds first, and Linux grows that
//! buffer to 32 MiB for a client that was reading fast. A thousand clients that freeze
//! then have the server copy gigabytes into their kernels, on the cores the healthy ones
//! need (measured: 66 % of the server's CPU in `copy_from_iter`, healthy p99 in seconds).
//! So the outbox queues pings carrying the byte position before them; the client's pong
//! (every client answers pings, in order, once it has read what came before) confirms it
//! read that far. Market data stops once the connection's **allowance** is written and
//! unconfirmed, and resumes with the next pong.
//!
//! **The allowance adapts** to what the client shows it needs. A new connection is on
//! trial: until its first receipt comes back it may have only a quarter of its start
//! ([`ALLOWANCE_TRIAL`]) unconfirmed. A client that connects and never reads, by fault or
//! by design, costs the server that much, not a reader's allowance (thousands arriving
//! and never reading filled 128 KiB each on the writer thread the healthy connections
//! share). The first receipt gives it [`ALLOWANCE_START`]; from then on a pong that
//! releases a hold (the client read what it was allowed and wants more) doubles it, up
//! to `unread_bytes_max`, if the [`AllowancePool`] all connections share still has the
//! growth, and so does a second in which the client answered more than
//! [`RECEIPTS_PER_SEC`] receipts a second (it reads a lot, and every receipt costs both
//! sides a wake-up); a second in which the connection was never held, never had more than
//! a quarter of it in flight when a receipt came back, and would have answered at most
//! half that many through half of it halves it, down to the start, and gives the growth
//! back.
//! A client far away that reads fast gets what its round trip needs within a few round
//! trips; one that reads a little promptly nearby keeps the start. What a client that
//! freezes costs is its allowance, copied once into its kernel by the writer thread the
//! healthy ones share: 1,000 clients freezing at once with 1 MiB each stopped every
//! healthy connection for a second (docs/BENCHMARKS.md); the pool bounds what growth adds
//! to that, however many connections grew. A receipt ping
//! goes out per half allowance queued, so a client reading along confirms as it goes; a
//! held connection always has one within half an allowance of its end. A client that
//! never answers falls behind the rings and is treated as any slow consumer.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;

use super::link::{Closing, Flushed, Tally};
use super::{Channel, ChunkCache};
use tickgate_engine::clock::Clock;

use crate::metrics::Metrics;
use crate::protocol::{self, bin, close, json, ChannelKind, Format, Opcode};

/// Frames handed to one `writev` at most: Linux's limit (`UIO_MAXIOV`). A busy connection's
/// visit can collect hundreds of frames; one system call for all of them costs far less
/// than one per 64.
const IOV_MAX: usize = 1024;

/// Payloads up to this many bytes are copied into the frame a connection's visit queues;
/// larger ones are shared. Sharing a chunk's frame takes and drops references on its
/// buffer, atomic operations on a cache line the hub and every writer touch; copying a few
/// hundred bytes costs less, and the socket then gets one buffer to copy instead of dozens.
/// At 10,000 subscribers, where a visit collects dozens of small chunks, copying took the
/// writer thread's user-space share from 35 to 32 % and the kernel's copying from many
/// small buffers (`_copy_from_iter`) from 8.4 to 1.7 % (`perf`, docs/BENCHMARKS.md).
const COPY_MAX: usize = 2048;

/// A connection's allowance of unconfirmed bytes once it has confirmed reading (see the
/// module's doc).
pub const ALLOWANCE_START: u64 = 128 * 1024;
/// A new connection's allowance until its first read receipt, by default: a quarter of
/// the start (see the module's doc).
pub const ALLOWANCE_TRIAL: u64 = ALLOWANCE_START / 4;
/// The smallest allowance `unread_bytes_max` may set (a receipt ping every 8 KiB).
pub const ALLOWANCE_MIN: u64 = 16 * 1024;
/// The growth of all connections' allowances beyond their start, shared: what thousands of
/// clients freezing at once can cost on top of their starting allowances. Under overload
/// every connection is held and released in turn and would grow to the most; the pool
/// keeps the total bounded (growth is refused when it is spent, and shrinking returns it).
#[derive(Debug)]
pub struct AllowancePool {
    used: std::sync::atomic::AtomicU64,
    max: u64,
}

impl AllowancePool {
    /// A pool of `max` bytes of growth.
    pub fn new(max: u64) -> AllowancePool {
        AllowancePool { used: std::sync::atomic::AtomicU64::new(0), max }
    }

    /// Takes `n` bytes if the pool has them.
    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken before.
    pub fn give(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(n)));
    }

    /// Bytes of growth in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Prometheus gauges: the growth lent out now and the pool's size. Growth in use near
    /// the size means connections held back that could not grow.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let help = crate::metrics::help;
        help(out, "tickgate_ws_unread_growth_bytes", "Allowance growth lent to connections now.");
        let _ = writeln!(
            out,
            "# TYPE tickgate_ws_unread_growth_bytes gauge\ntickgate_ws_unread_growth_bytes {}",
            self.used()
        );
        help(out, "tickgate_ws_unread_growth_max_bytes", "The growth pool's size.");
        let _ = writeln!(
            out,
            "# TYPE tickgate_ws_unread_growth_max_bytes gauge\ntickgate_ws_unread_growth_max_bytes {}",
            self.max
        );
    }
}

/// How long the allowance's use is watched before it may shrink or grow for the receipts'
/// rate: a connection that needed little of it for this long (never held, never more than
/// a quarter of it in flight when a receipt came back, and few receipts) has it halved.
const WATCH_NS: u64 = 1_000_000_000;
/// Read receipts a second a connection that keeps up should cost at most: one that
/// confirms more (a client reading a megabyte a second through a 128 KiB allowance answers
/// 16 pings a second) has its allowance doubled, if the pool has the growth, and keeps it
/// while it would answer more than half as many through half of it (a client reading
/// 768 KB a second through 256 KiB keeps it down to 384 KB a second). Every receipt is a
/// ping the client answers and a wake-up of the connection's task: at 20 M msgs/s over
/// 1,000 connections, 16,000 a second took 14 % of a core in the server's tasks alone,
/// on the cores the writer and the clients share. Not fewer: a small allowance is also
/// what holds the writer back from a client that falls behind on a busy machine, and 8
/// grew every connection at 10 M msgs/s (9 receipts a second each) for a worse p99
/// there (docs/BENCHMARKS.md).
pub const RECEIPTS_PER_SEC: u64 = 12;
/// Prefix of a read-receipt ping's payload (then the byte position, 8 bytes big-endian).
const RECEIPT_TAG: &[u8] = b"tgr";

/// One subscription: where the connection is in the channel's ring.
#[derive(Debug)]
pub struct Sub {
    /// The channel.
    pub channel: Arc<Channel>,
    /// Next chunk to send.
    pub cursor: u64,
    /// Snapshot depth the client asked for (book channels).
    pub depth: usize,
    /// Sequence of the last message sent (what a heartbeat or gap notice reports).
    pub last_seq: u64,
    /// When something was last sent on this subscription.
    pub last_sent: Instant,
}

/// How a connection used its allowance since `since` (clock ns): the most still in flight
/// when a receipt came back, whether it was held, and the position confirmed at `since`.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    since: u64,
    peak: u64,
    held: bool,
    confirmed: u64,
}

impl Usage {
    /// A watch from `now`, with `confirmed` read so far.
    fn from(now: u64, confirmed: u64) -> Usage {
        Usage { since: now, confirmed, ..Usage::default() }
    }

    /// Whether confirming `position` at `now` makes more than `per_sec` receipts a second
    /// since the watch began, for a receipt every half of `allowance`.
    fn receipts_above(&self, per_sec: u64, allowance: u64, position: u64, now: u64) -> bool {
        let read = u128::from(position.saturating_sub(self.confirmed));
        let elapsed = u128::from(now.saturating_sub(self.since).max(1));
        let per_receipt = u128::from((allowance / 2).max(1));
        read * 1_000_000_000 > u128::from(per_sec) * per_receipt * elapsed
    }
}

/// A part of the frame [`Outbox::seal`] queues.
#[derive(Debug)]
enum Part {
    /// Payloads copied back to back (the first run starts with room for the header).
    Run(Vec<u8>),
    /// A payload larger than [`COPY_MAX`], shared with its channel's frame.
    Shared(Bytes),
}

/// Room for the longest frame header, at the start of a drain's first run.
const HEADER_ROOM: usize = 10;

/// What a drain's first run is allocated with: enough for most visits.
const RUN_START: usize = 4096;

/// What is queued for a connection and where it is in each channel, under the link's lock.
#[derive(Debug)]
pub struct Outbox {
    /// Binary or JSON.
    pub format: Format,
    /// Subscriptions, at most `subscriptions_per_connection_max`.
    pub subs: Vec<Sub>,
    pub(super) out: VecDeque<Bytes>,
    /// Bytes queued and not yet written.
    pub out_bytes: usize,
    out_messages: u64,
    /// Frames queued (a frame may span several entries of `out`).
    out_frames: u64,
    /// Market-data frames collected by one `drain`, sent as one frame (see [`Outbox::seal`]):
    /// their payloads, copied or shared.
    staged: Vec<Part>,
    /// Payloads staged (JSON: not empty arrays), the staged frames' bytes (counted in
    /// `out_bytes` until sealed; none: nothing staged) and their messages.
    staged_payloads: usize,
    staged_bytes: usize,
    staged_messages: u64,
    gap_times: VecDeque<Instant>,
    gapped: bool,
    /// Set when the connection must end (by the task, or by the writer for a slow
    /// consumer or a failed socket); the writer keeps off from then on.
    pub closing: Option<Closing>,
    /// The socket is full: the task owns the writing until it drains.
    pub blocked: bool,
    /// With an `interval_ms`: the writer leaves the connection alone until then.
    pub(super) hold_until: Option<Instant>,
    /// The writer has this connection on its list of visits due later.
    pub(super) deferred: bool,
    /// Bytes ever queued.
    queued_total: u64,
    /// Position up to which the client confirmed reading (a receipt's pong).
    read_total: u64,
    /// Position of the newest receipt ping queued (0: none yet).
    last_receipt: u64,
    /// Unconfirmed bytes allowed now (see the module's doc).
    allowance: u64,
    /// How the allowance was used since the watch began.
    usage: Usage,
    /// The allowance at first, and the least it shrinks to (within `ALLOWANCE_MIN` and
    /// `unread_max`).
    unread_start: u64,
    /// The most the allowance grows to (`unread_bytes_max`).
    unread_max: u64,
    /// Bytes of snapshots queued beyond the allowance, lent by the pool (see
    /// [`Outbox::room_for_snapshots`]).
    snapshot_loan: u64,
    /// Market data is paused for want of a read receipt (counted once per pause).
    held: bool,
    /// Since when the connection is held (`None`: not held).
    held_since: Option<Instant>,
    /// Held this long, the connection is closed as a slow consumer.
    pub(super) held_max: Duration,
    /// Under TLS, the session: frames are encrypted into it and its records written out
    /// (per connection: every TLS session has its own keys, so a frame's encryption cannot
    /// be shared the way its plaintext is).
    pub(super) tls: Option<Box<rustls::ServerConnection>>,
}

impl Outbox {
    /// An empty outbox with the allowance `(start, most)`; `tls`: the connection's TLS
    /// session, if any.
    pub(super) fn new(
        format: Format,
        (unread_start, unread_max): (u64, u64),
        tls: Option<Box<rustls::ServerConnection>>,
    ) -> Outbox {
        let unread_start = unread_start.clamp(ALLOWANCE_MIN.min(unread_max), unread_max);
        Outbox {
            format,
            subs: Vec::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            out_messages: 0,
            out_frames: 0,
            staged: Vec::new(),
            staged_payloads: 0,
            staged_bytes: 0,
            staged_messages: 0,
            gap_times: VecDeque::new(),
            gapped: false,
            closing: None,
            blocked: false,
            hold_until: None,
            deferred: false,
            queued_total: 0,
            read_total: 0,
            last_receipt: 0,
            allowance: unread_start,
            unread_start,
            usage: Usage::default(),
            unread_max,
            snapshot_loan: 0,
            held: false,
            held_since: None,
            held_max: Duration::MAX,
            tls,
        }
    }

    /// The outbox of a new connection: on trial until its first read receipt, with a
    /// quarter of its start (at least `ALLOWANCE_MIN`, at most the start: an operator who
    /// sets a huge start to turn receipts off in effect turns the trial off with it).
    pub(super) fn on_trial(mut self) -> Outbox {
        self.allowance = (self.unread_start / 4).max(ALLOWANCE_MIN).min(self.unread_start);
        self
    }

    /// Queues a frame carrying `messages` market-data messages.
    pub fn push(&mut self, frame: Bytes, messages: u64) {
        self.out_frames += 1;
        self.queue(frame, messages);
    }

    fn queue(&mut self, bytes: Bytes, messages: u64) {
        self.queued_total += bytes.len() as u64;
        self.out_bytes += bytes.len();
        self.out_messages += messages;
        self.out.push_back(bytes);
    }

    /// Whether a subscription's oldest unsent chunk is half its channel's ring behind.
    pub(super) fn far_behind(&self) -> bool {
        self.subs
            .iter()
            .any(|s| s.channel.head().saturating_sub(s.cursor) >= s.channel.capacity() / 2)
    }

    /// Collects a market-data frame for the frame [`Outbox::seal`] makes: its payload is
    /// copied when it is at most [`COPY_MAX`] bytes, shared otherwise.
    fn stage(&mut self, frame: &Bytes, messages: u64) {
        // Counted as queued at once: `drain` stops at its budget on `out_bytes`.
        self.out_bytes += frame.len();
        self.staged_bytes += frame.len();
        self.staged_messages += messages;
        let json = self.format == Format::Json;
        let mut payload = &frame[protocol::frame_header_len(frame)..];
        if json {
            // `[a,b]` + `[c]` -> `[a,b,c]` (an empty array adds nothing).
            if payload.len() <= 2 {
                return;
            }
            payload = &payload[1..payload.len() - 1];
            let separator = if self.staged_payloads == 0 { b'[' } else { b',' };
            self.run().push(separator);
        }
        self.staged_payloads += 1;
        if payload.len() <= COPY_MAX {
            self.run().extend_from_slice(payload);
        } else {
            if self.staged.is_empty() {
                self.run(); // the first part holds the header's room
            }
            self.staged.push(Part::Shared(frame.slice_ref(payload)));
        }
    }

    /// The run copied payloads go to: the last part, or a new one.
    fn run(&mut self) -> &mut Vec<u8> {
        if !matches!(self.staged.last(), Some(Part::Run(_))) {
            let run = if self.staged.is_empty() {
                let mut run = Vec::with_capacity(RUN_START);
                run.resize(HEADER_ROOM, 0);
                run
            } else {
                Vec::new()
            };
            self.staged.push(Part::Run(run));
        }
        match self.staged.last_mut() {
            Some(Part::Run(run)) => run,
            _ => unreachable!("the last part is a run"),
        }
    }

    /// Queues what `drain` collected as **one** frame: the payloads of the channels' frames
    /// back to back under one header (binary: messages back to back, as each frame already
    /// holds them; JSON: one array of all the objects). Every channel's frame is encoded
    /// once and shared by all its subscribers; what a connection gets for itself is its
    /// header and copies of the small payloads (see [`COPY_MAX`]). A client that follows
    /// many channels receives one frame per write instead of one per channel and hub pass
    /// (a browser pays per frame: an event, a hand-over from its network process).
    fn seal(&mut self) {
        let messages = std::mem::take(&mut self.staged_messages);
        let staged_bytes = std::mem::take(&mut self.staged_bytes);
        self.out_bytes -= staged_bytes;
        if staged_bytes == 0 {
            return; // nothing staged (every frame has a header)
        }
        let json = self.format == Format::Json;
        if json {
            if self.staged_payloads == 0 {
                self.run().push(b'[');
            }
            self.run().push(b']');
        }
        self.staged_payloads = 0;
        let len = self
            .staged
            .iter()
            .map(|part| match part {
                Part::Run(run) => run.len(),
                Part::Shared(payload) => payload.len(),
            })
            .sum::<usize>()
            - HEADER_ROOM;
        let mut header = Vec::with_capacity(HEADER_ROOM);
        let opcode = if json { Opcode::Text } else { Opcode::Binary };
        protocol::frame_header(&mut header, opcode, len);
        let mut parts = std::mem::take(&mut self.staged);
        for (n, part) in parts.drain(..).enumerate() {
            let bytes = match part {
                Part::Run(mut run) if n == 0 => {
                    let at = HEADER_ROOM - header.len();
                    run[at..HEADER_ROOM].copy_from_slice(&header);
                    let mut bytes = Bytes::from(run);
                    bytes.advance(at);
                    bytes
                }
                Part::Run(run) if run.is_empty() => continue, // nothing to write
                Part::Run(run) => Bytes::from(run),
                Part::Shared(payload) => payload,
            };
            self.queue(bytes, 0);
        }
        // The parts' list keeps its allocation for the next drain.
        self.staged = parts;
        self.out_frames += 1;
        self.out_messages += messages;
    }

    /// Writes what is queued without waiting: vectored, handling partial writes.
    pub fn write(&mut self, stream: &TcpStream, tally: &mut Tally) -> Flushed {
        if self.tls.is_some() {
            return self.write_tls(stream, tally);
        }
        while !self.out.is_empty() {
            // Only as many slices as frames: a fixed array of IOV_MAX would be 16 KiB to
            // fill on every write.
            let iov: Vec<IoSlice<'_>> =
                self.out.iter().take(IOV_MAX).map(|frame| IoSlice::new(frame)).collect();
            let written = match stream.try_write_vectored(&iov) {
                Ok(0) => return Flushed::Failed,
                Ok(written) => written,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Flushed::Blocked,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Flushed::Failed,
            };
            tally.writes += 1;
            tally.bytes += written as u64;
            self.consume(written);
        }
        self.written_all(tally);
        Flushed::Done
    }

    /// Drops the first `written` queued bytes (they went out).
    fn consume(&mut self, mut written: usize) {
        self.out_bytes -= written;
        while written > 0 {
            let front = self.out.front_mut().expect("written bytes came from queued frames");
            if written >= front.len() {
                written -= front.len();
                self.out.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }

    fn written_all(&mut self, tally: &mut Tally) {
        tally.messages += std::mem::take(&mut self.out_messages);
        tally.frames += std::mem::take(&mut self.out_frames);
    }

    /// [`Outbox::write`] under TLS: the session's pending records first, then the queue
    /// encrypted into it (at most its buffer limit at a time) and written, until all is out
    /// or the socket is full.
    fn write_tls(&mut self, stream: &TcpStream, tally: &mut Tally) -> Flushed {
        loop {
            let Some(tls) = self.tls.as_deref_mut() else { return Flushed::Failed };
            while tls.wants_write() {
                match tls.write_tls(&mut crate::tls::SocketIo(stream)) {
                    Ok(0) => return Flushed::Failed,
                    Ok(n) => {
                        tally.writes += 1;
                        tally.bytes += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        return Flushed::Blocked
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return Flushed::Failed,
                }
            }
            if self.out.is_empty() {
                break;
            }
            let iov: Vec<IoSlice<'_>> =
                self.out.iter().take(IOV_MAX).map(|frame| IoSlice::new(frame)).collect();
            let taken = match std::io::Write::write_vectored(&mut tls.writer(), &iov) {
                // The session takes nothing only when its buffer is full, which the loop
                // above has just emptied: a session that cannot take more is broken.
                Ok(0) | Err(_) => return Flushed::Failed,
                Ok(n) => n,
            };
            drop(iov);
            self.consume(taken);
        }
        self.written_all(tally);
        Flushed::Done
    }

    /// Reads into `buf` what the client sent: plain bytes, or under TLS the plaintext of
    /// the records the socket has. `WouldBlock` when there is nothing yet; `Ok(0)` at the
    /// end of the stream.
    pub fn read(&mut self, stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else { return stream.try_read(buf) };
        loop {
            use std::io::Read as _;
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut crate::tls::SocketIo(stream))? == 0 {
                return Ok(0);
            }
            tls.process_new_packets().map_err(std::io::Error::other)?;
        }
    }

    /// Under TLS, plaintext already decrypted and not yet read (the socket will not say
    /// it is readable for it).
    pub fn take_decrypted(&mut self, into: &mut Vec<u8>) {
        let Some(tls) = self.tls.as_deref_mut() else { return };
        let mut chunk = [0u8; 4096];
        loop {
            use std::io::Read as _;
            match tls.reader().read(&mut chunk) {
                Ok(n) if n > 0 => into.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
    }

    /// Under TLS, queues the session's `close_notify` (written with what is queued).
    pub fn close_notify(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
        }
    }

    /// Collects every new chunk of every subscription, up to `budget` queued bytes and the
    /// connection's allowance. Returns whether it stopped there with more to collect.
    /// The writer's `cache` of the rings (`None`: read them).
    pub fn drain(
        &mut self,
        metrics: &Metrics,
        budget: usize,
        clock: &dyn Clock,
        cache: Option<&mut ChunkCache>,
    ) -> bool {
        let unconfirmed = self.queued_total - self.read_total;
        // Read receipts: nothing more for a client that has not confirmed reading enough.
        let more = if unconfirmed >= self.allowance {
            if !std::mem::replace(&mut self.held, true) {
                metrics.ws_receipt_holds_total.fetch_add(1, Ordering::Relaxed);
            }
            self.usage.held = true;
            // A client that stopped reading is never drained again, so it never falls
            // behind the rings: it is closed once it has been held as long as a full
            // socket may stall (its socket has room: the close frame can go out).
            let now = Instant::now();
            let since = *self.held_since.get_or_insert(now);
            if now.duration_since(since) >= self.held_max && self.closing.is_none() {
                metrics.ws_slow_closes_total.fetch_add(1, Ordering::Relaxed);
                self.closing = Some(Closing::Send(close::SLOW_CONSUMER, "slow consumer"));
            }
            false
        } else {
            self.held = false;
            self.held_since = None;
            // What is already queued counts in `out_bytes`; the allowance left is more room.
            let room = usize::try_from(self.allowance - unconfirmed).unwrap_or(usize::MAX);
            let budget = budget.min(self.out_bytes.saturating_add(room));
            let more = self.collect(metrics, budget, clock, cache);
            self.seal();
            more
        };
        // Held or not: a pong to the newest ping must be able to free the connection, so
        // there is always one within a receipt's worth of the end of what is queued.
        if self.queued_total - self.last_receipt >= self.receipt_every() {
            let ping = self.receipt_ping();
            self.push(ping, 0);
        }
        more
    }

    /// Bytes queued between two receipt pings: half the allowance (a pong to the newest
    /// ping of a held connection leaves at most half of it unconfirmed: released). Every
    /// receipt costs a wake-up of the connection's task and a write of the client: at
    /// 10 M msgs/s over 1,000 connections a quarter of a 64 KiB allowance doubled the
    /// p99.
    fn receipt_every(&self) -> u64 {
        self.allowance / 2
    }

    /// A ping asking for a read receipt of everything queued so far (the heartbeat ping
    /// is one too: a client may answer only the newest of several pings, RFC 6455 5.5.3).
    pub fn receipt_ping(&mut self) -> Bytes {
        let position = self.queued_total;
        let mut payload = RECEIPT_TAG.to_vec();
        payload.extend_from_slice(&position.to_be_bytes());
        self.last_receipt = position;
        protocol::frame(Opcode::Ping, &payload).into()
    }

    /// A pong arrived at `now` (clock ns): if it answers a receipt ping in flight, the
    /// client has read up to its position. Returns whether market data was held back for
    /// want of it. The allowance doubles, if `pool` has the growth, when the client needed
    /// more (it was held: it reads, and wants more) or answered more than
    /// [`RECEIPTS_PER_SEC`] receipts a second over a watch; a connection that needed
    /// little of it over a watch has it halved (and gives the growth back).
    pub fn pong(&mut self, payload: &[u8], now: u64, pool: &AllowancePool) -> bool {
        let Some(position) = self.receipt(payload) else { return false };
        let held = self.queued_total - self.read_total >= self.allowance;
        self.read_total = position;
        self.repay_snapshots(pool);
        let start = self.unread_start;
        if self.allowance < start {
            // The first receipt of a connection on trial: its client reads. The start is
            // every reader's, not growth from the pool.
            self.allowance = start;
            self.usage = Usage::from(now, position);
            return held;
        }
        // What was sent after the ping and is still unread when its pong comes back: what
        // the client needs in flight (a round trip's worth, and what waits for it).
        let in_flight = self.queued_total - position;
        let usage = &mut self.usage;
        usage.peak = usage.peak.max(in_flight);
        let watched = now.saturating_sub(usage.since);
        let busy = |per_sec, allowance| usage.receipts_above(per_sec, allowance, position, now);
        if held || (watched >= WATCH_NS && busy(RECEIPTS_PER_SEC, self.allowance)) {
            let grown = self.allowance.saturating_mul(2).min(self.unread_max);
            if pool.take(grown - self.allowance) {
                self.allowance = grown;
            }
            self.usage = Usage::from(now, position);
        } else if watched >= WATCH_NS {
            // Half as many receipts as would grow it, through half of it: a client whose
            // rate wavers about what grew it keeps it.
            let half = self.allowance / 2;
            let little = !usage.held && usage.peak <= self.allowance / 4;
            if little && !busy(RECEIPTS_PER_SEC / 2, half) {
                let shrunk = half.max(start);
                pool.give(self.allowance.saturating_sub(shrunk));
                self.allowance = shrunk;
            }
            self.usage = Usage::from(now, position);
        }
        held
    }

    /// The position a pong confirms, if it is a read receipt this connection asked for
    /// and has not had yet (else it teaches nothing: an old position, one never queued, a
    /// keep-alive's answer or a pong nobody asked for).
    pub fn receipt(&self, payload: &[u8]) -> Option<u64> {
        let position = payload
            .strip_prefix(RECEIPT_TAG)
            .and_then(|p| <[u8; 8]>::try_from(p).ok())
            .map(u64::from_be_bytes)?;
        (position <= self.queued_total && position > self.read_total).then_some(position)
    }

    /// What the pool lent this connection: its allowance's growth beyond the start, and
    /// snapshots beyond its allowance not yet read.
    pub(super) fn lent(&self) -> u64 {
        self.allowance.saturating_sub(self.unread_start) + self.snapshot_loan
    }

    /// Makes room for `bytes` of snapshots (the answer to a subscribe, queued whatever the
    /// market data's hold): what the allowance does not cover is lent by `pool`, at most
    /// `unread_max` per connection, and repaid as the client confirms reading it (or when
    /// the connection ends). `false`: not that much to lend (the caller refuses the
    /// request). Without it, a client that subscribed to every channel at full depth and
    /// never read held its snapshots, up to a megabyte in JSON, until it was closed; a
    /// few hundred such clients took hundreds of megabytes.
    pub fn room_for_snapshots(&mut self, bytes: u64, pool: &AllowancePool) -> bool {
        let unconfirmed = self.queued_total - self.read_total;
        let uncovered = (unconfirmed + bytes).saturating_sub(self.allowance.max(unconfirmed));
        let owed = self.snapshot_loan + uncovered;
        if uncovered == 0 {
            return true;
        }
        if owed > self.unread_max || !pool.take(uncovered) {
            return false;
        }
        self.snapshot_loan = owed;
        true
    }

    /// Gives back to `pool` the snapshot loan that what the client confirmed reading no
    /// longer needs.
    fn repay_snapshots(&mut self, pool: &AllowancePool) {
        let unconfirmed = self.queued_total - self.read_total;
        let owed = unconfirmed.saturating_sub(self.allowance).min(self.snapshot_loan);
        pool.give(self.snapshot_loan - owed);
        self.snapshot_loan = owed;
    }

    /// Since when market data is held back for want of a read receipt, if it is.
    pub fn held_since(&self) -> Option<Instant> {
        self.held_since.filter(|_| self.held)
    }

    /// Unconfirmed bytes the connection may have now.
    pub fn allowance(&self) -> u64 {
        self.allowance
    }

    fn collect(
        &mut self,
        metrics: &Metrics,
        budget: usize,
        clock: &dyn Clock,
        mut cache: Option<&mut ChunkCache>,
    ) -> bool {
        let json = self.format == Format::Json;
        let now = Instant::now();
        for n in 0..self.subs.len() {
            loop {
                if self.out_bytes >= budget {
                    return true;
                }
                let sub = &self.subs[n];
                let head = sub.channel.head();
                if sub.cursor >= head {
                    break;
                }
                let lapped = head - sub.cursor > sub.channel.capacity();
                let read;
                let chunk = match (lapped, cache.as_deref_mut()) {
                    (true, _) => None,
                    (false, Some(cache)) => cache.get(&sub.channel, sub.cursor),
                    (false, None) => {
                        read = sub.channel.chunk(sub.cursor);
                        read.as_ref()
                    }
                };
                let Some(chunk) = chunk else {
                    self.fell_behind(n, metrics, clock);
                    continue;
                };
                match chunk.frame(json) {
                    Some(frame) if !chunk.resync => {
                        let sub = &mut self.subs[n];
                        sub.cursor += 1;
                        sub.last_seq = chunk.last_seq;
                        sub.last_sent = now;
                        self.stage(frame, u64::from(chunk.messages));
                    }
                    // The hub rebuilt the channel, or this JSON client joined as JSON encoding
                    // switched on: start over from a snapshot.
                    _ => self.resync(n, metrics),
                }
            }
        }
        false
    }

    fn resync(&mut self, n: usize, metrics: &Metrics) {
        let json = self.format == Format::Json;
        let sub = &mut self.subs[n];
        let start = sub.channel.resync(json, sub.depth);
        sub.cursor = start.cursor;
        sub.last_seq = start.seq;
        sub.last_sent = Instant::now();
        metrics.ws_resyncs_total.fetch_add(1, Ordering::Relaxed);
        self.stage(&start.snapshot, 1);
    }

    /// The ring overran this subscription: conflate book/BBO, announce a gap on trades.
    fn fell_behind(&mut self, n: usize, metrics: &Metrics, clock: &dyn Clock) {
        if self.subs[n].channel.kind != ChannelKind::Trades {
            return self.resync(n, metrics);
        }
        let sub = &self.subs[n];
        let channel = Arc::clone(&sub.channel);
        let head = channel.head();
        // The oldest chunk still readable (a margin of one: the hub may be overwriting it).
        let mut index = head.saturating_sub(channel.capacity()).max(sub.cursor) + 1;
        let first = loop {
            match channel.chunk(index) {
                Some(c) if !c.resync => break Some(c.first_seq),
                _ if index + 1 >= head => break None,
                _ => index += 1,
            }
        };
        let from = sub.last_seq + 1;
        let (to, resume) = match first {
            Some(f) => (f - 1, index),
            // Nothing readable: resume at the head, missing everything up to what it follows.
            None => {
                let position = channel.position();
                (position.last_seq, position.head)
            }
        };
        let ts = clock.now().0;
        if to >= from {
            let frame = if self.format == Format::Json {
                let mut s = String::new();
                json::gap(&mut s, &channel.name, ts, from, to);
                json_array_frame(&s)
            } else {
                let mut b = Vec::new();
                bin::gap(&mut b, channel.id, ts, from, to);
                protocol::frame(Opcode::Binary, &b).into()
            };
            self.stage(&frame, 1);
        }
        metrics.ws_gaps_total.fetch_add(1, Ordering::Relaxed);
        let sub = &mut self.subs[n];
        sub.last_seq = to;
        sub.cursor = resume;
        self.gapped = true;
    }

    /// Counts one falling-behind episode (however many channels it hit) and closes a
    /// connection that keeps falling behind.
    pub(super) fn count_episode(&mut self, gaps_max: usize, window: Duration, metrics: &Metrics) {
        if !std::mem::take(&mut self.gapped) {
            return;
        }
        let now = Instant::now();
        self.gap_times.push_back(now);
        while self.gap_times.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.gap_times.pop_front();
        }
        if self.gap_times.len() > gaps_max && self.closing.is_none() {
            metrics.ws_slow_closes_total.fetch_add(1, Ordering::Relaxed);
            self.closing = Some(Closing::Send(close::SLOW_CONSUMER, "slow consumer"));
        }
    }

    /// A heartbeat for each caught-up subscription that has been quiet for `interval` at
    /// `now`; returns when to look again: when the next subscription will have been quiet
    /// that long (at most `interval` from now, so a subscription made meanwhile is not
    /// missed). Checking on a fixed tick instead let a channel that went quiet just after
    /// a tick wait almost two intervals.
    pub fn heartbeats(&mut self, now: Instant, interval: Duration, clock: &dyn Clock) -> Instant {
        let ts = clock.now().0;
        let mut next = now + interval;
        for n in 0..self.subs.len() {
            let sub = &self.subs[n];
            let due = sub.last_sent + interval;
            if due > now {
                next = next.min(due);
                continue;
            }
            if sub.cursor < sub.channel.head() {
                // Behind: its data goes out before any heartbeat would.
                continue;
            }
            let (id, seq) = (sub.channel.id, sub.last_seq);
            let frame = if self.format == Format::Json {
                let mut s = String::new();
                json::heartbeat(&mut s, &sub.channel.name, seq, ts);
                json_array_frame(&s)
            } else {
                let mut b = Vec::new();
                bin::heartbeat(&mut b, id, seq, ts);
                protocol::frame(Opcode::Binary, &b).into()
            };
            self.subs[n].last_sent = now;
            self.push(frame, 1);
        }
        next
    }
}

/// A JSON text frame holding one object in an array (the shape of every market-data
/// frame).
pub fn json_array_frame(object: &str) -> Bytes {
    let mut payload = String::with_capacity(object.len() + 2);
    payload.push('[');
    payload.push_str(object);
    payload.push(']');
    protocol::frame(Opcode::Text, payload.as_bytes()).into()
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
