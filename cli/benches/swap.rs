//! Swap latency: the time from writing a plugin file to the first response
//! served by the new version, measured against a real `wasmux serve`.
//!
//! `cargo xtask plugins && cargo bench --bench swap` prints median and worst
//! over many swaps, for versions seen before (compiled code reused) and for
//! new versions (compiled on the spot), each by atomic rename and by
//! in-place write. New versions are made by appending a custom section to
//! a built component, which changes its hash but not its behaviour.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Answer, Server, message};

/// Swaps of each kind measured by `cargo bench`.
const ROUNDS: usize = 20;

fn probe() -> Vec<u8> {
    message(
        serde_json::json!({"byteorder": "little", "content-type": "binary/custom-client-binary-type", "content-encoding": "utf-8"}),
        br#"{"action": "search", "value": "ring"}"#,
    )
}

fn is_echo(answer: &Answer) -> bool {
    answer.content.starts_with(b"First 10 bytes")
}

/// `component` with a custom section appended: a new version, same code.
fn variant(component: &[u8], n: usize) -> Vec<u8> {
    let name = b"wasmux-bench";
    let payload = n.to_le_bytes();
    let mut out = component.to_vec();
    out.push(0); // custom section id
    out.push((1 + name.len() + payload.len()) as u8); // size (fits in one LEB128 byte)
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // A test runner asking for a list; there is nothing to list.
    }
    // `cargo bench` passes --bench; `cargo test --benches` runs this
    // too, without it: then one swap of each kind checks that it works.
    let rounds = if std::env::args().any(|a| a == "--bench") { ROUNDS } else { 1 };
    let built = common::plugins_dir();
    let echo = std::fs::read(built.join("binary-echo.wasm")).expect("binary-echo.wasm");
    let search = std::fs::read(built.join("search.wasm")).expect("search.wasm");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("binary-echo.wasm"), &echo).expect("write plugin");
    let server = Server::start_with(&["--plugins", dir.path().to_str().expect("utf-8 path")]);
    let mut conn = server.connect();
    let target = dir.path().join("binary-echo.wasm");

    let mut results: Vec<(&str, &str, Duration)> = Vec::new();
    let mut serving_echo = true;
    let mut fresh = 0;
    for round in 0..rounds * 4 {
        let new_version = round % 4 >= 2;
        let base = if serving_echo { &search } else { &echo };
        let bytes = if new_version {
            fresh += 1;
            variant(base, fresh)
        } else {
            base.clone()
        };
        let by_rename = round % 2 == 0;
        let started = Instant::now();
        if by_rename {
            let tmp = dir.path().join(".binary-echo.wasm.tmp");
            std::fs::write(&tmp, &bytes).expect("write");
            std::fs::rename(&tmp, &target).expect("rename");
        } else {
            std::fs::write(&target, &bytes).expect("write in place");
        }
        loop {
            let answer = conn.request(&probe());
            if is_echo(&answer) != serving_echo {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "swap not served after 10 s; log:\n{}", server.log());
        }
        results.push((if new_version { "new version (compiled)" } else { "seen before (cached)" }, if by_rename { "rename" } else { "in place" }, started.elapsed()));
        serving_echo = !serving_echo;
        std::thread::sleep(Duration::from_millis(50));
    }

    println!("swap latency: file written -> first response from the new version ({rounds} swaps each)");
    println!("{:<24} {:<9} {:>10} {:>10} {:>10}", "version", "write", "median", "p90", "worst");
    for version in ["seen before (cached)", "new version (compiled)"] {
        for write in ["rename", "in place"] {
            let mut times: Vec<Duration> = results.iter().filter(|r| r.0 == version && r.1 == write).map(|r| r.2).collect();
            times.sort();
            let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
            println!(
                "{version:<24} {write:<9} {:>8.1}ms {:>8.1}ms {:>8.1}ms",
                at(0.5).as_secs_f64() * 1e3,
                at(0.9).as_secs_f64() * 1e3,
                at(1.0).as_secs_f64() * 1e3
            );
        }
    }
    println!("(the watcher waits {:?} of quiet after a file's last change before reading it)", wasmux::watcher::DEBOUNCE);
}
