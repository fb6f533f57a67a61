//! The source contract: what every event source hands its events to, and the
//! one shared rule about acknowledging upstream.
//!
//! A source turns native events (a cron tick, an HTTP request, a Kafka record)
//! into [`Event`]s and calls [`Sink::publish`], which returns only once
//! JetStream has stored the event. Only then may the source acknowledge
//! upstream (commit an offset, answer 202, advance a cursor).
//! [`publish_until_stored`] is that rule in code, with backoff while NATS is
//! away: every source uses it rather than its own loop.

use std::future::Future;

use crate::event::Event;

/// Why a publish did not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SinkError {
    /// JetStream is unreachable or did not acknowledge: try again later.
    #[error("JetStream did not store the event: {0}")]
    Unavailable(String),
    /// The event can never be published (too large, unknown function).
    #[error("{0}")]
    Rejected(String),
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Stored,
    /// JetStream already had an event with this dedupe id (another node, or
    /// a redelivery, published it first).
    Duplicate,
}

/// Where sources put events: the target function's queue.
pub trait Sink: Send + Sync + 'static {
    /// Stores `event` for `function`, deduplicated by `dedupe_id`; resolves
    /// only after JetStream acknowledged it.
    fn publish(
        &self,
        function: &str,
        event: &Event,
        dedupe_id: &str,
    ) -> impl Future<Output = Result<Published, SinkError>> + Send;

    /// Parks an event the queue refused for good ([`SinkError::Rejected`]:
    /// its function is missing, it is too large) in the dead-letter queue
    /// with `reason`, and counts it; resolves once that is stored. Only
    /// [`SinkError::Unavailable`] comes back: parking never refuses.
    fn park(
        &self,
        function: &str,
        event: &Event,
        dedupe_id: &str,
        reason: &str,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Resolves once the invocation stored for `dedupe_id` is finished:
    /// succeeded, or dead-lettered after its retries (`order = "key"`
    /// waits for it before the next event of the key). [`SinkError::Rejected`]
    /// when it can never finish (its function is gone); `Unavailable` when
    /// that cannot be told now.
    fn settled(&self, function: &str, dedupe_id: &str) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Where an event ended up once a source may acknowledge upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// On the function's queue (or already there).
    Queued(Published),
    /// Refused by the queue for good, and parked in the dead-letter queue
    /// with this reason.
    Parked(String),
}

/// The one rule for every source: returns only once the event is stored on
/// the queue or, refused for good, parked in the dead-letter queue; retries
/// (with backoff) while JetStream is away. `None` when `stop` came first:
/// the caller must not acknowledge upstream. Nothing a source acks is
/// ever silently dropped.
pub async fn deliver<S: Sink>(
    sink: &S,
    function: &str,
    event: &Event,
    dedupe_id: &str,
    stop: impl Future<Output = ()>,
) -> Option<Delivered> {
    tokio::pin!(stop);
    let reason = match publish_until_stored(sink, function, event, dedupe_id, &mut stop).await? {
        Ok(p) => return Some(Delivered::Queued(p)),
        Err(SinkError::Rejected(reason) | SinkError::Unavailable(reason)) => reason,
    };
    tracing::warn!(function, event = %event.id, %reason, "the queue refused the event; parking it in the dead-letter queue");
    park_until_stored(sink, function, event, dedupe_id, &reason, stop).await?;
    Some(Delivered::Parked(reason))
}

/// Parks `event` in the dead-letter queue with `reason`, retrying (with
/// backoff) while JetStream is away. `None` when `stop` came first.
pub async fn park_until_stored<S: Sink>(
    sink: &S,
    function: &str,
    event: &Event,
    dedupe_id: &str,
    reason: &str,
    stop: impl Future<Output = ()>,
) -> Option<()> {
    tokio::pin!(stop);
    let mut delays = crate::backoff::PUBLISH.delays();
    loop {
        let parked = tokio::select! {
            r = sink.park(function, event, dedupe_id, reason) => r,
            _ = &mut stop => return None,
        };
        match parked {
            Ok(()) => return Some(()),
            Err(e) => {
                let delay = delays.next().unwrap_or(crate::backoff::PUBLISH.max);
                tracing::warn!(function, event = %event.id, error = %e, "event not parked yet; retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut stop => return None,
                }
            }
        }
    }
}

