//! The plugin author's commands, through the real binary: `wasmux new` ─▶
//! `build` ─▶ `call` for each language's template (and the template's own
//! test), `wasmux call`'s output and exit codes, and `wasmux dev`
//! rebuilding a project on a save and swapping it in while a connection
//! stays open.
//!
//! Every `wasmux` here shares the test cache ([`crate::common::test_cache`]): the
//! language tools are installed once, the Rust templates share one target
//! directory, and a component is compiled once per run.


use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::common::{Finished, Process, Server, message, plugins_dir, root, test_cache, tool_env, wasmux_tool};
use serde_json::json;

/// A first build on a fresh machine installs the language's tools and, for
/// Rust, builds the standard library for wasm32: a bound, not a timing.
const BUILD: Duration = Duration::from_secs(900);

/// A call that compiles a 32 MB component in a debug build the first time.
const CALL: Duration = Duration::from_secs(300);

fn os(text: &str) -> &OsStr {
    OsStr::new(text)
}

/// `wasmux new NAME --lang LANG --dir DIR`.
fn new_project(name: &str, lang: &str, dir: &Path) -> Finished {
    wasmux_tool(&[os("new"), os(name), os("--lang"), os(lang), os("--dir"), dir.as_os_str()], crate::common::STEP)
}

/// `wasmux ARGS` run in `dir`, as the docs show the commands.
fn wasmux_in(dir: &Path, args: &[&str], within: Duration) -> Finished {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
    command.args(args).current_dir(dir).envs(tool_env()).env_remove("RUST_LOG");
    Process::run(&mut command, within)
}

/// `wasmux build` in the project `dir`; checks that it printed what the
/// docs show (`Built dist/NAME.wasm (SIZE) in TIME`, the only line on
/// standard output) and returns the component.
fn build(dir: &Path, name: &str) -> PathBuf {
    let out = wasmux_in(dir, &["build"], BUILD);
    assert!(out.status.success(), "wasmux build failed: {out:?}");
    let shown: Vec<String> = out.stdout.iter().map(|line| sized(line)).collect();
    assert_eq!(shown, [format!("Built dist/{name}.wasm (SIZE) in TIME")], "{out:?}");
    let component = dir.join("dist").join(format!("{name}.wasm"));
    assert!(component.is_file(), "no {}", component.display());
    component
}

/// `line` with the build's size and time (`(34 kB) in 4.1 s`) as `(SIZE)
/// in TIME`, and a plugin's version (`version=fcd513946274`) as
/// `version=VERSION`: the parts that change from build to build.
fn sized(line: &str) -> String {
    let mut shown = line.to_owned();
    if let Some(open) = shown.find(" (")
        && let Some(close) = shown[open..].find(") in ").map(|i| open + i)
        && shown.ends_with(" s")
    {
        let size = &shown[open + 2..close];
        let time = &shown[close + 5..shown.len() - 2];
        let size_ok = size.ends_with(" kB") || size.ends_with(" MB");
        if size_ok && size[..size.len() - 3].parse::<f64>().is_ok() && time.parse::<f64>().is_ok() {
            shown = format!("{} (SIZE) in TIME", &shown[..open]);
        }
    }
    if let Some(at) = shown.find("version=") {
        let rest = &shown[at + 8..];
        let hex = rest.chars().take_while(char::is_ascii_hexdigit).count();
        if hex == 12 {
            shown = format!("{}version=VERSION{}", &shown[..at], &rest[12..]);
        }
    }
    shown
}

/// `wasmux call FILE ARGS`.
fn call(file: &Path, args: &[&str]) -> Finished {
    let mut all: Vec<&OsStr> = vec![os("call"), file.as_os_str()];
    all.extend(args.iter().map(|a| os(a)));
    wasmux_tool(&all, CALL)
}

fn assert_answer(out: &Finished, expected: &str) {
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, [expected], "{out:?}");
}

/// A failed `wasmux call`: exit status 1 and the one line `expected`, whole.
fn assert_error(out: &Finished, expected: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, [expected], "{out:?}");
}

/// The plugin's log lines of a `wasmux call`, as the docs show them.
fn log_lines(out: &Finished) -> Vec<String> {
    out.stderr.lines().map(sized).collect()
}

// ---- Each language's template: new ─▶ build ─▶ call ----

#[test]
fn the_rust_template_builds_and_says_hello() {
    let project = template("rust");
    // Its own test runs the handler natively.
    let mut test = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    test.arg("test").current_dir(&project.dir).env("CARGO_TARGET_DIR", test_cache().join("rust-native-target"));
    let out = Process::run(&mut test, BUILD);
    assert!(out.status.success(), "cargo test in the Rust template failed: {out:?}");

    // The same source in another directory builds to the same bytes.
    let elsewhere = project._tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("create a directory");
    let out = wasmux_in(&elsewhere, &["new", "hello-rust", "--lang", "rust"], crate::common::STEP);
    assert!(out.status.success(), "{out:?}");
    let again = build(&elsewhere.join("hello-rust"), "hello-rust");
    let first = std::fs::read(project.dir.join("dist/hello-rust.wasm")).expect("read the component");
    assert!(std::fs::read(again).expect("read the component") == first, "the Rust template built to other bytes in another directory");
}

