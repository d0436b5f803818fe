//! The fleet, end to end: three `wasmux serve` pulling their plugins from a
//! real registry (Debian's docker-registry), behind HAProxy with the
//! protocol health check and each server's agent. Clients keep sending
//! through HAProxy while one server is drained (SIGTERM) and restarted and
//! a new version of `search` is pushed: every request is answered
//! correctly, and every server serves the new version soon after the push.
//!
//! The figures it prints are the ones in `docs/fleet.md`.


use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::haproxy::LoadBalancer;
use crate::common::registry::LocalRegistry;
use crate::common::{Answer, Raw, Server, search};

const RABBIT: &str = "Follow the white rabbit. 🐰";
/// The first version of `search` (the guide's exact search) answers this;
/// the second (`search@fuzzy`'s component, pushed as `search`) finds the
/// rabbit by prefix.
const EXACT: &str = "No match for \"MORPH\".";

/// How soon after a push every server must serve the new version: the
/// servers poll every 500 ms, so this leaves room for a loaded machine.
const SWITCH_WITHIN: Duration = Duration::from_secs(20);

/// `wasmux push FILE TARGET`.
fn push(file: &std::path::Path, target: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmux")).arg("push").arg(file).arg(target).output().expect("run wasmux push");
    assert!(out.status.success(), "wasmux push failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pushed "), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A server of the fleet: its plugins from `repository`, its own cache, an
/// agent, on `listen`. Its configuration is in `dir`.
fn start_server(repository: &str, listen: &str, agent: &str, dir: &std::path::Path) -> Server {
    // This test is about drains and swaps, not deadlines: on a loaded CI
    // machine, a server compiling a new version can hold the cores longer
    // than the default 100 ms a call may take.
    let config = dir.join("wasmux.toml");
    std::fs::write(&config, "[limits]\nplugin-deadline = \"10s\"\n").expect("write the configuration");
    let plugins = format!("oci://{repository}");
    let cache = dir.join("cache");
    let args = [
        "--plugins", &plugins, "--poll-interval", "500ms", "--agent", agent, "--drain-delay", "1500ms",
        "--config", config.to_str().expect("utf-8"), "--cache-dir", cache.to_str().expect("utf-8"),
    ];
    Server::start_listening(&[listen], 1, &args)
}

/// Tallies of the clients.
#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    /// Connections closed by a draining server before it read the request:
    /// sent again on a new connection, as a client of any server does.
    resent: AtomicUsize,
    wrong: AtomicUsize,
}

/// A client sending "MORPH" searches through `lb` on kept connections
/// until `stop`: every answer must be one of the two versions' answers.
fn client(lb: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>, errors: Arc<std::sync::Mutex<Vec<String>>>) {
    let request = search("MORPH");
    let mut conn: Option<Raw> = None;
    while !stop.load(Ordering::Relaxed) {
        let raw = conn.get_or_insert_with(|| Raw::connect(lb));
        raw.send(&request);
        match raw.try_read_message() {
            Ok(bytes) => {
                let answer = Answer::parse(&bytes);
                let result = answer.json()["result"].as_str().unwrap_or_default().to_owned();
                if result == RABBIT || result == EXACT {
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.wrong.fetch_add(1, Ordering::Relaxed);
                    errors.lock().unwrap_or_else(|e| e.into_inner()).push(result);
                }
            }
            // Closed at a message boundary with nothing read: the server
            // was draining and never saw the request. Send it again.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tally.resent.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            Err(e) => {
                tally.wrong.fetch_add(1, Ordering::Relaxed);
                errors.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{e}"));
                conn = None;
            }
        }
    }
}

