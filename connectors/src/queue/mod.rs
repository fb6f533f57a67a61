//! What every message-queue source shares: a [`Message`] as a broker hands
//! it over, its CloudEvents protocol binding ([`Binding`]), the optional
//! batching, and the [`Pipeline`] that stores messages on the function's
//! queue and acknowledges each upstream only after JetStream stored it.
//!
//! A kind (Kafka, AMQP, MQTT, NATS) only implements [`Consumer`]: receive
//! the next message with an [`Ack`] that, run, acknowledges it upstream.
//! The pipeline keeps up to [`WINDOW`] stores in flight and runs the acks
//! in the order the messages arrived, so an acknowledgement never passes
//! one for an earlier message: a Kafka offset is stored only once every
//! earlier offset of the consumer is stored on the queue (contiguous
//! commits by construction).
//!
//! A message that cannot become an event (malformed CloudEvent, larger
//! than `max_body`) is parked in the dead-letter queue with its raw bytes
//! (cut to the park limit) and the reason, then acknowledged: it never
//! blocks the queue behind it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesOrdered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::event::{Event, valid_extension_name};
use crate::filter::Filter;
use crate::source::{Delivered, Published, Sink, SinkError, deliver, park_until_stored};
use crate::units::ByteSize;

/// Stores in flight at once per trigger (acks still run in order).
pub const WINDOW: usize = 64;
/// Largest message taken as an event, unless the trigger says otherwise.
pub const DEFAULT_MAX_BODY: ByteSize = ByteSize(1024 * 1024);
/// The raw bytes kept of a parked message.
pub const PARK_LIMIT: usize = 256 * 1024;
/// Extension naming the trigger an event came through.
pub const EXT_TRIGGER: &str = "evoketrigger";
/// Extension with the message's headers/properties that are not
/// CloudEvents attributes, as a JSON object.
pub const EXT_HEADERS: &str = "evokeheaders";
/// Extension with the message's ordering key (Kafka key, routing key, topic).
pub const EXT_KEY: &str = "evokekey";

/// Acknowledges one message upstream; run only once its event is stored.
pub type Ack = BoxFuture<'static, Result<(), String>>;

/// An ack for brokers where there is nothing to acknowledge (core NATS).
pub fn no_ack() -> Ack {
    Box::pin(async { Ok(()) })
}

/// One message as a broker handed it over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub body: Bytes,
    pub content_type: Option<String>,
    /// Headers, application properties or user properties, as text.
    pub headers: Vec<(String, String)>,
    /// The ordering key (Kafka key, AMQP routing key, MQTT topic, subject).
    pub key: Option<String>,
    /// The topic, routing key or subject: the event's `subject`.
    pub subject: Option<String>,
    /// Stable id of this message at its origin (topic+partition+offset,
    /// AMQP message id, stream sequence), so a redelivery is the same
    /// invocation; `None` when the broker has none (each delivery is then
    /// a new event, deduplicated only by CloudEvents id when present).
    pub origin_id: Option<String>,
    /// Where it came from, as extensions (`evokekafkapartition`, ...).
    pub origin: Vec<(&'static str, String)>,
    /// When the broker says it was produced.
    pub time: Option<DateTime<Utc>>,
}

/// Incoming: a message and how to acknowledge it.
pub struct Incoming {
    pub message: Message,
    pub ack: Ack,
}

/// What a broker kind implements.
pub trait Consumer: Send {
    /// The next message. `Err` means the connection is lost: the caller
    /// reconnects (messages not acknowledged are redelivered by the broker).
    fn next(&mut self) -> impl Future<Output = Result<Incoming, String>> + Send;
}

