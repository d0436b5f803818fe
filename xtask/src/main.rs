//! `cargo xtask`: the project's build tasks, in Rust so they run wherever
//! cargo does.
//!
//! - `cargo xtask plugins` builds every plugin crate under `plugins/` into a
//!   WebAssembly component at `target/plugins/NAME.wasm` (test fixtures at
//!   `target/test-plugins/NAME.wasm`), installing the wasm toolchain first if
//!   this machine lacks it.
//!   With `--examples`, also builds the guide's search in each language
//!   (`plugins/search`, `examples/plugins/search-py`, `search-js`) and
//!   the stateful Rust example (`examples/plugins/counter-kv`) with
//!   `wasmux build` into `target/lang-plugins/`.
//! - `cargo xtask test` builds the plugins (with the examples) and runs
//!   every test, on the release build, then every transcript of the docs
//!   (as `test-docs` does).
//! - `cargo xtask serve [ARGS]` builds the served plugins and the release
//!   server (at once) and starts it with them; on a fresh clone, it serves
//!   from a quicker unoptimised build first (`serve.rs`).
//! - `cargo xtask install [--root DIR]` puts the release `wasmux` on the
//!   PATH (in DIR/bin, as `cargo install --root`), lean (`install.rs`).
//! - `cargo xtask bench` builds both, compares the Wasm plugins (fresh
//!   instances and reused ones), the native handlers and the guide's Python
//!   server under load, counts each one's CPU time and system calls per
//!   request, and writes `docs/benchmarks.md` and `docs/benchmarks.svg`.
//! - `cargo xtask test-docs [ARGS]` builds what the documentation's
//!   transcripts run (the plugins, the release `wasmux`, the examples, the
//!   plugin toolchains) and runs every console transcript of README.md and
//!   docs/ with `wasmux-docs-test` (`docs/testing-the-docs.md`).

