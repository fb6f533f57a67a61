//! The object storage source (`kind = "s3"`): "run a function for every
//! object uploaded to a bucket", on AWS S3, MinIO, Ceph RGW or any
//! S3-compatible store.
//!
//! Notifications reach evoke three ways (`via`):
//! - `webhook`: the store posts them to `/hooks/<trigger>` (MinIO, Ceph);
//!   evoke answers 200 only once every record is stored.
//! - `sqs`: the store sends them to an SQS queue that evoke long-polls
//!   ([`sqs`]); a message is deleted only once every record is stored.
//! - `poll`: for stores without notifications, evoke lists the bucket
//!   ([`poll`]) and remembers what it saw.
//!
//! Whatever the way, each record becomes one event ([`record_event`]) with
//! the CloudEvents AWS S3 adapter's `type` (`com.amazonaws.s3.ObjectCreated:Put`),
//! the bucket as `source`, the decoded key as `subject` and the record as
//! `data`; its dedupe id comes from bucket, key, event name and the
//! record's `sequencer` (or etag and time), so the same notification
//! delivered twice, or by two ways, is one invocation.

pub mod notification;
#[cfg(feature = "s3")]
pub mod poll;
#[cfg(feature = "s3")]
pub mod sqs;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

pub use notification::{Notification, NotificationError, Record};

use crate::event::Event;
use crate::source::{Delivered, Published, Sink, deliver, park_until_stored};
use crate::trigger::{Problem, valid_name};
use crate::units::ByteSize;
use crate::webhook::AuthConfig;

/// How notifications reach evoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Webhook,
    Sqs,
    Poll,
}

/// `kind = "s3"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The store (`[stores.NAME]`) the bucket is in.
    pub store: String,
    pub bucket: String,
    pub via: Via,
    /// Event names, `*` as a wildcard, with or without `s3:`
    /// (default `s3:ObjectCreated:*`).
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// Only keys starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Only keys ending in one of these (one string or a list).
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub suffix: Vec<String>,
    /// `via = "webhook"`: who may post notifications (MinIO's `auth_token`
    /// arrives as `Authorization: Bearer <token>`: scheme `bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// `via = "webhook"`: the largest notification accepted (default 1Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
    /// `via = "sqs"`: the queue the store notifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
    /// `via = "sqs"`: how long a received message stays invisible to other
    /// readers (default 60s; extended while its records are published).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::units::duration_opt"
    )]
    pub visibility_timeout: Option<Duration>,
    /// `via = "poll"`: how often the bucket is listed (default 30s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::units::duration_opt"
    )]
    pub interval: Option<Duration>,
    /// Deepest chain of functions writing objects that trigger functions
    /// (default 16); deeper events are dead-lettered as `RecursiveLoop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chain: Option<u32>,
}

pub const DEFAULT_MAX_BODY: ByteSize = ByteSize::mib(1);
pub const DEFAULT_VISIBILITY: Duration = Duration::from_secs(60);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CHAIN: u32 = 16;

fn default_events() -> Vec<String> {
    vec!["s3:ObjectCreated:*".into()]
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom("expected a string or a list of strings")),
    }
}

/// The state key with the trigger's last event, for `evoke triggers`.
pub fn last_event_key(trigger: &str) -> String {
    format!("s3.{trigger}")
}

impl S3Config {
    pub fn max_body(&self) -> ByteSize {
        self.max_body.unwrap_or(DEFAULT_MAX_BODY)
    }

    pub fn max_chain(&self) -> u32 {
        self.max_chain.unwrap_or(DEFAULT_MAX_CHAIN)
    }

    pub fn auth(&self) -> AuthConfig {
        self.auth.clone().unwrap_or_default()
    }

