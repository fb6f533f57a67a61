//! Hostile guests: each gets a precise error, and the node keeps serving.

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{Nats, TestNode, example, wasi_module};

async fn expect_error(node: &TestNode, name: &str, status: StatusCode, code: &str, needle: &str) {
    let resp = node.invoke(name, "{}").await;
    assert_eq!(resp.status(), status, "{name}");
    assert!(resp.headers().contains_key("x-evoke-invocation-id"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{name}: {v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{name}: `{msg}` should mention `{needle}`");
}

#[tokio::test]
async fn hostile_guests_get_precise_errors_and_the_node_keeps_serving() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;

    node.deploy_ok("spin", &wasi_module("(loop $l (br $l))", ""), &[("timeout", "300ms")])
        .await;
    expect_error(
        &node,
        "spin",
        StatusCode::GATEWAY_TIMEOUT,
        "FunctionTimeout",
        "timeout of 300ms",
    )
    .await;

    let grow = "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))";
    node.deploy_ok("hog", &wasi_module(grow, ""), &[("memory", "16Mi")])
        .await;
    expect_error(
        &node,
        "hog",
        StatusCode::INTERNAL_SERVER_ERROR,
        "FunctionMemoryLimit",
        "memory limit of 16Mi",
    )
    .await;

    // 64 KiB written 200 times: 12.5 MiB, past the 6 MiB output limit.
    let flood = "(loop $l
        (call $write (i32.const 1) (i32.const 65536) (i32.const 65536))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 200))))";
    node.deploy_ok("flood", &wasi_module(flood, ""), &[]).await;
    expect_error(
        &node,
        "flood",
        StatusCode::INTERNAL_SERVER_ERROR,
        "FunctionOutputTooLarge",
        "limit is",
    )
    .await;

    let exit = "(call $write (i32.const 2) (i32.const 1024) (i32.const 13)) (call $proc_exit (i32.const 7))";
    node.deploy_ok("quits", &wasi_module(exit, "disk on fire\n"), &[]).await;
    expect_error(
        &node,
        "quits",
        StatusCode::INTERNAL_SERVER_ERROR,
        "FunctionExitCode",
        "code 7: disk on fire",
    )
    .await;

    node.deploy_ok("boom", &wasi_module("unreachable", ""), &[]).await;
    expect_error(
        &node,
        "boom",
        StatusCode::INTERNAL_SERVER_ERROR,
        "FunctionTrapped",
        "unreachable",
    )
    .await;

    // A guest that logs megabytes to stderr still succeeds; its log is capped.
    let noisy = "(loop $l
        (call $write (i32.const 2) (i32.const 65536) (i32.const 65536))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 64))))
        (call $write (i32.const 1) (i32.const 1024) (i32.const 2))";
    node.deploy_ok("noisy", &wasi_module(noisy, "ok"), &[]).await;
    let resp = node.invoke("noisy", "{}").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");

    let resp = node.invoke("hello", r#"{"name":"survivor"}"#).await;
    assert_eq!(resp.text().await.unwrap(), "Hello, survivor!");
    let resp = node.invoke("spin", "{}").await;
    assert_eq!(
        resp.status(),
        StatusCode::GATEWAY_TIMEOUT,
        "still serving the same function"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_guest_sees_no_preopened_directories() {
    // WASI hands preopened directories out as fd 3, 4, ...: there are none.
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let probe = wasi_module_with_fdstat();
    node.deploy_ok("probe", &probe, &[]).await;
    let resp = node.invoke("probe", "{}").await;
    assert_eq!(resp.status(), StatusCode::OK);
    // fd_fdstat_get(3) returns EBADF (8): no preopened directory exists.
    assert_eq!(resp.text().await.unwrap(), "8");
    node.stop().await;
}

fn wasi_module_with_fdstat() -> Vec<u8> {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $stat (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (local $r i32)
        (local.set $r (call $stat (i32.const 3) (i32.const 64)))
        ;; write the errno as one decimal digit (it is below 10 here)
        (i32.store8 (i32.const 200) (i32.add (i32.const 48) (local.get $r)))
        (i32.store (i32.const 0) (i32.const 200))
        (i32.store (i32.const 4) (i32.const 1))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
    wat::parse_str(wat).unwrap()
}

#[tokio::test]
async fn fuel_budgets_stop_a_guest_deterministically() {
    let nats = Nats::start();
    let plain = TestNode::start(&nats.url()).await;
    let spin = wasi_module("(loop $l (br $l))", "");
    let (status, v) = plain.deploy("spin", &spin, &[("fuel", "100000")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["details"][0]["field"], "fuel", "{v}");
    plain.stop().await;

    let dir = tempfile::TempDir::new().unwrap();
    let mut c = crate::common::config(&nats.url(), &dir);
    c.fuel = true;
    let node = TestNode::with_config(c, dir).await;
    node.deploy_ok("spin", &spin, &[("fuel", "100000"), ("timeout", "30s")])
        .await;
    expect_error(
        &node,
        "spin",
        StatusCode::INTERNAL_SERVER_ERROR,
        "FunctionFuelExhausted",
        "fuel budget of 100000",
    )
    .await;
    // Without a budget, a function on a metering node runs normally.
    node.deploy_ok("hello", &example("hello"), &[]).await;
    assert_eq!(node.invoke("hello", "{}").await.text().await.unwrap(), "Hello, world!");
    node.stop().await;
}

/// A WASI command that sleeps for a minute in a host call (`poll_oneoff`),
/// where the epoch deadline cannot reach it.
fn sleeper_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (i64.store (i32.const 0) (i64.const 1))
        (i32.store8 (i32.const 8) (i32.const 0))
        (i32.store (i32.const 16) (i32.const 1))
        (i64.store (i32.const 24) (i64.const 60000000000))
        (drop (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)))))"#,
    )
    .unwrap()
}

