//! Shared harness: a real nats-server per test on a free port, evoke nodes
//! started in-process on 127.0.0.1:0, the example functions, and hostile
//! guests written in WAT.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use evoke::cli::nats::{ManagedNats, find_server, free_port};
use evoke::node::{Node, NodeConfig};
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

/// A nats-server of our own, removed with its store on drop.
pub struct Nats {
    pub server: ManagedNats,
    _dir: TempDir,
}

/// Logs of the code under test, shown for failing tests (`EVOKE_LOG=debug`
/// for more).
pub fn init_tracing() {
    let filter = std::env::var("EVOKE_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl Nats {
    pub fn start() -> Nats {
        init_tracing();
        let dir = TempDir::new().expect("temp dir");
        let bin = find_server().expect("nats-server 2.10+ (scripts/test installs it)");
        let server = with_free_ports(|| ManagedNats::start(&bin, dir.path(), free_port()?));
        Nats { server, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Kills the server (`restart` brings it back).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.server.restart().expect("restart nats-server");
    }
}

/// Runs `start` (which picks free ports and binds them) again when a port
/// it picked was taken by someone else in between.
pub fn with_free_ports<T>(mut start: impl FnMut() -> anyhow::Result<T>) -> T {
    let mut last = None;
    for _ in 0..5 {
        match start() {
            Ok(t) => return t,
            Err(e) if format!("{e:#}").contains("address already in use") => last = Some(e),
            Err(e) => panic!("cannot start: {e:#}"),
        }
    }
    panic!("no free ports after 5 tries: {:#}", last.unwrap())
}

/// A JetStream cluster of real nats-servers (routes on free ports), each
/// named `n1`, `n2`, ...; removed with their stores on drop.
pub struct NatsCluster {
    pub servers: Vec<Option<ManagedNats>>,
    pub names: Vec<String>,
    ports: Vec<u16>,
    _dir: TempDir,
}

impl NatsCluster {
    pub fn start(n: usize) -> NatsCluster {
        init_tracing();
        let dir = TempDir::new().expect("temp dir");
        let bin = find_server().expect("nats-server 2.10+ (scripts/test installs it)");
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        // Started from this thread: a managed server dies with the thread
        // that started it (PR_SET_PDEATHSIG), so not from helper threads.
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let started = with_free_ports(|| evoke::cli::nats::start_cluster(&bin, dir.path(), &refs, ""));
        let ports = started.iter().map(|s| s.port).collect();
        let servers = started.into_iter().map(Some).collect();
        let cluster = NatsCluster {
            servers,
            names,
            ports,
            _dir: dir,
        };
        cluster.wait_jetstream(Duration::from_secs(60));
        cluster
    }

    /// Every server's URL, comma-separated (what `--nats` takes).
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i])
    }

    /// Waits until JetStream answers on the cluster (a meta leader exists).
    pub fn wait_jetstream(&self, within: Duration) {
        let urls: Vec<String> = (0..self.ports.len()).map(|i| self.url(i)).collect();
        // Its own thread and runtime: callers may be inside a runtime.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let start = Instant::now();
                    while start.elapsed() < within {
                        if let Ok(c) = async_nats::connect(urls.as_slice()).await
                            && async_nats::jetstream::new(c).query_account().await.is_ok()
                        {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    panic!("JetStream never became ready on {urls:?}");
                })
            });
        });
    }

    /// The index of the server named `name`.
    pub fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .expect("a server of the cluster")
    }

    /// Kills server `i` (SIGKILL); it stays down until [`NatsCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        if let Some(s) = self.servers[i].as_mut() {
            s.stop();
        }
    }

    /// Kills server `i` and starts it again on its store.
    pub fn restart(&mut self, i: usize) {
        if let Some(s) = self.servers[i].as_mut() {
            s.restart().expect("restart cluster member");
        }
    }
}

/// A client of any of the comma-separated servers.
pub async fn connect_any(urls: &str) -> async_nats::Client {
    let list: Vec<&str> = urls.split(',').collect();
    async_nats::connect(list.as_slice())
        .await
        .expect("connect to the cluster")
}

/// The server leading `stream`, as the cluster reports it.
pub async fn stream_leader(client: &async_nats::Client, stream: &str) -> Option<String> {
    let js = async_nats::jetstream::new(client.clone());
    let mut s = js.get_stream(stream).await.ok()?;
    s.info().await.ok()?.cluster.as_ref()?.leader.clone()
}

/// An evoke node with its own data dir.
pub struct TestNode {
    pub node: Option<Node>,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: TempDir,
}

