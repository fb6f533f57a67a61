//! The line splitter and joiner on their own, and the tail end to end
//! through the shared queue pipeline (memory sink and state) over real
//! files in a temporary directory: rotation both ways, restarts, many
//! files with few handles.

use std::time::{Duration, Instant};

use super::*;

fn split(delimiter: &str, max: usize, chunks: &[&[u8]]) -> (Vec<Line>, Splitter) {
    let mut s = Splitter::new(delimiter.as_bytes().to_vec(), max, 0);
    let mut out = Vec::new();
    for c in chunks {
        s.push(c, &mut out);
    }
    (out, s)
}

fn texts(lines: &[Line]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
        .collect()
}

#[test]
fn lines_are_cut_at_the_delimiter_with_their_offsets() {
    let (lines, s) = split("\n", 100, &[b"one\ntw", b"o\r\nthree\n", b"par"]);
    assert_eq!(texts(&lines), ["one", "two", "three"]);
    let spans: Vec<(u64, u64)> = lines.iter().map(|l| (l.start, l.end)).collect();
    assert_eq!(spans, [(0, 4), (4, 9), (9, 15)]);
    assert_eq!((s.offset(), s.pending()), (15, 3), "the partial line is held");
    assert!(lines.iter().all(|l| l.part.is_none()));
}

#[test]
fn a_delimiter_of_several_bytes_is_found_across_reads() {
    let (lines, _) = split("||", 100, &[b"a|", b"|b||c|", b"|"]);
    assert_eq!(texts(&lines), ["a", "b", "c"]);
    assert_eq!(lines[2].end, 9);
}

#[test]
fn long_lines_are_cut_into_marked_parts_and_nothing_is_lost() {
    let long = "x".repeat(250);
    let input = format!("short\n{long}\nend\n");
    // Fed byte by byte and all at once: the same lines.
    let (whole, _) = split("\n", 100, &[input.as_bytes()]);
    let bytes: Vec<&[u8]> = input.as_bytes().chunks(1).collect();
    let (trickle, _) = split("\n", 100, &bytes);
    assert_eq!(whole, trickle);
    assert_eq!(texts(&whole).concat(), format!("short{long}end"));
    let parts: Vec<Option<(u32, bool)>> = whole.iter().map(|l| l.part).collect();
    assert_eq!(parts, [None, Some((1, false)), Some((2, false)), Some((3, true)), None]);
    assert!(whole.iter().all(|l| l.bytes.len() <= 100));
    // Offsets are contiguous: each part starts where the one before ended.
    for w in whole.windows(2) {
        assert_eq!(w[0].end, w[1].start);
    }
}

#[test]
fn parts_are_cut_at_a_character_boundary() {
    let line = "é".repeat(60); // 120 bytes
    let (lines, _) = split("\n", 101, &[format!("{line}\n").as_bytes()]);
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| std::str::from_utf8(&l.bytes).is_ok()), "{lines:?}");
}

#[test]
fn finish_emits_a_last_line_without_its_delimiter() {
    let (mut lines, mut s) = split("\n", 100, &[b"a\nno newline"]);
    s.finish(&mut lines);
    assert_eq!(texts(&lines), ["a", "no newline"]);
    assert_eq!(lines[1].end, 12);
}

#[test]
fn multiline_records_join_until_the_next_start_or_the_timeout() {
    let re = regex::Regex::new(r"^\d{4}-").unwrap();
    let mut j = Joiner::new(re, Duration::from_millis(500), 1000);
    let (lines, _) = split(
        "\n",
        1000,
        &[b"2026-01-01 boom\n  at a()\n  at b()\n2026-01-01 next\n  at c()\n"],
    );
    let t0 = Instant::now();
    let mut out = Vec::new();
    for l in lines {
        j.push(l, t0, &mut out);
    }
    assert_eq!(texts(&out), ["2026-01-01 boom\n  at a()\n  at b()"]);
    assert_eq!((out[0].lines, out[0].start, out[0].end), (3, 0, 34));
    j.flush(t0 + Duration::from_millis(100), false, &mut out);
    assert_eq!(out.len(), 1, "not complete before its timeout");
    j.flush(t0 + Duration::from_millis(600), false, &mut out);
    assert_eq!(texts(&out)[1], "2026-01-01 next\n  at c()");
}

