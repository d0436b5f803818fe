//! `wasmux build [DIR] [--out OUTDIR]`: a plugin project of any language
//! built into `OUTDIR/NAME.wasm` (default: the project's `dist/`). The
//! first build on a machine installs what the language needs, at pinned
//! versions, saying so in one line; later builds run offline.
//!
//! A Python or JavaScript component (12 to 32 MB, an interpreter) takes
//! seconds to compile to machine code, and builds of the same source differ
//! (their tools snapshot random numbers and times): so `build` compiles it
//! into the compiled-code cache right away, as `wasmux call` would, and the
//! first call of the new build reads it from there (`--no-compile` skips
//! this).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use wasmux::kv::{NoKvMetrics, OnDemand, StoreConfig};
use wasmux::config::{ConfigFile, Settings};
use wasmux::metrics::Metrics;
use wasmux::digest::Digest;
use wasmux::plugins::Plugins;
use wasmux::source::dir::plugin_name;
use wasmux_toolchain::{BuildOptions, Language, Project};

#[derive(Args)]
pub struct BuildArgs {
    /// The project's directory (with its Cargo.toml, pyproject.toml or package.json).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// The directory the component goes in, as OUT/NAME.wasm (default: DIR/dist).
    #[arg(long, short, value_name = "OUT")]
    out: Option<PathBuf>,
    /// Where installed tools and shared build output are kept.
    #[arg(long, env = "WASMUX_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not compile a Python or JavaScript component into the
    /// compiled-code cache after building it.
    #[arg(long)]
    no_compile: bool,
}

pub async fn build(args: BuildArgs) -> anyhow::Result<()> {
    let project = Project::open(&args.dir)?;
    let out_dir = args.out.unwrap_or_else(|| project.dir.join("dist"));
    check_out_dir(&out_dir, &project.name)?;
    let cache_dir = match args.cache_dir {
        Some(dir) => dir,
        None => wasmux_toolchain::default_cache_dir()?,
    };
    let options = BuildOptions::new(cache_dir.clone());
    let started = Instant::now();
    // The tools run as child processes; their output goes straight through.
    let dir = project.dir.clone();
    let out = tokio::task::spawn_blocking(move || wasmux_toolchain::build_project_with(&dir, &out_dir, &options)).await??;
    println!("{}", built(&out, started.elapsed()));
    if !args.no_compile && project.language != Language::Rust {
        // The component is built either way; `wasmux call` shows why it
        // cannot be loaded, if it cannot.
        if let Err(e) = compile_into_cache(&out, cache_dir).await {
            eprintln!("wasmux: warning: could not compile {} into the cache: {e:#}", shown(&out));
        }
    }
    Ok(())
}

/// Refuses an `--out` that names a component rather than a directory
/// (`-o search.wasm`), which would otherwise become a directory holding
/// `search.wasm/NAME.wasm`. A directory that exists is taken whatever its
/// name.
fn check_out_dir(out_dir: &Path, plugin: &str) -> anyhow::Result<()> {
    let names_a_component = out_dir.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("wasm"));
    if names_a_component && !out_dir.is_dir() {
        anyhow::bail!(
            "--out {} names a file, but --out is the directory the component goes in (as OUT/{plugin}.wasm, {plugin} being the project's plugin name): give the directory (--out {}), and set plugin-name in the project's manifest to serve it under another name",
            out_dir.display(),
            out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).display()
        );
    }
    Ok(())
}

/// Compiles the component at `out` into the compiled-code cache in
/// `cache_dir`, as `wasmux call` would, saying so on standard error.
async fn compile_into_cache(out: &Path, cache_dir: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!("wasmux: compiling {} for this machine, so that its first call finds it compiled", shown(out));
    let settings = Settings::from_file(ConfigFile::default())?;
    // A plugin that imports the store keeps nothing here: it is not called.
    let store = Arc::new(OnDemand::new(StoreConfig::Memory, Arc::new(NoKvMetrics)));
    let runtime = crate::call::runtime_for_one_call(&settings, Some(cache_dir), store)?;
    let plugins = Plugins::new(Some(runtime), Arc::new(Metrics::new()));
    let name = plugin_name(out).unwrap_or_else(|| "plugin".to_owned());
    let bytes = tokio::fs::read(out).await?;
    plugins.load(&name, Digest::of(&bytes), bytes, &out.display().to_string()).await?;
    eprintln!("wasmux: compiled in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `out`, relative to the working directory if it is inside it.
fn shown(out: &Path) -> String {
    std::env::current_dir().ok().and_then(|cwd| out.strip_prefix(cwd).ok().map(PathBuf::from)).unwrap_or_else(|| out.to_path_buf()).display().to_string()
}

/// `Built PATH (SIZE) in TIME`, the line `build` and `dev` print.
pub fn built(out: &std::path::Path, took: std::time::Duration) -> String {
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let shown = shown(out);
    let size = if size >= 1_000_000 { format!("{:.1} MB", size as f64 / 1e6) } else { format!("{:.0} kB", size as f64 / 1e3) };
    format!("Built {shown} ({size}) in {:.1} s", took.as_secs_f64())
}
