//! Deployed functions: their specs, stored in KV bucket EVOKE_FUNCTIONS, and
//! a live view of them that every node keeps by watching the bucket.

pub mod spec;

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
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

/// The live set of functions, by name.
pub type Functions = Arc<HashMap<String, Arc<DeployedFunction>>>;

/// Reads and writes function specs, and keeps a watched local view.
#[derive(Clone)]
pub struct Registry {
    kv: kv::Store,
    view: watch::Sender<Functions>,
}

impl Registry {
    pub fn new(kv: kv::Store) -> Registry {
        Registry {
            kv,
            view: watch::Sender::new(Arc::new(HashMap::new())),
        }
    }

    /// Subscribes to the live view (current value first).
    pub fn subscribe(&self) -> watch::Receiver<Functions> {
        self.view.subscribe()
    }

    /// Stores a new version; returns it with its revision.
    pub async fn put(&self, mut f: DeployedFunction) -> Result<Arc<DeployedFunction>, RegistryError> {
        let value = serde_json::to_vec(&f).map_err(|e| RegistryError::Nats(e.to_string()))?;
        let revision = self
            .kv
            .put(f.name.as_str(), Bytes::from(value))
            .await
            .map_err(|e| RegistryError::Nats(e.to_string()))?;
        f.revision = revision;
        let f = Arc::new(f);
        self.apply(f.name.as_str(), Some(f.clone()));
        Ok(f)
    }

    /// Looks a function up: the live view first, NATS if this node has not
    /// seen it yet (it may have just been deployed through another node).
    pub async fn get(&self, name: &str) -> Result<Option<Arc<DeployedFunction>>, RegistryError> {
        if let Some(f) = self.view.borrow().get(name) {
            return Ok(Some(f.clone()));
        }
        if name.parse::<FunctionName>().is_err() {
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

    /// All functions, sorted by name, read from NATS.
    pub async fn list(&self) -> Result<Vec<Arc<DeployedFunction>>, RegistryError> {
        let mut keys = self.kv.keys().await.map_err(|e| RegistryError::Nats(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| RegistryError::Nats(e.to_string()))?;
            if let Some(f) = self.get(&key).await? {
                out.push(f);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a function; returns whether it existed.
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

    fn apply(&self, name: &str, f: Option<Arc<DeployedFunction>>) {
        self.view.send_if_modified(|view| {
            let current = view.get(name).map(|c| c.revision);
            match (&f, current) {
                (Some(new), Some(rev)) if new.revision <= rev => false,
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
    /// `shutdown` fires; on a NATS hiccup it re-subscribes.
    pub async fn run_watch(self, mut shutdown: tokio::sync::broadcast::Receiver<()>) {
        loop {
            let mut watch = match self.kv.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch functions; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        _ = shutdown.recv() => return,
                    }
                }
            };
            loop {
                tokio::select! {
                    entry = watch.next() => match entry {
                        Some(Ok(entry)) => {
                            if entry.operation == kv::Operation::Put {
                                match decode(&entry.key, &entry.value, entry.revision) {
                                    Ok(f) => self.apply(&entry.key, Some(Arc::new(f))),
                                    Err(e) => tracing::error!(error = %e, "ignoring unreadable function spec"),
                                }
                            } else {
                                self.apply(&entry.key, None);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "function watch failed; re-subscribing");
                            break;
                        }
                        None => break,
                    },
                    _ = shutdown.recv() => return,
                }
            }
        }
    }
}

fn decode(name: &str, value: &[u8], revision: u64) -> Result<DeployedFunction, RegistryError> {
    let mut f: DeployedFunction = serde_json::from_slice(value).map_err(|e| RegistryError::Corrupt {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    f.revision = revision;
    Ok(f)
}
