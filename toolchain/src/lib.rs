//! What turns a plugin's source into a WebAssembly component, shared by
//! `cargo xtask plugins` (the plugins of this repository) and the `wasmux`
//! command (plugins written anywhere).
//!
//! - [`rust`]: a compiler that can build `wasm32-unknown-unknown` guests,
//!   found on this machine or installed;
//! - [`python`], [`javascript`]: componentize-py and componentize-js at
//!   pinned versions, installed once into the cache directory;
//! - [`project`]: a plugin project of any of the three languages, found
//!   from its own manifest, built into `OUT/NAME.wasm` ([`build_project`]),
//!   or written from the templates in this binary ([`new_project`]);
//! - [`dev`]: `wasmux dev`'s runtimes for Python and JavaScript, which
//!   serve a plugin's source without a build;
//! - [`componentize`]: a core module carrying its WIT world (as wit-bindgen
//!   leaves it) wrapped into a component, written atomically;
//! - [`debian`]: Debian packages installed with apt-get, for these and for
//!   the tests (headless Chromium, for the admin page's test).

pub mod debian;
pub mod dev;
pub mod javascript;
pub mod project;
pub mod python;
pub mod rust;
mod templates;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result};

pub use project::{BuildOptions, Language, Project, build_project, build_project_with, new_project, new_project_with};

/// The WIT world every plugin implements, as embedded in this binary; `wasmux
/// new` writes it into each project.
pub const WIT: &str = include_str!("../../wit/wasmux.wit");

/// The version of the `wasmux:plugin` package in [`WIT`]: what a plugin's
/// imports of the host name (`wasmux:plugin/host@VERSION`).
pub const WIT_VERSION: &str = "0.1.1";

/// The world's name in [`WIT`].
pub const WORLD: &str = "handler";

/// Where wasmux keeps what it installed and built for plugins:
/// `$WASMUX_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmux`, else
/// `~/.cache/wasmux` (the server keeps compiled plugin code there too).
pub fn default_cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WASMUX_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .context("no cache directory: set WASMUX_CACHE_DIR, XDG_CACHE_HOME or HOME")?;
    Ok(base.join("wasmux"))
}

/// A tool of the build failed. Its own messages (the compiler's errors) went
/// to standard error as it ran, so this error only names the tool: the
/// caller prints it as one line, not as a stack of wrappers around them.
#[derive(Debug)]
pub struct ToolFailed {
    /// What ran, e.g. `cargo build` or `componentize-py`.
    pub tool: String,
    pub status: ExitStatus,
}

impl fmt::Display for ToolFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed ({}); its messages are above", self.tool, self.status)
    }
}

impl std::error::Error for ToolFailed {}

/// Runs a build tool with its standard error shown as it runs (so the user
/// sees the compiler's own messages) and its standard output kept; fails
/// with [`ToolFailed`] if it fails. Returns what it wrote to standard output.
fn run_tool(tool: &str, command: &mut Command) -> Result<Vec<u8>> {
    run_tool_with(tool, command, true)
}

/// [`run_tool`]; with `show_stdout`, what the tool printed on standard
/// output is shown when it fails (cargo's is JSON for us, not for people).
fn run_tool_with(tool: &str, command: &mut Command, show_stdout: bool) -> Result<Vec<u8>> {
    command.stdin(std::process::Stdio::null()).stderr(std::process::Stdio::inherit());
    let output = command.output().with_context(|| format!("could not run {tool} ({:?})", command.get_program()))?;
    if !output.status.success() {
        // What the tool printed on standard output may be the message.
        let stdout = String::from_utf8_lossy(&output.stdout);
        if show_stdout && !stdout.trim().is_empty() {
            eprintln!("{}", stdout.trim_end());
        }
        return Err(ToolFailed { tool: tool.to_owned(), status: output.status }.into());
    }
    Ok(output.stdout)
}

/// Runs a step of an installation quietly: its output is shown only if it
/// fails, in the error.
fn run_quietly(what: &str, command: &mut Command) -> Result<()> {
    command.stdin(std::process::Stdio::null());
    let output = command.output().with_context(|| format!("could not run {:?} to {what}", command.get_program()))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if text.is_empty() {
            text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        anyhow::bail!("could not {what} ({}):\n{text}", output.status);
    }
    Ok(())
}

