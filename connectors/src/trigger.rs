//! Triggers: a source config, an optional filter and a target function.
//!
//! Users write a trigger as one flat table (in `evoke.toml` or as JSON):
//! `function`, `kind`, optional `filter`, and the fields of that kind. Every
//! problem is reported with the field it is about. Adding a source kind is
//! its module plus one line in `source_kinds!` below; the compiler then
//! points at each match that must handle it (its checks here, its state
//! key, and in evoke how a node runs it and how `evoke triggers` shows it).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::filter::Filter;
use crate::schedule::Schedule;
use crate::units::ByteSize;
use crate::webhook::AuthConfig;

/// A validated trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerSpec {
    pub function: String,
    pub source: SourceConfig,
    pub filter: Option<Filter>,
}

/// Declares [`SourceConfig`] from one list of source kinds: its name in
/// `kind = "..."`, its variant and its config type. Adding a source is its
/// module plus one line here, its config check, and its arm in the node's
/// queue task (`src/sources/queues.rs`, the compiler names both); the rest
/// of evoke treats every kind run by the shared queue pipeline alike.
macro_rules! source_kinds {
    ($($name:literal => $variant:ident($config:ty)),+ $(,)?) => {
        /// Every kind of source, closed.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "lowercase")]
        pub enum SourceConfig {
            $($variant($config)),+
        }

        impl SourceConfig {
            /// Every kind's name, as `kind = "..."` takes it.
            pub const KINDS: &[&str] = &[$($name),+];

            pub fn kind(&self) -> &'static str {
                match self {
                    $(SourceConfig::$variant(_) => $name),+
                }
            }

            /// Reads the config of source kind `kind` from `body` (the
            /// table without `kind`), keeping the path of a bad field;
            /// `None` when there is no such kind.
            fn read(kind: &str, body: Value) -> Option<Result<SourceConfig, serde_path_to_error::Error<serde_json::Error>>> {
                match kind {
                    $($name => Some(serde_path_to_error::deserialize(body).map(SourceConfig::$variant)),)+
                    _ => None,
                }
            }
        }
    };
}

source_kinds! {
    "webhook" => Webhook(WebhookConfig),
    "cron" => Cron(CronConfig),
    "s3" => S3(crate::s3::S3Config),
    "kafka" => Kafka(crate::kafka::KafkaConfig),
    "amqp" => Amqp(crate::amqp::AmqpConfig),
    "mqtt" => Mqtt(crate::mqtt::MqttConfig),
    "nats" => Nats(crate::nats::NatsConfig),
    "syslog" => Syslog(crate::syslog::SyslogConfig),
    "file" => File(crate::file::FileConfig),
}

impl SourceConfig {
    /// The state key where trigger `name`'s source notes its last event
    /// (a cron cursor, a webhook's last delivery), for `evoke triggers`.
    pub fn last_event_key(&self, name: &str) -> String {
        match self {
            SourceConfig::Webhook(_) => crate::webhook::last_event_key(name),
            SourceConfig::Cron(_) => crate::cron::cursor_key(name),
            SourceConfig::S3(_) => crate::s3::last_event_key(name),
            // Every source run by the shared queue pipeline.
            _ => crate::queue::last_event_key(name),
        }
    }

    /// The nodes a host-local source (syslog listener, file tail) runs on;
    /// `None` for sources every node may run.
    pub fn nodes(&self) -> Option<&Nodes> {
        match self {
            SourceConfig::Syslog(c) => Some(&c.nodes),
            SourceConfig::File(c) => Some(&c.nodes),
            _ => None,
        }
    }

    /// The connection a queue trigger names (`connection = "..."`), if any.
    pub fn connection(&self) -> Option<&str> {
        match self {
            SourceConfig::Kafka(c) => c.connection.as_deref(),
            SourceConfig::Amqp(c) => c.connection.as_deref(),
            SourceConfig::Mqtt(c) => c.connection.as_deref(),
            SourceConfig::Nats(c) => c.connection.as_deref(),
            _ => None,
        }
    }
}

