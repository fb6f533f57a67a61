//! Invocation records: what `GET /v1/invocations/{id}` shows. Kept in KV
//! bucket EVOKE_INVOCATIONS (15 days), written without waiting for the ack
//! on the hot path (the publish is pipelined; the worker's retry bookkeeping
//! waits for it).
//!
//! Every change of a record's status and attempts goes through the methods
//! here: [`Record::start_attempt`], [`Record::end_attempt`],
//! [`Record::finish`], [`Record::redrive`], [`Record::fail_attempt`].

use chrono::{DateTime, Utc};
use evoke_connectors::event::{serialize_utc, serialize_utc_opt};
use serde::{Deserialize, Serialize};

use crate::executor::{ColdStart, FunctionErrorKind, InvokeError, MAX_ERROR_BYTES, Run, cap_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    DeadLettered,
}

/// How the invocation was asked for: the same `sync`/`async` a webhook
/// trigger is configured with.
pub use evoke_connectors::trigger::Mode;

/// The class of an attempt's error: function errors count against retries,
/// system errors do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    Function,
    System,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    pub class: ErrorClass,
    /// For function errors: error, trap, timeout, memory-limit, output-too-large, exit-code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<FunctionErrorKind>,
    pub message: String,
}

impl AttemptError {
    /// The error of an attempt; messages are capped so a record always fits.
    pub fn from_invoke(e: &InvokeError) -> AttemptError {
        match e {
            InvokeError::Function { kind, message } => AttemptError {
                class: ErrorClass::Function,
                kind: Some(*kind),
                message: cap_text(message.clone(), MAX_ERROR_BYTES),
            },
            InvokeError::System(_) | InvokeError::Busy(_) | InvokeError::Capacity(_) => {
                AttemptError::system(e.to_string())
            }
        }
    }

    pub fn system(message: impl Into<String>) -> AttemptError {
        AttemptError {
            class: ErrorClass::System,
            kind: None,
            message: cap_text(message.into(), MAX_ERROR_BYTES),
        }
    }
}

/// Attempts kept in a record: the first few and the latest ones. Attempts in
/// between are counted in [`Omitted`] so retry accounting stays exact while
/// a record always fits in one NATS message.
pub const KEEP_FIRST_ATTEMPTS: usize = 3;
pub const KEEP_LAST_ATTEMPTS: usize = 20;

/// What [`Record::end_attempt`] needs of an attempt it ends.
#[derive(Debug, Clone, Copy)]
pub struct StartedAttempt {
    pub number: u32,
    pub started_at: DateTime<Utc>,
}

/// Attempts dropped from the middle of a long history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Omitted {
    pub attempts: u32,
    pub function_errors: u32,
    pub system_errors: u32,
}

/// One try at running the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Counts every try, function and system alike (1-based).
    pub number: u32,
    #[serde(serialize_with = "serialize_utc")]
    pub started_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// `cold` or `warm`; absent when the function never started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<ColdStart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<AttemptError>,
    /// Which node ran it.
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub function: String,
    pub mode: Mode,
    pub status: Status,
    pub event_id: String,
    #[serde(serialize_with = "serialize_utc")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_utc")]
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_utc_opt")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Duration of the last attempt, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// `cold` or `warm`, of the last attempt that started the function.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    pub attempts: Vec<Attempt>,
    /// Attempts left out of `attempts` (the middle of a long history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<Omitted>,
    /// How many times `dlq redrive` put it back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redrives: u32,
}

