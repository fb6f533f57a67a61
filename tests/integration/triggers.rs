//! Webhook and cron triggers against a real NATS and the real HTTP server.

use std::time::Duration;

use chrono::{Timelike, Utc};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Nats, TestNode, config, eventually, example, queued_events, settled};

async fn node_with_secrets(nats: &Nats, secrets: &[(&str, &str)]) -> TestNode {
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = config(&nats.url(), &dir);
    c.secret_overrides = secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    TestNode::with_config(c, dir).await
}

#[tokio::test]
async fn github_webhooks_are_verified_and_answered_in_sync_mode() {
    let nats = Nats::start();
    let node = node_with_secrets(&nats, &[("GH_SECRET", "It's a Secret to Everybody")]).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let (status, v) = node
        .put_trigger("gh", json!({"function":"hello","kind":"webhook","mode":"sync","auth":{"scheme":"github","secret_env":"GH_SECRET"}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    // GitHub's documented example: the body "Hello, World!" with this secret.
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let resp = node
        .http
        .post(node.url("/hooks/gh"))
        .header("X-Hub-Signature-256", sig)
        .header("content-type", "text/plain")
        .body("Hello, World!")
        .send()
        .await
        .unwrap();
    // The signature is good; the function then refuses non-JSON input, and
    // that function error comes straight back (sync mode).
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "FunctionError", "{v}");

    let bad = node
        .http
        .post(node.url("/hooks/gh"))
        .header("X-Hub-Signature-256", sig)
        .body("Hello, World?")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let v: Value = bad.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidSignature");

    // A signed JSON body: the function's status and headers come back.
    let body = r#"{"name":"octocat","status":201}"#;
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"It's a Secret to Everybody").unwrap();
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let resp = node
        .http
        .post(node.url("/hooks/gh"))
        .header("X-Hub-Signature-256", sig)
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["x-greeted"], "octocat");
    assert_eq!(resp.text().await.unwrap(), "Hello, octocat!");
    node.stop().await;
}

fn stripe_header(secret: &str, t: i64, body: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn stripe_webhooks_are_queued_deduplicated_and_replays_refused() {
    let nats = Nats::start();
    // Two secrets at once: the old one still works during rotation.
    let node = node_with_secrets(&nats, &[("STRIPE_NEW", "whsec_new"), ("STRIPE_OLD", "whsec_old")]).await;
    node.deploy_ok("pay", &example("counter"), &[]).await;
    let spec = json!({"function":"pay","kind":"webhook",
        "auth":{"scheme":"stripe","secret_env":["STRIPE_NEW","STRIPE_OLD"]},
        "filter":{"types":["com.stripe.charge.*"]}});
    assert_eq!(node.put_trigger("stripe", spec).await.0, StatusCode::CREATED);

    let body = r#"{"id":"evt_1","type":"charge.succeeded"}"#;
    let now = Utc::now().timestamp();
    let send = |sig: String, body: &'static str| {
        node.http
            .post(node.url("/hooks/stripe"))
            .header("Stripe-Signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = send(stripe_header("whsec_old", now, body), body).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let id = first.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    // Stripe retries the same event: same invocation, one run.
    let again = send(stripe_header("whsec_new", now, body), body).await.unwrap();
    assert_eq!(again.json::<Value>().await.unwrap()["id"], id.as_str());
    let rec = node
        .wait_record(&id, Duration::from_secs(10), |r| r["status"] == "succeeded")
        .await;
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 1);

    // A captured request replayed an hour later is refused, nothing published.
    let replay = send(stripe_header("whsec_new", now - 3600, body), body).await.unwrap();
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let v: Value = replay.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("tolerance"), "{v}");

    // Filtered out: accepted but not run.
    let other = r#"{"id":"evt_2","type":"customer.created"}"#;
    let resp = send(stripe_header("whsec_new", now, other), other).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["filtered"], true);

    let (_, list) = node.get("/v1/triggers").await;
    let t = &list["triggers"][0];
    assert_eq!(
        (t["name"].as_str(), t["state"].as_str()),
        (Some("stripe"), Some("active"))
    );
    assert!(t["last_event"]["time"].is_string(), "{t}");
    node.stop().await;
}

