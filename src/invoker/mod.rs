//! Getting events to functions: sync runs, the async queue, retries by
//! error class, dead letters, destinations and invocation records.
//!
//! # Layout
//! - [`worker`]: one durable pull consumer per function, running events.
//! - `settle`: the outcome of an attempt: ack, retry by error class, or DLQ.
//! - `commit`: outcome records stored and their events acked, many at once.
//! - backoff timing lives in `evoke_connectors::backoff`, shared with the sources.
//! - [`records`]: invocation records (KV EVOKE_INVOCATIONS).
//! - [`dlq`]: the dead-letter queue (stream EVOKE_DLQ): list, show, redrive.
//! - [`destinations`]: `on_success` / `on_failure` delivery.

pub mod batches;
mod commit;
pub mod destinations;
pub mod dlq;
pub mod records;
pub mod relay;
mod settle;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use bytes::Bytes;
use evoke_connectors::Event;
use sha2::{Digest, Sha256};

pub use evoke_connectors::backoff as retry;

use crate::bus::{self, Bus, NatsError, OrNats};
use crate::executor::{Executor, InvokeError, Run};
use crate::observe::logs::{LogBatch, LogLine};
use crate::observe::metrics::Metrics;
use crate::registry::triggers::TriggerRegistry;
use crate::registry::{DeployedFunction, Registry};
use crate::stores::Stores;
use records::{Mode, Record, Status};

/// Why an invocation record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// Stored, but not a record this evoke can read: a system error too
    /// (never "no record": that would forget attempts and retries).
    #[error("invocation record {id} is unreadable: {message}")]
    Unreadable { id: String, message: String },
}

/// Why an async invocation could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("the event is {size} bytes; NATS accepts at most {max} bytes per message")]
    TooLarge { size: usize, max: usize },
    #[error("JetStream did not accept the event: {0}")]
    Unavailable(String),
}

/// Everything needed to run and queue invocations on this node.
pub struct Invoker {
    pub bus: Bus,
    pub registry: Registry,
    pub triggers: TriggerRegistry,
    /// Object stores and this node's clients for them.
    pub stores: Arc<Stores>,
    /// Broker connections, queue trigger stats and destination producers.
    pub connections: Arc<crate::connections::Connections>,
    pub executor: Arc<Executor>,
    pub metrics: Arc<Metrics>,
    /// This node's name, recorded in every attempt.
    pub node: String,
    /// How long JetStream waits for an ack before redelivering an event to
    /// another worker (progress acks are sent at a third of it).
    pub ack_wait: Duration,
    /// Whether sync invocations run on this node (it has workers) or are
    /// relayed to a worker node over NATS.
    pub runs_locally: bool,
    /// Whether HTTP destinations may reach link-local addresses.
    pub allow_link_local: bool,
    /// How long a function's workers wait with no event before they stop
    /// pulling (until woken: see [`worker`]).
    pub worker_idle: Duration,
    /// How often workers look for queued events no wake told them about.
    pub worker_sweep: Duration,
    /// Functions whose event consumer this node has made sure of (by
    /// revision), and when it last woke their workers.
    queues: Mutex<HashMap<String, QueueSeen>>,
    pub(crate) http: reqwest::Client,
    /// Started on first use.
    committer: std::sync::OnceLock<commit::Committer>,
}

/// What this node knows of one function's queue.
struct QueueSeen {
    revision: u64,
    woken: Option<Instant>,
}

/// Wakes for one function are sent at most this often by one node: its
/// workers stay awake far longer than this after a wake (see
/// [`worker::IDLE_AFTER`]), so a wake left out never finds them asleep.
const WAKE_EVERY: Duration = Duration::from_millis(100);

