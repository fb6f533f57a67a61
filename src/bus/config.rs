//! How a node reaches NATS: one or more servers of a cluster, credentials
//! and TLS for a secured one, and how many replicas evoke's state keeps.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;

/// Connection settings, from `--nats` and the `--nats-*` flags.
#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    /// Servers to try, in order (`nats://a:4222,nats://b:4222`); the client
    /// also learns the rest of the cluster from the server it reaches.
    pub servers: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A file with an NKey seed (`SU...`).
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (JWT and NKey seed), as `nsc` writes them.
    pub creds_file: Option<PathBuf>,
    /// CA certificate(s) the servers' certificates are checked against.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key, for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk to a server without TLS.
    pub tls_required: bool,
    /// Use only `servers`, never the servers a cluster advertises.
    pub ignore_discovered: bool,
    /// Replicas of every stream and bucket; `None` picks 3 on a cluster of
    /// three or more JetStream servers, else 1.
    pub replicas: Option<usize>,
}

/// Why connection settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("`{0}` is not a NATS server address: {1}")]
    BadServer(String, String),
    #[error("no NATS server given")]
    NoServer,
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl NatsConfig {
    /// Settings for a comma-separated list of servers, nothing else set.
    pub fn new(servers: &str) -> NatsConfig {
        NatsConfig {
            servers: split_servers(servers),
            ..Default::default()
        }
    }

    /// The servers as one string, for logs and messages.
    pub fn display(&self) -> String {
        self.servers.join(",")
    }

    /// The parsed server addresses.
    pub fn addrs(&self) -> Result<Vec<ServerAddr>, ConfigError> {
        if self.servers.is_empty() {
            return Err(ConfigError::NoServer);
        }
        self.servers
            .iter()
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| ConfigError::BadServer(s.clone(), e.to_string()))
            })
            .collect()
    }

    /// The client options these settings describe: credentials, TLS, and a
    /// client that reconnects forever (sources stop consuming and the API
    /// answers 503 meanwhile). `on_event` sees every connection event.
    pub async fn options(
        &self,
        on_event: impl Fn(async_nats::Event) + Send + Sync + 'static,
    ) -> Result<async_nats::ConnectOptions, ConfigError> {
        let on_event = std::sync::Arc::new(on_event);
        let mut o = async_nats::ConnectOptions::new()
            .name("evoke")
            .connection_timeout(Duration::from_secs(3))
            .max_reconnects(None)
            .event_callback(move |event| {
                let on_event = on_event.clone();
                async move { on_event(event) }
            });
        if let Some(path) = &self.creds_file {
            o = o.credentials_file(path).await.map_err(|source| ConfigError::Read {
                what: "the NATS credentials file",
                path: path.display().to_string(),
                source,
            })?;
        }
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                what: "the NKey seed file",
                path: path.display().to_string(),
                source,
            })?;
            o = o.nkey(seed.trim().to_string());
        }
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => o = o.user_and_password(u.clone(), p.clone()),
            (None, None) => {}
            _ => {
                return Err(ConfigError::Invalid(
                    "--nats-user and --nats-password go together".into(),
                ));
            }
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => o = o.add_client_certificate(c.clone(), k.clone()),
            (None, None) => {}
            _ => {
                return Err(ConfigError::Invalid(
                    "--nats-tls-cert and --nats-tls-key go together".into(),
                ));
            }
        }
        if self.ignore_discovered {
            o = o.ignore_discovered_servers();
        }
        if self.tls_required || self.tls_ca.is_some() || self.servers.iter().any(|s| s.starts_with("tls://")) {
            o = o.require_tls(true);
        }
        Ok(o)
    }
}

/// Splits `a,b , c` into servers, dropping empty entries.
pub fn split_servers(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_split_and_parse() {
        let c = NatsConfig::new("nats://127.0.0.1:4222, nats://127.0.0.1:4223,,tls://nats.example:4443");
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.addrs().unwrap().len(), 3);
        assert_eq!(
            c.display(),
            "nats://127.0.0.1:4222,nats://127.0.0.1:4223,tls://nats.example:4443"
        );
        assert!(matches!(NatsConfig::new(" , ").addrs(), Err(ConfigError::NoServer)));
        assert!(matches!(
            NatsConfig::new("nats://a:99999").addrs(),
            Err(ConfigError::BadServer(..))
        ));
    }
}
