//! Running the message-queue triggers (`kafka`, `amqp`, `mqtt`, `nats`) on
//! a node: every node with sources consumes, sharing the work the way each
//! broker shares it (a consumer group, competing consumers on a queue, a
//! shared subscription, a queue group or a durable pull consumer). The
//! source logic is in `evoke_connectors::queue` and one module per kind.

use std::sync::Arc;

use evoke_connectors::filter::Filter;
use evoke_connectors::queue::{Binding, DEFAULT_MAX_BODY, Order, Pipeline, Shape};
use evoke_connectors::trigger::SourceConfig;
use evoke_connectors::units::ByteSize;
#[cfg(any(
    feature = "kafka",
    feature = "amqp",
    feature = "mqtt",
    feature = "nats",
    feature = "syslog",
    feature = "file"
))]
use futures::FutureExt;

use super::{NatsSink, Start};
use crate::invoker::Invoker;

/// The task of a queue trigger; `None` for other kinds.
pub fn task(
    invoker: &Arc<Invoker>,
    trigger: &str,
    function: String,
    source: SourceConfig,
    filter: Option<Filter>,
) -> Option<Start> {
    if source.nodes().is_some_and(|n| !n.includes(&invoker.node)) {
        return None;
    }
    let (kind, binding, batch, order, max_body) = match &source {
        SourceConfig::Kafka(c) => ("kafka", Binding::Kafka, c.batch, c.order, c.max_body),
        SourceConfig::Amqp(c) => ("amqp", Binding::Amqp, c.batch, c.order, c.max_body),
        SourceConfig::Mqtt(c) => ("mqtt", Binding::Mqtt, c.batch, c.order, c.max_body),
        SourceConfig::Nats(c) => ("nats", Binding::Nats, c.batch, c.order, c.max_body),
        // The body is one parsed record or line as JSON, bounded by
        // max_message / max_line_bytes, and refused by the queue (then
        // parked) past its limit.
        SourceConfig::Syslog(c) => ("syslog", Binding::None, c.batch, Order::None, Some(ByteSize::mib(8))),
        SourceConfig::File(c) => ("file", Binding::None, c.batch, Order::None, Some(ByteSize::mib(8))),
        SourceConfig::Webhook(_) | SourceConfig::Cron(_) | SourceConfig::S3(_) => return None,
    };
    let connections = invoker.connections.clone();
    let stats = connections.stats(trigger);
    let pipeline = Pipeline {
        shape: Shape {
            trigger: trigger.to_string(),
            function,
            kind,
            binding,
            filter,
            batch,
            order,
            max_body: max_body.unwrap_or(DEFAULT_MAX_BODY),
        },
        sink: Arc::new(NatsSink::new(invoker.clone())),
        stats: stats.clone(),
    };
    let trigger = trigger.to_string();
    let node = invoker.connections.node().to_string();
    let start: Start = match source {
        #[cfg(feature = "kafka")]
        SourceConfig::Kafka(c) => Box::new(move |stop| {
            let connect = move || {
                let (c, connections, trigger, stats) = (c.clone(), connections.clone(), trigger.clone(), stats.clone());
                async move {
                    let conn = connections
                        .for_trigger(c.connection.as_deref(), c.url.as_deref())
                        .await?;
                    evoke_connectors::kafka::consumer(&c, &conn, &trigger, stats).await
                }
            };
            evoke_connectors::queue::run_reconnecting(pipeline, connect, stop).boxed()
        }),
        #[cfg(feature = "amqp")]
        SourceConfig::Amqp(c) => Box::new(move |stop| {
            let tag = format!("evoke-{trigger}-{node}");
            let connect = move || {
                let (c, connections, tag, stats) = (c.clone(), connections.clone(), tag.clone(), stats.clone());
                async move {
                    let conn = connections
                        .for_trigger(c.connection.as_deref(), c.url.as_deref())
                        .await?;
                    evoke_connectors::amqp::consumer(&c, &conn.url, &tag, stats).await
                }
            };
            evoke_connectors::queue::run_reconnecting(pipeline, connect, stop).boxed()
        }),
        #[cfg(feature = "mqtt")]
        SourceConfig::Mqtt(c) => Box::new(move |stop| {
            let id = c.client_id.clone().unwrap_or_else(|| format!("evoke-{trigger}-{node}"));
            let connect = move || {
                let (c, connections, id) = (c.clone(), connections.clone(), id.clone());
                async move {
                    let conn = connections
                        .for_trigger(c.connection.as_deref(), c.url.as_deref())
                        .await?;
                    evoke_connectors::mqtt::consumer(&c, &conn, &id).await
                }
            };
            evoke_connectors::queue::run_reconnecting(pipeline, connect, stop).boxed()
        }),
        #[cfg(feature = "nats")]
        SourceConfig::Nats(c) => Box::new(move |stop| {
            let name = format!("evoke-{trigger}-{node}");
            let connect = move || {
                let (c, connections, trigger, name, stats) = (
                    c.clone(),
                    connections.clone(),
                    trigger.clone(),
                    name.clone(),
                    stats.clone(),
                );
                async move {
                    let conn = connections
                        .for_trigger(c.connection.as_deref(), c.url.as_deref())
                        .await?;
                    let client = evoke_connectors::nats::connect(&conn, &name).await?;
                    evoke_connectors::nats::consumer(&c, client, &trigger, stats, evoke_connectors::queue::WINDOW).await
                }
            };
            evoke_connectors::queue::run_reconnecting(pipeline, connect, stop).boxed()
        }),
        #[cfg(feature = "syslog")]
        SourceConfig::Syslog(c) => Box::new(move |stop| {
            let connect = move || {
                let (c, stats) = (c.clone(), stats.clone());
                async move { evoke_connectors::syslog::consumer(&c, stats).await }
            };
            evoke_connectors::queue::run_reconnecting(pipeline, connect, stop).boxed()
        }),
        #[cfg(feature = "file")]
        SourceConfig::File(c) => {
            let state = Arc::new(super::KvState::new(invoker.bus.state.clone()));
            Box::new(move |stop| {
                let connect = move || {
                    let (c, trigger, node, state, stats) =
                        (c.clone(), trigger.clone(), node.clone(), state.clone(), stats.clone());
                    async move { evoke_connectors::file::consumer(&c, &trigger, &node, state, stats).await }
                };
                evoke_connectors::queue::run_reconnecting(pipeline, connect, stop).boxed()
            })
        }
        #[allow(unreachable_patterns)]
        other => {
            let _ = (pipeline, node, connections, stats);
            tracing::error!(
                trigger,
                kind = other.kind(),
                "this build of evoke has no support for this source kind (its cargo feature is off); not running the trigger"
            );
            return None;
        }
    };
    Some(start)
}
