//! `wasmux-docs-test`: runs the documentation's console transcripts
//! (`cargo xtask test-docs` builds what they need and runs this).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Run the console transcripts of README.md and docs/ and compare their output")]
struct Cli {
    #[command(subcommand)]
    session: Option<Child>,
    /// The repository root.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Put first on PATH for every command (where `wasmux` is); default ROOT/target/release.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Sessions run at once (each in a network namespace of its own).
    #[arg(long, short, default_value_t = 2)]
    jobs: usize,
    /// Run every session on this machine's own network, one at a time.
    #[arg(long)]
    no_netns: bool,
    /// Only these places: FILE, or FILE:LINE with the line of a block's opening fence.
    #[arg(long)]
    only: Vec<String>,
    /// Print every session's report, passing ones too.
    #[arg(long, short)]
    verbose: bool,
    /// Markdown files, relative to the root (default: README.md and docs/**/*.md).
    files: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Child {
    /// (internal) Run one session and print its report.
    #[command(hide = true)]
    Session {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        bin_dir: PathBuf,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        index: usize,
        #[arg(long)]
        loopback_up: bool,
    },
    /// (internal) Bring up the loopback interface, as a session in a new
    /// network namespace does: whether namespaces work here.
    #[command(hide = true)]
    CheckNetns,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.session {
        Some(Child::Session { root, bin_dir, file, index, loopback_up }) => {
            wasmux_docs_test::runner::run_session(&root, &bin_dir, &file, index, loopback_up)
        }
        Some(Child::CheckNetns) => wasmux_docs_test::netns::loopback_up()
            .map(|()| true)
            .map_err(|e| anyhow::anyhow!("cannot bring up the loopback interface: {e}")),
        None => run(cli),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("wasmux-docs-test: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    let root = std::path::absolute(&cli.root)?;
    let bin_dir = std::path::absolute(cli.bin_dir.unwrap_or_else(|| root.join("target/release")))?;
    let options = wasmux_docs_test::runner::Options {
        root,
        bin_dir,
        files: cli.files,
        jobs: cli.jobs,
        no_netns: cli.no_netns,
        only: cli.only,
        verbose: cli.verbose,
        exe: std::env::current_exe()?,
    };
    Ok(wasmux_docs_test::runner::run(&options)?.ok())
}
