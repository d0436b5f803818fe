//! What the `wasmux` command shows: every message's bytes with `-v`, the
//! address forms of the guide's reference section (IPv4, IPv6, names, an
//! empty host), and the guide's table of socket errors as one line each.


use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::Duration;

use crate::common::{Finished, Process, Raw, STEP, Server, search, wasmux};

/// `wasmux serve --native ARGS`, logging nothing but errors.
fn wasmux_serve(args: &[&str]) -> Finished {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
    command.args(["serve", "--native", "--no-cache"]).args(args).env("RUST_LOG", "off");
    Process::run(&mut command, STEP)
}

/// The single line a failed command printed: `wasmux: …`, with no panic.
fn one_line_error(out: &Finished) -> String {
    assert!(!out.status.success(), "{out:?}");
    assert!(!out.stderr.contains("panicked") && !out.stderr.contains("backtrace"), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].starts_with("wasmux: "), "{out:?}");
    lines[0].to_owned()
}

fn search_result(addr: SocketAddr) -> String {
    Raw::connect(addr).request(&search("morpheus")).result()
}

const MORPHEUS: &str = "Follow the white rabbit. 🐰";

// ---- Seeing the bytes ----

#[test]
fn send_v_shows_the_bytes_sent_and_received() {
    let server = Server::start_with(&["--native"]);
    let addr = server.addr_string();
    let out = wasmux(&["send", "-v", "--addr", &addr, "search", "morpheus"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, [format!("Got result: {MORPHEUS}")]);
    let sent = format!(
        r#"wasmux::wire: sending b'\x00g{{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 41}}{{"action": "search", "value": "morpheus"}}' to {addr}"#
    );
    let received = format!(
        r#"wasmux::wire: received b'\x00g{{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 43}}{{"result": "Follow the white rabbit. \xf0\x9f\x90\xb0"}}' from {addr}"#
    );
    if cfg!(target_endian = "little") {
        assert!(out.stderr.lines().any(|line| line.ends_with(&sent)), "no {sent:?} in:\n{}", out.stderr);
        assert!(out.stderr.lines().any(|line| line.ends_with(&received)), "no {received:?} in:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains('\x1b'), "colour codes in a piped log:\n{}", out.stderr);

    // Off by default.
    let quiet = wasmux(&["send", "--addr", &addr, "search", "morpheus"]);
    assert!(quiet.status.success(), "{quiet:?}");
    assert_eq!(quiet.stderr, "");
}

#[test]
fn serve_v_shows_a_message_that_arrived_in_pieces() {
    let server = Server::start_with(&["--native", "-v"]);
    let request = search("morpheus");
    let mut conn = server.connect();
    // Each piece is read by the server (its side of the connection holds
    // nothing unread) before the next is sent: the header first, then the
    // content a byte at a time.
    let (header, content) = request.split_at(request.len() - 10);
    let client = conn.stream.local_addr().expect("local address");
    let mut send_piece = |piece: &[u8]| {
        conn.send(piece);
        crate::common::wait_until("the server reads the piece", || {
            crate::common::kernel_socket(server.addr, Some(client)).is_some_and(|socket| socket.receive_queue == 0)
        });
    };
    send_piece(header);
    for byte in content {
        send_piece(&[*byte]);
    }
    assert_eq!(crate::common::Answer::parse(&conn.read_message()).result(), MORPHEUS);
    let shown = format!("received {} from ", wasmux_guide::python::bytes_repr(&request));
    assert!(server.wait_for_log(&shown, STEP), "no {shown:?} in:\n{}", server.log());
}

// ---- Addresses ----

#[test]
fn ipv6_loopback() {
    let server = Server::start_listening(&["[::1]:0"], 1, &["--native"]);
    assert!(server.addr.ip().is_loopback() && server.addr.is_ipv6(), "{:?}", server.addrs);
    assert_eq!(search_result(server.addr), MORPHEUS);
    let out = wasmux(&["send", "--addr", &format!("[::1]:{}", server.addr.port()), "search", "morpheus"]);
    assert_eq!(out.stdout, [format!("Got result: {MORPHEUS}")], "{out:?}");
}

#[test]
fn a_name_listens_on_every_address_it_resolves_to() {
    // What getaddrinfo says here: 127.0.0.1, and ::1 where /etc/hosts has it.
    let resolved: BTreeSet<IpAddr> = ("localhost", 0).to_socket_addrs().expect("resolve localhost").map(|a| a.ip()).collect();
    let server = Server::start_listening(&["localhost:0"], resolved.len(), &["--native"]);
    let listening: BTreeSet<IpAddr> = server.addrs.iter().map(SocketAddr::ip).collect();
    assert_eq!(listening, resolved);
    let port = server.addr.port();
    for addr in &server.addrs {
        assert_eq!(addr.port(), port, "one port for every address: {:?}", server.addrs);
        assert_eq!(search_result(*addr), MORPHEUS, "{addr}");
    }
    let out = wasmux(&["send", "--addr", &format!("localhost:{port}"), "search", "morpheus"]);
    assert_eq!(out.stdout, [format!("Got result: {MORPHEUS}")], "{out:?}");
}

#[test]
fn an_empty_host_listens_on_every_interface() {
    let server = Server::start_listening(&[":0"], 2, &["--native"]);
    let listening: BTreeSet<IpAddr> = server.addrs.iter().map(SocketAddr::ip).collect();
    assert_eq!(listening, BTreeSet::from(["0.0.0.0".parse().unwrap(), "::".parse().unwrap()]));
    let port = server.addr.port();
    assert!(server.addrs.iter().all(|a| a.port() == port), "{:?}", server.addrs);
    for loopback in ["127.0.0.1", "::1"] {
        let addr = SocketAddr::new(loopback.parse().unwrap(), port);
        assert_eq!(search_result(addr), MORPHEUS, "{addr}");
    }
}

#[test]
fn malformed_addresses_are_explained() {
    for (args, start) in [
        (&["send", "--addr", "localhost", "search", "x"][..], "wasmux: address \"localhost\" has no port; write HOST:PORT, [IPv6]:PORT or :PORT"),
        (&["send", "--addr", "::1:65432", "search", "x"][..], "wasmux: address \"::1:65432\": write an IPv6 address in brackets, as [::1]:65432"),
        (&["send", "--addr", "127.0.0.1:99999", "search", "x"][..], "wasmux: address \"127.0.0.1:99999\": \"99999\" is not a port number (0-65535): number too large to fit in target type"),
        // What `wasmux serve` prints for its admin endpoint, pasted: a URL, not an IPv6 address without brackets.
        (&["send", "--addr", "http://127.0.0.1:47411", "search", "x"][..], "wasmux: address \"http://127.0.0.1:47411\" is a URL: give HOST:PORT, as 127.0.0.1:47411"),
        (&["send", "--addr", "127.0.0.1:47411/", "search", "x"][..], "wasmux: address \"127.0.0.1:47411/\": give HOST:PORT, without a path"),
    ] {
        assert_eq!(one_line_error(&wasmux(args)), start);
    }
    let line = one_line_error(&wasmux_serve(&["--listen", "127.0.0.1:http"]));
    assert_eq!(line, "wasmux: address \"127.0.0.1:http\": \"http\" is not a port number (0-65535): invalid digit found in string");
}

/// `wasmux send -f` of a field the header carries itself was dropped as
/// the header was written, without a word; `authorization` is the token's.
/// Each is refused before anything is sent, saying what to give instead;
/// any other field is sent.
#[test]
fn send_refuses_fields_the_header_carries_itself() {
    let server = Server::start_with(&["--native"]);
    let addr = server.addr_string();
    for (field, expected) in [
        ("content-type=text/json", "wasmux: --field content-type=text/json: content-type is read by the host and is not sent as a field of its own; give the content-type with -t (--content-type)"),
        ("Content-Length=3", "wasmux: --field Content-Length=3: Content-Length is read by the host and is not sent as a field of its own; it is the content's length: give the content with --content or --content-file"),
        ("byteorder=big", "wasmux: --field byteorder=big: byteorder is read by the host and is not sent as a field of its own; wasmux send sends this machine's"),
        (
            "authorization=Bearer x",
            "wasmux: --field authorization=Bearer x: authorization is read by the host and is not sent as a field of its own; give the tenant's token with --token (or WASMUX_TOKEN), which sends it as \"Bearer TOKEN\"",
        ),
    ] {
        assert_eq!(one_line_error(&wasmux(&["send", "--addr", &addr, "-f", field, "search", "morpheus"])), expected, "{field}");
    }
    let out = wasmux(&["send", "--addr", &addr, "-f", "user=ann", "search", "morpheus"]);
    assert!(out.status.success(), "{out:?}");
}

/// `wasmux experiments --admin` takes the admin endpoint's URL as `wasmux
/// serve` prints it (`wasmux admin on http://…`), with or without a
/// trailing slash; a URL it cannot use is refused as a URL, not as a
/// server that may not be running.
#[test]
fn experiments_takes_the_admin_url_serve_prints() {
    let server = Server::start_with(&["--native", "--admin", "127.0.0.1:0"]);
    let admin = server.admin.expect("an admin address");
    for url in [format!("http://{admin}"), format!("http://{admin}/")] {
        let out = wasmux(&["experiments", "--admin", &url]);
        assert!(out.status.success(), "{url}: {out:?}");
        assert_eq!(out.stdout, ["no route has a split or a canary: no experiment is running"], "{url}: {out:?}");
    }
    let line = one_line_error(&wasmux(&["experiments", "--admin", &format!("https://{admin}")]));
    assert_eq!(line, format!("wasmux: address \"https://{admin}\" is a URL: give HOST:PORT, as {admin}"));
}

// ---- Arguments ----

/// A guide's request (ACTION VALUE) and a custom one (--content-type with
/// --content, --content-file, -e) do not mix: an option of a custom
/// request beside ACTION is refused, not dropped (the search was sent and
/// the command succeeded). Either ACTION or --content-type is enough, so
/// an option of a custom request alone asks only for --content-type.
#[test]
fn send_refuses_a_custom_requests_options_beside_an_action() {
    // It would answer the search.
    let server = Server::start_with(&["--native"]);
    let addr = server.addr_string();
    let options: [(&[&str], &str); 4] = [
        (&["--content", "hi"], "--content <CONTENT>"),
        (&["--content-file", "/dev/null"], "--content-file <CONTENT_FILE>"),
        (&["-e", "utf-8"], "--encoding <ENCODING>"),
        (&["-t", "text/plain"], "--content-type <CONTENT_TYPE>"),
    ];
    for (option, shown) in options {
        let out = wasmux(&[&["send", "--addr", &addr, "search", "morpheus"][..], option].concat());
        assert_eq!((out.status.code(), out.stdout.as_slice()), (Some(2), &[][..]), "{option:?}: {out:?}");
        let expected = format!("error: the argument '[ACTION]' cannot be used with '{shown}'");
        assert_eq!(out.stderr.lines().next(), Some(expected.as_str()), "{out:?}");
    }
    for (option, _) in &options[..3] {
        let out = wasmux(&[&["send", "--addr", &addr][..], option].concat());
        assert_eq!(out.status.code(), Some(2), "{option:?}: {out:?}");
        let said: Vec<&str> = out.stderr.lines().take(3).collect();
        assert_eq!(said, ["error: the following required arguments were not provided:", "  --content-type <CONTENT_TYPE>", ""], "{option:?}: {out:?}");
    }
}

// ---- The guide's table of socket errors ----
// Each line whole, as docs/protocol.md's table shows it.

#[test]
fn a_port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("local address");
    let line = one_line_error(&wasmux_serve(&["--listen", &addr.to_string()]));
    assert_eq!(line, format!("wasmux: cannot listen on {addr}: address already in use: another process is listening on this port (ss -ltnp shows which); stop it or pick another port"));
}

#[test]
fn a_refused_connection() {
    // Bound, never listening: refused for as long as the socket is held.
    let (_bound, port) = crate::common::refusing_port();
    let line = one_line_error(&wasmux(&["send", "--addr", &format!("127.0.0.1:{port}"), "search", "x"]));
    // Whole, as the guide's table of socket errors shows it (docs/protocol.md).
    assert_eq!(line, format!("wasmux: cannot connect to 127.0.0.1:{port}: connection refused: no server is listening on that port; is it running, and is the port right?"));
}

#[test]
fn a_server_that_never_answers() {
    // It listens, so the connection is made and the request sent, but it
    // never accepts, let alone answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("local address");
    let line = one_line_error(&wasmux(&["send", "--timeout", "300ms", "--addr", &addr.to_string(), "search", "x"]));
    assert_eq!(line, format!("wasmux: no answer from {addr} within 300ms: the server accepted the connection but did not answer; is it a guide-protocol server, and is it overloaded or stuck?"));
}

#[test]
fn a_connection_that_times_out() {
    // A listener whose backlog is full: the system drops further SYNs, so
    // a connection attempt gets no response at all, as behind a firewall.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    socket.listen(0).expect("listen");
    let addr = socket.local_addr().expect("local address").as_socket().expect("an IP address");
    let mut queued = Vec::new();
    let full = (0..16).any(|_| match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        Ok(stream) => {
            queued.push(stream);
            false
        }
        Err(_) => true,
    });
    assert!(full, "the backlog never filled");
    let line = one_line_error(&wasmux(&["send", "--timeout", "300ms", "--addr", &addr.to_string(), "search", "x"]));
    assert_eq!(line, format!("wasmux: cannot connect to {addr}: timed out after 300ms: no response; is the host up, and is a firewall dropping packets?"));
}

#[test]
fn a_connection_reset_by_the_peer() {
    // A server that reads the request, then drops the connection with an
    // RST (SO_LINGER 0) instead of answering: as if it had crashed.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local address");
    let crasher = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(STEP)).expect("read timeout");
        let mut request = [0u8; 256];
        let _ = std::io::Read::read(&mut stream, &mut request);
        socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).expect("linger");
    });
    let line = one_line_error(&wasmux(&["send", "--addr", &addr.to_string(), "search", "x"]));
    let _ = crasher.join();
    assert_eq!(line, format!("wasmux: reading from {addr}: connection reset by peer: the other side crashed or closed its socket uncleanly, or a firewall or other device in the path cut the connection"));
}

