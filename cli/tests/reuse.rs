//! Instance reuse against a real `wasmux serve`, told by the `counter`
//! fixture: it counts its instance's requests in a global and answers
//! `count N`. A fresh instance always answers `count 1`; a reused one
//! counts up. Requests go one after another on one connection: an instance
//! is back in the pool (or retired) before its answer is sent, so every
//! count below is exact.


use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{Answer, Raw, STEP, Server, message, metric};
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

const ROUTES: &str = "[routes]\n\"test/counter\" = \"counter\"\n\"test/counter@b\" = \"counter@b\"\n\"test/counter@c\" = \"counter@c\"\n\
                      \"test/counter@d\" = \"counter@d\"\n\"test/trap\" = \"trap\"\n\"test/hostile-abi\" = \"hostile-abi\"\n";

/// A server with the fixtures (and `counter@b`, `counter@c`, `counter@d`,
/// copies of the counter under other names) and an admin endpoint,
/// configured with `runtime` (a `[runtime]` section and what goes with it)
/// and [`ROUTES`]. Tests not about idle instances set `idle = "1h"`: on
/// a busy machine, a second between two steps of a test is no surprise,
/// and an instance retired as idle meanwhile is not the one it counts on.
fn serve(runtime: &str) -> (Server, tempfile::TempDir) {
    let plugins = crate::common::plugins_and_fixtures();
    for copy in ["counter@b", "counter@c", "counter@d"] {
        std::fs::copy(plugins.path().join("counter.wasm"), plugins.path().join(format!("{copy}.wasm"))).expect("copy the counter");
    }
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
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 3, idle = \"1h\" }\n");
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
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n[runtime.plugins.counter]\nreuse = { requests = 2, idle = \"1h\" }\n");
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
        "[runtime]\nreuse = {{ requests = 100, idle = \"1h\" }}\n[tenants.default]\n[tenants.alpha]\ntoken-sha256 = \"{}\"\n",
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
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = \"1..3\", idle = \"1h\" }\n");
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
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n");
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
    let (server, plugins) = serve("[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    let old = std::fs::read(plugins.path().join("counter.wasm")).expect("read the counter");
    let new = another_version(&old);
    replace_atomically(plugins.path(), "counter.wasm", &new);
    let swapped = format!("plugin counter: {} -> {}", short_version(&old), short_version(&new));
    assert!(server.wait_for_log(&swapped, STEP), "no {swapped:?} in the log:\n{}", server.log());
    // The old version's instance is retired after the swap is logged, not
    // before: under load the metric can trail the line.
    wait_for_metric(&server, r#"wasmux_instances_retired_total{plugin="counter",cause="swap"}"#, 1.0);
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
    // Long enough that the instance is not retired between two requests of
    // one connection on a busy machine.
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100, idle = \"500ms\" }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    wait_for_metric(&server, r#"wasmux_instances_retired_total{plugin="counter",cause="idle"}"#, 1.0);
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
}

#[test]
fn a_reload_retires_instances_made_under_the_old_settings() {
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    // A plugin may keep what it read through `config` in a global.
    let changed = format!("{ROUTES}\n[runtime]\nreuse = {{ requests = 100, idle = \"1h\" }}\n[plugins.counter]\ngreeting = \"hi\"\n");
    std::fs::write(server.config_path(), changed).expect("rewrite the configuration");
    wait_for_metric(&server, r#"wasmux_instances_retired_total{plugin="counter",cause="reload"}"#, 1.0);
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
}

#[test]
fn with_every_slot_held_by_an_idle_instance_the_least_recently_used_makes_room() {
    // Three slots, and instances that would stay idle for an hour: without
    // eviction a fourth plugin's request would wait for ever.
    let config = "[limits]\nmax-concurrent-calls = 3\n[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n";
    let (server, _plugins) = serve(config);
    let mut conn = server.connect();
    // Three idle instances, last used in the order counter@b, counter@c,
    // counter (used again last, though it was made first).
    assert_eq!(counts(&mut conn, "counter", 1), [1]);
    assert_eq!(counts(&mut conn, "counter@b", 1), [1]);
    assert_eq!(counts(&mut conn, "counter@c", 1), [1]);
    assert_eq!(counts(&mut conn, "counter", 1), [2]);
    // A fourth plugin takes the slot of the one unused the longest.
    assert_eq!(counts(&mut conn, "counter@d", 1), [1]);
    let evicted = |plugin: &str| retired(&server, plugin, "evicted");
    assert_eq!([evicted("counter"), evicted("counter@b"), evicted("counter@c")], [0.0, 1.0, 0.0]);
    // The other two still serve on their instances; counter@b starts afresh
    // (taking the slot of counter@d, now the one unused the longest).
    assert_eq!(counts(&mut conn, "counter@c", 1), [2]);
    assert_eq!(counts(&mut conn, "counter", 1), [3]);
    assert_eq!(counts(&mut conn, "counter@b", 1), [1]);
    assert_eq!([evicted("counter"), evicted("counter@c"), evicted("counter@d")], [0.0, 0.0, 1.0]);
}

/// The error answer's message (panics if the answer is not an error).
fn error_message(answer: &Answer) -> String {
    answer.json()["error"]["message"].as_str().unwrap_or_else(|| panic!("not an error answer: {:?}", answer.json())).to_owned()
}

/// Every instance of `plugin` retired so far, whatever the cause.
fn retired_at_all(server: &Server, plugin: &str) -> f64 {
    crate::common::metric_total(&server.admin_get("/metrics").1, "wasmux_instances_retired_total", &format!("plugin=\"{plugin}\""))
}

#[test]
fn an_instance_serves_one_request_at_a_time() {
    let (server, _plugins) = serve("[limits]\nplugin-deadline = \"10s\"\n[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n");
    let mut first = server.connect();
    assert_eq!(counts(&mut first, "counter", 1), [1]);
    // The instance is busy with a request of its own...
    first.send(&ask("counter", "wait 2000"));
    assert!(server.wait_for_log("counter: waiting 2000 ms at count 2", STEP), "{}", server.log());
    // ... so a request meanwhile gets another one, made for it.
    let mut second = server.connect();
    assert_eq!(counts(&mut second, "counter", 1), [1]);
    assert_eq!(String::from_utf8_lossy(&Answer::parse(&first.read_message()).content), "count 2");
    assert_eq!(created(&server, "counter"), 2.0);
    // Both are idle now; one after another, requests take one of them.
    let next = counts(&mut first, "counter", 1)[0];
    assert!(next == 2 || next == 3, "{next}");
}

#[test]
fn the_deadline_and_the_log_lines_are_the_requests_not_the_instances() {
    // Each wait (on the clock, whatever the machine's speed) takes most of
    // a deadline: two on one instance would be past it if the deadline ran
    // from the instance's first request.
    let (server, _plugins) = serve("[limits]\nplugin-deadline = \"2s\"\n[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n");
    let mut conn = server.connect();
    for expected in ["count 1", "count 2", "count 3"] {
        assert_eq!(String::from_utf8_lossy(&conn.request(&ask("counter", "wait 1200")).content), expected);
    }
    // 64 log lines a request: each request on the instance gets its own 64.
    for expected in ["count 4", "count 5"] {
        assert_eq!(String::from_utf8_lossy(&conn.request(&ask("counter", "log 70")).content), expected);
    }
    assert_eq!(String::from_utf8_lossy(&conn.request(&ask("counter", "log 1")).content), "count 6");
    // The last line is logged after every earlier one.
    assert!(server.wait_for_log("counter: request 6, line 1", STEP), "{}", server.log());
    let log = server.log();
    for request in [4, 5] {
        let last = format!("counter: request {request}, line 64 (log line limit reached; further lines of this request are dropped)");
        assert!(log.contains(&last), "no {last:?} in:\n{log}");
        assert!(!log.contains(&format!("counter: request {request}, line 65")), "{log}");
    }
    assert_eq!(created(&server, "counter"), 1.0);
}

#[test]
fn what_the_host_copies_out_is_capped_per_request() {
    // The copy cap is max-response plus 1 MiB a request: three answers of
    // 600 KB on one instance (1.8 MB) pass only if it starts afresh each time.
    let (server, _plugins) = serve("[limits]\nmax-response = \"600 KiB\"\n[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n");
    let mut conn = server.connect();
    for count in 1..=3 {
        let answer = conn.request(&ask("counter", "size 600000"));
        assert_eq!((answer.content.len(), answer.header["count"].as_u64()), (600_000, Some(count)), "{:?}", answer.header);
    }
    assert_eq!(created(&server, "counter"), 1.0);
}

#[test]
fn memory_that_earlier_requests_grew_counts_toward_the_cap() {
    let (server, _plugins) = serve("[limits]\nplugin-memory = \"16 MiB\"\n[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n");
    let mut conn = server.connect();
    let mut grow = || conn.request(&ask("counter", "grow 6"));
    assert_eq!(String::from_utf8_lossy(&grow().content), "count 1, holding 6 MiB");
    assert_eq!(String::from_utf8_lossy(&grow().content), "count 2, holding 12 MiB");
    // 6 MiB more would be within the cap for a fresh instance; this one
    // already holds 12.
    let refused = grow();
    assert_eq!(refused.error_code(), "plugin-memory");
    assert_eq!(retired(&server, "counter", "memory"), 1.0);
    assert_eq!(String::from_utf8_lossy(&grow().content), "count 1, holding 6 MiB");
}

#[test]
fn a_handler_error_is_an_answer_and_the_instance_serves_on() {
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 2), [1, 2]);
    let refused = conn.request(&ask("counter", "error"));
    assert_eq!((refused.error_code(), error_message(&refused)), ("bad-request".to_owned(), "bad request for plugin counter: asked for an error at count 3".to_owned()));
    assert_eq!(counts(&mut conn, "counter", 1), [4]);
    assert_eq!((created(&server, "counter"), retired_at_all(&server, "counter")), (1.0, 0.0));
}

