//! Finding files, reading them, and keeping their offsets.
//!
//! The consumer is polled by the queue pipeline, which may drop a call to
//! [`Consumer::next`] at any await: every await here leaves the consumer
//! whole (a scan runs in a task of its own and is picked up by a later call;
//! reading is synchronous and bounded).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::{FINGERPRINT_BYTES, FileConfig, Joiner, Line, ReadFrom, Splitter, offset_key};
use crate::queue::{Consumer, Incoming, Message, Stats, unique_id};
use crate::source::StateStore;

/// Bytes read from one file at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Records read ahead of the pipeline.
const READY_MAX: usize = 2048;
/// How often open files are read for new lines when nothing came.
const POLL: Duration = Duration::from_millis(100);
/// How long a file renamed or removed out of the globs is kept open at its
/// end, for the last lines its writer appends before reopening.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// What KV keeps of one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    /// This reading of the file (a new one after truncation or inode reuse):
    /// part of every line's dedupe id, so no two readings share one.
    id: String,
    path: String,
    /// Where reading resumes: everything before is stored.
    offset: u64,
    fp_len: u64,
    fp: String,
}

struct Entry {
    cp: Checkpoint,
    dirty: bool,
    /// The file is let go, read to this offset: forget it once stored that far.
    done: Option<u64>,
}

/// The offsets of one trigger's files: advanced by acknowledgements, saved
/// to KV by [`flusher`].
#[derive(Default)]
struct Book {
    entries: Mutex<HashMap<String, Entry>>,
    notify: Notify,
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, key: &str, cp: Checkpoint) {
        self.lock().insert(
            key.to_string(),
            Entry {
                cp,
                dirty: true,
                done: None,
            },
        );
        self.notify.notify_one();
    }

    /// Changes the entry of reading `id` of file `key` (none when the file
    /// was read again since), and wakes the flusher.
    fn update(&self, key: &str, id: &str, change: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().get_mut(key)
            && e.cp.id == id
        {
            change(e);
            self.notify.notify_one();
        }
    }

    /// The lines of reading `id` before `end` are stored.
    fn advance(&self, key: &str, id: &str, end: u64) {
        self.update(key, id, |e| {
            if end > e.cp.offset {
                e.cp.offset = end;
                e.dirty = true;
            }
        });
    }

    fn fingerprint(&self, key: &str, id: &str, fp_len: u64, fp: &str) {
        self.update(key, id, |e| {
            (e.cp.fp_len, e.cp.fp) = (fp_len, fp.to_string());
            e.dirty = true;
        });
    }

    fn done(&self, key: &str, id: &str, at: u64) {
        self.update(key, id, |e| e.done = Some(at));
    }

    /// Saves what changed and forgets files let go and stored to their
    /// end; `false` when KV did not take it all.
    async fn flush(&self, state: &impl StateStore) -> bool {
        let (mut saves, mut forgets) = (Vec::new(), Vec::new());
        self.lock().retain(|k, e| {
            if e.done.is_some_and(|d| e.cp.offset >= d) {
                forgets.push(k.clone());
                return false;
            }
            if e.dirty {
                e.dirty = false;
                saves.push((k.clone(), e.cp.clone()));
            }
            true
        });
        let mut ok = true;
        for (k, cp) in saves {
            let value = serde_json::to_string(&cp).unwrap_or_default();
            if let Err(e) = state.save(&k, &value).await {
                tracing::warn!(key = k, error = %e, "file offset not saved; trying again");
                if let Some(entry) = self.lock().get_mut(&k) {
                    entry.dirty = true;
                }
                ok = false;
            }
        }
        for k in forgets {
            let _ = state.forget(&k).await;
        }
        ok
    }
}

/// Saves offsets as acknowledgements advance them, until the consumer is
/// dropped (then once more).
async fn flusher<St: StateStore>(book: Arc<Book>, state: Arc<St>, mut stop: watch::Receiver<bool>) {
    let mut delays = crate::backoff::PUBLISH.delays();
    loop {
        let last = tokio::select! {
            _ = book.notify.notified() => false,
            _ = stop.changed() => true,
        };
        if book.flush(&*state).await {
            delays = crate::backoff::PUBLISH.delays();
        } else if !last {
            book.notify.notify_one();
            let delay = delays.next().unwrap_or(crate::backoff::PUBLISH.max);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => {}
            }
        }
        if last {
            return;
        }
    }
}

