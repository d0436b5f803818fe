//! Test support: Debian's `docker-registry` as a throwaway OCI registry on a
//! free loopback port, its storage in a temporary directory, stopped when
//! dropped (also when the test panics).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{STEP, free_port, root};

/// A running `docker-registry serve examples/cluster/registry.yml`.
pub struct LocalRegistry {
    child: Child,
    pub addr: SocketAddr,
    storage: tempfile::TempDir,
}

impl LocalRegistry {
    /// Starts a registry, installing Debian's `docker-registry` first when
    /// it is missing (as root or with `sudo -n`), as `cargo xtask` installs
    /// the wasm toolchain.
    pub fn start() -> Self {
        ensure_installed("docker-registry");
        // The registry cannot be told to pick a port: take a free one and
        // try again if another process took it meanwhile.
        let mut last_error = String::new();
        for _ in 0..5 {
            let storage = tempfile::tempdir().expect("temporary directory");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("an address");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(root().join("examples/cluster/registry.yml"))
                .env("REGISTRY_HTTP_ADDR", addr.to_string())
                .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", storage.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start docker-registry");
            let deadline = Instant::now() + STEP;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                    }
                    last_error = format!("docker-registry exited ({status}): {stderr}");
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    // Its log goes nowhere from here on; level warn keeps it short.
                    drop(child.stderr.take());
                    return Self { child, addr, storage };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            if last_error.is_empty() {
                last_error = format!("docker-registry did not listen on {addr} within {STEP:?}");
            }
        }
        panic!("could not start a registry: {last_error}");
    }

    /// `127.0.0.1:PORT/NAME`, a repository of this registry.
    pub fn repository(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// Where the registry keeps its blobs and manifests.
    pub fn storage(&self) -> &Path {
        self.storage.path()
    }

    /// Stops the registry now (the storage stays until the value is dropped).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs a Debian package of `examples/cluster/install-deps.sh` when its
/// program is not on PATH.
pub fn ensure_installed(program: &str) {
    let found = Command::new("sh").args(["-c", &format!("command -v {program}")]).stdout(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return;
    }
    let status = Command::new("bash")
        .arg(root().join("examples/cluster/install-deps.sh"))
        .arg(program)
        .status()
        .expect("run examples/cluster/install-deps.sh");
    assert!(status.success(), "{program} is missing and could not be installed: apt-get install {program} as root");
}
