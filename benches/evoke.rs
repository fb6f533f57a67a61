//! `cargo bench --bench evoke`: evoke against baselines measured in the same
//! run, printed as ratios. Starts its own nats-server (2.10+, found like
//! `evoke up` does) and evoke nodes in-process on free ports.
//!
//! Figures and the command are recorded in docs/benchmarks.md.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use chrono::Utc;
use evoke::cli::nats::{ManagedNats, find_server, free_port};
use evoke::executor::{Executor, ExecutorConfig};
use evoke::node::{Node, NodeConfig};
use evoke::registry::{DeployedFunction, FunctionSpec};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

const MSG: usize = 256;

fn examples(name: &str) -> Vec<u8> {
    let p = format!("{}/examples/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}; run scripts/build-examples"))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// CPU seconds used so far by this process (nodes and load) and by
/// nats-server: where an event's cost goes, read around each timed run.
#[derive(Clone, Copy)]
struct Cpu {
    own: f64,
    nats: f64,
    /// nats-server's read and write system calls so far.
    nats_io: (u64, u64),
}

/// What one event cost, on average over a run: µs of CPU of this process
/// and of nats-server, and nats-server's system calls (reads, writes):
/// fewer, larger reads mean the clients batched their writes.
#[derive(Clone, Copy)]
struct Used {
    own: f64,
    nats: f64,
    reads: f64,
    writes: f64,
}

impl Cpu {
    fn now(nats: u32) -> Cpu {
        Cpu {
            own: cpu_of(std::process::id()),
            nats: cpu_of(nats),
            nats_io: syscalls_of(nats),
        }
    }

    /// What each of `n` events cost since `self`.
    fn per_event(self, nats: u32, n: usize) -> Used {
        let now = Cpu::now(nats);
        let per = |a: f64, b: f64| (b - a) * 1e6 / n as f64;
        let calls = |a: u64, b: u64| b.saturating_sub(a) as f64 / n as f64;
        Used {
            own: per(self.own, now.own),
            nats: per(self.nats, now.nats),
            reads: calls(self.nats_io.0, now.nats_io.0),
            writes: calls(self.nats_io.1, now.nats_io.1),
        }
    }
}

/// A process's read and write system calls so far (`syscr`, `syscw` of
/// /proc/<pid>/io; zeros where it cannot be read).
fn syscalls_of(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name| proc_field(&io, name).and_then(|v| v.parse().ok()).unwrap_or(0);
    (field("syscr"), field("syscw"))
}

/// The value of `name` in a /proc file of `name: value` lines, trimmed.
fn proc_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// CPU seconds (user + system) of a process, from /proc (10 ms ticks).
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th (the state, 1st, is not a number: no
    // field may be skipped).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => 0.0,
    }
}

/// The CPU line under a throughput row: µs per event, evoke's run and its
/// baseline's, split between this process and nats-server; then
/// nats-server's read and write system calls per event.
fn cpu_row(baseline: Used, evoke: Used) {
    println!(
        "{:<60} baseline {:>5.1} + {:>5.1} us   evoke {:>5.1} + {:>5.1} us   (this process + nats-server)",
        "  cpu per event", baseline.own, baseline.nats, evoke.own, evoke.nats
    );
    println!(
        "{:<60} baseline {:>5.2} / {:>5.2}      evoke {:>5.2} / {:>5.2}      (nats-server reads / writes)",
        "  syscalls per event", baseline.reads, baseline.writes, evoke.reads, evoke.writes
    );
}

fn row(name: &str, baseline: f64, evoke: f64, unit: &str) {
    println!(
        "{name:<60} baseline {baseline:>12.1} {unit:<6} evoke {evoke:>12.1} {unit:<6} ratio {:.2}",
        evoke / baseline
    );
}

/// How many times evoke's ingest and its baselines run, in turns.
const INGEST_ROUNDS: usize = 3;

/// Throughput runs of one side (events/s and CPU per event each), taken in
/// turns with the other side's.
#[derive(Default)]
struct Runs(Vec<(f64, Used)>);

impl Runs {
    fn push(&mut self, run: (f64, Used)) {
        self.0.push(run);
    }

    fn median_of(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn median(&self) -> f64 {
        Runs::median_of(self.0.iter().map(|r| r.0).collect())
    }

    /// The median of each cost per event.
    fn cpu(&self) -> Used {
        let median = |of: fn(&Used) -> f64| Runs::median_of(self.0.iter().map(|r| of(&r.1)).collect());
        Used {
            own: median(|u| u.own),
            nats: median(|u| u.nats),
            reads: median(|u| u.reads),
            writes: median(|u| u.writes),
        }
    }

    fn rates(&self) -> String {
        let rates: Vec<String> = self.0.iter().map(|r| format!("{:.0}", r.0)).collect();
        rates.join(" ")
    }
}

/// The runs under a row whose figures are medians.
fn runs_row(baseline: &Runs, evoke: &Runs) {
    println!(
        "{:<60} baseline {}   evoke {}   (msg/s, in turns; medians above)",
        "  runs",
        baseline.rates(),
        evoke.rates()
    );
}

/// The number after `name` on the command line (`--events 200000`).
fn flag(name: &str) -> Option<usize> {
    std::env::args().skip_while(|a| a != name).nth(1)?.parse().ok()
}

/// Reads a response to its end, as a client that keeps its connection
/// does, and checks its status. evoke's answers have bodies and the
/// bridge's 202 has none: reading every body keeps the load the same on
/// both sides (an HTTP client may give up a connection whose answer was
/// dropped unread).
async fn read_ok(r: reqwest::Response, ok: fn(&reqwest::StatusCode) -> bool, what: &str) -> anyhow::Result<()> {
    let status = r.status();
    let body = r.bytes().await?;
    anyhow::ensure!(ok(&status), "{what}: {status} {}", String::from_utf8_lossy(&body));
    Ok(())
}

fn accepted(s: &reqwest::StatusCode) -> bool {
    *s == reqwest::StatusCode::ACCEPTED
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = flag("--events").unwrap_or(if quick { 2_000 } else { 20_000 });
    let dir = tempfile::TempDir::new()?;
    let nats = ManagedNats::start(&find_server()?, &dir.path().join("nats"), free_port()?)?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client.clone());
    println!(
        "evoke benchmarks ({} events per throughput run, {MSG}-byte payloads)\n",
        n
    );