/// Where a kind's messages carry CloudEvents attributes (binary mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Kafka: `ce_` headers, UTF-8 values.
    Kafka,
    /// AMQP: `cloudEvents:` (or `cloudEvents_`, JMS-friendly) application properties.
    Amqp,
    /// MQTT 5: user properties with the attribute's bare name.
    Mqtt,
    /// NATS: `ce-` headers, as the NATS binding (and HTTP) spell them.
    Nats,
    /// No headers at all (syslog, files): never a binary-mode CloudEvent.
    None,
}

impl Binding {
    /// The attribute a header names in this binding, if any.
    fn attribute(self, header: &str) -> Option<&str> {
        let strip = |prefix: &str| {
            (header.len() > prefix.len() && header[..prefix.len()].eq_ignore_ascii_case(prefix))
                .then(|| &header[prefix.len()..])
        };
        match self {
            Binding::Kafka => strip("ce_"),
            Binding::Amqp => strip("cloudEvents:").or_else(|| strip("cloudEvents_")),
            Binding::Nats => strip("ce-"),
            Binding::Mqtt => Some(header),
            Binding::None => None,
        }
    }

    /// The header carrying `attribute` when evoke sends an event in this binding.
    pub fn header(self, attribute: &str) -> String {
        match self {
            Binding::Kafka => format!("ce_{attribute}"),
            Binding::Amqp => format!("cloudEvents:{attribute}"),
            Binding::Nats => format!("ce-{attribute}"),
            Binding::Mqtt | Binding::None => attribute.to_string(),
        }
    }

    /// `event` in binary mode: headers for its attributes, its data as the
    /// body, its `datacontenttype` as the content type.
    pub fn encode(self, event: &Event) -> (Vec<(String, String)>, Option<String>, Bytes) {
        let mut h = vec![
            (self.header("specversion"), event.specversion.clone()),
            (self.header("id"), event.id.clone()),
            (self.header("source"), event.source.clone()),
            (self.header("type"), event.ty.clone()),
        ];
        if let Some(s) = &event.subject {
            h.push((self.header("subject"), s.clone()));
        }
        if let Some(t) = &event.time {
            h.push((self.header("time"), t.to_rfc3339()));
        }
        for (k, v) in &event.extensions {
            h.push((self.header(k), v.clone()));
        }
        (h, event.datacontenttype.clone(), event.data.clone())
    }
}

/// Optional batching: one event per batch, closed by whichever limit comes first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most messages in one batch (default 100).
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Most bytes in one batch (default 256Ki): the messages' bodies plus
    /// about 256 bytes each for the event around them.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Longest a batch waits for more messages (default 1s).
    #[serde(default = "default_max_wait", with = "crate::units::duration")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            max_wait: default_max_wait(),
        }
    }
}

fn default_max_records() -> usize {
    100
}
fn default_max_bytes() -> ByteSize {
    ByteSize(256 * 1024)
}
fn default_max_wait() -> Duration {
    Duration::from_secs(1)
}

/// How a trigger orders the runs of its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Events run in parallel, up to the function's `max_instances` (default).
    #[default]
    None,
    /// Events with the same key (Kafka key, AMQP routing key, MQTT topic,
    /// NATS subject) run one at a time in arrival order, retries included;
    /// different keys run in parallel. A message is acknowledged upstream
    /// only once its invocation finished (succeeded or dead-lettered), so a
    /// restart redelivers it and the chain is rebuilt.
    Key,
}

impl Order {
    pub fn is_none(&self) -> bool {
        *self == Order::None
    }
}

/// The largest batch body: a batch never exceeds what the queue takes
/// (NATS's default max payload is 1 MiB; the envelope needs room).
pub const MAX_BATCH_BYTES: ByteSize = ByteSize(768 * 1024);
/// Most messages in one batch.
pub const MAX_BATCH_RECORDS: usize = 10_000;

