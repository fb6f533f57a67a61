//! `/hooks/<trigger>`: webhook triggers. The request is authenticated against
//! exactly the bytes received, turned into an event (CloudEvents keep their
//! attributes), filtered, and then run at once (sync) or queued (async, 202
//! only after JetStream has it). A refused request publishes nothing.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use evoke_connectors::trigger::{Mode, SourceConfig};
use evoke_connectors::webhook::{self, AuthError};
use serde_json::json;

use super::invoke::{accepted, cloudevent, respond};
use super::triggers::last_event_key;
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
    let method = req.method().clone();
    // A GET carries its data in the query string, which body signatures do
    // not cover: signed schemes take only requests with a body (triggers
    // saved before this rule existed are held to it here).
    let allowed = |m: &str| m == method.as_str() && !(m == "GET" && config.auth.scheme.signs_body());
    if !config.methods.iter().any(|m| allowed(m)) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "this webhook accepts {}",
                config
                    .methods
                    .iter()
                    .filter(|m| allowed(m) || *m != "GET")
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if config.auth.scheme == webhook::Scheme::None && !s.loopback {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "AuthRequired",
            "this webhook has no auth and evoke listens beyond loopback; give the trigger an auth scheme",
        ));
    }
    let headers = req.headers().clone();
    let query = req.uri().query().map(str::to_string);
    let limit = usize::try_from(config.max_body.0).unwrap_or(usize::MAX);
    let body = super::read_body(req, limit, "EventTooLarge", "webhook body").await?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let secrets = config.auth.secret_env.resolve(|n| s.secrets.get(n));
    if let Err(e) = config.auth.verify(&header, &body, &secrets, Utc::now().timestamp()) {
        tracing::info!(trigger, error = %e, "webhook request refused");
        return Err(match e {
            // The node is misconfigured, not the sender: a 5xx, which
            // senders (GitHub, Stripe) retry once it is fixed.
            AuthError::NoSecret(_) => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SecretNotConfigured", e.to_string());
                e.retry_after = Some(60);
                e
            }
            _ => ApiError::new(StatusCode::UNAUTHORIZED, "InvalidSignature", e.to_string()),
        });
    }

    let mut event = match cloudevent(&headers, body.clone())? {
        Some(e) => e,
        None => {
            let (content_type, data) = if method == Method::GET {
                (
                    Some("application/x-www-form-urlencoded".to_string()),
                    Bytes::from(query.unwrap_or_default()),
                )
            } else {
                (header("content-type"), body)
            };
            webhook::wrap(
                &trigger,
                config.auth.scheme,
                &header,
                content_type,
                data,
                new_invocation_id(),
            )
        }
    };
    event.extensions.insert("evoketrigger".into(), trigger.clone());
    if let Some(filter) = &spec.filter
        && !filter.matches(&event)
    {
        return Ok((StatusCode::OK, Json(json!({ "filtered": true }))).into_response());
    }
    let f = s.function(&spec.function).await?;
    // The same delivery (a sender's retry) maps to the same invocation.
    let id = derived_invocation_id(&spec.function, &format!("hook.{trigger}.{}.{}", event.source, event.id));
    remember(&s, &trigger, &id);
    match config.mode {
        Mode::Async => accepted(&s, &f, &event, &id).await,
        Mode::Sync => respond(s.invoker.run_sync(&f, event, &id).await, &id),
    }
}

/// Notes the trigger's last event for `evoke triggers` (pipelined; best effort).
fn remember(s: &ApiState, trigger: &str, id: &str) {
    let kv = s.invoker.bus.state.clone();
    let key = last_event_key(trigger, "webhook");
    let value = json!({ "time": Utc::now(), "invocation": id }).to_string();
    tokio::spawn(async move {
        let _ = kv.put(key, Bytes::from(value)).await;
    });
}