/// Rust projects share one cargo target directory (the standard library
/// for wasm32 is built once for all), where cargo names a library by its
/// crate name alone: two projects of one name wrote one file, and the
/// first, built again with its sources unchanged, got the other's code.
#[test]
fn two_rust_projects_of_one_name_each_build_their_own_code() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (parent, greeting) in [(&a, None), (&b, Some("Bye, "))] {
        std::fs::create_dir_all(parent).expect("create a directory");
        let out = wasmux_in(parent, &["new", "twin", "--lang", "rust"], crate::common::STEP);
        assert!(out.status.success(), "{out:?}");
        if let Some(greeting) = greeting {
            let source = parent.join("twin/src/lib.rs");
            let text = std::fs::read_to_string(&source).expect("read the source");
            assert!(text.contains("Hello, "), "no greeting in the template: {text}");
            std::fs::write(&source, text.replace("Hello, ", greeting)).expect("save the source");
        }
        build(&parent.join("twin"), "twin");
    }
    assert_answer(&call(&b.join("twin/dist/twin.wasm"), &["--content", "x"]), "Got response: b'Bye, x!'");
    // Built again, unchanged: its own code, not the other's.
    let component = build(&a.join("twin"), "twin");
    assert_answer(&call(&component, &["--content", "x"]), "Got response: b'Hello, x!'");
}

#[test]
fn the_python_template_builds_and_says_hello() {
    let project = template("python");
    // Its own test calls the component with `wasmux call` (from PATH).
    let mut test = Command::new("python3");
    test.args(["-m", "unittest", "-v"]).current_dir(&project.dir).env("PATH", path_with_wasmux()).envs(tool_env());
    let out = Process::run(&mut test, CALL);
    assert!(out.status.success(), "the Python template's test failed: {out:?}");
}

#[test]
fn the_javascript_template_builds_and_says_hello() {
    let project = template("js");
    // Its own test runs the handler in Node.js, then calls the component
    // with `wasmux call` (from PATH).
    let mut test = Command::new("node");
    test.arg("--test").current_dir(&project.dir).env("PATH", path_with_wasmux()).envs(tool_env());
    let out = Process::run(&mut test, CALL);
    assert!(out.status.success(), "the JavaScript template's test failed: {out:?}");
}

struct Project {
    /// Holds the project until the test ends.
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

/// What `wasmux new NAME --lang LANG` prints, as the README shows it.
fn created(name: &str, lang: &str) -> Vec<String> {
    let (language, files): (&str, &[&str]) = match lang {
        "rust" => ("a Rust", &["Cargo.toml", "Cargo.lock", "src/lib.rs", "README.md", ".gitignore", "sdk/Cargo.toml", "sdk/src/lib.rs"]),
        "python" => ("a Python", &["pyproject.toml", "app.py", "test_app.py", "README.md", ".gitignore"]),
        _ => ("a JavaScript", &["package.json", "app.js", "app.test.js", "README.md", ".gitignore"]),
    };
    let mut lines = vec![format!("Created {language} plugin `{name}` in {name}:")];
    let wit = ["wit/wasmux.wit", "wit/deps/keyvalue/atomic.wit", "wit/deps/keyvalue/batch.wit", "wit/deps/keyvalue/store.wit", "wit/deps/keyvalue/watch.wit", "wit/deps/keyvalue/world.wit"];
    lines.extend(files.iter().chain(&wit).map(|file| format!("  {file}")));
    lines.extend([
        "Next:".to_owned(),
        format!("  cd {name}"),
        format!("  wasmux build      # dist/{name}.wasm"),
        format!("  wasmux call dist/{name}.wasm --content world"),
        "  wasmux dev        # serve it on 127.0.0.1:65432, each save swapped in".to_owned(),
    ]);
    lines
}

/// Writes the template of `lang` into a new directory, builds it and calls
/// it, as the README shows the commands: every template answers the same,
/// `Hello, ` + the content as UTF-8 (invalid bytes replaced) + `!`, and
/// logs one line. Then builds and calls the example of the host's
/// functions in the new project's README.
fn template(lang: &str) -> Project {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let parent = tmp.path().join("somewhere else");
    std::fs::create_dir_all(&parent).expect("create a directory");
    let name = format!("hello-{lang}");
    let out = wasmux_in(&parent, &["new", &name, "--lang", lang], crate::common::STEP);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, created(&name, lang), "{out:?}");
    let dir = parent.join(&name);
    assert_no_path_back(&dir);

