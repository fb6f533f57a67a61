//! Function logs: lines collected per invocation (capped), published to
//! stream EVOKE_LOGS as one batch per invocation (the batches of a burst
//! share a message, a newline between each: [`batches`]), and read back by
//! `evoke logs`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One log line of one invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    #[serde(serialize_with = "evoke_connectors::event::serialize_utc")]
    pub time: DateTime<Utc>,
    pub level: LogLevel,
    /// `log` (host call), `stderr` or `stdout`.
    pub stream: String,
    pub message: String,
}

/// All lines of one invocation, as published on EVOKE_LOGS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogBatch {
    pub function: String,
    pub invocation: String,
    pub lines: Vec<LogLine>,
}

/// Collects lines up to a byte cap; past it, one marker line says how much
/// was dropped.
#[derive(Debug, Default)]
pub struct LogBuffer {
    cap: usize,
    used: usize,
    dropped: usize,
    dropped_lines: usize,
    lines: Vec<LogLine>,
}

/// What one line costs against the cap beyond its text.
const LINE_OVERHEAD: usize = 32;

impl LogLine {
    pub fn new(level: LogLevel, stream: &str, message: String) -> LogLine {
        LogLine {
            time: Utc::now(),
            level,
            stream: stream.to_string(),
            message,
        }
    }
}

impl LogBuffer {
    pub fn new(cap: usize) -> LogBuffer {
        LogBuffer {
            cap,
            ..Default::default()
        }
    }

    pub fn push(&mut self, level: LogLevel, stream: &str, message: String) {
        // Each line also costs its overhead, so a guest logging empty lines
        // in a loop fills the cap too instead of growing a list forever.
        let cost = message.len() + LINE_OVERHEAD;
        if self.used + cost > self.cap {
            self.dropped += message.len();
            self.dropped_lines += 1;
            return;
        }
        self.used += cost;
        self.lines.push(LogLine::new(level, stream, message));
    }

    /// Splits captured stdio into lines.
    pub fn push_text(&mut self, level: LogLevel, stream: &str, bytes: &[u8], dropped: u64) {
        for line in String::from_utf8_lossy(bytes).lines() {
            self.push(level, stream, line.to_string());
        }
        self.dropped += dropped as usize;
    }

    /// Takes the lines of the invocation that just ended.
    pub fn take(&mut self) -> Vec<LogLine> {
        let mut lines = std::mem::take(&mut self.lines);
        if self.dropped > 0 || self.dropped_lines > 0 {
            lines.push(LogLine::new(
                LogLevel::Warn,
                "evoke",
                format!(
                    "log truncated: {} more bytes in {} lines dropped (limit {} bytes per invocation)",
                    self.dropped, self.dropped_lines, self.cap
                ),
            ));
        }
        self.used = 0;
        self.dropped = 0;
        self.dropped_lines = 0;
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_cap_are_dropped_with_a_marker() {
        let mut b = LogBuffer::new(10 + 2 * LINE_OVERHEAD);
        b.push(LogLevel::Info, "log", "12345".into());
        b.push(LogLevel::Info, "log", "123456".into());
        let lines = b.take();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].message.contains("6 more bytes in 1 lines dropped"),
            "{}",
            lines[1].message
        );
        assert!(b.take().is_empty());
    }

    #[test]
    fn a_message_holds_one_batch_or_several() {
        let batch = |i: &str| LogBatch {
            function: "f".into(),
            invocation: i.into(),
            lines: vec![LogLine::new(LogLevel::Info, "stderr", format!("line of {i}"))],
        };
        let one = serde_json::to_vec(&batch("a")).unwrap();
        let read: Vec<String> = batches(&one).map(|b| b.invocation).collect();
        assert_eq!(read, ["a"]);
        let mut joined = one.clone();
        joined.push(b'\n');
        joined.extend(serde_json::to_vec(&batch("b")).unwrap());
        let read: Vec<String> = batches(&joined).map(|b| b.invocation).collect();
        assert_eq!(read, ["a", "b"]);
        assert_eq!(batches(b"not json").count(), 0);
    }

    #[test]
    fn empty_lines_fill_the_cap_too() {
        let mut b = LogBuffer::new(1024);
        for _ in 0..1_000_000 {
            b.push(LogLevel::Info, "log", String::new());
        }
        let lines = b.take();
        assert!(lines.len() <= 1024 / LINE_OVERHEAD + 1, "{} lines kept", lines.len());
        assert!(lines.last().unwrap().message.contains("lines dropped"));
    }
}

