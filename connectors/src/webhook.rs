//! The webhook source: who may call a webhook trigger (none, bearer token,
//! HMAC with presets for GitHub and Stripe), how a request becomes an
//! [`Event`] (CloudEvents keep their attributes), which requests pass the
//! trigger's filter, and the dedupe id that makes a sender's retry one
//! invocation. [`receive`] is all of it; the API only routes
//! `/hooks/<trigger>` here and hands what passes to the `Sink`.
//!
//! Signatures cover exactly the bytes received, are compared in constant
//! time, and may be checked against several secrets at once (rotation).

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};

use crate::event::Event;

/// How callers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Anyone may call (only allowed on loopback listeners).
    None,
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// An HMAC of the body (and optionally a timestamp) in a header.
    Hmac,
    /// GitHub: `X-Hub-Signature-256: sha256=<hex hmac-sha256 of the body>`.
    Github,
    /// Stripe: `Stripe-Signature: t=<unix>,v1=<hex hmac-sha256 of "t.body">`.
    Stripe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha256,
    /// For legacy senders only.
    Sha1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}

/// One or several environment variables holding secrets (several = rotation:
/// any of them is accepted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(untagged)]
pub enum SecretEnv {
    #[default]
    Unset,
    One(String),
    Many(Vec<String>),
}

impl SecretEnv {
    pub fn names(&self) -> Vec<&str> {
        match self {
            SecretEnv::Unset => vec![],
            SecretEnv::One(n) => vec![n.as_str()],
            SecretEnv::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// The secrets these variables hold: each value may list several,
    /// comma-separated (rotation). Empty entries (`"s1,"`, `","`, an empty
    /// or unset variable) are dropped: an empty key would let anyone sign.
    pub fn resolve(&self, lookup: impl Fn(&str) -> Option<String>) -> Vec<Vec<u8>> {
        self.names()
            .into_iter()
            .filter_map(lookup)
            .flat_map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| p.as_bytes().to_vec())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// A webhook trigger's `auth` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub scheme: Scheme,
    /// Environment variable(s) with the secret, read on the node serving the
    /// webhook; secrets are never stored in manifests or in NATS.
    #[serde(default, skip_serializing_if = "is_unset")]
    pub secret_env: SecretEnv,
    /// HMAC only: the header carrying the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// HMAC only: `sha256` (default) or `sha1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// HMAC only: `hex` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// HMAC only: text before the signature, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// HMAC only: a header with the Unix time the sender signed; the MAC then
    /// covers `<timestamp>.<body>` and old timestamps are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_header: Option<String>,
    /// How old (or how far in the future) a signed timestamp may be:
    /// default 5m, at most 1 day.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::units::duration_opt"
    )]
    pub tolerance: Option<Duration>,
}

fn is_unset(s: &SecretEnv) -> bool {
    matches!(s, SecretEnv::Unset)
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            scheme: Scheme::None,
            secret_env: SecretEnv::Unset,
            header: None,
            algorithm: None,
            encoding: None,
            prefix: None,
            timestamp_header: None,
            tolerance: None,
        }
    }
}

/// Why a request was refused (all answered 401; nothing is published).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `{0}` header")]
    Missing(String),
    #[error("malformed `{header}` header: {reason}")]
    Malformed { header: String, reason: String },
    #[error("signature does not match")]
    Mismatch,
    #[error("signed timestamp is {age}s away from now, beyond the {tolerance}s tolerance (a replay?)")]
    Stale { age: i64, tolerance: i64 },
    #[error("the webhook's secret is not configured on this node (set {0})")]
    NoSecret(String),
}

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
/// The widest tolerance a webhook may set.
pub const MAX_TOLERANCE: Duration = Duration::from_secs(86400);

impl Scheme {
    /// Whether the scheme signs the request body (and only the body): such a
    /// signature says nothing about a query string.
    pub fn signs_body(self) -> bool {
        matches!(self, Scheme::Hmac | Scheme::Github | Scheme::Stripe)
    }
}

