//! Login, tokens and the account over real HTTP: good and bad credentials, expired,
//! forged, malformed and missing tokens, body limits, and the WebSocket token check.

mod common;

use std::time::Duration;

use common::*;
use tickgate_gateway::auth::{Tokens, DEMO_USERS};

fn post_json(addr: std::net::SocketAddr, path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

fn get_auth(addr: std::net::SocketAddr, path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n")
}

/// A login from another loopback address (127.0.0.2: another client, as the server sees it).
async fn login_from_elsewhere(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
) -> (u16, serde_json::Value) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.2:0".parse().expect("address")).expect("bind 127.0.0.2");
    let mut stream = socket.connect(addr).await.expect("connect");
    let body = serde_json::json!({"username": user, "password": password}).to_string();
    let (status, response) =
        http_on(&mut stream, &post_json(addr, "/api/v1/auth/login", &body, "")).await;
    (status, body_json(&response))
}

async fn login(addr: std::net::SocketAddr, user: &str, password: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({"username": user, "password": password}).to_string();
    let (status, response) =
        http_raw(addr, &post_json(addr, "/api/v1/auth/login", &body, "")).await;
    (status, body_json(&response))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_gives_a_token_that_opens_only_the_users_own_account() {
    let server = start(|c| c.jwt_secret = Some("test-secret".into())).await;
    let addr = server.local_addr();
    let (alice, alice_password, alice_account) = DEMO_USERS[0];
    let (status, body) = login(addr, alice, alice_password).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["token_type"].as_str(), body["account"].as_u64()),
        (Some("Bearer"), Some(u64::from(alice_account)))
    );
    let token = body["token"].as_str().expect("token").to_string();

    let (status, response) = http_raw(addr, &get_auth(addr, "/api/v1/account", &token)).await;
    assert_eq!(status, 200, "{response}");
    let account = body_json(&response);
    assert_eq!(account["username"], alice);
    assert!(account.get("shards").is_none(), "one shard: no breakdown: {account}");
    let usd = account["balances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["asset"] == "USD")
        .cloned()
        .unwrap();
    assert_eq!(
        usd,
        serde_json::json!({"asset": "USD", "total": "1000000.000000", "available": "1000000.000000", "held": "0.000000"})
    );

    // Refresh gives a new token for the same user.
    let (status, response) = http_raw(
        addr,
        &post_json(addr, "/api/v1/auth/refresh", "", &format!("Authorization: Bearer {token}\r\n")),
    )
    .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(body_json(&response)["account"].as_u64(), Some(u64::from(alice_account)));

    // Bob's token shows Bob's account, not Alice's.
    let (bob, bob_password, bob_account) = DEMO_USERS[1];
    let (_, body) = login(addr, bob, bob_password).await;
    let (_, response) =
        http_raw(addr, &get_auth(addr, "/api/v1/account", body["token"].as_str().unwrap())).await;
    assert_eq!(body_json(&response)["account"].as_u64(), Some(u64::from(bob_account)));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_bad_tokens_get_401_json() {
    // Time moves when the test says so: the expiry below costs no sleep.
    let clock = tickgate_engine::ManualClock::at_wall_time();
    let shared: tickgate_engine::SharedClock = clock.clone();
    let server = start(|c| {
        c.clock = shared;
        c.jwt_secret = Some("test-secret".into());
        c.token_lifetime = Duration::from_secs(1);
    })
    .await;
    let addr = server.local_addr();
    let (alice, alice_password, _) = DEMO_USERS[0];
    for (user, password) in [(alice, "wrong"), ("nobody", alice_password), ("", "")] {
        let (status, body) = login(addr, user, password).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("invalid_credentials")),
            "{user}"
        );
    }
    let users = tickgate_gateway::auth::Users::demo().expect("users");
    let sessions = tickgate_gateway::sessions::Sessions::in_memory();
    let hour = Duration::from_secs(3600);
    let forged =
        Tokens::new(Some(b"another-secret"), Duration::from_secs(60), hour, &users, sessions)
            .issue(alice, tickgate_engine::AccountId(1));
    for token in [forged.as_str(), "garbage", "a.b.c", ""] {
        let (status, response) = http_raw(addr, &get_auth(addr, "/api/v1/account", token)).await;
        assert_eq!(
            (status, body_json(&response)["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{token:?}"
        );
    }
    let missing =
        format!("GET /api/v1/account HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, response) = http_raw(addr, &missing).await;
    assert_eq!(status, 401, "{response}");

    // A token that was good expires.
    let (_, body) = login(addr, alice, alice_password).await;
    let token = body["token"].as_str().unwrap().to_string();
    let (status, _) = http_raw(addr, &get_auth(addr, "/api/v1/account", &token)).await;
    assert_eq!(status, 200);
    clock.advance(Duration::from_secs(2));
    let (status, response) = http_raw(addr, &get_auth(addr, "/api/v1/account", &token)).await;
    assert_eq!(
        (status, body_json(&response)["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // WebSocket: a bad token is refused before the upgrade; no token is public access.
    let upgrade = |q: &str| {
        format!("GET /ws{q} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: upgrade, close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    };
    let (status, response) = http_raw(addr, &upgrade(&format!("?token={forged}"))).await;
    assert_eq!(
        (status, body_json(&response)["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let _public = connect(&server, "").await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_bodies_are_checked() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let plain = format!("POST /api/v1/auth/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi");
    let (status, response) = http_raw(addr, &plain).await;
    assert_eq!(
        (status, body_json(&response)["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, response) =
        http_raw(addr, &post_json(addr, "/api/v1/auth/login", "{nope", "")).await;
    assert_eq!((status, body_json(&response)["error"]["code"].as_str()), (400, Some("malformed")));
    let (status, response) =
        http_raw(addr, &post_json(addr, "/api/v1/auth/login", r#"{"username":"alice"}"#, "")).await;
    assert_eq!((status, body_json(&response)["error"]["code"].as_str()), (400, Some("malformed")));
    let huge = format!(r#"{{"username":"alice","password":"{}"}}"#, "x".repeat(20_000));
    let (status, response) =
        http_raw(addr, &post_json(addr, "/api/v1/auth/login", &huge, "")).await;
    assert_eq!(
        (status, body_json(&response)["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let get =
        format!("GET /api/v1/auth/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, _) = http_raw(addr, &get).await;
    assert_eq!(status, 405);
    server.shutdown().await.expect("clean shutdown");
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (_, text) = http_raw(addr, &head).await;
    let prefix = format!("tickgate_{name} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok()).expect("metric")
}

/// Wrong passwords are throttled per username from an address, and per address, with 429
/// + Retry-After, known and unknown users alike, from that address only; after the window the right
/// password works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled() {
    let clock = tickgate_engine::ManualClock::at_wall_time();
    let shared: tickgate_engine::SharedClock = clock.clone();
    let server = start(|c| c.clock = shared).await;
    let addr = server.local_addr();
    let (alice, alice_password, _) = DEMO_USERS[0];
    for n in 0..tickgate_gateway::throttle::FREE_FAILURES {
        let (status, _) = login(addr, alice, "wrong").await;
        assert_eq!(status, 401, "failure {n} is answered");
    }
    for password in ["wrong", alice_password] {
        let body = serde_json::json!({"username": alice, "password": password}).to_string();
        let (status, response) =
            http_raw(addr, &post_json(addr, "/api/v1/auth/login", &body, "")).await;
        assert_eq!(status, 429, "blocked, whatever the password: {response}");
        assert!(response.to_ascii_lowercase().contains("retry-after: 1"), "{response}");
    }
    // The same address is throttled for other names too (unknown ones included).
    assert_eq!(login(addr, "nobody", "x").await.0, 429);
    // Alice from another address is not: failing as her from here does not lock her out.
    let (status, body) = login_from_elsewhere(addr, alice, alice_password).await;
    assert_eq!(status, 200, "{body}");
    assert!(metric(addr, "login_throttled_total").await >= 3);
    assert_eq!(metric(addr, "login_failures_total").await, 5);
    clock.advance(Duration::from_millis(1100));
    let (status, body) = login(addr, alice, alice_password).await;
    assert_eq!(status, 200, "the right password works after the window: {body}");
    // A success leaves no block behind it: the next user from the same address (behind a
    // proxy, everyone) logs in at once, and again.
    let (bob, bob_password, _) = DEMO_USERS[1];
    for _ in 0..2 {
        let (status, body) = login(addr, bob, bob_password).await;
        assert_eq!(status, 200, "not blocked by the success before: {body}");
    }
    server.shutdown().await.expect("clean shutdown");
}

/// Logout ends the session: its tokens (refreshed ones too) get 401, an open WebSocket is
/// closed with 4003 and an open SSE stream ends with a `session_revoked` event; another
/// session of the same user stands until `?all=true`. The bearer scheme is
/// case-insensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_session_everywhere() {
    use tickgate_gateway::client::{self, Message};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, alice_password, _) = DEMO_USERS[0];
    let token = login(addr, alice, alice_password).await.1["token"].as_str().unwrap().to_string();
    let other = login(addr, alice, alice_password).await.1["token"].as_str().unwrap().to_string();
    let lower = format!("GET /api/v1/account HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nauthorization: bearer {token}\r\n\r\n");
    assert_eq!(http_raw(addr, &lower).await.0, 200, "lower-case scheme");
    let (status, response) = http_raw(
        addr,
        &post_json(addr, "/api/v1/auth/refresh", "", &format!("Authorization: Bearer {token}\r\n")),
    )
    .await;
    assert_eq!(status, 200, "{response}");
    let refreshed = body_json(&response)["token"].as_str().unwrap().to_string();

    let mut ws = client::connect(addr, &format!("/ws?token={token}")).await.expect("ws");
    let _welcome = client::next(&mut ws).await.expect("welcome");
    let mut sse = tokio::net::TcpStream::connect(addr).await.expect("sse");
    let head = format!("GET /api/v1/alerts/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {refreshed}\r\n\r\n");
    sse.write_all(head.as_bytes()).await.expect("send");
    let mut first = [0u8; 12];
    sse.read_exact(&mut first).await.expect("stream starts");
    assert_eq!(&first, b"HTTP/1.1 200");

    let logout =
        post_json(addr, "/api/v1/auth/logout", "", &format!("Authorization: Bearer {token}\r\n"));
    let (status, response) = http_raw(addr, &logout).await;
    assert_eq!((status, body_json(&response)["revoked"].as_str()), (200, Some("session")));
    for t in [&token, &refreshed] {
        assert_eq!(http_raw(addr, &get_auth(addr, "/api/v1/account", t)).await.0, 401);
    }
    assert_eq!(http_raw(addr, &get_auth(addr, "/api/v1/account", &other)).await.0, 200);
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match client::next(&mut ws).await {
                Ok(Message::Close(code, _)) => return code,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await
    .expect("the WebSocket is closed");
    assert_eq!(closed, Some(4003));
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, sse.read_to_end(&mut rest))
        .await
        .expect("stream ends")
        .expect("read");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("\"notice\":\"session_revoked\""), "{rest}");

    // Every session of the user.
    let all = post_json(
        addr,
        "/api/v1/auth/logout?all=true",
        "",
        &format!("Authorization: Bearer {other}\r\n"),
    );
    assert_eq!(http_raw(addr, &all).await.0, 200);
    assert_eq!(http_raw(addr, &get_auth(addr, "/api/v1/account", &other)).await.0, 401);
    let (status, body) = login(addr, alice, alice_password).await;
    assert_eq!(status, 200, "a new login works: {body}");
    server.shutdown().await.expect("clean shutdown");
}

/// Near the session's maximum age a refreshed token lives less than the usual lifetime:
/// `expires_in` (and a cookie's `Max-Age`) say how long it really lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_near_the_session_end_says_how_long_the_token_lasts() {
    let clock = tickgate_engine::ManualClock::at_wall_time();
    let shared: tickgate_engine::SharedClock = clock.clone();
    let server = start(|c| {
        c.clock = shared;
        c.token_lifetime = Duration::from_secs(100);
        c.session_max = Duration::from_secs(250);
    })
    .await;
    let addr = server.local_addr();
    let (alice, password, _) = DEMO_USERS[0];
    let (status, body) = login(addr, alice, password).await;
    assert_eq!((status, body["expires_in"].as_u64()), (200, Some(100)), "{body}");
    let mut token = body["token"].as_str().expect("token").to_string();
    let cookie_login = format!(r#"{{"username":"{alice}","password":"{password}","cookie":true}}"#);
    let answer = post_json(addr, "/api/v1/auth/login", &cookie_login, "");
    let (_, cookie_answer) = http_raw(addr, &answer).await;
    let cookie_of = |answer: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_string()
    };
    let mut cookie = cookie_of(&cookie_answer);
    // 90 s, then 180 s in: 100 s left of the session, then 70 s.
    for (at, left) in [(90, 100), (180, 70)] {
        clock.advance(Duration::from_secs(90));
        let auth = format!("Authorization: Bearer {token}\r\n");
        let (status, response) =
            http_raw(addr, &post_json(addr, "/api/v1/auth/refresh", "", &auth)).await;
        let refreshed = body_json(&response);
        assert_eq!(
            (status, refreshed["expires_in"].as_u64()),
            (200, Some(left)),
            "{at} s: {response}"
        );
        token = refreshed["token"].as_str().expect("token").to_string();
        let by_cookie = format!("Cookie: {cookie}\r\nX-Tickgate-CSRF: 1\r\n");
        let (status, response) =
            http_raw(addr, &post_json(addr, "/api/v1/auth/refresh", "", &by_cookie)).await;
        assert_eq!(status, 200, "{at} s: {response}");
        assert!(response.contains(&format!("Max-Age={left};")), "{at} s: {response}");
        cookie = cookie_of(&response);
    }
}
