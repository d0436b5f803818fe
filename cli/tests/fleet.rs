//! The fleet, end to end: three `wasmux serve` pulling their plugins from a
//! real registry (Debian's docker-registry), behind HAProxy with the
//! protocol health check and each server's agent. Clients keep sending
//! through HAProxy on kept connections while one server is drained
//! (SIGTERM) and restarted and a new version of `search` is pushed: every
//! request is answered correctly, and every server serves the new version
//! soon after the push. `wasmux bench --mode persistent` runs through the
//! drain too, and reports 0 failed.
//!
//! The drain closes each of its connections after an answer; a client's
//! next request on it meets the end of the stream before any byte of an
//! answer, and is sent again on a new connection, once: that many re-sends
//! and no more (one per connection the drained server held).
//!
//! The figures it prints are the ones in `docs/fleet.md`.


use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::haproxy::LoadBalancer;
use crate::common::registry::LocalRegistry;
use crate::common::{Answer, Process, Raw, Server, search};

const RABBIT: &str = "Follow the white rabbit. 🐰";
/// The first version of `search` (the guide's exact search) answers this;
/// the second (`search@fuzzy`'s component, pushed as `search`) finds the
/// rabbit by prefix.
const EXACT: &str = "No match for \"MORPH\".";

/// How soon after a push every server must serve the new version: the
/// servers poll every 500 ms, so this leaves room for a loaded machine.
const SWITCH_WITHIN: Duration = Duration::from_secs(20);

/// `--drain-delay` of the servers: after SIGTERM they keep accepting this
/// long, while HAProxy (asking each agent every second) stops sending.
const DRAIN_DELAY: Duration = Duration::from_millis(1500);

/// The clients of the test's own, on kept connections.
const CLIENTS: usize = 6;

/// `wasmux bench`'s connections through HAProxy during the drain.
const BENCH_CONNECTIONS: usize = 6;

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
    let drain_delay = format!("{}ms", DRAIN_DELAY.as_millis());
    let args = [
        "--plugins", &plugins, "--poll-interval", "500ms", "--agent", agent, "--drain-delay", &drain_delay,
        "--config", config.to_str().expect("utf-8"), "--cache-dir", cache.to_str().expect("utf-8"),
    ];
    Server::start_listening(&[listen], 1, &args)
}

/// Tallies of the clients.
#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    /// Requests whose connection ended (a FIN) before any byte of the
    /// answer: the drained server closed it between messages, and never
    /// read the request. Sent again on a new connection, as a client of
    /// any server does with a request that may run twice.
    resent: AtomicUsize,
    wrong: AtomicUsize,
}

/// How reading an answer went.
enum Reading {
    Answer(Vec<u8>),
    /// The end of the stream before any byte of it.
    EndedBeforeAnswer,
    Failed(String),
}

/// Reads one answer, telling the end of the stream before its first byte
/// (the request was never read) from any other failure (an answer cut off,
/// a reset, a timeout).
fn read_answer(raw: &mut Raw) -> Reading {
    let mut first = [0; 1];
    match raw.stream.read(&mut first) {
        Ok(0) => return Reading::EndedBeforeAnswer,
        Ok(_) => {}
        Err(e) => return Reading::Failed(format!("reading an answer: {e}")),
    }
    let mut rest = [0; 1];
    if let Err(e) = raw.stream.read_exact(&mut rest) {
        return Reading::Failed(format!("an answer cut off: {e}"));
    }
    let header_length = usize::from(u16::from_be_bytes([first[0], rest[0]]));
    let mut bytes = vec![first[0], rest[0]];
    bytes.resize(2 + header_length, 0);
    if let Err(e) = raw.stream.read_exact(&mut bytes[2..]) {
        return Reading::Failed(format!("an answer cut off: {e}"));
    }
    let Some(length) = serde_json::from_slice::<serde_json::Value>(&bytes[2..]).ok().and_then(|h| h["content-length"].as_u64()) else {
        return Reading::Failed(format!("an answer without a content-length: {:?}", String::from_utf8_lossy(&bytes)));
    };
    let start = bytes.len();
    bytes.resize(start + usize::try_from(length).unwrap_or(usize::MAX), 0);
    match raw.stream.read_exact(&mut bytes[start..]) {
        Ok(()) => Reading::Answer(bytes),
        Err(e) => Reading::Failed(format!("an answer cut off: {e}")),
    }
}

