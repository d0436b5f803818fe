//! What an operator relies on, against a real `wasmux serve`: stopping with
//! requests in flight, reloading limits and plugin settings, the call cap,
//! the compiled-code cache's location, the warnings and the admin
//! endpoint's view of the plugins.


use std::time::{Duration, Instant};

use crate::common::{Answer, Raw, Server, message, metric, search};
use serde_json::{Value, json};

/// A request to test fixture `plugin` (routed as `test/PLUGIN`).
fn ask(plugin: &str, content: &str) -> Vec<u8> {
    message(json!({"byteorder": "little", "content-type": format!("test/{plugin}"), "content-encoding": "utf-8"}), content.as_bytes())
}

/// How far the spin fixture counts in `seconds` on this machine now.
fn count_for(server: &Server, seconds: f64) -> u64 {
    let started = Instant::now();
    assert_eq!(server.connect().request(&ask("spin", "count 100000000")).content, b"spin: counted 100000000");
    let per_second = 100_000_000.0 / started.elapsed().as_secs_f64().max(0.001);
    ((per_second * seconds) as u64).max(1_000_000)
}

const SPIN_ROUTES: &str = "[routes]\n\"test/spin\" = \"spin\"\n\"*\" = \"search\"\n";

#[test]
fn sigterm_and_sigint_let_a_request_in_flight_finish() {
    for signal in ["TERM", "INT"] {
        let mut server = Server::start_with_fixtures(&format!("[limits]\nplugin-deadline = \"30s\"\n{SPIN_ROUTES}"));
        let n = count_for(&server, 1.0);
        let addr = server.addr;
        let request = ask("spin", &format!("count {n}"));
        let in_flight = std::thread::spawn(move || {
            let mut conn = Raw::connect(addr);
            let answer = conn.request(&request);
            (answer, conn.is_closed())
        });
        // The second spin request logged (the first was count_for's, and may
        // be just as long) is the one in flight.
        crate::common::wait_until("the request in flight begins", || server.log().matches("test/spin request (").count() >= 2);
        assert!(server.stop_with(signal), "SIG{signal}: the server did not exit cleanly; log:\n{}", server.log());
        let (answer, closed) = in_flight.join().expect("the request's thread");
        assert_eq!(answer.content, format!("spin: counted {n}").into_bytes(), "SIG{signal}: the request in flight was not answered");
        assert!(closed, "SIG{signal}: the connection was not closed after its answer");
        assert!(server.log().contains("shutting down: no new connections; finishing requests in flight"), "{}", server.log());
    }
}

#[test]
fn reloaded_limits_and_plugin_settings_apply_to_the_next_requests() {
    let config = |deadline: &str, matching: &str| {
        format!("[limits]\nplugin-deadline = \"{deadline}\"\n[plugins.\"search@fuzzy\"]\nmatch = \"{matching}\"\n[routes]\n\"test/spin\" = \"spin\"\n\"*\" = \"search@fuzzy\"\n")
    };
    let server = Server::start_with_fixtures(&config("100ms", "exact"));
    let mut conn = server.connect();
    let error = |answer: Answer| answer.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(error(conn.request(&ask("spin", "forever"))).contains("deadline of 100ms"));
    assert_eq!(conn.request(&search("MORPH")).result(), "No match for \"MORPH\".");

    std::fs::write(server.config_path(), config("250ms", "prefix,case-insensitive")).expect("rewrite the configuration");
    assert!(server.wait_for_log("reloaded", crate::common::STEP), "{}", server.log());
    assert!(error(conn.request(&ask("spin", "forever"))).contains("deadline of 250ms"));
    assert_eq!(conn.request(&search("MORPH")).result(), "Follow the white rabbit. 🐰");
}

