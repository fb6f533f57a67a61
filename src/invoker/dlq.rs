//! The dead-letter queue: stream EVOKE_DLQ, one message per dead event on
//! subject `evoke.dlq.<function>.<invocation id>`, holding the event and
//! every attempt's error. Redrive puts the event back on the queue.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::{HeaderMap, jetstream::stream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use evoke_connectors::Event;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::Invoker;
use super::records::{Attempt, Status};
use crate::bus::{self, NatsError, OrNats};

/// One dead event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub function: String,
    /// Why it was given up on.
    pub reason: String,
    pub dead_lettered_at: DateTime<Utc>,
    pub attempts: Vec<Attempt>,
    /// The event, CloudEvents structured JSON as it was queued (JSON data
    /// byte for byte, so a redrive runs on what first came).
    pub event: Box<serde_json::value::RawValue>,
    /// The stream sequence (filled in when read back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// Summary of a redrive.
#[derive(Debug, Default, Serialize)]
pub struct Redriven {
    pub redriven: Vec<String>,
    pub failed: Vec<RedriveFailure>,
}

/// A dead letter that was not redriven, and why (it is still in the DLQ).
#[derive(Debug, Serialize)]
pub struct RedriveFailure {
    pub id: String,
    pub reason: String,
}

/// Why the DLQ could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("no dead letter `{id}` for function `{function}`")]
    NotFound { function: String, id: String },
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// A dead letter that cannot be one message, even slimmed.
    #[error("{0}")]
    TooLarge(String),
}

/// Error messages in a dead letter that had to be slimmed to fit.
const SLIM_ERROR_BYTES: usize = 512;
/// Attempts kept in a dead letter that had to be slimmed to fit.
const SLIM_ATTEMPTS: usize = 5;

impl DeadLetter {
    /// The dead letter as one message no larger than `max` bytes: whole if
    /// it fits, else with shorter errors, fewer attempts, and finally no
    /// attempts (the invocation record keeps the whole history). The event
    /// itself is always kept: the queue only takes events that leave room.
    pub fn encode(&self, max: usize) -> Result<Vec<u8>, DlqError> {
        // Serializing strings and JSON values cannot fail.
        let encode = |d: &DeadLetter| Ok::<_, DlqError>(serde_json::to_vec(d).unwrap_or_default());
        let payload = encode(self)?;
        if payload.len() <= max {
            return Ok(payload);
        }
        let mut slim = self.clone();
        slim.reason = crate::executor::cap_text(slim.reason, SLIM_ERROR_BYTES * 2);
        let skip = slim.attempts.len().saturating_sub(SLIM_ATTEMPTS);
        slim.attempts.drain(..skip);
        for a in &mut slim.attempts {
            if let Some(e) = &mut a.error {
                e.message = crate::executor::cap_text(std::mem::take(&mut e.message), SLIM_ERROR_BYTES);
            }
        }
        let payload = encode(&slim)?;
        if payload.len() <= max {
            return Ok(payload);
        }
        slim.attempts.clear();
        let payload = encode(&slim)?;
        if payload.len() <= max {
            return Ok(payload);
        }
        Err(DlqError::TooLarge(format!(
            "the dead letter is {} bytes even without its attempts; NATS takes {max}",
            payload.len()
        )))
    }
}

impl Invoker {
    /// Publishes a dead letter and waits for JetStream. Only after this may
    /// the original event be acknowledged.
    pub async fn dead_letter(&self, entry: &DeadLetter, redrives: u32) -> Result<(), DlqError> {
        let mut headers = HeaderMap::new();
        // Deduplicates a retried dead-lettering of the same attempt history.
        let msg_id = format!("{}.{}.{}", entry.id, redrives, entry.attempts.len());
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let payload = entry.encode(self.bus.max_record())?;
        let ack = self
            .bus
            .js
            .publish_with_headers(
                bus::dlq_subject(&entry.function, &entry.id),
                headers,
                Bytes::from(payload),
            )
            .await
            .nats("publishing a dead letter")?;
        ack.await.nats("storing a dead letter")?;
        self.metrics
            .dead_letters
            .get_or_create(&crate::observe::metrics::FnLabel {
                function: entry.function.clone(),
            })
            .inc();
        Ok(())
    }

