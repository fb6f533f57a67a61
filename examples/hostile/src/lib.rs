//! A deliberately badly behaved function, for evoke's sandbox tests: the
//! event data picks the misbehaviour, and `HOSTILE_INIT` makes `init` trap
//! (`trap`), fail (`fail`) or take 300 ms (`nap`).
//!
//! - `loop`: computes forever;
//! - `recurse`: recurses until the stack overflows;
//! - `huge-error`: fails with a 64 MiB error message;
//! - `log-spin`: calls the host `log` forever;
//! - `sleep`: sleeps in a host call (wasi:clocks) for an hour;
//! - `nap`: sleeps 300 ms, then answers `ok` (holds an instance a while);
//! - `status:<n>`: returns HTTP status `n` with framing headers it must not set;
//! - anything else: answers `ok`.

use evoke_sdk::{Event, Function, Output};

struct Hostile;

/// Recurses with scalars only, so each frame lives on wasm's own call stack
/// (not Rust's shadow stack in linear memory) until that overflows.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    std::hint::black_box(recurse(depth + 1)) ^ depth
}

impl Function for Hostile {
    fn init() -> Result<(), String> {
        match std::env::var("HOSTILE_INIT").as_deref() {
            Ok("trap") => panic!("init asked to trap"),
            Ok("fail") => Err("init asked to fail".into()),
            Ok("nap") => {
                std::thread::sleep(std::time::Duration::from_millis(300));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn handle(event: Event) -> Result<Output, String> {
        let data = String::from_utf8_lossy(&event.data).into_owned();
        match data.as_str() {
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "recurse" => Ok(Output::text(recurse(0).to_string())),
            "huge-error" => Err("E".repeat(64 << 20)),
            "log-spin" => loop {
                evoke_sdk::info("spinning");
            },
            "nap" => {
                std::thread::sleep(std::time::Duration::from_millis(300));
                Ok(Output::text("ok"))
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(Output::text("woke up"))
            }
            other => match other.strip_prefix("status:") {
                Some(code) => {
                    let status = code.parse().map_err(|_| format!("bad status {code}"))?;
                    let mut out = Output::text("framed").with_status(status);
                    out.headers = vec![
                        ("content-length".into(), "999999".into()),
                        ("transfer-encoding".into(), "chunked".into()),
                        ("connection".into(), "close".into()),
                        ("upgrade".into(), "websocket".into()),
                        ("x-kept".into(), "yes".into()),
                    ];
                    Ok(out)
                }
                None => Ok(Output::text("ok")),
            },
        }
    }
}

evoke_sdk::function!(Hostile);
