//! Rust guest SDK for evoke functions.
//!
//! Implement [`Function`] for a type and export it with [`function!`]; build
//! with `cargo build --target wasm32-wasip2 --release` and deploy the `.wasm`.
//!
//! ```ignore
//! struct Hello;
//! impl evoke_sdk::Function for Hello {
//!     fn handle(event: evoke_sdk::Event) -> Result<evoke_sdk::Output, String> {
//!         Ok(evoke_sdk::Output::text(format!("got {} bytes", event.data.len())))
//!     }
//! }
//! evoke_sdk::function!(Hello);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "function",
        pub_export_macro: true,
        export_macro_name: "__export_function_world",
        default_bindings_module: "evoke_sdk::bindings",
    });
}

#[doc(hidden)]
pub use bindings::Guest;
pub use bindings::evoke::function::host::Level;
pub use bindings::{Event, Output};

/// A function evoke can run. `init` runs once per new instance (cold start);
/// state kept in statics survives between warm invocations of one instance.
pub trait Function {
    /// Runs once when a new instance starts. An error fails the cold start.
    fn init() -> Result<(), String> {
        Ok(())
    }

    /// Handles one event. An `Err` is a function error that evoke retries.
    fn handle(event: Event) -> Result<Output, String>;
}

/// Exports a [`Function`] implementation as the component's `init`/`handle`.
#[macro_export]
macro_rules! function {
    ($t:ty) => {
        struct __EvokeExport;
        impl $crate::Guest for __EvokeExport {
            fn init() -> ::core::result::Result<(), ::std::string::String> {
                <$t as $crate::Function>::init()
            }
            fn handle(
                event: $crate::Event,
            ) -> ::core::result::Result<$crate::Output, ::std::string::String> {
                <$t as $crate::Function>::handle(event)
            }
        }
        $crate::bindings::__export_function_world!(__EvokeExport with_types_in $crate::bindings);
    };
}

impl Event {
    /// Parses the event data as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.data).map_err(|e| format!("event data is not the expected JSON: {e}"))
    }

    /// The value of an extension attribute such as `evokeattempt`.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The attempt number: 1 on first delivery, 2 on the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.extension("evokeattempt").and_then(|v| v.parse().ok()).unwrap_or(1)
    }
}

impl Output {
    /// A `text/plain` output.
    pub fn text(body: impl Into<String>) -> Output {
        Output::bytes(body.into().into_bytes(), "text/plain; charset=utf-8")
    }

    /// An `application/json` output.
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Output, String> {
        let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        Ok(Output::bytes(body, "application/json"))
    }

    /// Raw bytes with a content type.
    pub fn bytes(body: Vec<u8>, content_type: &str) -> Output {
        Output {
            body,
            content_type: Some(content_type.to_string()),
            status: None,
            headers: Vec::new(),
        }
    }

    /// Sets the HTTP status used when the caller is HTTP.
    pub fn with_status(mut self, status: u16) -> Output {
        self.status = Some(status);
        self
    }
}

/// Writes a line to the function's log.
pub fn log(level: Level, message: impl AsRef<str>) {
    bindings::evoke::function::host::log(level, message.as_ref());
}

/// Writes an info line to the function's log.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message);
}
