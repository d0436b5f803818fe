//! The admin endpoint's live page of experiments, opened in headless
//! Chromium as a person would open it: what it shows once its script has
//! read `/experiments`.
//!
//! Chromium is Debian's `chromium` package; when it is missing, the test
//! installs it with apt-get (as root, or with `sudo -n`). If that is
//! impossible the test fails, saying why: a test that cannot run fails, it
//! never passes by skipping.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Process, Server};
use serde_json::Value;

/// Chromium, found or installed.
fn chromium() -> PathBuf {
    let find = || ["chromium", "chromium-browser"].iter().find_map(|name| wasmux_toolchain::debian::which(name));
    if let Some(found) = find() {
        return found;
    }
    eprintln!("admin_page: chromium is not installed; installing Debian's chromium package with apt-get");
    match wasmux_toolchain::debian::install(&["chromium"]) {
        Ok(()) => find().unwrap_or_else(|| panic!("apt-get installed chromium but no chromium is on the PATH")),
        Err(e) => panic!("the admin page cannot be tested in a browser: cannot install Debian's chromium package: {e:#}"),
    }
}

/// The HTML of the first element opened by `open` in `dom` and everything
/// after it up to the next one, for each such element: the parts of the
/// page, one per arm or chart.
fn parts<'a>(dom: &'a str, open: &str) -> Vec<&'a str> {
    dom.split(open).skip(1).collect()
}

/// The `points` of every `<polyline>` in `html`, by its `data-arm`.
fn polylines(html: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    html.split("<polyline ")
        .skip(1)
        .map(|tag| {
            let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
            let attribute = |name: &str| {
                tag.split(&format!("{name}=\"")).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default().to_owned()
            };
            let points = attribute("points")
                .split_whitespace()
                .filter_map(|point| point.split_once(',').and_then(|(x, y)| Some((x.parse().ok()?, y.parse().ok()?))))
                .collect();
            (attribute("data-arm"), points)
        })
        .collect()
}