#[test]
fn a_multiline_record_stops_growing_at_the_limit() {
    let re = regex::Regex::new(r"^START").unwrap();
    let mut j = Joiner::new(re, Duration::from_secs(1), 20);
    let (lines, _) = split("\n", 1000, &[b"START 1\nmore 12345\nmore 67890\n"]);
    let mut out = Vec::new();
    for l in lines {
        j.push(l, Instant::now(), &mut out);
    }
    j.flush(Instant::now(), true, &mut out);
    assert_eq!(texts(&out), ["START 1\nmore 12345", "more 67890"]);
}

fn config(paths: &[&str]) -> FileConfig {
    serde_json::from_value(serde_json::json!({"paths": paths})).unwrap()
}

#[test]
fn bad_configs_say_which_field() {
    let mut c = config(&["relative/*.log"]);
    c.multiline = Some(Multiline {
        start_pattern: "(".into(),
        timeout: Duration::from_secs(1),
    });
    c.delimiter = String::new();
    let fields: Vec<String> = c.check().into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["paths", "delimiter", "multiline.start_pattern"]);
    assert!(config(&["/var/log/**/*.log"]).check().is_empty());
    assert_eq!(config(&[]).check()[0].0, "paths");
    let mut c = config(&["/x"]);
    c.delimiter = "\\r\\n".into();
    assert_eq!(c.delimiter_bytes(), b"\r\n");
}

#[test]
fn offset_keys_are_valid_kv_keys() {
    let k = offset_key("logs", "node a.1", 2049, 77);
    assert_eq!(k, "file.logs.node=20a=2E1.2049.77");
}

#[cfg(feature = "file")]
mod tail {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use serde_json::Value;
    use tokio::sync::watch;

    use super::*;
    use crate::contract::{MemorySink, MemoryState};
    use crate::queue::{Order, Pipeline, Shape, Stats};
    use crate::trigger::Nodes;

    struct Tail {
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
        stats: Arc<Stats>,
    }

    impl Tail {
        async fn stop(self) {
            let _ = self.stop.send(true);
            self.task.await.unwrap();
        }
    }

    fn start(config: &FileConfig, sink: &Arc<MemorySink>, state: &Arc<MemoryState>) -> Tail {
        let stats = Arc::new(Stats::default());
        let pipeline = Pipeline {
            shape: Shape {
                trigger: "logs".into(),
                function: "f".into(),
                kind: "file",
                binding: crate::queue::Binding::None,
                filter: None,
                batch: config.batch,
                order: Order::None,
                max_body: crate::units::ByteSize::mib(8),
            },
            sink: sink.clone(),
            stats: stats.clone(),
        };
        let (stop, mut rx) = watch::channel(false);
        let (config, state, st) = (config.clone(), state.clone(), stats.clone());
        let task = tokio::spawn(async move {
            let mut c = consumer(&config, "logs", "n1", state, st).await.unwrap();
            pipeline.run(&mut c, &mut rx).await.unwrap();
        });
        Tail { stop, task, stats }
    }

    fn tail_config(dir: &Path, pattern: &str) -> FileConfig {
        let mut c = config(&[&format!("{}/{pattern}", dir.display())]);
        c.scan_interval = Some(Duration::from_millis(100));
        c.batch = None;
        c
    }

    /// The records stored so far (batches opened), in order.
    fn records(sink: &MemorySink) -> Vec<Value> {
        let mut out = Vec::new();
        for e in sink.events() {
            let v: Value = serde_json::from_slice(&e.data).unwrap();
            match v {
                Value::Array(items) => out.extend(items.into_iter().map(|i| i["data"].clone())),
                one => out.push(one),
            }
        }
        out
    }

