//! Cron schedules: parsing any line in any zone, then computing ticks
//! forwards and backwards from instants across the whole calendar.
#![no_main]

use chrono::{DateTime, Utc};
use evoke_connectors::schedule::Schedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (nums, rest) = data.split_at(16);
    let a = i64::from_le_bytes(nums[..8].try_into().unwrap());
    let b = i64::from_le_bytes(nums[8..].try_into().unwrap());
    let text = String::from_utf8_lossy(rest);
    let (line, zone) = text.split_once('|').unwrap_or((&text, "UTC"));
    let Ok(schedule) = Schedule::parse(line, zone) else {
        return;
    };
    let clamp = |s: i64| DateTime::<Utc>::from_timestamp(s.rem_euclid(8_000_000_000) - 4_000_000_000, 0);
    let (Some(from), Some(to)) = (clamp(a), clamp(b)) else {
        return;
    };
    if let Some(t) = schedule.next_after(from) {
        assert!(t.at > from, "next tick {t:?} not after {from}");
    }
    let (ticks, _) = schedule.latest_ticks(from.min(to), from.max(to), 5);
    assert!(ticks.len() <= 5);
    assert!(ticks.windows(2).all(|w| w[0].at < w[1].at), "{ticks:?}");
});
