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

    /// Spawns `start(stop)` once `previous` (the task it replaces) has
    /// finished: two tasks of one name never run at once (two consumers of
    /// one trigger in one process, two tails of one file, two listeners on
    /// one port).
    pub fn spawn_after<F, S>(revision: u64, previous: Option<JoinHandle<()>>, start: S) -> Supervised
    where
        S: FnOnce(watch::Receiver<bool>) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        Supervised::spawn(revision, move |stop| async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            start(stop).await
        })
    }

    /// The revision the task runs.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Asks the task to stop and lets it finish in the background (in-flight
    /// work completes); returns the task, to wait for it.
    pub fn release(mut self) -> Option<JoinHandle<()>> {
        let _ = self.stop.send(true);
        self.task.take()
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

/// Tasks asked to stop and still finishing, by name.
pub type Stopping = HashMap<String, JoinHandle<()>>;

/// Releases the tasks whose name is gone or whose revision changed (into
/// `stopping`, forgetting those already finished), and returns the names
/// (with revisions) that need a task.
pub fn reconcile(
    running: &mut HashMap<String, Supervised>,
    stopping: &mut Stopping,
    desired: &HashMap<String, u64>,
) -> Vec<(String, u64)> {
    stopping.retain(|_, task| !task.is_finished());
    let stale: Vec<String> = running
        .iter()
        .filter(|(name, s)| desired.get(*name) != Some(&s.revision))
        .map(|(name, _)| name.clone())
        .collect();
    for name in stale {
        if let Some(task) = running.remove(&name).and_then(Supervised::release) {
            stopping.insert(name, task);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A task that counts itself running until stopped, and notes the most
    /// tasks that ever ran at once.
    fn counted(now: Arc<AtomicUsize>, most: Arc<AtomicUsize>) -> impl FnOnce(watch::Receiver<bool>) -> BoxTask {
        move |mut stop| {
            Box::pin(async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                let _ = stop.wait_for(|s| *s).await;
                // Stopping takes a while (in-flight work finishing).
                tokio::time::sleep(Duration::from_millis(50)).await;
                now.fetch_sub(1, Ordering::SeqCst);
            })
        }
    }

    type BoxTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

    #[tokio::test]
    async fn a_new_revision_starts_after_the_old_task_stopped() {
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut running = HashMap::new();
        let mut stopping = Stopping::new();
        for revision in 1..=3u64 {
            let desired = HashMap::from([("t".to_string(), revision)]);
            for (name, rev) in reconcile(&mut running, &mut stopping, &desired) {
                let previous = stopping.remove(&name);
                running.insert(
                    name,
                    Supervised::spawn_after(rev, previous, counted(now.clone(), most.clone())),
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The last revision runs once the earlier ones are gone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(now.load(Ordering::SeqCst), 1);
        assert_eq!(
            most.load(Ordering::SeqCst),
            1,
            "two revisions of one task never run at once"
        );
        stop_all(running).await;
        assert_eq!(now.load(Ordering::SeqCst), 0);
    }
}
