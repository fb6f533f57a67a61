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
//!
//! Objects in the stores a function's grants name are read and written with
//! [`objects`]; the object behind an `s3` trigger's event is
//! [`Event::object`].

#[doc(hidden)]
pub mod http;

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

    /// The items of a batch event (`evoke.<kind>.batch`: queue and log
    /// triggers with `batch`), each a CloudEvent as JSON with its `id` and
    /// `data`; an error when the event is no batch.
    pub fn batch(&self) -> Result<Vec<serde_json::Value>, String> {
        let batch = self
            .datacontenttype
            .as_deref()
            .is_some_and(|ct| ct.starts_with("application/cloudevents-batch+json"));
        if !batch {
            return Err(format!("event {} is not a batch", self.id));
        }
        serde_json::from_slice(&self.data).map_err(|e| format!("batch data is not a JSON array: {e}"))
    }

    /// The object an `s3` trigger's event is about (`None` for other
    /// events): read it with [`objects::Object::get`].
    pub fn object(&self) -> Option<objects::Object> {
        let store = self.extension("evokestore")?;
        let key = self.subject.as_deref()?;
        Some(objects::Bucket::new(store, &self.source).object(key))
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

    /// The answer to a batch where only the items with these ids failed:
    /// evoke retries just those (as a smaller batch, up to the function's
    /// `retries`, then dead-letters them); the others count as done. Naming
    /// every item fails the whole batch, as an `Err` would.
    pub fn batch_item_failures<I, S>(ids: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let failures: Vec<serde_json::Value> = ids
            .into_iter()
            .map(|id| serde_json::json!({ "itemIdentifier": id.into() }))
            .collect();
        let body = serde_json::json!({ "batchItemFailures": failures }).to_string();
        Output::bytes(body.into_bytes(), "application/json")
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

/// Objects in S3-compatible stores (AWS S3, MinIO, Ceph RGW), as far as the
/// function's grants allow: `grants = { buckets = ["local/photos:read",
/// "local/thumbs:write"] }` in its spec. Calls count toward the invocation's
/// timeout.
///
/// ```ignore
/// use evoke_sdk::objects::{self, Bucket};
/// let data = objects::get("local", "photos", "cat.jpg")?;
/// let photos = Bucket::new("local", "photos");
/// let bytes = photos.get("cat.jpg")?;
/// Bucket::new("local", "thumbs").put("cat.jpg", &bytes, Some("image/jpeg"))?;
/// for object in photos.list("2026/") { println!("{}", object?.key); }
/// ```
pub mod objects {
    use crate::bindings::evoke::function::objects as wit;
    pub use wit::{Error, ObjectInfo};

    impl Error {
        /// The error in words (what `?` into a `String` error gives).
        pub fn message(&self) -> String {
            match self {
                Error::Denied(m) => format!("denied: {m}"),
                Error::NotFound(m) => format!("not found: {m}"),
                Error::TooLarge(n) => format!("the object is {n} bytes, too large to read whole; read it in ranges"),
                Error::Store(m) => format!("store error: {m}"),
                Error::Timeout => "the invocation's time ran out".to_string(),
                Error::Invalid(m) => format!("invalid: {m}"),
            }
        }
    }

    impl From<Error> for String {
        fn from(e: Error) -> String {
            e.message()
        }
    }

    /// Reads a whole object: `objects::get("local", "photos", "cat.jpg")`.
    pub fn get(store: &str, bucket: &str, key: &str) -> Result<Vec<u8>, Error> {
        Bucket::new(store, bucket).get(key)
    }

    /// Writes an object.
    pub fn put(
        store: &str,
        bucket: &str,
        key: &str,
        body: &[u8],
        content_type: Option<&str>,
    ) -> Result<ObjectInfo, Error> {
        Bucket::new(store, bucket).put(key, body, content_type)
    }

    /// An object's size, type and metadata.
    pub fn head(store: &str, bucket: &str, key: &str) -> Result<ObjectInfo, Error> {
        Bucket::new(store, bucket).object(key).head()
    }

    /// Every object under `prefix`.
    pub fn list(store: &str, bucket: &str, prefix: &str) -> Listing {
        Bucket::new(store, bucket).list(prefix)
    }

    /// Deletes an object (a missing one is not an error).
    pub fn delete(store: &str, bucket: &str, key: &str) -> Result<(), Error> {
        Bucket::new(store, bucket).delete(key)
    }

    /// A bucket of a store, by the names used in `evoke.toml`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Bucket {
        pub store: String,
        pub name: String,
    }

    /// One object: a bucket and a key.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Object {
        pub bucket: Bucket,
        pub key: String,
    }

    impl Bucket {
        pub fn new(store: impl Into<String>, name: impl Into<String>) -> Bucket {
            Bucket {
                store: store.into(),
                name: name.into(),
            }
        }

        pub fn object(&self, key: impl Into<String>) -> Object {
            Object {
                bucket: self.clone(),
                key: key.into(),
            }
        }

        /// Reads a whole object (refused with `too-large` beyond the memory
        /// the function has left).
        pub fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
            self.object(key).get()
        }

        /// Writes an object.
        pub fn put(&self, key: &str, body: &[u8], content_type: Option<&str>) -> Result<ObjectInfo, Error> {
            self.object(key).put(body, content_type)
        }

        /// Deletes an object (a missing one is not an error).
        pub fn delete(&self, key: &str) -> Result<(), Error> {
            self.object(key).delete()
        }

        /// Every object under `prefix`, page by page.
        pub fn list(&self, prefix: &str) -> Listing {
            Listing {
                bucket: self.clone(),
                prefix: prefix.to_string(),
                page: Vec::new().into_iter(),
                next: None,
                done: false,
            }
        }
    }

    impl Object {
        /// The whole body.
        pub fn get(&self) -> Result<Vec<u8>, Error> {
            self.get_with_info(None).map(|(_, body)| body)
        }

        /// The whole body and what the store says about it; refused with
        /// `too-large` beyond `max_bytes`.
        pub fn get_with_info(&self, max_bytes: Option<u64>) -> Result<(ObjectInfo, Vec<u8>), Error> {
            wit::get(&self.bucket.store, &self.bucket.name, &self.key, max_bytes)
        }

        /// `length` bytes from `offset` (fewer at the end).
        pub fn get_range(&self, offset: u64, length: u64) -> Result<Vec<u8>, Error> {
            wit::get_range(&self.bucket.store, &self.bucket.name, &self.key, offset, length)
        }

        /// Size, type and metadata, without the body.
        pub fn head(&self) -> Result<ObjectInfo, Error> {
            wit::head(&self.bucket.store, &self.bucket.name, &self.key)
        }

        /// A reader over the object in `chunk`-byte ranges: for objects
        /// larger than the function's memory.
        pub fn reader(&self, chunk: u64) -> Result<Reader, Error> {
            let size = self.head()?.size;
            Ok(Reader {
                object: self.clone(),
                size,
                offset: 0,
                chunk: chunk.max(1),
                buffer: Vec::new(),
                at: 0,
            })
        }

        pub fn put(&self, body: &[u8], content_type: Option<&str>) -> Result<ObjectInfo, Error> {
            self.put_with_metadata(body, content_type, &[])
        }

        /// Writes with user metadata (`x-amz-meta-*`; names starting with
        /// `evoke-` are reserved).
        pub fn put_with_metadata(
            &self,
            body: &[u8],
            content_type: Option<&str>,
            metadata: &[(String, String)],
        ) -> Result<ObjectInfo, Error> {
            wit::put(
                &self.bucket.store,
                &self.bucket.name,
                &self.key,
                body,
                content_type,
                metadata,
            )
        }

        pub fn delete(&self) -> Result<(), Error> {
            wit::delete(&self.bucket.store, &self.bucket.name, &self.key)
        }
    }

    /// Objects under a prefix; fetches pages of 1000 as it goes.
    pub struct Listing {
        bucket: Bucket,
        prefix: String,
        page: std::vec::IntoIter<ObjectInfo>,
        next: Option<String>,
        done: bool,
    }

    impl Iterator for Listing {
        type Item = Result<ObjectInfo, Error>;

        fn next(&mut self) -> Option<Self::Item> {
            loop {
                if let Some(o) = self.page.next() {
                    return Some(Ok(o));
                }
                if self.done {
                    return None;
                }
                match wit::list(
                    &self.bucket.store,
                    &self.bucket.name,
                    &self.prefix,
                    self.next.as_deref(),
                    1000,
                ) {
                    Ok(l) => {
                        self.done = l.next.is_none();
                        self.next = l.next;
                        self.page = l.objects.into_iter();
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    /// Reads an object range by range ([`Object::reader`]).
    pub struct Reader {
        object: Object,
        size: u64,
        offset: u64,
        chunk: u64,
        buffer: Vec<u8>,
        at: usize,
    }

    impl std::io::Read for Reader {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.buffer.len() {
                if self.offset >= self.size {
                    return Ok(0);
                }
                let length = self.chunk.min(self.size - self.offset);
                self.buffer = self
                    .object
                    .get_range(self.offset, length)
                    .map_err(|e| std::io::Error::other(e.message()))?;
                if self.buffer.is_empty() {
                    return Ok(0);
                }
                self.offset += self.buffer.len() as u64;
                self.at = 0;
            }
            let n = out.len().min(self.buffer.len() - self.at);
            out[..n].copy_from_slice(&self.buffer[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
}
