//! Prometheus metrics (`GET /metrics`), all prefixed `evoke_`.
//!
//! Counters are updated on the hot path (atomic adds); instance counts are
//! read when scraped; gauges that describe NATS state (DLQ depth, queue
//! pending) are refreshed in the background by [`refresh_depths`], so a
//! scrape never waits on NATS. Series are per deployed function (bounded by
//! the registry), never per event or dead letter.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The outcome of a successful run, as counted.
pub const SUCCESS: &str = "success";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnLabel {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub function: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub function: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub function: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabel {
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub trigger: String,
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    /// Messages of this node's queue triggers since it started, by outcome
    /// (set from the sources' counters when scraped).
    pub source_messages: Family<SourceLabel, Gauge>,
    /// Messages waiting at the broker, per queue trigger, where known.
    pub source_lag: Family<TriggerLabel, Gauge>,
    /// 1 while this node's consumer of a queue trigger is connected.
    pub source_connected: Family<TriggerLabel, Gauge>,
    pub invocations: Family<OutcomeLabel, Counter>,
    pub duration: Family<FnLabel, Histogram>,
    pub cold_starts: Family<FnLabel, Counter>,
    pub retries: Family<ClassLabel, Counter>,
    pub dead_letters: Family<FnLabel, Counter>,
    pub parked: Family<FnLabel, Counter>,
    pub gb_seconds: Family<FnLabel, Counter<f64, AtomicU64>>,
    pub instances: Family<StateLabel, Gauge>,
    pub dlq_depth: Family<FnLabel, Gauge>,
    pub queue_pending: Family<FnLabel, Gauge>,
    pub nats_events: Family<EventLabel, Counter>,
    pub consumers_reopened: Family<FnLabel, Counter>,
    /// Per function, the series every successful run updates (handles on
    /// the families' own series): a run is counted without building labels.
    runs: std::sync::Mutex<std::collections::HashMap<String, RunSeries>>,
}

/// The series one successful run of a function updates.
#[derive(Clone)]
struct RunSeries {
    succeeded: Counter,
    duration: Histogram,
    gb_seconds: Counter<f64, AtomicU64>,
    cold_starts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("evoke");
        let invocations = Family::<OutcomeLabel, Counter>::default();
        let duration = Family::<FnLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0])
        });
        let cold_starts = Family::<FnLabel, Counter>::default();
        let retries = Family::<ClassLabel, Counter>::default();
        let dead_letters = Family::<FnLabel, Counter>::default();
        let parked = Family::<FnLabel, Counter>::default();
        let gb_seconds = Family::<FnLabel, Counter<f64, AtomicU64>>::default();
        let instances = Family::<StateLabel, Gauge>::default();
        let dlq_depth = Family::<FnLabel, Gauge>::default();
        let queue_pending = Family::<FnLabel, Gauge>::default();
        let nats_events = Family::<EventLabel, Counter>::default();
        let consumers_reopened = Family::<FnLabel, Counter>::default();
        let source_messages = Family::<SourceLabel, Gauge>::default();
        let source_lag = Family::<TriggerLabel, Gauge>::default();
        let source_connected = Family::<TriggerLabel, Gauge>::default();
        registry.register(
            "source_messages",
            "Messages of this node's queue triggers since it started, by outcome (received, stored, duplicates, filtered, parked, acked, dropped, truncated)",
            source_messages.clone(),
        );
        registry.register(
            "source_lag",
            "Messages waiting at the broker for a queue trigger (consumer lag), where the broker tells; for file tails, bytes not read yet",
            source_lag.clone(),
        );
        registry.register(
            "source_connected",
            "1 while this node's consumer of a queue trigger is connected to its broker",
            source_connected.clone(),
        );
        registry.register(
            "nats_connection_events",
            "NATS connection events of this node (connected, disconnected, errors)",
            nats_events.clone(),
        );
        registry.register(
            "consumers_reopened",
            "Times a function's event consumer was re-created after a NATS loss or leader change",
            consumers_reopened.clone(),
        );
        registry.register(
            "invocations",
            "Invocations by function and outcome",
            invocations.clone(),
        );
        registry.register("invocation_duration_seconds", "Invocation wall time", duration.clone());
        registry.register("cold_starts", "New instances started", cold_starts.clone());
        registry.register("retries", "Retries scheduled, by error class", retries.clone());
        registry.register(
            "dead_letters",
            "Events moved to the dead-letter queue",
            dead_letters.clone(),
        );
        registry.register(
            "events_parked",
            "Events a source could not queue (function missing, too large), parked in the dead-letter queue",
            parked.clone(),
        );
        registry.register(
            "usage_gb_seconds",
            "Metered usage: memory limit (GB) x duration (s)",
            gb_seconds.clone(),
        );
        registry.register(
            "instances",
            "Instances on this node by state (idle, busy)",
            instances.clone(),
        );
        registry.register("dlq_depth", "Dead letters waiting, by function", dlq_depth.clone());
        registry.register(
            "queue_pending",
            "Async events waiting, by function",
            queue_pending.clone(),
        );
        Metrics {
            registry,
            source_messages,
            source_lag,
            source_connected,
            invocations,
            duration,
            cold_starts,
            retries,
            dead_letters,
            parked,
            gb_seconds,
            instances,
            dlq_depth,
            queue_pending,
            nats_events,
            consumers_reopened,
            runs: Default::default(),
        }
    }

    /// Counts and logs one NATS connection event.
    pub fn nats_event(&self, event: &async_nats::Event) {
        let name = match event {
            async_nats::Event::Connected => "connected",
            async_nats::Event::Disconnected => "disconnected",
            async_nats::Event::LameDuckMode => "lame-duck",
            async_nats::Event::Draining => "draining",
            async_nats::Event::Closed => "closed",
            async_nats::Event::SlowConsumer(_) => "slow-consumer",
            async_nats::Event::ServerError(_) => "server-error",
            async_nats::Event::ClientError(_) => "client-error",
        };
        let counter = self.nats_events.get_or_create(&EventLabel { event: name.into() });
        match event {
            // The first connection is the start-up line's business.
            async_nats::Event::Connected if counter.get() == 0 => {}
            async_nats::Event::Connected => tracing::info!("NATS connection re-established"),
            // Closing and draining are this node's own doing (a stop).
            async_nats::Event::Closed | async_nats::Event::Draining => {
                tracing::debug!(event = %event, "NATS connection")
            }
            async_nats::Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
            other => tracing::warn!(event = %other, "NATS connection event"),
        }
        self.nats_events.get_or_create(&EventLabel { event: name.into() }).inc();
    }

    /// Counts one finished run (`outcome`: [`SUCCESS`] or the error's kind).
    pub fn observe_run(&self, function: &str, outcome: &str, seconds: f64, memory_bytes: u64, cold: bool) {
        let gb_seconds = memory_bytes as f64 / (1u64 << 30) as f64 * seconds;
        if outcome == SUCCESS {
            let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            if !runs.contains_key(function) {
                runs.insert(function.to_string(), self.run_series(function));
            }
            let series = &runs[function];
            series.succeeded.inc();
            series.duration.observe(seconds);
            series.gb_seconds.inc_by(gb_seconds);
            if cold {
                series.cold_starts.inc();
            }
            return;
        }
        let f = FnLabel {
            function: function.to_string(),
        };
        self.invocations
            .get_or_create(&OutcomeLabel {
                function: function.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.duration.get_or_create(&f).observe(seconds);
        self.gb_seconds.get_or_create(&f).inc_by(gb_seconds);
        if cold {
            self.cold_starts.get_or_create(&f).inc();
        }
    }

    /// Handles on `function`'s series of successful runs.
    fn run_series(&self, function: &str) -> RunSeries {
        let f = FnLabel {
            function: function.to_string(),
        };
        RunSeries {
            succeeded: self
                .invocations
                .get_or_create(&OutcomeLabel {
                    function: function.to_string(),
                    outcome: SUCCESS.to_string(),
                })
                .clone(),
            duration: self.duration.get_or_create(&f).clone(),
            gb_seconds: self.gb_seconds.get_or_create(&f).clone(),
            cold_starts: self.cold_starts.get_or_create(&f).clone(),
        }
    }

    pub fn retry(&self, function: &str, class: &str) {
        self.retries
            .get_or_create(&ClassLabel {
                function: function.to_string(),
                class: class.to_string(),
            })
            .inc();
    }

    /// Sets the queue trigger series from the sources' counters.
    pub fn observe_sources(&self, all: &[(String, std::sync::Arc<evoke_connectors::queue::Stats>)]) {
        use std::sync::atomic::Ordering::Relaxed;
        self.source_messages.clear();
        self.source_lag.clear();
        self.source_connected.clear();
        for (trigger, s) in all {
            for (outcome, n) in [
                ("received", &s.received),
                ("stored", &s.stored),
                ("duplicates", &s.duplicates),
                ("filtered", &s.filtered),
                ("parked", &s.parked),
                ("acked", &s.acked),
                ("dropped", &s.dropped),
                ("truncated", &s.truncated),
            ] {
                let label = SourceLabel {
                    trigger: trigger.clone(),
                    outcome: outcome.into(),
                };
                self.source_messages.get_or_create(&label).set(n.load(Relaxed) as i64);
            }
            let t = TriggerLabel {
                trigger: trigger.clone(),
            };
            if s.lag_known.load(Relaxed) {
                self.source_lag.get_or_create(&t).set(s.lag.load(Relaxed) as i64);
            }
            self.source_connected
                .get_or_create(&t)
                .set(s.connected.load(Relaxed) as i64);
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// How often queue and DLQ depths are read from NATS.
pub const DEPTH_REFRESH: std::time::Duration = std::time::Duration::from_secs(15);

/// Keeps `evoke_queue_pending` and `evoke_dlq_depth` current: a few NATS
/// requests per `every` ([`DEPTH_REFRESH`] by default; one per 256
/// functions for the queue), with a series for each deployed function.
pub async fn refresh_depths(
    bus: crate::bus::Bus,
    registry: crate::registry::Registry,
    metrics: std::sync::Arc<Metrics>,
    every: std::time::Duration,
    mut shutdown: tokio::sync::broadcast::Receiver<()>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => return,
        }
        let names: Vec<String> = registry.subscribe().borrow().keys().cloned().collect();
        let queues = bus.queue_depths().await;
        let dead = bus.dlq_depths().await;
        for (counts, gauge) in [(queues, &metrics.queue_pending), (dead, &metrics.dlq_depth)] {
            match counts {
                Ok(counts) => {
                    gauge.clear();
                    for name in &names {
                        let n = counts.get(name).copied().unwrap_or(0);
                        gauge.get_or_create(&FnLabel { function: name.clone() }).set(n as i64);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read depths for metrics"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_counted_by_function_and_outcome() {
        let m = Metrics::new();
        m.observe_run("f", SUCCESS, 0.002, 1 << 30, true);
        m.observe_run("f", SUCCESS, 0.002, 1 << 30, false);
        m.observe_run("f", "timeout", 1.0, 1 << 30, false);
        m.observe_run("g", SUCCESS, 0.5, 1 << 29, false);
        let text = m.encode();
        for line in [
            r#"evoke_invocations_total{function="f",outcome="success"} 2"#,
            r#"evoke_invocations_total{function="f",outcome="timeout"} 1"#,
            r#"evoke_invocations_total{function="g",outcome="success"} 1"#,
            r#"evoke_cold_starts_total{function="f"} 1"#,
            r#"evoke_invocation_duration_seconds_count{function="f"} 3"#,
            r#"evoke_usage_gb_seconds_total{function="f"} 1.004"#,
            r#"evoke_usage_gb_seconds_total{function="g"} 0.25"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
