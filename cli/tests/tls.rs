//! TLS, against a real `wasmux serve --tls-cert --tls-key` with a CA and a
//! certificate made for the test: `wasmux send --tls`, `wasmux bench --tls`
//! and the guide's Python client with `--tls` (Python's `ssl` module).


use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Finished, Process, STEP, Server, wasmux};
use crate::common::certificates::{Certificates, set_mode};

const MORPHEUS: &str = "Follow the white rabbit. 🐰";

/// `wasmux serve --tls-cert --tls-key ARGS`.
fn serve_tls(certs: &Certificates, args: &[&str]) -> Server {
    let plugins = crate::common::plugins_dir();
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let mut all = vec!["--plugins", plugins.to_str().expect("utf-8 path"), "--tls-cert", &cert, "--tls-key", &key];
    all.extend_from_slice(args);
    Server::start_with(&all)
}


#[test]
fn wasmux_send_over_tls() {
    let certs = Certificates::new();
    // The 8 MiB message below is copied into the plugin and out within its
    // deadline: a busy machine's, not the default 100 ms.
    let config = certs.dir.path().join("wasmux.toml");
    std::fs::write(&config, "[limits]\nplugin-deadline = \"10s\"\n").expect("write the configuration");
    let server = serve_tls(&certs, &["--config", config.to_str().expect("utf-8")]);
    let port = server.addr.port();
    let ca = certs.path("ca.pem");
    for host in ["127.0.0.1", "localhost"] {
        let addr = format!("{host}:{port}");
        let out = wasmux(&["send", "--tls", "--ca", &ca, "--addr", &addr, "search", "morpheus"]);
        assert_eq!(out.stdout, [format!("Got result: {MORPHEUS}")], "{addr}: {out:?}");
    }
    // An 8 MiB message, through the same framing.
    let big = certs.dir.path().join("big");
    std::fs::write(&big, vec![b'z'; 8 << 20]).expect("write a big file");
    let out = wasmux(&[
        "send", "--tls", "--ca", &ca, "--addr", &server.addr_string(), "-t", "x/y", "--content-file", big.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.stdout, [r"Got response: b'First 10 bytes of request: zzzzzzzzzz'"], "{out:?}");

    // A certificate the client cannot check is refused, with the reason.
    let out = wasmux(&["send", "--tls", "--ca", &certs.path("cert.pem"), "--addr", &server.addr_string(), "search", "morpheus"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("TLS handshake with") && out.stderr.contains("certificate"), "{}", out.stderr);

    // A plain client gets the handshake's alert, not an answer, and says
    // what it read, as docs/security.md shows it.
    let out = wasmux(&["send", "--timeout", "2s", "--addr", &server.addr_string(), "search", "morpheus"]);
    assert!(!out.status.success(), "a plain client was answered by a TLS server: {out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "wasmux: {} sent an unreadable message: the connection ended in the middle of a message, in the JSON header (5 of 5379 bytes); \
             these bytes are a TLS record: the peer speaks TLS\n",
            server.addr
        )
    );
}

/// The log line of a failed handshake with `peer`.
fn handshake_failed(peer: std::net::SocketAddr, why: &str) -> String {
    format!("TLS handshake with {peer} failed: {why}")
}

#[test]
fn a_failed_handshake_is_logged_once() {
    let certs = Certificates::new();
    let server = serve_tls(&certs, &[]);
    // Two plain clients, one after the other; each reads the alert and the
    // end of the stream.
    let mut peers = Vec::new();
    for _ in 0..2 {
        let mut plain = server.connect();
        peers.push(plain.stream.local_addr().expect("local address"));
        plain.send(&crate::common::search("morpheus"));
        let mut alert = Vec::new();
        let _ = std::io::Read::read_to_end(&mut plain.stream, &mut alert);
        assert!(alert.starts_with(&[0x15, 0x03]), "not a TLS alert: {alert:?}");
    }
    // Each connection's line (their tasks may log in either order), each
    // exactly once.
    let why = "received corrupt message of type InvalidContentType";
    for peer in &peers {
        assert!(server.wait_for_log(&handshake_failed(*peer, why), STEP), "{}", server.log());
    }
    let log = server.log();
    for peer in &peers {
        let lines = log.lines().filter(|line| line.contains(&format!("TLS handshake with {peer} "))).count();
        assert_eq!(lines, 1, "the handshake of {peer} is logged {lines} times:\n{log}");
    }
}

/// The handshake must finish within `message-timeout`; until then it holds
/// a place under `max-connections`, like any connection.
#[test]
fn a_stalled_handshake_is_closed_at_the_message_timeout() {
    let certs = Certificates::new();
    let config = tempfile::NamedTempFile::new().expect("a configuration file");
    std::fs::write(config.path(), "[limits]\nmessage-timeout = \"500ms\"\nmax-connections = 1\n").expect("write the configuration");
    let server = serve_tls(&certs, &["--config", config.path().to_str().expect("utf-8")]);
    // A client that connects and says nothing (its handshake's time runs
    // from after `started`).
    let started = std::time::Instant::now();
    let mut stalled = server.connect();
    let peer = stalled.stream.local_addr().expect("local address");
    // A TLS client connecting meanwhile waits for the place, then is served:
    // not before the stalled handshake's time is up.
    let out = wasmux(&["send", "--tls", "--ca", &certs.path("ca.pem"), "--addr", &server.addr_string(), "search", "morpheus"]);
    let served_after = started.elapsed();
    assert_eq!(out.stdout, [format!("Got result: {MORPHEUS}")], "{out:?}");
    assert!(served_after >= std::time::Duration::from_millis(500), "served after {served_after:?}, while the stalled handshake held the only place");
    assert!(stalled.is_closed(), "the stalled handshake was not closed");
    let timed_out = handshake_failed(peer, "not finished within 500ms");
    assert!(server.wait_for_log(&timed_out, STEP), "no {timed_out:?} in:\n{}", server.log());
}

#[test]
fn wasmux_bench_over_tls() {
    let certs = Certificates::new();
    let server = serve_tls(&certs, &[]);
    for mode in ["persistent", "connect", "pipelined"] {
        let out = wasmux(&[
            "bench", &server.addr_string(), "--tls", "--ca", &certs.path("ca.pem"), "-c", "4", "-n", "200", "--mode", mode, "--json",
        ]);
        assert!(out.status.success(), "{mode}: {out:?}");
        let report: serde_json::Value = serde_json::from_str(&out.stdout.join("\n")).expect("a JSON report");
        assert_eq!((report["ok"].as_u64(), report["errors"].as_u64(), report["tls"].as_bool()), (Some(200), Some(0), Some(true)), "{mode}: {report}");
    }
}

fn python_client(args: &[&str]) -> Finished {
    let script: PathBuf = crate::common::root().join("examples/python/app_client.py");
    let mut command = Command::new("python3");
    command.arg(script).args(args).env("PYTHONUTF8", "1").env("PYTHONIOENCODING", "utf-8").env("PYTHONDONTWRITEBYTECODE", "1");
    Process::run(&mut command, STEP)
}

#[test]
fn the_guides_python_client_over_tls() {
    let certs = Certificates::new();
    let server = serve_tls(&certs, &[]);
    let port = server.addr.port().to_string();
    let ca = certs.path("ca.pem");
    for (action, value, shown) in [
        ("search", "morpheus", format!("got result: {MORPHEUS}")),
        ("binary", "😃", r"got response: b'First 10 bytes of request: binary\xf0\x9f\x98\x83'".to_owned()),
    ] {
        let out = python_client(&["--tls", "--ca", &ca, "localhost", &port, action, value]);
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.iter().any(|line| line.starts_with("TLSv1.3 connection to ")), "{out:?}");
        assert_eq!(out.lines_starting("got "), [shown.as_str()], "{out:?}");
    }
    // Without the CA, Python's ssl refuses the certificate.
    let out = python_client(&["--tls", "localhost", &port, "search", "morpheus"]);
    assert!(!out.status.success() && out.stdout.join("\n").contains("CERTIFICATE_VERIFY_FAILED"), "{out:?}");
}

