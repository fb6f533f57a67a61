//! A file's bytes cut into lines, fed in chunks of any sizes, with any
//! delimiter and line limit, then joined as multiline records: no byte is
//! lost or invented (lines and delimiters put back together are the
//! input), offsets are contiguous, no part is longer than the limit, and
//! the same bytes fed whole give the same lines; never a panic.
#![no_main]

use std::time::{Duration, Instant};

use evoke_connectors::file::{Joiner, Line, Splitter};
use libfuzzer_sys::fuzz_target;

fn split(delimiter: &[u8], max: usize, chunks: &[&[u8]]) -> Vec<Line> {
    let mut s = Splitter::new(delimiter.to_vec(), max, 0);
    let mut out = Vec::new();
    for c in chunks {
        s.push(c, &mut out);
    }
    s.finish(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let delimiter: &[u8] = match data[0] % 3 {
        0 => b"\n",
        1 => b"\r\n",
        _ => b"||",
    };
    let max = 4 + data[1] as usize;
    let step = 1 + data[2] as usize % 17;
    let input = &data[3..];
    let chunks: Vec<&[u8]> = input.chunks(step).collect();
    let lines = split(delimiter, max, &chunks);
    assert_eq!(lines, split(delimiter, max, &[input]), "chunking changed the lines");
    let mut at = 0;
    for l in &lines {
        assert_eq!(l.start, at, "offsets are contiguous");
        assert!(l.end > l.start || input.is_empty());
        assert!(l.bytes.len() <= max, "a part of {} bytes, limit {max}", l.bytes.len());
        let span = &input[l.start as usize..l.end as usize];
        assert!(span.starts_with(&l.bytes), "a line is not the bytes it spans");
        at = l.end;
    }
    assert_eq!(at, input.len() as u64, "every byte is in a line");
    let re = regex::Regex::new(r"^\S").expect("a pattern");
    let mut joiner = Joiner::new(re, Duration::from_millis(10), max);
    let mut records = Vec::new();
    let now = Instant::now();
    for l in lines.iter().cloned() {
        joiner.push(l, now, &mut records);
    }
    joiner.flush(now, true, &mut records);
    let joined: usize = records.iter().map(|r| r.lines as usize).sum();
    assert_eq!(joined, lines.len(), "every line is in one record");
    assert!(records.windows(2).all(|w| w[0].end <= w[1].start));
});
