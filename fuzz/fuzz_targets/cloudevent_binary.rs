//! CloudEvents binary mode: `ce-*` headers (split from the input as
//! `name: value` lines, then a blank line and the body).
#![no_main]

use bytes::Bytes;
use evoke_connectors::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let headers: Vec<(&str, &str)> = head.lines().filter_map(|l| l.split_once(':')).collect();
    let content_type = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string());
    if let Ok(Some(event)) = Event::from_binary(headers.iter().copied(), content_type, Bytes::from(body.to_string())) {
        let again = Event::from_json(&event.to_json()).expect("a binary-mode event survives structured encoding");
        assert_eq!(again.id, event.id);
    }
});
