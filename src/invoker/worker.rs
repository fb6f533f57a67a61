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

use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::{AckKind, Message};
use evoke_connectors::Event;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinSet;

use super::records::{Mode, Record, Status};
use super::settle::Settling;
use super::{Invoker, retry};
use crate::bus;
use crate::executor::Run;
use crate::registry::{DeployedFunction, Functions};
use crate::supervise::{Stopping, Supervised, reconcile, stop_all};

/// How long an invocation runs before its record says `running`.
pub const RUNNING_AFTER: Duration = Duration::from_millis(100);

/// How long JetStream waits for an ack before redelivering.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

/// How long a function's workers wait with no event before they stop
/// pulling (by default; [`Invoker::worker_idle`]).
pub const IDLE_AFTER: Duration = Duration::from_secs(30);

/// How often workers look for queued events of functions no wake reached
/// (by default; [`Invoker::worker_sweep`]).
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A consume task with nothing to do asking to be stopped: granted unless
/// its function was woken since `wakes` (the count it had seen when it
/// found the queue empty).
struct Sleepy {
    function: String,
    revision: u64,
    wakes: u64,
}

/// Runs consumers for the deployed functions that have events until
/// shutdown: started when a function is woken (an event was queued for it:
/// [`Invoker::queue_event`]) or a sweep finds events for it, stopped when
/// they have been idle for [`Invoker::worker_idle`] with none left,
/// restarted on a new revision. A function never invoked costs no task,
/// no pull and no consumer. Functions with reserved instances are always
/// consumed.
pub async fn run(
    invoker: Arc<Invoker>,
    wake_up: async_nats::Subscriber,
    mut functions: watch::Receiver<Functions>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let mut running: HashMap<String, Supervised> = HashMap::new();
    // A new revision's consumer starts at once: the old one's in-flight
    // invocations finish beside it (one durable consumer, no overlap).
    let mut stopping = Stopping::new();
    let mut current = functions.borrow_and_update().clone();
    // Functions with events, and how often each was woken (a consume task
    // watches its count: a wake after it found its queue empty keeps it).
    // A wake may come before this node's registry has the function (it was
    // deployed a moment ago): kept for a while, by when it was woken.
    let mut awake: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut wakes: HashMap<String, watch::Sender<u64>> = HashMap::new();
    let (sleepy_tx, mut sleepy_rx) = mpsc::unbounded_channel::<Sleepy>();
    let (found_tx, mut found) = mpsc::channel::<Vec<String>>(1);
    let sweeper = tokio::spawn(sweep(invoker.clone(), found_tx));
    let mut wake_up = wake_up.fuse();
    let mut changed = true;
    // Reserved functions are always consumed.
    let mut reserved: Vec<String> = Vec::new();
    loop {
        if changed {
            reserved = current
                .iter()
                .filter(|(_, f)| f.spec.reserved > 0)
                .map(|(n, _)| n.clone())
                .collect();
            let live: HashMap<String, u64> = current.iter().map(|(n, f)| (n.clone(), f.revision)).collect();
            invoker.executor.retain(&live);
            let now = tokio::time::Instant::now();
            awake.retain(|n, at| live.contains_key(n) || now.duration_since(*at) < UNKNOWN_WAKE_KEPT);
            wakes.retain(|n, _| live.contains_key(n) || awake.contains_key(n));
        }
        let desired: HashMap<String, u64> = reserved
            .iter()
            .chain(awake.keys())
            .filter_map(|n| current.get(n).map(|f| (n.clone(), f.revision)))
            .collect();
        for (name, revision) in reconcile(&mut running, &mut stopping, &desired) {
            let Some(f) = current.get(&name) else { continue };
            let (inv, fc) = (invoker.clone(), f.clone());
            let idle = Idle {
                wakes: wakes
                    .entry(name.clone())
                    .or_insert_with(|| watch::channel(0).0)
                    .subscribe(),
                sleepy: sleepy_tx.clone(),
            };
            running.insert(name, Supervised::spawn(revision, |stop| consume(inv, fc, stop, idle)));
            // Only new or changed functions are prewarmed (reserved ones
            // are always consumed); the executor runs one prewarm per
            // function at a time.
            if f.spec.reserved > 0 {
                let (inv, f) = (invoker.clone(), f.clone());
                tokio::spawn(async move {
                    if let Err(e) = inv.executor.prewarm(&f).await {
                        tracing::warn!(function = %f.name, error = %e, "cannot start reserved instances");
                    }
                });
            }
        }
        changed = false;
        tokio::select! {
            c = functions.changed() => {
                if c.is_err() {
                    break;
                }
                current = functions.borrow_and_update().clone();
                changed = true;
            }
            _ = shutdown.recv() => break,
            Some(msg) = wake_up.next() => {
                if let Some(name) = bus::function_in(&msg.subject, bus::SUBJECT_WAKE) {
                    woken(name, &mut wakes, &mut awake);
                }
            }
            Some(names) = found.recv() => {
                for name in names {
                    woken(&name, &mut wakes, &mut awake);
                }
            }
            Some(s) = sleepy_rx.recv() => {
                let same_task = running.get(&s.function).is_some_and(|t| t.revision() == s.revision);
                let not_woken = wakes.get(&s.function).is_none_or(|w| *w.borrow() == s.wakes);
                if same_task && not_woken {
                    awake.remove(&s.function);
                }
            }
        }
    }
    sweeper.abort();
    stop_all(running).await;
}