    build(&dir, &name);
    let out = wasmux_in(&dir, &["call", &format!("dist/{name}.wasm"), "--deadline", "30s", "--content", "world"], CALL);
    assert_answer(&out, "Got response: b'Hello, world!'");
    assert_eq!(log_lines(&out), [format!(" INFO greeting world plugin={name} version=VERSION tenant=default")], "{out:?}");

    let component = dir.join("dist").join(format!("{name}.wasm"));
    let bytes = tmp.path().join("content");
    std::fs::write(&bytes, b"w\xf6rld \xf0\x9f\x90\xb6\xff").expect("write the content");
    let out = call(&component, &["--content-file", bytes.to_str().expect("utf-8 path")]);
    assert_answer(&out, r"Got response: b'Hello, w\xef\xbf\xbdrld \xf0\x9f\x90\xb6\xef\xbf\xbd!'");

    host_functions_example(&parent, lang);
    Project { _tmp: tmp, dir }
}

/// The README of a new project shows the host's `log`, `config` and
/// `outcome` in a code block under "The host's functions": that code,
/// as the plugin's module, builds, and answers as the README says.
fn host_functions_example(parent: &Path, lang: &str) {
    let name = format!("host-{lang}");
    let out = wasmux_in(parent, &["new", &name, "--lang", lang], crate::common::STEP);
    assert!(out.status.success(), "{out:?}");
    let dir = parent.join(&name);
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("read the README");
    let section = readme.split("## The host's functions").nth(1).expect("a section on the host's functions");
    let block = section.split("```").nth(1).expect("a code block in it");
    let (_, code) = block.split_once('\n').expect("a fenced block");
    let module = match lang {
        "rust" => "src/lib.rs",
        "python" => "app.py",
        _ => "app.js",
    };
    std::fs::write(dir.join(module), code).expect("write the README's example");
    build(&dir, &name);
    let out = wasmux_in(&dir, &["call", &format!("dist/{name}.wasm"), "--deadline", "30s", "--content", "world", "--config", "greeting=Howdy"], CALL);
    assert_answer(&out, "Got response: b'Howdy, world!'");
    assert_eq!(log_lines(&out), [format!(" INFO greeting world plugin={name} version=VERSION tenant=default")], "{out:?}");
}

/// No file of a new project refers to this repository.
fn assert_no_path_back(dir: &Path) {
    let repository = root().display().to_string();
    for entry in walk(dir) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        assert!(!text.contains(&repository), "{} names the repository", entry.display());
        assert!(!text.contains("../../"), "{} has a path out of the project", entry.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read a directory").map(|e| e.expect("an entry").path()) {
        if entry.is_dir() { files.extend(walk(&entry)) } else { files.push(entry) }
    }
    files
}

/// PATH with the `wasmux` under test first.
fn path_with_wasmux() -> OsString {
    let bin = Path::new(env!("CARGO_BIN_EXE_wasmux")).parent().expect("the binary's directory").to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&rest))).expect("a PATH")
}

// ---- wasmux call ----