#[test]
fn a_timeout_a_bad_response_and_data_the_host_cannot_read_each_retire_the_instance() {
    let (server, _plugins) = serve("[limits]\nplugin-deadline = \"500ms\"\n[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n");
    let mut conn = server.connect();
    // (A trap and the memory limit have tests of their own, above.)
    for (command, code, cause) in [("wait 5000", "plugin-timeout", "timeout"), ("bad-response", "plugin-bad-response", "bad-response")] {
        assert_eq!(counts(&mut conn, "counter", 2), [1, 2], "{command}");
        assert_eq!(conn.request(&ask("counter", command)).error_code(), code, "{command}");
        assert_eq!(retired(&server, "counter", cause), 1.0, "{command}");
        assert_eq!(counts(&mut conn, "counter", 1), [1], "after {command}");
        conn.request(&ask("counter", "trap"));
    }
    // A pointer out of bounds in what the plugin hands back.
    assert_eq!(conn.request(&ask("hostile-abi", "hello")).content, b"hostile-abi: fine");
    assert_eq!(conn.request(&ask("hostile-abi", "out-of-bounds")).error_code(), "plugin-bad-response");
    assert_eq!((created(&server, "hostile-abi"), retired(&server, "hostile-abi", "host-error")), (1.0, 1.0));
    assert_eq!(conn.request(&ask("hostile-abi", "hello")).content, b"hostile-abi: fine");
    assert_eq!(created(&server, "hostile-abi"), 2.0);
}

