//! Retry timing, in one place: short jittered backoff for function errors
//! (counted against `retries`), exponential backoff for system errors
//! (bounded only by the event's maximum age), both from `backon`; and the
//! fixed pauses of the few inline retries (destinations, outcome records).

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

/// Pauses between the three quick tries of a destination delivery.
pub const DESTINATION_PAUSES: [Duration; 2] = [Duration::from_millis(400), Duration::from_millis(800)];

/// Pauses between the tries of relaying a sync invocation that found no
/// worker (one may be starting or reconnecting): 1.5 s in all.
pub const RELAY_PAUSES: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// Pauses between the six tries of storing an outcome record (a NATS
/// hiccup of up to ~11 s is ridden out before the event is acked).
pub const RECORD_PAUSES: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(4),
];

/// Tries `attempt` once, then once more after each pause, until it
/// succeeds; returns the last error.
pub async fn with_pauses<T, F, Fut>(pauses: &[Duration], mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut result = attempt().await;
    for pause in pauses {
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(*pause).await;
        result = attempt().await;
    }
    result
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

    #[tokio::test(start_paused = true)]
    async fn with_pauses_stops_at_the_first_success_or_the_last_pause() {
        let mut calls = 0;
        let r: Result<u32, String> = with_pauses(&RECORD_PAUSES, || {
            calls += 1;
            let n = calls;
            async move { if n < 3 { Err(format!("try {n}")) } else { Ok(n) } }
        })
        .await;
        assert_eq!(r, Ok(3));
        let mut calls = 0;
        let r: Result<(), String> = with_pauses(&DESTINATION_PAUSES, || {
            calls += 1;
            let n = calls;
            async move { Err(format!("try {n}")) }
        })
        .await;
        assert_eq!(r, Err("try 3".to_string()));
    }

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