/// Sync-invokes `name` with text `data`; returns status, error code and message.
async fn call(node: &TestNode, name: &str, data: &str) -> (StatusCode, String, String, reqwest::header::HeaderMap) {
    let resp = node
        .http
        .post(node.url(&format!("/v1/functions/{name}/invoke")))
        .header("content-type", "text/plain")
        .timeout(std::time::Duration::from_secs(30))
        .body(data.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{name} {data}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    let message = v["error"]["message"].as_str().map(str::to_string).unwrap_or(text);
    (status, code, message, headers)
}

/// Every class of hostile guest at once, each getting its precise error,
/// while a well-behaved function keeps answering on the same node.
#[tokio::test]
async fn hostile_guests_at_once_while_a_good_one_keeps_answering() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let hostile = example("hostile");
    node.deploy_ok(
        "hostile",
        &hostile,
        &[("timeout", "1s"), ("memory", "256Mi"), ("max_instances", "20")],
    )
    .await;
    node.deploy_ok("bad-init", &hostile, &[("env", "HOSTILE_INIT=trap")])
        .await;
    node.deploy_ok("sleeper", &sleeper_module(), &[("timeout", "500ms")])
        .await;
    let flood = "(loop $l
        (call $write (i32.const 2) (i32.const 65536) (i32.const 65536))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 512))))
        (call $write (i32.const 1) (i32.const 1024) (i32.const 2))";
    node.deploy_ok("stderr-flood", &wasi_module(flood, "ok"), &[]).await;

    type Check = fn(StatusCode, &str, &str, &reqwest::header::HeaderMap) -> bool;
    let cases: Vec<(&str, &str, Check)> = vec![
        ("hostile", "loop", |s, c, _, _| {
            s == StatusCode::GATEWAY_TIMEOUT && c == "FunctionTimeout"
        }),
        ("hostile", "recurse", |s, c, m, _| {
            s == StatusCode::INTERNAL_SERVER_ERROR && c == "FunctionTrapped" && m.contains("stack")
        }),
        ("hostile", "huge-error", |s, c, m, _| {
            s == StatusCode::INTERNAL_SERVER_ERROR
                && c == "FunctionError"
                && m.len() < 9 << 10
                && m.contains("truncated: 67108864 bytes")
        }),
        ("hostile", "log-spin", |s, c, _, _| {
            s == StatusCode::GATEWAY_TIMEOUT && c == "FunctionTimeout"
        }),
        ("hostile", "sleep", |s, c, _, _| {
            s == StatusCode::GATEWAY_TIMEOUT && c == "FunctionTimeout"
        }),
        ("sleeper", "", |s, c, m, _| {
            s == StatusCode::GATEWAY_TIMEOUT && c == "FunctionTimeout" && m.contains("500ms")
        }),
        ("bad-init", "x", |s, c, _, _| {
            s == StatusCode::INTERNAL_SERVER_ERROR && c == "FunctionTrapped"
        }),
        ("stderr-flood", "", |s, _, m, _| s == StatusCode::OK && m == "ok"),
        ("hostile", "status:99", |s, c, m, _| {
            s == StatusCode::INTERNAL_SERVER_ERROR && c == "FunctionInvalidOutput" && m.contains("200-599")
        }),
        ("hostile", "status:600", |s, c, _, _| {
            s == StatusCode::INTERNAL_SERVER_ERROR && c == "FunctionInvalidOutput"
        }),
        ("hostile", "status:201", |s, _, m, h| {
            s == StatusCode::CREATED
                && m == "framed"
                && h.get("x-kept").is_some()
                && h.get("transfer-encoding").is_none()
                && h.get("upgrade").is_none()
                && h.get("connection").is_none_or(|v| v != "close")
                && h.get("content-length").is_none_or(|v| v == "6")
        }),
    ];
    let hostile_calls = futures::future::join_all(cases.iter().map(|(name, data, check)| {
        let node = &node;
        async move {
            let (s, c, m, h) = call(node, name, data).await;
            let shown: String = m.chars().take(300).collect();
            assert!(check(s, &c, &m, &h), "{name} {data}: {s} {c} {shown} {h:?}");
        }
    }));
    let good_calls = async {
        for i in 0..20 {
            let resp = node.invoke("hello", &format!(r#"{{"name":"n{i}"}}"#)).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.text().await.unwrap(), format!("Hello, n{i}!"));
        }
    };
    tokio::join!(hostile_calls, good_calls);

    // Every hostile instance was discarded; the function still answers.
    let (s, _, m, _) = call(&node, "hostile", "fine").await;
    assert_eq!((s, m.as_str()), (StatusCode::OK, "ok"));
    let metrics = node.metrics().await;
    assert!(
        metrics.contains(r#"evoke_instances{function="hostile",state="busy"} 0"#),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_component_importing_what_evoke_does_not_give_is_refused_at_deploy() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let evil = wat::parse_str(
        r#"(component
          (import "evil:net/socket" (instance (export "connect" (func))))
          (core module $m (func (export "h")))
          (core instance $i (instantiate $m))
          (func (export "handle") (canon lift (core func $i "h"))))"#,
    )
    .unwrap();
    let (status, v) = node.deploy("evil", &evil, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "InvalidCode");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("evil:net/socket"), "{msg}");
    assert_eq!(node.get("/v1/functions/evil").await.0, StatusCode::NOT_FOUND);
    node.stop().await;
}

