//! Hostile and broken peers against a real `wasmux serve`: malformed
//! messages, truncated and stalled ones, idle crowds, a peer that never reads,
//! a full connection cap. Whatever a peer does, it learns what was wrong
//! when its frame was intact (and, where the socket allows, when it was
//! not), the server stays up, and other clients are answered at once.


use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use crate::common::{Raw, Server, message, raw, search};
use serde_json::json;

/// Short timeouts, so that the tests that wait for them stay fast.
const CONFIG: &str = r#"
[limits]
max-content-length = "1 MiB"
message-timeout = "300ms"
idle-timeout = "2s"
"#;


/// A header of the guide's four fields with `content-length` written as `length`.
fn with_length(length: &str) -> Vec<u8> {
    let header = format!(
        r#"{{"byteorder": "little", "content-type": "binary/custom-client-binary-type", "content-encoding": "binary", "content-length": {length}}}"#
    );
    raw(header.as_bytes(), b"")
}

/// What the server must do with a malformed message.
enum Expect {
    /// Answer with this error code and this message, whole; keep the
    /// connection open.
    Open(&'static str, &'static str),
    /// Answer with this error code and this message, whole; close.
    Closed(&'static str, &'static str),
}

/// Reads the error answer and checks its code and message.
fn read_error(conn: &mut Raw, what: &str, code: &str, cause: &str) {
    let answer = crate::common::Answer::parse(&conn.try_read_message().unwrap_or_else(|e| panic!("{what}: no answer: {e}")));
    assert_eq!(answer.header["content-type"], "text/json", "{what}");
    let body = answer.json();
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    let text = body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(text, cause, "{what}");
    assert_eq!(body["result"], format!("Error: {text}"), "{what}");
    println!("{what}: {code}: {text}");
}

fn check(server: &Server, what: &str, bytes: &[u8], expect: Expect) {
    let mut conn = server.connect();
    conn.send(bytes);
    match expect {
        Expect::Open(code, cause) => {
            read_error(&mut conn, what, code, cause);
            let answer = conn.request(&search("morpheus"));
            assert_eq!(answer.result(), "Follow the white rabbit. 🐰", "{what}: the connection is no longer usable");
        }
        Expect::Closed(code, cause) => {
            read_error(&mut conn, what, code, cause);
            assert!(conn.is_closed(), "{what}: the connection was left open after a lost frame");
        }
    }
    server.assert_serves_others();
}

