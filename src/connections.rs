//! Broker connections on a node: their specs (KV bucket EVOKE_CONNECTIONS,
//! from `[connections.NAME]`), the stats of the queue triggers this node
//! runs, and the producers destinations publish with (one per connection
//! and kind, rebuilt when the spec changes or the link breaks).
//!
//! Secrets are read from the environment variables a connection names, on
//! the node using it; they are never stored in NATS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use evoke_connectors::Event;
use evoke_connectors::connection::{ConnectionConfig, Resolved};
use evoke_connectors::queue::Stats;
use serde::{Deserialize, Serialize};

use crate::registry::{Catalog, Entry, RegistryError};
use crate::secrets::Secrets;

/// A connection as kept in KV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConnection {
    pub name: String,
    pub config: ConnectionConfig,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing)]
    pub revision: u64,
}

impl Entry for StoredConnection {
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
}

pub type ConnectionRegistry = Catalog<StoredConnection>;

/// A stable name for this node's broker sessions: kept in `node-id` in its
/// data directory (made on first use), so it survives restarts.
pub fn client_identity(data_dir: &std::path::Path) -> String {
    let file = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return id.to_string();
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    if let Err(e) = std::fs::create_dir_all(data_dir).and_then(|_| std::fs::write(&file, &id)) {
        tracing::warn!(error = %e, file = %file.display(), "cannot keep this node's broker identity; MQTT sessions will not survive a restart");
    }
    id
}

/// A broker destination: `kafka://CONN/topic`, `amqp://CONN/exchange/key`,
/// `mqtt://CONN/topic`, `nats://CONN/subject`, `jetstream://CONN/subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTarget {
    pub kind: QueueKind,
    pub connection: String,
    /// Topic, exchange or subject.
    pub to: String,
    /// AMQP routing key.
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKind {
    Kafka,
    Amqp,
    Mqtt,
    Nats,
    JetStream,
}

impl QueueKind {
    pub fn scheme(self) -> &'static str {
        match self {
            QueueKind::Kafka => "kafka",
            QueueKind::Amqp => "amqp",
            QueueKind::Mqtt => "mqtt",
            QueueKind::Nats => "nats",
            QueueKind::JetStream => "jetstream",
        }
    }
}

impl std::fmt::Display for QueueTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}/{}", self.kind.scheme(), self.connection, self.to)?;
        if self.kind == QueueKind::Amqp {
            write!(f, "/{}", self.key)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for QueueTarget {
    type Err = String;

    /// Parses a broker destination; `Err` names the expected form.
    fn from_str(s: &str) -> Result<QueueTarget, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("`{s}` is not a broker destination"))?;
        let kind = match scheme {
            "kafka" => QueueKind::Kafka,
            "amqp" => QueueKind::Amqp,
            "mqtt" => QueueKind::Mqtt,
            "nats" => QueueKind::Nats,
            "jetstream" => QueueKind::JetStream,
            _ => return Err(format!("`{s}` is not a broker destination")),
        };
        let (connection, path) = rest.split_once('/').unwrap_or((rest, ""));
        let form = match kind {
            QueueKind::Amqp => "amqp://CONNECTION/EXCHANGE/ROUTING-KEY",
            QueueKind::Kafka => "kafka://CONNECTION/TOPIC",
            QueueKind::Mqtt => "mqtt://CONNECTION/TOPIC",
            QueueKind::Nats => "nats://CONNECTION/SUBJECT",
            QueueKind::JetStream => "jetstream://CONNECTION/SUBJECT",
        };
        if !evoke_connectors::trigger::valid_name(connection) {
            return Err(format!(
                "`{s}`: `{connection}` is not a connection name ([connections.NAME]); write {form}"
            ));
        }
        let (to, key) = match kind {
            QueueKind::Amqp => {
                let (exchange, key) = path
                    .split_once('/')
                    .ok_or_else(|| format!("`{s}`: write {form} (an empty EXCHANGE is the default exchange)"))?;
                (exchange.to_string(), key.to_string())
            }
            _ => (path.to_string(), String::new()),
        };
        let bad = match kind {
            QueueKind::Kafka => to.is_empty() || !to.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            QueueKind::Mqtt => evoke_connectors::mqtt::check_topic(&to).is_err(),
            QueueKind::Nats | QueueKind::JetStream => !evoke_connectors::nats::valid_subject(&to, false),
            QueueKind::Amqp => to.len() > 255 || key.len() > 255,
        };
        if bad {
            return Err(format!("`{s}`: the destination name is not valid; write {form}"));
        }
        Ok(QueueTarget {
            kind,
            connection: connection.to_string(),
            to,
            key,
        })
    }
}