/// A search by tenant `token`, answered.
fn assert_answers(server: &Server, token: &str) {
    let request = crate::common::message(
        serde_json::json!({"byteorder": "big", "content-type": "text/json", "content-encoding": "utf-8", "authorization": format!("Bearer {token}")}),
        br#"{"action": "search", "value": "morpheus"}"#,
    );
    assert_eq!(server.connect().request(&request).result(), MORPHEUS);
}

#[test]
fn plain_tcp_off_loopback_with_tenant_tokens_is_warned_about() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("wasmux.toml");
    std::fs::write(&config, format!("[tenants.alpha]\ntoken-sha256 = \"{}\"\n", wasmux::tenancy::TokenHash::of("alpha"))).expect("write config");
    let config = config.to_str().expect("utf-8 path");
    let warning = "serves plain TCP: tenants' bearer tokens would cross the network readable";

    let everywhere = Server::start_listening(&["0.0.0.0:0"], 1, &["--native", "--config", config]);
    assert!(everywhere.wait_for_log(warning, STEP), "{}", everywhere.log());
    // (Once a request is answered, the server is past its start-up checks.)
    let loopback = Server::start_with(&["--native", "--config", config]);
    assert_answers(&loopback, "alpha");
    assert!(!loopback.log().contains(warning), "{}", loopback.log());

    // Over TLS, no warning; but a key others can read is warned about.
    let certs = Certificates::new();
    set_mode(Path::new(&certs.path("key.pem")), 0o644);
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let tls = Server::start_listening(&["0.0.0.0:0"], 1, &["--native", "--config", config, "--tls-cert", &cert, "--tls-key", &key]);
    assert!(tls.wait_for_log("serving TLS on every listener", STEP), "{}", tls.log());
    assert!(tls.log().contains("can be read by other users (mode 644)"), "{}", tls.log());
    assert!(!tls.log().contains(warning), "{}", tls.log());
}

/// A TLS client of a plain server: the server says at once that a
/// handshake is not its protocol, and the client that the server does not
/// serve TLS, rather than both waiting until one times out.
#[test]
fn a_tls_client_of_a_plain_server_is_told_at_once() {
    let server = crate::common::Server::start_with(&["--native"]);
    let started = std::time::Instant::now();
    let out = wasmux(&["send", "--tls", "--timeout", "10s", "--addr", &server.addr_string(), "search", "morpheus"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        format!("wasmux: TLS handshake with {} failed: the server answered without TLS: it does not serve TLS on this address\n", server.addr_string())
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "told after {:?}, not at once", started.elapsed());
    assert!(server.wait_for_log("these bytes begin a TLS handshake: the peer speaks TLS", crate::common::STEP), "{}", server.log());
}