    /// Problems with the table, as (field, message).
    pub fn check(&self) -> Vec<Problem> {
        let mut p: Vec<Problem> = Vec::new();
        if !valid_name(&self.store) {
            p.push(("store".into(), format!("`{}` is not a store name", self.store)));
        }
        if let Err(m) = check_bucket(&self.bucket) {
            p.push(("bucket".into(), m));
        }
        if self.events.is_empty() {
            p.push((
                "events".into(),
                "needs at least one event name, e.g. s3:ObjectCreated:*".into(),
            ));
        }
        for e in &self.events {
            if !valid_event_pattern(e) {
                p.push((
                    "events".into(),
                    format!("`{e}` is not an S3 event name; write e.g. s3:ObjectCreated:* or s3:ObjectRemoved:Delete"),
                ));
            }
        }
        if self.suffix.iter().any(String::is_empty) {
            p.push((
                "suffix".into(),
                "an empty suffix matches every key; leave `suffix` out instead".into(),
            ));
        }
        let only = |field: &str, set: bool, via: Via, p: &mut Vec<Problem>| {
            if set && self.via != via {
                p.push((
                    field.into(),
                    format!("only applies to via = \"{}\"", format!("{via:?}").to_lowercase()),
                ));
            }
        };
        only("auth", self.auth.is_some(), Via::Webhook, &mut p);
        only("max_body", self.max_body.is_some(), Via::Webhook, &mut p);
        only("queue_url", self.queue_url.is_some(), Via::Sqs, &mut p);
        only(
            "visibility_timeout",
            self.visibility_timeout.is_some(),
            Via::Sqs,
            &mut p,
        );
        only("interval", self.interval.is_some(), Via::Poll, &mut p);
        match self.via {
            Via::Webhook => {
                for (field, message) in self.auth().check() {
                    p.push((format!("auth.{field}"), message));
                }
                if self.max_body().0 == 0 || self.max_body() > ByteSize::mib(64) {
                    p.push(("max_body".into(), "is out of range 1..64Mi".into()));
                }
            }
            Via::Sqs => match &self.queue_url {
                None => p.push((
                    "queue_url".into(),
                    "is required with via = \"sqs\": the URL of the queue the bucket notifies".into(),
                )),
                Some(u) if !u.starts_with("http://") && !u.starts_with("https://") => {
                    p.push(("queue_url".into(), format!("`{u}` is not an http(s) queue URL")))
                }
                Some(_) => {}
            },
            Via::Poll => {}
        }
        if let Some(v) = self.visibility_timeout
            && !(Duration::from_secs(5)..=Duration::from_secs(43200)).contains(&v)
        {
            p.push(("visibility_timeout".into(), "is out of range 5s..12h".into()));
        }
        if let Some(i) = self.interval
            && !(Duration::from_secs(1)..=Duration::from_secs(86400)).contains(&i)
        {
            p.push(("interval".into(), "is out of range 1s..24h".into()));
        }
        if self.max_chain == Some(0) || self.max_chain.is_some_and(|m| m > 1000) {
            p.push(("max_chain".into(), "is out of range 1..1000".into()));
        }
        p
    }

    /// Whether a record is one this trigger wants: its bucket, an event
    /// name it asks for, its prefix and one of its suffixes.
    pub fn wants(&self, r: &Record) -> bool {
        r.bucket == self.bucket && self.events.iter().any(|p| event_matches(p, &r.event_name)) && self.wants_key(&r.key)
    }

    /// Whether a key passes the prefix and suffix filters.
    pub fn wants_key(&self, key: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
            && (self.suffix.is_empty() || self.suffix.iter().any(|s| key.ends_with(s.as_str())))
    }

    /// Whether the trigger asks for removals (polling then reports them).
    pub fn wants_removals(&self) -> bool {
        self.events.iter().any(|p| event_matches(p, "ObjectRemoved:Delete"))
    }
}

