//! evoke's event plumbing: the envelope, the source contract, and one module
//! per source kind.
//!
//! # Layout
//! - [`event`]: the one envelope every event travels in (CloudEvents 1.0) and
//!   its structured-JSON encoding.
//! - [`source`]: the source contract ([`source::Sink`], [`source::StateStore`])
//!   and the shared "acknowledge upstream only after JetStream stored it" rule.
//! - [`trigger`]: a trigger = source config + filter + function, validated with
//!   field paths; [`trigger::SourceConfig`] is the closed list of source kinds.
//! - [`filter`]: which events reach the function.
//! - [`backoff`]: every retry delay of evoke and its sources, as named policies.
//! - [`webhook`]: webhook authentication and request-to-event mapping.
//! - [`cron`] and [`schedule`]: the cron source and its schedule arithmetic.
//! - [`s3`]: the object storage source (notifications by webhook or SQS,
//!   or polling) and [`store`]: the stores it and object access use.
//! - [`queue`]: what the message-queue sources share (CloudEvents
//!   bindings, batching, ack-after-store in arrival order), and one module
//!   per broker: [`kafka`], [`amqp`], [`mqtt`], [`nats`]; [`connection`]:
//!   the named broker connections they and destinations use.
//! - [`lease`]: one holder at a time, for sources that run on one node only.
//! - [`contract`]: the compliance checks every source's tests run.
//! - [`units`]: sizes and durations as users write them.
//!
//! Nothing here touches wasmtime or the invoker: sources only publish.

pub mod amqp;
pub mod backoff;
pub mod connection;
pub mod contract;
pub mod cron;
pub mod event;
pub mod file;
pub mod filter;
pub mod kafka;
pub mod lease;
pub mod mqtt;
pub mod nats;
pub mod queue;
pub mod s3;
pub mod schedule;
pub mod source;
pub mod store;
pub mod syslog;
pub mod trigger;
pub mod units;
pub mod webhook;

pub use event::{Event, EventError};

#[cfg(feature = "amqp")]
pub use lapin;
#[cfg(feature = "kafka")]
pub use rdkafka;
#[cfg(feature = "mqtt")]
pub use rumqttc;
/// The AWS SDK crates the object storage source uses, for evoke's object
/// access and destinations to use the same versions.
#[cfg(feature = "s3")]
pub use {aws_sdk_s3, aws_sdk_sqs};
