//! The shared queue runtime against the contract's memory sink and a
//! consumer fed from a channel (the brokers themselves are tested with real
//! servers in evoke's integration tests).

use std::sync::Mutex;

use tokio::sync::mpsc;

use super::*;
use crate::contract::{MemorySink, assert_valid_event};

/// A consumer fed by a channel; each ack records the message's origin id.
struct Fed {
    rx: mpsc::UnboundedReceiver<Message>,
    acked: Arc<Mutex<Vec<String>>>,
}

impl Consumer for Fed {
    async fn next(&mut self) -> Result<Incoming, String> {
        let message = self.rx.recv().await.ok_or("closed")?;
        let (acked, id) = (self.acked.clone(), message.origin_id.clone().unwrap_or_default());
        Ok(Incoming {
            message,
            ack: Box::pin(async move {
                acked.lock().unwrap().push(id);
                Ok(())
            }),
        })
    }
}

fn shape(binding: Binding) -> Shape {
    Shape {
        trigger: "orders".into(),
        function: "enrich".into(),
        kind: "kafka",
        binding,
        filter: None,
        batch: None,
        order: Order::None,
        max_body: DEFAULT_MAX_BODY,
    }
}

fn msg(offset: u32, body: &str) -> Message {
    Message {
        body: Bytes::from(body.to_string()),
        key: Some("k".into()),
        subject: Some("orders".into()),
        origin_id: Some(format!("orders.0.{offset}")),
        origin: vec![("evokekafkaoffset", offset.to_string())],
        ..Default::default()
    }
}

