//! Cron schedules: parsing (5-field Unix lines, 6/7-field lines with seconds,
//! `@hourly`-style macros, `@every 30s`) and tick computation in an IANA time
//! zone, with explicit daylight-saving rules. Pure functions of the times they
//! are given, so they are tested with injected times.
//!
//! # Daylight saving time
//!
//! Schedules are read as local wall-clock times. Around a transition:
//! - **Clocks go back** (a local hour happens twice): a tick fires once, at
//!   the first occurrence of its local time. It does not fire again an hour
//!   later.
//! - **Clocks go forward** (a local hour does not exist): ticks whose local
//!   time falls in the gap fire once, at the first instant after the gap
//!   (e.g. 03:00 for a 02:30 tick when 02:00–03:00 is skipped), and a warning
//!   is logged. If the schedule also has a tick at that instant, it fires
//!   once.
//!
//! `@every` intervals are counted from the Unix epoch in UTC, so every node
//! computes the same ticks and time zones do not apply.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// The longest `@every` interval.
pub const MAX_EVERY: Duration = Duration::from_secs(366 * 86400);

/// When a trigger fires.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron { expr: Box<cron::Schedule>, tz: Tz },
    Every(Duration),
}

/// One firing: the instant, and whether its local time fell in a DST gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub at: DateTime<Utc>,
    pub shifted_by_dst: bool,
}