#[test]
fn requests_over_max_concurrent_calls_wait_for_their_turn() {
    // One call at a time. A tenant's call spins to its 1 s deadline; the
    // default tenant's request, sent while it runs, waits for the slot (it
    // has 10 s) and is then answered.
    let config = format!(
        "[limits]\nmax-concurrent-calls = 1\nplugin-deadline = \"10s\"\n{SPIN_ROUTES}\
         [tenants.default]\n[tenants.spinner]\ntoken-sha256 = \"{}\"\nlimits = {{ plugin-deadline = \"1s\" }}\n",
        wasmux::tenancy::TokenHash::of("spinner")
    );
    let server = Server::start_with_fixtures(&config);
    let spin = message(
        json!({"byteorder": "little", "content-type": "test/spin", "content-encoding": "utf-8", "authorization": "Bearer spinner"}),
        b"logging",
    );
    let mut spinner = server.connect();
    let sent = Instant::now();
    spinner.send(&spin);
    assert!(server.wait_for_log("spin: turn 1 ", crate::common::STEP), "{}", server.log());
    let answer = server.connect().request(&search("morpheus"));
    let waited = sent.elapsed();
    assert_eq!(answer.result(), "Follow the white rabbit. 🐰");
    // The spinning call holds the only slot from after it was sent until
    // its deadline, a second later: the other request cannot have had it
    // sooner.
    assert!(waited >= Duration::from_secs(1), "answered after {waited:?}, while the only slot was taken");
    assert_eq!(Answer::parse(&spinner.read_message()).error_code(), "plugin-timeout");
}

#[test]
fn compiled_code_goes_to_the_users_cache_directory_unless_no_cache() {
    let home = tempfile::tempdir().expect("a cache home");
    let cache_home = home.path().to_str().expect("utf-8");
    let plugins = crate::common::plugins_dir();
    let plugins = plugins.to_str().expect("utf-8");
    let cached = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".cwasm")).collect())
            .unwrap_or_default()
    };
    {
        let server = Server::start_with_env(&[("XDG_CACHE_HOME", cache_home)], &["--plugins", plugins]);
        server.assert_serves_others();
    }
    let entries = cached(&home.path().join("wasmux"));
    assert!(entries.len() >= 3, "no compiled code in $XDG_CACHE_HOME/wasmux: {entries:?}");

    let empty = tempfile::tempdir().expect("another cache home");
    {
        let server = Server::start_with_env(&[("XDG_CACHE_HOME", empty.path().to_str().expect("utf-8"))], &["--plugins", plugins, "--no-cache"]);
        server.assert_serves_others();
    }
    let written: Vec<_> = std::fs::read_dir(empty.path()).expect("read the cache home").filter_map(|e| e.ok()).map(|e| e.path()).collect();
    assert!(written.is_empty(), "--no-cache wrote {written:?}");
}

/// `--no-cache` wins over `WASMUX_CACHE_DIR`, in `serve` and in `call`:
/// the variable chooses a directory for when a cache is kept, it is not a
/// `--cache-dir` given (clap counted it as one, and refused `--no-cache`
/// whenever it was set). Both options on the command line are refused.
#[test]
fn no_cache_wins_over_the_cache_directory_of_the_environment() {
    let cache = tempfile::tempdir().expect("a cache directory");
    let cache_dir = cache.path().to_str().expect("utf-8");
    let plugins = crate::common::plugins_dir();
    {
        let server = Server::start_with_env(&[("WASMUX_CACHE_DIR", cache_dir)], &["--plugins", plugins.to_str().expect("utf-8"), "--no-cache"]);
        server.assert_serves_others();
    }
    let search = plugins.join("search.wasm");
    let query = r#"{"action": "search", "value": "morpheus"}"#;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wasmux"));
    command.args(["call", search.to_str().expect("utf-8"), "--no-cache", "-t", "text/json", "--content", query]).env("WASMUX_CACHE_DIR", cache_dir).env_remove("RUST_LOG");
    let out = crate::common::Process::run(&mut command, crate::common::STEP);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, ["Got result: Follow the white rabbit. 🐰"], "{out:?}");
    let written: Vec<_> = std::fs::read_dir(cache.path()).expect("read the cache directory").filter_map(|e| e.ok()).map(|e| e.path()).collect();
    assert!(written.is_empty(), "--no-cache wrote {written:?}");

    for args in [&["serve", "--native", "--listen", "127.0.0.1:0"][..], &["call", search.to_str().expect("utf-8")]] {
        let out = crate::common::wasmux(&[args, &["--cache-dir", cache_dir, "--no-cache"]].concat());
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(out.stderr.lines().next(), Some("error: the argument '--no-cache' cannot be used with '--cache-dir <CACHE_DIR>': give one of them"), "{out:?}");
    }
}