#[test]
fn plain_messages_become_events_with_their_origin() {
    let mut m = msg(7, r#"{"order":1}"#);
    m.headers = vec![("tenant".into(), "acme".into())];
    let e = shape(Binding::Kafka).event(&m).unwrap();
    assert_valid_event(&e);
    assert_eq!(e.ty, "evoke.kafka.message");
    assert_eq!(e.id, "orders.0.7");
    assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(e.extensions["evokekafkaoffset"], "7");
    assert_eq!(e.extensions[EXT_KEY], "k");
    assert_eq!(e.extensions[EXT_HEADERS], r#"{"tenant":"acme"}"#);
    let text = shape(Binding::Kafka).event(&msg(8, "hello")).unwrap();
    assert_eq!(text.datacontenttype.as_deref(), Some("text/plain"));
}

#[test]
fn cloudevents_bindings_are_honoured() {
    // Kafka binary mode: ce_ headers.
    let mut m = msg(1, "payload");
    m.headers = vec![
        ("ce_specversion".into(), "1.0".into()),
        ("ce_id".into(), "A-1".into()),
        ("ce_source".into(), "/shop".into()),
        ("ce_type".into(), "order.created".into()),
        ("ce_traceparent".into(), "00-abc".into()),
        ("tenant".into(), "acme".into()),
    ];
    m.content_type = Some("text/plain".into());
    let e = shape(Binding::Kafka).event(&m).unwrap();
    assert_valid_event(&e);
    assert_eq!(
        (e.id.as_str(), e.source.as_str(), e.ty.as_str()),
        ("A-1", "/shop", "order.created")
    );
    assert_eq!(e.extensions["traceparent"], "00-abc");
    assert_eq!(e.extensions[EXT_HEADERS], r#"{"tenant":"acme"}"#);
    assert_eq!(&e.data[..], b"payload");
    // AMQP: cloudEvents: and cloudEvents_ application properties.
    for prefix in ["cloudEvents:", "cloudEvents_"] {
        let mut m = msg(2, "x");
        m.headers = ["specversion", "id", "source", "type"]
            .iter()
            .map(|a| {
                (
                    format!("{prefix}{a}"),
                    if *a == "specversion" {
                        "1.0".into()
                    } else {
                        format!("v-{a}")
                    },
                )
            })
            .collect();
        let e = shape(Binding::Amqp).event(&m).unwrap();
        assert_eq!(e.ty, "v-type", "{prefix}");
    }
    // MQTT 5: bare user properties; names no extension may have stay headers.
    let mut m = msg(3, "x");
    m.headers = vec![
        ("specversion".into(), "1.0".into()),
        ("id".into(), "m-1".into()),
        ("source".into(), "/sensors".into()),
        ("type".into(), "reading".into()),
        ("Room-Name".into(), "lab".into()),
    ];
    let e = shape(Binding::Mqtt).event(&m).unwrap();
    assert_eq!(e.id, "m-1");
    assert_eq!(e.extensions[EXT_HEADERS], r#"{"Room-Name":"lab"}"#);
    // Structured mode, any binding.
    let mut m = msg(
        4,
        r#"{"specversion":"1.0","id":"s-1","source":"/x","type":"t","data":{"a":1}}"#,
    );
    m.content_type = Some("application/cloudevents+json; charset=utf-8".into());
    let e = shape(Binding::Nats).event(&m).unwrap();
    assert_eq!((e.id.as_str(), &e.data[..]), ("s-1", &br#"{"a":1}"#[..]));
}

#[test]
fn malformed_and_oversized_messages_are_refused_with_a_reason() {
    let mut m = msg(1, "not json");
    m.content_type = Some("application/cloudevents+json".into());
    assert!(
        shape(Binding::Kafka)
            .event(&m)
            .unwrap_err()
            .starts_with("MalformedCloudEvent")
    );
    let mut m = msg(2, "x");
    m.headers = vec![("ce_specversion".into(), "1.0".into()), ("ce_id".into(), "1".into())];
    let e = shape(Binding::Kafka).event(&m).unwrap_err();
    assert!(e.contains("MalformedCloudEvent") && e.contains("source"), "{e}");
    let mut s = shape(Binding::Kafka);
    s.max_body = ByteSize(4);
    assert!(s.event(&msg(3, "too long")).unwrap_err().starts_with("MessageTooLarge"));
}

fn pipeline(sink: Arc<MemorySink>, batch: Option<BatchConfig>) -> Pipeline<MemorySink> {
    let mut shape = shape(Binding::Kafka);
    shape.batch = batch;
    Pipeline {
        shape,
        sink,
        stats: Arc::new(Stats::default()),
    }
}

#[tokio::test(start_paused = true)]
async fn acks_follow_stores_in_arrival_order_through_an_outage() {
    let sink = Arc::new(MemorySink::failing(3));
    let p = pipeline(sink.clone(), None);
    let (tx, rx) = mpsc::unbounded_channel();
    let acked = Arc::new(Mutex::new(vec![]));
    let mut c = Fed {
        rx,
        acked: acked.clone(),
    };
    for i in 0..20 {
        tx.send(msg(i, &format!("m{i}"))).unwrap();
    }
    // A poison message in the middle: parked, acked, never blocking.
    let mut poison = msg(20, "{");
    poison.content_type = Some("application/cloudevents+json".into());
    tx.send(poison).unwrap();
    tx.send(msg(21, "after")).unwrap();
    let (stop_tx, mut stop) = watch::channel(false);
    let run = tokio::spawn(async move { p.run(&mut c, &mut stop).await });
    tokio::time::sleep(Duration::from_secs(30)).await;
    stop_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
    let acked = acked.lock().unwrap().clone();
    let expected: Vec<String> = (0..22).map(|i| format!("orders.0.{i}")).collect();
    assert_eq!(acked, expected, "every message acked once, in order");
    assert_eq!(sink.events().len(), 21);
    assert_eq!(sink.parked().len(), 1);
    assert!(sink.parked()[0].1.starts_with("MalformedCloudEvent"));
}

#[tokio::test(start_paused = true)]
async fn nothing_is_acked_that_was_not_stored() {
    let sink = Arc::new(MemorySink::default());
    *sink.outage_after.lock().unwrap() = Some(5);
    let p = pipeline(sink.clone(), None);
    let (tx, rx) = mpsc::unbounded_channel();
    let acked = Arc::new(Mutex::new(vec![]));
    let mut c = Fed {
        rx,
        acked: acked.clone(),
    };
    for i in 0..10 {
        tx.send(msg(i, "x")).unwrap();
    }
    let (stop_tx, mut stop) = watch::channel(false);
    let run = tokio::spawn(async move { p.run(&mut c, &mut stop).await });
    tokio::time::sleep(Duration::from_secs(60)).await;
    stop_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 5, "{acked:?}");
    assert_eq!(sink.events().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn batches_close_on_count_bytes_or_time() {
    let sink = Arc::new(MemorySink::default());
    // A message weighs its body plus its envelope (headers, origin, key,
    // subject and about 256 bytes of attributes).
    let long = "b".repeat(100);
    let (wa, wb, wc) = (weight(&msg(0, "a")), weight(&msg(4, &long)), weight(&msg(7, "ccc")));
    let max = (4 * wa).max(3 * wb);
    assert!(3 * wb + wc > max && 4 * wb > max);
    let batch = BatchConfig {
        max_records: 4,
        max_bytes: ByteSize(max),
        max_wait: Duration::from_secs(2),
    };
    let p = pipeline(sink.clone(), Some(batch));
    let (tx, rx) = mpsc::unbounded_channel();
    let acked = Arc::new(Mutex::new(vec![]));
    let mut c = Fed {
        rx,
        acked: acked.clone(),
    };
    // 4 small ones: closed by count; then 3 longer ones: closed by bytes
    // (the next does not fit); then one alone: closed by time.
    for i in 0..4 {
        tx.send(msg(i, "a")).unwrap();
    }
    for i in 4..7 {
        tx.send(msg(i, &long)).unwrap();
    }
    tx.send(msg(7, "ccc")).unwrap();
    let (stop_tx, mut stop) = watch::channel(false);
    let run = tokio::spawn(async move { p.run(&mut c, &mut stop).await });
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
    let sizes: Vec<usize> = sink
        .events()
        .iter()
        .map(|e| {
            assert_valid_event(e);
            assert_eq!(e.ty, "evoke.kafka.batch");
            serde_json::from_slice::<Vec<Value>>(&e.data).unwrap().len()
        })
        .collect();
    assert_eq!(sizes, [4, 3, 1]);
    let first: Vec<Value> = serde_json::from_slice(&sink.events()[0].data).unwrap();
    assert_eq!(first[0]["id"], "orders.0.0");
    assert_eq!(acked.lock().unwrap().len(), 8);
}

#[test]
fn a_batch_holds_its_items_json_data_byte_for_byte() {
    let s = shape(Binding::Kafka);
    let data = r#"{"zeta": 1,"alpha":2.50}"#;
    let item = Event::new("i-1", "/s", "t").with_data(Some("application/json".into()), Bytes::from(data));
    let (batch, _) = s.batch_event(&[(item.clone(), "d".into()), (item, "d".into())]);
    let text = std::str::from_utf8(&batch.data).unwrap();
    assert_eq!(text.matches(data).count(), 2, "{text}");
    assert_eq!(serde_json::from_str::<Vec<Value>>(text).unwrap().len(), 2);
}

/// What the sink stored so far, as bodies.
fn bodies(sink: &MemorySink) -> Vec<String> {
    sink.events()
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .collect()
}

fn keyed(offset: u32, key: &str) -> Message {
    let mut m = msg(offset, &format!("{key}{offset}"));
    m.key = Some(key.into());
    m
}

#[tokio::test(start_paused = true)]
async fn ordered_keys_run_one_at_a_time_and_other_keys_pass() {
    let sink = Arc::new(MemorySink::default());
    sink.holding.store(true, Ordering::Relaxed);
    let mut p = pipeline(sink.clone(), None);
    p.shape.order = Order::Key;
    let (tx, rx) = mpsc::unbounded_channel();
    let acked = Arc::new(Mutex::new(vec![]));
    let mut c = Fed {
        rx,
        acked: acked.clone(),
    };
    for (i, k) in ["a", "b", "a", "a", "c"].iter().enumerate() {
        tx.send(keyed(i as u32, k)).unwrap();
    }
    let mut unkeyed = msg(5, "none");
    unkeyed.key = None;
    tx.send(unkeyed).unwrap();
    let (stop_tx, mut stop) = watch::channel(false);
    let run = tokio::spawn(async move { p.run(&mut c, &mut stop).await });
    let settle = || tokio::time::sleep(Duration::from_millis(50));
    settle().await;
    // a0, b1, c4 and the unkeyed one are stored; a2 waits for a0 to finish.
    assert_eq!(bodies(&sink), ["a0", "b1", "c4", "none"]);
    assert!(acked.lock().unwrap().is_empty(), "acked only once finished");
    sink.finish("kafka.orders.orders.0.1");
    settle().await;
    assert_eq!(bodies(&sink), ["a0", "b1", "c4", "none"], "b finishing frees no `a`");
    assert!(acked.lock().unwrap().is_empty(), "acks stay in arrival order");
    sink.finish("kafka.orders.orders.0.0");
    settle().await;
    assert_eq!(bodies(&sink), ["a0", "b1", "c4", "none", "a2"]);
    assert_eq!(*acked.lock().unwrap(), ["orders.0.0", "orders.0.1"]);
    sink.finish("kafka.orders.orders.0.2");
    settle().await;
    assert_eq!(bodies(&sink), ["a0", "b1", "c4", "none", "a2", "a3"]);
    // Stopping while a3 and c4 run: they are not acknowledged (the broker
    // redelivers them; the chain is rebuilt from the duplicates), nor is
    // the unkeyed one after them, finished or not: an ack never passes a
    // unit that was not.
    stop_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(*acked.lock().unwrap(), ["orders.0.0", "orders.0.1", "orders.0.2"]);
}

#[tokio::test(start_paused = true)]
async fn ordered_batches_run_one_at_a_time() {
    let sink = Arc::new(MemorySink::default());
    sink.holding.store(true, Ordering::Relaxed);
    let batch = BatchConfig {
        max_records: 2,
        max_bytes: ByteSize(1024),
        max_wait: Duration::from_secs(1),
    };
    let mut p = pipeline(sink.clone(), Some(batch));
    p.shape.order = Order::Key;
    let (tx, rx) = mpsc::unbounded_channel();
    let acked = Arc::new(Mutex::new(vec![]));
    let mut c = Fed {
        rx,
        acked: acked.clone(),
    };
    for i in 0..4 {
        tx.send(keyed(i, if i % 2 == 0 { "a" } else { "b" })).unwrap();
    }
    let (stop_tx, mut stop) = watch::channel(false);
    let run = tokio::spawn(async move { p.run(&mut c, &mut stop).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sink.events().len(), 1, "the second batch waits for the first");
    let first = sink.stored.lock().unwrap()[0].0.clone();
    sink.finish(&first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sink.events().len(), 2);
    assert_eq!(acked.lock().unwrap().len(), 2);
    stop_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
}

#[test]
fn binary_encoding_round_trips_through_the_binding() {
    for b in [Binding::Kafka, Binding::Amqp, Binding::Mqtt, Binding::Nats] {
        let mut e = Event::new("r-1", "/evoke/functions/f", "evoke.invocation.succeeded")
            .with_data(Some("application/json".into()), Bytes::from_static(b"{}"));
        e.subject = Some("inv".into());
        e.extensions.insert("evokeattempt".into(), "1".into());
        let (headers, ct, body) = b.encode(&e);
        let m = Message {
            body,
            content_type: ct,
            headers,
            ..Default::default()
        };
        let mut s = shape(b);
        s.trigger = "t".into();
        let back = s.event(&m).unwrap();
        assert_eq!(
            (back.id.as_str(), back.ty.as_str()),
            ("r-1", "evoke.invocation.succeeded"),
            "{b:?}"
        );
        assert_eq!(back.subject.as_deref(), Some("inv"));
        assert_eq!(back.extensions["evokeattempt"], "1");
        assert!(!back.extensions.contains_key(EXT_HEADERS), "{b:?}: {back:?}");
    }
}

#[test]
fn queue_triggers_parse_and_name_their_bad_fields() {
    use crate::trigger::TriggerSpec;
    use serde_json::json;
    let ok = [
        json!({"function": "f", "kind": "kafka", "connection": "k", "topics": ["orders", "^logs-.*"], "start": "2026-01-01T00:00:00Z",
               "batch": {"max_records": 10, "max_wait": "500ms"}, "order": "key"}),
        json!({"function": "f", "kind": "amqp", "url": "amqp://guest:guest@127.0.0.1:5672/%2f", "queue": "orders",
               "declare": true, "exchange": "shop", "routing_keys": ["orders.*"], "queue_type": "quorum"}),
        json!({"function": "f", "kind": "mqtt", "connection": "m", "topics": ["a/+/b"], "qos": 2, "protocol": "3.1.1", "order": "key"}),
        json!({"function": "f", "kind": "nats", "connection": "n", "stream": "ORDERS", "deliver": "by_start_time",
               "start_time": "2026-01-01T00:00:00Z"}),
        json!({"function": "f", "kind": "nats", "url": "nats://127.0.0.1:4222", "subject": "a.>"}),
    ];
    for v in ok {
        let t = TriggerSpec::parse(&v).unwrap_or_else(|p| panic!("{v}: {p:?}"));
        assert_eq!(TriggerSpec::parse(&t.to_value()).unwrap(), t, "round trip");
    }
    let fields = |v: serde_json::Value| -> Vec<String> {
        TriggerSpec::parse(&v)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    };
    assert_eq!(
        fields(json!({"function": "f", "kind": "kafka", "topics": ["a b"]})),
        ["connection", "topics"]
    );
    assert_eq!(
        fields(
            json!({"function": "f", "kind": "kafka", "connection": "k", "url": "kafka://h:1", "topics": ["t"], "start": "yesterday"})
        ),
        ["url", "start"]
    );
    assert_eq!(
        fields(json!({"function": "f", "kind": "amqp", "url": "http://h", "queue": ""})),
        ["url", "queue"]
    );
    assert_eq!(
        fields(
            json!({"function": "f", "kind": "amqp", "connection": "r", "queue": "q", "exchange": "x", "prefetch": 0})
        ),
        ["declare", "prefetch"]
    );
    assert_eq!(
        fields(
            json!({"function": "f", "kind": "mqtt", "connection": "m", "topics": ["a/#/b"], "qos": 3, "protocol": "4"})
        ),
        ["topics", "qos", "protocol"]
    );
    assert_eq!(
        fields(json!({"function": "f", "kind": "nats", "connection": "n"})),
        ["subject"]
    );
    assert_eq!(
        fields(json!({"function": "f", "kind": "nats", "connection": "n", "subject": "a", "durable": "d"})),
        ["durable"]
    );
    assert_eq!(
        fields(
            json!({"function": "f", "kind": "kafka", "connection": "k", "topics": ["t"],
                      "batch": {"max_records": 0, "max_bytes": "10Mi"}, "max_body": "100Mi"})
        ),
        ["batch.max_records", "batch.max_bytes", "max_body"]
    );
    assert_eq!(
        fields(json!({"function": "f", "kind": "kafka", "connection": "k", "topics": ["t"], "colour": 1})),
        ["colour"]
    );
}
