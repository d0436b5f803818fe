//! The guide's application, written in Python from the guide's description
//! (`examples/python/`), against wasmux, both ways: the Python client
//! against `wasmux serve`, `wasmux send` against the Python server, and the
//! two servers' answers compared byte for byte.


use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::common::{Finished, Process, Raw, STEP, Server, binary, message, search};
use serde_json::json;

/// The guide's client's requests, `ACTION VALUE`, and what it prints for
/// the answer (`got result: …` / `got response: …`).
const REQUESTS: [(&str, &str, &str); 6] = [
    ("search", "morpheus", "got result: Follow the white rabbit. 🐰"),
    ("search", "ring", "got result: In the caves beneath the Misty Mountains. 💍"),
    ("search", "🐶", "got result: 🐾 Playing ball! 🏐"),
    ("search", "neo", "got result: No match for \"neo\"."),
    ("binary", "😃", r"got response: b'First 10 bytes of request: binary\xf0\x9f\x98\x83'"),
    ("binary", " and more than ten bytes", "got response: b'First 10 bytes of request: binary and'"),
];

fn python_script(name: &str) -> PathBuf {
    crate::common::root().join("examples/python").join(name)
}

/// `python3 examples/python/SCRIPT ARGS`, UTF-8 throughout and unbuffered,
/// so that every line is seen as soon as it is printed.
fn python(script: &str, args: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(python_script(script))
        .args(args)
        .env("PYTHONUTF8", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

/// The guide's Python server, on a port the system picks.
struct PythonServer {
    process: Process,
    addr: SocketAddr,
}

impl PythonServer {
    fn start() -> Self {
        let mut process = Process::spawn(&mut python("app_server.py", &["127.0.0.1", "0"]));
        // listening on ('127.0.0.1', 40123)
        let line = process.wait_for_line("listening on ", STEP);
        let port = line
            .strip_prefix("listening on ('127.0.0.1', ")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|port| port.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("unexpected first line from app_server.py: {line:?}"));
        Self { process, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    /// The server's stdout lines so far.
    fn printed(&self) -> Vec<String> {
        self.process.stdout()
    }
}

/// Runs the guide's Python client against `addr`.
fn python_client(addr: SocketAddr, action: &str, value: &str) -> Finished {
    let port = addr.port().to_string();
    Process::run(&mut python("app_client.py", &[&addr.ip().to_string(), &port, action, value]), STEP)
}

/// Runs `wasmux send ARGS` against `addr`.
fn wasmux_send(addr: SocketAddr, args: &[&str]) -> Finished {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
    command.args(["send", "--addr", &addr.to_string()]).args(args).env_remove("RUST_LOG").env("NO_COLOR", "1");
    Process::run(&mut command, STEP)
}

/// What the guide's client prints, as `wasmux send` prints it.
fn as_wasmux_prints(guide_line: &str) -> String {
    guide_line.replacen("got ", "Got ", 1)
}

#[test]
fn the_guides_python_client_against_wasmux_serve() {
    let server = Server::start();
    for (action, value, expected) in REQUESTS {
        let out = python_client(server.addr, action, value);
        assert!(out.status.success(), "{action} {value}: {out:?}");
        assert_eq!(out.lines_starting("got "), [expected], "{action} {value}: {out:?}");
        // The rest of the guide's transcript, in order.
        let steps: Vec<&str> = out.stdout.iter().map(|line| line.split(' ').next().unwrap_or_default()).collect();
        assert_eq!(steps, ["starting", "sending", "received", "got", "closing"], "{out:?}");
    }
}

#[test]
fn wasmux_send_against_the_guides_python_server() {
    let server = PythonServer::start();
    for (action, value, expected) in REQUESTS {
        let out = wasmux_send(server.addr, &[action, value]);
        assert!(out.status.success(), "{action} {value}: {out:?}");
        assert_eq!(out.stdout, [as_wasmux_prints(expected)], "{action} {value}: {out:?}");
        assert_eq!(out.stderr, "", "{action} {value}");
    }
    // The guide's server saw a proper request each time, and closed each
    // connection (once it has printed so: it may lag behind its answers).
    let closed = server.process.wait_for_lines("closing connection to", REQUESTS.len(), STEP);
    let printed = server.printed();
    assert!(closed, "{printed:#?}");
    let count = |prefix: &str| printed.iter().filter(|line| line.starts_with(prefix)).count();
    assert_eq!(count("received request {'action': 'search', 'value': "), 4, "{printed:#?}");
    assert_eq!(count("received binary/custom-client-binary-type request from"), 2, "{printed:#?}");
    assert_eq!(count("closing connection to"), REQUESTS.len(), "{printed:#?}");
    assert_eq!(count("main: error"), 0, "{printed:#?}");
}

/// The Python programs agree with each other: the expectations above are
/// the guide's, not wasmux's.
#[test]
fn the_guides_python_client_against_its_python_server() {
    let server = PythonServer::start();
    for (action, value, expected) in REQUESTS {
        let out = python_client(server.addr, action, value);
        assert!(out.status.success(), "{action} {value}: {out:?}");
        assert_eq!(out.lines_starting("got "), [expected], "{action} {value}: {out:?}");
    }
}

#[test]
fn both_servers_answer_byte_for_byte_alike() {
    let latin1_search = b"{\"action\": \"search\", \"value\": \"caf\xe9\"}";
    let requests: Vec<Vec<u8>> = vec![
        search("morpheus"),
        search("ring"),
        search("🐶"),
        search("neo"),
        // The guide's big-endian client, as its transcript shows it.
        b"\x00d{\"byteorder\": \"big\", \"content-type\": \"text/json\", \"content-encoding\": \"utf-8\", \"content-length\": 41}{\"action\": \"search\", \"value\": \"morpheus\"}".to_vec(),
        message(json!({"byteorder": "big", "content-type": "text/json", "content-encoding": "utf-8"}), br#"{"action": "find", "value": "neo"}"#),
        message(json!({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8"}), br#"{"action": "search"}"#),
        message(json!({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8"}), br#"{"action": "search", "value": 42}"#),
        message(json!({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8"}), br#"{"action": "search", "value": true}"#),
        message(json!({"byteorder": "little", "content-type": "text/json", "content-encoding": "latin-1"}), latin1_search),
        message(
            json!({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "user": "ann", "n": [1, 2]}),
            search_content("ring").as_slice(),
        ),
        binary("binary😃".as_bytes()),
        binary(b""),
        binary(b"\x00\x01\x02\xff and more than ten bytes"),
        message(json!({"byteorder": "big", "content-type": "image/png", "content-encoding": "binary"}), b"\x89PNG\r\n\x1a\n...."),
    ];
    let python = PythonServer::start();
    let wasmux = Server::start();
    for request in &requests {
        let shown = String::from_utf8_lossy(request);
        // One request per connection, as the guide's server closes after answering.
        let from_python = Raw::connect(python.addr).request_bytes(request);
        let from_wasmux = Raw::connect(wasmux.addr).request_bytes(request);
        assert_eq!(
            String::from_utf8_lossy(&from_wasmux),
            String::from_utf8_lossy(&from_python),
            "request {shown}\nPython server printed {:#?}",
            python.printed()
        );
        assert_eq!(from_wasmux, from_python, "request {shown}");
    }
    assert!(python.process.wait_for_lines("closing connection to", requests.len(), STEP), "{:#?}", python.printed());
    assert!(!python.printed().iter().any(|line| line.starts_with("main: error")), "{:#?}", python.printed());
}

fn search_content(value: &str) -> Vec<u8> {
    wasmux_guide::python::to_vec(&json!({"action": "search", "value": value})).expect("json")
}

trait RequestBytes {
    fn request_bytes(self, request: &[u8]) -> Vec<u8>;
}

impl RequestBytes for Raw {
    /// Sends `request` and returns the answer's bytes exactly as received.
    fn request_bytes(mut self, request: &[u8]) -> Vec<u8> {
        self.send(request);
        self.read_message()
    }
}

/// `-v` shows the bytes the guide's programs print: the same request bytes
/// as the Python client's `sending` line, the same answer bytes as the
/// Python server's, and what `wasmux send` received exactly as it arrived.
#[test]
fn verbose_output_shows_the_bytes_the_guides_programs_print() {
    let python_server = PythonServer::start();
    let wasmux = Server::start();
    for (i, (action, value, _)) in REQUESTS.into_iter().enumerate() {
        // The request: the Python client's bytes and `wasmux send -v`'s.
        let guide_client = python_client(wasmux.addr, action, value);
        let guide_sent = between(guide_client.lines_starting("sending ").first().copied(), "sending ", " to (");
        let send = wasmux_send(python_server.addr, &["-v", action, value]);
        assert!(send.status.success(), "{send:?}");
        let wasmux_sent = wire_line(&send.stderr, "sending ", " to ");
        assert_eq!(wasmux_sent, guide_sent, "{action} {value}");

        // The answer: the Python server's bytes, as `wasmux send -v` received them.
        assert!(python_server.process.wait_for_lines("sending ", i + 1, STEP), "{:#?}", python_server.printed());
        let printed = python_server.printed();
        let guide_answer = between(printed.iter().filter(|line| line.starts_with("sending ")).nth(i).map(String::as_str), "sending ", " to (");
        let wasmux_received = wire_line(&send.stderr, "received ", " from ");
        assert_eq!(wasmux_received, guide_answer, "{action} {value}");

        // And `wasmux serve -v` logs the answer bytes the Python server prints.
        assert!(
            wasmux.wait_for_log(&format!("sending {guide_answer} to "), STEP),
            "{action} {value}: no `sending {guide_answer}` in the wasmux log:\n{}",
            wasmux.log()
        );
    }
}

/// The text between `start` and the last `end` in `line`.
fn between(line: Option<&str>, start: &str, end: &str) -> String {
    let line = line.unwrap_or_else(|| panic!("no line starting with {start:?}"));
    line.strip_prefix(start)
        .and_then(|rest| rest.rsplit_once(end))
        .map(|(bytes, _)| bytes.to_owned())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
}

/// The bytes of the `wasmux::wire` log line `START b'…' END addr`.
fn wire_line(log: &str, start: &str, end: &str) -> String {
    let marker = format!("wasmux::wire: {start}");
    let line = log.lines().find_map(|line| line.split_once(&marker).map(|(_, rest)| rest));
    let line = line.unwrap_or_else(|| panic!("no wire log line {marker:?} in:\n{log}"));
    line.rsplit_once(end).map(|(bytes, _)| bytes.to_owned()).unwrap_or_else(|| panic!("unexpected line {line:?}"))
}
