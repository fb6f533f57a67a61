//! `kind = "amqp"`: consumes a RabbitMQ (AMQP 0-9-1) queue, and publishes
//! to an exchange as a destination (`amqp://CONN/exchange/routing-key`).
//!
//! A delivery is acknowledged only after its event is stored on the
//! function's queue; deliveries not acknowledged when the connection drops
//! or the trigger stops go back to the queue (RabbitMQ requeues them).
//! CloudEvents in binary mode ride in `cloudEvents:*` (or `cloudEvents_*`)
//! application properties; other properties and headers (`x-death`
//! included) are kept in the event. The dedupe id is the message id when
//! the publisher set one (`message_id`), so a redelivery is the same
//! invocation; without one each delivery is its own event.

use serde::{Deserialize, Serialize};

use crate::queue::{BatchConfig, Order};
use crate::trigger::Problem;
use crate::units::ByteSize;

/// `kind = "amqp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// A `[connections.NAME]`; or give `url` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub queue: String,
    /// Declare the queue (durable), and bind it when `exchange` is given
    /// (declaring the exchange, topic and durable, unless it exists).
    #[serde(default)]
    pub declare: bool,
    /// `classic` (default) or `quorum`, when declaring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing_keys: Vec<String>,
    /// Deliveries RabbitMQ sends before acknowledgements (default 64).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchConfig>,
    /// `key`: events with the same key run one at a time, in order.
    #[serde(default, skip_serializing_if = "Order::is_none")]
    pub order: Order,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
}

fn default_prefetch() -> u16 {
    64
}

impl AmqpConfig {
    pub fn check(&self) -> Vec<Problem> {
        let mut p = crate::queue::check_common(self.batch.as_ref(), self.max_body);
        p.extend(check_connection(&self.connection, &self.url, &["amqp", "amqps"]));
        if self.queue.is_empty() || self.queue.len() > 255 {
            p.push(("queue".into(), "must be a queue name of 1-255 bytes".into()));
        }
        if let Some(t) = &self.queue_type
            && !["classic", "quorum"].contains(&t.as_str())
        {
            p.push(("queue_type".into(), format!("`{t}` is not `classic` or `quorum`")));
        }
        if (self.queue_type.is_some() || self.exchange.is_some()) && !self.declare {
            p.push((
                "declare".into(),
                "must be true for `queue_type` or `exchange` (they are used when declaring)".into(),
            ));
        }
        if !self.routing_keys.is_empty() && self.exchange.is_none() {
            p.push(("routing_keys".into(), "need an `exchange` to bind to".into()));
        }
        if self.prefetch == 0 {
            p.push(("prefetch".into(), "must be at least 1".into()));
        }
        p
    }
}

/// Checks the `connection` / `url` pair every queue trigger has: exactly
/// one, a connection name or a URL of one of `schemes`.
pub(crate) fn check_connection(connection: &Option<String>, url: &Option<String>, schemes: &[&str]) -> Vec<Problem> {
    let mut p = Vec::new();
    match (connection, url) {
        (Some(_), Some(_)) => p.push(("url".into(), "give `connection` or `url`, not both".into())),
        (None, None) => p.push((
            "connection".into(),
            "is required: name a [connections.NAME], or give `url`".into(),
        )),
        (Some(c), None) if !crate::trigger::valid_name(c) => {
            p.push(("connection".into(), format!("`{c}` is not a connection name")))
        }
        (None, Some(u)) => match url::Url::parse(u) {
            Ok(parsed) if schemes.contains(&parsed.scheme()) => {}
            _ => p.push((
                "url".into(),
                format!(
                    "`{}` is not a URL with scheme {}",
                    crate::connection::redact(u),
                    schemes.join(" or ")
                ),
            )),
        },
        _ => {}
    }
    p
}

#[cfg(feature = "amqp")]
pub use client::*;

#[cfg(feature = "amqp")]
mod client {
    use std::sync::Arc;

