//! The configuration file ─▶ settings reloads, while serving.
//!
//! When the configuration file changes it is parsed and validated, then
//! swapped in whole, or refused whole with the error and its line; an
//! empty file is refused too ([`Settings::from_text`]). SIGHUP reloads it
//! at once ([`reload_now`]). A watcher of its own, apart from the plugin
//! sources': a plugin that takes seconds to compile never holds up a
//! configuration change (a revoked token, say), and files are read without
//! blocking ([`crate::files`]).
//!
//! The configuration may be reached through symbolic links, as Kubernetes
//! mounts a ConfigMap: `config -> ..data/config`, where `..data` is a link
//! to a directory, replaced atomically by a new one. So both the directory
//! of the path as given and the directory of the file it resolves to are
//! watched (the latter followed as it moves), any change in either makes
//! the file be read again, and it is reloaded if its text changed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::config::{self, Settings};
use crate::service::Service;
use crate::watcher::{FileWatcher, canonical_dir};

/// Watching in progress; dropping it stops the watching.
pub struct ConfigWatch {
    _watcher: Arc<FileWatcher>,
}

/// Turns a configuration file's text into settings: [`Settings::from_text`]
/// ([`parse_file`]), or that plus settings the server adds of its own
/// (`wasmux dev` adds the source it serves).
pub type Parse = Arc<dyn Fn(&str) -> anyhow::Result<Settings> + Send + Sync>;

/// The settings of the file's text alone.
pub fn parse_file() -> Parse {
    Arc::new(Settings::from_text)
}

/// Starts watching the configuration file at `path`; changes are made
/// settings by `parse` and applied by a task on the current tokio runtime.
///
/// Once watching, the file is read again, and applied now if its text is
/// not the one the server started with: the server read it before it
/// compiled its plugins (seconds, for Python or JavaScript ones), and a
/// change made meanwhile (a token revoked) must not wait for the next one.
pub async fn watch(path: &Path, service: Arc<Service>, parse: Parse) -> anyhow::Result<ConfigWatch> {
    let mut config = ConfigPaths::new(path)?;
    let (watcher, changes) = FileWatcher::new(|_| true)?;
    let watcher = Arc::new(watcher);
    for dir in config.dirs() {
        watcher.watch(&dir, false)?;
    }
    let mut seen = service.settings().source_sha256.map(Seen::Text);
    let weak = Arc::downgrade(&watcher);
    check_config(&mut config, &mut seen, &service, &parse, &weak).await;
    tokio::spawn(apply_config_changes(changes, config, seen, service, parse, weak));
    Ok(ConfigWatch { _watcher: watcher })
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
    mut seen: Option<Seen>,
    service: Arc<Service>,
    parse: Parse,
    watcher: Weak<FileWatcher>,
) {
    while let Some(paths) = rx.recv().await {
        if paths.iter().any(|path| config.affected_by(path)) {
            check_config(&mut config, &mut seen, &service, &parse, &watcher).await;
        }
    }
}

/// Reads the configuration file, and reloads it if its text is not what
/// was `seen` last.
async fn check_config(config: &mut ConfigPaths, seen: &mut Option<Seen>, service: &Service, parse: &Parse, watcher: &Weak<FileWatcher>) {
    let path = config.path.clone();
    let read = tokio::task::spawn_blocking(move || config::read_text(&path)).await;
    let read = read.unwrap_or_else(|e| Err(anyhow::anyhow!("reading it failed: {e}")));
    let now = match &read {
        Ok(text) => Seen::Text(Sha256::digest(text.as_bytes()).into()),
        Err(e) => Seen::Unreadable(format!("{e:#}")),
    };
    if seen.as_ref() != Some(&now) {
        *seen = Some(now);
        reload_config(&config.path, read, service, parse);
    }
    follow_target(config, watcher);
}

/// Reads the configuration file at `path` again, now, and swaps it in
/// (made settings by `parse`), or logs why not (the configuration in force
/// stays): what SIGHUP does.
pub async fn reload_now(path: &Path, service: &Service, parse: &Parse) {
    let file = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || config::read_text(&file)).await;
    reload_config(path, read.unwrap_or_else(|e| Err(anyhow::anyhow!("reading it failed: {e}"))), service, parse);
}

fn reload_config(path: &Path, text: anyhow::Result<String>, service: &Service, parse: &Parse) {
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
    let applied = parse(&text)
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
fn follow_target(config: &mut ConfigPaths, watcher: &Weak<FileWatcher>) {
    let target_dir = resolved_dir(&config.path, &config.dir);
    if target_dir == config.target_dir {
        return;
    }
    let Some(watcher) = watcher.upgrade() else { return };
    if let Some(old) = &config.target_dir {
        // It may be gone already (an old ConfigMap version).
        watcher.unwatch(old);
    }
    if let Some(new) = &target_dir
        && let Err(e) = watcher.watch(new, false)
    {
        tracing::warn!("{e:#}; changes made there in place are not seen");
    }
    config.target_dir = target_dir;
}
