//! Tenant isolation against a real `wasmux serve`: a tenant at its limits,
//! running a plugin that spins to its deadline, does not raise another
//! tenant's p99 latency by more than 2×.
//!
//! The noisy tenant keeps its one allowed request spinning in the `spin`
//! test fixture until the deadline, while more of its connections keep
//! asking and are answered `overloaded`. The quiet tenant's latency is
//! measured alone and beside that, in alternating blocks, on one server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Raw, Server, message};
use serde_json::json;

/// Requests timed per block.
const SAMPLES: usize = 1000;

/// Blocks alone, and as many beside the noisy tenant.
const BLOCKS: usize = 7;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[latencies.len() * 99 / 100]
}

/// Latencies of `SAMPLES` searches, one after another on one connection.
fn measure(conn: &mut Raw) -> Vec<Duration> {
    let request = common::search("ring");
    (0..SAMPLES)
        .map(|_| {
            let started = Instant::now();
            conn.send(&request);
            conn.read_message();
            started.elapsed()
        })
        .collect()
}

fn spin_request() -> Vec<u8> {
    message(
        json!({"byteorder": "little", "content-type": "application/x-spin", "content-encoding": "binary", "authorization": "Bearer noisy"}),
        b"forever",
    )
}

#[test]
fn a_tenant_spinning_at_its_limits_does_not_slow_another() {
    let server = Server::start_with_fixtures(&format!(
        "[tenants.default]\n\
         [tenants.noisy]\n\
         token-sha256 = \"{}\"\n\
         limits = {{ concurrent-requests = 1, requests-per-second = 2000, plugin-deadline = \"50ms\" }}\n\
         routes.\"application/x-spin\" = \"spin\"\n",
        wasmux::tenancy::TokenHash::of("noisy")
    ));
    let mut quiet = server.connect();
    measure(&mut quiet); // warm up

    // Quiet and noisy blocks alternate, and the medians of their p99s are
    // compared, so that a hiccup of the machine in one block decides nothing.
    let (timeouts, overloaded) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for _ in 0..BLOCKS {
        alone.push(p99(measure(&mut quiet)));
        let stop = Arc::new(AtomicBool::new(false));
        let noisy: Vec<_> = (0..4)
            .map(|_| {
                let mut conn = server.connect();
                let (stop, timeouts, overloaded) = (Arc::clone(&stop), Arc::clone(&timeouts), Arc::clone(&overloaded));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = conn.request(&spin_request());
                        match answer.error_code().as_str() {
                            "plugin-timeout" => timeouts.fetch_add(1, Ordering::Relaxed),
                            "overloaded" => {
                                // Refused while another of its requests
                                // spins: knock again a little later.
                                std::thread::sleep(Duration::from_millis(20));
                                overloaded.fetch_add(1, Ordering::Relaxed)
                            }
                            other => panic!("unexpected answer to the spinning tenant: {other}"),
                        };
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        beside.push(p99(measure(&mut quiet)));
        stop.store(true, Ordering::Relaxed);
        noisy.into_iter().for_each(|t| t.join().expect("noisy client"));
    }

    let (timeouts, overloaded) = (timeouts.load(Ordering::Relaxed), overloaded.load(Ordering::Relaxed));
    println!("quiet tenant p99 per block, alone: {alone:?}; beside the noisy tenant: {beside:?} ({timeouts} spins to the deadline, {overloaded} refused)");
    assert!(timeouts >= BLOCKS * 3 && overloaded >= BLOCKS * 10, "the noisy tenant was not at its limits: {timeouts} timeouts, {overloaded} refused");
    let (alone, beside) = (median(alone), median(beside));
    assert!(beside <= alone * 2, "the quiet tenant's p99 rose from {alone:?} to {beside:?} (medians over {BLOCKS} blocks), more than 2x");
}