#[test]
fn a_fleet_drains_restarts_and_switches_versions_without_losing_a_request() {
    let registry = LocalRegistry::start();
    let repository = registry.repository("fleet");
    let plugins = crate::common::plugins_dir();
    push(&plugins.join("search.wasm"), &repository);
    push(&plugins.join("binary-echo.wasm"), &repository);

    let caches: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("a cache dir")).collect();
    let mut servers: Vec<Server> =
        caches.iter().map(|cache| start_server(&repository, "127.0.0.1:0", "127.0.0.1:0", cache.path())).collect();
    let addrs: [SocketAddr; 3] = [servers[0].addr, servers[1].addr, servers[2].addr];
    let agents: [u16; 3] = [0, 1, 2].map(|i: usize| servers[i].agent.expect("an agent").port());
    let lb = LoadBalancer::start(addrs, agents);
    for name in ["wasmux1", "wasmux2", "wasmux3"] {
        lb.wait_for_status(name, "UP", crate::common::STEP);
    }
    for server in &servers {
        assert_eq!(server.connect().request(&search("MORPH")).result(), EXACT);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (stop, tally, errors) = (Arc::clone(&stop), Arc::clone(&tally), Arc::clone(&errors));
            std::thread::spawn(move || client(lb.addr, stop, tally, errors))
        })
        .collect();
    let wait_for_answers = |n: usize| {
        let end = Instant::now() + crate::common::STEP;
        let start = tally.answered.load(Ordering::Relaxed);
        while tally.answered.load(Ordering::Relaxed) < start + n {
            assert!(Instant::now() < end, "the clients are not being answered");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for_answers(200);

    // Drain the second server: the agent says drain, HAProxy takes it out,
    // its connections close after their current answer, it exits.
    let started = Instant::now();
    let (listen, agent) = (servers[1].addr.to_string(), servers[1].agent.expect("an agent").to_string());
    assert!(servers[1].terminate(), "the drained server did not exit cleanly; log:\n{}", servers[1].log());
    let drained_in = started.elapsed();
    assert!(servers[1].log().contains("SIGTERM: draining"), "{}", servers[1].log());
    wait_for_answers(200);
    // ... and comes back on the same ports.
    servers[1] = start_server(&repository, &listen, &agent, caches[1].path());
    lb.wait_for_status("wasmux2", "UP", crate::common::STEP);
    wait_for_answers(200);

    // A new version of `search` is pushed.
    let pushed = Instant::now();
    push(&crate::common::root().join("target/plugins/search@fuzzy.wasm"), &format!("{repository}:search"));
    let mut switched = Vec::new();
    for server in &servers {
        let mut conn = server.connect();
        loop {
            if conn.request(&search("MORPH")).result() == RABBIT {
                switched.push(pushed.elapsed());
                break;
            }
            assert!(pushed.elapsed() < SWITCH_WITHIN, "a server still serves the old version {SWITCH_WITHIN:?} after the push; log:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_for_answers(200);
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().expect("a client"));

    let (answered, resent, wrong) =
        (tally.answered.load(Ordering::Relaxed), tally.resent.load(Ordering::Relaxed), tally.wrong.load(Ordering::Relaxed));
    let all_switched = switched.iter().max().copied().unwrap_or_default();
    println!(
        "fleet: {answered} requests answered through HAProxy, {wrong} wrong or failed, {resent} sent again after a drain closed their connection; \
         the drained server exited {drained_in:?} after SIGTERM; every server served the new version {all_switched:?} after the push ({switched:?})"
    );
    assert_eq!(wrong, 0, "failed or wrong answers: {:?}", errors.lock().unwrap_or_else(|e| e.into_inner()));
}

#[test]
fn a_server_starts_from_its_cache_when_the_registry_is_down() {
    let mut registry = LocalRegistry::start();
    let repository = registry.repository("cached");
    let plugins = crate::common::plugins_dir();
    push(&plugins.join("search.wasm"), &repository);
    let dir = tempfile::tempdir().expect("a server dir");
    {
        let server = start_server(&repository, "127.0.0.1:0", "127.0.0.1:0", dir.path());
        assert_eq!(server.connect().request(&search("morpheus")).result(), RABBIT);
    }
    registry.stop();
    let server = start_server(&repository, "127.0.0.1:0", "127.0.0.1:0", dir.path());
    assert!(server.wait_for_log("cannot be reached", crate::common::STEP), "{}", server.log());
    assert!(server.log().contains("serving the 1 plugins pulled before, from the local cache"), "{}", server.log());
    assert_eq!(server.connect().request(&search("morpheus")).result(), RABBIT);
}
