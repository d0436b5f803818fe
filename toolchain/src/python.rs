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

/// [`ENTRY_MODULE`]'s name, and the report it writes beside itself.
const ENTRY_NAME: &str = "_wasmux_plugin";
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
        let (app_dir, wit) = (&project.dir, &project.wit_dir());
        std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
        let entry = scratch.join(format!("{ENTRY_NAME}.py"));
        std::fs::write(&entry, ENTRY_MODULE.replace("{{module}}", &project.entry)).with_context(|| format!("writing {}", entry.display()))?;
        let mut command = Command::new(&self.python);
        command
            .args(["-c", RUN_TOOL, "-d"])
            .arg(wit)
            .args(["-w", world, "componentize"])
            // The project first: its modules are the plugin's.
            .arg("-p")
            .arg(app_dir)
            .arg("-p")
            .arg(scratch)
            .arg("-o")
            .arg(out)
            .current_dir(app_dir)
            // componentize-py adds the site-packages of an active virtual
            // environment to the plugin's path; the plugin's are its own.
            .env_remove("VIRTUAL_ENV")
            // Its errors are anyhow errors: without these, a Rust backtrace
            // of the tool follows the Python error the user needs.
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0");
        if !project.wasi {
            command.arg("--stub-wasi");
        }
        command.arg(ENTRY_NAME);
        // It prints "Component built successfully" on standard output.
        crate::run_tool("componentize-py", &mut command)?;
        let report = std::fs::read_to_string(scratch.join(REPORT)).unwrap_or_default();
        Ok(report.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect())
    }
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