impl AuthConfig {
    /// Problems with the table, as (field, message), all at once.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut e = Vec::new();
        let secrets = self.secret_env.names();
        if self.scheme == Scheme::None {
            if !secrets.is_empty() {
                e.push(("secret_env".into(), "scheme `none` takes no secret".into()));
            }
        } else if secrets.is_empty() {
            e.push((
                "secret_env".into(),
                format!("scheme `{:?}` needs secret_env", self.scheme).to_lowercase(),
            ));
        }
        for name in secrets {
            if !crate::trigger::valid_env_name(name) {
                e.push((
                    "secret_env".into(),
                    format!("`{name}` is not an environment variable name"),
                ));
            }
        }
        let hmac_only = [
            ("header", self.header.is_some()),
            ("algorithm", self.algorithm.is_some()),
            ("encoding", self.encoding.is_some()),
            ("prefix", self.prefix.is_some()),
            ("timestamp_header", self.timestamp_header.is_some()),
        ];
        if self.scheme != Scheme::Hmac {
            for (field, set) in hmac_only {
                if set {
                    e.push((field.into(), "only applies to scheme `hmac`".into()));
                }
            }
        } else if self.header.is_none() {
            e.push((
                "header".into(),
                "scheme `hmac` needs the signature header, e.g. X-Signature".into(),
            ));
        }
        if let Some(t) = self.tolerance
            && (t < Duration::from_secs(1) || t > MAX_TOLERANCE)
        {
            e.push(("tolerance".into(), "is out of range 1s..1day".into()));
        }
        e
    }

    /// The tolerance in whole seconds (bounded by [`MAX_TOLERANCE`]).
    fn tolerance(&self) -> i64 {
        self.tolerance.unwrap_or(DEFAULT_TOLERANCE).min(MAX_TOLERANCE).as_secs() as i64
    }

    /// Checks a request. `header` looks a header up (case-insensitively),
    /// `secrets` are the resolved secrets, `now` is the Unix time.
    pub fn verify(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        body: &[u8],
        secrets: &[Vec<u8>],
        now: i64,
    ) -> Result<(), AuthError> {
        if self.scheme == Scheme::None {
            return Ok(());
        }
        // Empty keys never verify anything, whoever passed them in.
        let secrets: Vec<Vec<u8>> = secrets.iter().filter(|s| !s.is_empty()).cloned().collect();
        let secrets = secrets.as_slice();
        if secrets.is_empty() {
            return Err(AuthError::NoSecret(self.secret_env.names().join(" or ")));
        }
        match self.scheme {
            Scheme::None => Ok(()),
            Scheme::Bearer => {
                let value = header("authorization").ok_or_else(|| AuthError::Missing("Authorization".into()))?;
                let token = value.strip_prefix("Bearer ").ok_or_else(|| AuthError::Malformed {
                    header: "Authorization".into(),
                    reason: "expected `Bearer <token>`".into(),
                })?;
                if secrets.iter().any(|s| constant_time_eq(s, token.as_bytes())) {
                    Ok(())
                } else {
                    Err(AuthError::Mismatch)
                }
            }
            Scheme::Github => {
                let name = "X-Hub-Signature-256";
                let value = header(name).ok_or_else(|| AuthError::Missing(name.into()))?;
                let sig = decode(name, &value, "sha256=", Encoding::Hex)?;
                check_any(Algorithm::Sha256, secrets, &[body], &[sig])
            }
            Scheme::Stripe => {
                let name = "Stripe-Signature";
                let value = header(name).ok_or_else(|| AuthError::Missing(name.into()))?;
                let mut t = None;
                let mut sigs = Vec::new();
                for part in value.split(',') {
                    match part.trim().split_once('=') {
                        Some(("t", v)) => t = Some(v.to_string()),
                        Some(("v1", v)) => sigs.push(decode(name, v, "", Encoding::Hex)?),
                        _ => {}
                    }
                }
                let t = t.ok_or_else(|| AuthError::Malformed {
                    header: name.into(),
                    reason: "no `t=` timestamp".into(),
                })?;
                if sigs.is_empty() {
                    return Err(AuthError::Malformed {
                        header: name.into(),
                        reason: "no `v1=` signature".into(),
                    });
                }
                self.fresh(name, &t, now)?;
                check_any(Algorithm::Sha256, secrets, &[t.as_bytes(), b".", body], &sigs)
            }
            Scheme::Hmac => {
                let name = self.header.clone().unwrap_or_default();
                let value = header(&name).ok_or_else(|| AuthError::Missing(name.clone()))?;
                let prefix = self.prefix.clone().unwrap_or_default();
                let sig = decode(&name, &value, &prefix, self.encoding.unwrap_or(Encoding::Hex))?;
                let alg = self.algorithm.unwrap_or(Algorithm::Sha256);
                match &self.timestamp_header {
                    Some(ts_name) => {
                        let ts = header(ts_name).ok_or_else(|| AuthError::Missing(ts_name.clone()))?;
                        self.fresh(ts_name, &ts, now)?;
                        check_any(alg, secrets, &[ts.as_bytes(), b".", body], &[sig])
                    }
                    None => check_any(alg, secrets, &[body], &[sig]),
                }
            }
        }
    }

    fn fresh(&self, header: &str, ts: &str, now: i64) -> Result<(), AuthError> {
        let ts: i64 = ts.trim().parse().map_err(|_| AuthError::Malformed {
            header: header.into(),
            reason: "the timestamp is not Unix seconds".into(),
        })?;
        let tolerance = self.tolerance();
        // Timestamps come from the sender: no arithmetic on them may
        // overflow, whatever they hold.
        let age = now.saturating_sub(ts);
        if age.unsigned_abs() > tolerance.unsigned_abs() {
            return Err(AuthError::Stale { age, tolerance });
        }
        Ok(())
    }
}

