//! Committing settled events — each event's outcome record stored (its
//! JetStream ack awaited), and only then the event acked — and storing
//! log batches, for many events at once.
//!
//! Workers finish events one at a time; had each published its own record,
//! ack and logs, every one would leave in its own socket write (and wake
//! nats-server for it). The committer gathers what is ready, publishes it
//! back to back, and acks each event as its record's ack arrives, so the
//! writes of a burst of events leave together. Log batches of one round
//! for the same subject share a message (newline-separated JSON), so a
//! burst of invocations that log stores a few messages, not one each.

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

/// The most messages published in one round.
const ROUND: usize = 256;

/// The largest message joined payloads make (well under NATS's 1 MiB
/// default `max_payload`); a payload alone larger than this is stored alone.
const JOINED_MAX: usize = 256 << 10;

/// What happens once a message is stored.
enum Then {
    /// Ack the event with this ack subject, then tell the worker.
    Ack(Subject, oneshot::Sender<Result<(), String>>),
    /// Nothing; a failure is logged as not storing `what`. Payloads of a
    /// round with the same subject are joined, a newline between each.
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

    /// Stores `payload` (one JSON value) at `subject` without waiting,
    /// maybe in one message with others of the same subject, a newline
    /// between each (readers take a message as a sequence of JSON values);
    /// a failure is logged as "cannot store {what}".
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
                for Job { subject, payload, then } in join(&mut round) {
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

/// The messages of a round, in order, with the payloads of `Then::Log`
/// jobs joined per subject (up to [`JOINED_MAX`] bytes a message); drains
/// `round`.
fn join(round: &mut Vec<Job>) -> Vec<Job> {
    let mut out: Vec<Job> = Vec::with_capacity(round.len());
    // Per subject, the message being filled (an index into `out`) and what
    // joined it so far (empty until a second payload comes).
    let mut open: Vec<(usize, Vec<u8>)> = Vec::new();
    for job in round.drain(..) {
        let Then::Log(_) = job.then else {
            out.push(job);
            continue;
        };
        let size = |i: usize, buf: &Vec<u8>| {
            if buf.is_empty() {
                out[i].payload.len()
            } else {
                buf.len()
            }
        };
        let filling = open
            .iter_mut()
            .find(|(i, buf)| out[*i].subject == job.subject && size(*i, buf) + 1 + job.payload.len() <= JOINED_MAX);
        match filling {
            Some((i, buf)) => {
                if buf.is_empty() {
                    buf.extend_from_slice(&out[*i].payload);
                }
                buf.push(b'\n');
                buf.extend_from_slice(&job.payload);
            }
            None => {
                // The first of its subject, or too big to join the one
                // being filled: that one is closed, this one opened.
                if let Some(at) = open.iter().position(|(i, _)| out[*i].subject == job.subject) {
                    let (i, buf) = open.swap_remove(at);
                    close(&mut out[i], buf);
                }
                open.push((out.len(), Vec::new()));
                out.push(job);
            }
        }
    }
    for (i, buf) in open {
        close(&mut out[i], buf);
    }
    out
}

/// Gives a joined message its payload (when anything joined it).
fn close(job: &mut Job, joined: Vec<u8>) {
    if !joined.is_empty() {
        job.payload = Bytes::from(joined);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn log(subject: &str, payload: &[u8]) -> Job {
        Job {
            subject: subject.into(),
            payload: Bytes::copy_from_slice(payload),
            then: Then::Log("logs"),
        }
    }

    #[test]
    fn log_payloads_of_a_round_join_per_subject_and_records_stay_alone() {
        let (done, _) = oneshot::channel();
        let record = Job {
            subject: "r.1".into(),
            payload: Bytes::from_static(b"{}"),
            then: Then::Ack(Subject::from("ack"), done),
        };
        let big = vec![b'x'; JOINED_MAX - 2];
        let mut round = vec![
            log("l.a", b"1"),
            record,
            log("l.b", b"2"),
            log("l.a", b"3"),
            log("l.a", &big),
            log("l.a", b"4"),
        ];
        let out = join(&mut round);
        assert!(round.is_empty());
        let shown: Vec<(&str, usize)> = out.iter().map(|j| (j.subject.as_str(), j.payload.len())).collect();
        assert_eq!(
            shown,
            [("l.a", 3), ("r.1", 2), ("l.b", 1), ("l.a", JOINED_MAX - 2 + 2)],
            "the big one could not join the first; the next joined it"
        );
        assert_eq!(&out[0].payload[..], b"1\n3");
        assert!(out[3].payload.ends_with(b"x\n4"));
    }
}
