//! The plugins being served: name ─▶ the current [`Plugin`] version, and
//! what is known about each (its [`Version`], size, load time, how its code
//! was had).
//!
//! The map is swapped whole (arc-swap), so a request looks its plugin up
//! once, without a lock, and keeps that version to the end even if a new
//! one is swapped in meanwhile.
//!
//! A plugin's name is its file's name without `.wasm`: `search.wasm` serves
//! as `search`. Names may hold letters, digits and `-_.@`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::files::{self, Links};
use crate::message::Message;
use crate::metrics::Metrics;
pub use crate::native::NativeHandler;
use crate::runtime::{CallContext, LoadInfo, Origin, Outcomes, PluginError, Runtime, Wasi, WasmHandler};

/// A loaded plugin: one version of one component, compiled and linked, or
/// a handler compiled into the host.
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
        let version = Version::of(format!("native:{name}").as_bytes());
        Self {
            name: name.to_owned(),
            version,
            version_label: version.to_string().into(),
            size: 0,
            loaded_at: SystemTime::now(),
            compile_time: Duration::ZERO,
            origin: Origin::Compiled,
            imports_wasi: false,
            backend: Backend::Native(handler),
        }
    }

    /// Compiles and links `bytes` as plugin `name` (CPU-heavy: call this off
    /// the async runtime); a component importing WASI is refused if `wasi`
    /// says so.
    pub fn load(runtime: &Runtime, name: &str, bytes: &[u8], wasi: Wasi) -> wasmtime::Result<Self> {
        let version = Version::of(bytes);
        let label: Arc<str> = version.to_string().into();
        let (handler, LoadInfo { compile_time, origin, imports_wasi }) = runtime.load(name, &label, bytes, version.0, wasi)?;
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
        hex::encode(self.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..6]))
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The loaded plugins, by name.
pub struct PluginRegistry {
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
    pub version: Option<Version>,
    pub error: String,
    pub at: SystemTime,
}

impl PluginRegistry {
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

