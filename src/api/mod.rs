//! The HTTP API: `/v1` (functions, invocations, dead letters, logs),
//! `/healthz` and `/metrics`. Paths here are a contract.

mod connections;
mod error;
mod extract;
mod functions;
mod hooks;
mod invoke;
mod ops;
mod stores;
mod triggers;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

pub use error::ApiError;

use crate::invoker::Invoker;
use crate::registry::DeployedFunction;

// Header names are `HeaderName` constants, not `&str`: a map looks a
// `&str` name up only after parsing it again, on every request.

/// HTTP header carrying the invocation id on invoke responses (a queued
/// event carries it as its subject's last token: [`crate::bus::invocation_in`]).
pub const HTTP_INVOCATION_ID: HeaderName = HeaderName::from_static("x-evoke-invocation-id");
/// Header selecting async invocation.
pub const HDR_INVOCATION_TYPE: HeaderName = HeaderName::from_static("x-evoke-invocation-type");
/// Header set to `true` on an async answer for an event already queued.
pub const HDR_DUPLICATE: HeaderName = HeaderName::from_static("x-evoke-duplicate");
/// Header saying whether a sync run started a new instance (`cold`) or
/// reused one (`warm`).
pub const HDR_START: HeaderName = HeaderName::from_static("x-evoke-start");

/// The largest JSON body `/v1` reads (specs, triggers, redrive requests).
pub const MAX_JSON_BODY: usize = 1 << 20;

/// Reads a request body of at most `limit` bytes. Too large is decided from
/// `Content-Length` before anything is read, or while streaming, so an
/// oversized body is never held in memory whole; it is answered 413 with
/// `code` and the JSON error shape.
pub async fn read_body(
    req: axum::extract::Request,
    limit: usize,
    code: &'static str,
    what: &str,
) -> Result<bytes::Bytes, ApiError> {
    let (parts, body) = req.into_parts();
    read_limited(&parts.headers, body, limit, code, what).await
}

/// [`read_body`] for a request already split into its headers and body.
pub async fn read_limited(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
    code: &'static str,
    what: &str,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code,
            format!("the {what} is larger than this server's limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large()
        } else {
            ApiError::bad_request("InvalidRequest", format!("cannot read the {what}: {e}"))
        }
    })
}

/// A request's headers as text. A value is read as UTF-8, or else as
/// ISO-8859-1, which is how HTTP read header bytes historically and how
/// clients such as Python's `http.client` send text that is not ASCII
/// (CloudEvents asks for such attribute values percent-encoded; not every
/// SDK does it).
pub fn text_headers(headers: &axum::http::HeaderMap) -> Vec<(&str, std::borrow::Cow<'_, str>)> {
    headers
        .iter()
        .map(|(name, value)| {
            let bytes = value.as_bytes();
            let text = match std::str::from_utf8(bytes) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => std::borrow::Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
            };
            (name.as_str(), text)
        })
        .collect()
}

/// Reads a JSON body of at most [`MAX_JSON_BODY`] bytes.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: axum::extract::Request,
    code: &'static str,
    what: &str,
) -> Result<T, ApiError> {
    let body = read_body(req, MAX_JSON_BODY, "BodyTooLarge", what).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(code, format!("the {what} is not valid JSON: {e}")))
}

/// Shared state of the API handlers.
pub struct ApiState {
    pub invoker: Arc<Invoker>,
    pub token: Option<String>,
    /// Bearer token `/metrics` requires, if any.
    pub metrics_token: Option<String>,
    /// Largest event body accepted by invoke.
    pub max_event_size: usize,
    /// Largest code accepted by deploy.
    pub max_code_size: usize,
    /// Whether the API listens on loopback only (webhooks without auth are
    /// refused otherwise).
    pub loopback: bool,
    /// Where webhook secrets come from.
    pub secrets: Secrets,
    /// Where the webhook source queues what it receives (the source contract).
    pub sink: Arc<crate::sources::NatsSink>,
    /// Where sources keep their small state (a webhook's last event).
    pub state: Arc<crate::sources::KvState>,
}

pub use crate::secrets::Secrets;

impl ApiState {
    /// Looks a function up: 404 when it does not exist, 503 when NATS
    /// cannot tell.
    pub async fn function(&self, name: &str) -> Result<Arc<DeployedFunction>, ApiError> {
        self.invoker
            .registry
            .get(name)
            .await?
            .ok_or_else(|| ApiError::not_found("function", name))
    }
}

