//! A function's spec: what the user sets on deploy, validated field by field.
//!
//! Validation reports every problem at once, each with the field it is about,
//! so a user fixes a bad deploy in one round trip.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::units::{self, ByteSize};

/// A function name: `^[a-z][a-z0-9-]{0,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionName(String);

impl FunctionName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FunctionName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if evoke_connectors::trigger::valid_name(s) {
            Ok(FunctionName(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a valid function name: use 1-63 characters, lower-case letters, digits and `-`, starting with a letter"
            ))
        }
    }
}

impl TryFrom<String> for FunctionName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<FunctionName> for String {
    fn from(n: FunctionName) -> String {
        n.0
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a result goes: `nats:<subject>` (a core NATS publish, for
/// subscribers), `jetstream:<subject>` (stored by a stream, ack awaited),
/// `http(s)://...`, `function:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Destination {
    Nats(String),
    JetStream(String),
    Http(String),
    Function(FunctionName),
    /// `s3://STORE/BUCKET/PREFIX`: an object per invocation, named by its id.
    S3 {
        store: String,
        bucket: String,
        prefix: String,
    },
    /// A broker named by a connection: `kafka://CONN/topic`,
    /// `amqp://CONN/exchange/key`, `mqtt://CONN/topic`, `nats://CONN/subject`,
    /// `jetstream://CONN/subject`.
    Queue(crate::connections::QueueTarget),
}

/// Checks a subject a destination publishes to.
fn publish_subject(subject: &str) -> Result<String, String> {
    let valid = !subject.is_empty()
        && !subject.contains([' ', '\t', '\r', '\n', '*', '>'])
        && subject.split('.').all(|t| !t.is_empty());
    if !valid {
        return Err(format!(
            "`{subject}` is not a NATS subject to publish to (no wildcards, spaces or empty tokens)"
        ));
    }
    if let Some(why) = crate::bus::reserved_subject(subject) {
        return Err(format!("`{subject}` is reserved: {why}"));
    }
    Ok(subject.to_string())
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if ["kafka://", "amqp://", "mqtt://", "nats://", "jetstream://"]
            .iter()
            .any(|p| s.starts_with(p))
        {
            return s.parse().map(Destination::Queue);
        }
        if let Some(subject) = s.strip_prefix("nats:") {
            return publish_subject(subject).map(Destination::Nats);
        }
        if let Some(subject) = s.strip_prefix("jetstream:") {
            return publish_subject(subject).map(Destination::JetStream);
        }
        if let Some(name) = s.strip_prefix("function:") {
            return Ok(Destination::Function(name.parse()?));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let mut parts = rest.splitn(3, '/');
            let (store, bucket, prefix) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            if !evoke_connectors::trigger::valid_name(store) {
                return Err(format!(
                    "`{s}`: `{store}` is not a store name; write s3://STORE/BUCKET/PREFIX"
                ));
            }
            evoke_connectors::s3::check_bucket(bucket).map_err(|m| format!("`{s}`: {m}"))?;
            return Ok(Destination::S3 {
                store: store.to_string(),
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            let url = reqwest::Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
            if let Some(ip) = crate::invoker::destinations::literal_ip(&url)
                && crate::invoker::destinations::metadata_address(ip)
            {
                return Err(format!(
                    "`{s}` points at a link-local or cloud metadata address; nodes refuse it unless started with --allow-link-local-destinations"
                ));
            }
            return Ok(Destination::Http(s.to_string()));
        }
        Err(format!(
            "`{s}` is not a destination; use nats:<subject>, jetstream:<subject>, http(s)://<url>, function:<name>, s3://<store>/<bucket>/<prefix>, or a broker by connection: kafka://<conn>/<topic>, amqp://<conn>/<exchange>/<routing-key>, mqtt://<conn>/<topic>, nats://<conn>/<subject>, jetstream://<conn>/<subject>"
        ))
    }
}

impl TryFrom<String> for Destination {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Destination> for String {
    fn from(d: Destination) -> String {
        d.to_string()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Nats(s) => write!(f, "nats:{s}"),
            Destination::JetStream(s) => write!(f, "jetstream:{s}"),
            Destination::Http(u) => f.write_str(u),
            Destination::Function(n) => write!(f, "function:{n}"),
            Destination::S3 { store, bucket, prefix } => write!(f, "s3://{store}/{bucket}/{prefix}"),
            Destination::Queue(t) => t.fmt(f),
        }
    }
}

/// Everything a user can set about a function. This derive is the one way
/// a spec is read (JSON, query strings, `evoke.toml`); fields left out take
/// their defaults, and [`FunctionSpec::from_json`] reports every bad field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionSpec {
    /// Linear memory cap per instance.
    pub memory: ByteSize,
    /// Wall-clock cap per invocation.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// Retries after a function error (async invocations).
    #[serde(deserialize_with = "lenient::count")]
    pub retries: u32,
    /// How long an async event may keep being retried before it is dead-lettered.
    #[serde(with = "units::duration")]
    pub max_event_age: Duration,
    /// Environment variables the function sees.
    pub env: BTreeMap<String, String>,
    /// Instances kept warm on every node, created at deploy.
    #[serde(deserialize_with = "lenient::count")]
    pub reserved: u32,
    /// Concurrent instances per node.
    #[serde(deserialize_with = "lenient::count")]
    pub max_instances: u32,
    /// Idle instances beyond `reserved` are dropped after this long.
    #[serde(with = "units::duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "lenient::destination")]
    pub on_success: Option<Destination>,
    #[serde(deserialize_with = "lenient::destination")]
    pub on_failure: Option<Destination>,
    /// What `on_success` carries: the invocation with its request and
    /// response (default), or the function's output alone.
    #[serde(skip_serializing_if = "SuccessBody::is_invocation")]
    pub success_body: SuccessBody,
    /// CPU budget per invocation in fuel units (about one per wasm
    /// instruction); only on nodes started with `--fuel`.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient::fuel")]
    pub fuel: Option<u64>,
    /// What the function may touch beyond its event: `buckets` of object
    /// stores (`"local/photos:read"`). None by default.
    #[serde(skip_serializing_if = "Grants::is_empty")]
    pub grants: Grants,
}

/// What an `on_success` destination receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuccessBody {
    /// An `evoke.invocation.succeeded` event whose data is the invocation:
    /// its id, attempts, request (the event) and response.
    #[default]
    Invocation,
    /// An `evoke.invocation.output` event whose data is the function's
    /// output, with its content type: the next step of a pipeline reads the
    /// result, and the request (raw input a function may have cleansed)
    /// does not travel on.
    Output,
}

impl SuccessBody {
    fn is_invocation(&self) -> bool {
        *self == SuccessBody::Invocation
    }
}

/// A function's grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// `STORE/BUCKET:ACCESS`, access `read`, `write` or `read-write`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<BucketGrant>,
    /// Outbound HTTP the function may make: `https://api.example.com/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpGrant>,
}

