//! Async workers: one durable pull consumer per function on EVOKE_EVENTS,
//! shared by the workers of every node, and the retry state machine.
//!
//! For each message: run it, then
//! - success: deliver `on_success`, ack;
//! - function error: NAK with a short backoff while retries remain;
//! - system error: NAK with exponential backoff while the event is younger
//!   than `max_event_age`;
//! - otherwise: publish to EVOKE_DLQ (awaiting JetStream), deliver
//!   `on_failure`, and only then ack.
//!
//! A worker pulls only as many messages as it has free run slots, so no
//! message waits in this node's memory while its ack deadline runs (another
//! node with a free slot gets it instead). Running and settling (records,
//! destinations, dead letters, acks) send progress acks, so a slow function
//! or destination is not redelivered elsewhere. Settling has its own bounded
//! slots: a slow destination holds those, not the run slots, until they are
//! all taken (backpressure). A node that dies mid-invocation stops acking,
//! and the event is redelivered after the ack wait.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, Consumer, pull};
use async_nats::jetstream::{AckKind, Message};
use chrono::Utc;
use evoke_connectors::Event;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio::task::JoinSet;

use super::dlq::DeadLetter;
use super::records::{Attempt, AttemptError, Mode, Record, Status};
use super::{Invoker, attempt_of, finish, retry};
use crate::bus;
use crate::executor::InvokeError;
use crate::registry::{DeployedFunction, Functions};
use crate::supervise::{Supervised, reconcile, stop_all};

/// How long an invocation runs before its record says `running`.
pub const RUNNING_AFTER: Duration = Duration::from_millis(100);

/// How long JetStream waits for an ack before redelivering.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

/// Runs consumers for every deployed function until shutdown, starting,
/// restarting (on a new revision) and stopping them as the registry changes.
pub async fn run(
    invoker: Arc<Invoker>,
    mut functions: watch::Receiver<Functions>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let mut running: HashMap<String, Supervised> = HashMap::new();
    loop {
        let current = functions.borrow_and_update().clone();
        let live: HashMap<String, u64> = current.iter().map(|(n, f)| (n.clone(), f.revision)).collect();
        invoker.executor.retain(&live);
        for (name, revision) in reconcile(&mut running, &live) {
            let Some(f) = current.get(&name) else { continue };
            let (inv, fc) = (invoker.clone(), f.clone());
            running.insert(name, Supervised::spawn(revision, |stop| consume(inv, fc, stop)));
            // Only new or changed functions are prewarmed; the executor runs
            // one prewarm per function at a time.
            if f.spec.reserved > 0 {
                let (inv, f) = (invoker.clone(), f.clone());
                tokio::spawn(async move {
                    if let Err(e) = inv.executor.prewarm(&f).await {
                        tracing::warn!(function = %f.name, error = %e, "cannot start reserved instances");
                    }
                });
            }
        }
        tokio::select! {
            changed = functions.changed() => if changed.is_err() { break },
            _ = shutdown.recv() => break,
        }
    }
    stop_all(running).await;
}

/// Settle slots of one function's consumer: results being recorded,
/// delivered or dead-lettered while new events run.
fn settle_slots(f: &DeployedFunction) -> usize {
    (f.spec.max_instances as usize * 4).max(16)
}

async fn consume(invoker: Arc<Invoker>, f: Arc<DeployedFunction>, mut stop: watch::Receiver<bool>) {
    let name = f.name.to_string();
    let runs = Arc::new(Semaphore::new(f.spec.max_instances as usize));
    let settles = Arc::new(Semaphore::new(settle_slots(&f)));
    let mut tasks = JoinSet::new();
    let mut consumer: Option<Consumer<pull::Config>> = None;
    let mut opened_before = false;
    let mut failures = 0u32;
    'outer: loop {
        if *stop.borrow() {
            break;
        }
        let c = match &consumer {
            Some(c) => c.clone(),
            None => match open(&invoker, &f).await {
                Ok(c) => {
                    if opened_before {
                        tracing::info!(function = %name, "event consumer re-created");
                        invoker
                            .metrics
                            .consumers_reopened
                            .get_or_create(&crate::observe::metrics::FnLabel { function: name.clone() })
                            .inc();
                    }
                    opened_before = true;
                    failures = 0;
                    consumer = Some(c.clone());
                    c
                }
                Err(e) => {
                    failures += 1;
                    let delay = retry::system_delay(failures).min(Duration::from_secs(10));
                    tracing::warn!(function = %name, error = %e, "cannot open the event consumer; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = stop.changed() => break,
                    }
                }
            },
        };
        // Wait for a free run slot, then ask for as many messages as there
        // are free slots: every message pulled has a slot waiting for it.
        let first = tokio::select! {
            p = runs.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let mut slots = vec![first];
        while let Ok(p) = runs.clone().try_acquire_owned() {
            slots.push(p);
        }
        let batch = c
            .batch()
            .max_messages(slots.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(function = %name, error = %e, "pull request failed; reopening the consumer");
                consumer = None;
                drop(slots);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = stop.changed() => break,
                }
            }
        };
        tokio::pin!(batch);
        loop {
            let next = tokio::select! {
                m = batch.next() => m,
                _ = stop.changed() => break 'outer,
            };
            match next {
                Some(Ok(msg)) => {
                    let Some(slot) = slots.pop() else {
                        // The server sent more than was asked for: hand it
                        // back at once rather than hold it without a slot.
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        continue;
                    };
                    let (invoker, f, settles) = (invoker.clone(), f.clone(), settles.clone());
                    tasks.spawn(async move { handle(&invoker, &f, msg, slot, settles).await });
                }
                Some(Err(e)) => {
                    tracing::debug!(function = %name, error = %e, "consumer hiccup; reopening the consumer");
                    consumer = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                None => break,
            }
            while tasks.try_join_next().is_some() {}
        }
        drop(slots);
        while tasks.try_join_next().is_some() {}
    }
    // Let in-flight invocations finish (bounded by their timeout).
    while tasks.join_next().await.is_some() {}
}

