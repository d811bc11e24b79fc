//! Login, token refresh and the caller's account.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::SET_COOKIE;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tickgate_engine::types::Fixed;
use tickgate_engine::AccountId;

use super::{authenticate, authorize, json_body, unauthorized};
use crate::error::{ApiError, ErrorCode};
use crate::reply::json_response;
use crate::state::AppState;
use std::sync::atomic::Ordering;

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
    /// Set the session cookie instead of answering with the token.
    #[serde(default)]
    cookie: bool,
}

/// The token: in the body (`Bearer`), or only in the `HttpOnly` session cookie (`Cookie`:
/// scripts never see it).
fn token_response(
    state: &AppState,
    token: String,
    account: AccountId,
    cookie: bool,
) -> Response<Full<Bytes>> {
    // What the token itself says: near the session's maximum age it lives less than the
    // usual lifetime, and a client plans its next refresh from this.
    let lifetime = state.tokens.lifetime_of(&token).unwrap_or(0);
    if !cookie {
        let body = json!({
            "token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "account": account.0,
        });
        return json_response(StatusCode::OK, &body);
    }
    let body = json!({ "token_type": "Cookie", "expires_in": lifetime, "account": account.0 });
    let mut response = json_response(StatusCode::OK, &body);
    if let Some(v) = crate::cors::cookie::set(&token, lifetime, state.tls) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

/// `POST /api/v1/auth/login` `{"username", "password", "cookie"?}`: a short-lived token,
/// or with `"cookie": true` the session cookie. Failures are throttled per username and
/// per client address (see [`crate::throttle`]).
pub async fn login(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let addr = req.extensions().get::<crate::request::PeerAddr>().map(|p| p.0.ip());
    let body: Login = match json_body(req, state).await {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    let attempt = match state.login_throttle.attempt(&body.username, addr) {
        Ok(attempt) => attempt,
        Err(wait) => {
            state.metrics.login_throttled_total.fetch_add(1, Ordering::Relaxed);
            return super::too_many_requests(wait).response();
        }
    };
    // Argon2 takes ~19 MiB and tens of ms a check: a bounded number at once, and off the
    // async workers.
    let Ok(_slot) = state.login_slots.acquire().await else {
        return ApiError::new(ErrorCode::ShuttingDown, "login is closed").response();
    };
    let users = state.users.clone();
    let checked = tokio::task::spawn_blocking(move || {
        users.check(&body.username, &body.password).map(|u| (u.username.clone(), u.account))
    })
    .await;
    match checked {
        Ok(Some((username, account))) => {
            state.login_throttle.succeeded(&username, addr, attempt);
            let token = state.tokens.issue(&username, account);
            token_response(state, token, account, body.cookie)
        }
        Ok(None) => {
            // `attempt` counted it as a failure already.
            state.metrics.login_failures_total.fetch_add(1, Ordering::Relaxed);
            ApiError::new(ErrorCode::InvalidCredentials, "wrong username or password").response()
        }
        Err(_) => ApiError::new(ErrorCode::Internal, "login failed").response(),
    }
}

/// `POST /api/v1/auth/refresh` with a valid token: a new token of the same session with a
/// fresh lifetime, never past the session's maximum age (then 401: log in again).
/// Rate-limited like every authenticated route. A session cookie is renewed as a cookie.
pub fn refresh<B>(req: &Request<B>, state: &AppState) -> Response<Full<Bytes>> {
    let claims = match authorize(req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let by_cookie = super::by_cookie(req, state);
    match state.tokens.renew(&claims) {
        Some(token) => token_response(state, token, AccountId(claims.acc), by_cookie),
        None => unauthorized("the session reached its maximum age: log in again").response(),
    }
}

/// `POST /api/v1/auth/logout[?all=true]`: ends the caller's session (every token of it,
/// refreshed ones included), or with `all=true` every session of the user. Open WebSocket
/// connections and SSE streams of an ended session are closed.
pub async fn logout<B>(req: &Request<B>, state: &AppState) -> Response<Full<Bytes>> {
    let claims = match authenticate(req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let all = match crate::request::query_param(req.uri().query(), "all") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return super::invalid_parameter("all is true or false").response(),
    };
    // The revocation is written to disk (fsync): off the async workers.
    let tokens = std::sync::Arc::clone(&state.tokens);
    let revoked = tokio::task::spawn_blocking(move || {
        if all {
            tokens.revoke_all(&claims);
        } else {
            tokens.revoke(&claims);
        }
    })
    .await;
    if revoked.is_err() {
        return ApiError::new(ErrorCode::Internal, "logout failed").response();
    }
    let mut response =
        json_response(StatusCode::OK, &json!({ "revoked": if all { "all" } else { "session" } }));
    // The cookie is cleared when it is the session that ended.
    if super::by_cookie(req, state) {
        response.headers_mut().insert(SET_COOKIE, crate::cors::cookie::clear(state.tls));
    }
    response
}

/// `GET /api/v1/account`: balances per asset (total, available, held), summed over the
/// engine shards' ledgers, and with several shards each shard's own.
pub fn account<B>(req: &Request<B>, state: &AppState) -> Response<Full<Bytes>> {
    let claims = match authorize(req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    // Published by the engine threads after every batch, read lock-free: the engine is
    // neither locked nor asked.
    let account = AccountId(claims.acc);
    let engine = &state.engine;
    let assets = engine.assets();
    // Each shard keeps its own ledger: read them all, then their sum.
    let mut ledgers = Vec::with_capacity(engine.shards());
    for shard in 0..engine.shards() {
        let Some(published) = engine.published_account(shard, account) else {
            return ApiError::new(ErrorCode::UnknownAccount, "the account does not exist")
                .response();
        };
        ledgers.push(published);
    }
    let rows = |p: &tickgate_engine::PublishedAccount| {
        p.balances.iter().map(|b| (i128::from(b.total.0), i128::from(b.held.0))).collect::<Vec<_>>()
    };
    let mut totals = vec![(0i128, 0i128); assets.len()];
    for ledger in &ledgers {
        for (t, b) in totals.iter_mut().zip(&ledger.balances) {
            t.0 += i128::from(b.total.0);
            t.1 += i128::from(b.held.0);
        }
    }
    // Written directly (the hottest authenticated read): no intermediate JSON values.
    // Asset symbols are plain ASCII letters; the username goes through the JSON encoder.
    use std::fmt::Write as _;
    let username = serde_json::to_string(&claims.sub).unwrap_or_else(|_| "\"\"".into());
    let mut body = String::with_capacity(96 + 96 * assets.len() * (1 + ledgers.len()));
    let _ = write!(body, r#"{{"account":{},"username":{username},"balances":"#, claims.acc);
    write_balances(&mut body, &totals, assets);
    if ledgers.len() > 1 {
        // What one order can spend is its instrument's shard's (OPERATIONS: accounts with
        // several shards).
        body.push_str(r#","shards":["#);
        for (shard, ledger) in ledgers.iter().enumerate() {
            let comma = if shard == 0 { "" } else { "," };
            let _ = write!(body, r#"{comma}{{"shard":{shard},"balances":"#);
            write_balances(&mut body, &rows(ledger), assets);
            body.push('}');
        }
        body.push(']');
    }
    body.push('}');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `[{"asset","total","available","held"}, ...]` of `rows` (total and held per asset).
fn write_balances(body: &mut String, rows: &[(i128, i128)], assets: &[tickgate_engine::Asset]) {
    use std::fmt::Write as _;
    let fmt = |v: i128, p: u8| Fixed(i64::try_from(v).unwrap_or(i64::MAX), p);
    body.push('[');
    for (i, ((total, held), a)) in rows.iter().zip(assets).enumerate() {
        let _ = write!(
            body,
            r#"{}{{"asset":"{}","total":"{}","available":"{}","held":"{}"}}"#,
            if i == 0 { "" } else { "," },
            a.symbol,
            fmt(*total, a.precision),
            fmt(total - held, a.precision),
            fmt(*held, a.precision),
        );
    }
    body.push(']');
}
