//! The UDP, TCP and TLS listeners of a syslog trigger.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::{Endpoint, SyslogConfig, TCP_IN_FLIGHT, TlsFiles, message};
use crate::queue::{Consumer, Incoming, Stats, no_ack};

/// Messages from every listener of one trigger.
pub struct SyslogConsumer {
    rx: mpsc::Receiver<Incoming>,
    /// The listeners; dropped (aborted) with the consumer.
    _tasks: JoinSet<()>,
}

impl Consumer for SyslogConsumer {
    async fn next(&mut self) -> Result<Incoming, String> {
        self.rx.recv().await.ok_or_else(|| "every listener stopped".to_string())
    }
}

/// Binds every `listen` address and starts receiving.
pub async fn consumer(config: &SyslogConfig, stats: Arc<Stats>) -> Result<SyslogConsumer, String> {
    let (tx, rx) = mpsc::channel(crate::queue::WINDOW * 4);
    let mut tasks = JoinSet::new();
    let max = config.max_message();
    for a in config.listen.addresses() {
        match Endpoint::parse(a)? {
            Endpoint::Udp(addr) => {
                let socket = UdpSocket::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on udp://{addr}: {e}"))?;
                tasks.spawn(udp(socket, tx.clone(), stats.clone(), max));
            }
            Endpoint::Tcp(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on tcp://{addr}: {e}"))?;
                tasks.spawn(tcp(listener, None, tx.clone(), stats.clone(), max));
            }
            Endpoint::Tls(addr) => {
                let files = config
                    .tls
                    .as_ref()
                    .ok_or("a tls:// listener needs `tls` (cert_file, key_file)")?;
                let acceptor = acceptor(files)?;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on tls://{addr}: {e}"))?;
                tasks.spawn(tcp(listener, Some(acceptor), tx.clone(), stats.clone(), max));
            }
        }
    }
    Ok(SyslogConsumer { rx, _tasks: tasks })
}

async fn udp(socket: UdpSocket, tx: mpsc::Sender<Incoming>, stats: Arc<Stats>, max: usize) {
    let mut buf = vec![0u8; 65536];
    let mut kernel_drops = KernelDrops::of(&socket);
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "syslog udp receive failed");
                continue;
            }
        };
        let truncated = n > max;
        if truncated {
            stats.truncated.fetch_add(1, Ordering::Relaxed);
        }
        let message = message(&buf[..n.min(max)], peer, "udp", truncated);
        // Never wait on a datagram: the kernel would drop the next ones instead.
        match tx.try_send(Incoming { message, ack: no_ack() }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
        kernel_drops.update(&stats);
    }
}

