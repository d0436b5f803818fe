//! Python and JavaScript components in the runtime: the guide's search in
//! every language answers as the guide's logic does (beyond the guide's
//! six requests), the WASI subset reaches nothing outside (a Python probe
//! tries), its wall clock is the host's and its monotonic clock the
//! instance's (a Rust fixture reads them), the
//! instance pool's refusals name the setting to raise, and
//! `[plugins.NAME] wasi = false` refuses a component that imports WASI.
//!
//! The components are those `cargo xtask test` builds with `wasmux build`
//! (`target/lang-plugins`); their compiled code is shared through the test
//! cache, so each is compiled once per run.


use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Server, lang_plugin, test_cache};
use wasmux::client::guide_request;
use wasmux::message::Message;
use wasmux::plugins::Plugin;
use wasmux::runtime::{CallContext, PluginError, AllocatorLimits, Runtime, RuntimeSettings, Wasi};
use wasmux::message::HandlerError;

fn runtime_with(allocator: AllocatorLimits) -> Runtime {
    let settings = RuntimeSettings { max_concurrent_calls: 2, cache_dir: Some(test_cache()), allocator, ..RuntimeSettings::default() };
    Runtime::new(settings).expect("a runtime")
}

fn load(runtime: &Runtime, name: &str, path: &Path) -> Plugin {
    let bytes = std::fs::read(path).expect("the component");
    Plugin::load(runtime, name, wasmux::digest::Digest::of(&bytes), &bytes, Wasi::Allowed).unwrap_or_else(|e| panic!("{name} does not load: {e:#}"))
}

fn call(plugin: &Plugin, request: &Message, deadline: Duration) -> Result<Message, PluginError> {
    let mut context = CallContext::default();
    context.limits.deadline = deadline;
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    tokio.block_on(plugin.call(request, &context)).map(|(answer, _outcomes)| answer)
}

