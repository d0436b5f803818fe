//! The WASI 0.2 subset a plugin may import (Python and JavaScript plugins
//! do: their interpreters are built on WASI), reaching nothing outside:
//!
//! - stdout and stderr become the plugin's log lines (`info` and `warn`),
//!   counted with its `log` lines against one cap
//!   ([`super::call_log::CallLog`]): what is over the cap is dropped, and the
//!   guest never sees an error for it;
//! - stdin is empty; no environment variables, no arguments, no working
//!   directory;
//! - the wall clock and random numbers are the host's; the monotonic
//!   clock is wasmtime-wasi's, counting from when the instance's context
//!   was made (a wait on it counts against the call's deadline like
//!   anything else the call does);
//! - no filesystem: no directory is preopened;
//! - no network: TCP, UDP and name lookups are refused;
//! - `exit` ends the call as a failure.
//!
//! The context is made on the guest's first WASI call
//! ([`super::state::CallState`]'s `WasiView`), so a plugin that imports no
//! WASI (every Rust plugin) pays nothing for it. Which plugins may import
//! it at all is decided at load ([`super::Runtime::load`]).

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
use wasmux_bindings::host::Level;

use super::call_log::{CallLog, MAX_LOG_LINE};

/// What a guest's WASI calls work on: the context and its resource table.
pub(super) struct GuestWasi {
    pub ctx: WasiCtx,
    pub table: ResourceTable,
}

impl GuestWasi {
    /// A context granting nothing outside, whose stdout and stderr write to `log`.
    pub fn new(log: Arc<CallLog>) -> Self {
        let lines = Arc::new(Mutex::new(Lines { log, partial: [Vec::new(), Vec::new()] }));
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(Output { lines: Arc::clone(&lines), stream: Stream::Stdout })
            .stderr(Output { lines, stream: Stream::Stderr })
            // The builder's defaults already grant none of these (no
            // preopens, no environment, no arguments, stdin empty, every
            // socket address refused); say so for the network too.
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

impl Stream {
    fn level(self) -> Level {
        match self {
            Self::Stdout => Level::Info,
            Self::Stderr => Level::Warn,
        }
    }
}

/// One call's stdout and stderr, cut into lines that go to its log as
/// they are completed; what is left without a newline goes when the store
/// (and so the context) is dropped.
struct Lines {
    log: Arc<CallLog>,
    /// The unfinished line of stdout and of stderr, kept up to
    /// [`MAX_LOG_LINE`] bytes plus one (so that the cut shows).
    partial: [Vec<u8>; 2],
}

impl Lines {
    fn write(&mut self, stream: Stream, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.keep(stream, &bytes[..newline]);
            self.emit(stream);
            bytes = &bytes[newline + 1..];
        }
        self.keep(stream, bytes);
    }

    fn keep(&mut self, stream: Stream, bytes: &[u8]) {
        let partial = &mut self.partial[stream as usize];
        let room = (MAX_LOG_LINE + 1).saturating_sub(partial.len());
        partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self, stream: Stream) {
        let line = std::mem::take(&mut self.partial[stream as usize]);
        self.log.line(stream.level(), String::from_utf8_lossy(&line).into_owned());
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if !self.partial[stream as usize].is_empty() {
                self.emit(stream);
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

/// How much a guest may write at once. Any amount is accepted (what is
/// over the caps is dropped), so a chatty plugin never fails for it.
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
    use super::super::call_log::MAX_LOG_LINES_PER_CALL;
    use super::*;

    fn log() -> Arc<CallLog> {
        Arc::new(CallLog::new("p".into(), "v".into(), "t".into()))
    }

    #[test]
    fn lines_are_split_cut_and_counted_with_the_log_imports() {
        let log = log();
        let mut lines = Lines { log: Arc::clone(&log), partial: [Vec::new(), Vec::new()] };
        lines.write(Stream::Stdout, b"one\ntw");
        lines.write(Stream::Stderr, b"err\n");
        lines.write(Stream::Stdout, b"o\n");
        assert_eq!(log.written(), 3);
        assert!(lines.partial.iter().all(Vec::is_empty));
        lines.write(Stream::Stdout, &vec![b'x'; 10 * MAX_LOG_LINE]);
        assert_eq!(lines.partial[0].len(), MAX_LOG_LINE + 1);
        // The `log` import counts against the same cap.
        log.line(Level::Info, "from log".into());
        assert_eq!(log.written(), 4);
        // The first newline ends the long (cut) line, the 99 others a line each.
        for _ in 0..100 {
            lines.write(Stream::Stdout, b"again\n");
        }
        assert_eq!(log.written(), 104);
        assert!(log.written() > MAX_LOG_LINES_PER_CALL);
        // The unfinished line goes when the streams are dropped.
        lines.write(Stream::Stderr, b"no newline");
        drop(lines);
        assert_eq!(log.written(), 105);
    }
}
