//! `via = "poll"`, for stores that send no notifications, and backfill.
//!
//! The poller lists the trigger's prefix every `interval` and compares what
//! it finds with what it saw last time: a new key, or a key whose etag or
//! modification time changed (a put of the same bytes again is an event,
//! as S3 notifies it), is an `ObjectCreated:Put`; a key gone is an
//! `ObjectRemoved:Delete` when `events` asks for removals. What it saw is
//! kept compact in NATS (key → 64-bit hash of etag and time, in chunks of at
//! most [`CHUNK`] bytes, switched to atomically), saved only after every
//! event of a round is stored: a restart neither misses nor repeats
//! objects. One node polls a trigger at a time (a lease, taken over when
//! the holder dies).
//!
//! The first round of a trigger with no saved state emits only objects
//! modified since the trigger was created (less [`FIRST_ROUND_SLACK`]);
//! older objects are what `evoke triggers backfill` is for.
//!
//! Cost: one LIST request per 1000 keys under the prefix per round, and
//! about (key length + 24) bytes of state per object.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::notification::Record;
use super::{Chains, S3Trigger, Summary, last_event_key};
use crate::source::{Sink, StateStore};
use crate::store::{StoreError, describe};

/// Largest state chunk stored in one KV value.
pub const CHUNK: usize = 256 * 1024;

/// On a trigger's first round, objects modified this long before it was
/// created still count as new.
pub const FIRST_ROUND_SLACK: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub key: String,
    /// Bare (without the quotes stores put around it).
    pub etag: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

/// Lists every object of `bucket` under `prefix`, page by page, calling
/// `page` with each page (for progress and early work).
pub async fn list(
    client: &Client,
    bucket: &str,
    prefix: Option<&str>,
    mut page: impl FnMut(Vec<Listed>),
) -> Result<(), StoreError> {
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .set_prefix(prefix.map(str::to_string))
        .into_paginator()
        .send();
    while let Some(p) = pages.next().await {
        let p = p.map_err(|e| describe(&e))?;
        let objects = p
            .contents
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| {
                Some(Listed {
                    key: o.key?,
                    // Bare, as records and the seen state keep it.
                    etag: o.e_tag.unwrap_or_default().trim_matches('"').to_string(),
                    size: o.size.unwrap_or(0).max(0) as u64,
                    modified: o
                        .last_modified
                        .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                })
            })
            .collect();
        page(objects);
    }
    Ok(())
}

/// The key as S3 notifications encode it (`+` for a space).
pub fn encode_key(key: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(key, KEEP)
        .to_string()
        .replace("%20", "+")
}

/// The record a listed object stands for, in the notification format, so a
/// function reads polled and notified events alike. `origin` is
/// `evoke:poll` or `evoke:backfill`.
pub fn listed_record(bucket: &str, o: &Listed, event_name: &str, origin: &str) -> Record {
    let time = o.modified.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
    let mut object = json!({ "key": encode_key(&o.key), "eTag": o.etag });
    if event_name.starts_with("ObjectCreated") {
        object["size"] = json!(o.size);
    }
    let raw = json!({
        "eventVersion": "2.1",
        "eventSource": origin,
        "eventTime": time,
        "eventName": event_name,
        "s3": { "s3SchemaVersion": "1.0", "bucket": { "name": bucket, "arn": format!("arn:aws:s3:::{bucket}") }, "object": object },
    });
    Record {
        event_name: event_name.to_string(),
        bucket: bucket.to_string(),
        key: o.key.clone(),
        size: Some(o.size),
        etag: Some(o.etag.clone()),
        sequencer: None,
        version_id: None,
        event_time: time,
        raw,
    }
}

/// What the poller saw: key → [`tag`] of the object.
pub type Seen = HashMap<String, String>;

/// What the poller remembers of an object: a hash of its etag and its
/// modification time, so that the same bytes put again are seen as new.
fn tag(o: &Listed) -> String {
    let etag = o.etag.trim_matches('"');
    match o.modified {
        Some(m) => hash8(format!("{etag}@{}", m.to_rfc3339_opts(SecondsFormat::Nanos, true)).as_bytes()),
        None => etag_tag(etag),
    }
}

/// The etag's hash alone: what the poller remembered before it hashed the
/// time too (still read as "unchanged", so that an upgrade does not make
/// every object an event once), and what it remembers of objects listed
/// without a time.
fn etag_tag(etag: &str) -> String {
    hash8(etag.trim_matches('"').as_bytes())
}

