//! Cleanses log records arriving in batches from a `file` or `syslog`
//! trigger, and answers with clean JSON lines (`application/x-ndjson`) that
//! the function's `on_success` destination carries on (a JetStream subject
//! in the shipped `evoke.toml`).
//!
//! For each record:
//! 1. **Drop noise**: lines containing one of `CLEANSE_DROP` (`|`-separated;
//!    default: health checks and probes) and lines whose level is in
//!    `CLEANSE_DROP_LEVELS` (`,`-separated; default `debug,trace`).
//! 2. **Parse** access-log lines (nginx/Apache "combined") into fields;
//!    other lines keep their text, with the level when one is found.
//! 3. **Mask secrets** in every text field: e-mail addresses, IPv4
//!    addresses, bearer tokens, AWS access key ids, card-like numbers
//!    (13 to 19 digits passing the Luhn check).
//!
//! Each output line says where the record came from (`source`, `offset`).

use std::sync::OnceLock;

use evoke_sdk::{Event, Function, Output};
use regex::Regex;
use serde_json::{Map, Value, json};

const DEFAULT_DROP: &str = "GET /health|GET /healthz|GET /ready|kube-probe|ELB-HealthChecker";
const DEFAULT_DROP_LEVELS: &str = "debug,trace";

struct Patterns {
    access: Regex,
    level: Regex,
    email: Regex,
    ipv4: Regex,
    bearer: Regex,
    aws_key: Regex,
    card: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |s: &str| Regex::new(s).expect("a valid pattern");
        Patterns {
            access: re(
                r#"^(\S+) \S+ (\S+) \[([^\]]+)\] "(\S+) (\S+) ([^"]*)" (\d{3}) (\d+|-)(?: "([^"]*)" "([^"]*)")?"#,
            ),
            level: re(r"(?i)\b(?:level=)?(trace|debug|info|notice|warn|warning|error|err|fatal|critical|crit)\b"),
            email: re(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            ipv4: re(r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\b"),
            bearer: re(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*"),
            aws_key: re(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b"),
            card: re(r"\b\d(?:[ -]?\d){12,18}\b"),
        }
    })
}

/// Whether the digits of `s` pass the Luhn check.
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    (13..=19).contains(&digits.len()) && sum.is_multiple_of(10)
}

/// `text` with its secrets masked.
pub fn mask(text: &str) -> String {
    let p = patterns();
    let t = p.bearer.replace_all(text, "$1 [token]");
    let t = p.aws_key.replace_all(&t, "[aws-key]");
    let t = p.email.replace_all(&t, "[email]");
    let t = p.card.replace_all(&t, |c: &regex::Captures| {
        if luhn(&c[0]) {
            "[card]".to_string()
        } else {
            c[0].to_string()
        }
    });
    p.ipv4.replace_all(&t, "[ipv4]").into_owned()
}

struct Rules {
    drop: Vec<String>,
    drop_levels: Vec<String>,
}

impl Rules {
    fn from_env() -> Rules {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        let list = |s: String, sep: char| -> Vec<String> {
            s.split(sep)
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        Rules {
            drop: list(var("CLEANSE_DROP", DEFAULT_DROP), '|'),
            drop_levels: list(var("CLEANSE_DROP_LEVELS", DEFAULT_DROP_LEVELS), ',')
                .into_iter()
                .map(|l| l.to_ascii_lowercase())
                .collect(),
        }
    }
}

/// The level a line states, lowercase (`warning` as `warn`, `err` as `error`).
fn level_of(line: &str) -> Option<String> {
    let head: String = line.chars().take(80).collect();
    let l = patterns().level.captures(&head)?[1].to_ascii_lowercase();
    Some(match l.as_str() {
        "warning" => "warn".into(),
        "err" => "error".into(),
        "crit" => "critical".into(),
        _ => l,
    })
}

/// Syslog severities as level names.
fn severity_level(s: u64) -> &'static str {
    ["emerg", "alert", "critical", "error", "warn", "notice", "info", "debug"][s.min(7) as usize]
}

/// One record's clean line, or `None` when it is noise.
fn cleanse(record: &Value, rules: &Rules) -> Option<Value> {
    // A `file` record has `line`; a `syslog` record has `message`.
    let (text, source, offset, syslog_level) = if let Some(line) = record.get("line").and_then(Value::as_str) {
        (line, record.get("path").cloned(), record.get("offset").cloned(), None)
    } else {
        let message = record.get("message").and_then(Value::as_str)?;
        let host = record.get("hostname").and_then(Value::as_str).unwrap_or("-");
        let app = record.get("app_name").and_then(Value::as_str).unwrap_or("-");
        let level = record.get("severity").and_then(Value::as_u64).map(severity_level);
        (message, Some(json!(format!("{host}/{app}"))), None, level)
    };
    if text.trim().is_empty() || rules.drop.iter().any(|d| text.contains(d.as_str())) {
        return None;
    }
    let mut out = Map::new();
    if let Some(c) = patterns().access.captures(text) {
        let field = |i: usize| c.get(i).map(|m| m.as_str()).filter(|s| *s != "-");
        out.insert("kind".into(), json!("access"));
        out.insert("remote".into(), json!(mask(&c[1])));
        out.insert("user".into(), json!(field(2).map(mask)));
        out.insert("time".into(), json!(&c[3]));
        out.insert("method".into(), json!(&c[4]));
        out.insert("path".into(), json!(mask(&c[5])));
        out.insert("protocol".into(), json!(&c[6]));
        out.insert("status".into(), json!(c[7].parse::<u16>().unwrap_or(0)));
        out.insert(
            "bytes".into(),
            json!(field(8).and_then(|b| b.parse::<u64>().ok()).unwrap_or(0)),
        );
        out.insert("referer".into(), json!(field(9).map(mask)));
        out.insert("agent".into(), json!(field(10).map(mask)));
    } else {
        let level = syslog_level.map(String::from).or_else(|| level_of(text));
        if level.as_ref().is_some_and(|l| rules.drop_levels.contains(l)) {
            return None;
        }
        out.insert("kind".into(), json!("app"));
        out.insert("level".into(), json!(level));
        out.insert("message".into(), json!(mask(text)));
    }
    out.insert("source".into(), source.unwrap_or(Value::Null));
    if let Some(o) = offset {
        out.insert("offset".into(), o);
    }
    Some(Value::Object(out))
}

struct Cleanse;

impl Function for Cleanse {
    fn handle(event: Event) -> Result<Output, String> {
        let rules = Rules::from_env();
        // A batch: its items' data; a single record: the event's data.
        let records: Vec<Value> = if event.type_.ends_with(".batch") {
            event
                .batch()?
                .into_iter()
                .map(|e| e.get("data").cloned().unwrap_or(Value::Null))
                .collect()
        } else {
            vec![event.json()?]
        };
        let mut out = String::new();
        let mut kept = 0;
        for r in &records {
            if let Some(clean) = cleanse(r, &rules) {
                out.push_str(&clean.to_string());
                out.push('\n');
                kept += 1;
            }
        }
        evoke_sdk::info(format!(
            "cleansed {} records: kept {kept}, dropped {}",
            records.len(),
            records.len() - kept
        ));
        Ok(Output::bytes(out.into_bytes(), "application/x-ndjson"))
    }
}

evoke_sdk::function!(Cleanse);
