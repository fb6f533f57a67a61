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

use crate::executor::objects::ObjectBackend;
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
    /// Chain depths of objects functions wrote (KV EVOKE_CHAINS).
    chains: async_nats::jetstream::kv::Store,
    #[cfg(feature = "s3")]
    clients: Mutex<HashMap<String, (u64, evoke_connectors::aws_sdk_s3::Client)>>,
    #[cfg(not(feature = "s3"))]
    #[allow(dead_code)]
    clients: Mutex<HashMap<String, ()>>,
}

impl Stores {
    pub fn new(bus: &crate::bus::Bus, secrets: Secrets) -> Stores {
        Stores {
            registry: StoreRegistry::new(bus.stores.clone()),
            secrets,
            chains: bus.chains.clone(),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The object backend functions use: these stores (none in a build
    /// without `s3`).
    pub fn backend(self: &Arc<Self>) -> Option<Arc<dyn ObjectBackend>> {
        #[cfg(feature = "s3")]
        {
            Some(self.clone() as Arc<dyn ObjectBackend>)
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = &self.chains;
            None
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

/// Functions' object calls, on the stores' S3 clients.
#[cfg(feature = "s3")]
mod backend {
    use evoke_connectors::aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
    use evoke_connectors::aws_sdk_s3::primitives::ByteStream;
    use futures::future::BoxFuture;

    use super::Stores;
    use crate::executor::objects::{NewObject, ObjectBackend, ObjectError, ObjectInfo, ObjectResult};

    /// User metadata evoke sets on objects functions write.
    pub const META_CHAIN: &str = "evoke-chain";
    pub const META_FUNCTION: &str = "evoke-function";
    pub const META_INVOCATION: &str = "evoke-invocation";

    fn error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        e: SdkError<E, R>,
        what: &str,
    ) -> ObjectError {
        let code = match &e {
            SdkError::ServiceError(s) => s.err().code().map(str::to_string),
            _ => None,
        };
        match code.as_deref() {
            Some("NoSuchKey" | "NoSuchBucket" | "NotFound") => ObjectError::NotFound(what.to_string()),
            Some("InvalidRange") => ObjectError::Invalid(format!("the range is past the end of {what}")),
            _ => ObjectError::Store(evoke_connectors::store::describe(&e).to_string()),
        }
    }

    fn store_error(e: evoke_connectors::store::StoreError) -> ObjectError {
        match e {
            evoke_connectors::store::StoreError::Unknown(_) => ObjectError::NotFound(e.to_string()),
            other => ObjectError::Store(other.to_string()),
        }
    }

    /// Stores quote ETags (`"abc"`); evoke passes them on bare.
    fn etag(e: Option<&str>) -> Option<String> {
        e.map(|e| e.trim_matches('"').to_string())
    }

    /// What a GetObject or HeadObject answer says about `key`.
    fn info(
        key: &str,
        size: Option<i64>,
        e_tag: Option<&str>,
        content_type: Option<&str>,
        modified: Option<&evoke_connectors::aws_sdk_s3::primitives::DateTime>,
        meta: Option<&std::collections::HashMap<String, String>>,
    ) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: size.unwrap_or(0).max(0) as u64,
            etag: etag(e_tag),
            content_type: content_type.map(str::to_string),
            last_modified: time(modified),
            metadata: metadata(meta),
        }
    }

    fn time(t: Option<&evoke_connectors::aws_sdk_s3::primitives::DateTime>) -> Option<String> {
        t.and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }

    fn metadata(m: Option<&std::collections::HashMap<String, String>>) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = m
            .map(|m| m.iter().map(|(k, v)| (k.to_lowercase(), v.clone())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// User metadata travels in HTTP headers: names are tokens, values
    /// printable ASCII.
    fn check_metadata(m: &[(String, String)]) -> ObjectResult<()> {
        for (k, v) in m {
            let name_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(ObjectError::Invalid(format!(
                    "metadata name `{k}` must be letters, digits, `-` and `_`"
                )));
            }
            if k.to_lowercase().starts_with("evoke-") {
                return Err(ObjectError::Invalid(format!(
                    "metadata name `{k}` is reserved for evoke"
                )));
            }
            if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(ObjectError::Invalid(format!(
                    "metadata `{k}` must be printable ASCII (encode other text first)"
                )));
            }
        }
        Ok(())
    }

    impl ObjectBackend for Stores {
        fn get<'a>(
            &'a self,
            store: &'a str,
            bucket: &'a str,
            key: &'a str,
            range: Option<(u64, u64)>,
            max: u64,
        ) -> BoxFuture<'a, ObjectResult<(ObjectInfo, Vec<u8>)>> {
            Box::pin(async move {
                let client = self.client(store).await.map_err(store_error)?;
                let what = format!("{store}/{bucket}/{key}");
                let mut req = client.get_object().bucket(bucket).key(key);
                if let Some((offset, length)) = range {
                    let last = offset.saturating_add(length).saturating_sub(1);
                    req = req.range(format!("bytes={offset}-{last}"));
                }
                let out = req.send().await.map_err(|e| error(e, &what))?;
                let info = info(
                    key,
                    out.content_length(),
                    out.e_tag(),
                    out.content_type(),
                    out.last_modified(),
                    out.metadata(),
                );
                if info.size > max {
                    // The body is dropped unread: the connection is closed.
                    return Err(ObjectError::TooLarge(info.size));
                }
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| ObjectError::Store(format!("reading {what}: {e}")))?
                    .into_bytes();
                if body.len() as u64 > max {
                    return Err(ObjectError::TooLarge(body.len() as u64));
                }
                Ok((info, body.to_vec()))
            })
        }

        fn head<'a>(
            &'a self,
            store: &'a str,
            bucket: &'a str,
            key: &'a str,
        ) -> BoxFuture<'a, ObjectResult<ObjectInfo>> {
            Box::pin(async move {
                let client = self.client(store).await.map_err(store_error)?;
                let what = format!("{store}/{bucket}/{key}");
                let out = client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| error(e, &what))?;
                Ok(info(
                    key,
                    out.content_length(),
                    out.e_tag(),
                    out.content_type(),
                    out.last_modified(),
                    out.metadata(),
                ))
            })
        }

        fn put<'a>(
            &'a self,
            store: &'a str,
            bucket: &'a str,
            key: &'a str,
            object: NewObject,
        ) -> BoxFuture<'a, ObjectResult<ObjectInfo>> {
            Box::pin(async move {
                check_metadata(&object.metadata)?;
                let client = self.client(store).await.map_err(store_error)?;
                // The chain is noted before the object exists: its
                // notification can never overtake it.
                crate::sources::s3::KvChains::record(&self.chains, store, bucket, key, object.chain)
                    .await
                    .map_err(|e| ObjectError::Store(format!("cannot note the invocation chain in NATS: {e}")))?;
                let size = object.body.len() as u64;
                let mut req = client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(object.body))
                    .set_content_type(object.content_type.clone())
                    .metadata(META_CHAIN, object.chain.to_string())
                    .metadata(META_FUNCTION, &object.function)
                    .metadata(META_INVOCATION, &object.invocation);
                for (k, v) in &object.metadata {
                    req = req.metadata(k.to_lowercase(), v);
                }
                let what = format!("{store}/{bucket}/{key}");
                let out = req.send().await.map_err(|e| error(e, &what))?;
                let mut metadata = object.metadata;
                metadata.push((META_CHAIN.into(), object.chain.to_string()));
                Ok(ObjectInfo {
                    key: key.to_string(),
                    size,
                    etag: etag(out.e_tag()),
                    content_type: object.content_type,
                    last_modified: None,
                    metadata,
                })
            })
        }

        fn list<'a>(
            &'a self,
            store: &'a str,
            bucket: &'a str,
            prefix: &'a str,
            continuation: Option<String>,
            max_keys: u32,
        ) -> BoxFuture<'a, ObjectResult<(Vec<ObjectInfo>, Option<String>)>> {
            Box::pin(async move {
                let client = self.client(store).await.map_err(store_error)?;
                let out = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_continuation_token(continuation)
                    .max_keys(max_keys as i32)
                    .send()
                    .await
                    .map_err(|e| error(e, &format!("{store}/{bucket}")))?;
                let objects = out
                    .contents()
                    .iter()
                    .filter_map(|o| {
                        Some(ObjectInfo {
                            key: o.key()?.to_string(),
                            size: o.size().unwrap_or(0).max(0) as u64,
                            etag: etag(o.e_tag()),
                            content_type: None,
                            last_modified: time(o.last_modified()),
                            metadata: vec![],
                        })
                    })
                    .collect();
                let next = if out.is_truncated().unwrap_or(false) {
                    out.next_continuation_token().map(str::to_string)
                } else {
                    None
                };
                Ok((objects, next))
            })
        }

        fn delete<'a>(&'a self, store: &'a str, bucket: &'a str, key: &'a str) -> BoxFuture<'a, ObjectResult<()>> {
            Box::pin(async move {
                let client = self.client(store).await.map_err(store_error)?;
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| error(e, &format!("{store}/{bucket}/{key}")))
            })
        }
    }
}