#[tokio::test]
async fn bad_triggers_are_refused_with_every_field_named() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let (status, v) = node
        .put_trigger(
            "t",
            json!({"function":"ghost","kind":"cron","schedule":"99 * * * *","timezone":"Asia/Nowhere"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "InvalidTrigger");
    let fields: Vec<&str> = v["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"timezone"), "{v}");
    let (status, v) = node
        .put_trigger("t", json!({"function":"ghost","kind":"cron","schedule":"@hourly"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("deploy it first"),
        "{v}"
    );
    let resp = node.http.post(node.url("/hooks/nothing")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    node.stop().await;
}

#[tokio::test]
async fn cron_fires_in_its_time_zone_once_per_tick_across_three_nodes() {
    let nats = Nats::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        // No workers: the events stay on the queue to be counted.
        nodes.push(TestNode::without_workers(&nats.url()).await);
    }
    nodes[0].deploy_ok("hello", &example("hello"), &[]).await;
    // Every second, but only during the current hour *in Shanghai*: in UTC
    // this hour is eight hours away, so ticks prove the zone is applied.
    let now = Utc::now();
    if now.minute() == 59 && now.second() >= 50 {
        // Too close to the hour's end for a few ticks: wait for the next one.
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    let shanghai_hour = Utc::now().with_timezone(&chrono_tz::Asia::Shanghai).hour();
    let spec = json!({"function":"hello","kind":"cron","schedule":format!("* * {shanghai_hour} * * *"),
        "timezone":"Asia/Shanghai","payload":{"name":"tick"}});
    let (status, v) = nodes[0].put_trigger("tick", spec).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let url = nats.url();
    eventually(Duration::from_secs(20), "three ticks", || async {
        (queued_events(&url, "hello").await.len() >= 3).then_some(())
    })
    .await;
    let resp = nodes[1]
        .http
        .delete(nodes[1].url("/v1/triggers/tick"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    settled(Duration::from_secs(20), Duration::from_millis(1500), || async {
        queued_events(&url, "hello").await.len()
    })
    .await;

    let events = queued_events(&nats.url(), "hello").await;
    assert!(events.len() >= 2, "ticks fired: {}", events.len());
    let mut scheduled: Vec<&str> = events.iter().map(|e| e.extensions["evokescheduled"].as_str()).collect();
    let n = scheduled.len();
    scheduled.sort();
    scheduled.dedup();
    assert_eq!(scheduled.len(), n, "three nodes, one event per tick: {scheduled:?}");
    for e in &events {
        let at = e.time.unwrap();
        assert_eq!(at.timestamp_subsec_millis(), 0, "ticks are on whole seconds");
        assert_eq!(
            at.with_timezone(&chrono_tz::Asia::Shanghai).hour(),
            shanghai_hour,
            "scheduled in Shanghai time"
        );
        let fired = chrono::DateTime::parse_from_rfc3339(&e.extensions["evokefired"]).unwrap();
        assert!(fired.with_timezone(&Utc) >= at, "never fires early: {fired} < {at}");
        assert_eq!(e.ty, "evoke.cron.tick");
        assert!(e.data_is_json());
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn cron_catches_up_after_every_node_was_down() {
    let nats = Nats::start();
    // Trigger and function exist, but no node ran for the last minute: the
    // cursor says the last tick fired 60 s ago.
    let setup = TestNode::start(&nats.url()).await;
    setup.deploy_ok("hello", &example("hello"), &[]).await;
    let spec = json!({"function":"hello","kind":"cron","schedule":"@every 10s","catch_up":"all","catch_up_max":3});
    assert_eq!(setup.put_trigger("catch", spec).await.0, StatusCode::CREATED);
    setup.kill();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value(evoke::bus::KV_STATE)
        .await
        .unwrap();
    let last = Utc::now().timestamp() / 10 * 10 - 60;
    let last = chrono::DateTime::from_timestamp(last, 0).unwrap();
    kv.put("cron.catch", last.to_rfc3339().into()).await.unwrap();
    // Drain what the setup node may have fired before it was killed.
    let before = queued_events(&nats.url(), "hello").await.len();

    let dir = tempfile::TempDir::new().unwrap();
    let mut c = config(&nats.url(), &dir);
    c.workers = false;
    let started = Utc::now();
    let node = TestNode::with_config(c, dir).await;
    // Ticks scheduled before the node started were caught up; later ones are
    // its regular firing. Catching up is quick, but the machine may be busy.
    let url = nats.url();
    let events = eventually(Duration::from_secs(20), "catching up", || async {
        let events = queued_events(&url, "hello").await;
        let n = events[before..].iter().filter(|e| e.time.unwrap() <= started).count();
        (n >= 3).then_some(events)
    })
    .await;
    let caught_up: Vec<_> = events[before..].iter().filter(|e| e.time.unwrap() <= started).collect();
    assert_eq!(caught_up.len(), 3, "the newest 3 of the 6 missed ticks: {events:?}");
    let times: Vec<_> = caught_up.iter().map(|e| e.time.unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == chrono::Duration::seconds(10)),
        "{times:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_trigger_changed_live_takes_effect_without_restart() {
    let nats = Nats::start();
    let node = TestNode::without_workers(&nats.url()).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let spec = |name: &str| json!({"function":"hello","kind":"cron","schedule":"* * * * * *","payload":{"name":name}});
    let url = nats.url();
    let names = || async {
        queued_events(&url, "hello")
            .await
            .iter()
            .map(|e| {
                serde_json::from_slice::<Value>(&e.data).unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<String>>()
    };
    assert_eq!(node.put_trigger("live", spec("before")).await.0, StatusCode::CREATED);
    eventually(Duration::from_secs(20), "a tick from the first version", || async {
        names().await.contains(&"before".to_string()).then_some(())
    })
    .await;
    assert_eq!(node.put_trigger("live", spec("after")).await.0, StatusCode::OK);
    eventually(Duration::from_secs(20), "a tick from the changed version", || async {
        names().await.contains(&"after".to_string()).then_some(())
    })
    .await;
    let resp = node.http.delete(node.url("/v1/triggers/live")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // A deleted trigger stops firing: the count settles (and a trigger that
    // kept firing would never let it).
    settled(Duration::from_secs(20), Duration::from_millis(2500), || async {
        names().await.len()
    })
    .await;
    let names = names().await;
    assert!(names.first().map(String::as_str) == Some("before"), "{names:?}");
    assert!(names.last().map(String::as_str) == Some("after"), "{names:?}");
    node.stop().await;
}

#[tokio::test]
async fn webhooks_keep_cloudevent_attributes_and_enforce_limits() {
    let nats = Nats::start();
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = config(&nats.url(), &dir);
    c.workers = false; // keep events on the queue to read them back
    c.secret_overrides = [("HOOK_TOKEN".to_string(), "t0ken".to_string())].into();
    let node = TestNode::with_config(c, dir).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let spec = json!({"function":"hello","kind":"webhook","methods":["POST","PUT"],"max_body":"1Ki",
        "auth":{"scheme":"bearer","secret_env":"HOOK_TOKEN"}});
    assert_eq!(node.put_trigger("ce", spec).await.0, StatusCode::CREATED);
    let post = |body: String, ct: &'static str| {
        node.http
            .post(node.url("/hooks/ce"))
            .bearer_auth("t0ken")
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let ce = json!({"specversion":"1.0","id":"abc-1","source":"/sensor/7","type":"reading.taken",
        "subject":"room-3","datacontenttype":"application/json","data":{"c":21},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"});
    let resp = post(ce.to_string(), "application/cloudevents+json").await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let events = queued_events(&nats.url(), "hello").await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.id.as_str(), e.source.as_str(), e.ty.as_str()),
        ("abc-1", "/sensor/7", "reading.taken")
    );
    assert_eq!(e.subject.as_deref(), Some("room-3"));
    assert_eq!(
        e.extensions["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(e.extensions["evoketrigger"], "ce");
    evoke_connectors::contract::assert_valid_event(e);

    let big = post("x".repeat(2048), "text/plain").await.unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let get = node
        .http
        .get(node.url("/hooks/ce"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    let wrong = node
        .http
        .post(node.url("/hooks/ce"))
        .bearer_auth("nope")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        queued_events(&nats.url(), "hello").await.len(),
        1,
        "refused requests publish nothing"
    );
    node.stop().await;

    // Beyond loopback, a webhook must authenticate.
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = config(&nats.url(), &dir);
    c.http_addr = "0.0.0.0:0".parse().unwrap();
    c.api_token = Some("api".into());
    let open = TestNode::with_config(c, dir).await;
    let resp = open
        .http
        .put(open.url("/v1/triggers/open"))
        .bearer_auth("api")
        .json(&json!({"function":"hello","kind":"webhook"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["details"][0]["field"], "auth.scheme", "{v}");
    open.stop().await;
}
