//! `kind = "syslog"`: receives syslog over UDP and TCP, parses each message
//! (RFC 5424 or RFC 3164, see [`parse`]) and hands it to the shared queue
//! runtime ([`crate::queue::Pipeline`]), which batches, stores and filters
//! as for every queue source.
//!
//! - UDP is lossy by nature: a datagram the kernel dropped (its receive
//!   buffer full) or that arrives while evoke cannot keep up is lost; both
//!   are counted (`dropped`), the kernel's count read from `/proc/net/udp`.
//! - TCP frames are octet-counted (RFC 6587 `LEN SP MSG`) or
//!   newline-terminated, told apart per frame. Each connection has at most
//!   [`TCP_IN_FLIGHT`] messages not yet stored; past that evoke stops
//!   reading, and the sender's TCP window closes (back-pressure, no
//!   unbounded buffer). Plain syslog has no acknowledgement of its own: a
//!   frame read but not stored when the node dies is lost with it.
//! - A message longer than `max_message` is cut there and marked
//!   `truncated` (counted), never dropped silently.

#[cfg(feature = "syslog")]
mod listen;
pub mod parse;
#[cfg(feature = "syslog")]
pub use listen::{Frame, Frames, SyslogConsumer, consumer};

use std::net::SocketAddr;

use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::queue::{BatchConfig, Message};
use crate::trigger::{Nodes, Problem};
use crate::units::ByteSize;

/// Messages of one TCP connection read but not yet stored.
pub const TCP_IN_FLIGHT: usize = 1024;
/// The longest message taken whole, unless the trigger says otherwise.
pub const DEFAULT_MAX_MESSAGE: ByteSize = ByteSize(64 * 1024);

/// `kind = "syslog"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// Where to listen: `udp://0.0.0.0:5514`, `tcp://0.0.0.0:5514`,
    /// `tls://0.0.0.0:6514` (RFC 5425; one, or a list).
    pub listen: Listen,
    /// The certificate and key of `tls://` listeners (PEM files on each node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Which nodes listen: `"all"` (default) or node names (`evoke up --node-name`).
    #[serde(default)]
    pub nodes: Nodes,
    /// Batching (default: 100 records, 256Ki, 1s).
    #[serde(default = "default_batch")]
    pub batch: Option<BatchConfig>,
    /// Longest message kept whole (default 64Ki); longer ones are cut and marked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message: Option<ByteSize>,
}

fn default_batch() -> Option<BatchConfig> {
    Some(BatchConfig::default())
}

/// One address or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Listen {
    One(String),
    Many(Vec<String>),
}

impl Listen {
    pub fn addresses(&self) -> Vec<&str> {
        match self {
            Listen::One(a) => vec![a.as_str()],
            Listen::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// PEM files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert_file: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

/// A listen address, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    /// TCP with TLS (RFC 5425; octet counting, as that RFC says, or lines).
    Tls(SocketAddr),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let (scheme, addr) = s
            .split_once("://")
            .ok_or_else(|| format!("`{s}` needs a scheme: udp://, tcp:// or tls:// before IP:PORT"))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address and port (like 0.0.0.0:5514)"))?;
        match scheme {
            "udp" => Ok(Endpoint::Udp(addr)),
            "tcp" => Ok(Endpoint::Tcp(addr)),
            "tls" => Ok(Endpoint::Tls(addr)),
            other => Err(format!("`{other}://` is not supported: use udp://, tcp:// or tls://")),
        }
    }
}

impl SyslogConfig {
    pub fn check(&self) -> Vec<Problem> {
        let mut p = crate::queue::check_common(self.batch.as_ref(), None);
        let addresses = self.listen.addresses();
        if addresses.is_empty() {
            p.push(("listen".into(), "needs at least one address".into()));
        }
        let mut tls = false;
        for a in addresses {
            match Endpoint::parse(a) {
                Ok(Endpoint::Tls(_)) => tls = true,
                Ok(_) => {}
                Err(e) => p.push(("listen".into(), e)),
            }
        }
        match &self.tls {
            None if tls => p.push((
                "tls".into(),
                "a tls:// listener needs tls = { cert_file = \"...\", key_file = \"...\" }".into(),
            )),
            Some(_) if !tls => p.push(("tls".into(), "is set, but no listen address is tls://".into())),
            Some(f) if f.cert_file.is_empty() || f.key_file.is_empty() => {
                p.push(("tls".into(), "needs both cert_file and key_file".into()))
            }
            _ => {}
        }
        p.extend(self.nodes.check());
        if let Some(m) = self.max_message
            && (m.0 < 480 || m.0 > 256 * 1024)
        {
            p.push(("max_message".into(), "is out of range 480..256Ki".into()));
        }
        p
    }

    pub fn max_message(&self) -> usize {
        self.max_message.unwrap_or(DEFAULT_MAX_MESSAGE).0 as usize
    }
}

/// One received message as the pipeline takes it: the parsed fields as
/// JSON data, with where it came from.
pub fn message(raw: &[u8], peer: SocketAddr, transport: &'static str, truncated: bool) -> Message {
    let received = Utc::now();
    let record = parse::parse(raw, received);
    let mut origin = vec![
        ("evokesyslogpeer", peer.to_string()),
        ("evokesyslogtransport", transport.to_string()),
        ("evokesyslogfacility", record.facility.to_string()),
        ("evokesyslogseverity", record.severity.to_string()),
    ];
    if let Some(a) = &record.app_name {
        origin.push(("evokesyslogapp", a.clone()));
    }
    if let Some(h) = &record.hostname {
        origin.push(("evokesysloghost", h.clone()));
    }
    let mut body = serde_json::to_value(&record).unwrap_or_default();
    body["raw"] = String::from_utf8_lossy(raw).into_owned().into();
    body["peer"] = peer.to_string().into();
    body["received_at"] = received.to_rfc3339().into();
    if truncated {
        body["truncated"] = true.into();
    }
    Message {
        body: Bytes::from(body.to_string()),
        content_type: Some("application/json".into()),
        key: record.hostname.clone().or_else(|| Some(peer.ip().to_string())),
        subject: record.app_name.clone(),
        time: record.timestamp.map(|t| t.with_timezone(&Utc)),
        origin,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
