//! The compliance checks every source's tests run: the events it produces
//! are valid CloudEvents, and it acknowledges upstream only after the sink
//! stored the event, survives a sink outage without losing events, and stops
//! cleanly. Test doubles for the sink and state live here too, so each
//! source's tests say only what is special about that source.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::event::{Event, valid_extension_name};
use crate::source::{Published, Sink, SinkError, StateStore};

/// Panics with a precise message when `e` is not a valid evoke event.
pub fn assert_valid_event(e: &Event) {
    assert!(!e.id.is_empty(), "event id is empty: {e:?}");
    assert!(!e.source.is_empty(), "event source is empty: {e:?}");
    assert!(!e.ty.is_empty(), "event type is empty: {e:?}");
    assert_eq!(e.specversion, "1.0", "specversion: {e:?}");
    assert!(e.time.is_some(), "event has no time: {e:?}");
    for name in e.extensions.keys() {
        assert!(
            valid_extension_name(name),
            "extension `{name}` is not a valid CloudEvents name"
        );
    }
    if !e.data.is_empty() {
        assert!(e.datacontenttype.is_some(), "data without a content type: {e:?}");
    }
    let back = Event::from_json(&e.to_json()).expect("the event survives its own encoding");
    assert_eq!(&back, e, "the event must round-trip through structured JSON");
}

/// A sink that is unavailable for its first `down` publishes, then stores
/// events in memory, deduplicating by id as JetStream does.
#[derive(Default)]
pub struct MemorySink {
    pub down: Mutex<u32>,
    pub stored: Mutex<Vec<(String, String, Event)>>,
    /// Set: every publish is refused for good with this reason.
    pub rejecting: Mutex<Option<String>>,
    /// Parks that fail (unavailable) before one succeeds.
    pub park_down: Mutex<u32>,
    /// Parked events: (dedupe id, reason).
    pub parked: Mutex<Vec<(String, String)>>,
    /// Set: JetStream "goes away" once this many events are stored.
    pub outage_after: Mutex<Option<usize>>,
    /// Set: invocations are finished only once [`MemorySink::finish`]
    /// names them (else at once).
    pub holding: std::sync::atomic::AtomicBool,
    /// Dedupe ids of finished invocations.
    pub finished: Mutex<Vec<String>>,
}

impl MemorySink {
    pub fn failing(times: u32) -> MemorySink {
        MemorySink {
            down: Mutex::new(times),
            ..Default::default()
        }
    }

    /// Refuses every publish from now on, as a queue does for an event that
    /// can never be stored.
    pub fn reject(&self, reason: &str) {
        *self.rejecting.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
    }

    /// Finishes the invocation of `dedupe_id` (see `holding`).
    pub fn finish(&self, dedupe_id: &str) {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dedupe_id.to_string());
    }

    pub fn parked(&self) -> Vec<(String, String)> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn events(&self) -> Vec<Event> {
        self.stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, _, e)| e.clone())
            .collect()
    }
}

impl Sink for MemorySink {
    async fn publish(&self, function: &str, event: &Event, dedupe_id: &str) -> Result<Published, SinkError> {
        {
            let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
            if *down > 0 {
                *down -= 1;
                return Err(SinkError::Unavailable("NATS is down (test)".into()));
            }
        }
        if let Some(reason) = self.rejecting.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(SinkError::Rejected(reason));
        }
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .outage_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|n| stored.len() >= n)
        {
            return Err(SinkError::Unavailable("NATS went away (test)".into()));
        }
        if stored.iter().any(|(id, _, _)| id == dedupe_id) {
            return Ok(Published::Duplicate);
        }
        stored.push((dedupe_id.to_string(), function.to_string(), event.clone()));
        Ok(Published::Stored)
    }

    async fn park(&self, _function: &str, _event: &Event, dedupe_id: &str, reason: &str) -> Result<(), SinkError> {
        {
            let mut down = self.park_down.lock().unwrap_or_else(|p| p.into_inner());
            if *down > 0 {
                *down -= 1;
                return Err(SinkError::Unavailable("NATS is down (test)".into()));
            }
        }
        self.parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((dedupe_id.to_string(), reason.to_string()));
        Ok(())
    }

    async fn settled(&self, _function: &str, dedupe_id: &str) -> Result<(), SinkError> {
        while self.holding.load(std::sync::atomic::Ordering::Relaxed)
            && !self
                .finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|d| d == dedupe_id)
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

/// Source state in memory.
#[derive(Default)]
pub struct MemoryState {
    pub values: Mutex<HashMap<String, String>>,
}

impl StateStore for MemoryState {
    async fn load(&self, key: &str) -> Result<Option<String>, crate::source::StateError> {
        Ok(self.values.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned())
    }
    async fn forget(&self, key: &str) -> Result<(), crate::source::StateError> {
        self.values.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        Ok(())
    }

    async fn save(&self, key: &str, value: &str) -> Result<(), crate::source::StateError> {
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.into(), value.into());
        Ok(())
    }
}
