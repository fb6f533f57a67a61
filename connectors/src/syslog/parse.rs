//! Syslog messages into fields: RFC 5424 (with structured data) and RFC 3164
//! (BSD, with the year inferred). A line that is neither keeps its text as
//! the message, with `parse_error` saying why: nothing is dropped.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone, Utc};
use serde::Serialize;

/// One syslog message, parsed as far as it goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyslogRecord {
    /// `rfc5424`, `rfc3164`, or `unknown`.
    pub format: &'static str,
    pub facility: u8,
    /// 0 (emergency) .. 7 (debug).
    pub severity: u8,
    /// RFC 3339; for RFC 3164 the year is inferred and the zone taken as UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<FixedOffset>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proc_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// SD-ID → parameters (a repeated parameter keeps its last value).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub structured_data: BTreeMap<String, BTreeMap<String, String>>,
    pub message: String,
    /// Why the line did not parse fully (it is delivered anyway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
    /// The message was not valid UTF-8 (it is kept as lossy text).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invalid_utf8: bool,
}

/// Facility and severity of a message without a PRI (RFC 3164 §4.3.3: user.notice).
const DEFAULT_PRI: u8 = 13;

/// Severity names as filters and docs spell them, 0..=7.
pub const SEVERITIES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

/// Parses one syslog message (without its framing). `now` resolves the year
/// of RFC 3164 timestamps.
pub fn parse(line: &[u8], now: DateTime<Utc>) -> SyslogRecord {
    let line = trim_end(line);
    let (text, invalid_utf8) = match std::str::from_utf8(line) {
        Ok(s) => (std::borrow::Cow::Borrowed(s), false),
        Err(_) => (String::from_utf8_lossy(line), true),
    };
    let mut r = match pri(&text) {
        Some((pri, rest)) => {
            if let Some(rest) = version_1(rest) {
                rfc5424(pri, rest)
            } else {
                rfc3164(pri, rest, now)
            }
        }
        None => SyslogRecord {
            parse_error: Some("no <PRI> at the start: not a syslog message".into()),
            ..blank(DEFAULT_PRI, "unknown", &text)
        },
    };
    r.invalid_utf8 = invalid_utf8;
    r
}

fn trim_end(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r' | b'\0'] = b {
        b = rest;
    }
    b
}

fn blank(pri: u8, format: &'static str, message: &str) -> SyslogRecord {
    SyslogRecord {
        format,
        facility: pri >> 3,
        severity: pri & 7,
        timestamp: None,
        hostname: None,
        app_name: None,
        proc_id: None,
        msg_id: None,
        structured_data: BTreeMap::new(),
        message: message.to_string(),
        parse_error: None,
        invalid_utf8: false,
    }
}

/// `<PRI>`: 1 to 3 digits, 0..=191, no leading zeros but `<0>`.
fn pri(s: &str) -> Option<(u8, &str)> {
    let rest = s.strip_prefix('<')?;
    let end = rest.find('>')?;
    let digits = &rest[..end];
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    let v: u16 = digits.parse().ok()?;
    (v <= 191).then_some((v as u8, &rest[end + 1..]))
}

/// The RFC 5424 VERSION `1` and the space after it.
fn version_1(s: &str) -> Option<&str> {
    s.strip_prefix("1 ")
}

