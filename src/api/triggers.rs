//! `/v1/triggers`: create, update, list, show and delete triggers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use evoke_connectors::s3::Via;
use evoke_connectors::source::StateStore;
use evoke_connectors::trigger::{SourceConfig, TriggerSpec, check_name};
use evoke_connectors::webhook::{AuthConfig, Scheme};
use serde_json::{Value, json};

use super::extract::{Path, Query};
use super::{ApiError, ApiState};
use crate::registry::FieldError;
use crate::registry::triggers::StoredTrigger;
use evoke_connectors::store::StoreError;

async fn view(s: &ApiState, t: &StoredTrigger) -> Value {
    let spec = match t.parsed() {
        Ok(spec) => spec,
        Err(e) => {
            return json!({ "name": t.name, "state": "invalid", "error": e, "spec": t.spec, "revision": t.revision });
        }
    };
    let (kind, function) = (spec.source.kind(), spec.function.clone());
    // A webhook whose secrets this node cannot find refuses every request,
    // and a store that cannot be reached delivers nothing: say so where
    // users look.
    let hook = Some(format!("/hooks/{}", t.name));
    let (misconfigured, path) = match &spec.source {
        SourceConfig::Webhook(w) => (missing_secret(s, &w.auth), hook),
        SourceConfig::Cron(_) => (None, None),
        SourceConfig::S3(c) => {
            let store = s
                .invoker
                .stores
                .check(&c.store, Some(&c.bucket))
                .await
                .err()
                .map(|e| format!("store `{}`, bucket `{}`: {e}", c.store, c.bucket));
            match c.via {
                Via::Webhook => (missing_secret(s, &c.auth()).or(store), hook),
                Via::Sqs | Via::Poll => (store, None),
            }
        }
        // The sources of the shared queue pipeline: a named connection
        // that does not resolve, or the source's own last error.
        _ => {
            let problem = match spec.source.connection() {
                Some(c) => s.invoker.connections.resolve(c).await.err(),
                None => None,
            };
            let broker = s
                .invoker
                .connections
                .stats_of(&t.name)
                .and_then(|st| st.view().get("error").and_then(|e| e.as_str()).map(String::from));
            (problem.or(broker), None)
        }
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
    if let Some(stats) = s.invoker.connections.stats_of(&t.name) {
        // This node's consumer: counters, connected, lag when known.
        v["consumer"] = stats.view();
        if let Some(lag) = v["consumer"].get("lag").cloned() {
            v["lag"] = lag;
        }
    }
    if let Some(e) = misconfigured {
        v["error"] = json!(e);
    }
    v
}

/// Why a webhook's requests are all refused on this node: its secret is
/// not set here.
fn missing_secret(s: &ApiState, auth: &AuthConfig) -> Option<String> {
    let unusable = auth.scheme != Scheme::None && auth.secret_env.resolve(|n| s.secrets.get(n)).is_empty();
    unusable.then(|| {
        format!(
            "no secret is set on node {}: {} unset or empty; every request is refused with 503 until it is set",
            s.invoker.node,
            auth.secret_env.names().join(", ")
        )
    })
}

pub async fn list(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let all = s.invoker.triggers.list().await?;
    let out = futures::future::join_all(all.iter().map(|(_, t)| view(&s, t))).await;
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
        let auth = match &spec.source {
            SourceConfig::Webhook(w) => Some(w.auth.clone()),
            SourceConfig::S3(c) if c.via == Via::Webhook => Some(c.auth()),
            _ => None,
        };
        if auth.is_some_and(|a| a.scheme == Scheme::None) && !s.loopback {
            errors.push(field(
                "auth.scheme",
                "`none` is only allowed when evoke listens on loopback".into(),
            ));
        }
        if let SourceConfig::S3(c) = &spec.source {
            match s.invoker.stores.get(&c.store).await {
                Ok(_) => {}
                // A dry run may come before the store is created (apply).
                Err(StoreError::Unknown(_)) if dry_run => {}
                Err(e) => errors.push(field("store", e.to_string())),
            }
        }
        if let Some(c) = spec.source.connection() {
            match s.invoker.connections.registry.get(c).await {
                Ok(Some(_)) => {}
                // A dry run may come before the connection is created (apply).
                Ok(None) if dry_run => {}
                Ok(None) => errors.push(field(
                    "connection",
                    format!("connection `{c}` does not exist; declare [connections.{c}] and apply it first"),
                )),
                Err(e) => errors.push(field("connection", e.to_string())),
            }
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
    Query(q): Query<PutQuery>,
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

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// Only keys under this prefix (within the trigger's own prefix).
    #[serde(default)]
    prefix: Option<String>,
    /// Only objects modified since: an RFC 3339 time, or a duration back
    /// from now (`24h`).
    #[serde(default)]
    since: Option<String>,
    /// Count what would be queued without queuing it.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/triggers/{name}/backfill`: events for objects already in an
/// s3 trigger's bucket. Answers with progress as JSON lines, one per listed
/// page, the last with `"done": true` (or an `"error"`).
pub async fn backfill(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    req: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    let body = super::read_body(req, super::MAX_JSON_BODY, "BodyTooLarge", "backfill request").await?;
    let request: BackfillRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BackfillRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("InvalidRequest", format!("the backfill request is not valid: {e}")))?
    };
    let since = match request.since.as_deref() {
        None => None,
        Some(t) => Some(parse_since(t).map_err(|m| ApiError::bad_request("InvalidRequest", m))?),
    };
    let stored = s
        .invoker
        .triggers
        .get(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("trigger", &name))?;
    let spec = stored
        .parsed()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InvalidTrigger", e))?;
    let config = match spec.source {
        SourceConfig::S3(c) => c,
        _ => {
            return Err(ApiError::bad_request(
                "NotBackfillable",
                format!(
                    "trigger `{name}` is a {} trigger; only s3 triggers have objects to backfill",
                    spec.source.kind()
                ),
            ));
        }
    };
    run_backfill(s, name, spec.function, config, spec.filter, request, since).await
}

fn parse_since(t: &str) -> Result<chrono::DateTime<Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    let back = crate::units::parse_lookback(t)
        .map_err(|_| format!("`since` = `{t}` is neither an RFC 3339 time nor a duration such as 24h"))?;
    Ok(Utc::now() - chrono::Duration::from_std(back).unwrap_or(chrono::Duration::MAX))
}