#[test]
fn call_prints_the_answer_as_send_does() {
    let search = plugins_dir().join("search.wasm");
    let out = call(&search, &["-t", "text/json", "--content", r#"{"action": "search", "value": "morpheus"}"#]);
    assert_answer(&out, "Got result: Follow the white rabbit. 🐰");
    let echo = plugins_dir().join("binary-echo.wasm");
    let out = call(&echo, &["-t", "binary/custom-client-binary-type", "-e", "binary", "--content", "binary😃"]);
    assert_answer(&out, r"Got response: b'First 10 bytes of request: binary\xf0\x9f\x98\x83'");
}

#[test]
fn call_passes_fields_and_configuration() {
    let echo = crate::common::fixtures_dir().join("echo-fields.wasm");
    let out = call(&echo, &["--field", "user=ann", "--field", "n=3", "--content", "hi"]);
    assert!(out.status.success(), "{out:?}");
    // The fields as echo-fields lists them (each value as JSON text), in
    // the guide's way of printing bytes: a backslash shows as two.
    assert!(out.stdout[0].contains(r#"["user", "\\"ann\\""], ["n", "3"]"#), "{out:?}");
    let fuzzy = plugins_dir().join("search@fuzzy.wasm");
    let query = ["-t", "text/json", "--content", r#"{"action": "search", "value": "MORPH"}"#];
    assert_answer(&call(&fuzzy, &query), "Got result: Follow the white rabbit. 🐰");
    let mut exact = query.to_vec();
    exact.extend(["--config", "match=exact"]);
    assert_answer(&call(&fuzzy, &exact), r#"Got result: No match for "MORPH"."#);
}

#[test]
fn call_exits_non_zero_on_a_handler_error() {
    let search = plugins_dir().join("search.wasm");
    let out = call(&search, &["-t", "text/json", "-e", "klingon", "--content", "{}"]);
    assert_error(&out, r#"Got result: Error: plugin search does not support this request: unsupported content-encoding "klingon" (use utf-8, ascii or latin-1)"#);
    let out = call(&search, &["-t", "text/json", "--content", "not json"]);
    assert_error(&out, "Got result: Error: bad request for plugin search: content is not valid JSON: expected ident at line 1 column 2");
    let trap = crate::common::fixtures_dir().join("trap.wasm");
    assert_error(
        &call(&trap, &["--content", "x"]),
        "Got result: Error: plugin trap trapped: wasm `unreachable` instruction executed (a panic or an abort in the plugin)",
    );
}

#[test]
fn call_refuses_what_is_not_a_plugin_in_one_line() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let junk = tmp.path().join("junk.wasm");
    std::fs::write(&junk, b"not a component").expect("write");
    for (file, start) in [(junk, "wasmux: plugin junk: refused"), (tmp.path().join("missing.wasm"), "wasmux: cannot read")] {
        let out = call(&file, &["--content", "x"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{out:?}");
        assert!(lines[0].starts_with(start), "{out:?}");
    }
}

/// The fields the host reads itself, in any spelling, and a field with no
/// name, never reach a plugin from a server: `wasmux call` refuses them
/// rather than try the plugin on a request no client can send it.
#[test]
fn call_refuses_fields_a_server_never_passes_to_a_plugin() {
    let echo = crate::common::fixtures_dir().join("echo-fields.wasm");
    let refused = |field: &str| format!("wasmux: --field {field}: {} is read by the host and never reaches a plugin as a field; ", field.split('=').next().unwrap_or_default());
    for (field, expected) in [
        ("content-type=zzz", format!("{}give the content-type with -t (--content-type)", refused("content-type=zzz"))),
        ("Content-Encoding=x", format!("{}give the content-encoding with -e (--encoding)", refused("Content-Encoding=x"))),
        ("CONTENT-LENGTH=5", format!("{}it is the content's length: give the content with --content or --content-file", refused("CONTENT-LENGTH=5"))),
        ("byteorder=big", format!("{}wasmux call sends this machine's", refused("byteorder=big"))),
        ("Authorization=Bearer x", format!("{}a server takes it as a tenant's credential (`wasmux send --token`), and `wasmux call` serves the default tenant", refused("Authorization=Bearer x"))),
        ("=v", "wasmux: --field =v: the field has no name: write NAME=VALUE".to_owned()),
    ] {
        let out = call(&echo, &["--field", "user=ann", "--field", field, "--content", "hi"]);
        assert_eq!(out.status.code(), Some(1), "{field}: {out:?}");
        assert!(out.stdout.is_empty(), "{field}: {out:?}");
        assert_eq!(out.stderr.lines().collect::<Vec<_>>(), [expected.as_str()], "{field}: {out:?}");
    }
    // Any other name is the plugin's.
    let out = call(&echo, &["--field", "content-types=x", "--content", "hi"]);
    assert!(out.status.success() && out.stdout[0].contains(r#"["content-types", "\\"x\\""]"#), "{out:?}");
}

/// `--deadline 0` is refused as the option, not as the configuration key
/// it sets (`limits.plugin-deadline`), which the user never wrote.
#[test]
fn call_refuses_a_deadline_of_zero_by_its_option() {
    let echo = crate::common::fixtures_dir().join("echo-fields.wasm");
    let out = call(&echo, &["--deadline", "0s", "--content", "hi"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), ["wasmux: --deadline must be longer than 0"], "{out:?}");
}

/// The `cd` line `wasmux new` prints can be pasted into a shell, whatever
/// the directory's name: `'it's here'` was a quote left open.
#[test]
fn new_prints_a_cd_line_a_shell_can_run() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    for (dir, shown) in [("it's here", r"cd 'it'\''s here'"), ("two words", "cd 'two words'"), ("$HOME;x", "cd '$HOME;x'"), ("plain/dir", "cd plain/dir")] {
        let out = wasmux_in(tmp.path(), &["new", "quoted", "--lang", "python", "--dir", dir], crate::common::STEP);
        assert!(out.status.success(), "{out:?}");
        let line = out.stdout.iter().find_map(|line| line.strip_prefix("  cd ")).map(|rest| format!("cd {rest}"));
        assert_eq!(line.as_deref(), Some(shown), "{out:?}");
        let mut shell = Command::new("sh");
        shell.arg("-c").arg(format!("{shown} && pwd")).current_dir(tmp.path());
        let ran = Process::run(&mut shell, crate::common::STEP);
        let expected = tmp.path().join(dir).canonicalize().expect("the new directory");
        assert_eq!(ran.stdout, [expected.display().to_string()], "{ran:?}");
    }
}

/// `--out` is the directory the component goes in: `-o hello.wasm` was
/// made a directory holding `hello.wasm/hello.wasm`. It is refused, before
/// anything is built, saying which directory to give; a directory that
/// exists is taken whatever its name.
#[test]
fn build_refuses_an_out_that_names_a_component() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let out = wasmux_in(tmp.path(), &["new", "named", "--lang", "python", "--dir", "named"], crate::common::STEP);
    assert!(out.status.success(), "{out:?}");
    let project = tmp.path().join("named");
    let out = wasmux_in(&project, &["build", "--out", "plugins/named.wasm"], crate::common::STEP);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        ["wasmux: --out plugins/named.wasm names a file, but --out is the directory the component goes in (as OUT/named.wasm, named being the project's plugin name): give the directory (--out plugins), and set plugin-name in the project's manifest to serve it under another name"],
        "{out:?}"
    );
    assert!(!project.join("plugins").exists(), "the refused build made a directory");
    let out = wasmux_in(&project, &["build", "-o", "named.wasm"], crate::common::STEP);
    assert!(out.stderr.contains("(--out .)"), "{out:?}");
}

// ---- wasmux dev ----

#[test]
fn dev_rebuilds_on_a_save_and_swaps_while_a_connection_stays_open() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("greeter");
    assert!(new_project("greeter", "rust", &dir).status.success());
    let server = Server::start_dev(&dir, BUILD);
    let request = message(json!({"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8"}), b"world");
    let mut conn = server.connect();
    assert_eq!(conn.request(&request).content, b"Hello, world!");

    let source = dir.join("src/lib.rs");
    let text = std::fs::read_to_string(&source).expect("read the source");
    let howdy = text.replace("\"Hello, {name}!\"", "\"Howdy, {name}!\"");
    assert_ne!(text, howdy, "the template changed: update this test");
    std::fs::write(&source, &howdy).expect("save the source");
    assert!(wait_for_swaps(&server, 1), "no swap: {}", server.log());
    // The same connection, answered by the new version.
    assert_eq!(conn.request(&request).content, b"Howdy, world!");

    // A build that fails leaves the version before serving.
    std::fs::write(&source, howdy.replace("fn handle", "fn handle(")).expect("save a broken source");
    assert!(server.wait_for_log("build failed", BUILD), "{}", server.log());
    assert_eq!(conn.request(&request).content, b"Howdy, world!");
    assert_eq!(swaps(&server), 1, "{}", server.log());
}

/// A first build that fails over a build from before: the server loads
/// what dist/ holds, and the warning says so (it said "serving without
/// plugin stale", and then served the old build).
#[test]
fn dev_says_it_serves_the_last_build_while_the_first_build_fails() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("stale");
    assert!(new_project("stale", "rust", &dir).status.success());
    build(&dir, "stale");
    let source = dir.join("src/lib.rs");
    let text = std::fs::read_to_string(&source).expect("read the source");
    std::fs::write(&source, text.replace("fn handle", "fn handle(")).expect("save a broken source");
    let server = Server::start_dev(&dir, BUILD);
    let log = server.log();
    assert!(log.contains("build failed"), "{log}");
    assert!(log.contains(": serving the last build in dist/stale.wasm until a build succeeds; fix the source and save"), "{log}");
    assert!(!log.contains("serving without plugin"), "{log}");
    let request = message(json!({"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8"}), b"world");
    assert_eq!(server.connect().request(&request).content, b"Hello, world!", "{}", server.log());
}

/// The plugin's name is the route's (`*` to it) and the file's in dist/:
/// a package renamed while `wasmux dev` runs is not built under the new
/// name, which nothing would serve, and the log says to restart (a build
/// of dist/probe2.wasm was announced, and the old plugin served on).
#[test]
fn dev_says_to_restart_when_the_plugin_is_renamed() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("probe");
    assert!(new_project("probe", "rust", &dir).status.success());
    let server = Server::start_dev(&dir, BUILD);
    let request = message(json!({"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8"}), b"world");
    let mut conn = server.connect();
    assert_eq!(conn.request(&request).content, b"Hello, world!");

    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("read the manifest");
    let renamed = text.replace("name = \"probe\"", "name = \"probe2\"");
    assert_ne!(text, renamed, "the template changed: update this test");
    std::fs::write(&manifest, renamed).expect("save the manifest");
    assert!(server.wait_for_log("Cargo.toml changed: ", BUILD), "{}", server.log());
    let log = server.log();
    assert!(
        log.contains("Cargo.toml changed: the project is now rust plugin probe2, not rust plugin probe: not built; restart wasmux dev to serve it; the version before keeps serving"),
        "{log}"
    );
    assert!(!log.contains("Built dist/probe2.wasm") && !dir.join("dist/probe2.wasm").exists(), "{log}");
    assert_eq!(conn.request(&request).content, b"Hello, world!");
}

/// The registry's swap lines: `plugin greeter: OLD -> NEW (…)`.
fn swaps(server: &Server) -> usize {
    server.log().lines().filter(|line| line.contains("plugin greeter: ") && line.contains(" -> ")).count()
}

/// Waits (up to [`BUILD`]) until `count` swaps were logged.
fn wait_for_swaps(server: &Server, count: usize) -> bool {
    let end = std::time::Instant::now() + BUILD;
    while std::time::Instant::now() < end {
        if swaps(server) >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

// ---- What a Python or JavaScript plugin meets in the sandbox ----

/// A new project of `lang` whose module is `code`, built; returns its
/// folder, a copy of the test's own in a temporary directory, and what the
/// build printed. Each project is built once per run ([`shared_project`])
/// and copied for every test that names it: a Python or JavaScript build
/// keeps both cores busy for seconds, and several tests need the same one
/// (the `dev` tests save into their copy).
fn project_with(lang: &str, name: &str, module: &str, code: &str) -> (tempfile::TempDir, PathBuf, Finished) {
    let shared = shared_project(lang, name, module, code);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join(name);
    copy_tree(&shared.dir, &dir);
    (tmp, dir, shared.built.clone())
}

/// A project [`project_with`] copies: made and built once per run.
struct SharedProject {
    dir: PathBuf,
    /// The language, the module and its code: one name, one project.
    source: [String; 3],
    /// What `wasmux build` printed.
    built: Finished,
}

/// The project `name`, made and built the first time a test asks for it;
/// a test asking at the same time waits for that build. Two tests naming
/// the same project with different sources is the tests' mistake.
fn shared_project(lang: &str, name: &str, module: &str, code: &str) -> &'static SharedProject {
    static PROJECTS: Mutex<BTreeMap<String, &'static OnceLock<SharedProject>>> = Mutex::new(BTreeMap::new());
    let slot = *PROJECTS.lock().unwrap_or_else(PoisonError::into_inner).entry(name.to_owned()).or_insert_with(|| Box::leak(Box::default()));
    let project = slot.get_or_init(|| {
        let parent = shared_projects_dir();
        let out = wasmux_in(parent, &["new", name, "--lang", lang], crate::common::STEP);
        assert!(out.status.success(), "{out:?}");
        let dir = parent.join(name);
        std::fs::write(dir.join(module), code).expect("write the plugin");
        let built = wasmux_in(&dir, &["build"], BUILD);
        assert!(built.status.success(), "wasmux build failed: {built:?}");
        SharedProject { dir, source: [lang.to_owned(), module.to_owned(), code.to_owned()], built }
    });
    assert_eq!(project.source, [lang, module, code], "two tests name the project {name} with different sources");
    project
}

/// `target/test-projects/PID`, where this run's shared projects are made:
/// emptied first, and the directories of runs no longer running removed
/// (each run's stays until the next one, a few tens of MB).
fn shared_projects_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let parent = root().join("target/test-projects");
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
            if pid.is_some_and(|pid| pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = parent.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("create target/test-projects");
        dir
    })
}

/// Copies the directory `from` to the new directory `to`, files and
/// directories.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// A Python plugin that imports from the standard library inside
/// functions, imports what the sandbox refuses, and raises.
const PYTHON_IN_THE_SANDBOX: &str = r#"import wit_world
from wit_world.imports import host, types


def answer(text):
    return types.Response("text/plain", "utf-8", [], text.encode())


class WitWorld(wit_world.WitWorld):
    def handle(self, request):
        what = request.content.decode()
        if what == "setting": return answer(f"greeting is {host.config('greeting')}")
        if what == "parse":
            import urllib.parse
            return answer(urllib.parse.quote("a b/c"))
        if what == "idna":
            return answer("bücher.example".encode("idna").decode())
        if what == "socket":
            import socket
            return answer("imported socket")
        return answer(str(1 / 0))
"#;

/// A JavaScript plugin that looks for `fetch`, calls it, and throws.
const JAVASCRIPT_IN_THE_SANDBOX: &str = r#"import { config } from 'wasmux:plugin/host@0.1.1';
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function answer(text) {
  return { contentType: 'text/plain', contentEncoding: 'utf-8', fields: [], content: encoder.encode(text) };
}

export function handle(request) {
  const what = decoder.decode(request.content);
  if (what === 'setting') return answer(`greeting is ${config('greeting')}`);
  if (what === 'typeof') return answer(`fetch is ${typeof fetch}`);
  if (what === 'catch') {
    try {
      fetch('http://127.0.0.1:9/');
    } catch (error) {
      return answer(`caught ${error}`);
    }
  }
  throw new Error('boom');
}
"#;

#[test]
fn python_imports_the_standard_library_anywhere_and_refuses_sockets_by_name() {
    let code = PYTHON_IN_THE_SANDBOX;
    let (_tmp, dir, built) = project_with("python", "sandboxed-py", "app.py", code);
    assert!(
        built.stderr.contains("wasmux: warning: app.py:19: importing socket will fail: the host refuses every network connection and name lookup\n"),
        "no warning about the import of socket: {built:?}"
    );
    let call = |content: &str| wasmux_in(&dir, &["call", "dist/sandboxed-py.wasm", "--deadline", "30s", "--content", content], CALL);
    assert_answer(&call("parse"), "Got response: b'a%20b/c'");
    assert_answer(&call("idna"), "Got response: b'xn--bcher-kva.example'");
    let out = call("socket");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stdout,
        ["Got result: Error: plugin sandboxed-py failed: uncaught ImportError: socket cannot be imported in a wasmux plugin: the host refuses every network connection and name lookup"],
        "{out:?}"
    );
    let out = call("boom");
    assert_eq!(out.stdout, ["Got result: Error: plugin sandboxed-py failed: uncaught ZeroDivisionError: division by zero"], "{out:?}");
    assert!(out.stderr.contains("Traceback") && out.stderr.contains("ZeroDivisionError"), "no traceback in the log: {out:?}");
}

#[test]
fn javascript_has_no_fetch_and_answers_uncaught_exceptions_as_errors() {
    let code = JAVASCRIPT_IN_THE_SANDBOX;
    let (_tmp, dir, _) = project_with("js", "sandboxed-js", "app.js", code);
    let call = |content: &str| wasmux_in(&dir, &["call", "dist/sandboxed-js.wasm", "--deadline", "30s", "--content", content], CALL);
    assert_answer(&call("typeof"), "Got response: b'fetch is undefined'");
    assert_answer(&call("catch"), "Got response: b'caught ReferenceError: fetch is not defined'");
    let out = call("throw");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, ["Got result: Error: plugin sandboxed-js failed: uncaught Error: boom"], "{out:?}");
    assert!(out.stderr.contains("handle@app.js:"), "no stack in the log: {out:?}");
}

// ---- wasmux dev's runtimes: Python and JavaScript saves served without a build ----

/// `wasmux send` of `content` as text to `server`, as `wasmux call` is run
/// on the built component.
fn send_text(server: &Server, content: &str) -> Finished {
    crate::common::wasmux(&["send", "--addr", &server.addr_string(), "-t", "text/plain", "-e", "utf-8", "--content", content])
}

/// A project served by `wasmux dev`, and what is asked of it.
struct DevCase<'a> {
    /// The plugin's name, and the module a save changes.
    name: &'a str,
    module: &'a str,
    /// Contents sent as text/plain; the first is asked again after the save.
    contents: &'a [&'a str],
    /// The save: `from` in the module made `to`, after which the first
    /// content is answered `changed`.
    from: &'a str,
    to: &'a str,
    changed: &'a str,
    /// Appended to the module: a syntax error.
    broken: &'a str,
    /// More arguments for `wasmux dev`.
    args: &'a [&'a str],
}

