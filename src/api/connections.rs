//! `/v1/connections`: create, update, list, show and delete broker
//! connections. Each view names the environment variables the connection
//! needs that this node does not have (`missing_env`), and the triggers
//! using it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use evoke_connectors::connection::ConnectionConfig;
use serde_json::{Value, json};

use super::extract::{Path, Query};
use super::{ApiError, ApiState};
use crate::connections::StoredConnection;

fn view(s: &ApiState, c: &StoredConnection) -> Value {
    let missing: Vec<&String> = [&c.config.url_env, &c.config.username_env, &c.config.password_env]
        .into_iter()
        .flatten()
        .filter(|n| s.invoker.connections.secrets.get(n).is_none())
        .collect();
    json!({
        "name": c.name, "config": c.config, "updated_at": c.updated_at, "revision": c.revision,
        "missing_env": missing,
    })
}

pub async fn list(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let all = s.invoker.connections.registry.list().await?;
    let out: Vec<Value> = all.iter().map(|(_, c)| view(&s, c)).collect();
    Ok(Json(json!({ "connections": out })))
}

pub async fn show(State(s): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let c = s
        .invoker
        .connections
        .registry
        .get(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("connection", &name))?;
    Ok(Json(view(&s, &c)))
}

#[derive(serde::Deserialize)]
pub struct PutQuery {
    #[serde(default)]
    dry_run: bool,
}

pub async fn put(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(q): Query<PutQuery>,
    req: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: Value = super::read_json(req, "InvalidConnection", "connection").await?;
    let config = super::named_config(&name, "connection", "InvalidConnection", ConnectionConfig::parse(&body))?;
    if q.dry_run {
        return Ok((
            StatusCode::OK,
            Json(json!({ "dry_run": true, "name": name, "config": config })),
        ));
    }
    let existed = s.invoker.connections.registry.get(&name).await?.is_some();
    let stored = StoredConnection {
        name: name.clone(),
        config,
        updated_at: Utc::now(),
        revision: 0,
    };
    let stored = s.invoker.connections.registry.put(&name, stored).await?;
    tracing::info!(connection = %name, "connection saved");
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(view(&s, &stored))))
}

/// Deletes a connection no trigger uses (409 naming them otherwise).
/// Destinations naming it fail (and are retried, then dead-lettered) until
/// it is declared again.
pub async fn remove(State(s): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let users: Vec<String> = s
        .invoker
        .triggers
        .list()
        .await?
        .into_iter()
        .filter(|(_, t)| {
            t.parsed()
                .is_ok_and(|spec| spec.source.connection() == Some(name.as_str()))
        })
        .map(|(n, _)| n)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ConnectionInUse",
            format!(
                "connection `{name}` is used by trigger(s) {}; remove them first",
                users.join(", ")
            ),
        ));
    }
    if !s.invoker.connections.registry.delete(&name).await? {
        return Err(ApiError::not_found("connection", &name));
    }
    Ok(StatusCode::NO_CONTENT)
}
