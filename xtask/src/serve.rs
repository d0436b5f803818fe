//! `cargo xtask serve`: the served plugins and a server, then `wasmux serve`.
//!
//! On a fresh clone (no release binary yet) the release build of wasmtime
//! and Cranelift takes most of the first wait, about seven minutes on two
//! cores. So the first run builds the server unoptimised first (the
//! `first-run` profile: two and a half minutes), serves with it, builds the
//! release server beside it at a lower priority, and lets the release
//! server take the port over once built (`wasmux serve --take-over`): no
//! connection is refused on the way. Later runs build (or reuse) the
//! release server and serve with it at once.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{both, cargo, plugins, run, timed};

/// The release server's build, as `serve`, `install` and `test` share it.
const RELEASE_BUILD: [&str; 5] = ["build", "--release", "--locked", "-p", "wasmux-cli"];

/// `cargo xtask serve ARGS`.
pub fn serve(root: &Path, args: &[String]) -> Result<()> {
    let release = root.join("target/release/wasmux");
    if !release.exists() {
        return first_run(root, args);
    }
    // The served plugins and the server build at once: the server's build
    // leaves a core idle for long stretches (one big crate at a time),
    // which the plugins' build fills.
    both(|| plugins::build(root, true, plugins::Which::Served), || timed("the server", || run(cargo().current_dir(root).args(RELEASE_BUILD))))?;
    run(&mut serve_command(root, &release, args, false))
}

/// `wasmux serve` from `binary`, with the served plugins and `args`.
fn serve_command(root: &Path, binary: &Path, args: &[String], take_over: bool) -> Command {
    let mut command = Command::new(binary);
    command.arg("serve").arg("--plugins").arg(root.join("target/plugins"));
    if take_over && !args.iter().any(|arg| arg == "--take-over") {
        command.arg("--take-over");
    }
    command.args(args);
    command
}

/// The first run: serve from the quick build while the release one builds.
fn first_run(root: &Path, args: &[String]) -> Result<()> {
    let started = Instant::now();
    eprintln!("xtask: no release build yet: building a first-run server (unoptimised) to answer sooner; the release server is built next, beside it, and takes over");
    both(
        || plugins::build(root, true, plugins::Which::Served),
        || timed("the first-run server", || run(cargo().current_dir(root).args(["build", "--profile", "first-run", "--locked", "-p", "wasmux-cli"]))),
    )?;
    let first = serve_command(root, &root.join("target/first-run/wasmux"), args, true);
    let log = root.join("target/first-run/release-build.log");
    let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    // At a lower priority than the server answering meanwhile; its output
    // in a file, not between the server's log lines.
    let mut build = Command::new("nice");
    build.args(["-n", "10"]).arg(crate::cargo_program()).current_dir(root).args(RELEASE_BUILD);
    crate::without_cargo_run_variables(&mut build);
    build.stdout(file.try_clone()?).stderr(file);
    let release = serve_command(root, &root.join("target/release/wasmux"), args, true);
    // From here two servers and a build run under this process: stopped,
    // it stops them (Ctrl-C reaches them all, but `kill` or a closed
    // terminal may reach this process alone) and waits for the drain.
    catch_stop_signals()?;
    let status = serve_then_take_over(first, build, release, &log, started, &mut |_| {})?;
    if !status.success() {
        bail!("wasmux serve exited with {status}");
    }
    Ok(())
}

/// The signal (SIGINT, SIGTERM or SIGHUP) that asked `cargo xtask serve`
/// to stop, or 0.
static STOPPING: AtomicI32 = AtomicI32::new(0);

fn catch_stop_signals() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the action only stores to an atomic, which a signal
        // handler may do.
        unsafe { signal_hook_registry::register(signal, move || STOPPING.store(signal, Ordering::SeqCst)) }.context("catching SIGINT, SIGTERM and SIGHUP")?;
    }
    Ok(())
}

fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst) != 0
}

/// Waits for `child` (a server) to exit. Once this process is asked to
/// stop, so is the server, with SIGTERM: it drains, then exits.
fn wait_for(child: &mut Child) -> Result<ExitStatus> {
    wait_unless(child, &stopping)
}

