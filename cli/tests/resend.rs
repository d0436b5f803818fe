//! Clients that send a request again, once, on a new connection, when the
//! server ended the connection with a FIN before any byte of its answer:
//! `wasmux send` and `wasmux bench`, by default for the guide's search and
//! binary requests only, custom content-types with `--retry`, nothing with
//! `--no-retry`.

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;

use serde_json::Value;

use crate::common::{Finished, STEP, Server, wasmux};

/// A proxy in front of `server` that ends its first connection as a
/// draining server does (a FIN before reading anything; what arrives is
/// read and dropped until the client closes), and relays the next ones.
struct EndsFirstConnection {
    addr: SocketAddr,
}

impl EndsFirstConnection {
    fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for (index, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { return };
                if index == 0 {
                    std::thread::spawn(move || end_before_answering(client));
                } else {
                    std::thread::spawn(move || relay(client, server));
                }
            }
        });
        Self { addr }
    }
}

fn end_before_answering(mut client: TcpStream) {
    let _ = client.shutdown(Shutdown::Write);
    let _ = client.set_read_timeout(Some(STEP));
    let mut dropped = [0; 4096];
    while client.read(&mut dropped).is_ok_and(|n| n > 0) {}
}

fn relay(client: TcpStream, server: SocketAddr) {
    let Ok(upstream) = TcpStream::connect_timeout(&server, STEP) else { return };
    let (Ok(client_reader), Ok(upstream_reader)) = (client.try_clone(), upstream.try_clone()) else { return };
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        })
    };
    let up = copy(client_reader, upstream);
    let down = copy(upstream_reader, client);
    let _ = (up.join(), down.join());
}

/// `wasmux send --addr ADDR ARGS`.
fn send(addr: SocketAddr, args: &[&str]) -> Finished {
    let addr = addr.to_string();
    let mut all = vec!["send", "--addr", &addr];
    all.extend_from_slice(args);
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
    command.args(&all).env("RUST_LOG", "wasmux=info").env("NO_COLOR", "1");
    crate::common::Process::run(&mut command, STEP)
}

const RABBIT: &str = "Got result: Follow the white rabbit. 🐰";
const CUSTOM: [&str; 4] = ["-t", "binary/custom-client-binary-type", "--content", "custom"];
const CUSTOM_ANSWER: &str = "Got response: b'First 10 bytes of request: custom'";

#[test]
fn wasmux_send_sends_the_guides_requests_again_and_custom_ones_only_if_told() {
    let server = Server::start();
    let resent = "closed the connection before answering; sending the request again on a new connection";
    let not_resent = |addr: SocketAddr| {
        format!("wasmux: {addr} closed the connection without answering; the request was not sent again (it may have run)")
    };
    for (args, answered) in [
        (&["search", "morpheus"][..], Some(RABBIT)),
        (&["search", "morpheus", "--no-retry"], None),
        (&CUSTOM, None),
        (&[CUSTOM.as_slice(), &["--retry"]].concat(), Some(CUSTOM_ANSWER)),
        (&[CUSTOM.as_slice(), &["--no-retry"]].concat(), None),
    ] {
        let proxy = EndsFirstConnection::start(server.addr);
        let out = send(proxy.addr, args);
        match answered {
            Some(answer) => {
                assert!(out.status.success(), "{args:?}: {out:?}");
                assert_eq!(out.stdout, [answer], "{args:?}");
                assert!(out.stderr.contains(resent), "{args:?}: {}", out.stderr);
            }
            None => {
                assert!(!out.status.success(), "{args:?}: {out:?}");
                assert_eq!(out.stderr.trim_end().lines().last(), Some(not_resent(proxy.addr).as_str()), "{args:?}: {}", out.stderr);
            }
        }
    }
    let out = wasmux(&["send", "--retry", "--no-retry", "search", "x"]);
    assert!(out.stderr.contains("cannot be used with"), "{out:?}");
}

/// `wasmux bench ADDR --json ARGS`: the report, and whether it succeeded.
fn bench(addr: SocketAddr, args: &[&str]) -> (Value, bool) {
    let output = Command::new(env!("CARGO_BIN_EXE_wasmux")).arg("bench").arg(addr.to_string()).arg("--json").args(args).output().expect("run wasmux bench");
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("no JSON report ({e}): {}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    });
    (report, output.status.success())
}

/// The server closes a connection idle for 250 ms; the bench sends on its
/// kept connection every 333 ms, so each request after the first meets the
/// end of the stream (the server never read it).
/// Sent again on a new connection, it is answered at once. (At a cap of
/// one connection, two clients taking turns would not do: a connection
/// just accepted may make room before it reads its first request, and a
/// request sent again may meet a second FIN.)
#[test]
fn wasmux_bench_sends_again_what_a_server_closing_kept_connections_never_read() {
    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(config.path(), "[limits]\nidle-timeout = \"250ms\"\n").expect("write the config");
    let plugins = crate::common::plugins_dir();
    let server = Server::start_with(&["--config", config.path().to_str().expect("utf-8"), "--plugins", plugins.to_str().expect("utf-8")]);
    // (A request sent again has the idle timeout to reach the server on its
    // new connection: 250 ms leaves a busy machine room.)
    let common = ["-c", "1", "-n", "6", "--rate", "3"];
    let custom = ["--mix", "custom=1", "-t", "binary/custom-client-binary-type", "--content", "x"];
    for mode in [&["--mode", "persistent"][..], &["--mode", "pipelined", "--depth", "4"]] {
        let args = |more: &[&'static str]| -> Vec<&'static str> { [&common[..], mode, more].concat() };
        // The guide's requests: sent again, none lost.
        let (report, ok) = bench(server.addr, &args(&[]));
        let resent = report["resent"].as_u64().expect("resent");
        assert!(ok && report["ok"] == 6 && report["errors"] == 0, "{mode:?}: {report}");
        assert!(resent >= 1, "{mode:?}: no connection was closed between requests, no test: {report}");
        println!("{mode:?}: 6 answered, {resent} sent again");
        // Custom ones with --retry too.
        let (report, ok) = bench(server.addr, &args(&[&custom[..], &["--retry"]].concat()));
        assert!(ok && report["ok"] == 6 && report["errors"] == 0 && report["resent"].as_u64() >= Some(1), "{mode:?} --retry: {report}");
        // Custom ones are not sent again by default, nothing with --no-retry.
        for more in [&custom[..], &["--no-retry"]] {
            let (report, ok) = bench(server.addr, &args(more));
            assert!(!ok, "{mode:?} {more:?}: {report}");
            assert_eq!(report["resent"], 0, "{mode:?} {more:?}: {report}");
            let closed = &report["error_kinds"]["closed"];
            assert!(closed["count"].as_u64() >= Some(1), "{mode:?} {more:?}: {report}");
            assert_eq!(closed["first"], "the server closed the connection without answering", "{mode:?} {more:?}");
            assert_eq!(report["errors"], closed["count"], "{mode:?} {more:?}: other errors: {report}");
        }
    }
}

#[test]
fn the_bench_report_counts_requests_sent_again_apart_from_errors() {
    let server = Server::start();
    let proxy = EndsFirstConnection::start(server.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_wasmux")).args(["bench", &proxy.addr.to_string(), "-c", "1", "-n", "10"]).output().expect("bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|line| line.starts_with("  requests ")).expect("a requests line");
    assert_eq!(line, "  requests    10 answered right, 0 errors, 1 sent again", "{text}");
}
