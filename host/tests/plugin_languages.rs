//! Plugins in every language, built and called as a user's would be: each
//! template of `wasmux new` is written to a fresh directory, built with the
//! toolchain (installing componentize-py or componentize-js into the cache
//! directory on a fresh machine), loaded by the runtime and called; the
//! guide's search in Python and JavaScript (`examples/plugins/`) answers as
//! the guide's logic does, byte for byte.
//!
//! Slow (tens of seconds a language, minutes on a fresh machine): each
//! Python or JavaScript component is an interpreter of 12 to 18 MB.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmux::client::guide_request;
use wasmux::codec::Message;
use wasmux::runtime::{CallContext, HandlerError, PluginError, PoolLimits, Runtime, RuntimeSettings};
use wasmux_toolchain::Language;

fn runtime() -> Runtime {
    Runtime::new(RuntimeSettings { max_concurrent_calls: 2, ..RuntimeSettings::default() }).expect("a runtime")
}

fn call(runtime: &Runtime, plugin: &wasmux::runtime::Plugin, request: &Message) -> Result<Message, PluginError> {
    let mut context = CallContext::default();
    // Interpreters on a busy debug build: the deadline is not under test.
    context.limits.deadline = Duration::from_secs(20);
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    tokio.block_on(runtime.call(plugin, request, &context))
}

fn hello_template(language: Language) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let project = dir.path().join("hello");
    wasmux_toolchain::new_project("hello", language, &project).expect("a new project");
    let out = wasmux_toolchain::build_project(&project, &project.join("dist")).expect("the template builds");
    assert_eq!(out, project.join("dist/hello.wasm"));
    let runtime = runtime();
    let plugin = runtime.load("hello", &std::fs::read(&out).expect("the component")).expect("the component loads");
    for (content, expected) in [(&b"world"[..], "Hello, world!"), ("wörld 🐶".as_bytes(), "Hello, wörld 🐶!"), (b"a\xffb", "Hello, a\u{fffd}b!")] {
        let answer = call(&runtime, &plugin, &Message::new("text/plain", "utf-8", content.to_vec())).expect("an answer");
        assert_eq!(answer.header.content_type, "text/plain", "{language}");
        assert_eq!(answer.header.content_encoding, "utf-8", "{language}");
        assert_eq!(String::from_utf8_lossy(&answer.content), expected, "{language}");
    }
}

#[test]
fn rust_template_builds_and_says_hello() {
    hello_template(Language::Rust);
}

#[test]
fn python_template_builds_and_says_hello() {
    hello_template(Language::Python);
}

/// A Python plugin's `print` and standard error become log lines of the
/// plugin (not the server's stdout), and a server whose pool is too small
/// for it refuses it naming the setting to raise.
#[test]
fn python_output_becomes_log_lines_and_a_small_pool_names_its_setting() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let project = dir.path().join("chatty");
    wasmux_toolchain::new_project("chatty", Language::Python, &project).expect("a new project");
    let app = std::fs::read_to_string(project.join("app.py")).expect("app.py");
    let app = app.replace("import wit_world\n", "import sys\n\nimport wit_world\n").replace(
        "        text = request.content",
        "        print(\"to stdout\", request.content.decode())\n        sys.stderr.write(\"to stderr\\nunfinished\")\n        text = request.content",
    );
    std::fs::write(project.join("app.py"), app).expect("app.py written");
    let out = wasmux_toolchain::build_project(&project, &project.join("dist")).expect("it builds");
    let bytes = std::fs::read(&out).expect("the component");

    let log = Arc::new(Mutex::new(Vec::new()));
    let writer = Arc::clone(&log);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || LogWriter(Arc::clone(&writer)))
        .finish();
    let runtime = runtime();
    let plugin = runtime.load("chatty", &bytes).expect("it loads");
    let answer = tracing::subscriber::with_default(subscriber, || {
        call(&runtime, &plugin, &Message::new("text/plain", "utf-8", b"world".to_vec())).expect("an answer")
    });
    assert_eq!(&answer.content[..], b"Hello, world!");
    let log = String::from_utf8_lossy(&log.lock().expect("the log")).into_owned();
    assert!(log.contains("INFO") && log.contains("to stdout world"), "{log}");
    assert!(log.contains("WARN") && log.contains("to stderr"), "{log}");
    assert!(log.contains("unfinished"), "the unfinished line is logged when the call ends: {log}");
    assert!(log.contains("plugin=chatty"), "{log}");

    let small = Runtime::new(RuntimeSettings { pool: PoolLimits { core_instances: 8, ..PoolLimits::default() }, ..RuntimeSettings::default() })
        .expect("a runtime");
    let refusal = format!("{:#}", small.load("chatty", &bytes).expect_err("refused"));
    assert!(refusal.contains("max-core-instances-per-plugin (now 8)"), "{refusal}");
    let no_wasi = runtime.load_with("chatty", &bytes, false).map(|_| ()).expect_err("refused");
    assert!(format!("{no_wasi:#}").contains("imports WASI"), "{no_wasi:#}");
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("the log").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn javascript_template_builds_and_says_hello() {
    hello_template(Language::JavaScript);
}

/// The guide's requests and a few it does not send, with the answer the
/// guide's logic gives each.
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

fn search_example(dir: &str) {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins").join(dir);
    let out_dir = tempfile::tempdir().expect("a temporary directory");
    let out = wasmux_toolchain::build_project(&project, out_dir.path()).expect("the example builds");
    let runtime = runtime();
    let plugin = runtime.load(dir, &std::fs::read(&out).expect("the component")).expect("the component loads");
    for (request, expected) in search_cases() {
        let shown = String::from_utf8_lossy(&request.content).into_owned();
        match (call(&runtime, &plugin, &request), expected) {
            (Ok(answer), Ok(expected)) => {
                assert_eq!(String::from_utf8_lossy(&answer.content), String::from_utf8_lossy(&expected), "{dir}: {shown}");
                assert_eq!((answer.header.content_type.as_str(), answer.header.content_encoding.as_str()), ("text/json", "utf-8"));
            }
            (Err(PluginError::Handler(error)), Err(kind)) => {
                let got = match &error {
                    HandlerError::BadRequest(_) => "bad-request",
                    HandlerError::Unsupported(_) => "unsupported",
                    HandlerError::Internal(_) => "internal",
                };
                assert_eq!(got, kind, "{dir}: {shown}: {error:?}");
            }
            (got, expected) => panic!("{dir}: {shown}: got {got:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn python_search_answers_as_the_guide() {
    search_example("search-py");
}

#[test]
fn javascript_search_answers_as_the_guide() {
    search_example("search-js");
}
