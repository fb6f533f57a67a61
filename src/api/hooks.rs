//! `/hooks/<trigger>`: routes a request to its webhook trigger's source
//! (`evoke_connectors::webhook::receive`: method, auth, event, filter, dedupe
//! id), then queues what passes through the `Sink` like every other source
//! (async: 202 only once JetStream has it) or runs it at once (sync). A
//! refused request publishes nothing.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use evoke_connectors::source::Sink;
use evoke_connectors::trigger::{Mode, SourceConfig};
use evoke_connectors::webhook::{self, Received};
use serde_json::json;

use super::invoke::{queued, respond};
use super::{ApiError, ApiState};
use crate::invoker::{derived_invocation_id, new_invocation_id};

pub async fn hook(
    State(s): State<Arc<ApiState>>,
    Path(trigger): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("webhook trigger", &trigger);
    let stored = s.invoker.triggers.get(&trigger).await?.ok_or_else(not_found)?;
    let spec = stored
        .parsed()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InvalidTrigger", e))?;
    let SourceConfig::Webhook(config) = &spec.source else {
        return Err(not_found());
    };
    let method = req.method().as_str().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), v.to_string())))
        .collect();
    let limit = usize::try_from(config.max_body.0).unwrap_or(usize::MAX);
    let body = super::read_body(req, limit, "EventTooLarge", "webhook body").await?;
    let request = webhook::Request {
        method: &method,
        headers: &headers,
        query: query.as_deref(),
        body,
        now: Utc::now().timestamp(),
        fallback_id: new_invocation_id(),
    };
    let received = webhook::receive(
        &trigger,
        config,
        spec.filter.as_ref(),
        &request,
        |name| s.secrets.get(name),
        s.loopback,
    )
    .inspect_err(|e| tracing::info!(trigger, error = %e, "webhook request refused"))?;
    let Received::Event { event, dedupe_id } = received else {
        return Ok((StatusCode::OK, Json(json!({ "filtered": true }))).into_response());
    };
    let f = s.function(&spec.function).await?;
    let id = derived_invocation_id(&spec.function, &dedupe_id);
    remember(&s, &trigger, &id);
    match config.mode {
        Mode::Async => {
            let published = s.sink.publish(&spec.function, &event, &dedupe_id).await;
            let duplicate = published.map_err(|e| ApiError::from(e).with_invocation(&id))?;
            Ok(queued(&id, duplicate == evoke_connectors::source::Published::Duplicate))
        }
        Mode::Sync => respond(s.invoker.run_sync(&f, *event, &id).await, &id),
    }
}

/// Notes the trigger's last event for `evoke triggers` (in the background;
/// best effort).
fn remember(s: &ApiState, trigger: &str, id: &str) {
    use evoke_connectors::source::StateStore;
    let state = s.state.clone();
    let key = webhook::last_event_key(trigger);
    let value = json!({ "time": Utc::now(), "invocation": id }).to_string();
    tokio::spawn(async move {
        let _ = state.save(&key, &value).await;
    });
}
