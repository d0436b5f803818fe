//! The WebAssembly runtime, and nothing else: a [`Message`] goes in, a
//! [`Message`] (or a [`PluginError`]) comes out.
//!
//! One [`Runtime`] owns the wasmtime engine, the linker holding the host's
//! imports, and the epoch ticker. A [`Plugin`] is a compiled component that
//! has been linked once ([`HandlerPre`], wasmtime's `InstancePre`); every call
//! gets a fresh `Store` and instance from the pooling allocator, so no state
//! survives from one request to the next and one request cannot see
//! another's data.
//!
//! Guards on every call:
//! - a deadline, enforced by epoch interruption: a ticker thread advances the
//!   engine's epoch every [`EPOCH_TICK`]; at each tick a running guest yields
//!   to the tokio scheduler (so a spinning plugin never holds a worker
//!   thread), and past its deadline it is stopped;
//! - a memory cap, enforced by a resource limiter that also records the
//!   refusal so the error can say "out of memory";
//! - a cap on what the host copies out of the guest at once (wasmtime's
//!   hostcall fuel), so that an oversized response is refused before it is
//!   copied, then a cap on the response's size and a check of its header
//!   fields.
//!
//! Plugins see the `host` interface of the WIT world and, if they import it
//! (Python and JavaScript plugins do), the WASI 0.2 subset of [`wasi`]:
//! stdout and stderr as log lines, clocks and random numbers, and nothing
//! outside (no filesystem, network, environment or arguments). A plugin
//! loaded with WASI refused, or a Rust plugin, links without it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::error::Context as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap, UpdateDeadline};

use crate::codec::{self, ErrorCode, Header, Message, ProtocolError};

mod cache;
mod wasi;

use cache::ComponentCache;
pub use cache::Origin;

wasmtime::component::bindgen!({
    world: "handler",
    path: "../wit",
    exports: { default: async },
});

use wasmux::plugin::host::Level;
use wasmux::plugin::types::Field;

/// How often the epoch advances: the granularity of deadlines, and how long
/// a busy guest runs before it yields the thread to other tasks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Bytes of each linear memory and table reset in place (rather than
/// decommitted) when an instance's slot is reused. A request touches a few
/// dozen pages of a plugin's memory; with the kernel's `PAGEMAP_SCAN` only
/// those are reset, and the next request takes no page faults on them.
const KEEP_RESIDENT: usize = 2 << 20;

/// Longest log line a plugin may write; the rest is cut.
const MAX_LOG_LINE: usize = 1024;

/// Log lines a plugin may write per request; the rest are dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 64;

/// Longest handler error message passed on to the client and the log; the
/// rest is cut.
const MAX_ERROR_TEXT: usize = 1024;

/// What the host may copy out of a guest at once beyond a response's
/// content: its content-type, encoding and header fields. A header is at
/// most 64 KiB on the wire, but each field costs the host more than its
/// bytes, so this leaves room for any header that can be sent.
const HEADER_FUEL: usize = 1 << 20;

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
    /// Keep wasmtime's Spectre hardening of memory bounds checks. Turning it
    /// off halves the cost of a call (no `mprotect` per instance), but a
    /// plugin could then read other instances' memory through speculative
    /// side channels: only for plugins you trust.
    pub spectre_hardening: bool,
    /// What one plugin instance may hold; sizes the pooling allocator.
    pub pool: PoolLimits,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self { max_concurrent_calls: 256, max_memory: 64 << 20, cache_dir: None, spectre_hardening: true, pool: PoolLimits::default() }
    }
}

/// What one plugin instance may hold, for the pooling allocator, which sets
/// its slots aside when the engine is made. A component needing more is
/// refused at load with the limit and its setting named.
///
/// The defaults fit the components of all three languages with room
/// (measured by loading each with one limit at 1, `cargo bench --bench
/// plugin_languages`): a Rust plugin fits every limit at 1; componentize-py
/// 0.25.1 needs 14 core instances, 1 memory and 2 tables (38 core instances
/// when built with `--stub-wasi`, whose stubs are modules too);
/// componentize-js 0.23.0 4 core instances, 1 memory and 2 tables. Raising
/// a limit costs address space (memories, tables), not resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// `[runtime] max-core-instances-per-plugin`.
    pub core_instances: u32,
    /// `[runtime] max-memories-per-plugin`.
    pub memories: u32,
    /// `[runtime] max-tables-per-plugin`.
    pub tables: u32,
    /// `[runtime] max-table-elements`: the most elements of one table.
    pub table_elements: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self { core_instances: 64, memories: 4, tables: 8, table_elements: 100_000 }
    }
}

