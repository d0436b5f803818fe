//! A/B experiments against a real `wasmux serve`: outcomes counted by
//! plugins through the `outcome` import (and its bounds), `/experiments`
//! and `wasmux experiments`, reloads that keep or restart an experiment,
//! and plugins built against the first version of the WIT world.


use std::time::{Duration, Instant};

use crate::common::{Process, Server, message};
use serde_json::{Value, json};
use wasmux::tenancy::TokenHash;

/// The guide's search, split evenly with its fuzzy variant, no stickiness:
/// the arms alternate, `search` first.
const EVEN_SPLIT: &str = "[routes]\n\"text/json\" = { split = { \"search\" = 1, \"search@fuzzy\" = 1 } }\n\"*\" = \"binary-echo\"\n";

/// Queries both arms answer (`morpheus`, `ring`: hits; `neo`: a miss) and
/// one only the fuzzy arm finds (`Morph`): on every four, `search` hits two
/// and `search@fuzzy` three.
const QUERIES: [&str; 4] = ["morpheus", "Morph", "neo", "ring"];

fn serve(config: &str) -> Server {
    Server::start_configured_with(config, &crate::common::plugins_dir(), &["--admin", "127.0.0.1:0"])
}

/// `/experiments`, parsed.
fn experiments(server: &Server) -> Value {
    let (status, body) = server.admin_get("/experiments");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/experiments is not JSON ({e}): {body}"))
}

/// The report of `tenant`'s split route `route`.
fn route<'a>(report: &'a Value, tenant: &str, route: &str) -> &'a Value {
    let tenants = report["tenants"].as_array().unwrap_or_else(|| panic!("no tenants in {report}"));
    let entry = tenants.iter().find(|t| t["tenant"] == tenant).unwrap_or_else(|| panic!("no tenant {tenant} in {report}"));
    let routes = entry["routes"].as_array().unwrap_or_else(|| panic!("no routes in {entry}"));
    routes.iter().find(|r| r["route"] == route).unwrap_or_else(|| panic!("no route {route} of {tenant} in {report}"))
}

/// Each query twice in a row, so that each arm of an alternating split
/// answers it once; `rounds` times over.
fn send_queries(conn: &mut crate::common::Raw, rounds: usize, extra: &Value) {
    for _ in 0..rounds {
        for query in QUERIES {
            for _ in 0..2 {
                conn.request(&search_with(query, extra));
            }
        }
    }
}