#[test]
fn a_battery_of_malformed_messages() {
    let server = Server::start_configured(CONFIG, &crate::common::plugins_dir());
    let search_with = |encoding: &str, content: &[u8]| {
        message(json!({"byteorder": "big", "content-type": "text/json", "content-encoding": encoding}), content)
    };
    let deep_header = format!(r#"{{"content-length": 0, "deep": {}{}}}"#, "[".repeat(200), "]".repeat(200));
    let deep_content = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        // The frame is lost: the answer, then the connection closes.
        ("zero-length header", b"\x00\x00".to_vec(), Expect::Closed("bad-frame", r#"the JSON header length is 0; a header is required"#)),
        ("non-JSON header", raw(b"not json", b""), Expect::Closed("bad-frame", r#"the JSON header is not valid JSON: expected ident at line 1 column 2"#)),
        ("non-UTF-8 header", raw(b"{\"a\": \"\xff\xfe\"}", b""), Expect::Closed("bad-frame", r#"the JSON header is not valid UTF-8 (at byte 7)"#)),
        ("list instead of object", raw(b"[1, 2]", b""), Expect::Closed("bad-frame", r#"the JSON header must be an object, got a list"#)),
        ("string instead of object", raw(b"\"hello\"", b""), Expect::Closed("bad-frame", r#"the JSON header must be an object, got a string"#)),
        (
            "content-length missing",
            raw(br#"{"byteorder": "big", "content-type": "text/json", "content-encoding": "utf-8"}"#, b""),
            Expect::Closed("bad-frame", r#"the header has no "content-length""#),
        ),
        ("negative length", with_length("-1"), Expect::Closed("bad-frame", r#""content-length" must be a non-negative integer, got a number (-1)"#)),
        ("string length", with_length("\"12\""), Expect::Closed("bad-frame", r#""content-length" must be a non-negative integer, got a string ("12")"#)),
        ("float length", with_length("1.5"), Expect::Closed("bad-frame", r#""content-length" must be a non-negative integer, got a number (1.5)"#)),
        ("null length", with_length("null"), Expect::Closed("bad-frame", r#""content-length" must be a non-negative integer, got null"#)),
        ("2^40 length", with_length("1099511627776"), Expect::Closed("too-large", r#""content-length" 1099511627776 is over this server's limit of 1048576 bytes"#)),
        ("2^64 length", with_length("18446744073709551616"), Expect::Closed("bad-frame", r#""content-length" must be a non-negative integer, got a number (1.8446744073709552e+19)"#)),
        ("one byte over the maximum", with_length("1048577"), Expect::Closed("too-large", r#""content-length" 1048577 is over this server's limit of 1048576 bytes"#)),
        ("deeply nested header", raw(deep_header.as_bytes(), b""), Expect::Closed("bad-frame", r#"the JSON header is not valid JSON: recursion limit exceeded at line 1 column 157"#)),
        // A field given twice is ambiguous (Python's json.loads would keep
        // the last): the frame is lost.
        (
            "content-length twice",
            raw(br#"{"byteorder": "big", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 0, "content-length": 5}"#, b"hello"),
            Expect::Closed("bad-frame", r#"the JSON header is ambiguous: "content-length" is given more than once (in any case: the server reads it) at line 1 column 120"#),
        ),
        (
            "content-length twice, in different case",
            raw(br#"{"byteorder": "big", "content-type": "text/json", "content-encoding": "utf-8", "Content-Length": 0, "content-length": 5}"#, b"hello"),
            Expect::Closed("bad-frame", r#"the JSON header is ambiguous: "content-length" is given more than once (in any case: the server reads it) at line 1 column 120"#),
        ),
        (
            "an extra field twice",
            raw(br#"{"byteorder": "big", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 2, "user": "a", "user": "b"}"#, b"{}"),
            Expect::Closed("bad-frame", r#"the JSON header is ambiguous: "user" is given more than once at line 1 column 125"#),
        ),
        // The frame is intact: the answer, and the connection goes on.
        (
            "byteorder missing",
            raw(br#"{"content-type": "text/json", "content-encoding": "utf-8", "content-length": 2}"#, b"{}"),
            Expect::Open("bad-header", r#"the header has no "byteorder""#),
        ),
        (
            "content-type missing",
            raw(br#"{"byteorder": "big", "content-encoding": "utf-8", "content-length": 2}"#, b"{}"),
            Expect::Open("bad-header", r#"the header has no "content-type""#),
        ),
        (
            "content-encoding missing",
            raw(br#"{"byteorder": "big", "content-type": "text/json", "content-length": 2}"#, b"{}"),
            Expect::Open("bad-header", r#"the header has no "content-encoding""#),
        ),
        (
            "content-type not a string",
            raw(br#"{"byteorder": "big", "content-type": ["text/json"], "content-encoding": "utf-8", "content-length": 2}"#, b"{}"),
            Expect::Open("bad-header", r#""content-type" must be a string, got a list (["text/json"])"#),
        ),
        ("invalid JSON content", search_with("utf-8", b"{\"action\": "), Expect::Open("bad-request", r#"bad request for plugin search: content is not valid JSON: EOF while parsing a value at line 1 column 11"#)),
        ("JSON content not an object", search_with("utf-8", b"[1, 2]"), Expect::Open("bad-request", r#"bad request for plugin search: request must be a JSON object, got a list"#)),
        ("deeply nested content", search_with("utf-8", deep_content.as_bytes()), Expect::Open("bad-request", r#"bad request for plugin search: content is not valid JSON: recursion limit exceeded at line 1 column 128"#)),
        ("content not UTF-8", search_with("utf-8", b"{\"value\": \"\xff\"}"), Expect::Open("bad-request", r#"bad request for plugin search: content is not valid utf-8: invalid utf-8 sequence of 1 bytes from index 11"#)),
        ("content not ASCII", search_with("ascii", "{\"value\": \"é\"}".as_bytes()), Expect::Open("bad-request", r#"bad request for plugin search: content is not valid ascii: byte 0xc3 at offset 11 is not ASCII"#)),
        ("unknown encoding", search_with("utf-16", b"{}"), Expect::Open("unsupported", r#"plugin search does not support this request: unsupported content-encoding "utf-16" (use utf-8, ascii or latin-1)"#)),
        ("empty encoding", search_with("", b"{}"), Expect::Open("unsupported", r#"plugin search does not support this request: unsupported content-encoding "" (use utf-8, ascii or latin-1)"#)),
    ];
    for (what, bytes, expect) in cases {
        check(&server, what, &bytes, expect);
    }
}

#[test]
fn the_names_of_the_fields_the_server_reads_are_matched_in_any_case() {
    let server = Server::start_configured(CONFIG, &crate::common::plugins_dir());
    let content = br#"{"action": "search", "value": "morpheus"}"#;
    let header = format!(r#"{{"Byteorder": "big", "Content-Type": "text/json", "CONTENT-ENCODING": "utf-8", "Content-Length": {}}}"#, content.len());
    let answer = server.connect().request(&raw(header.as_bytes(), content));
    assert_eq!(answer.result(), "Follow the white rabbit. 🐰");
}

#[test]
fn an_answer_still_queued_when_the_frame_is_lost_is_not_destroyed() {
    let server = Server::start_with_fixtures_and(
        "[limits]\nmax-response = \"2 MiB\"\n[routes]\n\"test/bad-response\" = \"bad-response\"\n\"*\" = \"search\"\n",
        &["--admin", "127.0.0.1:0"],
    );
    // A client with a small receive buffer, so that the server cannot send
    // its answers until the client reads.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect_timeout(&server.addr.into(), crate::common::STEP).expect("connect");
    let mut conn = Raw { stream: socket.into() };
    conn.stream.set_read_timeout(Some(crate::common::STEP)).expect("read timeout");

    // A request whose 1 MB answer waits in the server's send buffer, then a
    // header that is not JSON, then more bytes than the server will read.
    conn.send(&message(json!({"byteorder": "little", "content-type": "test/bad-response", "content-encoding": "utf-8"}), b"size 1000000"));
    // The answer has begun to arrive: the server has it, and most of it is
    // still queued on its side.
    let mut first_byte = [0; 1];
    assert_eq!(conn.stream.peek(&mut first_byte).expect("the first answer begins"), 1);
    let mut bytes = raw(b"not json", b"");
    bytes.extend(std::iter::repeat_n(0xAB, 64 * 1024));
    conn.send(&bytes);
    // The server has refused the lost frame (it counts it) while the answer
    // is still queued.
    crate::common::wait_until("the lost frame counted", || {
        crate::common::metric_total(&server.admin_get("/metrics").1, "wasmux_requests_total", "outcome=\"bad-frame\"") == 1.0
    });

    // Closing a socket with unread bytes resets the connection and throws
    // away what it has not sent yet. Both answers must arrive.
    let answer = conn.try_read_message().expect("the first answer, whole");
    assert_eq!(crate::common::Answer::parse(&answer).content.len(), 1_000_000);
    read_error(&mut conn, "garbage after a lost frame", "bad-frame", "the JSON header is not valid JSON: expected ident at line 1 column 2");
    assert!(conn.is_closed());
    server.assert_serves_others();
}

#[test]
fn requests_no_plugin_can_take_are_answered_and_the_connection_goes_on() {
    let server = Server::start_configured(
        "[routes]\n\"text/json\" = \"search\"\n\"image/*\" = \"nowhere\"\n",
        &crate::common::plugins_dir(),
    );
    let image = message(json!({"byteorder": "big", "content-type": "image/png", "content-encoding": "binary"}), b"\x89PNG");
    check(&server, "no route", &crate::common::binary(b"hello"), Expect::Open("no-route", "no route for content-type \"binary/custom-client-binary-type\""));
    check(&server, "route to a plugin not loaded", &image, Expect::Open("no-plugin", "no plugin nowhere is loaded"));
}

#[test]
fn the_default_maximum_is_8_mib_and_refused_before_any_content_is_read() {
    // Default limits but a long plugin deadline: copying 8 MiB into a guest
    // takes a debug build on a busy machine a good part of the default 100 ms.
    let server = Server::start_configured("[limits]\nplugin-deadline = \"10s\"\n", &crate::common::plugins_dir());
    // 8 MiB itself is accepted...
    let mut conn = server.connect();
    let content = vec![b'x'; 8 << 20];
    let answer = conn.request(&crate::common::binary(&content));
    assert_eq!(answer.content, b"First 10 bytes of request: xxxxxxxxxx");
    // ... one byte more is refused from the header alone: no content follows.
    check(&server, "8 MiB + 1", &with_length("8388609"), Expect::Closed("too-large", r#""content-length" 8388609 is over this server's limit of 8388608 bytes"#));
}

#[test]
fn a_header_of_the_largest_size_the_protocol_allows_is_served() {
    let server = Server::start_configured(CONFIG, &crate::common::plugins_dir());
    let mut header = json!({"byteorder": "little", "content-type": "binary/custom-client-binary-type", "content-encoding": "binary", "content-length": 5, "pad": ""});
    let base = wasmux_guide::python::to_vec(&header).expect("json").len();
    header["pad"] = "p".repeat(65535 - base).into();
    let bytes = raw(&wasmux_guide::python::to_vec(&header).expect("json"), b"hello");
    assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), 65535);
    let answer = server.connect().request(&bytes);
    assert_eq!(answer.content, b"First 10 bytes of request: hello");
    server.assert_serves_others();
}

#[test]
fn announced_lengths_are_not_allocated_before_they_arrive() {
    let server = Server::start_configured("[limits]\nmessage-timeout = \"1s\"\n", &crate::common::plugins_dir());
    let before = server.peak_virtual_memory();
    // 64 peers announce the largest message allowed, send ten bytes of it
    // and stall until the server gives up on them.
    let mut stalled: Vec<Raw> = (0..64)
        .map(|_| {
            let mut conn = server.connect();
            let mut bytes = with_length("8388608");
            bytes.extend_from_slice(b"0123456789");
            conn.send(&bytes);
            conn
        })
        .collect();
    // Each is told it timed out: by then the server has read its header and
    // done whatever it does with the announced length.
    for conn in &mut stalled {
        read_error(conn, "a stalled 8 MiB message", "timeout", "the message was not finished within 1s of its first byte");
    }
    // Reserved memory counts whether or not it was ever touched: the peak
    // of the address space shows any reservation, even one since freed.
    let grown = server.peak_virtual_memory().saturating_sub(before);
    println!("64 peers announcing 8 MiB each: the server's peak address space grew by {} MiB", grown >> 20);
    assert!(grown < 256 << 20, "the server reserved {grown} bytes for 512 MiB announced and 640 bytes sent");
    server.assert_serves_others();
}

#[test]
fn truncated_messages_are_reported_then_closed() {
    let server = Server::start_configured(CONFIG, &crate::common::plugins_dir());
    let whole = search("morpheus");
    for (what, cut, cause) in [
        ("in the prefix", 1, "the connection ended in the middle of a message, in the 2-byte header length"),
        ("in the header", 20, "the connection ended in the middle of a message, in the JSON header (18 of 103 bytes)"),
        ("in the content", whole.len() - 1, "the connection ended in the middle of a message, in the content (40 of 41 bytes)"),
    ] {
        let mut conn = server.connect();
        conn.send(&whole[..cut]);
        // The peer closes its side; it can still read the answer.
        conn.stream.shutdown(std::net::Shutdown::Write).expect("half-close");
        read_error(&mut conn, what, "truncated", cause);
        assert!(conn.is_closed(), "{what}");
        server.assert_serves_others();
    }
}

#[test]
fn a_stalled_message_times_out_from_its_first_byte() {
    let server = Server::start_configured(CONFIG, &crate::common::plugins_dir());
    // Half a message, then nothing.
    let mut conn = server.connect();
    let started = Instant::now();
    conn.send(&search("morpheus")[..30]);
    read_error(&mut conn, "stalled", "timeout", "the message was not finished within 300ms of its first byte");
    assert!(started.elapsed() >= Duration::from_millis(300), "timed out early, after {:?}", started.elapsed());
    assert!(conn.is_closed());
    server.assert_serves_others();

    // One byte every 50 ms: each read is recent, but the message as a whole
    // is late. Sending all of it would take 5 s.
    let mut conn = server.connect();
    let mut writer = conn.stream.try_clone().expect("clone the socket");
    let trickle = std::thread::spawn(move || {
        for byte in search("morpheus") {
            if writer.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let started = Instant::now();
    read_error(&mut conn, "trickling", "timeout", "the message was not finished within 300ms of its first byte");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "a trickling peer held its message open for {waited:?}");
    server.assert_serves_others();
    drop(conn);
    trickle.join().expect("trickle thread");
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let server = Server::start_configured(&CONFIG.replace("idle-timeout = \"2s\"", "idle-timeout = \"300ms\""), &crate::common::plugins_dir());
    let mut silent = server.connect();
    let mut served = server.connect();
    assert_eq!(served.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");
    let started = Instant::now();
    // No answer, no error: a connection with no message under way just closes.
    assert!(silent.is_closed(), "a silent connection was not closed");
    assert!(served.is_closed(), "an idle kept-alive connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.assert_serves_others();
}

#[test]
fn an_idle_crowd_does_not_delay_anyone() {
    let crowd_config = CONFIG.replace("message-timeout = \"300ms\"", "message-timeout = \"4s\"").replace("idle-timeout = \"2s\"", "idle-timeout = \"4s\"");
    let server = Server::start_configured(&crowd_config, &crate::common::plugins_dir());
    // 300 connections: a third silent, a third stalled mid-message, a third
    // kept alive after a request.
    let mut crowd = Vec::new();
    for i in 0..300 {
        let mut conn = server.connect();
        match i % 3 {
            0 => {}
            1 => conn.send(&search("ring")[..40]),
            _ => assert_eq!(conn.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍"),
        }
        crowd.push(conn);
    }
    let mut latencies = Vec::new();
    let mut conn = server.connect();
    for _ in 0..20 {
        let sent = Instant::now();
        assert_eq!(conn.request(&search("morpheus")).result(), "Follow the white rabbit. 🐰");
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    println!("beside 300 idle connections: 20 requests, p50 {:?}, max {:?}", latencies[10], latencies[19]);
    // Not a speed goal: a server that waited on its idle connections would
    // answer only as they time out, 4 s after they came (a request takes
    // about a millisecond).
    assert!(latencies[19] < Duration::from_secs(2), "a request waited {:?} beside an idle crowd", latencies[19]);

    // Each of the crowd is dealt with by its timeout: the stalled ones are
    // told, the others closed.
    for (i, mut conn) in crowd.into_iter().enumerate() {
        if i % 3 == 1 {
            read_error(&mut conn, "stalled in a crowd", "timeout", "the message was not finished within 4s of its first byte");
        }
        assert!(conn.is_closed(), "connection {i} of the crowd was not closed");
    }
    server.assert_serves_others();
}

#[test]
fn a_peer_that_never_reads_its_answers_is_dropped() {
    let server = Server::start_with_fixtures(
        "[limits]\nmessage-timeout = \"300ms\"\nmax-response = \"2 MiB\"\n[routes]\n\"test/bad-response\" = \"bad-response\"\n\"*\" = \"search\"\n",
    );
    let mut conn = server.connect();
    // 32 requests for 1 MB answers, in one write, and then no reading: far
    // more than the socket buffers between us hold.
    let request = message(json!({"byteorder": "little", "content-type": "test/bad-response", "content-encoding": "utf-8"}), b"size 1000000");
    conn.send(&request.repeat(32));
    assert!(
        server.wait_for_log("the peer did not read its answers for 300ms", Duration::from_secs(10)),
        "the server kept waiting for a peer that does not read; its log:\n{}",
        server.log()
    );
    server.assert_serves_others();
    // What it had written is still there to read; then the connection ends.
    let mut received = 0;
    let mut buf = vec![0; 1 << 16];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading what the server wrote: {e}"),
        }
    }
    println!("the server wrote {} KiB of 31 MiB of answers before dropping the peer", received / 1024);
    assert!(received < 32_000_000, "the server wrote every answer to a peer that did not read");
}


#[test]
fn at_the_connection_cap_new_clients_wait_instead_of_failing() {
    let config = "[limits]\nmax-connections = 2\nplugin-deadline = \"1500ms\"\n[routes]\n\"test/spin\" = \"spin\"\n\"*\" = \"search\"\n";
    let server = Server::start_with_fixtures(config);
    let spin = message(json!({"byteorder": "little", "content-type": "test/spin", "content-encoding": "utf-8"}), b"logging");
    // Both places taken by connections whose requests are being answered
    // (a plugin that logs each turn of a loop until its deadline).
    let mut first = server.connect();
    let mut second = server.connect();
    first.send(&spin);
    second.send(&spin);
    let end = Instant::now() + crate::common::STEP;
    while server.log().matches("spin: turn 1 ").count() < 2 {
        assert!(Instant::now() < end, "the two calls did not start; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(5));
    }

    // A third client connects (the listen backlog takes it) and sends, but
    // is not served while both places are busy...
    let mut third = server.connect();
    let third_addr = third.stream.local_addr().expect("local address");
    third.send(&search("morpheus"));

    // ... and is served once a place is free: the calls end at their
    // deadline, and the connection then idle the longest gives its place up.
    for conn in [&mut first, &mut second] {
        assert_eq!(crate::common::Answer::parse(&conn.read_message()).error_code(), "plugin-timeout");
    }
    assert_eq!(crate::common::Answer::parse(&third.read_message()).result(), "Follow the white rabbit. 🐰");
    assert!(server.wait_for_log("to make room for a new client", crate::common::STEP), "{}", server.log());
    // The server's own order of events, not a window of silence: the third
    // connection was accepted only after a call had reached its deadline.
    // (The log is read from the server's output as it comes: wait for the
    // line, the answer may arrive before it.)
    let accepted_line = format!("accepted connection from {third_addr}");
    assert!(server.wait_for_log(&accepted_line, crate::common::STEP), "{}", server.log());
    let log = server.log();
    let deadline = log.find("plugin spin ran past its deadline");
    let accepted = log.find(&accepted_line);
    assert!(deadline.is_some() && accepted > deadline, "the third client was accepted while both places were busy:\n{log}");
}

#[test]
fn at_the_connection_cap_idle_connections_make_room() {
    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(config.path(), "[limits]\nmax-connections = 2\n").expect("write the config");
    let plugins = crate::common::plugins_dir();
    let args = ["--config", config.path().to_str().expect("utf-8"), "--plugins", plugins.to_str().expect("utf-8")];
    // A trace line says when a connection is idle and in line to make
    // room. The one after its answer (logged as it is sent) counts: one
    // before it, on connecting, would let the next client go idle before
    // this one does on a busy machine.
    let server = Server::start_with_log("wasmux=debug,wasmux::server::room=trace", &args);
    let went_idle = |conn: &Raw| {
        let peer = conn.stream.local_addr().expect("local address");
        let (answered, idle) = (format!("' to {peer}\n"), format!("conn{{peer={peer}}}: wasmux::server::room: idle"));
        crate::common::wait_until("the connection goes idle after its answer", || {
            let log = server.log();
            log.rfind(&answered).is_some_and(|at| log[at..].contains(&idle))
        });
    };
    let mut first = server.connect();
    assert_eq!(first.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");
    went_idle(&first);
    let mut second = server.connect();
    assert_eq!(second.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");
    went_idle(&second);
    // Both places are held by idle connections (idle timeout: 60 s). A new
    // client does not wait for it: the connection idle the longest closes.
    server.assert_serves_others();
    assert!(first.is_closed(), "the connection idle the longest was not the one closed");
    assert_eq!(second.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");
}

/// The admin endpoint's limits (`wasmux::admin`): a client that sent half
/// a request does not hold up the exit (it kept the server running until
/// the client closed, whatever the drain timeout).
#[test]
fn a_half_sent_admin_request_does_not_hold_up_the_exit() {
    let plugins = crate::common::plugins_dir();
    let mut server = Server::start_with(&["--plugins", plugins.to_str().expect("utf-8"), "--admin", "127.0.0.1:0"]);
    let admin = server.admin.expect("the admin endpoint");
    let mut half = std::net::TcpStream::connect(admin).expect("connect to the admin endpoint");
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: wasmux\r\n").expect("half a request");
    // Accepted in order: once a later client is answered, this one is in.
    assert_eq!(server.admin_get("/healthz"), (200, "ok\n".to_owned()));
    let signalled = Instant::now();
    server.signal("TERM");
    let exited = server.wait_for_exit(crate::common::STEP + wasmux::admin::SHUTDOWN_GRACE);
    assert!(exited.is_some_and(|status| status.success()), "the server did not exit {:?} after SIGTERM; log:\n{}", signalled.elapsed(), server.log());
    println!("exited {:?} after SIGTERM with half an admin request open", signalled.elapsed());
    drop(half);
}

/// At most `MAX_CLIENTS` admin clients at once, each sending its headers
/// within `HEADER_TIMEOUT`: silent clients cannot take every descriptor of
/// the server (they did: the main listener could no longer accept), and
/// are closed; the next client is answered once a place is free.
#[test]
fn silent_admin_clients_are_capped_and_closed() {
    let server = Server::start_with(&["--plugins", crate::common::plugins_dir().to_str().expect("utf-8"), "--admin", "127.0.0.1:0"]);
    let admin = server.admin.expect("the admin endpoint");
    let opened = Instant::now();
    let silent: Vec<std::net::TcpStream> = (0..wasmux::admin::MAX_CLIENTS).map(|_| std::net::TcpStream::connect(admin).expect("connect")).collect();
    // The next client waits for a place: one of the silent ones closed
    // after the header timeout.
    let mut next = std::net::TcpStream::connect(admin).expect("connect");
    next.set_read_timeout(Some(wasmux::admin::HEADER_TIMEOUT + crate::common::STEP)).expect("read timeout");
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: wasmux\r\nConnection: close\r\n\r\n").expect("a request");
    let mut answer = String::new();
    next.read_to_string(&mut answer).expect("the answer");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\nok\n"), "{answer}");
    let waited = opened.elapsed();
    println!("the next admin client was answered {waited:?} after the silent ones connected");
    assert!(waited >= wasmux::admin::HEADER_TIMEOUT / 2, "answered after {waited:?}: more than MAX_CLIENTS at once");
    // The protocol clients were served all along.
    server.assert_serves_others();
    for mut conn in silent {
        conn.set_read_timeout(Some(crate::common::STEP)).expect("read timeout");
        // Closed by the server: the end of the stream, or a reset.
        match conn.read(&mut [0; 1]) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("a silent admin client was not closed: {other:?}"),
        }
    }
}
