//! Canaries against real `wasmux serve` processes: a failing candidate
//! rolled back after a handful of failed requests and kept rolled back
//! across a restart (its state in the data directory); a healthy one
//! promoted step by step; a slow one rolled back by the latency guard
//! once each arm has the samples it needs; two servers on one Redis taking one decision;
//! and `wasmux experiments --admin A --admin B` merging a fleet's reports
//! into exactly the sum of what each server reports.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::redis::RedisServer;
use crate::common::{Raw, STEP, Server, message, metric, wasmux};

/// `text/plain` to a canary: `spin` answers `answer` at once; `trap`
/// panics on it, so the candidate fails every request.
const FAILING_CANARY: &str = r#"
[routes."text/plain".canary]
stable = "spin"
candidate = "trap"
steps = [10, 50, 100]
step-after = "1s"
min-requests = 20
max-extra-error-rate = 0.01
max-p99-ratio = 3.0
"#;

/// The guide's search to its fuzzy variant, which answers as well: two
/// short steps. The latency guard's ratio is generous, since the test
/// machine is shared and both arms are fast.
const HEALTHY_CANARY: &str = r#"
[routes."text/json".canary]
stable = "search"
candidate = "search@fuzzy"
steps = [50, 100]
step-after = "300ms"
min-requests = 10
max-extra-error-rate = 0.01
max-p99-ratio = 20.0
"#;

fn answer_please() -> Vec<u8> {
    message(json!({"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8"}), b"answer")
}

fn report(server: &Server) -> Value {
    let (status, body) = server.admin_get("/experiments");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/experiments is not JSON ({e}): {body}"))
}

/// The report of the default tenant's route `route`.
fn route(report: &Value, route: &str) -> Value {
    let routes = report["tenants"].as_array().and_then(|t| t.iter().find(|t| t["tenant"] == "default")).map(|t| t["routes"].clone());
    let found = routes.as_ref().and_then(Value::as_array).and_then(|r| r.iter().find(|r| r["route"] == route)).cloned();
    found.unwrap_or_else(|| panic!("no route {route} in {report}"))
}

