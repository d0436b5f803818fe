//! One call's log lines, whichever way the plugin writes them (the `log`
//! import, WASI's stdout and stderr), counted against one cap and cut to a
//! length.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use wasmux_bindings::host::Level;

/// Longest log line a plugin may write; the rest is cut.
pub(super) const MAX_LOG_LINE: usize = 1024;

/// Log lines a plugin may write per request, through `log` and WASI's
/// stdout and stderr together; the rest are dropped.
pub(super) const MAX_LOG_LINES_PER_CALL: u32 = 64;

/// One call's log lines, whichever way the plugin writes them (the `log`
/// import, WASI's stdout and stderr), counted against one cap.
pub(super) struct CallLog {
    pub plugin: Arc<str>,
    pub version: Arc<str>,
    pub tenant: Arc<str>,
    /// Lines written so far (shared with the WASI streams, which live
    /// outside the store's data).
    lines: AtomicU32,
}

impl CallLog {
    pub fn new(plugin: Arc<str>, version: Arc<str>, tenant: Arc<str>) -> Self {
        Self { plugin, version, tenant, lines: AtomicU32::new(0) }
    }

    /// A new call on the instance: its lines are counted from 0.
    pub fn begin(&self) {
        self.lines.store(0, Ordering::Relaxed);
    }

    /// Logs `message` at `level` as the plugin's, cut to [`MAX_LOG_LINE`];
    /// past [`MAX_LOG_LINES_PER_CALL`] lines, drops it (the last one kept
    /// says so).
    pub fn line(&self, level: Level, mut message: String) {
        let n = self.lines.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n > MAX_LOG_LINES_PER_CALL {
            return;
        }
        cut(&mut message, MAX_LOG_LINE);
        if n == MAX_LOG_LINES_PER_CALL {
            message.push_str(" (log line limit reached; further lines of this request are dropped)");
        }
        let (plugin, version, tenant) = (&*self.plugin, &*self.version, &*self.tenant);
        match level {
            Level::Trace => tracing::trace!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
            Level::Debug => tracing::debug!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
            Level::Info => tracing::info!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
            Level::Warn => tracing::warn!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
            Level::Error => tracing::error!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
        }
    }

    /// Lines written so far, kept or not.
    #[cfg(test)]
    pub fn written(&self) -> u32 {
        self.lines.load(Ordering::Relaxed)
    }
}

/// Cuts `text` to at most `limit` bytes (on a character boundary), marking the cut.
pub(super) fn cut(text: &mut String, limit: usize) {
    if text.len() > limit {
        let at = (0..=limit).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(at);
        text.push_str("… (cut)");
    }
}
