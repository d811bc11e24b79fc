//! REST API under `/api/v1`: public market data ([`market`]), login, sessions and the
//! account ([`account`]), order entry, orders, fills and positions ([`orders`]), price
//! alerts ([`alerts`]), operator actions ([`admin`]). Every refusal is an
//! [`crate::error::ApiError`]: `{"error": {"code", "message"}}` with its status.

pub mod account;
pub mod admin;
pub mod alerts;
pub mod market;
pub mod orders;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use hyper::{Method, Request, Response, StatusCode};

use crate::auth::Claims;
use crate::error::{ApiError, ErrorCode};
use crate::reply::{json_response, method_not_allowed};
use crate::request::{bearer, session_cookie};
use crate::state::AppState;

/// Every route the server answers, as (method, path template): what
/// `/api/v1/openapi.json` must describe, no more and no less (checked by a test that also
/// sends a real request to each). HEAD is served wherever GET is.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/instruments"),
    ("GET", "/api/v1/markets/{symbol}/book"),
    ("GET", "/api/v1/markets/{symbol}/trades"),
    ("GET", "/api/v1/markets/{symbol}/candles"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/logout"),
    ("GET", "/api/v1/account"),
    ("GET", "/api/v1/positions"),
    ("POST", "/api/v1/orders"),
    ("GET", "/api/v1/orders"),
    ("DELETE", "/api/v1/orders"),
    ("GET", "/api/v1/orders/{id}"),
    ("DELETE", "/api/v1/orders/{id}"),
    ("PATCH", "/api/v1/orders/{id}"),
    ("GET", "/api/v1/fills"),
    ("POST", "/api/v1/alerts"),
    ("GET", "/api/v1/alerts"),
    ("DELETE", "/api/v1/alerts/{id}"),
    ("GET", "/api/v1/alerts/stream"),
    ("POST", "/api/v1/admin/instruments/{symbol}/halt"),
    ("POST", "/api/v1/admin/instruments/{symbol}/resume"),
    ("GET", "/ws"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/debug/digest"),
    ("GET", "/"),
    ("GET", "/app.js"),
    ("GET", "/tickgate.js"),
    ("GET", "/style.css"),
    ("GET", "/favicon.svg"),
];

/// The OpenAPI 3 document, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest request body the API reads.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

/// Routes `/api/v1/...`. Every answer about a user (tokens, account, orders, fills,
/// positions, alerts) carries `Cache-Control: no-store`.
pub async fn route(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let path = req.uri().path().strip_prefix("/api/v1/").unwrap_or_default().to_string();
    let segments: Vec<&str> = path.split('/').collect();
    let public =
        matches!(segments.as_slice(), ["openapi.json"] | ["instruments"] | ["markets", ..]);
    let mut response = dispatch(req, state, &segments).await;
    if !public && !response.headers().contains_key(CACHE_CONTROL) {
        response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn dispatch(
    req: Request<Incoming>,
    state: &AppState,
    segments: &[&str],
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match segments {
        ["openapi.json"] if get => {
            let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
            response
        }
        ["instruments"] if get => market::instruments(&req, state),
        ["markets", symbol, "book"] if get => market::book(&req, state, symbol),
        ["markets", symbol, "trades"] if get => market::trades(&req, state, symbol),
        ["markets", symbol, "candles"] if get => market::candles(&req, state, symbol),
        ["auth", "login"] if post => account::login(req, state).await,
        ["auth", "refresh"] if post => account::refresh(&req, state),
        ["auth", "logout"] if post => account::logout(&req, state).await,
        ["account"] if get => account::account(&req, state),
        ["orders"] if post => orders::place(req, state).await,
        ["orders"] if get => orders::list(&req, state),
        ["orders"] if method == Method::DELETE => orders::cancel_all(&req, state).await,
        ["orders", id] if get => orders::get_one(&req, state, id).await,
        ["orders", id] if method == Method::DELETE => orders::cancel(&req, state, id).await,
        ["orders", id] if method == Method::PATCH => orders::replace(req, state, id).await,
        ["admin", "instruments", symbol, action @ ("halt" | "resume")] if post => {
            admin::trading_status(&req, state, symbol, *action == "halt").await
        }
        ["admin", "instruments", _, "halt" | "resume"] => method_not_allowed("POST"),
        ["alerts"] if post => alerts::create(req, state).await,
        ["alerts"] if get => alerts::list(&req, state).await,
        ["alerts", id] if method == Method::DELETE => alerts::delete(&req, state, id).await,
        ["fills"] if get => orders::fills(&req, state),
        ["positions"] if get => orders::positions(&req, state),
        ["orders"] => method_not_allowed("GET, HEAD, POST, DELETE"),
        ["alerts"] => method_not_allowed("GET, HEAD, POST"),
        ["alerts", _] => method_not_allowed("DELETE"),
        ["orders", _] => method_not_allowed("GET, HEAD, PATCH, DELETE"),
        ["instruments"]
        | ["openapi.json"]
        | ["markets", _, "book" | "trades" | "candles"]
        | ["account"]
        | ["fills"]
        | ["positions"] => method_not_allowed("GET, HEAD"),
        ["auth", "login" | "refresh" | "logout"] => method_not_allowed("POST"),
        _ => ApiError::new(ErrorCode::NotFound, "no such route").response(),
    }
}

/// The caller's claims from `Authorization: Bearer`, or else from the session cookie
/// (which may change state only from an allowed origin, see [`crate::cors`]); else the
/// 401 (or, for a cookie from the wrong origin, 403) answer.
pub fn authenticate<B>(req: &Request<B>, state: &AppState) -> Result<Claims, ApiError> {
    let verify = |token: &str| state.tokens.verify(token).map_err(|e| unauthorized(&e.to_string()));
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(token) = bearer(header) {
        return verify(token);
    }
    let Some(token) = session_cookie(req, state.tls) else {
        return Err(unauthorized("missing bearer token (or session cookie)"));
    };
    let claims = verify(token)?;
    if !state.origins.cookie_may(req) {
        return Err(ApiError::new(
            ErrorCode::CsrfRejected,
            "a change authenticated by the session cookie must come from an allowed Origin \
             or carry X-Tickgate-CSRF",
        ));
    }
    Ok(claims)
}

/// Whether [`authenticate`] takes the request's credentials from the session cookie (no
/// usable bearer token, a cookie).
pub fn by_cookie<B>(req: &Request<B>, state: &AppState) -> bool {
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    bearer(header).is_none() && session_cookie(req, state.tls).is_some()
}

/// The caller's claims, once authenticated and within the per-user request rate; else the
/// 401 or 429 answer.
pub fn authorize<B>(req: &Request<B>, state: &AppState) -> Result<Claims, ApiError> {
    let claims = authenticate(req, state)?;
    state.rest_limit.check(claims.acc).map_err(too_many_requests)?;
    Ok(claims)
}

/// The 429 answer, with `Retry-After` in whole seconds (at least 1).
pub fn too_many_requests(wait: std::time::Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let message = format!("too many requests; retry in {} ms", wait.as_millis().max(1));
    ApiError::new(ErrorCode::RateLimited, message).retry_after(seconds.max(1))
}

/// The 401 refusal.
pub fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// The 415 answer unless the request says `Content-Type: application/json`.
pub fn reject_non_json<B>(req: &Request<B>) -> Result<(), ApiError> {
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        return Ok(());
    }
    Err(ApiError::new(ErrorCode::UnsupportedMediaType, "send Content-Type: application/json"))
}

/// The 413 refusal.
pub fn too_large() -> ApiError {
    let message = format!("request bodies are at most {BODY_BYTES_MAX} bytes");
    ApiError::new(ErrorCode::PayloadTooLarge, message)
}

/// Reads a whole request body: at most [`BODY_BYTES_MAX`] (else `413`, at once when the
/// `Content-Length` says so, and the connection is closed), within `timeout`
/// (`--body-timeout-ms`; else `408`, and the connection is closed: a body that never
/// completes must not hold it).
pub async fn read_body(body: Incoming, timeout: std::time::Duration) -> Result<Vec<u8>, ApiError> {
    // A declared length over the limit is refused at once, not after waiting for a body
    // that would be refused anyway (or that never comes).
    if hyper::body::Body::size_hint(&body).lower() > BODY_BYTES_MAX as u64 {
        return Err(too_large());
    }
    let collect = Limited::new(body, BODY_BYTES_MAX).collect();
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(too_large())
        }
        Ok(Err(_)) => Err(ApiError::new(ErrorCode::Malformed, "could not read the body")),
        Err(_) => {
            let message =
                format!("the request body did not arrive within {} ms", timeout.as_millis());
            Err(ApiError::new(ErrorCode::RequestTimeout, message))
        }
    }
}

