//! One evoke node: connects to NATS, serves the API, runs the workers.
//! `evoke up` and `evoke serve` both start one; tests start them in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState};
use crate::bus::{Bus, NatsConfig};
use crate::executor::{Executor, ExecutorConfig};
use crate::invoker::{Invoker, worker};
use crate::observe::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub http_addr: SocketAddr,
    /// How to reach NATS (servers, credentials, TLS, replicas).
    pub nats: NatsConfig,
    /// Serve the HTTP API (and webhooks) on `http_addr`.
    pub api: bool,
    pub data_dir: PathBuf,
    pub api_token: Option<String>,
    pub pool_instances: u32,
    /// Compiled code kept in memory besides the disk cache (artifact bytes).
    pub code_memory_bytes: usize,
    pub max_event_size: usize,
    pub max_code_size: usize,
    pub node_name: String,
    /// Run async workers on this node.
    pub workers: bool,
    /// Run event sources (cron) on this node.
    pub sources: bool,
    /// Ack wait of the function consumers (redelivery after a node dies).
    pub ack_wait: Duration,
    /// Meter CPU with fuel (functions may then set a `fuel` budget).
    pub fuel: bool,
    /// Secrets by variable name (webhook secrets, store credentials),
    /// consulted before the environment.
    pub secret_overrides: std::collections::HashMap<String, String>,
    /// Bearer token for `/metrics`. Without it, `/metrics` needs the API
    /// token when the node listens beyond loopback, and is open otherwise.
    pub metrics_token: Option<String>,
    /// Let HTTP destinations reach link-local and cloud metadata addresses.
    pub allow_link_local_destinations: bool,
    /// Let functions' outbound HTTP reach link-local and cloud metadata addresses.
    pub allow_link_local_http: bool,
    /// How often queue and DLQ depths are read for `/metrics`.
    pub depth_refresh: Duration,
    /// How long a function's workers wait with no event before they stop
    /// pulling until woken.
    pub worker_idle: Duration,
    /// How often workers look for queued events no wake told them about.
    pub worker_sweep: Duration,
}

impl NodeConfig {
    pub fn new(http_addr: SocketAddr, nats_url: &str, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            http_addr,
            nats: NatsConfig::new(nats_url),
            api: true,
            data_dir,
            api_token: None,
            pool_instances: 1000,
            code_memory_bytes: crate::executor::cache::RECENT_BYTES,
            max_event_size: 6 << 20,
            max_code_size: 256 << 20,
            node_name: default_node_name(),
            workers: true,
            sources: true,
            ack_wait: crate::invoker::worker::ACK_WAIT,
            fuel: false,
            secret_overrides: Default::default(),
            metrics_token: None,
            allow_link_local_destinations: false,
            allow_link_local_http: false,
            depth_refresh: crate::observe::metrics::DEPTH_REFRESH,
            worker_idle: crate::invoker::worker::IDLE_AFTER,
            worker_sweep: crate::invoker::worker::SWEEP_EVERY,
        }
    }
}

