//! The guide's echo and multi-connection pairs (`examples/`), run as built:
//! the outputs the guide shows, one-line errors, no panics.


use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{Finished, Process, STEP};

const ECHOED: &str = "Message 1 from client.Message 2 from client.";

/// An example binary, from `target/PROFILE/examples/`. `cargo xtask test`
/// builds them (`cargo build --workspace --bins --examples`) before the
/// tests, with the features the tests are built with; `cargo test --all-targets` alone only builds
/// them in test mode, elsewhere. Run directly (`cargo test -p wasmux-cli
/// --test suite -- examples::`), this test builds them the same way first.
fn example(name: &str) -> Command {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's path");
        let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/PROFILE/deps").join("examples");
        let names = ["echo-server", "echo-client", "multiconn-server", "multiconn-client"];
        if !names.iter().all(|name| dir.join(name).is_file()) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--workspace", "--bins", "--examples"])
                .current_dir(crate::common::root())
                .status()
                .expect("run cargo build --examples");
            assert!(status.success(), "cargo build --examples failed");
        }
        dir
    });
    Command::new(dir.join(name))
}

fn run(name: &str, args: &[&str]) -> Finished {
    Process::run(example(name).args(args), STEP)
}

/// A failed run that printed one line, `PROGRAM: …`, and did not panic.
fn assert_one_line_error(out: &Finished, program: &str) -> String {
    assert!(!out.status.success(), "{out:?}");
    assert!(!out.stderr.contains("panicked") && !out.stderr.contains("backtrace"), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].starts_with(&format!("{program}: ")), "{out:?}");
    lines[0].to_owned()
}

#[test]
fn echo_client_gets_hello_world_back_and_the_server_exits() {
    // The echo server takes a port, not 0: pick a free one and retry if
    // another process takes it first. Until the server listens, the client
    // is refused; a refused client does not use up the server's one accept.
    for _attempt in 0..5 {
        let port = crate::common::free_port().to_string();
        let mut server = Process::spawn(example("echo-server").args(["127.0.0.1", &port]));
        for _ in 0..200 {
            let client = run("echo-client", &["127.0.0.1", &port]);
            if client.status.success() {
                assert_eq!(client.stdout, ["Received b'Hello, world'"], "{client:?}");
                // The guide's echo server serves one client, then exits.
                let server = server.finish(STEP);
                assert!(server.status.success(), "{server:?}");
                assert_eq!(server.stdout.len(), 1, "{server:?}");
                assert!(server.stdout[0].starts_with("Connected by ('127.0.0.1', "), "{server:?}");
                return;
            }
            assert!(client.stderr.contains("connection refused"), "{client:?}");
            if !server.is_running() {
                break; // The port was taken: try another.
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("the echo server never answered");
}

#[test]
fn multiconn_client_gets_every_message_back() {
    for host in ["127.0.0.1", "::1"] {
        let mut server = Process::spawn(example("multiconn-server").args([host, "0"]));
        let listening = server.wait_for_line("listening on ", STEP);
        let port = listening
            .strip_prefix(&format!("listening on ('{host}', "))
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected {listening:?}"))
            .to_owned();

        let client = run("multiconn-client", &[host, &port, "3"]);
        assert!(client.status.success(), "{client:?}");
        let echoed: Vec<&String> = client.stdout.iter().filter(|line| line.contains(ECHOED)).collect();
        assert_eq!(echoed.len(), 3, "{client:?}");
        for connid in 1..=3 {
            let received = format!("received b'{ECHOED}' from connection {connid}");
            assert!(client.stdout.contains(&received), "no {received:?} in {client:?}");
            assert!(client.stdout.contains(&format!("closing connection {connid}")), "{client:?}");
            assert!(client.stdout.contains(&format!("starting connection {connid} to ('{host}', {port})")), "{client:?}");
            for n in 1..=2 {
                let sending = format!("sending b'Message {n} from client.' to connection {connid}");
                assert!(client.stdout.contains(&sending), "no {sending:?} in {client:?}");
            }
        }

        // The server saw three clients come, echoed everything, saw them go.
        assert!(server.wait_for_lines("closing connection to (", 3, STEP), "{:?}", server.stdout());
        let printed = server.stdout();
        let accepted = printed.iter().filter(|line| line.starts_with(&format!("accepted connection from ('{host}', "))).count();
        assert_eq!(accepted, 3, "{printed:#?}");
        let echoes: String = printed
            .iter()
            .filter_map(|line| line.strip_prefix("echoing b'"))
            .filter_map(|rest| rest.split_once("' to (").map(|(bytes, _)| bytes))
            .collect();
        assert_eq!(echoes.matches("Message 1 from client.").count(), 3, "{printed:#?}");
        assert_eq!(echoes.matches("Message 2 from client.").count(), 3, "{printed:#?}");
    }
}

#[test]
fn many_connections_at_once() {
    let mut server = Process::spawn(example("multiconn-server").args(["127.0.0.1", "0"]));
    let listening = server.wait_for_line("listening on ", STEP);
    let port = listening.trim_start_matches("listening on ('127.0.0.1', ").trim_end_matches(')').to_owned();
    let client = run("multiconn-client", &["127.0.0.1", &port, "100"]);
    assert!(client.status.success(), "{client:?}");
    assert_eq!(client.stdout.iter().filter(|line| line.contains(ECHOED)).count(), 100);
    assert!(server.wait_for_lines("closing connection to (", 100, STEP), "{:?}", server.stdout());
}

#[test]
fn usage_lines_like_the_guides() {
    for (name, usage, args) in [
        ("echo-server", "usage: echo-server <host> <port>", &["127.0.0.1"][..]),
        ("echo-client", "usage: echo-client <host> <port>", &["127.0.0.1", "port"][..]),
        ("multiconn-server", "usage: multiconn-server <host> <port>", &["127.0.0.1", "65432", "more"][..]),
        ("multiconn-client", "usage: multiconn-client <host> <port> <num_connections>", &["127.0.0.1", "65432", "-1"][..]),
    ] {
        for args in [&[][..], args] {
            let out = run(name, args);
            assert!(!out.status.success(), "{out:?}");
            assert_eq!(out.stdout, [usage], "{name} {args:?}: {out:?}");
            assert_eq!(out.stderr, "", "{name} {args:?}");
        }
    }
}

#[test]
fn socket_errors_are_one_line() {
    // A port bound but never listening: refused for as long as it is held.
    let (_bound, port) = crate::common::refusing_port();
    let port = port.to_string();
    let out = run("echo-client", &["127.0.0.1", &port]);
    let line = assert_one_line_error(&out, "echo-client");
    assert!(line.starts_with(&format!("echo-client: cannot connect to 127.0.0.1:{port}: connection refused: ")), "{line}");

    let out = run("multiconn-client", &["127.0.0.1", &port, "2"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    for connid in [1, 2] {
        let error = format!("error: connection {connid}: cannot connect: connection refused: ");
        assert!(out.stdout.iter().any(|line| line.starts_with(&error)), "no {error:?} in {out:?}");
    }

    // A port in use.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("local address").port().to_string();
    for name in ["echo-server", "multiconn-server"] {
        let out = run(name, &["127.0.0.1", &port]);
        let line = assert_one_line_error(&out, name);
        assert!(line.starts_with(&format!("{name}: cannot listen on 127.0.0.1:{port}: address already in use: ")), "{line}");
    }
}
