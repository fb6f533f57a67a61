//! `on_success` / `on_failure` destinations: the result (or the failure with
//! its attempts) as a CloudEvent, sent to a NATS subject (core publish, for
//! subscribers), a JetStream stream (stored, ack awaited), an HTTP endpoint,
//! another function's queue, an object store (an object per invocation), or
//! a broker by connection (Kafka, RabbitMQ, MQTT, another NATS; in the
//! kind's CloudEvents binding, see `connections`).
//!
//! HTTP destinations never reach link-local or cloud metadata addresses
//! ([`metadata_address`]), whether written as an IP or resolved from a name,
//! unless the node allows it; redirects are not followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use evoke_connectors::Event;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::Invoker;
use super::records::{Attempt, Record};
use crate::executor::Output;
use crate::registry::Destination;

/// A destination that did not take a result (a system error: the event is
/// retried, see `settle`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("destination {destination} failed: {message}")]
pub struct DeliveryError {
    pub destination: String,
    pub message: String,
}

/// The event an `on_success` destination of a function with
/// `success_body = "output"` receives: the output alone, its content type
/// kept, the invocation named by `subject` and the event id.
pub fn output_event(record: &Record, output: &Output) -> Event {
    let mut e = Event::new(
        format!("{}-success", record.id),
        format!("/evoke/functions/{}", record.function),
        "evoke.invocation.output",
    )
    .with_data(output.content_type.clone(), output.body.clone());
    e.subject = Some(record.id.clone());
    e
}

/// The data of a destination event, members in the (sorted) order they
/// have always had.
#[derive(serde::Serialize)]
struct Outcome<'a> {
    attempts: &'a [Attempt],
    error: Option<&'a str>,
    function: &'a str,
    invocation: &'a str,
    /// The event as it was queued: JSON data byte for byte as it came (a
    /// `Value` would sort its keys and round its large numbers).
    request: &'a RawValue,
    response: Option<Value>,
    status: &'static str,
}

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
    let request_json = request.to_raw_json();
    let outcome = Outcome {
        attempts: &record.attempts,
        error,
        function: &record.function,
        invocation: &record.id,
        request: &request_json,
        response,
        status: if succeeded { "succeeded" } else { "failed" },
    };
    // Serializing strings, numbers and valid raw JSON cannot fail.
    let data = serde_json::to_string(&outcome).unwrap_or_default();
    let mut e = Event::new(
        format!("{}-{}", record.id, if succeeded { "success" } else { "failure" }),
        format!("/evoke/functions/{}", record.function),
        if succeeded {
            "evoke.invocation.succeeded"
        } else {
            "evoke.invocation.failed"
        },
    )
    .with_data(Some("application/json".into()), Bytes::from(data));
    e.subject = Some(record.id.clone());
    // Lineage for the recursion guard: a result written into a bucket that
    // triggers a function continues the request's chain.
    if let Some(chain) = request.extensions.get(evoke_connectors::s3::EXT_CHAIN) {
        e.extensions
            .insert(evoke_connectors::s3::EXT_CHAIN.into(), chain.clone());
    }
    e
}

impl Invoker {
    /// Delivers to a destination, retrying briefly; the error says where it
    /// failed.
    pub async fn deliver(&self, dest: &Destination, event: &Event) -> Result<(), DeliveryError> {
        super::retry::with_pauses(&super::retry::DESTINATION_PAUSES, || self.deliver_once(dest, event))
            .await
            .map_err(|last| DeliveryError {
                destination: dest.to_string(),
                message: last,
            })
    }

