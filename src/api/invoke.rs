//! `POST /v1/functions/{name}/invoke`: sync (default) or async
//! (`X-Evoke-Invocation-Type: async`). The body is the event data, or a
//! whole CloudEvent in structured or binary mode.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use evoke_connectors::Event;
use evoke_connectors::event::{BINARY_MARKERS, check_mode, is_json_type, is_structured, write_json_str};

use super::extract::Path;
use super::{ApiError, ApiState, HDR_DUPLICATE, HDR_INVOCATION_TYPE, HDR_START, HTTP_INVOCATION_ID, read_limited};
use crate::executor::{FunctionErrorKind, InvokeError, Run};
use crate::invoker::{derived_invocation_id, new_invocation_id};
use crate::registry::DeployedFunction;

pub async fn invoke(
    State(s): State<Arc<ApiState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    // Requests refused before an event exists still get an id to quote.
    let refused = |e: ApiError| e.with_invocation(&new_invocation_id());
    let f = s.function(&name).await.map_err(refused)?;
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let body = read_limited(headers, body, s.max_event_size, "EventTooLarge", "event")
        .await
        .map_err(refused)?;
    let asynchronous = headers
        .get(HDR_INVOCATION_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("async") || v.eq_ignore_ascii_case("event"));
    let (event, id, unchecked) = build_event(headers, body, f.name.as_str(), asynchronous).map_err(refused)?;

    // Data declared JSON is refused unless it parses: async, by the parse
    // that embeds it in the envelope; sync, before it runs.
    let invalid = |e: serde_json::Error| {
        refused(ApiError::bad_request(
            "InvalidJson",
            format!("the body is declared as JSON but does not parse: {e}"),
        ))
    };
    if asynchronous {
        let payload = if unchecked {
            event.to_json_checked().map_err(invalid)?
        } else {
            event.to_json()
        };
        return accepted(&s, &f, Bytes::from(payload), &id).await;
    }
    if unchecked {
        event.json_data().map_err(invalid)?;
    }
    // Boxed: this handler's future is allocated for every request, and a
    // sync run's is large (~4.5 KB); async requests do not carry it.
    respond(Box::pin(s.invoker.run_sync(&f, event, &id)).await, &id)
}

/// Queues an event and answers 202 `{"id"}` once JetStream has it. When
/// JetStream already had it (the same event for the same function, within
/// its duplicate window), the answer says so: `"duplicate": true` and
/// `X-Evoke-Duplicate: true`, with the id of the invocation already queued.
/// `payload` is the event's envelope ([`Event::to_json`]).
async fn accepted(s: &ApiState, f: &DeployedFunction, payload: Bytes, id: &str) -> Result<Response, ApiError> {
    match s.invoker.enqueue_payload(f, payload, id).await {
        Ok(duplicate) => Ok(queued(id, duplicate)),
        Err(e) => Err(ApiError::from(e).with_invocation(id)),
    }
}

/// The 202 for an event on the queue.
pub fn queued(id: &str, duplicate: bool) -> Response {
    let json = HeaderValue::from_static("application/json");
    let mut resp = (StatusCode::ACCEPTED, [(CONTENT_TYPE, json)], queued_body(id, duplicate)).into_response();
    set_id(resp.headers_mut(), id);
    if duplicate {
        resp.headers_mut()
            .insert(HDR_DUPLICATE, HeaderValue::from_static("true"));
    }
    resp
}

/// `{"id":…}`, with `"duplicate":true` when it was queued before: written
/// straight out (every async request is answered with one).
fn queued_body(id: &str, duplicate: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(id.len() + 32);
    body.extend_from_slice(b"{\"id\":");
    write_json_str(&mut body, id);
    if duplicate {
        body.extend_from_slice(b",\"duplicate\":true");
    }
    body.push(b'}');
    body
}