/// Serves the project `dir` (whose component `wasmux build` made) with
/// `wasmux dev`, and checks that it answers each of the case's contents
/// as the built component does, printed the same by `wasmux send` as by
/// `wasmux call`; then that a save is served without a build (nothing
/// built, nothing compiled, `dist/` untouched), and that a broken save
/// leaves it serving. Returns the server, for its log.
fn dev_serves_as_built(dir: &Path, case: &DevCase<'_>) -> Server {
    let component = dir.join("dist").join(format!("{}.wasm", case.name));
    let built_bytes = std::fs::read(&component).expect("the built component");
    let server = Server::start_dev_with(dir, case.args, BUILD);
    assert!(server.log().contains("through the ") && server.log().contains(" dev runtime"), "{}", server.log());
    for content in case.contents {
        // (An interpreter's instance on a busy machine: a deadline of its own.)
        let built = call(&component, &["--deadline", "30s", "--content", content]);
        let served = send_text(&server, content);
        assert_eq!(served.stdout, built.stdout, "{content}: wasmux dev answered otherwise than the built component; {}", server.log());
    }

    // A save: served without a build.
    let source = dir.join(case.module);
    let text = std::fs::read_to_string(&source).expect("read the source");
    let saved = text.replace(case.from, case.to);
    assert_ne!(saved, text, "no {:?} in the source", case.from);
    let before = server.log().len();
    std::fs::write(&source, &saved).expect("save the source");
    let served = format!("plugin {}: serving {} as saved", case.name, case.module);
    assert!(server.wait_for_log(&served, BUILD), "{}", server.log());
    assert_eq!(send_text(&server, case.contents[0]).stdout, [case.changed], "{}", server.log());
    let log = server.log();
    let since = &log[before..];
    assert!(!since.contains("Built ") && !since.contains("wasmux: building ") && !since.contains("compiling"), "the save was built: {since}");
    assert!(std::fs::read(&component).expect("the built component") == built_bytes, "dist/ changed");

    // A broken save: the version before keeps serving.
    std::fs::write(&source, format!("{saved}{}", case.broken)).expect("save a broken source");
    assert!(server.wait_for_log(&format!("{} not served", case.module), BUILD), "{}", server.log());
    assert!(server.log().contains("; the version before keeps serving"), "{}", server.log());
    assert_eq!(send_text(&server, case.contents[0]).stdout, [case.changed], "{}", server.log());
    server
}

