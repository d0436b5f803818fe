//! The key-value store's rows of `cargo xtask bench` (`--only kv`): what a
//! plugin's `get` or `increment` costs over the same plugin's call without
//! the store, with the embedded store (default durability and `[kv] sync =
//! true`) and with Redis (a `redis-server` of the bench's own on a free
//! loopback port, stopped at the end), beside Redis's own round trip.
//!
//! The plugin is the test fixture `kv-counter` (`target/test-plugins`):
//! `ping` answers without the store, `get n` reads a counter, `incr n`
//! increments it. Each call is one request at a time on one kept
//! connection (`wasmux bench --mode persistent --connections 1`), a fresh
//! instance each (and again on one reused instance, for the embedded store
//! and Redis), so the difference between the rows is the store's cost
//! as the plugin sees it (through the component model into the host and
//! back). Two figures per row: the client's median latency, and the
//! server's CPU time per request (all its threads, from
//! `/proc/PID/task/*/schedstat`): the steadier of the two on a busy
//! machine. Redis runs on the load generator's cores (idle while the
//! server waits for it, as the server's are while the load generator
//! waits), and its round trip is measured from the servers' cores: the
//! hop a served call makes.
//!
//! Beside them, the same calls in one process with no network
//! (`cargo bench -p wasmux --bench kv_store`, pinned to the servers'
//! cores): what the store call itself costs a plugin, without the
//! kernel's and the scheduler's work around a served request. Figures
//! only: nothing here asserts a time.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::costs::cpu_time;
use super::machine::load_average;
use super::process::{Pinning, Side, Subject};

/// The section of `docs/benchmarks.md` these rows fill.
pub const HEADING: &str = "## The key-value store";

/// Requests per measured run (after as many again unmeasured).
const REQUESTS: u64 = 2000;

/// The calls measured on every backend: the request, and what it does.
const CALLS: [(&str, &str); 3] = [("ping", "no store call"), ("get n", "`get`"), ("incr n", "`increment`")];

/// One backend's server: its row name and its `wasmux serve` arguments.
struct Backend {
    name: &'static str,
    what: String,
    args: Vec<OsString>,
}

/// One call's figures on one backend, over the rounds.
struct Measured {
    backend: &'static str,
    call: &'static str,
    /// The client's median latency per round, in µs.
    p50_us: Vec<f64>,
    /// The server's CPU time per request per round, in µs.
    cpu_us: Vec<f64>,
}

