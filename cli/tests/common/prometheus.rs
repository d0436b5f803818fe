//! A `prometheus` of the test's own (Debian's 2.42, installed by
//! `examples/cluster/install-deps.sh` when missing; a test that needs it
//! fails without it): scraping the given targets every second, its
//! database in a temporary directory, its web API on a free loopback
//! port; killed when dropped, also when the test fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::{STEP, root};

/// How often the test's Prometheus scrapes.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of `targets` (job `wasmux`),
    /// and waits until it answers its API.
    pub fn start(targets: &[SocketAddr]) -> Self {
        ensure_installed();
        let mut last = String::new();
        // A free port may be taken between asking and listening: retry.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port");
            let dir = tempfile::tempdir().expect("temporary directory");
            let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
            let interval = format!("{}ms", SCRAPE_INTERVAL.as_millis());
            let config = format!(
                "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\nscrape_configs:\n  - job_name: wasmux\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            );
            let config_file = dir.path().join("prometheus.yml");
            std::fs::write(&config_file, config).expect("write prometheus.yml");
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("create the log");
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("run prometheus");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let end = Instant::now() + STEP;
            while Instant::now() < end {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("prometheus exited ({status}): {}", std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default());
                    break;
                }
                if get(addr, "/-/ready").is_ok_and(|(status, _)| status == 200) {
                    return Self { child, addr, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            if last.is_empty() {
                last = format!("prometheus was not ready on {addr} within {STEP:?}");
            }
        }
        panic!("could not start prometheus: {last}");
    }

    /// Prometheus' own log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The result of the instant query `query` (PromQL), now: its
    /// `data.result`.
    pub fn query(&self, query: &str) -> Value {
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={}", percent_encode(query))).expect("ask prometheus");
        let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("prometheus answered {status} without JSON ({e}): {body}"));
        assert_eq!((status, &answer["status"]), (200, &Value::from("success")), "{query}: {answer}");
        answer["data"]["result"].clone()
    }

    /// Waits until Prometheus has scraped each of `targets` targets, with
    /// success, in a scrape that began after `after`: its data then holds
    /// every count made before `after`.
    pub fn wait_for_scrapes_after(&self, targets: usize, after: SystemTime) {
        let after = after.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs_f64();
        let end = Instant::now() + STEP;
        loop {
            // (`timestamp` of a selector is the time of its last scrape.)
            let scraped = self.query("timestamp(up{job=\"wasmux\"})");
            let since: Vec<f64> = scraped.as_array().into_iter().flatten().filter_map(|s| s["value"][1].as_str()?.parse().ok()).collect();
            if since.len() == targets && since.iter().all(|&t| t > after) {
                let up = self.query("up{job=\"wasmux\"}");
                assert!(up.as_array().is_some_and(|all| all.iter().all(|s| s["value"][1] == "1")), "a scrape failed: {up}\n{}", self.log());
                return;
            }
            assert!(Instant::now() < end, "prometheus did not scrape all {targets} targets after {after} within {STEP:?}: {scraped}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` in HTTP/1.0 (so the answer is neither chunked nor kept
/// alive): (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, STEP)?;
    stream.set_read_timeout(Some(STEP))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// `text` for a URL's query string: every byte but letters, digits and
/// `-_.~` as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Installs Debian's `prometheus` with the project's script when it is
/// missing; fails the test if it cannot.
fn ensure_installed() {
    let found = Command::new("sh").args(["-c", "command -v prometheus"]).stdout(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return;
    }
    let status = Command::new("bash")
        .arg(root().join("examples/cluster/install-deps.sh"))
        .arg("prometheus")
        .status()
        .expect("run examples/cluster/install-deps.sh");
    assert!(status.success(), "prometheus is missing and could not be installed: apt-get install prometheus as root");
}
