//! The runner on small documents (`tests/fixtures/`): they pass as
//! written, and every change to one of their answers, exit statuses or
//! listings makes the run fail. `server.md` runs the guide's Python server
//! and client (examples/python), so it needs only python3.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("docs-test is a member of the workspace").to_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new("docs-test/tests/fixtures").join(name)
}

/// Runs wasmux-docs-test on `files`; its exit code and output.
fn run(files: &[PathBuf], extra: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wasmux-docs-test"))
        .arg("--root")
        .arg(root())
        .args(extra)
        .args(files)
        .output()
        .expect("wasmux-docs-test runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

#[test]
fn the_fixtures_pass_and_are_counted() {
    let (code, output) = run(&[fixture("plain.md"), fixture("server.md")], &[]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("7 transcripts run, 1 marked not run"), "{output}");
    assert!(output.contains("not run: docs-test/tests/fixtures/plain.md:52: needs a machine with a public name"), "{output}");
    assert!(output.contains("1 code listings checked against their files, 0 links checked"), "{output}");
}

#[test]
fn ctrl_c_reaches_a_program_even_when_the_runner_was_started_with_it_ignored() {
    // A script's background job (`cmd &`), nohup from one, and some CI
    // runners start the runner with SIGINT and SIGQUIT ignored, which exec
    // keeps: the guide's Python server would then never see Ctrl-C.
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"trap '' INT QUIT; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_wasmux-docs-test"))
        .arg("--root")
        .arg(root())
        .arg(fixture("server.md"))
        .output()
        .expect("wasmux-docs-test runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(!text.contains("did not exit"), "{text}");
}

/// The lines of a transcript that are answers: output lines that are not
/// wildcards, of every ```console block.
fn answer_lines(source: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut in_console = false;
    for (i, line) in source.lines().enumerate() {
        if line.starts_with("```") {
            in_console = !in_console && line == "```console";
            continue;
        }
        let wildcard = line == "..." || line.trim().is_empty();
        if in_console && !line.starts_with("$ ") && !line.starts_with("? ") && !line.starts_with("    ") && !wildcard {
            lines.push(i);
        }
    }
    lines
}

/// Writes `source` with line `index` changed into `dir`, as `name`.
fn changed(dir: &Path, name: &str, source: &str, index: usize, change: impl Fn(&str) -> String) -> PathBuf {
    let text: String = source
        .lines()
        .enumerate()
        .map(|(i, line)| if i == index { change(line) } else { line.to_owned() } + "\n")
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the changed document");
    path
}

#[test]
fn every_changed_answer_fails() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for name in ["plain.md", "server.md"] {
        let source = std::fs::read_to_string(root().join(fixture(name))).expect("the fixture");
        let answers = answer_lines(&source);
        assert!(answers.len() >= 5, "{name}: only {} answer lines", answers.len());
        for index in answers {
            let original = source.lines().nth(index).unwrap_or_default().to_owned();
            // A word changed in the middle, where `[..]` at either end cannot hide it.
            let document = changed(dir.path(), name, &source, index, |line| match line.find(' ') {
                Some(space) => format!("{} changed{}", &line[..space], &line[space..]),
                None => format!("{line} changed"),
            });
            let (code, output) = run(&[document], &[]);
            assert_eq!(code, Some(1), "{name}: changing line {} (`{original}`) did not fail the run:\n{output}", index + 1);
            assert!(output.contains("FAIL"), "{output}");
        }
    }
}

#[test]
fn a_changed_exit_status_fails() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let source = std::fs::read_to_string(root().join(fixture("plain.md"))).expect("the fixture");
    let status = source.lines().position(|l| l == "? 2").expect("a status line");
    for status_line in ["? 1", "? success"] {
        let document = changed(dir.path(), "plain.md", &source, status, |_| status_line.to_owned());
        let (code, output) = run(&[document], &[]);
        assert_eq!(code, Some(1), "{output}");
        assert!(output.contains("exited with 2"), "{output}");
    }
}

#[test]
fn a_changed_listing_fails() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let source = std::fs::read_to_string(root().join(fixture("plain.md"))).expect("the fixture");
    let listed = source.lines().position(|l| l == "its second line").expect("the listing");
    let document = changed(dir.path(), "plain.md", &source, listed, |_| "its 2nd line".into());
    let (code, output) = run(&[document], &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("is not docs-test/tests/fixtures/listed.txt byte for byte"), "{output}");
}

#[test]
fn a_session_past_its_time_bound_fails() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let document = dir.path().join("slow.md");
    std::fs::write(&document, "<!-- docs-test: timeout=1s -->\n```console\n$ sleep 30\n```\n").unwrap();
    let started = std::time::Instant::now();
    let (code, output) = run(&[document], &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("timed out"), "{output}");
    assert!(started.elapsed().as_secs() < 20, "the bound did not stop the session");
}

#[test]
fn a_server_that_never_listens_fails() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let document = dir.path().join("deaf.md");
    std::fs::write(&document, "<!-- docs-test: server=\"echo not a server; exit 3\" wait=65432 -->\n```console\n$ true\n```\n").unwrap();
    let (code, output) = run(&[document], &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("exited before anything listened on port 65432"), "{output}");
    assert!(output.contains("not a server"), "{output}");
}

#[test]
fn annotation_mistakes_stop_the_run_before_anything_runs() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let document = dir.path().join("wrong.md");
    std::fs::write(&document, "<!-- docs-test: sever=\"x\" -->\n```console\n$ touch ran\n```\n").unwrap();
    let (code, output) = run(&[document], &[]);
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("unknown attribute `sever`"), "{output}");
    assert!(!root().join("ran").exists());
}

#[test]
fn a_broken_link_fails() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let document = dir.path().join("links.md");
    std::fs::write(&document, "# Title\n\n[fine](#title), [gone](#nowhere)\n").unwrap();
    let (code, output) = run(&[document], &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("has no heading whose anchor is #nowhere"), "{output}");
    assert!(output.contains("2 links checked"), "{output}");
}

#[test]
fn without_network_namespaces_sessions_run_one_at_a_time() {
    let (code, output) = run(&[fixture("plain.md")], &["--no-netns"]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("4 transcripts run, 1 marked not run"), "{output}");
}
