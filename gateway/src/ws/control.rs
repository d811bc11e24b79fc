//! Client control messages (JSON text frames, parsed with simd-json) and the server's
//! JSON replies. Every request may carry an `id` (number or string) that its answer echoes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{self, Opcode};
use crate::trading::{NewOrderRequest, ReplaceRequest};

/// A client's request id, echoed verbatim.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RequestId {
    /// Numeric id.
    Num(u64),
    /// String id.
    Str(String),
}

#[derive(Deserialize)]
struct Envelope {
    op: Option<String>,
    id: Option<RequestId>,
    channels: Option<Vec<String>>,
    depth: Option<u64>,
    token: Option<String>,
    order_id: Option<u64>,
    symbol: Option<String>,
    side: Option<String>,
    #[serde(rename = "type")]
    order_type: Option<String>,
    price: Option<String>,
    qty: Option<String>,
    client_order_id: Option<u64>,
    stp: Option<String>,
    idempotency_key: Option<String>,
}

/// A parsed, well-formed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Subscribe to channels (snapshot, then live messages).
    Subscribe {
        /// Echoed id.
        id: Option<RequestId>,
        /// Channel names.
        channels: Vec<String>,
        /// Book depth for snapshots (book channels).
        depth: usize,
    },
    /// Stop channels.
    Unsubscribe {
        /// Echoed id.
        id: Option<RequestId>,
        /// Channel names.
        channels: Vec<String>,
    },
    /// Application-level ping.
    Ping {
        /// Echoed id.
        id: Option<RequestId>,
    },
    /// Authenticates the connection (when no `?token=` was given on the upgrade).
    Auth {
        /// Echoed id.
        id: Option<RequestId>,
        /// A token from `POST /api/v1/auth/login`.
        token: String,
    },
    /// Places an order (authenticated connections).
    OrderNew {
        /// Echoed id.
        id: Option<RequestId>,
        /// The order, with the same fields as `POST /api/v1/orders`.
        order: NewOrderRequest,
        /// The client's idempotency key (as REST's `Idempotency-Key` header).
        key: Option<String>,
    },
    /// Cancels an order.
    OrderCancel {
        /// Echoed id.
        id: Option<RequestId>,
        /// Engine order id.
        order_id: u64,
    },
    /// Replaces an order's price and/or open quantity.
    OrderReplace {
        /// Echoed id.
        id: Option<RequestId>,
        /// Engine order id.
        order_id: u64,
        /// New price and/or quantity.
        replace: ReplaceRequest,
    },
}

impl Request {
    /// The request's id, if it has one.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            Request::Subscribe { id, .. }
            | Request::Unsubscribe { id, .. }
            | Request::Ping { id }
            | Request::Auth { id, .. }
            | Request::OrderNew { id, .. }
            | Request::OrderCancel { id, .. }
            | Request::OrderReplace { id, .. } => id.as_ref(),
        }
    }
}

/// Stable error codes (documented in `docs/PROTOCOL.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, not an object, or a field of the wrong type.
    Malformed,
    /// `op` is missing or not a known operation.
    UnknownOp,
    /// Channel prefix is not `book`, `bbo` or `trades`, or the name has no symbol.
    UnknownChannel,
    /// The symbol is not an instrument.
    UnknownSymbol,
    /// Too many subscriptions, or too many channels in one request.
    LimitExceeded,
    /// `depth` out of range.
    InvalidDepth,
    /// Unsubscribe from a channel the connection does not follow.
    NotSubscribed,
    /// Over the inbound message rate.
    RateLimited,
    /// Order entry or the `orders` channel without authentication, or a bad token.
    Unauthorized,
    /// `auth` on a connection that is already authenticated.
    AlreadyAuthenticated,
}

impl ErrorCode {
    /// Wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnknownChannel => "unknown_channel",
            ErrorCode::UnknownSymbol => "unknown_symbol",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::InvalidDepth => "invalid_depth",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
        }
    }
}

/// A refused request: the code, a human message, and the id if one could be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// Echoed id.
    pub id: Option<RequestId>,
    /// Code.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
}

