//! The WebAssembly runtime, and nothing else: compile, link, instantiate,
//! call, guard. A [`Message`] goes in, a [`Message`] (or a [`PluginError`])
//! comes out.
//!
//! One [`Runtime`] owns the wasmtime engine, the linker holding the host's
//! imports, the compiled-code cache and the epoch ticker. A
//! [`WasmHandler`] is a compiled component that has been linked once
//! ([`HandlerPre`], wasmtime's `InstancePre`). By default every call gets
//! a fresh `Store` and instance from the pooling allocator, so no state
//! survives from one request to the next and one request cannot see
//! another's data. With bounded reuse ([`Reuse`]) an instance serves a few
//! requests of one tenant, one at a time (`reuse.rs`).
//!
//! Guards on every call:
//! - a deadline, counted from when the call asks for an instance slot (so a
//!   call that waited for one runs only for what is left; one that waited
//!   its whole deadline is not started) and enforced by epoch
//!   interruption: a ticker thread advances the
//!   engine's epoch every [`EPOCH_TICK`]; at each tick a running guest yields
//!   to the tokio scheduler (so a spinning plugin never holds a worker
//!   thread), and past its deadline it is stopped;
//! - a memory cap, enforced by a resource limiter that also records the
//!   refusal so the error can say "out of memory";
//! - a cap on what the host copies out of the guest at once (wasmtime's
//!   hostcall fuel), so that an oversized response is refused before it is
//!   copied, then a cap on the response's size and a check of its header
//!   fields ([`convert`]).
//!
//! Plugins see the `host` interface of the WIT world and, if they import
//! it (Python and JavaScript plugins do), the WASI 0.2 subset of [`wasi`]:
//! stdout and stderr as log lines, clocks and random numbers, and nothing
//! outside (no filesystem, network, environment or arguments). A component
//! that imports no WASI (every Rust plugin) is linked without it; one that
//! does is refused if its plugin may not have it (`[plugins.NAME] wasi =
//! false`). A component of the `stateful-handler` world imports
//! `wasi:keyvalue` (not part of that subset): each of its instances gets a
//! [`kv::KvCall`] on the runtime's store, for its tenant and its plugin's
//! base name, with the buckets its plugin is granted; each request resets
//! its deadline and its allowance of operations. The store is opened when
//! the first such component is loaded, and never for a server without one. The linker defines the newest version of the `host` interface
//! (`wasmux:plugin/host@0.1.1`); wasmtime resolves an import of an older
//! 0.1.x to it, so plugins built against an older WIT keep loading.
//!
//! wasmtime's pooling allocator is shaped by [`AllocatorLimits`]
//! (`allocator.rs`), fixed when the runtime is made; a component over them
//! is refused at load with the limit and the setting that raises it named.
//! Instances are reused, when the settings ask for it, by [`reuse`].

mod allocator;
mod cache;
mod call;
mod call_log;
mod convert;
mod error;
mod functions;
mod outcomes;
mod reuse;
mod state;
mod wasi;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::error::Context as _;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Store, UpdateDeadline};

use wasmux_bindings::{HandlerPre, host, keyvalue};
use crate::digest::Digest;
use crate::kv;
use crate::message::Message;
use cache::{ComponentCache, DiskCache};
use functions::FunctionCache;
pub use cache::CodeOrigin;
use error::{Phase, classify_failure, handler_error};
pub use error::PluginError;
use reuse::{Instances, ReuseKey};
pub use reuse::{InstanceEvents, Retirement, Unobserved};
pub use allocator::AllocatorLimits;
pub use call::{CallContext, CallLimits, Reuse, ReuseCount};
use call::hostcall_fuel;
use state::CallState;
pub use outcomes::{MAX_OUTCOME_NAME, MAX_OUTCOMES_PER_CALL, Outcomes, invalid_outcome_name};

/// How often the epoch advances: the granularity of deadlines, and how long
/// a busy guest runs before it yields the thread to other tasks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Bytes of each linear memory and table reset in place (rather than
/// decommitted) when an instance's slot is reused. A request touches a few
/// dozen pages of a plugin's memory; with the kernel's `PAGEMAP_SCAN` only
/// those are reset, and the next request takes no page faults on them.
const KEEP_RESIDENT: usize = 2 << 20;

