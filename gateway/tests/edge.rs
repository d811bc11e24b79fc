//! A hostile peer at the edge, over real sockets: a few bytes (or none) never pin a
//! connection, the connections waiting for a request head are bounded, a body that never
//! completes is cut with 408, and file descriptors come back to their baseline while
//! `/healthz` keeps answering.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

async fn healthz(addr: std::net::SocketAddr) -> u16 {
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tokio::time::timeout(Duration::from_secs(5), http_raw(addr, &head)).await.map_or(0, |r| r.0)
}

/// `/healthz` from another client than the tests' others (127.0.0.2): an attack from one
/// address takes at most its share of the places.
async fn healthz_from_elsewhere(addr: std::net::SocketAddr) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.2:0".parse().expect("address")).expect("bind 127.0.0.2");
    let mut stream = socket.connect(addr).await.expect("connect");
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let exchange = http_on(&mut stream, &head);
    tokio::time::timeout(Duration::from_secs(5), exchange).await.map_or(0, |r| r.0)
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (_, text) = http_raw(addr, &head).await;
    let prefix = format!("tickgate_{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Blocks until the server closes `s` (EOF or reset), at most `limit`; what it sent.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(limit)).ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

/// The pending gauge, read in process (a request for `/metrics` would itself need one of
/// the places the test fills).
fn pending(server: &tickgate_gateway::Server) -> u64 {
    server.metrics().connections_pending.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until the server has taken `n` connections in without a request head yet.
async fn wait_pending(server: &tickgate_gateway::Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pending(server) < n {
        assert!(Instant::now() < deadline, "the {n} silent connections were not accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until no connection waits for its request head (closed ones given back).
async fn wait_none_pending(server: &tickgate_gateway::Server) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pending(server) > 0 {
        assert!(Instant::now() < deadline, "closed connections still pending");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the server answers a new connection that sends nothing, until it closes it.
fn answer_to_silence(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    let answer = read_until_closed(&mut s, Duration::from_secs(2)).unwrap_or_default();
    String::from_utf8_lossy(&answer).to_string()
}

const PREFIXES: [&[u8]; 5] = [
    b"",
    b"G",
    b"GET /api/v1/alerts/str",
    b"GET /api/v1/alerts/stream",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_bytes_never_pin_a_socket() {
    let server = start(|c| c.handshake_timeout = Duration::from_millis(400)).await;
    let addr = server.local_addr();
    assert_eq!(healthz(addr).await, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = open_fds();

    // 300 connections each send a prefix of a request (or nothing); half close at once.
    let mut open = Vec::new();
    for n in 0..300 {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(PREFIXES[n % PREFIXES.len()]).expect("send");
        if n % 2 == 0 {
            drop(s);
        } else {
            open.push((n, s));
        }
    }
    assert_eq!(healthz_from_elsewhere(addr).await, 200, "healthz during the attack");
    // The other half stay open and silent: the server closes each within its deadline.
    let started = Instant::now();
    let open = tokio::task::spawn_blocking(move || {
        for (n, s) in &mut open {
            let closed = read_until_closed(s, Duration::from_secs(5));
            assert!(
                closed.is_some(),
                "connection {n} with a {:?} prefix was never closed",
                PREFIXES[*n % PREFIXES.len()]
            );
        }
        open
    })
    .await
    .expect("reader");
    println!("300 partial connections closed by the server in {:?}", started.elapsed());
    drop(open);
    assert_eq!(healthz(addr).await, 200, "healthz after the attack");
    assert!(metric(addr, "handshake_timeouts_total").await > 0);

    // Every socket the attack cost is given back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = open_fds();
        if now <= baseline {
            break;
        }
        assert!(Instant::now() < deadline, "{now} fds open, {baseline} before the attack");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(addr, "connections_pending").await, 0);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_a_head_are_bounded() {
    let server = start(|c| {
        c.handshake_timeout = Duration::from_secs(3);
        c.pending_connections_max = 20;
    })
    .await;
    let addr = server.local_addr();
    let silent: Vec<TcpStream> =
        (0..20).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    // The server has taken all 20 in (its gauge says so) before more arrive.
    wait_pending(&server, 20).await;
    let refused = tokio::task::spawn_blocking(move || {
        (0..10).map(|_| answer_to_silence(addr)).collect::<Vec<_>>()
    })
    .await
    .expect("clients");
    for answer in &refused {
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("too_many_connections"), "{answer}");
    }
    drop(silent);
    wait_none_pending(&server).await;
    assert_eq!(healthz(addr).await, 200);
    assert!(metric(addr, "connections_refused_total").await >= 10);
    assert_eq!(metric(addr, "connections_pending").await, 0);
    server.shutdown().await.expect("clean shutdown");
}

/// One client's silent connections take at most its share of the places: the next from it
/// is refused, while another client (here 127.0.0.2) still gets in, `/healthz` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_takes_at_most_its_share_of_the_waiting_places() {
    let server = start(|c| {
        c.handshake_timeout = Duration::from_secs(3);
        c.pending_connections_max = 20;
        c.pending_connections_per_address = 8;
    })
    .await;
    let addr = server.local_addr();
    let silent: Vec<TcpStream> =
        (0..8).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    wait_pending(&server, 8).await;
    let answer =
        tokio::task::spawn_blocking(move || answer_to_silence(addr)).await.expect("client");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections") && answer.contains("your address"), "{answer}");
    // Another client is served while the first one's places are all taken.
    assert_eq!(healthz_from_elsewhere(addr).await, 200);
    assert_eq!(pending(&server), 8, "the silent ones still wait");
    drop(silent);
    wait_none_pending(&server).await;
    // Their places are given back: the first client gets in again.
    assert_eq!(healthz(addr).await, 200);
    server.shutdown().await.expect("clean shutdown");
}

/// A declared body over the limit is refused by its `Content-Length`, before any of it
/// comes (the body timeout here is far longer than the client waits), and the connection
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_gets_413_at_once() {
    let server = start(|c| c.body_timeout = Duration::from_secs(60)).await;
    let addr = server.local_addr();
    let token = Api::login(addr, 0).await.token;
    for (path, length) in [("/api/v1/auth/login", "99999999999"), ("/api/v1/orders", "20000")] {
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{");
        let answer = answer_to(addr, head).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.contains("payload_too_large"), "{path}: {answer}");
    }
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_completes_gets_408() {
    let server = start(|c| c.body_timeout = Duration::from_millis(300)).await;
    let addr = server.local_addr();
    let head = "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"username\":";
    let answer = answer_to(addr, head.to_string()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    server.shutdown().await.expect("clean shutdown");
}

/// Sends `head` (and whatever body bytes follow it) on a new connection and reads the
/// answer until the server closes the connection (within 5 s).
async fn answer_to(addr: std::net::SocketAddr, head: String) -> String {
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(head.as_bytes()).expect("send");
        read_until_closed(&mut s, Duration::from_secs(5))
    })
    .await
    .expect("client")
    .expect("the server answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that sends a too-large body whole before reading (as curl does without
/// `Expect: 100-continue`) can send all of it and then reads its `413`: the server reads
/// and drops the rest after answering (a lingering close) instead of resetting the
/// connection under it, which curl reports as a send failure without the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_sent_whole_gets_its_413() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let token = Api::login(addr, 0).await.token;
    // More than the socket buffers take without the server reading (the send buffer is at
    // most 4 MiB by default, the receive buffer grows from 128 KiB as it is read): the
    // server must read it for the write to finish.
    let body = vec![b'x'; 12 << 20];
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let head = format!("POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).expect("send the head");
        s.write_all(&body).expect("the whole body is taken");
        read_until_closed(&mut s, Duration::from_secs(5))
    })
    .await
    .expect("client")
    .expect("the server answers and closes");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    server.shutdown().await.expect("clean shutdown");
}