/// The settings that raise each pooling limit a component may exceed, by
/// the words of wasmtime's refusal (its error type is private, so its text
/// is all there is to match).
const POOL_SETTINGS: [(&str, &str); 4] = [
    ("core module instances", "max-core-instances-per-plugin"),
    ("linear memories", "max-memories-per-plugin"),
    (" tables,", "max-tables-per-plugin"),
    ("table does not fit", "max-table-elements"),
];

/// Limits for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Wall-clock time the call may take, instantiation included.
    pub deadline: Duration,
    /// Linear memory the instance may grow to.
    pub memory: usize,
    /// Largest response content the plugin may return.
    pub max_response: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self { deadline: Duration::from_millis(100), memory: 64 << 20, max_response: codec::DEFAULT_MAX_CONTENT_LENGTH }
    }
}

/// Who is calling, for the plugin's log lines and configuration.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    pub tenant: Arc<str>,
    /// Values the plugin reads through the `config` import.
    pub config: Arc<BTreeMap<String, String>>,
    pub limits: CallLimits,
}

/// The wasmtime engine, linker and epoch ticker shared by every plugin.
pub struct Runtime {
    engine: Engine,
    /// The host interface only: what Rust plugins import.
    linker: Linker<CallState>,
    /// The host interface and the WASI subset.
    wasi_linker: Linker<CallState>,
    cache: ComponentCache,
    settings: RuntimeSettings,
    /// Bounds plugin calls in flight to what the instance pool holds, so a
    /// burst waits instead of failing.
    slots: Semaphore,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(settings: RuntimeSettings) -> wasmtime::Result<Self> {
        let n = settings.max_concurrent_calls.max(1);
        let limits = settings.pool;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .max_core_instances_per_component(limits.core_instances)
            .total_core_instances(n.saturating_mul(limits.core_instances))
            .max_memories_per_component(limits.memories)
            .max_tables_per_component(limits.tables)
            // Every call may hold its plugin's most; the slots cost address
            // space, and pages only when used.
            .total_memories(n.saturating_mul(limits.memories))
            .total_tables(n.saturating_mul(limits.tables))
            .table_elements(limits.table_elements)
            // An interpreter's instance state (its functions, globals and
            // tables' descriptions) is larger than a Rust plugin's.
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(16 << 20)
            .total_stacks(n)
            .max_memory_size(settings.max_memory)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);

        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_init_cow(true)
            .parallel_compilation(true);
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
        wasmux::plugin::host::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state)
            .context("linking the host interface")?;
        // The same with the WASI subset, for plugins that import it. A
        // component importing WASI 0.2.x links against wasmtime-wasi's 0.2
        // whatever its patch version (wasmtime matches 0.2.9 and 0.2.12
        // imports with its own 0.2 definitions).
        let mut wasi_linker = linker.clone();
        wasmtime_wasi::p2::add_to_linker_async(&mut wasi_linker).context("linking WASI")?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.clone();
        let stop = Arc::clone(&ticker_stop);
        std::thread::Builder::new()
            .name("wasmux-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                }
            })
            .context("starting the epoch ticker")?;

        let cache = ComponentCache::new(&engine, settings.cache_dir.clone());
        Ok(Self { engine, linker, wasi_linker, cache, slots: Semaphore::new(n as usize), settings, ticker_stop })
    }

    pub fn settings(&self) -> &RuntimeSettings {
        &self.settings
    }

    /// Compiles (unless cached) and links a component. Compiling is
    /// CPU-heavy (milliseconds to seconds): call this off the async
    /// runtime. Fails if `bytes` is not a component or not of the `handler`
    /// world.
    pub fn load(&self, name: &str, bytes: &[u8]) -> wasmtime::Result<Plugin> {
        self.load_with(name, bytes, true)
    }

    /// [`Runtime::load`]; with `allow_wasi` false, a component importing
    /// WASI is refused (`[plugins.NAME] wasi = false`).
    pub fn load_with(&self, name: &str, bytes: &[u8], allow_wasi: bool) -> wasmtime::Result<Plugin> {
        let version = Version::of(bytes);
        let started = Instant::now();
        let (component, origin) = match self.cache.get_or_compile(&self.engine, version, bytes) {
            Ok(compiled) => compiled,
            Err(e) => return Err(explain_pool_refusal(e, self.settings.pool)),
        };
        let compile_time = started.elapsed();
        let wasi_imports: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(import, _)| import.to_owned())
            .filter(|import| import.starts_with("wasi:"))
            .collect();
        let linker = match (wasi_imports.is_empty(), allow_wasi) {
            (true, _) => &self.linker,
            (false, true) => &self.wasi_linker,
            (false, false) => wasmtime::bail!(
                "the component imports WASI ({}), which this server refuses for plugin {name} \
                 (set wasi = true under [plugins.{name}] to allow the subset, or build the plugin without WASI)",
                wasi_imports.join(", ")
            ),
        };
        let instance_pre = linker
            .instantiate_pre(&component)
            .context("the component's imports do not match the wasmux:plugin/handler world")?;
        let pre = HandlerPre::new(instance_pre)
            .context("the component's exports do not match the wasmux:plugin/handler world")?;
        Ok(Plugin {
            name: name.to_owned(),
            version,
            version_label: version.to_string().into(),
            size: bytes.len(),
            loaded_at: SystemTime::now(),
            compile_time,
            origin,
            backend: Backend::Wasm(pre),
        })
    }

    /// Calls `plugin` on a fresh instance with `request`.
    pub async fn call(&self, plugin: &Plugin, request: &Message, context: &CallContext) -> Result<Message, PluginError> {
        let pre = match &plugin.backend {
            Backend::Wasm(pre) => pre,
            Backend::Native(handler) => return handler(request).map_err(PluginError::Handler),
        };
        let _slot = self.slots.acquire().await.map_err(|_| PluginError::ShuttingDown)?;
        let limits = context.limits;
        let state = CallState {
            plugin: plugin.name.clone(),
            version: plugin.version,
            context: context.clone(),
            deadline: Instant::now() + limits.deadline,
            memory_in_use: 0,
            memory_refused: None,
            log_lines: 0,
            wasi: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state);
        // Caps what the host copies out of the guest in one go, so that a
        // response (or a log line) claiming more than a response may hold is
        // refused before it is copied. Guest memory alone would not bound
        // it: a list's strings may all point at the same bytes.
        store.set_hostcall_fuel(hostcall_fuel(limits));
        // The first check comes one to two ticks in, so that a short call
        // finishes without yielding; after that, one every tick.
        store.set_epoch_deadline(2);
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

        let handler = match pre.instantiate_async(&mut store).await {
            Ok(handler) => handler,
            Err(e) => return Err(classify_failure(e, Phase::Instantiate, store.data(), limits)),
        };
        match handler.call_handle(&mut store, &to_request(request)).await {
            Ok(Ok(response)) => into_message(response, limits.max_response).map_err(PluginError::BadResponse),
            Ok(Err(error)) => Err(PluginError::Handler(cut_handler_error(error))),
            Err(e) => Err(classify_failure(e, Phase::Call, store.data(), limits)),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A loaded plugin: one version of one component, compiled and linked.
pub struct Plugin {
    pub name: String,
    pub version: Version,
    /// `version` as text, shared by every request's metrics labels.
    pub version_label: Arc<str>,
    /// Size of the component file in bytes.
    pub size: usize,
    pub loaded_at: SystemTime,
    /// Time spent compiling, or reading the compiled code from a cache.
    pub compile_time: Duration,
    /// Whether the code was compiled for this load or found in a cache.
    pub origin: Origin,
    backend: Backend,
}

/// What runs a plugin's requests.
enum Backend {
    /// A component, linked once and instantiated per request.
    Wasm(HandlerPre<CallState>),
    /// A handler compiled into the host: the baseline that benchmarks
    /// compare the Wasm path against (`wasmux serve --native`).
    Native(NativeHandler),
}

/// A handler compiled into the host, with a plugin's contract.
pub type NativeHandler = fn(&Message) -> Result<Message, HandlerError>;

impl Plugin {
    /// A plugin served by a native handler instead of a component.
    pub fn native(name: &str, handler: NativeHandler) -> Self {
        let version = Version::of(format!("native:{name}").as_bytes());
        Self {
            name: name.to_owned(),
            version,
            version_label: version.to_string().into(),
            size: 0,
            loaded_at: SystemTime::now(),
            compile_time: Duration::ZERO,
            origin: Origin::Compiled,
            backend: Backend::Native(handler),
        }
    }

    /// True for a native (compiled-in) handler.
    pub fn is_native(&self) -> bool {
        matches!(self.backend, Backend::Native(_))
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("version", &self.version).finish_non_exhaustive()
    }
}

/// A plugin version's identity: the SHA-256 of its bytes, shown as its
/// first 12 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version([u8; 32]);

impl Version {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// All 64 hex digits.
    pub fn full_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0[..6].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a plugin call produced no response.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin declined: the request was bad, unsupported, or it failed.
    #[error("{}", handler_error_text(.0))]
    Handler(HandlerError),
    #[error("trapped: {0}")]
    Trap(String),
    /// Instantiation failed for a reason other than a trap or the limits.
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("ran past its deadline of {0:?}")]
    Timeout(Duration),
    #[error("ran out of memory: it asked for {asked} bytes, over its limit of {limit}")]
    OutOfMemory { asked: usize, limit: usize },
    #[error("returned an invalid response: {0}")]
    BadResponse(String),
    /// The guest handed the host values it cannot read: pointers or lengths
    /// out of bounds, invalid UTF-8, an invalid discriminant.
    #[error("handed the host invalid data: {0}")]
    InvalidData(String),
    /// The guest handed the host more bytes at once than a response may hold.
    #[error("handed the host more than {limit} bytes at once (a response may carry {max_response} bytes of content)")]
    TooMuchData { limit: usize, max_response: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl PluginError {
    /// The error answer for the client, naming the plugin.
    pub fn to_protocol_error(&self, plugin: &str) -> ProtocolError {
        let (code, message) = match self {
            Self::Handler(HandlerError::BadRequest(m)) => (ErrorCode::BadRequest, format!("bad request for plugin {plugin}: {m}")),
            Self::Handler(HandlerError::Unsupported(m)) => (ErrorCode::Unsupported, format!("plugin {plugin} does not support this request: {m}")),
            Self::Handler(HandlerError::Internal(m)) => (ErrorCode::PluginFailed, format!("plugin {plugin} failed: {m}")),
            Self::Trap(_) | Self::Instantiate(_) => (ErrorCode::PluginFailed, format!("plugin {plugin} {self}")),
            Self::Timeout(_) => (ErrorCode::PluginTimeout, format!("plugin {plugin} {self}")),
            Self::OutOfMemory { .. } => (ErrorCode::PluginMemory, format!("plugin {plugin} {self}")),
            Self::BadResponse(_) | Self::InvalidData(_) | Self::TooMuchData { .. } => {
                (ErrorCode::PluginBadResponse, format!("plugin {plugin} {self}"))
            }
            Self::ShuttingDown => (ErrorCode::Internal, self.to_string()),
        };
        ProtocolError::new(code, message)
    }

    /// True if the fault is the plugin's (worth a warning in the log), not
    /// the request's.
    pub fn is_plugin_fault(&self) -> bool {
        !matches!(self, Self::Handler(HandlerError::BadRequest(_) | HandlerError::Unsupported(_)) | Self::ShuttingDown)
    }
}

fn handler_error_text(error: &HandlerError) -> String {
    match error {
        HandlerError::BadRequest(m) => format!("bad request: {m}"),
        HandlerError::Unsupported(m) => format!("unsupported: {m}"),
        HandlerError::Internal(m) => format!("failed: {m}"),
    }
}

/// What the host may copy out of the guest at once under `limits`.
fn hostcall_fuel(limits: CallLimits) -> usize {
    limits.max_response.saturating_add(HEADER_FUEL)
}

/// Which step of a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Instantiate,
    Call,
}

/// Turns a failed instantiate or call into the cause the client is told.
fn classify_failure(error: wasmtime::Error, phase: Phase, state: &CallState, limits: CallLimits) -> PluginError {
    if let Some(asked) = state.memory_refused {
        return PluginError::OutOfMemory { asked, limit: limits.memory };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout(limits.deadline),
        Some(&trap) => {
            if let Some(backtrace) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
                tracing::debug!(plugin = %state.plugin, version = %state.version, "trap backtrace:\n{backtrace}");
            }
            PluginError::Trap(describe_trap(trap))
        }
        // Not a trap: during a call, wasmtime refused to lift what the guest
        // handed over (the response, or an import's arguments).
        None if phase == Phase::Call => {
            let text = one_line(&error);
            // wasmtime's words for running out of hostcall fuel; its error
            // type is private, so the text is all there is to match.
            if text.contains("fuel allocated for hostcalls has been exhausted") {
                PluginError::TooMuchData { limit: hostcall_fuel(limits), max_response: limits.max_response }
            } else {
                PluginError::InvalidData(text)
            }
        }
        None => PluginError::Instantiate(one_line(&error)),
    }
}

/// A trap as one line for the client: wasmtime's description without its
/// `wasm trap: ` prefix, with a hint where the description alone puzzles.
fn describe_trap(trap: Trap) -> String {
    let text = trap.to_string();
    let text = text.strip_prefix("wasm trap: ").unwrap_or(&text);
    match trap {
        Trap::UnreachableCodeReached => format!("{text} (a panic or an abort in the plugin)"),
        _ => text.to_owned(),
    }
}

/// An error and its causes on one line, cut to a readable length.
fn one_line(error: &wasmtime::Error) -> String {
    let mut text = format!("{error:#}").replace('\n', " ");
    cut(&mut text, MAX_ERROR_TEXT);
    text
}

/// Cuts `text` to at most `limit` bytes (on a character boundary), marking the cut.
fn cut(text: &mut String, limit: usize) {
    if text.len() > limit {
        let at = (0..=limit).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(at);
        text.push_str("… (cut)");
    }
}

/// A handler error with its message cut to [`MAX_ERROR_TEXT`]: it goes into
/// an error answer and the log, and the plugin chose its length.
fn cut_handler_error(error: HandlerError) -> HandlerError {
    let cut_message = |mut message: String| {
        cut(&mut message, MAX_ERROR_TEXT);
        message
    };
    match error {
        HandlerError::BadRequest(m) => HandlerError::BadRequest(cut_message(m)),
        HandlerError::Unsupported(m) => HandlerError::Unsupported(cut_message(m)),
        HandlerError::Internal(m) => HandlerError::Internal(cut_message(m)),
    }
}

/// The store's data for one call.
struct CallState {
    plugin: String,
    version: Version,
    context: CallContext,
    deadline: Instant,
    /// Linear memory of all the instance's memories together.
    memory_in_use: usize,
    /// Set when the limiter refused a memory growth: the bytes asked for.
    memory_refused: Option<usize>,
    log_lines: u32,
    /// The WASI context, made on the guest's first WASI call.
    wasi: Option<Box<wasi::GuestWasi>>,
}

impl wasmtime_wasi::WasiView for CallState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        let wasi = self
            .wasi
            .get_or_insert_with(|| Box::new(wasi::GuestWasi::new(&self.plugin, self.version, &self.context.tenant)));
        wasmtime_wasi::WasiCtxView { ctx: &mut wasi.ctx, table: &mut wasi.table }
    }
}