/// Small durable state of sources (cursors, last fire times), kept in NATS KV.
pub trait StateStore: Send + Sync + 'static {
    fn load(&self, key: &str) -> impl Future<Output = Result<Option<String>, StateError>> + Send;
    fn save(&self, key: &str, value: &str) -> impl Future<Output = Result<(), StateError>> + Send;
    /// Removes `key` (its trigger is gone).
    fn forget(&self, key: &str) -> impl Future<Output = Result<(), StateError>> + Send;
}

/// The state store did not answer: the source carries on (a cursor not
/// saved means at most a duplicate tick later, which dedupe absorbs).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("source state unavailable: {0}")]
pub struct StateError(pub String);

/// Publishes, retrying with the [`crate::backoff::PUBLISH`] backoff (100 ms
/// up to 10 s) while JetStream is unavailable, until stored, rejected, or
/// `stop` resolves.
/// Returns `None` when stopped first: the caller must not acknowledge.
pub async fn publish_until_stored<S: Sink>(
    sink: &S,
    function: &str,
    event: &Event,
    dedupe_id: &str,
    stop: impl Future<Output = ()>,
) -> Option<Result<Published, SinkError>> {
    tokio::pin!(stop);
    let mut delays = crate::backoff::PUBLISH.delays();
    loop {
        let attempt = tokio::select! {
            r = sink.publish(function, event, dedupe_id) => r,
            _ = &mut stop => return None,
        };
        match attempt {
            Err(SinkError::Unavailable(e)) => {
                let delay = delays.next().unwrap_or(crate::backoff::PUBLISH.max);
                tracing::warn!(function, event = %event.id, error = %e, "event not stored yet; retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut stop => return None,
                }
            }
            other => return Some(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// A sink that is down for the first `down` calls.
    struct Flaky {
        down: Mutex<u32>,
        stored: Mutex<Vec<String>>,
    }

    impl Sink for Flaky {
        async fn publish(&self, _: &str, event: &Event, _: &str) -> Result<Published, SinkError> {
            let mut down = self.down.lock().unwrap();
            if *down > 0 {
                *down -= 1;
                return Err(SinkError::Unavailable("down".into()));
            }
            self.stored.lock().unwrap().push(event.id.clone());
            Ok(Published::Stored)
        }
        async fn park(&self, _: &str, _: &Event, _: &str, _: &str) -> Result<(), SinkError> {
            unreachable!("never rejects")
        }
        async fn settled(&self, _: &str, _: &str) -> Result<(), SinkError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn publishing_waits_out_an_outage_and_never_drops() {
        let sink = Flaky {
            down: Mutex::new(5),
            stored: Mutex::new(vec![]),
        };
        let e = Event::new("e1", "/t", "t");
        let r = publish_until_stored(&sink, "f", &e, "e1", std::future::pending()).await;
        assert_eq!(r, Some(Ok(Published::Stored)));
        assert_eq!(*sink.stored.lock().unwrap(), ["e1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_events_are_parked_never_dropped() {
        let sink = crate::contract::MemorySink::default();
        sink.reject("too large");
        *sink.park_down.lock().unwrap() = 3;
        let e = Event::new("e1", "/t", "t");
        let r = deliver(&sink, "f", &e, "e1", std::future::pending()).await;
        assert_eq!(r, Some(Delivered::Parked("too large".into())));
        assert!(sink.events().is_empty());
        assert_eq!(sink.parked(), [("e1".to_string(), "too large".to_string())]);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_during_an_outage_reports_nothing_stored() {
        let sink = Flaky {
            down: Mutex::new(u32::MAX),
            stored: Mutex::new(vec![]),
        };
        let e = Event::new("e1", "/t", "t");
        let r = publish_until_stored(&sink, "f", &e, "e1", tokio::time::sleep(Duration::from_secs(30))).await;
        assert_eq!(r, None, "the caller must not ack upstream");
        assert!(sink.stored.lock().unwrap().is_empty());
    }
}