mod bench;
mod install;
mod plugins;
mod serve;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "wasmux build tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build every plugin under plugins/ into target/plugins/NAME.wasm.
    Plugins {
        /// Build the plugins without optimizations (faster to build, slower to run).
        #[arg(long)]
        debug: bool,
        /// Also build the guide's search in each language with `wasmux build`
        /// (installing componentize-py and componentize-js the first time).
        #[arg(long)]
        examples: bool,
    },
    /// Build the plugins, then run every test of the host and the plugins.
    Test {
        /// Extra arguments for `cargo test` on the host workspace (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every console transcript of README.md and docs/ and compare its
    /// output (after building what they run).
    TestDocs {
        /// Extra arguments for wasmux-docs-test (e.g. --only docs/tls.md, -v).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Put `wasmux` on the PATH: the release build (reused if built),
    /// stripped, with its symbols in `wasmux.debug` beside it.
    Install {
        /// Install into DIR/bin, as `cargo install --root DIR` does (default:
        /// $CARGO_HOME, else ~/.cargo, so the binary goes where `cargo install`
        /// puts binaries).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Build the plugins and the release server, then run `wasmux serve` with
    /// them. With no release build yet (a fresh clone), serve from an
    /// unoptimised build first while the release one builds; it takes over
    /// the port when built.
    Serve {
        /// Extra arguments for `wasmux serve` (e.g. --listen 127.0.0.1:7000).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Compare wasmux with Wasm plugins, wasmux --native and the guide's Python
    /// server under the same load; write docs/benchmarks.md and docs/benchmarks.svg.
    Bench {
        /// Measured time per run.
        #[arg(long, default_value = "10s")]
        duration: String,
        /// Warm-up before each run.
        #[arg(long, default_value = "1s")]
        warmup: String,
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Requests in flight per connection in pipelined mode.
        #[arg(long, default_value_t = 8)]
        depth: u32,
        /// Runs per server and mode; the table shows the median.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, default_value = "search=1,binary=1")]
        mix: String,
        /// Do not pin servers and load generator to separate cores.
        #[arg(long)]
        no_pin: bool,
        /// The guide's Python app-server (run as `python3 PATH HOST PORT`).
        #[arg(long, default_value = "examples/python/app_server.py")]
        python_server: PathBuf,
        /// A `search` component written in JavaScript: rows of its own when the file exists.
        #[arg(long, default_value = "target/lang-plugins/search-js.wasm")]
        search_js: PathBuf,
        /// A `search` component written in Python: rows of its own when the file exists.
        #[arg(long, default_value = "target/lang-plugins/search-py.wasm")]
        search_py: PathBuf,
        /// Requests an instance serves in the reuse rows (`[runtime] reuse = { requests = N }`).
        #[arg(long, default_value_t = 1000)]
        reuse: u32,
        /// Requests per server and mode for the CPU and system-call counts; 0 skips them.
        #[arg(long, default_value_t = 20000)]
        cost_requests: u64,
        /// Only these servers, comma-separated: wasm, wasm-reuse,
        /// wasm-unhardened, native, js, js-reuse, py, py-reuse, python, kv
        /// (the key-value store's rows, with a redis-server of their own)
        /// (default: all).
        #[arg(long, value_delimiter = ',', value_name = "SERVERS")]
        only: Vec<String>,
        /// Only these modes, comma-separated: connect, persistent, pipelined
        /// (default: all).
        #[arg(long, value_delimiter = ',', value_name = "MODES")]
        modes: Vec<String>,
        /// A wasmux binary built from another commit: rows wasm-baseline,
        /// wasm-reuse-baseline and native-baseline served by it, each right
        /// after its twin in every round, and each mode's current ÷ baseline
        /// ratio. Relative to the repository root.
        #[arg(long, value_name = "PATH")]
        baseline: Option<PathBuf>,
        /// Where benchmarks.md and benchmarks.svg go (default: docs; a run
        /// with --only, --modes or --baseline: target/bench-report).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// What a plugin costs in each language: `wasmux new` to the first answer
    /// (fresh and warm), a one-line change under `wasmux dev`, component size,
    /// compile time, a fresh-instance call, and the search's requests per
    /// second next to the guide's Python server; written into the section
    /// "Plugins by language" of docs/benchmarks.md.
    BenchLanguages {
        /// Measured time per run.
        #[arg(long, default_value = "5s")]
        duration: String,
        /// Warm-up before each run.
        #[arg(long, default_value = "1s")]
        warmup: String,
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Runs per server and mode; the table shows the median.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// One-line changes measured per language under `wasmux dev`.
        #[arg(long, default_value_t = 3)]
        changes: u32,
        /// Do not pin servers and load generator to separate cores.
        #[arg(long)]
        no_pin: bool,
        /// The guide's Python app-server (run as `python3 PATH HOST PORT`).
        #[arg(long, default_value = "examples/python/app_server.py")]
        python_server: PathBuf,
        /// Where benchmarks.md is.
        #[arg(long, default_value = "docs")]
        out: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run_task(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(cli: Cli) -> Result<()> {
    let root = workspace_root();
    match cli.task {
        Task::Plugins { debug, examples } => {
            plugins::build(&root, !debug, plugins::Which::All)?;
            if examples {
                run(cargo().current_dir(&root).args(["build", "--release", "--locked", "-p", "wasmux-cli"]))?;
                plugins::build_examples(&root)?;
            }
        }
        Task::Test { args } => {
            refuse_tests_in(&root.join("cli/src"), "the wasmux binary has no unit tests (`test = false` in cli/Cargo.toml): test it through its commands, in cli/tests")?;
            // The tests run on the release build: the heavy dependencies
            // (wasmtime, cranelift) compiled once serve `cargo xtask serve`,
            // `cargo install --path cli` and the tests alike.
            let built = both(
                || plugins::build(&root, true, plugins::Which::All),
                || {
                    // The example programs the tests run, and the binary,
                    // built once with the same features as the tests.
                    timed("the workspace's binaries and examples", || {
                        run(cargo().current_dir(&root).args(["build", "--release", "--locked", "--workspace", "--bins", "--examples"]))
                    })
                },
            );
            built?;
            // The services the fleet and key-value tests start (Debian's
            // haproxy, docker-registry and redis-server), installed when
            // missing, so that a machine
            // without them fails here, clearly, rather than in a test.
            run(Command::new("bash").arg(root.join("examples/cluster/install-deps.sh")))?;
            // The guide's search in each language, built once for every
            // test that serves them.
            plugins::build_examples(&root)?;
            // What the README's install command puts on the PATH: lean, and
            // still naming wasmux's functions in a backtrace.
            let installed = install::install(&root, &root.join("target/install-check"), install::Build::Done)?;
            install::check(&installed)?;
            timed("the tests", || {
                let mut tests = cargo();
                // Every target but the wasmux binary in test mode (`--all-targets`
                // would build it, with no tests in it: 29 s of a test build
                // bound by CPU time).
                tests.current_dir(&root).args(["test", "--release", "--locked", "--workspace", "--tests", "--benches", "--examples"]).args(&args);
                // The suite's tests spend much of their time waiting (on a
                // server's timers and drains, on the child processes they
                // start): two per core keep the cores busy. Measured on the
                // 2-core machine, the suite took 181 s with 2 test threads,
                // 137 s with 4 and 130 s with 6 (docs/benchmarks.md).
                if std::env::var_os("RUST_TEST_THREADS").is_none() {
                    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
                    tests.env("RUST_TEST_THREADS", (2 * cores).to_string());
                }
                run(&mut tests)?;
                // Those leave out documentation examples.
                run(cargo().current_dir(&root).args(["test", "--release", "--locked", "--workspace", "--doc"]).args(&args))?;
                // The plugins' shared logic, the guests themselves and the
                // Rust guest SDK (a path dependency of theirs), natively.
                // The test fixtures have no tests: building them for
                // nothing took 7 of the step's 23 s.
                let mut guests = vec!["--workspace".to_owned()];
                for fixture in plugins::fixture_packages(&root)? {
                    guests.extend(["--exclude".to_owned(), fixture]);
                }
                let sdk = vec!["-p".to_owned(), "wasmux-sdk".to_owned()];
                for selection in [guests, sdk] {
                    run(cargo()
                        .current_dir(root.join("plugins"))
                        .env("CARGO_TARGET_DIR", root.join("target/plugins-native"))
                        .arg("test")
                        .args(&selection)
                        .arg("--locked"))?;
                }
                // The stateful Rust example, a workspace of its own.
                run(cargo()
                    .current_dir(root.join("examples/plugins/counter-kv"))
                    .env("CARGO_TARGET_DIR", root.join("target/plugins-native"))
                    .args(["test", "--locked"]))?;
                Ok(())
            })?;
            // Every console transcript of the README and of docs/, timed
            // apart from the suite (`test_docs` prints its own total).
            test_docs(&root, &[])?;
        }
        Task::TestDocs { args } => test_docs(&root, &args)?,
        Task::Install { root: install_root } => {
            let dir = install::bin_dir(install_root)?;
            timed("install", || install::install(&root, &dir, install::Build::Package).map(|_| ()))?;
        }
        Task::Serve { args } => serve::serve(&root, &args)?,
        Task::Bench { duration, warmup, connections, depth, rounds, mix, no_pin, python_server, search_js, search_py, reuse, cost_requests, only, modes, baseline, out } => {
            let options = bench::Options {
                duration,
                warmup,
                connections,
                depth,
                rounds: rounds.max(1),
                mix,
                pin: !no_pin,
                python_server,
                search_js,
                search_py,
                reuse: reuse.max(1),
                cost_requests,
                only,
                modes,
                baseline,
                out,
            };
            bench::run(&root, &options)?;
        }
        Task::BenchLanguages { duration, warmup, connections, rounds, changes, no_pin, python_server, out } => {
            let options = bench::languages::Options {
                duration,
                warmup,
                connections,
                rounds: rounds.max(1),
                changes: changes.max(1),
                pin: !no_pin,
                python_server,
                out,
            };
            bench::languages::run(&root, &options)?;
        }
    }
    Ok(())
}

/// `cargo xtask test-docs`: what the transcripts run, then the transcripts.
fn test_docs(root: &Path, args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    plugins::build(root, true, plugins::Which::All)?;
    // The programs the transcripts call: the fleet's haproxy and
    // docker-registry, curl, jq and openssl.
    run(Command::new("bash").arg(root.join("docs-test/install-deps.sh")))?;
    // The same build as `cargo xtask test`'s, so neither rebuilds the
    // other's: the release `wasmux`, the examples, and wasmux-docs-test.
    run(cargo().current_dir(root).args(["build", "--release", "--locked", "--workspace", "--bins", "--examples"]))?;
    // The plugin toolchains, installed where the tests keep them: the
    // transcripts run without a network, so `wasmux build` must find them.
    let cache = root.join("target/test-cache");
    wasmux_toolchain::python::ComponentizePy::find_or_install(&cache)?;
    wasmux_toolchain::javascript::ComponentizeJs::find_or_install(&cache)?;
    eprintln!("xtask: ready to run the transcripts after {:.1} s", started.elapsed().as_secs_f64());
    let outcome = run(Command::new(root.join("target/release/wasmux-docs-test"))
        .arg("--root")
        .arg(root)
        .arg("--bin-dir")
        .arg(root.join("target/release"))
        .env("WASMUX_CACHE_DIR", &cache)
        .args(args));
    eprintln!("xtask: test-docs took {:.1} s in all", started.elapsed().as_secs_f64());
    outcome
}

/// Fails, naming the file, if a Rust file under `dir` holds a `#[test]`:
/// tests there would never run, for the reason `why` gives.
fn refuse_tests_in(dir: &Path, why: &str) -> Result<()> {
    match first_with_tests(dir)? {
        Some(source) => bail!("{} has tests, but {why}", source.display()),
        None => Ok(()),
    }
}

/// The first Rust file under `dir` that holds a `#[test]`.
fn first_with_tests(dir: &Path) -> Result<Option<PathBuf>> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let found = if path.is_dir() {
            first_with_tests(&path)?
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            text.contains("#[test]").then_some(path)
        } else {
            None
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The repository root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo that runs this task (so a rustup override carries through).
///
/// Without the variables `cargo run` set for this process (the xtask
/// package's `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, …): build scripts that
/// read one (ring's reads `CARGO_MANIFEST_DIR`) would see it change between
/// `cargo xtask serve` and a plain `cargo build`, and each would rebuild
/// what the other built.
fn cargo() -> Command {
    let mut cargo = Command::new(cargo_program());
    without_cargo_run_variables(&mut cargo);
    cargo
}

/// The cargo program [`cargo`] runs.
fn cargo_program() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Removes from `command`'s environment the variables `cargo run` set for
/// this process (see [`cargo`]), for a command that runs cargo through
/// another program (`taskset`).
fn without_cargo_run_variables(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_by_cargo_run = name.starts_with("CARGO_PKG_")
            || matches!(name, "CARGO_MANIFEST_DIR" | "CARGO_MANIFEST_PATH" | "CARGO_BIN_NAME" | "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE");
        if set_by_cargo_run {
            command.env_remove(name);
        }
    }
}

/// Runs `first` on a thread of its own while `second` runs here; both
/// finish, and the first error (if any) is returned.
fn both(first: impl FnOnce() -> Result<()> + Send, second: impl FnOnce() -> Result<()>) -> Result<()> {
    std::thread::scope(|scope| {
        let first = scope.spawn(first);
        let second = second();
        let first = first.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the parallel build panicked")));
        first.and(second)
    })
}

/// Runs `step`, then says how long it took (the phases of a first build).
fn timed(what: &str, step: impl FnOnce() -> Result<()>) -> Result<()> {
    let started = std::time::Instant::now();
    let result = step();
    eprintln!("xtask: {what}: {:.1} s", started.elapsed().as_secs_f64());
    result
}

/// Runs a command with inherited output, failing if it fails.
fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command.status().with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_with_tests_is_found() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let src = dir.path().join("spin/src");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("lib.rs"), "fn spin() {}\n").expect("write");
        assert_eq!(first_with_tests(dir.path()).expect("read"), None);
        std::fs::write(src.join("more.rs"), "#[test]\nfn t() {}\n").expect("write");
        assert_eq!(first_with_tests(dir.path()).expect("read"), Some(src.join("more.rs")));
    }

    #[test]
    fn the_command_line_has_no_unit_tests() {
        assert_eq!(first_with_tests(&workspace_root().join("cli/src")).expect("read"), None);
    }
}