impl Grants {
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.http.is_empty()
    }
}

/// Outbound HTTP a function may make: a scheme, a host (exact, or
/// `*.example.com` for its subdomains), an optional port (else the
/// scheme's), and a path: exact, or a prefix when it ends in `*`.
/// `https://api.example.com/*`, `http://127.0.0.1:9000/hooks/*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpGrant {
    text: String,
    https: bool,
    host: String,
    port: u16,
    path: String,
    path_prefix: bool,
}

impl HttpGrant {
    /// Whether this grant allows a request to `scheme://host:port/path`.
    pub fn allows(&self, https: bool, host: &str, port: u16, path: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => host == self.host,
        };
        let path_ok = if self.path_prefix {
            path.starts_with(&self.path)
        } else {
            path == self.path
        };
        self.https == https && host_ok && self.port == port && path_ok
    }
}

impl FromStr for HttpGrant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = "write SCHEME://HOST[:PORT]/PATH, e.g. https://api.example.com/* (a `*` only at the path's end or as the host's first label)";
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{s}` is not an http:// or https:// address; {form}"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        // `[v6]:port` keeps its brackets, as request URIs spell it.
        let split = match authority.strip_prefix('[') {
            Some(v6) => v6
                .find(']')
                .map(|i| (&authority[..i + 2], &authority[i + 2..]))
                .ok_or_else(|| format!("`{s}`: an unclosed `[`; {form}"))?,
            None => match authority.find(':') {
                Some(i) => (&authority[..i], &authority[i..]),
                None => (authority, ""),
            },
        };
        let (host, port) = match split.1 {
            "" => (split.0, if https { 443 } else { 80 }),
            p => {
                let digits = p.strip_prefix(':').unwrap_or(p);
                let port = digits
                    .parse::<u16>()
                    .map_err(|_| format!("`{s}`: `{digits}` is not a port; {form}"))?;
                (split.0, port)
            }
        };
        let host = host.to_ascii_lowercase();
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        if bare.is_empty() || bare.contains('*') || bare.contains('@') || authority.contains('@') {
            return Err(format!("`{s}`: `{host}` is not a host; {form}"));
        }
        if path.contains(['?', '#']) || path[..path.len().saturating_sub(1)].contains('*') {
            return Err(format!("`{s}`: the path may only end with `*`; {form}"));
        }
        let (path, path_prefix) = match path.strip_suffix('*') {
            Some(p) => (p.to_string(), true),
            None => (path.to_string(), false),
        };
        Ok(HttpGrant {
            text: s.to_string(),
            https,
            host,
            port,
            path,
            path_prefix,
        })
    }
}

impl TryFrom<String> for HttpGrant {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<HttpGrant> for String {
    fn from(g: HttpGrant) -> String {
        g.text
    }
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a grant allows on a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

/// Access to one bucket of one store: `local/photos:read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BucketGrant {
    pub store: String,
    pub bucket: String,
    pub access: Access,
}

impl BucketGrant {
    /// Whether this grant allows `access` to `store/bucket`.
    pub fn allows(&self, store: &str, bucket: &str, access: Access) -> bool {
        self.store == store && self.bucket == bucket && (self.access == access || self.access == Access::ReadWrite)
    }
}

impl FromStr for BucketGrant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = "write STORE/BUCKET:ACCESS, e.g. local/photos:read (access read, write or read-write)";
        let (path, access) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no access; {form}"))?;
        let (store, bucket) = path
            .split_once('/')
            .ok_or_else(|| format!("`{s}` names no store; {form}"))?;
        if !evoke_connectors::trigger::valid_name(store) {
            return Err(format!("`{s}`: `{store}` is not a store name; {form}"));
        }
        evoke_connectors::s3::check_bucket(bucket).map_err(|m| format!("`{s}`: {m}"))?;
        let access = match access {
            "read" => Access::Read,
            "write" => Access::Write,
            "read-write" | "rw" => Access::ReadWrite,
            other => return Err(format!("`{s}`: `{other}` is not an access; {form}")),
        };
        Ok(BucketGrant {
            store: store.to_string(),
            bucket: bucket.to_string(),
            access,
        })
    }
}