/// Settings fixed for the life of the engine.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Plugin calls that may run at once; more wait their turn. Sizes the
    /// pooling allocator.
    pub max_concurrent_calls: u32,
    /// The most memory any plugin instance may ever have (per-call limits
    /// may be lower).
    pub max_memory: usize,
    /// Directory where compiled plugin code is kept across restarts;
    /// `None` keeps it in memory only.
    pub cache_dir: Option<std::path::PathBuf>,
    /// The most the compiled code in `cache_dir` may take; the least
    /// recently used is evicted first.
    pub cache_max_size: u64,
    /// Keep wasmtime's Spectre hardening of memory bounds checks. Turning it
    /// off halves the cost of a call (no `mprotect` per instance), but a
    /// plugin could then read other instances' memory through speculative
    /// side channels: only for plugins you trust.
    pub spectre_hardening: bool,
    /// What one plugin instance may hold; shapes the instance pool.
    pub allocator: AllocatorLimits,
    /// How plugins are compiled.
    pub compile: CompileMode,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 256,
            max_memory: 64 << 20,
            cache_dir: None,
            cache_max_size: DEFAULT_CACHE_MAX_SIZE,
            spectre_hardening: true,
            allocator: AllocatorLimits::default(),
            compile: CompileMode::Serve,
        }
    }
}

/// How plugins are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileMode {
    /// Each function that Cranelift compiled before is kept in the
    /// compiled-code cache's directory, if one is in use, and a component
    /// not cached whole compiles only the functions no earlier compile
    /// made. A Python or JavaScript plugin is an interpreter whose code is
    /// the same from one build to the next (the program is data), so a new
    /// build compiles in a fraction of the first one's time.
    Serve,
    /// For a server that swaps in one rebuilt version after another
    /// (`wasmux dev`): as [`CompileMode::Serve`], and the functions are
    /// also kept in memory between compiles (without a cache directory, in
    /// memory only).
    Incremental,
    /// Every component compiled whole (`wasmux dev --no-incremental`), for
    /// comparison.
    Whole,
}

/// The default bound of the compiled-code cache directory: a few hundred
/// plugin versions of a few megabytes of code each.
pub const DEFAULT_CACHE_MAX_SIZE: u64 = 1 << 30;

/// The wasmtime engine, linker, cache and epoch ticker shared by every
/// plugin. Cloning it is cheap (a reference count).
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    /// The host interface (and `wasi:keyvalue`, which a component that
    /// does not import it never sees): what a component importing no WASI
    /// is linked with.
    linker: Linker<CallState>,
    /// The same and the WASI subset.
    wasi_linker: Linker<CallState>,
    cache: ComponentCache,
    /// Cranelift's compiled functions, unless every component is compiled
    /// whole.
    functions: Option<Arc<FunctionCache>>,
    settings: RuntimeSettings,
    /// The live instances. Each holds a slot of wasmtime's pool, so calls
    /// in flight are bounded by what that pool holds: a burst waits
    /// instead of failing.
    instances: Arc<Instances>,
    ticker_stop: Arc<AtomicBool>,
    /// Where plugins that import `wasi:keyvalue` keep their state: opened
    /// when the first such plugin is loaded.
    store: Arc<kv::OnDemand>,
}

/// How a component's code was had when it was loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadInfo {
    /// Time spent compiling, or reading the compiled code from a cache.
    pub compile_time: Duration,
    /// Whether the code was compiled for this load or found in a cache.
    pub origin: CodeOrigin,
    /// Whether the component imports WASI (and was linked with the subset).
    pub imports_wasi: bool,
    /// Whether the component imports `wasi:keyvalue` (and the store was
    /// opened for it).
    pub imports_kv: bool,
}

/// Whether a plugin may import the WASI subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wasi {
    Allowed,
    /// `[plugins.NAME] wasi = false`: a component importing WASI is refused.
    Refused,
}

