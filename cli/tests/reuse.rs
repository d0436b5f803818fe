//! Instance reuse against a real `wasmux serve`, told by the `counter`
//! fixture: it counts its instance's requests in a global and answers
//! `count N`. A fresh instance always answers `count 1`; a reused one
//! counts up. Requests go one after another on one connection: an instance
//! is back in the pool (or retired) before its answer is sent, so every
//! count below is exact.


use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{Raw, STEP, Server, message, metric};
use serde_json::json;

/// A request for fixture `plugin` (routed by content-type `test/PLUGIN`).
fn ask(plugin: &str, content: &str) -> Vec<u8> {
    message(json!({"byteorder": "little", "content-type": format!("test/{plugin}"), "content-encoding": "utf-8"}), content.as_bytes())
}

/// The same, for a tenant's token.
fn ask_as(token: &str, plugin: &str) -> Vec<u8> {
    message(
        json!({"byteorder": "little", "content-type": format!("test/{plugin}"), "content-encoding": "utf-8", "authorization": format!("Bearer {token}")}),
        b"",
    )
}

/// The counter's answer to one request of `plugin`.
fn count(conn: &mut Raw, plugin: &str) -> String {
    String::from_utf8_lossy(&conn.request(&ask(plugin, "")).content).into_owned()
}

/// The counter's answers to `n` requests of `plugin`, as numbers.
fn counts(conn: &mut Raw, plugin: &str, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let answer = count(conn, plugin);
            answer.strip_prefix("count ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not a count: {answer:?}"))
        })
        .collect()
}

const ROUTES: &str = "[routes]\n\"test/counter\" = \"counter\"\n\"test/counter@b\" = \"counter@b\"\n\"test/trap\" = \"trap\"\n";

/// A server with the fixtures (and `counter@b`, a second copy of the
/// counter under another name) and an admin endpoint, configured with
/// `runtime` (a `[runtime]` section and what goes with it) and [`ROUTES`].
fn serve(runtime: &str) -> (Server, tempfile::TempDir) {
    let plugins = crate::common::plugins_and_fixtures();
    std::fs::copy(plugins.path().join("counter.wasm"), plugins.path().join("counter@b.wasm")).expect("copy the counter");
    let server = Server::start_configured_with(&format!("{ROUTES}\n{runtime}"), plugins.path(), &["--admin", "127.0.0.1:0"]);
    (server, plugins)
}

/// The value of a series of `/metrics` (0 when absent).
fn metric_of(server: &Server, series: &str) -> f64 {
    metric(&server.admin_get("/metrics").1, series).unwrap_or(0.0)
}