fn decode(header: &str, value: &str, prefix: &str, encoding: Encoding) -> Result<Vec<u8>, AuthError> {
    let malformed = |reason: String| AuthError::Malformed {
        header: header.into(),
        reason,
    };
    let raw = value
        .trim()
        .strip_prefix(prefix)
        .ok_or_else(|| malformed(format!("expected it to start with `{prefix}`")))?;
    match encoding {
        Encoding::Hex => hex::decode(raw).map_err(|e| malformed(format!("not hex: {e}"))),
        Encoding::Base64 => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .map_err(|e| malformed(format!("not base64: {e}")))
        }
    }
}

/// Whether any secret signs `parts` to any of `sigs` (constant-time compare).
fn check_any(alg: Algorithm, secrets: &[Vec<u8>], parts: &[&[u8]], sigs: &[Vec<u8>]) -> Result<(), AuthError> {
    for secret in secrets {
        for sig in sigs {
            let ok = match alg {
                Algorithm::Sha256 => verify_mac::<Hmac<sha2::Sha256>>(secret, parts, sig),
                Algorithm::Sha1 => verify_mac::<Hmac<sha1::Sha1>>(secret, parts, sig),
            };
            if ok {
                return Ok(());
            }
        }
    }
    Err(AuthError::Mismatch)
}

fn verify_mac<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]], sig: &[u8]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else {
        return false;
    };
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(sig).is_ok()
}

/// Compares secrets without leaking where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A webhook request as the source sees it.
pub struct Request<'a> {
    pub method: &'a str,
    /// Every header as (name, value).
    pub headers: &'a [(String, String)],
    pub query: Option<&'a str>,
    pub body: Bytes,
    /// When it arrived, in Unix seconds (signed timestamps are checked
    /// against it).
    pub now: i64,
    /// The event id to use when the request carries none of its own.
    pub fallback_id: String,
}

impl Request<'_> {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// Checks who sent a request to a trigger with `auth` (any hook: webhooks,
/// S3 notifications): no auth only when evoke listens on loopback, else
/// the scheme's proof against the secrets `secret` looks up.
pub fn authorize(
    auth: &AuthConfig,
    req: &Request<'_>,
    secret: impl Fn(&str) -> Option<String>,
    loopback: bool,
) -> Result<(), Refusal> {
    if auth.scheme == Scheme::None && !loopback {
        return Err(Refusal::AuthRequired);
    }
    let header = |name: &str| req.header(name);
    let secrets = auth.secret_env.resolve(secret);
    auth.verify(&header, &req.body, &secrets, req.now)?;
    Ok(())
}

