//! The cron source: fires a trigger's events on its schedule.
//!
//! Every node runs every cron trigger. Each tick's event gets the dedupe id
//! `cron.<trigger>.<scheduled unix ms>`, so however many nodes fire it,
//! JetStream keeps one. After the event is stored, the scheduled time is saved
//! as the trigger's cursor; on start, ticks between the cursor and now were
//! missed while no node ran, and `catch_up` says what to do about them
//! (computed from now backwards, so a long outage costs nothing extra).
//! A tick the queue refuses for good (its function is gone) is parked in the
//! dead-letter queue before the cursor moves past it: no tick is dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::watch;

use crate::event::Event;
use crate::schedule::Tick;
use crate::source::{Delivered, Published, Sink, StateStore, deliver};
use crate::trigger::{CatchUp, CronConfig};

/// The state key holding a trigger's last fired tick.
pub fn cursor_key(trigger: &str) -> String {
    format!("cron.{trigger}")
}

/// The event a tick produces.
pub fn tick_event(trigger: &str, config: &CronConfig, tick: &Tick, fired: DateTime<Utc>) -> Event {
    let scheduled = tick.at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut e = Event::new(
        format!("{trigger}@{scheduled}"),
        format!("/evoke/triggers/{trigger}"),
        "evoke.cron.tick",
    );
    e.subject = Some(trigger.to_string());
    e.time = Some(tick.at);
    e.extensions.insert("evoketrigger".into(), trigger.to_string());
    e.extensions.insert("evokescheduled".into(), scheduled);
    e.extensions
        .insert("evokefired".into(), fired.to_rfc3339_opts(SecondsFormat::Millis, true));
    match &config.payload {
        None => e,
        Some(serde_json::Value::String(s)) => e.with_data(Some("text/plain".into()), Bytes::from(s.clone())),
        Some(v) => e.with_data(Some("application/json".into()), Bytes::from(v.to_string())),
    }
}

fn dedupe_id(trigger: &str, tick: &Tick) -> String {
    format!("cron.{trigger}.{}", tick.at.timestamp_millis())
}

/// Runs one cron trigger until `stop` becomes true.
pub async fn run<S: Sink, St: StateStore>(
    trigger: String,
    function: String,
    config: CronConfig,
    sink: Arc<S>,
    state: Arc<St>,
    mut stop: watch::Receiver<bool>,
) {
    let schedule = match config.parsed() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(trigger, error = %e, "cron trigger not started");
            return;
        }
    };
    let key = cursor_key(&trigger);
    let now = Utc::now();
    let last = match state.load(&key).await {
        Ok(v) => v
            .and_then(|v| DateTime::parse_from_rfc3339(&v).ok())
            .map(|t| t.with_timezone(&Utc)),
        Err(e) => {
            tracing::warn!(trigger, error = %e, "cannot read the cron cursor; not catching up");
            None
        }
    };
    let firing = Firing {
        trigger: &trigger,
        function: &function,
        config: &config,
        sink: &*sink,
        state: &*state,
        key: &key,
    };
    if let Some(last) = last.filter(|l| *l < now) {
        let (missed, more) = match config.catch_up {
            CatchUp::None => (vec![], false),
            CatchUp::Last => schedule.latest_ticks(last, now, 1),
            CatchUp::All => schedule.latest_ticks(last, now, config.catch_up_max as usize),
        };
        if let Some(first) = missed.first() {
            tracing::info!(
                trigger,
                missed = missed.len(),
                "catching up on ticks missed while no node ran"
            );
            if more {
                tracing::warn!(
                    trigger,
                    from = %last,
                    until = %first.at,
                    catch_up_max = config.catch_up_max,
                    "skipping older missed ticks: catch-up fires only the newest"
                );
            }
        }
        for tick in missed {
            if !firing.fire(&tick, &mut stop).await {
                return;
            }
        }
    }
    let mut cursor = now;
    loop {
        let Some(tick) = schedule.next_after(cursor) else {
            tracing::info!(trigger, "the schedule has no further ticks");
            return;
        };
        let wait = (tick.at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() || !firing.fire(&tick, &mut stop).await {
            return;
        }
        cursor = tick.at;
    }
}

