//! Path and query extractors that refuse in the API's error shape: axum's
//! own answer a bad path segment (not UTF-8 once percent-decoded) or a bad
//! query parameter (`?limit=-5`, `?dry_run=maybe`) with a plain-text 400,
//! which a client reading `{"error": …}` cannot parse.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// [`axum::extract::Path`], refused as 400 `InvalidRequest`.
pub struct Path<T>(pub T);

/// [`axum::extract::Query`], refused as 400 `InvalidRequest`.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(t)) => Ok(Path(t)),
            Err(e) => Err(ApiError::bad_request("InvalidRequest", e.body_text())),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(t)) => Ok(Query(t)),
            Err(e) => Err(ApiError::bad_request(
                "InvalidRequest",
                format!("{}; the parameters each path takes are in docs/api.md", e.body_text()),
            )),
        }
    }
}

/// Any path no route has: 404 `NotFound`, naming it.
pub async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "no such path: {method} {}; the API's paths are in docs/api.md",
            uri.path()
        ),
    )
}

/// A path that exists, asked with a method it does not take: 405
/// `MethodNotAllowed` (axum adds the `Allow` header).
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{} does not take {method}; see its `Allow` header", uri.path()),
    )
}
