//! Python and JavaScript plugins that keep state, as an author makes them:
//! `wasmux new --stateful` ─▶ `build` ─▶ `call` with and without a data
//! directory (and the template's own test) ─▶ `wasmux dev`, whose dev
//! runtime for the world `stateful-handler` reaches the store and keeps
//! the counts across a save of the source; a store's error is answered by
//! the template's handling, and when let through `handle`, as an
//! `internal` error naming it (the sandbox's), never a trap.
//!
//! One build per language, reused by every step: a Python or JavaScript
//! build takes tens of seconds on a busy machine.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{Finished, Process, Server, tool_env};

/// A first build installs the language's tool: a bound, not a timing.
const BUILD: Duration = Duration::from_secs(900);

/// A call that may compile the component first.
const CALL: Duration = Duration::from_secs(300);

/// `wasmux ARGS` in `dir`, with the tests' cache.
fn wasmux_in(dir: &Path, args: &[&str], within: Duration) -> Finished {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
    command.args(args).current_dir(dir).envs(tool_env()).env_remove("RUST_LOG");
    Process::run(&mut command, within)
}

/// The one line a call printed, after checking it succeeded.
fn answer(out: &Finished) -> &str {
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.len(), 1, "{out:?}");
    &out.stdout[0]
}

/// PATH with the `wasmux` under test first (the templates' tests call it by name).
fn path_with_wasmux() -> OsString {
    let bin = Path::new(env!("CARGO_BIN_EXE_wasmux")).parent().expect("the binary's directory").to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&rest))).expect("a PATH")
}

/// What `wasmux new NAME --lang LANG --stateful` prints.
fn created(name: &str, lang: &str) -> Vec<String> {
    let (language, files): (&str, &[&str]) = match lang {
        "python" => ("Python", &["pyproject.toml", "app.py", "test_app.py", "README.md", ".gitignore"]),
        _ => ("JavaScript", &["package.json", "app.js", "app.test.js", "README.md", ".gitignore"]),
    };
    let mut lines = vec![format!("Created a stateful {language} plugin `{name}` in {name}:")];
    let wit = ["wit/wasmux.wit", "wit/deps/keyvalue/atomic.wit", "wit/deps/keyvalue/batch.wit", "wit/deps/keyvalue/store.wit", "wit/deps/keyvalue/watch.wit", "wit/deps/keyvalue/world.wit"];
    lines.extend(files.iter().chain(&wit).map(|file| format!("  {file}")));
    lines.extend([
        "Next:".to_owned(),
        format!("  cd {name}"),
        format!("  wasmux build      # dist/{name}.wasm"),
        format!("  wasmux call dist/{name}.wasm --content 'incr visits' --data-dir state"),
        "  wasmux dev        # serve it on 127.0.0.1:65432, each save swapped in".to_owned(),
    ]);
    lines
}

/// A stateful project of `lang`, written by `wasmux new --stateful` and
/// built: its folder (in `tmp`).
fn new_and_build(tmp: &Path, name: &str, lang: &str) -> PathBuf {
    let out = wasmux_in(tmp, &["new", name, "--lang", lang, "--stateful"], crate::common::STEP);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, created(name, lang), "{out:?}");
    let dir = tmp.join(name);
    let out = wasmux_in(&dir, &["build"], BUILD);
    assert!(out.status.success(), "wasmux build failed: {out:?}");
    assert!(dir.join("dist").join(format!("{name}.wasm")).is_file(), "{out:?}");
    dir
}

/// `wasmux call` counts on in one data directory, starts again in
/// another, and keeps nothing without one.
fn calls_keep_state_in_their_data_dir(dir: &Path, name: &str) {
    let component = format!("dist/{name}.wasm");
    let call = |content: &str, data_dir: Option<&str>| {
        // A deadline a busy machine cannot miss: the answers are the test.
        let mut args = vec!["call", component.as_str(), "--deadline", "30s", "--content", content];
        if let Some(data_dir) = data_dir {
            args.extend(["--data-dir", data_dir]);
        }
        wasmux_in(dir, &args, CALL)
    };
    assert_eq!(answer(&call("incr visits", Some("state"))), "Got response: b'visits=1'");
    assert_eq!(answer(&call("incr visits", Some("state"))), "Got response: b'visits=2'");
    assert_eq!(answer(&call("get visits", Some("state"))), "Got response: b'visits=2'");
    assert_eq!(answer(&call("incr visits", Some("fresh"))), "Got response: b'visits=1'");
    assert_eq!(answer(&call("incr visits", None)), "Got response: b'visits=1'");
    assert_eq!(answer(&call("get visits", None)), "Got response: b'visits=0'");
    // A request the plugin refuses is its error, not a trap.
    let out = call("bogus", None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, [format!("Got result: Error: bad request for plugin {name}: send `incr NAME` or `get NAME`")], "{out:?}");
}

