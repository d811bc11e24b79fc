//! Reading requests: the client's address, query parameters, bearer tokens and the
//! session cookie.

use hyper::header::COOKIE;
use hyper::Request;

/// The client's address, put into every request's extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The value of `name` in a query string (no percent-decoding beyond [`normalize_uri`]'s:
/// values here are plain).
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Decodes the percent-encoded unreserved characters (letters, digits, `-`, `.`, `_`, `~`)
/// of the request's path and query, which name the same resource encoded or not (RFC 3986
/// 6.2.2.2): `/api/v1/alerts/%73tream` is the alert stream, `BTC%2dUSD` is `BTC-USD`. Any
/// other `%XX` (`%2F` in a segment, say) stays as sent. Leaves the request alone when there
/// is nothing to decode.
pub fn normalize_uri<B>(req: &mut Request<B>) {
    let Some(decoded) = req.uri().path_and_query().and_then(|pq| decode_unreserved(pq.as_str()))
    else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    // Decoding unreserved characters cannot make a valid path and query invalid.
    if let Ok(path_and_query) = hyper::http::uri::PathAndQuery::try_from(decoded) {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = hyper::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// `text` with its `%XX` of unreserved characters decoded, or `None` if it has none.
fn decode_unreserved(text: &str) -> Option<String> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = text.as_bytes();
    let at = |i: usize| -> Option<u8> {
        let (high, low) = (hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?);
        Some((high * 16 + low) as u8).filter(|&b| bytes[i] == b'%' && unreserved(b))
    };
    let first = (0..bytes.len()).find(|&i| at(i).is_some())?;
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first]);
    let mut i = first;
    while i < bytes.len() {
        if let Some(b) = at(i) {
            out.push(b as char);
            i += 3;
        } else {
            // Only ASCII is ever skipped over in threes, so `i` stays on a char boundary.
            let c = text[i..].chars().next().unwrap_or_default();
            out.push(c);
            i += c.len_utf8();
        }
    }
    Some(out)
}

/// Headers a request has at most once, and the refusal of a second: which of two would
/// count? `Host`: HTTP/1.1 needs exactly one (RFC 9112 3.2), and the origin checks compare
/// it. The credentials, the idempotency key, the replay point and the origin: a proxy that
/// adds one to a client's own must not get to choose whom or what the request is for. A
/// WebSocket handshake's key and version (RFC 6455 4.1: once each).
const ONCE: [(&str, &str); 7] = [
    ("host", "a request has one Host header, not several"),
    ("authorization", "a request has at most one Authorization header"),
    ("idempotency-key", "a request has at most one Idempotency-Key header"),
    ("last-event-id", "a request has at most one Last-Event-ID header"),
    ("origin", "a request has at most one Origin header"),
    ("sec-websocket-key", "a WebSocket handshake has one Sec-WebSocket-Key header"),
    ("sec-websocket-version", "a WebSocket handshake has one Sec-WebSocket-Version header"),
];

/// What is wrong with a request's head, given its HTTP/1 minor version (`None`: not known,
/// or HTTP/2) and its header names: a header it has once (`ONCE`) twice, or an HTTP/1.1 request
/// without `Host`.
pub fn head_flaw<'a>(
    minor_version: Option<u8>,
    names: impl IntoIterator<Item = &'a [u8]>,
) -> Option<&'static str> {
    let mut seen = [0usize; ONCE.len()];
    for name in names {
        if let Some(i) =
            ONCE.iter().position(|(once, _)| name.eq_ignore_ascii_case(once.as_bytes()))
        {
            seen[i] += 1;
        }
    }
    if let Some(i) = seen.iter().position(|&n| n >= 2) {
        return Some(ONCE[i].1);
    }
    (minor_version == Some(1) && seen[0] == 0).then_some("an HTTP/1.1 request needs a Host header")
}

