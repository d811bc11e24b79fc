//! HTTP conformance over real sockets: `405` names the allowed methods, `HEAD` is served
//! wherever `GET` is, private answers are never cached, bodies with numbers simd-json
//! cannot hold in fields nobody reads are fine, and an empty `cursor=` is the first page.

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
