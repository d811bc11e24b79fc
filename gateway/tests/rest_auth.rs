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
    let server = start(|c| {
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
    let forged = Tokens::new(Some(b"another-secret"), Duration::from_secs(60))
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
    tokio::time::sleep(Duration::from_millis(2100)).await;
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