/// A producer this node keeps for one connection and kind.
#[derive(Clone)]
enum Producer {
    #[cfg(feature = "kafka")]
    Kafka(evoke_connectors::rdkafka::producer::FutureProducer),
    #[cfg(feature = "amqp")]
    Amqp(Arc<evoke_connectors::amqp::Publisher>),
    #[cfg(feature = "mqtt")]
    Mqtt(Arc<evoke_connectors::mqtt::Publisher>),
    #[cfg(feature = "nats")]
    Nats(async_nats::Client),
    /// Keeps the enum inhabited in a build without any broker feature.
    #[allow(dead_code)]
    None(std::convert::Infallible),
}

/// The connections of the cluster, and this node's use of them.
pub struct Connections {
    pub registry: ConnectionRegistry,
    pub secrets: Secrets,
    /// This node's stable broker identity (see [`client_identity`]).
    node: String,
    /// Counters of the queue triggers this node runs, by trigger.
    stats: Mutex<HashMap<String, Arc<Stats>>>,
    #[allow(dead_code)]
    producers: Mutex<HashMap<(String, QueueKind), (u64, Producer)>>,
}

/// Longest a destination send may take (Kafka's own delivery timeout is 10 s).
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

impl Connections {
    pub fn new(kv: async_nats::jetstream::kv::Store, secrets: Secrets, node: String) -> Connections {
        Connections {
            registry: ConnectionRegistry::new(kv),
            secrets,
            node,
            stats: Mutex::new(HashMap::new()),
            producers: Mutex::new(HashMap::new()),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The connection named `name`, with its secrets read on this node, and
    /// its revision.
    pub async fn resolve(&self, name: &str) -> Result<(Resolved, u64), String> {
        let stored = match self.registry.get(name).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(format!(
                    "connection `{name}` does not exist; declare [connections.{name}] in evoke.toml and apply it"
                ));
            }
            Err(RegistryError::Nats(e)) => return Err(format!("NATS: {e}")),
            Err(e) => return Err(e.to_string()),
        };
        let resolved = stored
            .config
            .resolve(|n| self.secrets.get(n))
            .map_err(|e| format!("connection `{name}`: {e}"))?;
        Ok((resolved, stored.revision))
    }

    /// A trigger's connection: the named one, or its inline `url`.
    pub async fn for_trigger(&self, connection: Option<&str>, url: Option<&str>) -> Result<Resolved, String> {
        match (connection, url) {
            (Some(name), _) => self.resolve(name).await.map(|(r, _)| r),
            (None, Some(url)) => Ok(Resolved {
                url: url.to_string(),
                username: None,
                password: None,
                config: ConnectionConfig::default(),
            }),
            (None, None) => Err("the trigger names no connection".into()),
        }
    }

    /// The stats of trigger `name` on this node (created on first use).
    pub fn stats(&self, trigger: &str) -> Arc<Stats> {
        self.lock_stats().entry(trigger.to_string()).or_default().clone()
    }

    /// The stats of trigger `name`, when this node runs it.
    pub fn stats_of(&self, trigger: &str) -> Option<Arc<Stats>> {
        self.lock_stats().get(trigger).cloned()
    }