/// Measures every backend `rounds` times (interleaved) and returns the
/// section for `docs/benchmarks.md`.
pub fn measure(root: &Path, wasmux: &Path, pinning: &Pinning, work: &Path, rounds: u32) -> Result<String> {
    let load_before = load_average();
    let dir = work.join("kv");
    std::fs::create_dir_all(dir.join("plugins"))?;
    let fixture = root.join("target/test-plugins/kv-counter.wasm");
    std::fs::copy(&fixture, dir.join("plugins/kv-counter.wasm")).with_context(|| format!("copying {}", fixture.display()))?;
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let routes = "[routes]\n\"text/plain\" = \"kv-counter\"\n";
    let plain = write("kv.toml", routes)?;
    let synced = write("kv-sync.toml", &format!("{routes}\n[kv]\nsync = true\n"))?;
    // One instance kept for the whole run: the store call without the
    // instance's making and unmaking around it.
    let reused = write("kv-reused.toml", &format!("[runtime]\nreuse = {{ requests = 1000000, idle = \"1h\" }}\n\n{routes}"))?;
    let redis = Redis::start(root, &dir.join("redis"), pinning)?;
    let serve_args = |config: &Path, data: &str, more: &[&str]| -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--plugins".into(), dir.join("plugins").into(), "--config".into(), config.into()];
        args.extend(["--data-dir".into(), dir.join(data).into(), "--cache-dir".into(), work.join("cache").into()]);
        args.extend(more.iter().map(OsString::from));
        args
    };
    let url = redis.url();
    let backends = [
        Backend { name: "embedded", what: "the embedded store (fjall), default durability".into(), args: serve_args(&plain, "data", &[]) },
        Backend { name: "embedded-sync", what: "the embedded store, `[kv] sync = true`".into(), args: serve_args(&synced, "data-sync", &[]) },
        Backend { name: "redis", what: format!("Redis {} on loopback", redis.version), args: serve_args(&plain, "data-redis", &["--kv", &url]) },
        Backend {
            name: "embedded-reused",
            what: "the embedded store, default durability, **reused instances**".into(),
            args: serve_args(&reused, "data-reused", &[]),
        },
        Backend {
            name: "redis-reused",
            what: format!("Redis {} on loopback, **reused instances**", redis.version),
            args: serve_args(&reused, "data-redis-reused", &["--kv", &url]),
        },
    ];
    let mut servers = Vec::new();
    for backend in &backends {
        let subject = Subject::wasmux(wasmux, pinning, &backend.args, backend.name, &backend.what)?;
        servers.push(subject);
    }
    let mut measured: Vec<Measured> = backends
        .iter()
        .flat_map(|b| CALLS.iter().map(move |(call, _)| Measured { backend: b.name, call, p50_us: Vec::new(), cpu_us: Vec::new() }))
        .collect();
    for round in 1..=rounds {
        for server in &mut servers {
            for (call, _) in CALLS {
                eprintln!("xtask: key-value store, round {round}/{rounds}: {} `{call}`", server.name);
                // Unmeasured first: the instance pool, the store's files and
                // Redis's connection warmed, the counter there.
                run_calls(wasmux, pinning, server, call, REQUESTS)?;
                let pid = server.process.id();
                let before = cpu_time(pid);
                let report = run_calls(wasmux, pinning, server, call, REQUESTS)?;
                let cpu = cpu_time(pid).saturating_sub(before) as f64 / 1e3 / REQUESTS as f64;
                server.process.check_alive()?;
                let errors = report["errors"].as_u64().unwrap_or(0);
                if errors > 0 {
                    bail!("{} answered {errors} errors to `{call}`: {report}", server.name);
                }
                let p50 = report["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN) * 1e3;
                if let Some(m) = measured.iter_mut().find(|m| m.backend == server.name && m.call == call) {
                    m.p50_us.push(p50);
                    m.cpu_us.push(cpu);
                }
            }
        }
    }
    let round_trip = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pinning.pin_this_thread(Side::Server)?;
                redis.round_trip(REQUESTS)
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the round-trip thread panicked")))
    })?;
    drop(servers);
    drop(redis);
    let in_process = in_process(root, pinning)?;
    let load = format!("{load_before} before, {} after", load_average());
    let section = render(&backends, &measured, round_trip, pinning, &load, rounds, &in_process);
    eprint!("{section}");
    Ok(section)
}

/// The tables of `cargo bench -p wasmux --bench kv_store`, run pinned to
/// the servers' cores (built first, unpinned).
fn in_process(root: &Path, pinning: &Pinning) -> Result<String> {
    let bench = ["bench", "--locked", "-p", "wasmux", "--bench", "kv_store"];
    crate::run(crate::cargo().current_dir(root).args(bench).arg("--no-run"))?;
    eprintln!("xtask: key-value store, in one process: cargo bench -p wasmux --bench kv_store");
    let mut command = pinning.command(Path::new(&crate::cargo_program()), Side::Server);
    crate::without_cargo_run_variables(&mut command);
    let output = command.current_dir(root).args(bench).args(["--", "--bench"]).stderr(Stdio::inherit()).output().context("running the kv_store bench")?;
    if !output.status.success() {
        bail!("cargo bench -p wasmux --bench kv_store failed: {}", output.status);
    }
    String::from_utf8(output.stdout).context("the kv_store bench printed something that is not UTF-8")
}

