//! What evoke tells operators: function logs and Prometheus metrics.

pub mod logs;
pub mod metrics;
