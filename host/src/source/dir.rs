//! A plugin directory: every `NAME.wasm` in it is plugin `NAME`.
//!
//! When `NAME.wasm` appears or changes, by an atomic rename or an in-place
//! write, its bytes are reported as a [`Change::Load`]; if it cannot be
//! read (not a regular file, over `max-plugin-size`) the reason is a
//! [`Change::Refused`], and the version before keeps serving, until a later
//! change makes the file whole. When it disappears, the plugin is
//! [`Change::Unload`]ed. Only regular files (or links to one) are read, and
//! without blocking ([`crate::files`]): a FIFO, a device or a directory
//! named `NAME.wasm` is refused without being opened, so nothing in the
//! directory can hold the source up. A file named like a plugin that
//! cannot be one (`we ird.wasm`, `UPPER.WASM`) is a [`Change::Skipped`],
//! said once while it stays; hidden files are not looked at.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::change::{Change, Provenance};
use crate::digest::Digest;
use crate::files::{self, Links};
use crate::watcher::{FileWatcher, canonical_dir};

/// A directory of plugin files.
pub struct DirSource {
    dir: PathBuf,
    /// The largest file read, asked at each read (`limits.max-plugin-size`
    /// may be reloaded).
    max_size: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// The files skipped as no plugin's, and said so: each is logged once
    /// while it stays.
    skipped: HashSet<PathBuf>,
}

impl DirSource {
    pub fn new(dir: PathBuf, max_size: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self { dir, max_size: Arc::new(max_size), skipped: HashSet::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every `NAME.wasm` in the directory, read, and a [`Change::Skipped`]
    /// for each file named like a plugin that cannot be one.
    pub async fn initial(&mut self) -> anyhow::Result<Vec<Change>> {
        let mut changes = Vec::new();
        for path in candidate_files(&self.dir)? {
            changes.extend(self.read(path).await);
        }
        Ok(changes)
    }

    /// Starts watching the directory. Called before [`DirSource::initial`]
    /// reads it, so that a file written while the server starts (its
    /// plugins may take seconds to compile) is seen: its change waits in
    /// the [`DirWatch`] until [`DirSource::follow`] reads it.
    pub fn watch(&self) -> anyhow::Result<DirWatch> {
        // The watcher's own error for a missing directory is "No path was
        // found. about [...]": say what is wrong before it is asked.
        std::fs::metadata(&self.dir).map_err(|e| unreadable(&self.dir, &e))?;
        let dir = canonical_dir(&self.dir)?;
        let wanted = dir.clone();
        let (watcher, batches) = FileWatcher::new(move |path| path.parent() == Some(wanted.as_path()) && looks_like_a_plugin(path))?;
        watcher.watch(&dir, false)?;
        Ok(DirWatch { watcher, batches })
    }

    /// Follows the directory `watch` watches until `stop`, sending a change
    /// for each plugin file written, renamed into place or removed since
    /// the watching started.
    pub fn follow(mut self, watch: DirWatch, changes: mpsc::UnboundedSender<Change>, stop: CancellationToken) -> JoinHandle<()> {
        let DirWatch { watcher, mut batches } = watch;
        tokio::spawn(async move {
            // Owned by the task: watching stops when it ends.
            let _watcher = watcher;
            loop {
                let batch = tokio::select! {
                    () = stop.cancelled() => return,
                    batch = batches.recv() => match batch {
                        Some(batch) => batch,
                        None => return,
                    },
                };
                // Each file once per batch, in name order.
                for path in batch.into_iter().collect::<BTreeSet<PathBuf>>() {
                    if let Some(change) = self.read(path).await
                        && changes.send(change).is_err()
                    {
                        return;
                    }
                }
            }
        })
    }

    /// What the file at `path` says now ([`read`]); for a file named like
    /// a plugin that cannot be one (`we ird.wasm`, `UPPER.WASM`), a
    /// [`Change::Skipped`] the first time it is seen, and nothing after,
    /// until it is removed and comes back.
    async fn read(&mut self, path: PathBuf) -> Option<Change> {
        if plugin_name(&path).is_some() {
            return read(path, (self.max_size)()).await;
        }
        if std::fs::symlink_metadata(&path).is_err() {
            self.skipped.remove(&path);
            return None;
        }
        let why = not_a_plugin(&path)?;
        self.skipped.insert(path.clone()).then_some(Change::Skipped { path, why })
    }
}

/// A directory's watcher, started by [`DirSource::watch`]; the changes it
/// saw wait in it until [`DirSource::follow`].
pub struct DirWatch {
    watcher: FileWatcher,
    batches: mpsc::UnboundedReceiver<Vec<PathBuf>>,
}

/// What the file at `path` says now: its bytes, why they cannot be read,
/// or that it is gone. `None` for a file that is not a plugin's.
async fn read(path: PathBuf, max_size: u64) -> Option<Change> {
    let name = plugin_name(&path)?;
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || files::read_regular(&path, max_size, Links::Follow)).await
    };
    let read = read.unwrap_or_else(|e| Err(std::io::Error::other(format!("reading it failed: {e}"))));
    Some(match read {
        Ok(bytes) => Change::Load { name, digest: Digest::of(&bytes), bytes, from: Provenance::File(path) },
        // A link whose target is missing is there, and says so: it may be
        // a link swap half done (the version before keeps serving).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_symlink() => {
            let target = std::fs::read_link(&path).map(|target| format!(" to {}", target.display())).unwrap_or_default();
            Change::Refused { name, digest: None, error: format!("a link{target}, which does not exist"), from: Provenance::File(path) }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Change::Unload { why: format!("{} was removed", path.display()), name },
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::FileTooLarge { " (limits.max-plugin-size)" } else { "" };
            Change::Refused { name, digest: None, error: format!("{e}{hint}"), from: Provenance::File(path) }
        }
    })
}