impl TryFrom<String> for BucketGrant {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<BucketGrant> for String {
    fn from(g: BucketGrant) -> String {
        let access = match g.access {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read-write",
        };
        format!("{}/{}:{access}", g.store, g.bucket)
    }
}

/// Forms that query strings and hand-written JSON use: whole numbers as
/// numbers or strings, an empty destination for none.
mod lenient {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    use super::Destination;

    fn whole(v: &Value) -> Result<u64, String> {
        match v {
            Value::Number(n) => n.as_u64().ok_or_else(|| format!("{n} is not a whole number")),
            Value::String(s) => s.trim().parse().map_err(|_| format!("`{s}` is not a whole number")),
            _ => Err("must be a whole number".into()),
        }
    }

    pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let n = whole(&Value::deserialize(d)?).map_err(D::Error::custom)?;
        u32::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large")))
    }

    pub fn fuel<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(None),
            v => whole(&v).map(Some).map_err(D::Error::custom),
        }
    }

    pub fn destination<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Destination>, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => s.parse().map(Some).map_err(D::Error::custom),
            _ => Err(D::Error::custom("must be a string such as \"nats:results\"")),
        }
    }
}

pub const MEMORY_MIN: ByteSize = ByteSize::mib(1);
pub const MEMORY_MAX: ByteSize = ByteSize(4 * ByteSize::GI);
pub const TIMEOUT_MAX: Duration = Duration::from_secs(15 * 60);
pub const RETRIES_MAX: u32 = 10;
pub const MAX_EVENT_AGE_MIN: Duration = Duration::from_secs(60);
pub const MAX_EVENT_AGE_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MAX_INSTANCES_MAX: u32 = 1000;