async fn open(invoker: &Invoker, f: &DeployedFunction) -> Result<Consumer<pull::Config>, String> {
    let stream = invoker
        .bus
        .js
        .get_stream(bus::STREAM_EVENTS)
        .await
        .map_err(|e| e.to_string())?;
    let durable = bus::consumer_name(f.name.as_str());
    let config = pull::Config {
        durable_name: Some(durable.clone()),
        filter_subject: bus::invoke_subject(f.name.as_str()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: invoker.ack_wait,
        max_deliver: -1,
        max_ack_pending: (f.spec.max_instances as i64 * 4).max(64),
        description: Some(format!("evoke workers of function {}", f.name)),
        ..Default::default()
    };
    stream.create_consumer(config).await.map_err(|e| e.to_string())
}

/// Runs `work` while telling JetStream every third of the ack wait that
/// the message is still being worked on.
async fn keep_alive<F: Future>(invoker: &Invoker, msg: &Message, work: F) -> F::Output {
    tokio::pin!(work);
    let every = invoker.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = progress.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        }
    }
}

/// Processes one queued event to one of: acked after success, NAKed for a
/// retry, or acked after a successful dead-lettering. Holds `run_slot`
/// while the function runs and a settle slot while the outcome is stored.
async fn handle(
    invoker: &Invoker,
    f: &Arc<DeployedFunction>,
    msg: Message,
    run_slot: OwnedSemaphorePermit,
    settles: Arc<Semaphore>,
) {
    let (delivered, published) = match msg.info() {
        Ok(i) => (i.delivered, i.published),
        Err(e) => {
            tracing::error!(error = %e, "message without JetStream metadata");
            return;
        }
    };
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let id = header(bus::HDR_INVOCATION_ID).unwrap_or_else(super::new_invocation_id);
    // The redrive number (older evoke wrote "1" for every redrive).
    let redrive: Option<u32> = header(bus::HDR_REDRIVEN).map(|v| v.parse().unwrap_or(1));
    let age = Duration::from_secs_f64((time::OffsetDateTime::now_utc() - published).as_seconds_f64().max(0.0));

    let mut event = match Event::from_json(&msg.payload) {
        Ok(e) => e,
        Err(e) => {
            let raw = String::from_utf8_lossy(&msg.payload).into_owned();
            let mut record = Record::new(&id, f.name.as_str(), Mode::Async, "", Status::DeadLettered);
            record.push_attempt(Attempt {
                number: 1,
                started_at: Utc::now(),
                duration_ms: Some(0.0),
                start: None,
                cold_start: None,
                error: Some(AttemptError::system(format!("malformed event: {e}"))),
                node: invoker.node.clone(),
            });
            let entry = DeadLetter {
                id: id.clone(),
                function: f.name.to_string(),
                reason: format!("malformed event: {e}"),
                dead_lettered_at: Utc::now(),
                attempts: record.attempts.clone(),
                event: serde_json::json!({ "id": id, "source": "evoke", "type": "evoke.malformed", "data": raw }),
                seq: None,
            };
            drop(run_slot);
            keep_alive(invoker, &msg, settle_dead(invoker, f, &msg, &mut record, entry, None)).await;
            return;
        }
    };

    let fresh = || Record::new(&id, f.name.as_str(), Mode::Async, &event.id, Status::Queued);
    let mut record = if delivered > 1 || redrive.is_some() {
        match invoker.get_record(&id).await {
            Ok(Some(r)) => r,
            Ok(None) => fresh(),
            Err(e) => {
                // Not "no record": running now would forget the attempts
                // (and the retries) so far. A system error: try later.
                drop(run_slot);
                let reason = format!("cannot read the invocation record: {e}");
                retry_unrecorded(invoker, f, &msg, fresh(), &event, age, delivered, reason).await;
                return;
            }
        }
    } else {
        fresh()
    };
    if let Some(n) = redrive
        && record.redrives < n
    {
        // The redrive's own record write did not land: start over here.
        record.redrives = n;
        record.clear_attempts();
    }
    record.account_for_lost_attempts(u64::try_from(delivered).unwrap_or(0));

    if age > f.spec.max_event_age {
        let reason = format!(
            "the event is {} old, past the function's max_event_age of {}",
            crate::units::format_duration(Duration::from_secs(age.as_secs())),
            crate::units::format_duration(f.spec.max_event_age)
        );
        let entry = dead_letter_entry(f, &record, &event, reason);
        drop(run_slot);
        keep_alive(invoker, &msg, settle_dead(invoker, f, &msg, &mut record, entry, None)).await;
        return;
    }

    let number = record.attempt_count() + 1;
    let fn_attempt = record.function_failures() + 1;
    event
        .extensions
        // Every attempt counts here, lost and system-error ones too, so a
        // function can tell any redelivery from the first delivery.
        .insert(evoke_connectors::event::EXT_ATTEMPT.into(), number.to_string());
    let started_at = Utc::now();
    record.status = Status::Running;
    record.updated_at = started_at;
    record.push_attempt(Attempt {
        number,
        started_at,
        duration_ms: None,
        start: None,
        cold_start: None,
        error: None,
        node: invoker.node.clone(),
    });
    let run = {
        // The run slot bounds how long it may wait for an instance.
        let invoke = keep_alive(
            invoker,
            &msg,
            invoker.executor.invoke(f, &event, Duration::from_secs(600)),
        );
        tokio::pin!(invoke);
        // Most invocations end within milliseconds: only a slower one gets
        // a `running` record (one publish fewer per event). A node dying
        // before that is still accounted for by the delivery count.
        tokio::select! {
            run = &mut invoke => run,
            _ = tokio::time::sleep(RUNNING_AFTER) => {
                invoker.put_record(&record).await;
                invoke.await
            }
        }
    };
    // Results are settled beside new runs: wait for a settle slot (the
    // backpressure of slow destinations), then free the run slot.
    let settle_slot = settles.acquire_owned().await;
    drop(run_slot);
    invoker.publish_logs(f.name.as_str(), &id, &run.logs);
    invoker.observe(f, &run);
    if let Some(last) = record.attempts.last_mut() {
        *last = attempt_of(number, started_at, &run, &invoker.node);
    }
    keep_alive(
        invoker,
        &msg,
        settle(invoker, f, &msg, record, &event, &run, fn_attempt, age),
    )
    .await;
    drop(settle_slot);
}

