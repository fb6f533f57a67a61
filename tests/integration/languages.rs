//! Functions in Python and JavaScript: the hello-python and hello-js
//! examples (built with the real componentize-py and componentize-js by
//! scripts/build-examples), and projects made by `evoke new` and built by
//! `evoke build` with the real toolchains.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{Nats, TestNode, example};

/// Sync and async output, state across warm calls, logs, and an exception
/// as a function error: its message returned, its traceback in the log,
/// retried, then dead-lettered.
async fn interpreted_function_behaves(name: &str, trace_word: &str) {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok(name, &example(name), &[("memory", "128Mi"), ("retries", "1")])
        .await;

    let mut greeted = Vec::new();
    for _ in 0..2 {
        let resp = node.invoke(name, r#"{"name":"sync"}"#).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            (&v["greeting"], &v["attempt"]),
            (&Value::from("Hello, sync!"), &Value::from(1)),
            "{v}"
        );
        greeted.push(v["greeted"].as_u64().unwrap());
    }
    assert_eq!(greeted[1], greeted[0] + 1, "module state kept across warm calls");

    let id = node
        .invoke_async(name, "application/json", r#"{"name":"queued"}"#)
        .await;
    let rec = node
        .wait_record(&id, Duration::from_secs(30), |r| r["status"] == "succeeded")
        .await;
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 1, "{rec:#}");
    let log = node
        .logs_with(name, &format!("invocation={id}"), "greeting queued (attempt 1)")
        .await;
    assert!(log.contains("greeting queued (attempt 1)"), "{log}");

    // An exception: the caller gets its message...
    let resp = node.invoke(name, r#"{"fail":"now"}"#).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "FunctionError", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("asked to fail: now"), "{message}");
    // ...and the async one is retried, then dead-lettered with it.
    let id = node.invoke_async(name, "application/json", r#"{"fail":"later"}"#).await;
    let rec = node
        .wait_record(&id, Duration::from_secs(60), |r| r["status"] == "dead-lettered")
        .await;
    let attempts = rec["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "1 try + 1 retry: {rec:#}");
    for a in attempts {
        assert_eq!(a["error"]["class"], "function", "{rec:#}");
        assert!(
            a["error"]["message"].as_str().unwrap().contains("asked to fail: later"),
            "{rec:#}"
        );
    }
    let (_, one) = node.get(&format!("/v1/functions/{name}/dlq/{id}")).await;
    assert!(
        one["reason"].as_str().unwrap().contains("asked to fail: later"),
        "{one:#}"
    );
    // The traceback (Python) or stack (JavaScript) is in the log.
    let log = node.logs_with(name, &format!("invocation={id}"), trace_word).await;
    assert!(
        log.contains(trace_word) && log.contains("asked to fail: later"),
        "{log}"
    );

    // The instance that raised still serves (an exception is not a trap).
    let resp = node.invoke(name, r#"{}"#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    node.stop().await;
}

#[tokio::test]
async fn a_python_function_runs_keeps_state_logs_and_fails_cleanly() {
    interpreted_function_behaves("hello-python", "Traceback (most recent call last)").await;
}

#[tokio::test]
async fn a_javascript_function_runs_keeps_state_logs_and_fails_cleanly() {
    interpreted_function_behaves("hello-js", "handle threw Error").await;
}

/// Runs the real `evoke` binary; panics unless it succeeds; returns stdout.
fn evoke(args: &[&str], cwd: &Path) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_evoke"));
    // Rust projects reuse the examples' compiled guest dependencies.
    if let Ok(target) = std::env::var("CARGO_TARGET_DIR") {
        cmd.env("CARGO_TARGET_DIR", format!("{target}/guests"));
    }
    let out = cmd.args(args).current_dir(cwd).output().unwrap();
    assert!(
        out.status.success(),
        "evoke {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `evoke new` then `evoke build` give a function that deploys and greets,
/// in every language.
#[tokio::test]
async fn new_projects_build_and_run_in_every_language() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let tmp = tempfile::TempDir::new().unwrap();
    for lang in ["python", "js", "rust"] {
        let name = format!("greet-{lang}");
        let created: Value =
            serde_json::from_str(&evoke(&["--json", "new", &name, "--lang", lang], tmp.path())).unwrap();
        assert_eq!(created["lang"], lang);
        let dir = tmp.path().join(&name);
        let built: Value = serde_json::from_str(&evoke(&["--json", "build"], &dir)).unwrap();
        assert_eq!(built["name"], name.as_str(), "{built}");
        let code = std::fs::read(built["wasm"].as_str().unwrap()).unwrap();
        node.deploy_ok(&name, &code, &[("memory", "128Mi")]).await;
        let resp = node.invoke(&name, r#"{"name":"new"}"#).await;
        assert_eq!(resp.status(), StatusCode::OK, "{lang}");
        assert_eq!(resp.text().await.unwrap(), "Hello, new!", "{lang}");
    }
    node.stop().await;
}

/// `evoke build` of a project whose toolchain is missing says what to install.
#[test]
fn a_missing_toolchain_is_named_with_its_install_command() {
    let tmp = tempfile::TempDir::new().unwrap();
    evoke(&["new", "lonely", "--lang", "python"], tmp.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_evoke"))
        .args(["build", "lonely"])
        .current_dir(tmp.path())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pip install componentize-py==0.25.1"), "{err}");
}
