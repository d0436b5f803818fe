//! Rust plugins: finding (or installing) a compiler that can build wasm32 guests.
//!
//! Two routes, tried in order:
//! 1. the rustup toolchain, when its `wasm32-unknown-unknown` target is
//!    installed: a plain `cargo build --target wasm32-unknown-unknown`;
//! 2. Debian's `rustc-web` (which has the wasm32 targets built in) with the
//!    standard library compiled from `rust-web-src` (`-Zbuild-std`), linked
//!    by the rustup toolchain's `rust-lld`. This is the route on machines
//!    where rustup cannot download the wasm32 standard library; the two
//!    packages are installed with apt-get when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::debian::which;

pub const TARGET: &str = "wasm32-unknown-unknown";

/// The oldest Debian rustc that builds the plugins (edition 2024).
const MIN_DEBIAN_RUSTC: (u32, u32) = (1, 85);

/// How to compile for wasm32 on this machine.
pub enum Toolchain {
    /// The rustup toolchain has the wasm32 target.
    Rustup,
    /// Debian's rustc-web, building std from source.
    DebianWeb { rustc: PathBuf, linker: PathBuf },
}

impl Toolchain {
    /// Finds a working route, installing Debian's packages if needed.
    pub fn find_or_install() -> Result<Self> {
        let host_sysroot = sysroot(&host_rustc())?;
        if host_sysroot.join("lib/rustlib").join(TARGET).join("lib").is_dir() {
            return Ok(Self::Rustup);
        }
        let linker = find_linker(&host_sysroot)?;
        let debian = PathBuf::from("/usr/bin/rustc");
        if !debian_rustc_usable(&debian) {
            eprintln!(
                "the rustup toolchain has no {TARGET} target and Debian's rustc-web is missing; \
                 installing rustc-web and rust-web-src with apt-get"
            );
            install_debian_packages()?;
            if !debian_rustc_usable(&debian) {
                bail!(
                    "apt-get installed rustc-web and rust-web-src, but {} still cannot build for {TARGET} \
                     with its library source; check `{} --print target-list` and \
                     /usr/lib/rustlib/src/rust/library",
                    debian.display(),
                    debian.display()
                );
            }
        }
        Ok(Self::DebianWeb { rustc: debian, linker })
    }

    /// Adds what this route needs to a `cargo build` command whose target
    /// directory is `target_dir`.
    ///
    /// The paths of this machine are mapped to fixed names in what the
    /// compiler writes (file names in panic messages): `CARGO_HOME` (where
    /// the dependencies' sources are) to `/cargo`, the target directory to
    /// `/target`, so that a plugin builds to the same bytes for every user
    /// and machine. The project's own files are named relative to it by
    /// cargo already. The flags are the same for every build on a machine,
    /// so the standard library built with them is built once.
    pub fn configure(&self, cargo_build: &mut Command, target_dir: &Path) {
        cargo_build.args(["--target", TARGET]);
        let mut flags = inherited_rustflags();
        if let Some(home) = cargo_home() {
            flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
        }
        flags.push(format!("--remap-path-prefix={}=/target", target_dir.display()));
        match self {
            Self::Rustup => {}
            Self::DebianWeb { rustc, linker } => {
                flags.insert(0, format!("-Clinker={}", linker.display()));
                cargo_build.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1").arg("-Zbuild-std=std,panic_abort");
            }
        }
        // The encoded form keeps paths with spaces whole.
        cargo_build.env_remove("RUSTFLAGS").env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"));
    }

    /// Whether this route compiles the standard library for wasm32 from
    /// source (once per machine and target directory).
    pub fn builds_std(&self) -> bool {
        matches!(self, Self::DebianWeb { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Rustup => format!("rustup toolchain with the {TARGET} target"),
            Self::DebianWeb { rustc, .. } => {
                format!("{} (Debian rustc-web, std built from rust-web-src)", rustc.display())
            }
        }
    }
}

/// The user's own flags for the compiler, kept under ours.
fn inherited_rustflags() -> Vec<String> {
    if let Some(encoded) = std::env::var_os("CARGO_ENCODED_RUSTFLAGS").filter(|f| !f.is_empty()) {
        return encoded.to_string_lossy().split('\u{1f}').map(str::to_owned).collect();
    }
    std::env::var("RUSTFLAGS").unwrap_or_default().split_whitespace().map(str::to_owned).collect()
}

/// Where cargo keeps the sources of dependencies: `CARGO_HOME`, else `~/.cargo`.
fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| std::path::absolute(&home).unwrap_or(home))
}

fn host_rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

fn sysroot(rustc: &str) -> Result<PathBuf> {
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("could not run `{rustc} --print sysroot`"))?;
    if !out.status.success() {
        bail!("`{rustc} --print sysroot` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A wasm linker: rustup's `rust-lld`, else `wasm-ld` or `rust-lld` on PATH.
fn find_linker(host_sysroot: &Path) -> Result<PathBuf> {
    let rustlib = host_sysroot.join("lib/rustlib");
    if let Ok(entries) = std::fs::read_dir(&rustlib) {
        for entry in entries.flatten() {
            let candidate = entry.path().join("bin/rust-lld");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    for name in ["rust-lld", "wasm-ld"] {
        if let Some(found) = which(name) {
            return Ok(found);
        }
    }
    bail!(
        "no wasm linker found: neither {}/*/bin/rust-lld nor rust-lld or wasm-ld on PATH \
         (install the rustup toolchain's rust-lld, or Debian's lld package)",
        rustlib.display()
    )
}

/// True if `rustc` is a Debian rustc that knows the wasm32 target, is new
/// enough, and has the library source next to it.
fn debian_rustc_usable(rustc: &Path) -> bool {
    let Ok(version) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&version.stdout);
    let Some(numbers) = version.split_whitespace().nth(1) else {
        return false;
    };
    let mut parts = numbers.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < MIN_DEBIAN_RUSTC {
        return false;
    }
    let knows_target = Command::new(rustc)
        .args(["--print", "target-list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == TARGET))
        .unwrap_or(false);
    let has_source = sysroot(&rustc.to_string_lossy())
        .map(|s| s.join("lib/rustlib/src/rust/library/std").is_dir())
        .unwrap_or(false);
    knows_target && has_source
}

fn install_debian_packages() -> Result<()> {
    crate::debian::install(&["rustc-web", "rust-web-src"]).with_context(|| {
        format!(
            "cannot install Debian's rustc-web and rust-web-src; install the wasm toolchain by hand: \
             either `rustup target add {TARGET}`, or (Debian 12) \
             `apt-get install rustc-web rust-web-src` as root"
        )
    })
}