/// A request that passed: queue (or run) `event` for the trigger's
/// function, deduplicated by `dedupe_id`; or dropped by the filter.
#[derive(Debug)]
pub enum Received {
    Event { event: Box<Event>, dedupe_id: String },
    Filtered,
}

/// Why a request was refused (nothing is published).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("this webhook accepts {}", .0.join(", "))]
    Method(Vec<String>),
    #[error("this webhook has no auth and evoke listens beyond loopback; give the trigger an auth scheme")]
    AuthRequired,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Event(#[from] crate::EventError),
}

/// The state key with a webhook trigger's last event.
pub fn last_event_key(trigger: &str) -> String {
    format!("hook.{trigger}")
}

/// Takes one request for webhook trigger `trigger`: checks its method and
/// its authentication (against the secrets `secret` looks up), builds its
/// event, applies `filter`, and derives the dedupe id from the sender's
/// delivery id when there is one. `loopback` says whether evoke listens on
/// loopback only (no auth is allowed only then).
pub fn receive(
    trigger: &str,
    config: &crate::trigger::WebhookConfig,
    filter: Option<&crate::filter::Filter>,
    req: &Request<'_>,
    secret: impl Fn(&str) -> Option<String>,
    loopback: bool,
) -> Result<Received, Refusal> {
    let fallback_id = req.fallback_id.clone();
    // A GET carries its data in the query string, which body signatures do
    // not cover: signed schemes take only requests with a body (triggers
    // saved before that rule are held to it here).
    let allowed = |m: &str| !(m == "GET" && config.auth.scheme.signs_body());
    if !config.methods.iter().any(|m| m == req.method && allowed(m)) {
        let methods = config.methods.iter().filter(|m| allowed(m)).cloned().collect();
        return Err(Refusal::Method(methods));
    }
    authorize(&config.auth, req, secret, loopback)?;
    let header = |name: &str| req.header(name);

    let pairs = req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let mut event = match Event::from_http(pairs, req.body.clone())? {
        Some(e) => e,
        None if req.method == "GET" => wrap(
            trigger,
            config.auth.scheme,
            &header,
            Some("application/x-www-form-urlencoded".into()),
            Bytes::from(req.query.unwrap_or_default().to_string()),
            fallback_id,
        ),
        None => wrap(
            trigger,
            config.auth.scheme,
            &header,
            header("content-type"),
            req.body.clone(),
            fallback_id,
        ),
    };
    event.extensions.insert("evoketrigger".into(), trigger.to_string());
    if filter.is_some_and(|f| !f.matches(&event)) {
        return Ok(Received::Filtered);
    }
    // The same delivery (a sender's retry) is the same invocation.
    let dedupe_id = format!("hook.{trigger}.{}.{}", event.source, event.id);
    Ok(Received::Event {
        event: Box::new(event),
        dedupe_id,
    })
}

