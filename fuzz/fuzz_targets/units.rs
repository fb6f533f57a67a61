//! Sizes and durations as users write them: parsed or refused, never
//! overflowing; what parses prints back to the same value.
#![no_main]

use evoke_connectors::units::{ByteSize, format_duration, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(size) = text.parse::<ByteSize>() {
        assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
    }
    if let Ok(d) = parse_duration(text) {
        assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
});