/// The guide's requests and some it does not send, with the answer the
/// guide's logic (the Rust `wasmux-guide`) gives each.
fn search_cases() -> Vec<(Message, Result<Vec<u8>, &'static str>)> {
    let mut cases: Vec<(Message, Result<Vec<u8>, &'static str>)> = ["morpheus", "ring", "\u{1f436}", "neo", ""]
        .into_iter()
        .map(|value| {
            let request = guide_request("search", value);
            let answer = wasmux_guide::search(&request.content, "utf-8").expect("a guide answer");
            (request, Ok(answer))
        })
        .collect();
    for content in [
        &br#"{"action": "find", "value": "neo"}"#[..],
        br#"{"value": "neo"}"#,
        br#"{"action": "search"}"#,
        br#"{"action": "search", "value": ["a", 1, null, true]}"#,
        "{\"action\": \"search\", \"value\": \"line\\nbreak \\u0001 \\\"q\\\" caf\u{e9}\"}".as_bytes(),
    ] {
        let answer = wasmux_guide::search(content, "utf-8").expect("a guide answer");
        cases.push((Message::new("text/json", "utf-8", content.to_vec()), Ok(answer)));
    }
    let latin = b"{\"action\": \"search\", \"value\": \"caf\xe9\"}".to_vec();
    cases.push((Message::new("text/json", "latin-1", latin.clone()), Ok(wasmux_guide::search(&latin, "latin-1").expect("an answer"))));
    cases.push((Message::new("text/json", "utf-8", b"{nope".to_vec()), Err("bad-request")));
    cases.push((Message::new("text/json", "utf-8", b"[1]".to_vec()), Err("bad-request")));
    cases.push((Message::new("text/json", "utf-16", b"{}".to_vec()), Err("unsupported")));
    cases
}

#[test]
fn the_search_in_every_language_answers_as_the_guides_logic() {
    let runtime = runtime_with(AllocatorLimits::default());
    for name in ["search", "search-py", "search-js"] {
        let plugin = load(&runtime, name, &lang_plugin(name));
        for (request, expected) in search_cases() {
            let shown = String::from_utf8_lossy(&request.content).into_owned();
            // Interpreters on a busy machine in a debug build: the deadline
            // is not under test.
            match (call(&plugin, &request, Duration::from_secs(20)), expected) {
                (Ok(answer), Ok(expected)) => {
                    assert_eq!(String::from_utf8_lossy(&answer.content), String::from_utf8_lossy(&expected), "{name}: {shown}");
                    assert_eq!((answer.header.content_type.as_str(), answer.header.content_encoding.as_str()), ("text/json", "utf-8"));
                }
                (Err(PluginError::Handler(error)), Err(kind)) => {
                    let got = match &error {
                        HandlerError::BadRequest(_) => "bad-request",
                        HandlerError::Unsupported(_) => "unsupported",
                        HandlerError::Internal(_) => "internal",
                    };
                    assert_eq!(got, kind, "{name}: {shown}: {error:?}");
                }
                (got, expected) => panic!("{name}: {shown}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}

/// A Python plugin that tries, on request, each thing a guest might reach
/// for, and answers what it got. `wasmux build` makes `import socket` fail
/// with an error naming what the host refuses; that is a courtesy to
/// authors, not the sandbox, so the probe removes it to try the host itself.
const PROBE: &str = r#"
import sys
sys.meta_path[:] = [finder for finder in sys.meta_path if type(finder).__name__ != "Refusals"]

import json, os, random, socket, time

import wit_world
from wit_world.imports import types


def attempt(what):
    try:
        return {"ok": repr(what())}
    except BaseException as e:
        return {"refused": type(e).__name__}


def probe(action, port):
    if action == "print":
        print("to stdout")
        sys.stdout.flush()
        sys.stderr.write("to stderr\nunfinished")
        return {}
    if action == "reach":
        return {
            "environ": dict(os.environ),
            "argv": sys.argv,
            "listdir": attempt(lambda: os.listdir("/")),
            "open": attempt(lambda: open("/etc/hostname").read()),
            "cwd": attempt(os.getcwd),
            "connect": attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=1)),
            "resolve": attempt(lambda: socket.getaddrinfo("localhost", 80)),
            "stdin": attempt(lambda: sys.stdin.read()),
            "time": time.time(),
            "urandom": os.urandom(8).hex(),
        }
    if action == "sleep":
        time.sleep(30)
    if action == "exit":
        sys.exit(3)
    return {"unknown": action}


class WitWorld(wit_world.WitWorld):
    def handle(self, request: types.Request) -> types.Response:
        action, _, port = request.content.decode().partition(" ")
        content = json.dumps(probe(action, int(port or 0))).encode()
        return types.Response("text/json", "utf-8", [], content)
"#;

#[test]
fn the_wasi_subset_reaches_nothing_outside() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let project = dir.path().join("probe");
    wasmux_toolchain::new_project("probe", wasmux_toolchain::Language::Python, &project).expect("a new project");
    std::fs::write(project.join("app.py"), PROBE).expect("write app.py");
    let options = wasmux_toolchain::BuildOptions::new(test_cache());
    let out = wasmux_toolchain::build_project_with(&project, &project.join("dist"), &options).expect("the probe builds");
    let runtime = runtime_with(AllocatorLimits::default());
    let plugin = load(&runtime, "probe", &out);
    let ask = |content: &str, deadline: Duration| call(&plugin, &Message::new("text/plain", "utf-8", content.as_bytes().to_vec()), deadline);

    // Nothing outside: no environment, arguments, files or network; stdin empty.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
    listener.set_nonblocking(true).expect("non-blocking");
    let port = listener.local_addr().expect("its address").port();
    let answer = ask(&format!("reach {port}"), Duration::from_secs(20)).expect("an answer");
    let reach: serde_json::Value = serde_json::from_slice(&answer.content).expect("JSON");
    assert_eq!(reach["environ"], serde_json::json!({}), "{reach}");
    assert!(reach["argv"].as_array().is_some_and(|argv| argv.iter().all(|a| a.as_str().is_some_and(str::is_empty))), "{reach}");
    for key in ["listdir", "open", "connect", "resolve"] {
        assert!(reach[key].get("refused").is_some(), "{key}: {reach}");
    }
    assert!(reach["stdin"]["ok"] == "''" || reach["stdin"].get("refused").is_some(), "{reach}");
    assert!(listener.accept().is_err(), "the plugin connected out");
    // The host's clock and random numbers.
    assert!(reach["time"].as_f64().is_some_and(|t| t > 1.7e9), "{reach}");
    let again = ask(&format!("reach {port}"), Duration::from_secs(20)).expect("an answer");
    let again: serde_json::Value = serde_json::from_slice(&again.content).expect("JSON");
    assert_ne!(reach["urandom"], again["urandom"], "the same random bytes on two instances");

    // Standard output and error become the plugin's log lines.
    let log = Arc::new(Mutex::new(Vec::new()));
    let writer = Arc::clone(&log);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || LogWriter(Arc::clone(&writer)))
        .finish();
    tracing::subscriber::with_default(subscriber, || ask("print", Duration::from_secs(20)).expect("an answer"));
    let log = String::from_utf8_lossy(&log.lock().expect("the log")).into_owned();
    let line = |text: &str| log.lines().find(|line| line.contains(text)).unwrap_or_else(|| panic!("no {text:?} in the log:\n{log}")).to_owned();
    assert!(line("to stdout").contains("INFO") && line("to stdout").contains("plugin=probe"), "{log}");
    assert!(line("to stderr").contains("WARN"), "{log}");
    assert!(line("unfinished").contains("WARN"), "the unfinished line is logged when the call ends: {log}");

    // A wait on the clock ends at the deadline; exit ends the call as a failure.
    match ask("sleep", Duration::from_millis(500)) {
        Err(PluginError::Timeout(_)) => {}
        other => panic!("a sleeping plugin was not stopped at its deadline: {other:?}"),
    }
    match ask("exit", Duration::from_secs(20)) {
        Err(PluginError::Trap(_)) => {}
        other => panic!("sys.exit did not end the call as a failure: {other:?}"),
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A component over a limit of the instance pool is refused with the limit
/// and the setting that raises it named, whichever language it is in.
#[test]
fn a_pool_too_small_names_the_setting_to_raise() {
    let cases = [
        ("search", AllocatorLimits { table_elements: 1, ..AllocatorLimits::default() }, "max-table-elements (now 1)"),
        ("search-py", AllocatorLimits { core_instances: 8, ..AllocatorLimits::default() }, "max-core-instances-per-plugin (now 8)"),
        ("search-py", AllocatorLimits { tables: 1, ..AllocatorLimits::default() }, "max-tables-per-plugin (now 1)"),
        ("search-js", AllocatorLimits { table_elements: 10, ..AllocatorLimits::default() }, "max-table-elements (now 10)"),
    ];
    for (name, pool, setting) in cases {
        let bytes = std::fs::read(lang_plugin(name)).expect("the component");
        let refusal = match Plugin::load(&runtime_with(pool), name, wasmux::digest::Digest::of(&bytes), &bytes, Wasi::Allowed) {
            Ok(_) => panic!("{name} loaded under {pool:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(refusal.contains(&format!("raise [runtime] {setting}")), "{name}: {refusal}");
    }
}

/// `[plugins.NAME] wasi = false` refuses a component that imports WASI; a
/// Rust plugin (no WASI) loads under it.
#[test]
fn wasi_false_refuses_a_component_that_imports_wasi() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::copy(lang_plugin("search-py"), dir.path().join("search.wasm")).expect("copy");
    std::fs::copy(crate::common::plugins_dir().join("binary-echo.wasm"), dir.path().join("binary-echo.wasm")).expect("copy");
    let config = dir.path().join("wasmux.toml");
    std::fs::write(&config, "[plugins.search]\nwasi = false\n[plugins.binary-echo]\nwasi = false\n").expect("write the configuration");
    let args = ["--config", config.to_str().expect("utf-8 path"), "--plugins", dir.path().to_str().expect("utf-8 path")];
    // The refusal comes after the component is compiled (or read from the cache).
    let server = Server::start_slow(&args, Duration::from_secs(300));
    assert!(server.wait_for_log("plugin search: refused", crate::common::STEP), "{}", server.log());
    let log = server.log();
    assert!(log.contains("imports WASI (wasi:") && log.contains("[plugins.search] wasi = false"), "{log}");
    let mut conn = server.connect();
    assert_eq!(conn.request(&crate::common::search("morpheus")).error_code(), "no-plugin");
    assert!(conn.request(&crate::common::binary(b"hello")).content.starts_with(b"First 10 bytes"));
}

/// A plugin may read the clocks (`wasi:clocks`, in the WASI subset): the
/// wall clock is the host's, and the monotonic clock counts from the
/// instance's start, so on a fresh instance per request it reads less than
/// the request took (docs/plugins.md).
#[test]
fn a_plugin_reads_the_hosts_clocks() {
    let server = crate::common::Server::start_with_fixtures("[routes]\n\"*\" = \"counter\"\n");
    let mut conn = server.connect();
    let request = crate::common::message(serde_json::json!({"byteorder": "little", "content-type": "test/counter", "content-encoding": "utf-8"}), b"clock");
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64();
    for _ in 0..3 {
        let (before, started) = (now(), std::time::Instant::now());
        let answer = String::from_utf8_lossy(&conn.request(&request).content).into_owned();
        let (took, after) = (started.elapsed(), now());
        let (wall, monotonic) = answer
            .strip_prefix("wall-clock ")
            .and_then(|rest| rest.split_once(", monotonic-clock "))
            .unwrap_or_else(|| panic!("not a reading of the clocks: {answer:?}"));
        let wall: f64 = wall.parse().unwrap_or_else(|e| panic!("{wall:?}: {e}"));
        let monotonic: u128 = monotonic.parse().unwrap_or_else(|e| panic!("{monotonic:?}: {e}"));
        assert!(before - 1.0 <= wall && wall <= after + 1.0, "the plugin's wall clock says {wall}, the host's {before}..{after}");
        assert!(monotonic < took.as_nanos(), "the monotonic clock read {monotonic} ns on an instance made for a request that took {took:?}");
    }
}
