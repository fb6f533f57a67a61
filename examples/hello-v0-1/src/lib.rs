//! A function built against `evoke:function@0.1.0` (its WIT is vendored in
//! `wit/`), the world before `objects`: the test suite deploys it to prove
//! such functions keep running. Greets the event's data, and logs.

wit_bindgen::generate!({ path: "wit", world: "function" });

use evoke::function::host::{Level, log};

struct Old;

impl Guest for Old {
    fn init() -> Result<(), String> {
        Ok(())
    }

    fn handle(event: Event) -> Result<Output, String> {
        let name = String::from_utf8_lossy(&event.data).into_owned();
        log(Level::Info, &format!("v0.1 greeting {name}"));
        Ok(Output {
            body: format!("Hello from 0.1.0, {name}!").into_bytes(),
            content_type: Some("text/plain".into()),
            status: None,
            headers: Vec::new(),
        })
    }
}

export!(Old);
