//! `/hooks/<trigger>`: routes a request to its trigger's source.
//!
//! - A webhook trigger: `evoke_connectors::webhook::receive` (method, auth,
//!   event, filter, dedupe id), then the event is queued through the `Sink`
//!   like every other source's (async: 202 only once JetStream has it) or
//!   run at once (sync).
//! - An s3 trigger with `via = "webhook"` (MinIO, Ceph): the notification's
//!   records are delivered one by one (`evoke_connectors::s3`), and 200
//!   answered only once every one is stored; otherwise 503, and the store's
//!   retry of the whole notification is deduplicated record by record.
//!
//! A refused request publishes nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use evoke_connectors::s3::{self, Notification, S3Config, Via};
use evoke_connectors::source::Sink;
use evoke_connectors::trigger::{Mode, SourceConfig, TriggerSpec, WebhookConfig};
use evoke_connectors::webhook::{self, Received, Refusal};
use serde_json::json;

use super::extract::Path;
use super::invoke::{queued, respond};
use super::{ApiError, ApiState};
use crate::invoker::{derived_invocation_id, new_invocation_id};

/// How long a notification's records may take to be stored before the
/// store is asked to send it again.
const NOTIFICATION_DEADLINE: Duration = Duration::from_secs(10);

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
    match &spec.source {
        SourceConfig::Webhook(config) => webhook(&s, &trigger, &spec, config, req).await,
        SourceConfig::S3(config) if config.via == Via::Webhook => notification(&s, &trigger, &spec, config, req).await,
        _ => Err(not_found()),
    }
}

/// What the source modules see of a request.
struct Incoming {
    method: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: bytes::Bytes,
}

impl Incoming {
    async fn read(req: Request, max_body: u64, what: &str) -> Result<Incoming, ApiError> {
        let method = req.method().as_str().to_string();
        let query = req.uri().query().map(str::to_string);
        let headers = super::text_headers(req.headers())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
        let body = super::read_body(req, limit, "EventTooLarge", what).await?;
        Ok(Incoming {
            method,
            query,
            headers,
            body,
        })
    }

    fn request(&self) -> webhook::Request<'_> {
        webhook::Request {
            method: &self.method,
            headers: &self.headers,
            query: self.query.as_deref(),
            body: self.body.clone(),
            now: Utc::now().timestamp(),
            fallback_id: new_invocation_id(),
        }
    }
}

async fn webhook(
    s: &Arc<ApiState>,
    trigger: &str,
    spec: &TriggerSpec,
    config: &WebhookConfig,
    req: Request,
) -> Result<Response, ApiError> {
    let incoming = Incoming::read(req, config.max_body.0, "webhook body").await?;
    let received = webhook::receive(
        trigger,
        config,
        spec.filter.as_ref(),
        &incoming.request(),
        |name| s.secrets.get(name),
        s.loopback,
    )
    .inspect_err(|e| tracing::info!(trigger, error = %e, "webhook request refused"))?;
    let Received::Event { event, dedupe_id } = received else {
        return Ok((StatusCode::OK, Json(json!({ "filtered": true }))).into_response());
    };
    let f = s.function(&spec.function).await?;
    let id = derived_invocation_id(&spec.function, &dedupe_id);
    remember(
        s,
        webhook::last_event_key(trigger),
        json!({ "time": Utc::now(), "invocation": id }),
    );
    match config.mode {
        Mode::Async => {
            let published = s.sink.publish(&spec.function, &event, &dedupe_id).await;
            let duplicate = published.map_err(|e| ApiError::from(e).with_invocation(&id))?;
            Ok(queued(&id, duplicate == evoke_connectors::source::Published::Duplicate))
        }
        Mode::Sync => respond(s.invoker.run_sync(&f, *event, &id).await, &id),
    }
}

/// An S3 event notification posted by the store (MinIO, Ceph).
async fn notification(
    s: &Arc<ApiState>,
    trigger: &str,
    spec: &TriggerSpec,
    config: &S3Config,
    req: Request,
) -> Result<Response, ApiError> {
    let incoming = Incoming::read(req, config.max_body().0, "notification").await?;
    let request = incoming.request();
    webhook::authorize(&config.auth(), &request, |name| s.secrets.get(name), s.loopback)
        .inspect_err(|e| tracing::info!(trigger, error = %e, "S3 notification refused"))?;
    match incoming.method.as_str() {
        "POST" | "PUT" => {}
        // A store checking that the endpoint is up.
        "GET" | "HEAD" => return Ok((StatusCode::OK, Json(json!({ "ok": true }))).into_response()),
        _ => return Err(Refusal::Method(vec!["POST".into(), "PUT".into()]).into()),
    }
    let records = match s3::notification::parse(&incoming.body) {
        Ok(Notification::Records(r)) => r,
        Ok(Notification::Test { bucket }) => {
            tracing::info!(trigger, ?bucket, "s3:TestEvent received and skipped");
            return Ok((StatusCode::OK, Json(json!({ "test": true }))).into_response());
        }
        Err(e) => {
            tracing::info!(trigger, error = %e, "S3 notification refused");
            return Err(ApiError::bad_request("InvalidNotification", e.to_string()));
        }
    };
    let chains = crate::sources::s3::KvChains::new(s.invoker.bus.chains.clone(), &config.store);
    let target = s3::S3Trigger {
        name: trigger.to_string(),
        function: spec.function.clone(),
        config: config.clone(),
        filter: spec.filter.clone(),
    };
    let delivered = target
        .deliver(&*s.sink, &chains, &records, tokio::time::sleep(NOTIFICATION_DEADLINE))
        .await;
    let Some(summary) = delivered else {
        return Err(ApiError::unavailable(format!(
            "JetStream did not store every record of the notification within {}s; send it again (records already stored are deduplicated)",
            NOTIFICATION_DEADLINE.as_secs()
        )));
    };
    remember(
        s,
        s3::last_event_key(trigger),
        json!({ "time": Utc::now(), "webhook": summary }),
    );
    Ok((StatusCode::OK, Json(json!(summary))).into_response())
}

/// Notes the trigger's last event for `evoke triggers` (in the background;
/// best effort).
fn remember(s: &ApiState, key: String, value: serde_json::Value) {
    use evoke_connectors::source::StateStore;
    let state = s.state.clone();
    tokio::spawn(async move {
        let _ = state.save(&key, &value.to_string()).await;
    });
}
