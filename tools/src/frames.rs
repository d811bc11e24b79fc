//! The probe's WebSocket reader: server frames parsed in place from one buffer per
//! connection.
//!
//! The handshake and the subscribe message go through the fastwebsockets client; then the
//! probe takes the TCP stream back and reads frames itself. Per read syscall it gets every
//! complete frame in the buffer with no allocation and no copy (fastwebsockets' reader
//! grew and reallocated its buffer under load, and page faults for fresh memory were a
//! fifth of the probe's time at 1,000 connections). Server frames are never masked or
//! fragmented (docs/PROTOCOL.md); pings are answered with a pong.

use std::ops::Range;

use anyhow::{bail, Context};
use fastwebsockets::OpCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest frame accepted (the client's limit before this reader took over as well).
const FRAME_MAX: usize = 64 << 20;
/// A busy connection's buffer: many frames per read.
const BUFFER: usize = 256 << 10;
/// Every connection's buffer at first; it doubles up to [`BUFFER`] each time a read fills
/// it. Fresh memory is dear here: with a whole [`BUFFER`] each, 5,000 connections that
/// arrive and never read had the probe zeroing pages (`clear_page_erms`, 91 % of its
/// samples) on the cores the server and the measured connections share.
const BUFFER_START: usize = 8 << 10;

/// The connection under the WebSocket: TCP, or TLS over TCP.
#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.write_all(buf).await,
            Io::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }
}

/// A connection's read side after the handshake.
#[derive(Debug)]
pub struct FrameReader {
    stream: Io,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl FrameReader {
    /// Takes over a connected client (nothing of it may have been read yet).
    pub fn from_client(ws: tickgate_gateway::client::Client) -> anyhow::Result<FrameReader> {
        let upgraded = ws.into_inner().into_inner();
        type Tls = tokio_rustls::client::TlsStream<TcpStream>;
        let (stream, read_buf) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Io::Plain(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => match upgraded.downcast::<TokioIo<Tls>>() {
                Ok(parts) => (Io::Tls(Box::new(parts.io.into_inner())), parts.read_buf),
                Err(_) => bail!("the WebSocket is over neither TCP nor TLS over TCP"),
            },
        };
        let mut buf = vec![0u8; BUFFER_START.max(read_buf.len())];
        // Bytes the handshake read past the 101 response.
        buf[..read_buf.len()].copy_from_slice(&read_buf);
        Ok(FrameReader { stream, end: read_buf.len(), buf, start: 0 })
    }

    /// Waits for data and reads what has arrived; `false` at end of stream.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.end < self.buf.len() / 4 {
            // Little room left after a partial frame: move it to the front, and make room
            // for all of it when it is bigger than the buffer.
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            let need = self.pending_frame_len().unwrap_or(0);
            if need > self.buf.len() {
                self.buf.resize(need, 0);
            }
        }
        let room = self.buf.len() - self.end;
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        if n == room && self.buf.len() < BUFFER {
            // The kernel had more than the buffer held: a reader this busy gets a bigger one.
            self.buf.resize((self.buf.len() * 2).min(BUFFER), 0);
        }
        Ok(n > 0)
    }

    /// Total size of the frame at `start`, when its header is complete.
    fn pending_frame_len(&self) -> Option<usize> {
        parse_header(&self.buf[self.start..self.end]).ok().flatten().map(|(_, h, len)| h + len)
    }

    /// The next complete frame in the buffer: its opcode and where its payload is.
    pub fn next_frame(&mut self) -> anyhow::Result<Option<(OpCode, Range<usize>)>> {
        let Some((op, header, len)) = parse_header(&self.buf[self.start..self.end])? else {
            return Ok(None);
        };
        if self.end - self.start < header + len {
            return Ok(None);
        }
        let payload = self.start + header..self.start + header + len;
        self.start += header + len;
        Ok(Some((op, payload)))
    }

    /// A payload [`FrameReader::next_frame`] pointed at (valid until the next `fill`).
    pub fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Answers a ping (client frames are masked; the key may be any value).
    pub async fn pong(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let len = payload.len().min(125);
        let mut frame = Vec::with_capacity(6 + len);
        frame.extend_from_slice(&[0x80 | 0xA, 0x80 | len as u8, 0, 0, 0, 0]);
        frame.extend_from_slice(&payload[..len]);
        self.stream.write_all(&frame).await.context("pong")
    }
}

