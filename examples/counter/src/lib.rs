//! Counts the events one instance has handled: state kept in the instance
//! survives between warm invocations, and `init` runs once per instance.
//! An event whose data is `fail` returns an error (handy to see retries), and
//! `trap` panics, which kills the instance.

use std::sync::atomic::{AtomicU64, Ordering};

use evoke_sdk::{Event, Function, Output};

static HANDLED: AtomicU64 = AtomicU64::new(0);
static INITS: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl Function for Counter {
    fn init() -> Result<(), String> {
        INITS.fetch_add(1, Ordering::Relaxed);
        evoke_sdk::info("counter instance started");
        Ok(())
    }

    fn handle(event: Event) -> Result<Output, String> {
        match event.data.as_slice() {
            b"fail" => return Err(format!("asked to fail (attempt {})", event.attempt())),
            b"trap" => panic!("asked to trap"),
            _ => {}
        }
        let n = HANDLED.fetch_add(1, Ordering::Relaxed) + 1;
        let body = format!(
            "{{\"count\":{n},\"inits\":{},\"attempt\":{}}}",
            INITS.load(Ordering::Relaxed),
            event.attempt()
        );
        Ok(Output::bytes(body.into_bytes(), "application/json"))
    }
}

evoke_sdk::function!(Counter);
