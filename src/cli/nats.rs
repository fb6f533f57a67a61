//! A managed `nats-server` child for `evoke up` (and the test harness):
//! finds a new-enough binary, starts it with JetStream on a given port with
//! its store under the data dir, and stops it on drop. On Linux it also dies
//! with its parent, even a parent killed with `kill -9`
//! (`PR_SET_PDEATHSIG`); elsewhere, a server left behind is found by its pid
//! file and stopped when the next one starts on the same directory.

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

/// Starts a JetStream cluster of managed servers on loopback, one per name
/// (its directory under `dir`), routes and client ports picked free;
/// `extra` goes into every server's configuration. Returns the servers and
/// their client ports. Start it from a thread that lives as long as the
/// servers should (see [`ManagedNats`]).
pub fn start_cluster(bin: &Path, dir: &Path, names: &[&str], extra: &str) -> anyhow::Result<Vec<ManagedNats>> {
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect::<Result<_, _>>()?;
    let routes: Vec<u16> = names.iter().map(|_| free_port()).collect::<Result<_, _>>()?;
    let route_list = routes
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut servers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let conf = format!(
            "{extra}\nserver_name: {name}\ncluster {{\n  name: evoke\n  listen: 127.0.0.1:{}\n  routes: [{route_list}]\n}}\n",
            routes[i]
        );
        let member = dir.join(name);
        let _ = std::fs::remove_dir_all(&member);
        servers.push(ManagedNats::start_with(bin, &member, ports[i], &conf)?);
    }
    Ok(servers)
}

/// A running nats-server child; killed on drop. On Linux it is also killed
/// when the *thread* that started it exits (that is how PR_SET_PDEATHSIG
/// works): start it from a thread that lives as long as it should.
pub struct ManagedNats {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    extra: String,
}

impl ManagedNats {
    /// Starts nats-server with JetStream on `port`, storing under `dir`.
    pub fn start(bin: &Path, dir: &Path, port: u16) -> anyhow::Result<ManagedNats> {
        ManagedNats::start_with(bin, dir, port, "")
    }

    /// Like [`ManagedNats::start`], with more configuration lines (a
    /// `server_name` and `cluster` block for a cluster member).
    pub fn start_with(bin: &Path, dir: &Path, port: u16, extra: &str) -> anyhow::Result<ManagedNats> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let conf = dir.join("nats.conf");
        let store = dir.join("jetstream");
        // `extra` lines starting with `jetstream.` go into the jetstream
        // block (e.g. `jetstream.sync_interval: always`).
        let (js_lines, other): (Vec<&str>, Vec<&str>) = extra.lines().partition(|l| l.starts_with("jetstream."));
        let js_extra: String = js_lines
            .iter()
            .map(|l| format!("  {}\n", l.trim_start_matches("jetstream.")))
            .collect();
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD}\njetstream {{\n  store_dir: {:?}\n{js_extra}}}\n{}\n",
                store.display().to_string(),
                other.join("\n")
            ),
        )?;
        let pid_file = dir.join("nats-server.pid");
        stop_stale(&pid_file, &conf);
        let log = std::fs::File::create(dir.join("nats-server.log"))?;
        let mut command = Command::new(bin);
        command
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches no memory of
            // the parent; it runs in the child between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let _ = std::fs::write(&pid_file, child.id().to_string());
        let mut me = ManagedNats {
            child,
            port,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            extra: extra.to_string(),
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

    /// Kills the server (SIGKILL: what a crash looks like to its clients).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.join("nats-server.pid"));
    }

    /// Kills the server and starts it again with the same port, store and
    /// configuration.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let (bin, dir, extra) = (self.bin.clone(), self.dir.clone(), self.extra.clone());
        *self = ManagedNats::start_with(&bin, &dir, self.port, &extra)?;
        Ok(())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Stops a nats-server a previous run left on this directory (its parent
/// was killed where `PR_SET_PDEATHSIG` does not exist): the pid in the pid
/// file, if that process is still a nats-server using our config file.
fn stop_stale(pid_file: &Path, conf: &Path) {
    let Ok(pid) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else { return };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if cmdline.contains("nats-server") && cmdline.contains(&*conf.to_string_lossy()) {
        eprintln!("evoke: stopping nats-server {pid} left behind by an earlier run");
        // SAFETY: kill(2) with a pid we just checked; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let start = Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

impl Drop for ManagedNats {
    fn drop(&mut self) {
        self.stop();
    }
}
