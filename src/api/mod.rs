//! The HTTP API: `/v1` (functions, invocations, dead letters, logs),
//! `/healthz` and `/metrics`. Paths here are a contract.

mod error;
mod functions;
mod hooks;
mod invoke;
mod ops;
mod triggers;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

pub use error::ApiError;

use crate::invoker::Invoker;
use crate::registry::DeployedFunction;

/// Header carrying the invocation id on invoke responses.
pub const HDR_INVOCATION_ID: &str = "x-evoke-invocation-id";
/// Header selecting async invocation.
pub const HDR_INVOCATION_TYPE: &str = "x-evoke-invocation-type";

/// Shared state of the API handlers.
pub struct ApiState {
    pub invoker: Arc<Invoker>,
    pub token: Option<String>,
    /// Largest event body accepted by invoke.
    pub max_event_size: usize,
    /// Largest code accepted by deploy.
    pub max_code_size: usize,
    /// Whether the API listens on loopback only (webhooks without auth are
    /// refused otherwise).
    pub loopback: bool,
    /// Where webhook secrets come from.
    pub secrets: Secrets,
}

/// Webhook secrets by environment variable name: this process's environment,
/// unless overridden (tests, embedding).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub overrides: std::collections::HashMap<String, String>,
}

impl Secrets {
    pub fn get(&self, name: &str) -> Option<String> {
        self.overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .filter(|s| !s.is_empty())
    }
}

impl ApiState {
    /// Looks a function up: 404 when it does not exist, 503 when NATS
    /// cannot tell.
    pub async fn function(&self, name: &str) -> Result<Arc<DeployedFunction>, ApiError> {
        self.invoker
            .registry
            .get(name)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .ok_or_else(|| ApiError::not_found("function", name))
    }
}

/// Builds the router.
pub fn router(state: Arc<ApiState>) -> Router {
    let v1 = Router::new()
        .route("/functions", get(functions::list))
        .route(
            "/functions/{name}",
            get(functions::show).delete(functions::remove).put(functions::deploy),
        )
        .route("/functions/{name}/invoke", post(invoke::invoke))
        .route("/functions/{name}/dlq", get(ops::dlq_list))
        .route("/functions/{name}/dlq/redrive", post(ops::dlq_redrive))
        .route("/functions/{name}/dlq/{id}", get(ops::dlq_show))
        .route("/functions/{name}/logs", get(ops::logs))
        .route("/invocations/{id}", get(ops::invocation))
        .route("/triggers", get(triggers::list))
        .route(
            "/triggers/{name}",
            get(triggers::show).put(triggers::put).delete(triggers::remove),
        )
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .nest("/v1", v1)
        .route("/hooks/{trigger}", get(hooks::hook).post(hooks::hook).put(hooks::hook))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}

async fn auth(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Result<Response, ApiError> {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| evoke_connectors::webhook::constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing or wrong bearer token; set EVOKE_API_TOKEN to the server's token",
            ));
        }
    }
    Ok(next.run(req).await)
}