/// One file being tailed.
struct Tracked {
    key: String,
    dev: u64,
    ino: u64,
    path: PathBuf,
    file: Option<File>,
    /// The reading's id (see [`Checkpoint::id`]).
    id: String,
    fp_len: u64,
    fp: String,
    /// Its length when last looked at.
    size: u64,
    /// The last read found nothing.
    at_end: bool,
    last_read: Instant,
    splitter: Splitter,
    joiner: Option<Joiner>,
    /// Not found by the last scan (renamed out of the globs, or removed) since.
    orphaned: Option<Instant>,
    /// Before the last truncation: its fingerprint and how far it was read,
    /// to know its copy (copy-truncate) when the copy matches the globs.
    before: Option<(u64, String, u64)>,
}

/// A file a scan found.
struct Found {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    /// Its first bytes (up to [`FINGERPRINT_BYTES`]).
    prefix: Vec<u8>,
    /// Its offset in KV, for files not tracked yet.
    checkpoint: Option<Option<Checkpoint>>,
}

struct Listing {
    found: Vec<Found>,
    errors: Vec<String>,
}

/// Tails the files of one trigger on this node.
pub struct FileConsumer<St: StateStore> {
    config: Arc<FileConfig>,
    trigger: String,
    node: String,
    state: Arc<St>,
    stats: Arc<Stats>,
    book: Arc<Book>,
    files: Vec<Tracked>,
    ready: VecDeque<Incoming>,
    scanning: Option<JoinHandle<Listing>>,
    next_scan: Instant,
    /// No scan finished yet: `read_from` applies to files found.
    first: bool,
    open: usize,
    delimiter: Vec<u8>,
    multiline: Option<regex::Regex>,
    /// Where reads land (one buffer, not one per read).
    buf: Vec<u8>,
    _flusher: watch::Sender<bool>,
}

impl<St: StateStore> Drop for FileConsumer<St> {
    fn drop(&mut self) {
        if let Some(h) = &self.scanning {
            h.abort();
        }
    }
}

/// Starts tailing (the first scan runs on the first call to `next`).
pub async fn consumer<St: StateStore>(
    config: &FileConfig,
    trigger: &str,
    node: &str,
    state: Arc<St>,
    stats: Arc<Stats>,
) -> Result<FileConsumer<St>, String> {
    let multiline = match &config.multiline {
        Some(m) => Some(regex::Regex::new(&m.start_pattern).map_err(|e| format!("multiline.start_pattern: {e}"))?),
        None => None,
    };
    let book = Arc::new(Book::default());
    let (tx, rx) = watch::channel(false);
    tokio::spawn(flusher(book.clone(), state.clone(), rx));
    Ok(FileConsumer {
        config: Arc::new(config.clone()),
        trigger: trigger.to_string(),
        node: node.to_string(),
        state,
        stats,
        book,
        files: Vec::new(),
        ready: VecDeque::new(),
        scanning: None,
        next_scan: Instant::now(),
        first: true,
        open: 0,
        delimiter: config.delimiter_bytes(),
        multiline,
        buf: vec![0; READ_CHUNK],
        _flusher: tx,
    })
}

impl<St: StateStore> Consumer for FileConsumer<St> {
    async fn next(&mut self) -> Result<Incoming, String> {
        loop {
            if let Some(i) = self.ready.pop_front() {
                return Ok(i);
            }
            let now = Instant::now();
            if self.scanning.is_none() && now >= self.next_scan {
                self.scanning = Some(tokio::spawn(scan(
                    self.config.clone(),
                    self.known(),
                    self.state.clone(),
                    self.trigger.clone(),
                    self.node.clone(),
                )));
            }
            if self.read_round(now) {
                continue;
            }
            let mut wake = now + POLL;
            for t in &self.files {
                if let Some(d) = t.joiner.as_ref().and_then(Joiner::deadline) {
                    wake = wake.min(d);
                }
            }
            let wake = tokio::time::Instant::from_std(wake);
            match self.scanning.as_mut() {
                Some(h) => {
                    tokio::select! {
                        listing = h => {
                            self.scanning = None;
                            self.next_scan = Instant::now() + self.config.scan_every();
                            match listing {
                                Ok(l) => self.apply(l),
                                Err(e) => tracing::warn!(trigger = self.trigger, error = %e, "file scan failed"),
                            }
                        }
                        _ = tokio::time::sleep_until(wake) => {}
                    }
                }
                None => tokio::time::sleep_until(wake).await,
            }
        }
    }
}

