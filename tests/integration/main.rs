//! Integration tests against real services: a real nats-server per test,
//! real wasmtime, the real HTTP API and the real `evoke` binary.

mod common;

mod async_queue;
mod bad_input;
mod brokers;
mod cli;
mod cluster;
mod connection;
mod deploy;
mod files;
mod hardening;
mod languages;
mod logs;
mod object_access;
mod objects;
mod outbound_http;
mod queues;
mod resilience;
mod sandbox;
mod sync_invoke;
mod triggers;
mod up;
