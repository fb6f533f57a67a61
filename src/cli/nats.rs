//! A managed `nats-server` child for `evoke up` (and the test harness):
//! finds a new-enough binary, starts it with JetStream on a given port with
//! its store under the data dir, and stops it on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bus::{INSTALL_HINT, parse_version, version_ok};

/// Largest message the managed server accepts: events up to the 6 MiB API
/// limit plus envelope.
pub const MAX_PAYLOAD: &str = "8MB";

/// Finds a nats-server binary of version 2.10 or later: `EVOKE_NATS_SERVER`,
/// else every `nats-server` on PATH in order.
pub fn find_server() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("EVOKE_NATS_SERVER") {
        let p = PathBuf::from(p);
        let v = server_version(&p).with_context(|| format!("EVOKE_NATS_SERVER={} does not run", p.display()))?;
        if !version_ok(&v) {
            bail!(
                "EVOKE_NATS_SERVER={} is nats-server {v}, too old; {INSTALL_HINT}",
                p.display()
            );
        }
        return Ok(p);
    }
    let mut too_old = Vec::new();
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join("nats-server");
        if !candidate.is_file() {
            continue;
        }
        match server_version(&candidate) {
            Some(v) if version_ok(&v) => return Ok(candidate),
            Some(v) => too_old.push(format!("{} is {v}", candidate.display())),
            None => {}
        }
    }
    if too_old.is_empty() {
        bail!("nats-server not found on PATH; {INSTALL_HINT}");
    }
    bail!("only old nats-server found ({}); {INSTALL_HINT}", too_old.join(", "))
}

/// `nats-server --version` → `2.15.1`.
pub fn server_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().last()?.trim_start_matches('v').to_string();
    parse_version(&v).map(|_| v)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running nats-server child; killed on drop.
pub struct ManagedNats {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl ManagedNats {
    /// Starts nats-server with JetStream on `port`, storing under `dir`.
    pub fn start(bin: &Path, dir: &Path, port: u16) -> anyhow::Result<ManagedNats> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let conf = dir.join("nats.conf");
        let store = dir.join("jetstream");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD}\njetstream {{\n  store_dir: {:?}\n}}\n",
                store.display().to_string()
            ),
        )?;
        let log = std::fs::File::create(dir.join("nats-server.log"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut me = ManagedNats {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        me.wait_ready(Duration::from_secs(15))?;
        Ok(me)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("nats-server.log")).unwrap_or_default();
                bail!("nats-server exited with {status}: {}", log.lines().last().unwrap_or(""));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("nats-server did not start listening on {addr} within {within:?}")
    }

    /// Kills the server (simulating a crash when `graceful` is false).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ManagedNats {
    fn drop(&mut self) {
        self.stop();
    }
}
