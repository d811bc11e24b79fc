//! Client control messages (JSON text frames, parsed with simd-json) and the server's
//! JSON replies. Every request may carry an `id` (number or string) that its answer echoes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::error::ErrorCode;
use crate::protocol::{self, Opcode};
use crate::trading::{NewOrderRequest, ReplaceRequest};
pub use crate::ws::connection::DisconnectScope;

/// A client's request id, echoed as sent: any JSON number or string.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RequestId {
    /// Numeric id (negative and fractional ones too).
    Num(serde_json::Number),
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
    total_qty: Option<String>,
    client_order_id: Option<u64>,
    stp: Option<String>,
    idempotency_key: Option<String>,
    enabled: Option<bool>,
    scope: Option<String>,
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
    /// Cancels every open order of the connection's account (of one instrument, if given).
    OrderCancelAll {
        /// Echoed id.
        id: Option<RequestId>,
        /// Only this instrument's orders.
        symbol: Option<String>,
    },
    /// Turns cancel-on-disconnect on or off for the connection (authenticated ones).
    CancelOnDisconnect {
        /// Echoed id.
        id: Option<RequestId>,
        /// On or off.
        enabled: bool,
        /// What to cancel (default: the connection's own orders).
        scope: Option<DisconnectScope>,
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
            | Request::OrderCancelAll { id, .. }
            | Request::CancelOnDisconnect { id, .. }
            | Request::OrderReplace { id, .. } => id.as_ref(),
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

/// The expected JSON type of each request field, for error messages.
const FIELDS: &[(&str, &str)] = &[
    ("op", "a string"),
    ("channels", "an array of strings"),
    ("depth", "an integer"),
    ("token", "a string"),
    ("order_id", "a non-negative integer"),
    ("symbol", "a string"),
    ("side", "a string"),
    ("type", "a string"),
    ("price", "a decimal string such as \"65000.00\""),
    ("qty", "a decimal string such as \"0.0100\""),
    ("total_qty", "a decimal string such as \"0.0100\""),
    ("client_order_id", "a non-negative integer"),
    ("stp", "a string"),
    ("idempotency_key", "a string"),
    ("enabled", "true or false"),
    ("scope", "\"connection\" or \"account\""),
];

fn has_type(field: &str, v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match field {
        "channels" => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        "depth" | "order_id" | "client_order_id" => v.is_u64(),
        "enabled" => v.is_boolean(),
        _ => v.is_string(),
    }
}

/// Why a frame did not parse as a request, saying which field is wrong, with the request's
/// id whenever the frame is a JSON object that has one (no parser internals).
fn diagnose(text: &[u8]) -> RequestError {
    let malformed = |id, message: String| RequestError { id, code: ErrorCode::Malformed, message };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(text) else {
        return malformed(None, "the request is not valid JSON".into());
    };
    let Some(object) = value.as_object() else {
        return malformed(None, "the request must be a JSON object".into());
    };
    let id = match object.get("id") {
        Some(serde_json::Value::Number(n)) => Some(RequestId::Num(n.clone())),
        Some(serde_json::Value::String(s)) => Some(RequestId::Str(s.clone())),
        _ => None,
    };
    if object.get("id").is_some_and(|v| !v.is_null()) && id.is_none() {
        return malformed(None, "`id` must be a number or a string".into());
    }
    let wrong = FIELDS
        .iter()
        .find(|(name, _)| object.get(*name).is_some_and(|v| !v.is_null() && !has_type(name, v)));
    match wrong {
        // An integer out of range (negative, or past u64): the depth is wrong, not the JSON.
        Some(("depth", _))
            if object.get("depth").is_some_and(|v| {
                v.is_i64()
                    || v.as_f64().is_some_and(|f| {
                        f.fract() == 0.0
                            && !(1.0..=protocol::SNAPSHOT_DEPTH_MAX as f64).contains(&f)
                    })
            }) =>
        {
            RequestError { id, code: ErrorCode::InvalidDepth, message: DEPTH_RANGE.into() }
        }
        Some((name, expected)) => malformed(id, format!("`{name}` must be {expected}")),
        None => malformed(id, "the request does not match any operation".into()),
    }
}

/// What an `invalid_depth` error says (1000 is [`protocol::SNAPSHOT_DEPTH_MAX`]; a unit test
/// checks the two agree).
const DEPTH_RANGE: &str = "depth must be 1..=1000";

/// Default book depth of a snapshot when the client gives none.
pub const DEFAULT_DEPTH: usize = 50;
/// Channels one request may name.
pub const CHANNELS_PER_REQUEST_MAX: usize = 64;

/// Parses one text frame. `scratch` is reused across calls (simd-json parses in place).
pub fn parse(text: &[u8], scratch: &mut Vec<u8>) -> Result<Request, RequestError> {
    scratch.clear();
    scratch.extend_from_slice(text);
    // simd-json turns a lone surrogate escape ("\ud800") into U+0000 where serde_json
    // refuses it, and takes a valid pair as serde_json does: text with any surrogate escape
    // goes to serde_json, so a string is either echoed as sent or refused.
    let simd = if crate::request::has_surrogate_escape(text) {
        Err(())
    } else {
        simd_json::serde::from_slice::<Envelope>(scratch).map_err(|_| ())
    };
    let envelope: Envelope = match simd {
        Ok(envelope) => envelope,
        // serde_json takes what simd-json does not (a huge number in an unknown field).
        Err(()) => serde_json::from_slice(text).map_err(|_| diagnose(text))?,
    };
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
                Some(_) => return Err(err(ErrorCode::InvalidDepth, DEPTH_RANGE)),
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
        Some("order.cancel_all") => Ok(Request::OrderCancelAll { id, symbol: envelope.symbol }),
        Some("cancel_on_disconnect") => {
            let scope = match envelope.scope.as_deref() {
                None => None,
                Some("connection") => Some(DisconnectScope::Connection),
                Some("account") => Some(DisconnectScope::Account),
                Some(_) => {
                    let message = "`scope` is \"connection\" or \"account\"";
                    return Err(err(ErrorCode::InvalidParameter, message));
                }
            };
            match envelope.enabled {
                Some(enabled) => Ok(Request::CancelOnDisconnect { id, enabled, scope }),
                None => Err(err(ErrorCode::Malformed, "`enabled` (true or false) is required")),
            }
        }
        Some("order.replace") => match envelope.order_id {
            Some(order_id) => {
                let replace = ReplaceRequest {
                    price: envelope.price,
                    qty: envelope.qty,
                    total_qty: envelope.total_qty,
                };
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
    error_reply_about(e, None)
}

/// An error reply frame about an order (`order_id`: a rejected order's id, the id a
/// timed-out one may take).
pub fn error_reply_about(e: &RequestError, order: Option<tickgate_engine::OrderId>) -> Bytes {
    let mut reply = serde_json::json!({
        "op": "error", "id": e.id, "code": e.code.as_str(), "message": e.message,
    });
    if let Some(order) = order {
        reply["order_id"] = order.0.into();
    }
    text_frame(&reply)
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
                id: Some(RequestId::Num(7.into())),
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
    fn errors_echo_any_id_and_name_the_wrong_field() {
        let mut scratch = Vec::new();
        let mut p = |t: &str| parse(t.as_bytes(), &mut scratch).expect_err("refused");
        let e = p(r#"{"op":"subscribe","id":2,"channels":"book.BTC-USD"}"#);
        assert_eq!((e.id, e.code), (Some(RequestId::Num(2.into())), ErrorCode::Malformed));
        assert_eq!(e.message, "`channels` must be an array of strings");
        let e = p(
            r#"{"op":"order.new","id":"x7","symbol":"BTC-USD","side":"buy","type":"limit","price":1000.5,"qty":"1"}"#,
        );
        assert_eq!(e.id, Some(RequestId::Str("x7".into())));
        assert!(e.message.starts_with("`price` must be a decimal string"), "{}", e.message);
        for (text, id) in
            [(r#"{"op":"dance","id":-1,"depth":-5}"#, "-1"), (r#"{"id":1.5,"op":7}"#, "1.5")]
        {
            let e = p(text);
            let echoed = serde_json::to_string(&e.id).expect("serializes");
            assert_eq!(echoed, id, "{text}: {e:?}");
        }
        for text in ["{", "[1]", "\"x\"", r#"{"id":{"a":1}}"#] {
            let e = p(text);
            assert_eq!((e.id, e.code), (None, ErrorCode::Malformed), "{text}");
            assert!(
                !e.message.contains("Error") && !e.message.contains("character"),
                "{}",
                e.message
            );
        }
    }

    /// A string id is echoed exactly as sent (a surrogate pair included) or the request is
    /// refused (a lone surrogate): never changed on the way.
    #[test]
    fn surrogate_escapes_are_kept_in_pairs_and_refused_alone() {
        let ping = |id: &str| p(&format!(r#"{{"op":"ping","id":"{id}"}}"#));
        let pair = ping(r"\ud83d\ude00 ok").expect("a valid pair");
        assert_eq!(pair.id(), Some(&RequestId::Str("\u{1F600} ok".into())));
        let upper = ping(r"\uD83D\uDE00").expect("upper-case escapes");
        assert_eq!(upper.id(), Some(&RequestId::Str("\u{1F600}".into())));
        for lone in [r"\ud800", r"\ud83dx", r"\udc00", r"x\ud800\ud800y", r"\ud800\u0041"] {
            let e = ping(lone).expect_err(lone);
            assert_eq!(e.code, ErrorCode::Malformed, "{lone}");
        }
        // An escaped backslash before "ud800" is no escape (serde_json reads it, rightly).
        let backslash = ping(r"\\ud800").expect("a backslash and text");
        assert_eq!(backslash.id(), Some(&RequestId::Str(r"\ud800".into())));
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
        // Integers outside 1..=1000, however large, are a wrong depth; a fraction is not an
        // integer at all.
        for depth in ["-1", "1001", "18446744073709551617", "-9223372036854775809"] {
            let text = format!(r#"{{"op":"subscribe","id":4,"channels":["a"],"depth":{depth}}}"#);
            let e = p(&text).expect_err("out of range");
            assert_eq!((e.code, e.id), (ErrorCode::InvalidDepth, Some(RequestId::Num(4.into()))));
            assert_eq!(e.message, DEPTH_RANGE, "{depth}");
        }
        assert!(DEPTH_RANGE.ends_with(&format!("..={}", protocol::SNAPSHOT_DEPTH_MAX)));
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["a"],"depth":1.5}"#),
            Some(ErrorCode::Malformed)
        );
        let many = format!(r#"{{"op":"subscribe","channels":[{}]}}"#, vec!["\"a\""; 65].join(","));
        assert_eq!(code(&many), Some(ErrorCode::LimitExceeded));
        assert_eq!(
            p(r#"{"op":"dance","id":3}"#).err().and_then(|e| e.id),
            Some(RequestId::Num(3.into()))
        );
    }

    #[test]
    fn parses_auth_and_order_entry() {
        assert_eq!(
            p(r#"{"op":"auth","id":1,"token":"t"}"#),
            Ok(Request::Auth { id: Some(RequestId::Num(1.into())), token: "t".into() })
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
        let Ok(Request::OrderReplace { replace, .. }) =
            p(r#"{"op":"order.replace","order_id":5,"total_qty":"2"}"#)
        else {
            panic!("order.replace with total_qty parses");
        };
        assert_eq!((replace.qty, replace.total_qty.as_deref()), (None, Some("2")));
        let wrong = p(r#"{"op":"order.replace","order_id":5,"total_qty":2}"#).err();
        assert!(wrong.is_some_and(|e| e.message.contains("total_qty")), "named when mistyped");
        let code = |t: &str| p(t).map_err(|e| e.code).err();
        assert_eq!(code(r#"{"op":"order.cancel"}"#), Some(ErrorCode::Malformed));
        assert_eq!(code(r#"{"op":"order.new","symbol":"BTC-USD"}"#), Some(ErrorCode::Malformed));
        assert_eq!(code(r#"{"op":"auth"}"#), Some(ErrorCode::Malformed));
        assert_eq!(code(r#"{"op":"order.cancel","order_id":-1}"#), Some(ErrorCode::Malformed));
        assert_eq!(
            p(r#"{"op":"order.cancel_all","id":3,"symbol":"ETH-USD"}"#),
            Ok(Request::OrderCancelAll {
                id: Some(RequestId::Num(3.into())),
                symbol: Some("ETH-USD".into())
            })
        );
        assert_eq!(
            p(r#"{"op":"order.cancel_all"}"#),
            Ok(Request::OrderCancelAll { id: None, symbol: None })
        );
        assert_eq!(
            p(r#"{"op":"cancel_on_disconnect","enabled":false}"#),
            Ok(Request::CancelOnDisconnect { id: None, enabled: false, scope: None })
        );
        let e = p(r#"{"op":"cancel_on_disconnect","id":4,"enabled":"yes"}"#).expect_err("refused");
        assert_eq!(e.message, "`enabled` must be true or false");
        assert_eq!(code(r#"{"op":"cancel_on_disconnect"}"#), Some(ErrorCode::Malformed));
        assert_eq!(
            p(r#"{"op":"cancel_on_disconnect","enabled":true,"scope":"account"}"#),
            Ok(Request::CancelOnDisconnect {
                id: None,
                enabled: true,
                scope: Some(DisconnectScope::Account)
            })
        );
        assert_eq!(
            code(r#"{"op":"cancel_on_disconnect","enabled":true,"scope":"all"}"#),
            Some(ErrorCode::InvalidParameter)
        );
        assert_eq!(code(r#"{"op":"order.cancel_all","symbol":5}"#), Some(ErrorCode::Malformed));
    }

    #[test]
    fn replies_are_text_frames_with_the_id() {
        let frame = reply("pong", &Some(RequestId::Num(1.into())), serde_json::json!({"ts": 5}));
        assert_eq!(frame[0], 0x81);
        let body: serde_json::Value = serde_json::from_slice(&frame[2..]).expect("json");
        assert_eq!(body, serde_json::json!({"op": "pong", "id": 1, "ts": 5}));
    }
}
