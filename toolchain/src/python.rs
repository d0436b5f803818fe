//! Python plugins: componentize-py at a pinned version, installed once from
//! PyPI into a virtual environment in the cache directory.
//!
//! The environment is built beside its final place and renamed into it when
//! complete, so an interrupted installation is never taken for a finished
//! one. The tool then runs as `ENV/bin/python -c …` (not through the
//! `componentize-py` script, whose `#!` line names the directory it was
//! installed in): a virtual environment's interpreter finds its packages
//! from its own location, wherever the directory was renamed to.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::Project;

/// The componentize-py release every Python plugin is built with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The module componentize-py initializes: it imports the plugin's module
/// (`{{module}}`) and the standard library, refuses what the sandbox
/// refuses with a clear error, and turns uncaught exceptions into handler
/// errors. Its own docstring says how.
const ENTRY_MODULE: &str = include_str!("python/_wasmux_plugin.py");

/// What [`ENTRY_MODULE`] and [`DEV_MODULE`] share: the refusals, the
/// standard library imported whole, uncaught exceptions answered.
const SANDBOX_MODULE: &str = include_str!("python/_wasmux_sandbox.py");

/// The module of `wasmux dev`'s Python runtime ([`crate::dev`]): the same
/// as [`ENTRY_MODULE`], but it imports the plugin's module, when it runs,
/// from the source `wasmux dev` sends.
const DEV_MODULE: &str = include_str!("python/_wasmux_dev.py");

/// The modules' names, and the report [`ENTRY_MODULE`] writes beside itself.
const ENTRY_NAME: &str = "_wasmux_plugin";
const SANDBOX_NAME: &str = "_wasmux_sandbox";
const DEV_NAME: &str = "_wasmux_dev";
const REPORT: &str = "wasmux-report.txt";

/// Runs componentize-py's command line from its Python package.
const RUN_TOOL: &str = "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())";

/// componentize-py, installed.
#[derive(Debug, Clone)]
pub struct ComponentizePy {
    /// The virtual environment's interpreter.
    python: PathBuf,
}