/// Stores the outcome of a run: ack, retry, or dead letter.
#[allow(clippy::too_many_arguments)]
async fn settle(
    invoker: &Invoker,
    f: &DeployedFunction,
    msg: &Message,
    mut record: Record,
    event: &Event,
    run: &crate::executor::Run,
    fn_attempt: u32,
    age: Duration,
) {
    let id = record.id.clone();
    match &run.result {
        Ok(output) => {
            record.status = Status::Succeeded;
            finish(&mut record, run);
            if let Some(dest) = &f.spec.on_success {
                let dest_event = super::destinations::destination_event(&record, event, Some(output), None);
                if let Err(e) = invoker.deliver(dest, &dest_event).await {
                    // Not the function's fault (a destination or NATS away):
                    // a system error, so the event runs again later and its
                    // result is delivered then, until its max age; only then
                    // is it dead-lettered, with the reason.
                    if let Some(last) = record.attempts.last_mut() {
                        last.error = Some(AttemptError::system(format!(
                            "the function succeeded, but its result was not delivered: {e}"
                        )));
                    }
                    let delay = retry::system_delay(record.system_failures());
                    if age + delay > f.spec.max_event_age {
                        let entry = dead_letter_entry(f, &record, event, e);
                        settle_dead(invoker, f, msg, &mut record, entry, None).await;
                    } else {
                        invoker.metrics.retry(f.name.as_str(), "system");
                        reschedule(invoker, msg, &mut record, run, delay).await;
                    }
                    return;
                }
            }
            invoker.put_record_durable(&record).await;
            ack(msg, &id).await;
        }
        Err(InvokeError::Function { message, .. }) => {
            if fn_attempt <= f.spec.retries {
                let delay = retry::function_delay(fn_attempt);
                invoker.metrics.retry(f.name.as_str(), "function");
                reschedule(invoker, msg, &mut record, run, delay).await;
            } else {
                let reason = format!("function error on all {} attempts; last: {message}", f.spec.retries + 1);
                let entry = dead_letter_entry(f, &record, event, reason);
                finish(&mut record, run);
                settle_dead(invoker, f, msg, &mut record, entry, Some(event)).await;
            }
        }
        Err(e @ (InvokeError::System(_) | InvokeError::Busy(_) | InvokeError::Capacity(_))) => {
            let delay = retry::system_delay(record.system_failures());
            if age + delay > f.spec.max_event_age {
                let reason = format!("system error until the event's max_event_age ran out; last: {e}");
                let entry = dead_letter_entry(f, &record, event, reason);
                finish(&mut record, run);
                settle_dead(invoker, f, msg, &mut record, entry, Some(event)).await;
            } else {
                invoker.metrics.retry(f.name.as_str(), "system");
                reschedule(invoker, msg, &mut record, run, delay).await;
            }
        }
    }
}

