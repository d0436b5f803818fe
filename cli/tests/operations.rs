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
        assert!(server.wait_for_log(&format!("test/spin request ({} bytes)", format!("count {n}").len()), crate::common::STEP), "{}", server.log());
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