fn hash8(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// The state keys of a trigger's poll state: the head names the
/// generation and its chunk count.
fn head_key(trigger: &str) -> String {
    format!("s3poll.{trigger}")
}

fn chunk_key(trigger: &str, generation: u64, i: usize) -> String {
    format!("s3poll.{trigger}.{generation}.{i}")
}

/// Loads what the poller saw; `Ok(None)` when it never saved anything.
pub async fn load_seen<St: StateStore>(state: &St, trigger: &str) -> Result<Option<Seen>, String> {
    let Some(head) = state.load(&head_key(trigger)).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let head: serde_json::Value = serde_json::from_str(&head).map_err(|e| format!("poll state head: {e}"))?;
    let generation = head["generation"].as_u64().unwrap_or(0);
    let chunks = head["chunks"].as_u64().unwrap_or(0) as usize;
    let mut seen = Seen::new();
    for i in 0..chunks {
        let text = state
            .load(&chunk_key(trigger, generation, i))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("poll state chunk {i} is missing"))?;
        let pairs: Vec<(String, String)> =
            serde_json::from_str(&text).map_err(|e| format!("poll state chunk {i}: {e}"))?;
        seen.extend(pairs);
    }
    Ok(Some(seen))
}

/// Saves what the poller saw as a new generation of chunks, then points
/// the head at it (the switch is one write), then forgets the old one.
pub async fn save_seen<St: StateStore>(state: &St, trigger: &str, seen: &Seen) -> Result<(), String> {
    let old: Option<(u64, u64)> = match state.load(&head_key(trigger)).await {
        Ok(Some(h)) => serde_json::from_str::<serde_json::Value>(&h)
            .ok()
            .map(|h| (h["generation"].as_u64().unwrap_or(0), h["chunks"].as_u64().unwrap_or(0))),
        _ => None,
    };
    let generation = old.map(|(g, _)| g + 1).unwrap_or(1);
    let mut chunks: Vec<String> = Vec::new();
    let mut current = String::from("[");
    for (k, t) in seen {
        let pair = serde_json::to_string(&(k, t)).unwrap_or_default();
        if current.len() + pair.len() + 2 > CHUNK && current.len() > 1 {
            current.push(']');
            chunks.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&pair);
    }
    current.push(']');
    chunks.push(current);
    for (i, c) in chunks.iter().enumerate() {
        state
            .save(&chunk_key(trigger, generation, i), c)
            .await
            .map_err(|e| e.to_string())?;
    }
    let head = json!({ "generation": generation, "chunks": chunks.len(), "objects": seen.len(), "saved": Utc::now() });
    state
        .save(&head_key(trigger), &head.to_string())
        .await
        .map_err(|e| e.to_string())?;
    if let Some((g, n)) = old {
        for i in 0..n as usize {
            let _ = state.forget(&chunk_key(trigger, g, i)).await;
        }
    }
    Ok(())
}

/// Forgets a trigger's poll state (the trigger is gone).
pub async fn forget_seen<St: StateStore>(state: &St, trigger: &str) {
    if let Ok(Some(h)) = state.load(&head_key(trigger)).await
        && let Ok(h) = serde_json::from_str::<serde_json::Value>(&h)
    {
        let g = h["generation"].as_u64().unwrap_or(0);
        for i in 0..h["chunks"].as_u64().unwrap_or(0) as usize {
            let _ = state.forget(&chunk_key(trigger, g, i)).await;
        }
    }
    let _ = state.forget(&head_key(trigger)).await;
}

/// The changes between what was seen and what is listed now: records to
/// deliver, and what to remember once they are delivered. With nothing
/// seen before (`seen` is `None`), objects modified before `since` are
/// remembered without an event.
pub fn diff(
    bucket: &str,
    seen: Option<&Seen>,
    now: &[Listed],
    since: DateTime<Utc>,
    removals: bool,
) -> (Vec<Record>, Seen) {
    let mut records = Vec::new();
    let mut next = Seen::with_capacity(now.len());
    for o in now {
        let t = tag(o);
        let new = match seen {
            Some(seen) => seen
                .get(&o.key)
                .is_none_or(|old| *old != t && *old != etag_tag(&o.etag)),
            // Stores keep whole seconds, and their clocks drift: an object
            // written just before the trigger is rather sent than missed.
            None => o.modified.is_none_or(|m| m >= since - FIRST_ROUND_SLACK),
        };
        if new {
            records.push(listed_record(bucket, o, "ObjectCreated:Put", "evoke:poll"));
        }
        next.insert(o.key.clone(), t);
    }
    if removals && let Some(seen) = seen {
        for (key, t) in seen {
            if !next.contains_key(key) {
                let gone = Listed {
                    key: key.clone(),
                    etag: t.clone(),
                    size: 0,
                    modified: None,
                };
                records.push(listed_record(bucket, &gone, "ObjectRemoved:Delete", "evoke:poll"));
            }
        }
    }
    (records, next)
}

