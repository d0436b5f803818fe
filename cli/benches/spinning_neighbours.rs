//! Latency of normal requests with and without plugins spinning on other
//! connections: the figure behind docs/configuration.md's claim that a plugin running
//! to its deadline does not hold up other requests.
//!
//! `cargo bench -p wasmux-cli --bench spinning_neighbours` (after `cargo xtask
//! plugins`) starts a real `wasmux serve` with the test fixtures, then times
//! sequential search requests on one connection: alone, and while twice as
//! many `spin` calls as this machine has cores run to their 1 s deadline on
//! other connections. Under `cargo test` (no `--bench`) it does a short run
//! to check that it works.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Raw, Server, message, search};
use serde_json::json;

const CONFIG: &str = r#"
[limits]
plugin-deadline = "1s"

[routes]
"text/json" = "search"
"test/spin" = "spin"
"*" = "binary-echo"
"#;

/// Times `count` search requests, one after another on one connection.
fn latencies(server: &Server, count: usize) -> Vec<Duration> {
    let mut conn = server.connect();
    let mut all = Vec::with_capacity(count);
    for _ in 0..count {
        let sent = Instant::now();
        let answer = conn.request(&search("ring"));
        all.push(sent.elapsed());
        assert_eq!(answer.result(), "In the caves beneath the Misty Mountains. 💍");
    }
    all.sort();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(label: &str, sorted: &[Duration]) {
    println!(
        "{label:<34} n={:<5} p50 {:>9.3} ms   p99 {:>9.3} ms   max {:>9.3} ms",
        sorted.len(),
        percentile(sorted, 0.50).as_secs_f64() * 1e3,
        percentile(sorted, 0.99).as_secs_f64() * 1e3,
        sorted[sorted.len() - 1].as_secs_f64() * 1e3,
    );
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let count = if benchmarking { 2000 } else { 50 };
    let server = Server::start_with_fixtures(CONFIG);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    // Warm up (compiled code in caches, the instance pool touched).
    latencies(&server, count / 10 + 1);
    report("alone", &latencies(&server, count));

    let spinners = 2 * cores;
    let stop = Arc::new(AtomicBool::new(false));
    let deadlines = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..spinners)
        .map(|_| {
            let (addr, stop, deadlines) = (server.addr, Arc::clone(&stop), Arc::clone(&deadlines));
            std::thread::spawn(move || {
                let mut conn = Raw::connect(addr);
                let spin = message(json!({"byteorder": "little", "content-type": "test/spin", "content-encoding": "utf-8"}), b"forever");
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(conn.request(&spin).error_code(), "plugin-timeout");
                    deadlines.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Let every spinning call start.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let busy = latencies(&server, count);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    report(&format!("beside {spinners} spinning plugins"), &busy);
    for thread in threads {
        thread.join().expect("spinner");
    }
    println!(
        "({cores} cores; the {count} requests took {:.2} s; the spinning calls, {} in all, each ran to its 1 s deadline)",
        elapsed.as_secs_f64(),
        deadlines.load(Ordering::Relaxed),
    );
}
