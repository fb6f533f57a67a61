//! Bad input gets a clear error naming the problem.

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{Nats, TestNode, config, example, print_module, queued_events};

#[tokio::test]
async fn bad_deploys_are_refused_with_the_field_named() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;

    let (status, v) = node.deploy("hello", b"this is not wasm", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "InvalidCode");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("not WebAssembly"),
        "{v}"
    );

    // Valid magic, broken body.
    let (status, v) = node.deploy("hello", b"\0asm\x01\0\0\0\x01\xff", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid WebAssembly"),
        "{v}"
    );

    // A library module with no _start.
    let lib = wat::parse_str("(module (func (export \"add\")))").unwrap();
    let (status, v) = node.deploy("hello", &lib, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("_start"), "{v}");

    // Imports evoke does not provide.
    let wants = wat::parse_str(r#"(module (import "env" "secret" (func)) (func (export "_start")))"#).unwrap();
    let (status, v) = node.deploy("hello", &wants, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("env"), "{v}");

    let (status, v) = node.deploy("Bad_Name", &example("hello"), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["details"][0]["field"], "name");

    let (status, v) = node
        .deploy(
            "hello",
            &example("hello"),
            &[
                ("memory", "64Xi"),
                ("timeout", "99h"),
                ("retries", "many"),
                ("colour", "red"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "InvalidSpec");
    let fields: Vec<&str> = v["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for f in ["memory", "timeout", "retries", "colour"] {
        assert!(fields.contains(&f), "{f} not reported: {v}");
    }
    // Nothing was deployed.
    assert_eq!(node.get("/v1/functions/hello").await.0, StatusCode::NOT_FOUND);
    node.stop().await;
}

/// An event the API takes but one NATS message cannot hold (over the
/// server's `max_payload`, less room for headers and its dead letter) is
/// refused before publishing, with the limit in the message.
#[tokio::test]
async fn an_event_larger_than_a_nats_message_is_refused_with_the_limit() {
    let nats = Nats::start();
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = config(&nats.url(), &dir);
    c.max_event_size = 16 << 20;
    let node = TestNode::with_config(c, dir).await;
    node.deploy_ok("print", &print_module("hi"), &[]).await;
    let invoke = |body: String| {
        node.http
            .post(node.url("/v1/functions/print/invoke"))
            .header("content-type", "text/plain")
            .header("x-evoke-invocation-type", "async")
            .body(body)
            .send()
    };
    // The test server's max_payload is 8 MiB.
    let resp = invoke("x".repeat(9 << 20)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "EventTooLarge", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    let max: usize = message
        .split("NATS accepts at most ")
        .nth(1)
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the limit in {message}"));
    assert!((7 << 20..8 << 20).contains(&max), "8 MiB less the room kept: {message}");
    // Just under the limit is queued.
    let resp = invoke("x".repeat(max - 1024)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    node.stop().await;
}

#[tokio::test]
async fn bad_invocations_are_refused_precisely() {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    node.deploy_ok("print", &print_module("hi"), &[]).await;

    let resp = node.invoke("nope", "{}").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(resp.headers().contains_key("x-evoke-invocation-id"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "function `nope` does not exist");

    // Refused sync and async (async: by the parse that embeds it in the
    // envelope), with the parser's line and column; a binary-mode
    // CloudEvent's body is its data, refused the same way.
    for mode in ["sync", "async"] {
        let plain = node.http.post(node.url("/v1/functions/print/invoke"));
        let binary = node.binary_event("print", "bad-1", "/test", "t");
        for (kind, request) in [("plain", plain), ("binary", binary)] {
            let resp = request
                .header("content-type", "application/json")
                .header("x-evoke-invocation-type", mode)
                .body("  {not json")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{kind} {mode}");
            assert!(resp.headers().contains_key("x-evoke-invocation-id"), "{kind} {mode}");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], "InvalidJson", "{kind} {mode}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.ends_with("at line 1 column 4"), "{kind} {mode}: {message}");
        }
    }

    let big = "x".repeat(7 << 20);
    let resp = node.invoke_text("print", &big).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(resp.headers().contains_key("x-evoke-invocation-id"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "EventTooLarge");

    let resp = node
        .invoke_as("print", "application/cloudevents+json", r#"{"source":"/x","type":"t"}"#)
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`id` is required"),
        "{v}"
    );

    // CloudEvents modes evoke does not read are refused, not run as data.
    let resp = node
        .invoke_as(
            "print",
            "application/cloudevents-batch+json",
            r#"[{"specversion":"1.0","id":"1","source":"/x","type":"t"}]"#,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidEvent", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("batched"), "{v}");

    // Paths, methods and parameters the API does not take answer in its
    // error shape too.
    for (path, status, code) in [
        ("/v1/nothing", StatusCode::NOT_FOUND, "NotFound"),
        (
            "/v1/functions/print/dlq?limit=-5",
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
        ),
        (
            "/v1/functions/print/logs?follow=perhaps",
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
        ),
        ("/v1/functions/%ff", StatusCode::BAD_REQUEST, "InvalidRequest"),
    ] {
        let (got, v) = node.get(path).await;
        assert_eq!(got, status, "{path}: {v}");
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
    }
    let resp = node.http.patch(node.url("/v1/functions/print")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(resp.headers().contains_key("allow"), "{:?}", resp.headers());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "MethodNotAllowed", "{v}");

    let (status, _) = node.get("/v1/invocations/does-not-exist").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let resp = node
        .http
        .post(node.url("/v1/functions/print/dlq/redrive"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Still serving.
    let resp = node.invoke("print", "{}").await;
    assert_eq!(resp.text().await.unwrap(), "hi");
    node.stop().await;
}

/// Binary-mode attribute headers that are not ASCII are read as UTF-8, or
/// else as ISO-8859-1, as Python's http.client (the CloudEvents SDK's
/// transport) sends them: the event carries the attribute as sent.
#[tokio::test]
async fn binary_mode_attributes_that_are_not_ascii_arrive_as_sent() {
    let nats = Nats::start();
    // No workers: the events stay queued to be read back.
    let node = TestNode::without_workers(&nats.url()).await;
    node.deploy_ok("print", &print_module("hi"), &[]).await;
    for (value, id) in [(&b"caf\xe9"[..], "enc-1"), ("café".as_bytes(), "enc-2")] {
        let resp = node
            .binary_event("print", id, "/test", "t")
            .header("ce-subject", reqwest::header::HeaderValue::from_bytes(value).unwrap())
            .header("x-evoke-invocation-type", "async")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{id}");
    }
    let queued = queued_events(&nats.url(), "print").await;
    let subjects: Vec<&str> = queued.iter().filter_map(|e| e.subject.as_deref()).collect();
    assert_eq!(subjects, ["café", "café"], "{queued:?}");
    node.stop().await;
}
