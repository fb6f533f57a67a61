//! Backoff timing, in one place, for evoke and its sources: named
//! exponential policies (from `backon`) for every loop that waits before
//! trying again, and the fixed pauses of the few short inline retries.
//!
//! - [`FUNCTION`]: after a function error (counted against `retries`).
//! - [`SYSTEM`]: after a system error (bounded only by the event's max age).
//! - [`PUBLISH`]: a source waiting for JetStream to take an event.
//! - [`RECONNECT`]: a consumer or watch re-subscribing after a NATS loss.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// An exponential backoff: `min`, doubling up to `max`, optionally jittered
/// (up to one more delay on top, so nodes retrying together spread out).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub min: Duration,
    pub max: Duration,
    pub jitter: bool,
}

pub const FUNCTION: Policy = Policy {
    min: Duration::from_millis(500),
    max: Duration::from_secs(30),
    jitter: true,
};

pub const SYSTEM: Policy = Policy {
    min: Duration::from_secs(1),
    max: Duration::from_secs(300),
    jitter: true,
};

pub const PUBLISH: Policy = Policy {
    min: Duration::from_millis(100),
    max: Duration::from_secs(10),
    jitter: false,
};

pub const RECONNECT: Policy = Policy {
    min: Duration::from_millis(200),
    max: Duration::from_secs(10),
    jitter: true,
};

impl Policy {
    fn builder(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times();
        if self.jitter { b.with_jitter() } else { b }
    }

    /// The delay before retry number `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        self.delays().nth(n.saturating_sub(1) as usize).unwrap_or(self.min)
    }

    /// The delays before each retry, in turn, forever; whole milliseconds,
    /// so logs say "retrying in 317ms", not "317.685355ms".
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        self.builder()
            .build()
            .map(|d| Duration::from_millis(d.as_millis() as u64))
    }
}

/// Delay before retry number `n` (1-based) after a function error.
pub fn function_delay(n: u32) -> Duration {
    FUNCTION.delay(n)
}

/// Delay before retry number `n` (1-based) after a system error.
pub fn system_delay(n: u32) -> Duration {
    SYSTEM.delay(n)
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
pub async fn with_pauses<T, E, F, Fut>(pauses: &[Duration], mut attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
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

/// How often a failure that lasts is warned about again.
pub const REMIND_EVERY: Duration = Duration::from_secs(300);

/// Which failures of a retry loop are worth a warning: the first, one whose
/// message differs from the last warned, and the same one again every
/// [`REMIND_EVERY`] while it lasts. The repeats in between are for debug
/// logs: a loop retrying every 10 s for a missing credential should not fill
/// the log with one line each time.
#[derive(Debug, Default)]
pub struct Repeats {
    last: Option<(String, std::time::Instant)>,
}

impl Repeats {
    /// Whether `message`, failing at `now`, should be warned about (and, if
    /// so, remembered as the last warned).
    pub fn worth_warning(&mut self, message: &str, now: std::time::Instant) -> bool {
        match &self.last {
            Some((last, at)) if last == message && now.duration_since(*at) < REMIND_EVERY => false,
            _ => {
                self.last = Some((message.to_string(), now));
                true
            }
        }
    }
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
    fn a_lasting_failure_is_warned_once_then_every_reminder() {
        let start = std::time::Instant::now();
        let mut r = Repeats::default();
        assert!(r.worth_warning("no key", start), "the first failure");
        assert!(!r.worth_warning("no key", start + Duration::from_secs(10)));
        assert!(!r.worth_warning("no key", start + REMIND_EVERY - Duration::from_secs(1)));
        assert!(r.worth_warning("no key", start + REMIND_EVERY), "reminded");
        assert!(!r.worth_warning("no key", start + REMIND_EVERY + Duration::from_secs(10)));
        assert!(
            r.worth_warning("refused", start + REMIND_EVERY + Duration::from_secs(20)),
            "a different failure"
        );
        assert!(
            r.worth_warning("no key", start + REMIND_EVERY + Duration::from_secs(30)),
            "back to the first: different from the last warned"
        );
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
        for d in RECONNECT.delays().take(20).chain([function_delay(3), system_delay(2)]) {
            assert_eq!(d.subsec_nanos() % 1_000_000, 0, "whole milliseconds: {d:?}");
        }
        let publish: Vec<u128> = PUBLISH.delays().take(9).map(|d| d.as_millis()).collect();
        assert_eq!(publish[..3], [100, 200, 400]);
        assert_eq!(publish[8], 10_000, "capped");
    }
}
