//! Log streams: syslog sent by real senders no one here wrote (util-linux
//! `logger`) and by plain sockets, over UDP and TCP, against a real node.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use evoke::cli::nats::free_port;
use serde_json::{Value, json};

use super::common::{Nats, Results, TestNode, print_module};

/// Runs util-linux `logger` with `args`, panicking when it fails.
fn logger(args: &[&str]) {
    let out = Command::new("logger")
        .args(args)
        .output()
        .expect("util-linux logger (Debian's bsdutils)");
    assert!(
        out.status.success(),
        "logger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node with function `sink` whose results are stored in stream
/// `RESULTS` (read with a durable consumer: nothing is missed across a NATS
/// restart), and a syslog trigger on a UDP and a TCP port.
struct Setup {
    nats: Nats,
    node: TestNode,
    udp: u16,
    tcp: u16,
    results: Results,
}

async fn setup(extra: Value) -> Setup {
    let nats = Nats::start();
    let node = TestNode::start(&nats.url()).await;
    let results = Results::create(&nats.url()).await;
    node.deploy_ok(
        "sink",
        &print_module("ok"),
        &[("on_success", "jetstream:results.syslog")],
    )
    .await;
    let (udp, tcp) = (free_port().unwrap(), free_port().unwrap());
    let mut trigger = json!({"kind": "syslog", "function": "sink",
        "listen": [format!("udp://127.0.0.1:{udp}"), format!("tcp://127.0.0.1:{tcp}")],
        "batch": {"max_records": 50, "max_wait": "300ms"}});
    for (k, v) in extra.as_object().unwrap() {
        trigger[k] = v.clone();
    }
    let (status, body) = node.put_trigger("syslog", trigger).await;
    assert!(status.is_success(), "{status} {body}");
    node.consuming("syslog").await;
    Setup {
        nats,
        node,
        udp,
        tcp,
        results,
    }
}

impl Setup {
    /// The records of the batches that ran, until `n` arrived (or 60 s).
    async fn records(&mut self, n: usize) -> Vec<Value> {
        let mut out = vec![];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while out.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} records arrived: {out:?}",
                out.len()
            );
            for v in self.results.fetch().await {
                take(&v, &mut out);
            }
        }
        out
    }
}