impl ComponentizePy {
    /// The installation in `cache_dir`, made first if missing (one line on
    /// standard error says so; it takes about 10 s and needs PyPI). Later
    /// calls run offline.
    pub fn find_or_install(cache_dir: &Path) -> Result<Self> {
        let env = cache_dir.join("toolchains").join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
        let python = env.join("bin/python");
        if python.is_file() {
            return Ok(Self { python });
        }
        let base = find_python()?;
        eprintln!(
            "wasmux: installing componentize-py {COMPONENTIZE_PY_VERSION} from PyPI into {} (once; later builds run offline)",
            env.display()
        );
        crate::install_into(&env, &python, |partial| {
            make_venv(&base, partial)?;
            crate::run_quietly(
                &format!("install componentize-py=={COMPONENTIZE_PY_VERSION} from PyPI"),
                Command::new(partial.join("bin/python")).args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-input",
                    &format!("componentize-py=={COMPONENTIZE_PY_VERSION}"),
                ]),
            )
        })?;
        Ok(Self { python })
    }

    /// Builds the project's module (its `WitWorld` class) into the
    /// component `out`, for `world` of the project's WIT, through the
    /// entry module ([`ENTRY_MODULE`]) written into `scratch`, an empty
    /// folder of the caller's. Without `wasi`, every WASI import becomes a
    /// trapping stub (`--stub-wasi`): the component then runs on a host that
    /// offers no WASI, but `print` traps and the random seed is fixed when
    /// the component is built.
    ///
    /// Returns the warnings the entry module found: imports in the plugin
    /// that will fail when they run (`app.py:12: importing socket will
    /// fail: …`).
    pub fn componentize(&self, project: &Project, world: &str, out: &Path, scratch: &Path) -> Result<Vec<String>> {
        write_module(scratch, SANDBOX_NAME, SANDBOX_MODULE)?;
        write_module(scratch, ENTRY_NAME, &ENTRY_MODULE.replace("{{module}}", &project.entry))?;
        // The project first: its modules are the plugin's.
        let mut command = self.command(&project.wit_dir(), world, out, &[&project.dir, scratch], project.wasi);
        command.current_dir(&project.dir).arg(ENTRY_NAME);
        // It prints "Component built successfully" on standard output.
        crate::run_tool("componentize-py", &mut command)?;
        let report = std::fs::read_to_string(scratch.join(REPORT)).unwrap_or_default();
        Ok(report.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect())
    }

    /// Builds `wasmux dev`'s Python runtime for `world` of the WIT in
    /// `wit` into `out`: the interpreter, the standard library and the
    /// loader ([`DEV_MODULE`]), written into `scratch`, an empty folder of
    /// the caller's. No project is mounted: the runtime serves the source
    /// it is sent, so one build serves every project of this WIT.
    pub fn componentize_dev_runtime(&self, wit: &Path, world: &str, wasi: bool, out: &Path, scratch: &Path) -> Result<()> {
        write_module(scratch, SANDBOX_NAME, SANDBOX_MODULE)?;
        write_module(scratch, DEV_NAME, DEV_MODULE)?;
        let mut command = self.command(wit, world, out, &[scratch], wasi);
        command.current_dir(scratch).arg(DEV_NAME);
        crate::run_tool("componentize-py", &mut command)?;
        Ok(())
    }

    /// `componentize-py componentize` for `world` of `wit` into `out`,
    /// with `paths` on the module path, without WASI unless `wasi`; the
    /// caller adds the module's name.
    fn command(&self, wit: &Path, world: &str, out: &Path, paths: &[&Path], wasi: bool) -> Command {
        let mut command = Command::new(&self.python);
        command.args(["-c", RUN_TOOL, "-d"]).arg(wit).args(["-w", world, "componentize"]);
        for path in paths {
            command.arg("-p").arg(path);
        }
        command
            .arg("-o")
            .arg(out)
            // componentize-py adds the site-packages of an active virtual
            // environment to the plugin's path; the plugin's are its own.
            .env_remove("VIRTUAL_ENV")
            // Its errors are anyhow errors: without these, a Rust backtrace
            // of the tool follows the Python error the user needs.
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0");
        if !wasi {
            command.arg("--stub-wasi");
        }
        command
    }
}

/// The text of the modules `wasmux dev`'s Python runtime is built from:
/// what decides, with the WIT and the tool's version, whether a runtime
/// built before is still the one to serve.
pub fn dev_runtime_modules() -> [&'static str; 2] {
    [SANDBOX_MODULE, DEV_MODULE]
}

/// Writes the module `name` into the folder `dir` (made if missing).
fn write_module(dir: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.py"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// A Python 3 interpreter to make the virtual environment with.
fn find_python() -> Result<PathBuf> {
    if let Some(python) = crate::debian::which("python3") {
        return Ok(python);
    }
    eprintln!("wasmux: no python3 on PATH; installing Debian's python3 and python3-venv with apt-get");
    crate::debian::install(&["python3", "python3-venv"]).context("Python plugins are built with componentize-py, a Python package")?;
    crate::debian::which("python3").context("apt-get installed python3, but it is not on PATH")
}

/// `python -m venv DIR`, installing Debian's `python3-venv` if this Python
/// lacks `ensurepip` (Debian splits it out).
fn make_venv(python: &Path, dir: &Path) -> Result<()> {
    let venv = |dir: &Path| crate::run_quietly("make a Python virtual environment", Command::new(python).args(["-m", "venv"]).arg(dir));
    match venv(dir) {
        Ok(()) => Ok(()),
        Err(e) if format!("{e:#}").contains("ensurepip") => {
            let _ = std::fs::remove_dir_all(dir);
            eprintln!("wasmux: this Python cannot make virtual environments; installing Debian's python3-venv with apt-get");
            crate::debian::install(&["python3-venv"]).context("componentize-py is installed into a virtual environment")?;
            venv(dir)
        }
        Err(e) => Err(e),
    }
}
