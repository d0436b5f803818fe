//! Tenants, their routes, settings and limits, A/B splits and the admin
//! endpoint, against a real `wasmux serve`.


use std::collections::HashMap;
use std::time::Duration;

use crate::common::{Answer, Server, message, metric};
use serde_json::{Value, json};

const MORPHEUS: &str = "Follow the white rabbit. 🐰";

/// The example configuration of `examples/multi-tenant/`.
fn example_config() -> String {
    crate::common::root().join("examples/multi-tenant/wasmux.toml").to_string_lossy().into_owned()
}

/// The guide's plugins with `config`, and the admin endpoint.
fn serve_config(config: &str) -> Server {
    Server::start_configured_with(config, &crate::common::plugins_dir(), &["--admin", "127.0.0.1:0"])
}

/// A search for `value` with extra header fields.
fn search_with(value: &str, fields: Value) -> Vec<u8> {
    let mut header = json!({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8"});
    if let (Some(header), Value::Object(fields)) = (header.as_object_mut(), fields) {
        header.extend(fields);
    }
    let content = serde_json::to_vec(&json!({"action": "search", "value": value})).expect("json");
    message(header, &content)
}

fn bearer(token: &str) -> Value {
    json!({"authorization": format!("Bearer {token}")})
}

#[test]
fn the_example_configuration_serves_two_tenants_and_an_experiment() {
    let plugins = crate::common::plugins_dir();
    let config = example_config();
    let server = Server::start_with(&["--plugins", plugins.to_str().expect("utf-8"), "--config", &config, "--admin", "127.0.0.1:0"]);
    let mut conn = server.connect();

    // No token: the default tenant, the guide's exact search.
    assert_eq!(conn.request(&crate::common::search("morpheus")).result(), MORPHEUS);
    assert_eq!(conn.request(&crate::common::search("MORPH")).result(), "No match for \"MORPH\".");

    // beta: search@fuzzy, case-insensitive but not prefix.
    let beta = |value: &str| search_with(value, bearer("beta-demo-token"));
    assert_eq!(conn.request(&beta("MORPHEUS")).result(), MORPHEUS);
    assert_eq!(conn.request(&beta("morph")).result(), "No match for \"morph\".");

    // alpha: a sticky 50/50 split; on the fuzzy arm, prefixes match.
    let mut arms: HashMap<bool, usize> = HashMap::new();
    for user in 0..40 {
        let fields = json!({"authorization": "Bearer alpha-demo-token", "user": format!("user-{user}")});
        let fuzzy = conn.request(&search_with("Morph", fields.clone())).result() == MORPHEUS;
        for _ in 0..3 {
            let again = conn.request(&search_with("Morph", fields.clone())).result() == MORPHEUS;
            assert_eq!(again, fuzzy, "user-{user} changed arms");
        }
        *arms.entry(fuzzy).or_default() += 1;
    }
    assert!(arms.get(&true).copied().unwrap_or(0) >= 5 && arms.get(&false).copied().unwrap_or(0) >= 5, "{arms:?}");

    // Per-arm numbers in /metrics: every alpha request counted on its arm.
    let (status, metrics) = server.admin_get("/metrics");
    assert_eq!(status, 200);
    let version = |plugin: &str| server.plugin_version(plugin);
    let count = |tenant: &str, plugin: &str| {
        let series = format!(r#"wasmux_requests_total{{tenant="{tenant}",route="text/json",plugin="{plugin}",version="{}",outcome="ok"}}"#, version(plugin));
        metric(&metrics, &series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(count("alpha", "search@fuzzy"), (arms[&true] * 4) as f64);
    assert_eq!(count("alpha", "search"), (arms[&false] * 4) as f64);
    assert_eq!(count("beta", "search@fuzzy"), 2.0);
}

#[test]
fn requests_are_counted_in_metrics_with_the_default_configuration() {
    let plugins = crate::common::plugins_dir();
    let server = Server::start_with(&["--plugins", plugins.to_str().expect("utf-8"), "--admin", "127.0.0.1:0"]);
    let mut conn = server.connect();
    for _ in 0..3 {
        conn.request(&crate::common::search("ring"));
    }
    conn.request(&crate::common::binary(b"hello"));
    let (status, metrics) = server.admin_get("/metrics");
    assert_eq!(status, 200);
    let labels = |route: &str, plugin: &str| {
        format!(r#"{{tenant="default",route="{route}",plugin="{plugin}",version="{}",outcome="ok"}}"#, server.plugin_version(plugin))
    };
    let series = |name: &str, route: &str, plugin: &str| format!("{name}{}", labels(route, plugin));
    assert_eq!(metric(&metrics, &series("wasmux_requests_total", "text/json", "search")), Some(3.0), "{metrics}");
    assert_eq!(metric(&metrics, &series("wasmux_requests_total", "*", "binary-echo")), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, &series("wasmux_request_duration_seconds_count", "text/json", "search")), Some(3.0), "{metrics}");
    assert_eq!(metric(&metrics, r#"wasmux_plugin_loads_total{plugin="search"}"#), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "wasmux_open_connections"), Some(1.0), "{metrics}");

    assert_eq!(server.admin_get("/healthz"), (200, "ok\n".to_owned()));
    let (status, plugins) = server.admin_get("/plugins");
    assert_eq!(status, 200);
    let plugins: Value = serde_json::from_str(&plugins).expect("JSON");
    let search = plugins.as_array().and_then(|all| all.iter().find(|p| p["name"] == "search")).expect("search listed");
    assert_eq!(search["loaded"], true);
    assert_eq!(search["version"].as_str().map(str::len), Some(12));
    assert!(search["loaded_at"].is_string() && search["compile_ms"].is_number(), "{search}");
}

#[test]
fn an_unknown_token_is_refused_and_the_connection_closed() {
    let server = serve_config(&format!(
        "[tenants.default]\n[tenants.alpha]\ntoken-sha256 = \"{}\"\n",
        wasmux::tenancy::TokenHash::of("right")
    ));
    let mut conn = server.connect();
    let answer = conn.request(&search_with("ring", bearer("wrong")));
    assert_eq!(answer.error_code(), "unauthorized");
    assert!(answer.result().contains("unauthorized"), "{}", answer.result());
    assert!(conn.is_closed(), "the connection should be closed after an unknown token");

    // The right token works; a malformed authorization is refused too.
    let mut conn = server.connect();
    assert_eq!(conn.request(&search_with("ring", bearer("right"))).header["content-type"], "text/json");
    let answer = conn.request(&search_with("ring", json!({"authorization": 12})));
    assert_eq!(answer.error_code(), "unauthorized");

    let (_, metrics) = server.admin_get("/metrics");
    let refused = r#"wasmux_requests_total{tenant="",route="",plugin="",version="",outcome="unauthorized"}"#;
    assert_eq!(metric(&metrics, refused), Some(2.0), "{metrics}");
}

#[test]
fn without_a_default_tenant_a_token_is_required() {
    let server = serve_config(&format!("[tenants.alpha]\ntoken-sha256 = \"{}\"\n", wasmux::tenancy::TokenHash::of("a")));
    let answer = server.connect().request(&crate::common::search("ring"));
    assert_eq!(answer.error_code(), "unauthorized");
    assert!(answer.result().contains("no default tenant"), "{}", answer.result());
}

#[test]
fn plugins_get_the_extra_fields_but_never_the_credential() {
    // Serve the echo-fields fixture, which answers with the request as the
    // plugin received it.
    let server = Server::start_with_fixtures(&format!(
        "[routes]\n\"*\" = \"echo-fields\"\n[tenants.alpha]\ntoken-sha256 = \"{}\"\n",
        wasmux::tenancy::TokenHash::of("very-secret-token")
    ));
    let request = message(
        json!({"byteorder": "big", "content-type": "a/b", "user": "ann", "content-encoding": "binary",
               "authorization": "Bearer very-secret-token", "n": [1, {"x": null}]}),
        b"12345",
    );
    let answer = server.connect().request(&request);
    assert_eq!(
        answer.json(),
        json!({"content-type": "a/b", "content-encoding": "binary", "byteorder": "big",
               "fields": [["user", "\"ann\""], ["n", "[1,{\"x\":null}]"]], "content-length": 5})
    );
    // The plugin's own extra field reaches the client, after the required four.
    assert_eq!(answer.header["x-echoed-by"], "echo-fields");
    // The wire log (the test servers log at debug) shows the request with
    // the token blanked out; once the connection's last line is in, the
    // whole exchange has been logged.
    assert!(server.wait_for_log("\"authorization\": \"Bearer ***\"", crate::common::STEP), "no redacted wire line:\n{}", server.log());
    assert!(server.wait_for_log("a/b request (5 bytes)", crate::common::STEP), "{}", server.log());
    assert!(!server.log().contains("very-secret-token"), "the token leaked into the log:\n{}", server.log());
}

#[test]
fn a_tenant_over_its_rate_is_answered_overloaded_and_others_are_not() {
    let server = serve_config(&format!(
        "[tenants.default]\n[tenants.alpha]\ntoken-sha256 = \"{}\"\nlimits = {{ requests-per-second = 1, burst = 5 }}\n",
        wasmux::tenancy::TokenHash::of("a")
    ));
    let mut alpha = server.connect();
    let mut other = server.connect();
    let started = std::time::Instant::now();
    let answers: Vec<Answer> = (0..20).map(|_| alpha.request(&search_with("ring", bearer("a")))).collect();
    // A burst of 5, plus one more for each second the requests took.
    let refills = started.elapsed().as_secs() as usize + 1;
    let (ok, refused): (Vec<&Answer>, Vec<&Answer>) = answers.iter().partition(|a| a.json().get("error").is_none());
    assert!(ok.len() >= 5 && ok.len() <= 5 + refills, "{} answered, {refills} refills", ok.len());
    assert!(answers[..5].iter().all(|a| a.json().get("error").is_none()), "the burst was not admitted");
    assert!(!refused.is_empty(), "nothing was refused");
    for answer in refused {
        assert_eq!(answer.error_code(), "overloaded");
        assert!(answer.result().contains("tenant alpha is over its limit of 1 requests per second"), "{}", answer.result());
    }
    // The default tenant is not limited by alpha's rate.
    for _ in 0..20 {
        assert_eq!(other.request(&crate::common::search("morpheus")).result(), MORPHEUS);
    }
}

#[test]
fn split_weights_change_with_a_configuration_reload() {
    let config = |a: u32, b: u32| format!("[routes]\n\"text/json\" = {{ split = {{ \"search\" = {a}, \"search@fuzzy\" = {b} }} }}\n\"*\" = \"binary-echo\"\n");
    let server = serve_config(&config(1, 0));
    let mut conn = server.connect();
    let fuzzy_share = |conn: &mut crate::common::Raw| {
        (0..20).filter(|_| conn.request(&crate::common::search("MORPHEUS")).result() == MORPHEUS).count()
    };
    assert_eq!(fuzzy_share(&mut conn), 0, "all on the exact search");
    std::fs::write(server.config_path(), config(0, 1)).expect("rewrite config");
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while fuzzy_share(&mut conn) != 20 {
        assert!(std::time::Instant::now() < end, "weights not reloaded; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(server.config_path(), config(3, 1)).expect("rewrite config");
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Without stickiness the arms take turns by weight: 5 of 20 fuzzy.
        if fuzzy_share(&mut conn) == 5 {
            break;
        }
        assert!(std::time::Instant::now() < end, "3:1 weights not applied; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer: Answer = conn.request(&crate::common::binary(b"still works"));
    assert_eq!(answer.content, b"First 10 bytes of request: still work");
}

#[test]
fn a_token_made_by_wasmux_token_admits_its_tenant() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmux")).arg("token").output().expect("run wasmux token");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.lines().find_map(|l| l.strip_prefix("token: ")).expect("a token line").to_owned();
    let hash_line = stdout.lines().find(|l| l.starts_with("token-sha256 = ")).expect("a hash line").to_owned();
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_wasmux")).args(["token", "--hash", &token]).output().expect("hash it");
    assert!(String::from_utf8_lossy(&again.stdout).contains(&hash_line), "--hash gives another hash");

    let server = serve_config(&format!("[tenants.made]\n{hash_line}\n"));
    let send = |token: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmux"))
            .args(["send", "--addr", &server.addr_string(), "--token", token, "search", "morpheus"])
            .output()
            .expect("run wasmux send");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(send(&token), format!("Got result: {MORPHEUS}"));
    assert!(send("not-it").starts_with("Got result: Error: unauthorized"));
}

// ---- Fairness ----

/// A request of the spin fixture, which spins until its deadline
/// (`logging`: and logs each turn).
fn spin(how: &str) -> Vec<u8> {
    message(json!({"byteorder": "little", "content-type": "test/spin", "content-encoding": "binary"}), how.as_bytes())
}

fn outcome(answer: &Answer) -> String {
    answer.json().get("error").and_then(|e| e["code"].as_str()).unwrap_or("ok").to_owned()
}

/// A server with `calls` instance slots, the spin fixture on `test/spin`,
/// search on `text/json`, a default tenant whose calls may spin for 3 s,
/// and tenant alpha (token `alpha-token`) with `alpha_limits`.
fn spin_server(calls: u32, alpha_limits: &str) -> Server {
    Server::start_with_fixtures(&format!(
        "[limits]\nmax-concurrent-calls = {calls}\n[routes]\n\"test/spin\" = \"spin\"\n\"text/json\" = \"search\"\n\
         [tenants.default]\nlimits = {{ plugin-deadline = \"3s\" }}\n\
         [tenants.alpha]\ntoken-sha256 = \"{}\"\nlimits = {{ {alpha_limits} }}\n",
        wasmux::tenancy::TokenHash::of("alpha-token")
    ))
}

/// Anonymous clients flood the server with requests that spin to their
/// deadline; the default tenant, given no limits, is held to half the
/// instance slots, so a tenant with a token is still answered in time.
#[test]
fn an_anonymous_flood_leaves_slots_for_the_tenants_with_tokens() {
    let server = spin_server(4, "");
    let (tx, rx) = std::sync::mpsc::channel();
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let mut conn = server.connect();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let outcome = outcome(&conn.request(&spin("forever")));
                let _ = tx.send(outcome.clone());
                outcome
            })
        })
        .collect();
    // A refusal means the default tenant's slots are all spinning now.
    let first = rx.recv_timeout(Duration::from_secs(20)).expect("an answer to the flood");
    assert_eq!(first, "overloaded", "the default tenant took every slot it asked for:\n{}", server.log());
    let answer = server.connect().request(&search_with("morpheus", bearer("alpha-token")));
    assert_eq!(answer.result(), MORPHEUS, "alpha was not served beside the flood");

    // The default tenant's own requests spun to their deadline or were
    // refused at once: none waited behind the others.
    let outcomes: Vec<String> = flood.into_iter().map(|t| t.join().expect("flood thread")).collect();
    assert!(outcomes.iter().all(|o| o == "plugin-timeout" || o == "overloaded"), "{outcomes:?}");
}

/// The wait for an instance slot counts against the plugin deadline: a
/// request that found no free slot within its deadline is answered
/// `overloaded` then, not run whenever a slot comes free.
#[test]
fn a_request_that_waited_its_whole_deadline_for_a_slot_is_not_run() {
    let server = spin_server(1, "plugin-deadline = \"300ms\"");
    let mut spinner = server.connect();
    spinner.send(&spin("logging"));
    assert!(server.wait_for_log("spin: turn 1", Duration::from_secs(20)), "{}", server.log());
    // The only slot is taken for 3 s.
    let answer = server.connect().request(&search_with("morpheus", bearer("alpha-token")));
    assert_eq!(outcome(&answer), "overloaded", "{:?}", answer.json());
    assert!(answer.result().contains("no instance slot came free within its deadline of 300ms"), "{}", answer.result());
    drop(spinner);
}

// ---- The admin endpoint's token ----

#[test]
fn the_admin_endpoint_asks_for_its_token_and_a_reload_rotates_it() {
    let config = |token: &str| format!("[admin]\ntoken-sha256 = \"{}\"\n", wasmux::tenancy::TokenHash::of(token));
    let server = serve_config(&config("first-admin-token"));
    for path in ["/metrics", "/plugins", "/experiments"] {
        assert_eq!(server.admin_get(path).0, 401, "{path} without a token");
        assert_eq!(server.admin_get_with_token(path, Some("wrong")).0, 401, "{path} with a wrong token");
        assert_eq!(server.admin_get_with_token(path, Some("first-admin-token")).0, 200, "{path} with the token");
    }
    assert_eq!(server.admin_get("/healthz"), (200, "ok\n".to_owned()), "health checks need no token");
    // The page holds no data: it asks for the token when /experiments does.
    let (status, page) = server.admin_get("/");
    assert_eq!(status, 200);
    assert!(page.contains("id=\"token\""), "the page has no token form:\n{page}");

    // `wasmux experiments` sends the token from the file it is given.
    let admin = server.admin.expect("admin address").to_string();
    let without = crate::common::wasmux(&["experiments", "--admin", &admin]);
    assert!(!without.status.success(), "{without:?}");
    assert!(without.stderr.contains("401") && without.stderr.contains("--admin-token-file"), "{}", without.stderr);
    let dir = tempfile::tempdir().expect("temporary directory");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "first-admin-token\n").expect("write the token");
    let with = crate::common::wasmux(&["experiments", "--admin", &admin, "--admin-token-file", token_file.to_str().expect("utf-8")]);
    assert!(with.status.success(), "{}", with.stderr);
    assert_eq!(with.stdout, ["no route has a split or a canary: no experiment is running"]);

    std::fs::write(server.config_path(), config("second-admin-token")).expect("rewrite config");
    assert!(server.wait_for_log("reloaded", Duration::from_secs(5)), "{}", server.log());
    assert_eq!(server.admin_get_with_token("/metrics", Some("first-admin-token")).0, 401);
    assert_eq!(server.admin_get_with_token("/metrics", Some("second-admin-token")).0, 200);
}

#[test]
fn off_loopback_the_admin_endpoint_needs_a_token_file_or_configured_token() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "file-admin-token\n").expect("write the token");
    let plugins = crate::common::plugins_dir();
    let server = Server::start_with(&[
        "--plugins",
        plugins.to_str().expect("utf-8"),
        "--admin",
        "0.0.0.0:0",
        "--admin-token-file",
        token_file.to_str().expect("utf-8"),
    ]);
    assert_eq!(server.admin_get("/metrics").0, 401);
    assert_eq!(server.admin_get_with_token("/metrics", Some("file-admin-token")).0, 200);
}

#[test]
fn the_credential_is_read_and_hidden_however_its_name_is_spelled_and_its_value_escaped() {
    // No default tenant: a request is answered only if its credential is read.
    let plugins = crate::common::plugins_and_fixtures();
    let config = format!(
        "[routes]\n\"*\" = \"echo-fields\"\n[tenants.alpha]\ntoken-sha256 = \"{}\"\n",
        wasmux::tenancy::TokenHash::of("very-secret-token")
    );
    let server = Server::start_configured_with(&config, plugins.path(), &["-v"]);
    let raw = |header: &str| crate::common::raw(header.as_bytes(), b"12345");
    let fields = r#""byteorder": "big", "content-type": "a/b", "content-encoding": "binary", "content-length": 5, "user": "ann""#;
    let mut conn = server.connect();
    for credential in [
        r#""Authorization": "Bearer very-secret-token""#,
        r#""AUTHORIZATION": "Bearer\u0020very-secret-token""#,
        r#""authorization": "bearer \u0076ery-secret-token""#,
    ] {
        let answer = conn.request(&raw(&format!("{{{fields}, {credential}}}")));
        assert_eq!(answer.json()["fields"], json!([["user", "\"ann\""]]), "{credential}: {}", answer.json());
    }
    // Given twice, in two spellings: which one counts? Neither: the frame is lost.
    let answer = conn.request(&raw(&format!(r#"{{{fields}, "authorization": "Bearer x", "Authorization": "Bearer very-secret-token"}}"#)));
    assert_eq!(answer.error_code(), "bad-frame");
    assert!(conn.is_closed());

    assert!(server.wait_for_log("\"AUTHORIZATION\": \"Bearer ***\"", crate::common::STEP), "{}", server.log());
    let log = server.log();
    for secret in ["very-secret-token", "\\u0020very", "\\u0076ery"] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}
