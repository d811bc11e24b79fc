//! Building answers: JSON bodies and the 405 with its `Allow` header.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Response, StatusCode};

use crate::error::{ApiError, ErrorCode};

/// The 405 answer, with the `Allow` header (RFC 9110) naming the methods the route takes.
pub fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response =
        ApiError::new(ErrorCode::MethodNotAllowed, format!("use {allow}")).response();
    response
        .headers_mut()
        .insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allow));
    response
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, "application/json".parse().expect("static header"));
    response
}