/// Waits until `server`'s canary on `route` satisfies `done`; its report.
fn wait_for_canary(server: &Server, route_name: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + within;
    loop {
        let canary = route(&report(server), route_name)["canary"].clone();
        if done(&canary) {
            return canary;
        }
        assert!(Instant::now() < end, "the canary of {route_name} did not get there within {within:?}: {canary}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(config: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start_with_fixtures_and(config, &args)
}

/// Sends `count` requests; how many failed with `plugin-failed`.
fn failures(conn: &mut Raw, count: usize) -> usize {
    (0..count)
        .filter(|_| {
            let answer = conn.request(&answer_please());
            match answer.header.get("error").is_some() || answer.content.starts_with(b"{") {
                true => answer.error_code() == "plugin-failed",
                false => {
                    assert_eq!(answer.content, b"spin: answered", "an answer that is neither spin's nor an error");
                    false
                }
            }
        })
        .count()
}

#[test]
fn a_failing_candidate_is_rolled_back_after_a_handful_of_requests_and_stays_so_across_a_restart() {
    let data = tempfile::tempdir().expect("temporary directory");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let mut server = serve(FAILING_CANARY, &["--data-dir", data_dir]);
    wait_for_canary(&server, "text/plain", STEP, |c| c["known"] == true);
    assert_eq!(route(&report(&server), "text/plain")["canary"]["state"]["state"], "stepping");

    let mut conn = server.connect();
    let failed = failures(&mut conn, 300);
    // Two to five: the anytime-valid error guard needs no `min-requests`.
    assert!((1..=5).contains(&failed), "{failed} requests reached the failing candidate");
    let canary = route(&report(&server), "text/plain")["canary"].clone();
    assert_eq!((&canary["state"]["state"], &canary["state"]["guard"], &canary["share"]), (&json!("rolled-back"), &json!("error-rate"), &json!(0)), "{canary}");
    assert_eq!(canary["guards"]["error_rate"]["candidate_errors"], failed);

    // Where a user sees it: wasmux experiments, the log and the metrics.
    let admin = server.admin.expect("admin").to_string();
    let printed = wasmux(&["experiments", "--admin", &admin]);
    assert!(printed.status.success(), "{printed:?}");
    let text = printed.stdout.join("\n");
    assert!(text.contains("tenant default, route text/plain: canary spin -> trap (steps 10 / 50 / 100 %, interleaved)"), "{text}");
    assert!(
        printed.stdout.iter().any(|l| l.starts_with("rolled-back since ") && l.contains("candidate trap rolled back by the error-rate guard: trap failed")),
        "{text}"
    );
    assert!(server.wait_for_log("canary: candidate trap rolled back by the error-rate guard", STEP), "{}", server.log());
    let (_, metrics) = server.admin_get("/metrics");
    let labels = r#"tenant="default",route="text/plain",stable="spin",candidate="trap""#;
    assert_eq!(metric(&metrics, &format!(r#"wasmux_canary_state{{{labels},state="rolled-back"}}"#)), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, &format!(r#"wasmux_canary_guard_breached{{{labels},guard="error-rate"}}"#)), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, &format!("wasmux_canary_candidate_share{{{labels}}}")), Some(0.0), "{metrics}");

    // A restart on the same data directory: still rolled back, and the
    // candidate gets nothing, not even before the state is read.
    drop(conn);
    assert!(server.terminate(), "the server stops cleanly: {}", server.log());
    let server = serve(FAILING_CANARY, &["--data-dir", data_dir]);
    let mut conn = server.connect();
    assert_eq!(failures(&mut conn, 50), 0);
    let canary = wait_for_canary(&server, "text/plain", STEP, |c| c["known"] == true);
    assert_eq!((&canary["state"]["state"], &canary["share"]), (&json!("rolled-back"), &json!(0)), "{canary}");
    assert_eq!(failures(&mut conn, 50), 0);
}

#[test]
fn a_healthy_candidate_is_promoted_step_by_step() {
    let data = tempfile::tempdir().expect("temporary directory");
    let server = serve(HEALTHY_CANARY, &["--data-dir", data.path().to_str().expect("utf-8 path")]);
    wait_for_canary(&server, "text/json", STEP, |c| c["known"] == true);
    let mut conn = server.connect();
    let mut shares = Vec::new();
    let end = Instant::now() + 3 * STEP;
    loop {
        for _ in 0..20 {
            let _answered = conn.request(&crate::common::search("ring")).result();
        }
        let canary = route(&report(&server), "text/json")["canary"].clone();
        assert_ne!(canary["state"]["state"], "rolled-back", "{canary}");
        let share = canary["share"].as_u64().expect("a share");
        if shares.last() != Some(&share) {
            shares.push(share);
        }
        if canary["state"]["state"] == "promoted" {
            break;
        }
        assert!(Instant::now() < end, "not promoted: {canary}");
    }
    assert_eq!(shares, [50, 100]);
    // Promoted: every request goes to the candidate.
    let before = route(&report(&server), "text/json")["arms"].clone();
    for _ in 0..20 {
        conn.request(&crate::common::search("ring"));
    }
    let after = route(&report(&server), "text/json")["arms"].clone();
    let requests = |arms: &Value, i: usize| arms[i]["requests"].as_u64().expect("requests");
    assert_eq!((requests(&after, 0) - requests(&before, 0), requests(&after, 1) - requests(&before, 1)), (0, 20), "{after}");
    let printed = wasmux(&["experiments", "--admin", &server.admin.expect("admin").to_string()]);
    assert!(printed.stdout.iter().any(|l| l.starts_with("promoted since ") && l.contains("candidate search@fuzzy promoted")), "{printed:?}");
}

/// `text/plain` to a canary whose candidate answers as well but slowly:
/// `binary-echo` answers at once, `spin` counts for milliseconds first.
/// The steps wait a minute, so only a guard can end the first one. The
/// deadline is long, so that no answer fails on a busy machine: the
/// latency guard, not the error guard, must be the one to end it.
const SLOW_CANARY: &str = r#"
[limits]
plugin-deadline = "30s"
[routes."text/plain".canary]
stable = "binary-echo"
candidate = "spin"
steps = [50, 100]
step-after = "60s"
min-requests = 10
max-extra-error-rate = 0.5
max-p99-ratio = 2.0
"#;

#[test]
fn a_slow_candidate_is_rolled_back_by_the_latency_guard_once_each_arm_has_its_samples() {
    let data = tempfile::tempdir().expect("temporary directory");
    let server = serve(SLOW_CANARY, &["--data-dir", data.path().to_str().expect("utf-8 path")]);
    wait_for_canary(&server, "text/plain", STEP, |c| c["known"] == true);
    let slow = message(json!({"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8"}), b"count 10000000");
    let mut conn = server.connect();
    let end = Instant::now() + 6 * STEP;
    let mut sent = 0_u64;
    let canary = loop {
        for _ in 0..50 {
            let answer = conn.request(&slow);
            let content = String::from_utf8_lossy(&answer.content);
            assert!(
                content == "spin: counted 10000000" || content == "First 10 bytes of request: count 1000",
                "a slow answer is still an answer: {content}"
            );
            sent += 1;
        }
        let canary = route(&report(&server), "text/plain")["canary"].clone();
        if canary["state"]["state"] == "rolled-back" {
            break canary;
        }
        assert_eq!(canary["state"]["state"], "stepping", "{canary}");
        assert!(Instant::now() < end, "not rolled back after {sent} requests: {canary}");
    };
    assert_eq!((&canary["state"]["guard"], &canary["share"]), (&json!("latency"), &json!(0)), "{canary}");
    // It judged only with the samples it needs, on both arms.
    let latency = &canary["guards"]["latency"];
    let needed = latency["needed"].as_u64().expect("needed");
    assert_eq!(needed, 443, "the docs' figure: {latency}");
    assert!(latency["stable_latencies"].as_u64() >= Some(needed) && latency["candidate_latencies"].as_u64() >= Some(needed), "{latency}");
    let (stable, candidate) = (latency["stable_p99_upper_seconds"].as_f64(), latency["candidate_p99_lower_seconds"].as_f64());
    assert!(matches!((stable, candidate), (Some(s), Some(c)) if c > 2.0 * s), "{latency}");
    assert_eq!(canary["guards"]["error_rate"]["candidate_errors"], 0, "{canary}");
    assert!(server.wait_for_log("canary: candidate spin rolled back by the latency guard", STEP), "{}", server.log());
    // From now on every request goes to stable.
    let before = route(&report(&server), "text/plain")["arms"].clone();
    for _ in 0..20 {
        assert!(conn.request(&slow).content.starts_with(b"First 10 bytes of request: "));
    }
    let after = route(&report(&server), "text/plain")["arms"].clone();
    let requests = |arms: &Value, i: usize| arms[i]["requests"].as_u64().expect("requests");
    assert_eq!((requests(&after, 0) - requests(&before, 0), requests(&after, 1) - requests(&before, 1)), (20, 0), "{after}");
}

#[test]
fn servers_sharing_a_redis_take_one_decision() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = serve(FAILING_CANARY, &["--kv", &url]);
    let b = serve(FAILING_CANARY, &["--kv", &url]);
    for server in [&a, &b] {
        wait_for_canary(server, "text/plain", STEP, |c| c["known"] == true);
    }
    let failed = failures(&mut a.connect(), 300);
    assert!((1..=5).contains(&failed), "{failed} requests reached the failing candidate");
    // B takes A's rollback at its next sync (every 250 ms).
    let started = Instant::now();
    let canary = wait_for_canary(&b, "text/plain", Duration::from_secs(2), |c| c["state"]["state"] == "rolled-back");
    eprintln!("server B rolled back {:?} after A did", started.elapsed());
    assert_eq!(canary["share"], 0);
    assert_eq!(failures(&mut b.connect(), 50), 0);

    // The fleet view lists each server's canary.
    let (admin_a, admin_b) = (a.admin.expect("admin").to_string(), b.admin.expect("admin").to_string());
    let printed = wasmux(&["experiments", "--admin", &admin_a, "--admin", &admin_b]);
    assert!(printed.status.success(), "{printed:?}");
    for admin in [&admin_a, &admin_b] {
        let on = format!("on {admin}: rolled-back since ");
        assert!(printed.stdout.iter().any(|l| l.starts_with(&on)), "no line {on:?} in {printed:?}");
    }
    drop((a, b));
    drop(redis);
}

/// The guide's search split evenly with its fuzzy variant.
const EVEN_SPLIT: &str = "[routes]\n\"text/json\" = { split = { \"search\" = 1, \"search@fuzzy\" = 1 } }\n";

#[test]
fn the_fleet_view_is_the_sum_of_the_servers_reports() {
    let servers: Vec<Server> = (0..3).map(|_| serve(EVEN_SPLIT, &[])).collect();
    for (i, server) in servers.iter().enumerate() {
        let mut conn = server.connect();
        for n in 0..(10 * (i + 1)) {
            conn.request(&crate::common::search(["ring", "neo", "Morph"][n % 3]));
        }
    }
    let admins: Vec<String> = servers.iter().map(|s| s.admin.expect("admin").to_string()).collect();
    let own: Vec<Value> = servers.iter().map(|s| route(&report(s), "text/json")).collect();
    let mut args = vec!["experiments", "--json"];
    for admin in &admins {
        args.extend(["--admin", admin.as_str()]);
    }
    let printed = wasmux(&args);
    assert!(printed.status.success(), "{printed:?}");
    let merged: Value = serde_json::from_str(&printed.stdout.join("\n")).expect("the merged report is JSON");
    let merged = route(&merged, "text/json");
    assert_eq!(merged["fleet"]["servers"], json!(admins));
    for (i, plugin) in ["search", "search@fuzzy"].into_iter().enumerate() {
        let arm = &merged["arms"][i];
        assert_eq!(arm["plugin"], plugin);
        let sum = |field: &str| own.iter().map(|r| r["arms"][i][field].as_u64().expect("a count")).sum::<u64>();
        assert_eq!(arm["requests"].as_u64(), Some(sum("requests")), "{arm}");
        assert_eq!(arm["requests"].as_u64(), Some(30), "{arm}");
        assert_eq!(arm["errors"].as_u64(), Some(sum("errors")), "{arm}");
        for outcome in ["hit", "miss"] {
            let total: u64 = own.iter().map(|r| r["arms"][i]["outcomes"][outcome].as_u64().unwrap_or(0)).sum();
            assert_eq!(arm["outcomes"][outcome].as_u64().unwrap_or(0), total, "{outcome} of {plugin}");
        }
        // The latency histograms add up bucket by bucket.
        // (`buckets` are `[index, count]` pairs: the same edges everywhere.)
        let buckets = |histograms: &mut dyn Iterator<Item = &Value>| {
            let mut sum = std::collections::BTreeMap::<i64, u64>::new();
            for histogram in histograms {
                for pair in histogram["buckets"].as_array().expect("buckets") {
                    *sum.entry(pair[0].as_i64().expect("an index")).or_default() += pair[1].as_u64().expect("a count");
                }
            }
            sum
        };
        let own_sum = buckets(&mut own.iter().map(|r| &r["arms"][i]["latency_histogram"]));
        assert_eq!(own_sum.values().sum::<u64>(), 30);
        assert_eq!(buckets(&mut std::iter::once(&arm["latency_histogram"])), own_sum, "{arm}");
    }
    let text = wasmux(&[&["experiments"][..], &args[2..]].concat());
    assert!(text.stdout.first().is_some_and(|l| l.starts_with("fleet of 3 servers: ")), "{text:?}");
    assert!(text.stdout.iter().any(|l| l.starts_with("search@fuzzy ") && l.split_whitespace().nth(3) == Some("30")), "{text:?}");
}