/// One trigger's poller.
pub struct Poller<S, St, C> {
    pub trigger: S3Trigger,
    pub client: Client,
    pub sink: Arc<S>,
    pub state: Arc<St>,
    pub chains: Arc<C>,
    /// When the trigger was created: on its very first round, objects
    /// older than this are not events.
    pub since: DateTime<Utc>,
}

impl<S: Sink, St: StateStore, C: Chains> Poller<S, St, C> {
    /// Polls until `stop` becomes true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let interval = self.trigger.config.interval.unwrap_or(super::DEFAULT_INTERVAL);
        let mut seen = loop {
            match load_seen(&*self.state, &self.trigger.name).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(trigger = self.trigger.name, error = %e, "cannot read the poll state; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        tracing::info!(
            trigger = self.trigger.name,
            bucket = self.trigger.config.bucket,
            ?interval,
            "polling the bucket"
        );
        // A store that stays away is reported when it goes and when it is
        // back, not on every round.
        let mut failing: Option<String> = None;
        loop {
            match self.round(seen.as_ref(), &mut stop).await {
                Ok(Some(next)) => {
                    seen = Some(next);
                    if failing.take().is_some() {
                        tracing::info!(trigger = self.trigger.name, "polling works again");
                    }
                }
                Ok(None) => return,
                Err(e) if failing.as_ref() == Some(&e) => {
                    tracing::debug!(trigger = self.trigger.name, error = %e, "poll round failed again")
                }
                Err(e) => {
                    tracing::warn!(trigger = self.trigger.name, error = %e, "poll round failed; trying again every round (logged again when the error changes)");
                    failing = Some(e);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// One round: list, deliver the changes, save. `Ok(None)` when stopped.
    async fn round(&self, seen: Option<&Seen>, stop: &mut watch::Receiver<bool>) -> Result<Option<Seen>, String> {
        let mut objects = Vec::new();
        list(
            &self.client,
            &self.trigger.config.bucket,
            self.trigger.config.prefix.as_deref(),
            |page| objects.extend(page.into_iter().filter(|o| self.trigger.config.wants_key(&o.key))),
        )
        .await
        .map_err(|e| e.to_string())?;
        let (records, next) = diff(
            &self.trigger.config.bucket,
            seen,
            &objects,
            self.since,
            self.trigger.config.wants_removals(),
        );
        if records.is_empty() && seen.is_some() {
            return Ok(Some(next));
        }
        let stopped = async {
            let _ = stop.wait_for(|s| *s).await;
        };
        let Some(summary) = self
            .trigger
            .deliver(&*self.sink, &*self.chains, &records, stopped)
            .await
        else {
            return Ok(None);
        };
        save_seen(&*self.state, &self.trigger.name, &next).await?;
        if summary.queued + summary.parked > 0 {
            tracing::info!(
                trigger = self.trigger.name,
                queued = summary.queued,
                duplicates = summary.duplicates,
                filtered = summary.filtered,
                parked = summary.parked,
                "poll round found changes"
            );
            let value = json!({ "time": Utc::now(), "poll": summary });
            let _ = self
                .state
                .save(&last_event_key(&self.trigger.name), &value.to_string())
                .await;
        }
        Ok(Some(next))
    }
}

/// What to backfill.
#[derive(Debug, Clone, Default)]
pub struct Backfill {
    /// Only keys under this prefix (default: the trigger's).
    pub prefix: Option<String>,
    /// Only objects modified since.
    pub since: Option<DateTime<Utc>>,
    /// Count without queuing.
    pub dry_run: bool,
}

/// Progress of a backfill, reported after every listed page.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub listed: usize,
    #[serde(flatten)]
    pub summary: Summary,
    pub done: bool,
}

/// Emits an `ObjectCreated:Put` event for every object already in the
/// trigger's bucket (under `prefix`, modified since `since`) that passes
/// its filters. Dedupe ids follow the object's etag, so a second backfill
/// does not repeat work already queued. `dry_run` counts without queuing.
/// `None` when `stop` came first (what was queued stays queued).
pub async fn backfill<S: Sink, C: Chains>(
    client: &Client,
    sink: &S,
    chains: &C,
    t: &S3Trigger,
    request: &Backfill,
    mut progress: impl FnMut(&Progress),
    stop: impl Future<Output = ()>,
) -> Result<Option<Progress>, StoreError> {
    let (config, since, dry_run) = (&t.config, request.since, request.dry_run);
    let prefix = request.prefix.as_deref();
    tokio::pin!(stop);
    let prefix = prefix.or(config.prefix.as_deref());
    let mut pages = Vec::new();
    list(client, &config.bucket, prefix, |page| pages.push(page)).await?;
    let mut p = Progress::default();
    for page in pages {
        p.listed += page.len();
        let records: Vec<Record> = page
            .iter()
            .filter(|o| since.is_none_or(|s| o.modified.is_some_and(|m| m >= s)))
            .map(|o| listed_record(&config.bucket, o, "ObjectCreated:Put", "evoke:backfill"))
            .collect();
        p.summary.filtered += page.len() - records.len();
        if dry_run {
            let wanted = records.iter().filter(|r| config.wants(r)).count();
            p.summary.queued += wanted;
            p.summary.filtered += records.len() - wanted;
        } else {
            let Some(s) = t.deliver(sink, chains, &records, &mut stop).await else {
                return Ok(None);
            };
            p.summary.queued += s.queued;
            p.summary.duplicates += s.duplicates;
            p.summary.filtered += s.filtered;
            p.summary.parked += s.parked;
        }
        progress(&p);
    }
    p.done = true;
    progress(&p);
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::MemoryState;

    fn listed(key: &str, etag: &str, secs: i64) -> Listed {
        Listed {
            key: key.into(),
            etag: etag.into(),
            size: 3,
            modified: DateTime::from_timestamp(secs, 0),
        }
    }

    #[test]
    fn diffs_find_new_changed_and_removed_objects() {
        let since = DateTime::from_timestamp(100, 0).unwrap();
        let first = [listed("old.jpg", "a", 50), listed("new.jpg", "b", 150)];
        let (records, seen) = diff("photos", None, &first, since, true);
        assert_eq!(records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["new.jpg"]);
        let second = [listed("new.jpg", "c", 160), listed("more.jpg", "d", 170)];
        let (records, _) = diff("photos", Some(&seen), &second, since, true);
        let mut names: Vec<_> = records
            .iter()
            .map(|r| (r.key.as_str(), r.event_name.as_str()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ("more.jpg", "ObjectCreated:Put"),
                ("new.jpg", "ObjectCreated:Put"),
                ("old.jpg", "ObjectRemoved:Delete")
            ]
        );
        let (records, _) = diff("photos", Some(&seen), &second, since, false);
        assert_eq!(records.len(), 2, "removals only when asked for");
    }

    #[test]
    fn the_same_bytes_put_again_are_an_event() {
        let since = DateTime::from_timestamp(100, 0).unwrap();
        let (_, seen) = diff("photos", None, &[listed("cat.jpg", "a", 150)], since, false);
        let (records, same) = diff("photos", Some(&seen), &[listed("cat.jpg", "a", 150)], since, false);
        assert!(records.is_empty(), "unchanged: no event");
        assert_eq!(same, seen);
        let (records, _) = diff("photos", Some(&seen), &[listed("cat.jpg", "a", 180)], since, false);
        assert_eq!(records.len(), 1, "same etag, put again later: an event");
        // State saved before the time was hashed (the etag alone) is read as
        // unchanged: no burst of events after an upgrade; then re-saved.
        let legacy: Seen = [("cat.jpg".to_string(), etag_tag("\"a\""))].into();
        let (records, next) = diff("photos", Some(&legacy), &[listed("cat.jpg", "a", 150)], since, false);
        assert!(records.is_empty(), "{records:?}");
        assert_eq!(next, seen);
        let (records, _) = diff("photos", Some(&legacy), &[listed("cat.jpg", "b", 150)], since, false);
        assert_eq!(records.len(), 1, "new bytes are still new");
    }

    #[test]
    fn keys_are_encoded_as_notifications_encode_them() {
        assert_eq!(encode_key("a b/c+d(1).jpg"), "a+b/c%2Bd%281%29.jpg");
        assert_eq!(
            super::super::notification::decode_key(&encode_key("a b/c+d(1)é.jpg")).unwrap(),
            "a b/c+d(1)é.jpg"
        );
    }

    #[tokio::test]
    async fn state_round_trips_through_chunks() {
        let state = MemoryState::default();
        assert_eq!(load_seen(&state, "t").await.unwrap(), None);
        let seen: Seen = (0..20_000)
            .map(|i| (format!("photos/{i:06}.jpg"), etag_tag(&i.to_string())))
            .collect();
        save_seen(&state, "t", &seen).await.unwrap();
        assert_eq!(load_seen(&state, "t").await.unwrap().as_ref(), Some(&seen));
        let fewer: Seen = seen.iter().take(10).map(|(k, v)| (k.clone(), v.clone())).collect();
        save_seen(&state, "t", &fewer).await.unwrap();
        assert_eq!(load_seen(&state, "t").await.unwrap(), Some(fewer));
        let kept = state.values.lock().unwrap().len();
        assert!(kept <= 2, "old generations are forgotten: {kept}");
    }
}
