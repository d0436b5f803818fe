//! `cargo xtask install`: puts `wasmux` on the PATH.
//!
//! It installs the release build that `cargo xtask serve` and `cargo xtask
//! test` use (built here if it is not yet, reused if it is), lean: the
//! binary is stripped of its symbols and debug information, which go to
//! `wasmux.debug` beside it, linked from the binary by its
//! `.gnu_debuglink`. A backtrace of the installed binary still names every
//! function and, for wasmux's own code, its file and line: Rust's
//! backtraces read the debug file through that link. Without the debug
//! file (copied elsewhere alone), backtraces show addresses only.
//!
//! The split is done with binutils' `objcopy`, which every machine that
//! links Rust programs with the system's C toolchain has.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The most the installed binary may weigh (issue 20's bound).
pub const MAX_BINARY_SIZE: u64 = 40 << 20;

/// Where `cargo xtask install [--root ROOT]` puts `wasmux`: `ROOT/bin`,
/// as `cargo install --root ROOT` does; without a root, where `cargo
/// install` puts binaries, `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn bin_dir(root: Option<PathBuf>) -> Result<PathBuf> {
    bin_dir_in(root, std::env::var_os("CARGO_HOME"), std::env::var_os("HOME"))
}

fn bin_dir_in(root: Option<PathBuf>, cargo_home: Option<OsString>, home: Option<OsString>) -> Result<PathBuf> {
    let root = match (root, cargo_home.filter(|h| !h.is_empty()), home) {
        (Some(root), _, _) => root,
        (None, Some(cargo_home), _) => PathBuf::from(cargo_home),
        (None, None, Some(home)) => PathBuf::from(home).join(".cargo"),
        (None, None, None) => bail!("neither CARGO_HOME nor HOME is set: give --root DIR"),
    };
    Ok(root.join("bin"))
}

/// Where the release binary comes from.
pub enum Build {
    /// `cargo build --release -p wasmux-cli`, as `cargo xtask serve` builds it.
    Package,
    /// Already built, by the workspace's build of `cargo xtask test`: a
    /// build of the package alone would compile wasmtime's crates a second
    /// time (cargo's units for `-p wasmux-cli` and for `--workspace`
    /// differ), minutes for nothing.
    Done,
}

/// Builds (or reuses) the release binary and installs it into `dir` as
/// `wasmux` and `wasmux.debug`. Returns the installed binary's path.
pub fn install(root: &Path, dir: &Path, build: Build) -> Result<PathBuf> {
    if let Build::Package = build {
        crate::run(crate::cargo().current_dir(root).args(["build", "--release", "--locked", "-p", "wasmux-cli"]))?;
    }
    let built = root.join("target/release/wasmux");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let binary = dir.join("wasmux");
    let debug = dir.join("wasmux.debug");
    // Made beside their final names, then renamed: a `wasmux` already on
    // the PATH (a server running it) is replaced, never half-written.
    let (new_binary, new_debug) = (dir.join(".wasmux.installing"), dir.join(".wasmux.debug.installing"));
    objcopy(&["--only-keep-debug"], &built, &new_debug)?;
    objcopy(&["--strip-all"], &built, &new_binary)?;
    // The link names the debug file by its name only: it is looked up
    // beside the binary.
    let link = format!("--add-gnu-debuglink={}", new_debug.display());
    let status = Command::new("objcopy").arg(&link).arg(&new_binary).status().context("running objcopy")?;
    if !status.success() {
        bail!("objcopy {link} failed ({status})");
    }
    std::fs::rename(&new_debug, &debug).with_context(|| format!("installing {}", debug.display()))?;
    std::fs::rename(&new_binary, &binary).with_context(|| format!("installing {}", binary.display()))?;
    let size = std::fs::metadata(&binary)?.len();
    eprintln!("xtask: installed {} ({:.1} MB; symbols and debug information in {})", binary.display(), size as f64 / 1e6, debug.display());
    if size > MAX_BINARY_SIZE {
        bail!("{} is {size} bytes, over the {MAX_BINARY_SIZE} bytes wasmux promises", binary.display());
    }
    Ok(binary)
}

fn objcopy(args: &[&str], from: &Path, to: &Path) -> Result<()> {
    let status = match Command::new("objcopy").args(args).arg(from).arg(to).status() {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("objcopy is not installed: it comes with binutils (apt-get install binutils), which links Rust programs too")
        }
        Err(e) => return Err(e).context("running objcopy"),
    };
    if !status.success() {
        bail!("objcopy {} {} {} failed ({status})", args.join(" "), from.display(), to.display());
    }
    Ok(())
}

/// Checks an installed binary: it runs, it is within [`MAX_BINARY_SIZE`],
/// it links its debug file, and that file names wasmux's own functions
/// (what a backtrace shows).
pub fn check(binary: &Path) -> Result<()> {
    let out = Command::new(binary).arg("--version").output().with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).starts_with("wasmux ") {
        bail!("{} --version failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    }
    let size = std::fs::metadata(binary)?.len();
    if size > MAX_BINARY_SIZE {
        bail!("{} is {size} bytes, over {MAX_BINARY_SIZE}", binary.display());
    }
    let sections = Command::new("objdump").arg("-h").arg(binary).output().context("running objdump")?;
    if !String::from_utf8_lossy(&sections.stdout).contains(".gnu_debuglink") {
        bail!("{} has no .gnu_debuglink section: backtraces would not find its debug file", binary.display());
    }
    let debug = binary.with_file_name("wasmux.debug");
    let symbols = Command::new("nm").arg("--demangle").arg(&debug).output().context("running nm")?;
    let symbols = String::from_utf8_lossy(&symbols.stdout);
    for ours in ["wasmux::service::Service::handle", "wasmux::codec::"] {
        if !symbols.contains(ours) {
            bail!("{} does not name {ours}: a backtrace would not either", debug.display());
        }
    }
    eprintln!("xtask: {} runs, is {:.1} MB, and its debug file names wasmux's functions", binary.display(), size as f64 / 1e6);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_goes_to_the_roots_bin_as_cargo_install_puts_it() {
        let home = || Some(OsString::from("/home/u"));
        assert_eq!(bin_dir_in(Some("/opt/w".into()), Some("/c".into()), home()).unwrap(), Path::new("/opt/w/bin"));
        assert_eq!(bin_dir_in(None, Some("/c".into()), home()).unwrap(), Path::new("/c/bin"));
        assert_eq!(bin_dir_in(None, Some("".into()), home()).unwrap(), Path::new("/home/u/.cargo/bin"), "an empty CARGO_HOME is unset");
        assert_eq!(bin_dir_in(None, None, home()).unwrap(), Path::new("/home/u/.cargo/bin"));
        assert!(bin_dir_in(None, None, None).unwrap_err().to_string().contains("--root DIR"));
    }
}
