//! `wasmux dev [DIR]`: the author's loop. Builds the project, serves it
//! (every content-type routed to it, unless `--config` says otherwise), and
//! on every save of a build input ([`Project::is_build_input`]) rebuilds it
//! into the project's `dist/`, where the server's own watcher swaps the new
//! version in, as `wasmux serve` does: connections stay open, requests
//! under way finish on the version they started on, and a build that fails
//! leaves the version before serving.
//!
//! Plugins are compiled incrementally ([`CompileMode::Incremental`]): a
//! Python or JavaScript plugin's interpreter is compiled once, and a
//! rebuild compiles only what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use tokio::sync::mpsc;
use wasmux::config::{ConfigFile, RouteFile, Settings};
use wasmux::digest::Digest;
use wasmux::runtime::CompileMode;
use wasmux::watcher::FileWatcher;
use wasmux_toolchain::{BuildOptions, Project};

use crate::serve::{self, ServeArgs};

#[derive(Args)]
pub struct DevArgs {
    /// The project's directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Address to listen on (repeat for several).
    #[arg(long, short, default_value = "127.0.0.1:65432")]
    listen: Vec<String>,
    /// A configuration file (routes, limits, plugin settings), watched as
    /// `wasmux serve` watches it; without one, every content-type goes to
    /// the plugin.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Keep the plugin's state (wasi:keyvalue) in this directory, locked
    /// while the server runs, so that it outlives the server; without it,
    /// in memory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Compile each new version from scratch instead of reusing the
    /// machine code of the functions that did not change (for comparing).
    #[arg(long)]
    no_incremental: bool,
    /// Show every message's bytes.
    #[arg(long, short)]
    pub verbose: bool,
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let project = Project::open(&args.dir)?;
    let out_dir = project.dir.join("dist");
    std::fs::create_dir_all(&out_dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out_dir.display()))?;
    let options = BuildOptions::new(wasmux_toolchain::default_cache_dir()?);
    let settings = match &args.config {
        Some(path) => Settings::load(path)?,
        None => Settings::from_file(ConfigFile {
            routes: Some(BTreeMap::from([("*".to_owned(), RouteFile::Plugin(project.name.clone()))])),
            ..ConfigFile::default()
        })?,
    };

    // Watched before the first build, so that a save during it is not missed.
    let watched = project.clone();
    let (sources, changes) = FileWatcher::new(move |path| watched.is_build_input(path))?;
    sources.watch(&project.dir, true)?;
    tracing::info!("building {} plugin {} in {}", project.language, project.name, project.dir.display());
    if !rebuild(&project, &out_dir, &options).await {
        tracing::warn!("serving without plugin {} until a build succeeds; fix the source and save", project.name);
    }
    tokio::spawn(rebuild_on_change(sources, changes, project, out_dir.clone(), options));
    let compile = if args.no_incremental { CompileMode::Serve } else { CompileMode::Incremental };
    serve::serve_with(ServeArgs::dev(args.listen, &out_dir, args.config, args.data_dir, args.verbose), settings, compile).await
}

/// Rebuilds after each batch of changes (those that came during a build
/// make one more build).
async fn rebuild_on_change(_sources: FileWatcher, mut changes: mpsc::UnboundedReceiver<Vec<PathBuf>>, project: Project, out_dir: PathBuf, options: BuildOptions) {
    while let Some(mut paths) = changes.recv().await {
        while let Ok(more) = changes.try_recv() {
            paths.extend(more);
        }
        paths.sort();
        paths.dedup();
        let shown: Vec<String> = paths.iter().map(|p| p.strip_prefix(&project.dir).unwrap_or(p).display().to_string()).collect();
        tracing::info!("{} changed: rebuilding", shown.join(", "));
        rebuild(&project, &out_dir, &options).await;
    }
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
            match e.downcast_ref::<wasmux_toolchain::ToolFailed>() {
                Some(failed) => tracing::error!("build failed: {failed}; the version before keeps serving"),
                None => tracing::error!("build failed: {e:#}; the version before keeps serving"),
            }
            false
        }
        Err(e) => {
            tracing::error!("build failed: {e}; the version before keeps serving");
            false
        }
    }
}
