//! Committing settled events — each event's outcome record stored (its
//! JetStream ack awaited), and only then the event acked — and storing
//! log batches, for many events at once.
//!
//! Workers finish events one at a time; had each published its own record,
//! ack and logs, every one would leave in its own socket write (and wake
//! nats-server for it). The committer gathers what is ready, publishes it
//! back to back, and acks each event as its record's ack arrives, so the
//! writes of a burst of events leave together.

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

/// The most messages published in one round.
const ROUND: usize = 256;

/// What happens once a message is stored.
enum Then {
    /// Ack the event with this ack subject, then tell the worker.
    Ack(Subject, oneshot::Sender<Result<(), String>>),
    /// Nothing; a failure is logged as not storing `what`.
    Log(&'static str),
}

/// One message to store.
struct Job {
    subject: String,
    payload: Bytes,
    then: Then,
}

/// A handle on the node's committer task.
pub(super) struct Committer {
    tx: mpsc::UnboundedSender<Job>,
}

const STOPPING: &str = "the node is stopping";

impl Committer {
    /// Starts the committer task; it ends when the handle is dropped and
    /// the messages under way are stored.
    pub fn start(js: jetstream::Context, client: Client) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(js, client, rx));
        Committer { tx }
    }

    /// Stores `record` at `subject`, then acks the event whose ack subject
    /// is `ack`. An error means the record was not stored (nor the event
    /// acked): the caller retries the record its own way.
    pub async fn commit(&self, subject: String, record: Bytes, ack: Subject) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        let job = Job {
            subject,
            payload: record,
            then: Then::Ack(ack, done),
        };
        self.tx.send(job).map_err(|_| STOPPING.to_string())?;
        result.await.map_err(|_| STOPPING.to_string())?
    }

    /// Stores `payload` at `subject` without waiting; a failure is logged
    /// as "cannot store {what}".
    pub fn store(&self, subject: String, payload: Bytes, what: &'static str) {
        let job = Job {
            subject,
            payload,
            then: Then::Log(what),
        };
        if self.tx.send(job).is_err() {
            tracing::warn!("cannot store {what}: {STOPPING}");
        }
    }
}

async fn run(js: jetstream::Context, client: Client, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut round: Vec<Job> = Vec::with_capacity(ROUND);
    let mut storing = FuturesUnordered::new();
    let mut open = true;
    let stored =
        |ack: PublishAckFuture, then: Then| async move { (ack.await.map(drop).map_err(|e| e.to_string()), then) };
    loop {
        tokio::select! {
            n = rx.recv_many(&mut round, ROUND), if open => {
                if n == 0 {
                    open = false;
                    continue;
                }
                // Let the workers that are ready add theirs to this round.
                tokio::task::yield_now().await;
                while round.len() < ROUND && let Ok(job) = rx.try_recv() {
                    round.push(job);
                }
                for Job { subject, payload, then } in round.drain(..) {
                    match js.publish(subject, payload).await {
                        Ok(ack) => storing.push(stored(ack, then)),
                        Err(e) => settled(&client, Err(e.to_string()), then).await,
                    }
                }
            }
            Some((result, then)) = storing.next(), if !storing.is_empty() => settled(&client, result, then).await,
            else => break,
        }
    }
}

/// Acks an event whose record was stored, and tells its worker; or logs a
/// message that was not stored.
async fn settled(client: &Client, result: Result<(), String>, then: Then) {
    match then {
        Then::Ack(ack, done) => {
            if result.is_ok()
                && let Err(e) = client.publish(ack, Bytes::new()).await
            {
                // Redelivered later; its stored record says it is settled,
                // so it is acked then without running again.
                tracing::warn!(error = %e, "ack failed");
            }
            let _ = done.send(result);
        }
        Then::Log(what) => {
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot store {what}");
            }
        }
    }
}
