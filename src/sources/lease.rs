//! Leases in NATS KV (bucket EVOKE_LEASES, whose max age is the lease TTL):
//! taken with a create (fails if held), renewed with a compare-and-set on
//! the revision (fails if someone else took it), and gone by themselves
//! when the holder stops renewing. See `evoke_connectors::lease`.

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;
use evoke_connectors::lease::{LeaseError, LeaseStore};

pub struct KvLeases {
    kv: kv::Store,
}

impl KvLeases {
    pub fn new(kv: kv::Store) -> KvLeases {
        KvLeases { kv }
    }
}

impl LeaseStore for KvLeases {
    async fn acquire(&self, key: &str, holder: &str) -> Result<Option<u64>, LeaseError> {
        match self.kv.create(key, Bytes::from(holder.to_string())).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(LeaseError(e.to_string())),
        }
    }

    async fn renew(&self, key: &str, holder: &str, token: u64) -> Result<Option<u64>, LeaseError> {
        match self.kv.update(key, Bytes::from(holder.to_string()), token).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(LeaseError(e.to_string())),
        }
    }

    async fn release(&self, key: &str, token: u64) {
        if let Err(e) = self.kv.delete_expect_revision(key, Some(token)).await {
            tracing::debug!(lease = key, error = %e, "lease not released (it expires anyway)");
        }
    }
}
