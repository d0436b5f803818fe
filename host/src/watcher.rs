//! Files ─▶ registry and settings updates, while serving.
//!
//! The plugin directory and the configuration file's directory are watched
//! (notify, debounced per file). When `NAME.wasm` appears or changes, by an
//! atomic rename or an in-place write, it is loaded and swapped in; if it
//! cannot be loaded (half-written, not a component, wrong world, not a
//! regular file, over `max-plugin-size`) the reason is logged and the
//! version before keeps serving, until a later change makes the file whole.
//! When it disappears, the plugin is unloaded. When the configuration file
//! changes it is parsed and validated, then swapped in whole, or refused
//! whole with the error and its line; an empty file is refused too
//! ([`Settings::from_text`]).
//!
//! Plugin files and the configuration are handled by two tasks, so that a
//! plugin that takes seconds to compile never holds up a configuration
//! change (a revoked token, say), and nothing in the plugin directory can
//! hold up either for long: files are read without blocking
//! ([`crate::files`]).
//!
//! [`watch_sources`] watches a plugin project's source for `wasmux dev`,
//! which rebuilds it into the plugin directory this watcher serves from.
//!
//! The configuration may be reached through symbolic links, as Kubernetes
//! mounts a ConfigMap: `config -> ..data/config`, where `..data` is a link
//! to a directory, replaced atomically by a new one. So both the directory
//! of the path as given and the directory of the file it resolves to are
//! watched (the latter followed as it moves), any change in either makes
//! the file be read again, and it is reloaded if its text changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::config::{self, Settings};
use crate::registry;
use crate::service::Service;

/// Quiet time after a file's last change before it is read: long enough
/// for most writers to finish, short enough to swap promptly.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// What to watch.
pub struct Watched {
    /// The `--plugins` directory.
    pub plugins: Option<PathBuf>,
    /// The `--config` file.
    pub config: Option<PathBuf>,
}

type FileWatcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Watching in progress; dropping it stops the watching.
pub struct Watcher {
    _debouncer: Arc<Mutex<FileWatcher>>,
}

/// Starts watching; changes are applied by tasks on the current tokio runtime.
pub fn watch(watched: Watched, service: Arc<Service>) -> anyhow::Result<Watcher> {
    let plugins = watched.plugins.map(|dir| canonical_dir(&dir)).transpose()?;
    let config = watched.config.map(|file| ConfigPaths::new(&file)).transpose()?;

    let (plugin_tx, plugin_rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let (config_tx, config_rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| match result {
        Ok(events) => {
            // Opening and reading a file (as loading it does) is reported
            // too; only changes matter.
            let paths: Vec<PathBuf> = events
                .into_iter()
                .filter(|e| !matches!(e.event.kind, EventKind::Access(_)))
                .flat_map(|e| e.event.paths)
                .collect();
            if !paths.is_empty() {
                let _ = config_tx.send(paths.clone());
                let _ = plugin_tx.send(paths);
            }
        }
        Err(errors) => errors.iter().for_each(|e| tracing::error!("watching files failed: {e}")),
    })
    .context("cannot start watching files")?;
    let debouncer = Arc::new(Mutex::new(debouncer));

    let config_dirs = config.as_ref().map(ConfigPaths::dirs).unwrap_or_default();
    let dirs: BTreeSet<PathBuf> = plugins.iter().cloned().chain(config_dirs).collect();
    for dir in &dirs {
        watch_dir(&debouncer, dir)?;
    }

    if let Some(plugins) = plugins {
        tokio::spawn(apply_plugin_changes(plugin_rx, plugins, Arc::clone(&service)));
    }
    if let Some(config) = config {
        let running = service.settings().source_sha256;
        tokio::spawn(apply_config_changes(config_rx, config, running, service, Arc::downgrade(&debouncer)));
    }
    Ok(Watcher { _debouncer: debouncer })
}

/// Watches the tree under `dir`, recursively: each batch of changed paths
/// that `wanted` keeps (a plugin project's build inputs) comes out of the
/// receiver, debounced like plugin files. Dropping the [`Watcher`] stops it.
pub fn watch_sources(
    dir: &Path,
    wanted: impl Fn(&Path) -> bool + Send + 'static,
) -> anyhow::Result<(Watcher, mpsc::UnboundedReceiver<Vec<PathBuf>>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| match result {
        Ok(events) => {
            let paths: Vec<PathBuf> = events
                .into_iter()
                .filter(|e| !matches!(e.event.kind, EventKind::Access(_)))
                .flat_map(|e| e.event.paths)
                .filter(|path| wanted(path))
                .collect();
            if !paths.is_empty() {
                let _ = tx.send(paths);
            }
        }
        Err(errors) => errors.iter().for_each(|e| tracing::error!("watching files failed: {e}")),
    })
    .context("cannot start watching files")?;
    debouncer.watch(dir, RecursiveMode::Recursive).with_context(|| format!("cannot watch {}", dir.display()))?;
    Ok((Watcher { _debouncer: Arc::new(Mutex::new(debouncer)) }, rx))
}

fn watch_dir(debouncer: &Mutex<FileWatcher>, dir: &Path) -> anyhow::Result<()> {
    lock(debouncer)
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    tracing::info!("watching {} for changes", dir.display());
    Ok(())
}

fn lock(debouncer: &Mutex<FileWatcher>) -> std::sync::MutexGuard<'_, FileWatcher> {
    debouncer.lock().unwrap_or_else(|e| e.into_inner())
}

/// Applies changed plugin files one batch at a time, in order.
async fn apply_plugin_changes(mut rx: mpsc::UnboundedReceiver<Vec<PathBuf>>, dir: PathBuf, service: Arc<Service>) {
    while let Some(paths) = rx.recv().await {
        let paths: BTreeSet<PathBuf> = paths.into_iter().collect();
        for path in paths {
            if path.parent() == Some(dir.as_path()) && registry::plugin_name(&path).is_some() {
                apply_plugin_change(&path, &service).await;
            }
        }
    }
}

