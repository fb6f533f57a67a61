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
use crate::bus;

/// One dead event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub function: String,
    /// Why it was given up on.
    pub reason: String,
    pub dead_lettered_at: DateTime<Utc>,
    pub attempts: Vec<Attempt>,
    /// The event, CloudEvents structured JSON.
    pub event: serde_json::Value,
    /// The stream sequence (filled in when read back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// Summary of a redrive.
#[derive(Debug, Default, Serialize)]
pub struct Redriven {
    pub redriven: Vec<String>,
    pub failed: Vec<String>,
}

impl Invoker {
    /// Publishes a dead letter and waits for JetStream. Only after this may
    /// the original event be acknowledged.
    pub async fn dead_letter(&self, entry: &DeadLetter, redrives: u32) -> Result<(), String> {
        let mut headers = HeaderMap::new();
        // Deduplicates a retried dead-lettering of the same attempt history.
        let msg_id = format!("{}.{}.{}", entry.id, redrives, entry.attempts.len());
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let mut payload = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
        let max = self.bus.max_message();
        if payload.len() > max {
            // Keep the event; trim what makes it too big (the error history).
            let mut slim = entry.clone();
            for a in &mut slim.attempts {
                if let Some(e) = &mut a.error {
                    e.message.truncate(512);
                }
            }
            payload = serde_json::to_vec(&slim).map_err(|e| e.to_string())?;
        }
        let ack = self
            .bus
            .js
            .publish_with_headers(
                bus::dlq_subject(&entry.function, &entry.id),
                headers,
                Bytes::from(payload),
            )
            .await
            .map_err(|e| format!("cannot publish dead letter: {e}"))?;
        ack.await.map_err(|e| format!("dead letter not stored: {e}"))?;
        self.metrics
            .dead_letters
            .get_or_create(&crate::observe::metrics::FnLabel {
                function: entry.function.clone(),
            })
            .inc();
        Ok(())
    }

    async fn dlq_stream(&self) -> Result<stream::Stream, String> {
        self.bus.js.get_stream(bus::STREAM_DLQ).await.map_err(|e| e.to_string())
    }

    /// Lists dead letters of a function, oldest first, at most `limit`.
    pub async fn dlq_list(&self, function: &str, limit: usize) -> Result<Vec<DeadLetter>, String> {
        let filter = bus::dlq_filter(function);
        let total: u64 = self
            .bus
            .subject_counts(bus::STREAM_DLQ, &filter)
            .await?
            .iter()
            .map(|(_, n)| n)
            .sum();
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
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while out.len() < limit {
            let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
            let Ok(Some(Ok(msg))) = next else { break };
            let info = msg.info().map_err(|e| e.to_string())?;
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
    pub async fn dlq_get(&self, function: &str, id: &str) -> Result<Option<DeadLetter>, String> {
        if !super::valid_id(id) {
            return Ok(None);
        }
        let stream = self.dlq_stream().await?;
        match stream
            .get_last_raw_message_by_subject(&bus::dlq_subject(function, id))
            .await
        {
            Ok(raw) => {
                let mut entry: DeadLetter = serde_json::from_slice(&raw.payload).map_err(|e| e.to_string())?;
                entry.seq = Some(raw.sequence);
                Ok(Some(entry))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Puts dead letters back on the queue: the event is re-published (and
    /// JetStream's ack awaited) before the dead letter is deleted, so a crash
    /// in between leaves a duplicate, never a loss.
    pub async fn dlq_redrive(&self, function: &str, ids: Option<Vec<String>>) -> Result<Redriven, String> {
        let entries = match ids {
            Some(ids) => {
                let mut v = Vec::new();
                for id in ids {
                    match self.dlq_get(function, &id).await? {
                        Some(e) => v.push(e),
                        None => return Err(format!("no dead letter `{id}` for function `{function}`")),
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
                Err(e) => {
                    tracing::warn!(invocation = %entry.id, error = %e, "redrive failed");
                    out.failed.push(entry.id)
                }
            }
        }
        Ok(out)
    }

    async fn redrive_one(&self, entry: &DeadLetter, stream: &stream::Stream) -> Result<(), String> {
        let event = Event::from_value(entry.event.clone()).map_err(|e| e.to_string())?;
        let mut record = self.get_record(&entry.id).await?.unwrap_or_else(|| {
            super::records::Record::new(
                &entry.id,
                &entry.function,
                super::records::Mode::Async,
                &event.id,
                Status::Queued,
            )
        });
        record.redrives += 1;
        record.attempts.clear();
        record.status = Status::Queued;
        record.finished_at = None;
        record.updated_at = Utc::now();
        self.put_record_acked(&record).await?;
        let msg_id = format!("{}.r{}", entry.id, record.redrives);
        let ack = self
            .bus
            .enqueue(
                &entry.function,
                &entry.id,
                &msg_id,
                Bytes::from(event.to_json()),
                &[(bus::HDR_REDRIVEN, "1")],
            )
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())?;
        if let Some(seq) = entry.seq {
            stream.delete_message(seq).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Dead letters per function, for metrics.
    pub async fn dlq_depths(&self) -> Result<Vec<(String, u64)>, String> {
        let subjects = self
            .bus
            .subject_counts(bus::STREAM_DLQ, &format!("{}.>", bus::SUBJECT_DLQ))
            .await?;
        let mut depth = std::collections::BTreeMap::<String, u64>::new();
        for (subject, n) in subjects {
            if let Some(f) = subject.split('.').nth(2) {
                *depth.entry(f.to_string()).or_default() += n;
            }
        }
        Ok(depth.into_iter().collect())
    }
}
