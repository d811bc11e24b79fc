//! The API's one error type: every refusal REST, SSE and WebSocket give, with its stable
//! code (documented in `docs/PROTOCOL.md`, `docs/SSE.md` and the OpenAPI document) and
//! its HTTP status.
//!
//! REST and SSE answer `{"error": {"code", "message"}}` with [`ApiError::status`]; the
//! WebSocket control channel answers `{"type": "error", "code", "message"}` on the open
//! connection, or closes it with a reason `"<code>: <message>"`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use tickgate_engine::{OrderId, RejectReason};

/// Every stable error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, not an object, a field of the wrong type, an unreadable body or head.
    Malformed,
    /// A parameter outside what the endpoint takes.
    InvalidParameter,
    /// `GET /ws` with a `format` other than `binary` or `json`.
    InvalidFormat,
    /// `GET /ws` with an `interval_ms` out of range.
    InvalidInterval,
    /// `GET /ws` without `Upgrade: websocket`.
    NotWebsocket,
    /// A WebSocket handshake hyper or fastwebsockets refused.
    BadHandshake,
    /// A body without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// A body over the limit.
    PayloadTooLarge,
    /// A request head over the limit (size or header lines).
    HeadTooLarge,
    /// A request target (path and query) longer than the server takes.
    UriTooLong,
    /// A body that did not arrive in time.
    RequestTimeout,
    /// No such route.
    NotFound,
    /// A route that does not take this method.
    MethodNotAllowed,
    /// No credentials, or a bad or expired token.
    Unauthorized,
    /// Login with a wrong username or password.
    InvalidCredentials,
    /// A cookie-authenticated change without an allowed origin or the CSRF header.
    CsrfRejected,
    /// An origin that may not call the API or use the session cookie.
    OriginNotAllowed,
    /// Operator endpoints without `--admin-token`.
    AdminDisabled,
    /// `auth` on a WebSocket that is already authenticated.
    AlreadyAuthenticated,
    /// A symbol in a request body (or a WebSocket channel) that is no instrument.
    UnknownSymbol,
    /// A symbol in a path that is no instrument: the resource does not exist (404).
    NoSuchMarket,
    /// No such order of this user.
    UnknownOrder,
    /// No such alert of this user.
    UnknownAlert,
    /// No such account (or no alert history for it).
    UnknownAccount,
    /// The engine refused the command, for this reason.
    Rejected(RejectReason),
    /// An idempotency key used before for a different order.
    IdempotencyKeyReused,
    /// A cancel or replace of an order that is no longer open.
    OrderClosed,
    /// A retried key whose order is no longer kept.
    OrderForgotten,
    /// A retried key whose first request has no outcome yet.
    RequestInProgress,
    /// Over a count limit (alerts per user, subscriptions, channels per request).
    LimitExceeded,
    /// Over a rate limit.
    RateLimited,
    /// Too many alert streams for this user.
    TooManyStreams,
    /// Too many alert streams on the server.
    StreamsFull,
    /// `--max-connections` reached, or the server is shutting down.
    TooManyConnections,
    /// A WebSocket `op` that is missing or unknown.
    UnknownOp,
    /// A WebSocket channel name that is not `book`, `bbo`, `trades`, `candles` or `orders`.
    UnknownChannel,
    /// A WebSocket `depth` out of range.
    InvalidDepth,
    /// Unsubscribing from a channel the connection does not follow.
    NotSubscribed,
    /// The server is shutting down.
    ShuttingDown,
    /// The engine's queue is full: retry shortly.
    EngineBusy,
    /// The engine's journal failed: nothing more can be acknowledged.
    JournalFailed,
    /// The engine is stopped or did not answer.
    EngineUnavailable,
    /// The engine did not answer in time; the command may still take effect.
    EngineTimeout,
    /// A server fault.
    Internal,
}

impl ErrorCode {
    /// Wire string.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Malformed => "malformed",
            InvalidParameter => "invalid_parameter",
            InvalidFormat => "invalid_format",
            InvalidInterval => "invalid_interval",
            NotWebsocket => "not_websocket",
            BadHandshake => "bad_handshake",
            UnsupportedMediaType => "unsupported_media_type",
            PayloadTooLarge => "payload_too_large",
            HeadTooLarge => "head_too_large",
            UriTooLong => "uri_too_long",
            RequestTimeout => "request_timeout",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Unauthorized => "unauthorized",
            InvalidCredentials => "invalid_credentials",
            CsrfRejected => "csrf_rejected",
            OriginNotAllowed => "origin_not_allowed",
            AdminDisabled => "admin_disabled",
            AlreadyAuthenticated => "already_authenticated",
            UnknownSymbol | NoSuchMarket => "unknown_symbol",
            UnknownOrder => "unknown_order",
            UnknownAlert => "unknown_alert",
            UnknownAccount => "unknown_account",
            Rejected(reason) => reason.as_str(),
            IdempotencyKeyReused => "idempotency_key_reused",
            OrderClosed => "order_closed",
            OrderForgotten => "order_forgotten",
            RequestInProgress => "request_in_progress",
            LimitExceeded => "limit_exceeded",
            RateLimited => "rate_limited",
            TooManyStreams | StreamsFull => "too_many_streams",
            TooManyConnections => "too_many_connections",
            UnknownOp => "unknown_op",
            UnknownChannel => "unknown_channel",
            InvalidDepth => "invalid_depth",
            NotSubscribed => "not_subscribed",
            ShuttingDown => "shutting_down",
            EngineBusy => "engine_busy",
            JournalFailed => "journal_failed",
            EngineUnavailable => "engine_unavailable",
            EngineTimeout => "engine_timeout",
            Internal => "internal",
        }
    }

    /// The HTTP status that goes with it.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            Malformed | InvalidParameter | InvalidFormat | InvalidInterval | NotWebsocket
            | BadHandshake | UnknownOp | UnknownChannel | InvalidDepth | NotSubscribed
            | AlreadyAuthenticated => StatusCode::BAD_REQUEST,
            Unauthorized | InvalidCredentials => StatusCode::UNAUTHORIZED,
            CsrfRejected | OriginNotAllowed | AdminDisabled => StatusCode::FORBIDDEN,
            NotFound | NoSuchMarket | UnknownOrder | UnknownAlert | UnknownAccount => {
                StatusCode::NOT_FOUND
            }
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejected(RejectReason::UnknownOrder)
            | OrderClosed
            | OrderForgotten
            | RequestInProgress => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            UriTooLong => StatusCode::URI_TOO_LONG,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UnknownSymbol | Rejected(_) | IdempotencyKeyReused | LimitExceeded => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            RateLimited | TooManyStreams => StatusCode::TOO_MANY_REQUESTS,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            StreamsFull | TooManyConnections | ShuttingDown | EngineBusy | JournalFailed
            | EngineUnavailable | EngineTimeout => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A refused or failed request: its code, what to tell the client, and what a retry
