//! The `evoke` binary as a user runs it.

use std::process::{Command, Output};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{Nats, TestNode};

fn evoke(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evoke"))
        .args(args)
        .env("EVOKE_SERVER", server)
        .env_remove("EVOKE_API_TOKEN")
        .output()
        .expect("run evoke")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "evoke failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn the_cli_tour_works() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let server = node.base.clone();
    let hello = format!("{}/examples/hello.wasm", env!("CARGO_MANIFEST_DIR"));
    let counter = format!("{}/examples/counter.wasm", env!("CARGO_MANIFEST_DIR"));

    let s = server.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut log = Vec::new();
        let deploy = stdout(&evoke(
            &s,
            &["deploy", "hello", &hello, "--memory", "64Mi", "--timeout", "5s"],
        ));
        log.push(deploy);
        log.push(stdout(&evoke(
            &s,
            &["invoke", "hello", "--data", r#"{"name":"evoke"}"#],
        )));
        let id = stdout(&evoke(
            &s,
            &["invoke", "hello", "--data", r#"{"name":"evoke"}"#, "--async"],
        ));
        let id = id.trim().to_string();
        let mut shown = String::new();
        for _ in 0..50 {
            shown = stdout(&evoke(&s, &["invocations", "show", &id]));
            if shown.contains("succeeded") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        log.push(shown);
        let json: Value = serde_json::from_str(&stdout(&evoke(&s, &["--json", "invocations", "show", &id]))).unwrap();
        log.push(json["status"].to_string());
        log.push(stdout(&evoke(&s, &["functions"])));
        log.push(stdout(&evoke(&s, &["functions", "show", "hello"])));
        stdout(&evoke(&s, &["deploy", "counter", &counter, "--retries", "0"]));
        let failed = stdout(&evoke(&s, &["invoke", "counter", "--data", "fail", "--async"]));
        let failed = failed.trim().to_string();
        let mut dlq = String::new();
        for _ in 0..50 {
            dlq = stdout(&evoke(&s, &["dlq", "ls", "counter"]));
            if dlq.contains(&failed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        log.push(dlq);
        log.push(stdout(&evoke(&s, &["dlq", "show", "counter", &failed])));
        log.push(stdout(&evoke(&s, &["dlq", "redrive", "counter", "--all"])));
        let err = evoke(&s, &["invoke", "missing"]);
        log.push(format!(
            "exit={:?} stderr={}",
            err.status.code(),
            String::from_utf8_lossy(&err.stderr)
        ));
        log.push(stdout(&evoke(&s, &["functions", "rm", "hello"])));
        log.push(stdout(&evoke(&s, &["logs", "counter"])));
        (log, id, failed)
    })
    .await
    .unwrap();
    let (log, id, failed) = out;
    assert!(log[0].contains("deployed hello (component): sha256:"), "{}", log[0]);
    assert_eq!(log[1], "Hello, evoke!\n");
    assert!(
        log[2].contains(&id) && log[2].contains("succeeded") && log[2].contains("attempt 1"),
        "{}",
        log[2]
    );
    assert_eq!(log[3], "\"succeeded\"");
    assert!(log[4].contains("hello") && log[4].contains("64Mi"), "{}", log[4]);
    assert!(log[5].contains("\"digest\""), "{}", log[5]);
    assert!(
        log[6].contains(&failed) && log[6].contains("function error"),
        "{}",
        log[6]
    );
    assert!(log[7].contains("asked to fail"), "{}", log[7]);
    assert_eq!(log[8], "redrove 1 event(s) of counter\n");
    assert!(
        log[9].starts_with("exit=Some(1) stderr=error: 404 Not Found: function `missing` does not exist"),
        "{}",
        log[9]
    );
    assert_eq!(log[9].trim_end().lines().count(), 1, "one line: {}", log[9]);
    assert_eq!(log[10], "removed hello\n");
    assert!(log[11].contains("counter instance started"), "{}", log[11]);
    node.stop().await;
}

#[test]
fn unreachable_server_says_what_to_do() {
    let o = evoke("http://127.0.0.1:1", &["functions"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is `evoke up` running?"), "{err}");
}

#[test]
fn help_explains_the_commands() {
    let o = Command::new(env!("CARGO_BIN_EXE_evoke"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    // Each command is a line of the command list, with what it does: not
    // just a word somewhere in the about text.
    let commands = text.split("Commands:").nth(1).expect("a command list");
    let commands = commands.split("Options:").next().unwrap();
    for cmd in [
        "up",
        "serve",
        "deploy",
        "invoke",
        "invocations",
        "functions",
        "dlq",
        "logs",
        "triggers",
        "apply",
        "status",
    ] {
        let line = commands
            .lines()
            .find(|l| l.split_whitespace().next() == Some(cmd))
            .unwrap_or_else(|| panic!("{cmd} missing from the command list:\n{commands}"));
        assert!(line.split_whitespace().count() > 2, "{cmd} has no description: {line}");
    }
}

#[tokio::test]
async fn apply_creates_updates_prunes_and_refuses_bad_manifests_whole() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let server = node.base.clone();
    let dir = tempfile::TempDir::new().unwrap();
    let examples = format!("{}/examples", env!("CARGO_MANIFEST_DIR"));
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let good = write(
        "evoke.toml",
        format!(
            r#"
[functions.hello]
code = "{examples}/hello.wasm"
memory = "64Mi"
timeout = "5s"

[functions.counter]
code = "{examples}/counter.wasm"

[triggers.tick]
function = "hello"
kind = "cron"
schedule = "0 0 1 1 *"
timezone = "Asia/Shanghai"

[triggers.gh]
function = "hello"
kind = "webhook"
mode = "sync"
auth = {{ scheme = "github", secret_env = "GH_SECRET" }}
"#
        ),
    );
    // Broken in three places, one of them only the server can see (the code).
    let bad = write(
        "bad.toml",
        format!(
            r#"
[functions.hello]
code = "{examples}/hello.wasm"
memory = "64Xi"

[functions.junk]
code = "{examples}/../Cargo.toml"

[triggers.tick]
function = "hello"
kind = "cron"
schedule = "61 * * * *"
"#
        ),
    );
    let also_bad = write(
        "code.toml",
        format!(
            "[functions.newfn]\ncode = \"{examples}/../Cargo.toml\"\n[functions.other]\ncode = \"{examples}/hello.wasm\"\n"
        ),
    );
    let slim = write(
        "slim.toml",
        format!("[functions.hello]\ncode = \"{examples}/hello.wasm\"\nmemory = \"128Mi\"\ntimeout = \"5s\"\n"),
    );

    let s = server.clone();
    let (first, second, rejected, rejected_remote, listed) = tokio::task::spawn_blocking(move || {
        let first = stdout(&evoke(&s, &["apply", "-f", &good]));
        let second = stdout(&evoke(&s, &["apply", "-f", &good]));
        let listed = stdout(&evoke(&s, &["triggers"]));
        let rejected = evoke(&s, &["apply", "-f", &bad]);
        let rejected_remote = evoke(&s, &["apply", "-f", &also_bad]);
        (first, second, rejected, rejected_remote, listed)
    })
    .await
    .unwrap();
    for line in [
        "+ function hello: created",
        "+ function counter: created",
        "+ trigger tick: created",
        "+ trigger gh: created",
    ] {
        assert!(first.contains(line), "{line} in {first}");
    }
    assert!(
        second.contains("0 created, 0 updated, 0 deleted, 4 unchanged"),
        "{second}"
    );
    let rows: Vec<Vec<&str>> = listed.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    // No GH_SECRET on this node: the webhook says it refuses everything.
    assert_eq!(rows[0][..4], ["gh", "webhook", "hello", "misconfigured"], "{listed}");
    assert_eq!(rows[1][..4], ["tick", "cron", "hello", "active"], "{listed}");

    assert_eq!(rejected.status.code(), Some(1));
    let err = String::from_utf8_lossy(&rejected.stderr);
    for path in ["functions.hello.memory", "triggers.tick.schedule"] {
        assert!(err.contains(path), "{path} not listed: {err}");
    }
    let err = String::from_utf8_lossy(&rejected_remote.stderr);
    assert_eq!(rejected_remote.status.code(), Some(1), "{err}");
    assert!(
        err.contains("functions.newfn") && err.contains("not WebAssembly"),
        "{err}"
    );
    // Nothing of either bad manifest was applied.
    assert_eq!(node.get("/v1/functions/other").await.0, StatusCode::NOT_FOUND);
    let (_, hello) = node.get("/v1/functions/hello").await;
    assert_eq!(hello["spec"]["memory"], "64Mi");

    let s = server.clone();
    let pruned = tokio::task::spawn_blocking(move || stdout(&evoke(&s, &["apply", "-f", &slim, "--prune"])))
        .await
        .unwrap();
    for line in [
        "~ function hello: updated",
        "- trigger tick: deleted",
        "- trigger gh: deleted",
        "- function counter: deleted",
    ] {
        assert!(pruned.contains(line), "{line} in {pruned}");
    }
    let (_, list) = node.get("/v1/triggers").await;
    assert_eq!(list["triggers"].as_array().unwrap().len(), 0);
    node.stop().await;
}

/// `evoke status` shows the nodes, NATS, streams with replicas, queues and
/// warnings; `--json` gives the same for scripts.
#[tokio::test]
async fn status_shows_the_cluster() {
    let nats = Nats::start();
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = crate::common::config(&nats.url(), &dir);
    c.node_name = "status-node".into();
    let node = TestNode::with_config(c, dir).await;
    node.deploy_ok("flaky", &crate::common::example("counter"), &[("retries", "0")])
        .await;
    let id = node.invoke_async("flaky", "text/plain", "fail").await;
    node.wait_record(&id, Duration::from_secs(15), |r| r["status"] == "dead-lettered")
        .await;
    // The heartbeat is written every 5 s, the first at start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = node.base.clone();
    let (text, json) = tokio::task::spawn_blocking(move || {
        (
            stdout(&evoke(&s, &["status"])),
            stdout(&evoke(&s, &["status", "--json"])),
        )
    })
    .await
    .unwrap();
    for needle in [
        "status-node",
        "EVOKE_EVENTS",
        "KV_EVOKE_FUNCTIONS",
        "flaky",
        "warning: flaky has 1 dead letter",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["nodes"][0]["name"], "status-node", "{v:#}");
    assert_eq!(v["nodes"][0]["roles"]["workers"], true);
    assert_eq!(v["replicas"], 1, "one server: one replica");
    let flaky = v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "flaky")
        .unwrap();
    assert_eq!(flaky["dead_letters"], 1);
    let (status, _) = node.get("/v1/status").await;
    assert_eq!(status, StatusCode::OK);
    node.stop().await;
}