/// The nodes a host-local source (a syslog listener, a file tail) runs on:
/// `"all"` (default) or a list of node names (`evoke up --node-name`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NodesRepr", into = "NodesRepr")]
pub enum Nodes {
    #[default]
    All,
    Named(Vec<String>),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NodesRepr {
    Word(String),
    List(Vec<String>),
}

impl TryFrom<NodesRepr> for Nodes {
    type Error = String;
    fn try_from(r: NodesRepr) -> Result<Nodes, String> {
        match r {
            NodesRepr::Word(w) if w == "all" => Ok(Nodes::All),
            NodesRepr::Word(w) => Err(format!("`{w}`: say \"all\" or list node names")),
            NodesRepr::List(l) => Ok(Nodes::Named(l)),
        }
    }
}

impl From<Nodes> for NodesRepr {
    fn from(n: Nodes) -> NodesRepr {
        match n {
            Nodes::All => NodesRepr::Word("all".into()),
            Nodes::Named(l) => NodesRepr::List(l),
        }
    }
}

impl Nodes {
    /// Whether node `name` runs the source.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            Nodes::All => true,
            Nodes::Named(names) => names.iter().any(|n| n == name),
        }
    }

    pub fn check(&self) -> Vec<Problem> {
        match self {
            Nodes::Named(n) if n.is_empty() => vec![("nodes".into(), "lists no node: say \"all\" or name some".into())],
            _ => vec![],
        }
    }
}

/// Whether the caller waits for the function (webhooks only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer with the function's output.
    Sync,
    /// Answer 202 with the event id once JetStream has the event.
    #[default]
    Async,
}

/// `kind = "webhook"`: `POST /hooks/<trigger>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub mode: Mode,
    /// Accepted HTTP methods: POST (default), PUT, GET.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Largest body accepted (default 1Mi); larger requests get 413.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    #[serde(default)]
    pub auth: AuthConfig,
}

fn default_methods() -> Vec<String> {
    vec!["POST".into()]
}

fn default_max_body() -> ByteSize {
    ByteSize::mib(1)
}

/// What to do about ticks missed while no evoke node was running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Skip them.
    #[default]
    None,
    /// Fire the most recent one.
    Last,
    /// Fire all of them (at most `catch_up_max`, the newest).
    All,
}

/// `kind = "cron"`: fires on a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronConfig {
    /// 5-field (`*/5 * * * *`), 6-field with seconds, `@hourly`, or `@every 30s`.
    pub schedule: String,
    /// IANA zone the schedule is read in (default UTC).
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// Event data: a string is sent as text, anything else as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Most missed ticks fired by `catch_up = "all"` (default 100).
    #[serde(default = "default_catch_up_max")]
    pub catch_up_max: u32,
}

fn default_tz() -> String {
    "UTC".into()
}

fn default_catch_up_max() -> u32 {
    100
}

/// The most missed ticks `catch_up = "all"` may fire after an outage.
pub const CATCH_UP_MAX_LIMIT: u32 = 1000;

impl CronConfig {
    pub fn parsed(&self) -> Result<Schedule, String> {
        Schedule::parse(&self.schedule, &self.timezone)
    }
}

/// One problem: the field (relative to the trigger) and what is wrong.
pub type Problem = (String, String);