/// A sync client that goes away cancels its invocation: the function's busy
/// count goes back down (it stayed up for good before).
#[tokio::test]
async fn a_cancelled_sync_call_frees_its_instance() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("slow", &crate::common::busy_module(3000), &[("timeout", "10s")])
        .await;
    let gone = node
        .http
        .post(node.url("/v1/functions/slow/invoke"))
        .timeout(std::time::Duration::from_millis(300))
        .body("{}")
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let metrics = node.metrics().await;
    assert!(
        metrics.contains(r#"evoke_instances{function="slow",state="busy"} 0"#),
        "{metrics}"
    );
    node.stop().await;
}

/// When the node's instance pool is full, idle instances of other functions
/// make room; when running instances fill it, callers get 503 with
/// Retry-After (a system error), never a function error. No function may
/// ask for more instances than the pool has.
#[tokio::test]
async fn a_full_pool_reclaims_idle_instances_then_answers_503() {
    let nats = Nats::start();
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = crate::common::config(&nats.url(), &dir);
    c.pool_instances = 8;
    let node = TestNode::with_config(c, dir).await;
    let (status, v) = node
        .deploy("greedy", &example("hello"), &[("max_instances", "9")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["details"][0]["field"], "max_instances", "{v}");

    // Fill the pool with idle instances of one function...
    node.deploy_ok("a", &example("hostile"), &[("max_instances", "8"), ("timeout", "10s")])
        .await;
    let fill = futures::future::join_all((0..8).map(|_| call(&node, "a", "nap")));
    for (s, _, _, _) in fill.await {
        assert_eq!(s, StatusCode::OK);
    }
    // ...another function still gets an instance: idle ones make room.
    node.deploy_ok("b", &example("hello"), &[]).await;
    let resp = node.invoke("b", "{}").await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());

    // Eight running guests take every stack: the ninth caller is told to
    // come back, with a system error.
    node.deploy_ok(
        "slow",
        &crate::common::busy_module(2000),
        &[("max_instances", "8"), ("timeout", "10s")],
    )
    .await;
    let running = futures::future::join_all((0..8).map(|_| call(&node, "slow", "")));
    let late = async {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        call(&node, "b", "").await
    };
    let (running, (s, code, m, h)) = tokio::join!(running, late);
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{code} {m}");
    assert_eq!(code, "NodeAtCapacity", "{m}");
    assert!(h.contains_key("retry-after"));
    assert!(running.iter().all(|(s, ..)| *s == StatusCode::OK));
    node.stop().await;
}

/// Reserved instances are made once per function, not once per registry
/// change: a burst of deploys while a slow prewarm runs leaves exactly
/// `reserved` idle instances.
#[tokio::test]
async fn reserved_instances_are_prewarmed_once() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok(
        "warm",
        &example("hostile"),
        &[("reserved", "3"), ("env", "HOSTILE_INIT=nap"), ("timeout", "5s")],
    )
    .await;
    for i in 0..6 {
        node.deploy_ok(&format!("other-{i}"), &example("hello"), &[]).await;
    }
    let want = r#"evoke_instances{function="warm",state="idle"} 3"#;
    assert!(node.wait_metric(want, std::time::Duration::from_secs(10)).await);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let metrics = node.metrics().await;
    assert!(metrics.contains(want), "{metrics}");
    node.stop().await;
}