fn retired(server: &Server, plugin: &str, cause: &str) -> f64 {
    metric_of(server, &format!(r#"wasmux_instances_retired_total{{plugin="{plugin}",cause="{cause}"}}"#))
}

fn created(server: &Server, plugin: &str) -> f64 {
    metric_of(server, &format!(r#"wasmux_instances_created_total{{plugin="{plugin}"}}"#))
}

/// Waits until `series` reaches `value` (an event the server reports), for
/// at most [`STEP`].
fn wait_for_metric(server: &Server, series: &str, value: f64) {
    let end = Instant::now() + STEP;
    while metric_of(server, series) < value {
        assert!(Instant::now() < end, "{series} did not reach {value}; metrics:\n{}", server.admin_get("/metrics").1);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn without_reuse_every_request_gets_a_fresh_instance() {
    let (server, _plugins) = serve("");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 5), [1, 1, 1, 1, 1]);
    assert_eq!(created(&server, "counter"), 5.0);
    assert_eq!(retired(&server, "counter", "count"), 5.0);
    assert_eq!(metric_of(&server, r#"wasmux_instance_requests_bucket{le="1.0",plugin="counter"}"#), 5.0);
}

#[test]
fn an_instance_serves_its_count_of_requests_then_a_fresh_one_takes_over() {
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 3 }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 7), [1, 2, 3, 1, 2, 3, 1]);
    assert_eq!(created(&server, "counter"), 3.0);
    assert_eq!(retired(&server, "counter", "count"), 2.0);
    assert_eq!(metric_of(&server, r#"wasmux_instance_requests_sum{plugin="counter"}"#), 6.0);
    assert_eq!(metric_of(&server, r#"wasmux_instance_requests_count{plugin="counter"}"#), 2.0);
}

#[test]
fn a_plugins_own_reuse_replaces_the_servers_and_names_never_share_instances() {
    // counter@b is the same component under another name: its own instances.
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100 }\n[runtime.plugins.counter]\nreuse = { requests = 2 }\n");
    let mut conn = server.connect();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push((count(&mut conn, "counter"), count(&mut conn, "counter@b")));
    }
    let seen: Vec<(&str, &str)> = seen.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(seen, [("count 1", "count 1"), ("count 2", "count 2"), ("count 1", "count 3")]);
}

#[test]
fn instances_are_never_shared_between_tenants() {
    let config = format!(
        "[runtime]\nreuse = {{ requests = 100 }}\n[tenants.default]\n[tenants.alpha]\ntoken-sha256 = \"{}\"\n",
        wasmux::tenancy::TokenHash::of("alpha")
    );
    let (server, _plugins) = serve(&config);
    let mut conn = server.connect();
    let mut answer = |request: Vec<u8>| String::from_utf8_lossy(&conn.request(&request).content).into_owned();
    assert_eq!(answer(ask("counter", "")), "count 1");
    assert_eq!(answer(ask("counter", "")), "count 2");
    assert_eq!(answer(ask_as("alpha", "counter")), "count 1");
    assert_eq!(answer(ask("counter", "")), "count 3");
    assert_eq!(answer(ask_as("alpha", "counter")), "count 2");
    assert_eq!(created(&server, "counter"), 2.0);
}

#[test]
fn a_random_count_is_drawn_for_each_instance() {
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = \"1..3\" }\n");
    let mut conn = server.connect();
    let seen = counts(&mut conn, "counter", 60);
    // Each answer goes on counting or starts again, never past 3.
    for (i, pair) in seen.windows(2).enumerate() {
        assert!(pair[1] == pair[0] + 1 || pair[1] == 1, "answer {} after {}: {seen:?}", pair[1], pair[0]);
        assert!(pair[1] <= 3, "answer {i} is past the range: {seen:?}");
    }
    // Twenty-odd instances, each of 1, 2 or 3 requests: that every one drew
    // the same count has a chance below one in ten billion.
    let starts_again_before = |n: u32| seen.windows(2).any(|p| p[0] == n && p[1] == 1);
    assert!(seen.contains(&2), "no instance served twice: {seen:?}");
    assert!(starts_again_before(1) || starts_again_before(2), "every instance served 3: {seen:?}");
}

#[test]
fn a_trap_retires_the_instance() {
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100 }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    let trapped = conn.request(&ask("counter", "trap"));
    assert_eq!(trapped.error_code(), "plugin-failed");
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    assert_eq!(retired(&server, "counter", "trap"), 1.0);
    // The trap's request counts among the instance's requests.
    assert_eq!(metric_of(&server, r#"wasmux_instance_requests_sum{plugin="counter"}"#), 3.0);
    // A plugin that traps on every request: each instance is new.
    for _ in 0..3 {
        assert_eq!(conn.request(&ask("trap", "unreachable")).error_code(), "plugin-failed");
    }
    assert_eq!((created(&server, "trap"), retired(&server, "trap", "trap")), (3.0, 3.0));
}

/// `bytes` (a component) with a custom section added: another version of
/// the same plugin, behaving the same.
fn another_version(bytes: &[u8]) -> Vec<u8> {
    let name = b"wasmux-test";
    let payload = b"another version";
    let size = 1 + name.len() + payload.len();
    assert!(size < 128, "one-byte LEB128 sizes only");
    let mut out = bytes.to_vec();
    out.extend_from_slice(&[0, size as u8, name.len() as u8]);
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

/// The version wasmux shows for a component: 12 hex digits of its SHA-256.
fn short_version(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(bytes)[..6])
}

fn replace_atomically(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write the new version");
    std::fs::rename(&tmp, dir.join(name)).expect("rename it over the old one");
}

#[test]
fn a_hot_swap_retires_the_old_versions_instances() {
    let (server, plugins) = serve("[runtime]\nreuse = { requests = 100 }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    let old = std::fs::read(plugins.path().join("counter.wasm")).expect("read the counter");
    let new = another_version(&old);
    replace_atomically(plugins.path(), "counter.wasm", &new);
    let swapped = format!("plugin counter: {} -> {}", short_version(&old), short_version(&new));
    assert!(server.wait_for_log(&swapped, STEP), "no {swapped:?} in the log:\n{}", server.log());
    assert_eq!(retired(&server, "counter", "swap"), 1.0);
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    // Back to the first bytes: the same version as before the swap, but a
    // new load, whose instances start afresh.
    replace_atomically(plugins.path(), "counter.wasm", &old);
    wait_for_metric(&server, r#"wasmux_instances_retired_total{plugin="counter",cause="swap"}"#, 2.0);
    assert_eq!(counts(&mut conn, "counter", 1), [1]);
}

#[test]
fn an_idle_instance_is_retired() {
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100, idle = \"50ms\" }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    wait_for_metric(&server, r#"wasmux_instances_retired_total{plugin="counter",cause="idle"}"#, 1.0);
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
}

#[test]
fn a_reload_retires_instances_made_under_the_old_settings() {
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100 }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    // A plugin may keep what it read through `config` in a global.
    let changed = format!("{ROUTES}\n[runtime]\nreuse = {{ requests = 100 }}\n[plugins.counter]\ngreeting = \"hi\"\n");
    std::fs::write(server.config_path(), changed).expect("rewrite the configuration");
    wait_for_metric(&server, r#"wasmux_instances_retired_total{plugin="counter",cause="reload"}"#, 1.0);
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
}

#[test]
fn with_every_slot_held_by_an_idle_instance_the_least_recently_used_makes_room() {
    // One slot, and instances that would stay idle for an hour: without
    // eviction the second plugin's request would wait for ever.
    let config = "[limits]\nmax-concurrent-calls = 1\n[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n";
    let (server, _plugins) = serve(config);
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    assert_eq!(counts(&mut conn, "counter@b", 2), [1, 2]);
    assert_eq!(counts(&mut conn, "counter", 1), [1]);
    assert_eq!((retired(&server, "counter", "evicted"), retired(&server, "counter@b", "evicted")), (1.0, 1.0));
}