/// Finds the files of `config` (blocking work on a blocking thread), and
/// loads the offsets of the ones not in `known`.
async fn scan<St: StateStore>(
    config: Arc<FileConfig>,
    known: HashSet<(u64, u64)>,
    state: Arc<St>,
    trigger: String,
    node: String,
) -> Listing {
    let c = config.clone();
    let mut listing = match tokio::task::spawn_blocking(move || list(&c)).await {
        Ok(l) => l,
        Err(e) => {
            return Listing {
                found: vec![],
                errors: vec![format!("scan failed: {e}")],
            };
        }
    };
    let mut unavailable = None;
    for f in listing.found.iter_mut().filter(|f| !known.contains(&(f.dev, f.ino))) {
        match state.load(&offset_key(&trigger, &node, f.dev, f.ino)).await {
            Ok(v) => f.checkpoint = Some(v.and_then(|s| serde_json::from_str(&s).ok())),
            Err(e) => unavailable = Some(e.to_string()),
        }
    }
    if let Some(e) = unavailable {
        listing.errors.push(format!(
            "offsets of new files cannot be read ({e}); not tailing them yet"
        ));
    }
    listing
}

/// The files the globs match now (without the excluded and the old ones).
fn list(config: &FileConfig) -> Listing {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let exclude: Vec<glob::Pattern> = config
        .exclude
        .iter()
        .filter_map(|e| glob::Pattern::new(e).ok())
        .collect();
    let now = SystemTime::now();
    for pattern in &config.paths {
        let paths = match glob::glob(pattern) {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("`{pattern}`: {e}"));
                continue;
            }
        };
        for entry in paths {
            let path = match entry {
                Ok(p) => p,
                Err(e) => {
                    errors.push(format!("{}: {}", e.path().display(), e.error()));
                    continue;
                }
            };
            if exclude.iter().any(|x| x.matches_path(&path)) {
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            if let (Some(max), Ok(modified)) = (config.ignore_older, meta.modified())
                && now.duration_since(modified).is_ok_and(|age| age > max)
            {
                continue;
            }
            match prefix(&path, meta.dev(), meta.ino()) {
                Ok(Some(prefix)) => found.push(Found {
                    path,
                    dev: meta.dev(),
                    ino: meta.ino(),
                    len: meta.len(),
                    prefix,
                    checkpoint: None,
                }),
                // Replaced between the two looks: the next scan sees it.
                Ok(None) => {}
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
    }
    Listing { found, errors }
}

/// The file at `path`, opened, when it is still `dev`/`ino` (`None` when
/// another file took its place).
fn open_same(path: &Path, dev: u64, ino: u64) -> std::io::Result<Option<File>> {
    let f = File::open(path)?;
    let m = f.metadata()?;
    Ok(((m.dev(), m.ino()) == (dev, ino)).then_some(f))
}

/// The first bytes of the file at `path`, when it is still `dev`/`ino`.
fn prefix(path: &Path, dev: u64, ino: u64) -> std::io::Result<Option<Vec<u8>>> {
    open_same(path, dev, ino)?.map(|f| read_prefix(&f)).transpose()
}

/// The first bytes (up to [`FINGERPRINT_BYTES`]) of an open file.
fn read_prefix(f: &File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; FINGERPRINT_BYTES as usize];
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

fn fingerprint(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(bytes)[..12])
}

/// Whether `prefix` starts with the `len` bytes whose fingerprint is `fp`.
fn same_start(prefix: &[u8], len: u64, fp: &str) -> bool {
    prefix.len() as u64 >= len && fingerprint(&prefix[..len as usize]) == fp
}

