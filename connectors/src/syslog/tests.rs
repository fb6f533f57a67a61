use serde_json::{Value, json};

use super::*;
use crate::trigger::TriggerSpec;

#[test]
fn syslog_triggers_parse_and_name_their_bad_fields() {
    let t = TriggerSpec::parse(&json!({"function": "f", "kind": "syslog", "listen": "udp://0.0.0.0:5514"})).unwrap();
    assert_eq!(TriggerSpec::parse(&t.to_value()).unwrap(), t, "round trip");
    let crate::trigger::SourceConfig::Syslog(c) = &t.source else {
        panic!("{t:?}")
    };
    assert_eq!(c.nodes, Nodes::All);
    assert_eq!(c.batch, Some(BatchConfig::default()), "batches by default");
    let t = TriggerSpec::parse(&json!({"function": "f", "kind": "syslog", "nodes": ["web-1"],
        "listen": ["udp://127.0.0.1:5514", "tcp://[::1]:5514"], "max_message": "8Ki"}))
    .unwrap();
    assert_eq!(TriggerSpec::parse(&t.to_value()).unwrap(), t, "round trip");
    let fields = |v: Value| -> Vec<String> {
        TriggerSpec::parse(&v)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    };
    assert_eq!(
        fields(
            json!({"function": "f", "kind": "syslog", "listen": ["udp://h:1", "http://0.0.0.0:1"], "nodes": [], "max_message": 10})
        ),
        ["listen", "listen", "nodes", "max_message"]
    );
    assert_eq!(
        fields(json!({"function": "f", "kind": "syslog", "listen": "tcp://0.0.0.0:1", "nodes": "some"})),
        ["nodes"]
    );
    assert_eq!(
        fields(json!({"function": "f", "kind": "syslog", "listen": "tls://0.0.0.0:6514"})),
        ["tls"]
    );
    assert_eq!(
        fields(json!({"function": "f", "kind": "syslog", "listen": "tcp://0.0.0.0:1",
            "tls": {"cert_file": "c.pem", "key_file": "k.pem"}})),
        ["tls"]
    );
    let t = TriggerSpec::parse(
        &json!({"function": "f", "kind": "syslog", "listen": "tls://0.0.0.0:6514",
        "tls": {"cert_file": "/etc/evoke/syslog.crt", "key_file": "/etc/evoke/syslog.key"}}),
    )
    .unwrap();
    assert_eq!(TriggerSpec::parse(&t.to_value()).unwrap(), t, "round trip");
}

async fn frames(input: &[u8], max: usize) -> Vec<Frame> {
    let mut f = Frames::new(input, max);
    let mut out = vec![];
    while let Some(frame) = f.next().await.unwrap() {
        out.push(frame);
    }
    out
}

fn whole(s: &str) -> Frame {
    Frame {
        bytes: s.as_bytes().to_vec(),
        truncated: false,
    }
}

#[tokio::test]
async fn tcp_frames_are_octet_counted_or_newline_terminated_per_frame() {
    let input = b"<13>1 - - - - - - one\n11 <13>Feb two<14>newline three\n12 <13>with\nnl!";
    assert_eq!(
        frames(input, 1024).await,
        [
            whole("<13>1 - - - - - - one"),
            whole("<13>Feb two"),
            whole("<14>newline three"),
            whole("<13>with\nnl!"),
        ]
    );
    // The last line needs no newline.
    assert_eq!(frames(b"<13>a\n<13>b", 1024).await, [whole("<13>a"), whole("<13>b")]);
}

#[tokio::test]
async fn long_frames_are_cut_and_marked_and_the_stream_goes_on() {
    let long = "x".repeat(50);
    // (A newline after an octet-counted frame is an empty line: skipped.)
    let input = format!("<13>{long}\n54 <13>{long}\n<13>short\n");
    let out = frames(input.as_bytes(), 20).await;
    assert_eq!(out.len(), 3);
    assert!(out[0].truncated && out[0].bytes.len() == 20);
    assert!(out[1].truncated && out[1].bytes.len() == 20);
    assert_eq!(out[2], whole("<13>short"));
}

#[tokio::test]
async fn a_bad_octet_count_ends_the_connection() {
    let mut f = Frames::new(&b"12x <13>a"[..], 1024);
    assert!(f.next().await.is_err());
    let mut f = Frames::new(&b"99 <13>short"[..], 1024);
    assert!(f.next().await.is_err(), "a frame cut by the end of the stream");
}

#[test]
fn a_message_carries_its_fields_and_origin() {
    let peer: SocketAddr = "10.0.0.7:40000".parse().unwrap();
    let m = message(
        b"<165>1 2003-10-11T22:14:15.003Z web1 nginx 42 - - GET /\n",
        peer,
        "tcp",
        false,
    );
    let body: Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(body["severity"], 5);
    assert_eq!(body["facility"], 20);
    assert_eq!(body["app_name"], "nginx");
    assert_eq!(body["message"], "GET /");
    assert_eq!(body["peer"], "10.0.0.7:40000");
    assert!(body["raw"].as_str().unwrap().starts_with("<165>1"));
    assert_eq!(m.subject.as_deref(), Some("nginx"));
    assert_eq!(m.key.as_deref(), Some("web1"));
    let origin: std::collections::HashMap<_, _> = m.origin.iter().cloned().collect();
    assert_eq!(origin["evokesyslogseverity"], "5");
    assert_eq!(origin["evokesyslogapp"], "nginx");
    assert_eq!(origin["evokesyslogtransport"], "tcp");
    // Not syslog at all: delivered with the reason, keyed by the peer.
    let m = message(b"hello", peer, "udp", true);
    let body: Value = serde_json::from_slice(&m.body).unwrap();
    assert!(body["parse_error"].is_string());
    assert_eq!(body["message"], "hello");
    assert_eq!(body["truncated"], true);
    assert_eq!(m.key.as_deref(), Some("10.0.0.7"));
}
