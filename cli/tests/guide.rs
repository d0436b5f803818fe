//! The guide's transcript against a real `wasmux serve` with the default
//! plugins: the same answers, header fields and bytes as the guide's server.
//! The search plugin in each language (Rust, Python, JavaScript, each built
//! with `wasmux build`) gives the same six answers.


use std::process::Command;
use std::time::Duration;

use crate::common::{Server, binary, lang_plugin, message, plugins_dir, search};
use serde_json::json;

/// The guide's server answers in its machine's byte order; so do we.
fn native() -> &'static str {
    if cfg!(target_endian = "little") { "little" } else { "big" }
}

/// The whole answer, byte for byte, that the guide's server sends for `content`.
fn guide_answer(content_type: &str, encoding: &str, content: &[u8]) -> Vec<u8> {
    message(
        json!({"byteorder": native(), "content-type": content_type, "content-encoding": encoding, "content-length": content.len()}),
        content,
    )
}

#[test]
fn the_guides_six_requests_byte_for_byte() {
    assert_guide_answers(&Server::start());
}

#[test]
fn the_rust_search_built_by_wasmux_build_answers_the_six_requests() {
    assert_guide_answers(&serving_search_from("search"));
}

#[test]
fn the_python_search_answers_the_six_requests_byte_for_byte() {
    assert_guide_answers(&serving_search_from("search-py"));
}

#[test]
fn the_javascript_search_answers_the_six_requests_byte_for_byte() {
    assert_guide_answers(&serving_search_from("search-js"));
}

/// A server whose `search` is the component `target/lang-plugins/FILE.wasm`
/// (binary requests go to the Rust `binary-echo`). A Python or JavaScript
/// component takes a while to compile the first time (in a debug build),
/// before the server listens.
fn serving_search_from(file: &str) -> Server {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::copy(lang_plugin(file), dir.path().join("search.wasm")).expect("copy the search plugin");
    std::fs::copy(plugins_dir().join("binary-echo.wasm"), dir.path().join("binary-echo.wasm")).expect("copy binary-echo");
    let plugins = dir.path().to_str().expect("utf-8 path").to_owned();
    Server::start_slow(&["--plugins", &plugins], Duration::from_secs(300)).keeping(dir)
}

#[test]
fn native_handlers_answer_exactly_as_the_plugins() {
    assert_guide_answers(&Server::start_with(&["--native"]));
}

