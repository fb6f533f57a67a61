//! Functions and objects, against a real S3 API server (moto, one per test):
//! the shipped thumbnail example end to end, grants, the recursion guard,
//! reads beyond a function's memory, and `s3://` destinations.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Moto, Nats, TestNode, eventually, example, node_with_s3_keys};

fn image(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Width and height of a PNG or baseline/progressive JPEG, read from its
/// header (the test does not trust the function's own report).
fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let be16 = |b: &[u8]| u32::from(u16::from_be_bytes([b[0], b[1]]));
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        return (be32(&bytes[16..20]), be32(&bytes[20..24]));
    }
    assert!(bytes.starts_with(&[0xFF, 0xD8]), "neither PNG nor JPEG");
    let mut i = 2;
    while i + 9 < bytes.len() {
        assert_eq!(bytes[i], 0xFF, "bad JPEG segment at {i}");
        let marker = bytes[i + 1];
        let len = be16(&bytes[i + 2..]) as usize;
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            return (be16(&bytes[i + 7..]), be16(&bytes[i + 5..]));
        }
        i += 2 + len;
    }
    panic!("no JPEG frame header")
}

/// The CloudEvent an s3 trigger would send for `photos/<key>` in `local`.
fn upload_event(key: &str) -> String {
    json!({"specversion":"1.0","id":format!("up-{key}"),"source":"photos",
        "type":"com.amazonaws.s3.ObjectCreated:Put","subject":key,"evokestore":"local",
        "datacontenttype":"application/json","data":{}})
    .to_string()
}