impl<St: StateStore> FileConsumer<St> {
    fn known(&self) -> HashSet<(u64, u64)> {
        self.files.iter().map(|t| (t.dev, t.ino)).collect()
    }

    /// Takes a finished scan: new files start tailing, gone ones are
    /// orphaned, truncated ones start again.
    fn apply(&mut self, listing: Listing) {
        let now = Instant::now();
        let mut seen = HashSet::new();
        let index: HashMap<(u64, u64), usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.dev, t.ino), i))
            .collect();
        for mut f in listing.found {
            seen.insert((f.dev, f.ino));
            if let Some(&i) = index.get(&(f.dev, f.ino)) {
                self.rescanned(i, f);
                continue;
            }
            let Some(checkpoint) = f.checkpoint.take() else {
                continue;
            };
            self.track(f, checkpoint, now);
        }
        for t in &mut self.files {
            if seen.contains(&(t.dev, t.ino)) {
                t.orphaned = None;
            } else {
                t.orphaned.get_or_insert(now);
            }
        }
        let behind: u64 = self.files.iter().map(|t| t.size.saturating_sub(t.splitter.end())).sum();
        self.stats.set_lag(behind);
        self.stats
            .files
            .store(self.files.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.stats.set_error((!listing.errors.is_empty()).then(|| {
            let more = listing.errors.len() - 1;
            let mut e = listing.errors.into_iter().next().unwrap_or_default();
            if more > 0 {
                e.push_str(&format!(" (and {more} more)"));
            }
            e + "; retrying at every scan"
        }));
        self.stats.connected.store(true, std::sync::atomic::Ordering::Relaxed);
        self.first = false;
    }

    /// A tracked file found again: its path may have changed (renamed
    /// within the globs), it may have been truncated or rewritten.
    fn rescanned(&mut self, i: usize, f: Found) {
        let t = &mut self.files[i];
        t.path = f.path;
        // The scan looked a while ago, and reading went on meanwhile: the
        // length is asked again now.
        let now = match &t.file {
            Some(h) => h.metadata().ok(),
            None => std::fs::metadata(&t.path)
                .ok()
                .filter(|m| (m.dev(), m.ino()) == (t.dev, t.ino)),
        };
        let len = now.map_or(f.len, |m| m.len());
        t.size = len;
        // A prefix shorter than the fingerprint was read before the file
        // grew: it tells nothing.
        let rewritten = f.prefix.len() as u64 >= t.fp_len && !same_start(&f.prefix, t.fp_len, &t.fp);
        if len < t.splitter.offset() || rewritten {
            tracing::info!(trigger = self.trigger, path = %t.path.display(), "file truncated or rewritten; reading it from its start");
            t.before = Some((t.fp_len, t.fp.clone(), t.splitter.offset()));
            t.id = unique_id();
            t.at_end = false;
            t.splitter.reset(0);
            if let Some(j) = &mut t.joiner {
                j.reset();
            }
            // The scan's prefix may be from before the truncation: the
            // fingerprint starts again from what the file holds now (or
            // empty, grown by the next scans).
            let now = match &t.file {
                Some(h) => read_prefix(h).unwrap_or_default(),
                None => prefix(&t.path, t.dev, t.ino).ok().flatten().unwrap_or_default(),
            };
            (t.fp_len, t.fp) = (now.len() as u64, fingerprint(&now));
            self.book.set(&t.key, checkpoint(t));
        } else if (f.prefix.len() as u64) > t.fp_len {
            (t.fp_len, t.fp) = (f.prefix.len() as u64, fingerprint(&f.prefix));
            self.book.fingerprint(&t.key, &t.id, t.fp_len, &t.fp);
        }
    }

    /// Starts tailing a file found for the first time.
    fn track(&mut self, f: Found, saved: Option<Checkpoint>, now: Instant) {
        let key = offset_key(&self.trigger, &self.node, f.dev, f.ino);
        let (id, offset) = match saved {
            Some(cp) if same_start(&f.prefix, cp.fp_len, &cp.fp) && cp.offset <= f.len => (cp.id, cp.offset),
            // Truncated while evoke was away.
            Some(cp) if same_start(&f.prefix, cp.fp_len, &cp.fp) => (unique_id(), 0),
            _ => {
                let start = match self.copy_of(&f.prefix) {
                    // A copy (copy-truncate) of a file read up to `read`.
                    Some(read) => read,
                    None if self.first && self.config.read_from == ReadFrom::End => f.len,
                    None => 0,
                };
                (unique_id(), start)
            }
        };
        let max = self.config.max_line();
        let joiner = self.multiline.as_ref().map(|re| {
            let timeout = self.config.multiline.as_ref().map(|m| m.timeout).unwrap_or_default();
            Joiner::new(re.clone(), timeout, max)
        });
        tracing::info!(trigger = self.trigger, path = %f.path.display(), offset, "tailing");
        let t = Tracked {
            key,
            dev: f.dev,
            ino: f.ino,
            path: f.path,
            file: None,
            id,
            fp_len: f.prefix.len() as u64,
            fp: fingerprint(&f.prefix),
            size: f.len,
            at_end: false,
            last_read: now,
            splitter: Splitter::new(self.delimiter.clone(), max, offset),
            joiner,
            orphaned: None,
            before: None,
        };
        self.book.set(&t.key, checkpoint(&t));
        self.files.push(t);
    }

    /// When a new file starting with `prefix` is a copy of a tracked file
    /// (copy-truncate), how far that file was read: a file truncated since
    /// whose content before started the same, or a file with a whole
    /// fingerprint (1 KiB) the same. The copy may still be being written
    /// (shorter than what was read): reading it waits for the rest. A short
    /// file's fingerprint is not trusted for this: a new file that merely
    /// starts the same is read whole.
    fn copy_of(&self, prefix: &[u8]) -> Option<u64> {
        let whole = (prefix.len() as u64 == FINGERPRINT_BYTES).then(|| fingerprint(prefix));
        self.files.iter().find_map(|t| {
            if let Some((fp_len, fp, read)) = &t.before
                && *fp_len > 0
                && same_start(prefix, *fp_len, fp)
            {
                return Some(*read);
            }
            (t.fp_len == FINGERPRINT_BYTES && whole.as_deref() == Some(t.fp.as_str())).then(|| t.splitter.offset())
        })
    }

    /// Reads what files have (files let go first, then round robin);
    /// whether anything came.
    fn read_round(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        let mut order: Vec<usize> = (0..self.files.len()).collect();
        order.sort_by_key(|&i| (self.files[i].orphaned.is_none(), self.files[i].last_read));
        for i in order {
            if self.ready.len() >= READY_MAX {
                break;
            }
            progressed |= self.read_file(i, now);
        }
        // Multiline records complete by timeout, and files let go.
        let mut finished = Vec::new();
        for (i, t) in self.files.iter_mut().enumerate() {
            let due = t.records(vec![], now, false);
            emit(&mut self.ready, t, &self.node, &self.book, due);
            let gone = t.orphaned.is_some_and(|o| now >= o + ORPHAN_GRACE) && (t.at_end || t.file.is_none());
            if gone {
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            let mut t = self.files.remove(i);
            let mut lines = Vec::new();
            t.splitter.finish(&mut lines);
            let last = t.records(lines, now, true);
            emit(&mut self.ready, &t, &self.node, &self.book, last);
            if t.file.take().is_some() {
                self.open -= 1;
            }
            tracing::info!(trigger = self.trigger, path = %t.path.display(), offset = t.splitter.end(), "file let go (renamed or removed, read to its end)");
            self.book.done(&t.key, &t.id, t.splitter.end());
            progressed = true;
        }
        progressed
    }

    /// Reads the next chunk of file `i`; whether anything came.
    fn read_file(&mut self, i: usize, now: Instant) -> bool {
        if self.files[i].file.is_none() {
            let t = &self.files[i];
            if t.orphaned.is_some() || t.size <= t.splitter.end() {
                return false;
            }
            if self.open >= self.config.max_open() && !self.free_handle(i) {
                return false;
            }
            let t = &mut self.files[i];
            match open_same(&t.path, t.dev, t.ino) {
                Ok(Some(f)) => {
                    t.file = Some(f);
                    self.open += 1;
                }
                // Another file is at its path now: the scan sorts it out.
                Ok(None) => return false,
                Err(e) => {
                    self.stats
                        .set_error(Some(format!("{}: {e}; retrying", t.path.display())));
                    return false;
                }
            }
        }
        let t = &mut self.files[i];
        let Some(f) = &t.file else { return false };
        let buf = &mut self.buf;
        let n = match f.read_at(buf, t.splitter.end()) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(path = %t.path.display(), error = %e, "reading failed; closing the file for now");
                t.file = None;
                self.open -= 1;
                return false;
            }
        };
        if n == 0 {
            t.at_end = true;
            return false;
        }
        t.at_end = false;
        t.last_read = now;
        let mut lines = Vec::new();
        t.splitter.push(&buf[..n], &mut lines);
        t.size = t.size.max(t.splitter.end());
        let records = t.records(lines, now, false);
        emit(&mut self.ready, t, &self.node, &self.book, records);
        true
    }

    /// Closes the handle of a file idle at its end (not `except`) to open
    /// another; whether one was freed.
    fn free_handle(&mut self, except: usize) -> bool {
        let victim = self
            .files
            .iter()
            .enumerate()
            .filter(|(i, t)| *i != except && t.file.is_some() && t.at_end && t.orphaned.is_none())
            .min_by_key(|(_, t)| t.last_read)
            .map(|(i, _)| i);
        match victim {
            Some(v) => {
                self.files[v].file = None;
                self.open -= 1;
                true
            }
            None => false,
        }
    }
}

