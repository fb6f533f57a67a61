//! `via = "sqs"`: long-polls the SQS queue a bucket notifies (directly, or
//! through SNS) and turns its messages into events.
//!
//! A message is deleted only once every record it carries is stored on the
//! function's queue; while a batch is being published its messages'
//! visibility is extended, so no other reader takes them meanwhile. A
//! message evoke cannot read is moved aside into the dead-letter queue with
//! its raw body and the reason, then deleted: never dropped silently, never
//! received forever.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::Client;
use bytes::Bytes;
use chrono::Utc;
use tokio::sync::watch;

use super::notification::{self, Notification};
use super::{Chains, S3Trigger, Summary, last_event_key, unreadable_event};
use crate::source::{Sink, StateStore, park_until_stored};
use crate::store::describe;

/// SQS's longest long poll.
const WAIT: i32 = 20;
/// SQS's largest batch.
const BATCH: i32 = 10;

/// What one reader needs.
pub struct Reader<S, St, C> {
    pub trigger: S3Trigger,
    pub client: Client,
    pub sink: Arc<S>,
    pub state: Arc<St>,
    pub chains: Arc<C>,
}

impl<S: Sink, St: StateStore, C: Chains + 'static> Reader<S, St, C> {
    fn queue_url(&self) -> &str {
        self.trigger.config.queue_url.as_deref().unwrap_or_default()
    }

    fn visibility(&self) -> Duration {
        self.trigger
            .config
            .visibility_timeout
            .unwrap_or(super::DEFAULT_VISIBILITY)
    }

    /// Reads the queue until `stop` becomes true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut delays = crate::backoff::RECONNECT.delays();
        tracing::info!(
            trigger = self.trigger.name,
            queue = self.queue_url(),
            "reading S3 notifications from SQS"
        );
        while !*stop.borrow() {
            let receive = self
                .client
                .receive_message()
                .queue_url(self.queue_url())
                .max_number_of_messages(BATCH)
                .wait_time_seconds(WAIT)
                .visibility_timeout(self.visibility().as_secs() as i32)
                .send();
            let received = tokio::select! {
                r = receive => r,
                _ = stop.changed() => return,
            };
            let messages = match received {
                Ok(out) => {
                    delays = crate::backoff::RECONNECT.delays();
                    out.messages.unwrap_or_default()
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(crate::backoff::RECONNECT.max);
                    tracing::warn!(trigger = self.trigger.name, error = %describe(&e), "cannot receive from SQS; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            if !messages.is_empty() && !self.handle(messages, &mut stop).await {
                return;
            }
        }
    }

    /// Handles one batch; false when stopped (what was not deleted will be
    /// received again, by this node or another).
    async fn handle(&self, messages: Vec<aws_sdk_sqs::types::Message>, stop: &mut watch::Receiver<bool>) -> bool {
        let pending: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(
            messages.iter().filter_map(|m| m.receipt_handle.clone()).collect(),
        ));
        let heartbeat = tokio::spawn(extend_visibility(
            self.client.clone(),
            self.queue_url().to_string(),
            self.visibility(),
            pending.clone(),
        ));
        let mut all = true;
        for m in messages {
            let Some(receipt) = m.receipt_handle.clone() else {
                continue;
            };
            let body = m.body.unwrap_or_default();
            let id = m.message_id.unwrap_or_default();
            let stopped = async {
                let _ = stop.wait_for(|s| *s).await;
            };
            let Some(summary) = self.message(&id, body, stopped).await else {
                all = false;
                break;
            };
            tracing::debug!(
                trigger = self.trigger.name,
                message = id,
                ?summary,
                "SQS message handled"
            );
            self.delete(&receipt).await;
            pending.lock().map(|mut p| p.remove(&receipt)).ok();
            self.remember(&id, &summary).await;
        }
        heartbeat.abort();
        all
    }

    /// Publishes one message's records (or parks it when unreadable);
    /// `None` when stopped first.
    async fn message(&self, id: &str, body: String, stop: impl Future<Output = ()>) -> Option<Summary> {
        match notification::parse(body.as_bytes()) {
            Ok(Notification::Test { bucket }) => {
                tracing::info!(
                    trigger = self.trigger.name,
                    ?bucket,
                    "s3:TestEvent received and skipped"
                );
                Some(Summary {
                    test: true,
                    ..Summary::default()
                })
            }
            Ok(Notification::Records(records)) => {
                self.trigger.deliver(&*self.sink, &*self.chains, &records, stop).await
            }
            Err(e) => {
                let reason = format!("UnreadableNotification: SQS message {id}: {e}");
                tracing::error!(trigger = self.trigger.name, %reason, "moving the message to the dead-letter queue");
                let event = unreadable_event(&self.trigger.name, &format!("sqs:{id}"), Bytes::from(body));
                let dedupe = format!("s3.unreadable.{}.{id}", self.trigger.name);
                park_until_stored(&*self.sink, &self.trigger.function, &event, &dedupe, &reason, stop).await?;
                Some(Summary {
                    parked: 1,
                    ..Summary::default()
                })
            }
        }
    }

    async fn delete(&self, receipt: &str) {
        let mut delays = crate::backoff::PUBLISH.delays();
        for _ in 0..5 {
            match self
                .client
                .delete_message()
                .queue_url(self.queue_url())
                .receipt_handle(receipt)
                .send()
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    let delay = delays.next().unwrap_or(crate::backoff::PUBLISH.max);
                    tracing::warn!(trigger = self.trigger.name, error = %describe(&e), "cannot delete an SQS message; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        // Its records are stored: when it comes back, dedupe ids make the
        // second delivery a no-op.
        tracing::warn!(
            trigger = self.trigger.name,
            "SQS message not deleted; it will be received again and deduplicated"
        );
    }

    async fn remember(&self, message: &str, summary: &Summary) {
        if summary.queued + summary.duplicates + summary.parked == 0 {
            return;
        }
        let value = serde_json::json!({ "time": Utc::now(), "sqs_message": message, "summary": summary });
        let _ = self
            .state
            .save(&last_event_key(&self.trigger.name), &value.to_string())
            .await;
    }
}

/// Extends the visibility of every message still pending, every half
/// timeout, until aborted.
async fn extend_visibility(
    client: Client,
    queue_url: String,
    visibility: Duration,
    pending: Arc<Mutex<HashSet<String>>>,
) {
    loop {
        tokio::time::sleep(visibility / 2).await;
        let receipts: Vec<String> = pending.lock().map(|p| p.iter().cloned().collect()).unwrap_or_default();
        for receipt in receipts {
            if let Err(e) = client
                .change_message_visibility()
                .queue_url(&queue_url)
                .receipt_handle(&receipt)
                .visibility_timeout(visibility.as_secs() as i32)
                .send()
                .await
            {
                tracing::warn!(error = %describe(&e), "cannot extend an SQS message's visibility");
            }
        }
    }
}
