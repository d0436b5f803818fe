//! Hot swap against a real `wasmux serve`: plugins and routes replaced while
//! serving, broken files refused, deletions unloading, no request lost.
//!
//! Every test serves its own copy of the plugins from a temporary directory.
//! The probe request is valid for both plugins, so the answer tells which
//! one served it: `binary-echo` answers `First 10 bytes of request:
//! {"action":`, `search` answers the `ring` entry.


use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Answer, Raw, Server, message};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// How long a test waits for a swap (or its log line) before failing. No
/// swap here compiles: every version swapped in is one the server compiled
/// (or read from the shared test cache) when it started, so a swap is the
/// watcher's 50 ms of quiet and a lookup, and this bound, like any network
/// step's, is only there so that a broken server fails rather than hangs.
/// The benchmark (`cargo bench --bench swap`) measures how long swaps take.
const SWAP_WAIT: Duration = crate::common::STEP;

const RING: &str = "In the caves beneath the Misty Mountains. 💍";

#[derive(Debug, Clone, PartialEq, Eq)]
enum ServedBy {
    Echo,
    Search,
    Error(String),
}

/// A request both plugins answer successfully, differently.
fn probe() -> Vec<u8> {
    message(
        json!({"byteorder": "little", "content-type": "binary/custom-client-binary-type", "content-encoding": "utf-8"}),
        br#"{"action": "search", "value": "ring"}"#,
    )
}

fn served_by(answer: &Answer) -> ServedBy {
    if answer.content == br#"First 10 bytes of request: {"action":"# {
        return ServedBy::Echo;
    }
    match answer.json().get("result").and_then(|r| r.as_str()) {
        Some(RING) => ServedBy::Search,
        _ => ServedBy::Error(String::from_utf8_lossy(&answer.content).into_owned()),
    }
}

/// A temporary plugin directory holding copies of the built plugins.
struct PluginDir {
    dir: tempfile::TempDir,
}

impl PluginDir {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let built = crate::common::plugins_dir();
        for name in ["search.wasm", "binary-echo.wasm"] {
            std::fs::copy(built.join(name), dir.path().join(name)).expect("copy plugin");
        }
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    fn serve(&self, extra: &[&str]) -> Server {
        let mut args = vec!["--plugins", self.path().to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        Server::start_with(&args)
    }

    /// Serves these plugins with the configuration `text`, written to
    /// `wasmux.toml` in a directory of its own: returned with its path, to
    /// rewrite it.
    fn serve_configured(&self, text: &str) -> (Server, tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("config dir");
        let config = dir.path().join("wasmux.toml");
        std::fs::write(&config, text).expect("config");
        let server = self.serve(&["--config", config.to_str().expect("utf-8")]);
        (server, dir, config)
    }

    /// Replaces `name` the way deploy tools do: write beside, rename over.
    fn replace_atomically(&self, name: &str, bytes: &[u8]) {
        let tmp = self.file(&format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).expect("write temp file");
        std::fs::rename(&tmp, self.file(name)).expect("rename over");
    }

    /// Rewrites `name` in place (truncate, then write).
    fn write_in_place(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.file(name), bytes).expect("write in place");
    }
}

/// The version wasmux shows for a component: 12 hex digits of its SHA-256.
fn short_version(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(bytes)[..6])
}

fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(crate::common::plugins_dir().join(format!("{name}.wasm"))).expect("built plugin")
}