/// Splits off the next space-separated field.
fn field(s: &str) -> (&str, &str) {
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

fn nil(v: &str, max: usize) -> Result<Option<String>, String> {
    if v == "-" {
        return Ok(None);
    }
    if v.is_empty() || v.len() > max || !v.bytes().all(|b| (33..=126).contains(&b)) {
        return Err(format!("`{v}` is not a header field (printable ASCII, at most {max})"));
    }
    Ok(Some(v.to_string()))
}

fn rfc5424(pri: u8, s: &str) -> SyslogRecord {
    let mut r = blank(pri, "rfc5424", "");
    if let Err(e) = rfc5424_fields(&mut r, s) {
        r.parse_error = Some(format!("RFC 5424: {e}"));
        if r.message.is_empty() {
            r.message = s.to_string();
        }
    }
    r
}

fn rfc5424_fields(r: &mut SyslogRecord, s: &str) -> Result<(), String> {
    let (ts, s) = field(s);
    if ts != "-" {
        r.timestamp = Some(DateTime::parse_from_rfc3339(ts).map_err(|e| format!("timestamp `{ts}`: {e}"))?);
    }
    let (host, s) = field(s);
    r.hostname = nil(host, 255)?;
    let (app, s) = field(s);
    r.app_name = nil(app, 48)?;
    let (proc_id, s) = field(s);
    r.proc_id = nil(proc_id, 128)?;
    let (msg_id, s) = field(s);
    r.msg_id = nil(msg_id, 32)?;
    let rest = if let Some(rest) = s.strip_prefix('-') {
        rest
    } else if s.starts_with('[') {
        structured_data(s, &mut r.structured_data)?
    } else {
        return Err(format!("structured data must be `-` or `[...]`, found `{}`", head(s)));
    };
    let msg = match rest {
        "" => "",
        m => m
            .strip_prefix(' ')
            .ok_or_else(|| format!("no space before the message: `{}`", head(m)))?,
    };
    r.message = msg.strip_prefix('\u{feff}').unwrap_or(msg).to_string();
    Ok(())
}

fn head(s: &str) -> &str {
    let end = s.char_indices().nth(20).map_or(s.len(), |(i, _)| i);
    &s[..end]
}

/// Parses `[id p="v" ...][...]` into `out`; returns what follows.
fn structured_data<'a>(
    mut s: &'a str,
    out: &mut BTreeMap<String, BTreeMap<String, String>>,
) -> Result<&'a str, String> {
    while let Some(rest) = s.strip_prefix('[') {
        let id_end = rest.find([' ', ']']).ok_or("an SD-ELEMENT is not closed")?;
        let id = &rest[..id_end];
        sd_name(id, "SD-ID")?;
        let params = out.entry(id.to_string()).or_default();
        s = &rest[id_end..];
        loop {
            if let Some(rest) = s.strip_prefix(']') {
                s = rest;
                break;
            }
            let rest = s.strip_prefix(' ').ok_or("expected a space or `]` in an SD-ELEMENT")?;
            let eq = rest.find('=').ok_or("an SD-PARAM has no `=`")?;
            let name = &rest[..eq];
            sd_name(name, "PARAM-NAME")?;
            let body = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| format!("the value of `{name}` is not quoted"))?;
            let (value, after) = quoted(body).ok_or_else(|| format!("the value of `{name}` is not closed"))?;
            params.insert(name.to_string(), value);
            s = after;
        }
    }
    Ok(s)
}

/// SD-NAME: 1*32 printable ASCII except `=`, space, `]` and `"`.
fn sd_name(n: &str, what: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 32 || !n.bytes().all(|b| (33..=126).contains(&b) && !b"= ]\"".contains(&b)) {
        return Err(format!("`{n}` is not an {what}"));
    }
    Ok(())
}