fn default_node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() { "node".to_string() } else { host };
    // Several nodes may share a process (tests) or a pid namespace: add a
    // random suffix so attempts name the node that really ran them.
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..6])
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("refusing to serve the API on {0} without a token: set EVOKE_API_TOKEN, or listen on 127.0.0.1")]
    NoToken(SocketAddr),
    #[error("`{0}` is not a usable node name: use letters, digits, `-` and `_` (at most 128)")]
    BadName(String),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error(transparent)]
    Nats(#[from] crate::bus::NatsError),
    #[error(transparent)]
    Executor(#[from] crate::executor::ExecutorError),
    #[error("cannot listen on {addr}; is another evoke running? pick another with --http: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Node {
    /// The address the API listens on (useful with port 0).
    pub addr: SocketAddr,
    pub invoker: Arc<Invoker>,
    shutdown: broadcast::Sender<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        if config.api_token.is_none() && !config.http_addr.ip().is_loopback() {
            return Err(NodeError::NoToken(config.http_addr));
        }
        if !crate::cluster::valid_node_name(&config.node_name) {
            return Err(NodeError::BadName(config.node_name.clone()));
        }
        let metrics = Arc::new(Metrics::new());
        let events = metrics.clone();
        let bus = Bus::connect(&config.nats, move |event| events.nats_event(&event)).await?;
        let mut exec_config = ExecutorConfig::new(config.data_dir.join("code-cache"));
        exec_config.pool_instances = config.pool_instances;
        exec_config.code_memory_bytes = config.code_memory_bytes;
        exec_config.fuel = config.fuel;
        exec_config.allow_link_local_http = config.allow_link_local_http;
        let secrets = crate::secrets::Secrets {
            overrides: config.secret_overrides.clone(),
        };
        let stores = Arc::new(crate::stores::Stores::new(&bus, secrets.clone()));
        let executor = Arc::new(Executor::new(exec_config, Some(bus.code.clone()), stores.backend())?);
        let mut invoker = Invoker::new(bus, executor.clone(), metrics, config.node_name.clone(), stores);
        invoker.ack_wait = config.ack_wait;
        invoker.worker_idle = config.worker_idle;
        invoker.worker_sweep = config.worker_sweep;
        invoker.runs_locally = config.workers;
        // Broker sessions (MQTT client ids, AMQP consumer tags) are named by
        // this node's data directory, so a restarted node resumes its
        // persistent sessions even when its name is generated.
        invoker.connections = Arc::new(crate::connections::Connections::new(
            invoker.bus.connections.clone(),
            invoker.stores.secrets.clone(),
            crate::connections::client_identity(&config.data_dir),
        ));
        if config.allow_link_local_destinations {
            invoker.allow_link_local_destinations();
        }
        let invoker = Arc::new(invoker);
        let (shutdown, _) = broadcast::channel(1);
        let mut tasks = Vec::new();
        let registry = invoker.registry.clone();
        tasks.push(tokio::spawn(registry.clone().run_watch(shutdown.subscribe())));
        tasks.push(tokio::spawn(invoker.triggers.clone().run_watch(shutdown.subscribe())));
        tasks.push(tokio::spawn(
            invoker.stores.registry.clone().run_watch(shutdown.subscribe()),
        ));
        tasks.push(tokio::spawn(
            invoker.connections.registry.clone().run_watch(shutdown.subscribe()),
        ));
        if config.sources {
            tasks.push(tokio::spawn(crate::sources::run(invoker.clone(), shutdown.subscribe())));
        }
        if config.workers {
            let relay = invoker.relay_subscription().await?;
            tasks.push(tokio::spawn(invoker.clone().serve_relayed(relay, shutdown.subscribe())));
            let wakes = invoker.wake_subscription().await?;
            tasks.push(tokio::spawn(worker::run(
                invoker.clone(),
                wakes,
                registry.subscribe(),
                shutdown.subscribe(),
            )));
        }
        tasks.push(tokio::spawn(crate::observe::metrics::refresh_depths(
            invoker.bus.clone(),
            registry.clone(),
            invoker.metrics.clone(),
            config.depth_refresh,
            shutdown.subscribe(),
        )));
        let mut reaper_stop = shutdown.subscribe();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => { executor.reap_idle(); }
                    _ = reaper_stop.recv() => return,
                }
            }
        }));
        let loopback = config.http_addr.ip().is_loopback();
        let mut addr = config.http_addr;
        if config.api {
            let state = Arc::new(ApiState {
                invoker: invoker.clone(),
                token: config.api_token.clone(),
                metrics_token: config
                    .metrics_token
                    .clone()
                    .or_else(|| (!loopback).then(|| config.api_token.clone()).flatten()),
                max_event_size: config.max_event_size,
                max_code_size: config.max_code_size,
                loopback,
                secrets,
                sink: Arc::new(crate::sources::NatsSink::new(invoker.clone())),
                state: Arc::new(crate::sources::KvState::new(invoker.bus.state.clone())),
            });
            let listen = |source| NodeError::Listen {
                addr: config.http_addr,
                source,
            };
            let listener = TcpListener::bind(config.http_addr).await.map_err(listen)?;
            addr = listener.local_addr().map_err(listen)?;
            let mut api_stop = shutdown.subscribe();
            let app = api::router(state);
            tasks.push(tokio::spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = api_stop.recv().await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "API server stopped");
                }
            }));
        }
        let roles = crate::cluster::Roles {
            api: config.api,
            workers: config.workers,
            sources: config.sources,
        };
        tasks.push(tokio::spawn(crate::cluster::heartbeat(
            invoker.clone(),
            roles,
            config.api.then(|| addr.to_string()),
            shutdown.subscribe(),
        )));
        tracing::info!(%addr, node = %config.node_name, nats = %config.nats.display(), replicas = invoker.bus.replicas, "evoke node started");
        Ok(Node {
            addr,
            invoker,
            shutdown,
            tasks,
        })
    }

    /// Stops at once, like a crash: running invocations are abandoned and
    /// nothing is acknowledged (their events are redelivered elsewhere).
    pub fn kill(self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Stops accepting work, lets in-flight invocations finish, and returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }
}
