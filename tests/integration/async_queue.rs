//! Async invocations: queue, retries by class, dead letters, redrive,
//! destinations, and redelivery after a node dies.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Nats, TestNode, busy_module, example};

#[tokio::test]
async fn async_invoke_runs_and_reports_its_record() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let id = node
        .invoke_async("hello", "application/json", r#"{"name":"queue"}"#)
        .await;
    let rec = node
        .wait_record(&id, Duration::from_secs(10), |r| r["status"] == "succeeded")
        .await;
    assert_eq!(rec["mode"], "async");
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 1);
    assert!(rec["attempts"][0]["error"].is_null());
    node.stop().await;
}

/// Invocations that finish together store their logs together (several
/// batches in one message): each line is shown once, with its invocation.
#[tokio::test]
async fn a_burst_of_invocations_keeps_every_log_line_once() {
    let nats = Nats::start();
    let queueing = TestNode::without_workers(&nats.url()).await;
    queueing
        .deploy_ok("hello", &example("hello"), &[("max_instances", "8")])
        .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let body = format!(r#"{{"name":"burst-{i}"}}"#);
        ids.push(queueing.invoke_async("hello", "application/json", &body).await);
    }
    // A worker finds the whole queue at once.
    let worker = TestNode::start(&nats.url()).await;
    for id in &ids {
        worker
            .wait_record(id, Duration::from_secs(30), |r| r["status"] == "succeeded")
            .await;
    }
    let log = worker.logs_with("hello", "", "greeting burst-39 (attempt 1)").await;
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).expect("NDJSON")).collect();
    for (i, id) in ids.iter().enumerate() {
        let text = format!("greeting burst-{i} (attempt 1)");
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| l["message"].as_str().unwrap_or("").contains(&text))
            .collect();
        assert_eq!(mine.len(), 1, "{text} once: {log}");
        assert_eq!(mine[0]["invocation"], id.as_str());
    }
    let one = worker
        .logs_with("hello", &format!("invocation={}", ids[7]), "greeting burst-7 ")
        .await;
    assert!(one.contains("greeting burst-7 (attempt 1)"), "{one}");
    assert!(!one.contains("burst-8"), "filtered by invocation: {one}");
    worker.stop().await;
    queueing.stop().await;
}