/// A PARAM-VALUE up to its closing quote (`\"`, `\\` and `\]` unescaped).
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.clone().next() {
                Some((_, n @ ('"' | '\\' | ']'))) => {
                    out.push(n);
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    None
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn rfc3164(pri: u8, s: &str, now: DateTime<Utc>) -> SyslogRecord {
    let mut r = blank(pri, "rfc3164", s);
    let Some((ts, rest)) = bsd_timestamp(s, now) else {
        // RFC 3164 §4.3.2: no valid TIMESTAMP, the whole rest is the message.
        r.parse_error = Some("RFC 3164: no `Mmm dd hh:mm:ss` timestamp after the PRI".into());
        return r;
    };
    r.timestamp = Some(ts);
    // HOSTNAME, unless the next word is already the TAG (`su:`, `cron[12]:`).
    let (word, after) = field(rest);
    let rest = if !word.is_empty() && !word.ends_with(':') && !word.contains('[') && !after.is_empty() {
        r.hostname = Some(word.to_string());
        after
    } else {
        rest
    };
    // TAG[PID]: MSG, when the message starts with one.
    let tag_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
        .unwrap_or(rest.len());
    let (tag, after) = rest.split_at(tag_end);
    let (pid, after) = match after.strip_prefix('[').and_then(|a| a.split_once(']')) {
        Some((pid, a)) => (Some(pid), a),
        None => (None, after),
    };
    match after.strip_prefix(':') {
        Some(msg) if !tag.is_empty() && tag.len() <= 48 => {
            r.app_name = Some(tag.to_string());
            r.proc_id = pid.filter(|p| !p.is_empty()).map(str::to_string);
            r.message = msg.strip_prefix(' ').unwrap_or(msg).to_string();
        }
        _ => r.message = rest.to_string(),
    }
    r
}

/// `Mmm dd hh:mm:ss ` (day space-padded), with the year that puts it
/// closest before `now` (a December line read in January is last year's).
fn bsd_timestamp(s: &str, now: DateTime<Utc>) -> Option<(DateTime<FixedOffset>, &str)> {
    let b = s.as_bytes();
    if b.len() < 16 || b[3] != b' ' || b[6] != b' ' || b[9] != b':' || b[12] != b':' || b[15] != b' ' {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == &s[..3])? as u32 + 1;
    let day: u32 = s[4..6].trim_start().parse().ok()?;
    let (h, m, sec): (u32, u32, u32) = (s[7..9].parse().ok()?, s[10..12].parse().ok()?, s[13..15].parse().ok()?);
    let at = |year: i32| {
        NaiveDate::from_ymd_opt(year, month, day)
            .and_then(|d| d.and_hms_opt(h, m, sec))
            .map(|t| Utc.from_utc_datetime(&t))
    };
    let year = now.year();
    // Within a day ahead is clock skew; further ahead is last year.
    let ts = match at(year) {
        Some(t) if t <= now + chrono::Duration::days(1) => t,
        _ => at(year - 1)?,
    };
    Some((ts.fixed_offset(), &s[16..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-11-27T12:00:00Z".parse().unwrap()
    }

    fn ts(s: &str) -> Option<DateTime<FixedOffset>> {
        Some(DateTime::parse_from_rfc3339(s).unwrap())
    }

    #[test]
    fn rfc5424_examples_from_the_rfc() {
        // RFC 5424 §6.5, example 1 (with the BOM before the message).
        let r = parse(
            "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \u{feff}'su root' failed for lonvick on /dev/pts/8".as_bytes(),
            now(),
        );
        assert_eq!(r.parse_error, None);
        assert_eq!((r.format, r.facility, r.severity), ("rfc5424", 4, 2));
        assert_eq!(r.timestamp, ts("2003-10-11T22:14:15.003Z"));
        assert_eq!(r.hostname.as_deref(), Some("mymachine.example.com"));
        assert_eq!(r.app_name.as_deref(), Some("su"));
        assert_eq!(r.proc_id, None);
        assert_eq!(r.msg_id.as_deref(), Some("ID47"));
        assert_eq!(r.message, "'su root' failed for lonvick on /dev/pts/8");
        // Example 2: microseconds and an offset, no MSGID, no SD.
        let r = parse(
            b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.",
            now(),
        );
        assert_eq!(r.parse_error, None);
        assert_eq!((r.facility, r.severity), (20, 5));
        assert_eq!(r.timestamp, ts("2003-08-24T05:14:15.000003-07:00"));
        assert_eq!(r.proc_id.as_deref(), Some("8710"));
        assert_eq!(r.message, "%% It's time to make the do-nuts.");
        // Examples 3 and 4: structured data, one and two elements.
        let r = parse(
            "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] \u{feff}An application event log entry...".as_bytes(),
            now(),
        );
        assert_eq!(r.parse_error, None);
        assert_eq!(r.structured_data["exampleSDID@32473"]["eventSource"], "Application");
        assert_eq!(r.structured_data["exampleSDID@32473"]["eventID"], "1011");
        assert_eq!(r.message, "An application event log entry...");
        let r = parse(
            br#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]"#,
            now(),
        );
        assert_eq!(r.parse_error, None);
        assert_eq!(r.structured_data.len(), 2);
        assert_eq!(r.structured_data["examplePriority@32473"]["class"], "high");
        assert_eq!(r.message, "");
    }

    #[test]
    fn rfc5424_escapes_and_nil_values() {
        let r = parse(br#"<14>1 - - - - - [a@1 q="say \"hi\" \\ \] \x"] m"#, now());
        assert_eq!(r.parse_error, None, "{r:?}");
        assert_eq!(r.timestamp, None);
        assert_eq!(r.hostname, None);
        assert_eq!(r.structured_data["a@1"]["q"], r#"say "hi" \ ] \x"#);
        assert_eq!(r.message, "m");
    }

    #[test]
    fn rfc3164_examples_from_the_rfc() {
        // RFC 3164 §5.4, example 1.
        let r = parse(
            b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
            now(),
        );
        assert_eq!(r.parse_error, None);
        assert_eq!((r.format, r.facility, r.severity), ("rfc3164", 4, 2));
        assert_eq!(r.timestamp, ts("2026-10-11T22:14:15Z"), "this year: October is past");
        assert_eq!(r.hostname.as_deref(), Some("mymachine"));
        assert_eq!(r.app_name.as_deref(), Some("su"));
        assert_eq!(r.message, "'su root' failed for lonvick on /dev/pts/8");
        // Example 2: a padded day, an IP as hostname, no TAG.
        let r = parse(b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!", now());
        assert_eq!(r.timestamp, ts("2026-02-05T17:32:18Z"));
        assert_eq!(r.hostname.as_deref(), Some("10.0.0.99"));
        assert_eq!(r.app_name, None);
        assert_eq!(r.message, "Use the BFG!");
        // Example 4: a timestamp that is not RFC 3164's: kept whole, flagged.
        let line = "<0>1990 Oct 22 10:52:01 TZ-6 scapegoat.dmz.example.org 10.1.2.3 sched[0]: That's All Folks!";
        let r = parse(line.as_bytes(), now());
        assert!(r.parse_error.is_some());
        assert_eq!((r.facility, r.severity), (0, 0));
        assert_eq!(r.message, &line[3..]);
        // A tag with a pid, no hostname (as many local daemons send).
        let r = parse(b"<30>Nov 27 11:59:00 cron[123]: job done", now());
        assert_eq!(r.hostname, None);
        assert_eq!(r.app_name.as_deref(), Some("cron"));
        assert_eq!(r.proc_id.as_deref(), Some("123"));
        assert_eq!(r.message, "job done");
    }

    #[test]
    fn the_year_of_a_bsd_timestamp_is_the_one_before_now() {
        let jan: DateTime<Utc> = "2027-01-02T00:00:00Z".parse().unwrap();
        let r = parse(b"<13>Dec 31 23:59:59 h app: late", jan);
        assert_eq!(r.timestamp, ts("2026-12-31T23:59:59Z"));
        // A few hours ahead (clock skew) stays this year.
        let r = parse(b"<13>Jan  2 03:00:00 h app: early", jan);
        assert_eq!(r.timestamp, ts("2027-01-02T03:00:00Z"));
        // Feb 29 in a year without one falls back a year, and then too: no date.
        let r = parse(
            b"<13>Feb 29 00:00:00 h app: leap",
            "2028-03-01T00:00:00Z".parse().unwrap(),
        );
        assert_eq!(r.timestamp, ts("2028-02-29T00:00:00Z"));
    }

    #[test]
    fn what_is_not_syslog_is_kept_with_a_reason() {
        for line in [&b"just text"[..], b"<999>1 - - - - - -", b"<01>x", b"", b"<", b"<13"] {
            let r = parse(line, now());
            assert!(r.parse_error.is_some(), "{line:?}: {r:?}");
            assert_eq!(r.message, String::from_utf8_lossy(line));
        }
        let r = parse(b"<13>1 not-a-time h a p m - msg", now());
        assert!(r.parse_error.as_deref().unwrap().contains("timestamp"), "{r:?}");
        let r = parse(b"<13>1 - h a p m [broken msg", now());
        assert!(r.parse_error.is_some());
        let r = parse(b"<13>Oct 11 22:14:15 h app: \xff\xfe bytes\r\n", now());
        assert!(r.invalid_utf8);
        assert_eq!(r.message, "\u{fffd}\u{fffd} bytes");
    }
}