#[test]
fn an_idle_instance_is_retired_after_a_second_by_default() {
    // `reuse` without `idle`: the default, "1 s" in the guide.
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100 }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 1), [1]);
    // Taken before the last request: the instance goes idle after it, so
    // the time measured is never shorter than its idle time.
    let idle_since = Instant::now();
    assert_eq!(counts(&mut conn, "counter", 1), [2]);
    wait_for_metric(&server, r#"wasmux_instances_retired_total{plugin="counter",cause="idle"}"#, 1.0);
    let retired_after = idle_since.elapsed();
    println!("an idle instance was retired {retired_after:?} after its last request");
    // Not before a second; and within STEP, which a default of a minute (or
    // of ten seconds) would not be.
    assert!(retired_after >= Duration::from_secs(1), "retired after {retired_after:?}");
    assert_eq!(counts(&mut conn, "counter", 1), [1]);
}

#[test]
fn a_reload_applies_a_changed_reuse() {
    let (server, _plugins) = serve("[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n");
    let mut conn = server.connect();
    assert_eq!(counts(&mut conn, "counter", 3), [1, 2, 3]);
    std::fs::write(server.config_path(), format!("{ROUTES}\n[runtime]\nreuse = {{ requests = 2, idle = \"1h\" }}\n")).expect("rewrite the configuration");
    wait_for_metric(&server, r#"wasmux_instances_retired_total{plugin="counter",cause="reload"}"#, 1.0);
    assert_eq!(counts(&mut conn, "counter", 5), [1, 2, 1, 2, 1]);
    // And back to a fresh instance per request (the last one, idle, is
    // retired by the reload).
    std::fs::write(server.config_path(), format!("{ROUTES}\n# no reuse\n")).expect("rewrite the configuration");
    wait_for_metric(&server, r#"wasmux_instances_retired_total{plugin="counter",cause="reload"}"#, 2.0);
    assert_eq!(counts(&mut conn, "counter", 3), [1, 1, 1]);
}

/// Every retirement, recorded: the library's view of what `/metrics` counts.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<(String, wasmux::runtime::Retirement)>>);

impl wasmux::runtime::InstanceEvents for Recorded {
    fn created(&self, _plugin: &std::sync::Arc<str>) {}
    fn retired(&self, plugin: &std::sync::Arc<str>, cause: wasmux::runtime::Retirement, _served: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((plugin.to_string(), cause));
    }
}

/// A request abandoned in the middle of its call, and the server stopping,
/// retire instances too. Neither can be watched through a server's
/// `/metrics` (the request's future is dropped only when the server gives
/// up on it at the end of a drain, and the endpoint stops with it), so
/// through the library, with the runtime the server uses.
#[test]
fn an_abandoned_call_and_shutdown_retire_instances() {
    use std::num::NonZeroU32;
    use wasmux::runtime::{CallContext, CallLimits, Retirement, Reuse, ReuseCount, Runtime, RuntimeSettings, Wasi};

    let recorded = std::sync::Arc::new(Recorded::default());
    let runtime = Runtime::with_events(RuntimeSettings { max_concurrent_calls: 4, ..RuntimeSettings::default() }, recorded.clone()).expect("runtime");
    let bytes = std::fs::read(crate::common::fixtures_dir().join("counter.wasm")).expect("the counter");
    let counter = wasmux::plugins::Plugin::load(&runtime, "counter", wasmux::digest::Digest::of(&bytes), &bytes, Wasi::Allowed).expect("load the counter");
    let context = CallContext {
        limits: CallLimits { deadline: Duration::from_secs(10), ..CallLimits::default() },
        reuse: Reuse { requests: ReuseCount::Fixed(NonZeroU32::new(100).expect("100")), idle: Duration::from_secs(3600) },
        ..CallContext::default()
    };
    let ask = |content: &'static str| wasmux::message::Message::new("test/counter", "utf-8", content.as_bytes().to_vec());
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    let causes = || recorded.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(_, cause)| *cause).collect::<Vec<_>>();

    tokio.block_on(async {
        let (answer, _) = counter.call(&ask(""), &context).await.expect("a call");
        assert_eq!(&answer.content[..], b"count 1");
        // Abandoned mid-call: the wait, on the same instance, is given up
        // after a moment, so the next request gets a new instance.
        let abandoned = tokio::time::timeout(Duration::from_millis(300), counter.call(&ask("wait 5000"), &context)).await;
        assert!(abandoned.is_err(), "the wait was not abandoned");
    });
    assert_eq!(causes(), [Retirement::Dropped]);

    tokio.block_on(async {
        let (answer, _) = counter.call(&ask(""), &context).await.expect("a call");
        assert_eq!(&answer.content[..], b"count 1");
    });
    runtime.shutdown();
    assert_eq!(causes(), [Retirement::Dropped, Retirement::Shutdown]);
}
