//! Deploy, sync invoke, warm reuse, records, logs, metrics.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{Nats, TestNode, example};

#[tokio::test]
async fn hello_deploys_and_answers_cold_then_warm() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let body = node
        .deploy_ok("hello", &example("hello"), &[("memory", "64Mi"), ("timeout", "5s")])
        .await;
    assert_eq!(body["kind"], "component");
    assert!(body["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(body["spec"]["memory"], "64Mi");

    let first = node.invoke("hello", r#"{"name":"evoke"}"#).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-evoke-start"], "cold");
    assert!(
        first.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let id = first.headers()["x-evoke-invocation-id"].to_str().unwrap().to_string();
    assert_eq!(first.text().await.unwrap(), "Hello, evoke!");

    let second = node.invoke("hello", r#"{"name":"again"}"#).await;
    assert_eq!(second.headers()["x-evoke-start"], "warm");
    assert_eq!(second.text().await.unwrap(), "Hello, again!");

    let record = node
        .wait_record(&id, Duration::from_secs(5), |r| r["status"] == "succeeded")
        .await;
    assert_eq!(record["mode"], "sync");
    assert_eq!(record["start"], "cold");
    let cold = &record["attempts"][0]["cold_start"];
    assert!(cold["instantiate_us"].as_u64().is_some(), "{record:#}");
    // The deploy compiled and cached the code, so the first run loads it.
    assert_eq!(cold["cached_code"], true);

    // The function's log line reaches EVOKE_LOGS, tagged with the invocation.
    let logs = node
        .logs_with("hello", &format!("invocation={id}"), "greeting evoke")
        .await;
    assert!(logs.contains("greeting evoke (attempt 1)"), "{logs}");
    assert!(!logs.contains("greeting again"), "filtered by invocation: {logs}");

    let metrics = node.metrics().await;
    assert!(
        metrics.contains(r#"evoke_invocations_total{function="hello",outcome="success"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"evoke_cold_starts_total{function="hello"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("evoke_usage_gb_seconds_total"), "{metrics}");
    node.stop().await;
}

#[tokio::test]
async fn instances_keep_state_until_they_trap() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("counter", &example("counter"), &[]).await;
    let count = |v: Value| v["count"].as_u64().unwrap();
    let r1: Value = node.invoke("counter", "").await.json().await.unwrap();
    let r2: Value = node.invoke("counter", "").await.json().await.unwrap();
    assert_eq!((count(r1.clone()), count(r2.clone())), (1, 2));
    assert_eq!(r2["inits"], 1, "init runs once per instance");

    let trap = node.invoke_text("counter", "trap").await;
    assert_eq!(trap.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let err: Value = trap.json().await.unwrap();
    assert_eq!(err["error"]["code"], "FunctionTrapped", "{err}");

    // The trapped instance is gone: the next one starts from scratch.
    let fresh = node.invoke("counter", "").await;
    assert_eq!(fresh.headers()["x-evoke-start"], "cold");
    let fresh: Value = fresh.json().await.unwrap();
    assert_eq!(fresh["count"], 1);
    node.stop().await;
}

#[tokio::test]
async fn wasi_command_gets_event_on_stdin_and_env() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let body = node
        .deploy_ok("echo", &example("echo-command"), &[("env", "GREETING=hi")])
        .await;
    assert_eq!(body["kind"], "wasi-command");
    let resp = node.invoke("echo", r#"{"k":"v"}"#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let out: Value = resp.json().await.unwrap();
    assert_eq!(out["DATA"]["K"], "V", "{out}");
    assert_eq!(out["TYPE"], "EVOKE.INVOKE");

    let fail = node.invoke_text("echo", "please fail").await;
    assert_eq!(fail.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let err: Value = fail.json().await.unwrap();
    assert_eq!(err["error"]["code"], "FunctionExitCode");
    let msg = err["error"]["message"].as_str().unwrap();
    // wasi:cli/exit 0.2 carries only success or failure: any failing status
    // of a preview-2 command reads as 1.
    assert!(msg.contains("code 1") && msg.contains("refusing"), "{msg}");
    node.stop().await;
}

#[tokio::test]
async fn reserved_instances_are_warm_and_idle_ones_are_reclaimed() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("kept", &example("counter"), &[("reserved", "2")]).await;
    node.deploy_ok("brief", &example("counter"), &[("idle_timeout", "1s")])
        .await;
    // Reserved instances are created at deploy, so even the first call is warm.
    let two_idle = r#"evoke_instances{function="kept",state="idle"} 2"#;
    assert!(
        node.wait_metric(two_idle, Duration::from_secs(5)).await,
        "{}",
        node.metrics().await
    );
    assert_eq!(node.invoke("kept", "").await.headers()["x-evoke-start"], "warm");

    assert_eq!(node.invoke("brief", "").await.headers()["x-evoke-start"], "cold");
    assert_eq!(node.invoke("brief", "").await.headers()["x-evoke-start"], "warm");
    // The reaper drops the idle instance after its idle timeout...
    let none_idle = r#"evoke_instances{function="brief",state="idle"} 0"#;
    assert!(
        node.wait_metric(none_idle, Duration::from_secs(20)).await,
        "{}",
        node.metrics().await
    );
    // ...so the next call is cold again.
    assert_eq!(
        node.invoke("brief", "").await.headers()["x-evoke-start"],
        "cold",
        "idle instance reclaimed"
    );
    node.stop().await;
}

#[tokio::test]
async fn restarted_node_loads_compiled_code_from_its_cache() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    // A second node with an empty cache fetches the code from NATS and compiles.
    let other = TestNode::start(&nats.url()).await;
    let resp = other.invoke("hello", "{}").await;
    let id = resp.headers()["x-evoke-invocation-id"].to_str().unwrap().to_string();
    let rec = other
        .wait_record(&id, Duration::from_secs(5), |r| r["status"] == "succeeded")
        .await;
    let cold = &rec["attempts"][0]["cold_start"];
    assert_eq!(cold["cached_code"], false, "{rec:#}");
    assert!(cold["fetch_us"].as_u64().unwrap() > 0);
    // Restart it on the same data dir: the compiled code is loaded, not rebuilt.
    let dir = {
        let TestNode { node, dir, .. } = other;
        node.unwrap().stop().await;
        dir
    };
    let config = crate::common::config(&nats.url(), &dir);
    let again = TestNode::with_config(config, dir).await;
    let resp = again.invoke("hello", "{}").await;
    let id = resp.headers()["x-evoke-invocation-id"].to_str().unwrap().to_string();
    let rec = again
        .wait_record(&id, Duration::from_secs(5), |r| r["status"] == "succeeded")
        .await;
    assert_eq!(rec["attempts"][0]["cold_start"]["cached_code"], true, "{rec:#}");
    again.stop().await;
    node.stop().await;
}

#[tokio::test]
async fn functions_are_listed_shown_and_removed() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("b-fn", &example("hello"), &[]).await;
    node.deploy_ok("a-fn", &example("hello"), &[]).await;
    let (_, list) = node.get("/v1/functions").await;
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-fn", "b-fn"]);
    let (status, one) = node.get("/v1/functions/a-fn").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["spec"]["retries"], 3);
    let del = node.http.delete(node.url("/v1/functions/a-fn")).send().await.unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    assert_eq!(node.invoke("a-fn", "{}").await.status(), StatusCode::NOT_FOUND);
    let del = node.http.delete(node.url("/v1/functions/a-fn")).send().await.unwrap();
    assert_eq!(del.status(), StatusCode::NOT_FOUND);
    node.stop().await;
}

#[tokio::test]
async fn multipart_deploy_takes_a_spec_part() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let form = reqwest::multipart::Form::new()
        .text("spec", r#"{"memory":"32Mi","timeout":"2s","env":{"A":"1"}}"#)
        .part("code", reqwest::multipart::Part::bytes(example("hello")));
    let resp = node
        .http
        .put(node.url("/v1/functions/mp"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["spec"]["memory"], "32Mi");
    assert_eq!(v["spec"]["env"]["A"], "1");
    node.stop().await;
}

#[tokio::test]
async fn api_token_is_required_when_set() {
    let nats = Nats::start();
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = crate::common::config(&nats.url(), &dir);
    c.api_token = Some("s3cret".into());
    let node = TestNode::with_config(c, dir).await;
    let resp = node.http.get(node.url("/v1/functions")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "Unauthorized");
    let ok = node
        .http
        .get(node.url("/v1/functions"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    // Health stays open for probes.
    assert_eq!(
        node.http.get(node.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    node.stop().await;

    let dir = tempfile::TempDir::new().unwrap();
    let mut open = crate::common::config(&nats.url(), &dir);
    open.http_addr = "0.0.0.0:0".parse().unwrap();
    let err = evoke::node::Node::start(open).await.err().expect("refused");
    assert!(err.to_string().contains("without a token"), "{err}");
}

#[tokio::test]
async fn logs_follow_streams_new_lines() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let resp = node
        .http
        .get(node.url("/v1/functions/hello/logs?follow=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    node.invoke("hello", r#"{"name":"live"}"#).await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("greeting live") {
        use futures::StreamExt;
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("a line in time")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let line: Value = serde_json::from_str(seen.lines().find(|l| l.contains("greeting live")).unwrap()).unwrap();
    assert_eq!(line["function"], "hello");
    assert_eq!(line["level"], "info");
    node.stop().await;
}

#[tokio::test]
async fn an_api_only_node_relays_sync_invocations_to_a_worker_node() {
    let nats = Nats::start();
    let api = TestNode::without_workers(&nats.url()).await;
    api.deploy_ok("hello", &example("hello"), &[]).await;

    // No worker node yet: a clear 503.
    let resp = api.invoke("hello", "{}").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("no worker node"),
        "{v}"
    );

    let worker = TestNode::start(&nats.url()).await;
    let resp = api.invoke("hello", r#"{"name":"relay","status":202}"#).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap();
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the function's own status comes back: {body}"
    );
    assert_eq!(headers["x-greeted"], "relay");
    let id = headers["x-evoke-invocation-id"].to_str().unwrap().to_string();
    assert_eq!(body, "Hello, relay!");
    let rec = api
        .wait_record(&id, Duration::from_secs(5), |r| r["status"] == "succeeded")
        .await;
    let node = worker.node.as_ref().unwrap().invoker.node.clone();
    assert_eq!(rec["attempts"][0]["node"], node.as_str(), "ran on the worker node");

    // JSON data crosses the relay byte for byte (echo-command upper-cases
    // the event it reads): key order, spacing and number spelling kept.
    api.deploy_ok("echo", &example("echo-command"), &[]).await;
    let resp = api.invoke("echo", r#"{"zeta": 1,"alpha":2.50}"#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let out = resp.text().await.unwrap();
    assert!(out.contains(r#""DATA":{"ZETA": 1,"ALPHA":2.50}"#), "{out}");

    // Function errors come back as they do locally.
    let resp = api.invoke("hello", "[1]").await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "FunctionError");
    worker.stop().await;
    api.stop().await;
}

/// A function built against `evoke:function@0.1.0` (before `objects` was
/// added to the world) deploys, answers and logs unchanged.
#[tokio::test]
async fn functions_built_for_the_0_1_world_keep_running() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("old", &example("hello-v0-1"), &[]).await;
    let resp = node.invoke_text("old", "evoke").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "Hello from 0.1.0, evoke!");
    let log = node.logs_with("old", "", "v0.1 greeting evoke").await;
    assert!(log.contains("v0.1 greeting evoke"), "{log}");
    node.stop().await;
}
