//! `kind = "kafka"`: consumes Kafka topics in a consumer group, and
//! produces to a topic as a destination (`kafka://CONN/topic`, idempotent
//! producer, delivery report awaited).
//!
//! Offsets: librdkafka commits only offsets evoke *stored*, and evoke
//! stores a record's offset only once the record's event (and every
//! earlier record's) is on the function's queue — the pipeline runs acks
//! in arrival order — so a committed offset never has a gap below it. When
//! partitions are revoked (another node joined the group), the stored
//! offsets are committed before they are released. The dedupe id is
//! topic+partition+offset: a record read again after a crash is the same
//! invocation. CloudEvents ride in `ce_*` headers (binary mode) or as an
//! `application/cloudevents+json` body (structured mode).

use serde::{Deserialize, Serialize};

use crate::queue::{BatchConfig, Order};
use crate::trigger::Problem;
use crate::units::ByteSize;

/// `kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// `kafka://host:9092,host2:9092`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Topic names, or regular expressions starting with `^`.
    pub topics: Vec<String>,
    /// Consumer group (default `evoke-<trigger>`): nodes share partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Where a new group starts: `earliest`, `latest` (default), or an
    /// RFC 3339 time (records produced before it are skipped).
    #[serde(default = "default_start")]
    pub start: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchConfig>,
    /// `key`: events with the same key run one at a time, in order.
    #[serde(default, skip_serializing_if = "Order::is_none")]
    pub order: Order,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
}

fn default_start() -> String {
    "latest".into()
}

pub const SCHEMES: &[&str] = &["kafka"];

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    /// From the first record produced at or after this time (ms since the epoch).
    At(i64),
}

impl KafkaConfig {
    pub fn check(&self) -> Vec<Problem> {
        let mut p = crate::queue::check_common(self.batch.as_ref(), self.max_body);
        p.extend(crate::amqp::check_connection(&self.connection, &self.url, SCHEMES));
        if self.topics.is_empty() {
            p.push(("topics".into(), "needs at least one topic (or ^regex)".into()));
        }
        for t in &self.topics {
            if t.starts_with('^') {
                continue;
            }
            if t.is_empty() || t.len() > 249 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                p.push((
                    "topics".into(),
                    format!("`{t}` is not a topic name (letters, digits, `.`, `_`, `-`; a regex starts with ^)"),
                ));
            }
        }
        if let Some(g) = &self.group
            && g.is_empty()
        {
            p.push(("group".into(), "must not be empty".into()));
        }
        if let Err(e) = self.start() {
            p.push(("start".into(), e));
        }
        p
    }

    pub fn start(&self) -> Result<Start, String> {
        match self.start.as_str() {
            "earliest" => Ok(Start::Earliest),
            "latest" => Ok(Start::Latest),
            t => chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| Start::At(t.timestamp_millis()))
                .map_err(|_| format!("`{t}` is not `earliest`, `latest` or an RFC 3339 time")),
        }
    }
}

/// The bootstrap servers of a `kafka://a:9092,b:9092` URL.
pub fn brokers(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("kafka://")
        .ok_or_else(|| format!("`{}` is not a kafka:// URL", crate::connection::redact(url)))?;
    let rest = rest.trim_end_matches('/');
    let hosts = rest.rsplit('@').next().unwrap_or(rest);
    if hosts.is_empty() {
        return Err("the kafka:// URL names no broker".into());
    }
    Ok(hosts.to_string())
}

#[cfg(feature = "kafka")]
pub use client::*;

