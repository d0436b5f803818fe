//! `wasmux dev [DIR]`: the author's loop. Serves the project (every
//! content-type routed to it, unless `--config` says otherwise) and serves
//! each save of its source: connections stay open, requests under way
//! finish on the version they started on, and a save that fails to build
//! or load leaves the version before serving.
//!
//! Two paths:
//! - Python and JavaScript ([`runtime`]): the language's dev runtime,
//!   built once for the WIT, runs the plugin's source, sent to it through
//!   the server's settings; a save is checked and served in well under a
//!   second, with no build and no compile;
//! - Rust, and Python and JavaScript with `--build` ([`built`]): each
//!   save rebuilds the project into its `dist/`, and the new component is
//!   compiled and swapped in.

mod built;
mod runtime;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use tokio::sync::mpsc;
use wasmux::config::{ConfigFile, RouteFile, Settings};
use wasmux::runtime::CompileMode;
use wasmux_toolchain::{BuildOptions, Project};

use crate::serve::Serving;

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
    /// Python and JavaScript: serve the component `wasmux build` makes,
    /// rebuilt into dist/ on every save, instead of the source run by the
    /// language's dev runtime (a save then takes seconds, not a fraction
    /// of one). Rust plugins are always served built.
    #[arg(long)]
    build: bool,
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
    let options = BuildOptions::new(wasmux_toolchain::default_cache_dir()?);
    let compile = if args.no_incremental { CompileMode::Whole } else { CompileMode::Incremental };
    if args.build || !wasmux_toolchain::dev::has_runtime(project.language) {
        let settings = match &args.config {
            Some(path) => Settings::load(path)?,
            None => Settings::from_file(routed_to(&project.name))?,
        };
        let serving = Serving { compile, ..Serving::default() };
        return built::serve(args, project, options, settings, serving).await;
    }
    runtime::serve(args, project, options, compile).await
}

/// The configuration without a file: every content-type to `plugin`.
fn routed_to(plugin: &str) -> ConfigFile {
    ConfigFile { routes: Some(BTreeMap::from([("*".to_owned(), RouteFile::Plugin(plugin.to_owned()))])), ..ConfigFile::default() }
}

/// The next batch of changed files (with those that came meanwhile), as
/// the log names them (`app.py, util.py`); `None` when watching stopped.
async fn next_batch(changes: &mut mpsc::UnboundedReceiver<Vec<PathBuf>>, project: &Project) -> Option<String> {
    let mut paths = changes.recv().await?;
    while let Ok(more) = changes.try_recv() {
        paths.extend(more);
    }
    paths.sort();
    paths.dedup();
    let shown: Vec<String> = paths.iter().map(|p| p.strip_prefix(&project.dir).unwrap_or(p).display().to_string()).collect();
    Some(shown.join(", "))
}

/// Logs that `what` failed, and what is served meanwhile: a tool's failure
/// in one line (its own messages are above), any other error in full.
fn log_failure(what: &str, error: &anyhow::Error, served: Served) {
    match error.downcast_ref::<wasmux_toolchain::ToolFailed>() {
        Some(failed) => tracing::error!("{what}: {failed}; {served}"),
        None => tracing::error!("{what}: {error:#}; {served}"),
    }
}

/// What a dev server serves while a change fails: the version before, or,
/// when none has loaded yet, nothing.
#[derive(Debug, Clone, Copy)]
struct Served(bool);

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0 { "the version before keeps serving" } else { "no version of the plugin has loaded yet" })
    }
}