impl Schedule {
    /// Parses a schedule line in the given time zone (IANA name).
    pub fn parse(line: &str, timezone: &str) -> Result<Schedule, String> {
        let tz = Tz::from_str(timezone).map_err(|_| {
            format!("`{timezone}` is not an IANA time zone name (e.g. UTC, Europe/Berlin, Asia/Shanghai)")
        })?;
        let line = line.trim();
        if let Some(every) = line.strip_prefix("@every") {
            let d = crate::units::parse_duration(every.trim()).map_err(|e| format!("`@every`: {e}"))?;
            if d < Duration::from_secs(1) || d > MAX_EVERY {
                return Err("`@every` takes 1s to 366d".into());
            }
            return Ok(Schedule::Every(d));
        }
        let six = if line.starts_with('@') {
            line.to_string()
        } else {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.len() {
                5 => format!(
                    "0 {} {} {} {} {}",
                    fields[0],
                    fields[1],
                    fields[2],
                    fields[3],
                    unix_weekdays(fields[4])?
                ),
                6 | 7 => fields.join(" "),
                n => {
                    return Err(format!(
                        "`{line}` has {n} fields; write 5 (min hour day month weekday), 6 (with seconds first) or @every 30s"
                    ));
                }
            }
        };
        let expr = cron::Schedule::from_str(&six).map_err(|e| format!("`{line}` is not a cron schedule: {e}"))?;
        Ok(Schedule::Cron {
            expr: Box::new(expr),
            tz,
        })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<Tick> {
        match self {
            Schedule::Every(d) => {
                let step = d.as_millis() as i64;
                let now = after.timestamp_millis();
                let next = now.div_euclid(step).checked_add(1)?.checked_mul(step)?;
                Some(Tick {
                    at: DateTime::from_timestamp_millis(next)?,
                    shifted_by_dst: false,
                })
            }
            Schedule::Cron { expr, tz } => {
                // Walk the schedule in local wall-clock time (a naive time
                // dressed as UTC), mapping each local time to an instant.
                let local_after = after.with_timezone(tz).naive_local();
                for naive in expr
                    .after(&Utc.from_utc_datetime(&local_after))
                    .map(|t| t.naive_utc())
                    .take(10_000)
                {
                    let tick = to_instant(tz, naive)?;
                    if tick.at > after {
                        return Some(tick);
                    }
                }
                None
            }
        }
    }

    /// The newest ticks in `(after, until]`, at most `max`, oldest first,
    /// and whether older ones in the range were left out. Computed from
    /// `until` backwards, so a gap of years costs `max` steps, not one step
    /// per missed tick.
    pub fn latest_ticks(&self, after: DateTime<Utc>, until: DateTime<Utc>, max: usize) -> (Vec<Tick>, bool) {
        if max == 0 || until <= after {
            return (Vec::new(), false);
        }
        let mut out: Vec<Tick> = Vec::new();
        let mut more = false;
        match self {
            Schedule::Every(d) => {
                let step = d.as_millis() as i64;
                let first = after.timestamp_millis().div_euclid(step).saturating_add(1);
                let last = until.timestamp_millis().div_euclid(step);
                let count = last.saturating_sub(first).saturating_add(1).max(0);
                more = count > max as i64;
                let from = last.saturating_sub(max as i64 - 1).max(first);
                for n in from..=last {
                    if let Some(at) = n.checked_mul(step).and_then(DateTime::from_timestamp_millis) {
                        out.push(Tick {
                            at,
                            shifted_by_dst: false,
                        });
                    }
                }
            }
            Schedule::Cron { expr, tz } => {
                // Walk back from `until` in local wall-clock time. A tick one
                // second past `until` bounds the walk (cron's iterator yields
                // times strictly before its start when run backwards).
                let local_until = (until + chrono::Duration::seconds(1)).with_timezone(tz).naive_local();
                for naive in expr
                    .after(&Utc.from_utc_datetime(&local_until))
                    .rev()
                    .map(|t| t.naive_utc())
                {
                    let Some(tick) = to_instant(tz, naive) else { continue };
                    if tick.at > until {
                        continue;
                    }
                    if tick.at <= after {
                        break;
                    }
                    if out.last().is_some_and(|t| t.at == tick.at) {
                        continue;
                    }
                    if out.len() == max {
                        more = true;
                        break;
                    }
                    out.push(tick);
                }
                out.reverse();
            }
        }
        (out, more)
    }

    /// Ticks in `(after, until]`, oldest first, at most `max` (the newest
    /// ones are kept when there are more).
    pub fn ticks_between(&self, after: DateTime<Utc>, until: DateTime<Utc>, max: usize) -> Vec<Tick> {
        let mut out = std::collections::VecDeque::new();
        let mut cursor = after;
        while let Some(t) = self.next_after(cursor) {
            if t.at > until {
                break;
            }
            out.push_back(t);
            if out.len() > max {
                out.pop_front();
            }
            cursor = t.at;
        }
        out.into()
    }
}

/// The instant of a local wall-clock time, by the DST rules above.
fn to_instant(tz: &Tz, naive: NaiveDateTime) -> Option<Tick> {
    Some(match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Tick {
            at: t.with_timezone(&Utc),
            shifted_by_dst: false,
        },
        LocalResult::Ambiguous(first, _) => Tick {
            at: first.with_timezone(&Utc),
            shifted_by_dst: false,
        },
        LocalResult::None => Tick {
            at: gap_end(tz, naive)?,
            shifted_by_dst: true,
        },
    })
}

/// The first valid instant after a local time that does not exist.
fn gap_end(tz: &Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    let mut probe = naive;
    for _ in 0..(24 * 60) {
        probe += chrono::Duration::minutes(1);
        let truncated = probe.with_second(0)?.with_nanosecond(0)?;
        if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) = tz.from_local_datetime(&truncated) {
            return Some(t.with_timezone(&Utc));
        }
    }
    None
}