fn search_with(value: &str, fields: &Value) -> Vec<u8> {
    let mut header = json!({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8"});
    if let (Some(header), Some(fields)) = (header.as_object_mut(), fields.as_object()) {
        header.extend(fields.clone());
    }
    message(header, &serde_json::to_vec(&json!({"action": "search", "value": value})).expect("json"))
}


fn close(value: &Value, expected: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() < 1e-4)
}

#[test]
fn search_arms_count_hits_and_misses_and_the_difference_is_called_significant() {
    let server = serve(EVEN_SPLIT);
    let mut conn = server.connect();
    send_queries(&mut conn, 50, &json!({}));

    let report = experiments(&server);
    assert_eq!(report["window_seconds"], 2.0);
    let split = route(&report, "default", "text/json");
    assert_eq!(split["sticky"], Value::Null);
    let arms = split["arms"].as_array().expect("arms");
    assert_eq!(arms.len(), 2, "{split}");
    let (exact, fuzzy) = (&arms[0], &arms[1]);
    assert_eq!((&exact["plugin"], &exact["weight"], &exact["requests"], &exact["errors"]), (&json!("search"), &json!(1), &json!(200), &json!(0)));
    assert_eq!(exact["outcomes"], json!({"hit": 100, "miss": 100}));
    assert_eq!((&fuzzy["plugin"], &fuzzy["requests"]), (&json!("search@fuzzy"), &json!(200)));
    assert_eq!(fuzzy["outcomes"], json!({"hit": 150, "miss": 50}));
    let version = server.plugin_version("search");
    assert_eq!(exact["version"], version.as_str());
    assert_eq!(exact["versions"], json!({version.as_str(): 200}));
    let latency = &exact["latency_ms"];
    let (p50, p90, p99) = (latency["p50"].as_f64(), latency["p90"].as_f64(), latency["p99"].as_f64());
    assert!(matches!((p50, p90, p99), (Some(a), Some(b), Some(c)) if 0.0 < a && a <= b && b <= c), "{latency}");
    assert_eq!(exact["against_first"], Value::Null);

    // search@fuzzy against search: 75 % hits against 50 %, 200 requests
    // each. The anytime-valid interval (sequential.rs, checked there
    // against the reference implementation) is [0.0496, 0.4378]; at 100
    // requests each it still held 0 ([-0.0232, 0.5001]), where the
    // fixed-sample one (Newcombe's [0.1162, 0.3717]) did not.
    let versus = &fuzzy["against_first"];
    assert_eq!(versus["against"], "search");
    let hit = &versus["outcomes"]["hit"];
    assert!(close(&hit["rate"], 0.75) && close(&hit["first_rate"], 0.5) && close(&hit["difference"], 0.25), "{hit}");
    assert!(close(&hit["ci95"][0], 0.0496) && close(&hit["ci95"][1], 0.4378), "{hit}");
    assert_eq!(hit["significant"], true);
    assert_eq!(versus["outcomes"]["miss"]["significant"], true);
    let errors = &versus["error_rate"];
    assert!(close(&errors["difference"], 0.0) && errors["significant"] == false, "{errors}");

    // The same, as `wasmux experiments` prints it.
    let admin = server.admin.expect("an admin address").to_string();
    let run = Process::run(std::process::Command::new(env!("CARGO_BIN_EXE_wasmux")).args(["experiments", "--admin", &admin]), crate::common::STEP);
    assert!(run.status.success(), "{run:?}");
    let printed = run.stdout.join("\n");
    for expected in [
        "tenant default, route text/json: split search 1 / search@fuzzy 1 (interleaved)",
        "search@fuzzy against search:",
        "  hit rate    50.0% -> 75.0%: +25.0 points (95% anytime-valid CI +5.0 to +43.8), significant",
        "  miss rate   50.0% -> 25.0%: -25.0 points (95% anytime-valid CI -43.8 to -5.0), significant",
        "  error rate  0.00% -> 0.00%: +0.00 points (95% anytime-valid CI -4.61 to +4.61), not significant",
    ] {
        assert!(run.stdout.iter().any(|line| line == expected), "no line {expected:?} in\n{printed}");
    }
    let row = |plugin: &str| run.stdout.iter().find(|line| line.starts_with(&format!("{plugin} "))).cloned().unwrap_or_default();
    let cells: Vec<String> = row("search@fuzzy").split_whitespace().map(str::to_owned).collect();
    assert_eq!(cells.get(3).map(String::as_str), Some("200"), "{printed}");
    assert!(row("search").ends_with("50.0% (100)  50.0% (100)"), "{printed}");
    assert!(cells.join(" ").ends_with("75.0% (150) 25.0% (50)"), "{printed}");
}

#[test]
fn outcomes_are_bounded_per_request_and_per_arm_and_errors_count_none() {
    let config = "[routes]\n\
        \"text/plain\" = { split = { \"outcomes\" = 1 } }\n\
        \"text/x-missing\" = { split = { \"missing\" = 1, \"outcomes\" = 1 } }\n\
        \"text/x-plain\" = \"outcomes\"\n";
    let server = Server::start_with_fixtures_and(config, &["--admin", "127.0.0.1:0"]);
    let mut conn = server.connect();
    let mut send = |content_type: &str, words: &str| {
        let request = message(json!({"byteorder": "little", "content-type": content_type, "content-encoding": "utf-8"}), words.as_bytes());
        conn.request(&request)
    };
    assert_eq!(send("text/plain", "hit hit miss").content, b"counted 3");
    send("text/plain", "Bad hit way-too-long-for-an-outcome-name-of-32-bytes");
    // Ten names in one request: the first eight count.
    send("text/plain", "a b c d e f g h i j");
    // An error answer counts no outcome.
    assert_eq!(send("text/plain", "!fail hit").error_code(), "plugin-failed");
    // 16 names per arm: 10 so far, so 6 of these count and 10 are dropped.
    for i in 0..16 {
        send("text/plain", &format!("x{i}"));
    }
    // A route without a split is no experiment: nothing counts.
    send("text/x-plain", "hit");
    // An arm whose plugin is not loaded counts its errors.
    for _ in 0..4 {
        send("text/x-missing", "hit");
    }

    let report = experiments(&server);
    let routes = report["tenants"][0]["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 2, "only split routes are experiments: {report}");
    let arm = &route(&report, "default", "text/plain")["arms"][0];
    assert_eq!((&arm["requests"], &arm["errors"], &arm["errors_by_code"]), (&json!(20), &json!(1), &json!({"plugin-failed": 1})));
    let mut expected = json!({"hit": 2, "miss": 1});
    for name in ["a", "b", "c", "d", "e", "f", "g", "h", "x0", "x1", "x2", "x3", "x4", "x5"] {
        expected[name] = json!(1);
    }
    assert_eq!(arm["outcomes"], expected);
    assert_eq!(arm["outcomes_dropped"], 10);

    let missing = route(&report, "default", "text/x-missing");
    let (absent, present) = (&missing["arms"][0], &missing["arms"][1]);
    assert_eq!((&absent["plugin"], &absent["version"]), (&json!("missing"), &Value::Null));
    assert_eq!((&absent["requests"], &absent["errors_by_code"]), (&json!(2), &json!({"no-plugin": 2})));
    assert_eq!((&present["requests"], &present["outcomes"]), (&json!(2), &json!({"hit": 2})));
    let errors = &present["against_first"]["error_rate"];
    assert!(close(&errors["first_rate"], 1.0) && close(&errors["rate"], 0.0), "{errors}");

    // Refusals are logged once per request, with the reason. The log is
    // read from the server's output as it comes: wait for the lines, the
    // last from a request sent after all the others (on a route that counts
    // nothing), so that a second refusal of "a … j", logged before it,
    // would have been read by then.
    send("text/x-plain", "Last");
    for line in [
        r#"an outcome name is made of a-z, 0-9, - and _; refused "Bad""#,
        r#"a request may count at most 8 outcomes; dropped "i""#,
        r#"an outcome name is made of a-z, 0-9, - and _; refused "Last""#,
    ] {
        assert!(server.wait_for_log(line, crate::common::STEP), "{}", server.log());
    }
    let log = server.log();
    assert!(!log.contains(r#"dropped "j""#), "a second refusal of one request was logged:\n{log}");
}

/// With instance reuse, one instance answers both requests; each starts
/// with nothing counted: the per-request bound and its log line apply to
/// each request again.
#[test]
fn a_reused_instance_counts_each_requests_outcomes_afresh() {
    let config = "[routes]\n\"text/plain\" = { split = { \"outcomes\" = 1 } }\n[runtime]\nreuse = { requests = 100, idle = \"1h\" }\n";
    let server = Server::start_with_fixtures_and(config, &["--admin", "127.0.0.1:0"]);
    let mut conn = server.connect();
    let request = message(json!({"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8"}), b"a b c d e f g h i");
    for _ in 0..2 {
        assert_eq!(conn.request(&request).content, b"counted 9");
    }
    let (_, metrics) = server.admin_get("/metrics");
    assert_eq!(crate::common::metric(&metrics, r#"wasmux_instances_created_total{plugin="outcomes"}"#), Some(1.0), "{metrics}");
    let report = experiments(&server);
    let arm = &route(&report, "default", "text/plain")["arms"][0];
    let expected: serde_json::Map<String, Value> = ["a", "b", "c", "d", "e", "f", "g", "h"].iter().map(|name| (name.to_string(), json!(2))).collect();
    assert_eq!(arm["outcomes"], Value::Object(expected));
    // The log is read as the server writes it: wait for both lines.
    crate::common::wait_until("both requests' refusals are logged", || server.log().matches(r#"dropped "i""#).count() >= 2);
    assert_eq!(server.log().matches(r#"dropped "i""#).count(), 2, "{}", server.log());
}

/// Waits until the log says the configuration was reloaded `times` times.
fn wait_for_reloads(server: &Server, times: usize) {
    let end = Instant::now() + crate::common::STEP;
    while server.log().matches("reloaded;").count() < times {
        assert!(Instant::now() < end, "the configuration was not reloaded {times} times; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tenants_count_apart_and_a_reload_restarts_only_the_splits_it_changes() {
    let config = |weights: (u32, u32), greeting: &str| {
        format!(
            "[routes]\n\"text/json\" = {{ split = {{ \"search\" = {}, \"search@fuzzy\" = {} }} }}\n\"*\" = \"binary-echo\"\n\
             [plugins.search]\ngreeting = \"{greeting}\"\n\
             [tenants.default]\n[tenants.alpha]\ntoken-sha256 = \"{}\"\n",
            weights.0,
            weights.1,
            TokenHash::of("alpha-token")
        )
    };
    let server = serve(&config((1, 1), "hello"));
    let mut conn = server.connect();
    let alpha = json!({"authorization": "Bearer alpha-token"});
    send_queries(&mut conn, 1, &json!({}));
    conn.request(&search_with("ring", &alpha));
    let requests = |report: &Value, tenant: &str| -> Vec<u64> {
        route(report, tenant, "text/json")["arms"].as_array().expect("arms").iter().map(|arm| arm["requests"].as_u64().unwrap_or(u64::MAX)).collect()
    };
    let before = experiments(&server);
    assert_eq!((requests(&before, "default"), requests(&before, "alpha")), (vec![4, 4], vec![1, 0]), "a server-wide split counts each tenant apart");

    // A reload that leaves the split alone keeps its counts.
    std::fs::write(server.config_path(), config((1, 1), "bonjour")).expect("rewrite the configuration");
    wait_for_reloads(&server, 1);
    let kept = experiments(&server);
    assert_eq!((requests(&kept, "default"), requests(&kept, "alpha")), (vec![4, 4], vec![1, 0]));
    assert_eq!(route(&kept, "default", "text/json")["since"], route(&before, "default", "text/json")["since"]);

    // One that changes its weights starts it afresh.
    std::fs::write(server.config_path(), config((3, 1), "bonjour")).expect("rewrite the configuration");
    wait_for_reloads(&server, 2);
    let restarted = experiments(&server);
    assert_eq!((requests(&restarted, "default"), requests(&restarted, "alpha")), (vec![0, 0], vec![0, 0]));
    let weights: Vec<&Value> = route(&restarted, "default", "text/json")["arms"].as_array().expect("arms").iter().map(|arm| &arm["weight"]).collect();
    assert_eq!(weights, [&json!(3), &json!(1)]);
    conn.request(&crate::common::search("ring"));
    assert_eq!(requests(&experiments(&server), "default"), vec![1, 0]);
}

#[test]
fn a_plugin_built_against_wit_0_1_0_still_loads_and_answers() {
    let config = "[routes]\n\"text/plain\" = \"wit@0.1.0\"\n[plugins.\"wit@0.1.0\"]\ngreeting = \"hello\"\n";
    let server = Server::start_with_fixtures(config);
    let request = message(json!({"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8"}), b"");
    let answer = server.connect().request(&request);
    assert_eq!(String::from_utf8_lossy(&answer.content), "built against 0.1.0; greeting=hello");
    assert!(server.wait_for_log("answering as a 0.1.0 plugin", crate::common::STEP), "its log import was not linked:\n{}", server.log());
    // It does import the 0.1.0 interface, which the host does not define by
    // that exact version: wasmtime resolved it to the newer 0.1.x.
    let bytes = std::fs::read(crate::common::fixtures_dir().join("wit@0.1.0.wasm")).expect("the fixture");
    assert!(bytes.windows(b"wasmux:plugin/host@0.1.0".len()).any(|w| w == b"wasmux:plugin/host@0.1.0"));
    assert!(!bytes.windows(b"@0.1.1".len()).any(|w| w == b"@0.1.1"));
}
