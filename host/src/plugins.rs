//! The plugins being served: name ─▶ the current [`Plugin`] version, and
//! what is known about each (its version, the [`Digest`] of its bytes; size, load time, how its code
//! was had).
//!
//! The map is swapped whole (arc-swap), so a request looks its plugin up
//! once, without a lock, and keeps that version to the end even if a new
//! one is swapped in meanwhile.
//!
//! Plugins come from a source ([`crate::source`]): a directory, where a
//! plugin's name is its file's name without `.wasm`, or a registry
//! repository, where it is a tag. Names may hold letters, digits and `-_.@`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::digest::Digest;
use crate::message::Message;
use crate::metrics::Metrics;
pub use crate::native::NativeHandler;
use crate::runtime::{CallContext, CodeOrigin, LoadInfo, Outcomes, PluginError, Runtime, Wasi, WasmHandler};

/// A loaded plugin: one version of one component, compiled and linked, or
/// a handler compiled into the host.
pub struct Plugin {
    pub name: String,
    /// The SHA-256 of its component.
    pub version: Digest,
    /// `version` as text, shared by every request's metrics labels.
    pub version_label: Arc<str>,
    /// Size of the component file in bytes.
    pub size: usize,
    pub loaded_at: SystemTime,
    /// Time spent compiling, or reading the compiled code from a cache.
    pub compile_time: Duration,
    /// Whether the code was compiled for this load or found in a cache.
    pub origin: CodeOrigin,
    /// Whether the component imports the WASI subset.
    pub imports_wasi: bool,
    backend: Backend,
}

/// What runs a plugin's requests.
enum Backend {
    /// A component, linked once and instantiated per request.
    Wasm(WasmHandler),
    /// A handler compiled into the host: the baseline that benchmarks
    /// compare the Wasm path against (`wasmux serve --native`), and what
    /// the service's unit tests run.
    Native(NativeHandler),
}

impl Plugin {
    /// A plugin served by a native handler instead of a component.
    pub fn native(name: &str, handler: NativeHandler) -> Self {
        let version = Digest::of(format!("native:{name}").as_bytes());
        Self {
            name: name.to_owned(),
            version,
            version_label: version.short().into(),
            size: 0,
            loaded_at: SystemTime::now(),
            compile_time: Duration::ZERO,
            origin: CodeOrigin::Compiled,
            imports_wasi: false,
            backend: Backend::Native(handler),
        }
    }

    /// Compiles and links `bytes`, whose SHA-256 is `version`, as plugin
    /// `name` (CPU-heavy: call this off the async runtime); a component
    /// importing WASI is refused if `wasi` says so.
    pub fn load(runtime: &Runtime, name: &str, version: Digest, bytes: &[u8], wasi: Wasi) -> wasmtime::Result<Self> {
        let label: Arc<str> = version.short().into();
        let (handler, LoadInfo { compile_time, origin, imports_wasi, .. }) = runtime.load(name, &label, bytes, version, wasi)?;
        Ok(Self {
            name: name.to_owned(),
            version,
            version_label: label,
            size: bytes.len(),
            loaded_at: SystemTime::now(),
            compile_time,
            origin,
            imports_wasi,
            backend: Backend::Wasm(handler),
        })
    }

    /// True for a native (compiled-in) handler.
    pub fn is_native(&self) -> bool {
        matches!(self.backend, Backend::Native(_))
    }

    /// Called when this version stops being the current one (swapped out
    /// or unloaded): its idle instances are retired, and those of requests
    /// still running on it are when they end.
    pub fn retire(&self) {
        if let Backend::Wasm(handler) = &self.backend {
            handler.retire();
        }
    }

    /// Answers `request`; with the answer, the outcomes the plugin counted
    /// (native handlers count none).
    pub async fn call(&self, request: &Message, context: &CallContext) -> Result<(Message, Outcomes), PluginError> {
        match &self.backend {
            Backend::Wasm(handler) => handler.call(request, context).await,
            Backend::Native(handler) => handler(request).map(|message| (message, Outcomes::default())).map_err(PluginError::Handler),
        }
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("version", &self.version).finish_non_exhaustive()
    }
}

/// The loaded plugins, by name.
pub struct Plugins {
    /// Compiles and links plugin files; `None` when only native handlers
    /// are served.
    runtime: Option<Runtime>,
    plugins: ArcSwap<HashMap<String, Arc<Plugin>>>,
    /// The last refused file of each name: shown by the admin endpoint, and
    /// so that a watcher seeing the same broken bytes again does not compile
    /// and log them again.
    refused: Mutex<HashMap<String, Refusal>>,
    /// Plugins whose components may not import WASI (`[plugins.NAME] wasi
    /// = false`, read at start-up).
    wasi_refused: BTreeSet<String>,
    metrics: Arc<Metrics>,
}

/// A plugin file that could not be loaded.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The refused bytes' version, when there were bytes to refuse.
    pub version: Option<Digest>,
    pub error: String,
    pub at: SystemTime,
}

impl Plugins {
    /// A registry that loads plugin files with `runtime` (if any) and counts
    /// loads and refusals in `metrics`.
    pub fn new(runtime: Option<Runtime>, metrics: Arc<Metrics>) -> Self {
        Self { runtime, plugins: ArcSwap::default(), refused: Mutex::default(), wasi_refused: BTreeSet::new(), metrics }
    }

    /// This registry, refusing components that import WASI for the plugins
    /// named in `plugins`.
    pub fn refusing_wasi_to(mut self, plugins: BTreeSet<String>) -> Self {
        self.wasi_refused = plugins;
        self
    }

