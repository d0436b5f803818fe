//! `wasmux bench` against a real `wasmux serve`, and against servers that
//! answer wrongly, not at all, or are not there: every answer is checked
//! and every failure counted by kind.


use std::net::TcpListener;
use std::process::{Command, Output};

use crate::common::{Answer, Raw, STEP, Server, message, plugins_dir};
use serde_json::{Value, json};
use wasmux::message::{ErrorCode, Message};

/// Runs `wasmux bench ADDR --json ARGS` and returns its report and whether it succeeded.
fn bench(addr: &str, args: &[&str]) -> (Value, bool) {
    let output = run(addr, &["--json"], args);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("bench did not print a JSON report ({e}): {}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    });
    (report, output.status.success())
}

fn run(addr: &str, extra: &[&str], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmux"))
        .args(["bench", addr])
        .args(extra)
        .args(args)
        .output()
        .expect("run wasmux bench")
}

fn count(report: &Value, kind: &str) -> u64 {
    report["error_kinds"][kind]["count"].as_u64().unwrap_or(0)
}

#[test]
fn every_mode_gets_the_guides_answers() {
    let server = Server::start();
    for mode in [
        &["--mode", "connect"][..],
        &["--mode", "connect", "--reset-close"],
        &["--mode", "persistent"],
        &["--mode", "pipelined", "--depth", "4"],
    ] {
        let mut args = vec!["-n", "300", "-c", "4"];
        args.extend_from_slice(mode);
        let (report, ok) = bench(&server.addr_string(), &args);
        assert!(ok, "{mode:?}: {report}");
        assert_eq!(report["ok"], 300, "{mode:?}: {report}");
        assert_eq!(report["errors"], 0, "{mode:?}: {report}");
        assert!(report["requests_per_second"].as_f64().unwrap() > 0.0);
        let latency = &report["latency_ms"];
        assert!(latency["p50"].as_f64().unwrap() <= latency["p99"].as_f64().unwrap(), "{report}");
        assert!(latency["p99"].as_f64().unwrap() <= latency["max"].as_f64().unwrap(), "{report}");
    }
}

#[test]
fn a_timed_run_with_warmup_and_the_human_report() {
    let server = Server::start_with(&["--native"]);
    let output = run(&server.addr_string(), &[], &["--duration", "300ms", "--warmup", "100ms", "-c", "2"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("persistent, 2 connections, mix search=1,binary=1"), "{text}");
    assert!(text.contains("requests/s") && text.contains("p99"), "{text}");
    assert!(text.contains(", 0 errors"), "{text}");
}

#[test]
fn wrong_answers_and_error_answers_are_counted_by_kind() {
    // Searches go to binary-echo (a wrong answer); binary requests have no route.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[routes]\n\"text/json\" = \"binary-echo\"\n").unwrap();
    let plugins = plugins_dir();
    let server = Server::start_with(&["--plugins", plugins.to_str().unwrap(), "--config", config.path().to_str().unwrap()]);
    let (report, ok) = bench(&server.addr_string(), &["-n", "100", "-c", "2", "--mode", "pipelined", "--depth", "3"]);
    assert!(!ok, "a run with wrong answers must fail: {report}");
    assert_eq!(report["ok"], 0, "{report}");
    assert_eq!(count(&report, "wrong-answer"), 50, "{report}");
    assert_eq!(count(&report, "error-answer:no-route"), 50, "{report}");
    let first = report["error_kinds"]["wrong-answer"]["first"].as_str().unwrap();
    assert!(first.contains("expected text/json (utf-8)") && first.contains("got binary/custom-server-binary-type"), "{first}");
}

#[test]
fn custom_requests_need_an_answer_that_is_not_an_error() {
    let server = Server::start();
    let addr = server.addr_string();
    let (report, ok) = bench(&addr, &["-n", "20", "-c", "2", "--mix", "custom=1", "-t", "image/png", "--content", "not a png"]);
    assert!(ok, "{report}");
    assert_eq!(report["ok"], 20, "{report}");
    // A search that the plugin refuses is an error answer.
    let (report, ok) = bench(&addr, &["-n", "20", "-c", "2", "--mix", "custom=1", "-t", "text/json", "-e", "utf-8", "--content", "{"]);
    assert!(!ok);
    assert_eq!(count(&report, "error-answer:bad-request"), 20, "{report}");
}

/// `:PORT` resolves to [::]:PORT, then 0.0.0.0:PORT (docs/protocol.md,
/// Addresses); a server listening on 127.0.0.1 alone refuses the first.
/// The bench, as `wasmux send` does, goes on to the next address, and
/// every request is answered (it used to send them all to the first and
/// report each one refused).
#[test]
fn the_bench_uses_the_first_address_that_accepts() {
    let server = Server::start();
    assert!(server.addr.is_ipv4(), "{}", server.addr);
    let (report, ok) = bench(&format!(":{}", server.addr.port()), &["-n", "10", "-c", "1"]);
    assert!(ok, "{report}");
    assert_eq!(report["ok"], 10, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
}

#[test]
fn silent_and_absent_servers_are_timeouts_and_connect_errors() {
    // Accepts connections (the kernel does, from its backlog) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    let output = run(&addr, &["--json"], &["-n", "4", "-c", "2", "--timeout", "200ms"]);
    assert!(started.elapsed() < STEP);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(count(&report, "timeout"), 4, "{report}");

    // A port bound but never listening: refused for as long as it is held.
    let (_bound, port) = crate::common::refusing_port();
    let addr = format!("127.0.0.1:{port}");
    let (report, ok) = bench(&addr, &["-n", "5", "-c", "1"]);
    assert!(!ok);
    assert_eq!(count(&report, "connect"), 5, "{report}");
    // The line the guide's table of socket errors gives (docs/protocol.md).
    assert_eq!(
        report["error_kinds"]["connect"]["first"],
        format!("cannot connect to {addr}: connection refused: no server is listening on that port; is it running, and is the port right?"),
        "{report}"
    );
}

#[test]
fn bad_arguments_are_explained() {
    for (args, expected) in [
        (&["--mix", "search=1,ping=2"][..], "unknown request kind \"ping\""),
        (&["--mix", "custom=1"], "custom requests need --content-type"),
        (&["-t", "a/b", "--content", "x"], "add custom=N to --mix"),
        (&["--mix", "search=x"], "is not a whole number"),
        (&["--mix", "search=1,search=2"], "search is given twice"),
        (&["--mix", "search=0,binary=0"], "no request kind has a weight above 0"),
        (&["--mix", "search=9000,binary=9000"], "the weights add up to 18000; keep them under 10000"),
        (&["--connections", "0"], "--connections must be at least 1"),
    ] {
        let output = run("127.0.0.1:9", &[], args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// The requests one connection of `wasmux bench` sends, as a server sees
/// them, and what it makes of answers it did not expect: the mix's weights
/// and values, and each answer checked against the one the guide's server
/// gives.
#[test]
fn a_mix_sends_each_kind_by_weight_cycles_its_values_and_checks_each_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Searches get the guide's answer, but in the other byte order (the
    // server's own: not part of the answer); binary requests an error.
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the bench connects");
        stream.set_read_timeout(Some(STEP)).expect("read timeout");
        let mut conn = Raw { stream };
        let mut seen = Vec::new();
        while let Ok(bytes) = conn.try_read_message() {
            let request = Answer::parse(&bytes);
            let content_type = request.header["content-type"].as_str().unwrap_or_default().to_owned();
            let answer = if content_type == "text/json" {
                let content = wasmux_guide::search(&request.content, "utf-8").expect("a search the guide's server answers");
                message(json!({"byteorder": "big", "content-type": "text/json", "content-encoding": "utf-8"}), &content)
            } else {
                let error = Message::error(ErrorCode::NoPlugin, "no plugin here");
                message(json!({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8"}), &error.content)
            };
            conn.send(&answer);
            seen.push((content_type, request.content));
        }
        seen
    });
    let (report, ok) = bench(&addr, &["-n", "8", "-c", "1", "--mix", "search=3,binary"]);
    let seen = server.join().expect("the recording server");
    assert!(!ok, "a run with error answers must fail: {report}");
    assert_eq!(report["ok"], 6, "{report}");
    assert_eq!(count(&report, "error-answer:no-plugin"), 2, "{report}");
    assert_eq!(report["error_kinds"]["error-answer:no-plugin"]["first"], "no plugin here", "{report}");

    let sent = |kind: &str| -> Vec<String> {
        let mut values: Vec<String> = seen.iter().filter(|(t, _)| t == kind).map(|(_, c)| String::from_utf8_lossy(c).into_owned()).collect();
        values.sort();
        values
    };
    let searches = sent("text/json");
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert_eq!(searches.len(), 6, "three searches for each binary request: {seen:?}");
    let mut distinct = searches.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "the guide's four search values in turn: {searches:?}");
    let binaries = sent(wasmux_guide::BINARY_REQUEST_TYPE);
    assert_eq!(binaries.len(), 2, "{seen:?}");
    assert_ne!(binaries[0], binaries[1], "both binary values: {binaries:?}");
}