    /// Every trigger's stats, for `/metrics`.
    pub fn all_stats(&self) -> Vec<(String, Arc<Stats>)> {
        self.lock_stats().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn forget_stats(&self, trigger: &str) {
        self.lock_stats().remove(trigger);
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Stats>>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `event` to a broker destination (binary mode in the kind's
    /// binding) and waits for the broker to have it.
    pub async fn send(&self, target: &QueueTarget, event: &Event) -> Result<(), String> {
        let producer = self.producer(target).await?;
        let key = event.subject.clone().unwrap_or_else(|| event.id.clone());
        let send = async {
            match &producer {
                #[cfg(feature = "kafka")]
                Producer::Kafka(p) => evoke_connectors::kafka::produce(p, &target.to, &key, event).await,
                #[cfg(feature = "amqp")]
                Producer::Amqp(p) => p.publish(&target.to, &target.key, event).await,
                #[cfg(feature = "mqtt")]
                Producer::Mqtt(p) => p.publish(&target.to, event).await,
                #[cfg(feature = "nats")]
                Producer::Nats(c) => match target.kind {
                    QueueKind::JetStream => evoke_connectors::nats::publish_stored(c, &target.to, event).await,
                    _ => evoke_connectors::nats::publish(c, &target.to, event).await,
                },
                Producer::None(never) => match *never {},
            }
        };
        // A client that lost its server may wait for it without end (a NATS
        // client buffers until it reconnects): bound every send.
        let sent = tokio::time::timeout(SEND_TIMEOUT, send)
            .await
            .unwrap_or_else(|_| Err(format!("the broker did not take it within {SEND_TIMEOUT:?}")));
        let _ = key;
        if sent.is_err() {
            // Rebuilt on the next send: the link may be what broke.
            self.lock_producers().remove(&(target.connection.clone(), target.kind));
        }
        sent
    }

    fn lock_producers(&self) -> std::sync::MutexGuard<'_, HashMap<(String, QueueKind), (u64, Producer)>> {
        self.producers.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn producer(&self, target: &QueueTarget) -> Result<Producer, String> {
        let (resolved, revision) = self.resolve(&target.connection).await?;
        let cache_key = (target.connection.clone(), target.kind);
        if let Some((rev, p)) = self.lock_producers().get(&cache_key)
            && *rev == revision
        {
            return Ok(p.clone());
        }
        let client_id = format!("evoke-{}-{}-out", target.connection, self.node);
        let _ = (&resolved, &client_id);
        let producer: Producer = match target.kind {
            #[cfg(feature = "kafka")]
            QueueKind::Kafka => Producer::Kafka(evoke_connectors::kafka::producer(&resolved)?),
            #[cfg(feature = "amqp")]
            QueueKind::Amqp => Producer::Amqp(Arc::new(
                evoke_connectors::amqp::Publisher::connect(&resolved.url).await?,
            )),
            #[cfg(feature = "mqtt")]
            QueueKind::Mqtt => Producer::Mqtt(Arc::new(
                evoke_connectors::mqtt::Publisher::connect(&resolved, &client_id).await?,
            )),
            #[cfg(feature = "nats")]
            QueueKind::Nats | QueueKind::JetStream => {
                Producer::Nats(evoke_connectors::nats::connect(&resolved, &client_id).await?)
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(format!(
                    "this build of evoke has no {} support (its cargo feature is off)",
                    other.scheme()
                ));
            }
        };
        self.lock_producers().insert(cache_key, (revision, producer.clone()));
        Ok(producer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_destinations_parse_and_print_back() {
        for s in [
            "kafka://main/orders-enriched",
            "amqp://rabbit/orders/enriched.eu",
            "amqp://rabbit//queue-name",
            "mqtt://broker/sensors/out",
            "nats://other/results.ok",
            "jetstream://other/results.ok",
        ] {
            let t: QueueTarget = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
        for bad in [
            "kafka://Main/t",
            "kafka://main/",
            "amqp://rabbit/only-exchange",
            "mqtt://b/a/#",
            "nats://n/a.*",
        ] {
            assert!(bad.parse::<QueueTarget>().is_err(), "{bad}");
        }
    }
}
