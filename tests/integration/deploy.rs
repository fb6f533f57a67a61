//! docker-compose.yml, the Dockerfile and deploy/: no Docker engine runs
//! here, so the compose file is validated with `docker-compose config` and
//! checked against what `evoke serve` accepts and what the cluster tests
//! start (3 NATS servers, several evoke nodes).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `docker-compose config`, with `env` set: (success, stdout, stderr).
fn compose_config(env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new("docker-compose");
    c.current_dir(root())
        .args(["-f", "docker-compose.yml", "--profile", "brokers", "config"]);
    c.env_remove("EVOKE_API_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c
        .output()
        .expect("docker-compose is installed (scripts/setup installs it: apt-get install docker-compose)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every environment variable `evoke serve` reads, from its `--help`.
fn evoke_env_vars() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_evoke"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_compose_file_is_valid_and_matches_evoke() {
    let (ok, _, stderr) = compose_config(&[]);
    assert!(!ok, "a missing API token must stop the deployment");
    assert!(stderr.contains("EVOKE_API_TOKEN"), "{stderr}");

    let (ok, yaml, stderr) = compose_config(&[("EVOKE_API_TOKEN", "t0ken")]);
    assert!(ok, "docker-compose config failed: {stderr}");
    let config: Value = serde_yaml::from_str(&yaml).unwrap();
    let services = config["services"].as_mapping().unwrap();
    let name = |k: &Value| k.as_str().unwrap().to_string();

    // Three NATS servers, as the cluster tests start, each with a volume.
    let nats: Vec<String> = services.keys().map(name).filter(|n| n.starts_with("nats-")).collect();
    assert_eq!(nats, ["nats-1", "nats-2", "nats-3"]);
    let conf = std::fs::read_to_string(root().join("deploy/nats/nats.conf")).unwrap();
    for n in &nats {
        assert!(
            conf.contains(&format!("nats-route://{n}:6222")),
            "{n} is a route in nats.conf"
        );
        let s = &services[n.as_str()];
        assert_eq!(s["environment"]["NATS_SERVER_NAME"].as_str(), Some(n.as_str()));
        let volumes = serde_yaml::to_string(&s["volumes"]).unwrap();
        assert!(volumes.contains("/data"), "{n} keeps its store on a volume: {volumes}");
    }
    assert!(conf.contains("listen: 0.0.0.0:4222") && conf.contains("store_dir: /data"));

    // evoke nodes: every EVOKE_* variable is one `evoke serve` reads, they
    // reach all three NATS servers, and listen where their port points.
    let known = evoke_env_vars();
    assert!(
        known.contains("EVOKE_NATS_URL") && known.contains("EVOKE_NO_WORKERS"),
        "{known:?}"
    );
    let evoke: Vec<String> = services.keys().map(name).filter(|n| n.starts_with("evoke-")).collect();
    assert!(evoke.len() >= 3, "{evoke:?}");
    let mut workers = 0;
    let mut published = Vec::new();
    for n in &evoke {
        let s = &services[n.as_str()];
        let env = s["environment"].as_mapping().unwrap();
        for k in env.keys() {
            // Other variables are secrets a manifest names (checked below).
            let k = k.as_str().unwrap();
            assert!(
                !k.starts_with("EVOKE_") || known.contains(k),
                "{n} sets {k}, which evoke does not read; known: {known:?}"
            );
        }
        let nats_url = s["environment"]["EVOKE_NATS_URL"].as_str().unwrap();
        for server in &nats {
            assert!(nats_url.contains(&format!("nats://{server}:4222")), "{n}: {nats_url}");
        }
        let http = s["environment"]["EVOKE_HTTP_ADDR"].as_str().unwrap();
        let port: u64 = http.rsplit(':').next().unwrap().parse().unwrap();
        if let Some(ports) = s["ports"].as_sequence() {
            for p in ports {
                assert_eq!(p["target"].as_u64(), Some(port), "{n} publishes the port it listens on");
                published.push(n.clone());
            }
        }
        if s["environment"]["EVOKE_NO_WORKERS"].as_str() != Some("true") {
            workers += 1;
        }
        assert_eq!(s["environment"]["EVOKE_API_TOKEN"].as_str(), Some("t0ken"));
    }
    assert_eq!(published, ["evoke-api"], "one API node is published");
    assert!(workers >= 2, "at least two worker nodes");

    // The brokers profile holds the systems sources read from.
    for b in ["minio", "rabbitmq", "kafka", "mosquitto"] {
        assert!(services.contains_key(b), "{b} in the brokers profile");
    }

    // The thumbnail example on MinIO: the manifest the `functions` service
    // applies is valid, its store is the compose MinIO with the root
    // credentials, MinIO notifies the manifest's webhook trigger with its
    // token, and every secret it names is set on every evoke node.
    let manifest = evoke::manifest::Manifest::load(&root().join("deploy/compose/evoke.toml"))
        .unwrap_or_else(|e| panic!("deploy/compose/evoke.toml: {e:?}"));
    let functions = &services["functions"];
    let mounts = serde_yaml::to_string(&functions["volumes"]).unwrap();
    assert!(
        mounts.contains("/work/deploy/compose") && mounts.contains("/work/examples"),
        "{mounts}"
    );
    let entry = serde_yaml::to_string(&functions["entrypoint"]).unwrap();
    assert!(entry.contains("/work/deploy/compose/evoke.toml"), "{entry}");
    let minio = services["minio"]["environment"].clone();
    let store = &manifest.stores["minio"];
    assert_eq!(store.endpoint.as_deref(), Some("http://minio:9000"));
    let hook = minio["MINIO_NOTIFY_WEBHOOK_ENDPOINT_EVOKE"].as_str().unwrap();
    let trigger = hook.strip_prefix("http://evoke-api:8080/hooks/").expect(hook);
    let spec = serde_json::to_value(&manifest.triggers[trigger].source).unwrap();
    assert_eq!(
        (spec["kind"].as_str(), spec["via"].as_str()),
        (Some("s3"), Some("webhook")),
        "{spec}"
    );
    assert_eq!(spec["store"], "minio");
    let setup = serde_yaml::to_string(&services["minio-setup"]["command"]).unwrap();
    assert!(
        setup.contains(&format!("local/{}", spec["bucket"].as_str().unwrap())) && setup.contains("EVOKE:webhook"),
        "{setup}"
    );
    for n in &evoke {
        let env = &services[n.as_str()]["environment"];
        let secret = |name: &str| {
            env[name]
                .as_str()
                .unwrap_or_else(|| panic!("{n} lacks {name}"))
                .to_string()
        };
        assert_eq!(
            secret(spec["auth"]["secret_env"].as_str().unwrap()),
            minio["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_EVOKE"].as_str().unwrap()
        );
        assert_eq!(
            secret(store.access_key_env.as_deref().unwrap()),
            minio["MINIO_ROOT_USER"].as_str().unwrap()
        );
        assert_eq!(
            secret(store.secret_key_env.as_deref().unwrap()),
            minio["MINIO_ROOT_PASSWORD"].as_str().unwrap()
        );
        // The enrich example's broker connections reach the compose brokers
        // with their credentials.
        let rabbit = manifest.connections["rabbit"]
            .resolve(|name| env[name].as_str().map(String::from))
            .unwrap_or_else(|e| panic!("{n}: {e}"));
        let r = &services["rabbitmq"]["environment"];
        assert_eq!(
            rabbit.url,
            format!(
                "amqp://{}:{}@rabbitmq:5672/%2f",
                r["RABBITMQ_DEFAULT_USER"].as_str().unwrap(),
                r["RABBITMQ_DEFAULT_PASS"].as_str().unwrap()
            )
        );
    }
    assert_eq!(manifest.connections["kafka"].brokers, ["kafka:9092"]);
    assert!(
        services["kafka"]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some("kafka:9092"))
    );
    assert_eq!(
        manifest.connections["mqtt"].url.as_deref(),
        Some("mqtt://mosquitto:1883")
    );
    for t in ["orders", "mqtt-orders"] {
        assert_eq!(manifest.triggers[t].function, "enrich");
    }
    // Logs: the cleanse example reads the files `log-writer` appends to, on
    // the node that mounts their volume, and the syslog `syslog-sender`
    // sends to that node's listener.
    for t in ["applogs", "syslog"] {
        assert_eq!(manifest.triggers[t].function, "cleanse");
    }
    let spec = serde_json::to_value(&manifest.triggers["applogs"].source).unwrap();
    let tailer = spec["nodes"][0].as_str().unwrap();
    let dir = spec["paths"][0]
        .as_str()
        .unwrap()
        .rsplit_once('/')
        .unwrap()
        .0
        .to_string();
    let (node, _) = services
        .iter()
        .find(|(_, s)| s["environment"]["EVOKE_NODE_NAME"].as_str() == Some(tailer))
        .unwrap_or_else(|| panic!("no service runs node {tailer}"));
    let mounts = |s: &Value| serde_yaml::to_string(&s["volumes"]).unwrap();
    assert!(
        mounts(&services[node.as_str().unwrap()]).contains(&dir),
        "{tailer} mounts {dir}"
    );
    assert!(
        mounts(&services["log-writer"]).contains(&dir),
        "log-writer writes into {dir}"
    );
    let syslog = serde_json::to_value(&manifest.triggers["syslog"].source).unwrap();
    assert_eq!(syslog["nodes"][0].as_str(), Some(tailer));
    let port = syslog["listen"][0]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    assert!(services.contains_key("syslog-sender"));
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let target = format!("address=(\"{}\", {port})", node.as_str().unwrap());
    assert!(compose.contains(&target), "syslog-sender sends to {target}");
    assert_eq!(
        manifest.functions["cleanse"].spec.success_body,
        evoke::registry::spec::SuccessBody::Output
    );
    let deps = serde_yaml::to_string(&functions["depends_on"]).unwrap();
    for b in ["rabbitmq", "kafka", "mosquitto"] {
        assert!(deps.contains(b), "the functions service waits for {b}: {deps}");
    }

    // Every service docs/operations.md names exists.
    let ops = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let service_like = |w: &str| {
        let numbered = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
        w.strip_prefix("nats-").is_some_and(numbered)
            || w.strip_prefix("evoke-worker-").is_some_and(numbered)
            || w == "evoke-api"
    };
    let named: Vec<&str> = ops.split('`').skip(1).step_by(2).filter(|w| service_like(w)).collect();
    assert!(!named.is_empty(), "docs/operations.md names the compose services");
    for word in named {
        assert!(
            services.contains_key(word),
            "docs/operations.md names `{word}`, not in the compose file"
        );
    }
}

#[test]
fn the_dockerfile_builds_evoke_and_runs_it_unprivileged() {
    let d = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for needle in [
        "AS build",
        "cargo build --release --locked --bin evoke",
        "debian:bookworm-slim",
        "USER evoke",
        "HEALTHCHECK",
        "/healthz",
        "ENTRYPOINT [\"evoke\", \"serve\"]",
    ] {
        assert!(d.contains(needle), "Dockerfile lacks {needle}");
    }
    // The toolchain it builds with is the one the project pins.
    let rust = d.lines().find(|l| l.starts_with("FROM rust:")).unwrap();
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .unwrap()
        .trim_end_matches('"');
    assert!(rust.contains(msrv), "{rust} vs rust-version {msrv}");
    let alerts = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let alerts: Value = serde_yaml::from_str(&alerts).unwrap();
    let metrics = std::fs::read_to_string(root().join("src/observe/metrics.rs")).unwrap();
    for rule in alerts["groups"][0]["rules"].as_sequence().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        for metric in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("evoke_"))
        {
            let base = metric
                .trim_start_matches("evoke_")
                .trim_end_matches("_total")
                .trim_end_matches("_bucket")
                .trim_end_matches("_count");
            assert!(
                metrics.contains(&format!("\"{base}\"")),
                "alert uses {metric}, which evoke does not export"
            );
        }
    }
}
