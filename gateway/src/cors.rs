//! Browsers on other origins (CORS, `--cors-origin`) and the checks cookie sessions need.
//!
//! - A **preflight** (`OPTIONS` with `Access-Control-Request-Method`) from a listed origin
//!   or the server's own, asking for a method and headers the API takes, is answered `204`
//!   with them; any other `403`, saying what was refused.
//! - Every answer to a listed origin carries `Access-Control-Allow-Origin: <origin>` and
//!   `Access-Control-Allow-Credentials: true` (never `*`: credentials are only for listed
//!   origins); every answer to a request with an `Origin` carries `Vary: Origin`.
//! - A request **authenticated by the session cookie** that changes state (POST, PATCH,
//!   DELETE) must come from the server's own origin or a listed one (`Origin`), or carry
//!   the `X-Tickgate-CSRF` header (which no other site can send without a preflight that
//!   only listed origins pass). A WebSocket upgrade authenticated by the cookie must come
//!   from an allowed origin (cross-site WebSocket hijacking).

use hyper::header::{HeaderMap, HeaderValue, ORIGIN, VARY};
use hyper::{Method, Request, Response};

/// Methods a cross-origin page may use.
pub const ALLOW_METHODS: &str = "GET, HEAD, POST, PATCH, DELETE";
/// Request headers a cross-origin page may send.
pub const ALLOW_HEADERS: &str =
    "authorization, content-type, idempotency-key, last-event-id, x-tickgate-csrf";
/// Response headers a cross-origin page may read.
pub const EXPOSE_HEADERS: &str = "etag, retry-after, www-authenticate";
/// The header that vouches for a cookie-authenticated request without an `Origin`.
pub const CSRF_HEADER: &str = "x-tickgate-csrf";
/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The origins allowed cross-origin requests with credentials.
#[derive(Debug, Default)]
pub struct Origins {
    listed: Vec<String>,
    /// The server speaks TLS: its own origin is `https://...`.
    tls: bool,
}

impl Origins {
    /// `listed`: `scheme://host[:port]` each, without a trailing slash.
    pub fn new(listed: Vec<String>, tls: bool) -> Self {
        Origins { listed, tls }
    }

    /// Whether `origin` is one of `--cors-origin`. `null` (a sandboxed frame, a `file:`
    /// page, a redirect: any of them) is never listed, even if named.
    pub fn listed(&self, origin: &str) -> bool {
        origin != "null" && self.listed.iter().any(|o| o == origin)
    }

    /// Whether a page on `origin` may act with the user's cookie: the server's own origin
    /// (the scheme it serves and the host the request names) or a listed one.
    pub fn allows<B>(&self, req: &Request<B>, origin: &str) -> bool {
        if self.listed(origin) {
            return true;
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()));
        let scheme = if self.tls { "https://" } else { "http://" };
        host.is_some_and(|h| origin.strip_prefix(scheme) == Some(h))
    }

    /// The preflight answer for `req`, if it is one: `204` with the allowed methods and
    /// headers for a listed origin or the server's own, asking for a method and headers
    /// the API takes; `403` otherwise, saying which of them was refused.
    pub fn preflight<B>(
        &self,
        req: &Request<B>,
    ) -> Option<Response<http_body_util::Full<bytes::Bytes>>> {
        let asked = req.headers().get(hyper::header::ACCESS_CONTROL_REQUEST_METHOD)?;
        if req.method() != Method::OPTIONS {
            return None;
        }
        let origin = origin(req)?;
        let refusal = if !self.allows(req, origin) {
            Some("this origin may not call the API (see --cors-origin)".to_string())
        } else if !asked.to_str().is_ok_and(|m| ALLOW_METHODS.split(", ").any(|a| a == m)) {
            Some(format!("method {asked:?} is not one the API takes ({ALLOW_METHODS})"))
        } else {
            unlisted_header(req.headers())
                .map(|h| format!("request header {h:?} is not one the API takes ({ALLOW_HEADERS})"))
        };
        if let Some(message) = refusal {
            let mut response =
                crate::error::ApiError::new(crate::error::ErrorCode::OriginNotAllowed, message)
                    .response();
            response.headers_mut().insert(VARY, HeaderValue::from_static("Origin"));
            return Some(response);
        }
        let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::new()));
        *response.status_mut() = hyper::StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        decorate(headers, origin);
        headers.insert(
            hyper::header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            hyper::header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            hyper::header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
        Some(response)
    }

    /// Adds the CORS headers an answer to `origin` needs. `Vary: Origin` goes on every
    /// answer once origins are listed (a shared cache must not hand an answer stored for
    /// one origin, or none, to another), and on every answer to a request with an `Origin`.
    pub fn answer(&self, headers: &mut HeaderMap, origin: Option<&str>) {
        match origin {
            Some(origin) if self.listed(origin) => decorate(headers, origin),
            Some(_) => {
                headers.append(VARY, HeaderValue::from_static("Origin"));
            }
            None if !self.listed.is_empty() => {
                headers.append(VARY, HeaderValue::from_static("Origin"));
            }
            None => {}
        }
    }

    /// Headers every answer carries, whoever asks: `nosniff` (a JSON error that echoes the
    /// request is never read as a page or a script), and under TLS
    /// `Strict-Transport-Security` (a browser that has been here over HTTPS never tries
    /// cleartext again, where a token or cookie could be taken).
    pub fn harden(&self, headers: &mut HeaderMap) {
        headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        if self.tls {
            headers
                .insert("strict-transport-security", HeaderValue::from_static("max-age=31536000"));
        }
    }

    /// Whether the server speaks TLS (the cookie's name and `Secure`).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// [`Origins::answer`]'s and [`Origins::harden`]'s headers as raw HTTP/1.1 lines (for
    /// the raw SSE path).
    pub fn raw_headers(&self, origin: Option<&str>) -> String {
        let mut headers = HeaderMap::new();
        self.answer(&mut headers, origin);
        self.harden(&mut headers);
        let mut out = String::new();
        for (name, value) in &headers {
            if let Ok(v) = value.to_str() {
                out.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        out
    }

    /// Whether a cookie-authenticated request may do what it asks: reads always; changes
    /// only from an allowed origin or with the CSRF header.
    pub fn cookie_may<B>(&self, req: &Request<B>) -> bool {
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            return true;
        }
        match origin(req) {
            Some(origin) => self.allows(req, origin),
            None => req.headers().contains_key(CSRF_HEADER),
        }
    }
}

