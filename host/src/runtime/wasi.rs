//! The WASI 0.2 subset a plugin may import (Python and JavaScript plugins
//! do: their interpreters are built on WASI), reaching nothing outside:
//!
//! - stdout and stderr become the plugin's log lines (`info` and `warn`),
//!   capped as `log` is: [`MAX_LINES`] lines of at most [`MAX_LINE`] bytes
//!   per request; the rest is dropped, and the guest never sees an error;
//! - stdin is closed; no environment variables, no arguments;
//! - clocks (wall and monotonic) and random numbers are the host's;
//! - no filesystem: no directory is preopened;
//! - no network: TCP, UDP and name lookups are refused.
//!
//! The context is made on the guest's first WASI call, so a plugin that
//! imports no WASI (every Rust plugin) pays nothing for it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::{MAX_LOG_LINE, MAX_LOG_LINES_PER_CALL, Version, cut};

/// Lines of stdout and stderr together a plugin may write per request.
pub const MAX_LINES: u32 = MAX_LOG_LINES_PER_CALL;
/// Longest line kept; the rest of it is cut.
pub const MAX_LINE: usize = MAX_LOG_LINE;

/// What a guest's WASI calls work on: the context and its resource table.
pub(super) struct GuestWasi {
    pub ctx: WasiCtx,
    pub table: ResourceTable,
}

impl GuestWasi {
    pub fn new(plugin: &str, version: Version, tenant: &str) -> Self {
        let lines = Arc::new(Mutex::new(Lines {
            plugin: plugin.into(),
            version,
            tenant: tenant.into(),
            written: 0,
            partial: [Vec::new(), Vec::new()],
        }));
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(Output { lines: Arc::clone(&lines), stream: Stream::Stdout })
            .stderr(Output { lines, stream: Stream::Stderr })
            // The builder's defaults already deny every address; say so.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        Self { ctx: builder.build(), table: ResourceTable::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// The lines of one request's stdout and stderr, sent to the log as they
/// are completed; what is left without a newline is sent when the store
/// (and so the context) is dropped.
struct Lines {
    plugin: Box<str>,
    version: Version,
    tenant: Box<str>,
    written: u32,
    /// The unfinished line of stdout and of stderr.
    partial: [Vec<u8>; 2],
}

impl Lines {
    fn write(&mut self, stream: Stream, mut bytes: &[u8]) {
        let index = stream as usize;
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.keep(index, &bytes[..newline]);
            let line = std::mem::take(&mut self.partial[index]);
            self.emit(stream, &line);
            bytes = &bytes[newline + 1..];
        }
        self.keep(index, bytes);
    }

    /// Adds to the unfinished line what fits under [`MAX_LINE`] (plus one
    /// byte, so that the cut is seen).
    fn keep(&mut self, index: usize, bytes: &[u8]) {
        let partial = &mut self.partial[index];
        let room = (MAX_LINE + 1).saturating_sub(partial.len());
        partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self, stream: Stream, line: &[u8]) {
        self.written += 1;
        if self.written > MAX_LINES {
            return;
        }
        let mut message = String::from_utf8_lossy(line).into_owned();
        cut(&mut message, MAX_LINE);
        if self.written == MAX_LINES {
            message.push_str(" (log line limit reached; further lines of this request are dropped)");
        }
        let (plugin, version, tenant) = (&*self.plugin, self.version, &*self.tenant);
        match stream {
            Stream::Stdout => tracing::info!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
            Stream::Stderr => tracing::warn!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.partial[stream as usize]);
            if !line.is_empty() {
                self.emit(stream, &line);
            }
        }
    }
}

/// A guest's stdout or stderr.
#[derive(Clone)]
struct Output {
    lines: Arc<Mutex<Lines>>,
    stream: Stream,
}

impl Output {
    fn write_bytes(&self, bytes: &[u8]) {
        // A poisoned lock only means another write panicked: keep logging.
        let mut lines = self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.write(self.stream, bytes);
    }
}

impl IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Output {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// How much a guest may write at once: any amount is accepted (and what is
/// over the caps dropped), so a chatty plugin never fails for it.
const WRITE_BUDGET: usize = 64 << 10;

#[wasmtime_wasi::async_trait]
impl OutputStream for Output {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Output {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Output {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Lines {
        Lines { plugin: "p".into(), version: Version::of(b"p"), tenant: "t".into(), written: 0, partial: [Vec::new(), Vec::new()] }
    }

    #[test]
    fn lines_are_split_counted_and_cut() {
        let mut l = lines();
        l.write(Stream::Stdout, b"one\ntw");
        l.write(Stream::Stderr, b"err\n");
        l.write(Stream::Stdout, b"o\n");
        assert_eq!(l.written, 3);
        assert!(l.partial.iter().all(Vec::is_empty));
        l.write(Stream::Stdout, &vec![b'x'; 10 * MAX_LINE]);
        assert_eq!(l.partial[0].len(), MAX_LINE + 1);
        for _ in 0..100 {
            l.write(Stream::Stdout, b"again\n");
        }
        assert_eq!(l.written, 104);
    }
}