/// A settings table for a plugin that no route names applies to nothing,
/// and is most likely a misspelt name: `[plugins.serch] wasi = false`
/// leaves `search` free to import WASI. It is warned about at the default
/// level, at start and at each reload, with the plugins the routes do use.
#[test]
fn settings_for_a_plugin_no_route_names_are_warned_about() {
    let config = "[plugins.serch]\nwasi = false\n[runtime.plugins.\"search@fuzy\"]\nreuse = { requests = 2 }\n";
    let server = Server::start_configured_with(config, &crate::common::plugins_dir(), &["--no-watch"]);
    let server_table = "[plugins.serch]: none of tenant default's routes use plugin serch, so these settings apply to nothing (is the name misspelt?); its routes use binary-echo, search";
    let runtime_table = "[runtime.plugins.\"search@fuzy\"]: none of tenant default's routes use plugin search@fuzy, so these settings apply to nothing (is the name misspelt?); its routes use binary-echo, search";
    let warned = |line: &str| server.log().lines().filter(|l| l.contains(" WARN ") && l.ends_with(line)).count();
    assert!(server.wait_for_log(runtime_table, crate::common::STEP), "{}", server.log());
    assert_eq!((warned(server_table), warned(runtime_table)), (1, 1), "{}", server.log());

    // A reload warns again, and of a tenant's own table against its routes.
    let tenant_table = "[tenants.default.plugins.binary-ecko]: none of tenant default's routes use plugin binary-ecko, so these settings apply to nothing (is the name misspelt?); its routes use binary-echo, search";
    std::fs::write(server.config_path(), format!("{config}[tenants.default.plugins.binary-ecko]\ngreeting = \"hi\"\n")).expect("rewrite the configuration");
    let status = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().expect("kill -HUP");
    assert!(status.success());
    assert!(server.wait_for_log("reloaded", crate::common::STEP), "{}", server.log());
    assert_eq!((warned(server_table), warned(runtime_table), warned(tenant_table)), (2, 2, 1), "{}", server.log());
    server.assert_serves_others();
}

#[test]
fn turning_spectre_hardening_off_is_warned_about() {
    let server = Server::start_configured("[runtime]\nspectre-hardening = false\n", &crate::common::plugins_dir());
    assert!(server.wait_for_log("runtime.spectre-hardening is off: serve only plugins you trust", crate::common::STEP), "{}", server.log());
    assert!(server.log().lines().any(|l| l.contains("WARN") && l.contains("spectre-hardening is off")), "{}", server.log());
    server.assert_serves_others();
}

