//! HTTP conformance over real sockets: `405` names the allowed methods, `HEAD` is served
//! wherever `GET` is, private answers are never cached, bodies with numbers simd-json
//! cannot hold in fields nobody reads are fine, an empty `cursor=` is the first page, and
//! heads hyper cannot parse get the API's JSON errors.

mod common;

use common::*;
use serde_json::json;

fn header<'r>(response: &'r str, name: &str) -> Option<&'r str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn raw(addr: std::net::SocketAddr, method: &str, path: &str, token: &str) -> (u16, String) {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n");
    http_raw(addr, &head).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_heads_and_caching_follow_http() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let alice = Api::login(addr, 0).await;
    for (method, path, allow) in [
        ("PUT", "/api/v1/orders", "GET, HEAD, POST, DELETE"),
        ("POST", "/api/v1/orders/1", "GET, HEAD, PATCH, DELETE"),
        ("DELETE", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("GET", "/api/v1/auth/login", "POST"),
        ("PUT", "/api/v1/account", "GET, HEAD"),
        ("POST", "/api/v1/alerts/stream", "GET"),
    ] {
        let (status, response) = raw(addr, method, path, &alice.token).await;
        assert_eq!(status, 405, "{method} {path}: {response}");
        assert_eq!(header(&response, "allow"), Some(allow), "{method} {path}: {response}");
    }
    for path in ["/healthz", "/metrics", "/api/v1/instruments", "/api/v1/account"] {
        let (status, response) = raw(addr, "HEAD", path, &alice.token).await;
        assert_eq!(status, 200, "HEAD {path}: {response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(body.is_empty(), "HEAD {path} has no body: {body:?}");
    }
    for path in [
        "/api/v1/account",
        "/api/v1/orders",
        "/api/v1/fills",
        "/api/v1/positions",
        "/api/v1/alerts",
    ] {
        let (status, response) = raw(addr, "GET", path, &alice.token).await;
        assert_eq!(status, 200, "{path}: {response}");
        assert_eq!(header(&response, "cache-control"), Some("no-store"), "{path}");
    }
    let login = json!({"username": "alice", "password": "alice-demo-password"}).to_string();
    let head = format!("POST /api/v1/auth/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{login}", login.len());
    let (status, response) = http_raw(addr, &head).await;
    assert_eq!((status, header(&response, "cache-control")), (200, Some("no-store")), "a token");
    // Public market data stays cacheable.
    let (_, response) = raw(addr, "GET", "/api/v1/instruments", "").await;
    assert_ne!(header(&response, "cache-control"), Some("no-store"));

    // A number beyond 64 bits in a field the server does not read.
    let body = r#"{"symbol":"ETH-USD","side":"buy","type":"limit","price":"3000.00","qty":"1.000","note":123456789012345678901234567890}"#;
    let head = format!("POST /api/v1/orders HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", alice.token, body.len());
    let (status, response) = http_raw(addr, &head).await;
    assert_eq!(status, 201, "{response}");
    // The README's own form: an empty cursor is the first page.
    let (status, page) = alice.call("GET", "/api/v1/fills?cursor=&limit=5", None, "").await;
    assert_eq!(status, 200, "{page}");
    let (status, page) = alice.call("GET", "/api/v1/orders?cursor=&limit=5", None, "").await;
    assert_eq!((status, page["orders"].as_array().map(Vec::len)), (200, Some(1)), "{page}");
    server.shutdown().await.expect("clean shutdown");
}

/// `/metrics` is well-formed Prometheus text: every family has one `# HELP` and one
/// `# TYPE` before its samples, counters end in `_total`, no series appears twice; and a
/// refused WebSocket upgrade counts where its help says (credentials, not the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_well_formed_prometheus_text() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (status, _) = http_raw(addr, &format!("GET /ws?token=forged HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")).await;
    assert_eq!(status, 401);
    let (status, response) = http_raw(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    let (mut helped, mut typed) =
        (std::collections::HashSet::new(), std::collections::HashMap::new());
    let mut series = std::collections::HashSet::new();
    for line in body.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').expect("HELP name text");
            assert!(!text.trim().is_empty(), "{line}");
            assert!(helped.insert(name.to_string()), "two HELP lines for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(helped.contains(name), "TYPE before HELP for {name}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(kind != "counter" || name.ends_with("_total"), "counter {name}");
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "two TYPEs: {name}"
            );
        } else {
            let (key, value) = line.rsplit_once(' ').expect("a sample");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let family = key.split('{').next().unwrap_or(key);
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    family
                        .strip_suffix(s)
                        .filter(|b| typed.get(*b).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(family);
            assert!(typed.contains_key(base), "a sample before its TYPE: {line}");
            assert!(series.insert(key.to_string()), "the series {key} twice");
        }
    }
    let sample = |name: &str| {
        body.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map(str::to_owned)
    };
    assert_eq!(sample("tickgate_ws_auth_refusals_total").as_deref(), Some("1"), "{body}");
    assert_eq!(sample("tickgate_ws_rejected_total").as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_hyper_cannot_parse_get_json_errors() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let long = "a".repeat(70_000);
    for (what, head, status, code) in [
        ("a header line without a colon", "GET / HTTP/1.1\r\nHost x\r\n\r\n".to_string(), 400, "malformed"),
        ("a control byte in the path", "GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 400, "malformed"),
        ("an unknown version", "GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_string(), 400, "malformed"),
        ("two different lengths", "POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_string(), 400, "malformed"),
        ("150 header lines", format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n"), 431, "head_too_large"),
        ("a 70,000-byte path", format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n"), 414, "uri_too_long"),
    ] {
        let (got, response) = http_raw(addr, &head).await;
        assert_eq!(got, status, "{what}: {response}");
        assert_eq!(header(&response, "content-type"), Some("application/json"), "{what}: {response}");
        assert_eq!(body_json(&response)["error"]["code"], code, "{what}: {response}");
    }
    // On a kept-alive connection, after an answer: the garbage that follows gets one too.
    let (status, response) =
        http_raw(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n").await;
    assert_eq!(status, 200, "{response}");
    let second = response.split_once("}HTTP/1.1 ").map(|(_, s)| s).unwrap_or_default();
    assert!(second.starts_with("400 "), "{response}");
    assert!(second.contains(r#""code":"malformed""#), "{response}");
    // The server is fine after all of it.
    let (status, _) =
        http_raw(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200);
}

/// HTTP/1.1 names its host once: none or two is `400 malformed` (HTTP/1.0 needs none); the
/// alert stream's own parser agrees, and takes bare line feeds as hyper does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_headers_headers_had_once_and_bare_line_feeds() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let token = Api::login(addr, 0).await.token;
    let stream = format!("/api/v1/alerts/stream?token={token}");
    for (what, head, status) in [
        ("no Host", "GET /healthz HTTP/1.1\r\n\r\n".to_string(), 400),
        ("two Hosts", "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_string(), 400),
        ("HTTP/1.0 without Host", "GET /healthz HTTP/1.0\r\n\r\n".to_string(), 200),
        (
            "bare line feeds",
            "GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n".to_string(),
            200,
        ),
        ("a stream without Host", format!("GET {stream} HTTP/1.1\r\n\r\n"), 400),
        (
            "a stream with two Hosts",
            format!("GET {stream} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            400,
        ),
        // Whose request is it? Two credentials, keys or replay points are refused, not
        // the first taken.
        (
            "two Authorization headers",
            format!("GET /api/v1/account HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAuthorization: Bearer other\r\n\r\n"),
            400,
        ),
        (
            "two Idempotency-Keys",
            "POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\nContent-Length: 0\r\n\r\n".to_string(),
            400,
        ),
        (
            "a stream with two Last-Event-IDs",
            format!("GET {stream} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1\r\nLast-Event-ID: 2\r\n\r\n"),
            400,
        ),
        (
            "two Cookie headers (HTTP/2 splits them; allowed)",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\nCookie: b=2\r\nConnection: close\r\n\r\n".to_string(),
            200,
        ),
    ] {
        let (got, response) = http_raw(addr, &head).await;
        assert_eq!(got, status, "{what}: {response}");
        if status == 400 {
            assert_eq!(body_json(&response)["error"]["code"], "malformed", "{what}: {response}");
        }
    }
    // A stream asked for with bare line feeds is served (its first bytes: the 200 head).
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET {stream} HTTP/1.1\nHost: x\n\n");
    tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes()).await.expect("send");
    let mut first = vec![0u8; 15];
    let read = tokio::io::AsyncReadExt::read_exact(&mut s, &mut first);
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .expect("answered in time")
        .expect("read");
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    server.shutdown().await.expect("clean shutdown");
}

/// `/debug/digest` runs at most once a second for anyone and once more for the operator:
/// an anonymous poller cannot take the operator's turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_has_a_turn_for_the_operator() {
    let server = start(|c| c.admin_token = Some("operator-secret".into())).await;
    let addr = server.local_addr();
    let ask = |token: &str| {
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        format!("GET /debug/digest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n")
    };
    assert_eq!(http_raw(addr, &ask("")).await.0, 200);
    let (status, refused) = http_raw(addr, &ask("")).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(header(&refused, "retry-after"), Some("1"));
    let (status, answer) = http_raw(addr, &ask("operator-secret")).await;
    assert_eq!(status, 200, "the operator's own turn: {answer}");
    assert!(body_json(&answer)["shards"][0]["state_digest"].is_string(), "{answer}");
    assert_eq!(http_raw(addr, &ask("operator-secret")).await.0, 429, "once a second for it too");
    // A wrong token is anyone.
    assert_eq!(http_raw(addr, &ask("guess")).await.0, 429);
    server.shutdown().await.expect("clean shutdown");
}