/// A new invocation id: time-ordered, subject- and KV-safe.
pub fn new_invocation_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A stable invocation id for an event that carries its own id (its origin:
/// a CloudEvent's source and id, a webhook delivery, a cron tick), so the
/// same event sent twice to one function is deduplicated by JetStream. The
/// function is part of it: one event sent to two functions is two
/// invocations. Every path that queues an event derives its id here.
pub fn derived_invocation_id(function: &str, event_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(function.as_bytes());
    h.update([0]);
    h.update(event_id.as_bytes());
    hex::encode(&h.finalize()[..16])
}

impl Invoker {
    pub fn new(bus: Bus, executor: Arc<Executor>, metrics: Arc<Metrics>, node: String, stores: Arc<Stores>) -> Invoker {
        let http = destinations::http_client(false);
        let registry = Registry::new(bus.functions.clone());
        let triggers = TriggerRegistry::new(bus.triggers.clone());
        let connections = Arc::new(crate::connections::Connections::new(
            bus.connections.clone(),
            stores.secrets.clone(),
            node.clone(),
        ));
        Invoker {
            bus,
            registry,
            triggers,
            stores,
            connections,
            executor,
            metrics,
            node,
            ack_wait: worker::ACK_WAIT,
            runs_locally: true,
            allow_link_local: false,
            worker_idle: worker::IDLE_AFTER,
            worker_sweep: worker::SWEEP_EVERY,
            queues: Mutex::new(HashMap::new()),
            http,
            committer: std::sync::OnceLock::new(),
        }
    }

    /// Lets HTTP destinations reach link-local addresses (trusted networks).
    pub fn allow_link_local_destinations(&mut self) {
        self.allow_link_local = true;
        self.http = destinations::http_client(true);
    }

    /// Runs an event now, with no retry (the caller retries): on this node,
    /// or on a worker node when this one runs none.
    pub async fn run_sync(&self, f: &Arc<DeployedFunction>, event: Event, id: &str) -> Run {
        if self.runs_locally {
            self.invoke_sync(f, event, id).await
        } else {
            self.invoke_relayed(f, &event, id).await
        }
    }

    /// Runs an event now, on this node, with no retry (the caller retries).
    pub async fn invoke_sync(&self, f: &Arc<DeployedFunction>, mut event: Event, id: &str) -> Run {
        event
            .extensions
            .insert(evoke_connectors::event::EXT_ATTEMPT.into(), "1".into());
        let mut record = Record::new(id, f.name.as_str(), Mode::Sync, &event.id, Status::Queued);
        let started = record.start_attempt(&self.node);
        let run = self.executor.invoke(f, id, &event, f.spec.timeout).await;
        self.publish_logs(f.name.as_str(), id, &run.logs);
        self.observe(f, &run);
        record.end_attempt(started, &run, &self.node);
        record.finish(
            if run.result.is_ok() {
                Status::Succeeded
            } else {
                Status::Failed
            },
            Some(&run),
        );
        self.put_record(&record).await;
        run
    }

    /// Queues an event for `f`; returns once JetStream has stored it, with
    /// whether JetStream already had it (same id within its duplicate window).
    ///
    /// Nothing else is stored: until a worker writes its record, a queued
    /// invocation is found by its event's subject (see [`Invoker::find_invocation`]).
    pub async fn enqueue(&self, f: &DeployedFunction, event: &Event, id: &str) -> Result<bool, EnqueueError> {
        self.enqueue_payload(f, Bytes::from(event.to_json()), id).await
    }

    /// [`Invoker::enqueue`] for an event already encoded as its envelope
    /// ([`Event::to_json`] or [`Event::to_json_checked`]).
    pub async fn enqueue_payload(&self, f: &DeployedFunction, payload: Bytes, id: &str) -> Result<bool, EnqueueError> {
        if !valid_id(id) {
            // Its subject would not be one token: no consumer would take it.
            return Err(EnqueueError::Unavailable(format!(
                "`{id}` is not a valid invocation id"
            )));
        }
        let max = self.bus.max_event();
        if payload.len() > max {
            return Err(EnqueueError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let stored = self
            .queue_event(f, id, id, payload, &[])
            .await
            .map_err(|e| EnqueueError::Unavailable(e.to_string()))?;
        Ok(stored.duplicate)
    }

    /// Stores an event on `f`'s queue and wakes its workers: the function's
    /// event consumer first (once per revision on this node: a function
    /// without one has no events, which lets workers and `evoke status`
    /// ignore functions never invoked), then the event, JetStream's ack
    /// awaited, then the wake.
    pub(crate) async fn queue_event(
        &self,
        f: &DeployedFunction,
        id: &str,
        msg_id: &str,
        payload: Bytes,
        extra: &[(&str, &str)],
    ) -> Result<async_nats::jetstream::publish::PublishAck, String> {
        let name = f.name.as_str();
        let known = self.queue_seen(f, |_| ()).is_some();
        if !known {
            // Boxed: creating a consumer is rare, and its future large; every
            // request's future would carry it (~3.5 KB).
            Box::pin(async {
                if !self.bus.has_function_consumer(name).await.map_err(|e| e.to_string())? {
                    self.bus
                        .function_consumer(name, self.ack_wait, worker::max_ack_pending(f))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            })
            .await?;
            lock(&self.queues).insert(
                name.to_string(),
                QueueSeen {
                    revision: f.revision,
                    woken: None,
                },
            );
        }
        let ack = self
            .bus
            .enqueue(name, id, msg_id, payload, extra)
            .await
            .map_err(|e| e.to_string())?;
        let stored = ack.await.map_err(|e| e.to_string())?;
        let now = Instant::now();
        let due = self.queue_seen(f, |q| {
            let due = q.woken.is_none_or(|t| now.duration_since(t) >= WAKE_EVERY);
            if due {
                q.woken = Some(now);
            }
            due
        });
        if due != Some(false) {
            self.bus.wake(name).await;
        }
        Ok(stored)
    }

    /// Runs `with` on what this node knows of `f`'s queue at its revision.
    fn queue_seen<T>(&self, f: &DeployedFunction, with: impl FnOnce(&mut QueueSeen) -> T) -> Option<T> {
        let mut queues = lock(&self.queues);
        queues
            .get_mut(f.name.as_str())
            .filter(|q| q.revision == f.revision)
            .map(with)
    }

    /// Stores code in the object store under its digest (once: code is
    /// content-addressed).
    pub async fn store_code(&self, digest: &str, code: Bytes) -> Result<(), NatsError> {
        let object = digest.trim_start_matches("sha256:");
        let store = &self.bus.code;
        if store.info(object).await.is_err() {
            let mut reader = std::io::Cursor::new(code);
            store.put(object, &mut reader).await.nats("storing the code")?;
        }
        Ok(())
    }

    /// Removes a function: its spec, and the events still queued for it
    /// (they can never run) with its consumer. False when it did not exist.
    pub async fn remove_function(&self, name: &str) -> Result<bool, crate::registry::RegistryError> {
        if !self.registry.delete(name).await? {
            return Ok(false);
        }
        lock(&self.queues).remove(name);
        if let Ok(stream) = self.bus.js.get_stream(bus::STREAM_EVENTS).await {
            let _ = stream.delete_consumer(&bus::consumer_name(name)).await;
            let _ = stream.purge().filter(bus::invoke_filter(name)).await;
            let _ = stream.purge().filter(bus::legacy_invoke_subject(name)).await;
        }
        Ok(true)
    }

    /// Reads an invocation record.
    pub async fn get_record(&self, id: &str) -> Result<Option<Record>, RecordError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let entry = self
            .bus
            .invocations
            .get(id)
            .await
            .nats("reading an invocation record")?;
        match entry {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RecordError::Unreadable {
                    id: id.to_string(),
                    message: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// What `GET /v1/invocations/{id}` shows: the record, or, for an
    /// invocation no worker has written one for yet, a `queued` record made
    /// from its event on the queue.
    pub async fn find_invocation(&self, id: &str) -> Result<Option<Record>, RecordError> {
        // Checked first: `*` or `>` in an id would make the lookup a wildcard.
        if !valid_id(id) {
            return Ok(None);
        }
        if let Some(record) = self.get_record(id).await? {
            return Ok(Some(record));
        }
        if let Some(record) = self.queued_record(id).await? {
            return Ok(Some(record));
        }
        // A worker may have written the record and acked the event between
        // the two reads.
        self.get_record(id).await
    }

    /// A `queued` record for invocation `id` from its event, if it waits on
    /// the queue.
    async fn queued_record(&self, id: &str) -> Result<Option<Record>, RecordError> {
        let doing = "looking for a queued event";
        let stream = self.bus.js.get_stream(bus::STREAM_EVENTS).await.nats(doing)?;
        let msg = match stream
            .get_last_raw_message_by_subject(&bus::invocation_filter(id))
            .await
        {
            Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(None);
            }
            other => other.nats(doing)?,
        };
        let Some(function) = bus::function_in(msg.subject.as_str(), bus::SUBJECT_INVOKE) else {
            return Ok(None);
        };
        let event_id = Event::from_json(&msg.payload).map(|e| e.id).unwrap_or_default();
        let mut record = Record::new(id, function, Mode::Async, &event_id, Status::Queued);
        let queued_at = chrono::DateTime::from_timestamp(msg.time.unix_timestamp(), msg.time.nanosecond());
        if let Some(at) = queued_at {
            record.created_at = at;
            record.updated_at = at;
        }
        Ok(Some(record))
    }

    /// Publishes a record and returns the pending ack.
    async fn publish_record(
        &self,
        record: &Record,
    ) -> Result<PublishAckFuture, async_nats::jetstream::context::PublishError> {
        let subject = bus::invocation_record_subject(&record.id);
        self.bus.js.publish(subject, record.to_bytes()).await
    }

    /// Stores a record without waiting for JetStream's ack (pipelined). The
    /// publish itself is queued here, in order, so a later write of the same
    /// record never lands before an earlier one; a failed ack is logged.
    /// Records are informational: losing one loses no event.
    pub async fn put_record(&self, record: &Record) {
        match self.publish_record(record).await {
            Ok(ack) => {
                let id = record.id.clone();
                tokio::spawn(async move {
                    if let Err(e) = ack.await {
                        tracing::warn!(invocation = %id, error = %e, "cannot store invocation record");
                    }
                });
            }
            Err(e) => tracing::warn!(invocation = %record.id, error = %e, "cannot store invocation record"),
        }
    }

    /// Stores a record and waits for JetStream (used where retry bookkeeping
    /// depends on it).
    pub async fn put_record_acked(&self, record: &Record) -> Result<(), NatsError> {
        let doing = "storing an invocation record";
        let ack = self.publish_record(record).await.nats(doing)?;
        ack.await.map(|_| ()).nats(doing)
    }

    /// Stores a record that must not be lost (an outcome), retrying through
    /// a NATS hiccup for a few seconds. Called before the event is acked, so
    /// a record is never left behind its event.
    pub async fn put_record_durable(&self, record: &Record) {
        if let Err(last) = retry::with_pauses(&retry::RECORD_PAUSES, || self.put_record_acked(record)).await {
            tracing::error!(invocation = %record.id, error = %last, "invocation record not stored; its status is stale");
        }
    }

    /// Stores a settled event's outcome record, then acks the event (with
    /// other events settled at the same time: see [`commit`]). A record
    /// not stored at once is retried as [`Invoker::put_record_durable`]
    /// does before the ack.
    pub(crate) async fn commit(&self, record: &Record, msg: &async_nats::jetstream::Message) {
        let subject = bus::invocation_record_subject(&record.id);
        if let Some(reply) = msg.reply.clone()
            && self.committer().commit(subject, record.to_bytes(), reply).await.is_ok()
        {
            return;
        }
        // Rare (NATS away): boxed, so the common path's future stays small.
        Box::pin(async {
            self.put_record_durable(record).await;
            settle::ack(msg, &record.id).await;
        })
        .await;
    }

    /// Stores an invocation's log lines (one message, not waited for).
    pub fn publish_logs(&self, function: &str, invocation: &str, lines: &[LogLine]) {
        if lines.is_empty() {
            return;
        }
        let batch = LogBatch {
            function: function.to_string(),
            invocation: invocation.to_string(),
            lines: lines.to_vec(),
        };
        let Ok(bytes) = serde_json::to_vec(&batch) else { return };
        self.committer()
            .store(bus::logs_subject(function), Bytes::from(bytes), "function logs");
    }

    /// The node's committer, started on first use (see [`commit`]).
    fn committer(&self) -> &commit::Committer {
        self.committer
            .get_or_init(|| commit::Committer::start(self.bus.js.clone(), self.bus.client.clone()))
    }

    /// Counts a finished run in the metrics.
    pub fn observe(&self, f: &DeployedFunction, run: &Run) {
        let outcome: std::borrow::Cow<str> = match &run.result {
            Ok(_) => crate::observe::metrics::SUCCESS.into(),
            Err(InvokeError::Function { kind, .. }) => serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .map_or("error".into(), Into::into),
            Err(InvokeError::System(_)) => "system-error".into(),
            Err(InvokeError::Busy(_)) => "busy".into(),
            Err(InvokeError::Capacity(_)) => "capacity".into(),
        };
        self.metrics.observe_run(
            f.name.as_str(),
            &outcome,
            run.duration.as_secs_f64(),
            f.spec.memory.0,
            run.cold.is_some(),
        );
    }
}

/// Whether an id can be a KV key and a subject token.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether a publish failed because nothing listens on the subject.
pub fn no_responders(e: &async_nats::jetstream::context::PublishError) -> bool {
    e.kind() == PublishErrorKind::StreamNotFound
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
