//! `wasmux build [DIR] [--out OUTDIR]`: a plugin project of any language
//! built into `OUTDIR/NAME.wasm` (default: the project's `dist/`). The
//! first build on a machine installs what the language needs, at pinned
//! versions, saying so in one line; later builds run offline.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use wasmux_toolchain::{BuildOptions, Project};

#[derive(Args)]
pub struct BuildArgs {
    /// The project's directory (with its Cargo.toml, pyproject.toml or package.json).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Where the component goes (default: DIR/dist).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Where installed tools and shared build output are kept.
    #[arg(long, env = "WASMUX_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

pub async fn build(args: BuildArgs) -> anyhow::Result<()> {
    let project = Project::open(&args.dir)?;
    let out_dir = args.out.unwrap_or_else(|| project.dir.join("dist"));
    let options = BuildOptions::new(match args.cache_dir {
        Some(dir) => dir,
        None => wasmux_toolchain::default_cache_dir()?,
    });
    let started = Instant::now();
    // The tools run as child processes; their output goes straight through.
    let dir = project.dir.clone();
    let out = tokio::task::spawn_blocking(move || wasmux_toolchain::build_project_with(&dir, &out_dir, &options)).await??;
    println!("{}", built(&out, started.elapsed()));
    Ok(())
}

/// `Built PATH (SIZE) in TIME`, the line `build` and `dev` print.
pub fn built(out: &std::path::Path, took: std::time::Duration) -> String {
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let shown = std::env::current_dir().ok().and_then(|cwd| out.strip_prefix(cwd).ok().map(PathBuf::from)).unwrap_or_else(|| out.to_path_buf());
    let size = if size >= 1_000_000 { format!("{:.1} MB", size as f64 / 1e6) } else { format!("{:.0} kB", size as f64 / 1e3) };
    format!("Built {} ({size}) in {:.1} s", shown.display(), took.as_secs_f64())
}
