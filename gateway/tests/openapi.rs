//! The OpenAPI document describes exactly the routes the server answers: the document's
//! (method, path) pairs equal the route table, every listed route really answers (a real
//! request is not refused by the router as unknown or with 405), and other methods on the
//! same paths answer 405.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;
use tickgate_gateway::rest::ROUTES;

fn concrete(template: &str) -> String {
    template.replace("{symbol}", "BTC-USD").replace("{id}", "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_and_router_agree() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let alice = Api::login(addr, 0).await;

    let (status, response) = http_raw(
        addr,
        &format!("GET /api/v1/openapi.json HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let doc = body_json(&response);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<_> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not served"
    );
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );
    // Every schema reference resolves.
    let text = doc.to_string();
    for name in text.split("#/components/schemas/").skip(1) {
        let name = name.split('"').next().unwrap_or_default();
        assert!(doc["components"]["schemas"][name].is_object(), "missing schema {name}");
    }

    for (method, template) in ROUTES {
        let path = concrete(template);
        // The SSE stream with a bad token answers at once (a good one would stream).
        let token = if path.ends_with("/stream") { "bad" } else { alice.token.as_str() };
        let body = if matches!(*method, "POST" | "PATCH") { "{}" } else { "" };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, response) = http_raw(addr, &head).await;
        let code = body_json(&response)["error"]["code"].as_str().map(str::to_string);
        assert_ne!(status, 405, "{method} {path}: {response}");
        assert_ne!(code.as_deref(), Some("not_found"), "{method} {path} is not routed: {response}");
        assert!(status < 500 || status == 503, "{method} {path}: {response}");
    }

    // Other methods on the same paths: 405 with the JSON error; unknown paths: 404.
    let paths: BTreeSet<_> = ROUTES.iter().map(|(_, p)| *p).collect();
    for template in paths {
        let path = concrete(template);
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        let (status, response) = http_raw(addr, &head).await;
        assert_eq!(status, 405, "PUT {path}: {response}");
        let body: Value = body_json(&response);
        assert_eq!(body["error"]["code"], "method_not_allowed", "PUT {path}");
    }
    let (status, response) = http_raw(
        addr,
        &format!("GET /api/v1/nothing HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!((status, body_json(&response)["error"]["code"].as_str()), (404, Some("not_found")));
}
