//! What a source reports, and how a report becomes a load, a refusal or
//! an unload.

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::plugins::Plugins;

/// What a source reports.
#[derive(Debug)]
pub enum Change {
    /// Plugin `name` is these bytes now (new, or changed); `digest` is their
    /// SHA-256, computed once by the source where the bytes arrived.
    Load { name: String, digest: Digest, bytes: Vec<u8>, from: Provenance },
    /// What is offered as plugin `name` cannot be used (unreadable, too
    /// large, not the layout a registry must use, a digest that does not
    /// match): the version loaded before, if any, keeps serving. `digest`
    /// when bytes were read, so that the same bytes are not tried again.
    Refused { name: String, digest: Option<Digest>, error: String, from: Provenance },
    /// A file at `path` is named like a plugin but is none (`we ird.wasm`,
    /// `UPPER.WASM`), because of `why`: said once, nothing loaded.
    Skipped { path: PathBuf, why: String },
    /// Plugin `name` is gone from the source: unload it, because of `why`.
    Unload { name: String, why: String },
    /// The source cannot be reached (a registry down); nothing changed.
    /// `serving` plugins stay as they were. Reported when it starts failing.
    Unreachable { source: String, error: String, serving: usize },
    /// The source can be reached again after [`Change::Unreachable`].
    Reachable { source: String },
}

/// Where a plugin's bytes came from: named in the log and in refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// A file of a plugin directory.
    File(PathBuf),
    /// A tag of a registry repository.
    Registry { repository: String, tag: String },
    /// What was pulled from that tag before, from the local pull cache (a
    /// server starting while its registry is down).
    PullCache { repository: String, tag: String },
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Registry { repository, tag } => write!(f, "{repository}:{tag}"),
            Self::PullCache { repository, tag } => write!(f, "{repository}:{tag} (from the local cache)"),
        }
    }
}

/// Applies one change to the plugins served. Errors are logged here: a
/// source's bad file or tag never stops the others.
pub async fn apply(change: Change, plugins: &Plugins) {
    match change {
        Change::Load { name, digest, bytes, from } => {
            if let Err(e) = plugins.load(&name, digest, bytes, &from.to_string()).await {
                tracing::error!("{e:#}");
            }
        }
        Change::Refused { name, digest, error, from } => {
            let error = plugins.refuse(&name, digest, &error, &from.to_string());
            tracing::error!("{error:#}");
        }
        Change::Skipped { path, why } => tracing::warn!("skipped {}: {why}", path.display()),
        Change::Unload { name, why } => {
            plugins.unload(&name, &why);
        }
        Change::Unreachable { source, error, serving } => {
            tracing::warn!("{source} cannot be reached ({error}); serving the {serving} plugins pulled before, from the local cache");
        }
        Change::Reachable { source } => tracing::info!("{source} can be reached again"),
    }
}