#[cfg(feature = "kafka")]
mod client {
    use std::sync::Arc;
    use std::time::Duration;

    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
    use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, ClientContext, Offset};

    use super::{KafkaConfig, Start};
    use crate::connection::Resolved;
    use crate::event::Event;
    use crate::queue::{Binding, Consumer, Incoming, Message, Stats};

    /// The client settings of a connection: servers, TLS, SASL, options.
    pub fn client_config(c: &Resolved) -> Result<ClientConfig, String> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", super::brokers(&c.url)?);
        let sasl = c.config.sasl_mechanism.clone();
        let protocol = match (c.config.tls, sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        cfg.set("security.protocol", protocol);
        if let Some(m) = sasl {
            cfg.set("sasl.mechanism", m);
            cfg.set("sasl.username", c.username.clone().unwrap_or_default());
            cfg.set("sasl.password", c.password.clone().unwrap_or_default());
        }
        if let Some(ca) = &c.config.ca_file {
            cfg.set("ssl.ca.location", ca);
        }
        for (k, v) in &c.config.options {
            cfg.set(k, v);
        }
        Ok(cfg)
    }

    /// Commits stored offsets of revoked partitions before they go.
    pub struct Context {
        trigger: String,
    }

    impl ClientContext for Context {
        fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
            use rdkafka::config::RDKafkaLogLevel as L;
            let t = self.trigger.as_str();
            match level {
                L::Emerg | L::Alert | L::Critical | L::Error => {
                    tracing::error!(trigger = t, fac, "librdkafka: {message}")
                }
                L::Warning => tracing::warn!(trigger = t, fac, "librdkafka: {message}"),
                L::Notice | L::Info => tracing::info!(trigger = t, fac, "librdkafka: {message}"),
                L::Debug => tracing::debug!(trigger = t, fac, "librdkafka: {message}"),
            }
        }
    }

    impl ConsumerContext for Context {
        fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
            if let Rebalance::Revoke(parts) = rebalance {
                if parts.count() == 0 {
                    return;
                }
                // Only what evoke stored (every event up to it is on the queue).
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) => tracing::info!(
                        trigger = self.trigger,
                        partitions = parts.count(),
                        "committed stored offsets of revoked partitions"
                    ),
                    Err(e) => tracing::debug!(trigger = self.trigger, error = %e, "nothing to commit on revoke"),
                }
            }
        }
    }

    /// A consumer closed off the runtime: librdkafka's close waits for the
    /// group coordinator (leave, last commit), and with the broker gone that
    /// wait has no end. Whoever drops the last reference hands the close to
    /// a thread of its own, so a stopping trigger or node never hangs on it
    /// (the thread ends with the close, or with the process).
    pub struct Closing(Option<StreamConsumer<Context>>);

    impl std::ops::Deref for Closing {
        type Target = StreamConsumer<Context>;
        fn deref(&self) -> &StreamConsumer<Context> {
            self.0.as_ref().expect("present until dropped")
        }
    }

    impl Drop for Closing {
        fn drop(&mut self) {
            if let Some(c) = self.0.take() {
                let closing = std::thread::Builder::new()
                    .name("kafka-close".into())
                    .spawn(move || drop(c));
                if let Err(e) = closing {
                    tracing::warn!(error = %e, "cannot start a thread to close a Kafka consumer; leaving it open");
                }
            }
        }
    }

    /// How long `next` waits on rust-rdkafka's wakeup before polling again.
    const REPOLL: Duration = Duration::from_millis(250);

    pub struct KafkaConsumer {
        consumer: Arc<Closing>,
        start: Start,
        stats: Arc<Stats>,
        lag_task: tokio::task::JoinHandle<()>,
        errored: bool,
    }

    impl Drop for KafkaConsumer {
        fn drop(&mut self) {
            self.lag_task.abort();
        }
    }

    /// Joins the group and subscribes.
    pub async fn consumer(
        config: &KafkaConfig,
        conn: &Resolved,
        trigger: &str,
        stats: Arc<Stats>,
    ) -> Result<KafkaConsumer, String> {
        let start = config.start()?;
        let mut cfg = client_config(conn)?;
        let group = config.group.clone().unwrap_or_else(|| format!("evoke-{trigger}"));
        cfg.set("group.id", &group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set(
                "auto.offset.reset",
                if start == Start::Latest { "latest" } else { "earliest" },
            );
        // Defaults a user's `options` may override.
        for (k, v) in [("session.timeout.ms", "10000"), ("heartbeat.interval.ms", "1000")] {
            if !conn.config.options.contains_key(k) {
                cfg.set(k, v);
            }
        }
        let consumer: StreamConsumer<Context> = cfg
            .create_with_context(Context {
                trigger: trigger.to_string(),
            })
            .map_err(|e| format!("Kafka consumer: {e}"))?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| format!("subscribing to {topics:?}: {e}"))?;
        let consumer = Arc::new(Closing(Some(consumer)));
        let lag_task = tokio::spawn(track_lag(consumer.clone(), stats.clone()));
        Ok(KafkaConsumer {
            consumer,
            start,
            stats,
            lag_task,
            errored: false,
        })
    }

    /// Every 5 s: messages behind the high watermarks of the assigned partitions.
    async fn track_lag(consumer: Arc<Closing>, stats: Arc<Stats>) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let c = consumer.clone();
            let lag = tokio::task::spawn_blocking(move || -> Option<u64> {
                let position = c.position().ok()?;
                let mut total = 0u64;
                for e in position.elements() {
                    let (_, high) = c
                        .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
                        .ok()?;
                    let at = match e.offset() {
                        Offset::Offset(o) => o,
                        _ => {
                            let committed = c.committed(Duration::from_secs(2)).ok()?;
                            match committed.find_partition(e.topic(), e.partition()).map(|p| p.offset()) {
                                Some(Offset::Offset(o)) => o,
                                _ => 0,
                            }
                        }
                    };
                    total += (high - at).max(0) as u64;
                }
                Some(total)
            })
            .await;
            if let Ok(Some(lag)) = lag {
                stats.set_lag(lag);
            }
        }
    }

    impl Consumer for KafkaConsumer {
        async fn next(&mut self) -> Result<Incoming, String> {
            loop {
                // rust-rdkafka wakes a waiting `recv` on the queue's
                // empty → non-empty edge only; an edge taken by an event it
                // serves itself (a rebalance, a log line) leaves it asleep
                // until its own fallback (max.poll.interval.ms / 2, minutes:
                // a restarted node sat with its partitions assigned and
                // unread). Asking again every REPOLL bounds that stall.
                let Ok(received) = tokio::time::timeout(REPOLL, self.consumer.recv()).await else {
                    continue;
                };
                let m = match received {
                    Ok(m) => {
                        if std::mem::take(&mut self.errored) {
                            self.stats.set_error(None);
                        }
                        m
                    }
                    Err(e) => {
                        // librdkafka reconnects and retries by itself; only a
                        // fatal error needs a new consumer.
                        if let Some((_, reason)) = self.consumer.client().fatal_error() {
                            return Err(format!("Kafka: {reason}"));
                        }
                        tracing::warn!(error = %e, "Kafka consumer error (librdkafka retries)");
                        self.stats.set_error(Some(format!("Kafka: {e}")));
                        self.errored = true;
                        continue;
                    }
                };
                let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
                let time = m.timestamp().to_millis();
                let consumer = self.consumer.clone();
                let t = topic.clone();
                let ack: crate::queue::Ack = Box::pin(async move {
                    // A partition revoked meanwhile refuses the store: its
                    // new owner reads from the last commit, and dedupe
                    // absorbs the repeat.
                    // librdkafka's offset store takes the record's own
                    // offset and commits offset + 1 (the next to read).
                    if let Err(e) = consumer.store_offset(&t, partition, offset) {
                        tracing::debug!(topic = t, partition, offset, error = %e, "offset not stored (partition revoked?)");
                    }
                    Ok(())
                });
                if let (Start::At(at), Some(ts)) = (self.start, time)
                    && ts < at
                {
                    // Before the trigger's start: skipped (and its offset stored).
                    self.stats.filtered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    ack.await?;
                    continue;
                }
                let mut headers = Vec::new();
                if let Some(h) = m.headers() {
                    for Header { key, value } in h.iter() {
                        let v = value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default();
                        headers.push((key.to_string(), v));
                    }
                }
                let content_type = headers
                    .iter()
                    .position(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|i| headers.remove(i).1);
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                let mut origin = vec![
                    ("evokekafkatopic", topic.clone()),
                    ("evokekafkapartition", partition.to_string()),
                    ("evokekafkaoffset", offset.to_string()),
                ];
                if let Some(k) = &key {
                    origin.push(("evokekafkakey", k.clone()));
                }
                let message = Message {
                    body: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    content_type,
                    headers,
                    key,
                    subject: Some(topic.clone()),
                    origin_id: Some(format!("{topic}.{partition}.{offset}")),
                    origin,
                    time: time.and_then(chrono::DateTime::from_timestamp_millis),
                };
                return Ok(Incoming { message, ack });
            }
        }
    }

    /// An idempotent producer (acks from all in-sync replicas).
    pub fn producer(conn: &Resolved) -> Result<FutureProducer, String> {
        let mut cfg = client_config(conn)?;
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "10000");
        cfg.create().map_err(|e| format!("Kafka producer: {e}"))
    }

    /// Produces `event` in binary mode (`ce_*` headers), keyed by `key`,
    /// and waits for the delivery report.
    pub async fn produce(producer: &FutureProducer, topic: &str, key: &str, event: &Event) -> Result<(), String> {
        let (headers, content_type, body) = Binding::Kafka.encode(event);
        let mut h = OwnedHeaders::new();
        for (k, v) in &headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        if let Some(ct) = &content_type {
            h = h.insert(Header {
                key: "content-type",
                value: Some(ct.as_bytes()),
            });
        }
        let record = FutureRecord::to(topic).payload(&body[..]).key(key).headers(h);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("Kafka did not take the record: {e}"))
    }
}