/// Checks the fields every queue trigger shares; `batch.*` and `max_body`.
pub fn check_common(batch: Option<&BatchConfig>, max_body: Option<ByteSize>) -> Vec<crate::trigger::Problem> {
    let mut p = Vec::new();
    if let Some(b) = batch {
        if b.max_records == 0 || b.max_records > MAX_BATCH_RECORDS {
            p.push((
                "batch.max_records".into(),
                format!("is out of range 1..{MAX_BATCH_RECORDS}"),
            ));
        }
        if b.max_bytes.0 == 0 || b.max_bytes > MAX_BATCH_BYTES {
            p.push((
                "batch.max_bytes".into(),
                format!("is out of range 1..{MAX_BATCH_BYTES}"),
            ));
        }
        if b.max_wait.is_zero() || b.max_wait > Duration::from_secs(300) {
            p.push(("batch.max_wait".into(), "is out of range 1ms..5m".into()));
        }
    }
    if let Some(m) = max_body
        && (m.0 == 0 || m > ByteSize::mib(8))
    {
        p.push(("max_body".into(), "is out of range 1..8Mi".into()));
    }
    p
}

/// How one trigger turns messages into events.
#[derive(Debug, Clone)]
pub struct Shape {
    pub trigger: String,
    pub function: String,
    /// `kafka`, `amqp`, `mqtt`, `nats`: the event types are `evoke.<kind>.message`
    /// and `evoke.<kind>.batch`.
    pub kind: &'static str,
    pub binding: Binding,
    pub filter: Option<Filter>,
    pub batch: Option<BatchConfig>,
    pub order: Order,
    pub max_body: ByteSize,
}

impl Shape {
    fn source(&self) -> String {
        format!("/evoke/triggers/{}", self.trigger)
    }

    /// The event a message becomes, or why it cannot become one.
    pub fn event(&self, m: &Message) -> Result<Event, String> {
        if m.body.len() as u64 > self.max_body.0 {
            return Err(format!(
                "MessageTooLarge: {} bytes, more than this trigger's max_body {}",
                m.body.len(),
                self.max_body
            ));
        }
        let essence = m
            .content_type
            .as_deref()
            .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        let structured = essence.as_deref() == Some("application/cloudevents+json");
        let mut event = if structured {
            Event::from_json(&m.body).map_err(|e| format!("MalformedCloudEvent: {e}"))?
        } else if let Some(e) = self.binary(m)? {
            e
        } else {
            let id = m.origin_id.clone().unwrap_or_else(unique_id);
            let mut e = Event::new(id, self.source(), format!("evoke.{}.message", self.kind));
            e.time = m.time.or(e.time);
            e.subject = m.subject.clone();
            let ct = m.content_type.clone().or_else(|| Some(sniff(&m.body).to_string()));
            e.with_data(ct, m.body.clone())
        };
        // Headers that were not read as attributes travel as one extension.
        let binary = !structured && self.carries_attributes(m);
        let rest: Map<String, Value> = m
            .headers
            .iter()
            .filter(|(k, _)| !(binary && self.binding.attribute(k).is_some_and(|a| self.is_copied(a))))
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        event.time.get_or_insert_with(Utc::now);
        let ext = &mut event.extensions;
        ext.insert(EXT_TRIGGER.into(), self.trigger.clone());
        for (k, v) in &m.origin {
            ext.insert((*k).to_string(), v.clone());
        }
        if let Some(k) = &m.key {
            ext.insert(EXT_KEY.into(), k.clone());
        }
        if !rest.is_empty() {
            ext.insert(EXT_HEADERS.into(), Value::Object(rest).to_string());
        }
        Ok(event)
    }

    /// Whether the message's headers hold a binary-mode CloudEvent.
    fn carries_attributes(&self, m: &Message) -> bool {
        m.headers.iter().any(|(k, _)| {
            self.binding
                .attribute(k)
                .is_some_and(|a| a.eq_ignore_ascii_case("specversion"))
        })
    }