impl TriggerSpec {
    /// Parses and validates a flat trigger table, reporting every problem.
    pub fn parse(value: &Value) -> Result<TriggerSpec, Vec<Problem>> {
        let Value::Object(map) = value else {
            return Err(vec![(String::new(), "a trigger must be a table".into())]);
        };
        let mut problems = Vec::new();
        let mut rest = Map::new();
        let mut function = None;
        let mut filter = None;
        for (k, v) in map {
            match k.as_str() {
                "function" => match v.as_str() {
                    Some(f) if valid_name(f) => function = Some(f.to_string()),
                    _ => problems.push(("function".into(), "must be the name of a function".into())),
                },
                "filter" => match serde_path_to_error::deserialize::<_, Filter>(v) {
                    Ok(f) => filter = Some(f),
                    Err(e) => problems.push((join("filter", &e.path().to_string()), e.inner().to_string())),
                },
                _ => {
                    rest.insert(k.clone(), v.clone());
                }
            }
        }
        if function.is_none() && !problems.iter().any(|(f, _)| f == "function") {
            problems.push(("function".into(), "is required".into()));
        }
        let kinds = SourceConfig::KINDS.join(", ");
        let kind = rest.remove("kind");
        let source = match kind.as_ref().and_then(Value::as_str) {
            None => {
                problems.push(("kind".into(), format!("is required: one of {kinds}")));
                None
            }
            Some(kind) => match SourceConfig::read(kind, Value::Object(rest)) {
                None => {
                    problems.push((
                        "kind".into(),
                        format!("`{kind}` is not a source kind; use one of {kinds}"),
                    ));
                    None
                }
                Some(parsed) => match parsed {
                    Ok(s) => Some(s),
                    Err(e) => {
                        let inner = e.inner().to_string();
                        let field = match e.path().to_string().as_str() {
                            "." => unknown_or_missing(&inner).unwrap_or_default(),
                            p => p.to_string(),
                        };
                        problems.push((field, inner));
                        None
                    }
                },
            },
        };
        if let Some(source) = &source {
            problems.extend(check_source(source));
        }
        match (function, source) {
            (Some(function), Some(source)) if problems.is_empty() => Ok(TriggerSpec {
                function,
                source,
                filter,
            }),
            _ => Err(problems),
        }
    }

    /// The flat table form (what `parse` reads).
    pub fn to_value(&self) -> Value {
        let mut v = serde_json::to_value(&self.source).unwrap_or_default();
        v["function"] = Value::String(self.function.clone());
        if let Some(f) = &self.filter {
            v["filter"] = serde_json::to_value(f).unwrap_or_default();
        }
        v
    }
}

fn join(a: &str, b: &str) -> String {
    if b.is_empty() || b == "." {
        a.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// Reads a named table (`[stores.NAME]`, `[connections.NAME]`) into `T`,
/// then runs `check`; every problem comes back with its field.
pub(crate) fn parse_table<T: serde::de::DeserializeOwned>(
    v: &Value,
    check: impl Fn(&T) -> Vec<Problem>,
) -> Result<T, Vec<Problem>> {
    let config: T = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let field = if path == "." {
            unknown_or_missing(&inner).unwrap_or_default()
        } else {
            path
        };
        vec![(field, inner)]
    })?;
    let problems = check(&config);
    if problems.is_empty() { Ok(config) } else { Err(problems) }
}