#[test]
fn dev_serves_python_source_without_a_build_as_the_built_component_answers() {
    let (tmp, dir, _) = project_with("python", "sandboxed-py", "app.py", PYTHON_IN_THE_SANDBOX);
    // A configuration file: its settings reach the plugin beside the
    // source being served.
    let config = tmp.path().join("dev.toml");
    // (And a deadline for a busy machine: the dev runtime loads the module
    // in every instance, within the request's deadline.)
    let settings = |greeting: &str| format!("[limits]\nplugin-deadline = \"30s\"\n[routes]\n\"text/*\" = \"sandboxed-py\"\n[plugins.sandboxed-py]\ngreeting = \"{greeting}\"\n");
    std::fs::write(&config, settings("Howdy")).expect("write the configuration");
    let case = DevCase {
        name: "sandboxed-py",
        module: "app.py",
        contents: &["parse", "idna", "socket", "boom"],
        from: r#"urllib.parse.quote("a b/c")"#,
        to: r#""saved""#,
        changed: "Got response: b'saved'",
        broken: "\ndef broken(:\n",
        args: &["--config", config.to_str().expect("a UTF-8 path")],
    };
    let server = dev_serves_as_built(&dir, &case);
    assert_eq!(send_text(&server, "setting").stdout, ["Got response: b'greeting is Howdy'"], "{}", server.log());
    // The file changed: reloaded, and the saved source is still served.
    let changed = tmp.path().join("dev.toml.new");
    std::fs::write(&changed, settings("Hi")).expect("write the configuration");
    std::fs::rename(&changed, &config).expect("replace the configuration");
    assert!(server.wait_for_log(&format!("configuration {} reloaded", config.display()), crate::common::STEP), "{}", server.log());
    assert_eq!(send_text(&server, "setting").stdout, ["Got response: b'greeting is Hi'"], "{}", server.log());
    assert_eq!(send_text(&server, case.contents[0]).stdout, [case.changed], "the reload served another source: {}", server.log());
    let log = server.log();
    // The build's warning, and the traceback of an uncaught exception, as
    // the built component logs it.
    assert!(log.contains("wasmux: warning: app.py:19: importing socket will fail: the host refuses every network connection and name lookup\n"), "{log}");
    assert!(log.contains("File \"/0/app.py\", line 21, in handle") && log.contains("ZeroDivisionError: division by zero"), "{log}");
    // The broken save's error, in the plugin's file and line.
    assert!(log.contains("File \"/0/app.py\", line 23") && log.contains("SyntaxError"), "{log}");
}