/// The arms' series of requests per window, as `/experiments` reports them.
fn windows_of_requests(server: &Server) -> Vec<Vec<u64>> {
    let (_, body) = server.admin_get("/experiments");
    let report: Value = serde_json::from_str(&body).expect("/experiments is JSON");
    let arms = report["tenants"][0]["routes"][0]["arms"].as_array().cloned().unwrap_or_default();
    arms.iter().map(|arm| arm["series"]["requests"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect()).collect()
}

/// Waits until each arm has `windows` closed windows with requests in them.
fn wait_for_windows(server: &Server, windows: usize) {
    let end = Instant::now() + crate::common::STEP;
    loop {
        let series = windows_of_requests(server);
        if series.len() == 2 && series.iter().all(|arm| arm.iter().filter(|&&n| n > 0).count() >= windows) {
            return;
        }
        assert!(Instant::now() < end, "no {windows} windows of requests closed: {series:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_live_page_shows_each_arm_its_numbers_charts_and_verdict() {
    let chromium = chromium();
    let config = "[routes]\n\"text/json\" = { split = { \"search\" = 1, \"search@fuzzy\" = 1 } }\n\"*\" = \"binary-echo\"\n";
    let server = Server::start_configured_with(config, &crate::common::plugins_dir(), &["--admin", "127.0.0.1:0"]);
    let mut conn = server.connect();
    // Each query twice: the arms alternate, so each answers it once. On
    // every four, search finds two and search@fuzzy three ("Morph").
    let mut rounds = |n: usize| {
        for _ in 0..n {
            for query in ["morpheus", "Morph", "neo", "ring"] {
                for _ in 0..2 {
                    conn.request(&crate::common::search(query));
                }
            }
        }
    };
    // The charts show finished windows (of 2 s), and a line needs two: the
    // rounds are sent in two windows, each waited for.
    rounds(25);
    wait_for_windows(&server, 1);
    rounds(25);
    wait_for_windows(&server, 2);

    let admin = server.admin.expect("an admin address");
    let (status, page) = server.admin_get("/");
    assert!(status == 200 && page.contains("<script src=\"page.js\">"), "{status} {page}");
    let profile = tempfile::tempdir().expect("a profile directory");
    let run = Process::run(
        Command::new(&chromium)
            .args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--virtual-time-budget=5000", "--dump-dom"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("http://{admin}/")),
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "chromium failed: {}", run.stderr);
    let dom = run.stdout.join("\n");
    assert!(!dom.contains("cannot read /experiments"), "{dom}");
    for text in [
        "tenant default",
        "route text/json",
        "split search 1 / search@fuzzy 1",
        "search@fuzzy against search",
        // 200 requests an arm: the anytime-valid interval (at 100 it still
        // held 0).
        "hit rate: 50.0% → 75.0%, +25.0 points (95% anytime-valid CI +5.0 to +43.8)<span class=\"tag\">significant</span>",
        "error rate: 0.00% → 0.00%, +0.00 points (95% anytime-valid CI -4.61 to +4.61)<span class=\"tag\">not significant</span>",
        "a difference that is not there is shown as significant in at most 5 %",
    ] {
        assert!(dom.contains(text), "the page does not show {text:?}:\n{dom}");
    }

    // Each arm's panel, with its own figures: 200 requests each, no error,
    // search finding half and search@fuzzy three in four.
    let panels = parts(&dom, "<div class=\"arm\"");
    assert_eq!(panels.len(), 2, "two arms:\n{dom}");
    for (panel, (plugin, hits, misses)) in panels.iter().zip([("search", "50.0% (100)", "50.0% (100)"), ("search@fuzzy", "75.0% (150)", "25.0% (50)")]) {
        let panel = &panel[..panel.find("<div class=\"verdicts\"").unwrap_or(panel.len())];
        for row in [
            format!("<h4>{plugin}</h4>"),
            format!("version {}", server.plugin_version(plugin)),
            "<dt>weight</dt><dd>1</dd>".to_owned(),
            "<dt>requests</dt><dd>200</dd>".to_owned(),
            "<dt>errors</dt><dd>0.00% (0)</dd>".to_owned(),
            format!("<dt>hit</dt><dd>{hits}</dd>"),
            format!("<dt>miss</dt><dd>{misses}</dd>"),
        ] {
            assert!(panel.contains(&row), "the {plugin} arm does not show {row:?}:\n{panel}");
        }
    }

    // Each chart draws a line for each arm, through both windows.
    let charts = parts(&dom, "<div class=\"chart\">");
    let titles: Vec<&str> = charts.iter().filter_map(|chart| chart.split("<h5>").nth(1)?.split("</h5>").next()).collect();
    assert_eq!(titles, ["requests per second", "error rate", "p99 latency, ms", "hit rate", "miss rate"], "{dom}");
    for (chart, title) in charts.iter().zip(&titles) {
        let lines = polylines(chart);
        for arm in ["search", "search@fuzzy"] {
            let drawn = lines.iter().any(|(name, points)| {
                name == arm && points.len() >= 2 && points.iter().any(|&(x, _)| (x - points[0].0).abs() > 1.0)
            });
            assert!(drawn, "the {title:?} chart draws no line for {arm}: {lines:?}");
        }
    }
}

#[test]
fn the_live_page_shows_a_rolled_back_canary_with_its_guard() {
    let chromium = chromium();
    let config = "[routes.\"text/plain\".canary]\nstable = \"spin\"\ncandidate = \"trap\"\nsteps = [10, 50, 100]\nstep-after = \"1s\"\n\
        min-requests = 20\nmax-extra-error-rate = 0.01\nmax-p99-ratio = 3.0\n";
    let data = tempfile::tempdir().expect("temporary directory");
    let server = Server::start_with_fixtures_and(config, &["--admin", "127.0.0.1:0", "--data-dir", data.path().to_str().expect("utf-8 path")]);
    let answer = crate::common::message(
        serde_json::json!({"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8"}),
        b"answer",
    );
    // Until the canary's state is read, the candidate gets nothing: wait.
    let end = Instant::now() + crate::common::STEP;
    while !server.admin_get("/experiments").1.contains("\"known\":true") {
        assert!(Instant::now() < end, "the canary's state was never read");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut conn = server.connect();
    for _ in 0..100 {
        conn.request(&answer);
    }
    let admin = server.admin.expect("an admin address");
    let profile = tempfile::tempdir().expect("a profile directory");
    let run = Process::run(
        Command::new(&chromium)
            .args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--virtual-time-budget=5000", "--dump-dom"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("http://{admin}/")),
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "chromium failed: {}", run.stderr);
    let dom = run.stdout.join("\n");
    for text in [
        "shares spin 100 / trap 0",
        "canary spin → trap: rolled back by the error-rate guard: trap failed ",
        "(max-extra-error-rate 0.01); every request goes to spin",
    ] {
        assert!(dom.contains(text), "the page does not show {text:?}:\n{dom}");
    }
}