/// A component compiled and linked against the host's imports, ready to
/// answer requests.
pub struct WasmHandler {
    pre: HandlerPre<CallState>,
    imports_wasi: bool,
    /// The store, for a component that imports `wasi:keyvalue`.
    store: Option<kv::Store>,
    runtime: Arc<Shared>,
    /// This load's identity in the instance pool.
    load: u64,
    /// The plugin's name and version, for its log lines.
    plugin: Arc<str>,
    version: Arc<str>,
}

/// How often the epoch ticker retires instances left idle too long, in ticks.
const IDLE_SWEEP_TICKS: u32 = 100;

impl Runtime {
    pub fn new(settings: RuntimeSettings) -> wasmtime::Result<Self> {
        Self::with_events(settings, Arc::new(Unobserved))
    }

    /// A runtime that tells `events` of every instance created and
    /// retired; plugins that import `wasi:keyvalue` keep their state in
    /// its memory.
    pub fn with_events(settings: RuntimeSettings, events: Arc<dyn InstanceEvents>) -> wasmtime::Result<Self> {
        Self::with_store(settings, events, Arc::new(kv::OnDemand::new(kv::StoreConfig::Memory, Arc::new(kv::NoKvMetrics))))
    }

    /// [`Runtime::with_events`], plugins keeping their state in `store`.
    pub fn with_store(settings: RuntimeSettings, events: Arc<dyn InstanceEvents>, store: Arc<kv::OnDemand>) -> wasmtime::Result<Self> {
        let n = settings.max_concurrent_calls.max(1);
        let mut allocator = settings.allocator.config(n, settings.max_memory);
        allocator.linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);

        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(allocator))
            .memory_init_cow(true)
            .parallel_compilation(true);
        let disk = settings.cache_dir.as_deref().and_then(|dir| DiskCache::open_or_log(dir, settings.cache_max_size));
        let functions = match (settings.compile, &disk) {
            (CompileMode::Whole, _) | (CompileMode::Serve, None) => None,
            (CompileMode::Serve, Some(disk)) => Some(FunctionCache::on_disk(Arc::clone(disk), false)),
            (CompileMode::Incremental, Some(disk)) => Some(FunctionCache::on_disk(Arc::clone(disk), true)),
            (CompileMode::Incremental, None) => Some(FunctionCache::in_memory()),
        }
        .map(Arc::new);
        if let Some(functions) = &functions {
            config.enable_incremental_compilation(Arc::clone(functions) as Arc<dyn wasmtime::CacheStore>)?;
        }
        if !settings.spectre_hardening {
            // Each instance's memory is reserved at its cap with no guard
            // pages, and compiled code checks every access explicitly instead
            // of relying on faults. Then a slot's pages stay read/write from
            // one request to the next: with guard pages, every request pays
            // two `mprotect` calls and a TLB flush (when the instance is made
            // and when its slot is reset), about half of a call. The price:
            // wasmtime turns off its Spectre hardening of those bounds
            // checks, which relies on faults.
            config
                .memory_reservation(u64::try_from(settings.max_memory).unwrap_or(u64::MAX))
                .memory_guard_size(0)
                .guard_before_linear_memory(false)
                .signals_based_traps(false);
        }
        let engine = Engine::new(&config).context("creating the wasmtime engine")?;

        let mut linker = Linker::new(&engine);
        host::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state).context("linking the host interface")?;
        // `wasi:keyvalue` for plugins of the `stateful-handler` world, on
        // the instance's own access to the store. Defining it costs a
        // component that does not import it nothing; the store is opened
        // only when one that does is loaded.
        keyvalue::Imports::add_to_linker::<_, HasSelf<kv::KvCall>>(&mut linker, |state| &mut state.kv).context("linking wasi:keyvalue")?;
        // The same with the WASI subset. A component importing WASI 0.2.x
        // links against wasmtime-wasi's 0.2 whatever its patch version.
        let mut wasi_linker = linker.clone();
        wasmtime_wasi::p2::add_to_linker_async(&mut wasi_linker).context("linking WASI")?;

        let instances = Arc::new(Instances::new(n as usize, events));
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.clone();
        let stop = Arc::clone(&ticker_stop);
        let sweep = Arc::clone(&instances);
        std::thread::Builder::new()
            .name("wasmux-epoch".into())
            .spawn(move || {
                let mut ticks = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(IDLE_SWEEP_TICKS) {
                        sweep.retire_expired();
                    }
                }
            })
            .context("starting the epoch ticker")?;

        let cache = ComponentCache::new(&engine, disk);
        Ok(Self { shared: Arc::new(Shared { engine, linker, wasi_linker, cache, functions, instances, settings, ticker_stop, store }) })
    }

    pub fn settings(&self) -> &RuntimeSettings {
        &self.shared.settings
    }

    /// The store plugins keep their state in.
    pub fn store(&self) -> &Arc<kv::OnDemand> {
        &self.shared.store
    }

    /// After a reload of the settings: instances made under generations
    /// before `generation` serve no further request.
    pub fn retire_generations_before(&self, generation: u64) {
        self.shared.instances.retire_generations_before(generation);
    }

    /// At shutdown: idle instances are retired, and no instance is kept.
    pub fn shutdown(&self) {
        self.shared.instances.close();
    }

    /// Whether the component whose SHA-256 is `digest` is compiled already
    /// (in memory, or in the cache directory): a load of it takes
    /// milliseconds, not the seconds a Python or JavaScript component
    /// takes to compile.
    pub fn is_compiled(&self, digest: Digest) -> bool {
        self.shared.cache.has(&digest)
    }

    /// Compiles (unless cached) and links the component `bytes`, whose
    /// SHA-256 is `digest` (the cache's key), for plugin `plugin` at
    /// `version` (named in its log lines). Compiling is CPU-heavy
    /// (milliseconds to seconds): call this off the async runtime. Fails if
    /// `bytes` is not a component, is not of the `handler` world, needs
    /// more than the instance pool holds, imports WASI where `wasi`
    /// refuses it, or imports `wasi:keyvalue` and the store cannot be
    /// opened (the data directory is another server's, say).
    pub fn load(&self, plugin: &str, version: &str, bytes: &[u8], digest: Digest, wasi: Wasi) -> wasmtime::Result<(WasmHandler, LoadInfo)> {
        let shared = &self.shared;
        let started = Instant::now();
        let compiled = {
            // What Cranelift compiles meanwhile is kept when this ends.
            let _compiling = shared.functions.as_deref().map(FunctionCache::compiling);
            shared.cache.get_or_compile(&shared.engine, digest, bytes)
        };
        let (component, origin) = match compiled {
            Ok(compiled) => compiled,
            Err(e) => return Err(allocator::explain_refusal(e, shared.settings.allocator)),
        };
        let compile_time = started.elapsed();
        let (kv_imports, wasi_imports): (Vec<String>, Vec<String>) =
            wasi_imports(&shared.engine, &component).into_iter().partition(|name| name.starts_with(KEYVALUE_PREFIX));
        let linker = match (wasi_imports.is_empty(), wasi) {
            (true, _) => &shared.linker,
            (false, Wasi::Allowed) => &shared.wasi_linker,
            (false, Wasi::Refused) => wasmtime::bail!(
                "the component imports WASI ({}), which the configuration refuses to plugin {plugin} \
                 ([plugins.{plugin}] wasi = false): build it without WASI, or allow the subset",
                wasi_imports.join(", ")
            ),
        };
        let instance_pre = linker
            .instantiate_pre(&component)
            .context("the component's imports do not match the wasmux:plugin/handler world (and the WASI 0.2 subset)")?;
        let pre = HandlerPre::new(instance_pre).context("the component's exports do not match the wasmux:plugin/handler world")?;
        let imports_wasi = !wasi_imports.is_empty();
        // The store is opened by the first plugin that needs it: a server
        // whose plugins keep no state never opens (or locks) one.
        let store = if kv_imports.is_empty() {
            None
        } else {
            match shared.store.get() {
                Ok(store) => Some(store),
                Err(e) => wasmtime::bail!("plugin {plugin} imports wasi:keyvalue, and the key-value store ({}) cannot be opened: {e:#}", shared.store.config()),
            }
        };
        let imports_kv = store.is_some();
        let load = shared.instances.register_load();
        let handler = WasmHandler { pre, imports_wasi, store, runtime: Arc::clone(shared), load, plugin: plugin.into(), version: version.into() };
        Ok((handler, LoadInfo { compile_time, origin, imports_wasi, imports_kv }))
    }
}

