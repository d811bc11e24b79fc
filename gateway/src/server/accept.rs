//! Accepting connections: the pending-handshake limit, TLS, HTTP/1.1 and HTTP/2, and the
//! hand-over of SSE streams and WebSocket upgrades.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::DRAIN_TIMEOUT;
use crate::canned::JsonErrors;
use crate::error::{ApiError, ErrorCode};
use crate::http;
use crate::sse::FirstRequest;
use crate::state::AppState;

/// How long a fresh connection may take to send its first request head, and how many may
/// be doing so at once.
pub(super) struct Handshake {
    pub(super) timeout: Duration,
    pub(super) pending: Arc<PendingPlaces>,
    pub(super) tls: Option<Arc<crate::tls::Tls>>,
}

/// The places of connections without a request head yet: so many in all, and so many per
/// client address, so that one client's flood of silent connections cannot take every
/// place (`/healthz` and everyone else would be refused with it).
pub(super) struct PendingPlaces {
    all: Arc<Semaphore>,
    per_address_max: usize,
    by_address: Arc<crate::limits::Counts<IpAddr>>,
}

/// A connection's place among those without a request head yet.
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
    _address: crate::limits::Counted<IpAddr>,
}

/// Why a connection got no place.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NoPlace {
    All,
    Address,
}

impl PendingPlaces {
    pub(super) fn new(all: usize, per_address: u32) -> Arc<Self> {
        Arc::new(PendingPlaces {
            all: Arc::new(Semaphore::new(all)),
            per_address_max: per_address as usize,
            by_address: Arc::default(),
        })
    }

    /// A place for a connection from `peer`, unless its address or everyone took them all.
    pub(super) fn take(self: &Arc<Self>, peer: IpAddr) -> Result<Place, NoPlace> {
        let address = client_address(peer);
        let address =
            self.by_address.take(address, self.per_address_max).ok_or(NoPlace::Address)?;
        // (No place in all: the address's is given back as `address` drops.)
        let permit = Arc::clone(&self.all).try_acquire_owned().map_err(|_| NoPlace::All)?;
        Ok(Place { _permit: permit, _address: address })
    }
}

/// The client a peer address stands for: an IPv4 address (also when mapped into IPv6), or
/// an IPv6 /64 (one subscriber's network: its addresses are anyone's for the asking).
fn client_address(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX)))
        }
        v4 => v4,
    }
}

/// The answers to a connection beyond the pending bounds, written without waiting.
static REFUSED_ALL: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let message = "too many connections waiting for their first request";
    ApiError::new(ErrorCode::TooManyConnections, message).retry_after(1).raw_http1("")
});
static REFUSED_ADDRESS: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let message = "too many connections from your address waiting for their first request";
    ApiError::new(ErrorCode::TooManyConnections, message).retry_after(1).raw_http1("")
});

pub(super) async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
    handshake: Handshake,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Until its first request head is in, a connection holds one of a bounded number
        // of places: a flood of connections that send nothing (or a few bytes) can never
        // use up the file descriptors the server needs, and one client's flood cannot
        // take every place.
        let pending = match handshake.pending.take(peer.ip()) {
            Ok(place) => place,
            Err(why) => {
                state.metrics.connections_refused_total.fetch_add(1, Ordering::Relaxed);
                // A fresh socket's send buffer is empty: this never blocks, and what does
                // not fit is not worth waiting for.
                // Under TLS there is no HTTP before the handshake: the connection just closes.
                if handshake.tls.is_none() {
                    let answer = if why == NoPlace::All { &REFUSED_ALL } else { &REFUSED_ADDRESS };
                    let _ = stream.try_write(answer);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        let alive = alive.clone();
        let deadline = tokio::time::Instant::now() + handshake.timeout;
        let handshake_timeout = handshake.timeout;
        let tls = handshake.tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            state.metrics.connections_pending.fetch_add(1, Ordering::Relaxed);
            let head = FirstHead { deadline, timeout: handshake_timeout };
            let connection = Connection { peer, state: &state, shutdown, head, pending };
            match tls {
                Some(acceptor) => serve_tls(stream, acceptor, connection).await,
                None => serve_connection(stream, connection).await,
            }
            drop(alive);
        });
    }
}

/// When a fresh connection's first request head must be complete, and the time allowed
/// for every later head (hyper restarts its header timer for each request, so it also
/// bounds a keep-alive connection's idle time).
struct FirstHead {
    deadline: tokio::time::Instant,
    timeout: Duration,
}

/// A fresh connection and what serving it needs.
struct Connection<'a> {
    peer: SocketAddr,
    state: &'a Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    head: FirstHead,
    pending: Place,
}

/// Serves one cleartext connection: a raw alert stream, or hyper.
async fn serve_connection(stream: tokio::net::TcpStream, c: Connection<'_>) {
    // The pending gauge follows the permit: decremented when the head is in or the
    // connection ends, whichever comes first.
    let pending = PendingGuard { permit: Some(c.pending), metrics: Arc::clone(&c.state.metrics) };
    let deadline = c.head.deadline;
    // The engine node serves no alert stream: hyper's router refuses it there.
    let first = if c.state.serves_clients() {
        crate::sse::first_request(&stream, deadline).await
    } else {
        FirstRequest::Other
    };
    match first {
        FirstRequest::Closed => return,
        FirstRequest::Stream => {
            // The guard (permit and gauge) is given back once the stream's head is in.
            crate::sse::serve_raw(stream, c.state, deadline, pending).await;
            return;
        }
        FirstRequest::Other => {}
    }
    serve_http(TokioIo::new(JsonErrors::new(stream)), c.peer, c.state, c.shutdown, c.head, pending)
        .await;
}

