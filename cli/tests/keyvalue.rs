//! Plugins that keep state through `wasi:keyvalue`, against real `wasmux
//! serve` processes: the `kv-counter` fixture (`plugins/test-fixtures/
//! kv-counter`) counts in the store; the state outlives requests,
//! connections, hot swaps and restarts, is kept apart per tenant, and is
//! shared by two servers on one Redis.

use std::path::Path;

use serde_json::json;

use crate::common::redis::RedisServer;
use crate::common::{Answer, Raw, STEP, Server, fixtures_dir, message};

/// Token of tenant alpha (its SHA-256 below), as in examples/multi-tenant.
const ALPHA: &str = "alpha-demo-token";
const BETA: &str = "beta-demo-token";

/// Every text/plain request to the fixture, tenants alpha and beta beside
/// the default one.
const CONFIG: &str = r#"
[routes]
"text/plain" = "kv-counter"

[tenants.default]

[tenants.alpha]
token-sha256 = "8396018d6ce96a2c6baffec831dd1af34ab4df0eb5921ccbb03cb66467b02600"

[tenants.beta]
token-sha256 = "7ef14b3d5a1d5df245f3f8a9ee246d249b7d8550d50d757f944856f4b4dd0477"
"#;

/// A directory holding only the fixture, as `kv-counter.wasm`.
fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::copy(fixtures_dir().join("kv-counter.wasm"), dir.path().join("kv-counter.wasm")).expect("copy the kv-counter fixture (run `cargo xtask plugins`)");
    dir
}

/// A server of the fixture under `config`, its state in `data_dir`, with
/// `extra` arguments.
fn serve(config: &str, plugins: &Path, data_dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--data-dir", data_dir.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    Server::start_configured_with(config, plugins, &args)
}

/// The fixture's command as a text/plain request, as `tenant` (its token)
/// or as the default tenant.
fn command(text: &str, token: Option<&str>) -> Vec<u8> {
    let mut header = json!({"byteorder": "big", "content-type": "text/plain", "content-encoding": "utf-8"});
    if let Some(token) = token {
        header["authorization"] = json!(format!("Bearer {token}"));
    }
    message(header, text.as_bytes())
}

/// The text of a successful answer.
fn text(answer: &Answer) -> String {
    assert!(answer.header.get("content-type").is_some_and(|t| t == "text/plain"), "not the plugin's answer: {:?} {:?}", answer.header, String::from_utf8_lossy(&answer.content));
    String::from_utf8(answer.content.clone()).expect("utf-8 answer")
}

fn ask(conn: &mut Raw, text_command: &str) -> String {
    text(&conn.request(&command(text_command, None)))
}

#[test]
fn a_counter_survives_requests_connections_and_a_hot_swap() {
    let plugins = plugin_dir();
    let data = tempfile::tempdir().expect("temporary directory");
    let server = serve(CONFIG, plugins.path(), data.path(), &["--admin", "127.0.0.1:0"]);
    let mut conn = server.connect();
    assert_eq!(ask(&mut conn, "get visits"), "visits=0");
    for n in 1..=5 {
        assert_eq!(ask(&mut conn, "incr visits"), format!("visits={n}"), "each request a fresh instance, the count in the store");
    }
    drop(conn);
    let mut conn = server.connect();
    assert_eq!(ask(&mut conn, "incr visits"), "visits=6", "a new connection sees the same count");
    assert_eq!(ask(&mut conn, "get visits"), "visits=6");

    // A new version of the plugin (the same code with a custom section
    // appended: other bytes, another digest) keeps the state.
    let before = server.plugin_version("kv-counter");
    let mut bytes = std::fs::read(plugins.path().join("kv-counter.wasm")).expect("read the fixture");
    let name = b"wasmux-test-version";
    let payload = [&[name.len() as u8][..], name, b"2"].concat();
    bytes.push(0);
    bytes.push(u8::try_from(payload.len()).expect("a short section"));
    bytes.extend_from_slice(&payload);
    let tmp = plugins.path().join("kv-counter.wasm.tmp");
    std::fs::write(&tmp, &bytes).expect("write the new version");
    std::fs::rename(&tmp, plugins.path().join("kv-counter.wasm")).expect("swap it in");
    let end = std::time::Instant::now() + STEP;
    while server.plugin_version("kv-counter") == before {
        assert!(std::time::Instant::now() < end, "the new version was not loaded: {}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(ask(&mut conn, "incr visits"), "visits=7", "the new version counts on from the old one's state");
    assert_eq!(ask(&mut conn, "delete visits"), "deleted visits");
    assert_eq!(ask(&mut conn, "get visits"), "visits=0");
}

#[test]
fn the_embedded_store_keeps_the_count_across_a_restart() {
    let plugins = plugin_dir();
    let data = tempfile::tempdir().expect("temporary directory");
    {
        let mut server = serve(CONFIG, plugins.path(), data.path(), &[]);
        let mut conn = server.connect();
        for n in 1..=3 {
            assert_eq!(ask(&mut conn, "incr restarts"), format!("restarts={n}"));
        }
        drop(conn);
        assert!(server.terminate(), "the server stops on SIGTERM");
    }
    let server = serve(CONFIG, plugins.path(), data.path(), &[]);
    let mut conn = server.connect();
    assert_eq!(ask(&mut conn, "get restarts"), "restarts=3", "the restarted server reads the count back");
    assert_eq!(ask(&mut conn, "incr restarts"), "restarts=4");
}

#[test]
fn two_tenants_never_see_each_others_keys() {
    let plugins = plugin_dir();
    let data = tempfile::tempdir().expect("temporary directory");
    let server = serve(CONFIG, plugins.path(), data.path(), &[]);
    let mut conn = server.connect();
    let mut as_tenant = |cmd: &str, token: Option<&str>| text(&conn.request(&command(cmd, token)));
    assert_eq!(as_tenant("incr shared-name", Some(ALPHA)), "shared-name=1");
    assert_eq!(as_tenant("incr shared-name", Some(ALPHA)), "shared-name=2");
    assert_eq!(as_tenant("get shared-name", Some(BETA)), "shared-name=0", "beta does not see alpha's key");
    assert_eq!(as_tenant("incr shared-name", Some(BETA)), "shared-name=1");
    assert_eq!(as_tenant("get shared-name", None), "shared-name=0", "nor does the default tenant");
    assert_eq!(as_tenant("get shared-name", Some(ALPHA)), "shared-name=2", "alpha's count is untouched by beta's");
}

#[test]
fn a_plugin_opens_only_the_buckets_it_is_granted() {
    let plugins = plugin_dir();
    let data = tempfile::tempdir().expect("temporary directory");
    // `wasi = false` too: the store is not the WASI subset, and a plugin
    // refused WASI may still keep state.
    let config = format!("{CONFIG}\n[plugins.kv-counter]\nkv-buckets = [\"shared\"]\nwasi = false\n");
    let server = serve(&config, plugins.path(), data.path(), &[]);
    let mut conn = server.connect();
    assert_eq!(ask(&mut conn, "open default"), "opened default");
    assert_eq!(ask(&mut conn, "open shared"), "opened shared", "granted in [plugins.kv-counter] kv-buckets");
    let refused = conn.request(&command("open secrets", None));
    let error = refused.json();
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("no such store")), "a bucket not granted is no-such-store: {error}");
    assert_eq!(ask(&mut conn, "incr after"), "after=1", "the server keeps serving");
}