/// Polls with the probe until `want` serves it; panics after [`SWAP_WAIT`].
fn wait_until_served_by(conn: &mut Raw, want: ServedBy, server: &Server) -> Duration {
    let start = Instant::now();
    loop {
        let got = served_by(&conn.request(&probe()));
        if got == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < SWAP_WAIT, "still served by {got:?}, not {want:?}, after {SWAP_WAIT:?}; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn atomic_rename_and_in_place_write_both_swap_the_plugin() {
    let plugins = PluginDir::new();
    let server = plugins.serve(&[]);
    let mut conn = server.connect();
    assert_eq!(served_by(&conn.request(&probe())), ServedBy::Echo);

    let (echo, search) = (short_version(&plugin_bytes("binary-echo")), short_version(&plugin_bytes("search")));

    plugins.replace_atomically("binary-echo.wasm", &plugin_bytes("search"));
    let took = wait_until_served_by(&mut conn, ServedBy::Search, &server);
    println!("swap by rename served after {took:?}");

    plugins.write_in_place("binary-echo.wasm", &plugin_bytes("binary-echo"));
    let took = wait_until_served_by(&mut conn, ServedBy::Echo, &server);
    println!("swap by in-place write served after {took:?}");

    // The swaps are logged with both versions and the compile cost (the
    // line is written after the swap, and read from the server's stderr
    // by another thread: waited for, not looked up at once).
    for swap in [format!("plugin binary-echo: {echo} -> {search} (compile "), format!("plugin binary-echo: {search} -> {echo} (compile ")] {
        assert!(server.wait_for_log(&swap, SWAP_WAIT), "no {swap:?} in the log:\n{}", server.log());
    }
}

/// `/metrics` keeps the request series of the version a plugin serves and
/// of the one before it; a third version drops the first's, so that a
/// server swapping for weeks does not keep every version's series.
#[test]
fn metrics_keep_the_series_of_the_last_two_versions() {
    let plugins = PluginDir::new();
    let server = plugins.serve(&["--admin", "127.0.0.1:0"]);
    let mut conn = server.connect();
    let series = |version: &str| format!(r#"wasmux_requests_total{{tenant="default",route="*",plugin="binary-echo",version="{version}",outcome="ok"}} "#);
    let count = |metrics: &str, version: &str| metrics.lines().find_map(|line| line.strip_prefix(&series(version))).map(str::to_owned);
    let third = std::fs::read(crate::common::fixtures_dir().join("echo-fields.wasm")).expect("the echo-fields fixture");
    let (echo, search, fields) = (short_version(&plugin_bytes("binary-echo")), short_version(&plugin_bytes("search")), short_version(&third));
    assert_eq!(served_by(&conn.request(&probe())), ServedBy::Echo);
    plugins.replace_atomically("binary-echo.wasm", &plugin_bytes("search"));
    wait_until_served_by(&mut conn, ServedBy::Search, &server);
    let (_, metrics) = server.admin_get("/metrics");
    assert!(count(&metrics, &echo).is_some(), "{metrics}");
    assert!(count(&metrics, &search).is_some(), "{metrics}");
    plugins.replace_atomically("binary-echo.wasm", &third);
    let end = Instant::now() + SWAP_WAIT;
    while matches!(served_by(&conn.request(&probe())), ServedBy::Search) {
        assert!(Instant::now() < end, "the third version does not serve:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, metrics) = server.admin_get("/metrics");
    assert_eq!(count(&metrics, &echo), None, "the first version's series is still there:\n{metrics}");
    assert!(!metrics.contains(&format!(r#"version="{echo}""#)), "{metrics}");
    assert!(count(&metrics, &search).is_some() && count(&metrics, &fields).is_some(), "{metrics}");
}

#[test]
fn no_watch_leaves_the_loaded_plugins_alone() {
    let plugins = PluginDir::new();
    let unwatched = plugins.serve(&["--no-watch"]);
    // A second server watches the same directory: once it has swapped, the
    // change has been seen and acted on by anyone watching.
    let watched = plugins.serve(&[]);
    let mut conn = unwatched.connect();
    plugins.replace_atomically("binary-echo.wasm", &plugin_bytes("search"));
    wait_until_served_by(&mut watched.connect(), ServedBy::Search, &watched);
    assert_eq!(served_by(&conn.request(&probe())), ServedBy::Echo);
    assert!(!unwatched.log().contains("for changes"), "{}", unwatched.log());
    assert!(watched.log().contains("for changes"), "{}", watched.log());
}

#[test]
fn broken_files_are_refused_and_the_last_good_version_keeps_serving() {
    let plugins = PluginDir::new();
    let server = plugins.serve(&[]);
    let mut conn = server.connect();
    let good = plugin_bytes("binary-echo");
    let wrong_world = std::fs::read(crate::common::fixtures_dir().join("wrong-world.wasm")).expect("wrong-world fixture");
    let cases: [(&str, Vec<u8>); 5] = [
        ("truncated", good[..good.len() / 3].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"this is not WebAssembly at all".to_vec()),
        ("core module", b"\0asm\x01\0\0\0".to_vec()),
        ("wrong world", wrong_world),
    ];
    let mut refusals = 0;
    for (what, bytes) in cases {
        plugins.replace_atomically("binary-echo.wasm", &bytes);
        refusals += 1;
        // Wait for the refusal to be logged, then check the old version serves.
        let end = Instant::now() + SWAP_WAIT;
        while server.log().matches("plugin binary-echo: refused").count() < refusals {
            assert!(Instant::now() < end, "{what}: no refusal logged; log:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(served_by(&conn.request(&probe())), ServedBy::Echo, "{what}");
    }
    let log = server.log();
    let file = plugins.file("binary-echo.wasm");
    assert!(log.contains(&format!("plugin binary-echo: refused {} (the version loaded before keeps serving)", file.display())), "{log}");
    // A component of another world imports nothing the host lacks; what
    // it lacks is the `handle` export.
    let wrong_world = format!(
        "plugin binary-echo: refused {} (the version loaded before keeps serving): the component's exports do not match the wasmux:plugin/handler world: ",
        file.display()
    );
    assert!(log.contains(&wrong_world), "no {wrong_world:?} in:\n{log}");
    // wasmparser's message for bytes that are not WebAssembly spans lines
    // (`expected=[\n    0x0, …]`); the log has it on the refusal's line.
    let garbage = log.lines().find(|line| line.contains("bad magic number")).unwrap_or_else(|| panic!("no bad magic number in:\n{log}"));
    assert!(garbage.contains("plugin binary-echo: refused") && garbage.ends_with("] (at offset 0x0)"), "{garbage:?} in:\n{log}");

    // A half-written file is refused; once whole, it is loaded.
    let search = plugin_bytes("search");
    plugins.write_in_place("binary-echo.wasm", &search[..search.len() / 2]);
    let end = Instant::now() + SWAP_WAIT;
    while server.log().matches("plugin binary-echo: refused").count() <= refusals {
        assert!(Instant::now() < end, "half-written file not refused; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(served_by(&conn.request(&probe())), ServedBy::Echo);
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(plugins.file("binary-echo.wasm")).expect("open to append");
        file.write_all(&search[search.len() / 2..]).expect("finish the file");
    }
    wait_until_served_by(&mut conn, ServedBy::Search, &server);
}

#[test]
fn deleting_a_file_unloads_its_plugin_and_restoring_it_serves_again() {
    let plugins = PluginDir::new();
    let server = plugins.serve(&[]);
    let mut conn = server.connect();
    assert_eq!(served_by(&conn.request(&probe())), ServedBy::Echo);

    std::fs::remove_file(plugins.file("binary-echo.wasm")).expect("delete plugin");
    let end = Instant::now() + SWAP_WAIT;
    loop {
        let answer = conn.request(&probe());
        if let ServedBy::Error(_) = served_by(&answer) {
            assert_eq!(answer.error_code(), "no-plugin");
            assert_eq!(answer.result(), "Error: no plugin binary-echo is loaded");
            break;
        }
        assert!(Instant::now() < end, "still served after deletion; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(server.wait_for_log("plugin binary-echo: unloaded", SWAP_WAIT), "{}", server.log());
    // The other plugin is untouched and the same connection still works.
    assert_eq!(conn.request(&crate::common::search("ring")).result(), RING);

    plugins.replace_atomically("binary-echo.wasm", &plugin_bytes("binary-echo"));
    wait_until_served_by(&mut conn, ServedBy::Echo, &server);
}

#[test]
fn a_request_running_across_a_swap_finishes_on_the_version_it_started_on() {
    let plugins = PluginDir::new();
    std::fs::copy(crate::common::fixtures_dir().join("spin.wasm"), plugins.file("slow.wasm")).expect("copy the spin fixture");
    let config = plugins.file("wasmux.toml");
    std::fs::write(&config, "[limits]\nplugin-deadline = \"60s\"\n[routes]\n\"test/slow\" = \"slow\"\n\"*\" = \"binary-echo\"\n").expect("config");
    let server = plugins.serve(&["--config", config.to_str().expect("utf-8")]);
    let slow = |content: &str| message(json!({"byteorder": "little", "content-type": "test/slow", "content-encoding": "utf-8"}), content.as_bytes());

    // How far the fixture counts in a second here: the slow request must
    // outlast the swap by a wide margin.
    let started = Instant::now();
    assert_eq!(server.connect().request(&slow("count 100000000")).content, b"spin: counted 100000000");
    println!("counting to 100000000 took {:?}", started.elapsed());
    let per_second = 100_000_000.0 / started.elapsed().as_secs_f64().max(0.001);
    let n = ((per_second * 3.0) as u64).clamp(100_000_000, 40_000_000_000);

    let addr = server.addr;
    let request = slow(&format!("count {n}"));
    let running = std::thread::spawn(move || {
        let mut conn = Raw::connect(addr);
        // Counting takes seconds, longer still on a busy machine.
        conn.stream.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
        let answer = conn.request(&request);
        (answer, Instant::now())
    });
    // The second slow request logged (the first, the measure above, may be
    // just as long) is the one running.
    let end = Instant::now() + SWAP_WAIT;
    while server.log().matches("test/slow request (").count() < 2 {
        assert!(Instant::now() < end, "the slow request did not begin; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(5));
    }

    // Swap `slow` for another plugin entirely while the request runs.
    plugins.replace_atomically("slow.wasm", &plugin_bytes("binary-echo"));
    let mut conn = server.connect();
    let end = Instant::now() + SWAP_WAIT;
    while conn.request(&slow("answer")).content != b"First 10 bytes of request: answer" {
        assert!(Instant::now() < end, "slow was not swapped; log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let swapped = Instant::now();

    let (answer, answered) = running.join().expect("the slow request's thread");
    assert!(answered > swapped, "the slow request ended before the swap: make it slower (n = {n})");
    assert_eq!(answer.content, format!("spin: counted {n}").into_bytes(), "the running request did not finish on its own version");
}

#[test]
fn a_new_file_in_the_directory_is_loaded() {
    let plugins = PluginDir::new();
    let config = plugins.file("wasmux.toml");
    std::fs::write(&config, "[routes]\n\"binary/*\" = \"echo2\"\n\"*\" = \"binary-echo\"\n").expect("config");
    let server = plugins.serve(&["--config", config.to_str().expect("utf-8")]);
    let mut conn = server.connect();
    assert_eq!(conn.request(&probe()).error_code(), "no-plugin");
    plugins.replace_atomically("echo2.wasm", &plugin_bytes("binary-echo"));
    wait_until_served_by(&mut conn, ServedBy::Echo, &server);
    assert!(server.wait_for_log("plugin echo2: loaded", SWAP_WAIT), "{}", server.log());
}

#[test]
fn configuration_changes_are_applied_and_invalid_ones_refused() {
    let plugins = PluginDir::new();
    let (server, dir, config) = plugins.serve_configured("[routes]\n\"*\" = \"binary-echo\"\n");
    let mut conn = server.connect();
    assert_eq!(served_by(&conn.request(&probe())), ServedBy::Echo);

    // A new route, written the way editors save: a new file renamed over.
    let tmp = dir.path().join(".wasmux.toml.swp");
    std::fs::write(&tmp, "[routes]\n\"binary/*\" = \"search\"\n\"*\" = \"binary-echo\"\n").expect("config");
    std::fs::rename(&tmp, &config).expect("rename config");
    wait_until_served_by(&mut conn, ServedBy::Search, &server);

    // An invalid file is refused with its line; the routes stay.
    std::fs::write(&config, "[routes]\n\"binary/*\" = \"binary-echo\"\n\"*\" = \n").expect("config");
    assert!(server.wait_for_log("refused, keeping the current one", SWAP_WAIT), "{}", server.log());
    assert!(server.log().contains("line 3"), "the refusal does not name the line:\n{}", server.log());
    assert_eq!(served_by(&conn.request(&probe())), ServedBy::Search);

    // A valid file again (written in place) is applied.
    std::fs::write(&config, "[routes]\n\"*\" = \"binary-echo\"\n").expect("config");
    wait_until_served_by(&mut conn, ServedBy::Echo, &server);
    assert!(server.wait_for_log("reloaded; tenant default: * -> binary-echo", SWAP_WAIT), "{}", server.log());
}

#[test]
fn compiled_code_is_reused_when_swapping_back_and_after_a_restart() {
    let plugins = PluginDir::new();
    let cache = tempfile::tempdir().expect("cache dir");
    let cache_arg = cache.path().to_str().expect("utf-8");
    {
        let server = plugins.serve(&["--cache-dir", cache_arg]);
        let mut conn = server.connect();
        plugins.replace_atomically("binary-echo.wasm", &plugin_bytes("search"));
        wait_until_served_by(&mut conn, ServedBy::Search, &server);
        plugins.replace_atomically("binary-echo.wasm", &plugin_bytes("binary-echo"));
        wait_until_served_by(&mut conn, ServedBy::Echo, &server);
        // Both swaps logged (the log is read by another thread): the second
        // is the swap back.
        let swaps = |log: &str| log.lines().filter(|l| l.contains("plugin binary-echo: ") && l.contains(" -> ")).map(str::to_owned).collect::<Vec<_>>();
        let end = Instant::now() + SWAP_WAIT;
        while swaps(&server.log()).len() < 2 {
            assert!(Instant::now() < end, "the swap back was not logged:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        let swaps = swaps(&server.log());
        let echo = short_version(&plugin_bytes("binary-echo"));
        let search = short_version(&plugin_bytes("search"));
        assert!(swaps[0].contains(&format!("{echo} -> {search}")), "{swaps:?}");
        assert!(swaps[1].ends_with(&format!("{search} -> {echo} (compile 0 ms: compiled earlier)")), "swapping back compiled again: {swaps:?}");
    }
    let server = plugins.serve(&["--cache-dir", cache_arg]);
    for name in ["search", "binary-echo"] {
        // The log is read from the server's stderr by another thread.
        assert!(server.wait_for_log(&format!("plugin {name}: loaded"), SWAP_WAIT), "{}", server.log());
    }
    let log = server.log();
    for name in ["search", "binary-echo"] {
        let line = log.lines().find(|l| l.contains(&format!("plugin {name}: loaded"))).unwrap_or_default();
        assert!(line.contains("read compiled code from the cache"), "{name} compiled again after a restart: {line}\n{log}");
    }
    assert_eq!(served_by(&server.connect().request(&probe())), ServedBy::Echo);
}

/// The issue's acceptance run: 16 persistent clients send requests while
/// `binary-echo.wasm` is rewritten 30 times, alternating atomic renames and
/// in-place writes and alternating two plugins. Every request must be
/// answered correctly by one version or the other, and the last version
/// written is the one that serves. Each rewrite waits until its version
/// serves and the clients have been answered again, so every swap happens
/// under load, however fast or slow the machine.
#[test]
fn no_request_fails_while_the_plugin_is_rewritten_under_load() {
    let plugins = PluginDir::new();
    // This test is about swaps, not deadlines: on a loaded CI machine a call
    // may wait its turn for a CPU longer than the default 100 ms.
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), "[limits]\nplugin-deadline = \"10s\"\n").expect("config");
    let server = plugins.serve(&["--config", config.path().to_str().expect("utf-8")]);
    let versions = [(plugin_bytes("search"), ServedBy::Search), (plugin_bytes("binary-echo"), ServedBy::Echo)];
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let by_search = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let mut conn = server.connect();
            let (stop, answered, by_search) = (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&by_search));
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    conn.send(&probe());
                    match conn.try_read_message() {
                        Ok(bytes) => match served_by(&Answer::parse(&bytes)) {
                            ServedBy::Echo => {}
                            ServedBy::Search => {
                                by_search.fetch_add(1, Ordering::Relaxed);
                            }
                            ServedBy::Error(e) => failures.push(e),
                        },
                        Err(e) => {
                            failures.push(format!("read failed: {e}"));
                            break;
                        }
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();

    let mut probe_conn = server.connect();
    for rewrite in 0..30 {
        let (bytes, serves) = &versions[rewrite % 2];
        if rewrite % 4 < 2 {
            plugins.replace_atomically("binary-echo.wasm", bytes);
        } else {
            plugins.write_in_place("binary-echo.wasm", bytes);
        }
        wait_until_served_by(&mut probe_conn, serves.clone(), &server);
        // The clients go on being answered by this version.
        let before = answered.load(Ordering::Relaxed);
        crate::common::wait_until("the clients answered after a swap", || answered.load(Ordering::Relaxed) >= before + 16);
    }
    // The last rewrite (index 29) was binary-echo, and it serves.
    assert_eq!(served_by(&server.connect().request(&probe())), ServedBy::Echo);
    stop.store(true, Ordering::Relaxed);

    let failures: Vec<String> = clients.into_iter().flat_map(|c| c.join().expect("client thread")).collect();
    let (answered, by_search) = (answered.load(Ordering::Relaxed), by_search.load(Ordering::Relaxed));
    println!("{answered} requests answered across 30 swaps, {by_search} by the search version, {} failed", failures.len());
    assert!(failures.is_empty(), "{} of {answered} requests failed, e.g. {:?}", failures.len(), &failures[..failures.len().min(3)]);
    assert!(server.connect().request(&crate::common::search("ring")).result() == RING);
}

/// A configuration that requires a token, and the request without one.
fn token_only_config() -> String {
    format!("[tenants.alpha]\ntoken-sha256 = \"{}\"\n", hex::encode(Sha256::digest(b"alpha-token")))
}

fn anonymous_outcome(server: &Server) -> String {
    let answer = server.connect().request(&crate::common::search("ring"));
    answer.json()["error"]["code"].as_str().unwrap_or("ok").to_owned()
}

/// Emptying the file in place (what `cat > file` and slow editors do first)
/// or cutting it short before its `[tenants]` must not switch token
/// authentication off: the running configuration stays.
#[test]
fn an_emptied_or_cut_short_configuration_is_refused_and_tokens_stay_required() {
    let plugins = PluginDir::new();
    let (server, _dir, config) = plugins.serve_configured(&token_only_config());
    assert_eq!(anonymous_outcome(&server), "unauthorized");

    std::fs::write(&config, "").expect("empty the config");
    assert!(server.wait_for_log("the file is empty", SWAP_WAIT), "{}", server.log());
    assert_eq!(anonymous_outcome(&server), "unauthorized", "an empty file let requests without a token in");

    std::fs::write(&config, "[limits]\nplugin-deadline = \"1s\"\n").expect("cut the config short");
    assert!(server.wait_for_log("no [tenants] section", SWAP_WAIT), "{}", server.log());
    assert_eq!(anonymous_outcome(&server), "unauthorized", "a file cut short let requests without a token in");

    // Saying so explicitly is applied.
    std::fs::write(&config, format!("[tenants.default]\n{}", token_only_config())).expect("config");
    assert!(server.wait_for_log("reloaded", SWAP_WAIT), "{}", server.log());
    assert_eq!(anonymous_outcome(&server), "ok");
}

/// A ConfigMap as Kubernetes mounts it: `wasmux.toml -> ..data/wasmux.toml`,
/// `..data -> ..v1`; an update makes `..v2` and swaps `..data` atomically.
#[test]
fn a_configuration_behind_swapped_links_is_followed() {
    let plugins = PluginDir::new();
    let dir = tempfile::tempdir().expect("config dir");
    let version = |name: &str, text: &str| {
        std::fs::create_dir(dir.path().join(name)).expect("version dir");
        std::fs::write(dir.path().join(name).join("wasmux.toml"), text).expect("config");
    };
    version("..v1", "[routes]\n\"*\" = \"binary-echo\"\n");
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).expect("link ..data");
    std::os::unix::fs::symlink("..data/wasmux.toml", dir.path().join("wasmux.toml")).expect("link the config");
    let server = plugins.serve(&["--config", dir.path().join("wasmux.toml").to_str().expect("utf-8")]);
    let mut conn = server.connect();
    assert_eq!(served_by(&conn.request(&probe())), ServedBy::Echo);

    version("..v2", "[routes]\n\"binary/*\" = \"search\"\n\"*\" = \"binary-echo\"\n");
    std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).expect("link ..data_tmp");
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(dir.path().join("..v1")).expect("remove the old version");
    wait_until_served_by(&mut conn, ServedBy::Search, &server);

    // And once more, now that the file resolves into ..v2.
    version("..v3", "[routes]\n\"*\" = \"binary-echo\"\n");
    std::os::unix::fs::symlink("..v3", dir.path().join("..data_tmp")).expect("link ..data_tmp");
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap ..data");
    wait_until_served_by(&mut conn, ServedBy::Echo, &server);
}

/// A FIFO named like a plugin used to block the watcher for good; a link to
/// a device or a huge file was read whole. Each is skipped with a log line,
/// and later changes are still applied.
#[test]
fn a_fifo_a_device_or_a_huge_file_does_not_wedge_the_watcher() {
    let plugins = PluginDir::new();
    let (server, _dir, config) = plugins.serve_configured("[routes]\n\"*\" = \"binary-echo\"\n");
    let mut conn = server.connect();
    assert_eq!(served_by(&conn.request(&probe())), ServedBy::Echo);

    let fifo = plugins.file("x.wasm");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    // The configuration changes after the FIFO appeared, and is applied.
    std::fs::write(&config, "[routes]\n\"binary/*\" = \"search\"\n\"*\" = \"binary-echo\"\n").expect("config");
    wait_until_served_by(&mut conn, ServedBy::Search, &server);
    let refused = |name: &str, why: &str| format!("plugin {name}: refused {} (it is not loaded): {why}", plugins.file(&format!("{name}.wasm")).display());
    let fifo_refused = refused("x", "a FIFO, not a regular file");
    assert!(server.wait_for_log(&fifo_refused, SWAP_WAIT), "no {fifo_refused:?} in:\n{}", server.log());

    std::os::unix::fs::symlink("/dev/zero", plugins.file("zero.wasm")).expect("link to a device");
    let device_refused = refused("zero", "a character device, not a regular file");
    assert!(server.wait_for_log(&device_refused, SWAP_WAIT), "no {device_refused:?} in:\n{}", server.log());

    let huge = std::fs::File::create(plugins.file("huge.wasm")).expect("create");
    huge.set_len(1 << 30).expect("a sparse 1 GiB file");
    drop(huge);
    // Over the default max-plugin-size of 64 MiB: refused by its size, unread.
    let huge_refused = refused("huge", "1073741824 bytes or more, over the limit of 67108864 (limits.max-plugin-size)");
    assert!(server.wait_for_log(&huge_refused, SWAP_WAIT), "no {huge_refused:?} in:\n{}", server.log());

    std::fs::write(&config, "[routes]\n\"*\" = \"binary-echo\"\n").expect("config");
    wait_until_served_by(&mut conn, ServedBy::Echo, &server);
}

/// `binary-echo`'s component with a custom section of its own: the same
/// plugin, another version, compiled anew.
fn echo_version(i: usize) -> Vec<u8> {
    let mut bytes = plugin_bytes("binary-echo");
    let payload = format!("copy {i:04}");
    let name = b"wasmux-test";
    // Custom section 0: its size, then its name (length first), then the payload.
    bytes.extend([0, (1 + name.len() + payload.len()) as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

/// A server reads its configuration and plugin directory, then compiles
/// its plugins (here 30 of them, none cached: seconds), then watches. What
/// changes meanwhile must not be lost: a token revoked before the server
/// listens is refused from its first request, a plugin added is loaded.
#[test]
fn changes_made_while_the_server_starts_are_applied() {
    let plugins = PluginDir::new();
    for i in 0..30 {
        std::fs::write(plugins.file(&format!("echo-{i:02}.wasm")), echo_version(i)).expect("write a plugin");
    }
    let dir = tempfile::tempdir().expect("config dir");
    let config = dir.path().join("wasmux.toml");
    std::fs::write(&config, format!("[tenants.default]\n{}", token_only_config())).expect("config");
    let args = ["--plugins", plugins.path().to_str().expect("utf-8"), "--config", config.to_str().expect("utf-8"), "--no-cache"];
    let server = Server::start_slow_meanwhile(&args, Duration::from_secs(120), |log| {
        // The first plugin is compiled: both were read, the others compile.
        let end = Instant::now() + Duration::from_secs(60);
        while !log().contains("plugin binary-echo: loaded") {
            assert!(Instant::now() < end, "binary-echo not loaded; log:\n{}", log());
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::write(&config, token_only_config()).expect("revoke the token-less tenant");
        plugins.replace_atomically("late.wasm", &plugin_bytes("binary-echo"));
        assert!(!log().contains("plugins loaded from"), "the plugins were compiled before the changes: add plugins; log:\n{}", log());
    });
    assert_eq!(anonymous_outcome(&server), "unauthorized", "the configuration of before the start is served; log:\n{}", server.log());
    assert!(server.wait_for_log("plugin late: loaded", SWAP_WAIT), "late.wasm not loaded; log:\n{}", server.log());
}

/// A file named like a plugin that no plugin can be read from is said so,
/// once, whether it was there at start or appears later: a name that is
/// not a plugin name, an upper-case `.WASM`, a link to nothing. (A hidden
/// file, what deploy tools write before renaming it into place, is
/// ignored without a word.)
#[test]
fn files_named_like_plugins_that_are_none_are_said_so_once() {
    let plugins = PluginDir::new();
    let echo = plugin_bytes("binary-echo");
    let skipped = |file: &str, why: &str| format!("skipped {}: {why}", plugins.file(file).display());
    let weird = |file: &str, stem: &str| skipped(file, &format!("not a plugin name: {stem:?} (letters, digits and `-_.@`, not starting with `.`)"));
    let upper = |file: &str| skipped(file, &format!("not a plugin file name: {file:?} does not end in `.wasm` (lower case)"));
    let dangling = |name: &str| format!("plugin {name}: refused {} (it is not loaded): a link to nowhere.wasm, which does not exist", plugins.file(&format!("{name}.wasm")).display());
    let place = |i: usize| {
        std::fs::write(plugins.file(&format!("we ird{i}.wasm")), &echo).expect("write");
        std::fs::write(plugins.file(&format!("UPPER{i}.WASM")), &echo).expect("write");
        std::fs::write(plugins.file(&format!(".hidden{i}.wasm")), &echo).expect("write");
        std::os::unix::fs::symlink("nowhere.wasm", plugins.file(&format!("dangling{i}.wasm"))).expect("link to nothing");
    };
    let expected = |i: usize| [weird(&format!("we ird{i}.wasm"), &format!("we ird{i}")), upper(&format!("UPPER{i}.WASM")), dangling(&format!("dangling{i}"))];
    place(0);
    let server = plugins.serve(&[]);
    for line in expected(0) {
        assert!(server.wait_for_log(&line, SWAP_WAIT), "no {line:?} at start in:\n{}", server.log());
    }
    place(1);
    for line in expected(1) {
        assert!(server.wait_for_log(&line, SWAP_WAIT), "no {line:?} once it appeared in:\n{}", server.log());
    }
    // Written again: nothing more is said, as a plugin loaded after shows
    // (its name sorts last: files of one batch are read in name order).
    std::fs::write(plugins.file("we ird0.wasm"), b"rewritten").expect("rewrite");
    std::fs::write(plugins.file("UPPER1.WASM"), b"rewritten").expect("rewrite");
    plugins.replace_atomically("zz-last.wasm", &echo);
    assert!(server.wait_for_log("plugin zz-last: loaded", SWAP_WAIT), "{}", server.log());
    let log = server.log();
    for line in [weird("we ird0.wasm", "we ird0"), upper("UPPER1.WASM")] {
        assert_eq!(log.matches(&line).count(), 1, "{line:?} in:\n{log}");
    }
    assert!(!log.contains(".hidden"), "{log}");
}
