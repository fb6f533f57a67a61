//! `kind = "file"`: tails log files on the nodes that run the trigger and
//! hands their lines to the shared queue runtime ([`crate::queue::Pipeline`]),
//! which batches, stores and filters them as for every queue source.
//!
//! - A file is known by its device and inode plus a fingerprint of its
//!   first bytes (up to [`FINGERPRINT_BYTES`]), never by its path: a file
//!   renamed (rotation by rename, within or out of the globs) is the same
//!   file, read to its end before it is let go; an inode reused by a new
//!   file is a new file; a file that shrank (copy-truncate) or whose first
//!   bytes changed is read again from 0.
//! - Each file's offset is kept in NATS KV (bucket `EVOKE_STATE`, one key
//!   per trigger, node and file) and advanced only once the lines before it
//!   are stored on the function's queue: a node killed in the middle of a
//!   file starts again after the last stored line; what repeats is what
//!   was stored but not yet noted (about one batch), which the queue's
//!   dedupe absorbs when the batch comes out the same.
//! - Lines longer than `max_line_bytes` are cut there and every part marked
//!   (`split`), never dropped; invalid UTF-8 is kept as lossy text marked
//!   `invalid_utf8`.
//! - Files are found by `paths` globs (`**` allowed) at every
//!   `scan_interval`; at most `max_open_files` are open at once (files
//!   idle at their end give their handle up to the others).

mod lines;
#[cfg(feature = "file")]
mod tail;

pub use lines::{Joiner, Line, Splitter};
#[cfg(feature = "file")]
pub use tail::{FileConsumer, consumer};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::queue::BatchConfig;
use crate::trigger::{Nodes, Problem};
use crate::units::ByteSize;

/// The longest prefix of a file its fingerprint covers.
pub const FINGERPRINT_BYTES: u64 = 1024;
/// The longest line taken whole, unless the trigger says otherwise.
pub const DEFAULT_MAX_LINE: ByteSize = ByteSize(64 * 1024);
/// Files open at once, unless the trigger says otherwise.
pub const DEFAULT_MAX_OPEN_FILES: usize = 256;

/// `kind = "file"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Glob patterns of the files to tail (`/var/log/app/*.log`, `**` allowed).
    pub paths: Vec<String>,
    /// Glob patterns of files not to tail, though `paths` matches them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Where to start in a file the trigger finds when it starts and has no
    /// offset for: `beginning` (default) or `end`. Files that appear later
    /// are always read from their beginning.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// Files not modified for this long are not tailed (e.g. `24h`).
    #[serde(
        default,
        with = "crate::units::duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub ignore_older: Option<Duration>,
    /// What ends a line (default `"\n"`; a `\r` before `\n` is dropped too).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Longest line taken whole (default 64Ki); longer ones are cut into
    /// parts, each marked `split`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_line_bytes: Option<ByteSize>,
    /// Joins the lines of one record (a stack trace) into one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline: Option<Multiline>,
    /// Which nodes tail: `"all"` (default) or node names (`evoke up --node-name`).
    #[serde(default)]
    pub nodes: Nodes,
    /// How often the globs are searched again for new files (default 1s).
    #[serde(
        default,
        with = "crate::units::duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub scan_interval: Option<Duration>,
    /// Most files open at once (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_files: Option<usize>,
    /// Batching (default: 100 lines, 256Ki, 1s).
    #[serde(default = "default_batch")]
    pub batch: Option<BatchConfig>,
}

fn default_batch() -> Option<BatchConfig> {
    Some(BatchConfig::default())
}

fn default_delimiter() -> String {
    "\n".into()
}

/// Where a file first seen at start is read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    #[default]
    Beginning,
    End,
}

/// `multiline = { start_pattern = "^\\S", timeout = "1s" }`: a line matching
/// `start_pattern` starts a record; the lines after it that do not match
/// belong to it. A record is complete when the next one starts, or after
/// `timeout` with no new line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Multiline {
    pub start_pattern: String,
    #[serde(default = "default_multiline_timeout", with = "crate::units::duration")]
    pub timeout: Duration,
}

fn default_multiline_timeout() -> Duration {
    Duration::from_secs(1)
}

impl FileConfig {
    pub fn check(&self) -> Vec<Problem> {
        let mut p = crate::queue::check_common(self.batch.as_ref(), None);
        if self.paths.is_empty() {
            p.push(("paths".into(), "needs at least one glob pattern".into()));
        }
        for (field, patterns) in [("paths", &self.paths), ("exclude", &self.exclude)] {
            for g in patterns {
                if !g.starts_with('/') {
                    p.push((field.into(), format!("`{g}` is not an absolute path: start it with /")));
                } else if let Err(e) = glob::Pattern::new(g) {
                    p.push((field.into(), format!("`{g}` is not a glob pattern: {e}")));
                }
            }
        }
        if self.delimiter.is_empty() || self.delimiter.len() > 8 {
            p.push(("delimiter".into(), "must be 1 to 8 bytes".into()));
        }
        if let Some(m) = self.max_line_bytes
            && (m.0 < 64 || m.0 > 512 * 1024)
        {
            p.push(("max_line_bytes".into(), "is out of range 64..512Ki".into()));
        }
        if let Some(m) = &self.multiline {
            if let Err(e) = regex::Regex::new(&m.start_pattern) {
                p.push((
                    "multiline.start_pattern".into(),
                    format!("is not a regular expression: {e}"),
                ));
            }
            if m.timeout.is_zero() || m.timeout > Duration::from_secs(60) {
                p.push(("multiline.timeout".into(), "is out of range 1ms..60s".into()));
            }
        }
        if let Some(s) = self.scan_interval
            && (s < Duration::from_millis(100) || s > Duration::from_secs(3600))
        {
            p.push(("scan_interval".into(), "is out of range 100ms..1h".into()));
        }
        if let Some(n) = self.max_open_files
            && !(1..=65536).contains(&n)
        {
            p.push(("max_open_files".into(), "is out of range 1..65536".into()));
        }
        p.extend(self.nodes.check());
        p
    }

    pub fn max_line(&self) -> usize {
        self.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE).0 as usize
    }

    pub fn scan_every(&self) -> Duration {
        self.scan_interval.unwrap_or(Duration::from_secs(1))
    }

    pub fn max_open(&self) -> usize {
        self.max_open_files.unwrap_or(DEFAULT_MAX_OPEN_FILES)
    }

    /// The delimiter with `\n`, `\r`, `\t` and `\0` escapes read.
    pub fn delimiter_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chars = self.delimiter.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                continue;
            }
            match chars.next() {
                Some('n') => out.push(b'\n'),
                Some('r') => out.push(b'\r'),
                Some('t') => out.push(b'\t'),
                Some('0') => out.push(0),
                Some(other) => {
                    out.push(b'\\');
                    let mut b = [0; 4];
                    out.extend_from_slice(other.encode_utf8(&mut b).as_bytes());
                }
                None => out.push(b'\\'),
            }
        }
        out
    }
}

/// The state key of trigger `trigger`'s offset in file `dev`/`ino` on `node`.
pub fn offset_key(trigger: &str, node: &str, dev: u64, ino: u64) -> String {
    format!("file.{}.{}.{dev}.{ino}", kv_token(trigger), kv_token(node))
}

/// `s` as a KV key token: letters, digits, `-` and `_` kept, anything else
/// as `=XX` (hex of each byte).
fn kv_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
