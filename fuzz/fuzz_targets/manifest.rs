//! `evoke.toml`: any text parses to a manifest or to a list of problems,
//! each with a path. No file is read.
#![no_main]

use std::path::Path;

use evoke::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Manifest::parse_with(text, Path::new("/fuzz"), |_| Ok(b"\0asm".to_vec())) {
        Ok(m) => {
            for t in m.triggers.values() {
                let _ = t.to_value();
            }
        }
        Err(problems) => assert!(!problems.is_empty()),
    }
});