/// How long a wake for a function this node does not know is kept (its
/// registry may not have caught up with a deploy yet).
const UNKNOWN_WAKE_KEPT: Duration = Duration::from_secs(60);

/// Counts a wake of `name` and marks it awake.
fn woken(
    name: &str,
    wakes: &mut HashMap<String, watch::Sender<u64>>,
    awake: &mut HashMap<String, tokio::time::Instant>,
) {
    wakes
        .entry(name.to_string())
        .or_insert_with(|| watch::channel(0).0)
        .send_modify(|n| *n += 1);
    awake.insert(name.to_string(), tokio::time::Instant::now());
}

/// Finds functions with queued events (from their consumers: one request
/// per 256) at start, every [`Invoker::worker_sweep`] and after NATS came
/// back (wakes sent meanwhile were lost), and sends their names to `found`.
async fn sweep(invoker: Arc<Invoker>, found: mpsc::Sender<Vec<String>>) {
    let mut every = tokio::time::interval(invoker.worker_sweep);
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut was_connected = true;
    let mut failures = 0u32;
    loop {
        match invoker.bus.queue_depths().await {
            Ok(depths) => {
                failures = 0;
                let names = depths.into_iter().filter(|(_, n)| *n > 0).map(|(f, _)| f).collect();
                if found.send(names).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                failures += 1;
                let delay = retry::RECONNECT.delay(failures);
                tracing::warn!(error = %e, "cannot look for queued events; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        every.reset();
        loop {
            tokio::select! {
                _ = every.tick() => break,
                _ = check.tick() => {
                    let connected = invoker.bus.connected();
                    let back = connected && !was_connected;
                    was_connected = connected;
                    if back {
                        break;
                    }
                }
            }
        }
    }
}

/// How a consume task goes to sleep: it watches its function's wake count
/// and asks the supervisor to stop it.
struct Idle {
    wakes: watch::Receiver<u64>,
    sleepy: mpsc::UnboundedSender<Sleepy>,
}

/// The most messages a consumer may have unacknowledged: room for every
/// run slot and settle slot.
pub(crate) fn max_ack_pending(f: &DeployedFunction) -> i64 {
    (f.spec.max_instances as i64 * 4).max(64)
}

/// Settle slots of one function's consumer: results being recorded,
/// delivered or dead-lettered while new events run.
fn settle_slots(f: &DeployedFunction) -> usize {
    (f.spec.max_instances as usize * 4).max(16)
}

/// Pull requests one consumer keeps in flight at most.
const MAX_PULLS: usize = 4;

/// How long freed run slots wait to be asked for together while other pull
/// requests are in flight (one request per freed slot would cost a server
/// round trip per event).
const GATHER: Duration = Duration::from_micros(500);

/// The messages of one pull request, each paired with the run slot it was
/// asked for; the slots of messages that never came are freed when the
/// request ends.
type Pull = futures::stream::Zip<futures::stream::Iter<std::vec::IntoIter<OwnedSemaphorePermit>>, pull::Batch>;

async fn consume(invoker: Arc<Invoker>, f: Arc<DeployedFunction>, mut stop: watch::Receiver<bool>, mut idle: Idle) {
    let name = f.name.to_string();
    // With no event for `worker_idle`, no more pulls are asked for; once
    // the last has ended and the queue is empty, the task asks to sleep.
    let always = f.spec.reserved > 0;
    let idle_after = invoker.worker_idle;
    let expires = PULL_EXPIRES.min(idle_after).max(Duration::from_millis(100));
    let mut quiet_since = tokio::time::Instant::now();
    let mut asked = false;
    let mut wakes_open = true;
    let max_runs = f.spec.max_instances as usize;
    let runs = Arc::new(Semaphore::new(max_runs));
    let settles = Arc::new(Semaphore::new(settle_slots(&f)));
    // Freed slots are asked for in groups of this many (or after GATHER).
    let group = (max_runs / MAX_PULLS).max(1);
    let mut tasks = JoinSet::new();
    let mut consumer: Option<Consumer<pull::Config>> = None;
    let mut opened_before = false;
    let mut failures = 0u32;
    // Pull requests in flight, and free run slots not yet asked for.
    let mut pulls: futures::stream::SelectAll<Pull> = futures::stream::SelectAll::new();
    let mut free: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut ask_by: Option<tokio::time::Instant> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        // Borrowed, not cloned: a consumer's clone copies its info (a map
        // among it), once per message.
        let c = match &consumer {
            Some(c) => c,
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
                    consumer.insert(c)
                }
                Err(e) => {
                    failures += 1;
                    let delay = retry::RECONNECT.delay(failures);
                    tracing::warn!(function = %name, error = %e, "cannot open the event consumer; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = stop.changed() => break,
                    }
                }
            },
        };
        let mut resting = !always && quiet_since.elapsed() >= idle_after;
        if resting && !asked && pulls.is_empty() {
            // Nothing pulled for a while and no pull left: sleep if the
            // queue is empty (retries waiting count as not empty).
            let seen = *idle.wakes.borrow_and_update();
            match c.clone().info().await {
                Ok(i) if i.num_pending == 0 && i.num_ack_pending == 0 => {
                    asked = idle
                        .sleepy
                        .send(Sleepy {
                            function: name.clone(),
                            revision: f.revision,
                            wakes: seen,
                        })
                        .is_ok();
                }
                _ => {
                    quiet_since = tokio::time::Instant::now();
                    resting = false;
                }
            }
        }
        // Ask for as many messages as there are free slots: every message
        // pulled has a slot waiting for it. With nothing in flight at once;
        // beside other requests, once a group has gathered or waited enough.
        let due = pulls.is_empty() || free.len() >= group || ask_by.is_some_and(|t| t <= tokio::time::Instant::now());
        if !resting && !free.is_empty() && due && pulls.len() < MAX_PULLS {
            while let Ok(p) = runs.clone().try_acquire_owned() {
                free.push(p);
            }
            let slots = std::mem::take(&mut free);
            ask_by = None;
            match c.batch().max_messages(slots.len()).expires(expires).messages().await {
                Ok(batch) => pulls.push(futures::stream::iter(slots).zip(batch)),
                Err(e) => {
                    tracing::debug!(function = %name, error = %e, "pull request failed; reopening the consumer");
                    consumer = None;
                    drop(slots);
                    tokio::select! {
                        _ = tokio::time::sleep(retry::RECONNECT.min) => continue,
                        _ = stop.changed() => break,
                    }
                }
            }
        }
        let ask_timer = async {
            match ask_by {
                Some(t) if !free.is_empty() && !resting => tokio::time::sleep_until(t).await,
                _ => std::future::pending().await,
            }
        };
        let rest_timer = async {
            if always || resting {
                std::future::pending().await
            } else {
                tokio::time::sleep_until(quiet_since + idle_after).await
            }
        };
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            next = pulls.next(), if !pulls.is_empty() => match next {
                Some((slot, Ok(msg))) => {
                    quiet_since = tokio::time::Instant::now();
                    let (invoker, f, settles) = (invoker.clone(), f.clone(), settles.clone());
                    // Boxed: the task moves a pointer, not the whole future.
                    tasks.spawn(Box::pin(async move { handle(&invoker, &f, msg, slot, settles).await }));
                }
                Some((_, Err(e))) => {
                    tracing::debug!(function = %name, error = %e, "consumer hiccup; reopening the consumer");
                    consumer = None;
                    // Every request in flight goes with it (their slots too).
                    pulls = futures::stream::SelectAll::new();
                    tokio::select! {
                        _ = tokio::time::sleep(retry::RECONNECT.min) => {}
                        _ = stop.changed() => break,
                    }
                }
                None => {}
            },
            p = runs.clone().acquire_owned() => match p {
                Ok(p) => {
                    free.push(p);
                    ask_by.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
                }
                Err(_) => break,
            },
            _ = ask_timer => {}
            _ = rest_timer => {}
            w = idle.wakes.changed(), if wakes_open => {
                // New events: stay awake.
                wakes_open = w.is_ok();
                quiet_since = tokio::time::Instant::now();
                asked = false;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    // Slots not used; requests in flight end with them.
    drop(pulls);
    drop(free);
    // Let in-flight invocations finish (bounded by their timeout).
    while tasks.join_next().await.is_some() {}
}

async fn open(invoker: &Invoker, f: &DeployedFunction) -> Result<Consumer<pull::Config>, String> {
    invoker
        .bus
        .function_consumer(f.name.as_str(), invoker.ack_wait, max_ack_pending(f))
        .await
        .map_err(|e| e.to_string())
}

/// Runs `work` while telling JetStream every third of the ack wait that
/// the message is still being worked on.
async fn keep_alive<F: Future>(invoker: &Invoker, msg: &Message, work: F) -> F::Output {
    tokio::pin!(work);
    let every = invoker.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        // The work first: most of it ends on its first poll, and then the
        // timer is never registered (a poll of `tick` would).
        tokio::select! {
            biased;
            out = &mut work => return out,
            _ = progress.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        }
    }
}

/// What a queued message says about its invocation.
struct Delivery {
    id: String,
    /// JetStream's delivery count (1 on the first).
    delivered: i64,
    /// The redrive number, when `dlq redrive` put it back.
    redrive: Option<u32>,
    age: Duration,
}

impl Delivery {
    fn of(msg: &Message) -> Option<Delivery> {
        let info = match msg.info() {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "message without JetStream metadata");
                return None;
            }
        };
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        Some(Delivery {
            // The subject's last token; older evoke put it in a header.
            id: bus::invocation_in(msg.subject.as_str())
                .map(str::to_string)
                .or_else(|| header(bus::HDR_INVOCATION_ID))
                .unwrap_or_else(super::new_invocation_id),
            delivered: info.delivered,
            // Older evoke wrote "1" for every redrive.
            redrive: header(bus::HDR_REDRIVEN).map(|v| v.parse().unwrap_or(1)),
            age: Duration::from_secs_f64(
                (time::OffsetDateTime::now_utc() - info.published)
                    .as_seconds_f64()
                    .max(0.0),
            ),
        })
    }
}