/// The records of one result (a batch that ran), each with its extensions.
fn take(v: &Value, out: &mut Vec<Value>) {
    let request = &v["data"]["request"];
    assert_eq!(request["type"], "evoke.syslog.batch", "{}", v["type"]);
    for e in request["data"].as_array().expect("a batch") {
        assert_eq!(e["type"], "evoke.syslog.message");
        let mut record = e["data"].clone();
        record["extensions"] = json!({
            "severity": e["evokesyslogseverity"], "app": e["evokesyslogapp"],
            "transport": e["evokesyslogtransport"],
        });
        out.push(record);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_from_logger_arrives_parsed_over_udp_and_tcp() {
    let mut s = setup(json!({})).await;
    let (udp, tcp) = (s.udp.to_string(), s.tcp.to_string());
    logger(&[
        "--rfc5424",
        "-n",
        "127.0.0.1",
        "-P",
        &udp,
        "-d",
        "-t",
        "web",
        "-p",
        "local0.warning",
        "--msgid",
        "ID7",
        "--sd-id",
        "origin@32473",
        "--sd-param",
        r#"ip="10.0.0.1""#,
        "udp 5424",
    ]);
    logger(&[
        "--rfc3164",
        "-n",
        "127.0.0.1",
        "-P",
        &tcp,
        "-T",
        "--octet-count",
        "-t",
        "cron",
        "-p",
        "user.info",
        "tcp 3164 counted",
    ]);
    logger(&[
        "--rfc5424",
        "-n",
        "127.0.0.1",
        "-P",
        &tcp,
        "-T",
        "-t",
        "app",
        "-p",
        "daemon.err",
        "tcp 5424 newline",
    ]);
    let records = s.records(3).await;
    let by_message: BTreeMap<String, Value> = records
        .iter()
        .map(|r| (r["message"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    let r = &by_message["udp 5424"];
    assert_eq!(
        (r["format"].as_str(), r["facility"].as_u64(), r["severity"].as_u64()),
        (Some("rfc5424"), Some(16), Some(4)),
        "{r}"
    );
    assert_eq!(r["app_name"], "web");
    assert_eq!(r["msg_id"], "ID7");
    assert_eq!(r["structured_data"]["origin@32473"]["ip"], "10.0.0.1", "{r}");
    assert!(r["timestamp"].is_string() && r["hostname"].is_string(), "{r}");
    assert_eq!(r["extensions"]["transport"], "udp");
    let r = &by_message["tcp 3164 counted"];
    assert_eq!(
        (r["format"].as_str(), r["facility"].as_u64(), r["severity"].as_u64()),
        (Some("rfc3164"), Some(1), Some(6)),
        "{r}"
    );
    assert_eq!(r["app_name"], "cron");
    assert_eq!(r["extensions"]["transport"], "tcp");
    let r = &by_message["tcp 5424 newline"];
    assert_eq!(
        (r["facility"].as_u64(), r["severity"].as_u64()),
        (Some(3), Some(3)),
        "{r}"
    );
    assert_eq!(r["extensions"]["app"], "app");
    for r in &records {
        assert!(r["parse_error"].is_null(), "{r}");
        assert!(r["raw"].as_str().unwrap().starts_with('<'), "{r}");
    }
    s.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_syslog_waits_out_a_nats_outage_and_loses_nothing() {
    let mut s = setup(json!({})).await;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", s.tcp)).unwrap();
    let send = |stream: &mut std::net::TcpStream, from: usize, to: usize| {
        let mut buf = Vec::new();
        for i in from..to {
            // Octet-counted and newline frames, mixed as RFC 6587 allows.
            let msg = format!("<14>1 2026-11-27T12:00:00Z host seq - - - line {i}");
            if i % 2 == 0 {
                buf.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
            } else {
                buf.extend_from_slice(msg.as_bytes());
                buf.push(b'\n');
            }
        }
        stream.write_all(&buf).unwrap();
    };
    send(&mut stream, 0, 100);
    let first = s.records(100).await;
    s.nats.stop();
    send(&mut stream, 100, 600);
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.nats.restart();
    let rest = s.records(500).await;
    let mut seen: Vec<usize> = first
        .iter()
        .chain(&rest)
        .map(|r| {
            assert!(r["parse_error"].is_null(), "{r}");
            r["message"]
                .as_str()
                .unwrap()
                .strip_prefix("line ")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    seen.sort();
    seen.dedup();
    let missing: Vec<usize> = (0..600).filter(|i| seen.binary_search(i).is_err()).collect();
    assert!(missing.is_empty(), "lines lost: {missing:?}");
    s.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_filters_on_severity_and_says_what_is_not_syslog() {
    let filter = json!({"extensions": {"evokesyslogseverity": ["0", "1", "2", "3", "4"]}});
    let mut s = setup(json!({"filter": filter, "max_message": "1Ki"})).await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = ("127.0.0.1", s.udp);
    socket
        .send_to(b"<14>Nov 27 11:00:00 h app: info, filtered out", to)
        .unwrap();
    socket.send_to(b"<11>Nov 27 11:00:01 h app: an error", to).unwrap();
    socket.send_to(b"not syslog at all", to).unwrap();
    socket
        .send_to(format!("<12>1 - h big - - - {}", "x".repeat(4000)).as_bytes(), to)
        .unwrap();
    // "not syslog" is user.notice (severity 5): filtered out too; send one that passes.
    socket.send_to(b"<8>garbage after a PRI", to).unwrap();
    let records = s.records(3).await;
    let messages: Vec<&str> = records.iter().map(|r| r["message"].as_str().unwrap()).collect();
    assert_eq!(messages[0], "an error");
    assert_eq!(records[1]["truncated"], true);
    assert_eq!(records[1]["raw"].as_str().unwrap().len(), 1024);
    assert_eq!(messages[2], "garbage after a PRI");
    assert!(records[2]["parse_error"].is_string(), "{}", records[2]);
    let c = s.node.consumer("syslog").await;
    assert_eq!(c["filtered"], 2, "{c}");
    assert_eq!(c["truncated"], 1, "{c}");
    s.node.stop().await;
}

/// RFC 5425: syslog over TLS with a certificate made by `openssl`, sent by
/// Python's `ssl` module; a trigger whose key file is missing says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_arrives_and_a_missing_key_is_reported() {
    let dir = tempfile::TempDir::new().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tls_port = free_port().unwrap();
    let tls = json!({"cert_file": cert.to_str().unwrap(), "key_file": key.to_str().unwrap()});
    let mut s = setup(json!({
        "listen": [format!("tls://127.0.0.1:{tls_port}")], "tls": tls,
    }))
    .await;
    const SEND: &str = r#"
import sys, socket, ssl
ctx = ssl.create_default_context(cafile=sys.argv[2])
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as raw:
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        for i in range(3):
            msg = f"<13>1 2026-11-27T12:00:00Z host app - - - secret {i}".encode()
            s.sendall(str(len(msg)).encode() + b" " + msg)
"#;
    super::brokers::python(SEND, &[&tls_port.to_string(), cert.to_str().unwrap()]);
    let records = s.records(3).await;
    let messages: Vec<&str> = records.iter().map(|r| r["message"].as_str().unwrap()).collect();
    assert_eq!(messages, ["secret 0", "secret 1", "secret 2"]);
    assert!(records.iter().all(|r| r["extensions"]["transport"] == "tls"));
    // A key file that is not there: the trigger says which, and keeps trying.
    let bad = json!({"kind": "syslog", "function": "sink", "listen": format!("tls://127.0.0.1:{}", free_port().unwrap()),
                     "tls": {"cert_file": cert.to_str().unwrap(), "key_file": "/nonexistent/key.pem"}});
    let (status, body) = s.node.put_trigger("bad-tls", bad).await;
    assert!(status.is_success(), "{status} {body}");
    super::common::eventually(Duration::from_secs(30), "the key file error shown", || async {
        let c = s.node.consumer("bad-tls").await;
        c["error"]
            .as_str()
            .is_some_and(|e| e.contains("/nonexistent/key.pem"))
            .then_some(())
    })
    .await;
    s.node.stop().await;
}

/// rsyslogd on a port of its own, forwarding everything it receives over
/// UDP to `target` over TCP (octet-counted RFC 5424, rsyslog's `omfwd`);
/// killed on drop.
struct Rsyslog {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Rsyslog {
    fn start(target: u16) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let conf = dir.path().join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{port}")
action(type="omfwd" target="127.0.0.1" port="{target}" protocol="tcp"
       TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
"#,
                work = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rsyslogd (Debian's rsyslog; scripts/setup installs it)");
        Rsyslog { child, port, _dir: dir }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A relay no one here wrote: `logger` → rsyslog (UDP) → evoke (TCP,
/// octet-counted RFC 5424, as rsyslog forwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_forwarding_arrives_parsed_over_tcp() {
    let mut s = setup(json!({})).await;
    let rsyslog = Rsyslog::start(s.tcp);
    let port = rsyslog.port.to_string();
    let send = |text: &str| {
        logger(&[
            "-n",
            "127.0.0.1",
            "-P",
            &port,
            "-d",
            "-t",
            "billing",
            "-p",
            "local3.err",
            text,
        ]);
    };
    // rsyslog takes a moment to listen: ping until something comes through.
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing came through rsyslog");
        send("ping");
        for v in s.results.fetch().await {
            take(&v, &mut out);
        }
    }
    for i in 0..3 {
        send(&format!("relayed {i}"));
    }
    let mut relayed = BTreeMap::new();
    while relayed.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relayed lines missing: {relayed:?}"
        );
        for v in s.results.fetch().await {
            take(&v, &mut out);
        }
        for r in &out {
            if let Some(m) = r["message"].as_str().filter(|m| m.starts_with("relayed")) {
                relayed.insert(m.to_string(), r.clone());
            }
        }
    }
    let r = &relayed["relayed 1"];
    assert_eq!(r["format"], "rfc5424", "{r}");
    assert_eq!(
        (r["facility"].as_u64(), r["severity"].as_u64()),
        (Some(19), Some(3)),
        "{r}"
    );
    assert_eq!(r["app_name"], "billing", "{r}");
    assert_eq!(r["extensions"]["transport"], "tcp");
    assert!(r["parse_error"].is_null() && r["timestamp"].is_string(), "{r}");
    drop(rsyslog);
    s.node.stop().await;
}