/// `wasmux push` of a file that is not WebAssembly says so on one line
/// (wasmparser's message spans several), before it reaches for the
/// registry: none listens on the port given.
#[test]
fn push_refuses_what_is_not_a_component_in_one_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not WebAssembly").expect("write");
    let (_closed, port) = crate::common::refusing_port();
    let line = one_line_error(&wasmux(&["push", junk.to_str().expect("utf-8"), &format!("127.0.0.1:{port}/wasmux")]));
    assert!(line.starts_with("wasmux: not a WebAssembly component: ") && line.contains("bad magic number"), "{line}");
}

/// A plugin directory that is not there is named, in one line, whether it
/// is watched (the default; the watcher's own words were "No path was
/// found. about [...]") or read once (`--no-watch`).
#[test]
fn a_missing_plugin_directory_is_named() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("nope");
    for extra in [&[][..], &["--no-watch"]] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--no-cache", "--plugins", missing.to_str().expect("utf-8")]).args(extra).env("RUST_LOG", "off");
        let line = one_line_error(&Process::run(&mut command, STEP));
        assert_eq!(
            line,
            format!("wasmux: the plugin directory {} does not exist (in a checkout of wasmux, `cargo xtask plugins` builds the plugins into target/plugins)", missing.display()),
            "{extra:?}"
        );
    }
}

