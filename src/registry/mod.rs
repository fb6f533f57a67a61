//! Deployed functions and triggers: stored in KV buckets (EVOKE_FUNCTIONS,
//! EVOKE_TRIGGERS), with a live view every node keeps by watching them.

pub mod spec;
pub mod triggers;

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use spec::{Destination, FieldError, FunctionName, FunctionSpec};

use crate::executor::guest::GuestKind;

/// A function as stored: its spec plus what the deploy learned about its code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployedFunction {
    pub name: FunctionName,
    pub spec: FunctionSpec,
    /// `sha256:<hex>` of the code; the code's name in EVOKE_CODE.
    pub digest: String,
    pub code_size: u64,
    pub kind: GuestKind,
    pub deployed_at: DateTime<Utc>,
    /// The KV revision this version was stored at (not stored itself).
    #[serde(default, skip_serializing)]
    pub revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach the function registry in NATS: {0}")]
    Nats(String),
    #[error("stored spec of `{name}` cannot be read: {message}")]
    Corrupt { name: String, message: String },
}

/// What a [`Catalog`] holds: a JSON value stored under a name, tagged with
/// the KV revision it was read at.
pub trait Entry: Serialize + DeserializeOwned + Send + Sync + 'static {
    fn revision(&self) -> u64;
    fn set_revision(&mut self, revision: u64);
}

impl Entry for DeployedFunction {
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
}

/// The live set of entries, by name.
pub type View<T> = Arc<HashMap<String, Arc<T>>>;

/// The live set of functions, by name.
pub type Functions = View<DeployedFunction>;

/// Function specs in KV bucket EVOKE_FUNCTIONS.
pub type Registry = Catalog<DeployedFunction>;

/// Named entries in one KV bucket, with a live local view that every node
/// keeps by watching the bucket.
pub struct Catalog<T> {
    kv: kv::Store,
    view: watch::Sender<View<T>>,
    /// True once the view holds every entry stored when the watch began.
    loaded: watch::Sender<bool>,
}

impl<T> Clone for Catalog<T> {
    fn clone(&self) -> Self {
        Catalog {
            kv: self.kv.clone(),
            view: self.view.clone(),
            loaded: self.loaded.clone(),
        }
    }
}

pub use evoke_connectors::trigger::valid_name;

impl<T: Entry> Catalog<T> {
    pub fn new(kv: kv::Store) -> Catalog<T> {
        Catalog {
            kv,
            view: watch::Sender::new(Arc::new(HashMap::new())),
            loaded: watch::Sender::new(false),
        }
    }