    /// Parks an event a source could not queue (its function is missing, it
    /// is too large) in the DLQ with `reason`, with a record saying so, and
    /// counts it (`evoke_events_parked_total`). An event too large for even
    /// a dead letter keeps its attributes and loses its data, said in the
    /// reason.
    pub async fn park(&self, function: &str, event: &Event, id: &str, reason: &str) -> Result<(), DlqError> {
        let now = Utc::now();
        let mut record = super::records::Record::new(
            id,
            function,
            super::records::Mode::Async,
            &event.id,
            Status::DeadLettered,
        );
        record.push_attempt(Attempt {
            number: 1,
            started_at: now,
            duration_ms: Some(0.0),
            start: None,
            cold_start: None,
            error: Some(super::records::AttemptError::system(format!(
                "the queue refused the event: {reason}"
            ))),
            node: self.node.clone(),
        });
        record.finished_at = Some(now);
        let mut entry = DeadLetter {
            id: id.to_string(),
            function: function.to_string(),
            reason: format!("the queue refused the event: {reason}"),
            dead_lettered_at: now,
            attempts: record.attempts.clone(),
            event: event.to_raw_json(),
            seq: None,
        };
        if entry.encode(self.bus.max_record()).is_err() {
            let mut slim = event.clone();
            let size = slim.data.len();
            slim.data = Bytes::new();
            slim.datacontenttype = None;
            entry.event = slim.to_raw_json();
            entry.reason = format!("{}; its {size} bytes of data were too large to keep", entry.reason);
        }
        self.dead_letter(&entry, 0).await?;
        self.put_record_durable(&record).await;
        self.metrics
            .parked
            .get_or_create(&crate::observe::metrics::FnLabel {
                function: function.to_string(),
            })
            .inc();
        Ok(())
    }

    async fn dlq_stream(&self) -> Result<stream::Stream, NatsError> {
        self.bus.js.get_stream(bus::STREAM_DLQ).await.nats("opening the DLQ")
    }

    /// How many dead letters `function` has.
    pub async fn dlq_count(&self, function: &str) -> Result<u64, NatsError> {
        let counts = self
            .bus
            .subject_counts(bus::STREAM_DLQ, &bus::dlq_filter(function))
            .await?;
        Ok(counts.iter().map(|(_, n)| n).sum())
    }

