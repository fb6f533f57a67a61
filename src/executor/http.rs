//! Outbound HTTP for functions (`wasi:http/outgoing-handler`), by grant.
//!
//! A function may call only the addresses its spec grants
//! (`grants = { http = ["https://api.example.com/*"] }`); anything else
//! fails at once with `HTTP-request-denied` and a warning in the function's
//! log, never a hang. Names that resolve to link-local or cloud-metadata
//! addresses (169.254.0.0/16, fe80::/10, 100.100.100.200, fd00:ec2::254)
//! are refused unless the node allows them. Every request counts toward the
//! invocation's timeout (its connect and read timeouts are what is left of
//! it, and the invocation's own deadline cancels it), at most
//! [`MAX_IN_FLIGHT`] run at once per instance, a response body is capped
//! at [`MAX_RESPONSE_BYTES`], and each request is logged with its status
//! and duration.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::bindings::evoke::function::http as wit;
use super::sandbox::ComponentState;
use crate::invoker::destinations::metadata_address;
use crate::observe::logs::LogLevel;
use crate::registry::spec::HttpGrant;

/// Requests one instance may have in flight at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// The largest response body a function may read.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Log lines written by requests (some end after the call that made them),
/// shared with the requests' futures.
#[derive(Clone, Default)]
struct Notes(Arc<Mutex<Vec<(LogLevel, String)>>>);

impl Notes {
    fn lines(&self) -> std::sync::MutexGuard<'_, Vec<(LogLevel, String)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, level: LogLevel, message: String) {
        self.lines().push((level, message));
    }
}

/// What one instance may call, and its requests' bookkeeping.
pub struct HttpAccess {
    grants: Arc<[HttpGrant]>,
    allow_link_local: bool,
    in_flight: Arc<Semaphore>,
    /// When the current invocation must stop (copied from the sandbox).
    pub deadline: Instant,
    notes: Notes,
}

impl HttpAccess {
    pub fn new(grants: &[HttpGrant], allow_link_local: bool) -> HttpAccess {
        HttpAccess {
            grants: grants.into(),
            allow_link_local,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            deadline: Instant::now(),
            notes: Notes::default(),
        }
    }

    /// Takes the log lines requests wrote since the last call.
    pub fn take_notes(&self) -> Vec<(LogLevel, String)> {
        std::mem::take(&mut *self.notes.lines())
    }

    /// Why a request to `uri` is not granted, if it is not.
    fn refusal(&self, uri: &http::Uri) -> Option<String> {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let Some(host) = uri.host() else {
            return Some("the address has no host".into());
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if self.grants.iter().any(|g| g.allows(https, host, port, uri.path())) {
            return None;
        }
        Some(if self.grants.is_empty() {
            "the function has no http grants (add `grants = { http = [\"https://host/*\"] }` to its spec)".into()
        } else {
            let granted: Vec<String> = self.grants.iter().map(ToString::to_string).collect();
            format!("no grant matches (granted: {})", granted.join(", "))
        })
    }
}

type Io = Box<dyn Future<Output = Result<(), Error>> + Send>;
type Sent = Result<(http::Response<WasiBody>, Io), Error>;

/// Why a request did not get a response: `refused` says why when evoke
/// refused it (the same words went to the function's log).
struct Failure {
    error: Error,
    refused: Option<String>,
}

impl HttpAccess {
    /// Checks `request` against the grants, the in-flight cap and the
    /// address rules, then sends it; every outcome is noted for the log.
    fn dispatch(
        &mut self,
        request: http::Request<WasiBody>,
    ) -> impl Future<Output = Result<(http::Response<WasiBody>, Io), Failure>> + Send + 'static {
        let what = format!("{} {}", request.method(), request.uri());
        let notes = self.notes.clone();
        let refused_what = what.clone();
        let refuse = move |error: Error, why: String| {
            notes.push(LogLevel::Warn, format!("http: {refused_what} refused: {why}"));
            Failure {
                error,
                refused: Some(why),
            }
        };
        let admitted = match self.refusal(request.uri()) {
            Some(why) => Err(refuse(Error::HttpRequestDenied, why)),
            None => match self.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Ok(permit),
                Err(_) => Err(refuse(
                    Error::ConnectionLimitReached,
                    format!("{MAX_IN_FLIGHT} requests already in flight"),
                )),
            },
        };
        let left = self.deadline.saturating_duration_since(Instant::now());
        let options = RequestOptions {
            connect_timeout: Some(left),
            first_byte_timeout: Some(left),
            between_bytes_timeout: Some(left.max(Duration::from_millis(1))),
        };
        let allow_link_local = self.allow_link_local;
        let notes = self.notes.clone();
        async move {
            let permit = admitted?;
            let started = Instant::now();
            let ms = || started.elapsed().as_secs_f64() * 1e3;
            let mut request = request;
            if !allow_link_local {
                match check_addresses(request.uri()).await {
                    Err(why) => return Err(refuse(Error::DestinationIpProhibited, why)),
                    // Plain HTTP to a name: connect to the address just
                    // checked, not to whatever a second lookup answers (the
                    // Host header keeps the name). HTTPS keeps the name for
                    // TLS, whose certificate check a rebound name fails.
                    Ok(Some(ip)) if request.uri().scheme() == Some(&http::uri::Scheme::HTTP) => {
                        *request.uri_mut() = pinned(request.uri(), ip);
                    }
                    Ok(_) => {}
                }
            }
            match wasmtime_wasi_http::default_send_request(request, Some(options)).await {
                Ok((response, io)) => {
                    notes.push(
                        LogLevel::Info,
                        format!("http: {what} -> {} in {:.1} ms", response.status().as_u16(), ms()),
                    );
                    let response = response.map(|body| capped(body.boxed_unsync(), permit));
                    Ok((response, Box::new(io) as Io))
                }
                Err(e) => {
                    notes.push(LogLevel::Warn, format!("http: {what} failed after {:.1} ms: {e}", ms()));
                    Err(Failure {
                        error: e,
                        refused: None,
                    })
                }
            }
        }
    }
}

