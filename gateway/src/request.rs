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
