//! Calls out over HTTP with the SDK's `http` (allowed only by the function's
//! `grants = { http = [...] }`): `{"url": "http://127.0.0.1:9000/hooks/x"}`
//! answers `{"status": 200, "body": "..."}`, and with `"body"` it POSTs it.
//! A refused or failed request is a function error naming the `wasi:http`
//! error code.

use evoke_sdk::http::{self, Request};
use evoke_sdk::{Event, Function, Output};

#[derive(serde::Deserialize)]
struct Input {
    url: String,
    body: Option<String>,
}

struct Fetch;

impl Function for Fetch {
    fn handle(event: Event) -> Result<Output, String> {
        let input: Input = event.json()?;
        let response = match input.body {
            Some(body) => Request::post(&input.url)
                .header("content-type", "text/plain")
                .body(body.into_bytes())
                .send()?,
            None => http::get(&input.url)?,
        };
        evoke_sdk::info(format!("{} answered {}", input.url, response.status));
        let out = serde_json::json!({ "status": response.status, "body": response.text() });
        Ok(Output::bytes(out.to_string().into_bytes(), "application/json"))
    }
}

evoke_sdk::function!(Fetch);