    /// Whether header attribute `a` becomes part of a binary-mode event
    /// (MQTT user properties that are no valid extension name stay headers).
    fn is_copied(&self, a: &str) -> bool {
        let a = a.to_ascii_lowercase();
        !matches!(a.as_str(), "data" | "data_base64" | "datacontenttype")
            && (is_attribute(&a) || valid_extension_name(&a))
    }

    /// A binary-mode CloudEvent, when the message carries one.
    fn binary(&self, m: &Message) -> Result<Option<Event>, String> {
        if !self.carries_attributes(m) {
            return Ok(None);
        }
        let mut obj = Map::new();
        for (name, value) in &m.headers {
            let Some(attr) = self.binding.attribute(name) else {
                continue;
            };
            if self.is_copied(attr) {
                obj.insert(attr.to_ascii_lowercase(), Value::String(value.clone()));
            }
        }
        let mut e = Event::from_value(Value::Object(obj)).map_err(|e| format!("MalformedCloudEvent: {e}"))?;
        e.datacontenttype = m.content_type.clone();
        e.data = m.body.clone();
        Ok(Some(e))
    }

    /// The dedupe id of a message's event: its origin id, else (for a
    /// CloudEvent) its source and id, else unique.
    pub fn dedupe(&self, m: &Message, e: &Event) -> String {
        match &m.origin_id {
            Some(o) => format!("{}.{}.{o}", self.kind, self.trigger),
            None => format!("ce.{}.{}", e.source, e.id),
        }
    }

    /// One event for a batch of (already converted) events: data is the
    /// JSON array of their structured forms.
    pub fn batch_event(&self, events: &[(Event, String)]) -> (Event, String) {
        // Raw, not `Value`s: each item's JSON data byte for byte.
        let data: Vec<Box<serde_json::value::RawValue>> = events.iter().map(|(e, _)| e.to_raw_json()).collect();
        let dedupe = match (events.first(), events.last()) {
            (Some((_, a)), Some((_, b))) if a == b => a.clone(),
            (Some((_, a)), Some((_, b))) => format!("batch.{}", hash(&format!("{a}\n{b}\n{}", events.len()))),
            _ => unique_id(),
        };
        let mut e = Event::new(dedupe.clone(), self.source(), format!("evoke.{}.batch", self.kind)).with_batch(&data);
        e.extensions.insert(EXT_TRIGGER.into(), self.trigger.clone());
        (e, dedupe)
    }

    /// The event a message that cannot be one is parked as: its raw bytes
    /// (cut to [`PARK_LIMIT`]) and where it came from.
    pub fn poison_event(&self, m: &Message) -> (Event, String) {
        let id = m.origin_id.clone().unwrap_or_else(unique_id);
        let mut body = m.body.clone();
        let cut = body.len() > PARK_LIMIT;
        body.truncate(PARK_LIMIT);
        let mut e = Event::new(id.clone(), self.source(), format!("evoke.{}.unreadable", self.kind))
            .with_data(Some("application/octet-stream".into()), body);
        e.subject = m.subject.clone();
        e.extensions.insert(EXT_TRIGGER.into(), self.trigger.clone());
        for (k, v) in &m.origin {
            e.extensions.insert((*k).to_string(), v.clone());
        }
        if cut {
            e.extensions.insert("evoketruncated".into(), m.body.len().to_string());
        }
        let headers: Map<String, Value> = m
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        if !headers.is_empty() {
            e.extensions
                .insert(EXT_HEADERS.into(), Value::Object(headers).to_string());
        }
        (e, format!("{}.{}.unreadable.{id}", self.kind, self.trigger))
    }
}

fn is_attribute(name: &str) -> bool {
    matches!(
        name,
        "specversion" | "id" | "source" | "type" | "subject" | "time" | "dataschema"
    )
}

/// What the body looks like when the broker does not say.
fn sniff(body: &[u8]) -> &'static str {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        "application/json"
    } else if std::str::from_utf8(body).is_ok() {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}

fn hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..16])
}

/// An id no other delivery has.
pub fn unique_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("{now:x}-{:016x}", h.finish())
}

