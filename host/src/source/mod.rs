//! Where plugins come from: a directory of `NAME.wasm` files, or a
//! repository in an OCI registry, each a [`PluginSource`].
//!
//! Every source says what it holds the same way, as [`Change`]s: these
//! bytes are plugin `NAME` now, what is offered as `NAME` cannot be used,
//! `NAME` is gone, the source cannot be reached. [`apply`] is the one place
//! a change becomes a load, a refusal or an unload in the [`Plugins`]
//! served, so every source gets the same hot swap, refusal handling and
//! log lines. A source first reports everything it holds
//! ([`PluginSource::initial`]), then, while it is followed, what changes
//! ([`PluginSource::follow`]); loading (compiling) happens in the task that
//! applies the changes, one at a time, never inside the source.
//!
//! A new kind of source is a file here with those two methods and a
//! variant of [`PluginSource`]; nothing else in the server changes.
//!
//! | file | what |
//! | --- | --- |
//! | `change.rs` | [`Change`], [`Provenance`], [`apply`] |
//! | `dir.rs` | [`DirSource`]: a directory, watched for files written, renamed into place or removed |
//! | `oci/` | [`OciSource`]: a registry repository, polled; its tags, layout, pull cache and poller |

mod change;
pub mod dir;
pub mod oci;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::change::{Change, Provenance, apply};
pub use self::dir::DirSource;
use crate::plugins::Plugins;

/// One place plugins come from.
pub enum PluginSource {
    Dir(DirSource),
    /// Boxed: a registry's client is ten times a directory's size.
    Oci(Box<OciSource>),
}

impl PluginSource {
    /// `--plugins SPEC`: `oci://REGISTRY/REPO` is a registry repository
    /// (pulled into `cache_dir/oci` when given, polled every
    /// `poll_interval`), anything else a directory (files of at most
    /// `max_size()` bytes, asked at each read: a reloaded limit applies to
    /// the next file).
    pub fn open(spec: &str, cache_dir: Option<&Path>, poll_interval: Duration, max_size: impl Fn() -> u64 + Send + Sync + 'static) -> anyhow::Result<Self> {
        if spec.starts_with(oci::SCHEME) {
            let repository = oci::Repository::open(spec, &oci::Options::default())?;
            let cache = cache_dir.map(|dir| oci::PullCache::new(&dir.join("oci"), &repository.name()));
            Ok(Self::Oci(Box::new(OciSource { poller: oci::Poller::new(repository, cache), poll_interval })))
        } else {
            Ok(Self::Dir(DirSource::new(PathBuf::from(spec), max_size)))
        }
    }

    /// The directory, or `REGISTRY/REPO`.
    pub fn describe(&self) -> String {
        match self {
            Self::Dir(dir) => dir.dir().display().to_string(),
            Self::Oci(oci) => oci.poller.repository().name(),
        }
    }

    /// Everything the source holds now. A directory that cannot be read is
    /// an error; a registry that cannot be reached is not (its pull cache
    /// is reported, then [`Change::Unreachable`]).
    pub async fn initial(&mut self) -> anyhow::Result<Vec<Change>> {
        match self {
            Self::Dir(dir) => dir.initial().await,
            Self::Oci(oci) => {
                let mut changes = oci.poller.load_cache();
                changes.extend(oci.poller.poll().await);
                Ok(changes)
            }
        }
    }

    /// Starts following the source, before [`PluginSource::initial`]
    /// reads it: a directory is watched from now on, so that nothing
    /// written while the server starts is missed. (A registry is polled
    /// again after its first poll: nothing to start.)
    pub fn watch(&self) -> anyhow::Result<Watch> {
        match self {
            Self::Dir(dir) => Ok(Watch(Some(dir.watch()?))),
            Self::Oci(_) => Ok(Watch(None)),
        }
    }

    /// Follows the source until `stop`, sending each change since `watch`
    /// started to `changes`.
    pub fn follow(self, watch: Watch, changes: mpsc::UnboundedSender<Change>, stop: CancellationToken) -> anyhow::Result<JoinHandle<()>> {
        match (self, watch.0) {
            (Self::Dir(dir), Some(watch)) => Ok(dir.follow(watch, changes, stop)),
            (Self::Dir(dir), None) => {
                let watch = dir.watch()?;
                Ok(dir.follow(watch, changes, stop))
            }
            (Self::Oci(oci), _) => {
                let OciSource { poller, poll_interval } = *oci;
                Ok(tokio::spawn(poller.run(poll_interval, stop, move |change| {
                    let _ = changes.send(change);
                })))
            }
        }
    }

    /// Loads what the source holds into `plugins`, then, if `follow`,
    /// keeps applying its changes until `stop` (in a task of its own).
    /// Returns how many plugins are loaded. Following starts before the
    /// source is read: a change made while its plugins compile (seconds
    /// for Python or JavaScript ones) is applied after them.
    pub async fn serve(mut self, plugins: Arc<Plugins>, follow: bool, stop: CancellationToken) -> anyhow::Result<usize> {
        let watch = if follow { Some(self.watch()?) } else { None };
        for change in self.initial().await? {
            apply(change, &plugins).await;
        }
        let loaded = plugins.list().len();
        tracing::info!("{loaded} plugins loaded from {}", self.describe());
        if let Some(watch) = watch {
            if let Self::Oci(oci) = &self {
                // The interval in force: `--poll-interval`, else `[source]`'s, else 2 s.
                tracing::info!("{}: polled every {:?} for new versions", self.describe(), oci.poll_interval);
            }
            let (sender, mut changes) = mpsc::unbounded_channel();
            let following = self.follow(watch, sender, stop)?;
            tokio::spawn(async move {
                while let Some(change) = changes.recv().await {
                    apply(change, &plugins).await;
                }
                let _ = following.await;
            });
        }
        Ok(loaded)
    }
}

/// A source's following, started ([`PluginSource::watch`]) before it is
/// first read.
pub struct Watch(Option<dir::DirWatch>);

/// A registry repository, polled for new versions.
pub struct OciSource {
    poller: oci::Poller,
    poll_interval: Duration,
}
