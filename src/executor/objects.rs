//! Object access for functions (`evoke:function/objects` in `wit/`): the
//! grants check, the limits, and the calls into a store backend.
//!
//! A function may touch only the buckets its spec grants
//! (`grants = { buckets = ["local/photos:read", "local/thumbs:write"] }`);
//! any other call fails with `denied` and a warning in the function's log.
//! Every call ends by the invocation's deadline (it counts toward the
//! timeout, and is cancelled with the invocation). A whole-object read is
//! refused with `too-large` beyond what the function's memory has left,
//! before anything is copied into the guest. Objects a function writes are
//! tagged with the invocation chain, which the s3 source reads back (the
//! recursion guard).
//!
//! The backend (S3 clients per store) lives in `crate::stores`; without the
//! `s3` feature there is none and every call fails with `store`.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::bindings::evoke::function::objects as wit;
use super::sandbox::ComponentState;
use crate::observe::logs::LogLevel;
use crate::registry::spec::{Access, BucketGrant};

/// What a store says about an object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub last_modified: Option<String>,
    pub metadata: Vec<(String, String)>,
}

/// Why an object call failed (the WIT `error`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObjectError {
    #[error("denied: {0}")]
    Denied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the object is {0} bytes, more than this read may return")]
    TooLarge(u64),
    #[error("store error: {0}")]
    Store(String),
    #[error("the invocation's time ran out")]
    Timeout,
    #[error("invalid: {0}")]
    Invalid(String),
}

/// An object being written.
#[derive(Debug, Clone)]
pub struct NewObject {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub metadata: Vec<(String, String)>,
    /// The chain depth of the object: one more than the writing invocation's.
    pub chain: u32,
    pub function: String,
    pub invocation: String,
}

pub type ObjectResult<T> = Result<T, ObjectError>;

/// Where object calls go: the stores of the cluster.
pub trait ObjectBackend: Send + Sync + 'static {
    /// Reads `bucket/key` (a range `(offset, length)` of it), refusing with
    /// `TooLarge` when the answer would be more than `max` bytes.
    fn get<'a>(
        &'a self,
        store: &'a str,
        bucket: &'a str,
        key: &'a str,
        range: Option<(u64, u64)>,
        max: u64,
    ) -> BoxFuture<'a, ObjectResult<(ObjectInfo, Vec<u8>)>>;
    fn head<'a>(&'a self, store: &'a str, bucket: &'a str, key: &'a str) -> BoxFuture<'a, ObjectResult<ObjectInfo>>;
    fn put<'a>(
        &'a self,
        store: &'a str,
        bucket: &'a str,
        key: &'a str,
        object: NewObject,
    ) -> BoxFuture<'a, ObjectResult<ObjectInfo>>;
    fn list<'a>(
        &'a self,
        store: &'a str,
        bucket: &'a str,
        prefix: &'a str,
        continuation: Option<String>,
        max_keys: u32,
    ) -> BoxFuture<'a, ObjectResult<(Vec<ObjectInfo>, Option<String>)>>;
    fn delete<'a>(&'a self, store: &'a str, bucket: &'a str, key: &'a str) -> BoxFuture<'a, ObjectResult<()>>;
}

/// The object access of one instance: the backend, the function's grants,
/// and who is calling now (set before each invocation).
#[derive(Clone, Default)]
pub struct ObjectAccess {
    pub backend: Option<Arc<dyn ObjectBackend>>,
    pub grants: Vec<BucketGrant>,
    pub function: String,
    /// The current invocation, and how deep in a chain of functions writing
    /// objects it is (the event's `evokechain`).
    pub invocation: String,
    pub chain: u32,
}

/// Largest page a listing returns.
pub const MAX_KEYS: u32 = 1000;

impl ObjectAccess {
    /// Starts an invocation: its id, and its place in a chain of functions
    /// writing objects (the event's `evokechain`; 0 when absent).
    pub fn begin(&mut self, invocation: &str, event: &evoke_connectors::Event) {
        self.invocation = invocation.to_string();
        self.chain = event
            .extensions
            .get(evoke_connectors::s3::EXT_CHAIN)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
    }

    /// Whether the grants allow `access` to `store/bucket`.
    fn check(&self, store: &str, bucket: &str, access: Access) -> ObjectResult<()> {
        if self.grants.iter().any(|g| g.allows(store, bucket, access)) {
            return Ok(());
        }
        let what = match access {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read-write",
        };
        Err(ObjectError::Denied(format!(
            "function `{}` may not {what} {store}/{bucket}; add \"{store}/{bucket}:{what}\" to its grants.buckets",
            self.function
        )))
    }
}

fn wit_info(i: ObjectInfo) -> wit::ObjectInfo {
    wit::ObjectInfo {
        key: i.key,
        size: i.size,
        etag: i.etag,
        content_type: i.content_type,
        last_modified: i.last_modified,
        metadata: i.metadata,
    }
}

fn wit_error(e: ObjectError) -> wit::Error {
    match e {
        ObjectError::Denied(m) => wit::Error::Denied(m),
        ObjectError::NotFound(m) => wit::Error::NotFound(m),
        ObjectError::TooLarge(n) => wit::Error::TooLarge(n),
        ObjectError::Store(m) => wit::Error::Store(m),
        ObjectError::Timeout => wit::Error::Timeout,
        ObjectError::Invalid(m) => wit::Error::Invalid(m),
    }
}

