//! Nodes seeing each other: every node beats into KV bucket EVOKE_NODES
//! (entries expire when a node stops beating), and [`status`] gathers the
//! cluster's state for `evoke status` / `GET /v1/status`: nodes, the NATS
//! servers, stream replicas and leaders, queues and dead letters per
//! function, and warnings an operator should act on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::bus::{self, NatsError, OrNats};
use crate::invoker::Invoker;

/// How often a node beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);

/// What a node is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    pub api: bool,
    pub workers: bool,
    pub sources: bool,
}

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    pub name: String,
    pub version: String,
    pub roles: Roles,
    /// Where its API listens, when it serves one.
    pub address: Option<String>,
    pub started_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
    /// Invocations running now.
    pub in_flight: u32,
    /// Instances loaded (idle and busy).
    pub instances: u32,
    /// One-minute load average of the host.
    pub load: Option<f64>,
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Beats every [`BEAT_EVERY`] until shutdown, then removes its entry (a
/// killed node's entry expires after [`bus::NODE_TTL`]).
pub async fn heartbeat(
    invoker: Arc<Invoker>,
    roles: Roles,
    address: Option<String>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let started_at = Utc::now();
    let kv = invoker.bus.nodes.clone();
    let mut tick = tokio::time::interval(BEAT_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => break,
        }
        let stats = invoker.executor.stats();
        let beat = Beat {
            name: invoker.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            roles,
            address: address.clone(),
            started_at,
            at: Utc::now(),
            in_flight: stats.iter().map(|s| s.busy).sum(),
            instances: stats.iter().map(|s| s.busy + s.idle).sum(),
            load: load_average(),
        };
        let Ok(value) = serde_json::to_vec(&beat) else { continue };
        if let Err(e) = kv.put(&invoker.node, Bytes::from(value)).await {
            tracing::debug!(error = %e, "heartbeat not stored");
        }
    }
    let _ = kv.delete(&invoker.node).await;
}

/// A node name: what KV keys and subjects accept.
pub fn valid_node_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// The state of one replicated stream or bucket.
#[derive(Debug, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub replicas: usize,
    pub leader: Option<String>,
    /// Peers (other than the leader) and whether they are current.
    pub peers: Vec<PeerStatus>,
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub current: bool,
    pub offline: bool,
    pub lag: Option<u64>,
}

/// Queue and dead letters of one function.
#[derive(Debug, Serialize)]
pub struct FunctionStatus {
    pub name: String,
    pub queued: u64,
    /// Age of the oldest queued event, in seconds.
    pub oldest_event_age_s: Option<f64>,
    pub dead_letters: u64,
}

#[derive(Debug, Serialize)]
pub struct NatsStatus {
    pub state: String,
    pub server_name: String,
    pub version: String,
    pub cluster: Option<String>,
    /// Client URLs of every server the cluster advertises.
    pub servers: Vec<String>,
    pub configured: String,
}

/// The whole cluster, as one node sees it.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub node: String,
    pub nodes: Vec<Beat>,
    pub nats: NatsStatus,
    pub replicas: usize,
    pub streams: Vec<StreamStatus>,
    pub functions: Vec<FunctionStatus>,
    pub warnings: Vec<String>,
}

/// Every stream evoke keeps (KV buckets and the object store are streams).
fn evoke_streams() -> Vec<String> {
    let mut v: Vec<String> = [bus::STREAM_EVENTS, bus::STREAM_DLQ, bus::STREAM_LOGS]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for kv in [
        bus::KV_FUNCTIONS,
        bus::KV_INVOCATIONS,
        bus::KV_TRIGGERS,
        bus::KV_STATE,
        bus::KV_NODES,
        bus::KV_LEASES,
    ] {
        v.push(format!("KV_{kv}"));
    }
    v.push(format!("OBJ_{}", bus::OBJ_CODE));
    v
}

/// Gathers the cluster's state. Costs a handful of NATS requests plus one
/// per function with queued events: for operators, not for hot paths.
pub async fn status(invoker: &Invoker) -> Result<ClusterStatus, NatsError> {
    let b = &invoker.bus;
    let info = b.client.server_info();
    let mut warnings = Vec::new();
    let state = b.connection_state();
    if state != "connected" {
        warnings.push(format!("this node is {state} from NATS"));
    }
    let nodes = nodes(b, &mut warnings).await?;
    let streams = streams(b, &info, &mut warnings).await;
    let functions = functions(invoker, &mut warnings).await?;
    Ok(ClusterStatus {
        node: invoker.node.clone(),
        nodes,
        nats: NatsStatus {
            state,
            server_name: info.server_name.clone(),
            version: info.version.clone(),
            cluster: info.cluster.clone(),
            servers: info.connect_urls.clone(),
            configured: b.url.clone(),
        },
        replicas: b.replicas,
        streams,
        functions,
        warnings,
    })
}

