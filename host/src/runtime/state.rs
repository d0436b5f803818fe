//! What a `Store` holds for one call, and the host's side of the imports a
//! plugin may call: `log`, `config` and `outcome` (and, through
//! [`super::wasi`], the WASI subset).

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;

use crate::kv::KvCall;

use super::call::CallContext;
use super::call_log::CallLog;
use super::outcomes::Outcomes;
use super::wasi::GuestWasi;
use wasmux_bindings::host::{self, Level};
use wasmux_bindings::types;

/// The store's data: the instance's, and the current call's.
pub(super) struct CallState {
    /// The plugin's log for the current call (its name, version and
    /// tenant are there too; an instance serves one tenant).
    pub log: Arc<CallLog>,
    /// The current call's caller, plugin values and limits.
    pub context: CallContext,
    pub deadline: Instant,
    /// Linear memory of all the instance's memories together. It belongs to
    /// the instance, not to one call: it stays when a reused instance
    /// begins its next call.
    memory_in_use: usize,
    /// Set when the limiter refused a memory growth: the bytes asked for.
    pub memory_refused: Option<usize>,
    /// What the plugin counted with `outcome`, handed back with its answer.
    pub outcomes: Outcomes,
    /// Set once a refused outcome was logged, so a plugin calling in a loop
    /// writes one line per request.
    outcome_refused: bool,
    /// The most elements a table may grow to (`[runtime]
    /// max-table-elements`, what the pool's table slots hold).
    max_table_elements: usize,
    /// The WASI context, made on the guest's first WASI call: a plugin that
    /// imports no WASI (every Rust plugin) never pays for it.
    wasi: Option<Box<GuestWasi>>,
    /// The instance's access to the key-value store (`wasi:keyvalue`):
    /// without a store for a component that imports none.
    pub kv: KvCall,
}

impl CallState {
    /// The state of a new instance of `plugin` at `version`, serving
    /// `context`'s tenant; [`CallState::begin`] starts each call.
    pub fn new(plugin: Arc<str>, version: Arc<str>, context: &CallContext, max_table_elements: usize, kv: KvCall) -> Self {
        let log = Arc::new(CallLog::new(plugin, version, Arc::clone(&context.tenant)));
        Self {
            log,
            context: context.clone(),
            deadline: Instant::now(),
            memory_in_use: 0,
            memory_refused: None,
            outcomes: Outcomes::default(),
            outcome_refused: false,
            max_table_elements,
            wasi: None,
            kv,
        }
    }

    /// Starts a call under `context` that must end by `deadline`, with a
    /// clean slate for what the previous call on this instance did.
    pub fn begin(&mut self, context: &CallContext, deadline: Instant) {
        self.context = context.clone();
        self.deadline = deadline;
        self.memory_refused = None;
        self.log.begin();
        self.outcomes = Outcomes::default();
        self.outcome_refused = false;
        // A fresh allowance of store operations, bounded by this request's
        // deadline and under the tenant's limits in force now.
        self.kv.begin(deadline, context.kv_limits);
    }
}

impl wasmtime_wasi::WasiView for CallState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        let log = &self.log;
        let wasi = self.wasi.get_or_insert_with(|| Box::new(GuestWasi::new(Arc::clone(log))));
        wasmtime_wasi::WasiCtxView { ctx: &mut wasi.ctx, table: &mut wasi.table }
    }
}

impl ResourceLimiter for CallState {
    /// Called for each memory's initial size as well as for each growth; the
    /// cap is for the instance, however many memories it has.
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Past the memory's own declared maximum, wasmtime refuses the
        // growth after asking here: counting it would keep bytes that were
        // never given, and refuse later growth that fits. (Not the
        // plugin's memory limit: the call goes on, `memory.grow` says -1.)
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        let total = self.memory_in_use.saturating_sub(current).saturating_add(desired);
        if total > self.context.limits.memory {
            self.memory_refused = Some(total);
            return Ok(false);
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}

impl types::Host for CallState {}

impl host::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        self.log.line(level, message);
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.context.config.get(&key).cloned()
    }

    fn outcome(&mut self, name: String) {
        if let Err(why) = self.outcomes.count(name)
            && !std::mem::replace(&mut self.outcome_refused, true)
        {
            let (plugin, version, tenant) = (&*self.log.plugin, &*self.log.version, &*self.log.tenant);
            tracing::warn!(target: "wasmux::plugin", %plugin, %version, %tenant, "{why} (further refusals of this request are not logged)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(memory: usize) -> CallState {
        let context = CallContext { limits: super::super::call::CallLimits { memory, ..Default::default() }, ..Default::default() };
        CallState::new("p".into(), "v".into(), &context, 10_000, KvCall::without_store("t", "p"))
    }

    #[test]
    fn a_growth_past_the_memorys_own_maximum_is_refused_without_being_counted() {
        const PAGE: usize = 64 << 10;
        let mut state = state(256 * PAGE);
        assert!(state.memory_growing(0, 10 * PAGE, Some(100 * PAGE)).expect("initial"));
        // Past the declared maximum of 100 pages: refused here, and not
        // the plugin limit's doing.
        assert!(!state.memory_growing(10 * PAGE, 210 * PAGE, Some(100 * PAGE)).expect("past the maximum"));
        assert_eq!(state.memory_refused, None);
        // Was counted as in use before: 210 pages, and +50 was then refused
        // as over 256, with 60 in use.
        assert!(state.memory_growing(10 * PAGE, 60 * PAGE, Some(100 * PAGE)).expect("within"));
        assert_eq!(state.memory_in_use, 60 * PAGE);
        // The plugin's limit still holds.
        assert!(!state.memory_growing(0, 300 * PAGE, None).expect("past the limit"));
        assert_eq!(state.memory_refused, Some(360 * PAGE));
    }
}