impl ComponentState {
    /// Checks a call against the grants and returns the backend with the
    /// invocation's deadline; a refusal is logged to the function's log.
    fn allowed(
        &mut self,
        call: &str,
        store: &str,
        bucket: &str,
        access: Access,
    ) -> Result<(Arc<dyn ObjectBackend>, tokio::time::Instant), wit::Error> {
        let checked = self.objects.check(store, bucket, access).and_then(|()| {
            self.objects
                .backend
                .clone()
                .ok_or_else(|| ObjectError::Store("this node has no object storage (built without `s3`)".into()))
        });
        match checked {
            Ok(backend) => Ok((backend, tokio::time::Instant::from_std(self.sandbox.deadline))),
            Err(e) => self.outcome(call, store, bucket, Some(Err(e))),
        }
    }

    /// The result of a call bounded by the deadline (`None`: it ran out).
    fn outcome<T>(
        &mut self,
        call: &str,
        store: &str,
        bucket: &str,
        result: Option<ObjectResult<T>>,
    ) -> Result<T, wit::Error> {
        let result = result.unwrap_or(Err(ObjectError::Timeout));
        if let Err(e @ (ObjectError::Denied(_) | ObjectError::Timeout)) = &result {
            self.sandbox.logs.push(
                LogLevel::Warn,
                "evoke",
                format!("objects.{call}({store}/{bucket}): {e}"),
            );
        }
        result.map_err(wit_error)
    }
}

/// Runs `f` until `deadline`; `None` when the deadline came first.
async fn bounded<T>(
    deadline: tokio::time::Instant,
    f: impl Future<Output = ObjectResult<T>>,
) -> Option<ObjectResult<T>> {
    tokio::time::timeout_at(deadline, f).await.ok()
}

fn key_ok(key: &str) -> ObjectResult<()> {
    if key.is_empty() || key.len() > 1024 {
        return Err(ObjectError::Invalid("a key must be 1 to 1024 bytes".into()));
    }
    Ok(())
}

impl wit::Host for ComponentState {
    async fn get(
        &mut self,
        store: String,
        bucket: String,
        key: String,
        max_bytes: Option<u64>,
    ) -> Result<(wit::ObjectInfo, Vec<u8>), wit::Error> {
        // What the guest can still take into its memory.
        let room = self.sandbox.limiter.available();
        let max = max_bytes.unwrap_or(u64::MAX).min(room);
        let (b, deadline) = self.allowed("get", &store, &bucket, Access::Read)?;
        let r = bounded(deadline, async {
            key_ok(&key)?;
            b.get(&store, &bucket, &key, None, max).await
        })
        .await;
        self.outcome("get", &store, &bucket, r)
            .map(|(i, body)| (wit_info(i), body))
    }

    async fn get_range(
        &mut self,
        store: String,
        bucket: String,
        key: String,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, wit::Error> {
        let room = self.sandbox.limiter.available();
        let (b, deadline) = self.allowed("get-range", &store, &bucket, Access::Read)?;
        let r = bounded(deadline, async {
            key_ok(&key)?;
            if length == 0 {
                return Err(ObjectError::Invalid("a range must be at least 1 byte".into()));
            }
            if length > room {
                return Err(ObjectError::TooLarge(length));
            }
            b.get(&store, &bucket, &key, Some((offset, length)), length)
                .await
                .map(|(_, body)| body)
        })
        .await;
        self.outcome("get-range", &store, &bucket, r)
    }

    async fn head(&mut self, store: String, bucket: String, key: String) -> Result<wit::ObjectInfo, wit::Error> {
        let (b, deadline) = self.allowed("head", &store, &bucket, Access::Read)?;
        let r = bounded(deadline, async {
            key_ok(&key)?;
            b.head(&store, &bucket, &key).await
        })
        .await;
        self.outcome("head", &store, &bucket, r).map(wit_info)
    }

    async fn put(
        &mut self,
        store: String,
        bucket: String,
        key: String,
        body: Vec<u8>,
        content_type: Option<String>,
        metadata: Vec<(String, String)>,
    ) -> Result<wit::ObjectInfo, wit::Error> {
        let object = NewObject {
            body,
            content_type,
            metadata,
            chain: self.objects.chain.saturating_add(1),
            function: self.objects.function.clone(),
            invocation: self.objects.invocation.clone(),
        };
        let (b, deadline) = self.allowed("put", &store, &bucket, Access::Write)?;
        let r = bounded(deadline, async {
            key_ok(&key)?;
            b.put(&store, &bucket, &key, object).await
        })
        .await;
        self.outcome("put", &store, &bucket, r).map(wit_info)
    }

    async fn list(
        &mut self,
        store: String,
        bucket: String,
        prefix: String,
        continuation: Option<String>,
        max_keys: u32,
    ) -> Result<wit::Listing, wit::Error> {
        let (b, deadline) = self.allowed("list", &store, &bucket, Access::Read)?;
        let r = bounded(
            deadline,
            b.list(&store, &bucket, &prefix, continuation, max_keys.clamp(1, MAX_KEYS)),
        )
        .await;
        self.outcome("list", &store, &bucket, r)
            .map(|(objects, next)| wit::Listing {
                objects: objects.into_iter().map(wit_info).collect(),
                next,
            })
    }

    async fn delete(&mut self, store: String, bucket: String, key: String) -> Result<(), wit::Error> {
        let (b, deadline) = self.allowed("delete", &store, &bucket, Access::Write)?;
        let r = bounded(deadline, async {
            key_ok(&key)?;
            b.delete(&store, &bucket, &key).await
        })
        .await;
        self.outcome("delete", &store, &bucket, r)
    }
}