/// `(opcode, header bytes, payload bytes)` of the frame `bytes` starts with; `None` when
/// the header is not complete yet.
fn parse_header(bytes: &[u8]) -> anyhow::Result<Option<(OpCode, usize, usize)>> {
    let [b0, b1, ..] = *bytes else { return Ok(None) };
    if b0 & 0x70 != 0 {
        bail!("reserved bits set in a server frame");
    }
    let op = OpCode::try_from(b0 & 0x0F).map_err(|_| anyhow::anyhow!("unknown opcode"))?;
    if b0 & 0x80 == 0 || op == OpCode::Continuation {
        bail!("fragmented server frame (the server never fragments)");
    }
    if b1 & 0x80 != 0 {
        bail!("masked server frame");
    }
    let (header, len) = match b1 & 0x7F {
        126 => match bytes.get(2..4) {
            Some(b) => (4, usize::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (10, usize::try_from(u64::from_be_bytes(be)).unwrap_or(usize::MAX))
            }
            None => return Ok(None),
        },
        n => (2, usize::from(n)),
    };
    if len > FRAME_MAX {
        bail!("server frame of {len} bytes (limit {FRAME_MAX})");
    }
    Ok(Some((op, header, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | op];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65_536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn headers_of_every_length_form() {
        for len in [0usize, 125, 126, 65_535, 65_536, 300_000] {
            let f = frame(2, &vec![7; len]);
            let (op, header, n) = parse_header(&f).unwrap().unwrap();
            assert_eq!((op, header + n), (OpCode::Binary, f.len()));
            // Any prefix shorter than the header is "not yet".
            assert!(parse_header(&f[..header - 1]).unwrap().is_none());
        }
        assert!(parse_header(&[0x02, 0x01]).is_err(), "fragment");
        assert!(parse_header(&[0x82, 0x81]).is_err(), "masked");
        assert!(parse_header(&[0xC2, 0x00]).is_err(), "reserved bit");
        assert!(parse_header(&[0x8F, 0x00]).is_err(), "unknown opcode");
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(parse_header(&huge).is_err(), "over the limit");
    }

    proptest::proptest! {
        /// Fuzzed: any bytes give a header, "not yet", or an error; never a panic, and a
        /// length field can never ask for more than `FRAME_MAX`.
        #[test]
        fn any_bytes_parse_or_refuse(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16)) {
            if let Ok(Some((_, header, len))) = parse_header(&bytes) {
                proptest::prop_assert!(header <= 10 && len <= FRAME_MAX);
            }
        }
    }

    #[tokio::test]
    async fn reads_frames_split_anywhere_and_bigger_than_the_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big = vec![9u8; BUFFER * 2 + 17];
        let mut wire = Vec::new();
        for i in 0..2000u32 {
            wire.extend(frame(2, &i.to_le_bytes()));
        }
        wire.extend(frame(9, b"hi"));
        wire.extend(frame(2, &big));
        wire.extend(frame(1, b"{\"op\":\"pong\"}"));
        let sent = wire.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // Dribble it out in odd pieces so frames straddle reads.
            for piece in sent.chunks(4093) {
                s.write_all(piece).await.unwrap();
            }
            let mut pong = [0u8; 8];
            s.read_exact(&mut pong).await.unwrap();
            pong
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut r =
            FrameReader { stream: Io::Plain(stream), buf: vec![0; BUFFER_START], start: 0, end: 0 };
        let (mut binaries, mut seen_big, mut text) = (0u32, false, None);
        'read: while r.fill().await.unwrap() {
            while let Some((op, range)) = r.next_frame().unwrap() {
                match op {
                    OpCode::Binary if range.len() == 4 => {
                        assert_eq!(r.payload(range), binaries.to_le_bytes());
                        binaries += 1;
                    }
                    OpCode::Binary => seen_big = r.payload(range) == big.as_slice(),
                    OpCode::Ping => {
                        let p = r.payload(range).to_vec();
                        r.pong(&p).await.unwrap();
                    }
                    OpCode::Text => {
                        text = Some(String::from_utf8(r.payload(range).to_vec()).unwrap());
                        break 'read;
                    }
                    _ => panic!("unexpected {op:?}"),
                }
            }
        }
        assert_eq!(binaries, 2000);
        assert!(seen_big, "the frame bigger than the buffer arrived whole");
        assert_eq!(text.as_deref(), Some("{\"op\":\"pong\"}"));
        assert_eq!(server.await.unwrap(), [0x8A, 0x82, 0, 0, 0, 0, b'h', b'i']);
    }

    #[tokio::test]
    async fn a_reader_starts_small_and_grows_when_reads_fill_its_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut wire = Vec::new();
        for i in 0..8000u32 {
            wire.extend(frame(2, &i.to_le_bytes()));
        }
        let (written, wait) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&wire).await.unwrap();
            written.send(()).unwrap();
            // Held open until the reader is done.
            let mut end = [0u8; 1];
            let _ = s.read(&mut end).await;
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut r =
            FrameReader { stream: Io::Plain(stream), buf: vec![0; BUFFER_START], start: 0, end: 0 };
        // 48 KB waiting in the kernel before the first read: reads fill the buffer.
        wait.await.unwrap();
        let mut frames = 0u32;
        while frames < 8000 {
            assert!(r.fill().await.unwrap(), "the server holds the connection open");
            while let Some((op, range)) = r.next_frame().unwrap() {
                assert_eq!(op, OpCode::Binary);
                assert_eq!(r.payload(range), frames.to_le_bytes());
                frames += 1;
            }
        }
        assert!(r.buf.len() > BUFFER_START && r.buf.len() <= BUFFER, "grew to {}", r.buf.len());
        drop(r);
        server.await.unwrap();
    }
}
