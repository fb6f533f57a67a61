//! Object stores on a node: their specs (KV bucket EVOKE_STORES, from
//! `[stores.NAME]`), the S3 clients built from them (one per store,
//! rebuilt when the spec changes), and the reachability check
//! `evoke stores` and `evoke triggers` show.
//!
//! Credentials are read from the environment variables a store names, on
//! the node using it; they are never stored in NATS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use evoke_connectors::store::{StoreConfig, StoreError};
use serde::{Deserialize, Serialize};

use crate::registry::{Catalog, Entry, RegistryError};
use crate::secrets::Secrets;

/// A store as kept in KV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredStore {
    pub name: String,
    pub config: StoreConfig,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing)]
    pub revision: u64,
}

impl Entry for StoredStore {
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
}

pub type StoreRegistry = Catalog<StoredStore>;

/// How long a reachability check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The stores of the cluster, and this node's clients for them.
pub struct Stores {
    pub registry: StoreRegistry,
    pub secrets: Secrets,
    #[cfg(feature = "s3")]
    clients: Mutex<HashMap<String, (u64, evoke_connectors::aws_sdk_s3::Client)>>,
    #[cfg(not(feature = "s3"))]
    #[allow(dead_code)]
    clients: Mutex<HashMap<String, ()>>,
}

impl Stores {
    pub fn new(registry: StoreRegistry, secrets: Secrets) -> Stores {
        Stores {
            registry,
            secrets,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The store named `name`.
    pub async fn get(&self, name: &str) -> Result<Arc<StoredStore>, StoreError> {
        match self.registry.get(name).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(StoreError::Unknown(name.to_string())),
            Err(RegistryError::Nats(e)) => Err(StoreError::Unreachable(format!("NATS: {e}"))),
            Err(e) => Err(StoreError::Refused(e.to_string())),
        }
    }

    /// An S3 client for store `name` (built once per version of its spec).
    #[cfg(feature = "s3")]
    pub async fn client(&self, name: &str) -> Result<evoke_connectors::aws_sdk_s3::Client, StoreError> {
        let store = self.get(name).await?;
        if let Some((rev, c)) = self.lock().get(name)
            && *rev == store.revision
        {
            return Ok(c.clone());
        }
        let client = evoke_connectors::store::s3_client(&store.config, |n| self.secrets.get(n)).await?;
        self.lock().insert(name.to_string(), (store.revision, client.clone()));
        Ok(client)
    }

    #[cfg(feature = "s3")]
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, evoke_connectors::aws_sdk_s3::Client)>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether store `name` answers with the credentials this node has:
    /// with a bucket, that the bucket exists and may be read; without, that
    /// the store accepts the credentials at all.
    pub async fn check(&self, name: &str, bucket: Option<&str>) -> Result<(), StoreError> {
        #[cfg(feature = "s3")]
        {
            let client = self.client(name).await?;
            let probe = async {
                match bucket {
                    Some(b) => client
                        .head_bucket()
                        .bucket(b)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| bucket_error(b, evoke_connectors::store::describe(&e))),
                    None => match client.list_buckets().max_buckets(1).send().await {
                        Ok(_) => Ok(()),
                        // Reached and authenticated, only not allowed to list.
                        Err(e) => match evoke_connectors::store::describe(&e) {
                            StoreError::Refused(m) if m.starts_with("AccessDenied") => Ok(()),
                            other => Err(other),
                        },
                    },
                }
            };
            match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unreachable(format!(
                    "no answer within {}s",
                    CHECK_TIMEOUT.as_secs()
                ))),
            }
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = (name, bucket);
            Err(StoreError::NotBuilt)
        }
    }
}

/// HeadBucket answers without a body: its bare status codes get a message.
#[cfg(feature = "s3")]
fn bucket_error(bucket: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Refused(m) if m.starts_with("NotFound") || m == "Error" => StoreError::Refused(format!(
            "bucket `{bucket}` does not exist (or is not visible to these credentials)"
        )),
        other => other,
    }
}
