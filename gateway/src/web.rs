//! The web terminal: a page and its modules, embedded in the binary and served from the
//! server's own origin (`/`, `/app.js`, `/tickgate.js`, `/style.css`, `/favicon.svg`). No
//! build step: plain
//! modern JavaScript modules in `gateway/web/`; `tickgate.js` is the reference browser
//! client of the protocol (docs/PROTOCOL.md).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// The embedded files: path, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("/", "text/html; charset=utf-8", include_bytes!("../web/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_bytes!("../web/app.js")),
    ("/tickgate.js", "text/javascript; charset=utf-8", include_bytes!("../web/tickgate.js")),
    ("/style.css", "text/css; charset=utf-8", include_bytes!("../web/style.css")),
    ("/favicon.svg", "image/svg+xml", include_bytes!("../web/favicon.svg")),
];

/// The asset at `path`, if there is one.
pub fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (_, content_type, bytes) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut response = Response::new(Full::new(Bytes::from_static(bytes)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    // Revalidated on every load: a new server version is picked up at once.
    headers.insert(CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-cache"));
    // Only this server's own scripts, styles and connections (its WebSocket included:
    // `'self'` covers `ws:`/`wss:` to the same host), and never inside another site's
    // frame: the ladder fills on a click, which a framing page could steal
    // (clickjacking); `X-Frame-Options` says the same to browsers without CSP 2.
    headers.insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert("x-frame-options", hyper::header::HeaderValue::from_static("DENY"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_modules_are_served() {
        for path in ["/", "/app.js", "/tickgate.js", "/style.css", "/favicon.svg"] {
            let response = asset(path).expect(path);
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert!(asset("/nope.js").is_none());
        let page = asset("/").expect("the page");
        let csp = page.headers()["content-security-policy"].to_str().unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("connect-src 'self';"));
        assert_eq!(page.headers()["x-frame-options"], "DENY");
        let total: usize = ASSETS.iter().map(|(_, _, b)| b.len()).sum();
        assert!(total < 300 * 1024, "the page stays small: {total} bytes");
    }
}