/// [`wait_for`], told to stop by `stop`.
fn wait_unless(child: &mut Child, stop: &dyn Fn() -> bool) -> Result<ExitStatus> {
    let mut told = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if stop() && !told {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What [`serve_then_take_over`] reports as it goes (for its test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The first server (this process id) is listening.
    First(u32),
    /// The second server (this process id) is listening and the first one
    /// was told to stop.
    TookOver(u32),
}

/// Serves with `first` while `build` runs; once it succeeds, starts `then`
/// beside `first` (both with `--take-over`) and stops `first` once `then`
/// listens. Returns the exit status of the server still serving when it
/// exits. If the build fails, or `then` cannot start, `first` goes on,
/// and what happened is said on standard error (`log` holds the build's
/// output).
pub fn serve_then_take_over(mut first: Command, mut build: Command, mut then: Command, log: &Path, started: Instant, report: &mut dyn FnMut(Phase)) -> Result<ExitStatus> {
    let mut first = Server::start(&mut first, "the first-run server")?;
    let Some(listening) = first.wait_until_listening()? else {
        return wait_for(&mut first.child).context("waiting for the first-run server");
    };
    eprintln!("xtask: first answer ready after {:.1} s ({listening}), from the first-run build (unoptimised: about ten times slower than the release build)", started.elapsed().as_secs_f64());
    eprintln!("xtask: building the release server beside it (output in {}); it takes over the port when built", log.display());
    report(Phase::First(first.child.id()));
    let mut build = build.spawn().context("starting the release build")?;
    // Whichever ends first: the server (stopped, or failed) or the build.
    let built = loop {
        if let Some(status) = first.child.try_wait()? {
            let _ = build.kill();
            let _ = build.wait();
            return Ok(status);
        }
        if stopping() {
            let _ = build.kill();
            let _ = build.wait();
            return wait_for(&mut first.child).context("waiting for the first-run server");
        }
        if let Some(status) = build.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !built.success() {
        eprintln!("xtask: the release build failed ({built}; its output is in {}): the first-run server goes on", log.display());
        return wait_for(&mut first.child).context("waiting for the first-run server");
    }
    let mut release = match Server::start(&mut then, "the release server") {
        Ok(release) => release,
        Err(e) => {
            eprintln!("xtask: {e:#}: the first-run server goes on");
            return wait_for(&mut first.child).context("waiting for the first-run server");
        }
    };
    match release.wait_until_listening()? {
        _ if stopping() => {
            let _ = wait_for(&mut release.child);
            wait_for(&mut first.child).context("waiting for the first-run server")
        }
        Some(_) => {
            report(Phase::TookOver(release.child.id()));
            match terminate(&mut first.child) {
                Ok(()) => eprintln!("xtask: the release server took over after {:.1} s; the first-run server stopped", started.elapsed().as_secs_f64()),
                Err(e) => eprintln!("xtask: the release server took over, but the first-run server (pid {}) could not be stopped: {e:#}", first.child.id()),
            }
            wait_for(&mut release.child).context("waiting for the release server")
        }
        None => {
            eprintln!("xtask: the release server could not start beside the first-run one (its log is above): the first-run server goes on; stop it and run `cargo xtask serve` again to serve the release build");
            wait_for(&mut first.child).context("waiting for the first-run server")
        }
    }
}

/// A `wasmux serve` whose standard output goes through this process, which
/// watches it for the line saying where it listens.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(command: &mut Command, what: &str) -> Result<Self> {
        let mut child = command.stdout(Stdio::piped()).spawn().with_context(|| format!("starting {what}: {command:?}"))?;
        let stdout = child.stdout.take().context("the server's standard output")?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
                // Once nobody waits for lines, they are still shown.
                let _ = sender.send(line);
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits for the server's first "listening on" line and returns it, or
    /// `None` if the server exits first.
    fn wait_until_listening(&mut self) -> Result<Option<String>> {
        loop {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("wasmux listening on ") {
                        return Ok(Some(addr.to_string()));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if stopping() || self.child.try_wait()?.is_some() {
                        return Ok(None);
                    }
                }
                // Its standard output closed: it has exited, or is exiting.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.child.wait()?;
                    return Ok(None);
                }
            }
        }
    }
}