/// `wasmux serve` reusing one instance for every request: the template
/// drops each bucket it opens, so it serves more requests than an
/// instance may hold buckets open (a template that left them to the
/// garbage collector failed its 33rd request).
fn a_reused_instance_serves_more_requests_than_it_may_hold_buckets(dir: &Path, name: &str) {
    let served = tempfile::tempdir().expect("temporary directory");
    let plugins = served.path().join("plugins");
    std::fs::create_dir(&plugins).expect("the plugins' directory");
    std::fs::copy(dir.join("dist").join(format!("{name}.wasm")), plugins.join(format!("{name}.wasm"))).expect("copy the component");
    let config = served.path().join("wasmux.toml");
    std::fs::write(&config, format!("[routes]\n\"text/plain\" = \"{name}\"\n\n[runtime]\nreuse = {{ requests = 1000, idle = \"1h\" }}\n")).expect("write the configuration");
    let data = served.path().join("state");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let args = ["--plugins", &path(&plugins), "--config", &path(&config), "--data-dir", &path(&data), "--admin", "127.0.0.1:0"];
    let server = Server::start_slow(&args, CALL).keeping(served);
    // More than MAX_OPEN_BUCKETS (32), each request opening one. (Idle
    // for an hour at most: a second between two `wasmux send`s on a busy
    // machine would otherwise retire the instance.)
    for count in 1..=40 {
        assert_eq!(send(&server, "incr visits"), format!("Got response: b'visits={count}'"), "{}", server.log());
    }
    let (status, metrics) = server.admin_get("/metrics");
    assert_eq!(status, 200, "{metrics}");
    let created = crate::common::metric(&metrics, &format!(r#"wasmux_instances_created_total{{plugin="{name}"}}"#));
    assert_eq!(created, Some(1.0), "one instance served the 40 requests: {metrics}");
}

/// `wasmux send` of `content` as text to `server`.
fn send(server: &Server, content: &str) -> String {
    let out = crate::common::wasmux(&["send", "--addr", &server.addr_string(), "-t", "text/plain", "-e", "utf-8", "--content", content]);
    out.stdout.join("\n")
}

/// A save of a module: `from` made `to`, then the answers of `after`, pairs
/// of a request and its answer.
struct Save<'a> {
    from: &'a str,
    to: &'a str,
    after: &'a [(&'a str, &'a str)],
}

/// `wasmux dev` serves the project through the dev runtime of its world:
/// requests reach the store, and each save of `module` is served by the
/// new code with the counts kept.
fn dev_keeps_state_across_saves(dir: &Path, name: &str, module: &str, saves: &[Save<'_>]) {
    let server = Server::start_dev(dir, BUILD);
    assert!(server.log().contains(" dev runtime: a save is served without a build"), "{}", server.log());
    assert_eq!(send(&server, "incr visits"), "Got response: b'visits=1'", "{}", server.log());
    assert_eq!(send(&server, "incr visits"), "Got response: b'visits=2'", "{}", server.log());

    let source = dir.join(module);
    for (served, save) in saves.iter().enumerate() {
        let text = std::fs::read_to_string(&source).expect("read the source");
        let saved = text.replace(save.from, save.to);
        assert_ne!(saved, text, "no {:?} in the template's {module}: update this test", save.from);
        std::fs::write(&source, saved).expect("save the source");
        let line = format!("plugin {name}: serving {module} as saved");
        let end = std::time::Instant::now() + BUILD;
        while server.log().matches(&line).count() <= served && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(server.log().matches(&line).count() > served, "save {served} not served: {}", server.log());
        // The new code answers, and the count went on.
        for (request, expected) in save.after {
            assert_eq!(send(&server, request), *expected, "{request}: {}", server.log());
        }
    }
}

/// The template's own test (`python3 -m unittest`, `node --test`), which
/// calls the built component with `wasmux call --data-dir`.
fn template_test_passes(dir: &Path, lang: &str) {
    let mut test = match lang {
        "python" => {
            let mut test = Command::new("python3");
            test.args(["-m", "unittest", "-v"]);
            test
        }
        _ => {
            let mut test = Command::new("node");
            test.arg("--test");
            test
        }
    };
    test.current_dir(dir).env("PATH", path_with_wasmux()).envs(tool_env());
    let out = Process::run(&mut test, CALL);
    assert!(out.status.success(), "the stateful {lang} template's test failed: {out:?}");
}

/// What the saved template answers under `wasmux dev`, after two `incr visits`.
const AFTER_THE_SAVE: &[(&str, &str)] =
    &[("incr visits", "Got response: b'visits is 3'"), ("get visits", "Got response: b'visits is 3'"), ("get other", "Got response: b'other is 0'")];

/// A bucket that is not granted: `no-such-store`, answered by the
/// template's own error handling.
fn no_such_store(name: &str, why: &str) -> [(&'static str, String); 1] {
    [("incr visits", format!("Got result: Error: plugin {name} failed: the store failed: {why}"))]
}

/// The store's error let through `handle`: answered as `internal`, naming
/// it, not a trap.
fn uncaught(name: &str, error: &str) -> [(&'static str, String); 1] {
    [("incr visits", format!("Got result: Error: plugin {name} failed: uncaught error of an import: {error}"))]
}

/// `pairs` as the borrowed pairs [`Save`] takes.
fn borrowed<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(request, answer)| (*request, answer.as_str())).collect()
}

#[test]
fn a_stateful_python_plugin_counts_under_call_and_dev() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = new_and_build(tmp.path(), "counter-py", "python");
    calls_keep_state_in_their_data_dir(&dir, "counter-py");
    template_test_passes(&dir, "python");
    a_reused_instance_serves_more_requests_than_it_may_hold_buckets(&dir, "counter-py");
    let (refused, through) = (no_such_store("counter-py", "no such store"), uncaught("counter-py", "Error_NoSuchStore()"));
    let saves = [
        Save { from: r#"f"{name}={count}""#, to: r#"f"{name} is {count}""#, after: AFTER_THE_SAVE },
        Save { from: r#"store.open("default")"#, to: r#"store.open("not-granted")"#, after: &borrowed(&refused) },
        Save { from: "except Err as error:", to: "except KeyError as error:", after: &borrowed(&through) },
    ];
    dev_keeps_state_across_saves(&dir, "counter-py", "app.py", &saves);
}

#[test]
fn a_stateful_javascript_plugin_counts_under_call_and_dev() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = new_and_build(tmp.path(), "counter-js", "js");
    calls_keep_state_in_their_data_dir(&dir, "counter-js");
    template_test_passes(&dir, "js");
    a_reused_instance_serves_more_requests_than_it_may_hold_buckets(&dir, "counter-js");
    let (refused, through) = (no_such_store("counter-js", "no-such-store"), uncaught("counter-js", "no-such-store"));
    let saves = [
        Save { from: "`${name}=${count}`", to: "`${name} is ${count}`", after: AFTER_THE_SAVE },
        Save { from: "open('default')", to: "open('not-granted')", after: &borrowed(&refused) },
        Save { from: "  } catch (error) {\n", to: "  } catch (error) {\n    throw error;\n", after: &borrowed(&through) },
    ];
    dev_keeps_state_across_saves(&dir, "counter-js", "app.js", &saves);
}

/// `--stateful` is for the languages that have a stateful template; a
/// Rust author is told where to start instead of getting a plain plugin.
#[test]
fn new_refuses_a_stateful_rust_plugin_and_says_what_to_do() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let out = wasmux_in(tmp.path(), &["new", "counter-rs", "--lang", "rust", "--stateful"], crate::common::STEP);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("there is no stateful rust template yet"), "{out:?}");
    assert!(!tmp.path().join("counter-rs").exists(), "a project was written: {out:?}");
}
