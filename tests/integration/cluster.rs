//! Drills on a real cluster: three nats-servers with routes, three `evoke
//! serve` processes, a steady load of async invocations with sequence
//! numbers, and one failure at a time (a node killed, a NATS server killed
//! for good, a node cut off, a rolling restart). After each: every accepted
//! invocation ran, none twice except where a redelivery is recorded.
//!
//! The default suite runs a short version of each (a few hundred events);
//! `scripts/test --long` (EVOKE_LONG_TESTS=1) runs thousands.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{EvokeProcess, NatsCluster, connect_any, example, stream_leader};

/// Events in one drill, and how many per second.
fn load() -> (usize, u64) {
    if std::env::var("EVOKE_LONG_TESTS").is_ok_and(|v| v == "1") {
        (3000, 300)
    } else {
        (300, 100)
    }
}

/// What the load saw: per sequence number, the invocation id (202) or the
/// status of a refusal.
#[derive(Default)]
struct Sent {
    accepted: BTreeMap<u64, String>,
    refused: Vec<(u64, String)>,
}

/// Sends `n` async invocations of `function` at `rate`/s, round robin over
/// the nodes whose base URL `targets` returns at that moment.
async fn send_load(n: usize, rate: u64, function: &str, targets: impl Fn() -> Vec<String>) -> Sent {
    let path = format!("/v1/functions/{function}/invoke");
    send_load_to(n, rate, move |_| path.clone(), targets).await
}

/// Like [`send_load`], to the path `path(seq)` (an invoke or a webhook).
async fn send_load_to(n: usize, rate: u64, path: impl Fn(u64) -> String, targets: impl Fn() -> Vec<String>) -> Sent {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let sent = Arc::new(Mutex::new(Sent::default()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut tasks = Vec::new();
    for seq in 0..n as u64 {
        tick.tick().await;
        let bases = targets();
        let base = bases[seq as usize % bases.len()].clone();
        let (http, sent, path) = (http.clone(), sent.clone(), path(seq));
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .header("x-evoke-invocation-type", "async")
                .body(json!({ "seq": seq }).to_string())
                .send()
                .await;
            let mut sent = sent.lock().unwrap();
            match resp {
                Ok(r) if r.status() == StatusCode::ACCEPTED => {
                    let id = r.headers()["x-evoke-invocation-id"].to_str().unwrap().to_string();
                    sent.accepted.insert(seq, id);
                }
                Ok(r) => sent.refused.push((seq, r.status().to_string())),
                Err(e) => sent.refused.push((seq, format!("no answer: {e}"))),
            }
        }));
    }
    futures::future::join_all(tasks).await;
    Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap()
}