/// The entries of `dir` that look like plugins ([`looks_like_a_plugin`]),
/// sorted: files, and whatever else is so named, to be refused or skipped
/// aloud.
fn candidate_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| unreadable(dir, &e))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|entry| entry.ok().map(|e| e.path())).filter(|path| looks_like_a_plugin(path)).collect();
    files.sort();
    Ok(files)
}

/// Why the plugin directory `dir` cannot be read, in one line, the same
/// whether it is watched or not. A missing one is most often
/// target/plugins in a checkout where the plugins are not built yet.
fn unreadable(dir: &Path, error: &std::io::Error) -> anyhow::Error {
    match error.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "the plugin directory {} does not exist (in a checkout of wasmux, `cargo xtask plugins` builds the plugins into target/plugins)",
            dir.display()
        ),
        _ => anyhow::anyhow!("cannot read the plugin directory {}: {error}", dir.display()),
    }
}

/// Whether the file at `path` is meant as a plugin: its name ends in
/// `.wasm`, in any case, and is not hidden. A hidden file (`.search.wasm`)
/// is what a deploy tool writes before it renames it into place, and is
/// ignored without a word; a name that is meant as a plugin's but is not
/// one is said to be skipped ([`not_a_plugin`]).
fn looks_like_a_plugin(path: &Path) -> bool {
    let Some(name) = path.file_name() else { return false };
    let name = name.as_encoded_bytes();
    name.first() != Some(&b'.') && name.len() > ".wasm".len() && name[name.len() - ".wasm".len()..].eq_ignore_ascii_case(b".wasm")
}

/// Why a file that [`looks_like_a_plugin`] is no plugin, as the log says
/// it; `None` when it is one.
fn not_a_plugin(path: &Path) -> Option<String> {
    if plugin_name(path).is_some() {
        return None;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if path.extension().is_some_and(|extension| extension != "wasm") {
        return Some(format!("not a plugin file name: {name:?} does not end in `.wasm` (lower case)"));
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    Some(format!("not a plugin name: {stem:?} (letters, digits and `-_.@`, not starting with `.`)"))
}

/// The plugin name for a file: `dir/search.wasm` ─▶ `search`. `None` for
/// other files, hidden files and names with unusual characters.
pub fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    // The rule `wasmux build` checks too, so that it never writes a plugin the server skips.
    wasmux_files::is_plugin_name(stem).then(|| stem.to_owned())
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

    #[tokio::test]
    async fn files_are_loads_refusals_or_unloads() {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("b.wasm"), b"bytes of b").expect("write");
        std::fs::write(dir.path().join("big.wasm"), b"eleven bytes").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"not a plugin").expect("write");
        let mut source = DirSource::new(dir.path().to_owned(), || 11);
        let changes = source.initial().await.expect("read");
        let [Change::Load { name, digest, bytes, .. }, Change::Refused { name: big, error, .. }] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        assert_eq!((name.as_str(), bytes.as_slice(), *digest), ("b", &b"bytes of b"[..], Digest::of(b"bytes of b")));
        assert_eq!((big.as_str(), error.as_str()), ("big", "12 bytes or more, over the limit of 11 (limits.max-plugin-size)"));
        let gone = read(dir.path().join("gone.wasm"), 11).await;
        assert!(matches!(&gone, Some(Change::Unload { name, .. }) if name == "gone"), "{gone:?}");
    }
}