/// Maps a Unix weekday field (0–7, 0 and 7 = Sunday) to the cron crate's
/// (1–7, 1 = Sunday). Names (MON, tue) are the same in both.
fn unix_weekdays(field: &str) -> Result<String, String> {
    let map = |s: &str| -> Result<String, String> {
        match s.parse::<u8>() {
            Ok(n @ 0..=6) => Ok((n + 1).to_string()),
            Ok(7) => Ok("1".into()),
            Ok(n) => Err(format!("weekday {n} is out of range 0-7")),
            Err(_) => Ok(s.to_string()),
        }
    };
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let step = step.map(|s| format!("/{s}")).unwrap_or_default();
        let mapped = match range.split_once('-') {
            Some((a, "7")) if a.parse::<u8>().is_ok() && step.is_empty() => {
                // "5-7" (Friday to Sunday) wraps in the 1-based numbering.
                format!("{}-7,1", map(a)?)
            }
            Some((a, b)) => format!("{}-{}{step}", map(a)?, map(b)?),
            None if range == "*" || range == "?" => format!("{range}{step}"),
            None => format!("{}{step}", map(range)?),
        };
        items.push(mapped);
    }
    Ok(items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_field_lines_get_seconds_and_unix_weekdays() {
        // 09:30 on Mondays (Unix 1 = Monday).
        let s = Schedule::parse("30 9 * * 1", "UTC").unwrap();
        // 2026-11-26 is a Thursday; the next Monday is 2026-11-30.
        assert_eq!(
            s.next_after(utc("2026-11-26T00:00:00Z")).unwrap().at,
            utc("2026-11-30T09:30:00Z")
        );
        // Sunday as 0 and as 7.
        for line in ["0 12 * * 0", "0 12 * * 7", "0 12 * * SUN"] {
            let s = Schedule::parse(line, "UTC").unwrap();
            assert_eq!(
                s.next_after(utc("2026-11-26T00:00:00Z")).unwrap().at,
                utc("2026-11-29T12:00:00Z"),
                "{line}"
            );
        }
        // Friday to Sunday wraps.
        let s = Schedule::parse("0 0 * * 5-7", "UTC").unwrap();
        let ticks = s.ticks_between(utc("2026-11-26T00:00:00Z"), utc("2026-12-01T00:00:00Z"), 10);
        let days: Vec<_> = ticks.iter().map(|t| t.at.format("%a").to_string()).collect();
        assert_eq!(days, ["Fri", "Sat", "Sun"]);
    }

    #[test]
    fn six_fields_macros_and_every() {
        let s = Schedule::parse("*/2 * * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-11-26T00:00:01Z")).unwrap().at,
            utc("2026-11-26T00:00:02Z")
        );
        let s = Schedule::parse("@hourly", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-11-26T10:20:00Z")).unwrap().at,
            utc("2026-11-26T11:00:00Z")
        );
        let s = Schedule::parse("@every 30s", "Asia/Shanghai").unwrap();
        assert_eq!(
            s.next_after(utc("2026-11-26T10:20:10Z")).unwrap().at,
            utc("2026-11-26T10:20:30Z")
        );
        assert_eq!(
            s.next_after(utc("2026-11-26T10:20:30Z")).unwrap().at,
            utc("2026-11-26T10:21:00Z")
        );
    }

    #[test]
    fn time_zones_shift_ticks() {
        // 08:00 in Shanghai (UTC+8) is midnight UTC.
        let s = Schedule::parse("0 8 * * *", "Asia/Shanghai").unwrap();
        assert_eq!(
            s.next_after(utc("2026-11-26T01:00:00Z")).unwrap().at,
            utc("2026-11-27T00:00:00Z")
        );
    }

    #[test]
    fn clocks_going_back_fire_once() {
        // Europe/Berlin leaves DST on 2026-10-25: 03:00 CEST -> 02:00 CET,
        // so 02:30 local happens at 00:30Z and again at 01:30Z.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let ticks = s.ticks_between(utc("2026-10-24T12:00:00Z"), utc("2026-10-26T12:00:00Z"), 10);
        let at: Vec<_> = ticks.iter().map(|t| t.at).collect();
        assert_eq!(at, [utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]);
    }

    #[test]
    fn clocks_going_forward_fire_after_the_gap_not_never() {
        // Europe/Berlin enters DST on 2026-03-29: 02:00 CET -> 03:00 CEST,
        // so 02:30 local does not exist that day. It fires at 03:00 CEST (01:00Z).
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let ticks = s.ticks_between(utc("2026-03-28T12:00:00Z"), utc("2026-03-30T12:00:00Z"), 10);
        assert_eq!(ticks.len(), 2);
        assert_eq!(
            ticks[0],
            Tick {
                at: utc("2026-03-29T01:00:00Z"),
                shifted_by_dst: true
            }
        );
        assert_eq!(ticks[1].at, utc("2026-03-30T00:30:00Z"));
        // Every minute through the gap: one firing at its end, not 60.
        let s = Schedule::parse("* 2 * * *", "Europe/Berlin").unwrap();
        let ticks = s.ticks_between(utc("2026-03-29T00:00:00Z"), utc("2026-03-29T02:00:00Z"), 100);
        assert_eq!(ticks.len(), 1, "{ticks:?}");
    }

    #[test]
    fn catch_up_keeps_the_newest_ticks() {
        let s = Schedule::parse("@every 10s", "UTC").unwrap();
        let ticks = s.ticks_between(utc("2026-11-26T00:00:00Z"), utc("2026-11-26T00:01:00Z"), 2);
        let at: Vec<_> = ticks.iter().map(|t| t.at).collect();
        assert_eq!(at, [utc("2026-11-26T00:00:50Z"), utc("2026-11-26T00:01:00Z")]);
    }

    #[test]
    fn latest_ticks_are_computed_backwards_and_match_a_forward_walk() {
        for (line, tz) in [
            ("@every 10s", "UTC"),
            ("*/7 * * * *", "UTC"),
            ("30 2 * * *", "Europe/Berlin"),
            ("* 2 * * *", "Europe/Berlin"),
            ("0 0 * * 5-7", "Asia/Shanghai"),
        ] {
            let s = Schedule::parse(line, tz).unwrap();
            for (from, to) in [
                ("2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"),
                ("2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
                ("2026-11-26T00:00:00Z", "2026-11-26T00:01:00Z"),
            ] {
                for max in [1, 3, 1000] {
                    let forward = s.ticks_between(utc(from), utc(to), max);
                    let (backward, more) = s.latest_ticks(utc(from), utc(to), max);
                    assert_eq!(backward, forward, "{line} {tz} {from}..{to} max {max}");
                    let all = s.ticks_between(utc(from), utc(to), usize::MAX);
                    assert_eq!(more, all.len() > max, "{line} {from} max {max}");
                }
            }
        }
    }

    #[test]
    fn a_years_long_gap_costs_max_steps() {
        let s = Schedule::parse("@every 1s", "UTC").unwrap();
        let (ticks, more) = s.latest_ticks(utc("1970-01-01T00:00:00Z"), utc("2026-11-26T00:00:00Z"), 2);
        assert!(more);
        assert_eq!(
            ticks.iter().map(|t| t.at).collect::<Vec<_>>(),
            [utc("2026-11-25T23:59:59Z"), utc("2026-11-26T00:00:00Z")]
        );
        let s = Schedule::parse("* * * * * *", "Europe/Berlin").unwrap();
        let start = std::time::Instant::now();
        let (ticks, more) = s.latest_ticks(utc("2000-01-01T00:00:00Z"), utc("2026-11-26T00:00:00Z"), 1);
        assert!(more && ticks.len() == 1 && ticks[0].at == utc("2026-11-26T00:00:00Z"));
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "walked the gap");
    }

    #[test]
    fn hostile_every_intervals_are_refused_not_overflowed() {
        for line in [
            "@every 18446744073709551615d",
            "@every 18446744073709551615s",
            "@every 9223372036854775807h",
            "@every 367d",
            "@every 0s",
            "@every -1s",
            "@every ",
            "@every d",
        ] {
            assert!(Schedule::parse(line, "UTC").is_err(), "{line}");
        }
        let s = Schedule::parse("@every 366d", "UTC").unwrap();
        assert!(
            s.next_after(DateTime::<Utc>::MAX_UTC - chrono::Duration::days(1))
                .is_none()
        );
        assert!(s.next_after(DateTime::<Utc>::MIN_UTC).is_some());
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert!(Schedule::parse("* * *", "UTC").unwrap_err().contains("3 fields"));
        assert!(
            Schedule::parse("61 * * * *", "UTC")
                .unwrap_err()
                .contains("not a cron schedule")
        );
        assert!(
            Schedule::parse("* * * * *", "Mars/Olympus")
                .unwrap_err()
                .contains("IANA")
        );
        assert!(Schedule::parse("@every 5 parsecs", "UTC").is_err());
        assert!(
            Schedule::parse("0 0 * * 9", "UTC")
                .unwrap_err()
                .contains("out of range")
        );
    }
}