#[test]
fn the_admin_endpoint_lists_every_plugin_and_counts_refusals() {
    // The fixtures include one refused at load (its memory starts over the cap).
    let server = Server::start_with_fixtures_and("[limits]\nplugin-memory = \"16 MiB\"\n", &["--admin", "127.0.0.1:0"]);
    assert!(server.wait_for_log("plugin big-initial-memory: refused", crate::common::STEP), "{}", server.log());
    let (status, body) = server.admin_get("/plugins");
    assert_eq!(status, 200);
    let plugins: Value = serde_json::from_str(&body).expect("/plugins is JSON");
    let entry = |name: &str| plugins.as_array().and_then(|all| all.iter().find(|p| p["name"] == name).cloned()).unwrap_or_else(|| panic!("{name} not in {plugins}"));

    let search = entry("search");
    let bytes = std::fs::read(crate::common::plugins_dir().join("search.wasm")).expect("search.wasm");
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    assert_eq!(search["loaded"], true);
    assert_eq!(search["native"], false);
    assert_eq!(search["sha256"], sha256.as_str());
    assert_eq!(search["version"], &sha256[..12]);
    assert_eq!(search["size"], bytes.len());
    assert!(search["loaded_at"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{search}");
    assert!(search["compile_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{search}");
    assert!(["compiled", "memory-cache", "disk-cache"].contains(&search["code_from"].as_str().unwrap_or_default()), "{search}");
    assert!(search["last_error"].is_null(), "{search}");

    let refused = entry("big-initial-memory");
    assert_eq!(refused["loaded"], false);
    assert!(refused["version"].is_null(), "{refused}");
    let error = refused["last_error"]["message"].as_str().unwrap_or_default();
    assert!(error.contains("plugin big-initial-memory: refused") && error.contains("exceeds the limit"), "{refused}");
    assert!(refused["last_error"]["at"].is_string(), "{refused}");

    let (_, metrics) = server.admin_get("/metrics");
    assert_eq!(metric(&metrics, r#"wasmux_plugin_load_failures_total{plugin="big-initial-memory"}"#), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, r#"wasmux_plugin_loads_total{plugin="search"}"#), Some(1.0), "{metrics}");
}

#[test]
fn sighup_reloads_the_configuration() {
    // Not watched: only SIGHUP makes the server read the file again.
    let server = Server::start_configured_with("[routes]\n\"*\" = \"binary-echo\"\n", &crate::common::plugins_dir(), &["--no-watch"]);
    let mut conn = server.connect();
    assert!(conn.request(&search("ring")).content.starts_with(b"First 10 bytes of request: "));
    std::fs::write(server.config_path(), "[routes]\n\"*\" = \"search\"\n").expect("rewrite the configuration");
    let status = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().expect("kill -HUP");
    assert!(status.success());
    assert!(server.wait_for_log("reloaded", crate::common::STEP), "{}", server.log());
    assert_eq!(conn.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");
}

/// Routes for the drain tests: the counter fixture waits as long as asked.
const DRAIN_CONFIG: &str = "[limits]\nplugin-deadline = \"60s\"\n[routes]\n\"test/counter\" = \"counter\"\n\"*\" = \"search\"\n";

/// A request that runs for 30 s, sent on a connection of its own once the
/// call has begun.
fn long_request(server: &Server) -> Raw {
    let mut conn = server.connect();
    conn.send(&ask("counter", "wait 30000"));
    assert!(server.wait_for_log("counter: waiting 30000 ms", crate::common::STEP), "{}", server.log());
    conn
}

/// Waits until connecting to `server` is refused: it no longer listens.
fn wait_until_refused(server: &Server) {
    crate::common::wait_until("the server stops listening", || std::net::TcpStream::connect(server.addr).is_err());
}

/// Without flags and without an agent: no drain delay (the server stops
/// accepting at SIGTERM), and a drain timeout of 10 s for the requests in
/// flight (docs/running.md).
#[test]
fn sigterm_without_flags_stops_accepting_at_once_and_gives_requests_10_s() {
    let mut server = Server::start_with_fixtures(DRAIN_CONFIG);
    let mut in_flight = long_request(&server);
    let mut idle = server.connect();
    assert_eq!(idle.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");

    let signalled = Instant::now();
    server.signal("TERM");
    assert!(server.wait_for_log("shutting down: no new connections; finishing requests in flight", crate::common::STEP), "{}", server.log());
    assert!(!server.log().contains("still accepting"), "a drain delay without --agent or --drain-delay:\n{}", server.log());
    wait_until_refused(&server);
    assert!(idle.is_closed(), "an idle connection was left open");

    let exited = server.wait_for_exit(Duration::from_secs(30)).expect("the server exits after its drain timeout");
    let took = signalled.elapsed();
    println!("exited {took:?} after SIGTERM, a request still in flight");
    assert!(exited.success(), "{exited:?}");
    assert!(took >= Duration::from_secs(10), "exited {took:?} after SIGTERM, before the drain timeout");
    assert!(server.log().contains("1 connections still open after 10s; stopping anyway"), "{}", server.log());
    assert!(in_flight.try_read_message().is_err(), "a request past the drain timeout was answered");
}

/// With `--agent` the drain delay is 2 s unless given: the agent answers
/// `drain` meanwhile.
#[test]
fn sigterm_with_an_agent_says_drain_and_keeps_accepting_for_2_s() {
    let mut server = Server::start_with(&["--plugins", crate::common::plugins_dir().to_str().expect("utf-8"), "--agent", "127.0.0.1:0"]);
    let agent = server.agent.expect("an agent address");
    let ask_agent = || {
        let mut stream = std::net::TcpStream::connect(agent).expect("connect to the agent");
        stream.set_read_timeout(Some(crate::common::STEP)).expect("timeout");
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
        answer
    };
    assert_eq!(ask_agent(), "up ready\n");
    let signalled = Instant::now();
    server.signal("TERM");
    assert!(server.wait_for_log("SIGTERM: draining; the agent answers `drain`, still accepting for 2s", crate::common::STEP), "{}", server.log());
    assert_eq!(ask_agent(), "drain\n");
    assert!(server.wait_for_exit(crate::common::STEP).is_some_and(|status| status.success()), "{}", server.log());
    assert!(signalled.elapsed() >= Duration::from_secs(2), "exited {:?} after SIGTERM, within the drain delay", signalled.elapsed());
}

#[test]
fn drain_delay_and_drain_timeout_are_as_given() {
    let mut server = Server::start_with_fixtures_and(DRAIN_CONFIG, &["--drain-delay", "3s", "--drain-timeout", "1s"]);
    let mut in_flight = long_request(&server);
    let signalled = Instant::now();
    server.signal("TERM");
    // A delay without an agent is kept too: new clients are still served.
    assert!(server.wait_for_log("still accepting for 3s", crate::common::STEP), "{}", server.log());
    assert_eq!(server.connect().request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");
    assert!(server.wait_for_log("shutting down: no new connections", crate::common::STEP), "{}", server.log());
    wait_until_refused(&server);
    let exited = server.wait_for_exit(crate::common::STEP).expect("the server exits after its drain timeout");
    assert!(exited.success(), "{exited:?}");
    assert!(signalled.elapsed() >= Duration::from_secs(4), "exited {:?} after SIGTERM: before the delay and the timeout", signalled.elapsed());
    assert!(server.log().contains("1 connections still open after 1s; stopping anyway"), "{}", server.log());
    assert!(in_flight.try_read_message().is_err(), "a request past the drain timeout was answered");
}

/// SIGINT drains like SIGTERM, without the delay, even with an agent.
#[test]
fn sigint_drains_without_the_delay() {
    let mut server = Server::start_with(&["--plugins", crate::common::plugins_dir().to_str().expect("utf-8"), "--agent", "127.0.0.1:0"]);
    server.assert_serves_others();
    server.signal("INT");
    assert!(server.wait_for_exit(crate::common::STEP).is_some_and(|status| status.success()), "{}", server.log());
    let log = server.log();
    let (stopping, shutting) = (log.find("SIGINT: stopping"), log.find("shutting down: no new connections"));
    assert!(stopping.is_some() && shutting > stopping, "{log}");
    assert!(!log.contains("still accepting"), "{log}");
}

/// True if a byte is waiting to be read on `conn`, without waiting.
fn has_data(conn: &Raw) -> bool {
    conn.stream.set_nonblocking(true).expect("non-blocking");
    let mut byte = [0; 1];
    let ready = matches!(conn.stream.peek(&mut byte), Ok(n) if n > 0);
    conn.stream.set_nonblocking(false).expect("blocking");
    ready
}

/// What sizes the server at start (its connection cap, the instance pool,
/// the read budget, the engine, the plugin source, which plugins may use
/// WASI) is kept by a reload, with a warning, until the next start;
/// everything else in the file applies (docs/running.md).
#[test]
fn settings_read_at_start_wait_for_the_next_start() {
    let config = |limits: &str, rest: &str| {
        format!(
            "[limits]\nplugin-deadline = \"30s\"\n{limits}\n[routes]\n\"test/counter\" = \"counter\"\n\"*\" = \"search\"\n{rest}"
        )
    };
    let server = Server::start_with_fixtures(&config("max-connections = 8\nmax-concurrent-calls = 2\n", ""));
    std::fs::write(
        server.config_path(),
        config(
            "max-connections = 1\nmax-concurrent-calls = 1\nmax-buffered = \"64 MiB\"\n",
            "[runtime]\nspectre-hardening = false\n[source]\npoll-interval = \"5s\"\n[plugins.counter]\nwasi = false\n",
        ),
    )
    .expect("rewrite the configuration");
    assert!(server.wait_for_log("reloaded", crate::common::STEP), "{}", server.log());
    let log = server.log();
    for warning in [
        "limits.max-connections, limits.max-concurrent-calls and limits.max-buffered take effect at the next start",
        "[runtime] settings other than reuse, and [source], take effect at the next start",
        "[plugins.NAME] wasi takes effect at the next start",
    ] {
        assert!(log.contains(warning), "no {warning:?} in:\n{log}");
    }
    assert!(!log.contains("spectre-hardening is off"), "{log}");

    // Still two calls at once: both begin before either ends. (The counter
    // imports WASI, which `wasi = false` would refuse at the next start.)
    let (mut first, mut second) = (server.connect(), server.connect());
    first.send(&ask("counter", "wait 3000"));
    second.send(&ask("counter", "wait 3000"));
    crate::common::wait_until("both calls begin", || server.log().matches("counter: waiting 3000 ms").count() == 2);
    assert!(!has_data(&first) && !has_data(&second), "a call ended before the other began: one call at a time");
    for conn in [&mut first, &mut second] {
        assert_eq!(Answer::parse(&conn.read_message()).content, b"count 1");
    }
    drop((first, second));

    // Still room for more than one connection: a second client does not
    // make the first, idle, give its place up.
    let mut idle = server.connect();
    assert_eq!(idle.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");
    server.assert_serves_others();
    assert_eq!(idle.request(&search("ring")).result(), "In the caves beneath the Misty Mountains. 💍");
    assert!(!server.log().contains("to make room for a new client"), "{}", server.log());
}

/// One of the guide's clients, over and over until `stop`: a connection
/// per request. Each answer's client port, and whether the request began
/// after `taken_over` was set, go into `answered`; a refusal, a reset or a
/// wrong answer into `failed`.
fn guide_client(addr: std::net::SocketAddr, stop: &std::sync::atomic::AtomicBool, taken_over: &std::sync::atomic::AtomicBool, answered: &std::sync::Mutex<Vec<(u16, bool)>>, failed: &std::sync::Mutex<Vec<String>>) {
    use std::sync::atomic::Ordering;
    let request = search("morpheus");
    while !stop.load(Ordering::SeqCst) {
        let after = taken_over.load(Ordering::SeqCst);
        let attempt = (|| -> std::io::Result<(u16, Vec<u8>)> {
            let stream = std::net::TcpStream::connect_timeout(&addr, crate::common::STEP)?;
            stream.set_read_timeout(Some(crate::common::STEP))?;
            let port = stream.local_addr()?.port();
            let mut conn = Raw { stream };
            Ok((port, conn.try_read_message_after(&request)?))
        })();
        match attempt {
            Ok((port, answer)) if Answer::parse(&answer).result() == "Follow the white rabbit. 🐰" => answered.lock().unwrap_or_else(|e| e.into_inner()).push((port, after)),
            Ok((port, answer)) => failed.lock().unwrap_or_else(|e| e.into_inner()).push(format!("port {port}: {}", String::from_utf8_lossy(&answer))),
            Err(e) => failed.lock().unwrap_or_else(|e| e.into_inner()).push(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_server_started_with_take_over_replaces_another_without_refusing_a_connection() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let plugins = crate::common::plugins_dir();
    let args = ["--plugins", plugins.to_str().expect("utf-8 path"), "--take-over"];
    let mut old = Server::start_with(&args);
    let addr = old.addr;
    let (stop, taken_over) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (answered, failed) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let answers = || answered.lock().unwrap_or_else(|e| e.into_inner()).len();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, taken_over, answered, failed) = (Arc::clone(&stop), Arc::clone(&taken_over), Arc::clone(&answered), Arc::clone(&failed));
            std::thread::spawn(move || guide_client(addr, &stop, &taken_over, &answered, &failed))
        })
        .collect();
    let wait_for_answers = |count: usize| {
        let end = Instant::now() + crate::common::STEP;
        while answers() < count && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(answers() >= count, "{} answers, {count} expected; failures: {:?}", answers(), failed.lock().unwrap_or_else(|e| e.into_inner()));
    };
    wait_for_answers(40);
    // The new server, on the old one's port, while the clients go on.
    let new = Server::start_listening(&[&addr.to_string()], 1, &args);
    assert_eq!(new.addr, addr);
    taken_over.store(true, Ordering::SeqCst);
    let before_the_stop = answers();
    wait_for_answers(before_the_stop + 40);
    assert!(old.terminate(), "the old server did not exit cleanly; its log:\n{}", old.log());
    let after_the_stop = answers();
    wait_for_answers(after_the_stop + 40);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("a client thread");
    }
    let failed = failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(failed.is_empty(), "{} requests failed: {failed:?}", failed.len());
    // Every connection made once the new server listened went to it.
    let (old_log, new_log) = (old.log(), new.log());
    let answered = answered.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let accepted = |log: &str, port: u16| log.contains(&format!("accepted connection from 127.0.0.1:{port}\n"));
    for (port, after) in &answered {
        if *after {
            assert!(accepted(&new_log, *port) && !accepted(&old_log, *port), "the connection from port {port}, made after the take-over, went to the old server");
        }
    }
    assert!(answered.iter().any(|(port, after)| !after && accepted(&old_log, *port)), "the old server answered nothing");
    assert!(old_log.contains("shutting down: no new connections"), "{old_log}");
}

#[test]
fn a_server_that_fails_to_start_takes_nothing_from_the_one_it_would_replace() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let plugins = crate::common::plugins_dir();
    let plugins = plugins.to_str().expect("utf-8 path");
    let old = Server::start_with(&["--plugins", plugins, "--take-over"]);
    let addr = old.addr;
    let (stop, taken_over) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (answered, failed) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, taken_over, answered, failed) = (Arc::clone(&stop), Arc::clone(&taken_over), Arc::clone(&answered), Arc::clone(&failed));
            std::thread::spawn(move || guide_client(addr, &stop, &taken_over, &answered, &failed))
        })
        .collect();
    // Each binds the port, then fails on its admin token file: had it
    // listened on the port by then, it would have taken (and reset) some
    // of the clients' connections.
    let missing = tempfile::tempdir().expect("a directory");
    let token_file = missing.path().join("no-such-token");
    let listen = addr.to_string();
    for _ in 0..5 {
        let failed_start = crate::common::wasmux(&["serve", "--plugins", plugins, "--listen", &listen, "--take-over", "--admin", "127.0.0.1:0", "--admin-token-file", token_file.to_str().expect("utf-8 path")]);
        assert!(!failed_start.status.success() && failed_start.stderr.contains("no-such-token"), "{}", failed_start.stderr);
    }
    // And a third server while two share the port is refused, naming why.
    let new = Server::start_listening(&[&listen], 1, &["--plugins", plugins, "--take-over"]);
    let third = crate::common::wasmux(&["serve", "--plugins", plugins, "--listen", &listen, "--take-over"]);
    assert!(!third.status.success() && third.stderr.contains("two servers already share") && third.stderr.contains("once the older has exited"), "{}", third.stderr);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("a client thread");
    }
    drop(new);
    let failed = failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(failed.is_empty(), "{} requests failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert!(answered.lock().unwrap_or_else(|e| e.into_inner()).len() >= 20, "too few answers to tell");
}