/// Default book depth of a snapshot when the client gives none.
pub const DEFAULT_DEPTH: usize = 50;
/// Channels one request may name.
pub const CHANNELS_PER_REQUEST_MAX: usize = 64;

/// Parses one text frame. `scratch` is reused across calls (simd-json parses in place).
pub fn parse(text: &[u8], scratch: &mut Vec<u8>) -> Result<Request, RequestError> {
    scratch.clear();
    scratch.extend_from_slice(text);
    let envelope: Envelope = simd_json::serde::from_slice(scratch).map_err(|e| RequestError {
        id: None,
        code: ErrorCode::Malformed,
        message: format!("invalid JSON request: {e}"),
    })?;
    let id = envelope.id;
    let err = |code, message: &str| RequestError { id: id.clone(), code, message: message.into() };
    let channels = |c: Option<Vec<String>>| match c {
        None => Err(err(ErrorCode::Malformed, "`channels` is required")),
        Some(c) if c.is_empty() => Err(err(ErrorCode::Malformed, "`channels` is empty")),
        Some(c) if c.len() > CHANNELS_PER_REQUEST_MAX => {
            Err(err(ErrorCode::LimitExceeded, "too many channels in one request"))
        }
        Some(mut c) => {
            // Naming a channel twice in one request means it once.
            let mut seen = std::collections::HashSet::with_capacity(c.len());
            c.retain(|name| seen.insert(name.clone()));
            Ok(c)
        }
    };
    match envelope.op.as_deref() {
        Some("subscribe") => {
            let depth = match envelope.depth {
                None => DEFAULT_DEPTH,
                Some(d) if (1..=protocol::SNAPSHOT_DEPTH_MAX as u64).contains(&d) => d as usize,
                Some(_) => return Err(err(ErrorCode::InvalidDepth, "depth must be 1..=1000")),
            };
            Ok(Request::Subscribe { channels: channels(envelope.channels)?, depth, id })
        }
        Some("unsubscribe") => {
            Ok(Request::Unsubscribe { channels: channels(envelope.channels)?, id })
        }
        Some("ping") => Ok(Request::Ping { id }),
        Some("auth") => match envelope.token {
            Some(token) => Ok(Request::Auth { id, token }),
            None => Err(err(ErrorCode::Malformed, "`token` is required")),
        },
        Some("order.new") => {
            let (Some(symbol), Some(side), Some(order_type), Some(qty)) =
                (envelope.symbol, envelope.side, envelope.order_type, envelope.qty)
            else {
                return Err(err(
                    ErrorCode::Malformed,
                    "`symbol`, `side`, `type` and `qty` are required",
                ));
            };
            let order = NewOrderRequest {
                symbol,
                side,
                order_type,
                price: envelope.price,
                qty,
                client_order_id: envelope.client_order_id,
                stp: envelope.stp,
            };
            Ok(Request::OrderNew { id, order, key: envelope.idempotency_key })
        }
        Some("order.cancel") => match envelope.order_id {
            Some(order_id) => Ok(Request::OrderCancel { id, order_id }),
            None => Err(err(ErrorCode::Malformed, "`order_id` is required")),
        },
        Some("order.replace") => match envelope.order_id {
            Some(order_id) => {
                let replace = ReplaceRequest { price: envelope.price, qty: envelope.qty };
                Ok(Request::OrderReplace { id, order_id, replace })
            }
            None => Err(err(ErrorCode::Malformed, "`order_id` is required")),
        },
        Some(other) => Err(err(ErrorCode::UnknownOp, &format!("unknown op `{other}`"))),
        None => Err(err(ErrorCode::UnknownOp, "`op` is required")),
    }
}

fn text_frame(value: &serde_json::Value) -> Bytes {
    protocol::frame(Opcode::Text, value.to_string().as_bytes()).into()
}

/// An error reply frame.
pub fn error_reply(e: &RequestError) -> Bytes {
    text_frame(&serde_json::json!({
        "op": "error", "id": e.id, "code": e.code.as_str(), "message": e.message,
    }))
}