#[test]
fn limits_are_refused_with_a_clear_error_and_the_server_stays_up() {
    let plugins = plugin_dir();
    let data = tempfile::tempdir().expect("temporary directory");
    let config = format!("{CONFIG}\n[kv]\nmax-value-size = 100\nmax-keys = 5\n\n[tenants.beta.kv]\noperations-per-request = 3\n");
    let server = serve(&config, plugins.path(), data.path(), &[]);
    let mut conn = server.connect();
    assert_eq!(ask(&mut conn, "put small 100"), "put small");
    let big = conn.request(&command("put big 101", None)).json();
    let message = big["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("key-value store") && message.contains("100"), "a value over max-value-size is refused, saying so: {big}");
    let many = conn.request(&command("fill 10", None)).json();
    let message = many["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("key-value store") && message.contains("5"), "a sixth key is refused, saying so: {many}");
    assert_eq!(ask(&mut conn, "get small"), "small=".to_owned() + &"x".repeat(100), "what was stored within the limits stays");
    // beta's own limit: `open` and three `set`s are four operations.
    let busy = conn.request(&command("fill 3", Some(BETA))).json();
    let message = busy["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("operations-per-request"), "a fourth operation in one request is refused, saying so: {busy}");
    assert_eq!(text(&conn.request(&command("fill 2", Some(BETA)))), "filled 2", "the allowance is per request");
    let mut fresh = server.connect();
    assert_eq!(ask(&mut fresh, "delete small"), "deleted small", "the server stays up");
}

#[test]
fn two_servers_on_one_redis_share_a_counter() {
    let redis = RedisServer::start();
    let url = redis.url();
    let plugins = plugin_dir();
    let (data_a, data_b) = (tempfile::tempdir().expect("temporary directory"), tempfile::tempdir().expect("temporary directory"));
    let a = serve(CONFIG, plugins.path(), data_a.path(), &["--kv", &url]);
    let b = serve(CONFIG, plugins.path(), data_b.path(), &["--kv", &url]);
    let (mut to_a, mut to_b) = (a.connect(), b.connect());
    for round in 0..5 {
        assert_eq!(ask(&mut to_a, "incr fleet"), format!("fleet={}", 2 * round + 1));
        assert_eq!(ask(&mut to_b, "incr fleet"), format!("fleet={}", 2 * round + 2));
    }
    assert_eq!(ask(&mut to_a, "get fleet"), "fleet=10", "both servers counted in the one Redis");
    assert!(std::fs::read_dir(data_a.path()).expect("read the data directory").next().is_none(), "with --kv the data directory is not used");
}

#[test]
fn a_server_whose_plugins_keep_no_state_never_opens_the_data_directory() {
    let data = tempfile::tempdir().expect("temporary directory");
    let state = data.path().join("state");
    let plugins = crate::common::plugins_dir();
    let server = Server::start_with(&["--plugins", plugins.to_str().expect("utf-8 path"), "--data-dir", state.to_str().expect("utf-8 path")]);
    let mut conn = server.connect();
    assert_eq!(conn.request(&crate::common::search("morpheus")).result(), "Follow the white rabbit. 🐰");
    assert!(!state.exists(), "no plugin imports wasi:keyvalue, so {} is neither created nor locked", state.display());
}
