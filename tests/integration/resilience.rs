//! NATS going away under load: the API answers 503 with Retry-After while
//! it is gone, and every accepted event still finishes once it is back.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::{Nats, TestNode, example};

#[tokio::test]
async fn nats_restart_under_load_loses_no_accepted_event() {
    let mut nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    // Results go to a stream, so deliveries meet the outage too.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "DONE".into(),
        subjects: vec!["done.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    node.deploy_ok("hello", &example("hello"), &[("on_success", "jetstream:done.hello")])
        .await;

    let mut accepted = Vec::new();
    for i in 0..40 {
        accepted.push(
            node.invoke_async("hello", "application/json", &format!(r#"{{"name":"n{i}"}}"#))
                .await,
        );
    }
    nats.server.stop();
    // While NATS is down, async invokes are refused with a retry hint.
    let resp = node
        .http
        .post(node.url("/v1/functions/hello/invoke"))
        .header("content-type", "application/json")
        .header("x-evoke-invocation-type", "async")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    nats.restart();

    for i in 40..60 {
        // The client reconnects in the background; retry like a client would.
        let mut tries = 0;
        loop {
            let resp = node
                .http
                .post(node.url("/v1/functions/hello/invoke"))
                .header("content-type", "application/json")
                .header("x-evoke-invocation-type", "async")
                .body(format!(r#"{{"name":"n{i}"}}"#))
                .send()
                .await
                .unwrap();
            if resp.status() == StatusCode::ACCEPTED {
                let v: serde_json::Value = resp.json().await.unwrap();
                accepted.push(v["id"].as_str().unwrap().to_string());
                break;
            }
            tries += 1;
            assert!(tries < 100, "NATS never came back: {}", resp.status());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for id in &accepted {
        node.wait_record(id, Duration::from_secs(60), |r| r["status"] == "succeeded")
            .await;
    }
    // A NATS outage is nobody's fault: nothing was dead-lettered for it.
    let (_, dlq) = node.get("/v1/functions/hello/dlq").await;
    assert_eq!(dlq["dead_letters"].as_array().map(Vec::len), Some(0), "{dlq}");
    node.stop().await;
}

#[tokio::test]
async fn cron_ticks_during_a_nats_outage_are_stored_once_it_is_back() {
    let mut nats = Nats::start();
    let node = TestNode::without_workers(&nats.url()).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let spec = serde_json::json!({"function":"hello","kind":"cron","schedule":"* * * * * *"});
    assert_eq!(node.put_trigger("beat", spec).await.0, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hook = serde_json::json!({"function":"hello","kind":"webhook"});
    assert_eq!(node.put_trigger("hook", hook).await.0, StatusCode::CREATED);
    nats.server.stop();
    // A webhook while NATS is away is refused with a retry hint, not lost.
    let resp = node.http.post(node.url("/hooks/hook")).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    nats.restart();
    // Ticks that came due while NATS was away are published once it is back.
    let mut events = Vec::new();
    for _ in 0..100 {
        events = crate::common::queued_events(&nats.url(), "hello").await;
        let newest = events.iter().filter_map(|e| e.time).max();
        if newest.is_some_and(|t| t > chrono::Utc::now() - chrono::Duration::seconds(2)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // (The webhook refused during the outage may still have been stored once
    // NATS came back: a 503 means "not known to be stored", and the sender
    // retries. Only the ticks matter here.)
    let mut times: Vec<_> = events
        .iter()
        .filter(|e| e.ty == "evoke.cron.tick")
        .map(|e| e.time.unwrap())
        .collect();
    times.sort();
    assert!(times.len() >= 5, "{times:?}");
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == chrono::Duration::seconds(1)),
        "a tick went missing across the outage: {times:?}"
    );
    node.stop().await;
}
