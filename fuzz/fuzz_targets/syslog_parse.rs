//! Syslog lines as any sender (or attacker) writes them: every input gives
//! a record — facility and severity in range, the message a part of the
//! line — and a record always serializes; never a panic.
#![no_main]

use evoke_connectors::syslog::parse::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = chrono::DateTime::from_timestamp(1_795_000_000, 0).expect("a time");
    let r = parse(data, now);
    assert!(r.facility <= 23 && r.severity <= 7, "{r:?}");
    if !r.invalid_utf8 {
        let text = std::str::from_utf8(data).expect("valid UTF-8");
        assert!(text.contains(r.message.as_str()), "the message {:?} is not in the line", r.message);
    }
    serde_json::to_string(&r).expect("a record serializes");
});
