//! `/v1/stores`: create, update, list, show and delete object stores. Each
//! view says whether this node reaches the store with the credentials it
//! has (`state`: `reachable` or `unreachable`, with the store's error).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use evoke_connectors::store::StoreConfig;
use evoke_connectors::trigger::SourceConfig;
use serde_json::{Value, json};

use super::extract::{Path, Query};
use super::{ApiError, ApiState};
use crate::stores::StoredStore;

async fn view(s: &ApiState, st: &StoredStore) -> Value {
    let mut v = json!({
        "name": st.name, "config": st.config, "updated_at": st.updated_at, "revision": st.revision,
    });
    match s.invoker.stores.check(&st.name, None).await {
        Ok(()) => v["state"] = json!("reachable"),
        Err(e) => {
            v["state"] = json!("unreachable");
            v["error"] = json!(e.to_string());
        }
    }
    v
}

pub async fn list(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let all = s.invoker.stores.registry.list().await?;
    let out = futures::future::join_all(all.iter().map(|(_, st)| view(&s, st))).await;
    Ok(Json(json!({ "stores": out })))
}

pub async fn show(State(s): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let st = s
        .invoker
        .stores
        .registry
        .get(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("store", &name))?;
    Ok(Json(view(&s, &st).await))
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
    let body: Value = super::read_json(req, "InvalidStore", "store").await?;
    let config = super::named_config(&name, "store", "InvalidStore", StoreConfig::parse(&body))?;
    if q.dry_run {
        return Ok((
            StatusCode::OK,
            Json(json!({ "dry_run": true, "name": name, "config": config })),
        ));
    }
    let existed = s.invoker.stores.registry.get(&name).await?.is_some();
    let stored = StoredStore {
        name: name.clone(),
        config,
        updated_at: Utc::now(),
        revision: 0,
    };
    let stored = s.invoker.stores.registry.put(&name, stored).await?;
    tracing::info!(store = %name, "store saved");
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(view(&s, &stored).await)))
}

/// Deletes a store no trigger uses (409 naming them otherwise).
pub async fn remove(State(s): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let users: Vec<String> = s
        .invoker
        .triggers
        .list()
        .await?
        .into_iter()
        .filter(|(_, t)| match t.parsed().map(|spec| spec.source) {
            Ok(SourceConfig::S3(c)) => c.store == name,
            _ => false,
        })
        .map(|(n, _)| n)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "StoreInUse",
            format!(
                "store `{name}` is used by trigger(s) {}; remove them first",
                users.join(", ")
            ),
        ));
    }
    if !s.invoker.stores.registry.delete(&name).await? {
        return Err(ApiError::not_found("store", &name));
    }
    Ok(StatusCode::NO_CONTENT)
}
