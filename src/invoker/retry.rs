//! Retry timing, in one place: short jittered backoff for function errors
//! (counted against `retries`), exponential backoff for system errors
//! (bounded only by the event's maximum age). Timing comes from `backon`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delay before retry number `n` (1-based) after a function error.
pub fn function_delay(n: u32) -> Duration {
    nth(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times(),
        n,
    )
}

/// Delay before retry number `n` (1-based) after a system error.
pub fn system_delay(n: u32) -> Duration {
    nth(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(300))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times(),
        n,
    )
}

fn nth(builder: ExponentialBuilder, n: u32) -> Duration {
    builder
        .build()
        .nth(n.saturating_sub(1) as usize)
        .unwrap_or(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_bounded() {
        // Jitter adds up to one more delay on top of the base.
        assert!(function_delay(1) >= Duration::from_millis(500));
        assert!(function_delay(1) <= Duration::from_secs(1));
        assert!(function_delay(3) >= Duration::from_secs(2));
        assert!(function_delay(50) <= Duration::from_secs(60));
        assert!(system_delay(1) >= Duration::from_secs(1));
        assert!(system_delay(5) >= Duration::from_secs(16));
        assert!(system_delay(100) <= Duration::from_secs(600));
    }
}