/// Processes one queued event to one of: acked after success, NAKed for a
/// retry, or acked after a successful dead-lettering. Holds `run_slot`
/// while the function runs and a settle slot while the outcome is stored.
/// Its larger steps (running, settling: destinations and dead letters) are
/// boxed, so the task spawned per event is small to move.
async fn handle(
    invoker: &Invoker,
    f: &Arc<DeployedFunction>,
    msg: Message,
    run_slot: OwnedSemaphorePermit,
    settles: Arc<Semaphore>,
) {
    let Some(d) = Delivery::of(&msg) else { return };
    let settling = Settling {
        invoker,
        f,
        msg: &msg,
        age: d.age,
    };
    let mut event = match Event::from_json(&msg.payload) {
        Ok(e) => e,
        Err(e) => {
            drop(run_slot);
            keep_alive(invoker, &msg, Box::pin(settling.malformed(&d.id, e.to_string()))).await;
            return;
        }
    };
    let mut record = match record_of(invoker, f, &d, &event).await {
        Ok(r) => r,
        Err(reason) => {
            drop(run_slot);
            let fresh = Record::new(&d.id, f.name.as_str(), Mode::Async, &event.id, Status::Queued);
            Box::pin(settling.unrecorded(fresh, &event, d.delivered, reason)).await;
            return;
        }
    };
    if record.is_settled() {
        // Its outcome was stored, and only the ack was lost (NATS away, a
        // node gone between the two): running it again would be a duplicate.
        drop(run_slot);
        tracing::info!(invocation = %d.id, status = ?record.status, "redelivered after its outcome was stored; acked without running");
        super::settle::ack(&msg, &d.id).await;
        return;
    }
    if d.age > f.spec.max_event_age {
        drop(run_slot);
        keep_alive(invoker, &msg, Box::pin(settling.expired(record, &event))).await;
        return;
    }

    let fn_attempt = record.function_failures() + 1;
    let started = record.start_attempt(&invoker.node);
    // Every attempt counts here, lost and system-error ones too, so a
    // function can tell any redelivery from the first delivery.
    event
        .extensions
        .insert(evoke_connectors::event::EXT_ATTEMPT.into(), started.number.to_string());
    let run = super::batches::judge(&event, run_alive(invoker, f, &msg, &event, &record).await);
    // Results are settled beside new runs: wait for a settle slot (the
    // backpressure of slow destinations), then free the run slot.
    let settle_slot = settles.acquire_owned().await;
    drop(run_slot);
    invoker.publish_logs(f.name.as_str(), &d.id, &run.logs);
    invoker.observe(f, &run);
    record.end_attempt(started, &run, &invoker.node);
    keep_alive(invoker, &msg, settling.ran(record, &event, &run, fn_attempt)).await;
    drop(settle_slot);
}