/// A system error before the function ran, with no readable record: retry
/// later (backoff by delivery count) or, past the event's max age, dead
/// letter it with what is known.
#[allow(clippy::too_many_arguments)]
async fn retry_unrecorded(
    invoker: &Invoker,
    f: &DeployedFunction,
    msg: &Message,
    mut record: Record,
    event: &Event,
    age: Duration,
    delivered: i64,
    reason: String,
) {
    tracing::warn!(invocation = %record.id, error = %reason, "system error before running; retrying later");
    let delay = retry::system_delay(u32::try_from(delivered).unwrap_or(u32::MAX));
    if age + delay > f.spec.max_event_age {
        record.push_attempt(Attempt {
            number: u32::try_from(delivered).unwrap_or(u32::MAX),
            started_at: Utc::now(),
            duration_ms: Some(0.0),
            start: None,
            cold_start: None,
            error: Some(AttemptError::system(reason.clone())),
            node: invoker.node.clone(),
        });
        let reason = format!("system error until the event's max_event_age ran out; last: {reason}");
        let entry = dead_letter_entry(f, &record, event, reason);
        keep_alive(
            invoker,
            msg,
            settle_dead(invoker, f, msg, &mut record, entry, Some(event)),
        )
        .await;
        return;
    }
    invoker.metrics.retry(f.name.as_str(), "system");
    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(invocation = %record.id, error = %e, "cannot schedule retry");
    }
}

fn dead_letter_entry(f: &DeployedFunction, record: &Record, event: &Event, reason: String) -> DeadLetter {
    DeadLetter {
        id: record.id.clone(),
        function: f.name.to_string(),
        reason,
        dead_lettered_at: Utc::now(),
        attempts: record.attempts.clone(),
        event: event.to_value(),
        seq: None,
    }
}

/// Stores the attempt (waiting for it: the next delivery reads it) and
/// asks JetStream to redeliver after `delay`.
async fn reschedule(
    invoker: &Invoker,
    msg: &Message,
    record: &mut Record,
    run: &crate::executor::Run,
    delay: Duration,
) {
    record.status = Status::Queued;
    finish(record, run);
    invoker.put_record_durable(record).await;
    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
        // The ack deadline redelivers it anyway.
        tracing::warn!(invocation = %record.id, error = %e, "cannot schedule retry");
    }
}

/// Dead-letters an event: DLQ publish acked by JetStream, then the record,
/// the `on_failure` destination, and finally the ack of the original.
async fn settle_dead(
    invoker: &Invoker,
    f: &DeployedFunction,
    msg: &Message,
    record: &mut Record,
    entry: DeadLetter,
    request: Option<&Event>,
) {
    if let Err(e) = invoker.dead_letter(&entry, record.redrives).await {
        // Not stored: leave the event on the queue and try again later.
        tracing::error!(invocation = %record.id, error = %e, "cannot dead-letter; will retry");
        let _ = msg.ack_with(AckKind::Nak(Some(retry::system_delay(1)))).await;
        return;
    }
    record.status = Status::DeadLettered;
    record.updated_at = Utc::now();
    record.finished_at = Some(record.updated_at);
    invoker.put_record_durable(record).await;
    if let (Some(dest), Some(request)) = (&f.spec.on_failure, request) {
        let dest_event = super::destinations::destination_event(record, request, None, Some(&entry.reason));
        if let Err(e) = invoker.deliver(dest, &dest_event).await {
            // The dead letter holds the event; nothing is lost.
            tracing::warn!(invocation = %record.id, error = %e, "on_failure destination failed");
        }
    }
    ack(msg, &record.id).await;
}

async fn ack(msg: &Message, id: &str) {
    if let Err(e) = msg.ack().await {
        // Redelivered later; the function may see a duplicate (its attempt
        // number tells it so).
        tracing::warn!(invocation = id, error = %e, "ack failed");
    }
}
