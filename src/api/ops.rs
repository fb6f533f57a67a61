//! Invocation records, dead letters, logs, health and metrics.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState};
use crate::bus;
use crate::invoker::dlq::DlqError;
use crate::observe::logs::LogBatch;
use crate::observe::metrics::StateLabel;

pub async fn healthz(State(s): State<Arc<ApiState>>) -> Response {
    let nats = s.invoker.bus.client.connection_state();
    let ok = matches!(nats, async_nats::connection::State::Connected);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "status": if ok { "ok" } else { "degraded" }, "nats": format!("{nats:?}").to_lowercase(), "node": s.invoker.node }))).into_response()
}

/// Prometheus text. Cheap to scrape: counters are kept in memory, instance
/// counts are read from this node's executor, and the NATS-backed gauges
/// (queue and DLQ depth) are refreshed in the background (see
/// [`crate::observe::metrics::refresh_depths`]), never per scrape.
pub async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    let inv = &s.invoker;
    inv.metrics.instances.clear();
    for st in inv.executor.stats() {
        inv.metrics
            .instances
            .get_or_create(&StateLabel {
                function: st.function.clone(),
                state: "idle".into(),
            })
            .set(st.idle as i64);
        inv.metrics
            .instances
            .get_or_create(&StateLabel {
                function: st.function.clone(),
                state: "busy".into(),
            })
            .set(st.busy as i64);
    }
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        inv.metrics.encode(),
    )
        .into_response()
}

/// `GET /v1/status`: the cluster as this node sees it.
pub async fn status(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let status = crate::cluster::status(&s.invoker)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

pub async fn invocation(State(s): State<Arc<ApiState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let record = s
        .invoker
        .get_record(&id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found("invocation", &id))?;
    Ok(Json(serde_json::to_value(record).unwrap_or_default()))
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

/// Checks a function name for the DLQ endpoints: dead letters outlive their
/// function (a cron tick for a deleted function is parked there), so a
/// missing function is only 404 when it has no dead letters either.
async fn dlq_function(s: &ApiState, name: &str) -> Result<(), ApiError> {
    match s.function(name).await {
        Ok(_) => Ok(()),
        Err(e) if e.status == StatusCode::NOT_FOUND && crate::registry::valid_name(name) => {
            let n: u64 = s
                .invoker
                .bus
                .subject_counts(bus::STREAM_DLQ, &bus::dlq_filter(name))
                .await
                .map_err(ApiError::unavailable)?
                .iter()
                .map(|(_, n)| n)
                .sum();
            if n > 0 { Ok(()) } else { Err(e) }
        }
        Err(e) => Err(e),
    }
}

pub async fn dlq_list(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    dlq_function(&s, &name).await?;
    let entries = s
        .invoker
        .dlq_list(&name, q.limit.unwrap_or(100))
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(json!({ "dead_letters": entries })))
}

pub async fn dlq_show(
    State(s): State<Arc<ApiState>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    dlq_function(&s, &name).await?;
    let entry = s
        .invoker
        .dlq_get(&name, &id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found("dead letter", &id))?;
    Ok(Json(serde_json::to_value(entry).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

pub async fn dlq_redrive(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    req: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    s.function(&name).await?;
    let req: RedriveRequest = super::read_json(req, "InvalidRequest", "redrive request").await?;
    let ids = match (req.ids, req.all) {
        (Some(ids), false) if !ids.is_empty() => Some(ids),
        (None, true) => None,
        _ => {
            return Err(ApiError::bad_request(
                "InvalidRequest",
                "send either {\"ids\": [...]} or {\"all\": true}",
            ));
        }
    };
    let out = s.invoker.dlq_redrive(&name, ids).await.map_err(|e| match e {
        DlqError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "NotFound", e.to_string()),
        DlqError::Nats(m) => ApiError::unavailable(m),
    })?;
    Ok(Json(serde_json::to_value(out).unwrap_or_default()))
}

#[derive(Deserialize)]
pub struct LogsQuery {
    since: Option<String>,
    invocation: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// Log lines as NDJSON, one line per log line; `follow` keeps the response
/// open and streams new lines.
pub async fn logs(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    s.function(&name).await?;
    let deliver_policy = match &q.since {
        Some(since) => {
            let d = crate::units::parse_duration(since)
                .map_err(|m| ApiError::bad_request("InvalidRequest", format!("since: {m}")))?;
            // A window longer than the logs are kept reads them all.
            let start = time::Duration::try_from(d)
                .ok()
                .and_then(|d| time::OffsetDateTime::now_utc().checked_sub(d))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            DeliverPolicy::ByStartTime { start_time: start }
        }
        None => DeliverPolicy::All,
    };
    let stream = s
        .invoker
        .bus
        .js
        .get_stream(bus::STREAM_LOGS)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: bus::logs_subject(&name),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let empty = s
        .invoker
        .bus
        .subject_counts(bus::STREAM_LOGS, &bus::logs_subject(&name))
        .await
        .map(|c| c.iter().all(|(_, n)| *n == 0))
        .unwrap_or(false);
    let follow = q.follow;
    let invocation = q.invocation.clone();
    let lines = futures::stream::unfold((messages, false, empty), move |(mut messages, done, empty)| {
        let invocation = invocation.clone();
        async move {
            if done || (empty && !follow) {
                return None;
            }
            loop {
                let wait = if follow {
                    Duration::from_secs(3600)
                } else {
                    Duration::from_secs(2)
                };
                let next = tokio::time::timeout(wait, messages.next()).await;
                let msg = match next {
                    Ok(Some(Ok(m))) => m,
                    Ok(Some(Err(_))) => continue,
                    _ => return None,
                };
                let last = !follow && msg.info().map(|i| i.pending == 0).unwrap_or(true);
                let Ok(batch) = serde_json::from_slice::<LogBatch>(&msg.payload) else {
                    if last {
                        return None;
                    }
                    continue;
                };
                if invocation.as_ref().is_some_and(|i| *i != batch.invocation) {
                    if last {
                        return None;
                    }
                    continue;
                }
                let mut out = String::new();
                for l in &batch.lines {
                    let v = json!({
                        "time": l.time, "level": l.level, "stream": l.stream,
                        "function": batch.function, "invocation": batch.invocation, "message": l.message,
                    });
                    out.push_str(&v.to_string());
                    out.push('\n');
                }
                return Some((Ok::<_, std::io::Error>(out), (messages, last, false)));
            }
        }
    });
    Ok(([("content-type", "application/x-ndjson")], Body::from_stream(lines)).into_response())
}
