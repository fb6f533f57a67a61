//! Real brokers for the queue tests: a RabbitMQ vhost per test (on the
//! server the machine runs), a mosquitto and a Kafka-protocol broker
//! (`tansu`) per test on free ports, and Python clients from PyPI (pika,
//! paho-mqtt, confluent-kafka, nats-py) to publish and consume as users'
//! programs would.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use evoke::cli::nats::free_port;
use tempfile::TempDir;

use super::common::{init_tracing, with_free_ports};

/// Runs a command, panicking with its output when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A vhost of its own on the machine's RabbitMQ (guest/guest), deleted on drop.
pub struct RabbitVhost {
    pub name: String,
}

impl RabbitVhost {
    pub fn new() -> RabbitVhost {
        init_tracing();
        let name = format!("evoke-test-{}", uuid::Uuid::new_v4().simple());
        run(Command::new("rabbitmqctl").args(["-q", "add_vhost", &name]));
        run(Command::new("rabbitmqctl").args(["-q", "set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]));
        RabbitVhost { name }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// Messages in `queue`, ready or delivered and not yet acknowledged.
    pub fn messages(&self, queue: &str) -> u64 {
        let list = run(Command::new("rabbitmqctl").args(["-q", "list_queues", "-p", &self.name, "name", "messages"]));
        list.lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(name, _)| *name == queue)
            .and_then(|(_, n)| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Closes every client connection to this vhost (a broker-side drop).
    pub fn drop_connections(&self) {
        let list = run(Command::new("rabbitmqctl").args(["-q", "list_connections", "pid", "vhost"]));
        for line in list.lines() {
            let mut parts = line.split_whitespace();
            if let (Some(pid), Some(vhost)) = (parts.next(), parts.next())
                && vhost == self.name
            {
                let _ = Command::new("rabbitmqctl")
                    .args(["-q", "close_connection", pid, "test: dropped by the broker"])
                    .output();
            }
        }
    }
}

impl RabbitVhost {
    /// The broker is "down" for this vhost: it refuses new connections and
    /// drops the open ones (the shared server itself keeps serving the
    /// other tests).
    pub fn go_down(&self) {
        run(Command::new("rabbitmqctl").args([
            "-q",
            "set_vhost_limits",
            "-p",
            &self.name,
            r#"{"max-connections": 0}"#,
        ]));
        self.drop_connections();
    }

    /// Accepts connections again.
    pub fn come_back(&self) {
        run(Command::new("rabbitmqctl").args(["-q", "clear_vhost_limits", "-p", &self.name]));
    }
}

impl Drop for RabbitVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

/// Waits until something listens on `port`, or panics with `what`.
fn wait_port(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            if err.contains("in use") {
                anyhow::bail!("address already in use");
            }
            anyhow::bail!("{what} exited ({status}): {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("{what} did not listen on {port} within 60s")
}

/// A mosquitto of its own (MQTT 3.1.1 and 5) with persistence, killed on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        init_tracing();
        let dir = TempDir::new().expect("temp dir");
        let (child, port) = with_free_ports(|| {
            let port = free_port()?;
            let mut child = Self::spawn(dir.path(), port)?;
            wait_port(port, &mut child, "mosquitto")?;
            Ok((child, port))
        });
        Mosquitto { child, port, dir }
    }

    /// `user root`: run as root (CI does), mosquitto would otherwise drop to
    /// user `mosquitto`, who cannot write its persistence into our temp dir.
    fn spawn(dir: &std::path::Path, port: u16) -> anyhow::Result<Child> {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nuser root\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\n",
                dir.display()
            ),
        )?;
        Ok(Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops the broker (its persisted sessions survive) and starts it
    /// again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stops the broker (SIGTERM: it saves its sessions first).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Starts a stopped broker again on the same port and store.
    pub fn start_again(&mut self) {
        let start = Instant::now();
        loop {
            let mut child = Self::spawn(self.dir.path(), self.port).expect("restart mosquitto");
            match wait_port(self.port, &mut child, "mosquitto") {
                Ok(()) => {
                    self.child = child;
                    return;
                }
                Err(e) if start.elapsed() < Duration::from_secs(20) => {
                    tracing::debug!(error = %e, "mosquitto not back yet");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("mosquitto did not come back: {e}"),
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Kafka-protocol broker of its own (`tansu`, in-memory storage), killed on drop.
pub struct Kafka {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Kafka {
    pub fn start() -> Kafka {
        init_tracing();
        let dir = TempDir::new().expect("temp dir");
        let (child, port) = with_free_ports(|| {
            let port = free_port()?;
            Ok((Kafka::spawn(dir.path(), port)?, port))
        });
        Kafka { child, port, _dir: dir }
    }

    fn spawn(dir: &std::path::Path, port: u16) -> anyhow::Result<Child> {
        let bin = std::env::var("EVOKE_TANSU").unwrap_or_else(|_| "tansu".into());
        let mut child = Command::new(&bin)
            .args([
                "--kafka-listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--kafka-advertised-listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--storage-engine",
                &format!("memory://tansu-{port}/"),
            ])
            .current_dir(dir)
            .env(
                "RUST_LOG",
                std::env::var("EVOKE_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("tansu.log"))?,
            )
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {bin} (scripts/setup installs it): {e}"))?;
        wait_port(port, &mut child, "tansu")?;
        Ok(child)
    }

    /// Kills the broker (its storage is in memory: topics are gone with it).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a stopped broker again on the same port, empty.
    pub fn start_again(&mut self) {
        self.child = Kafka::spawn(self._dir.path(), self.port).expect("restart tansu");
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the broker logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python program (with the PyPI clients scripts/setup installs),
/// passing `args`; returns its stdout, panicking with its output on failure.
pub fn python(program: &str, args: &[&str]) -> String {
    let python = std::env::var("EVOKE_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg("-c")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `python` on a blocking thread.
pub async fn python_async(program: &'static str, args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python(program, &args)
    })
    .await
    .expect("python thread")
}