    /// Reads, compiles and links the component at `path` (off the async
    /// runtime) and swaps it in under the file's name. On error nothing
    /// changes: the version already loaded, if any, keeps serving. A file
    /// whose bytes are the version already loaded changes nothing either.
    ///
    /// Only a regular file (or a link to one) of at most `max_size` bytes is
    /// read: a FIFO, a device or a directory named `NAME.wasm` is refused
    /// without being opened, so it cannot hold up the caller.
    pub async fn load_file(&self, path: &Path, max_size: u64) -> anyhow::Result<()> {
        let name = plugin_name(path).with_context(|| format!("{} is not named NAME.wasm", path.display()))?;
        let bytes = {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || files::read_regular(&path, max_size, Links::Follow)).await?
        };
        let bytes = bytes.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::FileTooLarge { " (limits.max-plugin-size)" } else { "" };
            anyhow::anyhow!("plugin {name}: skipped {}: {e}{hint}", path.display())
        })?;
        self.load_bytes(&name, bytes, &path.display().to_string()).await
    }

    /// Compiles and links the component `bytes` (off the async runtime) and
    /// swaps it in as plugin `name`; `source` (a file, a registry tag) is
    /// named in the log. On error nothing changes: the version already
    /// loaded, if any, keeps serving. Bytes that are the version already
    /// loaded, or the version refused last, change nothing.
    pub async fn load_bytes(&self, name: &str, bytes: Vec<u8>, source: &str) -> anyhow::Result<()> {
        let version = Version::of(&bytes);
        let same_as_refused = self.refused_lock().get(name).is_some_and(|r| r.version == Some(version));
        if same_as_refused || self.get(name).is_some_and(|p| p.version == version) {
            return Ok(());
        }
        let runtime = self.runtime.clone().context("this server runs native handlers only; it cannot load plugin files")?;
        let wasi = if self.wasi_refused.contains(name) { Wasi::Refused } else { Wasi::Allowed };
        let loaded = {
            let name = name.to_owned();
            tokio::task::spawn_blocking(move || Plugin::load(&runtime, &name, &bytes, wasi)).await?
        };
        let plugin = match loaded {
            Ok(plugin) => {
                self.refused_lock().remove(name);
                plugin
            }
            Err(e) => {
                let error = anyhow::Error::from(e);
                return Err(self.refuse(name, Some(version), &format!("{error:#}"), source));
            }
        };
        let cost = match plugin.origin {
            Origin::Compiled => format!("compile {} ms", plugin.compile_time.as_millis()),
            Origin::Memory => "compile 0 ms: compiled earlier".to_owned(),
            Origin::Disk => format!("compile 0 ms: read compiled code from the cache in {} ms", plugin.compile_time.as_millis()),
        };
        self.metrics.plugin_loaded(name);
        match self.insert(plugin) {
            Some(old) => tracing::info!("plugin {name}: {} -> {version} ({cost})", old.version),
            None => tracing::info!("plugin {name}: loaded {version} ({cost})"),
        }
        Ok(())
    }

    /// Records that what `source` offered as plugin `name` (at `version`,
    /// if its bytes are known) cannot be loaded, and why: counted, shown by
    /// the admin endpoint, and returned as the error to log.
    pub fn refuse(&self, name: &str, version: Option<Version>, why: &str, source: &str) -> anyhow::Error {
        self.metrics.plugin_load_failed(name);
        let keeps = if self.get(name).is_some() { "the version loaded before keeps serving" } else { "it is not loaded" };
        let error = anyhow::anyhow!("plugin {name}: refused {source} ({keeps}): {why}");
        self.refused_lock().insert(name.to_owned(), Refusal { version, error: format!("{error:#}"), at: SystemTime::now() });
        error
    }

    fn refused_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Refusal>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unloads the plugin of a file that is gone.
    pub fn unload_file(&self, path: &Path) -> Option<Arc<Plugin>> {
        let name = plugin_name(path)?;
        self.unload(&name, &format!("{} was removed", path.display()))
    }

    /// Unloads plugin `name` because of `why` (its source is gone).
    pub fn unload(&self, name: &str, why: &str) -> Option<Arc<Plugin>> {
        self.refused_lock().remove(name);
        let old = self.remove(name)?;
        tracing::info!("plugin {name}: unloaded {} ({why})", old.version);
        Some(old)
    }

    /// Loads every `NAME.wasm` in `dir` of at most `max_size` bytes. A file
    /// that fails to load is logged and skipped; the rest still load.
    /// Returns how many loaded.
    pub async fn load_dir(&self, dir: &Path, max_size: u64) -> anyhow::Result<usize> {
        let mut loaded = 0;
        for path in plugin_files(dir)? {
            match self.load_file(&path, max_size).await {
                Ok(_) => loaded += 1,
                Err(e) => tracing::error!("{e:#}"),
            }
        }
        Ok(loaded)
    }
}

/// The version a swap or an unload replaced, after retiring its instances.
fn retired(old: Option<&Arc<Plugin>>) -> Option<Arc<Plugin>> {
    let old = old.cloned()?;
    old.retire();
    Some(old)
}

/// The entries of `dir` named `NAME.wasm`, sorted: files, and whatever
/// else is so named, for [`PluginRegistry::load_file`] to refuse aloud.
pub fn plugin_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the plugin directory {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| plugin_name(path).is_some())
        .collect();
    files.sort();
    Ok(files)
}

/// The plugin name for a file: `dir/search.wasm` ─▶ `search`. `None` for
/// other files, hidden files and names with unusual characters.
pub fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let valid = !stem.is_empty()
        && !stem.starts_with('.')
        && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    valid.then(|| stem.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        assert_eq!(plugin_name(Path::new("/p/search.wasm")).as_deref(), Some("search"));
        assert_eq!(plugin_name(Path::new("binary-echo.wasm")).as_deref(), Some("binary-echo"));
        assert_eq!(plugin_name(Path::new("search@v2.wasm")).as_deref(), Some("search@v2"));
        assert_eq!(plugin_name(Path::new(".search.wasm.tmp")), None);
        assert_eq!(plugin_name(Path::new(".hidden.wasm")), None);
        assert_eq!(plugin_name(Path::new("search.wat")), None);
        assert_eq!(plugin_name(Path::new("sp ace.wasm")), None);
    }
}
