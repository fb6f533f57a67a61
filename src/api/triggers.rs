//! `/v1/triggers`: create, update, list, show and delete triggers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use evoke_connectors::source::StateStore;
use evoke_connectors::trigger::{SourceConfig, TriggerSpec, check_name};
use evoke_connectors::webhook::Scheme;
use serde_json::{Value, json};

use super::{ApiError, ApiState};
use crate::registry::FieldError;
use crate::registry::triggers::StoredTrigger;

async fn view(s: &ApiState, t: &StoredTrigger) -> Value {
    let spec = match t.parsed() {
        Ok(spec) => spec,
        Err(e) => {
            return json!({ "name": t.name, "state": "invalid", "error": e, "spec": t.spec, "revision": t.revision });
        }
    };
    let (kind, function) = (spec.source.kind(), spec.function.clone());
    // A webhook whose secrets this node cannot find refuses every request:
    // say so where users look.
    let (misconfigured, path) = match &spec.source {
        SourceConfig::Webhook(w) => {
            let names = w.auth.secret_env.names();
            let unusable = w.auth.scheme != Scheme::None && w.auth.secret_env.resolve(|n| s.secrets.get(n)).is_empty();
            let why = unusable.then(|| {
                format!(
                    "no secret is set on node {}: {} unset or empty; every request is refused with 503 until it is set",
                    s.invoker.node,
                    names.join(", ")
                )
            });
            (why, Some(format!("/hooks/{}", t.name)))
        }
        SourceConfig::Cron(_) => (None, None),
    };
    let state = if misconfigured.is_some() {
        "misconfigured"
    } else {
        "active"
    };
    let last = match s.state.load(&spec.source.last_event_key(&t.name)).await {
        Ok(Some(text)) => serde_json::from_str::<Value>(&text).unwrap_or(json!({ "time": text })),
        _ => Value::Null,
    };
    let mut v = json!({
        "name": t.name, "kind": kind, "function": function, "state": state,
        "last_event": last, "spec": t.spec, "updated_at": t.updated_at, "revision": t.revision,
    });
    if let Some(path) = path {
        v["path"] = json!(path);
    }
    if let Some(e) = misconfigured {
        v["error"] = json!(e);
    }
    v
}

pub async fn list(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let all = s.invoker.triggers.list().await?;
    let mut out = Vec::new();
    for (_, t) in all {
        out.push(view(&s, &t).await);
    }
    Ok(Json(json!({ "triggers": out })))
}

pub async fn show(State(s): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let t = s
        .invoker
        .triggers
        .get(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("trigger", &name))?;
    Ok(Json(view(&s, &t).await))
}

/// Validates a trigger for this server: the table itself, the function it
/// targets, and webhook auth against where the server listens.
pub async fn validate(s: &ApiState, name: &str, body: &Value, dry_run: bool) -> Result<TriggerSpec, Vec<FieldError>> {
    let field = |f: &str, m: String| FieldError {
        field: f.to_string(),
        message: m,
    };
    let mut errors = Vec::new();
    if let Err(m) = check_name(name) {
        errors.push(field("name", m));
    }
    let spec = match TriggerSpec::parse(body) {
        Ok(spec) => Some(spec),
        Err(problems) => {
            errors.extend(problems.into_iter().map(|(f, m)| field(&f, m)));
            None
        }
    };
    if let Some(spec) = &spec {
        match s.invoker.registry.get(&spec.function).await {
            Ok(Some(_)) => {}
            // A dry run may come before the function is deployed (apply).
            Ok(None) if dry_run => {}
            Ok(None) => errors.push(field(
                "function",
                format!("function `{}` does not exist; deploy it first", spec.function),
            )),
            Err(e) => errors.push(field("function", e.to_string())),
        }
        if let SourceConfig::Webhook(w) = &spec.source
            && w.auth.scheme == Scheme::None
            && !s.loopback
        {
            errors.push(field(
                "auth.scheme",
                "`none` is only allowed when evoke listens on loopback".into(),
            ));
        }
    }
    match spec {
        Some(spec) if errors.is_empty() => Ok(spec),
        _ => Err(errors),
    }
}

#[derive(serde::Deserialize)]
pub struct PutQuery {
    #[serde(default)]
    dry_run: bool,
}

pub async fn put(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<PutQuery>,
    req: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let value: Value = super::read_json(req, "InvalidTrigger", "trigger").await?;
    let spec = validate(&s, &name, &value, q.dry_run).await.map_err(|errors| {
        let mut e = ApiError::invalid(errors);
        e.code = "InvalidTrigger";
        e
    })?;
    if q.dry_run {
        return Ok((
            StatusCode::OK,
            Json(json!({ "dry_run": true, "name": name, "spec": spec.to_value() })),
        ));
    }
    let existed = s.invoker.triggers.get(&name).await.ok().flatten().is_some();
    let stored = StoredTrigger {
        name: name.clone(),
        spec: spec.to_value(),
        updated_at: Utc::now(),
        revision: 0,
    };
    let stored = s.invoker.triggers.put(&name, stored).await?;
    tracing::info!(trigger = %name, kind = spec.source.kind(), function = %spec.function, "trigger saved");
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(view(&s, &stored).await)))
}

pub async fn remove(State(s): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let stored = s.invoker.triggers.get(&name).await?;
    let existed = s.invoker.triggers.delete(&name).await?;
    if !existed {
        return Err(ApiError::not_found("trigger", &name));
    }
    if let Some(spec) = stored.and_then(|t| t.parsed().ok()) {
        let _ = s.state.forget(&spec.source.last_event_key(&name)).await;
    }
    Ok(StatusCode::NO_CONTENT)
}