/// How the names of `wasi:keyvalue`'s interfaces begin: not part of the
/// WASI subset (a plugin refused WASI may keep state).
const KEYVALUE_PREFIX: &str = "wasi:keyvalue/";

/// The WASI interfaces `component` imports, e.g. `wasi:cli/stdout@0.2.3`.
fn wasi_imports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with("wasi:"))
        .collect()
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl WasmHandler {
    /// Answers `request` under `context`'s limits: with reuse on, on an
    /// idle instance of this load, tenant and settings generation if there
    /// is one; on a fresh instance otherwise. With the answer, the outcomes
    /// the plugin counted.
    pub async fn call(&self, request: &Message, context: &CallContext) -> Result<(Message, Outcomes), PluginError> {
        let limits = context.limits;
        // The wait for a slot counts against the deadline: behind a flood,
        // a request is answered when its time is up, not whenever a slot
        // comes free.
        let deadline = Instant::now() + limits.deadline;
        let call = self.call_by(request, context, deadline);
        if !self.imports_wasi && self.store.is_none() {
            return call.await;
        }
        // Epoch interruption stops a guest that runs past its deadline; a
        // guest waiting in a WASI call (a clock's pollable) runs no code to
        // interrupt, so its wait is bounded here, as is one waiting on the
        // key-value store (whose calls are bounded by the deadline too).
        // Dropping the call drops its lease, which retires the instance.
        // The host's own imports never wait.
        match tokio::time::timeout_at((deadline + 2 * EPOCH_TICK).into(), call).await {
            Ok(answer) => answer,
            Err(_) => Err(PluginError::Timeout(limits.deadline)),
        }
    }

    /// [`WasmHandler::call`], on an instance leased from the pool.
    async fn call_by(&self, request: &Message, context: &CallContext, deadline: Instant) -> Result<(Message, Outcomes), PluginError> {
        let instances = &self.runtime.instances;
        let limits = context.limits;
        let key = ReuseKey { load: self.load, tenant: Arc::clone(&context.tenant), generation: context.generation };
        let reused = if context.reuse.is_fresh() { None } else { instances.take(&key) };
        let mut lease = match reused {
            Some(mut lease) => {
                begin_call(&mut lease.instance().store, context, deadline);
                lease
            }
            None => {
                let permit = match tokio::time::timeout_at(deadline.into(), instances.permit()).await {
                    Ok(permit) => permit?,
                    Err(_) => return Err(PluginError::NoSlot(limits.deadline)),
                };
                let mut store = self.new_store(context);
                // Before instantiating: the deadline counts instantiation.
                begin_call(&mut store, context, deadline);
                let handler = match self.pre.instantiate_async(&mut store).await {
                    Ok(handler) => handler,
                    Err(e) => return Err(classify_failure(e, Phase::Instantiate, store.data(), limits)),
                };
                instances.lease(key, store, handler, context.reuse, permit)
            }
        };
        let instance = lease.instance();
        let result = match instance.handler.call_handle(&mut instance.store, &convert::to_request(request)).await {
            Ok(Ok(response)) => convert::into_message(response, limits.max_response)
                .map(|message| (message, std::mem::take(&mut instance.store.data_mut().outcomes)))
                .map_err(PluginError::BadResponse),
            Ok(Err(error)) => Err(PluginError::Handler(handler_error(error))),
            Err(e) => Err(classify_failure(e, Phase::Call, instance.store.data(), limits)),
        };
        lease.end(Retirement::after(&result));
        result
    }

    /// A store for a new instance of this plugin, with its limiter and its
    /// deadline's callback.
    fn new_store(&self, context: &CallContext) -> Store<CallState> {
        let max_table_elements = self.runtime.settings.allocator.table_elements;
        let kv = match &self.store {
            Some(store) => kv::KvCall::new(store.clone(), &context.tenant, &self.plugin, Arc::clone(&context.kv_buckets), context.kv_limits),
            None => kv::KvCall::without_store(&context.tenant, &self.plugin),
        };
        let state = CallState::new(Arc::clone(&self.plugin), Arc::clone(&self.version), context, max_table_elements, kv);
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|state| state);
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // tokio's own yield, not wasmtime's generic one: tokio runs a
                // task that yielded this way only after it has polled for I/O.
                // With a generic yield, workers kept busy by spinning guests
                // look for I/O only every 61 polls (its `event_interval`),
                // each a whole tick long, and other clients wait that long.
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
            }
        });
        store
    }

    /// Whether the component imports WASI.
    pub fn imports_wasi(&self) -> bool {
        self.imports_wasi
    }

    /// At a hot swap or unload of this version: its idle instances are
    /// retired, and those of calls in flight are when the calls end.
    pub fn retire(&self) {
        self.runtime.instances.retire_load(self.load);
    }
}

