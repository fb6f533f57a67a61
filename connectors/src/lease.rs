//! Leases: at most one holder at a time, for sources that must run on one
//! node only (a bucket poller, a log tail). The holder renews its lease well
//! within its time to live; when it dies or is cut off, the lease expires
//! and another node takes over. The holder stops its work as soon as it can
//! no longer be sure it holds the lease (renewal refused, or not confirmed
//! for two thirds of the TTL), before anyone else could have taken it.
//!
//! [`run_singleton`] is the one loop every such source uses; the store is
//! NATS KV in evoke (`EVOKE_LEASES`, with the TTL as the bucket's max age).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The lease store did not answer (the holder cannot tell whether it still
/// holds its lease).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("lease store unavailable: {0}")]
pub struct LeaseError(pub String);

/// Where leases live. A token identifies one holding (a KV revision).
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes `key` for `holder` if nobody holds it: `Some(token)`, or `None`
    /// when it is held.
    fn acquire(&self, key: &str, holder: &str) -> impl Future<Output = Result<Option<u64>, LeaseError>> + Send;
    /// Renews a holding: `Some(new token)`, or `None` when it was lost.
    fn renew(
        &self,
        key: &str,
        holder: &str,
        token: u64,
    ) -> impl Future<Output = Result<Option<u64>, LeaseError>> + Send;
    /// Gives a holding up (best effort: it expires anyway).
    fn release(&self, key: &str, token: u64) -> impl Future<Output = ()> + Send;
}

/// Runs `work` while this node holds lease `key`, as `holder`, until `stop`
/// becomes true. `work` gets its own stop signal, set when the lease is lost
/// (and awaited before anything else happens); it is started again when the
/// lease is taken again. `ttl` must be the store's time to live.
pub async fn run_singleton<L, F, Fut>(
    leases: Arc<L>,
    key: String,
    holder: String,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
    mut work: F,
) where
    L: LeaseStore,
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let every = ttl / 3;
    loop {
        if *stop.borrow() {
            return;
        }
        let taken = match leases.acquire(&key, &holder).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(lease = %key, error = %e, "cannot ask for the lease");
                None
            }
        };
        let Some(mut token) = taken else {
            tokio::select! {
                _ = tokio::time::sleep(every) => continue,
                _ = stop.changed() => return,
            }
        };
        tracing::info!(lease = %key, holder = %holder, "lease taken; starting");
        let (work_stop, work_rx) = watch::channel(false);
        let mut task = AbortOnDrop(tokio::spawn(work(work_rx)));
        let mut confirmed = Instant::now();
        let stopping = loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => break true,
            }
            match leases.renew(&key, &holder, token).await {
                Ok(Some(t)) => {
                    token = t;
                    confirmed = Instant::now();
                }
                Ok(None) => {
                    tracing::warn!(lease = %key, "lease lost to another node; stopping");
                    break false;
                }
                Err(e) if confirmed.elapsed() >= ttl * 2 / 3 => {
                    tracing::warn!(lease = %key, error = %e, "lease not confirmed in time; stopping");
                    break false;
                }
                Err(e) => tracing::debug!(lease = %key, error = %e, "lease renewal failed; retrying"),
            }
        };
        let _ = work_stop.send(true);
        let _ = (&mut task.0).await;
        if stopping {
            leases.release(&key, token).await;
            return;
        }
    }
}

/// The work of a holder: aborted if the loop holding its lease is dropped
/// (its node is stopping hard), so it never runs without a lease.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Leases in memory, with the TTL checked against tokio's clock.
#[derive(Default)]
pub struct MemoryLeases {
    held: std::sync::Mutex<std::collections::HashMap<String, (String, u64, Instant)>>,
    next: std::sync::atomic::AtomicU64,
    /// When set, every call fails (the store is unreachable).
    pub down: std::sync::atomic::AtomicBool,
    ttl: Duration,
}

impl MemoryLeases {
    pub fn new(ttl: Duration) -> MemoryLeases {
        MemoryLeases {
            ttl,
            next: std::sync::atomic::AtomicU64::new(1),
            ..Default::default()
        }
    }

    /// Who holds `key` now.
    pub fn holder(&self, key: &str) -> Option<String> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key)
            .filter(|(_, _, at)| at.elapsed() < self.ttl)
            .map(|(h, _, _)| h.clone())
    }

    fn check(&self) -> Result<(), LeaseError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(LeaseError("unreachable (test)".into()))
        } else {
            Ok(())
        }
    }
}

impl LeaseStore for MemoryLeases {
    async fn acquire(&self, key: &str, holder: &str) -> Result<Option<u64>, LeaseError> {
        self.check()?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.get(key).is_some_and(|(_, _, at)| at.elapsed() < self.ttl) {
            return Ok(None);
        }
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        held.insert(key.into(), (holder.into(), token, Instant::now()));
        Ok(Some(token))
    }

    async fn renew(&self, key: &str, holder: &str, token: u64) -> Result<Option<u64>, LeaseError> {
        self.check()?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.get(key) {
            Some((h, t, at)) if h == holder && *t == token && at.elapsed() < self.ttl => {
                let token = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.insert(key.into(), (holder.into(), token, Instant::now()));
                Ok(Some(token))
            }
            _ => Ok(None),
        }
    }

    async fn release(&self, key: &str, token: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.get(key).is_some_and(|(_, t, _)| *t == token) {
            held.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const TTL: Duration = Duration::from_secs(9);

    /// Starts a contender that counts how often its work runs and whether
    /// it is running now.
    fn contender(
        leases: &Arc<MemoryLeases>,
        name: &str,
        running: Arc<AtomicU32>,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let (leases, name) = (leases.clone(), name.to_string());
        let task = tokio::spawn(async move {
            run_singleton(leases, "poller".into(), name, TTL, rx, move |mut stop| {
                let running = running.clone();
                async move {
                    running.fetch_add(1, Ordering::SeqCst);
                    let _ = stop.wait_for(|s| *s).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .await
        });
        (tx, task)
    }

    #[tokio::test(start_paused = true)]
    async fn one_holder_at_a_time_and_a_takeover_when_it_stops() {
        let leases = Arc::new(MemoryLeases::new(TTL));
        let (a_runs, b_runs) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (stop_a, task_a) = contender(&leases, "a", a_runs.clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (stop_b, task_b) = contender(&leases, "b", b_runs.clone());
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(
                a_runs.load(Ordering::SeqCst) + b_runs.load(Ordering::SeqCst),
                1,
                "exactly one runs"
            );
        }
        assert_eq!(leases.holder("poller").as_deref(), Some("a"));
        stop_a.send(true).unwrap();
        task_a.await.unwrap();
        tokio::time::sleep(TTL).await;
        assert_eq!(b_runs.load(Ordering::SeqCst), 1, "b took over");
        assert_eq!(leases.holder("poller").as_deref(), Some("b"));
        stop_b.send(true).unwrap();
        task_b.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_cut_off_stops_before_its_lease_could_pass_on() {
        let leases = Arc::new(MemoryLeases::new(TTL));
        let runs = Arc::new(AtomicU32::new(0));
        let (_stop, _task) = contender(&leases, "a", runs.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        leases.down.store(true, Ordering::SeqCst);
        // Within the TTL the work stops: nobody else may hold it yet.
        tokio::time::sleep(TTL - Duration::from_millis(100)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "still running while its lease may have expired"
        );
        leases.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(TTL * 2).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "runs again once the store is back");
    }
}
