//! Greets the `name` in a JSON event: `{"name":"evoke"}` → `Hello, evoke!`.
//! With `"status": 201` it also sets the HTTP status and an `x-greeted`
//! header, for HTTP callers (sync invokes and webhooks).

use evoke_sdk::{Event, Function, Output};

#[derive(serde::Deserialize)]
struct Input {
    name: Option<String>,
    status: Option<u16>,
}

struct Hello;

impl Function for Hello {
    fn handle(event: Event) -> Result<Output, String> {
        let input = if event.data.is_empty() {
            Input {
                name: None,
                status: None,
            }
        } else {
            event.json::<Input>()?
        };
        let name = input.name.unwrap_or_else(|| "world".to_string());
        evoke_sdk::info(format!("greeting {name} (attempt {})", event.attempt()));
        let mut out = Output::text(format!("Hello, {name}!"));
        if let Some(status) = input.status {
            out = out.with_status(status);
            out.headers.push(("x-greeted".into(), name));
        }
        Ok(out)
    }
}

evoke_sdk::function!(Hello);