async fn apply_plugin_change(path: &Path, service: &Service) {
    let registry = service.registry();
    if !path.exists() {
        registry.unload_file(path);
        return;
    }
    let max_size = service.settings().limits.max_plugin_size;
    if let Err(e) = registry.load_file(path, max_size).await {
        tracing::error!("{e:#}");
    }
}

/// The configuration file, and the directories whose changes may change it.
struct ConfigPaths {
    /// As given, in its directory made canonical; a link at the file's own
    /// name is kept, not resolved: this is what is read.
    path: PathBuf,
    /// Its directory (canonical), where a link swap happens.
    dir: PathBuf,
    /// The directory of the file it resolves to, when that is elsewhere:
    /// where an in-place edit of the target happens.
    target_dir: Option<PathBuf>,
}

impl ConfigPaths {
    fn new(given: &Path) -> anyhow::Result<Self> {
        let absolute = std::path::absolute(given).with_context(|| format!("cannot resolve {}", given.display()))?;
        let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name()) else {
            anyhow::bail!("{} is not a file's path", given.display());
        };
        let dir = canonical_dir(dir)?;
        let path = dir.join(name);
        let target_dir = resolved_dir(&path, &dir);
        Ok(Self { path, dir, target_dir })
    }

    fn dirs(&self) -> Vec<PathBuf> {
        std::iter::once(self.dir.clone()).chain(self.target_dir.clone()).collect()
    }

    /// True if a change at `path` may have changed the file.
    fn affected_by(&self, path: &Path) -> bool {
        path.parent().is_some_and(|parent| parent == self.dir || Some(parent) == self.target_dir.as_deref())
    }
}

/// The directory of the file `path` resolves to, if it is not `dir`.
fn resolved_dir(path: &Path, dir: &Path) -> Option<PathBuf> {
    let target = path.canonicalize().ok()?;
    let target_dir = target.parent()?;
    (target_dir != dir).then(|| target_dir.to_path_buf())
}

/// What the configuration file held when it was last looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Text with this SHA-256, applied or refused.
    Text([u8; 32]),
    /// It could not be read, for this reason.
    Unreadable(String),
}

/// Reloads the configuration whenever its text changes, one change at a
/// time.
async fn apply_config_changes(
    mut rx: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    mut config: ConfigPaths,
    running: Option<[u8; 32]>,
    service: Arc<Service>,
    debouncer: Weak<Mutex<FileWatcher>>,
) {
    let mut seen = running.map(Seen::Text);
    while let Some(paths) = rx.recv().await {
        if !paths.iter().any(|path| config.affected_by(path)) {
            continue;
        }
        let path = config.path.clone();
        let read = tokio::task::spawn_blocking(move || config::read_text(&path)).await;
        let read = read.unwrap_or_else(|e| Err(anyhow::anyhow!("reading it failed: {e}")));
        let now = match &read {
            Ok(text) => Seen::Text(Sha256::digest(text.as_bytes()).into()),
            Err(e) => Seen::Unreadable(format!("{e:#}")),
        };
        if seen.as_ref() != Some(&now) {
            seen = Some(now);
            reload_config(&config.path, read, &service);
        }
        follow_target(&mut config, &debouncer);
    }
}

/// Reads the configuration file at `path` again, now, and swaps it in, or
/// logs why not (the configuration in force stays): what SIGHUP does.
pub async fn reload_now(path: &Path, service: &Service) {
    let file = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || config::read_text(&file)).await;
    reload_config(path, read.unwrap_or_else(|e| Err(anyhow::anyhow!("reading it failed: {e}"))), service);
}

fn reload_config(path: &Path, text: anyhow::Result<String>, service: &Service) {
    let text = match text {
        Ok(text) => text,
        Err(e) if !path.exists() => {
            tracing::warn!("configuration {} was removed; keeping the current configuration ({e:#})", path.display());
            return;
        }
        Err(e) => {
            tracing::error!("configuration {} refused, keeping the current one: {e:#}", path.display());
            return;
        }
    };
    let applied = Settings::from_text(&text)
        .with_context(|| format!("invalid configuration in {}", path.display()))
        .and_then(|settings| {
            settings.check_reload_of(&service.settings())?;
            service.reload(settings)
        });
    match applied {
        Ok(()) => tracing::info!("configuration {} reloaded; {}", path.display(), service.settings().describe_routes()),
        Err(e) => tracing::error!("configuration {} refused, keeping the current one: {e:#}", path.display()),
    }
}

/// Watches the directory the configuration now resolves to, if it moved
/// (a new ConfigMap version, a link pointed elsewhere).
fn follow_target(config: &mut ConfigPaths, debouncer: &Weak<Mutex<FileWatcher>>) {
    let target_dir = resolved_dir(&config.path, &config.dir);
    if target_dir == config.target_dir {
        return;
    }
    let Some(debouncer) = debouncer.upgrade() else { return };
    if let Some(old) = &config.target_dir {
        // It may be gone already (an old ConfigMap version).
        let _ = lock(&debouncer).unwatch(old);
    }
    if let Some(new) = &target_dir
        && let Err(e) = watch_dir(&debouncer, new)
    {
        tracing::warn!("{e:#}; changes made there in place are not seen");
    }
    config.target_dir = target_dir;
}

/// `dir` made absolute and free of symlinks (when it exists), so it can be
/// compared with the paths the watcher reports.
fn canonical_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(canonical) = dir.canonicalize() {
        return Ok(canonical);
    }
    std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))
}