struct Firing<'a, S, St> {
    trigger: &'a str,
    function: &'a str,
    config: &'a CronConfig,
    sink: &'a S,
    state: &'a St,
    key: &'a str,
}

impl<S: Sink, St: StateStore> Firing<'_, S, St> {
    /// Publishes one tick, then advances the cursor. Returns false when
    /// stopped before the event was stored.
    async fn fire(&self, tick: &Tick, stop: &mut watch::Receiver<bool>) -> bool {
        if tick.shifted_by_dst {
            tracing::warn!(trigger = self.trigger, at = %tick.at, "tick fell in a daylight-saving gap; firing when the gap ends");
        }
        let event = tick_event(self.trigger, self.config, tick, Utc::now());
        let stopped = async {
            let _ = stop.wait_for(|s| *s).await;
        };
        match deliver(
            self.sink,
            self.function,
            &event,
            &dedupe_id(self.trigger, tick),
            stopped,
        )
        .await
        {
            None => return false,
            Some(Delivered::Queued(Published::Stored)) => {
                tracing::debug!(trigger = self.trigger, at = %tick.at, "fired")
            }
            Some(Delivered::Queued(Published::Duplicate)) => {
                tracing::debug!(trigger = self.trigger, at = %tick.at, "fired by another node")
            }
            Some(Delivered::Parked(reason)) => {
                tracing::error!(trigger = self.trigger, at = %tick.at, %reason, "tick refused by the queue; parked in the dead-letter queue");
            }
        }
        let at = tick.at.to_rfc3339_opts(SecondsFormat::Millis, true);
        if let Err(e) = self.state.save(self.key, &at).await {
            tracing::warn!(trigger = self.trigger, error = %e, "cannot save the cron cursor");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{MemorySink, MemoryState, assert_valid_event};

    fn config(catch_up: CatchUp) -> CronConfig {
        CronConfig {
            schedule: "@every 60s".into(),
            timezone: "UTC".into(),
            payload: Some(serde_json::json!({"k": 1})),
            catch_up,
            catch_up_max: 3,
        }
    }

    async fn catch_up_fires(mode: CatchUp) -> Vec<Event> {
        let sink = Arc::new(MemorySink::default());
        let state = Arc::new(MemoryState::default());
        // The last tick fired ten minutes ago; nothing ran since.
        let last = Utc::now() - chrono::Duration::minutes(10);
        let last = DateTime::from_timestamp(last.timestamp() / 60 * 60, 0).unwrap();
        state.save(&cursor_key("t"), &last.to_rfc3339()).await.unwrap();
        let (tx, rx) = watch::channel(false);
        let started = Utc::now();
        let task = tokio::spawn(run("t".into(), "f".into(), config(mode), sink.clone(), state, rx));
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(true).unwrap();
        task.await.unwrap();
        // Only the caught-up ticks: a run started just before a minute
        // boundary also fires that minute's regular tick.
        sink.events()
            .into_iter()
            .filter(|e| e.time.is_some_and(|t| t <= started))
            .collect()
    }

    #[tokio::test]
    async fn catch_up_none_last_and_all() {
        assert_eq!(catch_up_fires(CatchUp::None).await.len(), 0);
        assert_eq!(catch_up_fires(CatchUp::Last).await.len(), 1);
        let all = catch_up_fires(CatchUp::All).await;
        assert_eq!(all.len(), 3, "capped at catch_up_max");
        let scheduled: Vec<_> = all.iter().map(|e| e.time.unwrap()).collect();
        assert!(
            scheduled
                .windows(2)
                .all(|w| w[1] - w[0] == chrono::Duration::minutes(1)),
            "{scheduled:?}"
        );
        all.iter().for_each(assert_valid_event);
    }

    /// The source contract: events valid, the cursor advances only after the
    /// sink stored the tick, an outage loses nothing, and stop is prompt.
    #[tokio::test]
    async fn cron_meets_the_source_contract() {
        let mut c = config(CatchUp::None);
        c.schedule = "@every 1s".into();
        let sink = Arc::new(MemorySink::failing(4));
        // Every cursor save is checked: its tick must already be stored.
        let state = Arc::new(StoredFirst {
            sink: sink.clone(),
            inner: MemoryState::default(),
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run("t".into(), "f".into(), c, sink.clone(), state.clone(), rx));
        // The sink refuses the first tick 4 times (1.5 s of backoff).
        tokio::time::sleep(Duration::from_millis(4000)).await;
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stops promptly")
            .unwrap();
        let events = sink.events();
        assert!(
            events.len() >= 3,
            "ticks during and after the outage were all stored: {}",
            events.len()
        );
        let times: Vec<_> = events.iter().map(|e| e.time.unwrap()).collect();
        assert!(
            times.windows(2).all(|w| w[1] - w[0] == chrono::Duration::seconds(1)),
            "no tick lost: {times:?}"
        );
        events.iter().for_each(assert_valid_event);
        let cursor = state.load(&cursor_key("t")).await.unwrap().unwrap();
        assert_eq!(DateTime::parse_from_rfc3339(&cursor).unwrap(), *times.last().unwrap());
    }

    /// A tick the queue refuses (its function was deleted) is parked with
    /// its reason before the cursor moves on; none is dropped.
    #[tokio::test]
    async fn refused_ticks_are_parked_before_the_cursor_moves() {
        let mut c = config(CatchUp::None);
        c.schedule = "@every 1s".into();
        let sink = Arc::new(MemorySink::default());
        sink.reject("function `f` does not exist");
        let state = Arc::new(MemoryState::default());
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run("t".into(), "f".into(), c, sink.clone(), state.clone(), rx));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        tx.send(true).unwrap();
        task.await.unwrap();
        let parked = sink.parked();
        assert!(parked.len() >= 2, "{parked:?}");
        assert!(parked.iter().all(|(_, reason)| reason.contains("does not exist")));
        assert!(sink.events().is_empty());
        let cursor = state.load(&cursor_key("t")).await.unwrap().unwrap();
        let last_parked = parked
            .last()
            .unwrap()
            .0
            .rsplit('.')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap();
        assert_eq!(
            DateTime::parse_from_rfc3339(&cursor).unwrap().timestamp_millis(),
            last_parked,
            "the cursor stands at the last parked tick"
        );
    }

    /// A state store that fails the test when a cursor is saved for a tick
    /// the sink has not stored.
    struct StoredFirst {
        sink: Arc<MemorySink>,
        inner: MemoryState,
    }

    impl StateStore for StoredFirst {
        async fn load(&self, key: &str) -> Result<Option<String>, crate::source::StateError> {
            self.inner.load(key).await
        }
        async fn save(&self, key: &str, value: &str) -> Result<(), crate::source::StateError> {
            let at = DateTime::parse_from_rfc3339(value).unwrap();
            assert!(
                self.sink.events().iter().any(|e| e.time == Some(at.into())),
                "cursor advanced to {value} before its tick was stored"
            );
            self.inner.save(key, value).await
        }
        async fn forget(&self, key: &str) -> Result<(), crate::source::StateError> {
            self.inner.forget(key).await
        }
    }

    #[test]
    fn tick_events_carry_scheduled_and_fired_times() {
        let tick = Tick {
            at: DateTime::parse_from_rfc3339("2026-11-26T08:00:00Z").unwrap().into(),
            shifted_by_dst: false,
        };
        let fired = tick.at + chrono::Duration::milliseconds(3);
        let e = tick_event("tick", &config(CatchUp::None), &tick, fired);
        assert_eq!(e.extensions["evokescheduled"], "2026-11-26T08:00:00.000Z");
        assert_eq!(e.extensions["evokefired"], "2026-11-26T08:00:00.003Z");
        assert_eq!(e.ty, "evoke.cron.tick");
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(dedupe_id("tick", &tick), "cron.tick.1795680000000");
        assert_valid_event(&e);
    }
}
