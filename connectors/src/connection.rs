//! Broker connections: named endpoints (`[connections.NAME]`) that queue
//! triggers and destinations refer to by name (`connection = "rabbit"`,
//! `kafka://NAME/topic`).
//!
//! Like a store, a connection names where its secrets are (environment
//! variables on each node), never the secrets themselves: a URL with a
//! password belongs in `url_env`, not in `url`. The broker kind is the
//! trigger's or the destination's; a connection is only where and how to
//! reach it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::trigger::{Problem, valid_env_name};

/// `[connections.NAME]`, also the connection fields a queue trigger may
/// carry inline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `amqp://user:pass@host:5672/vhost`, `mqtt://host:1883`,
    /// `nats://host:4222`, or for Kafka `kafka://host:9092,host2:9092`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Environment variable holding the URL (use it when the URL has a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// Kafka bootstrap servers (`host:port`), instead of a `kafka://` URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<String>,
    /// Environment variable holding the user name (Kafka SASL, MQTT, NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_env: Option<String>,
    /// Environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Kafka SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    /// Use TLS (Kafka; the other kinds take `amqps://`, `mqtts://`, `tls://`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// PEM file (on each node) with a private CA to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// NATS credentials file (on each node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<String>,
    /// Extra librdkafka properties (Kafka only), e.g.
    /// `{ "session.timeout.ms" = "6000" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// A secret a connection names is missing on this node, or the URL is bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConnectionError(pub String);

/// The SASL mechanisms evoke passes to Kafka.
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Where a connection is and who connects, with its secrets resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The rest of the connection (TLS, SASL, options).
    pub config: ConnectionConfig,
}

impl ConnectionConfig {
    /// Reads and checks a `[connections.NAME]` table, every problem with its field.
    pub fn parse(v: &serde_json::Value) -> Result<ConnectionConfig, Vec<Problem>> {
        crate::trigger::parse_table(v, ConnectionConfig::check)
    }

    /// Whether any way to reach a broker is given.
    pub fn is_empty(&self) -> bool {
        self.url.is_none() && self.url_env.is_none() && self.brokers.is_empty()
    }

    pub fn check(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let ways = [self.url.is_some(), self.url_env.is_some(), !self.brokers.is_empty()];
        match ways.iter().filter(|w| **w).count() {
            0 => p.push((
                "url".into(),
                "is required: give `url`, `url_env` (the URL in an environment variable) or `brokers` (Kafka)".into(),
            )),
            1 => {}
            _ => p.push(("url".into(), "give only one of `url`, `url_env` and `brokers`".into())),
        }
        if let Some(u) = &self.url {
            match url::Url::parse(u) {
                Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => {}
                _ => p.push((
                    "url".into(),
                    format!("`{}` is not a broker URL (scheme://host:port)", redact(u)),
                )),
            }
        }
        for b in &self.brokers {
            if !b.contains(':') || b.contains('/') {
                p.push(("brokers".into(), format!("`{b}` is not host:port")));
            }
        }
        for (field, v) in [
            ("url_env", &self.url_env),
            ("username_env", &self.username_env),
            ("password_env", &self.password_env),
        ] {
            if let Some(name) = v
                && !valid_env_name(name)
            {
                p.push((field.into(), format!("`{name}` is not an environment variable name")));
            }
        }
        if let Some(m) = &self.sasl_mechanism
            && !SASL_MECHANISMS.contains(&m.as_str())
        {
            p.push((
                "sasl_mechanism".into(),
                format!("`{m}` is not one of {}", SASL_MECHANISMS.join(", ")),
            ));
        }
        if self.sasl_mechanism.is_some() && (self.username_env.is_none() || self.password_env.is_none()) {
            p.push((
                "sasl_mechanism".into(),
                "needs `username_env` and `password_env`".into(),
            ));
        }
        for k in self.options.keys() {
            if k.starts_with("sasl.") || k.starts_with("ssl.key") || k == "ssl.keystore.password" {
                p.push((
                    format!("options.{k}"),
                    "secrets are not stored: use `username_env`/`password_env`".into(),
                ));
            }
        }
        p
    }

    /// The URL and credentials, reading the variables it names through
    /// `env` (the node's secrets).
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<Resolved, ConnectionError> {
        let read = |name: &str| {
            env(name).ok_or_else(|| {
                ConnectionError(format!(
                    "environment variable `{name}` is not set on this node; set it where evoke runs"
                ))
            })
        };
        let url = match (&self.url, &self.url_env) {
            (Some(u), _) => u.clone(),
            (None, Some(name)) => read(name)?,
            (None, None) if !self.brokers.is_empty() => format!("kafka://{}", self.brokers.join(",")),
            (None, None) => return Err(ConnectionError("the connection has no url".into())),
        };
        let username = self.username_env.as_deref().map(read).transpose()?;
        let password = self.password_env.as_deref().map(read).transpose()?;
        Ok(Resolved {
            url,
            username,
            password,
            config: self.clone(),
        })
    }
}

/// A URL fit for logs and errors: its password replaced by `***` (also
/// in text that does not parse as a URL).
pub fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..start], &rest[..colon], &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn connections_need_one_way_to_reach_a_broker() {
        assert_eq!(ConnectionConfig::parse(&json!({})).unwrap_err()[0].0, "url");
        assert!(ConnectionConfig::parse(&json!({"url_env": "RABBIT_URL"})).is_ok());
        assert!(ConnectionConfig::parse(&json!({"brokers": ["127.0.0.1:9092"]})).is_ok());
        let both = json!({"url": "amqp://h:5672", "url_env": "X"});
        assert!(ConnectionConfig::parse(&both).unwrap_err()[0].1.contains("only one"));
        let p = ConnectionConfig::parse(&json!({"url": "not a url", "colour": 1})).unwrap_err();
        assert_eq!(p[0].0, "colour");
        let p = ConnectionConfig::parse(&json!({"url": "amqp://u:secret@/x"})).unwrap_err();
        assert!(!p[0].1.contains("secret"), "{p:?}");
        let p = ConnectionConfig::parse(&json!({"brokers": ["h:1"], "sasl_mechanism": "GSSAPI"})).unwrap_err();
        let fields: Vec<_> = p.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["sasl_mechanism", "sasl_mechanism"]);
        let p = ConnectionConfig::parse(&json!({"brokers": ["h:1"], "options": {"sasl.password": "x"}})).unwrap_err();
        assert_eq!(p[0].0, "options.sasl.password");
    }

    #[test]
    fn secrets_come_from_the_node_and_missing_ones_are_named() {
        let c = ConnectionConfig {
            url_env: Some("RABBIT_URL".into()),
            ..Default::default()
        };
        let env = |n: &str| (n == "RABBIT_URL").then(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
        assert_eq!(c.resolve(env).unwrap().url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        let e = c.resolve(|_| None).unwrap_err();
        assert!(e.0.contains("RABBIT_URL"), "{e}");
        assert_eq!(redact("amqp://guest:guest@h:5672/%2f"), "amqp://guest:***@h:5672/%2f");
    }
}
