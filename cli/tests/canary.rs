//! Canaries against real `wasmux serve` processes: a failing candidate
//! rolled back after a handful of failed requests and kept rolled back
//! across a restart (its state in the data directory); a healthy one
//! promoted step by step; a slow one rolled back by the latency guard
//! once each arm has the samples it needs; two servers on one Redis taking one decision;
//! and `wasmux experiments --admin A --admin B` merging a fleet's reports
//! into exactly the sum of what each server reports, which is what a
//! Prometheus scraping the fleet sums too. A tenant's canary decides on
//! that tenant's requests alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::common::prometheus::Prometheus;
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
    tenant_route(report, "default", route).unwrap_or_else(|| panic!("no route {route} of the default tenant in {report}"))
}

/// The report of `tenant`'s route `route`, if it has one.
fn tenant_route(report: &Value, tenant: &str, route: &str) -> Option<Value> {
    let routes = report["tenants"].as_array().and_then(|t| t.iter().find(|t| t["tenant"] == tenant)).map(|t| t["routes"].clone());
    routes.as_ref().and_then(Value::as_array).and_then(|r| r.iter().find(|r| r["route"] == route)).cloned()
}

/// Waits until `server`'s canary on `route` satisfies `done`; its report.
fn wait_for_canary(server: &Server, route_name: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    wait_for_tenant_canary(server, "default", route_name, within, done)
}

