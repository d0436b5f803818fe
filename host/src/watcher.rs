//! Files ─▶ registry and settings updates, while serving.
//!
//! The plugin directory and the configuration file's directory are watched
//! (notify, debounced per file). When `NAME.wasm` appears or changes, by an
//! atomic rename or an in-place write, it is loaded and swapped in; if it
//! cannot be loaded (half-written, not a component, wrong world) the reason
//! is logged and the version before keeps serving, until a later change
//! makes the file whole. When it disappears, the plugin is unloaded. When
//! the configuration file changes it is parsed and validated, then swapped
//! in whole, or refused whole with the error and its line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

use crate::config::Settings;
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

/// Watching in progress; dropping it stops the watching.
pub struct Watcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// Starts watching; changes are applied by a task on the current tokio runtime.
pub fn watch(watched: Watched, service: Arc<Service>) -> anyhow::Result<Watcher> {
    let plugins = watched.plugins.map(|dir| absolute(&dir)).transpose()?;
    let config = watched.config.map(|file| absolute(&file)).transpose()?;

    let (tx, rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| match result {
        Ok(events) => {
            // Opening and reading a file (as loading it does) is reported
            // too; only changes matter.
            let paths: Vec<PathBuf> = events
                .into_iter()
                .filter(|e| !matches!(e.event.kind, EventKind::Access(_)))
                .flat_map(|e| e.event.paths)
                .collect();
            if !paths.is_empty() {
                let _ = tx.send(paths);
            }
        }
        Err(errors) => errors.iter().for_each(|e| tracing::error!("watching files failed: {e}")),
    })
    .context("cannot start watching files")?;

    let dirs: BTreeSet<PathBuf> = plugins.iter().cloned().chain(config.iter().filter_map(|f| f.parent().map(Path::to_path_buf))).collect();
    for dir in &dirs {
        debouncer
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        tracing::info!("watching {} for changes", dir.display());
    }

    tokio::spawn(apply_changes(rx, plugins, config, service));
    Ok(Watcher { _debouncer: debouncer })
}

/// Applies changed paths one batch at a time, in order.
async fn apply_changes(mut rx: mpsc::UnboundedReceiver<Vec<PathBuf>>, plugins: Option<PathBuf>, config: Option<PathBuf>, service: Arc<Service>) {
    while let Some(paths) = rx.recv().await {
        let paths: BTreeSet<PathBuf> = paths.into_iter().collect();
        for path in paths {
            if config.as_deref() == Some(path.as_path()) {
                reload_config(&path, &service);
            } else if plugins.as_deref().is_some_and(|dir| path.parent() == Some(dir)) && registry::plugin_name(&path).is_some() {
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
    if let Err(e) = registry.load_file(path).await {
        tracing::error!("{e:#}");
    }
}

/// Reads the configuration file at `path` again and swaps it in, or logs
/// why not (the configuration in force stays).
pub fn reload_config(path: &Path, service: &Service) {
    if !path.exists() {
        tracing::warn!("configuration {} was removed; keeping the current configuration", path.display());
        return;
    }
    match Settings::load(path).and_then(|settings| service.reload(settings)) {
        Ok(()) => tracing::info!("configuration {} reloaded; {}", path.display(), service.settings().describe_routes()),
        Err(e) => tracing::error!("configuration {} refused, keeping the current one: {e:#}", path.display()),
    }
}

/// `path` made absolute (and free of symlinks, when it exists), so it can be
/// compared with the paths the watcher reports.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(canonical) = path.canonicalize() {
        return Ok(canonical);
    }
    let absolute = std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    match (absolute.parent().and_then(|p| p.canonicalize().ok()), absolute.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.join(name)),
        _ => Ok(absolute),
    }
}