/// The request's `Origin`, if it has one. `null` is an origin (an opaque one, which no
/// list allows), not the absence of one: a cookie change from it is refused even with the
/// CSRF header, and its preflight is answered `403`. A value that is not text reads as
/// `null` too.
pub fn origin<B>(req: &Request<B>) -> Option<&str> {
    req.headers().get(ORIGIN).map(|v| v.to_str().unwrap_or("null"))
}

fn decorate(headers: &mut HeaderMap, origin: &str) {
    let Ok(value) = HeaderValue::from_str(origin) else { return };
    headers.insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    headers
        .insert(hyper::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    headers.insert(
        hyper::header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    headers.append(VARY, HeaderValue::from_static("Origin"));
}

/// The session cookie, set by a login that asks for it: `__Host-tickgate_session=<token>`
/// under TLS (the prefix makes browsers refuse one set by a sibling subdomain or without
/// `Secure`), `tickgate_session=<token>` in cleartext.
pub mod cookie {
    use hyper::header::HeaderValue;

    /// The cookie's name: with the `__Host-` prefix when `secure`.
    pub fn name(secure: bool) -> &'static str {
        if secure {
            "__Host-tickgate_session"
        } else {
            "tickgate_session"
        }
    }

    /// The session token in the request's `Cookie` headers, if any.
    pub fn token<'h>(values: impl Iterator<Item = &'h [u8]>, secure: bool) -> Option<&'h str> {
        let wanted = name(secure);
        values
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == wanted).then_some(value.trim_matches('"'))
            })
            .filter(|t| !t.is_empty())
    }

    /// `Set-Cookie` for a token living `max_age_secs`: not readable by scripts, never sent
    /// by another site's requests, only over TLS when the server speaks it.
    pub fn set(token: &str, max_age_secs: u64, secure: bool) -> Option<HeaderValue> {
        let (name, secure) = (name(secure), if secure { "; Secure" } else { "" });
        HeaderValue::from_str(&format!(
            "{name}={token}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
        ))
        .ok()
    }

    /// `Set-Cookie` that removes it.
    pub fn clear(secure: bool) -> HeaderValue {
        if secure {
            HeaderValue::from_static(
                "__Host-tickgate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure",
            )
        } else {
            HeaderValue::from_static(
                "tickgate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict",
            )
        }
    }
}