impl Tracked {
    /// Lines as records: through the multiline joiner when the file has
    /// one, with the record it holds when its timeout passed (or always,
    /// with `finish`).
    fn records(&mut self, lines: Vec<Line>, now: Instant, finish: bool) -> Vec<Line> {
        let Some(j) = &mut self.joiner else { return lines };
        let mut out = Vec::new();
        for l in lines {
            j.push(l, now, &mut out);
        }
        j.flush(now, finish, &mut out);
        out
    }
}

/// Hands a file's records to the pipeline.
fn emit(ready: &mut VecDeque<Incoming>, t: &Tracked, node: &str, book: &Arc<Book>, records: Vec<Line>) {
    ready.extend(records.into_iter().map(|r| incoming(t, node, book, r)));
}

fn checkpoint(t: &Tracked) -> Checkpoint {
    Checkpoint {
        id: t.id.clone(),
        path: t.path.display().to_string(),
        offset: t.splitter.offset(),
        fp_len: t.fp_len,
        fp: t.fp.clone(),
    }
}

/// A record as the pipeline takes it; its ack advances the file's offset.
fn incoming(t: &Tracked, node: &str, book: &Arc<Book>, line: Line) -> Incoming {
    let path = t.path.display().to_string();
    let (text, invalid) = match String::from_utf8(line.bytes) {
        Ok(s) => (s, false),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    };
    let mut body = json!({
        "line": text,
        "path": path,
        "offset": line.start,
        "file_id": format!("{}:{}:{}", t.dev, t.ino, t.id),
        "node": node,
    });
    if invalid {
        body["invalid_utf8"] = true.into();
    }
    if let Some((part, last)) = line.part {
        body["split"] = json!({"part": part, "last": last});
    }
    if line.lines > 1 {
        body["lines"] = Value::from(line.lines);
    }
    let message = Message {
        body: Bytes::from(body.to_string()),
        content_type: Some("application/json".into()),
        key: Some(path.clone()),
        subject: Some(path.clone()),
        origin_id: Some(format!("{}.{}", t.id, line.start)),
        origin: vec![
            ("evokefilepath", path),
            ("evokefileoffset", line.start.to_string()),
            ("evokenode", node.to_string()),
        ],
        ..Default::default()
    };
    let (book, key, id, end) = (book.clone(), t.key.clone(), t.id.clone(), line.end);
    Incoming {
        message,
        ack: Box::pin(async move {
            book.advance(&key, &id, end);
            Ok(())
        }),
    }
}
