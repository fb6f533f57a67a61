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

fn row(name: &str, baseline: f64, evoke: f64, unit: &str) {
    println!(
        "{name:<44} baseline {baseline:>12.1} {unit:<6} evoke {evoke:>12.1} {unit:<6} ratio {:.2}",
        evoke / baseline
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 2_000 } else { 20_000 };
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
    let mut acks = FuturesUnordered::new();
    for _ in 0..n {
        acks.push(js.publish("raw.a", payload.clone()).await?.into_future());
        if acks.len() >= 1024 {
            acks.next().await.transpose()?;
        }
    }
    while acks.next().await.transpose()?.is_some() {}
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
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..n {
        let req = http
            .post(format!("{base}/v1/functions/noop/invoke"))
            .header("content-type", "text/plain")
            .header("x-evoke-invocation-type", "async")
            .body(body.clone())
            .send();
        inflight.push(req);
        if inflight.len() >= 64 {
            let r = inflight.next().await.expect("in flight")?;
            anyhow::ensure!(r.status() == 202, "async invoke: {}", r.status());
        }
    }
    while let Some(r) = inflight.next().await {
        anyhow::ensure!(r?.status() == 202);
    }
    let evoke_ingest = n as f64 / start.elapsed().as_secs_f64();
    row(
        "ingest: JetStream publish+ack vs async invoke",
        raw_pub,
        evoke_ingest,
        "msg/s",
    );

    // The same HTTP load against a bare axum handler that publishes to
    // JetStream and awaits the ack: what HTTP itself costs on this machine.
    let js_axum = js.clone();
    let app = axum::Router::new().route(
        "/publish",
        axum::routing::post(move |b: Bytes| {
            let js = js_axum.clone();
            async move {
                match js.publish("raw.b", b).await {
                    Ok(ack) => match ack.await {
                        Ok(_) => axum::http::StatusCode::ACCEPTED,
                        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    },
                    Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let publish_url = format!("http://{}/publish", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..n {
        inflight.push(http.post(&publish_url).body(body.clone()).send());
        if inflight.len() >= 64 {
            let r = inflight.next().await.expect("in flight")?;
            anyhow::ensure!(r.status() == 202, "bare publish: {}", r.status());
        }
    }
    while let Some(r) = inflight.next().await {
        anyhow::ensure!(r?.status() == 202);
    }
    let axum_ingest = n as f64 / start.elapsed().as_secs_f64();
    row(
        "ingest: axum+JetStream handler vs async invoke",
        axum_ingest,
        evoke_ingest,
        "msg/s",
    );

    // 2. Throughput: raw consume+ack vs evoke end-to-end (queued events run
    //    by a no-op component, 64 instances).
    let raw_stream = js.get_stream("RAW").await?;
    let consumer = raw_stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            filter_subject: "raw.a".into(),
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let mut msgs = consumer.stream().max_messages_per_batch(1000).messages().await?;
    for _ in 0..n {
        let m = msgs.next().await.expect("message")?;
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let raw_consume = n as f64 / start.elapsed().as_secs_f64();

    let worker_dir = tempfile::TempDir::new()?;
    let cfg = NodeConfig::new("127.0.0.1:0".parse()?, &nats.url(), worker_dir.path().into());
    let start = Instant::now();
    let worker = Node::start(cfg).await?;
    let events = js.get_stream(evoke::bus::STREAM_EVENTS).await?;
    loop {
        let mut s = events.clone();
        if s.info().await?.state.messages == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let evoke_e2e = n as f64 / start.elapsed().as_secs_f64();
    row(
        "async: JetStream consume+ack vs end-to-end",
        raw_consume,
        evoke_e2e,
        "msg/s",
    );

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

    // 4. The sandbox: cold start from cached compiled code, and a warm call,
    //    against raw wasmtime doing the same through the same engine settings.
    let cache = tempfile::TempDir::new()?;
    let exec = Executor::new(ExecutorConfig::new(cache.path().into()), None, None)?;
    let code = Bytes::from(examples("counter"));
    let (kind, digest) = exec
        .check_code(code.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let event = evoke_connectors::Event::new("1", "/bench", "bench");
    let rounds = if quick { 50 } else { 300 };
    let mut cold = Vec::new();
    let mut load = Vec::new();
    for rev in 1..=rounds {
        let f = Arc::new(DeployedFunction {
            name: "noop".parse().map_err(|e: String| anyhow::anyhow!(e))?,
            spec: FunctionSpec::default(),
            digest: digest.clone(),
            code_size: code.len() as u64,
            kind,
            deployed_at: Utc::now(),
            revision: rev,
        });
        let run = exec.invoke(&f, "bench", &event, Duration::from_secs(5)).await;
        anyhow::ensure!(run.result.is_ok(), "{:?}", run.result);
        let c = run.cold.expect("a new revision starts cold");
        load.push(Duration::from_micros(c.compile_or_load_us));
        cold.push(run.duration);
    }
    let f = Arc::new(DeployedFunction {
        name: "noop".parse().map_err(|e: String| anyhow::anyhow!(e))?,
        spec: FunctionSpec::default(),
        digest,
        code_size: code.len() as u64,
        kind,
        deployed_at: Utc::now(),
        revision: rounds + 1,
    });
    let mut warm = Vec::new();
    for i in 0..rounds * 10 + 1 {
        let run = exec.invoke(&f, "bench", &event, Duration::from_secs(5)).await;
        if i > 0 {
            warm.push(run.duration);
        }
    }
    cold.sort();
    load.sort();
    warm.sort();
    let raw = raw_wasmtime(&code, rounds as usize).await?;
    row(
        "cold start p50 (load cached code+instantiate+init+call)",
        raw.0,
        pct(&cold, 0.5).as_secs_f64() * 1e6,
        "us",
    );
    println!(
        "{:<44} {:>12.1} us",
        "  of which loading cached compiled code p50",
        pct(&load, 0.5).as_secs_f64() * 1e6
    );
    row(
        "warm invoke p50 (instance reused)",
        raw.1,
        pct(&warm, 0.5).as_secs_f64() * 1e6,
        "us",
    );

    worker.stop().await;
    ingest.stop().await;
    Ok(())
}

/// Raw wasmtime, same component: deserialize + instantiate + call, and a call
/// on an existing instance (p50, µs).
async fn raw_wasmtime(code: &[u8], rounds: usize) -> anyhow::Result<(f64, f64)> {
    use evoke::executor::bindings;
    use evoke::executor::sandbox::{ComponentState, Sandbox};
    use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
    let err = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
    let engine = evoke::executor::engine::build(100, false).map_err(err)?;
    let compiled = Component::new(&engine, code).map_err(err)?.serialize().map_err(err)?;
    let mut linker = Linker::<ComponentState>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
    bindings::evoke::function::host::add_to_linker::<_, HasSelf<ComponentState>>(&mut linker, |s| s).map_err(err)?;
    bindings::evoke::function::objects::add_to_linker::<_, HasSelf<ComponentState>>(&mut linker, |s| s).map_err(err)?;
    let event = bindings::Event {
        id: "1".into(),
        source: "/bench".into(),
        type_: "bench".into(),
        specversion: "1.0".into(),
        subject: None,
        time: None,
        datacontenttype: None,
        data: vec![],
        extensions: vec![],
    };
    let new_store = || {
        let mut s = wasmtime::Store::new(
            &engine,
            ComponentState {
                wasi: wasmtime_wasi::WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
                sandbox: Sandbox::new(128 << 20, 65536, None),
                objects: Default::default(),
            },
        );
        s.set_epoch_deadline(u64::MAX / 2);
        s
    };
    let mut cold = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        // SAFETY: bytes produced by `serialize` on this engine just above.
        let component = unsafe { Component::deserialize(&engine, &compiled) }.map_err(err)?;
        let pre = linker.instantiate_pre(&component).map_err(err)?;
        let mut store = new_store();
        let instance = pre.instantiate_async(&mut store).await.map_err(err)?;
        let init = instance
            .get_typed_func::<(), (Result<(), String>,)>(&mut store, "init")
            .map_err(err)?;
        let _ = init.call_async(&mut store, ()).await.map_err(err)?;
        let handle = instance
            .get_typed_func::<(bindings::Event,), (Result<bindings::Output, String>,)>(&mut store, "handle")
            .map_err(err)?;
        let _ = handle.call_async(&mut store, (event.clone(),)).await.map_err(err)?;
        cold.push(t.elapsed());
    }
    // SAFETY: as above.
    let component = unsafe { Component::deserialize(&engine, &compiled) }.map_err(err)?;
    let pre = linker.instantiate_pre(&component).map_err(err)?;
    let mut store = new_store();
    let instance = pre.instantiate_async(&mut store).await.map_err(err)?;
    let handle = instance
        .get_typed_func::<(bindings::Event,), (Result<bindings::Output, String>,)>(&mut store, "handle")
        .map_err(err)?;
    let mut warm = Vec::new();
    for _ in 0..rounds * 10 {
        let t = Instant::now();
        let _ = handle.call_async(&mut store, (event.clone(),)).await.map_err(err)?;
        warm.push(t.elapsed());
    }
    cold.sort();
    warm.sort();
    Ok((pct(&cold, 0.5).as_secs_f64() * 1e6, pct(&warm, 0.5).as_secs_f64() * 1e6))
}
