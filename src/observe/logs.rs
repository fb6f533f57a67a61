//! Function logs: lines collected per invocation (capped), published to
//! stream EVOKE_LOGS as one message per invocation, and read back by
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
    lines: Vec<LogLine>,
}

impl LogBuffer {
    pub fn new(cap: usize) -> LogBuffer {
        LogBuffer {
            cap,
            ..Default::default()
        }
    }

    pub fn push(&mut self, level: LogLevel, stream: &str, message: String) {
        if self.used + message.len() > self.cap {
            self.dropped += message.len();
            return;
        }
        self.used += message.len();
        self.lines.push(LogLine {
            time: Utc::now(),
            level,
            stream: stream.to_string(),
            message,
        });
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
        if self.dropped > 0 {
            lines.push(LogLine {
                time: Utc::now(),
                level: LogLevel::Warn,
                stream: "evoke".into(),
                message: format!(
                    "log truncated: {} more bytes dropped (limit {} bytes per invocation)",
                    self.dropped, self.cap
                ),
            });
        }
        self.used = 0;
        self.dropped = 0;
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_cap_are_dropped_with_a_marker() {
        let mut b = LogBuffer::new(10);
        b.push(LogLevel::Info, "log", "12345".into());
        b.push(LogLevel::Info, "log", "123456".into());
        let lines = b.take();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].message.contains("6 more bytes dropped"));
        assert!(b.take().is_empty());
    }
}
