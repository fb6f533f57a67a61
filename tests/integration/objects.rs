//! Object storage: stores, and `kind = "s3"` triggers by webhook (recorded
//! MinIO, Ceph and AWS notifications), by SQS and by polling against a real
//! S3 API server (moto, one per test), backfill, and the poller's failover.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Moto, Nats, TestNode, answer, eventually, example, node_with_s3_keys, queued_events, settled};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/s3")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn post(node: &TestNode, path: &str, token: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
    let mut req = node.http.post(node.url(path)).body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    answer(req.send().await.unwrap()).await
}

/// Events queued for `function`, by subject.
async fn subjects(nats: &str, function: &str) -> Vec<String> {
    let mut s: Vec<String> = queued_events(nats, function)
        .await
        .into_iter()
        .filter_map(|e| e.subject)
        .collect();
    s.sort();
    s
}

/// An SQS queue `queue` that moto sends `bucket`'s ObjectCreated
/// notifications to: the client and the queue's URL.
async fn notifying_queue(moto: &Moto, bucket: &str, queue: &str) -> (evoke_connectors::aws_sdk_sqs::Client, String) {
    use evoke_connectors::aws_sdk_s3::types::{Event as S3Event, NotificationConfiguration, QueueConfiguration};
    let sqs = moto.sqs().await;
    let url = sqs
        .create_queue()
        .queue_name(queue)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let notify = NotificationConfiguration::builder()
        .queue_configurations(
            QueueConfiguration::builder()
                .queue_arn(format!("arn:aws:sqs:us-east-1:123456789012:{queue}"))
                .events(S3Event::from("s3:ObjectCreated:*"))
                .build()
                .unwrap(),
        )
        .build();
    moto.s3()
        .await
        .put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(notify)
        .send()
        .await
        .unwrap();
    (sqs, url)
}

/// Waits until the queue holds no message, visible or in flight.
async fn drained(sqs: &evoke_connectors::aws_sdk_sqs::Client, queue: &str) {
    eventually(Duration::from_secs(30), "the SQS queue to drain", || async {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(evoke_connectors::aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .ok()?
            .attributes?;
        let count = |n: &str| {
            attrs
                .iter()
                .find(|(k, _)| k.as_str() == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        (count("ApproximateNumberOfMessages") == "0" && count("ApproximateNumberOfMessagesNotVisible") == "0")
            .then_some(())
    })
    .await;
}

/// NATS goes away while notifications arrive by each way: the webhook
/// answers 503 (the store sends again), the SQS message is not deleted, the
/// poll state does not advance; once NATS is back each upload is exactly
/// one event.
#[tokio::test]
async fn a_nats_outage_loses_no_notification_by_any_way() {
    let mut nats = Nats::start();
    let moto = Moto::start();
    for b in ["hooked", "queued", "polled"] {
        moto.bucket(b).await;
    }
    let (sqs, queue) = notifying_queue(&moto, "queued", "uploads").await;
    let node = node_with_s3_keys(&nats.url(), &[], false).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    assert_eq!(node.put_store("local", moto.store()).await.0, StatusCode::CREATED);
    for (name, extra) in [
        ("by-hook", json!({"bucket":"hooked","via":"webhook"})),
        (
            "by-sqs",
            json!({"bucket":"queued","via":"sqs","queue_url":queue,"visibility_timeout":"5s"}),
        ),
        ("by-poll", json!({"bucket":"polled","via":"poll","interval":"1s"})),
    ] {
        let mut t = json!({"function":"hello","kind":"s3","store":"local"});
        t.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, v) = node.put_trigger(name, t).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    // Let the poller take its first look at the (empty) bucket.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let notification = json!({"Records":[{"eventVersion":"2.1","eventSource":"minio:s3",
        "eventTime":"2026-11-27T10:00:00.000Z","eventName":"s3:ObjectCreated:Put",
        "s3":{"bucket":{"name":"hooked"},"object":{"key":"a.jpg","size":4,"eTag":"e1","sequencer":"0A"}}}]})
    .to_string()
    .into_bytes();

    nats.stop();
    let (status, v) = post(&node, "/hooks/by-hook", None, notification.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    moto.put("queued", "b.jpg", b"sqs").await;
    moto.put("polled", "c.jpg", b"poll").await;
    // Long enough for the SQS reader to hold the message past its
    // visibility timeout and for several poll rounds to fail.
    tokio::time::sleep(Duration::from_secs(7)).await;
    nats.restart();

    // Sent again, as a store does after a 503: queued now, or already
    // queued (the publish the 503 gave up on may have reached JetStream
    // once it was back); either way one event.
    let (status, v) = post(&node, "/hooks/by-hook", None, notification).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["queued"].as_u64().unwrap() + v["duplicates"].as_u64().unwrap(),
        1,
        "{v}"
    );
    let url = nats.url();
    eventually(Duration::from_secs(60), "one event per upload", || async {
        (subjects(&url, "hello").await == ["a.jpg", "b.jpg", "c.jpg"]).then_some(())
    })
    .await;
    drained(&sqs, &queue).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(subjects(&url, "hello").await, ["a.jpg", "b.jpg", "c.jpg"]);
    node.stop().await;
}

