//! Object stores: named S3-compatible endpoints (`[stores.NAME]`) that
//! triggers, grants and destinations refer to by name.
//!
//! A store names where its credentials are (environment variables on each
//! node), never the credentials themselves: nothing secret is stored in
//! NATS. With no variables named, the standard AWS credential chain is used
//! (environment, profile, web identity, instance metadata).

use serde::{Deserialize, Serialize};

use crate::trigger::{Problem, valid_env_name};

/// `[stores.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `http(s)://host:port` of an S3-compatible server; AWS when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Signing region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`
    /// (MinIO, Ceph and most test servers need it). Default: true when an
    /// endpoint is set, false for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Environment variable holding the access key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_env: Option<String>,
    /// Environment variable holding the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_env: Option<String>,
    /// Environment variable holding a session token (temporary credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_env: Option<String>,
    /// PEM file (on each node) with the CA that signed an `https` endpoint's
    /// certificate, trusted besides the system's roots (private CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

pub const DEFAULT_REGION: &str = "us-east-1";

impl StoreConfig {
    /// Reads and checks a `[stores.NAME]` table, every problem with its field.
    pub fn parse(v: &serde_json::Value) -> Result<StoreConfig, Vec<Problem>> {
        crate::trigger::parse_table(v, StoreConfig::check)
    }

    pub fn check(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Some(e) = &self.endpoint {
            match url::Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    if u.path() != "/" || u.query().is_some() {
                        p.push((
                            "endpoint".into(),
                            "must be only scheme://host[:port], with no path".into(),
                        ));
                    }
                }
                _ => p.push(("endpoint".into(), format!("`{e}` is not an http(s) URL"))),
            }
        }
        if let Some(r) = &self.region
            && (r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            p.push(("region".into(), format!("`{r}` is not a region name")));
        }
        for (field, name) in [
            ("access_key_env", &self.access_key_env),
            ("secret_key_env", &self.secret_key_env),
            ("session_token_env", &self.session_token_env),
        ] {
            if let Some(n) = name
                && !valid_env_name(n)
            {
                p.push((field.into(), format!("`{n}` is not an environment variable name")));
            }
        }
        match (&self.access_key_env, &self.secret_key_env) {
            (Some(_), None) => p.push(("secret_key_env".into(), "is required with access_key_env".into())),
            (None, Some(_)) => p.push(("access_key_env".into(), "is required with secret_key_env".into())),
            _ => {}
        }
        if self.ca_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
            p.push(("ca_file".into(), "must be the path of a PEM file".into()));
        }
        if self.session_token_env.is_some() && self.access_key_env.is_none() {
            p.push((
                "session_token_env".into(),
                "needs access_key_env and secret_key_env".into(),
            ));
        }
        p
    }

    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }

    pub fn path_style(&self) -> bool {
        self.path_style.unwrap_or(self.endpoint.is_some())
    }

    /// The credentials this node has for the store, from the variables it
    /// names: `None` when it names none (use the AWS chain), an error
    /// naming the variable when one is unset.
    pub fn credentials(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Keys>, StoreError> {
        let (Some(access), Some(secret)) = (&self.access_key_env, &self.secret_key_env) else {
            return Ok(None);
        };
        let get = |name: &String| {
            lookup(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| StoreError::MissingCredentials(name.clone()))
        };
        Ok(Some(Keys {
            access_key: get(access)?,
            secret_key: get(secret)?,
            session_token: match &self.session_token_env {
                Some(t) => Some(get(t)?),
                None => None,
            },
        }))
    }
}

/// Static credentials read from a node's environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// A store that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("store `{0}` does not exist; create it with `[stores.{0}]` in evoke.toml")]
    Unknown(String),
    #[error("environment variable {0} is not set on this node; the store's credentials are read from it")]
    MissingCredentials(String),
    #[error("this build of evoke has no object storage support (built without the `s3` feature)")]
    NotBuilt,
    #[error("cannot use ca_file {path}: {reason}")]
    BadCa { path: String, reason: String },
    #[error("the store refused: {0}")]
    Refused(String),
    #[error("the store cannot be reached: {0}")]
    Unreachable(String),
}

#[cfg(feature = "s3")]
mod client {
    use aws_sdk_s3::config::{Credentials, Region, SharedHttpClient};

    use super::{StoreConfig, StoreError};