impl WasiHttpHooks for HttpAccess {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        fut: Io,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        drop(fut);
        let sent = self.dispatch(request);
        Box::new(async move { sent.await.map_err(|f| f.error) })
    }
}

/// `evoke:function/http`: one request, the whole response. Goes through
/// the same [`HttpAccess::dispatch`] as `wasi:http`, so grants, address
/// rules, the in-flight cap and log lines are the same.
impl wit::Host for ComponentState {
    async fn send(&mut self, request: wit::Request) -> Result<wit::Response, wit::Error> {
        self.http.deadline = self.sandbox.deadline;
        let deadline = tokio::time::Instant::from_std(self.sandbox.deadline);
        // A response must fit what the guest can still take into its memory.
        let limit = (MAX_RESPONSE_BYTES as u64).min(self.sandbox.limiter.available());
        let request = match outgoing(request) {
            Ok(r) => r,
            Err(why) => {
                self.http
                    .notes
                    .push(LogLevel::Warn, format!("http: bad request: {why}"));
                return Err(wit::Error::Invalid(why));
            }
        };
        let what = format!("{} {}", request.method(), request.uri());
        let sent = self.http.dispatch(request);
        let exchange = async move {
            let (response, io) = sent.await.map_err(|f| match f.refused {
                Some(why) => wit::Error::Denied(why),
                None => wit_error(f.error, limit),
            })?;
            // The connection's own task, stopped with the exchange.
            let io = AbortOnDrop(tokio::spawn(Box::into_pin(io)));
            let (parts, mut body) = response.into_parts();
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                return Err(wit::Error::TooLarge(limit));
            }
            let mut data = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| wit_error(e, limit))?;
                if let Ok(chunk) = frame.into_data() {
                    if (data.len() + chunk.len()) as u64 > limit {
                        return Err(wit::Error::TooLarge(limit));
                    }
                    data.extend_from_slice(&chunk);
                }
            }
            drop(io);
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            Ok(wit::Response {
                status: parts.status.as_u16(),
                headers,
                body: data,
            })
        };
        let outcome = tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or(Err(wit::Error::Timeout));
        match &outcome {
            Err(wit::Error::Timeout) => self.http.notes.push(
                LogLevel::Warn,
                format!("http: {what} ended: the invocation's time ran out"),
            ),
            Err(wit::Error::TooLarge(n)) => self.http.notes.push(
                LogLevel::Warn,
                format!("http: {what} refused: the response is larger than {n} bytes"),
            ),
            _ => {}
        }
        outcome
    }
}