#[tokio::test]
async fn notifications_posted_by_minio_ceph_and_sns_become_one_event_per_record() {
    let nats = Nats::start();
    let node = node_with_s3_keys(&nats.url(), &[("MINIO_TOKEN", "s3cr3t")], false).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    // The store is never called for notifications posted to evoke; it
    // points nowhere, and `evoke triggers` says so.
    let (status, v) = node
        .put_store(
            "local",
            json!({"endpoint":"http://127.0.0.1:9","access_key_env":"S3_KEY","secret_key_env":"S3_SECRET"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let trigger = json!({"function":"hello","kind":"s3","store":"local","bucket":"photos","via":"webhook",
        "prefix":"incoming/","suffix":[".jpg",".png"],
        "events":["s3:ObjectCreated:*"],
        "auth":{"scheme":"bearer","secret_env":"MINIO_TOKEN"}});
    let (status, v) = node.put_trigger("uploads", trigger).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["path"], "/hooks/uploads");
    assert_eq!(v["state"], "misconfigured", "{v}");
    assert!(v["error"].as_str().unwrap().contains("store `local`"), "{v}");

    let (status, v) = post(&node, "/hooks/uploads", None, fixture("minio-put.json")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    let (status, v) = post(&node, "/hooks/uploads", Some("wrong"), fixture("minio-put.json")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");

    let (status, v) = post(&node, "/hooks/uploads", Some("s3cr3t"), fixture("minio-put.json")).await;
    assert_eq!((status, &v["queued"]), (StatusCode::OK, &json!(1)), "{v}");
    // Ceph: no `s3:` prefix, sizes as strings; a .txt and a removal are
    // filtered out by the trigger.
    let (status, v) = post(&node, "/hooks/uploads", Some("s3cr3t"), fixture("ceph-batch.json")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((&v["queued"], &v["filtered"]), (&json!(1), &json!(2)), "{v}");
    let (status, v) = post(&node, "/hooks/uploads", Some("s3cr3t"), fixture("sns-wrapped.json")).await;
    assert_eq!((status, &v["queued"]), (StatusCode::OK, &json!(1)), "{v}");
    let (status, v) = post(&node, "/hooks/uploads", Some("s3cr3t"), fixture("aws-test-event.json")).await;
    assert_eq!((status, &v["test"]), (StatusCode::OK, &json!(true)), "{v}");

    // The same notification again (a store's retry) is no new invocation.
    let (status, v) = post(&node, "/hooks/uploads", Some("s3cr3t"), fixture("ceph-batch.json")).await;
    assert_eq!(
        (status, &v["queued"], &v["duplicates"]),
        (StatusCode::OK, &json!(0), &json!(1)),
        "{v}"
    );

    let events = queued_events(&nats.url(), "hello").await;
    assert_eq!(events.len(), 3, "{events:?}");
    let minio = events
        .iter()
        .find(|e| e.subject.as_deref() == Some("incoming/my summer photo(1).jpg"))
        .expect("the MinIO record, key decoded");
    assert_eq!(minio.ty, "com.amazonaws.s3.ObjectCreated:Put");
    assert_eq!(minio.source, "photos");
    assert_eq!(minio.datacontenttype.as_deref(), Some("application/json"));
    let record: Value = serde_json::from_slice(&minio.data).unwrap();
    assert_eq!(
        record["s3"]["object"]["sequencer"], "17D0A2B1F4B5C6D7",
        "the data is the record"
    );
    assert_eq!(minio.extensions["evoketrigger"], "uploads");
    let aws = events
        .iter()
        .find(|e| e.subject.as_deref() == Some("incoming/big video.png"))
        .expect("the SNS-wrapped record");
    assert_eq!(aws.ty, "com.amazonaws.s3.ObjectCreated:CompleteMultipartUpload");
    assert!(
        events
            .iter()
            .any(|e| e.subject.as_deref() == Some("incoming/scan-2.png"))
    );

    // Hostile and broken notifications: a clear error each, nothing queued.
    for (body, code) in [
        (b"{not json".to_vec(), "InvalidNotification"),
        (vec![0xff, 0x00, 0x13, 0x37], "InvalidNotification"),
        (
            br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"photos"}}}]}"#.to_vec(),
            "InvalidNotification",
        ),
        (br#"{"Records":"nope"}"#.to_vec(), "InvalidNotification"),
        (vec![b' '; 10 << 20], "EventTooLarge"),
    ] {
        let (status, v) = post(&node, "/hooks/uploads", Some("s3cr3t"), body).await;
        assert!(status.is_client_error(), "{status} {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    let (_, v) = post(
        &node,
        "/hooks/uploads",
        Some("s3cr3t"),
        br#"{"Records":[{"eventName":"x","s3":{"bucket":{"name":"photos"},"object":{}}}]}"#.to_vec(),
    )
    .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("s3.object.key"), "{v}");
    assert_eq!(queued_events(&nats.url(), "hello").await.len(), 3);
    assert_eq!(node.get("/healthz").await.0, StatusCode::OK);
    node.stop().await;
}

#[tokio::test]
async fn sqs_notifications_from_a_real_s3_server_are_delivered_and_deleted_after_storing() {
    let nats = Nats::start();
    let moto = Moto::start();
    moto.bucket("photos").await;
    let (sqs, queue) = notifying_queue(&moto, "photos", "uploads").await;

    let node = node_with_s3_keys(&nats.url(), &[], false).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    assert_eq!(node.put_store("local", moto.store()).await.0, StatusCode::CREATED);
    let (status, v) = node
        .put_trigger(
            "uploads",
            json!({"function":"hello","kind":"s3","store":"local","bucket":"photos","via":"sqs",
                "queue_url": queue, "prefix":"incoming/","suffix":".jpg","visibility_timeout":"10s"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["state"], "active", "{v}");

    moto.put("photos", "incoming/my cat.jpg", b"meow").await;
    moto.put("photos", "incoming/notes.txt", b"no").await;
    moto.put("photos", "elsewhere/dog.jpg", b"no").await;
    // A message that is no S3 notification lands in the same queue.
    sqs.send_message()
        .queue_url(&queue)
        .message_body("\u{1}garbage, not JSON")
        .send()
        .await
        .unwrap();

    let url = nats.url();
    eventually(Duration::from_secs(30), "the upload's event", || async {
        (subjects(&url, "hello").await == ["incoming/my cat.jpg"]).then_some(())
    })
    .await;
    let e = &queued_events(&url, "hello").await[0];
    assert_eq!(
        (e.ty.as_str(), e.source.as_str()),
        ("com.amazonaws.s3.ObjectCreated:Put", "photos")
    );
    // The unreadable message is moved aside, with its body and the reason.
    let dlq = eventually(Duration::from_secs(30), "the unreadable message in the DLQ", || async {
        let (_, v) = node.get("/v1/functions/hello/dlq").await;
        let items = v["dead_letters"].as_array().cloned().unwrap_or_default();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert!(dlq[0].to_string().contains("UnreadableNotification"), "{dlq:?}");
    // Everything handled was deleted: the queue drains.
    drained(&sqs, &queue).await;
    assert_eq!(subjects(&url, "hello").await, ["incoming/my cat.jpg"]);
    node.stop().await;
}

#[tokio::test]
async fn polling_finds_new_changed_and_removed_objects_once_across_restarts() {
    let nats = Nats::start();
    let moto = Moto::start();
    moto.bucket("photos").await;
    moto.put("photos", "incoming/before.jpg", b"old").await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // older than the first round's slack

    let node = node_with_s3_keys(&nats.url(), &[], false).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    assert_eq!(node.put_store("local", moto.store()).await.0, StatusCode::CREATED);
    let (status, v) = node
        .put_trigger(
            "uploads",
            json!({"function":"hello","kind":"s3","store":"local","bucket":"photos","via":"poll","interval":"1s",
                "prefix":"incoming/","events":["s3:ObjectCreated:*","s3:ObjectRemoved:*"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let url = nats.url();
    let types = || async {
        let mut t: Vec<(String, String)> = queued_events(&url, "hello")
            .await
            .into_iter()
            .map(|e| (e.subject.unwrap_or_default(), e.ty))
            .collect();
        t.sort();
        t
    };
    moto.put("photos", "incoming/a b.jpg", b"one").await;
    eventually(Duration::from_secs(30), "the new object's event", || async {
        (types().await.len() == 1).then_some(())
    })
    .await;
    moto.put("photos", "incoming/a b.jpg", b"two, changed").await;
    moto.s3()
        .await
        .delete_object()
        .bucket("photos")
        .key("incoming/before.jpg")
        .send()
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the change and the removal", || async {
        (types().await.len() == 3).then_some(())
    })
    .await;
    let got = types().await;
    assert_eq!(
        got.iter()
            .filter(|(s, t)| s == "incoming/a b.jpg" && t == "com.amazonaws.s3.ObjectCreated:Put")
            .count(),
        2,
        "{got:?}"
    );
    assert!(
        got.contains(&(
            "incoming/before.jpg".into(),
            "com.amazonaws.s3.ObjectRemoved:Delete".into()
        )),
        "{got:?}"
    );

    // Down, an object arrives; the next node finds it, and only it.
    node.stop().await;
    moto.put("photos", "incoming/while-down.jpg", b"x").await;
    let node = node_with_s3_keys(&nats.url(), &[], false).await;
    eventually(
        Duration::from_secs(30),
        "the object written while no node ran",
        || async { (types().await.len() == 4).then_some(()) },
    )
    .await;
    let count = || async { queued_events(&url, "hello").await.len() };
    assert_eq!(
        settled(Duration::from_secs(30), Duration::from_secs(3), count).await,
        4,
        "{:?}",
        types().await
    );

    // The same bytes put again (same etag, a later time) are a new put, as
    // S3 notifies it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    moto.put("photos", "incoming/while-down.jpg", b"x").await;
    assert_eq!(
        settled(Duration::from_secs(30), Duration::from_secs(3), count).await,
        5,
        "{:?}",
        types().await
    );
    node.stop().await;
}

/// Reads a backfill's JSON lines: every progress line, the last one done.
async fn backfill(node: &TestNode, trigger: &str, body: Value) -> Vec<Value> {
    let resp = node
        .http
        .post(node.url(&format!("/v1/triggers/{trigger}/backfill")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.last().unwrap()["done"], true, "{text}");
    lines
}

#[tokio::test]
async fn backfill_queues_existing_objects_once_even_when_run_twice() {
    let nats = Nats::start();
    let moto = Moto::start();
    moto.bucket("photos").await;
    for key in [
        "incoming/1.jpg",
        "incoming/2.jpg",
        "incoming/3.jpg",
        "incoming/skip.txt",
        "other/4.jpg",
    ] {
        moto.put("photos", key, key.as_bytes()).await;
    }
    let node = node_with_s3_keys(&nats.url(), &[], false).await;
    node.deploy_ok("hello", &example("hello"), &[]).await;
    node.put_store("local", moto.store()).await;
    let (status, v) = node
        .put_trigger(
            "uploads",
            json!({"function":"hello","kind":"s3","store":"local","bucket":"photos","via":"webhook","prefix":"incoming/","suffix":".jpg"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    let dry = backfill(&node, "uploads", json!({"dry_run": true})).await;
    let last = dry.last().unwrap();
    assert_eq!((&last["listed"], &last["queued"]), (&json!(4), &json!(3)), "{dry:?}");
    assert!(
        queued_events(&nats.url(), "hello").await.is_empty(),
        "a dry run queues nothing"
    );

    let first = backfill(&node, "uploads", json!({})).await;
    assert_eq!(first.last().unwrap()["queued"], 3, "{first:?}");
    let second = backfill(&node, "uploads", json!({})).await;
    let last = second.last().unwrap();
    assert_eq!(
        (&last["queued"], &last["duplicates"]),
        (&json!(0), &json!(3)),
        "{second:?}"
    );
    assert_eq!(
        subjects(&nats.url(), "hello").await,
        ["incoming/1.jpg", "incoming/2.jpg", "incoming/3.jpg"]
    );

    let (status, v) = node
        .post_json("/v1/triggers/uploads/backfill", json!({"since": "yesterday-ish"}))
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("InvalidRequest")),
        "{v}"
    );
    node.stop().await;
}

#[tokio::test]
async fn another_node_takes_over_polling_when_the_poller_dies() {
    let nats = Nats::start();
    let moto = Moto::start();
    moto.bucket("photos").await;
    let a = node_with_s3_keys(&nats.url(), &[], false).await;
    let b = node_with_s3_keys(&nats.url(), &[], false).await;
    a.deploy_ok("hello", &example("hello"), &[]).await;
    a.put_store("local", moto.store()).await;
    let (status, v) = a
        .put_trigger(
            "uploads",
            json!({"function":"hello","kind":"s3","store":"local","bucket":"photos","via":"poll","interval":"1s"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let url = nats.url();
    moto.put("photos", "first.jpg", b"1").await;
    eventually(Duration::from_secs(30), "the first object's event", || async {
        (queued_events(&url, "hello").await.len() == 1).then_some(())
    })
    .await;

    // Kill whichever node holds the lease, like a crash.
    let client = async_nats::connect(&url).await.unwrap();
    let leases = async_nats::jetstream::new(client)
        .get_key_value(evoke::bus::KV_LEASES)
        .await
        .unwrap();
    let holder = leases
        .get("s3poll.uploads")
        .await
        .unwrap()
        .expect("a poller holds the lease");
    let holder = String::from_utf8_lossy(&holder).to_string();
    let (dead, alive) = if a.node.as_ref().unwrap().invoker.node == holder {
        (a, b)
    } else {
        (b, a)
    };
    dead.kill();
    moto.put("photos", "second.jpg", b"2").await;
    eventually(Duration::from_secs(60), "the survivor to poll", || async {
        (subjects(&url, "hello").await == ["first.jpg", "second.jpg"]).then_some(())
    })
    .await;
    let count = || async { queued_events(&url, "hello").await.len() };
    assert_eq!(settled(Duration::from_secs(30), Duration::from_secs(3), count).await, 2);
    alive.stop().await;
}

#[tokio::test]
async fn stores_are_checked_and_a_private_ca_is_trusted_over_tls() {
    let dir = tempfile::TempDir::new().unwrap();
    crate::common::private_ca(dir.path());
    let nats = Nats::start();
    let moto = Moto::start_tls(&dir.path().join("server.pem"), &dir.path().join("server.key"));
    let node = node_with_s3_keys(&nats.url(), &[], false).await;

    // Untrusted certificate: a clear error, and the node keeps serving.
    assert_eq!(node.put_store("tls", moto.store()).await.0, StatusCode::CREATED);
    let (_, v) = node.get("/v1/stores/tls").await;
    assert_eq!(v["state"], "unreachable", "{v}");
    assert!(v["error"].as_str().unwrap().to_lowercase().contains("cert"), "{v}");

    let mut store = moto.store();
    store["ca_file"] = json!(dir.path().join("ca.pem").display().to_string());
    assert_eq!(node.put_store("tls", store).await.0, StatusCode::OK);
    let (_, v) = node.get("/v1/stores/tls").await;
    assert_eq!(v["state"], "reachable", "{v}");

    // Missing credentials and bad tables are named.
    let (_, v) = node
        .put_store(
            "nokeys",
            json!({"endpoint": moto.endpoint(), "access_key_env":"UNSET_KEY","secret_key_env":"UNSET_SECRET"}),
        )
        .await;
    assert!(v["error"].as_str().unwrap().contains("UNSET_KEY"), "{v}");
    let (status, v) = node
        .put_store("bad", json!({"endpoint":"ftp://x","colour":"red"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = node.get("/v1/stores").await;
    assert_eq!(
        (status, v["stores"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(2)),
        "{v}"
    );

    // A trigger needs its store; a store in use cannot be removed.
    node.deploy_ok("hello", &example("hello"), &[]).await;
    let t = json!({"function":"hello","kind":"s3","store":"missing","bucket":"photos","via":"poll"});
    let (status, v) = node.put_trigger("uploads", t).await;
    assert_eq!(
        (status, &v["error"]["details"][0]["field"]),
        (StatusCode::BAD_REQUEST, &json!("store")),
        "{v}"
    );
    let t = json!({"function":"hello","kind":"s3","store":"tls","bucket":"photos","via":"poll"});
    let (_, v) = node.put_trigger("uploads", t).await;
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("bucket `photos` does not exist"),
        "{v}"
    );
    let resp = node.http.delete(node.url("/v1/stores/tls")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    node.stop().await;
}