/// Reads a JSON request body (`Content-Type: application/json`, at most
/// [`BODY_BYTES_MAX`] bytes) into `T`, or answers 415, 413 or 400.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    state: &AppState,
) -> Result<T, ApiError> {
    reject_non_json(&req)?;
    let bytes = read_body(req.into_body(), state.body_timeout).await?;
    parse_json(bytes)
        .map_err(|m| ApiError::new(ErrorCode::Malformed, format!("invalid JSON body: {m}")))
}

/// Parses a JSON body: simd-json first (fast), and where it refuses, serde_json, which
/// also takes what simd-json does not (a number beyond 64 bits in a field nobody reads)
/// and says what is wrong in words (field, line, column) rather than parser internals.
/// A surrogate escape goes to serde_json alone (simd-json reads a lone one as U+0000).
pub fn parse_json<T: serde::de::DeserializeOwned>(mut bytes: Vec<u8>) -> Result<T, String> {
    if crate::request::has_surrogate_escape(&bytes) {
        return serde_json::from_slice(&bytes).map_err(|e| e.to_string());
    }
    let original = bytes.clone();
    simd_json::serde::from_slice(&mut bytes)
        .or_else(|_| serde_json::from_slice(&original))
        .map_err(|e: serde_json::Error| e.to_string())
}

