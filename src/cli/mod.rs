//! The `evoke` command: `up`/`serve` start a node; every other command talks
//! to a node's HTTP API.

mod apply;
pub mod client;
pub mod nats;
mod output;
pub mod project;
mod status;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// evoke runs WebAssembly functions when events happen.
///
/// Start a local node with `evoke up`, deploy a .wasm with `evoke deploy`,
/// and run it with `evoke invoke`.
#[derive(Parser, Debug)]
#[command(name = "evoke", version, about, long_about)]
pub struct Cli {
    /// The evoke API to talk to.
    #[arg(long, global = true, env = "EVOKE_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a single-node evoke for development: API, workers and (if no
    /// suitable NATS answers) a managed nats-server, all in one process.
    Up(ServeArgs),
    /// Run an evoke node against an existing NATS.
    Serve(ServeArgs),
    /// Create a function project (Rust, Python or JavaScript) with a
    /// hello-world handler, the WIT world and the language's SDK.
    New(NewArgs),
    /// Build the function project in a directory into NAME.wasm with its
    /// language's toolchain (cargo, componentize-py or componentize-js).
    Build(BuildArgs),
    /// Deploy a function: upload its .wasm and settings (upload = deploy).
    Deploy(DeployArgs),
    /// Invoke a function, synchronously (prints its output) or with --async
    /// (prints an invocation id).
    Invoke(InvokeArgs),
    /// Inspect invocations.
    #[command(subcommand)]
    Invocations(InvocationsCmd),
    /// List, show or remove functions (lists when no subcommand is given).
    Functions {
        #[command(subcommand)]
        cmd: Option<FunctionsCmd>,
    },
    /// Dead-letter queue: list, show and redrive events that gave up.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Print a function's logs.
    Logs(LogsArgs),
    /// List, show or remove triggers (lists when no subcommand is given).
    Triggers {
        #[command(subcommand)]
        cmd: Option<TriggersCmd>,
    },
    /// List, show or remove object stores (lists when no subcommand is
    /// given), each with whether this node reaches it.
    Stores {
        #[command(subcommand)]
        cmd: Option<StoresCmd>,
    },
    /// List, show or remove broker connections (lists when no subcommand is
    /// given), each with the environment variables this node lacks.
    Connections {
        #[command(subcommand)]
        cmd: Option<StoresCmd>,
    },
    /// Make the server match a manifest: create, update and (with --prune)
    /// delete stores, connections, functions and triggers, printing what changed.
    Apply(ApplyArgs),
    /// The cluster as the server sees it: nodes, NATS servers, stream
    /// replicas and leaders, queues, dead letters, and warnings.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum TriggersCmd {
    /// List triggers with their state and last event.
    Ls,
    /// Show one trigger.
    Show { name: String },
    /// Remove a trigger.
    Rm { name: String },
    /// Emit events for objects already in an s3 trigger's bucket (once:
    /// a second backfill does not repeat what is already queued).
    Backfill {
        name: String,
        /// Only keys under this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Only objects modified since: an RFC 3339 time, or a duration
        /// back from now such as 24h.
        #[arg(long)]
        since: Option<String>,
        /// Count what would be queued without queuing it.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The subcommands of `evoke stores` and `evoke connections`.
#[derive(Subcommand, Debug)]
pub enum StoresCmd {
    /// List them (stores: whether this node reaches each; connections: the
    /// environment variables this node lacks).
    Ls,
    /// Show one.
    Show { name: String },
    /// Remove one (refused while triggers use it).
    Rm { name: String },
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The manifest.
    #[arg(short = 'f', long = "file", default_value = "evoke.toml")]
    pub file: PathBuf,
    /// Also delete functions and triggers the manifest does not have.
    #[arg(long)]
    pub prune: bool,
    /// Validate and print the plan without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the HTTP API.
    #[arg(long = "http", env = "EVOKE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http: std::net::SocketAddr,
    /// NATS servers, comma-separated (`nats://a:4222,nats://b:4222`): give
    /// several servers of a cluster so the node survives losing one. `evoke
    /// up` without it uses nats://127.0.0.1:4222 if a NATS 2.10+ answers
    /// there, and otherwise starts a managed nats-server.
    #[arg(long, env = "EVOKE_NATS_URL")]
    pub nats: Option<String>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "EVOKE_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "EVOKE_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "EVOKE_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// File holding an NKey seed.
    #[arg(long, env = "EVOKE_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// NATS credentials file (JWT + seed, as nsc writes it).
    #[arg(long, env = "EVOKE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate to check the NATS servers' certificates against
    /// (turns TLS on).
    #[arg(long, env = "EVOKE_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate for NATS servers that verify clients.
    #[arg(long, env = "EVOKE_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Key of --nats-tls-cert.
    #[arg(long, env = "EVOKE_NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse NATS servers that do not speak TLS.
    #[arg(long, env = "EVOKE_NATS_TLS_REQUIRED")]
    pub nats_tls_required: bool,
    /// Connect only to the servers in --nats, never to the ones the cluster
    /// advertises (for servers behind NAT, proxies or container networks).
    #[arg(long, env = "EVOKE_NATS_IGNORE_DISCOVERED")]
    pub nats_ignore_discovered: bool,
    /// Replicas of evoke's streams and buckets (default: 3 on a NATS
    /// cluster of three or more servers, else 1). Raised on existing
    /// streams, never lowered.
    #[arg(long, env = "EVOKE_REPLICAS")]
    pub replicas: Option<usize>,
    /// This node's name in records, logs and `evoke status` (default:
    /// hostname, process id and a random suffix).
    #[arg(long, env = "EVOKE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Where evoke keeps its local files (compiled-code cache, managed NATS).
    #[arg(long, env = "EVOKE_DATA_DIR", default_value = ".evoke")]
    pub data_dir: PathBuf,
    /// Bearer token required on /v1 (required to listen beyond loopback).
    #[arg(long, env = "EVOKE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Do not run async workers on this node.
    #[arg(long, env = "EVOKE_NO_WORKERS")]
    pub no_workers: bool,
    /// Do not run event sources (cron triggers) on this node.
    #[arg(long, env = "EVOKE_NO_SOURCES")]
    pub no_sources: bool,
    /// Do not serve the HTTP API (nor webhooks) on this node.
    #[arg(long, env = "EVOKE_NO_API")]
    pub no_api: bool,
    /// How long an event taken by a node that stopped answering (killed, cut
    /// off) waits before another node gets it; running invocations tell
    /// NATS they are alive every third of it.
    #[arg(long, env = "EVOKE_ACK_WAIT", default_value = "30s", value_parser = parse_duration_arg)]
    pub ack_wait: std::time::Duration,
    /// Instance pool size of this node.
    #[arg(long, env = "EVOKE_POOL_INSTANCES", default_value_t = 1000)]
    pub pool_instances: u32,
    /// Compiled code kept in memory besides the disk cache, the oldest
    /// dropped first (0 turns it off): a new version of a function whose
    /// code is there starts without reading the disk. Counts artifact bytes (a
    /// Python function's is ~37 MB, a Rust one's well under 1 MB).
    #[arg(long, env = "EVOKE_CODE_MEMORY", default_value = "256Mi")]
    pub code_memory: crate::units::ByteSize,
    /// Meter CPU with fuel so functions can set `--fuel` budgets (costs some speed).
    #[arg(long, env = "EVOKE_FUEL")]
    pub fuel: bool,
    /// Bearer token for /metrics (for Prometheus). Without it, /metrics needs
    /// the API token when listening beyond loopback.
    #[arg(long, env = "EVOKE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Let HTTP destinations call link-local and cloud metadata addresses
    /// (169.254.0.0/16, fe80::/10, 100.100.100.200, fd00:ec2::254; refused by
    /// default).
    #[arg(long, env = "EVOKE_ALLOW_LINK_LOCAL_DESTINATIONS")]
    pub allow_link_local_destinations: bool,
    /// Let functions with http grants call link-local and cloud metadata
    /// addresses (169.254.0.0/16, fe80::/10, 100.100.100.200, fd00:ec2::254;
    /// refused by default, even when a grant names them).
    #[arg(long, env = "EVOKE_ALLOW_LINK_LOCAL_HTTP")]
    pub allow_link_local_http: bool,
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// Function name: lower-case letters, digits and `-`.
    pub name: String,
    /// The function's language.
    #[arg(long, value_enum, default_value_t = project::Lang::Rust)]
    pub lang: project::Lang,
    /// Where to create it (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The project's directory (default: the current one). Its language is
    /// told by Cargo.toml, app.py or app.js.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Function name: lower-case letters, digits and `-`.
    pub name: String,
    /// Path of the .wasm (a component of wit/function.wit, or a WASI command).
    pub path: PathBuf,
    /// Memory limit per instance, e.g. 64Mi.
    #[arg(long)]
    pub memory: Option<String>,
    /// Timeout per invocation, e.g. 5s.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Retries after a function error (async invocations; default 3).
    #[arg(long)]
    pub retries: Option<u32>,
    /// How long an async event may be retried (default 24h).
    #[arg(long)]
    pub max_event_age: Option<String>,
    /// Environment variable for the function, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Instances kept warm on every node.
    #[arg(long)]
    pub reserved: Option<u32>,
    /// Concurrent instances per node.
    #[arg(long)]
    pub max_instances: Option<u32>,
    /// Idle instances are dropped after this long, e.g. 5m.
    #[arg(long)]
    pub idle_timeout: Option<String>,
    /// Object access, STORE/BUCKET:read|write|read-write (repeatable), e.g.
    /// --grant local/photos:read --grant local/thumbs:write. None by default.
    #[arg(long = "grant", value_name = "STORE/BUCKET:ACCESS")]
    pub grants: Vec<String>,
    /// Outbound HTTP the function may make (repeatable), e.g.
    /// --allow-http 'https://api.example.com/*'. None by default.
    #[arg(long = "allow-http", value_name = "URL")]
    pub http: Vec<String>,
    /// Where results go: nats:<subject>, jetstream:<subject>, http(s)://...,
    /// function:<name> or s3://<store>/<bucket>/<prefix>.
    #[arg(long)]
    pub on_success: Option<String>,
    /// Where failures go after the last retry.
    #[arg(long)]
    pub on_failure: Option<String>,
    /// What on_success receives: `invocation` (default: the invocation with
    /// its request and response) or `output` (the function's output alone).
    #[arg(long, value_name = "invocation|output")]
    pub success_body: Option<String>,
    /// CPU budget per invocation, in fuel units (nodes started with --fuel).
    #[arg(long)]
    pub fuel: Option<u64>,
}

#[derive(Args, Debug)]
pub struct InvokeArgs {
    pub name: String,
    /// Event data (JSON is sent as application/json).
    #[arg(long, short = 'd', conflicts_with = "file")]
    pub data: Option<String>,
    /// Read event data from a file (`-` for stdin).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Content type of the data (default: application/json when it parses, else text/plain).
    #[arg(long)]
    pub content_type: Option<String>,
    /// Queue the event and return its invocation id at once.
    #[arg(long = "async")]
    pub asynchronous: bool,
}

#[derive(Subcommand, Debug)]
pub enum InvocationsCmd {
    /// Status, attempts, duration, cold/warm and error of one invocation.
    Show { id: String },
}

#[derive(Subcommand, Debug)]
pub enum FunctionsCmd {
    /// List functions.
    Ls,
    /// Show one function's spec.
    Show { name: String },
    /// Remove a function (queued events for it are dropped).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// List a function's dead letters.
    Ls {
        name: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter with every attempt's error.
    Show { name: String, id: String },
    /// Put dead letters back on the queue.
    Redrive {
        name: String,
        /// Invocation id to redrive (repeatable).
        #[arg(long = "id", required_unless_present = "all")]
        ids: Vec<String>,
        /// Redrive every dead letter of the function.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub name: String,
    /// Keep printing new lines.
    #[arg(long)]
    pub follow: bool,
    /// Only lines newer than this, e.g. 10m.
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines of one invocation.
    #[arg(long)]
    pub invocation: Option<String>,
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::units::parse_duration(s)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = std::env::var("EVOKE_API_TOKEN").ok().filter(|t| !t.is_empty());
    let client = client::Client::new(&cli.server, token);
    match cli.command {
        Command::Up(args) => up::up(args, true).await,
        Command::Serve(args) => up::up(args, false).await,
        Command::New(args) => project::new_command(&args, cli.json),
        Command::Build(args) => project::build_command(&args.dir, cli.json),
        Command::Deploy(args) => output::deploy(&client, args, cli.json).await,
        Command::Invoke(args) => output::invoke(&client, args, cli.json).await,
        Command::Invocations(InvocationsCmd::Show { id }) => output::invocation(&client, &id, cli.json).await,
        Command::Functions { cmd } => output::functions(&client, cmd.unwrap_or(FunctionsCmd::Ls), cli.json).await,
        Command::Dlq(cmd) => output::dlq(&client, cmd, cli.json).await,
        Command::Logs(args) => output::logs(&client, args, cli.json).await,
        Command::Triggers { cmd } => output::triggers(&client, cmd.unwrap_or(TriggersCmd::Ls), cli.json).await,
        Command::Stores { cmd } => output::stores(&client, cmd.unwrap_or(StoresCmd::Ls), cli.json).await,
        Command::Connections { cmd } => output::connections(&client, cmd.unwrap_or(StoresCmd::Ls), cli.json).await,
        Command::Apply(a) => apply::apply(&client, &a.file, a.prune, a.dry_run, cli.json)
            .await
            .map(|_| ()),
        Command::Status => status::status(&client, cli.json).await,
    }
}
