//! Sync invocations through another node: a node that runs no workers
//! (`evoke serve --no-workers`) relays sync invocations over NATS
//! request/reply to the worker nodes, which share the queue group
//! `evoke-sync`. The worker runs the event at once (no queue, no retry) and
//! keeps the record and logs; the caller gets the output or the error.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use evoke_connectors::Event;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Invoker, retry};
use crate::bus;
use crate::bus::OrNats;
use crate::executor::{ColdStart, FunctionErrorKind, InvokeError, Output, Run};
use crate::registry::DeployedFunction;

#[derive(Serialize, Deserialize)]
struct Request {
    id: String,
    /// The event as it is queued ([`Event::to_json`]): JSON data byte for
    /// byte (a `Value` would sort its keys and round its large numbers).
    event: Box<serde_json::value::RawValue>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Output {
        body_base64: String,
        content_type: Option<String>,
        status: Option<u16>,
        headers: Vec<(String, String)>,
    },
    FunctionError {
        kind: FunctionErrorKind,
        message: String,
    },
    SystemError {
        message: String,
    },
    Busy {
        max_instances: u32,
    },
    Capacity {
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Reply {
    outcome: Outcome,
    cold: Option<ColdStart>,
    duration_us: u64,
}

/// A run that failed before the function started.
fn system_run(message: impl Into<String>) -> Run {
    Run {
        result: Err(InvokeError::System(message.into())),
        logs: vec![],
        cold: None,
        duration: Duration::ZERO,
    }
}

fn to_reply(run: &Run) -> Reply {
    let outcome = match &run.result {
        Ok(o) => Outcome::Output {
            body_base64: BASE64.encode(&o.body),
            content_type: o.content_type.clone(),
            status: o.status,
            headers: o.headers.clone(),
        },
        Err(InvokeError::Function { kind, message }) => Outcome::FunctionError {
            kind: *kind,
            message: message.clone(),
        },
        Err(InvokeError::System(m)) => Outcome::SystemError { message: m.clone() },
        Err(InvokeError::Busy(n)) => Outcome::Busy { max_instances: *n },
        Err(InvokeError::Capacity(m)) => Outcome::Capacity { message: m.clone() },
    };
    Reply {
        outcome,
        cold: run.cold.clone(),
        duration_us: run.duration.as_micros() as u64,
    }
}

fn from_reply(reply: Reply) -> Run {
    let result = match reply.outcome {
        Outcome::Output {
            body_base64,
            content_type,
            status,
            headers,
        } => match BASE64.decode(body_base64) {
            Ok(body) => Ok(Output {
                body: Bytes::from(body),
                content_type,
                status,
                headers,
            }),
            Err(e) => Err(InvokeError::System(format!("the worker's reply is corrupt: {e}"))),
        },
        Outcome::FunctionError { kind, message } => Err(InvokeError::Function { kind, message }),
        Outcome::SystemError { message } => Err(InvokeError::System(message)),
        Outcome::Busy { max_instances } => Err(InvokeError::Busy(max_instances)),
        Outcome::Capacity { message } => Err(InvokeError::Capacity(message)),
    };
    Run {
        result,
        logs: vec![],
        cold: reply.cold,
        duration: Duration::from_micros(reply.duration_us),
    }
}

impl Invoker {
    /// Runs a sync invocation on some worker node and returns its run.
    pub async fn invoke_relayed(&self, f: &DeployedFunction, event: &Event, id: &str) -> Run {
        let system = system_run;
        let request = Request {
            id: id.to_string(),
            event: event.to_raw_json(),
        };
        let Ok(payload) = serde_json::to_vec(&request) else {
            return system("cannot encode the event".into());
        };
        // The worker bounds the run by the function's timeout; allow for the
        // trip and a cold start on top. The request carries this wait itself:
        // the client's default request timeout (10 s) would cut a cold start
        // on a busy worker short.
        let wait = f.spec.timeout + Duration::from_secs(10);
        let subject = bus::sync_subject(f.name.as_str());
        let payload = Bytes::from(payload);
        // "No responders" while a worker node starts or reconnects is brief:
        // ask again a few times before telling the caller there is none.
        let mut answer = Err(None);
        for pause in retry::RELAY_PAUSES.iter().map(Some).chain([None]) {
            let request = async_nats::Request::new().payload(payload.clone()).timeout(Some(wait));
            answer = match tokio::time::timeout(wait, self.bus.client.send_request(subject.clone(), request)).await {
                Err(_) => Err(None),
                Ok(r) => r.map_err(Some),
            };
            match (&answer, pause) {
                (Err(Some(e)), Some(pause)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    tokio::time::sleep(*pause).await;
                }
                _ => break,
            }
        }
        match answer {
            Err(None) => system(format!(
                "no worker answered within {}",
                crate::units::format_duration(wait)
            )),
            Err(Some(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                system("no worker node is running: start one with `evoke serve` (without --no-workers)".into())
            }
            Err(Some(e)) => system(format!("cannot relay to a worker: {e}")),
            Ok(msg) => match serde_json::from_slice::<Reply>(&msg.payload) {
                Ok(reply) => from_reply(reply),
                Err(e) => system(format!("the worker's reply is unreadable: {e}")),
            },
        }
    }

    /// The wakes of this node's workers (see [`super::worker::run`]).
    pub async fn wake_subscription(&self) -> Result<async_nats::Subscriber, crate::bus::NatsError> {
        let doing = "subscribing to worker wakes";
        let sub = self.bus.client.subscribe(bus::wake_filter()).await.nats(doing)?;
        self.bus.client.flush().await.nats(doing)?;
        Ok(sub)
    }

    /// Joins the queue group of worker nodes; once this returns, relayed
    /// invocations can reach this node.
    pub async fn relay_subscription(&self) -> Result<async_nats::Subscriber, crate::bus::NatsError> {
        let subject = bus::sync_filter();
        let sub = self
            .bus
            .client
            .queue_subscribe(subject, bus::SYNC_QUEUE.into())
            .await
            .nats("subscribing to relayed sync invocations")?;
        self.bus
            .client
            .flush()
            .await
            .nats("subscribing to relayed sync invocations")?;
        Ok(sub)
    }

    /// Serves relayed sync invocations until shutdown (worker nodes).
    pub async fn serve_relayed(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        mut shutdown: broadcast::Receiver<()>,
    ) {
        loop {
            let msg = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => return },
                _ = shutdown.recv() => return,
            };
            let invoker = self.clone();
            tokio::spawn(async move {
                let Some(reply_to) = msg.reply.clone() else { return };
                let function = bus::function_in(msg.subject.as_str(), bus::SUBJECT_SYNC)
                    .unwrap_or_default()
                    .to_string();
                let run = match serde_json::from_slice::<Request>(&msg.payload) {
                    Err(e) => system_run(format!("unreadable relayed request: {e}")),
                    Ok(req) => match (
                        invoker.registry.get(&function).await,
                        Event::from_json(req.event.get().as_bytes()),
                    ) {
                        (Ok(Some(f)), Ok(event)) => invoker.invoke_sync(&f, event, &req.id).await,
                        (Ok(None), _) => system_run(format!("function `{function}` does not exist on this node")),
                        (Err(e), _) => system_run(e.to_string()),
                        (_, Err(e)) => system_run(e.to_string()),
                    },
                };
                let Ok(bytes) = serde_json::to_vec(&to_reply(&run)) else {
                    return;
                };
                if let Err(e) = invoker.bus.client.publish(reply_to, Bytes::from(bytes)).await {
                    tracing::warn!(error = %e, "cannot answer a relayed sync invocation");
                }
            });
        }
    }
}