/// The nodes beating into EVOKE_NODES, with warnings for silent ones.
async fn nodes(b: &bus::Bus, warnings: &mut Vec<String>) -> Result<Vec<Beat>, NatsError> {
    let mut nodes = Vec::new();
    let mut keys = b.nodes.keys().await.nats("listing nodes")?;
    while let Some(key) = keys.next().await {
        let Ok(key) = key else { continue };
        if let Ok(Some(v)) = b.nodes.get(&key).await
            && let Ok(beat) = serde_json::from_slice::<Beat>(&v)
        {
            nodes.push(beat);
        }
    }
    nodes.sort_by(|a, c| a.name.cmp(&c.name));
    let now = Utc::now();
    for n in &nodes {
        let silent = (now - n.at).to_std().unwrap_or_default();
        if silent > BEAT_EVERY * 2 {
            warnings.push(format!(
                "node {} has not beaten for {}s (stopped or cut off?)",
                n.name,
                silent.as_secs()
            ));
        }
    }
    if !nodes.iter().any(|n| n.roles.workers) {
        warnings.push("no node runs workers: async events wait".into());
    }
    Ok(nodes)
}

/// Replicas, leader and peers of every stream evoke keeps, with warnings
/// for R1 state on a cluster, leaderless streams and lagging replicas.
async fn streams(b: &bus::Bus, info: &async_nats::ServerInfo, warnings: &mut Vec<String>) -> Vec<StreamStatus> {
    let on_cluster = info.cluster.is_some();
    let mut streams = Vec::new();
    for name in evoke_streams() {
        let Ok(mut s) = b.js.get_stream(&name).await else {
            warnings.push(format!("stream {name} is missing"));
            continue;
        };
        let Ok(i) = s.info().await else { continue };
        let cluster = i.cluster.clone().unwrap_or_default();
        let peers: Vec<PeerStatus> = cluster
            .replicas
            .iter()
            .map(|p| PeerStatus {
                name: p.name.clone(),
                current: p.current,
                offline: p.offline,
                lag: p.lag,
            })
            .collect();
        if i.config.num_replicas < 2 && on_cluster && info.connect_urls.len() >= 2 {
            warnings.push(format!(
                "{name} has 1 replica on a NATS cluster: losing its server loses it (start nodes with --replicas 3)"
            ));
        }
        if cluster.leader.is_none() && on_cluster {
            warnings.push(format!("{name} has no leader (electing, or no quorum)"));
        }
        for p in peers.iter().filter(|p| p.offline || !p.current) {
            let what = if p.offline { "offline" } else { "behind" };
            warnings.push(format!("{name}: replica on {} is {what}", p.name));
        }
        streams.push(StreamStatus {
            name,
            replicas: i.config.num_replicas,
            leader: cluster.leader,
            peers,
            messages: i.state.messages,
            bytes: i.state.bytes,
        });
    }
    streams
}

/// Queue depth, oldest event and dead letters of every function (deployed,
/// or with events left), with a warning for each that has dead letters.
async fn functions(invoker: &Invoker, warnings: &mut Vec<String>) -> Result<Vec<FunctionStatus>, NatsError> {
    let b = &invoker.bus;
    let mut per_fn: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for name in invoker.registry.subscribe().borrow().keys() {
        per_fn.insert(name.clone(), (0, 0));
    }
    for (f, n) in b.queue_depths().await? {
        if n > 0 || per_fn.contains_key(&f) {
            per_fn.entry(f).or_default().0 += n;
        }
    }
    for (f, n) in b.dlq_depths().await? {
        per_fn.entry(f).or_default().1 += n;
    }
    let events = b.js.get_stream(bus::STREAM_EVENTS).await.nats("opening the queue")?;
    let mut functions = Vec::new();
    for (name, (queued, dead_letters)) in per_fn {
        let mut oldest_event_age_s = None;
        if queued > 0
            && let Ok(m) = events
                .get_first_raw_message_by_subject(bus::invoke_filter(&name), 1)
                .await
        {
            let age = time::OffsetDateTime::now_utc() - m.time;
            oldest_event_age_s = Some(age.as_seconds_f64().max(0.0));
        }
        if dead_letters > 0 {
            warnings.push(format!(
                "{name} has {dead_letters} dead letter(s): `evoke dlq ls {name}`"
            ));
        }
        functions.push(FunctionStatus {
            name,
            queued,
            oldest_event_age_s,
            dead_letters,
        });
    }
    Ok(functions)
}
