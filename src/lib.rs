//! evoke: a self-hosted, event-driven serverless platform for WebAssembly
//! functions.
//!
//! # Layout
//! - [`bus`]: NATS JetStream: connection (servers, credentials, TLS),
//!   streams and buckets with their replicas, subject names, `NatsError`.
//! - [`registry`]: function and trigger specs (validation, storage in KV,
//!   live watch).
//! - [`executor`]: the wasmtime sandbox: engine, code cache, instance pools,
//!   limits, and the host side of the WIT world (`log`, `objects` with its
//!   grants check).
//! - [`invoker`]: sync runs, the async queue (workers, and settling each
//!   outcome by error class), records, DLQ, destinations, relays.
//! - [`api`]: the HTTP API (`/v1`, `/hooks`, `/healthz`, `/metrics`); every
//!   lower error maps to its HTTP answer in `api/error.rs`.
//! - [`sources`]: the `Sink` and state store sources use on a node, the
//!   source manager (cron, s3 by SQS or polling, the queue sources), and leases for sources
//!   that run on one node.
//! - [`stores`]: object stores (`[stores.NAME]`): specs, S3 clients, checks,
//!   the object backend functions and `s3://` destinations use, and the
//!   recursion guard's chains.
//! - [`connections`]: broker connections (`[connections.NAME]`): specs,
//!   the counters of the queue triggers a node runs, and the producers
//!   broker destinations use.
//! - [`secrets`]: secrets by environment variable name.
//! - [`supervise`]: one task per named spec, following a watched registry.
//! - [`cluster`]: node heartbeats and the cluster status (`evoke status`).
//! - [`observe`]: function logs and Prometheus metrics.
//! - [`manifest`]: `evoke.toml`, functions and triggers as code.
//! - [`node`]: wires the above into one running node.
//! - [`cli`]: the `evoke` command (client commands and `up`/`serve`).
//! - [`units`]: sizes and durations as users write them.
//!
//! The event envelope, the source contract, every source (webhook, cron,
//! s3, kafka, amqp, mqtt, nats), store and connection configs, leases and backoff policies live in the
//! `evoke-connectors` crate.

pub mod api;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod connections;
pub mod executor;
pub mod invoker;
pub mod manifest;
pub mod node;
pub mod observe;
pub mod registry;
pub mod secrets;
pub mod sources;
pub mod stores;
pub mod supervise;
pub use evoke_connectors::units;

/// The allocator of every evoke process (and of the tests and benchmarks,
/// which link this library). Memory is freed on another runtime thread
/// than it was allocated on for every event; glibc's malloc takes the
/// owning arena's lock for that, and the runtime threads spent most of a
/// queue drain waiting on those locks (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