/// Sends SIGTERM to `child` (which drains: the requests it has are
/// answered) and waits for it to exit.
fn terminate(child: &mut Child) -> Result<()> {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().context("running kill")?;
    if !status.success() {
        bail!("kill -TERM {} failed ({status})", child.id());
    }
    child.wait().context("waiting for the first-run server to stop")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Sends SIGKILL to these processes when dropped (a no-op for those
    /// that have exited and been waited for... unless the pid was reused,
    /// which a test's few seconds make unlikely).
    struct Stop(Vec<u32>);

    impl Drop for Stop {
        fn drop(&mut self) {
            if std::thread::panicking() {
                for pid in &self.0 {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                }
            }
        }
    }

    #[test]
    fn a_stop_reaches_the_server_waited_for() {
        use std::os::unix::process::ExitStatusExt as _;
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let asked = Instant::now() + Duration::from_millis(300);
        let status = wait_unless(&mut child, &|| Instant::now() >= asked).expect("waiting");
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
        assert!(asked.elapsed() < Duration::from_secs(5));
    }

    /// The guide's search for "morpheus", as one message.
    fn search() -> Vec<u8> {
        let content = br#"{"action": "search", "value": "morpheus"}"#;
        let header = format!(r#"{{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": {}}}"#, content.len());
        [&(header.len() as u16).to_be_bytes()[..], header.as_bytes(), content].concat()
    }

    /// One request on a connection of its own; the answer's bytes.
    fn ask(port: u16) -> std::io::Result<Vec<u8>> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(&search())?;
        let mut length = [0; 2];
        stream.read_exact(&mut length)?;
        let mut header = vec![0; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut header)?;
        let header: serde_json::Value = serde_json::from_slice(&header).map_err(std::io::Error::other)?;
        let mut content = vec![0; header["content-length"].as_u64().unwrap_or(0) as usize];
        stream.read_exact(&mut content)?;
        Ok(content)
    }

    /// The hand-over `cargo xtask serve` does on a first run, with the
    /// release binary in both roles and a build that takes a second: under
    /// a steady load of the guide's clients, every request is answered.
    #[test]
    fn the_release_server_takes_over_without_refusing_a_connection() {
        let root = crate::workspace_root();
        let binary = root.join("target/release/wasmux");
        assert!(binary.exists() && root.join("target/plugins/search.wasm").exists(), "build the release server and the plugins first (cargo xtask test does)");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let cache = tempfile::tempdir().expect("a cache directory");
        let args = vec!["--listen".to_string(), format!("127.0.0.1:{port}"), "--cache-dir".to_string(), cache.path().display().to_string()];
        // Warnings only: the test's output is for its own failures.
        let mut first = serve_command(&root, &binary, &args, true);
        first.env("RUST_LOG", "warn");
        let mut build = Command::new("sleep");
        build.arg("1");
        let mut then = serve_command(&root, &binary, &args, true);
        then.env("RUST_LOG", "warn");
        let (phases_in, phases) = mpsc::channel();
        let serving = std::thread::spawn(move || {
            let mut report = |phase| {
                let _ = phases_in.send(phase);
            };
            serve_then_take_over(first, build, then, Path::new("/dev/null"), Instant::now(), &mut report)
        });
        // Whatever the outcome, no server outlives the test.
        let mut servers = Stop(Vec::new());
        let Ok(Phase::First(first)) = phases.recv_timeout(Duration::from_secs(30)) else { panic!("the first server did not listen") };
        servers.0.push(first);
        let (stop, answered, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Mutex::new(Vec::new())));
        let clients: Vec<_> = (0..3)
            .map(|_| {
                let (stop, answered, failed) = (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&failed));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let failure = match ask(port) {
                            Ok(answer) if serde_json::from_slice::<serde_json::Value>(&answer).is_ok_and(|a| a["result"] == "Follow the white rabbit. 🐰") => None,
                            Ok(answer) => Some(String::from_utf8_lossy(&answer).into_owned()),
                            Err(e) => Some(e.to_string()),
                        };
                        match failure {
                            None => _ = answered.fetch_add(1, Ordering::SeqCst),
                            Some(failure) => failed.lock().unwrap_or_else(|e| e.into_inner()).push(failure),
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        let Ok(Phase::TookOver(release)) = phases.recv_timeout(Duration::from_secs(30)) else { panic!("the second server did not take over") };
        servers.0.push(release);
        let at_the_take_over = answered.load(Ordering::SeqCst);
        let end = Instant::now() + Duration::from_secs(10);
        while answered.load(Ordering::SeqCst) < at_the_take_over + 100 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            client.join().expect("a client");
        }
        let killed = Command::new("kill").args(["-TERM", &release.to_string()]).status().expect("kill");
        assert!(killed.success());
        let status = serving.join().expect("the serving thread").expect("serving");
        assert!(status.success(), "the release server exited with {status}");
        let failed = failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(failed.is_empty(), "{} requests failed, the first: {:?}", failed.len(), &failed[..failed.len().min(5)]);
        assert!(at_the_take_over > 0 && answered.load(Ordering::SeqCst) >= at_the_take_over + 100, "answers: {at_the_take_over} before the take-over, {} in all", answered.load(Ordering::SeqCst));
    }
}