    /// The HTTPS client (rustls on ring) for the AWS SDK clients of a
    /// store: the SDK's default would bring a second crypto provider into
    /// the process. Stores trusting the system's roots share one; a store
    /// with a `ca_file` gets its own, trusting that CA too.
    pub fn http_client(ca_file: Option<&str>) -> Result<SharedHttpClient, StoreError> {
        use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
        static SHARED: std::sync::OnceLock<SharedHttpClient> = std::sync::OnceLock::new();
        let builder = || aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
        let Some(path) = ca_file else {
            return Ok(SHARED.get_or_init(|| builder().build_https()).clone());
        };
        let bad = |reason: String| StoreError::BadCa {
            path: path.to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(bad("not a PEM file".into()));
        }
        let context = TlsContext::builder()
            .with_trust_store(TrustStore::default().with_pem_certificate(pem))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(builder().tls_context(context).build_https())
    }

    /// The SDK configuration for `store`: its endpoint, region and
    /// credentials (from the variables it names, or the AWS chain).
    pub async fn sdk_config(
        store: &StoreConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<aws_config::SdkConfig, StoreError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http_client(store.ca_file.as_deref())?)
            .region(Region::new(store.region().to_string()));
        if let Some(keys) = store.credentials(lookup)? {
            loader = loader.credentials_provider(Credentials::new(
                keys.access_key,
                keys.secret_key,
                keys.session_token,
                None,
                "evoke-store",
            ));
        }
        Ok(loader.load().await)
    }

    /// An S3 client for `store`.
    pub async fn s3_client(
        store: &StoreConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<aws_sdk_s3::Client, StoreError> {
        let sdk = sdk_config(store, lookup).await?;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(store.path_style());
        if let Some(e) = &store.endpoint {
            b = b.endpoint_url(e.trim_end_matches('/'));
        }
        Ok(aws_sdk_s3::Client::from_conf(b.build()))
    }

    /// An SQS client for queues of `store`'s account, at the origin of
    /// `queue_url` (AWS, or a test server that also speaks SQS).
    pub async fn sqs_client(
        store: &StoreConfig,
        queue_url: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<aws_sdk_sqs::Client, StoreError> {
        let sdk = sdk_config(store, lookup).await?;
        let origin = url::Url::parse(queue_url)
            .map(|u| u.origin().ascii_serialization())
            .map_err(|e| StoreError::Refused(format!("queue_url: {e}")))?;
        let conf = aws_sdk_sqs::config::Builder::from(&sdk).endpoint_url(origin).build();
        Ok(aws_sdk_sqs::Client::from_conf(conf))
    }

    /// Describes an SDK error in one line: the service's code and message
    /// when it answered, else why it could not be reached.
    pub fn describe<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> StoreError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        use aws_sdk_s3::error::SdkError;
        match e {
            SdkError::ServiceError(s) => {
                let err = s.err();
                let code = err.code().unwrap_or("Error");
                let message = err.message().unwrap_or("");
                StoreError::Refused(format!("{code}: {message}").trim_end_matches([':', ' ']).to_string())
            }
            other => StoreError::Unreachable(aws_sdk_s3::error::DisplayErrorContext(other).to_string()),
        }
    }
}

#[cfg(feature = "s3")]
pub use client::{describe, http_client, s3_client, sdk_config, sqs_client};

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn stores_are_checked_field_by_field() {
        let s =
            StoreConfig::parse(&json!({"endpoint":"http://127.0.0.1:9000","access_key_env":"K","secret_key_env":"S"}))
                .unwrap();
        assert!(s.path_style());
        assert_eq!(s.region(), "us-east-1");
        let fields = |v| {
            StoreConfig::parse(&v)
                .unwrap_err()
                .into_iter()
                .map(|(f, _)| f)
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(json!({"endpoint":"ftp://x"})), ["endpoint"]);
        assert_eq!(fields(json!({"endpoint":"http://x/bucket"})), ["endpoint"]);
        assert_eq!(fields(json!({"access_key_env":"K"})), ["secret_key_env"]);
        assert_eq!(
            fields(json!({"access_key_env":"1K","secret_key_env":"S"})),
            ["access_key_env"]
        );
        assert_eq!(fields(json!({"secret":"x"})), ["secret"]);
    }

    #[test]
    fn credentials_come_from_the_named_variables() {
        let s = StoreConfig::parse(&json!({"access_key_env":"K","secret_key_env":"S"})).unwrap();
        let keys = s.credentials(|n| Some(format!("{n}-value"))).unwrap().unwrap();
        assert_eq!(
            (keys.access_key.as_str(), keys.secret_key.as_str()),
            ("K-value", "S-value")
        );
        assert!(!format!("{keys:?}").contains("S-value"), "secrets stay out of logs");
        assert_eq!(
            s.credentials(|n| (n == "K").then(|| "k".into())),
            Err(StoreError::MissingCredentials("S".into()))
        );
        assert_eq!(StoreConfig::parse(&json!({})).unwrap().credentials(|_| None), Ok(None));
    }
}
