//! What a key-value operation costs the host, per backend: `get` and
//! `increment` through [`wasmux::kv::Store`], one after another from one
//! task (so each figure is one operation's latency, not a throughput):
//! in memory, the embedded store with the default durability (handed to
//! the kernel) and with `sync = true` (fdatasync before returning), and a
//! Redis on loopback (Debian's `redis-server`, started here on a free
//! port with no persistence; installed by `examples/cluster/install-deps.sh`
//! when missing).
//!
//! The last row is the Redis client crate's own `HGET`, the round trip
//! that the Redis rows add to.
//!
//! Then what a plugin pays for a store call, still in this process: the
//! test fixture `kv-counter` (`target/test-plugins`, built by `cargo xtask
//! test`) called through [`Plugin::call`], the path a served request
//! takes once its frame is decoded (an instance, the component model's
//! calls into the host and back, the store, the server's metrics), with
//! `get n` and `incr n` against the same plugin's `ping`, which touches no
//! store; with a fresh instance per call (the default) and with one
//! instance reused. No network and no other request around it: the
//! difference is the call itself, without the kernel's and the
//! scheduler's work around a served request (which `cargo xtask bench
//! --only kv` measures).
//!
//! `cargo bench -p wasmux --bench kv_store` prints two Markdown tables:
//! per backend and operation, the mean and the 50th, 99th and 99.9th
//! percentiles; per backend, instance mode and call, the mean time and CPU
//! time (all the process's threads) per call, the median of three runs,
//! and what the store call adds over `ping`. `cargo xtask bench --only kv`
//! runs it pinned to the server's cores and puts both tables beside the
//! served rows. Under `cargo test` (no `--bench`) it does a short run to
//! check that it works. The embedded store writes in a temporary
//! directory: put `TMPDIR` on the disk to measure (a tmpfs makes `sync =
//! true` free).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wasmux::kv::{BucketId, Durability, KvLimits, OnDemand, Store, StoreConfig};
use wasmux::message::Message;
use wasmux::plugins::Plugin;
use wasmux::runtime::{CallContext, Reuse, ReuseCount, Runtime, RuntimeSettings, Unobserved, Wasi};

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (operations, synced) = if benchmarking { (20_000, 500) } else { (200, 20) };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let synced_dir = tempfile::tempdir().expect("a temporary directory");
    let redis = RedisServer::start();

    println!("The store's own operations, through `Store` (µs):\n");
    println!("| backend | operation | mean | p50 | p99 | p99.9 |\n| --- | --- | ---: | ---: | ---: | ---: |");
    runtime.block_on(async {
        let backends = [
            ("memory", Store::in_memory(), operations),
            ("embedded", Store::embedded(dir.path(), Durability::Process).expect("the embedded store"), operations),
            ("embedded, sync = true", Store::embedded(synced_dir.path(), Durability::Sync).expect("the embedded store"), synced),
            ("redis (loopback)", Store::redis(&redis.url()).expect("a Redis URL"), operations),
        ];
        for (name, store, count) in backends {
            let bucket = BucketId::new("bench", "counter", "default");
            let limits = KvLimits::default();
            let deadline = || Instant::now() + Duration::from_secs(5);
            store.set(&bucket, "hits", b"0".to_vec(), &limits, deadline()).await.expect("set");
            let mut gets = histogram();
            for _ in 0..count {
                let started = Instant::now();
                store.get(&bucket, "hits", deadline()).await.expect("get");
                record(&mut gets, started);
            }
            report(name, "get", &gets);
            let mut increments = histogram();
            for _ in 0..count {
                let started = Instant::now();
                store.increment(&bucket, "hits", 1, &limits, deadline()).await.expect("increment");
                record(&mut increments, started);
            }
            report(name, "increment", &increments);
        }
        // The floor under the Redis rows: the same HGET sent by the client
        // crate itself, one round trip with nothing of ours around it.
        let client = redis::Client::open(redis.url()).expect("a Redis URL");
        let mut connection = client.get_multiplexed_async_connection().await.expect("connect to Redis");
        let mut raw = histogram();
        for _ in 0..operations {
            let started = Instant::now();
            let _: Option<Vec<u8>> = redis::cmd("HGET").arg("wasmux:kv:5:bench7:counter7:default").arg("hits").query_async(&mut connection).await.expect("HGET");
            record(&mut raw, started);
        }
        report("redis, client alone", "HGET", &raw);

        let plugin_dirs = [tempfile::tempdir().expect("a temporary directory"), tempfile::tempdir().expect("a temporary directory")];
        let configs = [
            ("memory", StoreConfig::Memory),
            ("embedded", StoreConfig::Embedded { dir: plugin_dirs[0].path().into(), durability: Durability::Process }),
            ("embedded, sync = true", StoreConfig::Embedded { dir: plugin_dirs[1].path().into(), durability: Durability::Sync }),
            ("redis (loopback)", StoreConfig::Redis { url: redis.url() }),
        ];
        let (calls, synced_calls) = if benchmarking { (20_000, 500) } else { (50, 10) };
        println!(
            "\n`kv-counter` through `Plugin::call` (µs per call: the mean of a run of {calls}, {synced_calls} with `sync = true`, \
             the median of {ROUNDS} runs; CPU is all the process's threads'):\n"
        );
        println!("| backend | instances | call | time | CPU | time over `ping` | CPU over `ping` |");
        println!("| --- | --- | --- | ---: | ---: | ---: | ---: |");
        for (name, config) in configs {
            let count = if matches!(config, StoreConfig::Embedded { durability: Durability::Sync, .. }) { synced_calls } else { calls };
            plugin_calls(name, config, count).await;
        }
    });
}

