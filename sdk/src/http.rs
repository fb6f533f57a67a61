//! Outbound HTTP (`wasi:http`), allowed only where the function's spec
//! grants it (`grants = { http = ["https://api.example.com/*"] }`). A call
//! outside the grants fails at once with `HttpRequestDenied`; every call
//! counts toward the invocation's timeout.
//!
//! ```ignore
//! let r = evoke_sdk::http::get("https://api.example.com/v1/items")?;
//! let r = evoke_sdk::http::Request::post("https://hooks.example.com/x")
//!     .header("content-type", "application/json")
//!     .body(br#"{"ok":true}"#.to_vec())
//!     .send()?;
//! ```

use wasip2::http::outgoing_handler;
pub use wasip2::http::types::Method;
use wasip2::http::types::{Fields, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names are lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("the response is not the expected JSON: {e}"))
    }
}

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, String> {
    Request::new(Method::Get, url).send()
}

impl Request {
    pub fn new(method: Method, url: &str) -> Request {
        Request {
            method,
            url: url.to_string(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn post(url: &str) -> Request {
        Request::new(Method::Post, url)
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.as_bytes().to_vec()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Request {
        self.body = Some(body);
        self
    }

    /// Sends the request and reads the whole response. Errors name the
    /// `wasi:http` error code (e.g. `HttpRequestDenied` outside the grants).
    pub fn send(self) -> Result<Response, String> {
        let url = &self.url;
        let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return Err(format!("`{url}` is not an http:// or https:// address"));
        };
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let headers = Fields::from_list(&self.headers).map_err(|e| format!("bad header for `{url}`: {e:?}"))?;
        let request = OutgoingRequest::new(headers);
        let bad = |what: &str| format!("bad {what} in `{url}`");
        request.set_method(&self.method).map_err(|()| bad("method"))?;
        request.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
        request.set_authority(Some(authority)).map_err(|()| bad("host"))?;
        request.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
        let outgoing = request.body().map_err(|()| "the request body was taken".to_string())?;
        let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{url}: {e:?}"))?;
        if let Some(body) = &self.body {
            let stream = outgoing
                .write()
                .map_err(|()| "the request body stream was taken".to_string())?;
            // Written in pieces: a host takes at most a few MB per write.
            for chunk in body.chunks(1 << 16) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("{url}: writing the request body: {e:?}"))?;
            }
            drop(stream);
        }
        OutgoingBody::finish(outgoing, None).map_err(|e| format!("{url}: {e:?}"))?;
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or_else(|| format!("{url}: no response"))?
            .map_err(|()| format!("{url}: the response was taken"))?
            .map_err(|e| format!("{url}: {e:?}"))?;
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|()| format!("{url}: no response body"))?;
        let stream = incoming
            .stream()
            .map_err(|()| format!("{url}: no response body stream"))?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(1 << 16) {
                Ok(chunk) => body.extend(chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    let why = e.to_debug_string();
                    return Err(format!(
                        "{url}: reading the response body: {}",
                        why.lines().next().unwrap_or_default()
                    ));
                }
            }
        }
        Ok(Response { status, headers, body })
    }
}
