//! hyper's own answers to HTTP/1 requests it cannot parse, given the API's JSON error body.
//!
//! hyper answers a request head it cannot parse (a bad request line or header, a request
//! target or head over its limits) itself, before any handler runs: a status line,
//! `connection: close`, `content-length: 0` and `date`, nothing else. Every other refusal
//! of the API carries `{"error": {"code", "message"}}`; [`JsonErrors`] sits between hyper
//! and the socket and gives those answers the same body. It recognises them by their shape
//! (a 4xx/5xx head with no header but those three, and no body): every answer of the API's
//! handlers has a `content-type`, so none of them looks like that.
//!
//! It also closes lingering: hyper answers a request whose body it will not read (`413`,
//! `408`, a refusal before the body) and closes the connection, and a client still sending
//! that body then gets a reset, which many (curl among them) report as a send failure
//! without the answer. After hyper's close (our FIN), [`JsonErrors`] reads and drops what
//! the client still sends, until it closes too, for at most [`LINGER_TIME`] and
//! [`LINGER_BYTES`] (what a proxy's lingering close does).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{ApiError, ErrorCode};

/// A connection's socket as hyper sees it: reads pass through, and so do writes, but for
/// hyper's own error answers, which are written with a JSON body instead.
pub struct JsonErrors<T> {
    inner: T,
    /// An error answer being written in place of hyper's.
    rewrite: Option<Rewrite>,
    closing: Closing,
}

/// How long a closed connection keeps reading what its client still sends, at most.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much a closed connection reads (and drops) at most.
pub const LINGER_BYTES: usize = 16 << 20;

enum Closing {
    Open,
    /// Our side is shut: reading the client's rest, until this time or these bytes run out.
    Lingering {
        until: Pin<Box<tokio::time::Sleep>>,
        left: usize,
    },
    Closed,
}

struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    /// What hyper is told was written once all of `bytes` is: its own answer's length.
    claimed: usize,
}

impl<T> JsonErrors<T> {
    /// hyper's view of `inner`.
    pub fn new(inner: T) -> Self {
        JsonErrors { inner, rewrite: None, closing: Closing::Open }
    }

