//! The admin endpoint's live page of experiments, opened in headless
//! Chromium as a person would open it: what it shows once its script has
//! read `/experiments`.
//!
//! Chromium is Debian's `chromium` package; when it is missing, the test
//! installs it with apt-get (as root, or with `sudo -n`). Only if that is
//! impossible does it skip, saying so loudly.


use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Process, Server};
use serde_json::Value;

/// Chromium, found or installed; `None` (after saying why) if neither works.
fn chromium() -> Option<PathBuf> {
    let find = || ["chromium", "chromium-browser"].iter().find_map(|name| wasmux_toolchain::debian::which(name));
    if let Some(found) = find() {
        return Some(found);
    }
    eprintln!("admin_page: chromium is not installed; installing Debian's chromium package with apt-get");
    match wasmux_toolchain::debian::install(&["chromium"]) {
        Ok(()) if find().is_some() => find(),
        outcome => {
            let why = match outcome {
                Err(e) => format!("{e:#}"),
                Ok(()) => "apt-get succeeded but no chromium is on the PATH".to_owned(),
            };
            eprintln!("\n{0}\nSKIPPED: the admin page was NOT tested in a browser: cannot install chromium: {why}\n{0}\n", "!".repeat(78));
            None
        }
    }
}

#[test]
fn the_live_page_shows_each_arm_its_numbers_charts_and_verdict() {
    let Some(chromium) = chromium() else { return };
    let config = "[routes]\n\"text/json\" = { split = { \"search\" = 1, \"search@fuzzy\" = 1 } }\n\"*\" = \"binary-echo\"\n";
    let server = Server::start_configured_with(config, &crate::common::plugins_dir(), &["--admin", "127.0.0.1:0"]);
    let mut conn = server.connect();
    // Each query twice: the arms alternate, so each answers it once. On
    // every four, search finds two and search@fuzzy three ("Morph").
    for _ in 0..50 {
        for query in ["morpheus", "Morph", "neo", "ring"] {
            for _ in 0..2 {
                conn.request(&crate::common::search(query));
            }
        }
    }
    // The charts show finished windows: wait for the first to close.
    let end = Instant::now() + crate::common::STEP;
    loop {
        let (_, body) = server.admin_get("/experiments");
        let report: Value = serde_json::from_str(&body).expect("/experiments is JSON");
        let windows = &report["tenants"][0]["routes"][0]["arms"][0]["series"]["requests"];
        if windows.as_array().is_some_and(|w| w.iter().any(|n| n.as_u64() > Some(0))) {
            break;
        }
        assert!(Instant::now() < end, "no window of requests closed: {report}");
        std::thread::sleep(Duration::from_millis(100));
    }

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
    let expected = [
        "tenant default",
        "route text/json",
        "split search 1 / search@fuzzy 1",
        "<h4>search</h4>",
        "<h4>search@fuzzy</h4>",
        &format!("version {}", server.plugin_version("search")),
        "<dt>requests</dt><dd>200</dd>",
        "<dt>hit</dt><dd>50.0% (100)</dd>",
        "<dt>hit</dt><dd>75.0% (150)</dd>",
        "<dt>miss</dt><dd>25.0% (50)</dd>",
        "search@fuzzy against search",
        "hit rate: 50.0% → 75.0%, +25.0 points (95% anytime-valid CI +5.0 to +43.8)<span class=\"tag\">significant</span>",
        "error rate: 0.00% → 0.00%, +0.00 points (95% anytime-valid CI -4.61 to +4.61)<span class=\"tag\">not significant</span>",
        "a difference that is not there is shown as significant in at most 5 %",
        "<h5>requests per second</h5>",
        "<h5>error rate</h5>",
        "<h5>p99 latency, ms</h5>",
        "<h5>hit rate</h5>",
        "data-arm=\"search@fuzzy\"",
    ];
    for text in expected {
        assert!(dom.contains(text), "the page does not show {text:?}:\n{dom}");
    }
    assert!(!dom.contains("cannot read /experiments"), "{dom}");
}

/// Opens the live page in headless Chromium; its DOM once the script ran.
fn page_dom(chromium: &std::path::Path, server: &Server) -> String {
    let admin = server.admin.expect("an admin address");
    let profile = tempfile::tempdir().expect("a profile directory");
    let run = Process::run(
        Command::new(chromium)
            .args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--virtual-time-budget=5000", "--dump-dom"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("http://{admin}/")),
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "chromium failed: {}", run.stderr);
    run.stdout.join("\n")
}

#[test]
fn the_live_page_shows_a_rolled_back_canary_with_its_guard() {
    let Some(chromium) = chromium() else { return };
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
    let dom = page_dom(&chromium, &server);
    for text in [
        "shares spin 100 / trap 0",
        "canary spin → trap: rolled back by the error-rate guard: trap failed ",
        "(max-extra-error-rate 0.01); every request goes to spin",
    ] {
        assert!(dom.contains(text), "the page does not show {text:?}:\n{dom}");
    }
}