/// A component the pooling allocator refused, with the setting that raises
/// the limit it exceeds named.
fn explain_pool_refusal(error: wasmtime::Error, limits: PoolLimits) -> wasmtime::Error {
    let text = format!("{error:#}");
    for (words, setting) in POOL_SETTINGS {
        if text.contains(words) {
            let now = match setting {
                "max-core-instances-per-plugin" => limits.core_instances.to_string(),
                "max-memories-per-plugin" => limits.memories.to_string(),
                "max-tables-per-plugin" => limits.tables.to_string(),
                _ => limits.table_elements.to_string(),
            };
            return error.context(format!(
                "the component needs more than this server's pool allows: raise [runtime] {setting} (now {now})"
            ));
        }
    }
    error.context("not a valid WebAssembly component, or one outside this server's limits")
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

impl wasmux::plugin::types::Host for CallState {}

impl wasmux::plugin::host::Host for CallState {
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
        let (plugin, version, tenant) = (&self.plugin, self.version, &*self.context.tenant);
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
}

fn to_request(message: &Message) -> Request {
    let h = &message.header;
    Request {
        content_type: h.content_type.clone(),
        content_encoding: h.content_encoding.clone(),
        byteorder: h.byteorder.clone(),
        fields: h
            .extra
            .iter()
            // Credentials are the host's business, never a plugin's.
            .filter(|(name, _)| name.as_str() != crate::tenancy::AUTHORIZATION_FIELD)
            .map(|(name, value)| Field { name: name.clone(), value: value.to_string() })
            .collect(),
        content: message.content.to_vec(),
    }
}

/// Checks a plugin's response and turns it into a message.
fn into_message(response: Response, max_content: usize) -> Result<Message, String> {
    if response.content.len() > max_content {
        return Err(format!("its content is {} bytes, over the limit of {max_content}", response.content.len()));
    }
    if response.content_type.is_empty() {
        return Err("its content-type is empty".into());
    }
    let mut extra = Map::new();
    for Field { name, value } in response.fields {
        if codec::REQUIRED_FIELDS.contains(&name.as_str()) {
            return Err(format!("it sets the header field \"{name}\", which the host sets"));
        }
        let value: Value =
            serde_json::from_str(&value).map_err(|e| format!("header field \"{name}\" is not JSON text: {e}"))?;
        if extra.insert(name.clone(), value).is_some() {
            return Err(format!("it sets the header field \"{name}\" twice"));
        }
    }
    let message = Message {
        header: Header {
            byteorder: codec::NATIVE_BYTEORDER.to_owned(),
            content_type: response.content_type,
            content_encoding: response.content_encoding,
            extra,
        },
        content: response.content.into(),
    };
    codec::check_encodable(&message.header).map_err(|e| e.to_string())?;
    Ok(message)
}
