//! Committing settled events: each event's outcome record is stored (its
//! JetStream ack awaited), and only then is the event acked — for many
//! events at once.
//!
//! Workers finish events one at a time; had each published its own record
//! and ack, every one would leave in its own socket write (and wake
//! nats-server for it). The committer gathers what is ready, publishes
//! those records back to back, and acks each event as its record's ack
//! arrives, so the writes of a burst of events leave together.

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

/// The most commits handled in one round.
const ROUND: usize = 256;

/// One event to commit: its record, where to store it, and the event's
/// ack subject.
struct Commit {
    subject: String,
    record: Bytes,
    ack: Subject,
    done: oneshot::Sender<Result<(), String>>,
}

/// A handle on the node's committer task.
pub(super) struct Committer {
    tx: mpsc::UnboundedSender<Commit>,
}

impl Committer {
    /// Starts the committer task; it ends when the handle is dropped and
    /// the commits under way are done.
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
        let commit = Commit {
            subject,
            record,
            ack,
            done,
        };
        self.tx.send(commit).map_err(|_| STOPPING.to_string())?;
        result.await.map_err(|_| STOPPING.to_string())?
    }
}

const STOPPING: &str = "the node is stopping";

async fn run(js: jetstream::Context, client: Client, mut rx: mpsc::UnboundedReceiver<Commit>) {
    let mut round: Vec<Commit> = Vec::with_capacity(ROUND);
    let mut storing = FuturesUnordered::new();
    let mut open = true;
    let stored = |ack: PublishAckFuture, event: Subject, done: oneshot::Sender<Result<(), String>>| async move {
        (ack.await.map(drop).map_err(|e| e.to_string()), event, done)
    };
    loop {
        tokio::select! {
            n = rx.recv_many(&mut round, ROUND), if open => {
                if n == 0 {
                    open = false;
                    continue;
                }
                // Let the workers that are ready add theirs to this round.
                tokio::task::yield_now().await;
                while round.len() < ROUND && let Ok(c) = rx.try_recv() {
                    round.push(c);
                }
                for Commit { subject, record, ack, done } in round.drain(..) {
                    match js.publish(subject, record).await {
                        Ok(stored_ack) => storing.push(stored(stored_ack, ack, done)),
                        Err(e) => {
                            let _ = done.send(Err(e.to_string()));
                        }
                    }
                }
            }
            Some((result, ack, done)) = storing.next(), if !storing.is_empty() => {
                if result.is_ok()
                    && let Err(e) = client.publish(ack, Bytes::new()).await
                {
                    // Redelivered later; its stored record says it is
                    // settled, so it is acked then without running again.
                    tracing::warn!(error = %e, "ack failed");
                }
                let _ = done.send(result);
            }
            else => break,
        }
    }
}
