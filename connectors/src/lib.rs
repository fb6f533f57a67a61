//! evoke's event plumbing shared by every source and destination.
//!
//! # Layout
//! - [`event`]: the one envelope every event travels in, modelled on
//!   CloudEvents 1.0, with its structured-JSON encoding (the bus format).
//!
//! Sources (webhook, cron, s3, kafka, amqp, nats, mqtt, logs) will each live
//! in one module here and hand [`Event`]s to a sink that returns only after
//! JetStream has acknowledged them.

pub mod event;
pub mod schedule;
pub mod webhook;

pub use event::{Event, EventError};