/// Waits until `tenant`'s canary on `route` satisfies `done`; its report.
fn wait_for_tenant_canary(server: &Server, tenant: &str, route_name: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + within;
    loop {
        let canary = tenant_route(&report(server), tenant, route_name).map(|r| r["canary"].clone()).unwrap_or_default();
        if done(&canary) {
            return canary;
        }
        assert!(Instant::now() < end, "{tenant}'s canary of {route_name} did not get there within {within:?}: {canary}\n{}", server.log());
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
fn a_failing_candidate_is_rolled_back_after_a_handful_of_requests_and_stays_so_across_a_reload_and_a_restart() {
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

    // A reload that leaves the canary alone (a new limit) keeps it rolled
    // back: the candidate still gets nothing.
    std::fs::write(server.config_path(), format!("[limits]\nidle-timeout = \"30s\"\n{FAILING_CANARY}")).expect("rewrite the configuration");
    assert!(server.wait_for_log("reloaded", STEP), "{}", server.log());
    assert_eq!(failures(&mut conn, 50), 0);
    let canary = route(&report(&server), "text/plain")["canary"].clone();
    assert_eq!((&canary["state"]["state"], &canary["share"]), (&json!("rolled-back"), &json!(0)), "{canary}");

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
    // B takes A's rollback at its next sync (every 250 ms; the time it took
    // is printed, the bound is a busy machine's).
    let started = Instant::now();
    let canary = wait_for_canary(&b, "text/plain", STEP, |c| c["state"]["state"] == "rolled-back");
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

/// `text/plain` is `spin` for the server; tenant alpha has a canary to
/// the failing `trap`, beta one to `binary-echo` (which answers too), and
/// gamma and the default tenant keep the server's route.
fn tenants_canaries() -> String {
    let hash = |token: &str| wasmux::tenancy::TokenHash::of(token).to_string();
    let failing = FAILING_CANARY.replace("[routes.", "[tenants.alpha.routes.");
    let healthy = r#"
[tenants.beta.routes."text/plain".canary]
stable = "spin"
candidate = "binary-echo"
steps = [50, 100]
step-after = "300ms"
min-requests = 10
max-extra-error-rate = 0.01
max-p99-ratio = 20.0
"#;
    format!(
        "[routes]\n\"text/plain\" = \"spin\"\n\n[tenants.default]\n[tenants.gamma]\ntoken-sha256 = \"{}\"\n\
         [tenants.alpha]\ntoken-sha256 = \"{}\"\n{failing}\n[tenants.beta]\ntoken-sha256 = \"{}\"\n{healthy}",
        hash("gamma-token"),
        hash("alpha-token"),
        hash("beta-token"),
    )
}

/// Who answered a tenant's requests: `spin`, `binary-echo`, or the
/// failing `trap` (an error `plugin-failed`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Answered {
    spin: usize,
    echo: usize,
    failed: usize,
}

/// Sends `count` requests for `text/plain` as `tenant` (its token is
/// `TENANT-token`; none for `default`): who answered them.
fn send_as(conn: &mut Raw, tenant: &str, count: usize) -> Answered {
    let mut header = json!({"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8"});
    if tenant != "default" {
        header["authorization"] = json!(format!("Bearer {tenant}-token"));
    }
    let request = message(header, b"answer");
    let mut answered = Answered::default();
    for _ in 0..count {
        let answer = conn.request(&request);
        if answer.content == b"spin: answered" {
            answered.spin += 1;
        } else if answer.content.starts_with(b"First 10 bytes of request: answer") {
            answered.echo += 1;
        } else {
            assert_eq!(answer.error_code(), "plugin-failed", "{tenant}: an answer of none of the three: {answer:?}");
            answered.failed += 1;
        }
    }
    answered
}

#[test]
fn a_tenants_canary_decides_on_its_requests_alone_and_leaves_the_others_routes_alone() {
    let data = tempfile::tempdir().expect("temporary directory");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let config = tenants_canaries();
    let mut server = serve(&config, &["--data-dir", data_dir]);
    for tenant in ["alpha", "beta"] {
        wait_for_tenant_canary(&server, tenant, "text/plain", STEP, |c| c["known"] == true);
    }
    let experiments = report(&server);
    for tenant in ["default", "gamma"] {
        assert!(tenant_route(&experiments, tenant, "text/plain").is_none(), "{tenant} has no canary: {experiments}");
    }
    let mut conn = server.connect();
    let plain_spin = |n: usize| Answered { spin: n, ..Answered::default() };

    // Alpha's failing candidate is rolled back after a handful of failures.
    let alpha = send_as(&mut conn, "alpha", 300);
    assert!((1..=5).contains(&alpha.failed) && alpha.echo == 0, "alpha: {alpha:?}");
    let canary = wait_for_tenant_canary(&server, "alpha", "text/plain", STEP, |c| c["state"]["state"] != "stepping");
    assert_eq!((&canary["state"]["state"], &canary["state"]["guard"], &canary["share"]), (&json!("rolled-back"), &json!("error-rate"), &json!(0)), "{canary}");
    assert_eq!((&canary["requests"]["stable"], &canary["requests"]["candidate"]), (&json!(300 - alpha.failed), &json!(alpha.failed)), "{canary}");
    // Beta's canary saw none of it, and the others' routes are spin's.
    let beta = tenant_route(&report(&server), "beta", "text/plain").expect("beta's canary")["canary"].clone();
    assert_eq!((&beta["state"]["state"], &beta["share"], &beta["requests"]["stable"], &beta["requests"]["candidate"]), (&json!("stepping"), &json!(50), &json!(0), &json!(0)), "{beta}");
    for tenant in ["default", "gamma"] {
        assert_eq!(send_as(&mut conn, tenant, 50), plain_spin(50), "{tenant}");
    }

    // Beta's healthy candidate is promoted; alpha stays rolled back.
    let end = Instant::now() + 3 * STEP;
    let mut beta_sent = Answered::default();
    loop {
        let sent = send_as(&mut conn, "beta", 50);
        assert_eq!(sent.failed, 0, "beta: {sent:?}");
        beta_sent.spin += sent.spin;
        beta_sent.echo += sent.echo;
        let canary = tenant_route(&report(&server), "beta", "text/plain").expect("beta's canary")["canary"].clone();
        assert_ne!(canary["state"]["state"], "rolled-back", "{canary}");
        if canary["state"]["state"] == "promoted" {
            assert_eq!(canary["share"], 100, "{canary}");
            break;
        }
        assert!(Instant::now() < end, "beta's canary is not promoted after {beta_sent:?}: {canary}");
    }
    assert_eq!(send_as(&mut conn, "beta", 20), Answered { echo: 20, ..Answered::default() }, "promoted: the candidate answers beta");
    assert_eq!(send_as(&mut conn, "alpha", 50), plain_spin(50), "rolled back: spin answers alpha");
    for tenant in ["default", "gamma"] {
        assert_eq!(send_as(&mut conn, tenant, 50), plain_spin(50), "{tenant}");
    }
    let experiments = report(&server);
    let arms = |tenant: &str| -> Vec<(String, u64)> {
        let route = tenant_route(&experiments, tenant, "text/plain").expect("a canary route");
        route["arms"].as_array().expect("arms").iter().map(|a| (a["plugin"].as_str().unwrap_or("").to_owned(), a["requests"].as_u64().unwrap_or(0))).collect()
    };
    assert_eq!(arms("alpha"), [("spin".to_owned(), 350 - alpha.failed as u64), ("trap".to_owned(), alpha.failed as u64)]);
    assert_eq!(arms("beta"), [("spin".to_owned(), beta_sent.spin as u64), ("binary-echo".to_owned(), beta_sent.echo as u64 + 20)]);

    // Each tenant's state where a user sees it.
    let admin = server.admin.expect("admin").to_string();
    let printed = wasmux(&["experiments", "--admin", &admin]);
    assert!(printed.status.success(), "{printed:?}");
    let lines = &printed.stdout;
    let after = |heading: &str| lines.iter().position(|l| l == heading).and_then(|i| lines.get(i + 1)).cloned().unwrap_or_default();
    let alpha_line = after("tenant alpha, route text/plain: canary spin -> trap (steps 10 / 50 / 100 %, interleaved)");
    assert!(alpha_line.starts_with("rolled-back since ") && alpha_line.contains("rolled back by the error-rate guard"), "{lines:#?}");
    let beta_line = after("tenant beta, route text/plain: canary spin -> binary-echo (steps 50 / 100 %, interleaved)");
    assert!(beta_line.starts_with("promoted since ") && beta_line.contains("candidate binary-echo promoted"), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.starts_with("tenant default") || l.starts_with("tenant gamma")), "{lines:#?}");
    let (_, metrics) = server.admin_get("/metrics");
    let state = |tenant: &str, candidate: &str, state: &str| {
        metric(&metrics, &format!(r#"wasmux_canary_state{{tenant="{tenant}",route="text/plain",stable="spin",candidate="{candidate}",state="{state}"}}"#))
    };
    assert_eq!((state("alpha", "trap", "rolled-back"), state("beta", "binary-echo", "promoted")), (Some(1.0), Some(1.0)), "{metrics}");
    assert!(server.wait_for_log("canary: candidate trap rolled back by the error-rate guard", STEP), "{}", server.log());
    assert!(server.log().lines().any(|l| l.contains("tenant=\"alpha\"") && l.contains("canary: candidate trap rolled back")), "the log names the tenant: {}", server.log());

    // A restart keeps each tenant's decision.
    drop(conn);
    assert!(server.terminate(), "the server stops cleanly: {}", server.log());
    let server = serve(&config, &["--data-dir", data_dir]);
    let mut conn = server.connect();
    assert_eq!(send_as(&mut conn, "alpha", 30).failed, 0, "alpha's candidate gets nothing after the restart");
    for (tenant, state) in [("alpha", "rolled-back"), ("beta", "promoted")] {
        wait_for_tenant_canary(&server, tenant, "text/plain", STEP, |c| c["known"] == true && c["state"]["state"] == state);
    }
    assert_eq!(send_as(&mut conn, "alpha", 30), plain_spin(30));
    assert_eq!(send_as(&mut conn, "beta", 30), Answered { echo: 30, ..Answered::default() });
    assert_eq!(send_as(&mut conn, "default", 30), plain_spin(30));
}

#[test]
fn a_canary_of_the_servers_routes_is_each_tenants_own() {
    let config = format!("{FAILING_CANARY}\n[tenants.default]\n[tenants.alpha]\ntoken-sha256 = \"{}\"\n", wasmux::tenancy::TokenHash::of("alpha-token"));
    let data = tempfile::tempdir().expect("temporary directory");
    let server = serve(&config, &["--data-dir", data.path().to_str().expect("utf-8 path")]);
    for tenant in ["default", "alpha"] {
        wait_for_tenant_canary(&server, tenant, "text/plain", STEP, |c| c["known"] == true);
    }
    let mut conn = server.connect();
    let alpha = send_as(&mut conn, "alpha", 300);
    assert!((1..=5).contains(&alpha.failed), "alpha: {alpha:?}");
    wait_for_tenant_canary(&server, "alpha", "text/plain", STEP, |c| c["state"]["state"] == "rolled-back");
    // The default tenant's copy of the canary judged none of alpha's
    // requests: still at its first step, its candidate still served, also
    // after a few syncs with the store (where each tenant has its own).
    std::thread::sleep(4 * wasmux::experiments::store::SYNC_INTERVAL);
    let default = route(&report(&server), "text/plain")["canary"].clone();
    assert_eq!((&default["state"]["state"], &default["share"], &default["requests"]["candidate"]), (&json!("stepping"), &json!(10), &json!(0)), "{default}");
    let first = send_as(&mut conn, "default", 10);
    assert_eq!(first.failed, 1, "one request in ten to the candidate at 10 %: {first:?}");
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

/// Two splits: the guide's search with its fuzzy variant (outcomes `hit`
/// and `miss`), and `spin` with the failing `trap` (errors).
const TWO_SPLITS: &str = "[routes]\n\"text/json\" = { split = { \"search\" = 1, \"search@fuzzy\" = 1 } }\n\
                          \"text/plain\" = { split = { \"spin\" = 1, \"trap\" = 1 } }\n";

/// The series of a Prometheus answer, keyed by their labels `names`
/// (their values joined by spaces).
fn series(result: &Value, names: &[&str]) -> BTreeMap<String, f64> {
    let all = result.as_array().unwrap_or_else(|| panic!("not a vector: {result}"));
    all.iter()
        .map(|s| {
            let key: Vec<&str> = names.iter().map(|n| s["metric"][*n].as_str().unwrap_or("")).collect();
            let value = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no value in {s}"));
            (key.join(" "), value)
        })
        .collect()
}

#[test]
fn prometheus_scraping_the_fleet_counts_what_the_merged_view_counts() {
    let servers: Vec<Server> = (0..3).map(|_| serve(TWO_SPLITS, &[])).collect();
    let admins: Vec<std::net::SocketAddr> = servers.iter().map(|s| s.admin.expect("admin")).collect();
    let prometheus = Prometheus::start(&admins);
    // Each server its own number of requests: 100, 200 and 300 searches,
    // 20, 40 and 60 to spin or trap.
    for (i, server) in servers.iter().enumerate() {
        let mut conn = server.connect();
        for n in 0..(100 * (i + 1)) {
            conn.request(&crate::common::search(["ring", "neo", "Morph"][n % 3]));
        }
        for _ in 0..(20 * (i + 1)) {
            conn.request(&answer_please());
        }
    }
    prometheus.wait_for_scrapes_after(3, SystemTime::now());

    let mut args = vec!["experiments".to_owned(), "--json".to_owned()];
    for admin in &admins {
        args.extend(["--admin".to_owned(), admin.to_string()]);
    }
    let printed = wasmux(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(printed.status.success(), "{printed:?}");
    let merged: Value = serde_json::from_str(&printed.stdout.join("\n")).expect("the merged report is JSON");

    // The merged view's figures, keyed as Prometheus' series will be.
    let (mut requests, mut errors, mut outcomes, mut percentiles) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for name in ["text/json", "text/plain"] {
        for arm in route(&merged, name)["arms"].as_array().expect("arms") {
            let key = format!("default {name} {}", arm["plugin"].as_str().expect("a plugin"));
            requests.insert(key.clone(), arm["requests"].as_f64().expect("requests"));
            if arm["errors"].as_u64() > Some(0) {
                errors.insert(key.clone(), arm["errors"].as_f64().expect("errors"));
            }
            for (outcome, count) in arm["outcomes"].as_object().expect("outcomes") {
                outcomes.insert(format!("{key} {outcome}"), count.as_f64().expect("a count"));
            }
            percentiles.insert(key, arm["latency_ms"].clone());
        }
    }
    assert_eq!(requests.values().sum::<f64>(), 600.0 + 120.0, "the merged view counts every request: {requests:?}");
    assert_eq!(errors.values().sum::<f64>(), 60.0, "trap failed each of its requests: {errors:?}");

    // Prometheus' sums over the three servers: the same counts, exactly.
    let by_arm = ["tenant", "route", "plugin"];
    let query = |q: &str, names: &[&str]| series(&prometheus.query(q), names);
    assert_eq!(query("sum by (tenant, route, plugin) (wasmux_experiment_requests_total)", &by_arm), requests);
    assert_eq!(query("sum by (tenant, route, plugin) (wasmux_experiment_latency_seconds_count)", &by_arm), requests);
    assert_eq!(query("sum by (tenant, route, plugin) (wasmux_experiment_errors_total)", &by_arm), errors);
    assert_eq!(query("sum by (tenant, route, plugin, outcome) (wasmux_experiment_outcomes_total)", &["tenant", "route", "plugin", "outcome"]), outcomes);

    // Percentiles: the merged view gives the upper edge of the bucket that
    // holds the percentile; `histogram_quantile` interpolates inside the
    // same bucket, so it is at most one bucket width (a factor 2^(1/4))
    // below it.
    let bucket = 2_f64.powf(0.25);
    let mut widest = 1_f64;
    for (q, field) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
        let quantiles = query(&format!("histogram_quantile({q}, sum by (tenant, route, plugin, le) (wasmux_experiment_latency_seconds_bucket))"), &by_arm);
        assert_eq!(quantiles.keys().collect::<Vec<_>>(), percentiles.keys().collect::<Vec<_>>());
        for (key, seconds) in quantiles {
            let merged_ms = percentiles[&key][field].as_f64().unwrap_or_else(|| panic!("no {field} for {key}"));
            let prometheus_ms = seconds * 1e3;
            assert!(
                prometheus_ms <= merged_ms * (1.0 + 1e-9) && prometheus_ms > merged_ms / bucket * (1.0 - 1e-9),
                "{key} {field}: Prometheus {prometheus_ms} ms, the merged view {merged_ms} ms: not in one bucket"
            );
            widest = widest.max(merged_ms / prometheus_ms);
        }
    }
    eprintln!("Prometheus' percentiles were at most {:.1} % below the merged view's (a bucket: {:.1} %)", (1.0 - 1.0 / widest) * 100.0, (1.0 - 1.0 / bucket) * 100.0);
    drop(prometheus);
    drop(servers);
}
