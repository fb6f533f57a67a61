//! CloudEvents structured mode: any bytes either decode to an event that
//! survives its own encoding, or are refused with an error.
#![no_main]

use evoke_connectors::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::from_json(data) {
        let again = Event::from_json(&event.to_json()).expect("an event decodes from its own encoding");
        assert_eq!(again.id, event.id);
        assert_eq!(again.source, event.source);
        assert_eq!(again.ty, event.ty);
        assert_eq!(again.extensions, event.extensions);
    }
});