/// Counters of one trigger's source, for `/metrics` and `evoke triggers`.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub filtered: AtomicU64,
    pub parked: AtomicU64,
    pub acked: AtomicU64,
    /// Messages the source lost before they were received (syslog over UDP:
    /// the kernel's drops and datagrams evoke could not take in time).
    pub dropped: AtomicU64,
    /// Messages cut at the source's size limit (kept, marked `truncated`).
    pub truncated: AtomicU64,
    /// Files being tailed (file sources).
    pub files: AtomicU64,
    /// Messages waiting at the broker (Kafka: high watermark minus
    /// position; AMQP: queue depth; JetStream: consumer pending), when known.
    pub lag: AtomicU64,
    pub lag_known: std::sync::atomic::AtomicBool,
    pub connected: std::sync::atomic::AtomicBool,
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Stats {
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag, Ordering::Relaxed);
        self.lag_known.store(true, Ordering::Relaxed);
    }

    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// A JSON view for `evoke triggers`.
    pub fn view(&self) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v = serde_json::json!({
            "connected": self.connected.load(Ordering::Relaxed),
            "received": n(&self.received), "stored": n(&self.stored), "duplicates": n(&self.duplicates),
            "filtered": n(&self.filtered), "parked": n(&self.parked), "acked": n(&self.acked),
        });
        for (name, a) in [
            ("dropped", &self.dropped),
            ("truncated", &self.truncated),
            ("files", &self.files),
        ] {
            if n(a) > 0 {
                v[name] = n(a).into();
            }
        }
        if self.lag_known.load(Ordering::Relaxed) {
            v["lag"] = n(&self.lag).into();
        }
        if let Some(e) = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            v["error"] = e.into();
        }
        v
    }
}

/// Stores a trigger's messages and acknowledges them in order.
pub struct Pipeline<S> {
    pub shape: Shape,
    pub sink: Arc<S>,
    pub stats: Arc<Stats>,
}

/// What a unit of work (a message or a batch) came to.
enum Done {
    /// Stored, parked or filtered: acknowledge.
    Ack(Vec<Ack>),
    /// Stopped before it was stored: do not acknowledge.
    Stopped,
}

/// What storing a unit came to.
enum Stored {
    /// Stopped first: nothing may be acknowledged.
    Stopped,
    /// On the queue as the invocation with this dedupe id (or already there).
    Invocation(String),
    /// Filtered or parked: nothing will run.
    Nothing,
}

/// Resolves once an ordered unit is finished: its invocation succeeded or
/// was dead-lettered (`true`), or the pipeline stopped first (`false`).
type Settled = Shared<BoxFuture<'static, bool>>;

/// Keys with a unit that may still be running before old ones are forgotten.
const MAX_CHAINS: usize = 4096;

/// The last unit of each key of an `order = "key"` trigger: the next unit
/// of that key waits for it to finish before it is stored.
#[derive(Default)]
struct Chains(HashMap<String, Settled>);

impl Chains {
    fn last(&self, key: &str) -> Option<Settled> {
        self.0.get(key).cloned()
    }

    fn push(&mut self, key: String, settled: Settled) {
        if self.0.len() >= MAX_CHAINS && !self.0.contains_key(&key) {
            // Finished units need no successor to wait for them.
            self.0.retain(|_, s| s.peek().is_none());
        }
        self.0.insert(key, settled);
    }
}