    async fn deliver_once(&self, dest: &Destination, event: &Event) -> Result<(), String> {
        let body = Bytes::from(event.to_json());
        match dest {
            Destination::Nats(subject) => {
                // A plain subject: whoever subscribes gets it. The flush
                // waits for the server to have it, never for a reply.
                let client = &self.bus.client;
                client.publish(subject.clone(), body).await.map_err(|e| e.to_string())?;
                client.flush().await.map_err(|e| e.to_string())
            }
            Destination::JetStream(subject) => {
                // The event id as Nats-Msg-Id: a retried delivery (an ack
                // lost, a redelivered event) is stored once.
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", event.id.as_str());
                let ack = self
                    .bus
                    .js
                    .publish_with_headers(subject.clone(), headers, body)
                    .await
                    .map_err(|e| e.to_string())?;
                match ack.await {
                    Ok(_) => Ok(()),
                    Err(e) if super::no_responders(&e) => Err(format!(
                        "no JetStream stream stores `{subject}`; create one, or use nats:{subject} to publish to subscribers"
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
            Destination::Http(url) => {
                let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
                if !self.allow_link_local
                    && let Some(ip) = literal_ip(&parsed)
                    && metadata_address(ip)
                {
                    return Err(format!(
                        "{url} is a link-local or cloud metadata address, which this node does not call"
                    ));
                }
                let resp = self
                    .http
                    .post(parsed)
                    .header("content-type", "application/cloudevents+json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| error_chain(&e))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("{url} answered {}", resp.status()))
                }
            }
            Destination::S3 { store, bucket, prefix } => self.write_object(store, bucket, prefix, event, body).await,
            Destination::Queue(target) => self.connections.send(target, event).await,
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
}

impl Invoker {
    /// `s3://STORE/BUCKET/PREFIX`: the destination event as an object named
    /// `PREFIX<invocation id>.json`.
    async fn write_object(
        &self,
        store: &str,
        bucket: &str,
        prefix: &str,
        event: &Event,
        body: Bytes,
    ) -> Result<(), String> {
        let invocation = event.subject.clone().unwrap_or_else(|| event.id.clone());
        let key = format!("{prefix}{invocation}.json");
        #[cfg(feature = "s3")]
        {
            use crate::executor::objects::{NewObject, ObjectBackend};
            let chain = event
                .extensions
                .get(evoke_connectors::s3::EXT_CHAIN)
                .and_then(|c| c.parse::<u32>().ok())
                .unwrap_or(0);
            let object = NewObject {
                body: body.to_vec(),
                content_type: Some("application/cloudevents+json".into()),
                metadata: vec![],
                chain: chain.saturating_add(1),
                function: event.source.trim_start_matches("/evoke/functions/").to_string(),
                invocation,
            };
            self.stores
                .put(store, bucket, &key, object)
                .await
                .map(|_| ())
                .map_err(|e| format!("writing s3://{store}/{bucket}/{key}: {e}"))
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = (body, invocation);
            Err(format!(
                "cannot write s3://{store}/{bucket}/{key}: this build of evoke has no object storage (the `s3` feature)"
            ))
        }
    }
}

/// An error with its causes, one line (reqwest hides the interesting part).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The IP of a URL written with a literal address.
pub fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Whether nodes refuse to call `ip` unless allowed (`--allow-link-local-*`):
/// link-local addresses (169.254.0.0/16, fe80::/10), where cloud metadata
/// services live, and the metadata services elsewhere (Alibaba Cloud's
/// 100.100.100.200, AWS's IPv6 fd00:ec2::254); IPv4 mapped into IPv6 too.
/// Destinations and functions' outbound HTTP share it.
pub fn metadata_address(ip: IpAddr) -> bool {
    const ALIBABA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
    const AWS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4 == ALIBABA,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local() || v4 == ALIBABA,
            None => v6.is_unicast_link_local() || v6 == AWS_V6,
        },
    }
}

/// The HTTP client destinations use: a 10 s timeout, no redirects, and a
/// resolver that drops link-local addresses unless `allow_link_local`.
pub fn http_client(allow_link_local: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    if !allow_link_local {
        b = b.dns_resolver(Arc::new(NoLinkLocal));
    }
    b.build().unwrap_or_default()
}

/// Resolves names with the system resolver, dropping link-local answers.
struct NoLinkLocal;

impl reqwest::dns::Resolve for NoLinkLocal {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all.iter().copied().filter(|a| !metadata_address(a.ip())).collect();
            if allowed.is_empty() && !all.is_empty() {
                return Err(format!(
                    "`{host}` resolves only to link-local or cloud metadata addresses, which this node does not call"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use reqwest::dns::Resolve;

    use super::*;

    #[test]
    fn a_destination_gets_the_request_data_byte_for_byte() {
        use super::super::records::{Mode, Status};
        let data = r#"{"sku":"a","qty":2,"price":3.50,"big":123456789012345678901234567890}"#;
        let request =
            Event::new("e-1", "/orders", "order.placed").with_data(Some("application/json".into()), Bytes::from(data));
        let record = Record::new("inv-1", "enrich", Mode::Async, "e-1", Status::Succeeded);
        let output = Output {
            body: Bytes::from_static(b"done"),
            content_type: Some("text/plain".into()),
            status: None,
            headers: Vec::new(),
        };
        let event = destination_event(&record, &request, Some(&output), None);
        let text = std::str::from_utf8(&event.data).unwrap();
        assert!(text.contains(data), "request data kept as it came: {text}");
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["request"]["id"], "e-1");
        assert_eq!(v["request"]["source"], "/orders");
        assert_eq!(v["status"], "succeeded");
        assert_eq!(v["invocation"], "inv-1");
        assert_eq!(v["function"], "enrich");
        assert_eq!(v["response"]["body"], "done");
        assert!(v["error"].is_null());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "attempts",
                "error",
                "function",
                "invocation",
                "request",
                "response",
                "status"
            ]
        );
        let failed = destination_event(&record, &request, None, Some("boom"));
        let v: Value = serde_json::from_slice(&failed.data).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["error"].as_str()),
            (Some("failed"), Some("boom"))
        );
        assert!(v["response"].is_null());
    }

    #[test]
    fn metadata_and_link_local_addresses_in_every_spelling() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "::ffff:169.254.169.254",
            "100.100.100.200",
            "::ffff:100.100.100.200",
            "fd00:ec2::254",
        ] {
            assert!(metadata_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "100.100.100.201",
            "fd00:ec2::253",
        ] {
            assert!(!metadata_address(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn names_resolving_only_to_link_local_addresses_are_refused() {
        let name = |n: &str| reqwest::dns::Name::from_str(n).unwrap();
        let refused = NoLinkLocal.resolve(name("169.254.169.254")).await;
        let Err(e) = refused else {
            panic!("a link-local answer was used")
        };
        assert!(e.to_string().contains("link-local"), "{e}");
        let local: Vec<SocketAddr> = NoLinkLocal.resolve(name("localhost")).await.unwrap().collect();
        assert!(!local.is_empty());
    }
}