/// An API answer: its status and JSON body (`Null` when it has none).
pub async fn answer(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub fn config(nats: &str, dir: &TempDir) -> NodeConfig {
    let mut c = NodeConfig::new("127.0.0.1:0".parse().expect("addr"), nats, dir.path().to_path_buf());
    // Small pools keep the virtual-memory reservation of parallel tests low.
    c.pool_instances = 64;
    c.ack_wait = Duration::from_secs(3);
    c.depth_refresh = Duration::from_millis(300);
    // Workers go to sleep soon, so every test also runs waking them up
    // (sweeps stay rare: a lost wake shows).
    c.worker_idle = Duration::from_secs(2);
    c
}

impl TestNode {
    pub async fn start(nats: &str) -> TestNode {
        let dir = TempDir::new().expect("temp dir");
        let c = config(nats, &dir);
        Self::with_config(c, dir).await
    }

    /// A node serving the API and sources but running no workers: what it
    /// queues stays on the queue until a worker node starts.
    pub async fn without_workers(nats: &str) -> TestNode {
        let dir = TempDir::new().expect("temp dir");
        let mut c = config(nats, &dir);
        c.workers = false;
        Self::with_config(c, dir).await
    }

    pub async fn with_config(c: NodeConfig, dir: TempDir) -> TestNode {
        let node = Node::start(c).await.expect("start node");
        let base = format!("http://{}", node.addr);
        TestNode {
            node: Some(node),
            base,
            http: reqwest::Client::new(),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Deploys code with query settings; returns status and JSON body.
    pub async fn deploy(&self, name: &str, code: &[u8], query: &[(&str, &str)]) -> (StatusCode, Value) {
        let resp = self
            .http
            .put(self.url(&format!("/v1/functions/{name}")))
            .query(query)
            .header("content-type", "application/wasm")
            .body(code.to_vec())
            .send()
            .await
            .expect("deploy request");
        answer(resp).await
    }

    pub async fn deploy_ok(&self, name: &str, code: &[u8], query: &[(&str, &str)]) -> Value {
        let (status, body) = self.deploy(name, code, query).await;
        assert!(status.is_success(), "deploy {name}: {status} {body}");
        body
    }

    /// Sync invoke with a JSON body.
    pub async fn invoke(&self, name: &str, body: &str) -> reqwest::Response {
        self.invoke_as(name, "application/json", body).await
    }

    /// Sync invoke with a body of `content_type`.
    pub async fn invoke_as(&self, name: &str, content_type: &str, body: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/functions/{name}/invoke")))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("invoke request")
    }

    /// An invoke request carrying a binary-mode CloudEvent (`ce-*`
    /// headers); the caller adds the body, its content type and the mode.
    pub fn binary_event(&self, name: &str, id: &str, source: &str, ty: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(&format!("/v1/functions/{name}/invoke")))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", source)
            .header("ce-type", ty)
    }

    /// Sync invoke with a text body.
    pub async fn invoke_text(&self, name: &str, body: &str) -> reqwest::Response {
        self.invoke_as(name, "text/plain", body).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Polls `/metrics` until it has `line`; returns whether it appeared.
    pub async fn wait_metric(&self, line: &str, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.metrics().await.contains(line) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Async invoke; returns the invocation id.
    pub async fn invoke_async(&self, name: &str, content_type: &str, body: &str) -> String {
        let resp = self
            .http
            .post(self.url(&format!("/v1/functions/{name}/invoke")))
            .header("content-type", content_type)
            .header("x-evoke-invocation-type", "async")
            .body(body.to_string())
            .send()
            .await
            .expect("invoke request");
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let v: Value = resp.json().await.expect("json");
        v["id"].as_str().expect("id").to_string()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.url(path)).send().await.expect("get");
        answer(resp).await
    }

    /// Redrives dead letters `ids` of `function`: the answer's status and body.
    pub async fn redrive(&self, function: &str, ids: &[&str]) -> (StatusCode, Value) {
        self.post_json(
            &format!("/v1/functions/{function}/dlq/redrive"),
            serde_json::json!({ "ids": ids }),
        )
        .await
    }

    /// Polls an invocation until `done` holds for its record.
    pub async fn wait_record(&self, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < within {
            let (status, v) = self.get(&format!("/v1/invocations/{id}")).await;
            if status == StatusCode::OK {
                if done(&v) {
                    return v;
                }
                last = v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("invocation {id} did not reach the expected state within {within:?}; last record: {last:#}");
    }

    pub async fn stop(mut self) {
        if let Some(n) = self.node.take() {
            n.stop().await;
        }
    }

    pub fn kill(mut self) {
        if let Some(n) = self.node.take() {
            n.kill();
        }
    }
}

/// A built example function (`scripts/build-examples` makes them).
pub fn example(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{} is missing ({e}); run scripts/build-examples first", path.display()))
}

/// A WASI preview-1 command written in WAT. `body` is the `_start` body;
/// `fd_write`, `proc_exit` and `clock_time_get` are imported, memory page 0
/// is scratch space, and data at 1024 holds `text`.
pub fn wasi_module(body: &str, text: &str) -> Vec<u8> {
    let escaped: String = text.bytes().map(|b| format!("\\{b:02x}")).collect();
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "{escaped}")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (local $i i32) (local $t0 i64)
    {body}))"#
    );
    wat::parse_str(&wat).expect("valid WAT")
}

/// Writes `text` to stdout and exits 0.
pub fn print_module(text: &str) -> Vec<u8> {
    wasi_module(
        &format!(
            "(call $write (i32.const 1) (i32.const 1024) (i32.const {}))",
            text.len()
        ),
        text,
    )
}

/// Spins (reading the clock) for `ms` milliseconds, then prints `done`.
pub fn busy_module(ms: u64) -> Vec<u8> {
    wasi_module(
        &format!(
            "(drop (call $clock (i32.const 1) (i64.const 1) (i32.const 16)))
             (local.set $t0 (i64.load (i32.const 16)))
             (loop $l
               (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 16)))
               (br_if $l (i64.lt_u (i64.sub (i64.load (i32.const 16)) (local.get $t0)) (i64.const {}))))
             (call $write (i32.const 1) (i32.const 1024) (i32.const 4))",
            ms * 1_000_000
        ),
        "done",
    )
}

