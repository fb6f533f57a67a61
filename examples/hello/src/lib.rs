//! Greets the `name` in a JSON event: `{"name":"evoke"}` → `Hello, evoke!`.

use evoke_sdk::{Event, Function, Output};

#[derive(serde::Deserialize)]
struct Input {
    name: Option<String>,
}

struct Hello;

impl Function for Hello {
    fn handle(event: Event) -> Result<Output, String> {
        let name = if event.data.is_empty() {
            "world".to_string()
        } else {
            event.json::<Input>()?.name.unwrap_or_else(|| "world".to_string())
        };
        evoke_sdk::info(format!("greeting {name} (attempt {})", event.attempt()));
        Ok(Output::text(format!("Hello, {name}!")))
    }
}

evoke_sdk::function!(Hello);
