//! `kind = "mqtt"`: subscribes to MQTT topics (v5 by default, or 3.1.1),
//! and publishes to a topic as a destination (`mqtt://CONN/topic`, QoS 1,
//! PUBACK awaited).
//!
//! For QoS 1 and 2 the PUBACK/PUBREC is sent only after the event is
//! stored (manual acks). The session is persistent (`clean_start` false,
//! with a session expiry for v5), so what is published while evoke is away
//! arrives when it returns. Each node has its own client id
//! (`evoke-<trigger>-<node>`); `share_group` turns the topics into shared
//! subscriptions (`$share/<group>/<topic>`) so nodes share the load.
//! CloudEvents in binary mode ride in MQTT 5 user properties; other user
//! properties are kept in the event. MQTT has no stable message id: each
//! delivery is its own event unless it is a CloudEvent (deduplicated by
//! its source and id).

use serde::{Deserialize, Serialize};

use crate::queue::{BatchConfig, Order};
use crate::trigger::Problem;
use crate::units::ByteSize;

/// `kind = "mqtt"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// `mqtt://host:1883` or `mqtts://host:8883`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Topic filters, `+` and `#` wildcards allowed.
    pub topics: Vec<String>,
    /// 0, 1 (default) or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// `"5"` (default) or `"3.1.1"`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Subscribe as `$share/<group>/<topic>` so nodes share messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_group: Option<String>,
    /// Client id (default `evoke-<trigger>-<node>`); must differ per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchConfig>,
    /// `key`: events with the same key run one at a time, in order.
    #[serde(default, skip_serializing_if = "Order::is_none")]
    pub order: Order,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
}

fn default_qos() -> u8 {
    1
}

fn default_protocol() -> String {
    "5".into()
}

pub const SCHEMES: &[&str] = &["mqtt", "mqtts", "tcp", "ssl"];

impl MqttConfig {
    pub fn check(&self) -> Vec<Problem> {
        let mut p = crate::queue::check_common(self.batch.as_ref(), self.max_body);
        p.extend(crate::amqp::check_connection(&self.connection, &self.url, SCHEMES));
        if self.topics.is_empty() {
            p.push(("topics".into(), "needs at least one topic filter".into()));
        }
        for t in &self.topics {
            if let Err(e) = check_filter(t) {
                p.push(("topics".into(), e));
            }
        }
        if self.qos > 2 {
            p.push(("qos".into(), "must be 0, 1 or 2".into()));
        }
        if !["5", "3.1.1"].contains(&self.protocol.as_str()) {
            p.push(("protocol".into(), format!("`{}` is not `5` or `3.1.1`", self.protocol)));
        }
        if let Some(g) = &self.share_group
            && (g.is_empty() || g.contains(['/', '+', '#']))
        {
            p.push(("share_group".into(), format!("`{g}` is not a share name")));
        }
        if let Some(c) = &self.client_id
            && (c.is_empty() || c.len() > 128)
        {
            p.push(("client_id".into(), "must be 1-128 characters".into()));
        }
        p
    }

    /// The filters subscribed to (shared when `share_group` is set).
    pub fn filters(&self) -> Vec<String> {
        self.topics
            .iter()
            .map(|t| match &self.share_group {
                Some(g) if !t.starts_with("$share/") => format!("$share/{g}/{t}"),
                _ => t.clone(),
            })
            .collect()
    }
}

/// Checks an MQTT topic filter: `+` and `#` only as whole levels, `#` last.
pub fn check_filter(t: &str) -> Result<(), String> {
    let levels: Vec<&str> = t.split('/').collect();
    let ok = !t.is_empty()
        && t.len() <= 65535
        && !t.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (!l.contains('+') || *l == "+") && (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{t}` is not a topic filter (`+` and `#` stand for whole levels, `#` only last)"
        ))
    }
}

/// Checks a topic to publish to (no wildcards).
pub fn check_topic(t: &str) -> Result<(), String> {
    if t.is_empty() || t.contains(['+', '#', '\0']) {
        return Err(format!("`{t}` is not an MQTT topic to publish to (no wildcards)"));
    }
    Ok(())
}

#[cfg(feature = "mqtt")]
pub use client::*;