/// Response headers a function may not set: they describe the connection or
/// the framing of this response, which only the server decides.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Maps a sync run to the HTTP answer: the function's output (with its status
/// and headers), or the error with its status.
pub fn respond(run: Run, id: &str) -> Result<Response, ApiError> {
    let start = if run.cold.is_some() { "cold" } else { "warm" };
    match run.result {
        Ok(out) => {
            let status = out
                .status
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            let mut resp = (status, out.body).into_response();
            let h = resp.headers_mut();
            for (k, v) in &out.headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v))
                    && !HOP_BY_HOP.contains(&k.as_str())
                    && !k.as_str().starts_with("x-evoke-")
                {
                    h.append(k, v);
                }
            }
            let ct = out.content_type.as_deref().unwrap_or("application/octet-stream");
            if let Ok(v) = HeaderValue::from_str(ct) {
                h.insert(CONTENT_TYPE, v);
            }
            set_id(h, id);
            h.insert(HDR_START, HeaderValue::from_static(start));
            Ok(resp)
        }
        Err(InvokeError::Function { kind, message }) => {
            let (status, code) = match kind {
                FunctionErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "FunctionTimeout"),
                FunctionErrorKind::MemoryLimit => (StatusCode::INTERNAL_SERVER_ERROR, "FunctionMemoryLimit"),
                FunctionErrorKind::Trap => (StatusCode::INTERNAL_SERVER_ERROR, "FunctionTrapped"),
                FunctionErrorKind::OutputTooLarge => (StatusCode::INTERNAL_SERVER_ERROR, "FunctionOutputTooLarge"),
                FunctionErrorKind::ExitCode => (StatusCode::INTERNAL_SERVER_ERROR, "FunctionExitCode"),
                FunctionErrorKind::FuelExhausted => (StatusCode::INTERNAL_SERVER_ERROR, "FunctionFuelExhausted"),
                FunctionErrorKind::InvalidOutput => (StatusCode::INTERNAL_SERVER_ERROR, "FunctionInvalidOutput"),
                FunctionErrorKind::Error => (StatusCode::INTERNAL_SERVER_ERROR, "FunctionError"),
            };
            Err(ApiError::new(status, code, message).with_invocation(id))
        }
        Err(e @ InvokeError::Busy(_)) => {
            let mut e =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", e.to_string()).with_invocation(id);
            e.retry_after = Some(1);
            Err(e)
        }
        Err(InvokeError::Capacity(m)) => {
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NodeAtCapacity", m).with_invocation(id);
            e.retry_after = Some(1);
            Err(e)
        }
        Err(InvokeError::System(m)) => Err(ApiError::unavailable(m).with_invocation(id)),
    }
}

fn set_id(h: &mut HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(HTTP_INVOCATION_ID, v);
    }
}

/// Reads a CloudEvent from a request (structured or binary mode); `None`
/// when the request is not a CloudEvent. With it, whether its data is
/// declared JSON and still to be checked (binary mode: the body is the
/// data; structured mode's data was parsed with its envelope).
pub fn cloudevent(headers: &HeaderMap, body: Bytes) -> Result<Option<(Event, bool)>, ApiError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if let Some(ct) = content_type {
        check_mode(ct).map_err(|e| ApiError::bad_request("InvalidEvent", e.to_string()))?;
    }
    let structured = content_type.is_some_and(is_structured);
    // A pass over the few names a request has costs less than hashing
    // each marker to look it up.
    if !structured && !headers.keys().any(|k| BINARY_MARKERS.contains(&k.as_str())) {
        // Neither mode (most requests): nothing to copy.
        return Ok(None);
    }
    let pairs = super::text_headers(headers);
    let Some(event) = Event::from_http(pairs.iter().map(|(k, v)| (*k, v.as_ref())), body)
        .map_err(|e| ApiError::bad_request("InvalidEvent", e.to_string()))?
    else {
        return Ok(None);
    };
    // Binary mode: the body is the data, as a request that is no
    // CloudEvent, and refused the same way when it is declared JSON and is
    // not.
    let unchecked = !structured && event.data_is_json();
    Ok(Some((event, unchecked)))
}

/// Builds the event and its invocation id from an invoke request, and
/// whether its data is declared JSON and still to be checked (once, by
/// the caller: a sync run checks it, an async one when it encodes the
/// envelope). An async CloudEvent's id derives from its `source` and `id`
/// and the function, so the same event sent twice to one function is one
/// invocation; a sync invocation always gets a new id (every call runs).
pub fn build_event(
    headers: &HeaderMap,
    body: Bytes,
    function: &str,
    asynchronous: bool,
) -> Result<(Event, String, bool), ApiError> {
    if let Some((event, unchecked)) = cloudevent(headers, body.clone())? {
        let id = if asynchronous {
            derived_invocation_id(function, &format!("{}\0{}", event.source, event.id))
        } else {
            new_invocation_id()
        };
        return Ok((event, id, unchecked));
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let unchecked = content_type.as_deref().is_some_and(is_json_type);
    let id = new_invocation_id();
    let event = Event::new(id.clone(), "/evoke/api", "evoke.invoke").with_data(content_type, body);
    Ok((event, id, unchecked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_202_body_is_what_serde_would_write() {
        #[derive(serde::Serialize)]
        struct Queued<'a> {
            id: &'a str,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            duplicate: bool,
        }
        for id in ["0199a3b2c4d5e6f708192a3b4c5d6e7f", "a\"b\\c", "é\u{1}"] {
            for duplicate in [false, true] {
                let want = serde_json::to_vec(&Queued { id, duplicate }).unwrap();
                assert_eq!(queued_body(id, duplicate), want, "{id} {duplicate}");
            }
        }
    }
}