/// A client sending "MORPH" searches through `lb` on kept connections
/// until `stop`: every answer must be one of the two versions' answers. A
/// request whose connection ended before any byte of its answer is sent
/// again, once, on a new connection.
fn client(lb: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>, errors: Arc<std::sync::Mutex<Vec<String>>>) {
    let request = search("MORPH");
    let mut conn: Option<Raw> = None;
    let fail = |what: String| {
        tally.wrong.fetch_add(1, Ordering::Relaxed);
        errors.lock().unwrap_or_else(|e| e.into_inner()).push(what);
    };
    while !stop.load(Ordering::Relaxed) {
        let mut sent_again = false;
        let read = loop {
            let raw = conn.get_or_insert_with(|| Raw::connect(lb));
            if let Err(e) = raw.stream.write_all(&request) {
                break Reading::Failed(format!("sending: {e}"));
            }
            match read_answer(raw) {
                Reading::EndedBeforeAnswer if !sent_again => {
                    tally.resent.fetch_add(1, Ordering::Relaxed);
                    sent_again = true;
                    conn = None;
                }
                read => break read,
            }
        };
        match read {
            Reading::Answer(bytes) => {
                let answer = Answer::parse(&bytes);
                let result = answer.json()["result"].as_str().unwrap_or_default().to_owned();
                if result == RABBIT || result == EXACT {
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    fail(result);
                }
            }
            Reading::EndedBeforeAnswer => {
                fail("the connection ended before the answer, twice".into());
                conn = None;
            }
            Reading::Failed(e) => {
                fail(e);
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
    let clients: Vec<_> = (0..CLIENTS)
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

    // `wasmux bench` on kept connections through HAProxy, at a gentle rate,
    // for longer than the drain takes.
    let mut bench = std::process::Command::new(env!("CARGO_BIN_EXE_wasmux"));
    let connections = BENCH_CONNECTIONS.to_string();
    bench.args(["bench", &lb.addr.to_string(), "--mode", "persistent", "-c", &connections, "--rate", "400", "--duration", "8s", "--json"]);
    let mut bench = Process::spawn(&mut bench);
    let connected = Instant::now() + crate::common::STEP;
    while lb.servers().values().map(|stat| stat.current).sum::<u64>() < (CLIENTS + BENCH_CONNECTIONS) as u64 {
        assert!(Instant::now() < connected, "the bench did not connect: {:?}", lb.servers());
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_for_answers(100);

    // Drain the second server: the agent says drain, HAProxy takes it out,
    // after the drain delay it stops accepting, its connections close after
    // their current answer (each client's next request meets the end of
    // the stream, unread), it exits.
    let held = lb.servers()["wasmux2"].current;
    let started = Instant::now();
    let (listen, agent) = (servers[1].addr.to_string(), servers[1].agent.expect("an agent").to_string());
    assert!(servers[1].terminate(), "the drained server did not exit cleanly; log:\n{}", servers[1].log());
    let drained_in = started.elapsed();
    let log = servers[1].log();
    assert!(log.contains("SIGTERM: draining"), "{log}");
    assert!(log.contains("every request answered; stopped"), "the drain did not finish within its timeout: {log}");
    assert!(drained_in >= DRAIN_DELAY, "the drained server exited {drained_in:?} after SIGTERM, before its drain delay");
    assert!(bench.is_running(), "the bench ended before the drain did: it did not run through it");
    wait_for_answers(200);

    let report = bench.finish(crate::common::STEP + Duration::from_secs(8));
    let json: serde_json::Value = serde_json::from_str(&report.stdout.join("\n")).unwrap_or_else(|e| panic!("no bench report ({e}): {report:?}"));
    assert!(report.status.success() && json["errors"] == 0 && json["ok"].as_u64() > Some(0), "the bench through the drain: {json}");
    let bench_resent = json["resent"].as_u64().expect("resent");

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
        "fleet: {answered} requests answered through HAProxy, {wrong} wrong or failed, {resent} sent again after the drain closed their connection; \
         wasmux bench --mode persistent through the drain: {} answered, {} failed, {bench_resent} sent again; the drained server held {held} connections \
         and exited {drained_in:?} after SIGTERM (drain delay {DRAIN_DELAY:?}); every server served the new version {all_switched:?} after the push ({switched:?})",
        json["ok"], json["errors"],
    );
    assert_eq!(wrong, 0, "failed or wrong answers: {:?}", errors.lock().unwrap_or_else(|e| e.into_inner()));
    // One re-send per connection the drain closed, and no more: the clients'
    // ones at most, the bench's at most, both together at most those the
    // drained server held; and at least one, or the drain closed nothing.
    assert!(resent <= CLIENTS && bench_resent <= BENCH_CONNECTIONS as u64, "{resent} and {bench_resent} re-sends");
    let total = resent as u64 + bench_resent;
    assert!((1..=held).contains(&total), "{total} re-sends for the {held} connections the drained server held");
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