    use futures::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, ShortString};

    use crate::queue::Order;
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
    use serde_json::Value;

    use super::AmqpConfig;
    use crate::event::Event;
    use crate::queue::{Binding, Consumer, Incoming, Message, Stats};

    /// Connects to an AMQP URL.
    pub async fn connect(url: &str) -> Result<Connection, String> {
        Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", crate::connection::redact(url)))
    }

    /// A consumer of one queue.
    pub struct AmqpConsumer {
        // Kept open while consuming; closed on drop, after its channels.
        connection: Option<Connection>,
        channels: Vec<Channel>,
        queue: String,
        consumer: lapin::Consumer,
        depth_task: tokio::task::JoinHandle<()>,
    }

    impl Drop for AmqpConsumer {
        fn drop(&mut self) {
            self.depth_task.abort();
            close(
                self.connection.take(),
                std::mem::take(&mut self.channels),
                "evoke: trigger stopped",
            );
        }
    }

    /// Closes a connection in the background (lapin does not on drop);
    /// deliveries it holds unacknowledged go back to their queue. Its
    /// `channels` are closed first: a channel left to lapin closes itself
    /// when its last handle drops, and when that races the connection's
    /// close, lapin logs a "Connection error" for a normal stop.
    fn close(connection: Option<Connection>, channels: Vec<Channel>, why: &'static str) {
        if let (Some(c), Ok(rt)) = (connection, tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                for channel in channels {
                    let _ = channel.close(200, why.into()).await;
                }
                let _ = c.close(200, why.into()).await;
            });
        }
    }

    /// Every 5 s: the messages ready in the queue, as the trigger's lag.
    async fn track_depth(channel: Channel, queue: String, stats: Arc<Stats>) {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        loop {
            match channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(q) => stats.set_lag(u64::from(q.message_count())),
                Err(_) => return,
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    }

    /// Connects, declares and binds as configured, and starts consuming.
    pub async fn consumer(
        config: &AmqpConfig,
        url: &str,
        tag: &str,
        stats: Arc<Stats>,
    ) -> Result<AmqpConsumer, String> {
        let connection = connect(url).await?;
        let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        if config.declare {
            let mut args = FieldTable::default();
            if let Some(t) = &config.queue_type {
                args.insert("x-queue-type".into(), AMQPValue::LongString(t.as_str().into()));
            }
            if config.order == Order::Key {
                // One consumer at a time across nodes (the others stand
                // by): a key's messages are never split between nodes.
                args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            }
            channel
                .queue_declare(
                    config.queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await
                .map_err(|e| format!("declaring queue `{}`: {e}", config.queue))?;
            if let Some(exchange) = &config.exchange {
                declare_exchange(&connection, exchange).await?;
                let keys = if config.routing_keys.is_empty() {
                    vec![String::new()]
                } else {
                    config.routing_keys.clone()
                };
                for key in keys {
                    channel
                        .queue_bind(
                            config.queue.as_str().into(),
                            exchange.as_str().into(),
                            key.as_str().into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map_err(|e| format!("binding queue `{}` to exchange `{exchange}`: {e}", config.queue))?;
                }
            }
        }
        let consumer = channel
            .basic_consume(
                config.queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consuming queue `{}`: {e}", config.queue))?;
        let depth_channel = connection.create_channel().await.map_err(|e| e.to_string())?;
        let depth_task = tokio::spawn(track_depth(depth_channel.clone(), config.queue.clone(), stats));
        Ok(AmqpConsumer {
            connection: Some(connection),
            channels: vec![channel, depth_channel],
            queue: config.queue.clone(),
            consumer,
            depth_task,
        })
    }

    /// Declares `exchange` (topic, durable) unless it exists; a passive
    /// check on a channel of its own, since a failed one closes its channel.
    async fn declare_exchange(connection: &Connection, exchange: &str) -> Result<(), String> {
        let probe = connection.create_channel().await.map_err(|e| e.to_string())?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let exists = probe
            .exchange_declare(exchange.into(), ExchangeKind::Topic, passive, FieldTable::default())
            .await
            .is_ok();
        if exists {
            let _ = probe.close(200, "ok".into()).await;
            return Ok(());
        }
        let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(exchange.into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .map_err(|e| format!("declaring exchange `{exchange}`: {e}"))?;
        let _ = channel.close(200, "ok".into()).await;
        Ok(())
    }

    impl Consumer for AmqpConsumer {
        async fn next(&mut self) -> Result<Incoming, String> {
            let delivery = match self.consumer.next().await {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the broker cancelled the consumer".into()),
            };
            let message = message(&self.queue, &delivery);
            let acker = delivery.acker;
            Ok(Incoming {
                message,
                ack: Box::pin(async move {
                    acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }),
            })
        }
    }

    /// A delivery as a [`Message`].
    pub fn message(queue: &str, d: &lapin::message::Delivery) -> Message {
        let p = &d.properties;
        let mut headers = Vec::new();
        if let Some(table) = p.headers() {
            for (k, v) in table.inner() {
                let text = match value_json(v) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                headers.push((k.to_string(), text));
            }
        }
        let mut origin = vec![
            ("evokeamqpqueue", queue.to_string()),
            ("evokeamqpexchange", d.exchange.to_string()),
            ("evokeamqproutingkey", d.routing_key.to_string()),
        ];
        if d.redelivered {
            origin.push(("evokeamqpredelivered", "true".into()));
        }
        let props: [(&'static str, Option<&ShortString>); 7] = [
            ("evokeamqpmessageid", p.message_id().as_ref()),
            ("evokeamqpcorrelationid", p.correlation_id().as_ref()),
            ("evokeamqpreplyto", p.reply_to().as_ref()),
            ("evokeamqpexpiration", p.expiration().as_ref()),
            ("evokeamqptype", p.kind().as_ref()),
            ("evokeamqpappid", p.app_id().as_ref()),
            ("evokeamqpuserid", p.user_id().as_ref()),
        ];
        for (name, v) in props {
            if let Some(v) = v {
                origin.push((name, v.to_string()));
            }
        }
        if let Some(pr) = p.priority() {
            origin.push(("evokeamqppriority", pr.to_string()));
        }
        let time = p
            .timestamp()
            .and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0));
        let key = (!d.routing_key.as_str().is_empty()).then(|| d.routing_key.to_string());
        Message {
            body: bytes::Bytes::from(d.data.clone()),
            content_type: p.content_type().as_ref().map(|c| c.to_string()),
            headers,
            key: key.clone(),
            subject: key,
            origin_id: p.message_id().as_ref().map(|m| format!("{queue}.{m}")),
            origin,
            time,
        }
    }

    /// An AMQP value as JSON (tables and arrays such as `x-death` stay structured).
    fn value_json(v: &AMQPValue) -> Value {
        match v {
            AMQPValue::Boolean(b) => Value::Bool(*b),
            AMQPValue::ShortShortInt(n) => (*n).into(),
            AMQPValue::ShortShortUInt(n) => (*n).into(),
            AMQPValue::ShortInt(n) => (*n).into(),
            AMQPValue::ShortUInt(n) => (*n).into(),
            AMQPValue::LongInt(n) => (*n).into(),
            AMQPValue::LongUInt(n) => (*n).into(),
            AMQPValue::LongLongInt(n) => (*n).into(),
            AMQPValue::Float(f) => serde_json::json!(f),
            AMQPValue::Double(f) => serde_json::json!(f),
            AMQPValue::DecimalValue(d) => serde_json::json!({ "scale": d.scale, "value": d.value }),
            AMQPValue::ShortString(s) => Value::String(s.to_string()),
            AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
            AMQPValue::Timestamp(t) => (*t).into(),
            AMQPValue::FieldTable(t) => {
                Value::Object(t.inner().iter().map(|(k, v)| (k.to_string(), value_json(v))).collect())
            }
            AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into_owned()),
            AMQPValue::Void => Value::Null,
        }
    }

    /// A publisher with confirms on one channel.
    pub struct Publisher {
        connection: Option<Connection>,
        channel: Channel,
    }

    impl Drop for Publisher {
        fn drop(&mut self) {
            close(
                self.connection.take(),
                vec![self.channel.clone()],
                "evoke: publisher replaced",
            );
        }
    }

    impl Publisher {
        pub async fn connect(url: &str) -> Result<Publisher, String> {
            let connection = connect(url).await?;
            let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(Publisher {
                connection: Some(connection),
                channel,
            })
        }

        pub fn usable(&self) -> bool {
            self.channel.status().connected()
        }

        /// Publishes `event` in binary mode (persistent, mandatory) and
        /// waits for the broker's confirm; an unroutable message is an error.
        pub async fn publish(&self, exchange: &str, routing_key: &str, event: &Event) -> Result<(), String> {
            let (headers, content_type, body) = Binding::Amqp.encode(event);
            let mut table = FieldTable::default();
            for (k, v) in headers {
                table.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
            }
            let mut props = BasicProperties::default()
                .with_message_id(event.id.as_str().into())
                .with_delivery_mode(2)
                .with_headers(table);
            if let Some(ct) = content_type {
                props = props.with_content_type(ct.as_str().into());
            }
            if let Some(t) = event.time {
                props = props.with_timestamp(t.timestamp().max(0) as u64);
            }
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props,
                )
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            if confirm.is_nack() {
                return Err(format!("the broker refused the message (exchange `{exchange}`)"));
            }
            if let Some(returned) = confirm.take_message() {
                return Err(format!(
                    "unroutable: exchange `{exchange}` has no queue bound for routing key `{routing_key}` ({} {})",
                    returned.reply_code, returned.reply_text
                ));
            }
            Ok(())
        }
    }

    /// Shared so destinations reuse one publisher per connection.
    pub type SharedPublisher = Arc<Publisher>;
}