/// `REQUESTS` requests `call`, one at a time on one connection.
fn run_calls(wasmux: &Path, pinning: &Pinning, server: &Subject, call: &str, requests: u64) -> Result<Value> {
    let mut command = pinning.command(wasmux, Side::LoadGenerator);
    command.args(["bench", &server.addr, "--json", "--mode", "persistent", "--connections", "1"]);
    command.args(["--mix", "custom=1", "--content-type", "text/plain", "--encoding", "utf-8", "--content", call]);
    command.args(["--requests", &requests.to_string()]);
    let output = command.output().context("running wasmux bench")?;
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("wasmux bench against {} (`{call}`) printed no report: {}", server.name, String::from_utf8_lossy(&output.stderr)))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn render(backends: &[Backend], measured: &[Measured], round_trip: f64, pinning: &Pinning, load: &str, rounds: u32, in_process: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{HEADING}\n");
    let _ = writeln!(
        md,
        "The test fixture `kv-counter`, a fresh instance per request (the default) except in the rows of reused \
         instances (`[runtime] reuse`, one instance for the whole run), one request at a time on one connection \
         (`wasmux bench --mode persistent --connections 1`), {REQUESTS} requests per run after as many unmeasured, \
         the median of {rounds} rounds. `ping` is the same plugin's call without the store; \"over `ping`\" is what \
         the store call adds. Server CPU is all the server's threads per request. {}. Load average {load}.\n",
        pinning.describe()
    );
    let _ = writeln!(md, "| backend | call | p50 latency (µs) | over `ping` | server CPU (µs/request) | over `ping` |");
    let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | ---: |");
    for backend in backends {
        let of = |call: &str| measured.iter().find(|m| m.backend == backend.name && m.call == call);
        let Some(ping) = of("ping") else { continue };
        let (ping_p50, ping_cpu) = (median(&ping.p50_us), median(&ping.cpu_us));
        for (call, what) in CALLS {
            let Some(m) = of(call) else { continue };
            let (p50, cpu) = (median(&m.p50_us), median(&m.cpu_us));
            let over = |value: f64, base: f64| if call == "ping" { "—".to_owned() } else { format!("{:+.1}", value - base) };
            let _ = writeln!(md, "| {} | {what} | {p50:.1} | {} | {cpu:.1} | {} |", backend.what, over(p50, ping_p50), over(cpu, ping_cpu));
        }
    }
    let _ = writeln!(
        md,
        "\nRedis's own round trip on this loopback (`PING`, one at a time from the servers' cores to Redis on the load \
         generator's, median of {REQUESTS}): {round_trip:.1} µs.\n"
    );
    let _ = writeln!(
        md,
        "Issue 24's targets: with the embedded store at the default durability, a `get` or an `increment` adds at most 5 µs \
         over `ping`; with Redis, at most Redis's round trip plus 20 µs; with `sync = true`, measured (an `fdatasync` per \
         write). Read the server CPU column first on a busy machine: the latency column also holds both loopback trips and \
         the scheduler's delays.\n"
    );
    let _ = writeln!(
        md,
        "### In one process\n\nThe same calls with no network around them (`cargo bench -p wasmux --bench kv_store`, {}, \
         with the Redis it starts): what the store call itself costs a plugin, and the store's own \
         operations under it. The Redis rows compare with the client crate's own `HGET`, measured alongside.\n\n{}",
        pinning.where_is(Side::Server),
        in_process.trim_end()
    );
    md.push('\n');
    md
}

/// A `redis-server` of the bench's own: a free loopback port, no
/// persistence, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    version: String,
}

impl Redis {
    /// Starts it on the load generator's cores (when pinned).
    fn start(root: &Path, dir: &Path, pinning: &Pinning) -> Result<Self> {
        let found = Command::new("redis-server").arg("--version").output();
        let output = match found {
            Ok(output) if output.status.success() => output,
            _ => {
                crate::run(Command::new("bash").arg(root.join("examples/cluster/install-deps.sh")).arg("redis-server"))?;
                Command::new("redis-server").arg("--version").output().context("running redis-server --version")?
            }
        };
        // `Redis server v=7.0.15 sha=…`
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text.split_whitespace().find_map(|w| w.strip_prefix("v=")).unwrap_or("?").to_owned();
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = pinning
            .command(Path::new("redis-server"), Side::LoadGenerator)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let mut redis = Self { child, port, version };
        let addr = redis.addr();
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if Instant::now() > end || matches!(redis.child.try_wait(), Ok(Some(_))) {
                bail!("redis-server did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// The median time of a `PING` answered, one at a time, in µs: the
    /// floor under the Redis rows.
    fn round_trip(&self, times: u64) -> Result<f64> {
        let mut stream = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut answer = [0; 7];
        let mut took = Vec::new();
        for _ in 0..times {
            let started = Instant::now();
            stream.write_all(b"PING\r\n")?;
            stream.read_exact(&mut answer)?;
            took.push(started.elapsed().as_secs_f64() * 1e6);
            if &answer != b"+PONG\r\n" {
                bail!("redis-server answered {:?} to PING", String::from_utf8_lossy(&answer));
            }
        }
        Ok(median(&took))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
