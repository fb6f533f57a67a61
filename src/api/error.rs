//! The API's one error shape: `{"error": {"code", "message"}}` with the
//! right status, plus `details` (one entry per bad field) for validation.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::registry::FieldError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<FieldError>,
    pub invocation: Option<String>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: vec![],
            invocation: None,
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str, name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{what} `{name}` does not exist"),
        )
    }

    pub fn invalid(errors: Vec<FieldError>) -> ApiError {
        let mut e = ApiError::bad_request("InvalidSpec", crate::registry::spec::describe(&errors));
        e.details = errors;
        e
    }

    /// NATS is unreachable: the client should retry shortly.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", message);
        e.retry_after = Some(2);
        e
    }

    pub fn with_invocation(mut self, id: &str) -> ApiError {
        self.invocation = Some(id.to_string());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if !self.details.is_empty() {
            body["error"]["details"] = json!(self.details);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(id) = self.invocation.and_then(|i| HeaderValue::from_str(&i).ok()) {
            resp.headers_mut().insert(super::HTTP_INVOCATION_ID, id);
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}

// Every error of the layers below the API maps to its HTTP answer here, and
// only here: handlers just use `?`.

impl From<crate::bus::NatsError> for ApiError {
    fn from(e: crate::bus::NatsError) -> ApiError {
        ApiError::unavailable(e.to_string())
    }
}

impl From<crate::registry::RegistryError> for ApiError {
    fn from(e: crate::registry::RegistryError) -> ApiError {
        match e {
            crate::registry::RegistryError::Nats(_) => ApiError::unavailable(e.to_string()),
            crate::registry::RegistryError::Corrupt { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "CorruptEntry", e.to_string())
            }
        }
    }
}

impl From<crate::invoker::RecordError> for ApiError {
    fn from(e: crate::invoker::RecordError) -> ApiError {
        match e {
            crate::invoker::RecordError::Nats(e) => e.into(),
            crate::invoker::RecordError::Unreadable { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "CorruptEntry", e.to_string())
            }
        }
    }
}

impl From<crate::invoker::dlq::DlqError> for ApiError {
    fn from(e: crate::invoker::dlq::DlqError) -> ApiError {
        use crate::invoker::dlq::DlqError;
        match e {
            DlqError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "NotFound", e.to_string()),
            DlqError::Nats(e) => e.into(),
            DlqError::TooLarge(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "DeadLetterTooLarge", e.to_string())
            }
        }
    }
}

impl From<crate::invoker::EnqueueError> for ApiError {
    fn from(e: crate::invoker::EnqueueError) -> ApiError {
        match e {
            crate::invoker::EnqueueError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "EventTooLarge", e.to_string())
            }
            crate::invoker::EnqueueError::Unavailable(_) => ApiError::unavailable(e.to_string()),
        }
    }
}

impl From<evoke_connectors::source::SinkError> for ApiError {
    fn from(e: evoke_connectors::source::SinkError) -> ApiError {
        match e {
            evoke_connectors::source::SinkError::Rejected(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "EventTooLarge", m)
            }
            evoke_connectors::source::SinkError::Unavailable(_) => ApiError::unavailable(e.to_string()),
        }
    }
}

impl From<evoke_connectors::webhook::Refusal> for ApiError {
    fn from(e: evoke_connectors::webhook::Refusal) -> ApiError {
        use evoke_connectors::webhook::{AuthError, Refusal};
        match e {
            Refusal::Method(_) => ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", e.to_string()),
            Refusal::AuthRequired => ApiError::new(StatusCode::FORBIDDEN, "AuthRequired", e.to_string()),
            // The node is misconfigured, not the sender: a 5xx, which
            // senders (GitHub, Stripe) retry once it is fixed.
            Refusal::Auth(AuthError::NoSecret(_)) => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SecretNotConfigured", e.to_string());
                e.retry_after = Some(60);
                e
            }
            Refusal::Auth(_) => ApiError::new(StatusCode::UNAUTHORIZED, "InvalidSignature", e.to_string()),
            Refusal::Event(_) => ApiError::bad_request("InvalidEvent", e.to_string()),
        }
    }
}

impl From<evoke_connectors::store::StoreError> for ApiError {
    fn from(e: evoke_connectors::store::StoreError) -> ApiError {
        use evoke_connectors::store::StoreError;
        match e {
            StoreError::Unknown(_) => ApiError::new(StatusCode::NOT_FOUND, "NotFound", e.to_string()),
            StoreError::NotBuilt => ApiError::new(StatusCode::NOT_IMPLEMENTED, "NotBuilt", e.to_string()),
            StoreError::MissingCredentials(_)
            | StoreError::BadCa { .. }
            | StoreError::Refused(_)
            | StoreError::Unreachable(_) => ApiError::new(StatusCode::BAD_GATEWAY, "StoreUnavailable", e.to_string()),
        }
    }
}
