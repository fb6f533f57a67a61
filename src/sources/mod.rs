//! Running event sources on a node: the NATS-backed sink and state store
//! every connector publishes through, and the manager that starts, restarts
//! and stops sources as triggers change in KV (live, without a restart).
//!
//! Webhooks are served by the API (`/hooks/<trigger>`, see `api::hooks`);
//! cron triggers run here. Sources that must run on one node only hold a
//! lease ([`lease::KvLeases`] under `evoke_connectors::lease::run_singleton`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use evoke_connectors::Event;
use evoke_connectors::source::{Published, Sink, SinkError, StateError, StateStore};
use evoke_connectors::trigger::SourceConfig;
use tokio::sync::broadcast;

use crate::invoker::{EnqueueError, Invoker, derived_invocation_id};

pub mod lease;
pub mod queues;
pub mod s3;
use crate::supervise::{Stopping, Supervised, reconcile, stop_all};

/// Publishes source events onto the target function's queue.
pub struct NatsSink {
    invoker: Arc<Invoker>,
}

impl NatsSink {
    pub fn new(invoker: Arc<Invoker>) -> NatsSink {
        NatsSink { invoker }
    }
}

impl Sink for NatsSink {
    async fn publish(&self, function: &str, event: &Event, dedupe_id: &str) -> Result<Published, SinkError> {
        let f = match self.invoker.registry.get(function).await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(SinkError::Rejected(format!("function `{function}` does not exist"))),
            Err(e) => return Err(SinkError::Unavailable(e.to_string())),
        };
        let id = derived_invocation_id(function, dedupe_id);
        match self.invoker.enqueue(&f, event, &id).await {
            Ok(false) => Ok(Published::Stored),
            Ok(true) => Ok(Published::Duplicate),
            Err(e @ EnqueueError::TooLarge { .. }) => Err(SinkError::Rejected(e.to_string())),
            Err(e) => Err(SinkError::Unavailable(e.to_string())),
        }
    }

    async fn park(&self, function: &str, event: &Event, dedupe_id: &str, reason: &str) -> Result<(), SinkError> {
        let id = derived_invocation_id(function, dedupe_id);
        self.invoker
            .park(function, event, &id, reason)
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))
    }

    /// Polls the invocation's record (a few ms apart at first, at most
    /// [`SETTLED_POLL_MAX`]) until it says succeeded or dead-lettered.
    async fn settled(&self, function: &str, dedupe_id: &str) -> Result<(), SinkError> {
        use crate::invoker::records::Status;
        let id = derived_invocation_id(function, dedupe_id);
        let mut delay = SETTLED_POLL_MIN;
        loop {
            let record = self
                .invoker
                .get_record(&id)
                .await
                .map_err(|e| SinkError::Unavailable(e.to_string()))?;
            if record.is_some_and(|r| matches!(r.status, Status::Succeeded | Status::DeadLettered)) {
                return Ok(());
            }
            // A removed function's queued events are gone with it: they never finish.
            match self.invoker.registry.get(function).await {
                Ok(None) => return Err(SinkError::Rejected(format!("function `{function}` does not exist"))),
                Ok(Some(_)) => {}
                Err(e) => return Err(SinkError::Unavailable(e.to_string())),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(SETTLED_POLL_MAX);
        }
    }
}

/// How often `order = "key"` asks whether an invocation finished: first
/// after this, then twice as long each time up to [`SETTLED_POLL_MAX`].
const SETTLED_POLL_MIN: std::time::Duration = std::time::Duration::from_millis(2);
const SETTLED_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// Source state in KV bucket EVOKE_STATE.
pub struct KvState {
    kv: async_nats::jetstream::kv::Store,
}

impl KvState {
    pub fn new(kv: async_nats::jetstream::kv::Store) -> KvState {
        KvState { kv }
    }
}

