//! `cargo bench --bench durability`: what `sync_interval: always` (an fsync
//! for every JetStream write) costs against the default (fsync every 2
//! minutes), on one server (R1) and on a 3-server cluster (R3), measured in
//! the same run: pipelined publish throughput and one-at-a-time publish
//! latency, file storage, 256-byte messages.
//!
//! Figures and the command are recorded in docs/operations.md.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use evoke::cli::nats::{ManagedNats, find_server, free_port};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// Starts `n` servers (a cluster when `n > 1`) with `sync` in their
/// JetStream block; returns them and their URLs.
fn servers(dir: &std::path::Path, n: usize, sync: &str) -> anyhow::Result<(Vec<ManagedNats>, Vec<String>)> {
    let bin = find_server()?;
    let servers = if n > 1 {
        let names: Vec<String> = (1..=n).map(|i| format!("s{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        evoke::cli::nats::start_cluster(&bin, dir, &names, sync)?
    } else {
        vec![ManagedNats::start_with(&bin, &dir.join("s1"), free_port()?, sync)?]
    };
    let urls = servers.iter().map(ManagedNats::url).collect();
    Ok((servers, urls))
}

async fn measure(urls: &[String], replicas: usize, n: usize) -> anyhow::Result<(f64, Duration, Duration)> {
    let client = loop {
        if let Ok(c) = async_nats::connect(urls).await
            && jetstream::new(c.clone()).query_account().await.is_ok()
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let js = jetstream::new(client);
    loop {
        let created = js
            .create_stream(stream::Config {
                name: "BENCH".into(),
                subjects: vec!["bench.>".into()],
                num_replicas: replicas,
                ..Default::default()
            })
            .await;
        if created.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let payload = Bytes::from(vec![b'x'; 256]);
    let start = Instant::now();
    let mut acks = FuturesUnordered::new();
    for _ in 0..n {
        acks.push(js.publish("bench.a", payload.clone()).await?.into_future());
        if acks.len() >= 256 {
            acks.next().await.transpose()?;
        }
    }
    while acks.next().await.transpose()?.is_some() {}
    let throughput = n as f64 / start.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    for _ in 0..(n / 10).max(200) {
        let t = Instant::now();
        js.publish("bench.b", payload.clone()).await?.await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    Ok((throughput, p(0.5), p(0.99)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 2_000 } else { 20_000 };
    println!("JetStream durability: default sync (2 min) vs `sync_interval: always`, {n} publishes\n");
    for (label, count, replicas) in [("1 server, R1", 1, 1), ("3 servers, R3", 3, 3)] {
        let mut results = Vec::new();
        for sync in ["", "jetstream.sync_interval: always"] {
            let dir = tempfile::TempDir::new()?;
            let (_servers, urls) = servers(dir.path(), count, sync)?;
            results.push(measure(&urls, replicas, n).await?);
        }
        let ((t0, p50a, p99a), (t1, p50b, p99b)) = (results[0], results[1]);
        println!(
            "{label:<14} throughput {t0:>9.0} -> {t1:>9.0} msg/s (ratio {:.2}); latency p50 {p50a:>9.1?} -> {p50b:>9.1?}, p99 {p99a:>9.1?} -> {p99b:>9.1?}",
            t1 / t0
        );
    }
    Ok(())
}