/// Builds the event for a webhook request that is not itself a CloudEvent.
/// GitHub and Stripe requests follow their vendors' ids and types, so
/// redeliveries keep their id (and are deduplicated).
pub fn wrap(
    trigger: &str,
    scheme: Scheme,
    header: &dyn Fn(&str) -> Option<String>,
    content_type: Option<String>,
    body: Bytes,
    fallback_id: String,
) -> Event {
    let delivery = header("x-github-delivery")
        .or_else(|| header("x-delivery-id"))
        .or_else(|| header("idempotency-key"));
    let mut ty = format!("evoke.webhook.{trigger}");
    let mut id = delivery.unwrap_or(fallback_id);
    let mut source = format!("/evoke/hooks/{trigger}");
    let mut subject = None;
    match scheme {
        Scheme::Github => {
            if let Some(kind) = header("x-github-event") {
                ty = format!("com.github.{kind}");
            }
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                if let Some(url) = v["repository"]["html_url"].as_str() {
                    source = url.to_string();
                }
                subject = v["ref"].as_str().map(str::to_string);
            }
        }
        Scheme::Stripe => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                if let Some(kind) = v["type"].as_str() {
                    ty = format!("com.stripe.{kind}");
                }
                if let Some(evt) = v["id"].as_str() {
                    id = evt.to_string();
                }
                source = "https://api.stripe.com".into();
            }
        }
        _ => {}
    }
    let mut event = Event::new(id, source, ty).with_data(content_type, body);
    event.subject = subject;
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_lowercase(), v.to_string())).collect();
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name.to_lowercase())
                .map(|(_, v)| v.clone())
        }
    }

    fn github() -> AuthConfig {
        AuthConfig {
            scheme: Scheme::Github,
            secret_env: SecretEnv::One("GH".into()),
            ..Default::default()
        }
    }

    #[test]
    fn githubs_documented_example_verifies() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let secret = b"It's a Secret to Everybody".to_vec();
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = headers(&[("X-Hub-Signature-256", sig)]);
        assert_eq!(
            github().verify(&h, b"Hello, World!", std::slice::from_ref(&secret), 0),
            Ok(())
        );
        assert_eq!(
            github().verify(&h, b"Hello, World?", std::slice::from_ref(&secret), 0),
            Err(AuthError::Mismatch)
        );
        // Rotation: an old secret listed first still lets the new one match.
        assert_eq!(
            github().verify(&h, b"Hello, World!", &[b"old".to_vec(), secret], 0),
            Ok(())
        );
        let none = headers(&[]);
        assert_eq!(
            github().verify(&none, b"x", &[b"s".to_vec()], 0),
            Err(AuthError::Missing("X-Hub-Signature-256".into()))
        );
    }

    fn stripe_sig(secret: &[u8], t: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn stripe_scheme_checks_signature_and_timestamp() {
        let cfg = AuthConfig {
            scheme: Scheme::Stripe,
            secret_env: SecretEnv::One("S".into()),
            ..Default::default()
        };
        let secret = b"whsec_test".to_vec();
        let body = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
        let now = 1_700_000_000;
        let h = headers(&[("Stripe-Signature", &stripe_sig(&secret, now, body))]);
        assert_eq!(cfg.verify(&h, body, std::slice::from_ref(&secret), now + 10), Ok(()));
        // Replayed an hour later: refused even though the MAC is right.
        assert!(matches!(
            cfg.verify(&h, body, std::slice::from_ref(&secret), now + 3600),
            Err(AuthError::Stale { .. })
        ));
        // Timestamp tampered: the MAC no longer matches.
        let forged = stripe_sig(&secret, now, body).replace(&format!("t={now}"), &format!("t={}", now + 3600));
        let h = headers(&[("Stripe-Signature", &forged)]);
        assert_eq!(cfg.verify(&h, body, &[secret], now + 3600), Err(AuthError::Mismatch));
    }

    #[test]
    fn generic_hmac_with_base64_sha1_and_prefix() {
        let cfg = AuthConfig {
            scheme: Scheme::Hmac,
            secret_env: SecretEnv::One("K".into()),
            header: Some("X-Sig".into()),
            algorithm: Some(Algorithm::Sha1),
            encoding: Some(Encoding::Base64),
            prefix: Some("sha1=".into()),
            ..Default::default()
        };
        let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(b"k").unwrap();
        mac.update(b"body");
        use base64::Engine as _;
        let sig = format!(
            "sha1={}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            cfg.verify(&headers(&[("x-sig", &sig)]), b"body", &[b"k".to_vec()], 0),
            Ok(())
        );
        let bad = headers(&[("x-sig", "md5=abc")]);
        assert!(matches!(
            cfg.verify(&bad, b"body", &[b"k".to_vec()], 0),
            Err(AuthError::Malformed { .. })
        ));
    }

    #[test]
    fn bearer_and_missing_secrets() {
        let cfg = AuthConfig {
            scheme: Scheme::Bearer,
            secret_env: SecretEnv::One("T".into()),
            ..Default::default()
        };
        let ok = headers(&[("Authorization", "Bearer tok")]);
        assert_eq!(cfg.verify(&ok, b"", &[b"tok".to_vec()], 0), Ok(()));
        assert_eq!(cfg.verify(&ok, b"", &[b"other".to_vec()], 0), Err(AuthError::Mismatch));
        assert_eq!(cfg.verify(&ok, b"", &[], 0), Err(AuthError::NoSecret("T".into())));
    }

    #[test]
    fn empty_secrets_never_sign() {
        let env = SecretEnv::Many(vec!["A".into(), "B".into(), "C".into()]);
        let lookup = |n: &str| match n {
            "A" => Some("s1, ,".to_string()),
            "B" => Some(String::new()),
            _ => None,
        };
        assert_eq!(env.resolve(lookup), vec![b"s1".to_vec()]);
        assert!(SecretEnv::One("X".into()).resolve(|_| Some(",,".into())).is_empty());
        // An HMAC made with the empty key is refused even if an empty key is
        // passed in: the request is treated as having no secret at all.
        let cfg = github();
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"").unwrap();
        mac.update(b"body");
        let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let h = headers(&[("X-Hub-Signature-256", &sig)]);
        assert_eq!(
            cfg.verify(&h, b"body", &[Vec::new()], 0),
            Err(AuthError::NoSecret("GH".into()))
        );
        assert_eq!(
            cfg.verify(&h, b"body", &[Vec::new(), b"real".to_vec()], 0),
            Err(AuthError::Mismatch)
        );
    }

    #[test]
    fn hostile_timestamps_and_tolerances_do_not_overflow() {
        let cfg = AuthConfig {
            scheme: Scheme::Hmac,
            secret_env: SecretEnv::One("K".into()),
            header: Some("X-Sig".into()),
            timestamp_header: Some("X-Ts".into()),
            ..Default::default()
        };
        for ts in [i64::MIN.to_string(), i64::MAX.to_string(), "-1".into(), "0".into()] {
            let h = headers(&[("x-sig", "00"), ("x-ts", &ts)]);
            for now in [i64::MIN, -1, 0, 1_700_000_000, i64::MAX] {
                assert!(
                    matches!(
                        cfg.verify(&h, b"b", &[b"k".to_vec()], now),
                        Err(AuthError::Stale { .. } | AuthError::Mismatch)
                    ),
                    "ts {ts} now {now}"
                );
            }
        }
        for ts in ["", "-", "99999999999999999999999", "1e9", " "] {
            let h = headers(&[("x-sig", "00"), ("x-ts", ts)]);
            assert!(
                matches!(
                    cfg.verify(&h, b"b", &[b"k".to_vec()], 0),
                    Err(AuthError::Malformed { .. })
                ),
                "{ts:?}"
            );
        }
        // Tolerances are typed durations: what parses is bounded by check().
        for t in ["9223372036854775807h", "18446744073709551615", "-5s", "", "5x", "300"] {
            let table = serde_json::json!({"scheme": "hmac", "secret_env": "K", "header": "X-Sig", "tolerance": t});
            assert!(serde_json::from_value::<AuthConfig>(table).is_err(), "{t} parses");
        }
        for (t, ok) in [("300s", true), ("5m", true), ("2days", false), ("500ms", false)] {
            let table = serde_json::json!({"scheme": "hmac", "secret_env": "K", "header": "X-Sig", "tolerance": t});
            let c: AuthConfig = serde_json::from_value(table).unwrap();
            assert_eq!(c.check().is_empty(), ok, "{t}");
        }
    }

    #[test]
    fn config_problems_are_listed() {
        let cfg = AuthConfig {
            scheme: Scheme::Github,
            prefix: Some("x".into()),
            ..Default::default()
        };
        let fields: Vec<String> = cfg.check().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["secret_env", "prefix"]);
        let cfg = AuthConfig {
            scheme: Scheme::Hmac,
            secret_env: SecretEnv::One("A".into()),
            ..Default::default()
        };
        assert_eq!(cfg.check()[0].0, "header");
    }

    #[test]
    fn github_requests_keep_their_delivery_id_and_type() {
        let h = headers(&[("X-GitHub-Delivery", "d-1"), ("X-GitHub-Event", "push")]);
        let body =
            Bytes::from_static(br#"{"ref":"refs/heads/main","repository":{"html_url":"https://github.com/o/r"}}"#);
        let e = wrap(
            "gh",
            Scheme::Github,
            &h,
            Some("application/json".into()),
            body,
            "fallback".into(),
        );
        assert_eq!((e.id.as_str(), e.ty.as_str()), ("d-1", "com.github.push"));
        assert_eq!(e.source, "https://github.com/o/r");
        assert_eq!(e.subject.as_deref(), Some("refs/heads/main"));
        let plain = wrap("hook", Scheme::None, &headers(&[]), None, Bytes::new(), "f-1".into());
        assert_eq!((plain.id.as_str(), plain.ty.as_str()), ("f-1", "evoke.webhook.hook"));
        crate::contract::assert_valid_event(&e);
        crate::contract::assert_valid_event(&plain);
    }

    fn request<'a>(method: &'a str, headers: &'a [(String, String)], body: &'static [u8]) -> Request<'a> {
        Request {
            method,
            headers,
            query: Some("a=1"),
            body: Bytes::from_static(body),
            now: 1_700_000_000,
            fallback_id: "fresh-1".into(),
        }
    }

    fn config(scheme: Scheme) -> crate::trigger::WebhookConfig {
        let table = match scheme {
            Scheme::None => serde_json::json!({"methods": ["POST", "GET"]}),
            _ => serde_json::json!({"methods": ["POST", "GET"], "auth": {"scheme": "github", "secret_env": "GH"}}),
        };
        serde_json::from_value(table).unwrap()
    }

    /// The webhook source end to end: method and auth checks, events that
    /// are valid CloudEvents, the filter, and dedupe ids that make a
    /// sender's retry one invocation.
    #[test]
    fn requests_become_events_or_refusals() {
        let open = config(Scheme::None);
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        let r = receive("t", &open, None, &request("PUT", &headers, b"{}"), |_| None, true);
        assert!(matches!(r, Err(Refusal::Method(m)) if m == ["POST", "GET"]));
        let r = receive("t", &open, None, &request("POST", &headers, b"{}"), |_| None, false);
        assert!(matches!(r, Err(Refusal::AuthRequired)));
        let Ok(Received::Event { event, dedupe_id }) =
            receive("t", &open, None, &request("GET", &headers, b""), |_| None, true)
        else {
            panic!("a GET passes");
        };
        assert_eq!(&event.data[..], b"a=1", "a GET's query string is its data");
        assert_eq!(event.extensions["evoketrigger"], "t");
        assert_eq!(dedupe_id, "hook.t./evoke/hooks/t.fresh-1");
        crate::contract::assert_valid_event(&event);

        // Signed: GET refused, a good signature passes, the delivery id
        // makes the dedupe id stable across retries.
        let signed = config(Scheme::Github);
        let secret = |_: &str| Some("It's a Secret to Everybody".to_string());
        let headers = vec![
            (
                "X-Hub-Signature-256".to_string(),
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_string(),
            ),
            ("X-GitHub-Delivery".to_string(), "d-42".to_string()),
        ];
        let r = receive("gh", &signed, None, &request("GET", &headers, b""), secret, true);
        assert!(matches!(r, Err(Refusal::Method(m)) if m == ["POST"]));
        let take = |body: &'static [u8]| receive("gh", &signed, None, &request("POST", &headers, body), secret, true);
        assert!(matches!(
            take(b"Hello, World?"),
            Err(Refusal::Auth(AuthError::Mismatch))
        ));
        let (Ok(Received::Event { dedupe_id: a, .. }), Ok(Received::Event { dedupe_id: b, .. })) =
            (take(b"Hello, World!"), take(b"Hello, World!"))
        else {
            panic!("a signed request passes");
        };
        assert_eq!(a, b);
        assert!(a.ends_with(".d-42"), "{a}");

        // The filter drops what it does not match.
        let filter: crate::filter::Filter = serde_json::from_value(serde_json::json!({"types": ["other"]})).unwrap();
        let headers = vec![];
        let r = receive(
            "t",
            &open,
            Some(&filter),
            &request("POST", &headers, b"x"),
            |_| None,
            true,
        );
        assert!(matches!(r, Ok(Received::Filtered)));
    }
}
