//! `evoke up` and `evoke serve`: find or start NATS, start a node, run until
//! Ctrl-C.

use std::time::Duration;

use anyhow::Context;

use super::ServeArgs;
use super::nats::{ManagedNats, find_server, free_port};
use crate::bus::{DEFAULT_NATS_URL, version_ok};
use crate::node::{Node, NodeConfig};

/// What answers at the default NATS address.
enum Probe {
    Usable,
    TooOld(String),
    Nothing,
}

async fn probe(url: &str) -> Probe {
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(url);
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(client)) => {
            let v = client.server_info().version;
            if version_ok(&v) && client.server_info().jetstream {
                Probe::Usable
            } else {
                Probe::TooOld(v)
            }
        }
        _ => Probe::Nothing,
    }
}

/// Takes the data dir for this process (its node id, code cache and
/// managed nats-server cannot be shared): an exclusive lock on
/// `<data-dir>/evoke.lock`, held while the returned file is open and
/// released by the kernel however we exit.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("evoke.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another `evoke up` is using the data dir {}; stop it, or give this one another --data-dir",
            dir.display()
        );
    }
    Ok(file)
}

pub async fn up(args: ServeArgs, managed: bool) -> anyhow::Result<()> {
    init_tracing();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data dir {}", args.data_dir.display()))?;
    let mut _nats_child = None;
    // Taken whatever NATS this uses: a second `evoke up` on the data dir
    // would otherwise find the first one's managed server on 4222 usable
    // and run beside it as the same node.
    let _lock = managed.then(|| lock_data_dir(&args.data_dir)).transpose()?;
    let nats_url = match (&args.nats, managed) {
        (Some(url), _) => url.clone(),
        (None, false) => DEFAULT_NATS_URL.to_string(),
        (None, true) => match probe(DEFAULT_NATS_URL).await {
            Probe::Usable => DEFAULT_NATS_URL.to_string(),
            found => {
                let bin = find_server()?;
                let port = match &found {
                    Probe::TooOld(v) => {
                        let port = free_port()?;
                        eprintln!(
                            "evoke: the NATS at {DEFAULT_NATS_URL} is {v}, too old for evoke; starting a managed nats-server on port {port} instead"
                        );
                        port
                    }
                    _ => 4222,
                };
                let dir = args.data_dir.join("nats");
                // 4222 may be taken between the probe and the start (another
                // `evoke up` starting beside this one): then any free port.
                let child = match ManagedNats::start(&bin, &dir, port) {
                    Err(e) if port == 4222 && format!("{e:#}").contains("address already in use") => {
                        let port = free_port()?;
                        eprintln!("evoke: port 4222 was taken meanwhile; starting the managed nats-server on {port}");
                        ManagedNats::start(&bin, &dir, port)?
                    }
                    other => other?,
                };
                eprintln!(
                    "evoke: started managed nats-server ({}) at {}",
                    bin.display(),
                    child.url()
                );
                let url = child.url();
                _nats_child = Some(child);
                url
            }
        },
    };
    let config = node_config(&args, &nats_url);
    let node = Node::start(config).await?;
    // Listen for Ctrl-C and SIGTERM from here on, so a stop during start-up
    // still stops cleanly (and takes the managed nats-server with it).
    let interrupted = tokio::spawn(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
    });
    let manifest = std::path::Path::new("evoke.toml");
    if managed && manifest.exists() {
        eprintln!("evoke: applying ./evoke.toml");
        let client = super::client::Client::new(&format!("http://{}", node.addr), args.api_token.clone());
        if let Err(e) = super::apply::apply(&client, manifest, false, false, false).await {
            eprintln!("evoke: ./evoke.toml was not applied: {e:#}\nevoke: fix it and run `evoke apply -f evoke.toml`");
        }
    }
    eprintln!(
        "evoke: serving the API on http://{} (NATS {nats_url}); Ctrl-C to stop",
        node.addr
    );
    let _ = interrupted.await;
    eprintln!("evoke: stopping (letting running invocations finish)...");
    node.stop().await;
    Ok(())
}

/// The node's configuration from the command line, NATS at `nats_url`.
fn node_config(args: &ServeArgs, nats_url: &str) -> NodeConfig {
    let mut config = NodeConfig::new(args.http, nats_url, args.data_dir.clone());
    config.nats.user = args.nats_user.clone();
    config.nats.password = args.nats_password.clone();
    config.nats.token = args.nats_token.clone().filter(|t| !t.is_empty());
    config.nats.nkey_file = args.nats_nkey_file.clone();
    config.nats.creds_file = args.nats_creds.clone();
    config.nats.tls_ca = args.nats_tls_ca.clone();
    config.nats.tls_cert = args.nats_tls_cert.clone();
    config.nats.tls_key = args.nats_tls_key.clone();
    config.nats.tls_required = args.nats_tls_required;
    config.nats.replicas = args.replicas;
    config.nats.ignore_discovered = args.nats_ignore_discovered;
    config.ack_wait = args.ack_wait;
    if let Some(name) = &args.node_name {
        config.node_name = name.clone();
    }
    config.api_token = args.api_token.clone().filter(|t| !t.is_empty());
    config.workers = !args.no_workers;
    config.sources = !args.no_sources;
    config.api = !args.no_api;
    config.pool_instances = args.pool_instances;
    config.code_memory_bytes = usize::try_from(args.code_memory.0).unwrap_or(usize::MAX);
    config.fuel = args.fuel;
    config.metrics_token = args.metrics_token.clone().filter(|t| !t.is_empty());
    config.allow_link_local_destinations = args.allow_link_local_destinations;
    config.allow_link_local_http = args.allow_link_local_http;
    config
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EVOKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn,cranelift=warn,wasmtime=warn"));
    // Colour only for a person at a terminal (and never with NO_COLOR set):
    // a log file or a pipe gets plain text.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(flags: &[&str]) -> Result<NodeConfig, clap::Error> {
        let cli = crate::cli::Cli::try_parse_from([&["evoke", "up"], flags].concat())?;
        match cli.command {
            crate::cli::Command::Up(args) => Ok(node_config(&args, "nats://127.0.0.1:4222")),
            _ => unreachable!("parsed `evoke up`"),
        }
    }

    #[test]
    fn flags_reach_the_node() {
        let c = config(&[
            "--pool-instances",
            "50",
            "--code-memory",
            "64Mi",
            "--allow-link-local-http",
        ])
        .unwrap();
        assert_eq!(c.pool_instances, 50);
        assert_eq!(c.code_memory_bytes, 64 << 20);
        assert!(c.allow_link_local_http && !c.allow_link_local_destinations);
        assert_eq!(
            config(&[]).unwrap().code_memory_bytes,
            crate::executor::cache::RECENT_BYTES
        );
        let bad = config(&["--code-memory", "lots"]).err().unwrap().to_string();
        assert!(bad.contains("is not a size"), "{bad}");
    }
}
