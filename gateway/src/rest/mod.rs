//! REST API under `/api/v1`. So far: public market data ([`market`]).

pub mod market;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use hyper::{Method, Request, Response, StatusCode};

use crate::http::{json_error, json_response, AppState};

/// Routes `/api/v1/...`; `None` if the path is not an API route.
pub fn route<B>(req: &Request<B>, state: &AppState) -> Option<Response<Full<Bytes>>> {
    let path = req.uri().path().strip_prefix("/api/v1/")?;
    let segments: Vec<&str> = path.split('/').collect();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let response = match segments.as_slice() {
        ["instruments"] if get => market::instruments(req, state),
        ["markets", symbol, "book"] if get => market::book(req, state, symbol),
        ["markets", symbol, "trades"] if get => market::trades(req, state, symbol),
        ["instruments"] | ["markets", _, "book" | "trades"] => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
        }
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    };
    Some(response)
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
    match crate::ws::query_param(req.uri().query(), name) {
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

/// The 400 answer for a bad parameter.
pub fn invalid_parameter(message: &str) -> Response<Full<Bytes>> {
    json_error(StatusCode::BAD_REQUEST, "invalid_parameter", message)
}