/// A cacheable JSON answer: `ETag` from `tag`, `304` when the client has it already.
pub fn cached<B>(
    req: &Request<B>,
    tag: &str,
    cache_control: &'static str,
    body: impl FnOnce() -> serde_json::Value,
) -> Response<Full<Bytes>> {
    let etag = format!("\"{tag}\"");
    let matches = req.headers().get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*")
    });
    let mut response = if matches {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        json_response(StatusCode::OK, &body())
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, v);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    response
}

/// A query parameter parsed as a number within `range`; the error is the 400 message.
pub fn number_param<B>(
    req: &Request<B>,
    name: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, String> {
    match crate::request::query_param(req.uri().query(), name) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(format!(
                "`{name}` must be a whole number in {}..={}",
                range.start(),
                range.end()
            )),
        },
    }
}

/// The 400 refusal of a bad parameter.
pub fn invalid_parameter(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameter, message)
}

#[cfg(test)]
mod tests {
    /// A lone surrogate escape is malformed (simd-json alone would read it as U+0000 and
    /// answer `unknown_symbol "no instrument \u0000"`); a pair is read as sent.
    #[test]
    fn surrogate_escapes_are_read_in_pairs_and_refused_alone() {
        let lone = br#"{"symbol":"\ud800","side":"buy"}"#.to_vec();
        assert!(super::parse_json::<serde_json::Value>(lone).is_err());
        let upper = br#"{"symbol":"x\uDC00"}"#.to_vec();
        assert!(super::parse_json::<serde_json::Value>(upper).is_err());
        let pair = br#"{"symbol":"\ud83d\ude00"}"#.to_vec();
        let read: serde_json::Value = super::parse_json(pair).expect("a pair");
        assert_eq!(read["symbol"], "\u{1F600}");
    }
}