/// Pulls the field name out of serde's "unknown field `x`" / "missing field `x`".
pub(crate) fn unknown_or_missing(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

/// The rule for environment variable names, wherever one is named (a
/// function's `env`, a webhook's `secret_env`): `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_name(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The rule for function and trigger names: `^[a-z][a-z0-9-]{0,62}$` (also
/// safe as NATS KV keys and subject tokens).
pub fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_source(source: &SourceConfig) -> Vec<Problem> {
    let mut p = Vec::new();
    match source {
        SourceConfig::S3(c) => p.extend(c.check()),
        SourceConfig::Kafka(c) => p.extend(c.check()),
        SourceConfig::Amqp(c) => p.extend(c.check()),
        SourceConfig::Mqtt(c) => p.extend(c.check()),
        SourceConfig::Nats(c) => p.extend(c.check()),
        SourceConfig::Syslog(c) => p.extend(c.check()),
        SourceConfig::File(c) => p.extend(c.check()),
        SourceConfig::Cron(c) => {
            if let Err(e) = c.parsed() {
                let field = if e.contains("IANA") { "timezone" } else { "schedule" };
                p.push((field.into(), e));
            }
            if c.catch_up_max == 0 || c.catch_up_max > CATCH_UP_MAX_LIMIT {
                p.push((
                    "catch_up_max".into(),
                    format!("is out of range 1..{CATCH_UP_MAX_LIMIT}"),
                ));
            }
        }
        SourceConfig::Webhook(w) => {
            if w.methods.is_empty() {
                p.push(("methods".into(), "needs at least one of POST, PUT, GET".into()));
            }
            for m in &w.methods {
                if !["POST", "PUT", "GET"].contains(&m.as_str()) {
                    p.push(("methods".into(), format!("`{m}` is not one of POST, PUT, GET")));
                }
            }
            if w.max_body.0 == 0 || w.max_body > ByteSize::mib(64) {
                p.push(("max_body".into(), "is out of range 1..64Mi".into()));
            }
            if w.auth.scheme.signs_body() && w.methods.iter().any(|m| m == "GET") {
                p.push((
                    "methods".into(),
                    format!(
                        "GET cannot be used with auth scheme `{}`: its signature covers only the body, not the query string a GET carries",
                        format!("{:?}", w.auth.scheme).to_lowercase()
                    ),
                ));
            }
            for (field, message) in w.auth.check() {
                p.push((format!("auth.{field}"), message));
            }
        }
    }
    p
}

/// Trigger names follow function names: `^[a-z][a-z0-9-]{0,62}$`.
pub fn check_name(name: &str) -> Result<(), String> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid trigger name: use 1-63 characters, lower-case letters, digits and `-`, starting with a letter"
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn flat_tables_round_trip() {
        let v = json!({"function":"hello","kind":"cron","schedule":"*/2 * * * * *","timezone":"Asia/Shanghai"});
        let t = TriggerSpec::parse(&v).unwrap();
        assert_eq!(t.source.kind(), "cron");
        assert_eq!(TriggerSpec::parse(&t.to_value()).unwrap(), t);
        let v = json!({"function":"hello","kind":"webhook","mode":"sync",
            "auth":{"scheme":"github","secret_env":"GH_SECRET"},"filter":{"types":["com.github.push"]}});
        let t = TriggerSpec::parse(&v).unwrap();
        let SourceConfig::Webhook(w) = &t.source else { panic!() };
        assert_eq!((w.mode, w.max_body), (Mode::Sync, ByteSize::mib(1)));
        assert_eq!(TriggerSpec::parse(&t.to_value()).unwrap(), t);
    }

    #[test]
    fn every_problem_names_its_field() {
        let v = json!({"kind":"cron","schedule":"61 * * * *","timezone":"Nowhere/City","colour":"red"});
        let fields: Vec<String> = TriggerSpec::parse(&v)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert!(fields.contains(&"function".to_string()), "{fields:?}");
        assert!(fields.contains(&"colour".to_string()), "{fields:?}");
        let v = json!({"function":"f","kind":"cron","schedule":"61 * * * *"});
        assert_eq!(TriggerSpec::parse(&v).unwrap_err()[0].0, "schedule");
        let v = json!({"function":"f","kind":"cron","schedule":"* * * * *","timezone":"Nowhere/City"});
        assert_eq!(TriggerSpec::parse(&v).unwrap_err()[0].0, "timezone");
        let v = json!({"function":"f","kind":"webhook","auth":{"scheme":"github"},"methods":["DELETE"]});
        let fields: Vec<String> = TriggerSpec::parse(&v)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, ["methods", "auth.secret_env"]);
        let v = json!({"function":"f","kind":"webhook","methods":["POST","GET"],
            "auth":{"scheme":"hmac","secret_env":"K","header":"X-Sig"}});
        let problems = TriggerSpec::parse(&v).unwrap_err();
        assert_eq!(problems[0].0, "methods");
        assert!(problems[0].1.contains("query string"), "{problems:?}");
        let v = json!({"function":"f","kind":"webhook","methods":["GET"],"auth":{"scheme":"bearer","secret_env":"K"}});
        assert!(TriggerSpec::parse(&v).is_ok(), "bearer tokens do not sign the body");
        let v = json!({"function":"f","kind":"rabbit"});
        assert!(TriggerSpec::parse(&v).unwrap_err()[0].1.contains("not a source kind"));
        let v = json!({"function":"f","kind":"webhook","auth":{"scheme":"magic"}});
        assert_eq!(TriggerSpec::parse(&v).unwrap_err()[0].0, "auth.scheme");
    }
}