#[tokio::test]
async fn function_errors_are_retried_then_dead_lettered_and_redriven() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("flaky", &example("counter"), &[("retries", "2")]).await;
    let id = node.invoke_async("flaky", "text/plain", "fail").await;
    let rec = node
        .wait_record(&id, Duration::from_secs(30), |r| r["status"] == "dead-lettered")
        .await;
    let attempts = rec["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "1 try + 2 retries: {rec:#}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["error"]["class"], "function");
        assert_eq!(a["error"]["kind"], "error");
        // The function saw evokeattempt = 1, 2, 3.
        assert_eq!(a["error"]["message"], format!("asked to fail (attempt {})", i + 1));
    }

    let (status, list) = node.get("/v1/functions/flaky/dlq").await;
    assert_eq!(status, StatusCode::OK);
    let entries = list["dead_letters"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["id"], id.as_str());
    assert!(entries[0]["reason"].as_str().unwrap().contains("all 3 attempts"));
    assert_eq!(entries[0]["event"]["data"], "fail");
    let (status, one) = node.get(&format!("/v1/functions/flaky/dlq/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["attempts"].as_array().unwrap().len(), 3);

    assert!(
        node.wait_metric(r#"evoke_dlq_depth{function="flaky"} 1"#, Duration::from_secs(5))
            .await,
        "{}",
        node.metrics().await
    );
    let metrics = node.metrics().await;
    assert!(
        metrics.contains(r#"evoke_retries_total{function="flaky",class="function"} 2"#),
        "{metrics}"
    );

    // Redrive: the event goes back on the queue, fails again, lands again.
    let (status, out) = node.redrive("flaky", &[id.as_str()]).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["redriven"][0], id.as_str());
    let rec = node
        .wait_record(&id, Duration::from_secs(30), |r| {
            r["status"] == "dead-lettered" && r["redrives"] == 1
        })
        .await;
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 3);
    let (_, list) = node.get("/v1/functions/flaky/dlq").await;
    assert_eq!(
        list["dead_letters"].as_array().unwrap().len(),
        1,
        "redriven entry replaced, not duplicated"
    );

    // JSON data is dead-lettered, shown and redriven byte for byte (key
    // order, spacing, number spelling): echo-command fails on "fail".
    node.deploy_ok("echo", &example("echo-command"), &[("retries", "0")])
        .await;
    let data = r#"{"zeta": 1,"note":"fail","alpha":2.50}"#;
    let id = node.invoke_async("echo", "application/json", data).await;
    let dead = |redrives: u64| {
        let (node, id) = (&node, id.clone());
        async move {
            node.wait_record(&id, Duration::from_secs(30), |r| {
                r["status"] == "dead-lettered" && r["redrives"].as_u64().unwrap_or(0) == redrives
            })
            .await;
            let shown = |path: String| async move {
                node.http
                    .get(node.url(&path))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            };
            for text in [
                shown(format!("/v1/functions/echo/dlq/{id}")).await,
                shown("/v1/functions/echo/dlq".into()).await,
            ] {
                assert!(text.contains(data), "the data as it came: {text}");
            }
        }
    };
    dead(0).await;
    let (status, out) = node.redrive("echo", &[id.as_str()]).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    dead(1).await;
    node.stop().await;
}

#[tokio::test]
async fn results_and_failures_reach_their_destinations() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut ok_sub = client.subscribe("results.ok").await.unwrap();
    let mut failed_sub = client.subscribe("results.failed").await.unwrap();
    client.flush().await.unwrap();
    node.deploy_ok("hello", &example("hello"), &[("on_success", "nats:results.ok")])
        .await;
    node.deploy_ok("sink", &example("counter"), &[]).await;
    node.deploy_ok(
        "bad",
        &example("counter"),
        &[("retries", "0"), ("on_failure", "nats:results.failed")],
    )
    .await;

    let id = node
        .invoke_async("hello", "application/json", r#"{"name":"dest"}"#)
        .await;
    let msg = tokio::time::timeout(Duration::from_secs(10), ok_sub.next())
        .await
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(ev["type"], "evoke.invocation.succeeded");
    assert_eq!(ev["data"]["invocation"], id.as_str());
    assert_eq!(ev["data"]["response"]["body"], "Hello, dest!");

    let id = node.invoke_async("bad", "text/plain", "fail").await;
    let msg = tokio::time::timeout(Duration::from_secs(10), failed_sub.next())
        .await
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(ev["type"], "evoke.invocation.failed");
    assert_eq!(ev["data"]["invocation"], id.as_str());
    assert!(ev["data"]["error"].as_str().unwrap().contains("asked to fail"));

    // function: destination: the result is queued as an event for `sink`.
    node.deploy_ok("chain", &example("hello"), &[("on_success", "function:sink")])
        .await;
    node.invoke_async("chain", "application/json", r#"{"name":"x"}"#).await;
    let sink_ran = r#"evoke_invocations_total{function="sink",outcome="success"} 1"#;
    assert!(
        node.wait_metric(sink_ran, Duration::from_secs(10)).await,
        "sink never ran"
    );
    node.stop().await;
}

#[tokio::test]
async fn an_event_survives_the_death_of_its_worker() {
    let nats = Nats::start();
    let first = TestNode::start(&nats.url()).await;
    first.deploy_ok("slow", &busy_module(1500), &[("timeout", "10s")]).await;
    let id = first.invoke_async("slow", "application/json", "{}").await;
    first
        .wait_record(&id, Duration::from_secs(10), |r| r["status"] == "running")
        .await;
    first.kill();

    // Another node picks the event up once the ack wait (3 s here) passes.
    let second = TestNode::start(&nats.url()).await;
    let rec = second
        .wait_record(&id, Duration::from_secs(30), |r| r["status"] == "succeeded")
        .await;
    let attempts = rec["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{rec:#}");
    assert_eq!(
        attempts[0]["error"]["class"], "system",
        "the lost attempt is a system error: {rec:#}"
    );
    assert!(attempts[1]["error"].is_null());
    assert_ne!(attempts[0]["node"], attempts[1]["node"]);
    second.stop().await;
}

#[tokio::test]
async fn same_cloudevent_twice_is_one_invocation() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let ce = json!({"specversion":"1.0","id":"evt-1","source":"/test","type":"t","datacontenttype":"application/json","data":{"name":"ce"}});
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            node.invoke_async("hello", "application/cloudevents+json", &ce.to_string())
                .await,
        );
    }
    assert_eq!(ids[0], ids[1]);
    node.wait_record(&ids[0], Duration::from_secs(10), |r| r["status"] == "succeeded")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = node.metrics().await;
    assert!(
        m.contains(r#"evoke_invocations_total{function="hello",outcome="success"} 1"#),
        "{m}"
    );

    // Binary mode keeps the attributes too.
    let resp = node
        .binary_event("hello", "b-1", "/bin", "test.binary")
        .header("content-type", "application/json")
        .body(r#"{"name":"binary"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "Hello, binary!");

    // `ce-specversion` claims binary mode (as the SDKs tell it): without an
    // id the request is a malformed event, not a plain body for the function.
    let resp = node
        .http
        .post(node.url("/v1/functions/hello/invoke"))
        .header("ce-specversion", "1.0")
        .header("ce-source", "/bin")
        .header("ce-type", "test.binary")
        .body(r#"{"name":"no id"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidEvent", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("`id`"), "{v}");
    node.stop().await;
}

#[tokio::test]
async fn system_errors_retry_until_max_event_age_without_using_up_retries() {
    let nats = Nats::start();
    let first = TestNode::start(&nats.url()).await;
    let deployed = first
        .deploy_ok("lost", &example("hello"), &[("max_event_age", "60s"), ("retries", "1")])
        .await;
    first.stop().await;
    // The code disappears from NATS: a node without a cached copy cannot run it.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let store = async_nats::jetstream::new(client)
        .get_object_store(evoke::bus::OBJ_CODE)
        .await
        .unwrap();
    let digest = deployed["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    store.delete(&digest).await.unwrap();

    let node = TestNode::start(&nats.url()).await;
    let resp = node.invoke("lost", "{}").await;
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "sync: a system error, no retry"
    );
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("cannot fetch code"),
        "{v}"
    );

    let id = node.invoke_async("lost", "application/json", "{}").await;
    let rec = node
        .wait_record(&id, Duration::from_secs(120), |r| r["status"] == "dead-lettered")
        .await;
    let attempts = rec["attempts"].as_array().unwrap();
    assert!(
        attempts.len() > 2,
        "retried more than `retries` allows for function errors: {rec:#}"
    );
    assert!(attempts.iter().all(|a| a["error"]["class"] == "system"), "{rec:#}");
    let (_, dl) = node.get(&format!("/v1/functions/lost/dlq/{id}")).await;
    assert!(dl["reason"].as_str().unwrap().contains("max_event_age"), "{dl:#}");
    node.stop().await;
}

#[tokio::test]
async fn http_destinations_receive_a_cloudevent() {
    use axum::routing::post;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Value)>(4);
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let ct = headers["content-type"].to_str().unwrap().to_string();
                tx.send((ct, serde_json::from_slice(&body).unwrap())).await.unwrap();
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("hello", &example("hello"), &[("on_success", hook.as_str())])
        .await;
    let id = node
        .invoke_async("hello", "application/json", r#"{"name":"web"}"#)
        .await;
    let (ct, ev) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ct, "application/cloudevents+json");
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["subject"], id.as_str());
    assert_eq!(ev["data"]["response"]["body"], "Hello, web!");
    node.stop().await;
}

