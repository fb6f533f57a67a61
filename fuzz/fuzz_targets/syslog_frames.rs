//! TCP syslog streams (RFC 6587 octet counting and newline framing, mixed):
//! any bytes split into frames no longer than the limit, cut ones marked,
//! and the reader always ends (a frame or an error, never a hang or panic).
#![no_main]

use evoke_connectors::syslog::Frames;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else { return };
    let max = 1 + usize::from(first) * 4;
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let mut frames = Frames::new(stream, max);
        let mut total = 0;
        while let Ok(Some(f)) = frames.next().await {
            assert!(f.bytes.len() <= max, "a frame of {} bytes past the limit {max}", f.bytes.len());
            assert!(f.truncated || !f.bytes.is_empty(), "an empty frame");
            total += f.bytes.len();
            assert!(total <= stream.len(), "more bytes out than in");
        }
    });
});