/// Events waiting on EVOKE_EVENTS for `function` (read without consuming;
/// a work queue allows no second consumer, so messages are read by sequence).
pub async fn queued_events(nats_url: &str, function: &str) -> Vec<evoke_connectors::Event> {
    let client = async_nats::connect(nats_url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(evoke::bus::STREAM_EVENTS).await.expect("stream");
    let (first, last) = {
        let info = stream.info().await.expect("info");
        (info.state.first_sequence, info.state.last_sequence)
    };
    let mut out = Vec::new();
    for seq in first..=last {
        if let Ok(m) = stream.get_raw_message(seq).await
            && evoke::bus::function_in(m.subject.as_str(), evoke::bus::SUBJECT_INVOKE) == Some(function)
        {
            out.push(evoke_connectors::Event::from_json(&m.payload).expect("event"));
        }
    }
    out
}

impl TestNode {
    /// Creates or updates a trigger; returns status and body.
    pub async fn put_trigger(&self, name: &str, spec: serde_json::Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .put(self.url(&format!("/v1/triggers/{name}")))
            .json(&spec)
            .send()
            .await
            .expect("put trigger");
        answer(resp).await
    }
}

/// A real `evoke serve` process, as an operator runs it; killed on drop.
pub struct EvokeProcess {
    child: Option<std::process::Child>,
    pub name: String,
    pub port: u16,
    nats: String,
    extra: Vec<String>,
    pub dir: TempDir,
}

impl EvokeProcess {
    /// Starts `evoke serve --nats <nats> --node-name <name>` on a free port
    /// with a 3 s ack wait, and waits for `/healthz`.
    pub fn start(name: &str, nats: &str, extra: &[&str]) -> EvokeProcess {
        let mut p = EvokeProcess {
            child: None,
            name: name.to_string(),
            port: free_port().expect("port"),
            nats: nats.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: TempDir::new().expect("temp dir"),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        for _ in 0..5 {
            if self.spawn_once() {
                return;
            }
            // Someone took the port between picking and binding it.
            self.port = free_port().expect("port");
        }
        panic!("evoke {} found no free port: {}", self.name, self.log());
    }

    /// Starts the process and waits for health; false when its port was taken.
    fn spawn_once(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("evoke.log"))
            .expect("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_evoke"))
            .env_remove("EVOKE_API_TOKEN")
            .env_remove("EVOKE_NATS_URL")
            .args([
                "serve",
                "--nats",
                &self.nats,
                "--node-name",
                &self.name,
                "--ack-wait",
                "3s",
            ])
            .args(["--http", &format!("127.0.0.1:{}", self.port), "--data-dir"])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start evoke serve");
        self.child = Some(child);
        let start = Instant::now();
        let healthy = |url: String| {
            // Its own thread: blocking reqwest may not run inside a runtime.
            std::thread::spawn(move || reqwest::blocking::get(url).is_ok_and(|r| r.status().is_success()))
                .join()
                .unwrap_or(false)
        };
        while start.elapsed() < Duration::from_secs(60) {
            if healthy(format!("{}/healthz", self.base())) {
                return true;
            }
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                if self.log().contains("cannot listen on") {
                    return false;
                }
                panic!("evoke {} exited with {status}: {}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("evoke {} never became healthy: {}", self.name, self.log());
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("evoke.log")).unwrap_or_default()
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`: nothing is acknowledged any more.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for EvokeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 100 ms until it gives `Some`, or panics with `what`
/// after `within`: for conditions that come true "soon" on a loaded machine
/// (never a fixed sleep followed by an assertion).
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(start.elapsed() < within, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `count` stops changing for `quiet` (a source that was
/// stopped stops producing), and returns its value.
pub async fn settled<F, Fut>(within: Duration, quiet: Duration, mut count: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let start = Instant::now();
    let mut last = count().await;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = count().await;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return last;
        }
        assert!(start.elapsed() < within, "still changing after {within:?}: {last}");
    }
}

/// Waits until `count` reaches `n` (up to 90 s: on a busy machine a first
/// invocation, compiling its function, can take seconds), then until it
/// stops changing, and asserts it stayed at `n`: every one ran, none twice.
pub async fn exactly<F, Fut>(n: usize, what: &str, mut count: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    eventually(Duration::from_secs(90), &format!("{n} {what}"), || {
        let c = count();
        async move { (c.await >= n).then_some(()) }
    })
    .await;
    let last = settled(Duration::from_secs(60), Duration::from_secs(3), count).await;
    assert_eq!(last, n, "{what}: each exactly once");
}

/// A real S3 and SQS API server (`moto_server`) of our own, on a free port;
/// killed on drop.
pub struct Moto {
    child: std::process::Child,
    pub port: u16,
    pub scheme: &'static str,
}

/// The credentials the tests' stores name (moto takes any).
pub const S3_KEYS: [(&str, &str); 2] = [("S3_KEY", "test"), ("S3_SECRET", "test")];

impl Moto {
    pub fn start() -> Moto {
        Self::start_with(&[])
    }

    /// Starts moto serving HTTPS with this certificate and key.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Moto {
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        let mut m = Self::start_with(&["-c", &c, "-k", &k]);
        m.scheme = "https";
        m
    }

    fn start_with(extra: &[&str]) -> Moto {
        init_tracing();
        let bin = std::env::var("EVOKE_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        with_free_ports(|| {
            let port = free_port()?;
            let mut child = std::process::Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .args(extra)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot run {bin} (scripts/setup installs it): {e}"))?;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Moto {
                        child,
                        port,
                        scheme: "http",
                    });
                }
                if let Some(status) = child.try_wait()? {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    anyhow::bail!("moto_server exited ({status}): {err}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            anyhow::bail!("moto_server did not listen on {port} within 30s")
        })
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The store table for this server, credentials named by [`S3_KEYS`].
    pub fn store(&self) -> Value {
        serde_json::json!({
            "endpoint": self.endpoint(), "region": "us-east-1",
            "access_key_env": S3_KEYS[0].0, "secret_key_env": S3_KEYS[1].0,
        })
    }

    fn config(&self) -> evoke_connectors::store::StoreConfig {
        evoke_connectors::store::StoreConfig::parse(&self.store()).expect("store config")
    }

    fn secret(name: &str) -> Option<String> {
        S3_KEYS.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    /// An S3 client, as a user's own program would have one.
    pub async fn s3(&self) -> evoke_connectors::aws_sdk_s3::Client {
        evoke_connectors::store::s3_client(&self.config(), Self::secret)
            .await
            .expect("s3 client")
    }

    /// An SQS client of the same server.
    pub async fn sqs(&self) -> evoke_connectors::aws_sdk_sqs::Client {
        evoke_connectors::store::sqs_client(&self.config(), &self.endpoint(), Self::secret)
            .await
            .expect("sqs client")
    }

    /// Creates a bucket.
    pub async fn bucket(&self, name: &str) {
        self.s3()
            .await
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .expect("create bucket");
    }

    /// Uploads an object.
    pub async fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.s3()
            .await
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.to_vec().into())
            .send()
            .await
            .expect("put object");
    }
}

impl Moto {
    /// An object's body, `None` when there is no such object.
    pub async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let out = self.s3().await.get_object().bucket(bucket).key(key).send().await.ok()?;
        Some(out.body.collect().await.expect("object body").into_bytes().to_vec())
    }

    /// The keys of a bucket, sorted.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self
            .s3()
            .await
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .expect("list objects");
        let mut keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node whose secrets hold the test stores' credentials (and `extra`).
pub async fn node_with_s3_keys(nats: &str, extra: &[(&str, &str)], workers: bool) -> TestNode {
    let dir = TempDir::new().expect("temp dir");
    let mut c = config(nats, &dir);
    c.workers = workers;
    c.secret_overrides = S3_KEYS
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    TestNode::with_config(c, dir).await
}

impl TestNode {
    /// A function's log (`/v1/functions/{function}/logs?{query}`), read
    /// again until it has `needle` (log lines are stored beside the answer,
    /// a moment later) or 10 s passed; returns the last read.
    pub async fn logs_with(&self, function: &str, query: &str, needle: &str) -> String {
        let url = self.url(&format!("/v1/functions/{function}/logs?{query}"));
        let start = Instant::now();
        loop {
            let log = self
                .http
                .get(&url)
                .send()
                .await
                .expect("logs")
                .text()
                .await
                .expect("text");
            if log.contains(needle) || start.elapsed() > Duration::from_secs(10) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POSTs JSON; returns status and body.
    pub async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self.http.post(self.url(path)).json(&body).send().await.expect("post");
        answer(resp).await
    }

    /// Creates or updates a store; returns status and body.
    pub async fn put_store(&self, name: &str, spec: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .put(self.url(&format!("/v1/stores/{name}")))
            .json(&spec)
            .send()
            .await
            .expect("put store");
        answer(resp).await
    }
}

/// Runs `openssl` in `dir`, which must succeed.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA (`ca.pem`) and a server certificate it signed for
/// 127.0.0.1 and localhost (`server.pem`, `server.key`), in `dir`.
pub fn private_ca(d: &std::path::Path) {
    let days = ["-days", "1"];
    openssl(
        d,
        &[
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=evoke-test-ca",
            ][..],
            &days,
        ]
        .concat(),
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write ext");
    openssl(
        d,
        &[
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-extfile",
                "ext",
            ][..],
            &days,
        ]
        .concat(),
    );
}

impl TestNode {
    /// The shipped `evoke.toml` with `replace` applied (and code paths made
    /// absolute), applied to this node with the real `evoke apply`;
    /// panics when it fails, returns what it printed.
    pub async fn apply_shipped(&self, replace: &[(&str, &str)]) -> String {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut manifest = std::fs::read_to_string(format!("{root}/evoke.toml")).unwrap();
        for (from, to) in replace {
            assert!(manifest.contains(from), "the shipped evoke.toml has `{from}`");
            manifest = manifest.replace(from, to);
        }
        let manifest = manifest.replace("code = \"examples/", &format!("code = \"{root}/examples/"));
        let path = self.dir.path().join("evoke.toml");
        std::fs::write(&path, manifest).unwrap();
        let server = self.base.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_evoke"))
                .args(["apply", "-f"])
                .arg(&path)
                .env("EVOKE_SERVER", server)
                .env_remove("EVOKE_API_TOKEN")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Stream `RESULTS` taking `results.>` on a test's NATS, read with a
/// durable pull consumer: destinations publish there, and nothing is
/// missed across a NATS or node restart (a core subscriber would miss
/// what is published while it reconnects).
pub struct Results {
    consumer: async_nats::jetstream::consumer::PullConsumer,
}

impl Results {
    pub async fn create(nats_url: &str) -> Results {
        use async_nats::jetstream::{consumer, stream};
        let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.unwrap());
        let consumer = js
            .create_stream(stream::Config {
                name: "RESULTS".into(),
                subjects: vec!["results.>".into()],
                storage: stream::StorageType::File,
                max_message_size: 8 * 1024 * 1024,
                ..Default::default()
            })
            .await
            .unwrap()
            .create_consumer(consumer::pull::Config {
                durable_name: Some("test".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        Results { consumer }
    }

    /// The destination messages stored since the last call (waits up to a
    /// second for some), as JSON.
    pub async fn fetch(&mut self) -> Vec<serde_json::Value> {
        use futures::StreamExt;
        let Ok(mut batch) = self
            .consumer
            .batch()
            .max_messages(100)
            .expires(Duration::from_secs(1))
            .messages()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return vec![];
        };
        let mut out = vec![];
        while let Some(Ok(m)) = batch.next().await {
            let _ = m.ack().await;
            out.push(serde_json::from_slice(&m.payload).expect("a JSON destination message"));
        }
        out
    }
}