    /// Lists dead letters of a function, oldest first, at most `limit`.
    pub async fn dlq_list(&self, function: &str, limit: usize) -> Result<Vec<DeadLetter>, NatsError> {
        let filter = bus::dlq_filter(function);
        let total = self.dlq_count(function).await?;
        if total == 0 {
            return Ok(Vec::new());
        }
        let stream = self.dlq_stream().await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .nats("reading the DLQ")?;
        let mut messages = consumer.messages().await.nats("reading the DLQ")?;
        let mut out = Vec::new();
        while out.len() < limit {
            let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
            let Ok(Some(Ok(msg))) = next else { break };
            let info = msg.info().nats("reading the DLQ")?;
            let pending = info.pending;
            let seq = info.stream_sequence;
            if let Ok(mut entry) = serde_json::from_slice::<DeadLetter>(&msg.payload) {
                entry.seq = Some(seq);
                out.push(entry);
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Reads one dead letter.
    pub async fn dlq_get(&self, function: &str, id: &str) -> Result<Option<DeadLetter>, NatsError> {
        if !super::valid_id(id) {
            return Ok(None);
        }
        let stream = self.dlq_stream().await?;
        match stream
            .get_last_raw_message_by_subject(&bus::dlq_subject(function, id))
            .await
        {
            Ok(raw) => {
                let mut entry: DeadLetter = serde_json::from_slice(&raw.payload).nats("reading a dead letter")?;
                entry.seq = Some(raw.sequence);
                Ok(Some(entry))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e).nats("reading a dead letter"),
        }
    }

    /// Puts dead letters back on the queue. Each event is re-published (and
    /// JetStream's ack awaited) before its dead letter is deleted, so a crash
    /// in between leaves a duplicate, never a loss; a republish JetStream
    /// refuses as a duplicate leaves the dead letter in place.
    pub async fn dlq_redrive(&self, function: &str, ids: Option<Vec<String>>) -> Result<Redriven, DlqError> {
        let entries = match ids {
            Some(ids) => {
                let mut v = Vec::new();
                for id in ids {
                    match self.dlq_get(function, &id).await? {
                        Some(e) => v.push(e),
                        None => {
                            return Err(DlqError::NotFound {
                                function: function.to_string(),
                                id,
                            });
                        }
                    }
                }
                v
            }
            None => self.dlq_list(function, usize::MAX).await?,
        };
        let stream = self.dlq_stream().await?;
        let mut out = Redriven::default();
        for entry in entries {
            match self.redrive_one(&entry, &stream).await {
                Ok(()) => out.redriven.push(entry.id),
                Err(reason) => {
                    tracing::warn!(invocation = %entry.id, error = %reason, "redrive failed");
                    out.failed.push(RedriveFailure { id: entry.id, reason })
                }
            }
        }
        Ok(out)
    }

    async fn redrive_one(&self, entry: &DeadLetter, stream: &stream::Stream) -> Result<(), String> {
        let event =
            Event::from_json(entry.event.get().as_bytes()).map_err(|e| format!("the dead event is unreadable: {e}"))?;
        let seq = entry.seq.ok_or("the dead letter has no stream sequence")?;
        let f = self
            .registry
            .get(&entry.function)
            .await
            .map_err(|e| format!("cannot read the function: {e}"))?
            .ok_or_else(|| format!("function `{}` is not deployed; deploy it, then redrive", entry.function))?;
        let before = self
            .get_record(&entry.id)
            .await
            .map_err(|e| format!("cannot read the invocation record: {e}"))?;
        let mut record = before.clone().unwrap_or_else(|| {
            super::records::Record::new(
                &entry.id,
                &entry.function,
                super::records::Mode::Async,
                &event.id,
                Status::Queued,
            )
        });
        record.redrive(record.redrives + 1);
        // Written before the event is queued, so a worker never reads the
        // old history; the redrive number in the header resets it anyway.
        self.put_record_acked(&record).await.map_err(|e| e.to_string())?;
        // One dead letter (its stream sequence) is redriven at most once per
        // JetStream duplicate window.
        let msg_id = format!("{}.r.{seq}", entry.id);
        let redrive = record.redrives.to_string();
        let queued = self
            .queue_event(
                &f,
                &entry.id,
                &msg_id,
                Bytes::from(event.to_json()),
                &[(bus::HDR_REDRIVEN, redrive.as_str())],
            )
            .await
            .map_err(|e| format!("cannot queue the event: {e}"));
        let restore = async || {
            if let Some(before) = &before
                && let Err(e) = self.put_record_acked(before).await
            {
                tracing::warn!(invocation = %entry.id, error = %e, "cannot restore the invocation record");
            }
        };
        match queued {
            Err(e) => {
                restore().await;
                return Err(e);
            }
            Ok(ack) if ack.duplicate => {
                restore().await;
                return Err(format!(
                    "JetStream already holds a redrive of this dead letter (within its {}s duplicate window); the dead letter is kept, try again later",
                    bus::DUPLICATE_WINDOW.as_secs()
                ));
            }
            Ok(_) => {}
        }
        stream.delete_message(seq).await.map_err(|e| {
            format!("the event is queued again, but its dead letter could not be deleted ({e}); it may run twice")
        })?;
        Ok(())
    }
}
