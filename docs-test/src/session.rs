//! Runs one session: its hidden servers, its background blocks, and each
//! transcript's commands in bash, then compares what they printed.
//!
//! Each block runs in a bash of its own (a `cd` or a variable lasts until
//! the end of its block), in the session's working directory, with
//! standard output and standard error in one stream as a terminal shows
//! them, and standard input empty. Every process is in a process group of
//! its own, so that stopping it stops what it started.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::plan::{Session, Transcript, WorkDir};

/// What every command gets, whichever session runs it.
#[derive(Clone, Debug)]
pub struct Environment {
    /// The repository root.
    pub root: PathBuf,
    /// Put first on PATH (the `wasmux` binary's directory).
    pub bin_dir: PathBuf,
}

/// How a session went.
#[derive(Debug, Default)]
pub struct Outcome {
    pub passed: usize,
    pub failed: usize,
    /// What a reader needs to see: each failing transcript and why.
    pub report: String,
}

/// How long an interrupted or stopped program gets to leave (after its
/// Ctrl-C, or a server after SIGTERM) before it is killed. The guide's
/// Python server leaves in milliseconds; one that exits in time costs
/// nothing more.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Marks the command boundaries in a block's output (ASCII record separator).
const MARK: char = '\u{1e}';

pub fn run(session: &Session, env: &Environment) -> Outcome {
    let deadline = Instant::now() + session.timeout;
    let mut outcome = Outcome::default();
    let temp;
    let dir: PathBuf = match session.work_dir {
        WorkDir::Repo => env.root.clone(),
        WorkDir::Temp => match tempfile::Builder::new().prefix("docs-test.").tempdir() {
            Ok(dir) => {
                temp = dir;
                temp.path().to_owned()
            }
            Err(e) => {
                outcome.failed = session.transcripts.len();
                outcome.report = format!("{}: cannot make a temporary directory: {e}\n", session.place());
                return outcome;
            }
        },
    };
    let mut servers: Vec<Process> = Vec::new();
    let mut background: Vec<(&Transcript, Process)> = Vec::new();
    let mut stopped_early = None;
    let mut failed_already = None;
    for (i, transcript) in session.transcripts.iter().enumerate() {
        let result = (|| -> Result<(), String> {
            for server in &transcript.servers {
                let process = Process::spawn(server, server, &dir, env).map_err(|e| format!("cannot start server `{server}`: {e}"))?;
                servers.push(process);
            }
            if transcript.background {
                let process = Process::spawn(&label(transcript), &script(transcript), &dir, env).map_err(|e| format!("cannot start bash: {e}"))?;
                background.push((transcript, process));
            }
            let watched: Vec<&Process> = servers.iter().chain(background.iter().map(|(_, p)| p)).collect();
            for &port in &transcript.waits {
                wait_for_listener(port, deadline, &watched)?;
            }
            // What this block started (its servers, and itself if
            // background), or else everything the session runs.
            let own: Vec<&Process> = servers[servers.len() - transcript.servers.len()..]
                .iter()
                .chain(background.last().filter(|_| transcript.background).map(|(_, p)| p))
                .collect();
            let looked_at = if own.is_empty() { &watched } else { &own };
            for text in &transcript.wait_output {
                wait_for_output(text, deadline, looked_at)?;
            }
            if transcript.background {
                return Ok(());
            }
            let mut process = Process::spawn(&label(transcript), &script(transcript), &dir, env).map_err(|e| format!("cannot start bash: {e}"))?;
            let finished = process.wait_until(deadline);
            process.stop(Signal::KILL, Duration::from_secs(2));
            let output = process.output();
            if !finished {
                return Err(format!(
                    "timed out: the session's bound ({}) ran out while this block ran; its output so far:\n{}",
                    humantime::format_duration(session.timeout),
                    indent(&readable(&output))
                ));
            }
            compare(transcript, &output, false)
        })();
        match result {
            Ok(()) if !transcript.background => outcome.passed += 1,
            Ok(()) => {}
            Err(e) => {
                outcome.failed += 1;
                outcome.report.push_str(&format!("{}: {e}\n", transcript.place()));
                failed_already = Some(transcript.line);
                if i + 1 < session.transcripts.len() {
                    stopped_early = Some(i + 1);
                }
                break;
            }
        }
    }
    // Ctrl-C for what the reader left running, newest first.
    for (transcript, mut process) in background.into_iter().rev() {
        let grace = STOP_GRACE.min(deadline.saturating_duration_since(Instant::now())).max(Duration::from_secs(2));
        let exited = process.stop(Signal::INT, grace);
        let output = process.output();
        if failed_already == Some(transcript.line) {
            // Counted once, where it failed (its server never listened,
            // say); its output is what explains why.
            outcome.report.push_str(&format!("  the output of {}:\n{}", transcript.place(), indent(&readable(&output))));
            continue;
        }
        let result = if exited {
            compare(transcript, &output, true)
        } else {
            Err(format!("did not exit within {grace:?} of SIGINT (Ctrl-C); its output:\n{}", indent(&readable(&output))))
        };
        match result {
            Ok(()) => outcome.passed += 1,
            Err(e) => {
                outcome.failed += 1;
                outcome.report.push_str(&format!("{}: {e}\n", transcript.place()));
            }
        }
    }
    for server in servers.iter_mut().rev() {
        server.stop(Signal::TERM, STOP_GRACE);
    }
    if let Some(next) = stopped_early {
        let not_reached = &session.transcripts[next..];
        outcome.failed += not_reached.len();
        for transcript in not_reached {
            outcome.report.push_str(&format!("{}: not run: an earlier block of its session failed\n", transcript.place()));
        }
    }
    if outcome.failed > 0 {
        for (server, process) in session.transcripts.iter().flat_map(|t| &t.servers).zip(&servers) {
            outcome.report.push_str(&format!("  the output of server `{server}`:\n{}", indent(&process.output())));
        }
    }
    outcome
}