impl Drop for WasmHandler {
    fn drop(&mut self) {
        self.runtime.instances.forget_load(self.load);
    }
}

/// Sets what one request may use, for each request an instance serves: the
/// caller, the deadline, the log lines, the copy cap (hostcall fuel), the
/// epoch deadline. The limiter's count of memory in use stays: it is the
/// memory the instance holds.
fn begin_call(store: &mut Store<CallState>, context: &CallContext, deadline: Instant) {
    store.data_mut().begin(context, deadline);
    // Caps what the host copies out of the guest in one go, so that a
    // response (or a log line) claiming more than a response may hold is
    // refused before it is copied. Guest memory alone would not bound
    // it: a list's strings may all point at the same bytes.
    store.set_hostcall_fuel(hostcall_fuel(context.limits));
    // The first check comes one to two ticks in, so that a short call
    // finishes without yielding; after that, one every tick.
    store.set_epoch_deadline(2);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A component holding one core module whose one function returns
    /// `answer`, and a custom section `note` (which changes the component's
    /// bytes, not its code).
    fn component_returning(answer: u8, note: &[u8]) -> Vec<u8> {
        assert!(answer < 64 && note.len() < 100, "one-byte LEB128 only");
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        module.extend([0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f]); // type: [] -> [i32]
        module.extend([0x03, 0x02, 0x01, 0x00]); // one function of that type
        module.extend([0x0a, 0x06, 0x01, 0x04, 0x00, 0x41, answer, 0x0b]); // i32.const answer
        module.extend([0x00, 2 + note.len() as u8, 1, b'n']);
        module.extend(note);
        let mut component = b"\0asm\x0d\x00\x01\x00".to_vec(); // a component's preamble
        component.extend([0x01, module.len() as u8]);
        component.extend(module);
        component
    }

    fn packs(dir: &Path) -> usize {
        std::fs::read_dir(dir).expect("read the cache").filter(|e| e.as_ref().is_ok_and(|e| e.path().to_string_lossy().ends_with(cache::PACK_SUFFIX))).count()
    }

    /// A process that compiles a component made of functions compiled
    /// before (by another process, for another component) finds them all
    /// and writes no new pack; a changed function is compiled and written.
    /// (Each component is compiled, then refused: it is not a handler.)
    #[test]
    fn a_new_component_compiles_only_the_functions_no_earlier_compile_made() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let compile = |bytes: &[u8]| {
            // A runtime of its own for each, as a process of its own.
            let settings = RuntimeSettings { max_concurrent_calls: 1, cache_dir: Some(dir.path().to_path_buf()), ..RuntimeSettings::default() };
            let runtime = Runtime::new(settings).expect("a runtime");
            assert!(runtime.load("p", "v", bytes, Digest::of(bytes), Wasi::Refused).is_err(), "loaded as a handler");
        };
        compile(&component_returning(42, b"first"));
        assert_eq!(packs(dir.path()), 1, "the compiled function was not kept");
        compile(&component_returning(42, b"another component"));
        assert_eq!(packs(dir.path()), 1, "a function compiled before was compiled again");
        compile(&component_returning(43, b"first"));
        assert_eq!(packs(dir.path()), 2, "a changed function was not compiled and kept");
    }
}
