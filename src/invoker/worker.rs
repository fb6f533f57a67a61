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
//! Long invocations send progress acks so a slow function is not redelivered
//! elsewhere; a node that dies mid-invocation simply stops acking, and the
//! event is redelivered after the ack wait.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{AckKind, Message};
use chrono::Utc;
use evoke_connectors::Event;
use futures::StreamExt;
use tokio::sync::{Semaphore, broadcast, watch};
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
        for (name, revision) in reconcile(&mut running, &live) {
            let Some(f) = current.get(&name) else { continue };
            let (invoker, f) = (invoker.clone(), f.clone());
            running.insert(name, Supervised::spawn(revision, |stop| consume(invoker, f, stop)));
        }
        invoker.executor.retain(&live);
        for f in current.values() {
            if f.spec.reserved > 0 {
                let invoker = invoker.clone();
                let f = f.clone();
                tokio::spawn(async move {
                    if let Err(e) = invoker.executor.prewarm(&f).await {
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

async fn consume(invoker: Arc<Invoker>, f: Arc<DeployedFunction>, mut stop: watch::Receiver<bool>) {
    let name = f.name.to_string();
    let permits = Arc::new(Semaphore::new(f.spec.max_instances as usize));
    let mut tasks = JoinSet::new();
    let mut failures = 0u32;
    'outer: loop {
        if *stop.borrow() {
            break;
        }
        let messages = match open(&invoker, &f).await {
            Ok(m) => {
                failures = 0;
                m
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
        };
        tokio::pin!(messages);
        loop {
            // Take a slot before pulling, so no message waits in memory while
            // its ack deadline runs.
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'outer },
                _ = stop.changed() => break 'outer,
            };
            let next = tokio::select! {
                m = messages.next() => m,
                _ = stop.changed() => break 'outer,
            };
            match next {
                Some(Ok(msg)) => {
                    let invoker = invoker.clone();
                    let f = f.clone();
                    tasks.spawn(async move {
                        handle(&invoker, &f, msg).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(function = %name, error = %e, "consumer hiccup");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => break,
            }
            while tasks.try_join_next().is_some() {}
        }
    }
    // Let in-flight invocations finish (bounded by their timeout).
    while tasks.join_next().await.is_some() {}
}

async fn open(invoker: &Invoker, f: &DeployedFunction) -> Result<pull::Stream, String> {
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
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> =
        stream.create_consumer(config).await.map_err(|e| e.to_string())?;
    consumer
        .stream()
        .max_messages_per_batch(f.spec.max_instances as usize)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Processes one queued event to one of: acked after success, NAKed for a
/// retry, or acked after a successful dead-lettering.
async fn handle(invoker: &Invoker, f: &Arc<DeployedFunction>, msg: Message) {
    let info = match msg.info() {
        Ok(i) => (i.delivered, i.published),
        Err(e) => {
            tracing::error!(error = %e, "message without JetStream metadata");
            return;
        }
    };
    let (delivered, published) = info;
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let id = header(bus::HDR_INVOCATION_ID).unwrap_or_else(super::new_invocation_id);
    let redriven = header(bus::HDR_REDRIVEN).is_some();
    let age = Duration::from_secs_f64((time::OffsetDateTime::now_utc() - published).as_seconds_f64().max(0.0));

    let mut event = match Event::from_json(&msg.payload) {
        Ok(e) => e,
        Err(e) => {
            let raw = String::from_utf8_lossy(&msg.payload).into_owned();
            let mut record = Record::new(&id, f.name.as_str(), Mode::Async, "", Status::DeadLettered);
            record.attempts.push(Attempt {
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
            settle_dead(invoker, f, &msg, &mut record, entry, None).await;
            return;
        }
    };

    let mut record = if delivered > 1 || redriven {
        match invoker.get_record(&id).await {
            Ok(Some(r)) => r,
            _ => Record::new(&id, f.name.as_str(), Mode::Async, &event.id, Status::Queued),
        }
    } else {
        Record::new(&id, f.name.as_str(), Mode::Async, &event.id, Status::Queued)
    };
    record.account_for_lost_attempts(delivered as u64);

    if age > f.spec.max_event_age {
        let reason = format!(
            "the event is {} old, past the function's max_event_age of {}",
            crate::units::format_duration(Duration::from_secs(age.as_secs())),
            crate::units::format_duration(f.spec.max_event_age)
        );
        let entry = dead_letter_entry(f, &record, &event, reason);
        settle_dead(invoker, f, &msg, &mut record, entry, None).await;
        return;
    }

    let number = record.attempts.len() as u32 + 1;
    let fn_attempt = record.function_failures() + 1;
    event
        .extensions
        // Every attempt counts here, lost and system-error ones too, so a
        // function can tell any redelivery from the first delivery.
        .insert(evoke_connectors::event::EXT_ATTEMPT.into(), number.to_string());
    let started_at = Utc::now();
    record.status = Status::Running;
    record.updated_at = started_at;
    record.attempts.push(Attempt {
        number,
        started_at,
        duration_ms: None,
        start: None,
        cold_start: None,
        error: None,
        node: invoker.node.clone(),
    });
    let run = {
        let invoke = invoker.executor.invoke(f, &event, Duration::from_secs(600));
        tokio::pin!(invoke);
        // Tell JetStream the invocation is alive well before the ack wait
        // runs out, so a slow function is not redelivered elsewhere.
        let every = invoker.ack_wait / 3;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // Most invocations end within milliseconds: only a slower one gets
        // a `running` record (one publish fewer per event). A node dying
        // before that is still accounted for by the delivery count.
        let running_after = tokio::time::sleep(RUNNING_AFTER);
        tokio::pin!(running_after);
        let mut running_written = false;
        loop {
            tokio::select! {
                run = &mut invoke => break run,
                _ = &mut running_after, if !running_written => {
                    running_written = true;
                    invoker.put_record(&record).await;
                }
                _ = progress.tick() => {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(invocation = %id, error = %e, "progress ack failed");
                    }
                }
            }
        }
    };
    invoker.publish_logs(f.name.as_str(), &id, &run.logs);
    invoker.observe(f, &run);
    record.attempts.pop();
    record
        .attempts
        .push(attempt_of(number, started_at, &run, &invoker.node));

    match &run.result {
        Ok(output) => {
            record.status = Status::Succeeded;
            finish(&mut record, &run);
            if let Some(dest) = &f.spec.on_success {
                let dest_event = super::destinations::destination_event(&record, &event, Some(output), None);
                if let Err(e) = invoker.deliver(dest, &dest_event).await {
                    // The function ran; keep its result rather than lose it.
                    let entry = dead_letter_entry(f, &record, &event, e);
                    settle_dead(invoker, f, &msg, &mut record, entry, None).await;
                    return;
                }
            }
            invoker.put_record_durable(&record).await;
            ack(&msg, &id).await;
        }
        Err(InvokeError::Function { message, .. }) => {
            if fn_attempt <= f.spec.retries {
                let delay = retry::function_delay(fn_attempt);
                invoker.metrics.retry(f.name.as_str(), "function");
                reschedule(invoker, &msg, &mut record, &run, delay).await;
            } else {
                let reason = format!("function error on all {} attempts; last: {message}", f.spec.retries + 1);
                let entry = dead_letter_entry(f, &record, &event, reason);
                finish(&mut record, &run);
                settle_dead(invoker, f, &msg, &mut record, entry, Some(&event)).await;
            }
        }
        Err(e @ (InvokeError::System(_) | InvokeError::Busy(_))) => {
            let delay = retry::system_delay(record.system_failures());
            if age + delay > f.spec.max_event_age {
                let reason = format!("system error until the event's max_event_age ran out; last: {e}");
                let entry = dead_letter_entry(f, &record, &event, reason);
                finish(&mut record, &run);
                settle_dead(invoker, f, &msg, &mut record, entry, Some(&event)).await;
            } else {
                invoker.metrics.retry(f.name.as_str(), "system");
                reschedule(invoker, &msg, &mut record, &run, delay).await;
            }
        }
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