/// Builds the router.
pub fn router(state: Arc<ApiState>) -> Router {
    let v1 = Router::new()
        .route("/v1/functions", get(functions::list))
        .route(
            "/v1/functions/{name}",
            get(functions::show).delete(functions::remove).put(functions::deploy),
        )
        .route("/v1/functions/{name}/invoke", post(invoke::invoke))
        .route("/v1/functions/{name}/dlq", get(ops::dlq_list))
        .route("/v1/functions/{name}/dlq/redrive", post(ops::dlq_redrive))
        .route("/v1/functions/{name}/dlq/{id}", get(ops::dlq_show))
        .route("/v1/functions/{name}/logs", get(ops::logs))
        .route("/v1/invocations/{id}", get(ops::invocation))
        .route("/v1/status", get(ops::status))
        .route("/v1/triggers", get(triggers::list))
        .route(
            "/v1/triggers/{name}",
            get(triggers::show).put(triggers::put).delete(triggers::remove),
        )
        .route("/v1/triggers/{name}/backfill", post(triggers::backfill))
        .route("/v1/connections", get(connections::list))
        .route(
            "/v1/connections/{name}",
            get(connections::show).put(connections::put).delete(connections::remove),
        )
        .route("/v1/stores", get(stores::list))
        .route(
            "/v1/stores/{name}",
            get(stores::show).put(stores::put).delete(stores::remove),
        )
        .layer(DefaultBodyLimit::disable());
    // Without a token there is nothing to check: no layer on every request.
    let v1 = match state.token {
        Some(_) => v1.layer(middleware::from_fn_with_state(state.clone(), auth)),
        None => v1,
    };
    // Merged, not nested: a nested router strips its prefix from every
    // request's URI (a new URI each) and routes twice.
    Router::new()
        .merge(v1)
        .route("/hooks/{trigger}", get(hooks::hook).post(hooks::hook).put(hooks::hook))
        .route("/healthz", get(ops::healthz))
        .route(
            "/metrics",
            get(ops::metrics).layer(middleware::from_fn_with_state(state.clone(), metrics_auth)),
        )
        // Answered in the error shape too (after every route: the 405
        // handler is given to the routes there are).
        .fallback(extract::no_route)
        .method_not_allowed_fallback(extract::wrong_method)
        .with_state(state)
}

/// A named config read from a request (`PUT /v1/stores/{name}`,
/// `/v1/connections/{name}`): the name checked beside every problem of
/// `parsed`, all answered at once as 400 `code`.
fn named_config<T>(
    name: &str,
    what: &str,
    code: &'static str,
    parsed: Result<T, Vec<evoke_connectors::trigger::Problem>>,
) -> Result<T, ApiError> {
    let mut errors = Vec::new();
    if !crate::registry::valid_name(name) {
        errors.push(crate::registry::FieldError {
            field: "name".into(),
            message: format!(
                "`{name}` is not a valid {what} name: use 1-63 characters, lower-case letters, digits and `-`, starting with a letter"
            ),
        });
    }
    match parsed {
        Ok(c) if errors.is_empty() => return Ok(c),
        Ok(_) => {}
        Err(problems) => errors.extend(
            problems
                .into_iter()
                .map(|(field, message)| crate::registry::FieldError { field, message }),
        ),
    }
    let mut e = ApiError::invalid(errors);
    e.code = code;
    Err(e)
}

/// Whether the request carries `Authorization: Bearer <token>`.
fn bearer_ok(req: &Request, token: &str) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|g| evoke_connectors::webhook::constant_time_eq(g.as_bytes(), token.as_bytes()))
}

async fn auth(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Result<Response, ApiError> {
    if let Some(token) = &state.token
        && !bearer_ok(&req, token)
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing or wrong bearer token; set EVOKE_API_TOKEN to the server's token",
        ));
    }
    Ok(next.run(req).await)
}

async fn metrics_auth(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Result<Response, ApiError> {
    if let Some(token) = &state.metrics_token
        && !bearer_ok(&req, token)
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "/metrics needs `Authorization: Bearer <token>`: the --metrics-token, or the API token when none is set",
        ));
    }
    Ok(next.run(req).await)
}