#[tokio::test]
async fn a_redeployed_function_keeps_consuming_with_its_new_settings() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("fn", &example("counter"), &[("max_instances", "2")])
        .await;
    let id = node.invoke_async("fn", "application/json", "{}").await;
    node.wait_record(&id, Duration::from_secs(10), |r| r["status"] == "succeeded")
        .await;
    // New code and new consumer settings: the queue keeps flowing.
    let (status, _) = node.deploy("fn", &example("hello"), &[("max_instances", "20")]).await;
    assert_eq!(status, StatusCode::OK);
    let id = node.invoke_async("fn", "application/json", r#"{"name":"v2"}"#).await;
    let rec = node
        .wait_record(&id, Duration::from_secs(10), |r| r["status"] == "succeeded")
        .await;
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 1);
    let resp = node.invoke("fn", r#"{"name":"v2"}"#).await;
    assert_eq!(resp.text().await.unwrap(), "Hello, v2!", "the new code runs");
    node.stop().await;
}

/// JSON data reaches the function as it was sent, through the queue and the
/// worker (key order, a number no float can hold, an exponent, spacing), and
/// the function's JSON output leaves by a destination the same way.
#[tokio::test]
async fn json_data_travels_byte_exact_through_the_queue() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    crate::common::Results::create(&nats.url()).await;
    node.deploy_ok(
        "echo",
        &example("echo-command"),
        &[("on_success", "jetstream:results.echo"), ("success_body", "output")],
    )
    .await;
    let data = r#"{"zebra":1,"apple":12345678901234567890123,"f":1e2,"g":[3, 2,1]}"#;
    node.invoke_async("echo", "application/json", data).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let message = crate::common::eventually(Duration::from_secs(30), "the echoed event", || async {
        let stream = js.get_stream("RESULTS").await.ok()?;
        stream.get_last_raw_message_by_subject("results.echo").await.ok()
    })
    .await;
    let payload = String::from_utf8(message.payload.to_vec()).unwrap();
    // echo-command upper-cases the event it reads on stdin.
    assert!(
        payload.contains(&format!(r#""DATA":{}"#, data.to_uppercase())),
        "{payload}"
    );
    node.stop().await;
}

/// An accepted invocation is visible at once, before any worker touched it
/// (its record is written only by the worker): `queued`, with its function,
/// event id and the time it was queued; a duplicate changes nothing; an
/// unknown id is 404. A worker started later runs it.
#[tokio::test]
async fn a_queued_invocation_is_found_before_any_worker_runs_it() {
    let nats = Nats::start();
    let api = TestNode::without_workers(&nats.url()).await;
    api.deploy_ok("hello", &example("hello"), &[]).await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let ce = json!({"specversion":"1.0","id":"evt-q","source":"/test","type":"t","data":{"name":"q"}});
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            api.invoke_async("hello", "application/cloudevents+json", &ce.to_string())
                .await,
        );
        // Right after the 202: no window without an answer.
        let (status, r) = api.get(&format!("/v1/invocations/{}", ids[0])).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        assert_eq!(
            (&r["status"], &r["function"], &r["mode"], &r["event_id"]),
            (&json!("queued"), &json!("hello"), &json!("async"), &json!("evt-q")),
            "{r}"
        );
        let created: chrono::DateTime<chrono::Utc> = r["created_at"].as_str().unwrap().parse().unwrap();
        assert!(created >= before && created <= chrono::Utc::now(), "{r}");
    }
    assert_eq!(ids[0], ids[1]);
    let plain = api.invoke_async("hello", "application/json", r#"{"name":"p"}"#).await;
    let (status, r) = api.get(&format!("/v1/invocations/{plain}")).await;
    assert_eq!((status, &r["status"]), (StatusCode::OK, &json!("queued")), "{r}");
    let queued_at: chrono::DateTime<chrono::Utc> = r["created_at"].as_str().unwrap().parse().unwrap();
    let (status, _) = api.get("/v1/invocations/0195ffffffff7fff8fffffffffffffff").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Wildcards in an id match no other invocation.
    for bad in ["a.b", "*", "%3E", "%2A"] {
        let (status, r) = api.get(&format!("/v1/invocations/{bad}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}: {r}");
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let worker = TestNode::start(&nats.url()).await;
    for id in [&ids[0], &plain] {
        let r = api
            .wait_record(id, Duration::from_secs(15), |r| r["status"] == "succeeded")
            .await;
        assert_eq!(r["attempts"].as_array().unwrap().len(), 1, "{r}");
        if id == &plain {
            let created: chrono::DateTime<chrono::Utc> = r["created_at"].as_str().unwrap().parse().unwrap();
            let drift = (created - queued_at).num_milliseconds().abs();
            assert!(
                drift < 500,
                "the worker's record keeps the time it was queued ({queued_at}): {r}"
            );
        }
    }
    worker.stop().await;
    api.stop().await;
}

/// Queue depth (`evoke status`, `evoke_queue_pending`) counts every event
/// not yet settled: with no worker at all (no consumer yet), and with a
/// worker running one and holding the rest.
#[tokio::test]
async fn queue_depth_counts_waiting_and_running_events() {
    let nats = Nats::start();
    let api = TestNode::without_workers(&nats.url()).await;
    api.deploy_ok("slow", &busy_module(1500), &[("max_instances", "1")])
        .await;
    api.deploy_ok("idle", &example("hello"), &[]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(api.invoke_async("slow", "text/plain", &format!("e{i}")).await);
    }
    let depth = |status: &Value, name: &str| {
        status["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["queued"].as_u64().unwrap())
    };
    let (_, status) = api.get("/v1/status").await;
    assert_eq!(
        (depth(&status, "slow"), depth(&status, "idle")),
        (Some(3), Some(0)),
        "{status:#}"
    );
    assert!(
        api.wait_metric(r#"evoke_queue_pending{function="slow"} 3"#, Duration::from_secs(5))
            .await
    );

    // A worker runs one at a time: the running one counts until it is acked.
    let worker = TestNode::start(&nats.url()).await;
    crate::common::eventually(Duration::from_secs(10), "the first event running", || async {
        let mut running = 0;
        for id in &ids {
            running += usize::from(api.get(&format!("/v1/invocations/{id}")).await.1["status"] == "running");
        }
        let (_, r) = api.get("/v1/status").await;
        (running == 1 && depth(&r, "slow") == Some(3)).then_some(())
    })
    .await;
    crate::common::eventually(Duration::from_secs(20), "the queue drained", || async {
        let (_, r) = api.get("/v1/status").await;
        (depth(&r, "slow") == Some(0)).then_some(())
    })
    .await;
    worker.stop().await;
    api.stop().await;
}

/// Events queued by an evoke from before per-invocation subjects (on
/// `evoke.invoke.<fn>`, with the durable consumer it made) still run after
/// an upgrade: nothing already accepted is stranded.
#[tokio::test]
async fn events_queued_before_per_invocation_subjects_still_run() {
    let nats = Nats::start();
    let api = TestNode::without_workers(&nats.url()).await;
    api.deploy_ok("hello", &example("hello"), &[]).await;

    // What the old evoke left: its consumer, and an event on the old subject.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(evoke::bus::STREAM_EVENTS).await.unwrap();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(evoke::bus::consumer_name("hello")),
            filter_subject: evoke::bus::legacy_invoke_subject("hello"),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let id = "0195aaaaaaaa7aaa8aaaaaaaaaaaaaaa";
    let event = json!({"specversion":"1.0","id":"old-1","source":"/old","type":"t","datacontenttype":"application/json","data":{"name":"old"}});
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers.insert(evoke::bus::HDR_INVOCATION_ID, id);
    js.publish_with_headers(
        evoke::bus::legacy_invoke_subject("hello"),
        headers,
        event.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let new = api.invoke_async("hello", "application/json", r#"{"name":"new"}"#).await;

    let worker = TestNode::start(&nats.url()).await;
    for id in [id, new.as_str()] {
        let r = api
            .wait_record(id, Duration::from_secs(15), |r| r["status"] == "succeeded")
            .await;
        assert_eq!(r["function"], "hello", "{r}");
    }
    worker.stop().await;
    api.stop().await;
}

/// The durable consumers on the event queue, by name, with their pull
/// requests waiting on the server.
async fn consumers(nats_url: &str) -> std::collections::HashMap<String, usize> {
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(evoke::bus::STREAM_EVENTS).await.unwrap();
    let mut out = std::collections::HashMap::new();
    let mut list = stream.consumers();
    while let Some(info) = list.next().await {
        let info = info.unwrap();
        out.insert(info.name, info.num_waiting);
    }
    out
}

/// A node with workers that stop pulling after `idle` without events and
/// look for unannounced events every `sweep`.
async fn resting_node(nats: &str, idle: Duration, sweep: Duration) -> TestNode {
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = crate::common::config(nats, &dir);
    c.worker_idle = idle;
    c.worker_sweep = sweep;
    TestNode::with_config(c, dir).await
}

/// Functions never invoked cost no consumer, task or pull; a function
/// whose queue went quiet stops pulling, and an event queued for it wakes
/// its workers (long before any sweep would find it).
#[tokio::test]
async fn idle_functions_do_not_pull_and_an_event_wakes_them() {
    let nats = Nats::start();
    let node = resting_node(&nats.url(), Duration::from_secs(1), Duration::from_secs(3600)).await;
    for name in ["never-a", "never-b", "busy"] {
        node.deploy_ok(name, &example("hello"), &[]).await;
    }
    assert!(consumers(&nats.url()).await.is_empty(), "a consumer before any event");

    let busy = evoke::bus::consumer_name("busy");
    for round in 0..2 {
        let id = node
            .invoke_async("busy", "application/json", r#"{"name":"wake"}"#)
            .await;
        node.wait_record(&id, Duration::from_secs(15), |r| r["status"] == "succeeded")
            .await;
        let seen = consumers(&nats.url()).await;
        assert_eq!(seen.keys().collect::<Vec<_>>(), vec![&busy], "round {round}");
        // Quiet: its pulls end and none follow.
        crate::common::eventually(Duration::from_secs(15), "the idle function to stop pulling", || async {
            let seen = consumers(&nats.url()).await;
            (seen.get(&busy) == Some(&0)).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            consumers(&nats.url()).await.get(&busy),
            Some(&0),
            "pulling again while idle"
        );
    }
    node.stop().await;
}

/// An event stored with no wake (a wake lost to a reconnect) is found by
/// the workers' sweep.
#[tokio::test]
async fn an_event_no_wake_announced_is_found_by_the_sweep() {
    let nats = Nats::start();
    let node = resting_node(&nats.url(), Duration::from_secs(1), Duration::from_secs(1)).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let first = node
        .invoke_async("hello", "application/json", r#"{"name":"first"}"#)
        .await;
    node.wait_record(&first, Duration::from_secs(15), |r| r["status"] == "succeeded")
        .await;
    let consumer = evoke::bus::consumer_name("hello");
    crate::common::eventually(Duration::from_secs(15), "the function to stop pulling", || async {
        (consumers(&nats.url()).await.get(&consumer) == Some(&0)).then_some(())
    })
    .await;

    // Stored the way evoke stores an event, without the wake.
    let bus = &node.node.as_ref().unwrap().invoker.bus;
    let id = "0195bbbbbbbb7bbb8bbbbbbbbbbbbbbb";
    let event = json!({"specversion":"1.0","id":"quiet-1","source":"/t","type":"t","datacontenttype":"application/json","data":{"name":"quiet"}});
    bus.enqueue("hello", id, id, event.to_string().into(), &[])
        .await
        .unwrap()
        .await
        .unwrap();
    node.wait_record(id, Duration::from_secs(15), |r| r["status"] == "succeeded")
        .await;
    node.stop().await;
}

/// An event redelivered after its outcome was stored (only the ack was
/// lost: NATS away, a node gone between the two) is acked without running
/// again; one redelivered with no stored outcome runs.
#[tokio::test]
async fn a_redelivered_event_whose_outcome_was_stored_is_not_run_again() {
    use evoke::invoker::records::{Mode, Record, Status};
    let nats = Nats::start();
    let api = TestNode::without_workers(&nats.url()).await;
    api.deploy_ok("hello", &example("hello"), &[]).await;
    let settled = api.invoke_async("hello", "application/json", r#"{"name":"a"}"#).await;
    let lost = api.invoke_async("hello", "application/json", r#"{"name":"b"}"#).await;

    // A worker of our own takes both (first delivery), stores the first
    // one's outcome, and loses both acks.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(evoke::bus::STREAM_EVENTS)
        .await
        .unwrap()
        .get_consumer(&evoke::bus::consumer_name("hello"))
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(2).messages().await.unwrap();
    let mut taken = Vec::new();
    while let Some(m) = batch.next().await {
        taken.push(m.unwrap());
    }
    assert_eq!(taken.len(), 2);
    let invoker = &api.node.as_ref().unwrap().invoker;
    let mut record = Record::new(&settled, "hello", Mode::Async, "e", Status::Queued);
    record.finish(Status::Succeeded, None);
    invoker.put_record_acked(&record).await.unwrap();
    for m in &taken {
        m.ack_with(async_nats::jetstream::AckKind::Nak(None)).await.unwrap();
    }

    let worker = TestNode::start(&nats.url()).await;
    let ran = api
        .wait_record(&lost, Duration::from_secs(15), |r| r["status"] == "succeeded")
        .await;
    assert_eq!(ran["attempts"].as_array().unwrap().len(), 2, "{ran:#}");
    crate::common::eventually(Duration::from_secs(15), "the queue drained", || async {
        let (_, s) = api.get("/v1/status").await;
        (s["functions"][0]["queued"] == 0).then_some(())
    })
    .await;
    let kept = api.get(&format!("/v1/invocations/{settled}")).await.1;
    assert_eq!(
        (kept["status"].as_str(), kept["attempts"].as_array().map(Vec::len)),
        (Some("succeeded"), Some(0)),
        "the stored outcome is kept, not run again: {kept:#}"
    );
    assert!(
        worker
            .wait_metric(
                r#"evoke_invocations_total{function="hello",outcome="success"} 1"#,
                Duration::from_secs(5)
            )
            .await
    );
    worker.stop().await;
    api.stop().await;
}