/// S3's bucket naming rules (3-63 characters of lower-case letters, digits,
/// `.` and `-`, starting and ending with a letter or digit).
pub fn check_bucket(b: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.bytes().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{b}` is not a bucket name: 3-63 lower-case letters, digits, `.` and `-`"
        ))
    }
}

fn valid_event_pattern(p: &str) -> bool {
    let p = p.strip_prefix("s3:").unwrap_or(p);
    !p.is_empty()
        && p.split(':').all(|part| {
            part == "*" || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*'))
        })
        && (p == "*" || p.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// Matches an event name (without `s3:`) against a pattern (with or
/// without `s3:`) where `*` stands for any run of characters.
pub fn event_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.strip_prefix("s3:").unwrap_or(pattern);
    let name = name.strip_prefix("s3:").unwrap_or(name);
    glob(pattern.as_bytes(), name.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// Extension carrying how many functions wrote objects before this event
/// (0 for an upload from outside evoke).
pub const EXT_CHAIN: &str = "evokechain";
/// The store an s3 event's object is in (the trigger's `store`), so a
/// function can read it with `evoke:function/objects`.
pub const EXT_STORE: &str = "evokestore";

/// The dedupe id of a record: the same notification twice (or through two
/// ways) is one invocation.
pub fn dedupe_id(r: &Record) -> String {
    let version = match (&r.sequencer, &r.etag) {
        (Some(seq), _) => format!("seq:{seq}"),
        (None, Some(etag)) => format!(
            "etag:{}@{}",
            etag.trim_matches('"'),
            r.event_time.as_deref().unwrap_or("")
        ),
        (None, None) => format!("time:{}", r.event_time.as_deref().unwrap_or("")),
    };
    format!("s3:{}/{}#{}#{version}", r.bucket, r.key, r.event_name)
}

/// The event for one record: CloudEvents AWS S3 adapter type, the bucket as
/// source, the decoded key as subject, the record as data.
pub fn record_event(trigger: &str, store: &str, r: &Record, chain: u32) -> Event {
    let id = hex::encode(&Sha256::digest(dedupe_id(r).as_bytes())[..16]);
    let mut e = Event::new(id, r.bucket.clone(), format!("com.amazonaws.s3.{}", r.event_name));
    e.subject = Some(r.key.clone());
    if let Some(t) = r.event_time.as_deref().and_then(parse_time) {
        e.time = Some(t);
    }
    e.extensions.insert("evoketrigger".into(), trigger.to_string());
    e.extensions.insert(EXT_CHAIN.into(), chain.to_string());
    e.extensions.insert(EXT_STORE.into(), store.to_string());
    e.with_data(
        Some("application/json".into()),
        Bytes::from(serde_json::to_vec(&r.raw).unwrap_or_default()),
    )
}

/// An event time as stores write it: RFC 3339, or without a zone (UTC).
fn parse_time(t: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&chrono::Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

/// What became of a notification's records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Records now on the function's queue.
    pub queued: usize,
    /// Records already queued before (a redelivery).
    pub duplicates: usize,
    /// Records the trigger does not want (bucket, event name, prefix, suffix).
    pub filtered: usize,
    /// Records dead-lettered (the function is gone, the event too large, a
    /// recursive loop).
    pub parked: usize,
    /// An `s3:TestEvent`, acknowledged and skipped.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// Looks up how deep in a chain of functions an object was written (0 when
/// no function of evoke wrote it).
pub trait Chains: Send + Sync {
    fn depth(&self, bucket: &str, key: &str) -> impl Future<Output = u32> + Send;
}

/// Objects are never written by functions (no object access): depth 0.
pub struct NoChains;

impl Chains for NoChains {
    async fn depth(&self, _: &str, _: &str) -> u32 {
        0
    }
}

/// One s3 trigger, as its source runs it.
#[derive(Debug, Clone)]
pub struct S3Trigger {
    pub name: String,
    pub function: String,
    pub config: S3Config,
    pub filter: Option<crate::filter::Filter>,
}

impl S3Trigger {
    /// Delivers every wanted record of `records` to the trigger's function,
    /// in order: each is stored on the queue (or parked in the dead-letter
    /// queue when refused for good, or when its chain is deeper than
    /// `max_chain`). `None` when `stop` came first: then nothing may be
    /// acknowledged upstream, and a redelivery of the whole notification is
    /// safe (dedupe ids).
    pub async fn deliver<S: Sink>(
        &self,
        sink: &S,
        chains: &impl Chains,
        records: &[Record],
        stop: impl Future<Output = ()>,
    ) -> Option<Summary> {
        deliver_records(sink, chains, self, records, stop).await
    }
}

async fn deliver_records<S: Sink>(
    sink: &S,
    chains: &impl Chains,
    t: &S3Trigger,
    records: &[Record],
    stop: impl Future<Output = ()>,
) -> Option<Summary> {
    let (trigger, function, config, filter) = (t.name.as_str(), t.function.as_str(), &t.config, t.filter.as_ref());
    tokio::pin!(stop);
    let mut summary = Summary::default();
    for r in records {
        if !config.wants(r) {
            summary.filtered += 1;
            continue;
        }
        let depth = chains.depth(&r.bucket, &r.key).await;
        let event = record_event(trigger, &config.store, r, depth);
        if filter.is_some_and(|f| !f.matches(&event)) {
            summary.filtered += 1;
            continue;
        }
        let dedupe = dedupe_id(r);
        if depth > config.max_chain() {
            let reason = format!(
                "RecursiveLoop: s3://{}/{} was written by a chain of {depth} functions, more than max_chain = {}",
                r.bucket,
                r.key,
                config.max_chain()
            );
            tracing::warn!(trigger, %reason, "recursive loop stopped");
            park_until_stored(sink, function, &event, &dedupe, &reason, &mut stop).await?;
            summary.parked += 1;
            continue;
        }
        match deliver(sink, function, &event, &dedupe, &mut stop).await? {
            Delivered::Queued(Published::Stored) => summary.queued += 1,
            Delivered::Queued(Published::Duplicate) => summary.duplicates += 1,
            Delivered::Parked(_) => summary.parked += 1,
        }
    }
    Some(summary)
}

/// The event that carries a notification evoke could not read into the
/// dead-letter queue: its raw bytes, so nothing is lost.
pub fn unreadable_event(trigger: &str, origin: &str, body: Bytes) -> Event {
    let id = hex::encode(&Sha256::digest(&body)[..16]);
    let mut e = Event::new(id, format!("/evoke/triggers/{trigger}"), "evoke.s3.unreadable");
    e.extensions.insert("evoketrigger".into(), trigger.to_string());
    e.extensions.insert("evokeorigin".into(), origin.to_string());
    e.with_data(Some("application/octet-stream".into()), body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::trigger::{SourceConfig, TriggerSpec};

    fn config(extra: serde_json::Value) -> S3Config {
        let mut v = json!({"function":"f","kind":"s3","store":"local","bucket":"photos","via":"webhook"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        match TriggerSpec::parse(&v).unwrap().source {
            SourceConfig::S3(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn trigger(config: S3Config) -> S3Trigger {
        S3Trigger {
            name: "t".into(),
            function: "f".into(),
            config,
            filter: None,
        }
    }

    fn record(name: &str, key: &str) -> Record {
        Record {
            event_name: name.into(),
            bucket: "photos".into(),
            key: key.into(),
            size: Some(1),
            etag: Some("e".into()),
            sequencer: Some("01".into()),
            version_id: None,
            event_time: Some("2026-01-01T00:00:00Z".into()),
            raw: json!({}),
        }
    }

    #[test]
    fn event_names_match_with_wildcards() {
        assert!(event_matches("s3:ObjectCreated:*", "ObjectCreated:Put"));
        assert!(event_matches(
            "ObjectCreated:*",
            "s3:ObjectCreated:CompleteMultipartUpload"
        ));
        assert!(event_matches("*", "ObjectRemoved:Delete"));
        assert!(!event_matches("s3:ObjectCreated:*", "ObjectRemoved:Delete"));
        assert!(!event_matches("s3:ObjectCreated:Put", "ObjectCreated:Copy"));
    }

    #[test]
    fn filters_take_bucket_events_prefix_and_suffixes() {
        let c = config(json!({"prefix":"incoming/","suffix":[".jpg",".png"]}));
        assert!(c.wants(&record("ObjectCreated:Put", "incoming/a.png")));
        assert!(!c.wants(&record("ObjectCreated:Put", "incoming/a.gif")));
        assert!(!c.wants(&record("ObjectCreated:Put", "other/a.png")));
        assert!(!c.wants(&record("ObjectRemoved:Delete", "incoming/a.png")));
        let mut other = record("ObjectCreated:Put", "incoming/a.png");
        other.bucket = "elsewhere".into();
        assert!(!c.wants(&other));
        assert_eq!(config(json!({"suffix":".jpg"})).suffix, [".jpg"]);
    }

    #[test]
    fn events_follow_the_cloudevents_s3_adapter() {
        let r = record("ObjectCreated:Put", "incoming/my cat.jpg");
        let e = record_event("uploads", "local", &r, 0);
        assert_eq!(e.ty, "com.amazonaws.s3.ObjectCreated:Put");
        assert_eq!(
            (e.source.as_str(), e.subject.as_deref()),
            ("photos", Some("incoming/my cat.jpg"))
        );
        assert_eq!(
            record_event("uploads", "local", &r, 0).id,
            e.id,
            "the same record is the same event"
        );
        let mut later = r.clone();
        later.sequencer = Some("02".into());
        assert_ne!(dedupe_id(&later), dedupe_id(&r));
    }

    #[tokio::test]
    async fn an_outage_mid_notification_is_retried_whole_and_yields_each_record_once() {
        use crate::contract::{MemorySink, assert_valid_event};
        let c = config(json!({}));
        let records: Vec<Record> = ["a.jpg", "b.jpg", "c.jpg"]
            .iter()
            .map(|k| record("ObjectCreated:Put", k))
            .collect();
        let sink = MemorySink::default();
        *sink.outage_after.lock().unwrap() = Some(1);
        let stop = tokio::time::sleep(std::time::Duration::from_millis(300));
        let t = trigger(c);
        let first = t.deliver(&sink, &NoChains, &records, stop).await;
        assert_eq!(
            first, None,
            "not everything stored: the sender must not be acknowledged"
        );
        assert_eq!(sink.events().len(), 1);
        *sink.outage_after.lock().unwrap() = None;
        let again = t
            .deliver(&sink, &NoChains, &records, std::future::pending())
            .await
            .unwrap();
        assert_eq!((again.queued, again.duplicates), (2, 1));
        let events = sink.events();
        assert_eq!(events.len(), 3);
        for e in &events {
            assert_valid_event(e);
        }
    }

    #[tokio::test]
    async fn chains_deeper_than_max_chain_are_dead_lettered() {
        use crate::contract::MemorySink;
        struct Deep;
        impl Chains for Deep {
            async fn depth(&self, _: &str, key: &str) -> u32 {
                if key.starts_with("loop/") { 3 } else { 0 }
            }
        }
        let c = config(json!({"max_chain": 2}));
        let records = [
            record("ObjectCreated:Put", "loop/x.jpg"),
            record("ObjectCreated:Put", "ok.jpg"),
        ];
        let sink = MemorySink::default();
        let s = trigger(c)
            .deliver(&sink, &Deep, &records, std::future::pending())
            .await
            .unwrap();
        assert_eq!((s.queued, s.parked), (1, 1));
        assert!(sink.parked()[0].1.starts_with("RecursiveLoop"), "{:?}", sink.parked());
        assert_eq!(sink.events()[0].extensions[EXT_CHAIN], "0");
    }

    #[test]
    fn bad_tables_name_their_fields() {
        let problems = |extra: serde_json::Value| {
            let mut v = json!({"function":"f","kind":"s3","store":"local","bucket":"photos"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            TriggerSpec::parse(&v)
                .unwrap_err()
                .into_iter()
                .map(|(f, _)| f)
                .collect::<Vec<_>>()
        };
        assert_eq!(problems(json!({})), ["via"]);
        assert_eq!(problems(json!({"via":"sqs"})), ["queue_url"]);
        assert_eq!(problems(json!({"via":"poll","queue_url":"http://q"})), ["queue_url"]);
        assert_eq!(problems(json!({"via":"poll","bucket":"Bad_Bucket"})), ["bucket"]);
        assert_eq!(
            problems(json!({"via":"poll","events":["s3:Object Created"]})),
            ["events"]
        );
        assert_eq!(
            problems(json!({"via":"webhook","auth":{"scheme":"bearer"}})),
            ["auth.secret_env"]
        );
        assert_eq!(problems(json!({"via":"poll","interval":"0s"})), ["interval"]);
    }
}