    /// Waits until the live view holds every entry the bucket had when this
    /// node began watching it (at start-up the view fills entry by entry):
    /// what acts on the whole view (sources, which also read stores and
    /// connections) must not act on half of it.
    pub async fn loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|loaded| *loaded).await;
    }

    /// Subscribes to the live view (current value first).
    pub fn subscribe(&self) -> watch::Receiver<View<T>> {
        self.view.subscribe()
    }

    /// Stores a new version under `name`; returns it with its revision.
    pub async fn put(&self, name: &str, mut entry: T) -> Result<Arc<T>, RegistryError> {
        let value = serde_json::to_vec(&entry).map_err(|e| RegistryError::Nats(e.to_string()))?;
        let revision = self
            .kv
            .put(name, Bytes::from(value))
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        entry.set_revision(revision);
        let entry = Arc::new(entry);
        self.apply(name, Some(entry.clone()));
        Ok(entry)
    }

    /// Looks an entry up: the live view first, NATS if this node has not
    /// seen it yet (it may have just been written through another node).
    pub async fn get(&self, name: &str) -> Result<Option<Arc<T>>, RegistryError> {
        if let Some(f) = self.view.borrow().get(name) {
            return Ok(Some(f.clone()));
        }
        if !valid_name(name) {
            return Ok(None);
        }
        let entry = self
            .kv
            .entry(name)
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => Ok(Some(Arc::new(decode(name, &e.value, e.revision)?))),
            _ => Ok(None),
        }
    }

    /// All entries, sorted by name, read from NATS.
    pub async fn list(&self) -> Result<Vec<(String, Arc<T>)>, RegistryError> {
        let mut keys = self.kv.keys().await.map_err(|e| RegistryError::Nats(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| RegistryError::Nats(e.to_string()))?;
            if let Some(f) = self.get(&key).await? {
                out.push((key, f));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Deletes an entry; returns whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, RegistryError> {
        let existed = self.get(name).await?.is_some();
        if existed {
            self.kv
                .delete(name)
                .await
                .map_err(|e| RegistryError::Nats(e.to_string()))?;
            self.apply(name, None);
        }
        Ok(existed)
    }

    fn apply(&self, name: &str, f: Option<Arc<T>>) {
        self.view.send_if_modified(|view| {
            let current = view.get(name).map(|c| c.revision());
            match (&f, current) {
                (Some(new), Some(rev)) if new.revision() <= rev => false,
                (None, None) => false,
                _ => {
                    let mut next = HashMap::clone(view);
                    match f {
                        Some(f) => next.insert(name.to_string(), f),
                        None => next.remove(name),
                    };
                    *view = Arc::new(next);
                    true
                }
            }
        });
    }

    /// Follows the bucket forever, keeping the live view current. Runs until
    /// `shutdown` fires. After a NATS loss (a server gone, a leader change)
    /// it re-subscribes from the revision after the last one it saw, so
    /// nothing changed meanwhile is missed and nothing is read twice.
    pub async fn run_watch(self, mut shutdown: tokio::sync::broadcast::Receiver<()>) {
        let mut last: u64 = 0;
        let mut failures = 0;
        loop {
            let watch = async {
                if last == 0 {
                    self.kv.watch_with_history(">").await
                } else {
                    self.kv.watch_all_from_revision(last + 1).await
                }
            };
            // Bounded: during a leader election, creating the watch's
            // consumer can wait forever, and nothing else would notice (a
            // node kept running a deleted trigger that way).
            let mut watch = match bounded(watch).await {
                Ok(w) => w,
                Err(e) => {
                    failures += 1;
                    let delay = crate::invoker::retry::RECONNECT.delay(failures);
                    tracing::warn!(error = %e, "cannot watch the registry; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = shutdown.recv() => return,
                    }
                }
            };
            failures = 0;
            if last > 0 {
                tracing::info!(bucket = %self.bucket(), from = last + 1, "registry watch resumed");
            } else {
                match self.bucket_state().await {
                    // Nothing stored: no entry will say it is the last one.
                    Ok(s) if s.entries == 0 => {
                        self.loaded.send_replace(true);
                    }
                    Ok(_) => {}
                    // Unknown: the view could never be called loaded.
                    Err(e) => {
                        tracing::warn!(bucket = %self.bucket(), error = %e, "cannot read the registry's size; re-subscribing");
                        tokio::select! {
                            _ = tokio::time::sleep(crate::invoker::retry::RECONNECT.min) => continue,
                            _ = shutdown.recv() => return,
                        }
                    }
                }
            }
            let mut stall = tokio::time::interval(STALL_CHECK);
            stall.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut behind = Behind::default();
            loop {
                tokio::select! {
                    _ = stall.tick() => {
                        if self.stalled(last, &mut behind).await {
                            break;
                        }
                    }
                    entry = watch.next() => match entry {
                        Some(Ok(entry)) => {
                            last = last.max(entry.revision);
                            let caught_up = entry.delta == 0;
                            if entry.operation == kv::Operation::Put {
                                match decode::<T>(&entry.key, &entry.value, entry.revision) {
                                    Ok(f) => self.apply(&entry.key, Some(Arc::new(f))),
                                    Err(e) => tracing::error!(error = %e, "ignoring an unreadable registry entry"),
                                }
                            } else {
                                self.apply(&entry.key, None);
                            }
                            if caught_up && !*self.loaded.borrow() {
                                self.loaded.send_replace(true);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "registry watch failed; re-subscribing");
                            break;
                        }
                        None => {
                            tracing::warn!("registry watch ended; re-subscribing");
                            break;
                        }
                    },
                    _ = shutdown.recv() => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(crate::invoker::retry::RECONNECT.min) => {}
                _ = shutdown.recv() => return,
            }
        }
    }

    /// Whether the watch has stalled (see [`Behind`]). A watch's consumer
    /// can be lost with a server without the client noticing (a stuck
    /// re-creation during a leader election); without this check, a node
    /// would keep running a removed trigger or an old function version until
    /// restarted.
    async fn stalled(&self, last: u64, behind: &mut Behind) -> bool {
        let Ok(state) = self.bucket_state().await else {
            // The bucket cannot be read (an election, an outage): the watch
            // is not to blame; its own errors re-subscribe it.
            return false;
        };
        let stalled = behind.check(last, state.entries, state.revision);
        if stalled {
            tracing::warn!(
                bucket = %self.bucket(),
                seen = last,
                stored = state.revision,
                "registry watch stalled behind the bucket; re-subscribing"
            );
        }
        stalled
    }

    /// The bucket as its stream's leader sees it now. (async-nats's
    /// `Store::status` answers with the stream info cached when the store
    /// was opened: a stall check reading it never saw a change.)
    pub async fn bucket_state(&self) -> Result<BucketState, RegistryError> {
        let info = bounded(self.kv.stream.get_info()).await.map_err(RegistryError::Nats)?;
        Ok(BucketState {
            entries: info.state.messages,
            revision: info.state.last_sequence,
        })
    }

    fn bucket(&self) -> &str {
        &self.kv.name
    }
}

/// A registry bucket's size and newest revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Stored messages: live entries and deletion markers.
    pub entries: u64,
    /// The newest revision written.
    pub revision: u64,
}

/// How often a registry watch is checked against its bucket: a stalled
/// watch is replaced within two of these.
const STALL_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// A request to NATS given [`STALL_CHECK`] to answer (during a leader
/// election, some never do), its error as text.
async fn bounded<T, E: std::fmt::Display>(request: impl Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(STALL_CHECK, request).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {STALL_CHECK:?}")),
    }
}

/// A watch is stalled when, at two checks in a row, the bucket held a
/// revision after the newest one the watch delivered, and the watch
/// delivered nothing in between (a slow replay of a big bucket still moves).
#[derive(Default)]
struct Behind(Option<u64>);

impl Behind {
    /// One check: `last` is the newest revision delivered, `messages` and
    /// `stored` the bucket's message count and last revision.
    fn check(&mut self, last: u64, messages: u64, stored: u64) -> bool {
        if messages == 0 || stored <= last {
            self.0 = None;
            return false;
        }
        if self.0 == Some(last) {
            self.0 = None;
            return true;
        }
        self.0 = Some(last);
        false
    }
}

fn decode<T: Entry>(name: &str, value: &[u8], revision: u64) -> Result<T, RegistryError> {
    let mut f: T = serde_json::from_slice(value).map_err(|e| RegistryError::Corrupt {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    f.set_revision(revision);
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::Behind;

    #[test]
    fn a_watch_is_stalled_only_when_behind_twice_without_progress() {
        let mut b = Behind::default();
        assert!(!b.check(5, 3, 5), "caught up");
        assert!(!b.check(5, 3, 7), "behind once: maybe just in flight");
        assert!(b.check(5, 3, 7), "behind again, nothing delivered");
        assert!(!b.check(5, 3, 7), "after a re-subscribe, judged afresh");

        let mut b = Behind::default();
        assert!(!b.check(5, 3, 9));
        assert!(!b.check(8, 3, 9), "moving: a slow replay is not a stall");
        assert!(!b.check(9, 3, 9));

        let mut b = Behind::default();
        assert!(!b.check(0, 0, 4));
        assert!(!b.check(0, 0, 4), "an emptied bucket has nothing to deliver");
    }
}