/// Serves one TLS connection: the handshake (within the first head's deadline), then
/// hyper; SSE streams go through hyper (over HTTP/2, many share one connection).
async fn serve_tls(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    c: Connection<'_>,
) {
    let pending = PendingGuard { permit: Some(c.pending), metrics: Arc::clone(&c.state.metrics) };
    let metrics = &c.state.metrics;
    // A TLS client starts with a handshake record (0x16); an HTTP client that forgot the
    // `https://` starts with a method's capital letter: tell it, in the HTTP it speaks.
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(c.head.deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            // Not a TLS handshake: out of the pending ones before the answer is written.
            drop(pending);
            return refuse_plain_http(stream).await;
        }
        Ok(Ok(0) | Err(_)) => return,
        Err(_) => {
            metrics.handshake_timeouts_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout_at(c.head.deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            metrics.tls_handshakes_total.fetch_add(1, Ordering::Relaxed);
            serve_http(
                TokioIo::new(JsonErrors::new(stream)),
                c.peer,
                c.state,
                c.shutdown,
                c.head,
                pending,
            )
            .await;
        }
        Ok(Err(e)) => {
            metrics.tls_handshake_failures_total.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TLS handshake with {} failed: {e}", c.peer);
        }
        Err(_) => {
            metrics.handshake_timeouts_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Answers a cleartext HTTP request sent to the TLS listener with a `400` saying so, then
/// closes (its request unread).
async fn refuse_plain_http(mut stream: tokio::net::TcpStream) {
    let message = "this port speaks TLS: use https:// (or wss://)";
    let answer = ApiError::new(ErrorCode::Malformed, message).raw_http1("");
    crate::sse::answer_and_close(&mut stream, &answer, true).await;
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 (prior knowledge, or `h2` by ALPN under TLS:
/// hyper reads the connection preface) until the peer or shutdown ends it.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    state: &Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    head: FirstHead,
    pending: PendingGuard,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let deadline = head.deadline;
    let pending = Arc::new(std::sync::Mutex::new(pending));
    let (service_state, service_pending) = (Arc::clone(state), Arc::clone(&pending));
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        // A whole request head arrived: the connection leaves the pending ones.
        drop(take_permit(&service_pending));
        req.extensions_mut().insert(crate::request::PeerAddr(peer));
        http::handle(req, Arc::clone(&service_state))
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(head.timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_STREAMS_MAX)
        // A dead peer's streams (SSE) are noticed even when nothing is sent on them.
        .keep_alive_interval(HTTP2_PING_INTERVAL)
        .keep_alive_timeout(HTTP2_PING_TIMEOUT);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut first_head_due = true;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("http connection error: {e}");
                }
                return;
            }
            // The first head's deadline is the accept time's, whatever the peek took.
            () = tokio::time::sleep_until(deadline), if first_head_due => {
                first_head_due = false;
                if take_permit(&pending).is_some() {
                    state.metrics.handshake_timeouts_total.fetch_add(1, Ordering::Relaxed);
                    return; // dropping hyper's connection closes the socket
                }
            }
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await;
                return;
            }
        }
    }
}

/// Streams one HTTP/2 connection may have open at once (each SSE stream is one).
const HTTP2_STREAMS_MAX: u32 = 256;
/// HTTP/2 keep-alive pings, and how long to wait for their answer.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection's place among those without a request head yet.
pub(crate) struct PendingGuard {
    permit: Option<Place>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl PendingGuard {
    fn take(&mut self) -> Option<Place> {
        let permit = self.permit.take();
        if permit.is_some() {
            self.metrics.connections_pending.fetch_sub(1, Ordering::Relaxed);
        }
        permit
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        drop(self.take());
    }
}

fn take_permit(guard: &std::sync::Mutex<PendingGuard>) -> Option<Place> {
    guard.lock().unwrap_or_else(|e| e.into_inner()).take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_in_all_and_per_address() {
        let places = PendingPlaces::new(3, 2);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let first = places.take(a).expect("a's first");
        let _second = places.take(a).expect("a's second");
        assert_eq!(places.take(a).err(), Some(NoPlace::Address));
        let _third = places.take(b).expect("b gets in");
        assert_eq!(places.take(b).err(), Some(NoPlace::All), "all three taken");
        drop(first);
        let _again = places.take(a).expect("a's place given back");
        // An IPv4 address mapped into IPv6 is the same client.
        assert_eq!(
            places.take("::ffff:10.0.0.1".parse().expect("ip")).err(),
            Some(NoPlace::Address)
        );
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_address(one), client_address(other));
        assert_ne!(client_address(one), client_address(elsewhere));
        assert_eq!(
            client_address("::ffff:1.2.3.4".parse().expect("ip")),
            IpAddr::from([1, 2, 3, 4])
        );
    }
}