fn assert_guide_answers(server: &Server) {
    let cases: [(Vec<u8>, &str, &str, &[u8]); 6] = [
        (search("morpheus"), "text/json", "utf-8", "{\"result\": \"Follow the white rabbit. 🐰\"}".as_bytes()),
        (search("ring"), "text/json", "utf-8", "{\"result\": \"In the caves beneath the Misty Mountains. 💍\"}".as_bytes()),
        (search("🐶"), "text/json", "utf-8", "{\"result\": \"🐾 Playing ball! 🏐\"}".as_bytes()),
        (search("neo"), "text/json", "utf-8", br#"{"result": "No match for \"neo\"."}"#),
        (
            message(json!({"byteorder": "big", "content-type": "text/json", "content-encoding": "utf-8"}), br#"{"action": "find", "value": "neo"}"#),
            "text/json",
            "utf-8",
            br#"{"result": "Error: invalid action \"find\"."}"#,
        ),
        (
            binary("binary😃".as_bytes()),
            "binary/custom-server-binary-type",
            "binary",
            b"First 10 bytes of request: binary\xf0\x9f\x98\x83",
        ),
    ];
    for (request, content_type, encoding, content) in cases {
        // The guide's client: one request per connection.
        let mut conn = server.connect();
        conn.send(&request);
        let answer = conn.read_message();
        assert_eq!(
            String::from_utf8_lossy(&answer),
            String::from_utf8_lossy(&guide_answer(content_type, encoding, content)),
            "request {:?}",
            String::from_utf8_lossy(&request)
        );
    }
}

#[test]
fn the_guides_bytes_from_the_transcript() {
    // The guide's client on a big-endian machine, as printed in the guide.
    let server = Server::start();
    let mut conn = server.connect();
    conn.send(b"\x00d{\"byteorder\": \"big\", \"content-type\": \"text/json\", \"content-encoding\": \"utf-8\", \"content-length\": 41}{\"action\": \"search\", \"value\": \"morpheus\"}");
    let answer = conn.read_message();
    let expected = format!(
        "\x00g{{\"byteorder\": \"{}\", \"content-type\": \"text/json\", \"content-encoding\": \"utf-8\", \"content-length\": 43}}{{\"result\": \"Follow the white rabbit. \u{1f430}\"}}",
        native()
    );
    assert_eq!(answer, expected.as_bytes());
}

#[test]
fn many_requests_on_one_connection_in_sequence_and_pipelined() {
    let server = Server::start();
    let mut conn = server.connect();
    for i in 0..50 {
        let content = format!("{i:>3} in sequence");
        let answer = conn.request(&binary(content.as_bytes()));
        assert_eq!(answer.content, format!("First 10 bytes of request: {}", &content[..10]).into_bytes());
    }
    // Pipelined: 200 requests in one write, answers in order.
    let mut burst = Vec::new();
    for i in 0..200 {
        burst.extend(if i % 2 == 0 { search("ring") } else { binary(format!("{i:>10}").as_bytes()) });
    }
    conn.send(&burst);
    for i in 0..200 {
        let answer = crate::common::Answer::parse(&conn.read_message());
        if i % 2 == 0 {
            assert_eq!(answer.result(), "In the caves beneath the Misty Mountains. 💍");
        } else {
            assert_eq!(answer.content, format!("First 10 bytes of request: {i:>10}").into_bytes());
        }
    }
}

#[test]
fn a_request_split_into_single_bytes() {
    let server = Server::start();
    let mut conn = server.connect();
    for byte in search("morpheus") {
        conn.send(&[byte]);
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    assert_eq!(crate::common::Answer::parse(&conn.read_message()).result(), "Follow the white rabbit. 🐰");
}

#[test]
fn wasmux_send_prints_what_the_guides_client_prints() {
    let server = Server::start();
    let send = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wasmux"))
            .args(["send", "--addr", &server.addr_string()])
            .args(args)
            .output()
            .expect("run wasmux send");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    assert_eq!(send(&["search", "morpheus"]), (true, "Got result: Follow the white rabbit. 🐰".into()));
    assert_eq!(send(&["search", "🐶"]), (true, "Got result: 🐾 Playing ball! 🏐".into()));
    assert_eq!(send(&["search", "neo"]), (true, "Got result: No match for \"neo\".".into()));
    assert_eq!(
        send(&["binary", "😃"]),
        (true, r"Got response: b'First 10 bytes of request: binary\xf0\x9f\x98\x83'".into())
    );
    assert_eq!(
        send(&["--content-type", "text/json", "--encoding", "utf-8", "--content", r#"{"action": "search", "value": "ring"}"#]),
        (true, "Got result: In the caves beneath the Misty Mountains. 💍".into())
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"\x00\x01\x02from a file").unwrap();
    assert_eq!(
        send(&["-t", "application/octet-stream", "--content-file", file.path().to_str().unwrap()]),
        (true, r"Got response: b'First 10 bytes of request: \x00\x01\x02from a '".into())
    );
    // A host error is shown as the guide's client shows any result, and
    // makes the exit status non-zero.
    let (ok, out) = send(&["-t", "text/json", "-e", "utf-8", "--content", "not json"]);
    assert!(!ok);
    assert!(out.starts_with("Got result: Error: bad request for plugin search: content is not valid JSON"), "{out}");
}

#[test]
fn routes_from_a_configuration_file() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[routes]\n\"text/json\" = \"binary-echo\"\n\"image/*\" = \"search\"\n\"application/x-missing\" = \"nowhere\"\n",
    )
    .unwrap();
    let plugins = crate::common::plugins_dir();
    let server = Server::start_with(&["--plugins", plugins.to_str().unwrap(), "--config", config.path().to_str().unwrap()]);
    let mut conn = server.connect();
    let answer = conn.request(&search("morpheus"));
    assert_eq!(answer.header["content-type"], "binary/custom-server-binary-type");
    assert_eq!(answer.content, b"First 10 bytes of request: {\"action\":");
    let answer = conn.request(&message(
        json!({"byteorder": "big", "content-type": "image/png", "content-encoding": "utf-8"}),
        br#"{"action": "search", "value": "ring"}"#,
    ));
    assert_eq!(answer.result(), "In the caves beneath the Misty Mountains. 💍");
    let answer = conn.request(&binary(b"no route"));
    assert_eq!(answer.error_code(), "no-route");
    assert_eq!(answer.result(), "Error: no route for content-type \"binary/custom-client-binary-type\"");
    let answer = conn.request(&message(json!({"byteorder": "big", "content-type": "application/x-missing", "content-encoding": "binary"}), b""));
    assert_eq!(answer.error_code(), "no-plugin");
    assert_eq!(answer.result(), "Error: no plugin nowhere is loaded");
    // The connection is still usable after errors.
    assert_eq!(conn.request(&search("x")).header["content-type"], "binary/custom-server-binary-type");
    assert!(server.log().contains("a route points at plugin nowhere, which is not loaded"));
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start();
    let mut conn = server.connect();
    assert_eq!(conn.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");
    assert!(server.terminate(), "the server did not exit cleanly on SIGTERM; log:\n{}", server.log());
    assert!(conn.is_closed());
}