#[cfg(feature = "mqtt")]
mod client {
    use std::time::Duration;

    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions};

    use super::MqttConfig;
    use crate::connection::Resolved;
    use crate::event::Event;
    use crate::queue::{Binding, Consumer, Incoming, Message};

    /// Session expiry asked for (v5): a week.
    const SESSION_EXPIRY: u32 = 7 * 24 * 3600;
    /// Requests queued towards the event loop (acks of the pipeline's window fit).
    const CHANNEL: usize = 1024;

    /// Host, port, TLS and credentials from a resolved connection.
    pub struct Endpoint {
        host: String,
        port: u16,
        tls: bool,
        user: Option<(String, String)>,
    }

    pub fn endpoint(c: &Resolved) -> Result<Endpoint, String> {
        let u = url::Url::parse(&c.url).map_err(|e| format!("bad MQTT URL: {e}"))?;
        let tls = matches!(u.scheme(), "mqtts" | "ssl");
        if !super::SCHEMES.contains(&u.scheme()) {
            return Err(format!(
                "`{}` is not an mqtt:// or mqtts:// URL",
                crate::connection::redact(&c.url)
            ));
        }
        let host = u.host_str().unwrap_or_default().to_string();
        let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
        let user = match (&c.username, &c.password) {
            (Some(n), p) => Some((n.clone(), p.clone().unwrap_or_default())),
            (None, _) if !u.username().is_empty() => Some((
                percent_encoding::percent_decode_str(u.username())
                    .decode_utf8_lossy()
                    .into_owned(),
                u.password()
                    .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned())
                    .unwrap_or_default(),
            )),
            _ => None,
        };
        Ok(Endpoint { host, port, tls, user })
    }

    fn qos(n: u8) -> QoS {
        match n {
            0 => QoS::AtMostOnce,
            2 => QoS::ExactlyOnce,
            _ => QoS::AtLeastOnce,
        }
    }

    fn options(e: &Endpoint, client_id: &str, persistent: bool) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, e.host.clone(), e.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_manual_acks(true);
        o.set_request_channel_capacity(CHANNEL);
        o.set_clean_start(!persistent);
        if persistent {
            o.set_session_expiry_interval(Some(SESSION_EXPIRY));
        }
        if let Some((u, p)) = &e.user {
            o.set_credentials(u.clone(), p.clone());
        }
        if e.tls {
            o.set_transport(rumqttc::Transport::tls_with_default_config());
        }
        o
    }

    /// Polls until the broker answers the connect; `Err` with its reason.
    async fn connected(events: &mut EventLoop) -> Result<(), String> {
        loop {
            match events.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("MQTT: {e}")),
            }
        }
    }

    /// A subscriber.
    pub enum MqttConsumer {
        V5(AsyncClient, Box<EventLoop>),
        V311(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    }

    /// Connects with a persistent session and subscribes.
    pub async fn consumer(config: &MqttConfig, conn: &Resolved, client_id: &str) -> Result<MqttConsumer, String> {
        let e = endpoint(conn)?;
        if config.protocol == "3.1.1" {
            return v311::consumer(config, &e, client_id).await;
        }
        let (client, mut events) = AsyncClient::new(options(&e, client_id, true), CHANNEL);
        connected(&mut events).await?;
        for f in config.filters() {
            client
                .subscribe(f.clone(), qos(config.qos))
                .await
                .map_err(|e| format!("subscribing to `{f}`: {e}"))?;
        }
        Ok(MqttConsumer::V5(client, Box::new(events)))
    }

    impl Consumer for MqttConsumer {
        async fn next(&mut self) -> Result<Incoming, String> {
            let (client, events) = match self {
                MqttConsumer::V5(c, e) => (c, e),
                MqttConsumer::V311(c, e) => return v311::next(c, e).await,
            };
            loop {
                let p = match events.poll().await {
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => p,
                    Ok(MqttEvent::Incoming(Packet::SubAck(s))) => {
                        if let Some(code) = s
                            .return_codes
                            .iter()
                            .find(|c| !matches!(c, rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)))
                        {
                            return Err(format!("the broker refused the subscription: {code:?}"));
                        }
                        continue;
                    }
                    Ok(MqttEvent::Incoming(Packet::Disconnect(d))) => {
                        return Err(format!("the broker disconnected: {:?}", d.reason_code));
                    }
                    Ok(_) => continue,
                    Err(e) => return Err(format!("MQTT: {e}")),
                };
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let props = p.properties.clone().unwrap_or_default();
                let mut origin = vec![
                    ("evokemqtttopic", topic.clone()),
                    ("evokemqttqos", (p.qos as u8).to_string()),
                ];
                if p.retain {
                    origin.push(("evokemqttretain", "true".into()));
                }
                if let Some(r) = &props.response_topic {
                    origin.push(("evokemqttresponsetopic", r.clone()));
                }
                let message = Message {
                    body: p.payload.clone(),
                    content_type: props.content_type.clone(),
                    headers: props.user_properties.clone(),
                    key: Some(topic.clone()),
                    subject: Some(topic),
                    origin_id: None,
                    origin,
                    time: None,
                };
                let client = client.clone();
                let ack: crate::queue::Ack = if p.qos == QoS::AtMostOnce {
                    crate::queue::no_ack()
                } else {
                    Box::pin(async move { client.try_ack(&p).map_err(|e| e.to_string()) })
                };
                return Ok(Incoming { message, ack });
            }
        }
    }

    /// A publisher: one publish at a time, PUBACK awaited.
    pub struct Publisher {
        inner: tokio::sync::Mutex<(AsyncClient, EventLoop)>,
    }

    impl Publisher {
        pub async fn connect(conn: &Resolved, client_id: &str) -> Result<Publisher, String> {
            let e = endpoint(conn)?;
            let (client, mut events) = AsyncClient::new(options(&e, client_id, false), CHANNEL);
            connected(&mut events).await?;
            Ok(Publisher {
                inner: tokio::sync::Mutex::new((client, events)),
            })
        }

        /// Publishes `event` (QoS 1, binary mode in user properties) and
        /// waits for the PUBACK.
        pub async fn publish(&self, topic: &str, event: &Event) -> Result<(), String> {
            let (headers, content_type, body) = Binding::Mqtt.encode(event);
            let props = PublishProperties {
                user_properties: headers,
                content_type,
                ..Default::default()
            };
            let mut guard = self.inner.lock().await;
            let (client, events) = &mut *guard;
            client
                .publish_with_properties(topic, QoS::AtLeastOnce, false, body, props)
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match events.poll().await {
                    Ok(MqttEvent::Incoming(Packet::PubAck(a))) => {
                        return match a.reason {
                            rumqttc::v5::mqttbytes::v5::PubAckReason::Success
                            | rumqttc::v5::mqttbytes::v5::PubAckReason::NoMatchingSubscribers => Ok(()),
                            other => Err(format!("the broker refused the message: {other:?}")),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("MQTT: {e}")),
                }
            }
        }
    }

    /// MQTT 3.1.1: the same, without properties.
    mod v311 {
        use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

        use super::{CHANNEL, Endpoint, MqttConsumer};
        use crate::queue::{Incoming, Message};

        pub async fn consumer(
            config: &super::MqttConfig,
            e: &Endpoint,
            client_id: &str,
        ) -> Result<MqttConsumer, String> {
            let mut o = MqttOptions::new(client_id, e.host.clone(), e.port);
            o.set_keep_alive(std::time::Duration::from_secs(30));
            o.set_manual_acks(true);
            o.set_request_channel_capacity(CHANNEL);
            o.set_clean_session(false);
            if let Some((u, p)) = &e.user {
                o.set_credentials(u.clone(), p.clone());
            }
            if e.tls {
                o.set_transport(rumqttc::Transport::tls_with_default_config());
            }
            let (client, mut events) = AsyncClient::new(o, CHANNEL);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => return Err(format!("MQTT: {e}")),
                }
            }
            let q = match config.qos {
                0 => QoS::AtMostOnce,
                2 => QoS::ExactlyOnce,
                _ => QoS::AtLeastOnce,
            };
            for f in config.filters() {
                client
                    .subscribe(f.clone(), q)
                    .await
                    .map_err(|e| format!("subscribing to `{f}`: {e}"))?;
            }
            Ok(MqttConsumer::V311(client, Box::new(events)))
        }

        pub async fn next(client: &AsyncClient, events: &mut EventLoop) -> Result<Incoming, String> {
            loop {
                let p = match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => p,
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        if s.return_codes
                            .iter()
                            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        {
                            return Err("the broker refused the subscription".into());
                        }
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => return Err(format!("MQTT: {e}")),
                };
                let mut origin = vec![
                    ("evokemqtttopic", p.topic.clone()),
                    ("evokemqttqos", (p.qos as u8).to_string()),
                ];
                if p.retain {
                    origin.push(("evokemqttretain", "true".into()));
                }
                let message = Message {
                    body: p.payload.clone(),
                    content_type: None,
                    headers: vec![],
                    key: Some(p.topic.clone()),
                    subject: Some(p.topic.clone()),
                    origin_id: None,
                    origin,
                    time: None,
                };
                let client = client.clone();
                let ack: crate::queue::Ack = if p.qos == QoS::AtMostOnce {
                    crate::queue::no_ack()
                } else {
                    Box::pin(async move { client.try_ack(&p).map_err(|e| e.to_string()) })
                };
                return Ok(Incoming { message, ack });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_and_shared_subscriptions() {
        for ok in ["a/b", "a/+/c", "a/#", "#", "+"] {
            assert!(check_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/c", "a/b+", "a#"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
        let c: MqttConfig = serde_json::from_value(serde_json::json!({
            "url": "mqtt://127.0.0.1:1883", "topics": ["orders/#"], "share_group": "evoke"
        }))
        .unwrap();
        assert!(c.check().is_empty(), "{:?}", c.check());
        assert_eq!(c.filters(), ["$share/evoke/orders/#"]);
        assert_eq!((c.qos, c.protocol.as_str()), (1, "5"));
    }
}