/// A duration in milliseconds to the microsecond: `1.356`, not the
/// `1.3559430000000001` a float of the nanoseconds prints as.
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Record {
    pub fn new(id: &str, function: &str, mode: Mode, event_id: &str, status: Status) -> Record {
        let now = Utc::now();
        Record {
            id: id.to_string(),
            function: function.to_string(),
            mode,
            status,
            event_id: event_id.to_string(),
            created_at: now,
            updated_at: now,
            finished_at: None,
            duration_ms: None,
            start: None,
            attempts: Vec::new(),
            omitted: None,
            redrives: 0,
        }
    }

    fn count(&self, class: ErrorClass) -> u32 {
        self.attempts
            .iter()
            .filter(|a| a.error.as_ref().is_some_and(|e| e.class == class))
            .count() as u32
    }

    /// Function-error attempts so far (what `retries` counts).
    pub fn function_failures(&self) -> u32 {
        self.count(ErrorClass::Function) + self.omitted.as_ref().map_or(0, |o| o.function_errors)
    }

    /// System-error attempts so far (drives the system backoff).
    pub fn system_failures(&self) -> u32 {
        self.count(ErrorClass::System) + self.omitted.as_ref().map_or(0, |o| o.system_errors)
    }

    /// Every attempt so far, kept or omitted.
    pub fn attempt_count(&self) -> u32 {
        self.attempts.len() as u32 + self.omitted.as_ref().map_or(0, |o| o.attempts)
    }

    /// Adds an attempt, folding the middle of a long history into
    /// [`Record::omitted`].
    pub fn push_attempt(&mut self, attempt: Attempt) {
        self.attempts.push(attempt);
        if self.attempts.len() > KEEP_FIRST_ATTEMPTS + KEEP_LAST_ATTEMPTS {
            let gone = self.attempts.remove(KEEP_FIRST_ATTEMPTS);
            let o = self.omitted.get_or_insert_with(Omitted::default);
            o.attempts += 1;
            match gone.error.map(|e| e.class) {
                Some(ErrorClass::Function) => o.function_errors += 1,
                Some(ErrorClass::System) => o.system_errors += 1,
                None => {}
            }
        }
    }

    /// Forgets every attempt (a redrive starts over).
    pub fn clear_attempts(&mut self) {
        self.attempts.clear();
        self.omitted = None;
    }

    /// An attempt starts now on `node`: the record says `running`. Returns
    /// what [`Record::end_attempt`] needs.
    pub fn start_attempt(&mut self, node: &str) -> StartedAttempt {
        let number = self.attempt_count() + 1;
        let started_at = Utc::now();
        self.status = Status::Running;
        self.updated_at = started_at;
        self.push_attempt(Attempt {
            number,
            started_at,
            duration_ms: None,
            start: None,
            cold_start: None,
            error: None,
            node: node.to_string(),
        });
        StartedAttempt { number, started_at }
    }

    /// The attempt started last ended with `run` (on `node`).
    pub fn end_attempt(&mut self, started: StartedAttempt, run: &Run, node: &str) {
        let ran = matches!(&run.result, Ok(_) | Err(InvokeError::Function { .. }));
        let attempt = Attempt {
            number: started.number,
            started_at: started.started_at,
            duration_ms: Some(millis(run.duration)),
            start: ran.then(|| if run.cold.is_some() { "cold" } else { "warm" }.to_string()),
            cold_start: run.cold.clone(),
            error: run.result.as_ref().err().map(AttemptError::from_invoke),
            node: node.to_string(),
        };
        match self.attempts.last_mut() {
            Some(last) if last.number == started.number => *last = attempt,
            _ => self.push_attempt(attempt),
        }
    }

    /// Marks the last attempt failed with `error`, whatever the run said
    /// (its result could not be delivered).
    pub fn fail_attempt(&mut self, error: AttemptError) {
        if let Some(last) = self.attempts.last_mut() {
            last.error = Some(error);
        }
    }

    /// Whether the invocation reached an end state and was acked (or its ack
    /// was lost): succeeded or dead-lettered. `failed` is only a step on the
    /// way to the dead letter queue.
    pub fn is_settled(&self) -> bool {
        matches!(self.status, Status::Succeeded | Status::DeadLettered)
    }

    /// Moves to `status` (`queued` again for a retry, or an end state),
    /// with the last run's summary when there was one.
    pub fn finish(&mut self, status: Status, run: Option<&Run>) {
        let now = Utc::now();
        self.status = status;
        self.updated_at = now;
        self.finished_at = matches!(status, Status::Succeeded | Status::Failed | Status::DeadLettered).then_some(now);
        if let Some(run) = run {
            self.duration_ms = Some(millis(run.duration));
        }
        if let Some(a) = self.attempts.last()
            && a.start.is_some()
        {
            self.start = a.start.clone();
        }
    }

    /// Put back on the queue by redrive number `n`: the history starts over.
    pub fn redrive(&mut self, n: u32) {
        self.redrives = n;
        self.clear_attempts();
        self.finish(Status::Queued, None);
    }

    /// An attempt that never ran (the event was refused before it could):
    /// recorded as a system error.
    pub fn refused(&mut self, node: &str, message: String) {
        let now = Utc::now();
        self.push_attempt(Attempt {
            number: self.attempt_count() + 1,
            started_at: now,
            duration_ms: Some(0.0),
            start: None,
            cold_start: None,
            error: Some(AttemptError::system(message)),
            node: node.to_string(),
        });
    }

    /// Before delivery number `delivered` runs: marks attempts that started
    /// but never finished (the node died, or the ack deadline passed) as
    /// system errors, and adds the attempts that left no trace at all (a
    /// node received the event but died before writing anything; every
    /// earlier delivery is one attempt). A redrive clears the attempts and
    /// starts a new message, so both count from the same start.
    pub fn account_for_lost_attempts(&mut self, delivered: u64) {
        for a in &mut self.attempts {
            if a.error.is_none() && a.duration_ms.is_none() {
                a.error = Some(AttemptError::system(format!(
                    "attempt lost: node {} stopped before finishing it (or missed its ack deadline)",
                    a.node
                )));
            }
        }
        while u64::from(self.attempt_count()) < delivered.saturating_sub(1) {
            self.push_attempt(Attempt {
                number: self.attempt_count() + 1,
                started_at: self.updated_at,
                duration_ms: None,
                start: None,
                cold_start: None,
                error: Some(AttemptError::system(
                    "attempt lost: a node received the event but stopped before finishing it",
                )),
                node: "unknown".into(),
            });
        }
    }

    pub fn to_bytes(&self) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_milliseconds_to_the_microsecond() {
        let d = std::time::Duration::from_nanos(1_355_943);
        assert_eq!(serde_json::to_string(&millis(d)).unwrap(), "1.355");
        assert_eq!(
            serde_json::to_string(&millis(std::time::Duration::from_secs(2))).unwrap(),
            "2000.0"
        );
    }

    #[test]
    fn lost_attempts_count_as_system_errors() {
        let mut r = Record::new("i", "f", Mode::Async, "e", Status::Running);
        r.attempts.push(Attempt {
            number: 1,
            started_at: Utc::now(),
            duration_ms: None,
            start: None,
            cold_start: None,
            error: None,
            node: "n1".into(),
        });
        assert_eq!(r.system_failures(), 0);
        // Second delivery: the one attempt on record never finished.
        r.account_for_lost_attempts(2);
        assert_eq!(r.attempts.len(), 1);
        assert_eq!(r.system_failures(), 1);
        assert_eq!(r.function_failures(), 0);
        // Third delivery, one attempt on record: one more was lost silently.
        r.account_for_lost_attempts(3);
        assert_eq!(r.attempts.len(), 2);
        assert_eq!(r.system_failures(), 2);
        r.account_for_lost_attempts(3);
        assert_eq!(r.attempts.len(), 2, "idempotent");
    }

    #[test]
    fn long_histories_keep_their_ends_and_exact_counts() {
        let mut r = Record::new("i", "f", Mode::Async, "e", Status::Running);
        for n in 1..=500u32 {
            let error = if n % 5 == 0 {
                AttemptError::from_invoke(&InvokeError::Function {
                    kind: FunctionErrorKind::Error,
                    message: "x".repeat(1 << 20),
                })
            } else {
                AttemptError::system("nats hiccup")
            };
            r.push_attempt(Attempt {
                number: n,
                started_at: Utc::now(),
                duration_ms: Some(1.0),
                start: None,
                cold_start: None,
                error: Some(error),
                node: "n".into(),
            });
        }
        assert_eq!(r.attempts.len(), KEEP_FIRST_ATTEMPTS + KEEP_LAST_ATTEMPTS);
        assert_eq!(r.attempt_count(), 500);
        assert_eq!(r.function_failures(), 100);
        assert_eq!(r.system_failures(), 400);
        assert_eq!(r.attempts[0].number, 1);
        assert_eq!(r.attempts.last().unwrap().number, 500);
        // 1 MiB guest errors were capped: the record stays small.
        assert!(r.to_bytes().len() < 256 << 10, "{} bytes", r.to_bytes().len());
        r.clear_attempts();
        assert_eq!((r.attempt_count(), r.function_failures()), (0, 0));
    }
}