/// [`head_flaw`] of a request hyper parsed (HTTP/2 has its `:authority`: no `Host` needed).
pub fn request_head_flaw<B>(req: &Request<B>) -> Option<&'static str> {
    let minor = match req.version() {
        hyper::Version::HTTP_10 => Some(0),
        hyper::Version::HTTP_11 => Some(1),
        _ => None,
    };
    head_flaw(minor, req.headers().iter().map(|(name, _)| name.as_str().as_bytes()))
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 7235).
pub fn bearer(value: Option<&str>) -> Option<&str> {
    let (scheme, token) = value?.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The session cookie's token, if the request carries one (`secure`: the server speaks
/// TLS, the cookie has the `__Host-` name).
pub fn session_cookie<B>(req: &Request<B>, secure: bool) -> Option<&str> {
    let values = req.headers().get_all(COOKIE).iter().map(|v| v.as_bytes());
    crate::cors::cookie::token(values, secure)
}

/// Whether JSON `text` holds a `\uD800` to `\uDFFF` escape (either case). simd-json turns a
/// lone surrogate escape into U+0000 where serde_json refuses it, and takes a valid pair as
/// serde_json does: text with one goes to serde_json, so a string is either read as sent
/// or refused.
pub fn has_surrogate_escape(text: &[u8]) -> bool {
    text.windows(4).any(|w| {
        w[0] == b'\\'
            && w[1] == b'u'
            && matches!(w[2], b'd' | b'D')
            && matches!(w[3], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_characters_are_decoded_and_nothing_else() {
        assert_eq!(decode_unreserved("/api/v1/alerts/stream"), None);
        assert_eq!(
            decode_unreserved("/api/v1/alerts/%73tream").as_deref(),
            Some("/api/v1/alerts/stream")
        );
        assert_eq!(
            decode_unreserved("/api/v1/markets/BTC%2dUSD/book?depth=%35").as_deref(),
            Some("/api/v1/markets/BTC-USD/book?depth=5")
        );
        // Reserved and non-ASCII encodings stay; a truncated or bad escape stays.
        assert_eq!(decode_unreserved("/a%2Fb%20c%C3%A9"), None);
        assert_eq!(decode_unreserved("/a%4").as_deref(), None);
        assert_eq!(decode_unreserved("/a%zz%41").as_deref(), Some("/a%zzA"));
        assert_eq!(decode_unreserved("%7e%5F%2E").as_deref(), Some("~_."));
    }

    #[test]
    fn headers_a_request_has_once() {
        let flaw = |minor, names: &[&str]| head_flaw(minor, names.iter().map(|n| n.as_bytes()));
        assert_eq!(flaw(Some(1), &["Host", "Cookie", "cookie", "Accept"]), None);
        assert_eq!(flaw(Some(0), &[]), None, "HTTP/1.0 needs no Host");
        assert_eq!(flaw(None, &["authorization"]), None, "HTTP/2: its :authority");
        assert!(flaw(Some(1), &[]).is_some_and(|f| f.contains("needs a Host")));
        assert!(flaw(Some(1), &["host", "HOST"]).is_some_and(|f| f.contains("one Host")));
        for name in
            ["Authorization", "Idempotency-Key", "Last-Event-ID", "Origin", "Sec-WebSocket-Key"]
        {
            let twice = flaw(None, &[name, &name.to_lowercase()]);
            assert!(twice.is_some_and(|f| f.contains(name)), "{name}: {twice:?}");
        }
    }

    #[test]
    fn a_request_gets_its_decoded_uri() {
        let mut req = Request::get("/api/v1/%61lerts/%73tream?x=%31").body(()).unwrap();
        normalize_uri(&mut req);
        assert_eq!(req.uri().path(), "/api/v1/alerts/stream");
        assert_eq!(req.uri().query(), Some("x=1"));
        let mut req = Request::get("http://h:1/%2F%41").body(()).unwrap();
        normalize_uri(&mut req);
        assert_eq!(req.uri().to_string(), "http://h:1/%2FA");
    }
}
