//! Debian packages a build or a test needs, installed with apt-get: as
//! root, or through `sudo -n` (never asking for a password).

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

/// `apt-get update`, then `apt-get install -y PACKAGES`; on failure, what
/// apt-get printed.
pub fn install(packages: &[&str]) -> Result<()> {
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
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        crate::run_quietly(&format!("run apt-get {} (as root, or with sudo -n)", args.join(" ")), &mut command)
    };
    apt(&["update", "-qq"])?;
    apt(&[&["install", "-y", "-qq"], packages].concat())
}

/// The first `name` on the `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
