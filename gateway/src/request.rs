//! Reading requests: the client's address, query parameters, bearer tokens and the
//! session cookie.

use hyper::header::COOKIE;
use hyper::Request;

/// The client's address, put into every request's extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The value of `name` in a query string (no percent-decoding: values here are plain).
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// What is wrong with a request's `Host` headers, given its HTTP/1 minor version (`None`:
/// not known) and how many it has: HTTP/1.1 needs exactly one (RFC 9112 3.2), and no request
/// may have two (which of them would the origin checks compare?).
pub fn host_flaw(minor_version: Option<u8>, hosts: usize) -> Option<&'static str> {
    match (minor_version, hosts) {
        (_, 2..) => Some("a request has one Host header, not several"),
        (Some(1), 0) => Some("an HTTP/1.1 request needs a Host header"),
        _ => None,
    }
}

/// [`host_flaw`] of a request hyper parsed (HTTP/2 has its `:authority` instead: none).
pub fn request_host_flaw<B>(req: &Request<B>) -> Option<&'static str> {
    let minor = match req.version() {
        hyper::Version::HTTP_10 => 0,
        hyper::Version::HTTP_11 => 1,
        _ => return None,
    };
    host_flaw(Some(minor), req.headers().get_all(hyper::header::HOST).iter().count())
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
