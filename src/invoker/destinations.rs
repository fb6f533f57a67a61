//! `on_success` / `on_failure` destinations: the result (or the failure with
//! its attempts) as a CloudEvent, sent to a NATS subject, an HTTP endpoint,
//! or another function's queue.

use base64::Engine as _;
use bytes::Bytes;
use evoke_connectors::Event;
use serde_json::json;

use super::Invoker;
use super::records::Record;
use crate::executor::Output;
use crate::registry::Destination;

/// Builds the event a destination receives.
pub fn destination_event(record: &Record, request: &Event, output: Option<&Output>, error: Option<&str>) -> Event {
    let succeeded = output.is_some();
    let response = output.map(|o| match std::str::from_utf8(&o.body) {
        Ok(text) => json!({ "body": text, "content_type": o.content_type }),
        Err(_) => json!({
            "body_base64": base64::engine::general_purpose::STANDARD.encode(&o.body),
            "content_type": o.content_type,
        }),
    });
    let data = json!({
        "invocation": record.id,
        "function": record.function,
        "status": if succeeded { "succeeded" } else { "failed" },
        "attempts": record.attempts,
        "request": request.to_value(),
        "response": response,
        "error": error,
    });
    let mut e = Event::new(
        format!("{}-{}", record.id, if succeeded { "success" } else { "failure" }),
        format!("/evoke/functions/{}", record.function),
        if succeeded {
            "evoke.invocation.succeeded"
        } else {
            "evoke.invocation.failed"
        },
    )
    .with_data(Some("application/json".into()), Bytes::from(data.to_string()));
    e.subject = Some(record.id.clone());
    e
}

impl Invoker {
    /// Delivers to a destination, retrying briefly; the error says where it
    /// failed.
    pub async fn deliver(&self, dest: &Destination, event: &Event) -> Result<(), String> {
        super::retry::with_pauses(&super::retry::DESTINATION_PAUSES, || self.deliver_once(dest, event))
            .await
            .map_err(|last| format!("destination {dest} failed: {last}"))
    }

    async fn deliver_once(&self, dest: &Destination, event: &Event) -> Result<(), String> {
        let body = Bytes::from(event.to_json());
        match dest {
            Destination::Nats(subject) => {
                // Prefer JetStream (an ack means it is stored); fall back to
                // core NATS when no stream captures the subject.
                match self.bus.js.publish(subject.clone(), body.clone()).await {
                    Ok(ack) => match ack.await {
                        Ok(_) => Ok(()),
                        Err(e) if super::no_responders(&e) => self.core_publish(subject, body).await,
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            }
            Destination::Http(url) => {
                let resp = self
                    .http
                    .post(url)
                    .header("content-type", "application/cloudevents+json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("{url} answered {}", resp.status()))
                }
            }
            Destination::Function(name) => {
                let f = self
                    .registry
                    .get(name.as_str())
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("function `{name}` does not exist"))?;
                let id = super::derived_invocation_id(name.as_str(), &event.id);
                self.enqueue(&f, event, &id)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn core_publish(&self, subject: &str, body: Bytes) -> Result<(), String> {
        self.bus
            .client
            .publish(subject.to_string(), body)
            .await
            .map_err(|e| e.to_string())?;
        self.bus.client.flush().await.map_err(|e| e.to_string())
    }
}
