//! Invocation records, dead letters, logs, health and metrics.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::extract::{Path, Query};
use super::{ApiError, ApiState};
use crate::observe::metrics::StateLabel;

pub async fn healthz(State(s): State<Arc<ApiState>>) -> Response {
    let bus = &s.invoker.bus;
    let ok = bus.connected();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body =
        json!({ "status": if ok { "ok" } else { "degraded" }, "nats": bus.connection_state(), "node": s.invoker.node });
    (status, Json(body)).into_response()
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
    inv.metrics.observe_sources(&inv.connections.all_stats());
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        inv.metrics.encode(),
    )
        .into_response()
}

/// `GET /v1/status`: the cluster as this node sees it.
pub async fn status(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let status = crate::cluster::status(&s.invoker).await?;
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

pub async fn invocation(State(s): State<Arc<ApiState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let record = s
        .invoker
        .find_invocation(&id)
        .await?
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
            if s.invoker.dlq_count(name).await? > 0 {
                Ok(())
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

pub async fn dlq_list(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    dlq_function(&s, &name).await?;
    let entries = s.invoker.dlq_list(&name, q.limit.unwrap_or(100)).await?;
    // Not through a `Value`: events are shown as stored, data byte for byte.
    #[derive(Serialize)]
    struct List {
        dead_letters: Vec<crate::invoker::dlq::DeadLetter>,
    }
    Ok(Json(List { dead_letters: entries }).into_response())
}

pub async fn dlq_show(
    State(s): State<Arc<ApiState>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    dlq_function(&s, &name).await?;
    let entry = s
        .invoker
        .dlq_get(&name, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("dead letter", &id))?;
    Ok(Json(entry).into_response())
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
    let out = s.invoker.dlq_redrive(&name, ids).await?;
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
    let since = q
        .since
        .as_deref()
        .map(crate::units::parse_lookback)
        .transpose()
        .map_err(|m| ApiError::bad_request("InvalidRequest", format!("since: {m}")))?;
    let query = crate::observe::logs::Query {
        since,
        invocation: q.invocation.clone(),
        follow: q.follow,
    };
    let lines = crate::observe::logs::read(&s.invoker.bus, &name, query).await?;
    Ok(([("content-type", "application/x-ndjson")], Body::from_stream(lines)).into_response())
}
