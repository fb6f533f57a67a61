//! `kind = "nats"`: messages from a NATS server (any server or account,
//! not only evoke's own): a core `subject` with a queue group, or an
//! existing JetStream `stream` through a durable consumer. As destinations:
//! `nats://CONN/subject` (core publish, flushed) and
//! `jetstream://CONN/subject` (stored, ack awaited).
//!
//! Core NATS is at-most-once by nature: a message published while no evoke
//! node is subscribed is gone, and one in flight when a node stops is lost
//! (nothing can be acknowledged). JetStream is at-least-once: a message is
//! acknowledged only after its event is stored, and its dedupe id is its
//! stream sequence, so a redelivery is the same invocation. CloudEvents in
//! binary mode ride in `ce-*` headers.

use serde::{Deserialize, Serialize};

use crate::queue::{BatchConfig, Order};
use crate::trigger::Problem;
use crate::units::ByteSize;

/// Where a JetStream consumer starts when it is first created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deliver {
    #[default]
    All,
    New,
    ByStartTime,
}

/// `kind = "nats"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// `nats://host:4222` (or `tls://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Core NATS: the subject (wildcards allowed); with `stream`, a filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Core NATS queue group (default `evoke-<trigger>`): nodes share messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    /// JetStream: an existing stream to consume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// JetStream: the durable consumer's name (default `evoke-<trigger>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<String>,
    #[serde(default)]
    pub deliver: Deliver,
    /// With `deliver = "by_start_time"`: RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchConfig>,
    /// `key`: events with the same key run one at a time, in order.
    #[serde(default, skip_serializing_if = "Order::is_none")]
    pub order: Order,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
}

pub const SCHEMES: &[&str] = &["nats", "tls", "ws", "wss"];

impl NatsConfig {
    pub fn check(&self) -> Vec<Problem> {
        let mut p = crate::queue::check_common(self.batch.as_ref(), self.max_body);
        p.extend(crate::amqp::check_connection(&self.connection, &self.url, SCHEMES));
        match (&self.subject, &self.stream) {
            (None, None) => p.push((
                "subject".into(),
                "is required: a core NATS `subject`, or a JetStream `stream`".into(),
            )),
            (Some(s), _) if !valid_subject(s, true) => {
                p.push(("subject".into(), format!("`{s}` is not a NATS subject")));
            }
            _ => {}
        }
        if let Some(s) = &self.stream
            && (s.is_empty() || s.contains(['.', '*', '>', ' ', '/', '\\']))
        {
            p.push(("stream".into(), format!("`{s}` is not a stream name")));
        }
        if self.stream.is_none() {
            for (field, set) in [
                ("durable", self.durable.is_some()),
                ("start_time", self.start_time.is_some()),
                ("deliver", self.deliver != Deliver::All),
            ] {
                if set {
                    p.push((field.into(), "applies to JetStream only: give `stream`".into()));
                }
            }
        } else if self.queue_group.is_some() {
            p.push((
                "queue_group".into(),
                "applies to core NATS only (a durable consumer is shared)".into(),
            ));
        }
        match (self.deliver, &self.start_time) {
            (Deliver::ByStartTime, None) => p.push(("start_time".into(), "is required by `by_start_time`".into())),
            (Deliver::ByStartTime, Some(t)) if chrono::DateTime::parse_from_rfc3339(t).is_err() => {
                p.push(("start_time".into(), format!("`{t}` is not an RFC 3339 time")));
            }
            (Deliver::All | Deliver::New, Some(_)) => {
                p.push(("start_time".into(), "needs `deliver = \"by_start_time\"`".into()))
            }
            _ => {}
        }
        p
    }
}

/// Whether `s` is a subject (with wildcards when `wildcards`).
pub fn valid_subject(s: &str, wildcards: bool) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    !s.is_empty()
        && !s.contains([' ', '\t', '\r', '\n'])
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && (wildcards || !t.contains(['*', '>']))
                && (!t.contains('*') || *t == "*")
                && (!t.contains('>') || (*t == ">" && i == tokens.len() - 1))
        })
}

