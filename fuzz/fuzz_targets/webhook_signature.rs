//! Webhook signature headers (GitHub, Stripe, generic HMAC with timestamps):
//! any header value and time either verifies or is refused, never panics,
//! and a request signed with no usable secret never verifies.
#![no_main]

use evoke_connectors::webhook::{AuthConfig, Encoding, Scheme, SecretEnv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let now = i64::from_le_bytes(data[..8].try_into().unwrap());
    let which = data[8];
    let text = String::from_utf8_lossy(&data[9..]);
    let mut parts = text.splitn(4, '\n');
    let (sig, ts, tolerance, body) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let mut cfg = AuthConfig {
        scheme: [Scheme::Github, Scheme::Stripe, Scheme::Hmac, Scheme::Bearer][which as usize % 4],
        secret_env: SecretEnv::One("S".into()),
        ..Default::default()
    };
    if cfg.scheme == Scheme::Hmac {
        cfg.header = Some("x-sig".into());
        cfg.timestamp_header = (which & 4 != 0).then(|| "x-ts".into());
        cfg.encoding = (which & 8 != 0).then_some(Encoding::Base64);
        cfg.prefix = (which & 16 != 0).then(|| "sha256=".into());
        cfg.tolerance = (which & 32 != 0)
            .then(|| evoke_connectors::units::parse_duration(tolerance).ok())
            .flatten();
    }
    let _ = cfg.check();
    let header = |name: &str| match name.to_ascii_lowercase().as_str() {
        "x-hub-signature-256" | "stripe-signature" | "x-sig" | "authorization" => Some(sig.to_string()),
        "x-ts" => Some(ts.to_string()),
        _ => None,
    };
    let _ = cfg.verify(&header, body.as_bytes(), &[b"secret".to_vec()], now);
    let secrets = SecretEnv::One("S".into()).resolve(|_| Some(ts.to_string()));
    assert!(secrets.iter().all(|s| !s.is_empty()));
    assert!(cfg.verify(&header, body.as_bytes(), &[Vec::new()], now).is_err());
});