    fn lines(sink: &MemorySink) -> Vec<String> {
        records(sink)
            .iter()
            .map(|r| r["line"].as_str().unwrap().to_string())
            .collect()
    }

    async fn wait_lines(sink: &MemorySink, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let l = lines(sink);
            if l.len() >= n {
                // Anything more than `n` would be a repeat: give it a moment to show.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return lines(sink);
            }
            assert!(Instant::now() < deadline, "only {} of {n} lines: {l:?}", l.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The same lines, in any order (each file's lines stay in order; files
    /// are read side by side).
    fn assert_same_lines(mut got: Vec<String>, mut want: Vec<String>) {
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn numbered(prefix: &str, range: std::ops::Range<u32>) -> String {
        range.map(|i| format!("{prefix} {i}\n")).collect()
    }

    fn expected(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("{prefix} {i}")).collect()
    }

    async fn saved_offset(state: &MemoryState, path: &Path, want: u64) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).unwrap();
        let key = offset_key("logs", "n1", m.dev(), m.ino());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = state.values.lock().unwrap().get(&key).cloned();
            let offset = v
                .as_deref()
                .map(|v| serde_json::from_str::<Value>(v).unwrap()["offset"].as_u64().unwrap());
            if offset == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "offset of {} is {offset:?}, not {want}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn lines_appended_arrive_once_in_order_with_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, &numbered("a", 0..3));
        let (sink, state) = (Arc::new(MemorySink::default()), Arc::new(MemoryState::default()));
        let tail = start(&tail_config(dir.path(), "*.log"), &sink, &state);
        assert_eq!(wait_lines(&sink, 3).await, expected("a", 0..3));
        append(&log, &numbered("a", 3..6));
        assert_eq!(wait_lines(&sink, 6).await, expected("a", 0..6));
        let r = &records(&sink)[1];
        assert_eq!(r["path"], log.display().to_string());
        assert_eq!((r["offset"].as_u64(), r["node"].as_str()), (Some(4), Some("n1")));
        let e = &sink.events()[1];
        assert_eq!(e.ty, "evoke.file.message");
        assert_eq!(e.extensions["evokefileoffset"], "4");
        crate::contract::assert_valid_event(e);
        saved_offset(&state, &log, 24).await;
        assert_eq!(tail.stats.view()["acked"], 6);
        assert_eq!(tail.stats.view()["files"], 1);
        tail.stop().await;
    }

    #[tokio::test]
    async fn a_restart_resumes_after_the_last_stored_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, &numbered("a", 0..5));
        let (sink, state) = (Arc::new(MemorySink::default()), Arc::new(MemoryState::default()));
        let tail = start(&tail_config(dir.path(), "*.log"), &sink, &state);
        wait_lines(&sink, 5).await;
        tail.stop().await;
        saved_offset(&state, &log, 20).await;
        append(&log, &numbered("a", 5..8));
        let tail = start(&tail_config(dir.path(), "*.log"), &sink, &state);
        assert_eq!(wait_lines(&sink, 8).await, expected("a", 0..8), "no repeat, no loss");
        tail.stop().await;
    }

    #[tokio::test]
    async fn rename_rotation_finishes_the_old_file_then_reads_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, &numbered("old", 0..3));
        let (sink, state) = (Arc::new(MemorySink::default()), Arc::new(MemoryState::default()));
        let tail = start(&tail_config(dir.path(), "app.log"), &sink, &state);
        wait_lines(&sink, 3).await;
        // The writer still holds the old file after the rename.
        let mut writer = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        writer.write_all(numbered("old", 3..5).as_bytes()).unwrap();
        append(&log, &numbered("new", 0..3));
        let mut want = expected("old", 0..5);
        want.extend(expected("new", 0..3));
        assert_same_lines(wait_lines(&sink, 8).await, want);
        tail.stop().await;
    }

    #[tokio::test]
    async fn copy_truncate_reads_the_file_again_from_its_start_and_skips_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, &numbered("before", 0..4));
        let (sink, state) = (Arc::new(MemorySink::default()), Arc::new(MemoryState::default()));
        // The copy matches the glob too: it must not be read twice.
        let tail = start(&tail_config(dir.path(), "app.log*"), &sink, &state);
        wait_lines(&sink, 4).await;
        append(&log, &numbered("before", 4..6));
        std::fs::copy(&log, dir.path().join("app.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&log, &numbered("after", 0..2));
        let mut want = expected("before", 0..6);
        want.extend(expected("after", 0..2));
        assert_same_lines(wait_lines(&sink, 8).await, want);
        tail.stop().await;
    }

    #[tokio::test]
    async fn read_from_end_skips_what_was_there_but_not_what_comes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, &numbered("old", 0..3));
        let (sink, state) = (Arc::new(MemorySink::default()), Arc::new(MemoryState::default()));
        let mut c = tail_config(dir.path(), "*.log");
        c.read_from = ReadFrom::End;
        let tail = start(&c, &sink, &state);
        tokio::time::sleep(Duration::from_millis(400)).await;
        append(&log, &numbered("new", 0..2));
        // A file appearing later is read from its start.
        append(&dir.path().join("later.log"), "later 0\n");
        let mut got = wait_lines(&sink, 3).await;
        got.sort();
        assert_eq!(got, ["later 0", "new 0", "new 1"]);
        tail.stop().await;
    }

    #[tokio::test]
    async fn many_files_are_read_with_few_handles() {
        let dir = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        for f in 0..40 {
            let sub = dir.path().join(format!("d{}", f % 4));
            std::fs::create_dir_all(&sub).unwrap();
            append(&sub.join(format!("{f}.log")), &numbered(&format!("f{f}"), 0..3));
            want.extend(expected(&format!("f{f}"), 0..3));
        }
        let (sink, state) = (Arc::new(MemorySink::default()), Arc::new(MemoryState::default()));
        let mut c = tail_config(dir.path(), "**/*.log");
        c.max_open_files = Some(3);
        let tail = start(&c, &sink, &state);
        wait_lines(&sink, 120).await;
        // More lines in files already read: their handles come back.
        append(&dir.path().join("d0/0.log"), "f0 3\n");
        append(&dir.path().join("d1/1.log"), "f1 3\n");
        let mut got = wait_lines(&sink, 122).await;
        got.sort();
        want.extend(["f0 3".to_string(), "f1 3".to_string()]);
        want.sort();
        assert_eq!(got, want);
        tail.stop().await;
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_read_is_reported_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let target: PathBuf = dir.path().join("target.txt");
        std::os::unix::fs::symlink(&target, dir.path().join("app.log")).unwrap();
        let (sink, state) = (Arc::new(MemorySink::default()), Arc::new(MemoryState::default()));
        let tail = start(&tail_config(dir.path(), "*.log"), &sink, &state);
        let deadline = Instant::now() + Duration::from_secs(5);
        while tail.stats.view().get("error").is_none() {
            assert!(Instant::now() < deadline, "no error reported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let error = tail.stats.view()["error"].as_str().unwrap().to_string();
        assert!(error.contains("app.log") && error.contains("retrying"), "{error}");
        append(&target, "found 0\n");
        assert_eq!(wait_lines(&sink, 1).await, ["found 0"]);
        assert!(tail.stats.view().get("error").is_none());
        tail.stop().await;
    }

    #[tokio::test]
    async fn a_reused_inode_is_a_new_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, "new 0\nnew 1\n");
        // KV holds an offset for this inode from a file that was there before.
        let m = std::fs::metadata(&log).unwrap();
        let state = Arc::new(MemoryState::default());
        let old =
            serde_json::json!({"id": "x", "path": "/gone", "offset": 6, "fp_len": 6, "fp": "0123456789abcdef01234567"});
        state
            .values
            .lock()
            .unwrap()
            .insert(offset_key("logs", "n1", m.dev(), m.ino()), old.to_string());
        let sink = Arc::new(MemorySink::default());
        let tail = start(&tail_config(dir.path(), "*.log"), &sink, &state);
        assert_eq!(wait_lines(&sink, 2).await, ["new 0", "new 1"]);
        tail.stop().await;
    }

    #[tokio::test]
    async fn long_lines_binary_garbage_and_multiline_records_are_kept_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let mut c = tail_config(dir.path(), "*.log");
        c.max_line_bytes = Some(crate::units::ByteSize(64));
        c.multiline = Some(Multiline {
            start_pattern: r"^\S".into(),
            timeout: Duration::from_millis(200),
        });
        let mut bytes = format!("{}\nError: boom\n  at a()\n  at b()\n", "y".repeat(100)).into_bytes();
        bytes.extend_from_slice(b"bad \xff\xfe bytes\n");
        std::fs::write(&log, &bytes).unwrap();
        let (sink, state) = (Arc::new(MemorySink::default()), Arc::new(MemoryState::default()));
        let tail = start(&c, &sink, &state);
        wait_lines(&sink, 4).await;
        let r = records(&sink);
        assert_eq!(r[0]["split"], serde_json::json!({"part": 1, "last": false}));
        assert_eq!(r[1]["split"], serde_json::json!({"part": 2, "last": true}));
        assert_eq!(r[2]["line"], "Error: boom\n  at a()\n  at b()");
        assert_eq!(r[2]["lines"], 3);
        assert_eq!(r[3]["invalid_utf8"], true);
        assert!(r[3]["line"].as_str().unwrap().starts_with("bad "));
        saved_offset(&state, &log, bytes.len() as u64).await;
        tail.stop().await;
    }

    #[tokio::test]
    async fn batches_carry_lines_and_offsets_advance_only_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, &numbered("a", 0..10));
        let sink = Arc::new(MemorySink::failing(3));
        let state = Arc::new(MemoryState::default());
        let mut c = tail_config(dir.path(), "*.log");
        c.batch = Some(crate::queue::BatchConfig {
            max_records: 4,
            ..Default::default()
        });
        c.nodes = Nodes::All;
        let tail = start(&c, &sink, &state);
        // Batches are stored concurrently (a retried one may land after the
        // next): every line once, acknowledged in order all the same.
        let mut got = wait_lines(&sink, 10).await;
        got.sort();
        assert_eq!(got, expected("a", 0..10));
        assert!(sink.events().iter().all(|e| e.ty == "evoke.file.batch"));
        saved_offset(&state, &log, 40).await;
        tail.stop().await;
    }

    /// The source contract: offsets never pass what is stored while
    /// JetStream is away, the tail stops cleanly while it waits, and every
    /// event is a valid CloudEvent.
    #[tokio::test]
    async fn offsets_stop_at_what_is_stored_while_the_queue_is_away() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, &numbered("a", 0..5));
        let sink = Arc::new(MemorySink {
            outage_after: std::sync::Mutex::new(Some(2)),
            ..Default::default()
        });
        let state = Arc::new(MemoryState::default());
        let tail = start(&tail_config(dir.path(), "*.log"), &sink, &state);
        assert_eq!(wait_lines(&sink, 2).await, expected("a", 0..2));
        // Two lines of 4 bytes stored: the offset is 8 and stays there.
        saved_offset(&state, &log, 8).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        saved_offset(&state, &log, 8).await;
        tokio::time::timeout(Duration::from_secs(5), tail.stop())
            .await
            .expect("the tail stops while its stores wait");
        saved_offset(&state, &log, 8).await;
        // Back, and started again: the rest, once.
        *sink.outage_after.lock().unwrap() = None;
        let tail = start(&tail_config(dir.path(), "*.log"), &sink, &state);
        assert_eq!(wait_lines(&sink, 5).await, expected("a", 0..5));
        saved_offset(&state, &log, 20).await;
        for e in sink.events() {
            crate::contract::assert_valid_event(&e);
        }
        tail.stop().await;
    }
}
