//! A `redis-server` of the test's own (Debian's, installed by
//! `examples/cluster/install-deps.sh` when missing; a test that needs it
//! fails without it): no persistence, a temporary working directory, a
//! free loopback port; killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{STEP, root};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        ensure_installed();
        let mut last = String::new();
        // A free port may be taken between asking and listening: retry.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port");
            let dir = tempfile::tempdir().expect("temporary directory");
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run redis-server");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let end = Instant::now() + STEP;
            while Instant::now() < end {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("redis-server exited ({status})");
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Self { child, port, dir };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if last.is_empty() {
                last = format!("redis-server did not listen on {addr} within {STEP:?}");
            }
        }
        panic!("could not start redis-server: {last}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (as a crash would) and waits until it is gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port, empty (there is no persistence),
    /// and waits until it listens.
    pub fn restart(&mut self) {
        self.stop();
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let end = Instant::now() + STEP;
        // The port may linger a moment after the kill: try until it binds.
        while Instant::now() < end {
            let mut child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run redis-server");
            while Instant::now() < end {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    self.child = child;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart redis-server on {addr} within {STEP:?}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs Debian's `redis-server` with the project's script when it is
/// missing; fails the test if it cannot.
fn ensure_installed() {
    let found = Command::new("sh").args(["-c", "command -v redis-server"]).stdout(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return;
    }
    let status = Command::new("bash")
        .arg(root().join("examples/cluster/install-deps.sh"))
        .arg("redis-server")
        .status()
        .expect("run examples/cluster/install-deps.sh");
    assert!(status.success(), "redis-server is missing and could not be installed: apt-get install redis-server as root");
}