/// The log batches in one message of EVOKE_LOGS: one, or several
/// separated by newlines (what a node stores for a burst of invocations);
/// reading stops at the first that does not parse.
pub fn batches(payload: &[u8]) -> impl Iterator<Item = LogBatch> + '_ {
    serde_json::Deserializer::from_slice(payload)
        .into_iter::<LogBatch>()
        .map_while(Result::ok)
}

/// What to read of a function's logs.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only lines newer than this (a window longer than the logs are kept
    /// reads them all).
    pub since: Option<std::time::Duration>,
    /// Only lines of this invocation.
    pub invocation: Option<String>,
    /// Keep the stream open for new lines.
    pub follow: bool,
}

/// A function's log lines from stream EVOKE_LOGS, as NDJSON chunks (one
/// JSON object per line: time, level, stream, function, invocation,
/// message). Without `follow` the stream ends at the last line stored.
pub async fn read(
    bus: &crate::bus::Bus,
    function: &str,
    q: Query,
) -> Result<impl futures::Stream<Item = Result<String, std::io::Error>> + Send + use<>, crate::bus::NatsError> {
    use async_nats::jetstream::consumer::{self, DeliverPolicy};
    use futures::StreamExt;

    use crate::bus::{self, OrNats};

    let deliver_policy = match q.since {
        Some(d) => DeliverPolicy::ByStartTime {
            start_time: time::Duration::try_from(d)
                .ok()
                .and_then(|d| time::OffsetDateTime::now_utc().checked_sub(d))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
        None => DeliverPolicy::All,
    };
    let doing = "reading logs";
    let stream = bus.js.get_stream(bus::STREAM_LOGS).await.nats(doing)?;
    let messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: bus::logs_subject(function),
            deliver_policy,
            ..Default::default()
        })
        .await
        .nats(doing)?
        .messages()
        .await
        .nats(doing)?;
    let empty = bus
        .subject_counts(bus::STREAM_LOGS, &bus::logs_subject(function))
        .await
        .map(|c| c.iter().all(|(_, n)| *n == 0))
        .unwrap_or(false);
    let Query { invocation, follow, .. } = q;
    Ok(futures::stream::unfold(
        (messages, false, empty),
        move |(mut messages, done, empty)| {
            let invocation = invocation.clone();
            async move {
                if done || (empty && !follow) {
                    return None;
                }
                let wait = std::time::Duration::from_secs(if follow { 3600 } else { 2 });
                loop {
                    let msg = match tokio::time::timeout(wait, messages.next()).await {
                        Ok(Some(Ok(m))) => m,
                        Ok(Some(Err(_))) => continue,
                        _ => return None,
                    };
                    let last = !follow && msg.info().map(|i| i.pending == 0).unwrap_or(true);
                    let mut out = String::new();
                    for batch in batches(&msg.payload) {
                        if invocation.as_ref().is_some_and(|i| *i != batch.invocation) {
                            continue;
                        }
                        for l in &batch.lines {
                            let v = serde_json::json!({
                                "time": l.time, "level": l.level, "stream": l.stream,
                                "function": batch.function, "invocation": batch.invocation, "message": l.message,
                            });
                            out.push_str(&v.to_string());
                            out.push('\n');
                        }
                    }
                    if out.is_empty() {
                        if last {
                            return None;
                        }
                        continue;
                    }
                    return Some((Ok(out), (messages, last, false)));
                }
            }
        },
    ))
}
