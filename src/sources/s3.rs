//! Running `kind = "s3"` triggers on a node: the SQS reader (every node
//! with sources reads; SQS hands each message to one), the poller (one node
//! at a time, under a lease), the chain lookup of the recursion guard, and
//! backfill. Notifications by webhook are served by the API
//! (`/hooks/<trigger>`). The source logic itself is in
//! `evoke_connectors::s3`.

#[cfg(feature = "s3")]
use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use evoke_connectors::s3::Chains;
#[cfg(feature = "s3")]
use evoke_connectors::s3::S3Trigger;
use sha2::{Digest, Sha256};

/// Chain depths of objects written by functions, in KV EVOKE_CHAINS.
#[derive(Clone)]
pub struct KvChains {
    kv: kv::Store,
    store: String,
}

impl KvChains {
    pub fn new(kv: kv::Store, store: &str) -> KvChains {
        KvChains {
            kv,
            store: store.to_string(),
        }
    }

    /// The KV key of an object (keys may hold any character: hashed).
    pub fn key(store: &str, bucket: &str, key: &str) -> String {
        let mut h = Sha256::new();
        for part in [store, bucket, key] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..20])
    }

    /// Notes that a function at chain depth `depth` wrote `bucket/key`.
    pub async fn record(kv: &kv::Store, store: &str, bucket: &str, key: &str, depth: u32) -> Result<(), String> {
        kv.put(Self::key(store, bucket, key), Bytes::from(depth.to_string()))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Chains for KvChains {
    async fn depth(&self, bucket: &str, key: &str) -> u32 {
        match self.kv.get(Self::key(&self.store, bucket, key)).await {
            Ok(Some(v)) => std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
            Ok(None) => 0,
            Err(e) => {
                // Unknown depth: run it (a missed guard costs one more
                // round; a refused upload would lose an event).
                tracing::warn!(error = %e, "cannot read the recursion guard; treating the object as written from outside");
                0
            }
        }
    }
}

/// Everything a running s3 source task needs.
#[cfg(feature = "s3")]
pub struct Task {
    pub invoker: Arc<crate::invoker::Invoker>,
    pub trigger: S3Trigger,
    pub since: chrono::DateTime<chrono::Utc>,
}

#[cfg(feature = "s3")]
impl Task {
    fn sink(&self) -> Arc<super::NatsSink> {
        Arc::new(super::NatsSink::new(self.invoker.clone()))
    }

    fn state(&self) -> Arc<super::KvState> {
        Arc::new(super::KvState::new(self.invoker.bus.state.clone()))
    }

    fn chains(&self) -> Arc<KvChains> {
        Arc::new(KvChains::new(
            self.invoker.bus.chains.clone(),
            &self.trigger.config.store,
        ))
    }

    /// Waits until the store gives a client (it may be created after the
    /// trigger), or stop.
    async fn client<C, F>(&self, stop: &mut tokio::sync::watch::Receiver<bool>, make: impl Fn() -> F) -> Option<C>
    where
        F: Future<Output = Result<C, evoke_connectors::store::StoreError>>,
    {
        let mut delays = evoke_connectors::backoff::RECONNECT.delays();
        let mut repeats = evoke_connectors::backoff::Repeats::default();
        loop {
            match make().await {
                Ok(c) => return Some(c),
                Err(e) => {
                    let delay = delays.next().unwrap_or(evoke_connectors::backoff::RECONNECT.max);
                    let error = e.to_string();
                    if repeats.worth_warning(&error, std::time::Instant::now()) {
                        let remind = evoke_connectors::backoff::REMIND_EVERY.as_secs() / 60;
                        tracing::warn!(trigger = self.trigger.name, %error, "the trigger's store is not usable; retrying in {delay:?} (the same error again is logged at debug level, and warned every {remind} minutes)");
                    } else {
                        tracing::debug!(trigger = self.trigger.name, %error, "the trigger's store is still not usable; retrying in {delay:?}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return None,
                    }
                }
            }
        }
    }

    /// Reads the trigger's SQS queue until stopped.
    pub async fn read_sqs(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let stores = self.invoker.stores.clone();
        let (store, queue) = (
            self.trigger.config.store.clone(),
            self.trigger.config.queue_url.clone().unwrap_or_default(),
        );
        let make = || {
            let (stores, store, queue) = (stores.clone(), store.clone(), queue.clone());
            async move {
                let s = stores.get(&store).await?;
                evoke_connectors::store::sqs_client(&s.config, &queue, |n| stores.secrets.get(n)).await
            }
        };
        let Some(client) = self.client(&mut stop, make).await else {
            return;
        };
        let reader = evoke_connectors::s3::sqs::Reader {
            sink: self.sink(),
            state: self.state(),
            chains: self.chains(),
            trigger: self.trigger,
            client,
        };
        reader.run(stop).await
    }

    /// Polls the trigger's bucket while this node holds its lease.
    pub async fn poll(self, stop: tokio::sync::watch::Receiver<bool>) {
        let key = format!("s3poll.{}", self.trigger.name);
        let task = Arc::new(self);
        super::singleton(task.invoker.clone(), key, stop, move |mut stop| {
            let task = task.clone();
            async move {
                let stores = task.invoker.stores.clone();
                let store = task.trigger.config.store.clone();
                let make = || {
                    let (stores, store) = (stores.clone(), store.clone());
                    async move { stores.client(&store).await }
                };
                let Some(client) = task.client(&mut stop, make).await else {
                    return;
                };
                let poller = evoke_connectors::s3::poll::Poller {
                    sink: task.sink(),
                    state: task.state(),
                    chains: task.chains(),
                    trigger: task.trigger.clone(),
                    since: task.since,
                    client,
                };
                poller.run(stop).await
            }
        })
        .await
    }
}