/// `GET /v1/status` of the node at `base`.
async fn status_of(base: &str) -> Value {
    reqwest::get(format!("{base}/v1/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every request the load did not get a 202 for failed with `why` (a node
/// that was down: "no answer"; NATS electing: "503"), never otherwise.
fn refused_only_for(sent: &Sent, why: &str) {
    let other: Vec<_> = sent.refused.iter().filter(|(_, w)| !w.contains(why)).collect();
    assert!(other.is_empty(), "refused for another reason than {why}: {other:?}");
}

/// Sets up the function `seq` (hello, results stored in stream RAN) on a
/// cluster through `base`.
async fn deploy_seq(base: &str, nats: &str) {
    let client = connect_any(nats).await;
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "RAN".into(),
        subjects: vec!["ran.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let resp = reqwest::Client::new()
        .put(format!("{base}/v1/functions/seq"))
        .query(&[("on_success", "jetstream:ran.seq"), ("max_instances", "20")])
        .body(example("hello"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
}

/// How many times each invocation's result reached stream RAN (retrying
/// while the stream elects a leader).
async fn results(nats: &str) -> HashMap<String, usize> {
    let client = connect_any(nats).await;
    let js = async_nats::jetstream::new(client);
    let start = Instant::now();
    loop {
        match read_results(&js).await {
            Ok(out) => return out,
            Err(e) if start.elapsed() < Duration::from_secs(60) => {
                eprintln!("reading results: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cannot read results: {e}"),
        }
    }
}

async fn read_results(js: &async_nats::jetstream::Context) -> Result<HashMap<String, usize>, String> {
    let mut stream = js.get_stream("RAN").await.map_err(|e| e.to_string())?;
    let total = stream.info().await.map_err(|e| e.to_string())?.state.messages;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for _ in 0..total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| "a result did not arrive".to_string())?
            .ok_or("the consumer ended")?
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        *out.entry(v["data"]["invocation"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    Ok(out)
}

/// The scheduled times (Unix ms) of the cron ticks whose results reached
/// stream RAN, in order.
async fn cron_ticks(nats: &str) -> Vec<i64> {
    let client = connect_any(nats).await;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("RAN").await.unwrap();
    let total = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ticks = Vec::new();
    for _ in 0..total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let request = &v["data"]["request"];
        if request["type"] == "evoke.cron.tick" {
            let at = chrono::DateTime::parse_from_rfc3339(request["evokescheduled"].as_str().unwrap()).unwrap();
            ticks.push(at.timestamp_millis());
        }
    }
    ticks.sort();
    ticks
}

/// Every accepted invocation ran (its record says succeeded) and its result
/// was delivered at least once; more than once only if its record shows a
/// redelivery.
async fn check_every_accepted_ran(base: &str, nats: &str, sent: &Sent) {
    assert!(!sent.accepted.is_empty(), "nothing was accepted");
    let http = reqwest::Client::new();
    let start = Instant::now();
    let mut records = HashMap::new();
    for (seq, id) in &sent.accepted {
        loop {
            let r: Value = http
                .get(format!("{base}/v1/invocations/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(Value::Null);
            if r["status"] == "succeeded" {
                records.insert(id.clone(), r);
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "event {seq} ({id}) accepted but never ran: {r}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let ran = results(nats).await;
    for (seq, id) in &sent.accepted {
        let n = ran.get(id).copied().unwrap_or(0);
        assert!(n >= 1, "event {seq} ({id}) ran but its result is missing");
        let attempts = records[id]["attempts"].as_array().map_or(0, Vec::len);
        assert!(
            n == 1 || attempts > 1,
            "event {seq} ran {n} times with one attempt recorded: {:#}",
            records[id]
        );
    }
}

fn three_nodes(cluster: &NatsCluster, extra: &[&str]) -> Vec<EvokeProcess> {
    ["e1", "e2", "e3"]
        .iter()
        .map(|n| EvokeProcess::start(n, &cluster.urls(), extra))
        .collect()
}

fn bases(nodes: &[EvokeProcess]) -> Vec<String> {
    nodes.iter().filter(|n| n.is_up()).map(EvokeProcess::base).collect()
}

/// The API addresses of the nodes that are up, shared between the load and
/// whoever stops and starts nodes.
type Live = Arc<Mutex<Vec<Option<String>>>>;

fn live(nodes: &[EvokeProcess]) -> Live {
    Arc::new(Mutex::new(nodes.iter().map(|n| Some(n.base())).collect()))
}

fn up(live: &Live) -> Vec<String> {
    live.lock().unwrap().iter().flatten().cloned().collect()
}

/// An evoke node `kill -9`ed under load and restarted: nothing accepted is
/// lost; its in-flight events run elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing() {
    let cluster = NatsCluster::start(3);
    let mut nodes = three_nodes(&cluster, &[]);
    let first = nodes[0].base();
    deploy_seq(&first, &cluster.urls()).await;
    let (n, rate) = load();
    let live = live(&nodes);
    let mut victim = nodes.remove(1);
    let killer = {
        let live = live.clone();
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(n as u64 * 1000 / rate / 3));
            live.lock().unwrap()[1] = None;
            victim.kill();
            std::thread::sleep(Duration::from_secs(1));
            victim.restart();
            live.lock().unwrap()[1] = Some(victim.base());
            victim
        })
    };
    let targets = {
        let live = live.clone();
        move || up(&live)
    };
    let sent = send_load(n, rate, "seq", targets).await;
    let _victim = killer.await.unwrap();
    refused_only_for(&sent, "no answer");
    check_every_accepted_ran(&first, &cluster.urls(), &sent).await;
}

/// The server leading EVOKE_EVENTS is `kill -9`ed under load and never
/// comes back: the queue drains on the two left; every request during the
/// election got a 202 (and ran) or a clear 503, never a 202 for a lost event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_lost_for_good_loses_nothing() {
    let mut cluster = NatsCluster::start(3);
    let nodes = three_nodes(&cluster, &[]);
    let first = nodes[0].base();
    deploy_seq(&first, &cluster.urls()).await;
    let status: Value = status_of(&first).await;
    assert_eq!(
        status["replicas"], 3,
        "replicated by default on a 3-server cluster: {status}"
    );
    assert!(
        status["streams"].as_array().unwrap().iter().all(|s| s["replicas"] == 3),
        "{status}"
    );

    // A cron trigger fires on every node (one event per tick), and every
    // tenth request of the load is a webhook, to any node.
    let http = reqwest::Client::new();
    for (name, spec) in [
        (
            "tick",
            json!({"function":"seq","kind":"cron","schedule":"@every 1s","payload":{"name":"cron"}}),
        ),
        ("hook", json!({"function":"seq","kind":"webhook"})),
    ] {
        let resp = http
            .put(format!("{first}/v1/triggers/{name}"))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    }
    let client = connect_any(&cluster.urls()).await;
    let leader = stream_leader(&client, evoke::bus::STREAM_EVENTS)
        .await
        .expect("a leader");
    let victim = cluster.index(&leader);
    let (n, rate) = load();
    let all = bases(&nodes);
    let path = |seq: u64| {
        if seq.is_multiple_of(10) {
            "/hooks/hook".to_string()
        } else {
            "/v1/functions/seq/invoke".to_string()
        }
    };
    let load = tokio::spawn(send_load_to(n, rate, path, move || all.clone()));
    tokio::time::sleep(Duration::from_millis(n as u64 * 1000 / rate / 3)).await;
    tokio::task::block_in_place(|| cluster.kill(victim));
    let killed_at = chrono::Utc::now().timestamp_millis();
    let sent = load.await.unwrap();
    refused_only_for(&sent, "503");
    let survivor = (0..3).find(|i| *i != victim).unwrap();
    check_every_accepted_ran(&first, &cluster.url(survivor), &sent).await;
    // The cron source holds the tick the election refused and retries it
    // (backoff up to 10 s): wait until ticks scheduled after the kill ran,
    // however long the election took on a busy machine.
    let url = cluster.url(survivor);
    crate::common::eventually(Duration::from_secs(90), "cron ticks after the kill", || {
        let url = url.clone();
        async move {
            let ticks = cron_ticks(&url).await;
            (ticks.iter().filter(|t| **t > killed_at + 1000).count() >= 2).then_some(())
        }
    })
    .await;
    // A 503 (with Retry-After) while a stream elects its leader is a fair
    // answer: try again, as a client should.
    let start = Instant::now();
    loop {
        let resp = http.delete(format!("{first}/v1/triggers/tick")).send().await.unwrap();
        if resp.status().is_success() {
            break;
        }
        assert_eq!(
            resp.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            resp.text().await.unwrap()
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the trigger was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let logs = || {
        let dlq = std::thread::spawn({
            let url = format!("{first}/v1/functions/seq/dlq");
            move || reqwest::blocking::get(url).and_then(|r| r.text()).unwrap_or_default()
        })
        .join()
        .unwrap_or_default();
        let nodes = nodes
            .iter()
            .map(|n| {
                let log = n.log();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        ["tick", "cron", "registry", "WARN", "ERROR"]
                            .iter()
                            .any(|w| l.contains(w))
                    })
                    .collect();
                // The newest lines: CI shows only part of a long failure.
                let recent = &lines[lines.len().saturating_sub(30)..];
                format!("--- {}:\n{}", n.name, recent.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!("dead letters: {dlq}\n{nodes}")
    };
    // Let the last ticks run (some waited out the election in the queue):
    // until the queue is empty and the ticks seen stop changing.
    let start = Instant::now();
    let mut ticks = Vec::new();
    let mut stable = 0;
    let mut seen = Vec::new();
    while stable < 3 {
        let status: Value = status_of(&first).await;
        let queued = status["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "seq")
            .unwrap()["queued"]
            .as_u64()
            .unwrap();
        let now = cron_ticks(&cluster.url(survivor)).await;
        stable = if queued == 0 && now == ticks { stable + 1 } else { 0 };
        seen.push((queued, now.len()));
        ticks = now;
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "seq never settled; the nodes' logs:\n{}\n(queued, ticks) every 500 ms, the last 20: {:?}; last status: {status}",
            logs(),
            &seen[seen.len().saturating_sub(20)..]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ticks.len() >= 3, "{ticks:?}\n{}", logs());
    let span = (ticks.last().unwrap() - ticks.first().unwrap()) / 1000 + 1;
    assert_eq!(
        ticks.len() as i64,
        span,
        "a tick missing or doubled: {ticks:?}\n{}",
        logs()
    );

    let status: Value = status_of(&first).await;
    let events = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == evoke::bus::STREAM_EVENTS)
        .unwrap()
        .clone();
    assert_ne!(events["leader"], leader.as_str(), "a new leader took over: {events}");
    assert!(
        status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(&leader)),
        "status names the lost server: {status}"
    );

    // A replacement server on the old name and store rejoins, and the
    // streams are whole again (every replica current).
    tokio::task::block_in_place(|| cluster.restart(victim));
    let start = Instant::now();
    loop {
        let status: Value = status_of(&first).await;
        let whole = status["streams"].as_array().unwrap().iter().all(|s| {
            s["peers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["current"] == true && p["offline"] == false)
        });
        if whole {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the server never caught up: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A TCP proxy one node reaches NATS through, which a test can cut (a
/// network partition of that node) and heal.
struct Partition {
    cut: Arc<std::sync::atomic::AtomicBool>,
    pub ports: Vec<u16>,
}

impl Partition {
    fn new(targets: &[u16]) -> Partition {
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut ports = Vec::new();
        for &target in targets {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            ports.push(listener.local_addr().unwrap().port());
            let cut = cut.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if cut.load(std::sync::atomic::Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        let cut = cut.clone();
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16384];
                            use std::io::{Read, Write};
                            from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                            loop {
                                if cut.load(std::sync::atomic::Ordering::SeqCst) {
                                    let _ = from.shutdown(std::net::Shutdown::Both);
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                match from.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if to.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                }
            });
        }
        Partition { cut, ports }
    }

    fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn set(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One node cut off from NATS while it runs events: they are redelivered to
/// the others after the ack wait and all complete; healed, it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_hands_its_events_over_and_rejoins() {
    let cluster = NatsCluster::start(3);
    let ports: Vec<u16> = (0..3)
        .map(|i| cluster.url(i).rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let partition = Partition::new(&ports);
    let a = EvokeProcess::start("whole", &cluster.urls(), &[]);
    let cut_off = EvokeProcess::start("cut", &partition.urls(), &["--nats-ignore-discovered"]);
    deploy_seq(&a.base(), &cluster.urls()).await;
    // A slow twin of `seq`, so the cut node holds events in flight.
    let resp = reqwest::Client::new()
        .put(format!("{}/v1/functions/slowseq", a.base()))
        .query(&[
            ("on_success", "jetstream:ran.slow"),
            ("timeout", "10s"),
            ("max_instances", "4"),
        ])
        .body(crate::common::busy_module(1000))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    // Wait until both nodes have a consumer ready (they beat into status).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bases = vec![a.base()];
    let sent = send_load(24, 50, "slowseq", move || bases.clone()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    partition.set(true);
    check_every_accepted_ran(&a.base(), &cluster.urls(), &sent).await;
    let status: Value = status_of(&a.base()).await;
    let ran_on: Vec<String> = {
        let mut nodes = Vec::new();
        for id in sent.accepted.values() {
            let r: Value = reqwest::get(format!("{}/v1/invocations/{id}", a.base()))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for at in r["attempts"].as_array().unwrap() {
                nodes.push(at["node"].as_str().unwrap_or("").to_string());
            }
        }
        nodes
    };
    let redelivered = ran_on.len() > sent.accepted.len();
    assert!(
        ran_on.iter().any(|n| n == "cut") && redelivered,
        "the cut node held events when it was cut, and they ran elsewhere: {ran_on:?}"
    );
    assert!(status["nodes"].is_array());

    partition.set(false);
    // Healed: the node answers from NATS again (its API queues events).
    let start = Instant::now();
    loop {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/functions/seq/invoke", cut_off.base()))
            .header("x-evoke-invocation-type", "async")
            .body("{}")
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the healed node never rejoined"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(cut_off);
}

/// All three nodes restarted one by one under load: no accepted event is
/// lost, and sync invocations keep being answered by the nodes that are up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_nothing_and_keeps_answering() {
    let cluster = NatsCluster::start(3);
    let nodes = three_nodes(&cluster, &[]);
    let first = nodes[0].base();
    deploy_seq(&first, &cluster.urls()).await;
    let (n, rate) = load();
    let live = live(&nodes);
    let roller = {
        let live = live.clone();
        tokio::task::spawn_blocking(move || {
            let mut nodes = nodes;
            for (i, node) in nodes.iter_mut().enumerate() {
                std::thread::sleep(Duration::from_millis(n as u64 * 1000 / rate / 5));
                live.lock().unwrap()[i] = None;
                node.stop();
                node.restart();
                live.lock().unwrap()[i] = Some(node.base());
            }
            nodes
        })
    };
    let sync_ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sync_failed = Arc::new(Mutex::new(Vec::new()));
    let prober = {
        let (live, ok, failed) = (live.clone(), sync_ok.clone(), sync_failed.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..(n / 10) {
                let nodes = up(&live);
                let base = &nodes[i % nodes.len()];
                match http
                    .post(format!("{base}/v1/functions/seq/invoke"))
                    .body(r#"{"name":"probe"}"#)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => {
                        ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(r) => failed.lock().unwrap().push(r.status().to_string()),
                    // The node went down between the look-up and the call.
                    Err(e) if e.is_connect() => {}
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let targets = {
        let live = live.clone();
        move || up(&live)
    };
    let sent = send_load(n, rate, "seq", targets).await;
    let _nodes = roller.await.unwrap();
    prober.await.unwrap();
    assert!(
        sync_failed.lock().unwrap().is_empty(),
        "sync calls failed: {:?}",
        sync_failed.lock().unwrap()
    );
    assert!(sync_ok.load(std::sync::atomic::Ordering::SeqCst) > 0);
    refused_only_for(&sent, "no answer");
    check_every_accepted_ran(&first, &cluster.urls(), &sent).await;
}

/// A singleton source runs on one node at a time through KV leases; when
/// its holder dies without a word, another node takes over within the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_moves_to_another_node_when_its_holder_dies() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let nats = crate::common::Nats::start();
    let (a, b) = (
        crate::common::TestNode::start(&nats.url()).await,
        crate::common::TestNode::start(&nats.url()).await,
    );
    let running: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let starts = Arc::new(AtomicU32::new(0));
    let contend = |node: &crate::common::TestNode| {
        let invoker = node.node.as_ref().unwrap().invoker.clone();
        let (running, starts) = (running.clone(), starts.clone());
        let (_tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _keep = _tx;
            let name = invoker.node.clone();
            evoke::sources::singleton(invoker, "poller.test".into(), rx, move |mut stop| {
                let (running, starts, name) = (running.clone(), starts.clone(), name.clone());
                async move {
                    starts.fetch_add(1, Ordering::SeqCst);
                    running.lock().unwrap().push(name.clone());
                    let _ = stop.wait_for(|s| *s).await;
                    running.lock().unwrap().retain(|n| *n != name);
                }
            })
            .await
        })
    };
    let task_a = contend(&a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let task_b = contend(&b);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(running.lock().unwrap().len(), 1, "one holder at a time");
    }
    let holder = running.lock().unwrap()[0].clone();
    let (dead, alive) = if holder == a.node.as_ref().unwrap().invoker.node {
        (task_a, task_b)
    } else {
        (task_b, task_a)
    };
    // The holder dies without releasing anything.
    dead.abort();
    running.lock().unwrap().clear();
    let start = Instant::now();
    while running.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < evoke::bus::LEASE_TTL * 2,
            "nobody took the lease over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(running.lock().unwrap()[0], holder);
    assert_eq!(starts.load(Ordering::SeqCst), 2);
    alive.abort();
    a.stop().await;
    b.stop().await;
}

/// State created R1 on a cluster is flagged by `evoke status`; a node
/// started with more replicas raises them, and never lowers them. A node
/// without an API still shows in the cluster with its roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_raised_never_lowered_and_r1_is_flagged() {
    let cluster = NatsCluster::start(3);
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = crate::common::config(&cluster.urls(), &dir);
    c.nats.replicas = Some(1);
    let single = crate::common::TestNode::with_config(c, dir).await;
    let (_, status) = single.get("/v1/status").await;
    assert!(
        status["streams"].as_array().unwrap().iter().all(|s| s["replicas"] == 1),
        "{status:#}"
    );
    let warnings = status["warnings"].to_string();
    assert!(warnings.contains("1 replica on a NATS cluster"), "{warnings}");

    let dir = tempfile::TempDir::new().unwrap();
    let mut c = crate::common::config(&cluster.urls(), &dir);
    c.nats.replicas = Some(3);
    c.api = false;
    c.node_name = "headless".into();
    let headless = evoke::node::Node::start(c).await.expect("a node without an API");

    // A later node asking for fewer replicas changes nothing.
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = crate::common::config(&cluster.urls(), &dir);
    c.nats.replicas = Some(1);
    let again = crate::common::TestNode::with_config(c, dir).await;
    let start = Instant::now();
    let status = loop {
        let (_, status) = again.get("/v1/status").await;
        let headless_seen = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "headless");
        if headless_seen {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the headless node never beat: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        status["streams"].as_array().unwrap().iter().all(|s| s["replicas"] == 3),
        "raised to 3 and kept: {status:#}"
    );
    assert!(!status["warnings"].to_string().contains("1 replica"), "{status:#}");
    let node = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "headless")
        .unwrap()
        .clone();
    assert_eq!(node["roles"], json!({"api": false, "workers": true, "sources": true}));
    assert!(node["address"].is_null());
    headless.stop().await;
    single.stop().await;
    again.stop().await;
}

/// A registry's watch is checked against its bucket as the stream's leader
/// sees it now: changes written through another connection after the
/// registry opened its store are counted. (The check once read the stream
/// info cached when the store was opened, so a stalled watch was never
/// noticed, and a node kept running a deleted cron trigger.)
#[tokio::test]
async fn a_registry_sees_its_bucket_as_it_is_now() {
    use async_nats::jetstream;
    use evoke::registry::BucketState;
    use evoke::registry::triggers::{StoredTrigger, TriggerRegistry};

    let nats = crate::common::Nats::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let config = jetstream::kv::Config {
        bucket: "T".into(),
        history: 1,
        ..Default::default()
    };
    let registry = TriggerRegistry::new(js.create_key_value(config).await.unwrap());
    let before = registry.bucket_state().await.unwrap();
    assert_eq!(
        before,
        BucketState {
            entries: 0,
            revision: 0
        }
    );

    let other = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let kv = other.get_key_value("T").await.unwrap();
    let trigger = |name: &str| {
        serde_json::to_vec(&StoredTrigger {
            name: name.into(),
            spec: json!({"function": "f", "kind": "webhook"}),
            updated_at: chrono::Utc::now(),
            revision: 0,
        })
        .unwrap()
    };
    kv.put("a", trigger("a").into()).await.unwrap();
    kv.put("b", trigger("b").into()).await.unwrap();
    kv.delete("a").await.unwrap();
    assert_eq!(
        registry.bucket_state().await.unwrap(),
        BucketState {
            entries: 2,
            revision: 3
        },
        "b, and a's deletion marker, at revision 3"
    );
}