/// Runs of each plugin call, whose median is reported.
const ROUNDS: usize = 3;

/// Calls `kv-counter` with `ping`, `get n` and `incr n`, `count` times each
/// per run, on `config`'s store, with fresh and with reused instances, and
/// prints a row per call.
async fn plugin_calls(backend: &str, config: StoreConfig, count: u32) {
    // The server's own metrics, which every plugin's store call reports to
    // (the store's own operations, in the first table, report nothing).
    let store = Arc::new(OnDemand::new(config, Arc::new(wasmux::metrics::Metrics::new())));
    let runtime = Runtime::with_store(RuntimeSettings::default(), Arc::new(Unobserved), store).expect("a runtime");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugins/kv-counter.wasm");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (build the test fixtures with `cargo xtask plugins`)", path.display()));
    let plugin = Plugin::load(&runtime, "kv-counter", wasmux::digest::Digest::of(&bytes), &bytes, Wasi::Allowed).expect("kv-counter loads");
    let reused = Reuse { requests: ReuseCount::Fixed(std::num::NonZeroU32::MAX), idle: Duration::from_secs(3600) };
    for (mode, reuse) in [("fresh", Reuse::FRESH), ("reused", reused)] {
        // A deadline far away: a descheduled call must not fail the run.
        let mut context = CallContext { reuse, tenant: "bench".into(), ..CallContext::default() };
        context.limits.deadline = Duration::from_secs(10);
        let mut ping = (0.0, 0.0);
        for call in ["ping", "get n", "incr n"] {
            let request = Message::new("text/plain", "utf-8", call.as_bytes().to_vec());
            let mut times = Vec::new();
            let mut cpus = Vec::new();
            for _ in 0..ROUNDS {
                // Unmeasured first: the instance pool, the store, Redis's connection warm.
                for _ in 0..count / 4 {
                    plugin.call(&request, &context).await.expect("kv-counter answers");
                }
                let (cpu_before, started) = (process_cpu(), Instant::now());
                for _ in 0..count {
                    std::hint::black_box(plugin.call(&request, &context).await.expect("kv-counter answers"));
                }
                times.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(count));
                cpus.push(process_cpu().saturating_sub(cpu_before).as_secs_f64() * 1e6 / f64::from(count));
            }
            let (time, cpu) = (median(&mut times), median(&mut cpus));
            let over = |value: f64, base: f64| if call == "ping" { "—".to_owned() } else { format!("{:+.2}", value - base) };
            println!("| {backend} | {mode} | `{call}` | {time:.2} | {cpu:.2} | {} | {} |", over(time, ping.0), over(cpu, ping.1));
            if call == "ping" {
                ping = (time, cpu);
            }
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// CPU time of all this process's threads (the store's own included),
/// exact to the nanosecond (a thread's `/proc` figures are updated at
/// the scheduler's ticks only).
fn process_cpu() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to write.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(read, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, started: Instant) {
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(nanos.max(1));
}

fn report(backend: &str, operation: &str, histogram: &Histogram<u64>) {
    let micros = |nanos: f64| nanos / 1000.0;
    println!(
        "| {backend} | {operation} | {:.2} | {:.2} | {:.2} | {:.2} |",
        micros(histogram.mean()),
        micros(histogram.value_at_quantile(0.5) as f64),
        micros(histogram.value_at_quantile(0.99) as f64),
        micros(histogram.value_at_quantile(0.999) as f64),
    );
}

/// `redis-server` on a free loopback port, no persistence, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let found = Command::new("sh").args(["-c", "command -v redis-server"]).stdout(Stdio::null()).status();
        if !found.is_ok_and(|s| s.success()) {
            let installed = Command::new("bash").arg(root.join("examples/cluster/install-deps.sh")).arg("redis-server").status();
            assert!(installed.is_ok_and(|s| s.success()), "redis-server is missing and could not be installed");
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                panic!("redis-server did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, _dir: dir }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
