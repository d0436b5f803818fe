//! Test support: HAProxy with `examples/cluster/haproxy.cfg` in front of
//! three servers, on a free loopback port, stopped when dropped.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::registry::ensure_installed;
use super::{STEP, free_port, root};

/// A running `haproxy -db -f examples/cluster/haproxy.cfg`.
pub struct LoadBalancer {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// One server as HAProxy's `show stat` reports it.
#[derive(Debug, Clone)]
pub struct ServerStat {
    /// `UP`, `DOWN`, `DRAIN (agent)`, `UP 1/2` (going down), …
    pub status: String,
    /// Connections open now.
    pub current: u64,
    /// Connections since start.
    pub total: u64,
}

impl LoadBalancer {
    /// HAProxy balancing over `servers` (three), whose agents listen on
    /// the ports `agents`.
    pub fn start(servers: [SocketAddr; 3], agents: [u16; 3]) -> Self {
        ensure_installed("haproxy");
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temporary directory");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("an address");
            let mut command = Command::new("haproxy");
            command
                .args(["-db", "-f"])
                .arg(root().join("examples/cluster/haproxy.cfg"))
                .env("WASMUX_LB", addr.to_string())
                .env("WASMUX_HAPROXY_SOCKET", dir.path().join("haproxy.sock"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            for (i, (server, agent)) in servers.iter().zip(agents).enumerate() {
                command.env(format!("WASMUX_SERVER{}", i + 1), server.to_string()).env(format!("WASMUX_AGENT{}", i + 1), agent.to_string());
            }
            let mut child = command.spawn().expect("start haproxy");
            let deadline = Instant::now() + STEP;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    last_error = format!("haproxy exited ({status}): {stderr}");
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && dir.path().join("haproxy.sock").exists() {
                    // Its warnings (servers going up and down) are not read
                    // from here on; a thread drains them so it never blocks.
                    if let Some(mut pipe) = child.stderr.take() {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
                        });
                    }
                    return Self { child, addr, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start haproxy: {last_error}");
    }

    /// A command on HAProxy's admin socket, and its answer.
    pub fn admin(&self, command: &str) -> String {
        let mut socket = UnixStream::connect(self.dir.path().join("haproxy.sock")).expect("connect to haproxy's socket");
        socket.set_read_timeout(Some(STEP)).expect("timeout");
        socket.write_all(format!("{command}\n").as_bytes()).expect("send");
        let mut answer = String::new();
        socket.read_to_string(&mut answer).expect("read haproxy's answer");
        answer
    }

    /// Every server of backend `wasmux`, by name (`wasmux1` …).
    pub fn servers(&self) -> HashMap<String, ServerStat> {
        let csv = self.admin("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name} in {csv}"));
        let (px, sv, status, scur, stot) = (column("pxname"), column("svname"), column("status"), column("scur"), column("stot"));
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > stot && f[px] == "wasmux" && f[sv].starts_with("wasmux"))
            .map(|f| {
                let number = |i: usize| f[i].parse().unwrap_or(0);
                (f[sv].to_owned(), ServerStat { status: f[status].to_owned(), current: number(scur), total: number(stot) })
            })
            .collect()
    }

    /// Waits until server `name`'s status starts with `status`.
    pub fn wait_for_status(&self, name: &str, status: &str, within: Duration) -> ServerStat {
        let deadline = Instant::now() + within;
        loop {
            let stat = self.servers().remove(name).unwrap_or_else(|| panic!("no server {name}"));
            if stat.status.starts_with(status) {
                return stat;
            }
            assert!(Instant::now() < deadline, "{name} is {:?}, not {status}, after {within:?}", stat.status);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