/// needs to know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What went wrong.
    pub code: ErrorCode,
    /// Explanation for a person.
    pub message: String,
    /// Seconds to wait before a retry (`Retry-After`).
    pub retry_after: Option<u64>,
    /// The engine did not answer in time although the command was queued: it may still
    /// execute, as this order.
    pub queued: Option<OrderId>,
    /// The order the answer is about (a rejected order's id, the id a timed-out one may
    /// take): `error.order_id` in the body.
    pub order_id: Option<OrderId>,
}

impl ApiError {
    /// An error with no retry hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retry_after = (code == ErrorCode::EngineBusy).then_some(1);
        ApiError { code, message: message.into(), retry_after, queued: None, order_id: None }
    }

    /// Names the order the answer is about.
    pub fn about(mut self, order: OrderId) -> Self {
        self.order_id = Some(order);
        self
    }

    /// Asks the client to wait `seconds` before a retry.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The wire code.
    pub fn code(&self) -> &'static str {
        self.code.as_str()
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// `{"error": {"code", "message"}}`, with `"order_id"` when it is about an order.
    pub fn body(&self) -> String {
        let mut error = serde_json::json!({ "code": self.code(), "message": self.message });
        if let Some(order) = self.order_id {
            error["order_id"] = order.0.into();
        }
        serde_json::json!({ "error": error }).to_string()
    }

    /// The HTTP answer: status, JSON body, `WWW-Authenticate` on a 401 for a missing or
    /// bad token, `Retry-After` when set, `Connection: close` after a body timeout.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.code == ErrorCode::Unauthorized {
            headers.insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(self.code, ErrorCode::RequestTimeout | ErrorCode::PayloadTooLarge) {
            // A body that never completes, or is not read, must not hold the connection.
            headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The same answer as raw HTTP/1.1 bytes, closing the connection, with `extra` header
    /// lines (for streams served without hyper).
    pub fn raw_http1(&self, extra: &str) -> Vec<u8> {
        let body = self.body();
        let status = self.status();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if self.code == ErrorCode::Unauthorized {
            head.push_str("www-authenticate: Bearer\r\n");
        }
        if let Some(seconds) = self.retry_after {
            head.push_str(&format!("retry-after: {seconds}\r\n"));
        }
        head.push_str(extra);
        head.push_str("\r\n");
        head.push_str(&body);
        head.into_bytes()
    }
}

impl From<ApiError> for Response<Full<Bytes>> {
    fn from(e: ApiError) -> Self {
        e.response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_their_wire_strings_and_statuses() {
        let cases = [
            (ErrorCode::NoSuchMarket, "unknown_symbol", 404),
            (ErrorCode::UnknownSymbol, "unknown_symbol", 422),
            (ErrorCode::Rejected(RejectReason::UnknownOrder), "unknown_order", 409),
            (ErrorCode::Rejected(RejectReason::InvalidPrice), "invalid_price", 422),
            (ErrorCode::TooManyStreams, "too_many_streams", 429),
            (ErrorCode::StreamsFull, "too_many_streams", 503),
            (ErrorCode::EngineBusy, "engine_busy", 503),
        ];
        for (code, text, status) in cases {
            assert_eq!((code.as_str(), code.status().as_u16()), (text, status), "{code:?}");
        }
    }

    #[test]
    fn the_answer_carries_the_body_and_the_headers_a_retry_needs() {
        let busy = ApiError::new(ErrorCode::EngineBusy, "queue full").response();
        assert_eq!(busy.headers()["retry-after"], "1", "engine_busy always says when");
        let e = ApiError::new(ErrorCode::Unauthorized, "expired");
        let response = e.response();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(e.body(), r#"{"error":{"code":"unauthorized","message":"expired"}}"#);
        let about = ApiError::new(ErrorCode::EngineTimeout, "late").about(OrderId(7));
        assert_eq!(
            about.body(),
            r#"{"error":{"code":"engine_timeout","message":"late","order_id":7}}"#
        );
        let raw = String::from_utf8(
            ApiError::new(ErrorCode::TooManyStreams, "x").retry_after(2).raw_http1("vary: a\r\n"),
        )
        .unwrap();
        assert!(raw.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{raw}");
        assert!(raw.contains("retry-after: 2\r\nvary: a\r\n\r\n{"), "{raw}");
    }
}