    // 1. Ingest: raw pipelined publish+ack vs evoke async invoke over HTTP.
    js.create_stream(stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        ..Default::default()
    })
    .await?;
    let payload = Bytes::from(vec![b'x'; MSG]);
    let start = Instant::now();
    publish_all(&js, n, &payload, |_| "raw.a".into()).await?;
    let raw_pub = n as f64 / start.elapsed().as_secs_f64();

    let ingest_dir = tempfile::TempDir::new()?;
    let mut cfg = NodeConfig::new("127.0.0.1:0".parse()?, &nats.url(), ingest_dir.path().into());
    cfg.workers = false;
    let ingest = Node::start(cfg).await?;
    let base = format!("http://{}", ingest.addr);
    let http = reqwest::Client::new();
    let wasm = examples("counter");
    let resp = http
        .put(format!("{base}/v1/functions/noop?max_instances=64"))
        .header("content-type", "application/wasm")
        .body(wasm)
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "deploy failed: {}", resp.text().await?);
    let body = "x".repeat(MSG);
    let nats_pid = nats.pid();
    let invoke_url = format!("{base}/v1/functions/noop/invoke");
    // The work-queue bridge stores as evoke's queue does: a subject per
    // event (how `GET /v1/invocations/{id}` finds a queued one) on a
    // work-queue stream, with a consumer filtering it.
    let wq = work_queue(&js, "BRIDGEWQ", "bridgewq.>").await?;
    wq.create_consumer(pull::Config {
        durable_name: Some("bridgewq".into()),
        filter_subject: "bridgewq.f.>".into(),
        ..Default::default()
    })
    .await?;
    // Throughput here drifts by 15% and more from one second to the next
    // (two cores shared by the load, the server and nats-server): evoke and
    // its baselines take turns, and their medians are compared.
    let (mut evoke_ingest, mut axum_ingest, mut wq_ingest, mut as_evoke) =
        (Runs::default(), Runs::default(), Runs::default(), Runs::default());
    for _ in 0..INGEST_ROUNDS {
        let cpu = Cpu::now(nats_pid);
        let start = Instant::now();
        queue(&http, &invoke_url, &body, n).await?;
        evoke_ingest.push((n as f64 / start.elapsed().as_secs_f64(), cpu.per_event(nats_pid, n)));
        let bare = Bridge::Bare(|_| "raw.b".into());
        axum_ingest.push(bridge(&js, &http, &body, n, nats_pid, bare).await?);
        let wq = Bridge::Bare(|id| format!("bridgewq.f.{id}"));
        wq_ingest.push(bridge(&js, &http, &body, n, nats_pid, wq).await?);
        as_evoke.push(bridge(&js, &http, &body, n, nats_pid, Bridge::AsEvokeAnswers).await?);
    }
    // The end-to-end drain below takes `n` of these events.
    js.get_stream(evoke::bus::STREAM_EVENTS)
        .await?
        .purge()
        .filter("evoke.invoke.noop.>")
        .keep(n as u64)
        .await?;
    row(
        "ingest: JetStream publish+ack vs async invoke",
        raw_pub,
        evoke_ingest.median(),
        "msg/s",
    );
    for (name, baseline) in [
        ("ingest: axum+JetStream handler vs async invoke", &axum_ingest),
        ("ingest: the same, a subject per event on a work queue", &wq_ingest),
        ("ingest: the same, with evoke's ids, envelope and answer", &as_evoke),
    ] {
        row(name, baseline.median(), evoke_ingest.median(), "msg/s");
        runs_row(baseline, &evoke_ingest);
        cpu_row(baseline.cpu(), evoke_ingest.cpu());
    }

    // 2. End to end, as its baselines: a queue filled while no worker runs,
    //    then drained. The baselines pull the same number of messages from
    //    JetStream, run the same guest on each (components: one warm
    //    instance; WASI commands: a fresh pooled instance per event) and
    //    ack. evoke's node start-up is not timed: the clock starts at its
    //    first finished event.
    let raw_stream = js.get_stream("RAW").await?;
    let start = consume_all(&raw_stream, "raw", "raw.a", n).await?;
    let raw_consume = n as f64 / start.elapsed().as_secs_f64();
    // The same on a work-queue stream, as evoke's queue is: each ack
    // deletes the message (JetStream's own cost, at any client).
    let raw_wq = wq_consume(&js, n, &payload).await?;
    let counter = examples("counter");
    // The same storing an outcome record per event before its ack, in a
    // bucket configured as evoke's records are: what the must-keep
    // "acked only after its outcome is stored" costs any program.
    js.create_key_value(jetstream::kv::Config {
        bucket: "RAW_RECORDS".into(),
        history: 1,
        max_age: evoke::bus::RECORDS_MAX_AGE,
        ..Default::default()
    })
    .await?;
    // On a work-queue stream with a subject per event, as evoke's queue.
    let recorded_queue = work_queue(&js, "RECWQ", "recwq.>").await?;
    publish_all(&js, n, &payload, |i| format!("recwq.f.{i}")).await?;
    let (raw_recorded, raw_recorded_cpu) = raw_drain(
        &js,
        (&recorded_queue, "recwq.f.*"),
        "raw-recorded",
        n,
        &counter,
        Guest::ComponentRecorded,
        nats_pid,
    )
    .await?;
    // The same with the records of 64 events stored in one atomic batch
    // (nats-server 2.12+, `allow_atomic`): one ack per batch, not per record.
    js.create_key_value(jetstream::kv::Config {
        bucket: "RAW_BATCHED".into(),
        history: 1,
        max_age: evoke::bus::RECORDS_MAX_AGE,
        ..Default::default()
    })
    .await?;
    let mut batched = js.get_stream("KV_RAW_BATCHED").await?.info().await?.config.clone();
    batched.allow_atomic_publish = true;
    // A server before 2.12 ignores the setting: no such line then.
    let batched = if js.update_stream(batched).await?.config.allow_atomic_publish {
        publish_all(&js, n, &payload, |i| format!("recwq.b.{i}")).await?;
        let drained = raw_drain(
            &js,
            (&recorded_queue, "recwq.b.*"),
            "raw-batched",
            n,
            &counter,
            Guest::ComponentBatched,
            nats_pid,
        )
        .await?;
        Some(drained)
    } else {
        None
    };
    let (raw_warm, raw_warm_cpu) = raw_drain(
        &js,
        (&raw_stream, "raw.a"),
        "raw-warm",
        n,
        &counter,
        Guest::Component,
        nats_pid,
    )
    .await?;

    let rss_idle = rss_mb();
    let (evoke_e2e, rss_busy, evoke_e2e_cpu) = drain(&nats.url(), n, nats_pid).await?;
    row(
        "async: JetStream consume+ack vs end-to-end",
        raw_consume,
        evoke_e2e,
        "msg/s",
    );
    row(
        "async: consume+ack on a work-queue stream vs end-to-end",
        raw_wq,
        evoke_e2e,
        "msg/s",
    );
    row(
        "async: pull+warm call+ack vs end-to-end (component)",
        raw_warm,
        evoke_e2e,
        "msg/s",
    );
    cpu_row(raw_warm_cpu, evoke_e2e_cpu);
    row(
        "async: pull+warm call+outcome record+ack vs end-to-end",
        raw_recorded,
        evoke_e2e,
        "msg/s",
    );
    cpu_row(raw_recorded_cpu, evoke_e2e_cpu);
    if let Some((raw_batched, raw_batched_cpu)) = batched {
        row(
            "async: the same, records in atomic batches of 64",
            raw_batched,
            evoke_e2e,
            "msg/s",
        );
        cpu_row(raw_batched_cpu, evoke_e2e_cpu);
    }

    // The same with a WASI command (a fresh instance per event).
    let command = examples("echo-command");
    let resp = http
        .put(format!("{base}/v1/functions/noop-command?max_instances=64"))
        .header("content-type", "application/wasm")
        .body(command.clone())
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "deploy failed: {}", resp.text().await?);
    queue(&http, &format!("{base}/v1/functions/noop-command/invoke"), &body, n).await?;
    let (raw_fresh, raw_fresh_cpu) = raw_drain(
        &js,
        (&raw_stream, "raw.a"),
        "raw-fresh",
        n,
        &command,
        Guest::Command,
        nats_pid,
    )
    .await?;
    publish_all(&js, n, &payload, |i| format!("recwq.c.{i}")).await?;
    let (raw_fresh_recorded, raw_fresh_recorded_cpu) = raw_drain(
        &js,
        (&recorded_queue, "recwq.c.*"),
        "raw-fresh-recorded",
        n,
        &command,
        Guest::CommandRecorded,
        nats_pid,
    )
    .await?;
    let (evoke_cmd, _, evoke_cmd_cpu) = drain(&nats.url(), n, nats_pid).await?;
    row(
        "async: pull+fresh instance+ack vs end-to-end (WASI command)",
        raw_fresh,
        evoke_cmd,
        "msg/s",
    );
    cpu_row(raw_fresh_cpu, evoke_cmd_cpu);
    row(
        "async: pull+fresh instance+outcome record+ack vs end-to-end",
        raw_fresh_recorded,
        evoke_cmd,
        "msg/s",
    );
    cpu_row(raw_fresh_recorded_cpu, evoke_cmd_cpu);
    println!(
        "{:<60} {:>12.1} MB idle, {:.1} MB draining (this process: nodes and load)",
        "memory: resident set", rss_idle, rss_busy
    );

    // A node for the sync and sandbox lines.
    let worker_dir = tempfile::TempDir::new()?;
    let cfg = NodeConfig::new("127.0.0.1:0".parse()?, &nats.url(), worker_dir.path().into());
    let worker = Node::start(cfg).await?;

    // 3. Latency: bare axum echo vs evoke sync invoke, one request at a time.
    let app = axum::Router::new().route("/echo", axum::routing::post(|b: Bytes| async move { b }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo = format!("http://{}/echo", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let samples = if quick { 1_000 } else { 5_000 };
    let lat = |url: String, headers: Vec<(&'static str, &'static str)>| {
        let http = http.clone();
        let body = body.clone();
        async move {
            let mut v = Vec::with_capacity(samples);
            for i in 0..samples + 200 {
                let mut r = http.post(&url).body(body.clone());
                for (k, val) in &headers {
                    r = r.header(*k, *val);
                }
                let t = Instant::now();
                let resp = r.send().await?;
                anyhow::ensure!(resp.status().is_success(), "{}", resp.status());
                resp.bytes().await?;
                if i >= 200 {
                    v.push(t.elapsed());
                }
            }
            v.sort();
            Ok::<_, anyhow::Error>(v)
        }
    };
    let axum_lat = lat(echo, vec![]).await?;
    let sync_url = format!("http://{}/v1/functions/noop/invoke", worker.addr);
    let evoke_lat = lat(sync_url, vec![("content-type", "text/plain")]).await?;
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        row(
            &format!("sync latency {name}: axum echo vs invoke"),
            pct(&axum_lat, p).as_secs_f64() * 1e6,
            pct(&evoke_lat, p).as_secs_f64() * 1e6,
            "us",
        );
    }

    // The sync worker's node and the ingest node are not needed any more:
    // stopped, so their periodic work (heartbeats, metric refreshes, idle
    // pulls) does not run beside the sandbox's timings.
    worker.stop().await;
    ingest.stop().await;

    // 4. The sandbox: cold start from cached compiled code, and a warm call,
    //    against raw wasmtime doing the same through the same engine settings.
    let cache = tempfile::TempDir::new()?;
    // Code from the disk cache every time (as after a restart of the node):
    // no compiled code kept in memory.
    let mut disk_only = ExecutorConfig::new(cache.path().into());
    disk_only.code_memory_bytes = 0;
    let exec = Executor::new(disk_only, None, None)?;
    let code = Bytes::from(examples("counter"));
    // Enough rounds that a p99 is not the third-slowest of a few hundred.
    let rounds = if quick { 50 } else { 1000 };
    let noop = starts(&exec, "noop", &code, rounds, rounds * 10).await?;
    let raw = raw_wasmtime(&code, rounds as usize).await?;
    let us = |sorted: &[Duration], p| pct(sorted, p).as_secs_f64() * 1e6;
    row(
        "cold start p50 (load cached code+instantiate+init+call)",
        raw.cold,
        us(&noop.cold, 0.5),
        "us",
    );
    println!(
        "{:<44} {:>12.1} us",
        "  of which loading cached compiled code p50",
        us(&noop.load, 0.5)
    );
    row(
        "fresh instance p99 (first of just-loaded code)",
        raw.fresh.0,
        us(&noop.fresh, 0.99),
        "us",
    );
    row("fresh instance p50", raw.fresh.1, us(&noop.fresh, 0.5), "us");
    row(
        "further instance p99 (of loaded code: scaling out)",
        raw.further.0,
        us(&noop.further, 0.99),
        "us",
    );
    row("further instance p50", raw.further.1, us(&noop.further, 0.5), "us");
    row("warm invoke p50 (instance reused)", raw.warm, us(&noop.warm, 0.5), "us");
    // The interpreted languages, against the Rust hello example (same
    // measurement, same run): what CPython and StarlingMonkey cost.
    let hello = Bytes::from(examples("hello"));
    let rust = starts(&exec, "hello", &hello, 20, 200).await?;
    for lang in ["hello-python", "hello-js"] {
        let guest = starts(&exec, lang, &Bytes::from(examples(lang)), 20, 200).await?;
        row(
            &format!("{lang} cold start p50 (vs Rust hello)"),
            us(&rust.cold, 0.5),
            us(&guest.cold, 0.5),
            "us",
        );
        println!(
            "{:<60} load {:.0} us, instantiate {:.0} us, a further instance {:.0} us",
            "  of which",
            us(&guest.load, 0.5),
            us(&guest.fresh, 0.5),
            us(&guest.further, 0.5)
        );
        // A new version on a node that has the code in memory already.
        let mem_cache = tempfile::TempDir::new()?;
        let mem_exec = Executor::new(ExecutorConfig::new(mem_cache.path().into()), None, None)?;
        let new_version = starts(&mem_exec, lang, &Bytes::from(examples(lang)), 20, 0).await?;
        println!(
            "{:<60} {:.0} us",
            "  a new version, its code in memory (p50)",
            us(&new_version.cold, 0.5)
        );
        row(
            &format!("{lang} warm invoke p50 (vs Rust hello)"),
            us(&rust.warm, 0.5),
            us(&guest.warm, 0.5),
            "us",
        );
    }

    // 5. Many functions: deploy them, then start a node that has them all.
    let functions = flag("--functions").unwrap_or(if quick { 200 } else { 10_000 });
    // The ingest node started again on its data directory: its code cache
    // has the counter compiled, as the running node had before.
    let mut deploy_cfg = NodeConfig::new("127.0.0.1:0".parse()?, &nats.url(), ingest_dir.path().into());
    deploy_cfg.workers = false;
    let deployer = Node::start(deploy_cfg).await?;
    let base = format!("http://{}", deployer.addr);
    // Its code checked once (a dry run), as the running node had: a burst
    // of deploys of code a node has not checked yet compiles it in each.
    let r = http
        .put(format!("{base}/v1/functions/many-00000?dry_run=true"))
        .header("content-type", "application/wasm")
        .body(counter.clone())
        .send()
        .await?;
    read_ok(r, reqwest::StatusCode::is_success, "dry-run deploy").await?;
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for i in 0..functions {
        let req = http
            .put(format!("{base}/v1/functions/many-{i:05}"))
            .header("content-type", "application/wasm")
            .body(counter.clone())
            .send();
        inflight.push(req);
        if inflight.len() >= 16 {
            read_ok(
                inflight.next().await.expect("in flight")?,
                reqwest::StatusCode::is_success,
                "deploy",
            )
            .await?;
        }
    }
    while let Some(r) = inflight.next().await {
        read_ok(r?, reqwest::StatusCode::is_success, "deploy").await?;
    }
    let deploys = functions as f64 / start.elapsed().as_secs_f64();
    let nats_before = rss_of(nats.pid());
    let rss_before = rss_mb();
    let dir = tempfile::TempDir::new()?;
    let start = Instant::now();
    let many = Node::start(NodeConfig::new("127.0.0.1:0".parse()?, &nats.url(), dir.path().into())).await?;
    let started = start.elapsed();
    // Let it settle (consumers, watches) before reading memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_node, nats_after) = (rss_mb() - rss_before, rss_of(nats.pid()));
    let mut first_calls = Vec::new();
    for i in (0..functions).step_by((functions / 100).max(1)).take(100) {
        let t = Instant::now();
        let r = http
            .post(format!("http://{}/v1/functions/many-{i:05}/invoke", many.addr))
            .body("x")
            .send()
            .await?;
        read_ok(r, reqwest::StatusCode::is_success, &format!("invoke many-{i:05}")).await?;
        first_calls.push(t.elapsed());
    }
    first_calls.sort();
    println!(
        "{functions} functions: deployed at {deploys:.0}/s; a node starting with them: {} ms to serve, +{rss_node:.1} MB RSS after 5 s; nats-server {nats_before:.0} -> {nats_after:.0} MB; first sync call of 100 of them p50 {:.0} us, p99 {:.0} us",
        started.as_millis(),
        pct(&first_calls, 0.5).as_secs_f64() * 1e6,
        pct(&first_calls, 0.99).as_secs_f64() * 1e6,
    );
    many.stop().await;
    deployer.stop().await;
    Ok(())
}

/// Start-up figures of one function's code, each sorted.
struct Starts {
    /// A new revision: cached compiled code loaded, instantiated, `init`, one call.
    cold: Vec<Duration>,
    /// Of which loading the cached compiled code.
    load: Vec<Duration>,
    /// Of which instantiating (the first instance of just-loaded code).
    fresh: Vec<Duration>,
    /// A further instance of code already loaded (the function scaling out,
    /// or coming back after its idle instances were reaped).
    further: Vec<Duration>,
    /// A call on a warm instance.
    warm: Vec<Duration>,
}

/// Cold starts of `code`, deployed as function `name` (a new revision
/// each), further instances of one revision, and warm calls.
async fn starts(
    exec: &Executor,
    name: &str,
    code: &Bytes,
    cold_rounds: u64,
    warm_rounds: u64,
) -> anyhow::Result<Starts> {
    let (kind, digest) = exec
        .check_code(code.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let event = evoke_connectors::Event::new("1", "/bench", "bench");
    let function = |revision, spec| -> anyhow::Result<Arc<DeployedFunction>> {
        Ok(Arc::new(DeployedFunction {
            name: name.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            spec,
            digest: digest.clone(),
            code_size: code.len() as u64,
            kind,
            deployed_at: Utc::now(),
            revision,
        }))
    };
    let mut s = Starts {
        cold: Vec::new(),
        load: Vec::new(),
        fresh: Vec::new(),
        further: Vec::new(),
        warm: Vec::new(),
    };
    for rev in 1..=cold_rounds {
        let run = exec
            .invoke(
                &function(rev, FunctionSpec::default())?,
                "bench",
                &event,
                Duration::from_secs(5),
            )
            .await;
        anyhow::ensure!(run.result.is_ok(), "{:?}", run.result);
        let c = run.cold.expect("a new revision starts cold");
        s.load.push(Duration::from_micros(c.compile_or_load_us));
        s.fresh.push(Duration::from_micros(c.instantiate_us));
        s.cold.push(run.duration);
    }
    // Idle instances reaped after every call: each call makes a further
    // instance of the loaded code (as raw wasmtime instantiates one
    // `InstancePre` again and again).
    let reaped = FunctionSpec {
        idle_timeout: Duration::ZERO,
        ..FunctionSpec::default()
    };
    let f = function(cold_rounds + 1, reaped)?;
    for i in 0..=cold_rounds {
        let run = exec.invoke(&f, "bench", &event, Duration::from_secs(5)).await;
        anyhow::ensure!(run.result.is_ok(), "{:?}", run.result);
        exec.reap_idle();
        let c = run.cold.expect("a reaped function's next call makes an instance");
        if i > 0 {
            s.further.push(Duration::from_micros(c.instantiate_us));
        }
    }
    let f = function(cold_rounds + 2, FunctionSpec::default())?;
    for i in 0..=warm_rounds {
        let run = exec.invoke(&f, "bench", &event, Duration::from_secs(5)).await;
        anyhow::ensure!(run.result.is_ok(), "{:?}", run.result);
        if i > 0 {
            s.warm.push(run.duration);
        }
    }
    for v in [&mut s.cold, &mut s.load, &mut s.fresh, &mut s.further, &mut s.warm] {
        v.sort();
    }
    Ok(s)
}

/// The resident set size of process `pid`, in MB (Linux).
fn rss_of(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    proc_field(&status, "VmRSS")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Raw wasmtime's figures, µs.
struct RawStarts {
    /// Deserialize + instantiate + `init` + call, p50.
    cold: f64,
    /// A call on an existing instance, p50.
    warm: f64,
    /// The first instance of just-deserialized code (instantiating, and
    /// looking up `handle` with its type checked, as evoke does), p99 and p50.
    fresh: (f64, f64),
    /// A further instance of the same `InstancePre`, p99 and p50.
    further: (f64, f64),
}

/// Raw wasmtime, same component, same engine settings.
async fn raw_wasmtime(code: &[u8], rounds: usize) -> anyhow::Result<RawStarts> {
    use evoke::executor::bindings;
    use wasmtime::component::Component;
    let err = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
    let engine = evoke::executor::engine::build(100, false).map_err(err)?;
    let compiled = Component::new(&engine, code).map_err(err)?.serialize().map_err(err)?;
    let linker = raw_linker(&engine)?;
    let event = raw_event(b"");
    let new_store = || raw_store(&engine, Bytes::new());
    type Handle = wasmtime::component::TypedFunc<(bindings::Event,), (Result<bindings::Output, String>,)>;
    let mut cold = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        // SAFETY: bytes produced by `serialize` on this engine just above.
        let component = unsafe { Component::deserialize(&engine, &compiled) }.map_err(err)?;
        // The memory images built with the loading, as evoke's loader does.
        component.initialize_copy_on_write_image().map_err(err)?;
        let handle_export = component
            .get_export_index(None, "handle")
            .ok_or_else(|| anyhow::anyhow!("no handle"))?;
        let pre = linker.instantiate_pre(&component).map_err(err)?;
        let mut store = new_store();
        let i = Instant::now();
        let instance = pre.instantiate_async(&mut store).await.map_err(err)?;
        let handle: Handle = instance.get_typed_func(&mut store, handle_export).map_err(err)?;
        fresh.push(i.elapsed());
        let init = instance
            .get_typed_func::<(), (Result<(), String>,)>(&mut store, "init")
            .map_err(err)?;
        let _ = init.call_async(&mut store, ()).await.map_err(err)?;
        let _ = handle.call_async(&mut store, (event.clone(),)).await.map_err(err)?;
        cold.push(t.elapsed());
    }
    // SAFETY: as above.
    let component = unsafe { Component::deserialize(&engine, &compiled) }.map_err(err)?;
    let pre = linker.instantiate_pre(&component).map_err(err)?;
    let handle_export = component
        .get_export_index(None, "handle")
        .ok_or_else(|| anyhow::anyhow!("no handle"))?;
    let mut further = Vec::new();
    for _ in 0..rounds {
        let mut store = new_store();
        let i = Instant::now();
        let instance = pre.instantiate_async(&mut store).await.map_err(err)?;
        let _: Handle = instance.get_typed_func(&mut store, handle_export).map_err(err)?;
        further.push(i.elapsed());
    }
    let mut store = new_store();
    let instance = pre.instantiate_async(&mut store).await.map_err(err)?;
    let handle: Handle = instance.get_typed_func(&mut store, handle_export).map_err(err)?;
    let mut warm = Vec::new();
    for _ in 0..rounds * 10 {
        let t = Instant::now();
        let _ = handle.call_async(&mut store, (event.clone(),)).await.map_err(err)?;
        warm.push(t.elapsed());
    }
    for v in [&mut cold, &mut warm, &mut fresh, &mut further] {
        v.sort();
    }
    let us = |sorted: &[Duration], p| pct(sorted, p).as_secs_f64() * 1e6;
    Ok(RawStarts {
        cold: us(&cold, 0.5),
        warm: us(&warm, 0.5),
        fresh: (us(&fresh, 0.99), us(&fresh, 0.5)),
        further: (us(&further, 0.99), us(&further, 0.5)),
    })
}

/// An async invoke request, as the ingest line sends it to evoke and to
/// the bridges alike (the bridges ignore the headers, but read them).
fn async_invoke(http: &reqwest::Client, url: &str, body: &str) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", "text/plain")
        .header("x-evoke-invocation-type", "async")
        .body(body.to_string())
}

/// Queues `n` async invocations at `url` (evoke's, or a bridge's), 64
/// requests in flight.
async fn queue(http: &reqwest::Client, url: &str, body: &str, n: usize) -> anyhow::Result<()> {
    let mut inflight = FuturesUnordered::new();
    for _ in 0..n {
        inflight.push(async_invoke(http, url, body).send());
        if inflight.len() >= 64 {
            read_ok(inflight.next().await.expect("in flight")?, accepted, "async invoke").await?;
        }
    }
    while let Some(r) = inflight.next().await {
        read_ok(r?, accepted, "async invoke").await?;
    }
    Ok(())
}

/// The minimal programs the ingest line compares evoke with.
#[derive(Clone, Copy)]
enum Bridge {
    /// Publishes the body with a counter as `Nats-Msg-Id` on the subject
    /// `subject(counter)`; answers a bare 202.
    Bare(fn(u64) -> String),
    /// What evoke's API promises, done by hand: a new UUIDv7 invocation id
    /// as `Nats-Msg-Id` and as the last token of a subject per event on the
    /// work queue, the body wrapped in a CloudEvents envelope (written with
    /// `format!`), and a 202 `{"id":…}` with the id header.
    AsEvokeAnswers,
}

/// An ingest baseline: `n` requests (64 in flight, the same requests as
/// evoke's, at the same path) to an axum handler of `kind` that publishes
/// on JetStream with a `Nats-Msg-Id` and awaits the ack before answering
/// 202. Returns requests per second and what each request cost.
async fn bridge(
    js: &jetstream::Context,
    http: &reqwest::Client,
    body: &str,
    n: usize,
    nats_pid: u32,
    kind: Bridge,
) -> anyhow::Result<(f64, Used)> {
    // Shared, not cloned per request (a `Context` clone copies its prefix).
    let js = Arc::new(js.clone());
    // Ids go on across calls: a stream's duplicate window must not see
    // one bridge's ids again in the next.
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ids = &IDS;
    let app = axum::Router::new().route(
        "/v1/functions/noop/invoke",
        axum::routing::post(move |b: Bytes| {
            let js = Arc::clone(&js);
            let n = ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                use axum::response::IntoResponse;
                let (subject, msg_id, payload, answer) = match kind {
                    Bridge::Bare(subject) => (subject(n), n.to_string(), b, None),
                    Bridge::AsEvokeAnswers => {
                        let id = evoke::invoker::new_invocation_id();
                        let data = serde_json::to_string(std::str::from_utf8(&b).unwrap_or_default()).unwrap_or_default();
                        let time = Utc::now().to_rfc3339();
                        let envelope = format!(
                            r#"{{"data":{data},"datacontenttype":"text/plain","id":"{id}","source":"/evoke/api","specversion":"1.0","time":"{time}","type":"evoke.invoke"}}"#
                        );
                        (format!("bridgewq.f.{id}"), id.clone(), Bytes::from(envelope), Some(id))
                    }
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", msg_id.as_str());
                let stored = match js.publish_with_headers(subject, headers, payload).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                match (stored, answer) {
                    (false, _) => axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    (true, None) => axum::http::StatusCode::ACCEPTED.into_response(),
                    (true, Some(id)) => (
                        axum::http::StatusCode::ACCEPTED,
                        [("content-type", "application/json"), ("x-evoke-invocation-id", id.as_str())],
                        format!(r#"{{"id":"{id}"}}"#),
                    )
                        .into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/functions/noop/invoke", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let cpu = Cpu::now(nats_pid);
    let start = Instant::now();
    queue(http, &url, body, n).await?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu = cpu.per_event(nats_pid, n);
    server.abort();
    Ok((rate, cpu))
}

/// This process's resident set size, in MB (Linux).
fn rss_mb() -> f64 {
    rss_of(std::process::id())
}

/// Starts a worker node on a queue filled beforehand and times draining it
/// from its first finished event; returns events/s, the highest RSS (MB)
/// seen meanwhile and the CPU per event. The node is stopped after.
async fn drain(nats: &str, n: usize, nats_pid: u32) -> anyhow::Result<(f64, f64, Used)> {
    let dir = tempfile::TempDir::new()?;
    let client = async_nats::connect(nats).await?;
    let mut events = jetstream::new(client).get_stream(evoke::bus::STREAM_EVENTS).await?;
    let queued = |s: &mut jetstream::stream::Stream| {
        let mut s = s.clone();
        async move { s.info().await.map(|i| i.state.messages) }
    };
    anyhow::ensure!(queued(&mut events).await? as usize >= n, "the queue was not filled");
    let cfg = NodeConfig::new("127.0.0.1:0".parse()?, nats, dir.path().into());
    // On stderr, for a profiler to attach (`perf record -p <pid>`).
    eprintln!(
        "(draining {n} queued events with a worker node in process {})",
        std::process::id()
    );
    let worker = Node::start(cfg).await?;
    let (mut start, mut left) = (None, 0u64);
    let mut cpu = Cpu::now(nats_pid);
    let mut rss = 0f64;
    // Looked at every 5 ms (the RSS every 100 ms): the looking costs both
    // processes CPU that is counted as evoke's, so not too often.
    for round in 0u64.. {
        let now = queued(&mut events).await?;
        if round % 20 == 0 {
            rss = rss.max(rss_mb());
        }
        if now == 0 {
            break;
        }
        if start.is_none() && (now as usize) < n {
            (start, left) = (Some(Instant::now()), now);
            cpu = Cpu::now(nats_pid);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = left as f64 / start.map_or(f64::NAN, |s: Instant| s.elapsed().as_secs_f64());
    let used = cpu.per_event(nats_pid, left as usize);
    worker.stop().await;
    Ok((rate, rss, used))
}

/// Publishes `n` messages, the i-th to `subject(i)`, with 1024 acks in flight.
async fn publish_all(
    js: &jetstream::Context,
    n: usize,
    payload: &Bytes,
    subject: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let mut acks = FuturesUnordered::new();
    for i in 0..n {
        acks.push(js.publish(subject(i), payload.clone()).await?.into_future());
        if acks.len() >= 1024 {
            acks.next().await.transpose()?;
        }
    }
    while acks.next().await.transpose()?.is_some() {}
    Ok(())
}

/// Pulls (batches of 1000) and acks `n` messages of `filter` with a
/// durable consumer of its own; returns when the clock started (once the
/// consumer exists).
async fn consume_all(
    stream: &jetstream::stream::Stream,
    durable: &str,
    filter: &str,
    n: usize,
) -> anyhow::Result<Instant> {
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.into()),
            filter_subject: filter.into(),
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let mut msgs = consumer.stream().max_messages_per_batch(1000).messages().await?;
    for _ in 0..n {
        let m = msgs.next().await.expect("message")?;
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(start)
}

/// A work-queue stream (every ack deletes its message), as evoke's queue.
async fn work_queue(js: &jetstream::Context, name: &str, subjects: &str) -> anyhow::Result<stream::Stream> {
    Ok(js
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?)
}

/// Fills a work-queue stream with `n` messages (one subject each, as
/// evoke's events), then pulls and acks them as the plain consume line does.
async fn wq_consume(js: &jetstream::Context, n: usize, payload: &Bytes) -> anyhow::Result<f64> {
    let stream = work_queue(js, "RAWWQ", "rawwq.>").await?;
    publish_all(js, n, payload, |i| format!("rawwq.f.{i}")).await?;
    let start = consume_all(&stream, "wq", "rawwq.f.*", n).await?;
    // Done when the stream is empty: the acks were applied.
    let mut stream = stream;
    while stream.info().await?.state.messages > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[derive(Clone, Copy, PartialEq)]
enum Guest {
    /// A component: one warm instance, `handle` per event.
    Component,
    /// The same, and an outcome record stored per event (a KV put whose
    /// ack is awaited before the event's ack, 64 events in flight): the
    /// work evoke must do on top of a bare loop.
    ComponentRecorded,
    /// The same, the records of 64 events stored in one atomic batch.
    ComponentBatched,
    /// A WASI command: a fresh pooled instance per event, stdin to stdout.
    Command,
    /// The same, and an outcome record stored per event, as above.
    CommandRecorded,
}

impl Guest {
    fn recorded(self) -> bool {
        matches!(
            self,
            Guest::ComponentRecorded | Guest::ComponentBatched | Guest::CommandRecorded
        )
    }
}

/// The end-to-end baseline: a bare loop pulling `n` messages of `filter`
/// with a durable of its own, running each in `code`, then acking.
async fn raw_drain(
    js: &jetstream::Context,
    (stream, filter): (&jetstream::stream::Stream, &str),
    durable: &str,
    n: usize,
    code: &[u8],
    guest: Guest,
    nats_pid: u32,
) -> anyhow::Result<(f64, Used)> {
    use evoke::executor::bindings;
    use wasmtime::component::Component;
    let err = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
    let engine = evoke::executor::engine::build(100, false).map_err(err)?;
    let component = Component::new(&engine, code).map_err(err)?;
    let linker = raw_linker(&engine)?;
    let pre = linker.instantiate_pre(&component).map_err(err)?;
    let new_store = |stdin: Bytes| raw_store(&engine, stdin);
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.into()),
            filter_subject: filter.into(),
            ..Default::default()
        })
        .await?;
    let mut msgs = consumer.stream().max_messages_per_batch(1000).messages().await?;
    let event = raw_event;
    eprintln!(
        "(baseline drain `{durable}` of {n} events in process {})",
        std::process::id()
    );
    let cpu = Cpu::now(nats_pid);
    let start = Instant::now();
    use evoke::invoker::records::{Mode, Record, Status};
    // Components: one warm instance. Commands: a fresh one per event.
    let mut warm = match guest {
        Guest::Component | Guest::ComponentRecorded | Guest::ComponentBatched => {
            let mut store = new_store(Bytes::new());
            let instance = pre.instantiate_async(&mut store).await.map_err(err)?;
            let handle = instance
                .get_typed_func::<(bindings::Event,), (Result<bindings::Output, String>,)>(&mut store, "handle")
                .map_err(err)?;
            Some((store, handle))
        }
        Guest::Command | Guest::CommandRecorded => None,
    };
    let command = match warm {
        Some(_) => None,
        None => Some(wasmtime_wasi::p2::bindings::CommandPre::new(pre).map_err(err)?),
    };
    let mut settling = FuturesUnordered::new();
    let mut batches = FuturesUnordered::new();
    let mut pending = Vec::new();
    let client = js.client();
    let settle = |(ack, m): (jetstream::context::PublishAckFuture, jetstream::Message)| async move {
        ack.await.map_err(|e| anyhow::anyhow!("{e}"))?;
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))
    };
    for i in 0..n {
        let m = msgs.next().await.expect("message")?;
        match &mut warm {
            Some((store, handle)) => {
                let _ = handle
                    .call_async(&mut *store, (event(&m.payload),))
                    .await
                    .map_err(err)?;
            }
            None => {
                let command = command.as_ref().expect("a command");
                let mut store = new_store(m.payload.clone());
                let cmd = command.instantiate_async(&mut store).await.map_err(err)?;
                let _ = cmd.wasi_cli_run().call_run(&mut store).await.map_err(err)?;
            }
        }
        if !guest.recorded() {
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            continue;
        }
        let id = format!("raw{i:08}");
        let mut record = Record::new(&id, "noop", Mode::Async, &id, Status::Queued);
        record.start_attempt("raw");
        record.finish(Status::Succeeded, None);
        if guest == Guest::ComponentBatched {
            pending.push((id, record.to_bytes(), m));
            if pending.len() < 64 && i + 1 < n {
                continue;
            }
            let batch = uuid::Uuid::new_v4().to_string();
            let last = pending.len();
            let mut msgs = Vec::with_capacity(last);
            let mut commit = None;
            for (k, (id, record, m)) in pending.drain(..).enumerate() {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Batch-Id", batch.as_str());
                headers.insert("Nats-Batch-Sequence", (k + 1).to_string().as_str());
                let subject = format!("$KV.RAW_BATCHED.{id}");
                if k + 1 == last {
                    headers.insert("Nats-Batch-Commit", "1");
                    commit = Some(js.publish_with_headers(subject, headers, record).await?);
                } else {
                    client.publish_with_headers(subject, headers, record).await?;
                }
                msgs.push(m);
            }
            let commit = commit.expect("a commit");
            batches.push(async move {
                commit.await.map_err(|e| anyhow::anyhow!("{e}"))?;
                for m in msgs {
                    m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                anyhow::Ok(())
            });
            while batches.len() >= 2 {
                batches.next().await.expect("a batch")?;
            }
            continue;
        }
        let ack = js.publish(format!("$KV.RAW_RECORDS.{id}"), record.to_bytes()).await?;
        settling.push(settle((ack, m)));
        while settling.len() >= 64 {
            settling.next().await.expect("settling")?;
        }
    }
    while let Some(r) = settling.next().await {
        r?;
    }
    while let Some(r) = batches.next().await {
        r?;
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), cpu.per_event(nats_pid, n)))
}

/// A linker with what evoke links for components: WASI and evoke's host.
fn raw_linker(
    engine: &wasmtime::Engine,
) -> anyhow::Result<wasmtime::component::Linker<evoke::executor::sandbox::ComponentState>> {
    use evoke::executor::bindings::evoke::function::{host, objects};
    use evoke::executor::sandbox::ComponentState;
    use wasmtime::component::{HasSelf, Linker};
    let err = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
    let mut linker = Linker::<ComponentState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
    host::add_to_linker::<_, HasSelf<ComponentState>>(&mut linker, |s| s).map_err(err)?;
    objects::add_to_linker::<_, HasSelf<ComponentState>>(&mut linker, |s| s).map_err(err)?;
    Ok(linker)
}

/// A store with the limits evoke gives a function, `stdin` on stdin.
fn raw_store(engine: &wasmtime::Engine, stdin: Bytes) -> wasmtime::Store<evoke::executor::sandbox::ComponentState> {
    use evoke::executor::sandbox::{ComponentState, Sandbox};
    let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
    wasi.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(stdin))
        .stdout(wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(1 << 20));
    let mut s = wasmtime::Store::new(
        engine,
        ComponentState::new(
            wasi.build(),
            Sandbox::new(128 << 20, 65536, None),
            Default::default(),
            evoke::executor::http::HttpAccess::new(&[], false),
        ),
    );
    s.set_epoch_deadline(u64::MAX / 2);
    s
}

/// The event a baseline hands to `handle`.
fn raw_event(data: &[u8]) -> evoke::executor::bindings::Event {
    evoke::executor::bindings::Event {
        id: "1".into(),
        source: "/bench".into(),
        type_: "bench".into(),
        specversion: "1.0".into(),
        subject: None,
        time: None,
        datacontenttype: (!data.is_empty()).then(|| "text/plain".into()),
        data: data.to_vec(),
        extensions: vec![],
    }
}
