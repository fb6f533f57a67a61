//! Prometheus metrics (`GET /metrics`), all prefixed `evoke_`.
//!
//! Counters are updated on the hot path (atomic adds); gauges that describe
//! NATS state (DLQ depth, queue pending) and instance counts are refreshed
//! when scraped.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
pub struct StateLabel {
    pub function: String,
    pub state: String,
}

pub struct Metrics {
    registry: Registry,
    pub invocations: Family<OutcomeLabel, Counter>,
    pub duration: Family<FnLabel, Histogram>,
    pub cold_starts: Family<FnLabel, Counter>,
    pub retries: Family<ClassLabel, Counter>,
    pub dead_letters: Family<FnLabel, Counter>,
    pub gb_seconds: Family<FnLabel, Counter<f64, AtomicU64>>,
    pub instances: Family<StateLabel, Gauge>,
    pub dlq_depth: Family<FnLabel, Gauge>,
    pub queue_pending: Family<FnLabel, Gauge>,
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
        let gb_seconds = Family::<FnLabel, Counter<f64, AtomicU64>>::default();
        let instances = Family::<StateLabel, Gauge>::default();
        let dlq_depth = Family::<FnLabel, Gauge>::default();
        let queue_pending = Family::<FnLabel, Gauge>::default();
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
            invocations,
            duration,
            cold_starts,
            retries,
            dead_letters,
            gb_seconds,
            instances,
            dlq_depth,
            queue_pending,
        }
    }

    /// Counts one finished run.
    pub fn observe_run(&self, function: &str, outcome: &str, seconds: f64, memory_bytes: u64, cold: bool) {
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
        self.gb_seconds
            .get_or_create(&f)
            .inc_by(memory_bytes as f64 / (1u64 << 30) as f64 * seconds);
        if cold {
            self.cold_starts.get_or_create(&f).inc();
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

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
