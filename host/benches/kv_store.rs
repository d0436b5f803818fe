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
//! `cargo bench -p wasmux --bench kv_store` prints, per backend and
//! operation, the mean and the 50th, 99th and 99.9th percentiles. Under
//! `cargo test` (no `--bench`) it does a short run to check that it works.
//! The embedded store writes in a temporary directory: put `TMPDIR` on the
//! disk to measure (a tmpfs makes `sync = true` free).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wasmux::kv::{BucketId, Durability, KvLimits, Store};

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (operations, synced) = if benchmarking { (20_000, 500) } else { (200, 20) };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let synced_dir = tempfile::tempdir().expect("a temporary directory");
    let redis = RedisServer::start();

    println!("{:<22} {:<10} {:>8} {:>8} {:>8} {:>9}", "backend", "operation", "mean µs", "p50 µs", "p99 µs", "p99.9 µs");
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
                store.get(&bucket, "hits", &limits, deadline()).await.expect("get");
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
    });
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
        "{backend:<22} {operation:<10} {:>8.2} {:>8.2} {:>8.2} {:>9.2}",
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
