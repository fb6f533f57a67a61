//! Tasks that follow a watched set of named, versioned specs: one task per
//! name, restarted when its revision changes, stopped when it goes away.
//! Workers (one consumer per function) and sources (one task per cron
//! trigger) both use this.

use std::collections::HashMap;
use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A task with a stop signal. Dropped without a graceful stop (the node was
/// killed), it aborts the task: nothing more is acknowledged.
pub struct Supervised {
    revision: u64,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Supervised {
    /// Spawns `start(stop)`; the task should return once `stop` becomes true.
    pub fn spawn<F>(revision: u64, start: impl FnOnce(watch::Receiver<bool>) -> F) -> Supervised
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, rx) = watch::channel(false);
        Supervised {
            revision,
            stop,
            task: Some(tokio::spawn(start(rx))),
        }
    }

    /// Asks the task to stop and lets it finish in the background (in-flight
    /// work completes).
    pub fn release(mut self) {
        let _ = self.stop.send(true);
        self.task.take();
    }

    /// Asks the task to stop and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Releases the tasks whose name is gone or whose revision changed, and
/// returns the names (with revisions) that need a task.
pub fn reconcile(running: &mut HashMap<String, Supervised>, desired: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let stale: Vec<String> = running
        .iter()
        .filter(|(name, s)| desired.get(*name) != Some(&s.revision))
        .map(|(name, _)| name.clone())
        .collect();
    for name in stale {
        if let Some(s) = running.remove(&name) {
            s.release();
        }
    }
    let mut start: Vec<(String, u64)> = desired
        .iter()
        .filter(|(name, _)| !running.contains_key(*name))
        .map(|(n, r)| (n.clone(), *r))
        .collect();
    start.sort();
    start
}

/// Stops every task and waits for them.
pub async fn stop_all(running: HashMap<String, Supervised>) {
    for (_, s) in running {
        s.stop().await;
    }
}