async fn invoke_event(node: &TestNode, function: &str, event: String) -> (StatusCode, String) {
    let resp = node
        .http
        .post(node.url(&format!("/v1/functions/{function}/invoke")))
        .header("content-type", "application/cloudevents+json")
        .body(event)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The thumbnail function, store, grants and trigger exactly as the shipped
/// `evoke.toml` has them (only the store's endpoint points at this test's
/// server): a JPEG and a PNG uploaded get thumbnails of the right size, a
/// text file is left alone.
#[tokio::test]
async fn the_shipped_thumbnail_example_makes_thumbnails_of_uploads() {
    let moto = Moto::start();
    moto.bucket("photos").await;
    moto.bucket("thumbs").await;
    let nats = Nats::start();
    let node = node_with_s3_keys(
        &nats.url(),
        &[("S3_ACCESS_KEY", "test"), ("S3_SECRET_KEY", "test")],
        true,
    )
    .await;
    node.apply_shipped(&[(
        "endpoint = \"http://127.0.0.1:9000\"",
        &format!("endpoint = \"{}\"", moto.endpoint()),
    )])
    .await;
    let (_, t) = node.get("/v1/triggers/uploads").await;
    assert_eq!(t["state"], "active", "{t}");

    moto.put("photos", "2026/cat.jpg", &image("photo.jpg")).await;
    moto.put("photos", "tall.png", &image("portrait.png")).await;
    moto.put("photos", "notes.txt", b"not an image").await;
    let thumbs = eventually(Duration::from_secs(60), "two thumbnails", || async {
        let keys = moto.keys("thumbs").await;
        (keys.len() >= 2).then_some(keys)
    })
    .await;
    assert_eq!(thumbs, ["2026/cat.jpg", "tall.png"]);
    let jpeg = moto.get("thumbs", "2026/cat.jpg").await.unwrap();
    assert_eq!(dimensions(&image("photo.jpg")), (640, 480));
    assert_eq!(dimensions(&jpeg), (128, 96), "aspect ratio kept");
    let png = moto.get("thumbs", "tall.png").await.unwrap();
    assert_eq!(dimensions(&png), (64, 128));
    let log = node.logs_with("thumbnail", "", "640x480 -> 128x96").await;
    assert!(log.contains("640x480 -> 128x96"), "{log}");
    // The text file matched no suffix: never an event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(moto.keys("thumbs").await.len(), 2);
    node.stop().await;
}

/// No grants, no object access; each missing grant is named in the error
/// and logged; a read larger than the function's memory is refused cleanly
/// and the function keeps serving.
#[tokio::test]
async fn grants_decide_what_a_function_may_touch() {
    let moto = Moto::start();
    moto.bucket("photos").await;
    moto.bucket("thumbs").await;
    moto.put("photos", "cat.jpg", &image("photo.jpg")).await;
    let nats = Nats::start();
    let node = node_with_s3_keys(&nats.url(), &[], true).await;
    let (status, v) = node.put_store("local", moto.store()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let code = example("thumbnail");
    let deploy = |grants: &'static [&'static str], memory: &'static str| {
        let mut q = vec![("env", "THUMB_BUCKET=local/thumbs"), ("memory", memory)];
        q.extend(grants.iter().map(|g| ("grant", *g)));
        let (node, code) = (&node, &code);
        async move { node.deploy_ok("thumbnail", code, &q).await }
    };

    deploy(&[], "64Mi").await;
    let (status, body) = invoke_event(&node, "thumbnail", upload_event("cat.jpg")).await;
    assert!(!status.is_success(), "{status} {body}");
    assert!(
        body.contains("denied") && body.contains("may not read local/photos"),
        "{body}"
    );
    let (_, f) = node.get("/v1/functions/thumbnail").await;
    assert!(f["spec"].get("grants").is_none(), "{f}");

    deploy(&["local/photos:read"], "64Mi").await;
    let (status, body) = invoke_event(&node, "thumbnail", upload_event("cat.jpg")).await;
    assert!(!status.is_success(), "{status} {body}");
    assert!(body.contains("may not write local/thumbs"), "{body}");
    // Another store or bucket is not covered by a grant on `photos`.
    let mut other = upload_event("cat.jpg").replace("\"source\":\"photos\"", "\"source\":\"secrets\"");
    let (_, body) = invoke_event(&node, "thumbnail", other.clone()).await;
    assert!(body.contains("may not read local/secrets"), "{body}");
    other = upload_event("cat.jpg").replace("\"evokestore\":\"local\"", "\"evokestore\":\"prod\"");
    let (_, body) = invoke_event(&node, "thumbnail", other).await;
    assert!(body.contains("may not read prod/photos"), "{body}");
    let log = node.logs_with("thumbnail", "", "objects.get(local/secrets)").await;
    assert!(
        log.contains("objects.get(local/secrets)") && log.contains("denied"),
        "{log}"
    );

    deploy(&["local/photos:read", "local/thumbs:write"], "64Mi").await;
    let (status, body) = invoke_event(&node, "thumbnail", upload_event("cat.jpg")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let made: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((made["width"].as_u64(), made["height"].as_u64()), (Some(128), Some(96)));
    assert_eq!(moto.keys("thumbs").await, ["cat.jpg"]);
    let (status, body) = invoke_event(&node, "thumbnail", upload_event("missing.jpg")).await;
    assert!(!status.is_success() && body.contains("not found"), "{status} {body}");

    // 40 MiB object, 32 MiB of memory: refused before anything is copied.
    moto.put("photos", "huge.jpg", &vec![7u8; 40 << 20]).await;
    deploy(&["local/photos:read", "local/thumbs:write"], "32Mi").await;
    let (status, body) = invoke_event(&node, "thumbnail", upload_event("huge.jpg")).await;
    assert!(!status.is_success(), "{status} {body}");
    assert!(body.contains("41943040 bytes, too large to read whole"), "{body}");
    let (status, body) = invoke_event(&node, "thumbnail", upload_event("cat.jpg")).await;
    assert_eq!(status, StatusCode::OK, "the function keeps serving: {body}");
    node.stop().await;
}

/// A function that writes its output into the bucket that triggers it (a
/// new key each time) would run forever; the chain each object carries
/// stops it at `max_chain`, in the dead-letter queue with `RecursiveLoop`.
#[tokio::test]
async fn a_function_writing_into_its_own_trigger_bucket_is_stopped() {
    let moto = Moto::start();
    moto.bucket("photos").await;
    let nats = Nats::start();
    let node = node_with_s3_keys(&nats.url(), &[], true).await;
    node.put_store("local", moto.store()).await;
    node.deploy_ok(
        "thumbnail",
        &example("thumbnail"),
        &[
            ("env", "THUMB_BUCKET=local/photos"),
            ("env", "THUMB_PREFIX=t-"),
            ("grant", "local/photos:read-write"),
            ("memory", "64Mi"),
        ],
    )
    .await;
    let (status, v) = node
        .put_trigger(
            "uploads",
            json!({"function":"thumbnail","kind":"s3","store":"local","bucket":"photos",
                "via":"poll","interval":"1s","max_chain":2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    moto.put("photos", "cat.jpg", &image("photo.jpg")).await;

    let dlq = eventually(Duration::from_secs(60), "the loop dead-lettered", || async {
        let (_, v) = node.get("/v1/functions/thumbnail/dlq").await;
        let items = v["dead_letters"].as_array().cloned().unwrap_or_default();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let text = dlq[0].to_string();
    assert!(
        text.contains("RecursiveLoop") && text.contains("t-t-t-cat.jpg"),
        "{text}"
    );
    // cat.jpg (an upload) ran, and two generations written by the function;
    // the third generation's event never ran.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        moto.keys("photos").await,
        ["cat.jpg", "t-cat.jpg", "t-t-cat.jpg", "t-t-t-cat.jpg"]
    );
    let (_, v) = node.get("/v1/functions/thumbnail/dlq").await;
    assert_eq!(v["dead_letters"].as_array().unwrap().len(), 1, "{v}");
    node.stop().await;
}

/// `on_success = "s3://..."`: the result as an object named by the
/// invocation. A store that is down is a system error: the event waits in
/// the queue and delivers its result once the store is back.
#[tokio::test]
async fn results_are_written_to_an_s3_destination_even_after_the_store_was_down() {
    let moto = Moto::start();
    moto.bucket("results").await;
    let nats = Nats::start();
    let node = node_with_s3_keys(&nats.url(), &[], true).await;
    node.put_store("local", moto.store()).await;
    node.deploy_ok("hello", &example("hello"), &[("on_success", "s3://local/results/ok/")])
        .await;
    let id = node.invoke_async("hello", "application/json", r#"{"name":"s3"}"#).await;
    let key = format!("ok/{id}.json");
    let body = eventually(Duration::from_secs(30), "the result object", || {
        moto.get("results", &key)
    })
    .await;
    let result: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(result["subject"], id.as_str(), "{result}");
    assert!(result.to_string().contains("Hello, s3!"), "{result}");

    // The store points nowhere: the result cannot be written.
    let mut down = moto.store();
    down["endpoint"] = json!("http://127.0.0.1:9");
    let (status, v) = node.put_store("local", down).await;
    assert!(status.is_success(), "{v}");
    let id = node
        .invoke_async("hello", "application/json", r#"{"name":"later"}"#)
        .await;
    let record = node
        .wait_record(&id, Duration::from_secs(60), |r| {
            r.to_string().contains("result was not delivered")
        })
        .await;
    assert!(record.to_string().contains("s3://local/results/ok/"), "{record}");
    assert_ne!(record["status"], "succeeded", "{record}");
    let (status, v) = node.put_store("local", moto.store()).await;
    assert!(status.is_success(), "{v}");
    let key = format!("ok/{id}.json");
    eventually(Duration::from_secs(60), "the delayed result", || {
        moto.get("results", &key)
    })
    .await;
    let record = node
        .wait_record(&id, Duration::from_secs(10), |r| r["status"] == "succeeded")
        .await;
    assert_eq!(record["status"], "succeeded");
    let (_, v) = node.get("/v1/functions/hello/dlq").await;
    assert_eq!(v["dead_letters"], json!([]), "{v}");
    node.stop().await;
}

/// Every object call through the SDK against a real S3 server: put with
/// metadata, get, head, a streamed read in 3-byte ranges, a range, a
/// listing, delete, and `not-found` after it.
#[tokio::test]
async fn every_object_call_works_through_the_sdk() {
    let moto = Moto::start();
    moto.bucket("work").await;
    let nats = Nats::start();
    let node = node_with_s3_keys(&nats.url(), &[], true).await;
    node.put_store("local", moto.store()).await;
    node.deploy_ok("tour", &example("objects-tour"), &[("grant", "local/work:read-write")])
        .await;
    let resp = node
        .invoke(
            "tour",
            r#"{"store":"local","bucket":"work","prefix":"tour/","chunk":3}"#,
        )
        .await;
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["whole"], "bravo!");
    assert_eq!(v["streamed"], "bravo!", "read back range by range");
    assert_eq!(v["range"], "rav");
    assert_eq!(v["size"], 6);
    assert_eq!(v["content_type"], "text/plain");
    // The function's metadata, and what evoke adds (the writer, its chain).
    let meta = v["metadata"].as_array().unwrap();
    for pair in [
        json!(["origin", "tour"]),
        json!(["evoke-function", "tour"]),
        json!(["evoke-chain", "1"]),
    ] {
        assert!(meta.contains(&pair), "{pair} in {meta:?}");
    }
    assert_eq!(v["listed"], json!(["tour/a.txt", "tour/b.txt", "tour/c.txt"]));
    assert_eq!(v["after_delete"], "not-found");
    assert_eq!(moto.keys("work").await, ["tour/b.txt", "tour/c.txt"]);
    // The store itself holds the same.
    let head = moto
        .s3()
        .await
        .head_object()
        .bucket("work")
        .key("tour/b.txt")
        .send()
        .await
        .unwrap();
    let meta = head.metadata().cloned().unwrap_or_default();
    assert_eq!(meta.get("origin").map(String::as_str), Some("tour"), "{meta:?}");
    assert_eq!(meta.get("evoke-function").map(String::as_str), Some("tour"), "{meta:?}");
    assert_eq!(meta.get("evoke-chain").map(String::as_str), Some("1"), "{meta:?}");
    node.stop().await;
}

/// A store that accepts connections and never answers: the object call ends
/// with the invocation's timeout (as a timeout, logged), the function does
/// not hang, and the node keeps serving.
#[tokio::test]
async fn object_calls_end_with_the_invocation_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    let nats = Nats::start();
    let node = node_with_s3_keys(&nats.url(), &[], true).await;
    let store = json!({"endpoint": format!("http://127.0.0.1:{port}"),
        "access_key_env": "S3_KEY", "secret_key_env": "S3_SECRET"});
    node.put_store("local", store).await;
    node.deploy_ok(
        "thumbnail",
        &example("thumbnail"),
        &[("grant", "local/photos:read"), ("timeout", "1s")],
    )
    .await;
    let (status, body) = invoke_event(&node, "thumbnail", upload_event("cat.jpg")).await;
    assert!(!status.is_success(), "{status} {body}");
    assert!(
        body.contains("time ran out") || body.contains("FunctionTimeout"),
        "{status} {body}"
    );
    let log = node.logs_with("thumbnail", "", "objects.get(local/photos)").await;
    assert!(log.contains("objects.get(local/photos)"), "{log}");
    let (status, _) = node.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    node.stop().await;
}