/// Any other reply frame: `{"op": op, "id": id, ...fields}`.
pub fn reply(op: &str, id: &Option<RequestId>, fields: serde_json::Value) -> Bytes {
    let mut object = serde_json::json!({ "op": op, "id": id });
    if let (Some(o), serde_json::Value::Object(extra)) = (object.as_object_mut(), fields) {
        o.extend(extra);
    }
    text_frame(&object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Request, RequestError> {
        parse(text.as_bytes(), &mut Vec::new())
    }

    #[test]
    fn parses_requests() {
        assert_eq!(
            p(r#"{"op":"subscribe","id":7,"channels":["book.BTC-USD"],"depth":5}"#),
            Ok(Request::Subscribe {
                id: Some(RequestId::Num(7)),
                channels: vec!["book.BTC-USD".into()],
                depth: 5
            })
        );
        assert_eq!(
            p(r#"{"op":"ping","id":"a"}"#),
            Ok(Request::Ping { id: Some(RequestId::Str("a".into())) })
        );
        assert!(matches!(
            p(r#"{"op":"unsubscribe","channels":["x"]}"#),
            Ok(Request::Unsubscribe { .. })
        ));
    }

    #[test]
    fn refuses_bad_requests_with_stable_codes() {
        let code = |t: &str| p(t).map_err(|e| e.code).err();
        assert_eq!(code("not json"), Some(ErrorCode::Malformed));
        assert_eq!(code("[1,2]"), Some(ErrorCode::Malformed));
        assert_eq!(code(r#"{"op":5}"#), Some(ErrorCode::Malformed));
        assert_eq!(code(r#"{"id":1}"#), Some(ErrorCode::UnknownOp));
        assert_eq!(code(r#"{"op":"dance"}"#), Some(ErrorCode::UnknownOp));
        assert_eq!(code(r#"{"op":"subscribe"}"#), Some(ErrorCode::Malformed));
        assert_eq!(code(r#"{"op":"subscribe","channels":[]}"#), Some(ErrorCode::Malformed));
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["a"],"depth":0}"#),
            Some(ErrorCode::InvalidDepth)
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["a"],"depth":-1}"#),
            Some(ErrorCode::Malformed)
        );
        let many = format!(r#"{{"op":"subscribe","channels":[{}]}}"#, vec!["\"a\""; 65].join(","));
        assert_eq!(code(&many), Some(ErrorCode::LimitExceeded));
        assert_eq!(p(r#"{"op":"dance","id":3}"#).err().and_then(|e| e.id), Some(RequestId::Num(3)));
    }

    #[test]
    fn parses_auth_and_order_entry() {
        assert_eq!(
            p(r#"{"op":"auth","id":1,"token":"t"}"#),
            Ok(Request::Auth { id: Some(RequestId::Num(1)), token: "t".into() })
        );
        let Ok(Request::OrderNew { order, .. }) = p(
            r#"{"op":"order.new","id":2,"symbol":"BTC-USD","side":"buy","type":"limit","price":"1.00","qty":"0.1000","client_order_id":9}"#,
        ) else {
            panic!("order.new parses");
        };
        assert_eq!((order.symbol.as_str(), order.client_order_id), ("BTC-USD", Some(9)));
        assert!(matches!(
            p(r#"{"op":"order.replace","order_id":5,"qty":"1"}"#),
            Ok(Request::OrderReplace { order_id: 5, .. })
        ));
        let code = |t: &str| p(t).map_err(|e| e.code).err();
        assert_eq!(code(r#"{"op":"order.cancel"}"#), Some(ErrorCode::Malformed));
        assert_eq!(code(r#"{"op":"order.new","symbol":"BTC-USD"}"#), Some(ErrorCode::Malformed));
        assert_eq!(code(r#"{"op":"auth"}"#), Some(ErrorCode::Malformed));
        assert_eq!(code(r#"{"op":"order.cancel","order_id":-1}"#), Some(ErrorCode::Malformed));
    }

    #[test]
    fn replies_are_text_frames_with_the_id() {
        let frame = reply("pong", &Some(RequestId::Num(1)), serde_json::json!({"ts": 5}));
        assert_eq!(frame[0], 0x81);
        let body: serde_json::Value = serde_json::from_slice(&frame[2..]).expect("json");
        assert_eq!(body, serde_json::json!({"op": "pong", "id": 1, "ts": 5}));
    }
}
