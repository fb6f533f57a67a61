//! Outbound HTTP from functions (`wasi:http`, and `evoke:function/http`
//! for Python), by grant: the `fetch`, `hello-js` and `hello-python`
//! examples against a server the test starts.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{Nats, TestNode, example};

/// A server with a quick, a slow, a huge and an echoing endpoint; its base URL.
async fn server() -> String {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route("/hooks/ok", get(|| async { "pong" }))
        .route(
            "/hooks/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route("/hooks/big", get(|| async { vec![b'x'; 20 << 20] }))
        .route("/hooks/echo", post(|body: String| async move { format!("got {body}") }))
        .route("/private", get(|| async { "secret" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Invokes `function` with a JSON event: the status and the JSON answer.
async fn call(node: &TestNode, function: &str, event: Value) -> (StatusCode, Value) {
    let resp = node.invoke(function, &event.to_string()).await;
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

/// Invokes `fetch` on `url` (POSTing `body` when set): status and JSON.
async fn fetch(node: &TestNode, function: &str, url: &str, body: Option<&str>) -> (StatusCode, Value) {
    call(node, function, serde_json::json!({ "url": url, "body": body })).await
}

#[tokio::test]
async fn granted_calls_succeed_and_everything_else_is_refused_with_a_reason() {
    let base = server().await;
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let grant = format!("{base}/hooks/*");
    node.deploy_ok("fetch", &example("fetch"), &[("http", &grant), ("timeout", "2s")])
        .await;

    // Granted: GET and POST, logged with status and duration.
    let (status, out) = fetch(&node, "fetch", &format!("{base}/hooks/ok"), None).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        (out["status"].as_u64(), out["body"].as_str()),
        (Some(200), Some("pong"))
    );
    let (_, out) = fetch(&node, "fetch", &format!("{base}/hooks/echo"), Some("hi")).await;
    assert_eq!(out["body"], "got hi");
    let log = node.logs_with("fetch", "", "/hooks/ok -> 200 in").await;
    assert!(log.contains(&format!("http: GET {base}/hooks/ok -> 200 in")), "{log}");

    // By name: the grant names the host as the function does (evoke connects
    // to the address it checked).
    let by_name = base.replace("127.0.0.1", "localhost");
    node.deploy_ok("by-name", &example("fetch"), &[("http", &format!("{by_name}/hooks/*"))])
        .await;
    let (_, out) = fetch(&node, "by-name", &format!("{by_name}/hooks/ok"), None).await;
    assert_eq!(out["body"], "pong", "{out}");

    // Outside the grant: refused at once, with the grant named in the log.
    let (status, out) = fetch(&node, "fetch", &format!("{base}/private"), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{out}");
    assert!(
        out["error"]["message"].as_str().unwrap().contains("HttpRequestDenied"),
        "{out}"
    );
    let log = node.logs_with("fetch", "", "/private refused").await;
    assert!(
        log.contains(&format!("refused: no grant matches (granted: {grant})")),
        "{log}"
    );

    // A function with no http grant at all is told how to get one.
    node.deploy_ok("closed", &example("fetch"), &[]).await;
    let (_, out) = fetch(&node, "closed", &format!("{base}/hooks/ok"), None).await;
    assert!(
        out["error"]["message"].as_str().unwrap().contains("HttpRequestDenied"),
        "{out}"
    );
    let log = node.logs_with("closed", "", "no http grants").await;
    assert!(log.contains("grants = { http"), "{log}");

    // A slow server: the invocation's timeout ends the call.
    let (_, out) = fetch(&node, "fetch", &format!("{base}/hooks/slow"), None).await;
    assert!(out["error"]["message"].as_str().unwrap().contains("timeout"), "{out}");
    // A huge response: cut off at the cap.
    let (_, out) = fetch(&node, "fetch", &format!("{base}/hooks/big"), None).await;
    let message = out["error"]["message"].as_str().unwrap();
    assert!(message.contains("body size exceeds limit: 16777216 bytes"), "{message}");

    // The node still serves.
    let (status, _) = fetch(&node, "fetch", &format!("{base}/hooks/ok"), None).await;
    assert_eq!(status, StatusCode::OK);
    node.stop().await;
}

/// Link-local and metadata addresses are refused even when granted.
#[tokio::test]
async fn metadata_addresses_are_refused_even_when_granted() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok(
        "meta",
        &example("fetch"),
        &[
            ("http", "http://169.254.169.254/*"),
            ("http", "http://100.100.100.200/*"),
        ],
    )
    .await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
    ] {
        let (status, out) = fetch(&node, "meta", url, None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{out}");
        assert!(
            out["error"]["message"]
                .as_str()
                .unwrap()
                .contains("DestinationIpProhibited"),
            "{out}"
        );
    }
    let log = node.logs_with("meta", "", "metadata address").await;
    assert!(log.contains("--allow-link-local-http"), "{log}");
    node.stop().await;
}

/// Bad grants are refused at deploy, naming the grant.
#[tokio::test]
async fn bad_http_grants_are_refused_at_deploy() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let (status, body) = node
        .deploy("bad", &example("fetch"), &[("http", "ftp://files.example.com/*")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("ftp://files.example.com/*"), "{body}");
    node.stop().await;
}

/// JavaScript's fetch() goes through the same grants (hello-js awaits it in
/// an async handler).
#[tokio::test]
async fn javascript_fetch_is_granted_the_same_way() {
    let base = server().await;
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let grant = format!("{base}/hooks/*");
    node.deploy_ok(
        "hello-js",
        &example("hello-js"),
        &[("http", &grant), ("memory", "128Mi")],
    )
    .await;
    let (status, out) = call(
        &node,
        "hello-js",
        serde_json::json!({ "fetch": format!("{base}/hooks/ok") }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (out["status"].as_u64(), out["body"].as_str()),
        (Some(200), Some("pong")),
        "{out}"
    );

    let (status, out) = call(
        &node,
        "hello-js",
        serde_json::json!({ "fetch": format!("{base}/private") }),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(out["error"]["code"], "FunctionError", "{out}");
    let log = node.logs_with("hello-js", "", "/private refused").await;
    assert!(log.contains("no grant matches"), "{log}");
    node.stop().await;
}

/// Python calls out through `evoke.http` (the one-call
/// `evoke:function/http` interface): the same grants, address rules,
/// timeout and size cap, and its errors are Python exceptions saying why.
#[tokio::test]
async fn python_calls_out_with_the_same_grants_and_limits() {
    let base = server().await;
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let grant = format!("{base}/hooks/*");
    node.deploy_ok(
        "hello-python",
        &example("hello-python"),
        &[
            ("http", &grant),
            ("http", "http://169.254.169.254/*"),
            ("memory", "128Mi"),
            ("timeout", "3s"),
        ],
    )
    .await;
    let call = |event: Value| call(&node, "hello-python", event);
    let error = |out: &Value| out["error"]["message"].as_str().unwrap_or_default().to_string();

    let (status, out) = call(serde_json::json!({ "fetch": format!("{base}/hooks/ok") })).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        (out["status"].as_u64(), out["body"].as_str()),
        (Some(200), Some("pong"))
    );
    let (_, out) = call(serde_json::json!({ "fetch": format!("{base}/hooks/echo"), "body": "hi" })).await;
    assert_eq!(out["body"], "got hi", "{out}");
    let log = node.logs_with("hello-python", "", "/hooks/ok -> 200 in").await;
    assert!(log.contains("http: GET"), "{log}");

    let (status, out) = call(serde_json::json!({ "fetch": format!("{base}/private") })).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{out}");
    assert!(error(&out).contains("HttpError: denied: no grant matches"), "{out}");
    let (_, out) = call(serde_json::json!({ "fetch": "http://169.254.169.254/latest/meta-data/" })).await;
    assert!(
        error(&out).contains("HttpError: denied") && error(&out).contains("metadata address"),
        "{out}"
    );
    let (_, out) = call(serde_json::json!({ "fetch": "ftp://example.com/x" })).await;
    assert!(error(&out).contains("HttpError: invalid"), "{out}");
    let (_, out) = call(serde_json::json!({ "fetch": format!("{base}/hooks/big") })).await;
    assert!(
        error(&out).contains("HttpError: too-large: the response is larger than 16777216 bytes"),
        "{out}"
    );
    let (_, out) = call(serde_json::json!({ "fetch": format!("{base}/hooks/slow") })).await;
    // The request ends with the invocation: an `HttpError: timeout` or the
    // function's own timeout, whichever the guest reaches first.
    assert!(error(&out).contains("timeout"), "{out}");

    // The node, and the function, still serve.
    let (status, out) = call(serde_json::json!({ "fetch": format!("{base}/hooks/ok") })).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    node.stop().await;
}