// ---- Refusing to start open ----

/// An empty configuration file is refused at start-up too: read as the
/// built-in configuration it would serve requests without a token.
#[test]
fn an_empty_configuration_file_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("wasmux.toml");
    std::fs::write(&config, "\n").expect("write");
    let line = one_line_error(&wasmux_serve(&["--listen", "127.0.0.1:0", "--config", config.to_str().expect("utf-8")]));
    // As docs/configuration.md shows it.
    assert_eq!(
        line,
        format!(
            "wasmux: invalid configuration in {}: the file is empty. It is not read as the built-in configuration, which serves requests without a token: \
             a file is empty for a moment while it is rewritten in place. To run with the built-in configuration, leave out --config, or write a comment in the file",
            config.display()
        )
    );
}

#[test]
fn the_admin_endpoint_does_not_listen_off_loopback_without_a_token() {
    let line = one_line_error(&wasmux_serve(&["--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"]));
    // Whole but for the port the system picked.
    let (start, rest) = line.split_once("0.0.0.0:").unwrap_or_else(|| panic!("no address in {line:?}"));
    let (port, end) = rest.split_once(' ').unwrap_or_else(|| panic!("no port in {line:?}"));
    assert!(port.parse::<u16>().is_ok(), "{line}");
    assert_eq!(
        (start, end),
        (
            "wasmux: the admin endpoint would listen on ",
            "(off loopback) without a token: anyone who can reach it would see the plugins, tenants and traffic. \
             Give it one (--admin-token-file FILE, or [admin] token-sha256 from `wasmux token`), or listen on loopback (--admin PORT)"
        )
    );
}

