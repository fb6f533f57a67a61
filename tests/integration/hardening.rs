//! Delivery, auth and input hardening: each test here failed on the main of
//! 2026-11-26 (see docs/decisions.md for what changed and why).

use std::io::{Read, Write};
use std::time::Duration;

use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Nats, TestNode, busy_module, config, example};

async fn async_cloudevent(node: &TestNode, function: &str, ce: &Value) -> reqwest::Response {
    node.http
        .post(node.url(&format!("/v1/functions/{function}/invoke")))
        .header("content-type", "application/cloudevents+json")
        .header("x-evoke-invocation-type", "async")
        .body(ce.to_string())
        .send()
        .await
        .unwrap()
}

/// One CloudEvent sent to two functions is two invocations; sent twice to
/// one function, the second answer names the first invocation and says it
/// is a duplicate.
#[tokio::test]
async fn dedupe_is_per_function_and_duplicates_say_so() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("one", &example("counter"), &[]).await;
    node.deploy_ok("two", &example("counter"), &[]).await;
    let ce = json!({"specversion":"1.0","id":"order-7","source":"/shop","type":"order.placed","data":{"n":7}});

    let mut ids = Vec::new();
    for f in ["one", "two"] {
        let resp = async_cloudevent(&node, f, &ce).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        assert!(resp.headers().get("x-evoke-duplicate").is_none());
        let v: Value = resp.json().await.unwrap();
        assert!(v.get("duplicate").is_none(), "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    assert_ne!(ids[0], ids[1], "one invocation per function");
    for (f, id) in ["one", "two"].iter().zip(&ids) {
        let rec = node
            .wait_record(id, Duration::from_secs(15), |r| r["status"] == "succeeded")
            .await;
        assert_eq!(rec["function"], *f, "both functions ran: {rec}");
    }

    let again = async_cloudevent(&node, "one", &ce).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["x-evoke-duplicate"], "true");
    let v: Value = again.json().await.unwrap();
    assert_eq!(
        (v["id"].as_str(), v["duplicate"].as_bool()),
        (Some(ids[0].as_str()), Some(true))
    );

    // Sync invocations of one CloudEvent by two functions keep two records.
    let mut sync_ids = Vec::new();
    for f in ["one", "two"] {
        let resp = node
            .http
            .post(node.url(&format!("/v1/functions/{f}/invoke")))
            .header("content-type", "application/cloudevents+json")
            .body(ce.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        sync_ids.push(resp.headers()["x-evoke-invocation-id"].to_str().unwrap().to_string());
    }
    assert_ne!(sync_ids[0], sync_ids[1]);
    for (f, id) in ["one", "two"].iter().zip(&sync_ids) {
        // Sync records are written beside the answer, not before it.
        let rec = node
            .wait_record(id, Duration::from_secs(5), |r| r["status"] == "succeeded")
            .await;
        assert_eq!(rec["function"], *f, "{rec}");
    }
    node.stop().await;
}

/// A republish JetStream refuses as a duplicate (here: a redrive that
/// crashed after queueing, tried again) keeps the dead letter and says why.
/// Records outlive dead letters.
#[tokio::test]
async fn redrive_never_deletes_the_only_copy() {
    let nats = Nats::start();
    let api = TestNode::without_workers(&nats.url()).await;
    let worker = TestNode::start(&nats.url()).await;
    worker
        .deploy_ok("flaky", &example("counter"), &[("retries", "0")])
        .await;
    let id = worker.invoke_async("flaky", "text/plain", "fail").await;
    worker
        .wait_record(&id, Duration::from_secs(15), |r| r["status"] == "dead-lettered")
        .await;
    worker.stop().await;
    let (_, dl) = api.get(&format!("/v1/functions/flaky/dlq/{id}")).await;
    let seq = dl["seq"].as_u64().expect("sequence");

    // What a redrive that crashed before deleting the dead letter left.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{id}.r.{seq}").as_str());
    js.publish_with_headers(
        evoke::bus::invoke_subject("flaky", &id),
        headers,
        dl["event"].to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let (status, out) = api.redrive("flaky", &[id.as_str()]).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["redriven"].as_array().unwrap().len(), 0, "{out}");
    assert_eq!(out["failed"][0]["id"], id.as_str(), "{out}");
    assert!(
        out["failed"][0]["reason"].as_str().unwrap().contains("duplicate"),
        "{out}"
    );
    let (status, _) = api.get(&format!("/v1/functions/flaky/dlq/{id}")).await;
    assert_eq!(status, StatusCode::OK, "the dead letter is still there");
    let (_, rec) = api.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(rec["status"], "dead-lettered", "the record was restored: {rec}");

    let records = js.get_key_value(evoke::bus::KV_INVOCATIONS).await.unwrap();
    let records_age = records.status().await.unwrap().max_age();
    let dlq_age = js
        .get_stream(evoke::bus::STREAM_DLQ)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .max_age;
    assert!(
        records_age >= dlq_age,
        "records {records_age:?} vs dead letters {dlq_age:?}"
    );
    api.stop().await;
}

/// A cron tick whose function is gone is parked in the DLQ with its reason
/// and counted, not dropped.
#[tokio::test]
async fn cron_ticks_the_queue_refuses_are_parked_and_counted() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("gone", &example("hello"), &[]).await;
    let (status, v) = node
        .put_trigger("tick", json!({"function":"gone","kind":"cron","schedule":"@every 1s"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let resp = node.http.delete(node.url("/v1/functions/gone")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(
        node.wait_metric("evoke_events_parked_total{function=\"gone\"}", Duration::from_secs(10))
            .await
    );
    let (status, list) = node.get("/v1/functions/gone/dlq").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let first = &list["dead_letters"][0];
    assert!(first["reason"].as_str().unwrap().contains("does not exist"), "{first}");
    assert_eq!(first["event"]["type"], "evoke.cron.tick");
    node.stop().await;
}

/// A function slower than the ack wait, one instance, several events: each
/// runs once. A worker never holds a message it has no slot for.
#[tokio::test]
async fn no_message_waits_without_a_slot() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await; // ack wait 3 s
    node.deploy_ok("slow", &busy_module(2000), &[("max_instances", "1"), ("timeout", "5s")])
        .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(node.invoke_async("slow", "application/json", "{}").await);
    }
    for id in &ids {
        let rec = node
            .wait_record(id, Duration::from_secs(40), |r| r["status"] == "succeeded")
            .await;
        assert_eq!(rec["attempts"].as_array().unwrap().len(), 1, "ran once: {rec:#}");
    }
    let metrics = node.metrics().await;
    assert!(
        metrics.contains(r#"evoke_invocations_total{function="slow",outcome="success"} 4"#),
        "{metrics}"
    );
    node.stop().await;
}

/// A record that cannot be read is a system error: the event waits, its
/// history and retry count survive, and it carries on once the record reads.
#[tokio::test]
async fn an_unreadable_record_is_a_system_error_not_a_fresh_start() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("flaky", &example("counter"), &[("retries", "2")]).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value(evoke::bus::KV_INVOCATIONS)
        .await
        .unwrap();
    let id = node.invoke_async("flaky", "text/plain", "fail").await;
    let rec = node
        .wait_record(&id, Duration::from_secs(10), |r| {
            r["attempts"].as_array().is_some_and(|a| a.len() == 1) && r["status"] == "queued"
        })
        .await;
    kv.put(&id, "not json".into()).await.unwrap();
    assert!(
        node.wait_metric(
            r#"evoke_retries_total{function="flaky",class="system"}"#,
            Duration::from_secs(10)
        )
        .await
    );
    kv.put(&id, serde_json::to_vec(&rec).unwrap().into()).await.unwrap();
    let done = node
        .wait_record(&id, Duration::from_secs(40), |r| r["status"] == "dead-lettered")
        .await;
    let attempts = done["attempts"].as_array().unwrap();
    let function_errors: Vec<&Value> = attempts.iter().filter(|a| a["error"]["class"] == "function").collect();
    assert_eq!(
        function_errors.len(),
        3,
        "1 try + 2 retries, counted across the outage: {done:#}"
    );
    assert_eq!(
        attempts[0]["started_at"], rec["attempts"][0]["started_at"],
        "history kept"
    );
    node.stop().await;
}

/// A guest failing with a 64 MiB error is a function error: retried
/// `retries` times, then dead-lettered with a capped message.
#[tokio::test]
async fn a_huge_error_is_a_function_error_that_fits_its_record() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("huge", &example("hostile"), &[("retries", "1"), ("memory", "256Mi")])
        .await;
    let id = node.invoke_async("huge", "text/plain", "huge-error").await;
    let rec = node
        .wait_record(&id, Duration::from_secs(40), |r| r["status"] == "dead-lettered")
        .await;
    let attempts = rec["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{rec:#}");
    for a in attempts {
        assert_eq!(a["error"]["class"], "function");
        let m = a["error"]["message"].as_str().unwrap();
        assert!(
            m.len() < 9 << 10 && m.contains("truncated"),
            "{}",
            &m[..200.min(m.len())]
        );
    }
    let (status, dl) = node.get(&format!("/v1/functions/huge/dlq/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{dl}");
    node.stop().await;
}

/// `nats:` publishes to subscribers (no JetStream ack awaited, so a plain
/// subscriber gets every result at once); `jetstream:` is stored by a stream
/// and refused clearly when no stream takes the subject.
#[tokio::test]
async fn nats_destinations_reach_subscribers_and_jetstream_ones_streams() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut results = client.subscribe("results").await.unwrap();
    client.flush().await.unwrap();
    node.deploy_ok("to-subject", &example("hello"), &[("on_success", "nats:results")])
        .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            node.invoke_async("to-subject", "application/json", &format!(r#"{{"name":"n{i}"}}"#))
                .await,
        );
    }
    let mut got = 0;
    while got < 20 {
        let msg = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .expect("every result reaches the subscriber")
            .unwrap();
        let ev: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(ev["type"], "evoke.invocation.succeeded");
        got += 1;
    }
    for id in &ids {
        node.wait_record(id, Duration::from_secs(5), |r| r["status"] == "succeeded")
            .await;
    }

    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "RESULTS".into(),
        subjects: vec!["stored.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    node.deploy_ok(
        "to-stream",
        &example("hello"),
        &[("on_success", "jetstream:stored.results")],
    )
    .await;
    let id = node.invoke_async("to-stream", "application/json", "{}").await;
    node.wait_record(&id, Duration::from_secs(10), |r| r["status"] == "succeeded")
        .await;
    let info = js
        .get_stream("RESULTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(info, 1);

    node.deploy_ok("to-nowhere", &example("hello"), &[("on_success", "jetstream:nowhere")])
        .await;
    let id = node.invoke_async("to-nowhere", "application/json", "{}").await;
    // Not the function's fault: a system error, retried (never dead-lettered
    // before the event's max age), with the reason on the attempt.
    let rec = node
        .wait_record(&id, Duration::from_secs(20), |r| r["attempts"][0]["error"].is_object())
        .await;
    let error = &rec["attempts"][0]["error"];
    assert_eq!(error["class"], "system", "{rec:#}");
    assert!(
        error["message"].as_str().unwrap().contains("no JetStream stream"),
        "{rec:#}"
    );
    assert_ne!(rec["status"], "dead-lettered");
    node.stop().await;
}

/// A destination that answers slowly does not hold the run slots: with one
/// instance, results are delivered side by side while new events run
/// (before, each delivery held the only slot, so they went one at a time).
#[tokio::test]
async fn a_slow_destination_does_not_hold_the_run_slots() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A destination taking 2 s per request that notes how many it serves at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, m) = (now.clone(), most.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let (n, m) = (n.clone(), m.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let _ = s.read(&mut buf);
                let inside = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(inside, Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs(2));
                n.fetch_sub(1, Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            });
        }
    });
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let dest = format!("http://127.0.0.1:{port}/slow");
    node.deploy_ok(
        "quick",
        &example("counter"),
        &[("max_instances", "1"), ("on_success", dest.as_str())],
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(node.invoke_async("quick", "application/json", "{}").await);
    }
    for id in &ids {
        node.wait_record(id, Duration::from_secs(30), |r| r["status"] == "succeeded")
            .await;
    }
    assert!(
        most.load(Ordering::SeqCst) >= 2,
        "deliveries went one at a time: runs waited behind them"
    );
    node.stop().await;
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// `"s1,"` or an empty variable never yields an empty key that anyone can
/// sign with; a webhook with no usable secret refuses every request and
/// says so in `evoke triggers`. Signed schemes refuse GET.
#[tokio::test]
async fn webhook_secrets_are_never_empty_and_signed_gets_are_refused() {
    let nats = Nats::start();
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = config(&nats.url(), &dir);
    c.secret_overrides = [
        ("ROTATING".to_string(), "s1,".to_string()),
        ("BLANK".to_string(), " , ".to_string()),
    ]
    .into();
    let node = TestNode::with_config(c, dir).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    for (name, env) in [("rot", "ROTATING"), ("blank", "BLANK")] {
        let spec =
            json!({"function":"hello","kind":"webhook","auth":{"scheme":"hmac","secret_env":env,"header":"X-Sig"}});
        assert_eq!(node.put_trigger(name, spec).await.0, StatusCode::CREATED);
    }
    let body = r#"{"name":"mallory"}"#;
    let post = |trigger: &str, sig: String| {
        node.http
            .post(node.url(&format!("/hooks/{trigger}")))
            .header("x-sig", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Signed with the empty key: refused.
    let forged = post("rot", hmac_hex(b"", body.as_bytes())).await.unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let good = post("rot", hmac_hex(b"s1", body.as_bytes())).await.unwrap();
    assert_eq!(good.status(), StatusCode::ACCEPTED);
    // No usable secret at all: every request refused, naming the variable.
    let resp = post("blank", hmac_hex(b"", body.as_bytes())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "SecretNotConfigured");
    assert!(v["error"]["message"].as_str().unwrap().contains("BLANK"), "{v}");
    let (_, t) = node.get("/v1/triggers/blank").await;
    assert_eq!(t["state"], "misconfigured", "{t}");
    assert!(t["error"].as_str().unwrap().contains("BLANK"), "{t}");
    let (_, t) = node.get("/v1/triggers/rot").await;
    assert_eq!(t["state"], "active", "{t}");

    let (status, v) = node
        .put_trigger(
            "signed-get",
            json!({"function":"hello","kind":"webhook","methods":["GET"],"auth":{"scheme":"github","secret_env":"ROTATING"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["details"][0]["field"], "methods", "{v}");
    node.stop().await;
}

/// Destinations cannot publish into NATS internals or evoke's own subjects,
/// nor call link-local or cloud metadata addresses.
#[tokio::test]
async fn destinations_cannot_reach_internals() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    for dest in [
        "nats:$JS.API.STREAM.DELETE.EVOKE_EVENTS",
        "nats:$KV.EVOKE_FUNCTIONS.hello",
        "jetstream:$O.EVOKE_CODE.x",
        "nats:$SYS.REQ.SERVER.PING",
        "nats:evoke.invoke.hello",
        "nats:_INBOX.x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]:8080/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
    ] {
        let (status, v) = node.deploy("sneaky", &example("hello"), &[("on_success", dest)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{dest}: {v}");
        assert_eq!(v["error"]["details"][0]["field"], "on_success", "{dest}: {v}");
    }
    node.stop().await;
}

/// Sends raw HTTP and returns the status line and body.
fn raw_http(addr: &str, head: &str, body_chunks: &[&[u8]]) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    for chunk in body_chunks {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Every `/v1` body is bounded: 413 with the JSON error shape, decided from
/// Content-Length or while streaming, never after reading it all.
#[tokio::test]
async fn every_body_is_bounded() {
    let nats = Nats::start();
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = config(&nats.url(), &dir);
    c.max_code_size = 1 << 20;
    let node = TestNode::with_config(c, dir).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let addr = node.base.trim_start_matches("http://").to_string();

    // A 300 MB trigger PUT, announced: answered before the body is sent.
    let head = "PUT /v1/triggers/big HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 314572800\r\nconnection: close\r\n\r\n".to_string();
    let (status, body) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || raw_http(&addr, &head, &[b"{\"function\":"])
    })
    .await
    .unwrap();
    assert!(status.contains("413"), "{status}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "BodyTooLarge", "{v}");

    // Streamed without a length: cut off at the limit.
    let head = "POST /v1/functions/hello/dlq/redrive HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_string();
    let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10)).into_bytes();
    let (status, body) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let chunks: Vec<&[u8]> = std::iter::repeat_n(chunk.as_slice(), 40).collect();
            raw_http(&addr, &head, &chunks)
        }
    })
    .await
    .unwrap();
    assert!(status.contains("413"), "{status} {body}");

    // Multipart deploys are bounded by the code limit too.
    let form = reqwest::multipart::Form::new()
        .text("spec", "{}")
        .part("code", reqwest::multipart::Part::bytes(vec![0u8; 2 << 20]));
    let resp = node
        .http
        .put(node.url("/v1/functions/big"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "CodeTooLarge", "{v}");

    // A log window beyond any date is read as "everything", not a crash.
    let (status, _) = node.get("/v1/functions/hello/logs?since=99999999999h").await;
    assert_eq!(status, StatusCode::OK);
    node.stop().await;
}

/// `/metrics` needs the token beyond loopback (or its own), and a scrape
/// sends NATS no per-function request.
#[tokio::test]
async fn metrics_are_guarded_and_cheap_to_scrape() {
    let nats = Nats::start();
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = config(&nats.url(), &dir);
    c.http_addr = "0.0.0.0:0".parse().unwrap();
    c.api_token = Some("api".into());
    let node = TestNode::with_config(c, dir).await;
    let url = node.url("/metrics").replace("0.0.0.0", "127.0.0.1");
    let anonymous = node.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let with_token = node.http.get(&url).bearer_auth("api").send().await.unwrap();
    assert_eq!(with_token.status(), StatusCode::OK);
    for name in ["m1", "m2", "m3"] {
        let resp = node
            .http
            .put(
                node.url(&format!("/v1/functions/{name}"))
                    .replace("0.0.0.0", "127.0.0.1"),
            )
            .bearer_auth("api")
            .body(example("hello"))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut consumer_info = client.subscribe("$JS.API.CONSUMER.INFO.>").await.unwrap();
    client.flush().await.unwrap();
    for _ in 0..5 {
        let resp = node.http.get(&url).bearer_auth("api").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let seen = tokio::time::timeout(Duration::from_millis(500), consumer_info.next()).await;
    assert!(seen.is_err(), "a scrape asked NATS about a consumer");
    node.stop().await;

    let dir = tempfile::TempDir::new().unwrap();
    let mut c = config(&nats.url(), &dir);
    c.metrics_token = Some("prom".into());
    let node = TestNode::with_config(c, dir).await;
    let resp = node.http.get(node.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = node
        .http
        .get(node.url("/metrics"))
        .bearer_auth("prom")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    node.stop().await;
}