/// The bash script of a block: the hidden setup, then each command between
/// marks that say where its output starts and what it exited with.
fn script(transcript: &Transcript) -> String {
    let mut script = String::new();
    for setup in &transcript.setup {
        script.push_str(setup);
        script.push_str("\n__docs_test=$?; if [ $__docs_test -ne 0 ]; then printf '\\036setup %d\\036' $__docs_test; exit 99; fi\n");
    }
    for (i, command) in transcript.commands.iter().enumerate() {
        script.push_str(&format!("printf '\\036command {i}\\036'\n"));
        script.push_str(&command.script);
        script.push_str("\nprintf '\\036status %d\\036' $?\n");
    }
    script
}

/// Compares a block's output with the transcript: each command's output
/// (snapbox's matching: `[..]` in a line, `...` for lines) and its exit
/// status. An interrupted background block's last status is not checked.
fn compare(transcript: &Transcript, output: &str, interrupted: bool) -> Result<(), String> {
    let mut pieces = output.split(MARK);
    let before = pieces.next().unwrap_or_default();
    let mut outputs = vec![String::new(); transcript.commands.len()];
    let mut statuses: Vec<Option<i32>> = vec![None; transcript.commands.len()];
    let mut current = None;
    while let Some(mark) = pieces.next() {
        let text = pieces.next().unwrap_or_default();
        if let Some(code) = mark.strip_prefix("setup ") {
            return Err(format!("its hidden setup failed (status {code}); its output:\n{}", indent(before)));
        } else if let Some(i) = mark.strip_prefix("command ").and_then(|i| i.parse::<usize>().ok()) {
            current = Some(i);
            if let Some(out) = outputs.get_mut(i) {
                out.push_str(text);
            }
        } else if let Some(code) = mark.strip_prefix("status ").and_then(|c| c.parse::<i32>().ok())
            && let Some(i) = current
            && let Some(status) = statuses.get_mut(i)
        {
            *status = Some(code);
            // Whatever a background job prints later goes with this command.
            outputs[i].push_str(text);
        }
    }
    let mut expected = String::new();
    let mut actual = String::new();
    let mut problems = Vec::new();
    for (i, command) in transcript.commands.iter().enumerate() {
        expected.push_str(&command.shown);
        expected.push_str(&command.output);
        actual.push_str(&command.shown);
        actual.push_str(&outputs[i]);
        if !outputs[i].is_empty() && !outputs[i].ends_with('\n') {
            actual.push('\n');
        }
        // What the reader interrupts with Ctrl-C exits as it does then.
        let interrupted_here = interrupted && i + 1 == transcript.commands.len();
        match statuses[i] {
            _ if interrupted_here => {}
            Some(code) if command.status.accepts(code) => {}
            Some(code) => problems.push(format!("`{}` exited with {code}; the transcript expects {}", first_line(&command.script), command.status)),
            None => problems.push(format!("`{}` did not finish (no exit status)", first_line(&command.script))),
        }
    }
    let assert = snapbox::Assert::new().normalize_paths(false).palette(snapbox::report::Palette::plain());
    let expected = if transcript.unordered { snapbox::Data::text(expected).unordered() } else { snapbox::Data::text(expected) };
    if let Err(diff) = assert.try_eq(Some(&"what the commands printed"), snapbox::Data::text(actual), expected) {
        problems.insert(0, format!("the output differs from the transcript:\n{}", indent(&diff.to_string())));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// What reports call a block's process: its first command.
fn label(transcript: &Transcript) -> String {
    transcript.commands.first().map(|c| first_line(&c.script).to_owned()).unwrap_or_default()
}

/// A block's output without the marks between commands.
fn readable(output: &str) -> String {
    let mut text = String::new();
    for (i, piece) in output.split(MARK).enumerate() {
        // Odd pieces are marks: `command N`, `status N`, `setup N`.
        if i % 2 == 0 {
            text.push_str(piece);
        } else if let Some(code) = piece.strip_prefix("status ").filter(|c| *c != "0") {
            text.push_str(&format!("[exit status {code}]\n"));
        }
    }
    text
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn indent(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Waits until something listens on TCP `port` (in this process's network
/// namespace), without connecting to it: a connection would show up in a
/// server's log, which some transcripts print.
fn wait_for_listener(port: u16, deadline: Instant, watched: &[&Process]) -> Result<(), String> {
    loop {
        if is_listening(port) {
            return Ok(());
        }
        if let Some(exited) = watched.iter().find(|p| p.has_exited()) {
            return Err(format!("`{}` exited before anything listened on port {port}", exited.label));
        }
        if Instant::now() >= deadline {
            return Err(format!("nothing listened on port {port} before the session's time ran out"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `text` appears in the output of one of `processes`.
fn wait_for_output(text: &str, deadline: Instant, processes: &[&Process]) -> Result<(), String> {
    loop {
        if processes.iter().any(|p| p.output().lines().any(|line| line_matches(line, text))) {
            return Ok(());
        }
        if let Some(exited) = processes.iter().find(|p| p.has_exited()) {
            return Err(format!("`{}` exited before printing `{text}`", exited.label));
        }
        if Instant::now() >= deadline {
            return Err(format!("`{text}` was not printed before the session's time ran out"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `line` contains `pattern`, in which `[..]` stands for any text
/// (within the line, as in a transcript).
fn line_matches(line: &str, pattern: &str) -> bool {
    let mut rest = line;
    // Each piece after the one before; the earliest match of each leaves
    // the most room for the rest.
    for piece in pattern.split("[..]") {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Whether a TCP socket listens on `port`, from /proc/net/tcp and tcp6.
fn is_listening(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut fields = line.split_whitespace();
                let local = fields.nth(1).unwrap_or_default();
                let state = fields.nth(1).unwrap_or_default();
                state == "0A" && local.ends_with(&wanted)
            })
        })
    })
}

/// A bash running some code, its output collected as it comes.
struct Process {
    /// What reports call it: a server's command, a block's first command.
    label: String,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    exited: bool,
}

impl Process {
    fn spawn(label: &str, code: &str, dir: &Path, env: &Environment) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let (mut reader, writer) = std::io::pipe()?;
        let mut command = std::process::Command::new("bash");
        command
            .arg("-c")
            .arg(code)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .process_group(0);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![env.bin_dir.clone()];
        paths.extend(std::env::split_paths(&path));
        command
            .env("PATH", std::env::join_paths(paths).map_err(std::io::Error::other)?)
            // For a hidden setup in a `cwd="tmp"` session to reach the
            // repository.
            .env("DOCS_TEST_ROOT", &env.root)
            .env("NO_COLOR", "1")
            .env("CARGO_TERM_COLOR", "never")
            .env("TERM", "dumb")
            // Python writes as it would to a terminal, and leaves no caches
            // in the repository.
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("RUST_LOG")
            .env_remove("BASH_ENV");
        // Ctrl-C reaches a program started at a terminal. One started by a
        // background job (`cmd &` in a script, nohup, some CI runners)
        // inherits SIGINT ignored, and an ignored signal stays ignored
        // across exec: the guide's Python server then never raises
        // KeyboardInterrupt and outlives its transcript. Put SIGINT and
        // SIGQUIT back to their defaults, as an interactive shell does.
        // SAFETY: runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed; signal(2) is one, and the
        // closure allocates nothing.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = command.spawn()?;
        // The Command held the pipe's write ends: dropped, so the reader
        // sees the end once the process and its children are gone.
        drop(command);
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&output);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buffer[..n]),
                }
            }
        });
        Ok(Self { label: label.to_owned(), child, output, reader: Some(reader), exited: false })
    }

    fn has_exited(&self) -> bool {
        // `try_wait` needs `&mut`; a signal 0 to the process says whether
        // it is still there (a zombie counts as gone once reaped by us).
        self.exited || rustix::process::test_kill_process(self.pid()).is_err() || is_zombie(self.child.id())
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32).unwrap_or(Pid::INIT)
    }

    /// Waits for the process to exit, until `deadline`; whether it did.
    fn wait_until(&mut self, deadline: Instant) -> bool {
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.exited = true;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the process group, waits up to `grace` for the
    /// process to exit, then kills the whole group. Whether it exited
    /// within the grace.
    fn stop(&mut self, signal: Signal, grace: Duration) -> bool {
        let group = self.pid();
        let _ = rustix::process::kill_process_group(group, signal);
        let exited = self.exited || self.wait_until(Instant::now() + grace);
        // Whatever it left behind in its group goes too.
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
        if !exited {
            let _ = self.child.wait();
            self.exited = true;
        }
        self.drain();
        exited
    }

    /// Once it has exited, waits briefly for the last bytes in the pipe (a
    /// child that left the group may hold it open).
    fn drain(&mut self) {
        if self.exited
            && let Some(reader) = self.reader.take()
        {
            let until = Instant::now() + Duration::from_secs(2);
            while !reader.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }

    /// Everything it printed so far.
    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.exited {
            let _ = rustix::process::kill_process_group(self.pid(), Signal::KILL);
            let _ = self.child.wait();
        }
    }
}

/// Whether `pid` is a zombie (exited, not yet reaped).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Status, parse_commands};

    fn transcript(body: &str) -> Transcript {
        Transcript {
            file: PathBuf::from("t.md"),
            line: 1,
            commands: parse_commands(body, &[]).unwrap(),
            background: false,
            servers: Vec::new(),
            waits: Vec::new(),
            wait_output: Vec::new(),
            setup: Vec::new(),
            unordered: false,
        }
    }

    #[test]
    fn output_is_split_at_the_marks() {
        let t = transcript("$ a\none\n$ b\n? 2\ntwo\n");
        assert_eq!(t.commands[1].status, Status::Code(2));
        let output = "\u{1e}command 0\u{1e}one\n\u{1e}status 0\u{1e}\u{1e}command 1\u{1e}two\u{1e}status 2\u{1e}";
        assert_eq!(compare(&t, output, false), Ok(()));
        let wrong = output.replace("two", "too");
        let error = compare(&t, &wrong, false).unwrap_err();
        assert!(error.contains("differs"), "{error}");
        let status = output.replace("status 2", "status 0");
        assert!(compare(&t, &status, false).unwrap_err().contains("exited with 0"));
    }

    #[test]
    fn wildcards_match() {
        let t = transcript("$ a\nversion [..] ready\n...\ndone\n");
        let output = "\u{1e}command 0\u{1e}version 1.2 ready\nnoise\nmore noise\ndone\n\u{1e}status 0\u{1e}";
        assert_eq!(compare(&t, output, false), Ok(()));
    }

    #[test]
    fn unordered_blocks_match_lines_in_any_order() {
        let mut t = transcript("$ a\nsecond [..]\nfirst\n...\n");
        let output = "\u{1e}command 0\u{1e}first\nextra\nsecond line\n\u{1e}status 0\u{1e}";
        assert!(compare(&t, output, false).is_err(), "in order, the lines differ");
        t.unordered = true;
        assert_eq!(compare(&t, output, false), Ok(()));
        let missing = output.replace("first\n", "");
        assert!(compare(&t, &missing, false).is_err(), "every line shown must be there");
    }

    #[test]
    fn output_lines_match_with_wildcards() {
        let swap = "2026-12-04T10:00:00Z INFO wasmux::registry: plugin hello: 9e17b90c7704 -> 9154d85e5553 (compile 17659 ms)";
        assert!(line_matches(swap, "plugin hello: [..] -> [..] (compile"));
        assert!(!line_matches(swap, "build"));
        assert!(!line_matches("INFO wasmux::serve: tenant default: * -> hello", "plugin hello: [..] -> [..] (compile"));
        assert!(line_matches("fleet ready: clients", "fleet ready"));
    }

    #[test]
    fn listening_ports_are_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(is_listening(port));
        drop(listener);
        assert!(!is_listening(port));
    }
}