#[cfg(feature = "nats")]
pub use client::*;

#[cfg(feature = "nats")]
mod client {
    use std::sync::Arc;

    use async_nats::jetstream::{self, consumer};
    use bytes::Bytes;
    use futures::StreamExt;

    use super::{Deliver, NatsConfig};
    use crate::connection::Resolved;
    use crate::event::Event;
    use crate::queue::{Binding, Consumer, Incoming, Message, Stats};

    /// Connects to a NATS server with the connection's credentials.
    pub async fn connect(c: &Resolved, name: &str) -> Result<async_nats::Client, String> {
        let mut o = async_nats::ConnectOptions::new().name(name).max_reconnects(None);
        if let Some(f) = &c.config.creds_file {
            o = o
                .credentials_file(f)
                .await
                .map_err(|e| format!("reading credentials file {f}: {e}"))?;
        }
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(ca) = &c.config.ca_file {
            o = o.add_root_certificates(ca.into());
        }
        // A server that is down fails the first connect at once (the
        // caller retries with its backoff); once connected, the client
        // reconnects by itself.
        let client = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let client = o.connect(c.url.as_str()).await.map_err(|e| e.to_string())?;
            client.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(client)
        })
        .await
        .map_err(|_| format!("cannot reach {} within 10 s", crate::connection::redact(&c.url)))??;
        Ok(client)
    }

    /// Core NATS subscription, or a JetStream durable consumer.
    pub enum NatsConsumer {
        Core(async_nats::Subscriber, async_nats::Client),
        JetStream(Box<jetstream::consumer::pull::Stream>, Arc<Stats>),
    }

    pub async fn consumer(
        config: &NatsConfig,
        client: async_nats::Client,
        trigger: &str,
        stats: Arc<Stats>,
        prefetch: usize,
    ) -> Result<NatsConsumer, String> {
        let Some(stream) = &config.stream else {
            let subject = config.subject.clone().unwrap_or_default();
            let group = config.queue_group.clone().unwrap_or_else(|| format!("evoke-{trigger}"));
            let sub = client
                .queue_subscribe(subject.clone(), group)
                .await
                .map_err(|e| format!("subscribing to `{subject}`: {e}"))?;
            return Ok(NatsConsumer::Core(sub, client));
        };
        let js = jetstream::new(client);
        let s = js
            .get_stream(stream)
            .await
            .map_err(|e| format!("JetStream stream `{stream}`: {e}"))?;
        let durable = config.durable.clone().unwrap_or_else(|| format!("evoke-{trigger}"));
        let deliver_policy = match config.deliver {
            Deliver::All => consumer::DeliverPolicy::All,
            Deliver::New => consumer::DeliverPolicy::New,
            Deliver::ByStartTime => {
                let t = config.start_time.as_deref().unwrap_or_default();
                let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| format!("start_time: {e}"))?;
                consumer::DeliverPolicy::ByStartTime { start_time: t }
            }
        };
        let c = s
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    deliver_policy,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: std::time::Duration::from_secs(60),
                    filter_subject: config.subject.clone().unwrap_or_default(),
                    max_ack_pending: (prefetch * 4) as i64,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("JetStream consumer `{durable}` on `{stream}`: {e}"))?;
        let messages = c
            .stream()
            .max_messages_per_batch(prefetch)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        Ok(NatsConsumer::JetStream(Box::new(messages), stats))
    }

    fn headers(h: Option<&async_nats::HeaderMap>) -> (Vec<(String, String)>, Option<String>, Option<String>) {
        let mut out = Vec::new();
        let (mut ct, mut msg_id) = (None, None);
        if let Some(h) = h {
            for (name, values) in h.iter() {
                let name = name.to_string();
                for v in values {
                    let v = v.to_string();
                    if name.eq_ignore_ascii_case("content-type") {
                        ct = Some(v.clone());
                        continue;
                    }
                    if name.eq_ignore_ascii_case("Nats-Msg-Id") {
                        msg_id = Some(v.clone());
                    }
                    out.push((name.clone(), v));
                }
            }
        }
        (out, ct, msg_id)
    }

    impl Consumer for NatsConsumer {
        async fn next(&mut self) -> Result<Incoming, String> {
            match self {
                NatsConsumer::Core(sub, client) => loop {
                    let m = sub.next().await.ok_or("the subscription ended")?;
                    if m.status.is_some() {
                        continue;
                    }
                    let (headers, content_type, msg_id) = headers(m.headers.as_ref());
                    let subject = m.subject.to_string();
                    if client.connection_state() != async_nats::connection::State::Connected {
                        tracing::debug!("NATS reconnecting; core messages may be lost meanwhile");
                    }
                    return Ok(Incoming {
                        message: Message {
                            body: m.payload,
                            content_type,
                            headers,
                            key: Some(subject.clone()),
                            subject: Some(subject.clone()),
                            origin_id: msg_id.map(|id| format!("{subject}.{id}")),
                            origin: vec![("evokenatssubject", subject)],
                            time: None,
                        },
                        ack: crate::queue::no_ack(),
                    });
                },
                NatsConsumer::JetStream(messages, stats) => {
                    let m = match messages.next().await {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return Err(format!("JetStream: {e}")),
                        None => return Err("the JetStream consumer ended".into()),
                    };
                    let info = m.info().map_err(|e| e.to_string())?;
                    stats.set_lag(info.pending);
                    let (stream, seq, delivered) = (info.stream.to_string(), info.stream_sequence, info.delivered);
                    let time =
                        chrono::DateTime::from_timestamp(info.published.unix_timestamp(), info.published.nanosecond());
                    let (headers, content_type, _) = headers(m.headers.as_ref());
                    let subject = m.subject.to_string();
                    let mut origin = vec![
                        ("evokenatssubject", subject.clone()),
                        ("evokenatsstream", stream.clone()),
                        ("evokenatssequence", seq.to_string()),
                    ];
                    if delivered > 1 {
                        origin.push(("evokenatsdelivered", delivered.to_string()));
                    }
                    let message = Message {
                        body: m.payload.clone(),
                        content_type,
                        headers,
                        key: Some(subject.clone()),
                        subject: Some(subject),
                        origin_id: Some(format!("{stream}.{seq}")),
                        origin,
                        time,
                    };
                    Ok(Incoming {
                        message,
                        ack: Box::pin(async move { m.double_ack().await.map_err(|e| e.to_string()) }),
                    })
                }
            }
        }
    }

    /// `event` in the NATS binding's binary mode (`ce-*` headers).
    fn encode(event: &Event) -> (async_nats::HeaderMap, Bytes) {
        let (headers, content_type, body) = Binding::Nats.encode(event);
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(k.as_str(), v.as_str());
        }
        if let Some(ct) = content_type {
            h.insert("content-type", ct.as_str());
        }
        h.insert("Nats-Msg-Id", event.id.as_str());
        (h, body)
    }

    /// Core publish, flushed (the server has it; no subscriber is awaited).
    /// Fails at once when the client lost its server (it would buffer
    /// until it reconnects: a destination that is down must be an error).
    fn connected(client: &async_nats::Client) -> Result<(), String> {
        match client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(format!("not connected to the NATS server ({other})")),
        }
    }

    pub async fn publish(client: &async_nats::Client, subject: &str, event: &Event) -> Result<(), String> {
        connected(client)?;
        let (h, body) = encode(event);
        client
            .publish_with_headers(subject.to_string(), h, body)
            .await
            .map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())
    }

    /// JetStream publish, ack awaited (deduplicated by the event id).
    pub async fn publish_stored(client: &async_nats::Client, subject: &str, event: &Event) -> Result<(), String> {
        connected(client)?;
        let (h, body) = encode(event);
        let js = jetstream::new(client.clone());
        let ack = js
            .publish_with_headers(subject.to_string(), h, body)
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| match e.kind() {
            jetstream::context::PublishErrorKind::StreamNotFound => {
                format!("no JetStream stream stores `{subject}` on that server")
            }
            _ => e.to_string(),
        })
    }
}
