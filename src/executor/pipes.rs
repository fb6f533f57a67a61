//! Capped in-memory stdout/stderr for guests.
//!
//! Unlike wasmtime-wasi's `MemoryOutputPipe`, writing past the cap does not
//! fail the guest: bytes beyond it are counted and dropped, so a guest that
//! prints megabytes gets a precise "output too large" error (stdout) or a
//! truncated log (stderr) instead of a confusing I/O failure.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Default)]
struct Inner {
    buf: BytesMut,
    dropped: u64,
}

/// A shared, capped byte sink.
#[derive(Clone)]
pub struct CappedPipe {
    cap: usize,
    inner: Arc<Mutex<Inner>>,
}

impl CappedPipe {
    pub fn new(cap: usize) -> CappedPipe {
        CappedPipe {
            cap,
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a writer panicked mid-copy; the bytes are
        // still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        let room = self.cap.saturating_sub(inner.buf.len());
        let take = room.min(bytes.len());
        inner.buf.extend_from_slice(&bytes[..take]);
        inner.dropped += (bytes.len() - take) as u64;
    }

    /// Takes what was written so far and how many bytes were dropped, and
    /// resets the pipe (warm instances reuse it).
    pub fn take(&self) -> (Bytes, u64) {
        let mut inner = self.lock();
        let dropped = std::mem::take(&mut inner.dropped);
        (inner.buf.split().freeze(), dropped)
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_cap_are_counted_not_kept() {
        let p = CappedPipe::new(4);
        p.push(b"abc");
        p.push(b"defgh");
        let (bytes, dropped) = p.take();
        assert_eq!(&bytes[..], b"abcd");
        assert_eq!(dropped, 4);
        assert_eq!(p.take(), (Bytes::new(), 0));
    }
}