/// Installs a tool into `dir` once: `install` fills a temporary folder
/// beside it, which is then renamed into place, so a build interrupted
/// halfway leaves nothing that looks installed (and the next install
/// removes what it left, [`remove_abandoned`]). If another build installed
/// it meanwhile (`ready` exists after a failed rename), that one is used.
fn install_into(dir: &Path, ready: &Path, install: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().context("cache directory has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    remove_abandoned(parent, &format!(".{name}."), "");
    let partial = parent.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    if let Err(e) = install(&partial) {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&partial, dir) {
        let _ = std::fs::remove_dir_all(&partial);
        if !ready.exists() {
            return Err(e).with_context(|| format!("moving the new installation to {}", dir.display()));
        }
    }
    Ok(())
}

/// How long scratch files of a process that is gone stay untouched before
/// [`remove_abandoned`] takes them for abandoned.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes what a build killed halfway (Ctrl-C) left in `dir`. A build
/// names its scratch files and folders after its process,
/// `{prefix}{PID}{suffix}`, and removes them when it ends; a killed one
/// removes nothing. The next build removes those whose process is gone
/// and which have not changed for [`ABANDONED_AFTER`]: the hour
/// spares a build running in another PID namespace (a container) on the
/// same directory, which this process cannot see. Only where the process
/// table can be read (Linux's `/proc`); elsewhere nothing. Best effort: an
/// entry that cannot be removed stays.
pub(crate) fn remove_abandoned(dir: &Path, prefix: &str, suffix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.strip_prefix(prefix)).and_then(|rest| rest.strip_suffix(suffix)) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let Ok(metadata) = entry.path().symlink_metadata() else { continue };
        if metadata.modified().ok().and_then(|at| at.elapsed().ok()).is_none_or(|age| age < ABANDONED_AFTER) {
            continue;
        }
        let path = entry.path();
        let _ = if metadata.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

/// Wraps the core module at `core` into a component at `out`; returns false
/// if `out` already held exactly that component (so a server watching the
/// directory sees no change).
pub fn componentize(core: &Path, out: &Path) -> Result<bool> {
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("the module carries no valid WIT world (was it built with wit-bindgen?)")?
        .validate(true)
        .encode()
        .context("encoding the component")?;
    write_if_changed(out, &component)
}

/// Writes `bytes` to `out` unless it already holds them, whole or not at
/// all ([`wasmux_files::write_atomically`]), so that a server watching the
/// directory never reads a half-written file. Returns whether it wrote.
pub fn write_if_changed(out: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(out).is_ok_and(|existing| existing == bytes) {
        return Ok(false);
    }
    let dir = out.parent().context("output path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    wasmux_files::write_atomically(out, 0o644, |file| std::io::Write::write_all(file, bytes)).with_context(|| format!("writing {}", out.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// Above Linux's largest process id (2^22): never a live process.
    const GONE: u32 = 4_194_305;

    fn aged(path: &Path, age: Duration) {
        let file = std::fs::File::open(path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    }

    /// A build killed halfway left its scratch folder and file; the next
    /// build removes them, and nothing of a live process, of this one, of
    /// another project, or anything changed within the hour.
    #[test]
    fn scratch_left_by_a_killed_build_is_removed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let old = Duration::from_secs(2 * 3600);
        std::fs::create_dir(path(&format!(".hello.{GONE}.python"))).unwrap();
        std::fs::write(path(&format!(".hello.{GONE}.python/app.py")), "x").unwrap();
        std::fs::write(path(&format!(".hello.{GONE}.build")), "x").unwrap();
        let kept = [
            format!(".hello.{}.python", std::process::id()),
            ".hello.1.python".to_owned(),
            format!(".other.{GONE}.python"),
            format!(".hello.{}.python", GONE + 1),
            format!(".hello.x{GONE}.python"),
            "hello.wasm".to_owned(),
        ];
        for name in &kept {
            std::fs::create_dir(path(name)).unwrap();
        }
        for name in [format!(".hello.{GONE}.python"), format!(".hello.{GONE}.build")].iter().chain(&kept) {
            aged(&path(name), old);
        }
        // Changed a minute ago: its process may be in another PID namespace.
        aged(&path(&format!(".hello.{}.python", GONE + 1)), Duration::from_secs(60));
        for suffix in [".python", ".build"] {
            remove_abandoned(dir.path(), ".hello.", suffix);
        }
        let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut expected = kept.to_vec();
        expected.sort();
        assert_eq!(left, expected);
    }
}