    /// The socket (after an upgrade: nothing of hyper's is left to write then).
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes the rewritten answer, all of it, before telling hyper its own was written.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let Some(r) = self.rewrite.as_mut() else { return Poll::Ready(Ok(0)) };
            if r.written == r.bytes.len() {
                let claimed = r.claimed;
                self.rewrite = None;
                return Poll::Ready(Ok(claimed));
            }
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &r.bytes[r.written..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => r.written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// hyper's answer to a head it could not parse, with a JSON body, or `None` for anything
/// else (every answer of the API's handlers, every HTTP/2 frame).
fn json_answer(buf: &[u8]) -> Option<Vec<u8>> {
    // Cheap first: a whole head, short, and nothing after it.
    if buf.len() > 512 || !buf.starts_with(b"HTTP/1.") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = std::str::from_utf8(&buf[..buf.len() - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.get(9..12)?.parse().ok()?;
    if !(400..600).contains(&status) || status_line.get(12..13) != Some(" ") {
        return None;
    }
    let mut kept = Vec::new();
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "connection" | "date" => kept.push(line),
            "content-length" if value.trim() == "0" => empty = true,
            _ => return None,
        }
    }
    if !empty {
        return None;
    }
    let (code, message) = match status {
        431 => (
            ErrorCode::HeadTooLarge,
            "the request head has more header lines, or longer ones, than this server takes",
        ),
        414 => (ErrorCode::UriTooLong, "the request target is longer than this server takes"),
        _ => (
            ErrorCode::Malformed,
            "not an HTTP/1.1 request this server can read (its request line or a header line)",
        ),
    };
    let body = ApiError::new(code, message).body();
    let mut answer = format!("{status_line}\r\ncontent-type: application/json\r\n");
    for line in kept {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    Some(answer.into_bytes())
}

/// hyper's error answer at the end of what it writes, where it starts and the answer to
/// write instead. On a kept-alive connection it may follow an earlier answer in the same
/// write.
fn json_answer_at_end(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let from = buf.len().saturating_sub(512);
    (from..buf.len())
        .filter(|&start| buf[start..].starts_with(b"HTTP/1."))
        .find_map(|start| json_answer(&buf[start..]).map(|answer| (start, answer)))
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none() {
            match json_answer_at_end(buf) {
                Some((0, bytes)) => {
                    this.rewrite = Some(Rewrite { bytes, written: 0, claimed: buf.len() });
                }
                // What comes before it first (an earlier answer on a kept-alive connection).
                Some((start, _)) => return Pin::new(&mut this.inner).poll_write(cx, &buf[..start]),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.poll_rewrite(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none() {
            let Some(last) = bufs.iter().rposition(|b| !b.is_empty()) else {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            };
            match json_answer_at_end(&bufs[last]) {
                Some((0, bytes)) if bufs[..last].iter().all(|b| b.is_empty()) => {
                    this.rewrite = Some(Rewrite { bytes, written: 0, claimed: bufs[last].len() });
                }
                // What comes before it first (an earlier answer on a kept-alive connection).
                Some((start, _)) => {
                    let mut before = bufs[..last].to_vec();
                    before.push(io::IoSlice::new(&bufs[last][..start]));
                    return Pin::new(&mut this.inner).poll_write_vectored(cx, &before);
                }
                None => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        this.poll_rewrite(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// Shuts our side, then lingers (see the module's documentation).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.closing {
                Closing::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    let until = Box::pin(tokio::time::sleep(LINGER_TIME));
                    this.closing = Closing::Lingering { until, left: LINGER_BYTES };
                }
                Closing::Lingering { until, left } => {
                    if *left == 0 || until.as_mut().poll(cx).is_ready() {
                        this.closing = Closing::Closed;
                        continue;
                    }
                    let mut sink = [0u8; 16 * 1024];
                    let mut read = ReadBuf::new(&mut sink);
                    match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read)) {
                        Ok(()) if !read.filled().is_empty() => {
                            *left = left.saturating_sub(read.filled().len());
                        }
                        // The client closed too (or the connection broke): done.
                        _ => this.closing = Closing::Closed,
                    }
                }
                Closing::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 18:57:24 GMT\r\n\r\n";

    fn split(answer: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(answer).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse::<usize>().ok())
            .expect("a content-length");
        assert_eq!(length, body.len(), "{text}");
        (head.to_string(), serde_json::from_str(body).expect("a JSON body"))
    }

    #[test]
    fn hypers_error_answers_get_the_apis_body() {
        let (head, body) = split(&json_answer(HYPER_400).expect("rewritten"));
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("connection: close") && head.contains("date: Mon"), "{head}");
        assert_eq!(body["error"]["code"], "malformed");
        let too_many = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let (head, body) = split(&json_answer(too_many).expect("rewritten"));
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert_eq!(body["error"]["code"], "head_too_large");
        let long = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(
            split(&json_answer(long).expect("rewritten")).1["error"]["code"],
            "uri_too_long"
        );
    }

    #[test]
    fn the_apis_own_answers_pass_unchanged() {
        let ours = ApiError::new(ErrorCode::Malformed, "x").raw_http1("");
        assert!(json_answer(&ours).is_none());
        let cases: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ndate: x\r\n\r\n",
            b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",
        ];
        for case in cases {
            assert!(json_answer(case).is_none(), "{}", String::from_utf8_lossy(case));
        }
    }

    /// A socket that takes at most a few bytes per write, and says "not now" in between.
    struct Trickle {
        taken: Vec<u8>,
        ready: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(())) // the peer has closed
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.ready = !this.ready;
            if !this.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(7);
            this.taken.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_rewrite_is_written_whole_through_short_writes() {
        let mut io = JsonErrors::new(Trickle { taken: Vec::new(), ready: false });
        // hyper sees its own answer's length written, once all of the rewrite is.
        let n = io.write(HYPER_400).await.expect("written");
        assert_eq!(n, HYPER_400.len());
        assert_eq!(split(&io.inner.taken).1["error"]["code"], "malformed");
        // Then everything else passes through as it is.
        io.write_all(b"HTTP/1.1 200 OK\r\n").await.expect("written");
        assert!(io.into_inner().taken.ends_with(b"HTTP/1.1 200 OK\r\n"));
    }

    #[tokio::test]
    async fn an_answer_after_another_in_one_write_is_rewritten_after_it() {
        let mut io = JsonErrors::new(Trickle { taken: Vec::new(), ready: false });
        let first = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        io.write_all(&[&first[..], HYPER_400].concat()).await.expect("written");
        let taken = io.into_inner().taken;
        assert!(taken.starts_with(first));
        assert_eq!(split(&taken[first.len()..]).1["error"]["code"], "malformed");
    }
}