/// A time past what the clock holds once added to now (every command that
/// waits would panic) is refused where it is given, as too long.
#[test]
fn a_time_over_a_year_is_refused_on_the_command_line() {
    for args in [
        &["send", "--timeout", "300000000000y", "search", "morpheus"][..],
        &["serve", "--drain-timeout", "2y", "--native"],
        &["bench", "--duration", "300000000000y"],
    ] {
        let out = crate::common::wasmux(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains("is over a year, the longest time wasmux takes"), "{args:?}: {out:?}");
    }
}

/// `wasmux experiments` sums the servers it is given: one given twice, in
/// any spelling of its address, is refused rather than counted twice.
#[test]
fn experiments_refuses_a_server_given_twice() {
    let out = crate::common::wasmux(&["experiments", "--admin", "9090", "--admin", "http://127.0.0.1:9090/"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("--admin 9090 and --admin http://127.0.0.1:9090/ are the same server, 127.0.0.1:9090"), "{out:?}");
}

/// An empty token (an unset variable written `WASMUX_TOKEN=`) is said to be
/// one, not sent as `Bearer ` to be refused as unauthorized; and no hash is
/// made for one.
#[test]
fn an_empty_token_is_refused_where_it_is_given() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wasmux"));
    command.args(["send", "--addr", "127.0.0.1:9", "search", "morpheus"]).env("WASMUX_TOKEN", "").env_remove("RUST_LOG");
    let out = crate::common::Process::run(&mut command, crate::common::STEP);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("the token is empty (--token or WASMUX_TOKEN)"), "{out:?}");
    let out = crate::common::wasmux(&["token", "--hash", ""]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("the token is empty") && out.stdout.is_empty(), "{out:?}");
}