/// A TLS acceptor from PEM files (read when the trigger starts: a bad
/// file is the trigger's error, shown in `evoke triggers`).
fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(|it| it.collect())
        .map_err(|e| format!("reading certificates from {}: {e}", files.cert_file))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", files.cert_file));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| format!("reading the private key from {}: {e}", files.key_file))?;
    // The provider named, not the process default: other crates in the
    // build may bring another one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert_file, files.key_file))?;
    // Syslog senders only write: a TLS 1.3 session ticket they never read
    // makes their close a reset, which can discard what they sent last.
    config.send_tls13_tickets = 0;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn tcp(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<Incoming>,
    stats: Arc<Stats>,
    max: usize,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (tx, stats) = (tx.clone(), stats.clone());
                    match tls.clone() {
                        None => {
                            connections.spawn(tcp_connection(stream, peer, "tcp", tx, stats, max));
                        }
                        Some(acceptor) => {
                            connections.spawn(async move {
                                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                    Ok(Ok(s)) => tcp_connection(s, peer, "tls", tx, stats, max).await,
                                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "syslog TLS handshake failed"),
                                    Err(_) => tracing::info!(%peer, "syslog TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "syslog tcp accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn tcp_connection<S: AsyncRead + Unpin>(
    stream: S,
    peer: SocketAddr,
    transport: &'static str,
    tx: mpsc::Sender<Incoming>,
    stats: Arc<Stats>,
    max: usize,
) {
    let in_flight = Arc::new(Semaphore::new(TCP_IN_FLIGHT));
    let mut frames = Frames::new(BufReader::new(stream), max);
    loop {
        let frame = match frames.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "syslog tcp connection ends");
                return;
            }
        };
        if frame.truncated {
            stats.truncated.fetch_add(1, Ordering::Relaxed);
        }
        // Reading stops while TCP_IN_FLIGHT messages wait to be stored.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let message = message(&frame.bytes, peer, transport, frame.truncated);
        let ack = Box::pin(async move {
            drop(permit);
            Ok(())
        });
        if tx.send(Incoming { message, ack }).await.is_err() {
            return;
        }
    }
}

/// One frame off a TCP stream.
#[derive(Debug, PartialEq)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

/// RFC 6587 framing, told apart per frame: a frame starting with a digit is
/// octet-counted (`LEN SP MSG`), any other ends at a newline.
pub struct Frames<R> {
    reader: R,
    max: usize,
}

impl<R: tokio::io::AsyncBufRead + Unpin> Frames<R> {
    pub fn new(reader: R, max: usize) -> Frames<R> {
        Frames { reader, max }
    }

    /// The next frame (empty lines skipped); `None` at a clean end of stream.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            let first = match self.reader.fill_buf().await?.first() {
                None => return Ok(None),
                Some(b) => *b,
            };
            let frame = if first.is_ascii_digit() {
                Some(self.counted().await?)
            } else {
                self.line().await?
            };
            match frame {
                Some(f) if f.bytes.is_empty() && !f.truncated => continue,
                other => return Ok(other),
            }
        }
    }

    async fn counted(&mut self) -> std::io::Result<Frame> {
        let mut len = 0usize;
        let mut digits = 0;
        loop {
            let b = self.reader.read_u8().await?;
            match b {
                b'0'..=b'9' if digits < 9 => {
                    len = len * 10 + usize::from(b - b'0');
                    digits += 1;
                }
                b' ' if digits > 0 => break,
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "bad octet count (RFC 6587: digits, a space, then the message)",
                    ));
                }
            }
        }
        let keep = len.min(self.max);
        let mut bytes = vec![0u8; keep];
        self.reader.read_exact(&mut bytes).await?;
        let skip = (len - keep) as u64;
        if skip > 0 {
            let copied = tokio::io::copy(&mut (&mut self.reader).take(skip), &mut tokio::io::sink()).await?;
            if copied < skip {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(Frame {
            bytes,
            truncated: len > keep,
        })
    }

    async fn line(&mut self) -> std::io::Result<Option<Frame>> {
        let mut bytes = Vec::new();
        let mut truncated = false;
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                // The last line without its newline still counts.
                return Ok((!bytes.is_empty() || truncated).then_some(Frame { bytes, truncated }));
            }
            let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], i + 1),
                None => (buf, buf.len()),
            };
            let room = self.max - bytes.len();
            if chunk.len() > room {
                truncated = true;
            }
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let ended = done > chunk.len();
            self.reader.consume(done);
            if ended {
                return Ok(Some(Frame { bytes, truncated }));
            }
        }
    }
}

/// The kernel's drop count of a UDP socket (`/proc/net/udp`, Linux), added
/// to the trigger's `dropped` as it grows.
struct KernelDrops {
    inode: Option<u64>,
    seen: u64,
    checked: std::time::Instant,
}

impl KernelDrops {
    fn of(socket: &UdpSocket) -> KernelDrops {
        KernelDrops {
            inode: socket_inode(socket),
            seen: 0,
            checked: std::time::Instant::now(),
        }
    }

    fn update(&mut self, stats: &Stats) {
        let Some(inode) = self.inode else { return };
        if self.checked.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        self.checked = std::time::Instant::now();
        if let Some(drops) = udp_drops(inode)
            && drops > self.seen
        {
            stats.dropped.fetch_add(drops - self.seen, Ordering::Relaxed);
            self.seen = drops;
        }
    }
}

#[cfg(target_os = "linux")]
fn socket_inode(socket: &UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
fn socket_inode(_: &UdpSocket) -> Option<u64> {
    None
}

/// The `drops` column of the socket with `inode` in /proc/net/udp{,6}.
fn udp_drops(inode: u64) -> Option<u64> {
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() >= 13 && cols[9].parse() == Ok(inode) {
                return cols[12].parse().ok();
            }
        }
    }
    None
}
