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