/// The `wit` request as an HTTP request, or why it is not one.
fn outgoing(r: wit::Request) -> Result<http::Request<WasiBody>, String> {
    let method =
        http::Method::from_bytes(r.method.as_bytes()).map_err(|_| format!("`{}` is not an HTTP method", r.method))?;
    let uri: http::Uri = r.url.parse().map_err(|e| format!("`{}` is not a URL: {e}", r.url))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{}` is not an absolute http:// or https:// URL", r.url)),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{}` has no host", r.url))?
        .clone();
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, authority.as_str());
    for (name, value) in &r.headers {
        let name =
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a header name"))?;
        if wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(&name) {
            return Err(format!("the `{name}` header is set by evoke, not by functions"));
        }
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
        builder = builder.header(name, value);
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(r.body))
        .map_err(|never| match never {})
        .boxed_unsync();
    builder.body(body).map_err(|e| e.to_string())
}

/// A failed exchange as the `wit` error (the timeouts given to a request
/// are what is left of the invocation, so theirs is the invocation's).
fn wit_error(e: Error, limit: u64) -> wit::Error {
    match e {
        Error::ConnectionTimeout
        | Error::ConnectionReadTimeout
        | Error::ConnectionWriteTimeout
        | Error::HttpResponseTimeout
        | Error::DnsTimeout => wit::Error::Timeout,
        Error::HttpResponseBodySize(_) => wit::Error::TooLarge(limit),
        e => wit::Error::Transport(e.to_string()),
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves the request's host and refuses it when any address it has is
/// link-local or a metadata service's (a literal address is checked as is).
/// For a name, returns the address to connect to (IPv4 first).
async fn check_addresses(uri: &http::Uri) -> Result<Option<IpAddr>, String> {
    let host = uri.host().ok_or("the address has no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let literal = bare.parse::<IpAddr>().ok();
    let addresses: Vec<IpAddr> = match literal {
        Some(ip) => vec![ip],
        None => tokio::net::lookup_host((bare, 0))
            .await
            .map_err(|e| format!("`{host}` does not resolve: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    if let Some(ip) = addresses.iter().find(|ip| metadata_address(**ip)) {
        return Err(format!(
            "`{host}` is (or resolves to) {ip}, a link-local or cloud metadata address, which functions may not call (a node started with --allow-link-local-http allows it)"
        ));
    }
    if literal.is_some() {
        return Ok(None);
    }
    let first = addresses.iter().find(|ip| ip.is_ipv4()).or(addresses.first());
    Ok(first.copied())
}

/// `uri` with its host replaced by `ip` (port, path and query kept).
fn pinned(uri: &http::Uri, ip: IpAddr) -> http::Uri {
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let mut parts = uri.clone().into_parts();
    match format!("{host}{port}").parse() {
        Ok(authority) => parts.authority = Some(authority),
        Err(_) => return uri.clone(),
    }
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// The response body, failing with `HTTP-response-body-size` past
/// [`MAX_RESPONSE_BYTES`]; holds the in-flight slot until it is dropped.
fn capped(body: WasiBody, permit: tokio::sync::OwnedSemaphorePermit) -> WasiBody {
    http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
        .map_err(move |e| {
            let _held = &permit;
            match e.downcast::<Error>() {
                Ok(inner) => *inner,
                Err(_) => Error::HttpResponseBodySize(Some(MAX_RESPONSE_BYTES as u64)),
            }
        })
        .boxed_unsync()
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.http.deadline = self.sandbox.deadline;
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Empty;

    use super::*;

    fn request(url: &str) -> http::Request<WasiBody> {
        let body = Empty::<bytes::Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::get(url).body(body).unwrap()
    }

    async fn send(access: &mut HttpAccess, url: &str) -> Result<(), Error> {
        let sent = access.send_request(request(url), None, Box::new(async { Ok(()) }));
        std::pin::Pin::from(sent).await.map(|_| ())
    }

    #[test]
    fn one_call_requests_are_checked_before_anything_is_sent() {
        let req = |method: &str, url: &str, headers: &[(&str, &str)]| wit::Request {
            method: method.into(),
            url: url.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: b"x".to_vec(),
        };
        let ok = outgoing(req("POST", "http://example.com:8080/a?b=1", &[("x-id", "7")])).unwrap();
        assert_eq!(ok.method(), http::Method::POST);
        assert_eq!(ok.headers()["host"], "example.com:8080");
        assert_eq!(ok.headers()["x-id"], "7");
        for (r, why) in [
            (req("GE T", "http://example.com/", &[]), "is not an HTTP method"),
            (
                req("GET", "ftp://example.com/", &[]),
                "not an absolute http:// or https:// URL",
            ),
            (req("GET", "/relative", &[]), "not an absolute http:// or https:// URL"),
            (req("GET", "http://exa mple.com/", &[]), "is not a URL"),
            (
                req("GET", "http://example.com/", &[("host", "admin")]),
                "`host` header is set by evoke",
            ),
            (
                req("GET", "http://example.com/", &[("transfer-encoding", "chunked")]),
                "set by evoke",
            ),
            (
                req("GET", "http://example.com/", &[("bad header", "x")]),
                "is not a header name",
            ),
            (
                req("GET", "http://example.com/", &[("x", "a\nb")]),
                "not a valid header value",
            ),
        ] {
            let err = outgoing(r).unwrap_err();
            assert!(err.contains(why), "{err} lacks {why}");
        }
        assert!(matches!(
            wit_error(Error::ConnectionReadTimeout, 9),
            wit::Error::Timeout
        ));
        assert!(matches!(
            wit_error(Error::HttpResponseBodySize(None), 9),
            wit::Error::TooLarge(9)
        ));
        assert!(matches!(
            wit_error(Error::ConnectionRefused, 9),
            wit::Error::Transport(_)
        ));
    }

    #[tokio::test]
    async fn plain_http_names_connect_to_the_address_that_was_checked() {
        let uri: http::Uri = "http://localhost:9000/hooks/x?a=1".parse().unwrap();
        let ip = check_addresses(&uri).await.unwrap().expect("a name gets an address");
        assert!(!metadata_address(ip) && ip.is_loopback(), "{ip}");
        assert_eq!(pinned(&uri, ip).to_string(), format!("http://{ip}:9000/hooks/x?a=1"));
        let v6 = pinned(&"http://example.com/".parse().unwrap(), "::1".parse().unwrap());
        assert_eq!(v6.to_string(), "http://[::1]/");
        assert_eq!(
            check_addresses(&"http://127.0.0.1/".parse().unwrap()).await,
            Ok(None),
            "literals stay"
        );
    }

    #[tokio::test]
    async fn refusals_say_why_and_the_in_flight_cap_holds() {
        let grants: Vec<HttpGrant> = vec!["http://127.0.0.1:9/ok/*".parse().unwrap()];
        let mut access = HttpAccess::new(&grants, false);
        access.deadline = Instant::now() + Duration::from_secs(5);
        assert!(matches!(
            send(&mut access, "http://127.0.0.1:9/other").await,
            Err(Error::HttpRequestDenied)
        ));
        let notes = access.take_notes();
        assert_eq!(notes[0].0, LogLevel::Warn);
        assert!(
            notes[0]
                .1
                .contains("GET http://127.0.0.1:9/other refused: no grant matches (granted: http://127.0.0.1:9/ok/*)"),
            "{notes:?}"
        );

        // All slots taken (requests in flight): the next is refused at once.
        let held = access
            .in_flight
            .clone()
            .acquire_many_owned(MAX_IN_FLIGHT as u32)
            .await
            .unwrap();
        assert!(matches!(
            send(&mut access, "http://127.0.0.1:9/ok/x").await,
            Err(Error::ConnectionLimitReached)
        ));
        assert!(access.take_notes()[0].1.contains("8 requests already in flight"));
        drop(held);

        let mut none = HttpAccess::new(&[], false);
        assert!(matches!(
            send(&mut none, "https://example.com/").await,
            Err(Error::HttpRequestDenied)
        ));
        assert!(none.take_notes()[0].1.contains("has no http grants"));

        // Granted, but a metadata address: refused before any connection.
        let grants: Vec<HttpGrant> = vec!["http://169.254.169.254/*".parse().unwrap()];
        let mut meta = HttpAccess::new(&grants, false);
        assert!(matches!(
            send(&mut meta, "http://169.254.169.254/latest").await,
            Err(Error::DestinationIpProhibited)
        ));
    }
}