impl<S: Sink> Pipeline<S> {
    /// Consumes until `stop` or until the consumer's connection is lost
    /// (`Err`, to reconnect). Messages taken but not stored when it returns
    /// are not acknowledged: the broker delivers them again.
    pub async fn run(&self, consumer: &mut impl Consumer, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let mut inflight: FuturesOrdered<BoxFuture<'static, Done>> = FuturesOrdered::new();
        let mut chains = Chains::default();
        let mut batch: Vec<Incoming> = Vec::new();
        let mut batch_bytes = 0u64;
        let mut deadline: Option<tokio::time::Instant> = None;
        let result = loop {
            if *stop.borrow() {
                break Ok(());
            }
            let room = inflight.len() < WINDOW;
            let close_at = deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = stop.changed() => break Ok(()),
                Some(done) = inflight.next() => {
                    match self.acknowledge(done).await {
                        Ok(true) => {}
                        // Only a stop leaves a unit unstored.
                        Ok(false) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                }
                _ = tokio::time::sleep_until(close_at), if deadline.is_some() => {
                    inflight.push_back(self.batch_work(std::mem::take(&mut batch), &mut chains, stop));
                    (batch_bytes, deadline) = (0, None);
                }
                next = consumer.next(), if room => {
                    let incoming = match next {
                        Ok(i) => i,
                        Err(e) => break Err(e),
                    };
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = self.shape.batch else {
                        inflight.push_back(self.work(incoming, &mut chains, stop));
                        continue;
                    };
                    let size = weight(&incoming.message);
                    if !batch.is_empty() && batch_bytes + size > b.max_bytes.0 {
                        inflight.push_back(self.batch_work(std::mem::take(&mut batch), &mut chains, stop));
                        (batch_bytes, deadline) = (0, None);
                    }
                    batch_bytes += size;
                    batch.push(incoming);
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + b.max_wait);
                    if batch.len() >= b.max_records {
                        inflight.push_back(self.batch_work(std::mem::take(&mut batch), &mut chains, stop));
                        (batch_bytes, deadline) = (0, None);
                    }
                }
            }
        };
        // Finish what is in flight (stores already sent), acknowledging
        // only what was stored, and nothing after the first unit that was
        // not (a Kafka offset stored past it would commit it unstored); a
        // batch not closed is not acknowledged.
        if result.is_ok() {
            while let Some(done) = inflight.next().await {
                if !matches!(self.acknowledge(done).await, Ok(true)) {
                    break;
                }
            }
        }
        result
    }

    /// Acknowledges a unit; `Ok(false)` when it was stopped before it was
    /// stored (or finished, when ordered): nothing after it may be acknowledged.
    async fn acknowledge(&self, done: Done) -> Result<bool, String> {
        let Done::Ack(acks) = done else { return Ok(false) };
        for ack in acks {
            ack.await.map_err(|e| format!("acknowledging upstream: {e}"))?;
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Stores an event on the function's queue (or parks it when the queue
    /// refuses it for good), and counts what happened.
    async fn store(&self, event: &Event, dedupe: String, stop: impl Future<Output = ()>) -> Stored {
        let delivered = deliver(&*self.sink, &self.shape.function, event, &dedupe, stop).await;
        let (counter, stored) = match delivered {
            None => return Stored::Stopped,
            Some(Delivered::Queued(Published::Stored)) => (&self.stats.stored, Stored::Invocation(dedupe)),
            Some(Delivered::Queued(Published::Duplicate)) => (&self.stats.duplicates, Stored::Invocation(dedupe)),
            Some(Delivered::Parked(_)) => (&self.stats.parked, Stored::Nothing),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        stored
    }

    fn detached(&self) -> Pipeline<S> {
        Pipeline {
            shape: self.shape.clone(),
            sink: self.sink.clone(),
            stats: self.stats.clone(),
        }
    }

    /// The unit of work for one message (`key` set when ordered): `store`
    /// runs once the previous unit of its key finished, and with ordering
    /// the acks wait until its own invocation finished too.
    fn unit<F>(
        &self,
        key: Option<String>,
        chains: &mut Chains,
        acks: Vec<Ack>,
        stop: &watch::Receiver<bool>,
        store: F,
    ) -> BoxFuture<'static, Done>
    where
        F: Future<Output = Stored> + Send + 'static,
    {
        let me = self.detached();
        let ordered = key.is_some();
        let prev = key.as_deref().and_then(|k| chains.last(k));
        let mut stop = stop.clone();
        let stage: Settled = async move {
            if let Some(prev) = prev {
                tokio::select! {
                    _ = prev => {}
                    _ = stop.wait_for(|s| *s) => return false,
                }
            }
            match store.await {
                Stored::Stopped => false,
                Stored::Nothing => true,
                Stored::Invocation(_) if !ordered => true,
                Stored::Invocation(dedupe) => me.finished(&dedupe, stop).await,
            }
        }
        .boxed()
        .shared();
        if let Some(k) = key {
            chains.push(k, stage.clone());
        }
        Box::pin(async move {
            match stage.await {
                true => Done::Ack(acks),
                false => Done::Stopped,
            }
        })
    }

    /// Waits until the invocation of `dedupe` succeeded or was
    /// dead-lettered; `false` when stopped first.
    async fn finished(&self, dedupe: &str, mut stop: watch::Receiver<bool>) -> bool {
        let mut delays = crate::backoff::PUBLISH.delays();
        loop {
            let r = tokio::select! {
                r = self.sink.settled(&self.shape.function, dedupe) => r,
                _ = stop.wait_for(|s| *s) => return false,
            };
            match r {
                // Rejected: it can never run (its function is gone).
                Ok(()) | Err(SinkError::Rejected(_)) => return true,
                Err(SinkError::Unavailable(e)) => {
                    let delay = delays.next().unwrap_or(crate::backoff::PUBLISH.max);
                    tracing::warn!(trigger = self.shape.trigger, error = %e, "cannot tell whether the previous event of a key finished; asking again in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return false,
                    }
                }
            }
        }
    }

    /// The ordering key of a message, when the trigger orders by key.
    fn key_of(&self, m: &Message) -> Option<String> {
        (self.shape.order == Order::Key).then(|| m.key.clone()).flatten()
    }

    /// The event a message becomes and its dedupe id; `Ok(None)` when the
    /// trigger's filter drops it (counted), `Err` when it cannot be an event.
    fn read(&self, m: &Message) -> Result<Option<(Event, String)>, String> {
        let event = self.shape.event(m)?;
        if self.shape.filter.as_ref().is_some_and(|f| !f.matches(&event)) {
            self.stats.filtered.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let dedupe = self.shape.dedupe(m, &event);
        Ok(Some((event, dedupe)))
    }

    /// Stores one message (or parks it); its ack comes back.
    fn work(&self, incoming: Incoming, chains: &mut Chains, stop: &watch::Receiver<bool>) -> BoxFuture<'static, Done> {
        let Incoming { message, ack } = incoming;
        let key = self.key_of(&message);
        let me = self.detached();
        let stop_rx = stop.clone();
        let store = async move {
            match me.read(&message) {
                Ok(Some((event, dedupe))) => me.store(&event, dedupe, stopped(&stop_rx)).await,
                Ok(None) => Stored::Nothing,
                Err(reason) => me.park(&message, &reason, stopped(&stop_rx)).await,
            }
        };
        self.unit(key, chains, vec![ack], stop, store)
    }

    /// Parks a message that cannot be an event: [`Stored::Nothing`] once
    /// parked, [`Stored::Stopped`] when stopped first.
    async fn park(&self, m: &Message, reason: &str, stop: impl Future<Output = ()>) -> Stored {
        tracing::warn!(trigger = self.shape.trigger, %reason, "parking an unreadable message in the dead-letter queue");
        let (event, dedupe) = self.shape.poison_event(m);
        match park_until_stored(&*self.sink, &self.shape.function, &event, &dedupe, reason, stop).await {
            Some(()) => {
                self.stats.parked.fetch_add(1, Ordering::Relaxed);
                Stored::Nothing
            }
            None => Stored::Stopped,
        }
    }

    /// Stores a batch as one event (messages that cannot be events are
    /// parked one by one); every message's ack comes back. With ordering,
    /// batches run one at a time in arrival order.
    fn batch_work(
        &self,
        batch: Vec<Incoming>,
        chains: &mut Chains,
        stop: &watch::Receiver<bool>,
    ) -> BoxFuture<'static, Done> {
        let me = self.detached();
        let (messages, acks): (Vec<Message>, Vec<Ack>) = batch.into_iter().map(|i| (i.message, i.ack)).unzip();
        let key = (self.shape.order == Order::Key).then(String::new);
        let stop_rx = stop.clone();
        let store = async move {
            let mut events = Vec::with_capacity(messages.len());
            for message in &messages {
                match me.read(message) {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => {}
                    Err(reason) => {
                        if let Stored::Stopped = me.park(message, &reason, stopped(&stop_rx)).await {
                            return Stored::Stopped;
                        }
                    }
                }
            }
            if events.is_empty() {
                return Stored::Nothing;
            }
            let (event, dedupe) = me.shape.batch_event(&events);
            me.store(&event, dedupe, stopped(&stop_rx)).await
        };
        self.unit(key, chains, acks, stop, store)
    }
}

/// What a message adds to a batch's event: its body and, roughly, the
/// CloudEvents envelope around it (attributes and extensions), so a batch
/// of many small messages still closes before the queue's message limit.
fn weight(m: &Message) -> u64 {
    fn pairs<K: AsRef<str>>(v: &[(K, String)]) -> usize {
        v.iter().map(|(k, v)| k.as_ref().len() + v.len() + 6).sum()
    }
    let key = m.key.as_ref().map_or(0, |k| k.len() + 16);
    let subject = m.subject.as_ref().map_or(0, |s| s.len() + 16);
    (m.body.len() + pairs(&m.headers) + pairs(&m.origin) + key + subject + ENVELOPE) as u64
}

/// The attributes every event of a batch carries (id, source, type, time...).
const ENVELOPE: usize = 256;

/// Resolves once `stop` says stop.
fn stopped(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut stop = stop.clone();
    async move {
        let _ = stop.wait_for(|s| *s).await;
    }
}

/// Runs `connect` then the pipeline over what it gives, reconnecting with
/// backoff whenever the connection is lost, until `stop`.
pub async fn run_reconnecting<S, C, F, Fut>(pipeline: Pipeline<S>, mut connect: F, mut stop: watch::Receiver<bool>)
where
    S: Sink,
    C: Consumer,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<C, String>>,
{
    let trigger = pipeline.shape.trigger.clone();
    let mut delays = crate::backoff::RECONNECT.delays();
    while !*stop.borrow() {
        let connected = tokio::select! {
            c = connect() => c,
            _ = stop.changed() => return,
        };
        let error = match connected {
            Ok(mut consumer) => {
                tracing::info!(trigger, kind = pipeline.shape.kind, "consuming");
                pipeline.stats.connected.store(true, Ordering::Relaxed);
                pipeline.stats.set_error(None);
                delays = crate::backoff::RECONNECT.delays();
                let r = pipeline.run(&mut consumer, &mut stop).await;
                pipeline.stats.connected.store(false, Ordering::Relaxed);
                match r {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        pipeline.stats.set_error(Some(error.clone()));
        let delay = delays.next().unwrap_or(crate::backoff::RECONNECT.max);
        tracing::warn!(trigger, error, "broker connection lost; reconnecting in {delay:?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The state key where a queue trigger notes its counters, for `evoke triggers`.
pub fn last_event_key(trigger: &str) -> String {
    format!("queue.{trigger}")
}

/// Headers as a map (the last value of a repeated name wins), for tests and views.
pub fn header_map(h: &[(String, String)]) -> BTreeMap<String, String> {
    h.iter().cloned().collect()
}

#[cfg(test)]
mod tests;
