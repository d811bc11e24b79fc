//! The edge over real sockets: HTTPS and WSS with a certificate made in the test, HTTP/2
//! (ALPN and cleartext prior knowledge) with several SSE streams on one connection, a
//! certificate reload under an open WSS connection, CORS, and cookie sessions.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tickgate_engine::*;
use tickgate_gateway::client::{self, Message};
use tickgate_gateway::protocol::close;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for `localhost`, written as PEM files into `dir`.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, made.cert.pem()).expect("write");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("write");
    (cert, key, made.cert.der().clone())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tickgate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// A TLS client trusting `root` only, offering `alpn`.
fn connector(root: &CertificateDer<'static>, alpn: &[&str]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls(
    addr: SocketAddr,
    c: &tokio_rustls::TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    c.connect(ServerName::try_from("localhost").expect("name"), tcp).await
}

/// One HTTP/1.1 exchange over a stream (`Connection: close`): status and raw response.
async fn raw<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    head: &str,
) -> (u16, String) {
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("in time").ok();
    let text = String::from_utf8_lossy(&buf).into_owned();
    (text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), text)
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h2<S>(io: S) -> H2
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn h2_call(
    h2: &mut H2,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, hyper::HeaderMap, Value) {
    let mut req = hyper::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()));
    let response = h2.send_request(req.body(body).expect("request")).await.expect("response");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status.as_u16(), parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn tls_server(
    cert: &Path,
    key: &Path,
    tweak: impl FnOnce(&mut tickgate_gateway::Config),
) -> tickgate_gateway::Server {
    start(|c| {
        c.tls = Some((cert.to_path_buf(), key.to_path_buf()));
        tweak(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_http2_with_several_sse_streams_on_one_connection() {
    let dir = temp_dir("https");
    let (cert, key, root) = certificate(&dir, "server");
    let server = tls_server(&cert, &key, |_| {}).await;
    let addr = server.local_addr();

    // HTTP/1.1 by ALPN.
    let c = connector(&root, &["http/1.1"]);
    let stream = tls(addr, &c).await.expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, response) = raw(
        stream,
        "GET /api/v1/instruments HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("BTC-USD"));
    // A browser that came over HTTPS stays on it; nothing is sniffed as a page.
    assert_eq!(header(&response, "strict-transport-security"), Some("max-age=31536000"));
    assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
    // A head hyper cannot parse gets the API's JSON error under TLS too.
    let stream = tls(addr, &c).await.expect("handshake");
    let (status, response) = raw(stream, "GET / HTTP/1.1\r\nHost localhost\r\n\r\n").await;
    assert_eq!(status, 400, "{response}");
    assert_eq!(body_json(&response)["error"]["code"], "malformed", "{response}");
    // A client that trusts another certificate is refused at the handshake.
    let (_, _, other) = certificate(&dir, "other");
    assert!(tls(addr, &connector(&other, &["h2"])).await.is_err());
    // Cleartext HTTP on the TLS port is told to use TLS (and nothing is served to it).
    let (status, answer) =
        http_raw(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("use https://"), "{answer}");
    assert!(answer.contains("\"code\":\"malformed\""), "{answer}");
    // The listener goes on serving TLS.
    let again = tls(addr, &connector(&root, &["http/1.1"])).await.expect("handshake");
    let (status, _) =
        raw(again, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200);

    // HTTP/2 by ALPN: log in (as a cookie session: Secure under TLS), then three SSE
    // streams on the one connection.
    let stream = tls(addr, &connector(&root, &["h2", "http/1.1"])).await.expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut conn = h2(stream).await;
    let (name, password, _) = tickgate_gateway::auth::DEMO_USERS[0];
    let login = json!({"username": name, "password": password});
    let (status, _, body) =
        h2_call(&mut conn, "POST", "https://localhost/api/v1/auth/login", &[], Some(login.clone()))
            .await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_string();
    let cookie_login = json!({"username": name, "password": password, "cookie": true});
    let (status, headers, body) =
        h2_call(&mut conn, "POST", "https://localhost/api/v1/auth/login", &[], Some(cookie_login))
            .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("token").is_none(), "a cookie session's token is not readable by scripts");
    let set = headers["set-cookie"].to_str().unwrap();
    for part in ["tickgate_session=", "HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(set.contains(part), "{set}");
    }
    let bearer = format!("Bearer {token}");
    let mut streams = Vec::new();
    for _ in 0..3 {
        let req = hyper::Request::get("https://localhost/api/v1/alerts/stream")
            .header("authorization", &bearer)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = conn.send_request(req).await.expect("stream");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        streams.push(response.into_body());
    }
    // A fill of the user's reaches every stream.
    let engine = server.engine().clone();
    let btc = symbol_id(&engine, "BTC-USD");
    order(&engine, 2, btc, Side::Sell, OrderType::Limit, 1_000_000, 10);
    let (status, placed, _) = h2_call(
        &mut conn,
        "POST",
        "https://localhost/api/v1/orders",
        &[("authorization", &bearer)],
        Some(json!({"symbol": "BTC-USD", "side": "buy", "type": "ioc", "price": "10000.00", "qty": "0.0010"})),
    )
    .await;
    assert!(status == 200 || status == 201, "{status} {placed:?}");
    for body in &mut streams {
        let mut text = String::new();
        while !text.contains("event: fill") {
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .expect("an event")
                .expect("frame")
                .expect("ok");
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
    assert_eq!(server.metrics().tls_handshakes_total.load(std::sync::atomic::Ordering::Relaxed), 4);
    drop(streams);
    server.shutdown().await.expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_with_prior_knowledge() {
    let server = start(|_| {}).await;
    let tcp = TcpStream::connect(server.local_addr()).await.expect("connect");
    let mut conn = h2(tcp).await;
    let uri = format!("http://{}/healthz", server.local_addr());
    let (status, _, body) = h2_call(&mut conn, "GET", &uri, &[], None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    // A WebSocket needs HTTP/1.1: over HTTP/2 /ws is a plain GET, refused clearly.
    let uri = format!("http://{}/ws", server.local_addr());
    let (status, _, body) = h2_call(&mut conn, "GET", &uri, &[], None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("not_websocket")));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_market_data_and_orders_survive_a_certificate_reload() {
    let dir = temp_dir("wss");
    let (a_cert, a_key, a_root) = certificate(&dir, "a");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::copy(&a_cert, &cert).expect("copy");
    std::fs::copy(&a_key, &key).expect("copy");
    let mut server = tls_server(&cert, &key, |c| c.feed_rate = Some(20_000)).await;
    let addr = server.local_addr();
    let api_token = {
        let stream = tls(addr, &connector(&a_root, &["http/1.1"])).await.expect("handshake");
        let (name, password, _) = tickgate_gateway::auth::DEMO_USERS[0];
        let body = json!({"username": name, "password": password}).to_string();
        let head = format!("POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let (status, response) = raw(stream, &head).await;
        assert_eq!(status, 200, "{response}");
        body_json(&response)["token"].as_str().expect("token").to_string()
    };
    let stream = tls(addr, &connector(&a_root, &["http/1.1"])).await.expect("handshake");
    let mut ws =
        client::connect_stream(stream, "localhost", &format!("/ws?token={api_token}"), &[])
            .await
            .expect("wss");
    let welcome = text(&mut ws).await;
    assert_eq!(welcome["op"], "welcome");
    let ack = request(
        &mut ws,
        json!({"op": "subscribe", "channels": ["book.BTC-USD", "trades.BTC-USD"], "depth": 1000}),
    )
    .await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    let mut follower = Follower {
        book_channel: ack["channels"][0]["channel_id"].as_u64().unwrap() as u32,
        trades_channel: ack["channels"][1]["channel_id"].as_u64().unwrap() as u32,
        ..Follower::default()
    };
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    while tokio::time::Instant::now() < until {
        if let Message::Binary(p) = next(&mut ws).await {
            follower.apply(&p);
        }
    }

    // A new certificate in the same files, reloaded: new handshakes get it, the open
    // connection keeps its session.
    let (b_cert, b_key, b_root) = certificate(&dir, "b");
    std::fs::copy(&b_cert, &cert).expect("copy");
    std::fs::copy(&b_key, &key).expect("copy");
    server.reload_tls().expect("reload");
    assert!(tls(addr, &connector(&a_root, &["http/1.1"])).await.is_err(), "the old one is gone");
    let fresh = tls(addr, &connector(&b_root, &["http/1.1"])).await.expect("the new one");
    let (status, _) =
        raw(fresh, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200);

    // Still the same connection: market data goes on, an order goes through (its answer
    // read between the market data, which all goes to the book).
    let order = json!({"op": "order.new", "id": 9, "symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "1000.00", "qty": "0.0010"});
    client::send_json(&mut ws, &order).await.expect("send");
    loop {
        match next(&mut ws).await {
            Message::Binary(p) => follower.apply(&p),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["id"] == 9 {
                    assert_eq!(v["op"], "order.accepted", "{v}");
                    break;
                }
            }
            Message::Close(..) => panic!("closed"),
        }
    }
    server.stop_feed();
    let engine = server.engine().clone();
    let expected = engine.book_snapshot(symbol_id(&engine, "BTC-USD"), usize::MAX).expect("book");
    while follower.book.as_ref().map(|b| b.seq()) != Some(expected.seq) {
        if let Message::Binary(p) = next(&mut ws).await {
            follower.apply(&p);
        }
    }
    assert_eq!(
        follower.book.as_ref().unwrap().snapshot(usize::MAX),
        expected,
        "WSS book == engine book"
    );
    assert!(follower.deltas.len() > 50 && follower.trades > 5, "a lively market over TLS");
    // Shutdown's close frame reaches the WSS client before the TLS close_notify.
    let stopping = tokio::spawn(server.shutdown());
    loop {
        if let Message::Close(code, _) = next(&mut ws).await {
            assert_eq!(code, Some(close::GOING_AWAY));
            break;
        }
    }
    stopping.await.expect("task").expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Raw HTTP/1.1 with extra header lines.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<Value>,
) -> (u16, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    http_raw(addr, &head).await
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.split("\r\n\r\n").next()?.lines().find_map(|l| {
        l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_and_cookie_sessions() {
    const APP: &str = "https://app.example";
    const EVIL: &str = "https://evil.example";
    let server = start(|c| c.cors_origins = vec![APP.into()]).await;
    let addr = server.local_addr();
    let own = format!("http://{addr}");

    // Preflights: 204 for the listed origin, 403 for another.
    let preflight = |origin: &str| {
        format!("Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type, idempotency-key\r\n")
    };
    let (status, response) = call(addr, "OPTIONS", "/api/v1/orders", &preflight(APP), None).await;
    assert_eq!(status, 204, "{response}");
    assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&response, "access-control-allow-credentials"), Some("true"));
    assert!(header(&response, "access-control-allow-methods").unwrap().contains("PATCH"));
    assert!(header(&response, "access-control-allow-headers").unwrap().contains("idempotency-key"));
    let (status, response) = call(addr, "OPTIONS", "/api/v1/orders", &preflight(EVIL), None).await;
    assert_eq!(
        (status, body_json(&response)["error"]["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    // Actual requests: the listed origin may read the answer, another may not.
    let (status, response) =
        call(addr, "GET", "/api/v1/instruments", &format!("Origin: {APP}\r\n"), None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
    assert!(header(&response, "vary").unwrap().contains("Origin"));
    assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&response, "strict-transport-security"), None, "cleartext: no HSTS");
    let (status, response) = call(addr, "GET", "/api/v1/nope", "", None).await;
    assert_eq!((status, header(&response, "x-content-type-options")), (404, Some("nosniff")));
    let (status, response) =
        call(addr, "GET", "/api/v1/instruments", &format!("Origin: {EVIL}\r\n"), None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    assert!(header(&response, "vary").unwrap().contains("Origin"));
    // Without an Origin too: a shared cache must keep answers per origin.
    let (_, response) = call(addr, "GET", "/api/v1/instruments", "", None).await;
    assert!(header(&response, "vary").unwrap().contains("Origin"));

    // Log in as a cookie session (no Secure in cleartext; no token in the body).
    let (name, password, _) = tickgate_gateway::auth::DEMO_USERS[0];
    let login = json!({"username": name, "password": password, "cookie": true});
    let (status, response) = call(addr, "POST", "/api/v1/auth/login", "", Some(login)).await;
    assert_eq!(status, 200, "{response}");
    assert!(body_json(&response).get("token").is_none());
    let set = header(&response, "set-cookie").expect("a cookie").to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"),
        "{set}"
    );
    let cookie = format!("Cookie: {}\r\n", set.split(';').next().unwrap());
    let (status, response) = call(addr, "GET", "/api/v1/account", &cookie, None).await;
    assert_eq!(status, 200, "{response}");
    // A refresh authenticated by the cookie answers with a cookie, never the token, even
    // when some other Authorization header comes along.
    let extra = format!("{cookie}X-Tickgate-CSRF: 1\r\nAuthorization: Basic eDp5\r\n");
    let (status, response) = call(addr, "POST", "/api/v1/auth/refresh", &extra, None).await;
    assert_eq!(status, 200, "{response}");
    assert!(body_json(&response).get("token").is_none(), "{response}");
    assert!(header(&response, "set-cookie").unwrap().starts_with("tickgate_session="));

    // A change by cookie needs an allowed Origin or the CSRF header.
    let order = json!({"symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "1000.00", "qty": "0.0010"});
    for (extra, expected) in [
        (String::new(), 403),
        (format!("Origin: {EVIL}\r\n"), 403),
        // An opaque origin is a foreign one, CSRF header or not.
        ("Origin: null\r\nX-Tickgate-CSRF: 1\r\n".to_string(), 403),
        (format!("Origin: {own}\r\n"), 201),
        (format!("Origin: {APP}\r\n"), 201),
        ("X-Tickgate-CSRF: 1\r\n".to_string(), 201),
    ] {
        let (status, response) =
            call(addr, "POST", "/api/v1/orders", &format!("{cookie}{extra}"), Some(order.clone()))
                .await;
        let status = if status == 200 { 201 } else { status };
        assert_eq!(status, expected, "{extra:?}: {response}");
        if expected == 403 {
            assert_eq!(body_json(&response)["error"]["code"], "csrf_rejected");
        }
    }

    // WebSocket with the cookie: from the server's own page, authenticated; from another
    // site's page, refused with a close code the page can read.
    let ws_headers = |origin: &str| {
        vec![("Origin", origin.to_string()), ("Cookie", set.split(';').next().unwrap().to_string())]
    };
    let connect = |headers: Vec<(&'static str, String)>, path: &'static str| async move {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        client::connect_stream(tcp, &addr.to_string(), path, &h).await.expect("upgrade")
    };
    let mut ws = connect(ws_headers(&own), "/ws").await;
    assert_eq!(text(&mut ws).await["op"], "welcome");
    let ack = request(&mut ws, json!({"op": "subscribe", "id": 1, "channels": ["orders"]})).await;
    assert_eq!(ack["op"], "subscribed", "cookie-authenticated: {ack}");
    for (headers, path, code) in [
        (ws_headers(EVIL), "/ws", close::ORIGIN_NOT_ALLOWED),
        (ws_headers("null"), "/ws", close::ORIGIN_NOT_ALLOWED),
        (vec![("Origin", EVIL.to_string())], "/ws?token=forged.token.x", close::UNAUTHORIZED),
    ] {
        let mut ws = connect(headers, path).await;
        match next(&mut ws).await {
            Message::Close(Some(c), reason) => {
                assert_eq!(c, code, "{reason}");
                let prefix = if c == close::UNAUTHORIZED {
                    "unauthorized: "
                } else {
                    "origin_not_allowed: "
                };
                assert!(reason.starts_with(prefix), "{reason}");
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }
    // Without an Origin (not a browser), the refusal is plain HTTP.
    let (status, response) = call(addr, "GET", "/ws?token=forged", "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n", None).await;
    assert_eq!(status, 401, "{response}");

    // SSE with the cookie from the listed origin (EventSource withCredentials): the raw
    // stream path answers with the CORS headers.
    let mut sse = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET /api/v1/alerts/stream HTTP/1.1\r\nHost: {addr}\r\nOrigin: {APP}\r\n{cookie}\r\n"
    );
    sse.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("retry:") {
        let mut chunk = [0u8; 1024];
        let n =
            tokio::time::timeout(WAIT, sse.read(&mut chunk)).await.expect("in time").expect("read");
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(header(&got, "access-control-allow-origin"), Some(APP));

    // Logout clears the cookie and ends the session: the cookie no longer works, and the
    // cookie-authenticated WebSocket is closed.
    let (status, response) =
        call(addr, "POST", "/api/v1/auth/logout", &format!("{cookie}X-Tickgate-CSRF: 1\r\n"), None)
            .await;
    assert_eq!(status, 200, "{response}");
    assert!(header(&response, "set-cookie").unwrap().contains("Max-Age=0"));
    let (status, _) = call(addr, "GET", "/api/v1/account", &cookie, None).await;
    assert_eq!(status, 401);
    loop {
        if let Message::Close(code, _) = next(&mut ws).await {
            assert_eq!(code, Some(close::SESSION_REVOKED));
            break;
        }
    }
    // The ended session's cookie does not refuse public market data: a public connection.
    let mut public = connect(ws_headers(&own), "/ws").await;
    assert_eq!(text(&mut public).await["op"], "welcome");
    let e = request(&mut public, json!({"op": "subscribe", "id": 2, "channels": ["orders"]})).await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    let ack =
        request(&mut public, json!({"op": "subscribe", "id": 3, "channels": ["bbo.BTC-USD"]}))
            .await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    drop(sse);
    server.shutdown().await.expect("clean shutdown");
}

/// The real binary with `--tls-cert`: SIGHUP reloads the certificate while an open
/// connection stays up; a broken pair on SIGHUP keeps the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_the_real_binary() {
    use std::io::BufRead as _;
    let dir = temp_dir("sighup");
    let (a_cert, a_key, a_root) = certificate(&dir, "a");
    let (b_cert, b_key, b_root) = certificate(&dir, "b");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::copy(&a_cert, &cert).expect("copy");
    std::fs::copy(&a_key, &key).expect("copy");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .args(["--listen", "127.0.0.1:0", "--no-feed", "--durability", "off"])
        .args(["--data-dir", dir.join("data").to_str().expect("utf-8")])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Killed on every exit path.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let pid = child.id();
    let _child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("a log line");
        if line.contains(needle) {
            return line;
        }
    };
    let line = wait_for("listening on https://");
    let at = line.find("https://").expect("address") + "https://".len();
    let addr: SocketAddr = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect::<String>()
        .parse()
        .expect("addr");
    let hup = || {
        let status = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status();
        assert!(status.expect("kill runs").success());
    };

    let open = tls(addr, &connector(&a_root, &["http/1.1"])).await.expect("certificate a");
    let mut ws = client::connect_stream(open, "localhost", "/ws", &[]).await.expect("wss");
    assert_eq!(text(&mut ws).await["op"], "welcome");
    std::fs::copy(&b_cert, &cert).expect("copy");
    std::fs::copy(&b_key, &key).expect("copy");
    hup();
    wait_for("TLS certificate reloaded");
    assert!(tls(addr, &connector(&a_root, &["http/1.1"])).await.is_err());
    assert!(tls(addr, &connector(&b_root, &["http/1.1"])).await.is_ok());
    // A key that does not go with the certificate: refused, b stays.
    std::fs::copy(&a_key, &key).expect("copy");
    hup();
    wait_for("TLS certificate not reloaded");
    assert!(tls(addr, &connector(&b_root, &["http/1.1"])).await.is_ok());
    // The connection opened under a is still served.
    let pong = request(&mut ws, json!({"op": "ping", "id": 1})).await;
    assert_eq!(pong["op"], "pong", "{pong}");
    let _ = std::fs::remove_dir_all(&dir);
}