/// The invocation's record: read back on a redelivery or a redrive (a read
/// that fails is a system error, never "no record": that would forget the
/// attempts and retries so far), with lost attempts accounted for.
async fn record_of(invoker: &Invoker, f: &DeployedFunction, d: &Delivery, event: &Event) -> Result<Record, String> {
    let fresh = || {
        let mut r = Record::new(&d.id, f.name.as_str(), Mode::Async, &event.id, Status::Queued);
        // Created when it was queued (its first record is written only now).
        r.created_at -= chrono::Duration::from_std(d.age).unwrap_or_default();
        r
    };
    let mut record = if d.delivered > 1 || d.redrive.is_some() {
        invoker
            .get_record(&d.id)
            .await
            .map_err(|e| format!("cannot read the invocation record: {e}"))?
            .unwrap_or_else(fresh)
    } else {
        fresh()
    };
    if let Some(n) = d.redrive
        && record.redrives < n
    {
        // The redrive's own record write did not land: start over here.
        record.redrive(n);
    }
    record.account_for_lost_attempts(u64::try_from(d.delivered).unwrap_or(0));
    Ok(record)
}

/// Runs the event, telling JetStream it is alive; an invocation past
/// [`RUNNING_AFTER`] gets a `running` record (most end sooner: one publish
/// fewer per event, and a node dying before that is still accounted for by
/// the delivery count).
async fn run_alive(invoker: &Invoker, f: &Arc<DeployedFunction>, msg: &Message, event: &Event, record: &Record) -> Run {
    // The run slot bounds how long it may wait for an instance.
    let invoke = keep_alive(
        invoker,
        msg,
        Box::pin(invoker.executor.invoke(f, &record.id, event, Duration::from_secs(600))),
    );
    tokio::pin!(invoke);
    tokio::select! {
        // As in `keep_alive`: a run that ends at once registers no timer.
        biased;
        run = &mut invoke => run,
        _ = tokio::time::sleep(RUNNING_AFTER) => {
            invoker.put_record(record).await;
            invoke.await
        }
    }
}
