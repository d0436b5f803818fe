//! What a `Store` holds for one call, and the host's side of the imports a
//! plugin may call: `log`, `config` and `outcome`.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;

use super::CallContext;
use super::error::cut;
use super::outcomes::Outcomes;
use wasmux_bindings::host::{self, Level};
use wasmux_bindings::types;

/// Longest log line a plugin may write; the rest is cut.
const MAX_LOG_LINE: usize = 1024;

/// Log lines a plugin may write per request; the rest are dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 64;

/// The store's data: the instance's, and the current call's.
pub(super) struct CallState {
    /// The plugin's name and version, for its log lines.
    pub plugin: Arc<str>,
    pub version: Arc<str>,
    /// The current call's caller, plugin values and limits.
    pub context: CallContext,
    pub deadline: Instant,
    /// Linear memory of all the instance's memories together. It belongs to
    /// the instance, not to one call: it stays when a reused instance
    /// begins its next call.
    memory_in_use: usize,
    /// Set when the limiter refused a memory growth: the bytes asked for.
    pub memory_refused: Option<usize>,
    log_lines: u32,
    /// What the plugin counted with `outcome`, handed back with its answer.
    pub outcomes: Outcomes,
    /// Set once a refused outcome was logged, so a plugin calling in a loop
    /// writes one line per request.
    outcome_refused: bool,
}

impl CallState {
    pub fn new(plugin: Arc<str>, version: Arc<str>) -> Self {
        let context = CallContext::default();
        Self {
            plugin,
            version,
            context,
            deadline: Instant::now(),
            memory_in_use: 0,
            memory_refused: None,
            log_lines: 0,
            outcomes: Outcomes::default(),
            outcome_refused: false,
        }
    }

    /// Starts a call under `context` that must end by `deadline`, with a
    /// clean slate for what the previous call on this instance did.
    pub fn begin(&mut self, context: &CallContext, deadline: Instant) {
        self.context = context.clone();
        self.deadline = deadline;
        self.memory_refused = None;
        self.log_lines = 0;
        self.outcomes = Outcomes::default();
        self.outcome_refused = false;
    }
}

impl ResourceLimiter for CallState {
    /// Called for each memory's initial size as well as for each growth; the
    /// cap is for the instance, however many memories it has.
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_in_use.saturating_sub(current).saturating_add(desired);
        if total > self.context.limits.memory {
            self.memory_refused = Some(total);
            return Ok(false);
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl types::Host for CallState {}

impl host::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let mut message = message;
        cut(&mut message, MAX_LOG_LINE);
        if self.log_lines == MAX_LOG_LINES_PER_CALL {
            message.push_str(" (log line limit reached; further lines of this request are dropped)");
        }
        let (plugin, version, tenant) = (&*self.plugin, &*self.version, &*self.context.tenant);
        match level {
            Level::Trace => tracing::trace!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
            Level::Debug => tracing::debug!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
            Level::Info => tracing::info!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
            Level::Warn => tracing::warn!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
            Level::Error => tracing::error!(target: "wasmux::plugin", %plugin, %version, %tenant, "{message}"),
        }
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.context.config.get(&key).cloned()
    }

    fn outcome(&mut self, name: String) {
        if let Err(why) = self.outcomes.count(name)
            && !std::mem::replace(&mut self.outcome_refused, true)
        {
            let (plugin, version, tenant) = (&*self.plugin, &*self.version, &*self.context.tenant);
            tracing::warn!(target: "wasmux::plugin", %plugin, %version, %tenant, "{why} (further refusals of this request are not logged)");
        }
    }
}