impl StateStore for KvState {
    async fn load(&self, key: &str) -> Result<Option<String>, StateError> {
        let v = self.kv.get(key).await.map_err(|e| StateError(e.to_string()))?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn forget(&self, key: &str) -> Result<(), StateError> {
        self.kv.delete(key).await.map_err(|e| StateError(e.to_string()))
    }

    async fn save(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.kv
            .put(key, Bytes::from(value.to_string()))
            .await
            .map(|_| ())
            .map_err(|e| StateError(e.to_string()))
    }
}

/// Runs `work` on one node of the cluster at a time: the holder of lease
/// `key` (in KV bucket EVOKE_LEASES); another node takes over within the
/// lease TTL when the holder dies or is cut off.
pub async fn singleton<F, Fut>(invoker: Arc<Invoker>, key: String, stop: tokio::sync::watch::Receiver<bool>, work: F)
where
    F: FnMut(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let leases = Arc::new(lease::KvLeases::new(invoker.bus.leases.clone()));
    evoke_connectors::lease::run_singleton(leases, key, invoker.node.clone(), crate::bus::LEASE_TTL, stop, work).await
}

/// The version of what a trigger's task runs: its own revision and, for a
/// trigger reading a store or a connection, that one's (a changed endpoint
/// or credentials restart it).
fn version(trigger: u64, store: Option<u64>) -> u64 {
    trigger.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ store.map_or(0, |s| s.wrapping_add(1))
}

/// Keeps one task per trigger that needs one (cron, s3 by SQS or polling)
/// running, following the trigger and store registries.
pub async fn run(invoker: Arc<Invoker>, mut shutdown: broadcast::Receiver<()>) {
    let sink = Arc::new(NatsSink::new(invoker.clone()));
    let state = Arc::new(KvState::new(invoker.bus.state.clone()));
    let mut triggers = invoker.triggers.subscribe();
    let mut stores = invoker.stores.registry.subscribe();
    let mut connections = invoker.connections.registry.subscribe();
    // Triggers read their stores and connections: start none before all
    // three views are whole, or a trigger seen before its connection would
    // start, then restart when the connection arrives.
    let loaded = async {
        invoker.triggers.loaded().await;
        invoker.stores.registry.loaded().await;
        invoker.connections.registry.loaded().await;
    };
    tokio::select! {
        _ = loaded => {}
        _ = shutdown.recv() => return,
    }
    let mut running: HashMap<String, Supervised> = HashMap::new();
    // A changed trigger's new task starts once its old one has stopped.
    let mut stopping = Stopping::new();
    loop {
        let current = triggers.borrow_and_update().clone();
        let current_stores = stores.borrow_and_update().clone();
        let current_connections = connections.borrow_and_update().clone();
        let desired: HashMap<String, u64> = current
            .iter()
            .map(|(n, t)| {
                let named = |field: &str| t.spec.get(field).and_then(|s| s.as_str());
                let uses = named("store")
                    .and_then(|s| current_stores.get(s))
                    .map(|s| s.revision)
                    .or_else(|| {
                        named("connection")
                            .and_then(|c| current_connections.get(c))
                            .map(|c| c.revision)
                    });
                (n.clone(), version(t.revision, uses))
            })
            .collect();
        for name in running.keys().filter(|n| !desired.contains_key(*n)) {
            tracing::info!(trigger = %name, "source stopping: the trigger was removed");
            invoker.connections.forget_stats(name);
        }
        for (name, revision) in reconcile(&mut running, &mut stopping, &desired) {
            let Some(stored) = current.get(&name) else { continue };
            let spec = match stored.parsed() {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(trigger = %name, error = %e, "stored trigger is invalid; not running it");
                    continue;
                }
            };
            let (sink, state, trigger) = (sink.clone(), state.clone(), name.clone());
            let previous = stopping.remove(&name);
            let task = match spec.source {
                SourceConfig::Cron(config) => Supervised::spawn_after(revision, previous, |stop| {
                    evoke_connectors::cron::run(trigger, spec.function, config, sink, state, stop)
                }),
                // Served by the API at /hooks/<trigger>: no task here.
                SourceConfig::Webhook(_) => continue,
                SourceConfig::S3(config) => {
                    match s3_task(&invoker, &name, spec.function, config, spec.filter, stored.updated_at) {
                        Some(start) => Supervised::spawn_after(revision, previous, start),
                        None => continue,
                    }
                }
                // Every other kind runs on the shared queue pipeline.
                source => match queues::task(&invoker, &name, spec.function, source, spec.filter) {
                    Some(start) => Supervised::spawn_after(revision, previous, start),
                    None => continue,
                },
            };
            tracing::info!(trigger = %name, "source started");
            running.insert(name, task);
        }
        tokio::select! {
            changed = triggers.changed() => if changed.is_err() { break },
            changed = stores.changed() => if changed.is_err() { break },
            changed = connections.changed() => if changed.is_err() { break },
            _ = shutdown.recv() => break,
        }
    }
    stop_all(running).await;
}

pub(crate) type Start =
    Box<dyn FnOnce(tokio::sync::watch::Receiver<bool>) -> futures::future::BoxFuture<'static, ()> + Send>;

/// The task of an s3 trigger on this node: SQS and polling need one; a
/// webhook is served by the API.
fn s3_task(
    invoker: &Arc<Invoker>,
    trigger: &str,
    function: String,
    config: evoke_connectors::s3::S3Config,
    filter: Option<evoke_connectors::filter::Filter>,
    since: chrono::DateTime<chrono::Utc>,
) -> Option<Start> {
    use evoke_connectors::s3::Via;
    #[cfg(feature = "s3")]
    {
        use futures::FutureExt;
        let task = s3::Task {
            invoker: invoker.clone(),
            trigger: evoke_connectors::s3::S3Trigger {
                name: trigger.to_string(),
                function,
                config,
                filter,
            },
            since,
        };
        match task.trigger.config.via {
            Via::Webhook => None,
            Via::Sqs => Some(Box::new(move |stop| task.read_sqs(stop).boxed())),
            Via::Poll => Some(Box::new(move |stop| task.poll(stop).boxed())),
        }
    }
    #[cfg(not(feature = "s3"))]
    {
        let _ = (invoker, function, filter, since);
        if config.via != Via::Webhook {
            tracing::error!(
                trigger,
                "this build of evoke has no object storage support (the `s3` feature); not running the trigger"
            );
        }
        None
    }
}
