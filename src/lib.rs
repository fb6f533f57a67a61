//! evoke: a self-hosted, event-driven serverless platform for WebAssembly
//! functions.
//!
//! # Layout
//! - [`bus`]: NATS JetStream: connection, streams, buckets, subject names.
//! - [`registry`]: function specs (validation, storage in KV, live watch).
//! - [`executor`]: the wasmtime sandbox: engine, code cache, instance pools.
//! - [`invoker`]: sync runs, the async queue, retries, DLQ, destinations, records.
//! - [`api`]: the HTTP API (`/v1`, `/healthz`, `/metrics`).
//! - [`sources`]: event sources running on a node (cron), over the connectors crate.
//! - [`supervise`]: one task per named spec, following a watched registry.
//! - [`cluster`]: node heartbeats and the cluster status (`evoke status`).
//! - [`observe`]: function logs and Prometheus metrics.
//! - [`manifest`]: `evoke.toml`, functions and triggers as code.
//! - [`node`]: wires the above into one running node.
//! - [`cli`]: the `evoke` command (client commands and `up`/`serve`).
//! - [`units`]: sizes and durations as users write them.
//!
//! The event envelope lives in the `evoke-connectors` crate, beside the sources.

pub mod api;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod executor;
pub mod invoker;
pub mod manifest;
pub mod node;
pub mod observe;
pub mod registry;
pub mod sources;
pub mod supervise;
pub use evoke_connectors::units;
