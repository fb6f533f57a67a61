//! Cutting a file's bytes into lines ([`Splitter`]) and joining the lines
//! of one multiline record ([`Joiner`]). Both are pure: offsets in, lines
//! with offsets out, so they are tested (and fuzzed) without files.

use std::time::{Duration, Instant};

/// One line (or one part of a long line, or one multiline record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Offset of its first byte in the file.
    pub start: u64,
    /// Offset just past it (its delimiter included): where reading
    /// resumes once it is stored.
    pub end: u64,
    pub bytes: Vec<u8>,
    /// For a part of a line longer than the limit: its number (from 1) and
    /// whether it is the last part.
    pub part: Option<(u32, bool)>,
    /// How many lines a multiline record joined (1 for a plain line).
    pub lines: u32,
}

/// Cuts bytes into lines at a delimiter; lines longer than `max` are cut
/// into parts of at most `max` bytes (at a UTF-8 character boundary when
/// one is near).
pub struct Splitter {
    delimiter: Vec<u8>,
    max: usize,
    /// Bytes not yet part of an emitted line, starting at offset `start`.
    buf: Vec<u8>,
    start: u64,
    /// Where in `buf` the delimiter search resumes.
    scanned: usize,
    /// Parts of the current line emitted so far.
    parts: u32,
}

impl Splitter {
    pub fn new(delimiter: Vec<u8>, max: usize, offset: u64) -> Splitter {
        assert!(!delimiter.is_empty() && max > 0);
        Splitter {
            delimiter,
            max,
            buf: Vec::new(),
            start: offset,
            scanned: 0,
            parts: 0,
        }
    }

    /// The offset of the first byte not yet in an emitted line.
    pub fn offset(&self) -> u64 {
        self.start
    }

    /// Bytes held that are not a whole line yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The offset of the next byte to push: everything before it was pushed.
    pub fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// Starts again at `offset` (the file was truncated), dropping what is held.
    pub fn reset(&mut self, offset: u64) {
        self.buf.clear();
        self.start = offset;
        self.scanned = 0;
        self.parts = 0;
    }

    /// Takes the next bytes of the file; complete lines go to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Line>) {
        self.buf.extend_from_slice(data);
        let d = self.delimiter.len();
        loop {
            let found = find(&self.buf[self.scanned..], &self.delimiter).map(|i| i + self.scanned);
            match found {
                Some(mut at) => {
                    while at > self.max {
                        at -= self.part(out);
                    }
                    let mut text = self.buf[..at].to_vec();
                    if self.delimiter == b"\n" && text.last() == Some(&b'\r') {
                        text.pop();
                    }
                    let part = (self.parts > 0).then_some((self.parts + 1, true));
                    out.push(Line {
                        start: self.start,
                        end: self.start + (at + d) as u64,
                        bytes: text,
                        part,
                        lines: 1,
                    });
                    self.buf.drain(..at + d);
                    self.start += (at + d) as u64;
                    self.scanned = 0;
                    self.parts = 0;
                }
                None => {
                    // Keep the bytes that may be the start of a delimiter.
                    while self.buf.len() >= self.max + d {
                        self.part(out);
                    }
                    self.scanned = self.buf.len().saturating_sub(d - 1);
                    return;
                }
            }
        }
    }

    /// Emits the first (at most `max`) bytes of the held line as a part;
    /// returns how many.
    fn part(&mut self, out: &mut Vec<Line>) -> usize {
        let mut cut = self.max.min(self.buf.len());
        // Back off to a character boundary when one is within 3 bytes.
        let mut c = cut;
        while c > 0 && cut - c < 3 && c < self.buf.len() && (self.buf[c] & 0xC0) == 0x80 {
            c -= 1;
        }
        if c > 0 && (c == self.buf.len() || (self.buf[c] & 0xC0) != 0x80) {
            cut = c;
        }
        self.parts += 1;
        out.push(Line {
            start: self.start,
            end: self.start + cut as u64,
            bytes: self.buf[..cut].to_vec(),
            part: Some((self.parts, false)),
            lines: 1,
        });
        self.buf.drain(..cut);
        self.start += cut as u64;
        self.scanned = 0;
        cut
    }

    /// Emits what is held as a last line (the file is finished: renamed
    /// away or removed, and read to its end).
    pub fn finish(&mut self, out: &mut Vec<Line>) {
        if self.buf.is_empty() {
            return;
        }
        while self.buf.len() > self.max {
            self.part(out);
        }
        let part = (self.parts > 0).then_some((self.parts + 1, true));
        let n = self.buf.len() as u64;
        out.push(Line {
            start: self.start,
            end: self.start + n,
            bytes: std::mem::take(&mut self.buf),
            part,
            lines: 1,
        });
        self.start += n;
        self.scanned = 0;
        self.parts = 0;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() == 1 {
        return hay.iter().position(|b| *b == needle[0]);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Joins lines into multiline records: a line matching the start pattern
/// starts a record, the lines after it that do not match join it. A record
/// is complete when the next starts, after `timeout` without a new line,
/// or when it would grow past `max` bytes (it is then emitted and the line
/// starts the next one).
pub struct Joiner {
    start: regex::Regex,
    timeout: Duration,
    max: usize,
    pending: Option<Line>,
    last: Instant,
}

impl Joiner {
    pub fn new(start: regex::Regex, timeout: Duration, max: usize) -> Joiner {
        Joiner {
            start,
            timeout,
            max,
            pending: None,
            last: Instant::now(),
        }
    }

    /// Takes one line; a record it completes goes to `out`.
    pub fn push(&mut self, line: Line, now: Instant, out: &mut Vec<Line>) {
        self.last = now;
        let starts = self.start.is_match(&String::from_utf8_lossy(&line.bytes));
        match &mut self.pending {
            Some(p) if !starts && p.bytes.len() + 1 + line.bytes.len() <= self.max => {
                p.bytes.push(b'\n');
                p.bytes.extend_from_slice(&line.bytes);
                p.end = line.end;
                p.lines += 1;
            }
            _ => {
                if let Some(done) = self.pending.replace(line) {
                    out.push(done);
                }
            }
        }
    }

    /// When the record held is complete by timeout, if one is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|_| self.last + self.timeout)
    }

    /// Emits the record held once its timeout passed (or always, with `force`).
    pub fn flush(&mut self, now: Instant, force: bool, out: &mut Vec<Line>) {
        if (force || now >= self.last + self.timeout)
            && let Some(p) = self.pending.take()
        {
            out.push(p);
        }
    }

    /// Drops what is held (the file was truncated).
    pub fn reset(&mut self) {
        self.pending = None;
    }
}
