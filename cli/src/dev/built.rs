//! `wasmux dev`'s path for Rust plugins, and for Python and JavaScript
//! ones with `--build`: on every save of a build input
//! ([`Project::is_build_input`]) the project is rebuilt into its `dist/`,
//! where the server's own watcher swaps the new version in, as `wasmux
//! serve` does. What is served is exactly what `wasmux build` makes.
//!
//! Plugins are compiled incrementally ([`CompileMode::Incremental`]): a
//! Python or JavaScript plugin's interpreter is compiled once, and a
//! rebuild compiles only what changed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::mpsc;
use wasmux::config::Settings;
use wasmux::digest::Digest;
use wasmux::watcher::FileWatcher;
use wasmux_toolchain::{BuildOptions, Project};

use super::DevArgs;
use crate::serve::{self, ServeArgs, Serving};

pub(super) async fn serve(args: DevArgs, project: Project, options: BuildOptions, settings: Settings, serving: Serving) -> anyhow::Result<()> {
    let out_dir = project.dir.join("dist");
    std::fs::create_dir_all(&out_dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out_dir.display()))?;
    // Watched before the first build, so that a save during it is not missed.
    let watched = project.clone();
    let (sources, changes) = FileWatcher::new(move |path| watched.is_build_input(path))?;
    sources.watch(&project.dir, true)?;
    tracing::info!("building {} plugin {} in {}", project.language, project.name, project.dir.display());
    if !rebuild(&project, &out_dir, &options).await {
        // The server loads what dist/ holds: a build from before is served.
        if out_dir.join(format!("{}.wasm", project.name)).is_file() {
            tracing::warn!("serving the last build in dist/{}.wasm until a build succeeds; fix the source and save", project.name);
        } else {
            tracing::warn!("serving without plugin {} until a build succeeds; fix the source and save", project.name);
        }
    }
    tokio::spawn(rebuild_on_change(sources, changes, project, out_dir.clone(), options));
    serve::serve_with(ServeArgs::dev(args.listen, Some(&out_dir), args.config, args.data_dir, args.verbose), settings, serving).await
}

/// Rebuilds after each batch of changes (those that came during a build
/// make one more build).
async fn rebuild_on_change(_sources: FileWatcher, mut changes: mpsc::UnboundedReceiver<Vec<PathBuf>>, project: Project, out_dir: PathBuf, options: BuildOptions) {
    while let Some(paths) = super::next_batch(&mut changes, &project).await {
        if let Some(now) = renamed(&project) {
            // The routes (`*` to the plugin, without --config) were made
            // for the name given at the start: a build under the new name
            // would be loaded beside the old one and never be served.
            let served = super::Served(out_dir.join(format!("{}.wasm", project.name)).is_file());
            tracing::error!(
                "{paths} changed: the project is now {} plugin {}, not {} plugin {}: not built; restart wasmux dev to serve it; {served}",
                now.language,
                now.name,
                project.language,
                project.name
            );
            continue;
        }
        tracing::info!("{} changed: rebuilding", paths);
        rebuild(&project, &out_dir, &options).await;
    }
}

/// The project as its directory now says, if its plugin's name or language
/// is no longer the one served. A project that cannot be read is left to
/// the build, which says why.
fn renamed(project: &Project) -> Option<Project> {
    let now = Project::open(&project.dir).ok()?;
    (now.name != project.name || now.language != project.language).then_some(now)
}

/// Builds the project into `out_dir`; the server's watcher does the rest.
/// Returns whether the build succeeded (its errors are on standard error).
async fn rebuild(project: &Project, out_dir: &Path, options: &BuildOptions) -> bool {
    let started = Instant::now();
    let out = out_dir.join(format!("{}.wasm", project.name));
    let before = std::fs::read(&out).ok().map(|bytes| Digest::of(&bytes));
    let built = {
        let (dir, out_dir, options) = (project.dir.clone(), out_dir.to_path_buf(), options.clone());
        tokio::task::spawn_blocking(move || wasmux_toolchain::build_project_with(&dir, &out_dir, &options)).await
    };
    match built {
        Ok(Ok(out)) => {
            let after = std::fs::read(&out).ok().map(|bytes| Digest::of(&bytes));
            let line = crate::build::built(&out, started.elapsed());
            match (before == after, after) {
                (true, _) => tracing::info!("{line}: unchanged"),
                (false, Some(version)) => tracing::info!("{line}: version {}", version.short()),
                (false, None) => tracing::info!("{line}"),
            }
            true
        }
        Ok(Err(e)) => {
            super::log_failure("build failed", &e, super::Served(before.is_some()));
            false
        }
        Err(e) => {
            tracing::error!("build failed: {e}; {}", super::Served(before.is_some()));
            false
        }
    }
}
