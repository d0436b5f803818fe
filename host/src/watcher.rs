//! Watching files: each batch of changed paths, debounced per file
//! (notify), for the directory source, the configuration reload and
//! `wasmux dev`.
//!
//! Opening and reading a file (as loading it does) is reported by the
//! operating system too; only changes come out of a [`FileWatcher`],
//! else a load would make the watcher load again, in a loop.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

/// Quiet time after a file's last change before it is read: long enough
/// for most writers to finish, short enough to swap promptly.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Watches directories; dropping it stops the watching (and closes the
/// receiver made with it).
pub struct FileWatcher {
    debouncer: Mutex<Debouncer<notify::RecommendedWatcher, RecommendedCache>>,
}

impl FileWatcher {
    /// A watcher that sends each batch of changed paths that `wanted`
    /// keeps, in order, to the receiver returned with it.
    pub fn new(wanted: impl Fn(&Path) -> bool + Send + 'static) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<Vec<PathBuf>>)> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| match result {
            Ok(events) => {
                let paths: Vec<PathBuf> = events
                    .into_iter()
                    .filter(|e| !matches!(e.event.kind, EventKind::Access(_)))
                    .flat_map(|e| e.event.paths)
                    .filter(|path| wanted(path))
                    .collect();
                if !paths.is_empty() {
                    let _ = sender.send(paths);
                }
            }
            Err(errors) => errors.iter().for_each(|e| tracing::error!("watching files failed: {e}")),
        })
        .context("cannot start watching files")?;
        Ok((Self { debouncer: Mutex::new(debouncer) }, receiver))
    }

    /// Watches `dir`: its entries, or, if `recursive`, the whole tree.
    pub fn watch(&self, dir: &Path, recursive: bool) -> anyhow::Result<()> {
        let mode = if recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        self.lock().watch(dir, mode).with_context(|| format!("cannot watch {}", dir.display()))?;
        tracing::info!("watching {} for changes", dir.display());
        Ok(())
    }

    /// Stops watching `dir` (which may be gone already).
    pub fn unwatch(&self, dir: &Path) {
        let _ = self.lock().unwatch(dir);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Debouncer<notify::RecommendedWatcher, RecommendedCache>> {
        self.debouncer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `dir` made absolute and free of symlinks (when it exists), so it can be
/// compared with the paths the watcher reports.
pub fn canonical_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(canonical) = dir.canonicalize() {
        return Ok(canonical);
    }
    std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))
}
