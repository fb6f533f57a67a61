//! Deploy, list, show and delete functions.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use bytes::Bytes;
use chrono::Utc;
use serde_json::{Value, json};

use super::extract::{Path, Query};
use super::{ApiError, ApiState};
use crate::registry::{DeployedFunction, FunctionName, FunctionSpec};

fn view(f: &DeployedFunction) -> Value {
    let mut v = serde_json::to_value(f).unwrap_or_default();
    v["revision"] = json!(f.revision);
    v
}

fn code_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "CodeTooLarge",
        format!("the code is larger than this server's limit of {limit} bytes"),
    )
}

fn parse_name(name: &str) -> Result<FunctionName, ApiError> {
    name.parse().map_err(|m: String| {
        let mut e = ApiError::bad_request("InvalidName", m.clone());
        e.details = vec![crate::registry::FieldError {
            field: "name".into(),
            message: m,
        }];
        e
    })
}

pub async fn list(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let fns = s.invoker.registry.list().await?;
    Ok(Json(
        json!({ "functions": fns.iter().map(|(_, f)| view(f)).collect::<Vec<_>>() }),
    ))
}

pub async fn show(State(s): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let f = s.function(&name).await?;
    Ok(Json(view(&f)))
}

pub async fn remove(State(s): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    if !s.invoker.remove_function(&name).await? {
        return Err(ApiError::not_found("function", &name));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/functions/{name}`: raw wasm with settings in the query, or
/// multipart with a `spec` JSON part and a `code` part.
pub async fn deploy(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(mut query): Query<Vec<(String, String)>>,
    req: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = parse_name(&name)?;
    // `dry_run=true` validates the code and spec without storing anything.
    let dry_run = query.iter().any(|(k, v)| k == "dry_run" && v != "false");
    query.retain(|(k, _)| k != "dry_run");
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    // Whether the user chose max_instances (a default is fitted to the pool).
    let mut explicit_max = query.iter().any(|(k, _)| k == "max_instances");
    let (spec, code) = if content_type.starts_with("multipart/form-data") {
        if !query.is_empty() {
            return Err(ApiError::bad_request(
                "InvalidRequest",
                "with multipart, put settings in the `spec` part, not the query",
            ));
        }
        // The whole form is bounded by the code limit plus room for the
        // spec, decided before it is read into memory.
        let limit = s.max_code_size.saturating_add(super::MAX_JSON_BODY);
        let (parts, body) = req.into_parts();
        let limited = axum::body::Body::new(http_body_util::Limited::new(body, limit));
        let req = Request::from_parts(parts, limited);
        if req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > limit as u64)
        {
            return Err(code_too_large(s.max_code_size));
        }
        let mut multipart = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("InvalidRequest", e.body_text()))?;
        let mut spec = None;
        let mut code = None;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request("InvalidRequest", e.body_text()))?
        {
            let part = field.name().unwrap_or("").to_string();
            let bytes = field.bytes().await.map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    code_too_large(s.max_code_size)
                } else {
                    ApiError::bad_request("InvalidRequest", e.body_text())
                }
            })?;
            match part.as_str() {
                "spec" => {
                    let value: Value = serde_json::from_slice(&bytes)
                        .map_err(|e| ApiError::bad_request("InvalidSpec", format!("the spec part is not JSON: {e}")))?;
                    explicit_max = value.get("max_instances").is_some();
                    spec = Some(FunctionSpec::from_json(&value).map_err(ApiError::invalid)?);
                }
                "code" => code = Some(bytes),
                other => {
                    return Err(ApiError::bad_request(
                        "InvalidRequest",
                        format!("unknown multipart part `{other}`; send `spec` and `code`"),
                    ));
                }
            }
        }
        let code = code.ok_or_else(|| ApiError::bad_request("InvalidRequest", "the `code` part is missing"))?;
        (spec.unwrap_or_default(), code)
    } else {
        let spec = FunctionSpec::from_query(&query).map_err(ApiError::invalid)?;
        let body = super::read_body(req, s.max_code_size, "CodeTooLarge", "code").await?;
        (spec, body)
    };
    deploy_code(&s, name, spec, code, dry_run, explicit_max).await
}

async fn deploy_code(
    s: &ApiState,
    name: FunctionName,
    mut spec: FunctionSpec,
    code: Bytes,
    dry_run: bool,
    explicit_max: bool,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if code.is_empty() {
        return Err(ApiError::bad_request(
            "InvalidCode",
            "the code is empty; send the .wasm file as the body",
        ));
    }
    let pool = s.invoker.executor.pool_instances();
    if !explicit_max && spec.max_instances > pool {
        spec.max_instances = pool.max(spec.reserved).max(1);
    }
    if spec.max_instances > pool {
        return Err(ApiError::invalid(vec![crate::registry::FieldError {
            field: "max_instances".into(),
            message: format!(
                "{} is more than this node's instance pool of {pool}; lower it, or start nodes with a larger --pool-instances",
                spec.max_instances
            ),
        }]));
    }
    if spec.fuel.is_some() && !s.invoker.executor.meters_fuel() {
        return Err(ApiError::invalid(vec![crate::registry::FieldError {
            field: "fuel".into(),
            message: "this node does not meter fuel; start evoke with --fuel to use fuel budgets".into(),
        }]));
    }
    let size = code.len() as u64;
    let (kind, digest) = s
        .invoker
        .executor
        .check_code(code.clone())
        .await
        .map_err(|e| ApiError::bad_request("InvalidCode", e.to_string()))?;
    if dry_run {
        return Ok((
            StatusCode::OK,
            Json(json!({ "dry_run": true, "name": name, "kind": kind, "digest": digest })),
        ));
    }
    s.invoker.store_code(&digest, code).await?;
    let existed = s.invoker.registry.get(name.as_str()).await.ok().flatten().is_some();
    let f = DeployedFunction {
        name,
        spec,
        digest,
        code_size: size,
        kind,
        deployed_at: Utc::now(),
        revision: 0,
    };
    let key = f.name.to_string();
    let f = s.invoker.registry.put(&key, f).await?;
    tracing::info!(function = %f.name, digest = %f.digest, kind = ?f.kind, "deployed");
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(view(&f))))
}