#[test]
fn dev_serves_javascript_source_without_a_build_as_the_built_component_answers() {
    let (_tmp, dir, _) = project_with("js", "sandboxed-js", "app.js", JAVASCRIPT_IN_THE_SANDBOX);
    let case = DevCase {
        name: "sandboxed-js",
        module: "app.js",
        contents: &["catch", "typeof", "throw"],
        from: "`caught ${error}`",
        to: "'saved'",
        changed: "Got response: b'saved'",
        broken: "\nfunction broken( {\n",
        args: &[],
    };
    let server = dev_serves_as_built(&dir, &case);
    // Without a configuration file, every content type goes to the plugin,
    // which has no settings.
    let other = crate::common::wasmux(&["send", "--addr", &server.addr_string(), "-t", "image/png", "-e", "binary", "--content", "setting"]);
    assert_eq!(other.stdout, ["Got response: b'greeting is undefined'"], "{}", server.log());
    let log = server.log();
    // The stack of an uncaught exception in the plugin's own lines.
    assert!(log.contains("uncaught Error: boom\nhandle@app.js:20:"), "{log}");
    // The broken save's error, with its place in the file.
    assert!(log.contains("-[app.js:2"), "{log}");
}

/// A component that is not compiled yet takes seconds: `wasmux call`
/// says so, and when it is done.
#[test]
fn call_shows_a_long_compile() {
    let (_tmp, dir, _) = project_with("python", "sandboxed-py", "app.py", PYTHON_IN_THE_SANDBOX);
    // A cache of its own, empty: the shared one has the build's code.
    let cache = tempfile::tempdir().expect("temp dir");
    let cache_dir = cache.path().display().to_string();
    let out = wasmux_in(&dir, &["call", "dist/sandboxed-py.wasm", "--cache-dir", &cache_dir, "--deadline", "30s", "--content", "parse"], CALL);
    assert_answer(&out, "Got response: b'a%20b/c'");
    let lines: Vec<String> = out.stderr.lines().map(sized).collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("wasmux: compiling dist/sandboxed-py.wasm (") && l.ends_with(" MB) for this machine; the compiled code is kept for its next calls")), "{out:?}");
    assert!(lines.iter().any(|l| l.starts_with("wasmux: compiled in ") && l.ends_with(" s")), "{out:?}");
}
