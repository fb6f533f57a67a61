//! Settling a queued event once its attempt is over: ack after success (and
//! its `on_success` delivery), NAK with the backoff of its error class for a
//! retry, or dead-letter it (JetStream's ack of the dead letter first, then
//! the record, `on_failure`, and only then the ack of the original).
//!
//! Function errors count against `retries`; system errors (evoke's, NATS's,
//! a destination's) are retried until the event's `max_event_age`. A batch
//! whose output names failed items has those queued again as a smaller
//! batch before it is acked (see [`super::batches`]).

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use chrono::Utc;
use evoke_connectors::Event;

use super::batches::{self, Failed};
use super::dlq::DeadLetter;
use super::records::{AttemptError, Record, Status};
use super::{Invoker, retry};
use crate::executor::{InvokeError, Run};
use crate::registry::DeployedFunction;
use crate::registry::spec::SuccessBody;

/// One delivered message of function `f`, `age` old, being settled.
pub(super) struct Settling<'a> {
    pub invoker: &'a Invoker,
    pub f: &'a DeployedFunction,
    pub msg: &'a Message,
    pub age: Duration,
}

impl Settling<'_> {
    /// Stores the outcome of a run: ack, retry, or dead letter.
    /// `fn_attempt` is the number of this attempt among function errors.
    pub async fn ran(&self, mut record: Record, event: &Event, run: &Run, fn_attempt: u32) {
        let f = self.f;
        match &run.result {
            Ok(output) => {
                if let Ok(Failed::Some(ids)) = batches::failed(event, &output.body)
                    && let Err(e) = Box::pin(self.retry_items(&record, event, &ids)).await
                {
                    record.fail_attempt(AttemptError::system(format!(
                        "the function succeeded, but its batch's failed items were not queued again: {e}"
                    )));
                    Box::pin(self.system_error(record, event, Some(run), e, false)).await;
                    return;
                }
                record.finish(Status::Succeeded, Some(run));
                if let Some(dest) = &f.spec.on_success {
                    let dest_event = match f.spec.success_body {
                        SuccessBody::Invocation => {
                            super::destinations::destination_event(&record, event, Some(output), None)
                        }
                        SuccessBody::Output => super::destinations::output_event(&record, output),
                    };
                    if let Err(e) = Box::pin(self.invoker.deliver(dest, &dest_event)).await {
                        // Not the function's fault (a destination or NATS
                        // away): a system error, so the event runs again
                        // later and delivers its result then.
                        record.fail_attempt(AttemptError::system(format!(
                            "the function succeeded, but its result was not delivered: {e}"
                        )));
                        Box::pin(self.system_error(record, event, Some(run), e.to_string(), false)).await;
                        return;
                    }
                }
                self.invoker.commit(&record, self.msg).await;
            }
            Err(InvokeError::Function { message, .. }) => {
                if fn_attempt <= f.spec.retries {
                    self.invoker.metrics.retry(f.name.as_str(), "function");
                    Box::pin(self.reschedule(&mut record, Some(run), retry::function_delay(fn_attempt))).await;
                } else {
                    let reason = format!("function error on all {} attempts; last: {message}", f.spec.retries + 1);
                    record.finish(Status::Failed, Some(run));
                    Box::pin(self.dead(&mut record, event, reason, true)).await;
                }
            }
            Err(e @ (InvokeError::System(_) | InvokeError::Busy(_) | InvokeError::Capacity(_))) => {
                Box::pin(self.system_error(record, event, Some(run), e.to_string(), true)).await;
            }
        }
    }

    /// Puts a batch's failed items back on the queue as a smaller batch, or
    /// dead-letters them once the function's `retries` rounds are used up.
    async fn retry_items(&self, record: &Record, event: &Event, ids: &[String]) -> Result<(), String> {
        let round = batches::round(event) + 1;
        let parent = event
            .extensions
            .get(batches::EXT_BATCH_PARENT)
            .cloned()
            .unwrap_or_else(|| record.id.clone());
        let smaller = batches::smaller(event, ids, &parent, round);
        let id = super::derived_invocation_id(self.f.name.as_str(), &smaller.id);
        if round > self.f.spec.retries {
            let entry = DeadLetter {
                id,
                function: self.f.name.to_string(),
                reason: format!(
                    "{} item(s) of a batch failed in all {round} round(s) (batchItemFailures): {}",
                    ids.len(),
                    ids.join(", ")
                ),
                dead_lettered_at: Utc::now(),
                attempts: record.attempts.clone(),
                event: smaller.to_raw_json(),
                seq: None,
            };
            self.invoker.dead_letter(&entry, 0).await.map_err(|e| e.to_string())?;
            if let Some(dest) = &self.f.spec.on_failure {
                let dest_event = super::destinations::destination_event(record, &smaller, None, Some(&entry.reason));
                if let Err(e) = self.invoker.deliver(dest, &dest_event).await {
                    tracing::warn!(invocation = %entry.id, error = %e, "on_failure destination failed");
                }
            }
            return Ok(());
        }
        self.invoker.metrics.retry(self.f.name.as_str(), "function");
        self.invoker
            .enqueue(self.f, &smaller, &id)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A system error: retried with the system backoff while the event is
    /// young enough, dead-lettered after.
    async fn system_error(&self, mut record: Record, event: &Event, run: Option<&Run>, error: String, notify: bool) {
        let delay = retry::system_delay(record.system_failures());
        if self.age + delay > self.f.spec.max_event_age {
            let reason = format!("system error until the event's max_event_age ran out; last: {error}");
            self.dead(&mut record, event, reason, notify).await;
        } else {
            self.invoker.metrics.retry(self.f.name.as_str(), "system");
            self.reschedule(&mut record, run, delay).await;
        }
    }

    /// A system error before the function ran, with no readable record:
    /// retry later (backoff by delivery count) or, past the event's max age,
    /// dead-letter it with what is known.
    pub async fn unrecorded(&self, mut record: Record, event: &Event, delivered: i64, reason: String) {
        tracing::warn!(invocation = %record.id, error = %reason, "system error before running; retrying later");
        let delay = retry::system_delay(u32::try_from(delivered).unwrap_or(u32::MAX));
        if self.age + delay > self.f.spec.max_event_age {
            record.refused(&self.invoker.node, reason.clone());
            let reason = format!("system error until the event's max_event_age ran out; last: {reason}");
            self.dead(&mut record, event, reason, true).await;
            return;
        }
        self.invoker.metrics.retry(self.f.name.as_str(), "system");
        if let Err(e) = self.msg.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(invocation = %record.id, error = %e, "cannot schedule retry");
        }
    }

    /// The event is older than the function's `max_event_age`: dead-letter
    /// it without running.
    pub async fn expired(&self, mut record: Record, event: &Event) {
        let reason = format!(
            "the event is {} old, past the function's max_event_age of {}",
            crate::units::format_duration(Duration::from_secs(self.age.as_secs())),
            crate::units::format_duration(self.f.spec.max_event_age)
        );
        self.dead(&mut record, event, reason, false).await;
    }

    /// The message is not an event at all: dead-letter its bytes.
    pub async fn malformed(&self, id: &str, error: String) {
        let raw = String::from_utf8_lossy(&self.msg.payload).into_owned();
        let reason = format!("malformed event: {error}");
        let mut record = Record::new(
            id,
            self.f.name.as_str(),
            super::records::Mode::Async,
            "",
            Status::Queued,
        );
        record.refused(&self.invoker.node, reason.clone());
        let event = serde_json::json!({ "id": id, "source": "evoke", "type": "evoke.malformed", "data": raw });
        // Serializing a `Value` cannot fail.
        let event = serde_json::value::to_raw_value(&event).expect("a Value serializes");
        self.store_dead(&mut record, event, reason, None).await;
    }

    /// Stores the record (waiting for it: the next delivery reads it) and
    /// asks JetStream to redeliver after `delay`.
    async fn reschedule(&self, record: &mut Record, run: Option<&Run>, delay: Duration) {
        record.finish(Status::Queued, run);
        self.invoker.put_record_durable(record).await;
        if let Err(e) = self.msg.ack_with(AckKind::Nak(Some(delay))).await {
            // The ack deadline redelivers it anyway.
            tracing::warn!(invocation = %record.id, error = %e, "cannot schedule retry");
        }
    }

    /// Dead-letters `event`; `notify` delivers `on_failure` too.
    async fn dead(&self, record: &mut Record, event: &Event, reason: String, notify: bool) {
        let request = notify.then_some(event);
        self.store_dead(record, event.to_raw_json(), reason, request).await;
    }

    /// The DLQ publish acked by JetStream, then the record, the
    /// `on_failure` destination, and finally the ack of the original.
    async fn store_dead(
        &self,
        record: &mut Record,
        event: Box<serde_json::value::RawValue>,
        reason: String,
        request: Option<&Event>,
    ) {
        let entry = DeadLetter {
            id: record.id.clone(),
            function: self.f.name.to_string(),
            reason,
            dead_lettered_at: Utc::now(),
            attempts: record.attempts.clone(),
            event,
            seq: None,
        };
        if let Err(e) = self.invoker.dead_letter(&entry, record.redrives).await {
            // Not stored: leave the event on the queue and try again later.
            tracing::error!(invocation = %record.id, error = %e, "cannot dead-letter; will retry");
            let _ = self.msg.ack_with(AckKind::Nak(Some(retry::system_delay(1)))).await;
            return;
        }
        record.finish(Status::DeadLettered, None);
        self.invoker.put_record_durable(record).await;
        if let (Some(dest), Some(request)) = (&self.f.spec.on_failure, request) {
            let dest_event = super::destinations::destination_event(record, request, None, Some(&entry.reason));
            if let Err(e) = self.invoker.deliver(dest, &dest_event).await {
                // The dead letter holds the event; nothing is lost.
                tracing::warn!(invocation = %record.id, error = %e, "on_failure destination failed");
            }
        }
        ack(self.msg, &record.id).await;
    }
}

pub(super) async fn ack(msg: &Message, id: &str) {
    if let Err(e) = msg.ack().await {
        // Redelivered later; its stored record says it is settled, so the
        // worker acks it then without running it again.
        tracing::warn!(invocation = id, error = %e, "ack failed");
    }
}
