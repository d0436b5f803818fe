//! Debian packages a build or a test needs, installed with apt-get: as
//! root, or through `sudo -n` (never asking for a password).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;

/// Installs in this process, one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long apt-get waits for another apt-get to release its locks: apt's
/// own `DPkg::Lock::Timeout` for `install`, and a retry every second for
/// `update`, which that setting does not cover (apt 2.6).
const LOCK_WAIT: Duration = Duration::from_secs(300);

/// `apt-get update`, then `apt-get install -y PACKAGES`, for the packages
/// not installed yet; on failure, what apt-get printed.
///
/// Two callers at once (two tests that both need Chromium) would run two
/// apt-gets, and the second would fail on apt's lock: in one process they
/// take turns, and the second finds the packages installed; an apt-get of
/// another process is waited for, up to five minutes.
pub fn install(packages: &[&str]) -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let missing = missing(packages);
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| -> Result<()> {
        let mut command = if is_root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        // In English whatever the locale: a busy lock is found by its message.
        command
            .args(["-o", &format!("DPkg::Lock::Timeout={}", LOCK_WAIT.as_secs())])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C");
        crate::run_quietly(&format!("run apt-get {} (as root, or with sudo -n)", args.join(" ")), &mut command)
    };
    let started = Instant::now();
    loop {
        match apt(&["update", "-qq"]) {
            Err(e) if format!("{e:#}").contains("Could not get lock") && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_secs(1));
            }
            updated => break updated?,
        }
    }
    apt(&[&["install", "-y", "-qq"], &missing[..]].concat())
}

/// The `packages` that dpkg does not have installed.
fn missing<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages.iter().copied().filter(|package| !installed(package)).collect()
}

/// Whether dpkg has `package` installed.
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", package])
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

/// The first `name` on the `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_packages_not_installed_are_installed() {
        assert_eq!(missing(&["dpkg", "wasmux-no-such-package", "coreutils"]), ["wasmux-no-such-package"]);
        assert!(missing(&["dpkg", "coreutils"]).is_empty());
    }
}