impl Default for FunctionSpec {
    fn default() -> Self {
        FunctionSpec {
            memory: ByteSize::mib(128),
            timeout: Duration::from_secs(3),
            retries: 3,
            max_event_age: Duration::from_secs(24 * 3600),
            env: BTreeMap::new(),
            reserved: 0,
            max_instances: 10,
            idle_timeout: Duration::from_secs(300),
            on_success: None,
            on_failure: None,
            success_body: SuccessBody::Invocation,
            fuel: None,
            grants: Grants::default(),
        }
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins field errors into one line.
pub fn describe(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl FunctionSpec {
    /// Builds a spec from a JSON object, defaulting what is missing and
    /// collecting every problem: each field is read on its own through the
    /// serde derive (so its error names it), then the whole is range-checked.
    pub fn from_json(value: &Value) -> Result<FunctionSpec, Vec<FieldError>> {
        let Value::Object(map) = value else {
            return Err(vec![err("spec", "must be a JSON object")]);
        };
        let mut errors = Vec::new();
        let mut good = Map::new();
        for (key, v) in map {
            let mut one = Map::new();
            one.insert(key.clone(), v.clone());
            match serde_json::from_value::<FunctionSpec>(Value::Object(one)) {
                Ok(_) => {
                    good.insert(key.clone(), v.clone());
                }
                Err(e) => errors.push(err(key, &field_message(&e.to_string()))),
            }
        }
        // Range checks run over the fields that did parse, so one answer
        // lists every problem.
        let spec: FunctionSpec =
            serde_json::from_value(Value::Object(good)).map_err(|e| vec![err("spec", &e.to_string())])?;
        let bad: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
        errors.extend(spec.check().into_iter().filter(|e| !bad.contains(&e.field)));
        if errors.is_empty() { Ok(spec) } else { Err(errors) }
    }

    /// Builds a spec from query parameters named like the CLI flags
    /// (`memory=64Mi&timeout=5s&env=KEY=VALUE`).
    pub fn from_query(pairs: &[(String, String)]) -> Result<FunctionSpec, Vec<FieldError>> {
        let mut map = Map::new();
        let mut env = Map::new();
        let mut buckets = Vec::new();
        let mut http = Vec::new();
        let mut errors = Vec::new();
        for (k, v) in pairs {
            if k == "grant" {
                buckets.push(Value::String(v.clone()));
            } else if k == "http" {
                http.push(Value::String(v.clone()));
            } else if k == "env" {
                match v.split_once('=') {
                    Some((name, value)) => {
                        env.insert(name.to_string(), Value::String(value.to_string()));
                    }
                    None => errors.push(err("env", &format!("`{v}` must be NAME=VALUE"))),
                }
            } else {
                map.insert(k.clone(), Value::String(v.clone()));
            }
        }
        if !env.is_empty() {
            map.insert("env".into(), Value::Object(env));
        }
        if !buckets.is_empty() || !http.is_empty() {
            map.insert("grants".into(), serde_json::json!({ "buckets": buckets, "http": http }));
        }
        match FunctionSpec::from_json(&Value::Object(map)) {
            Ok(spec) if errors.is_empty() => Ok(spec),
            Ok(_) => Err(errors),
            Err(mut more) => {
                errors.append(&mut more);
                Err(errors)
            }
        }
    }

    /// Range checks across fields.
    pub fn check(&self) -> Vec<FieldError> {
        let mut e = Vec::new();
        if self.memory < MEMORY_MIN || self.memory > MEMORY_MAX {
            e.push(err(
                "memory",
                &format!("{} is out of range {MEMORY_MIN}..{MEMORY_MAX}", self.memory),
            ));
        }
        if self.timeout < Duration::from_millis(1) || self.timeout > TIMEOUT_MAX {
            e.push(err(
                "timeout",
                &format!("{} is out of range 1ms..15m", units::format_duration(self.timeout)),
            ));
        }
        if self.retries > RETRIES_MAX {
            e.push(err(
                "retries",
                &format!("{} is more than the maximum of {RETRIES_MAX}", self.retries),
            ));
        }
        if self.max_event_age < MAX_EVENT_AGE_MIN || self.max_event_age > MAX_EVENT_AGE_MAX {
            e.push(err(
                "max_event_age",
                &format!(
                    "{} is out of range 1m..7days",
                    units::format_duration(self.max_event_age)
                ),
            ));
        }
        if self.max_instances == 0 || self.max_instances > MAX_INSTANCES_MAX {
            e.push(err(
                "max_instances",
                &format!("{} is out of range 1..{MAX_INSTANCES_MAX}", self.max_instances),
            ));
        }
        if self.reserved > self.max_instances {
            e.push(err(
                "reserved",
                &format!("{} is more than max_instances ({})", self.reserved, self.max_instances),
            ));
        }
        if self.idle_timeout < Duration::from_secs(1) || self.idle_timeout > Duration::from_secs(24 * 3600) {
            e.push(err("idle_timeout", "is out of range 1s..24h"));
        }
        if self.fuel == Some(0) {
            e.push(err("fuel", "must be at least 1"));
        }
        for name in self.env.keys() {
            if !evoke_connectors::trigger::valid_env_name(name) {
                e.push(err(
                    &format!("env.{name}"),
                    "names are letters, digits and `_`, not starting with a digit",
                ));
            }
        }
        e
    }
}

fn err(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// serde's message for one field, without the position it adds.
fn field_message(m: &str) -> String {
    match m.find(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_grants_match_scheme_host_port_and_path() {
        let g: super::HttpGrant = "https://api.example.com/v1/*".parse().unwrap();
        assert!(g.allows(true, "api.example.com", 443, "/v1/users"));
        assert!(g.allows(true, "API.example.com.", 443, "/v1/"));
        assert!(!g.allows(false, "api.example.com", 443, "/v1/users"), "scheme");
        assert!(!g.allows(true, "api.example.com", 8443, "/v1/users"), "port");
        assert!(!g.allows(true, "api.example.com.evil.net", 443, "/v1/users"), "host");
        assert!(!g.allows(true, "api.example.com", 443, "/v2"), "path");
        let g: super::HttpGrant = "http://127.0.0.1:9000/hooks/ping".parse().unwrap();
        assert!(g.allows(false, "127.0.0.1", 9000, "/hooks/ping"));
        assert!(!g.allows(false, "127.0.0.1", 9000, "/hooks/ping2"), "exact path");
        assert!(!g.allows(false, "127.0.0.1", 80, "/hooks/ping"));
        let g: super::HttpGrant = "https://*.example.com".parse().unwrap();
        assert!(!g.allows(true, "example.com", 443, "/"), "subdomains only");
        assert!(g.allows(true, "a.b.example.com", 443, "/"));
        assert!(!g.allows(true, "a.b.example.com", 443, "/x"), "no path is `/` only");
        let g: super::HttpGrant = "http://[::1]:8080/*".parse().unwrap();
        assert!(g.allows(false, "[::1]", 8080, "/x"));
        for bad in [
            "ftp://x/",
            "https://",
            "https://a*.com/",
            "https://x/a*/b",
            "http://x:99999/",
            "https://u@x/",
            "http://x/?q",
            "http://[::1/",
        ] {
            assert!(bad.parse::<super::HttpGrant>().is_err(), "{bad}");
        }
        assert_eq!(String::from(g), "http://[::1]:8080/*");
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_checked() {
        assert!("hello".parse::<FunctionName>().is_ok());
        assert!("a-1".parse::<FunctionName>().is_ok());
        for bad in ["", "Hello", "1abc", "a_b", &"a".repeat(64)] {
            assert!(bad.parse::<FunctionName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_match_function_compute() {
        let spec = FunctionSpec::from_json(&json!({})).unwrap();
        assert_eq!(spec.retries, 3);
        assert_eq!(spec.max_event_age, Duration::from_secs(86400));
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let errors = FunctionSpec::from_json(&json!({
            "memory": "64Xi", "timeout": "forever", "retries": 99, "colour": "blue",
            "on_success": "ftp://x", "reserved": 5, "max_instances": 2
        }))
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        for f in ["memory", "timeout", "colour", "on_success", "reserved"] {
            assert!(fields.contains(&f), "{f} missing from {errors:?}");
        }
    }

    #[test]
    fn hostile_numbers_are_field_errors_not_overflows() {
        for v in [
            json!(i64::MIN),
            json!(u64::MAX),
            json!(-1),
            json!(""),
            json!("-1"),
            json!("18446744073709551616"),
            json!(1.5),
            json!(u64::from(u32::MAX) + 1),
        ] {
            for field in ["retries", "max_instances", "reserved"] {
                let errors = FunctionSpec::from_json(&json!({ field: v.clone() })).unwrap_err();
                assert_eq!(errors[0].field, field, "{field} = {v}: {errors:?}");
            }
            if v != json!(u64::MAX) && v != json!(u64::from(u32::MAX) + 1) {
                let errors = FunctionSpec::from_json(&json!({ "fuel": v.clone() })).unwrap_err();
                assert_eq!(errors[0].field, "fuel", "fuel = {v}");
            }
        }
        for d in ["", "-5s", "18446744073709551616s", "9223372036854775807d"] {
            let errors = FunctionSpec::from_json(&json!({ "timeout": d, "max_event_age": d })).unwrap_err();
            assert_eq!(errors.len(), 2, "{d}: {errors:?}");
        }
        for m in ["", "-1Mi", "18446744073709551615Gi", "99999999999999999999"] {
            let errors = FunctionSpec::from_json(&json!({ "memory": m })).unwrap_err();
            assert_eq!(errors[0].field, "memory", "{m}");
        }
    }

    #[test]
    fn query_parameters_build_a_spec() {
        let q = vec![
            ("memory".to_string(), "64Mi".to_string()),
            ("timeout".to_string(), "5s".to_string()),
            ("retries".to_string(), "2".to_string()),
            ("env".to_string(), "GREETING=hi=there".to_string()),
            ("on_failure".to_string(), "nats:failed".to_string()),
        ];
        let spec = FunctionSpec::from_query(&q).unwrap();
        assert_eq!(spec.memory, ByteSize::mib(64));
        assert_eq!(spec.retries, 2);
        assert_eq!(spec.env["GREETING"], "hi=there");
        assert_eq!(spec.on_failure, Some(Destination::Nats("failed".into())));
        let round: FunctionSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(round, spec);
    }

    #[test]
    fn destinations_parse() {
        assert!("nats:a.b".parse::<Destination>().is_ok());
        assert!("nats:a.*".parse::<Destination>().is_err());
        assert_eq!(
            "jetstream:orders.done".parse::<Destination>(),
            Ok(Destination::JetStream("orders.done".into()))
        );
        for reserved in [
            "nats:$JS.API.STREAM.DELETE.EVOKE_EVENTS",
            "jetstream:$KV.EVOKE_FUNCTIONS.x",
            "nats:$O.EVOKE_CODE.x",
            "nats:$SYS.REQ.SERVER.PING",
            "nats:_INBOX.abc",
            "nats:evoke.invoke.other",
            "jetstream:evoke.dlq.f.x",
            "nats:evoke",
        ] {
            let e = reserved.parse::<Destination>().unwrap_err();
            assert!(e.contains("reserved"), "{reserved}: {e}");
        }
        for link_local in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/x",
            "https://169.254.0.1:8443/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let e = link_local.parse::<Destination>().unwrap_err();
            assert!(e.contains("link-local"), "{link_local}: {e}");
        }
        assert!("http://10.0.0.1/hook".parse::<Destination>().is_ok());
        assert!("https://example.com/x".parse::<Destination>().is_ok());
        assert!("function:other".parse::<Destination>().is_ok());
        assert!("function:Other".parse::<Destination>().is_err());
    }
}