#[cfg(feature = "s3")]
async fn run_backfill(
    s: Arc<ApiState>,
    name: String,
    function: String,
    config: evoke_connectors::s3::S3Config,
    filter: Option<evoke_connectors::filter::Filter>,
    request: BackfillRequest,
    since: Option<chrono::DateTime<Utc>>,
) -> Result<axum::response::Response, ApiError> {
    let client = s.invoker.stores.client(&config.store).await.map_err(ApiError::from)?;
    if !request.dry_run {
        s.function(&function).await?;
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let chains = crate::sources::s3::KvChains::new(s.invoker.bus.chains.clone(), &config.store);
    tokio::spawn(async move {
        let progress = |p: &evoke_connectors::s3::poll::Progress| {
            let _ = tx.send(json!(p));
        };
        let target = evoke_connectors::s3::S3Trigger {
            name: name.clone(),
            function,
            config,
            filter,
        };
        let request = evoke_connectors::s3::poll::Backfill {
            prefix: request.prefix,
            since,
            dry_run: request.dry_run,
        };
        let result =
            evoke_connectors::s3::poll::backfill(&client, &*s.sink, &chains, &target, &request, progress, tx.closed())
                .await;
        match result {
            Ok(Some(p)) => {
                tracing::info!(trigger = %name, listed = p.listed, queued = p.summary.queued, duplicates = p.summary.duplicates, dry_run = request.dry_run, "backfill done")
            }
            Ok(None) => {
                tracing::warn!(trigger = %name, "backfill stopped: the client went away (what was queued stays queued)")
            }
            Err(e) => {
                let _ = tx.send(json!({ "error": e.to_string(), "done": true }));
            }
        }
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(format!("{v}\n")), rx))
    });
    Ok(axum::response::Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .unwrap_or_default())
}

#[cfg(not(feature = "s3"))]
async fn run_backfill(
    _: Arc<ApiState>,
    _: String,
    _: String,
    _: evoke_connectors::s3::S3Config,
    _: Option<evoke_connectors::filter::Filter>,
    request: BackfillRequest,
    _: Option<chrono::DateTime<Utc>>,
) -> Result<axum::response::Response, ApiError> {
    let _ = (request.prefix, request.dry_run);
    Err(StoreError::NotBuilt.into())
}