/// The first header of a preflight's `Access-Control-Request-Headers` that the API does
/// not take, if any (names compare case-insensitively).
fn unlisted_header(headers: &HeaderMap) -> Option<String> {
    let asked = headers.get(hyper::header::ACCESS_CONTROL_REQUEST_HEADERS)?;
    let Ok(asked) = asked.to_str() else { return Some("(not text)".into()) };
    asked
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .find(|h| !ALLOW_HEADERS.split(", ").any(|a| a == h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/api/v1/orders");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn origins_listed_own_and_foreign() {
        let o = Origins::new(vec!["https://app.example".into()], false);
        let own =
            req(Method::POST, &[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]);
        assert!(o.allows(&own, "http://127.0.0.1:8080"));
        assert!(o.cookie_may(&own));
        let listed =
            req(Method::POST, &[("host", "127.0.0.1:8080"), ("origin", "https://app.example")]);
        assert!(o.cookie_may(&listed));
        let foreign =
            req(Method::POST, &[("host", "127.0.0.1:8080"), ("origin", "https://evil.example")]);
        assert!(!o.cookie_may(&foreign));
        // Same host, other scheme: another origin.
        let tls = Origins::new(Vec::new(), true);
        assert!(!tls.allows(&own, "http://127.0.0.1:8080"));
        assert!(tls.allows(&own, "https://127.0.0.1:8080"));
        // No Origin: the CSRF header vouches; reads need nothing.
        assert!(!o.cookie_may(&req(Method::DELETE, &[])));
        assert!(o.cookie_may(&req(Method::DELETE, &[(CSRF_HEADER, "1")])));
        assert!(o.cookie_may(&req(Method::GET, &[("origin", "https://evil.example")])));
        // `Origin: null` is an origin no list allows, not a missing one.
        let null = req(Method::POST, &[("origin", "null"), (CSRF_HEADER, "1")]);
        assert!(!o.cookie_may(&null), "the CSRF header does not vouch for an opaque origin");
        assert!(!Origins::new(vec!["null".into()], false).cookie_may(&null), "nor a list");
    }

    #[test]
    fn preflights_and_answers() {
        let o = Origins::new(vec!["https://app.example".into()], false);
        let pre = |origin| {
            req(Method::OPTIONS, &[("origin", origin), ("access-control-request-method", "POST")])
        };
        let ok = o.preflight(&pre("https://app.example")).expect("a preflight");
        assert_eq!(ok.status(), 204);
        assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example");
        assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
        assert!(ok.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("idempotency-key"));
        assert_eq!(o.preflight(&pre("https://evil.example")).expect("a preflight").status(), 403);
        assert_eq!(o.preflight(&pre("null")).expect("a preflight").status(), 403);
        // The server's own origin, as --help says, is allowed too.
        let own = req(
            Method::OPTIONS,
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
                ("access-control-request-method", "DELETE"),
                ("access-control-request-headers", "Content-Type, X-Tickgate-CSRF"),
            ],
        );
        assert_eq!(o.preflight(&own).expect("a preflight").status(), 204);
        // A method or a header the API does not take is refused, and said so.
        for (method, headers, refused) in
            [("PUT", "", "method"), ("POST", "authorization, x-foo", "x-foo")]
        {
            let mut asked = vec![("origin", "https://app.example")];
            asked.push(("access-control-request-method", method));
            if !headers.is_empty() {
                asked.push(("access-control-request-headers", headers));
            }
            let answer = o.preflight(&req(Method::OPTIONS, &asked)).expect("a preflight");
            assert_eq!(answer.status(), 403, "{method} {headers}");
            let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
                answer.into_body(),
            ))
            .expect("a full body")
            .expect("infallible")
            .to_bytes();
            assert!(String::from_utf8_lossy(&body).contains(refused), "{body:?}");
        }
        assert!(o.preflight(&req(Method::OPTIONS, &[("origin", "https://app.example")])).is_none());
        let mut h = HeaderMap::new();
        o.answer(&mut h, Some("https://evil.example"));
        assert!(!h.contains_key("access-control-allow-origin"));
        assert_eq!(h["vary"], "Origin");
    }

    #[test]
    fn the_cookie_is_found_and_set_strictly() {
        let headers: [&[u8]; 2] = [b"a=1; b=2", b"x=y; tickgate_session=abc.def ; z=1"];
        assert_eq!(cookie::token(headers.into_iter(), false), Some("abc.def"));
        assert_eq!(cookie::token(headers.into_iter(), true), None, "not the TLS name");
        let tls: [&[u8]; 1] = [b"tickgate_session=planted; __Host-tickgate_session=real"];
        assert_eq!(cookie::token(tls.into_iter(), true), Some("real"));
        assert_eq!(cookie::token([&b"tickgate_session="[..]].into_iter(), false), None);
        let set = cookie::set("t", 900, true).unwrap();
        let set = set.to_str().unwrap();
        for part in
            ["__Host-tickgate_session=t", "HttpOnly", "SameSite=Strict", "Secure", "Max-Age=900"]
        {
            assert!(set.contains(part), "{set}");
        }
        assert!(!cookie::set("t", 1, false).unwrap().to_str().unwrap().contains("Secure"));
        assert!(cookie::clear(false).to_str().unwrap().contains("Max-Age=0"));
    }
}