    /// The runtime that runs the plugin files, if this registry loads any.
    pub fn runtime(&self) -> Option<&Runtime> {
        self.runtime.as_ref()
    }

    /// The last refusal of each plugin name whose file is still refused.
    pub fn refusals(&self) -> HashMap<String, Refusal> {
        self.refused_lock().clone()
    }

    /// The current version of plugin `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.load().get(name).cloned()
    }

    /// Every loaded plugin, by name.
    pub fn list(&self) -> Vec<Arc<Plugin>> {
        let mut all: Vec<_> = self.plugins.load().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Makes `plugin` the current version of its name; returns the one it
    /// replaced, retired.
    pub fn insert(&self, plugin: Plugin) -> Option<Arc<Plugin>> {
        self.metrics.serving(&plugin.name, &plugin.version_label);
        let plugin = Arc::new(plugin);
        let old = self.plugins.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(plugin.name.clone(), Arc::clone(&plugin));
            next
        });
        retired(old.get(&plugin.name))
    }

    /// Unloads plugin `name`; requests already running on it finish.
    pub fn remove(&self, name: &str) -> Option<Arc<Plugin>> {
        let old = self.plugins.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(name);
            next
        });
        retired(old.get(name))
    }

    /// Compiles and links the component `bytes`, whose SHA-256 is `version`
    /// (off the async runtime), and swaps it in as plugin `name`; `source`
    /// (a file, a registry tag) is named in the log. On error nothing
    /// changes: the version already loaded, if any, keeps serving. Bytes
    /// that are the version already loaded, or the version refused last,
    /// change nothing.
    pub async fn load(&self, name: &str, version: Digest, bytes: Vec<u8>, source: &str) -> anyhow::Result<()> {
        let same_as_refused = self.refused_lock().get(name).is_some_and(|r| r.version == Some(version));
        if same_as_refused || self.get(name).is_some_and(|p| p.version == version) {
            return Ok(());
        }
        let runtime = self.runtime.clone().context("this server runs native handlers only; it cannot load plugin files")?;
        if bytes.len() >= COMPILE_NOTICE_SIZE && !runtime.is_compiled(version) {
            // Seconds of silence otherwise; the line after says how long it took.
            tracing::info!("plugin {name}: compiling {} of WebAssembly for this machine (not in the compiled-code cache) ...", megabytes(bytes.len()));
        }
        let wasi = if self.wasi_refused.contains(name) { Wasi::Refused } else { Wasi::Allowed };
        let loaded = {
            let name = name.to_owned();
            tokio::task::spawn_blocking(move || Plugin::load(&runtime, &name, version, &bytes, wasi)).await?
        };
        let plugin = match loaded {
            Ok(plugin) => {
                self.refused_lock().remove(name);
                plugin
            }
            Err(e) => {
                // One line in the log, in `/plugins` and for `wasmux call`:
                // wasmparser's messages spread what they expected over
                // several (`expected=[\n    0x0, …]`).
                let error = anyhow::Error::from(e);
                return Err(self.refuse(name, Some(version), &one_line(&format!("{error:#}")), source));
            }
        };
        let cost = match plugin.origin {
            CodeOrigin::Compiled => format!("compile {} ms", plugin.compile_time.as_millis()),
            CodeOrigin::Memory => "compile 0 ms: compiled earlier".to_owned(),
            CodeOrigin::Disk => format!("compile 0 ms: read compiled code from the cache in {} ms", plugin.compile_time.as_millis()),
        };
        self.metrics.plugin_loaded(name);
        match self.insert(plugin) {
            Some(old) => tracing::info!("plugin {name}: {} -> {} ({cost})", old.version.short(), version.short()),
            None => tracing::info!("plugin {name}: loaded {} ({cost})", version.short()),
        }
        Ok(())
    }

    /// Records that what `source` offered as plugin `name` (at `version`,
    /// if its bytes are known) cannot be loaded, and why: counted, shown by
    /// the admin endpoint, and returned as the error to log.
    pub fn refuse(&self, name: &str, version: Option<Digest>, why: &str, source: &str) -> anyhow::Error {
        self.metrics.plugin_load_failed(name);
        let keeps = if self.get(name).is_some() { "the version loaded before keeps serving" } else { "it is not loaded" };
        let error = anyhow::anyhow!("plugin {name}: refused {source} ({keeps}): {why}");
        self.refused_lock().insert(name.to_owned(), Refusal { version, error: format!("{error:#}"), at: SystemTime::now() });
        error
    }

    fn refused_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Refusal>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unloads plugin `name` because of `why` (its source is gone).
    pub fn unload(&self, name: &str, why: &str) -> Option<Arc<Plugin>> {
        self.refused_lock().remove(name);
        let old = self.remove(name)?;
        tracing::info!("plugin {name}: unloaded {} ({why})", old.version.short());
        Some(old)
    }
}

/// `text` with every run of whitespace that holds a line break made one
/// space: an error read in a log, one line per event.
pub fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" ")
}

/// A component at least this large is announced before it is compiled: a
/// Python or JavaScript one (12 to 32 MB) takes seconds; a Rust one (tens
/// of kilobytes) milliseconds.
pub const COMPILE_NOTICE_SIZE: usize = 1 << 20;

/// `bytes` in megabytes, as the log shows sizes: `32.1 MB`.
pub fn megabytes(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The version a swap or an unload replaced, after retiring its instances.
fn retired(old: Option<&Arc<Plugin>>) -> Option<Arc<Plugin>> {
    let old = old.cloned()?;
    old.retire();
    Some(old)
}
