//! The servers under test: their processes, the cores they run on, and the
//! modes of the load generator each one serves.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The ways `wasmux bench` uses its connections (its `--mode`); a server
/// serves all of them or some.
pub const MODES: [&str; 3] = ["connect", "persistent", "pipelined"];

/// A server under test.
pub struct Subject {
    /// Short name for the table.
    pub name: &'static str,
    /// What it is, for the table.
    pub what: String,
    /// The row its "vs native" ratios are taken against: `native`, or the
    /// baseline binary's native row for the baseline's rows.
    pub native: &'static str,
    pub addr: String,
    /// The modes it can serve.
    pub modes: Vec<&'static str>,
    pub process: Process,
    /// Time from start to listening.
    pub startup: Duration,
}

impl Subject {
    pub fn wasmux(program: &Path, pinning: &Pinning, args: &[OsString], name: &'static str, what: &str) -> Result<Self> {
        let mut command = pinning.command(program, Side::Server);
        command.args(["serve", "--listen", "127.0.0.1:0"]).args(args).env("RUST_LOG", "warn");
        let (process, addr, startup) = Process::start(command, what, "wasmux listening on ")?;
        Ok(Self { name, what: what.to_owned(), native: "native", addr, modes: MODES.to_vec(), process, startup })
    }

    pub fn python(script: &Path, pinning: &Pinning) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = pinning.command(Path::new("python3"), Side::Server);
        command.arg(script).args(["127.0.0.1", &port.to_string()]).env("PYTHONUNBUFFERED", "1");
        let (process, _, startup) = Process::start(command, "the Python app-server", "listening on")?;
        let version = Command::new("python3").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        Ok(Self {
            name: "python",
            what: format!("the guide's app-server ({})", version.unwrap_or_else(|_| "python3".into())),
            native: "native",
            addr: format!("127.0.0.1:{port}"),
            modes: vec!["connect"],
            process,
            startup,
        })
    }

    /// The same server with its "vs native" ratios taken against the row
    /// `native`.
    pub fn judged_against(self, native: &'static str) -> Self {
        Self { native, ..self }
    }
}

#[derive(Clone, Copy)]
pub enum Side {
    Server,
    LoadGenerator,
}

/// Which cores the servers and the load generator run on.
pub struct Pinning {
    /// (server cores, load generator cores) as taskset lists, or none.
    cores: Option<(String, String)>,
    reason: String,
}

impl Pinning {
    pub fn plan(wanted: bool) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let taskset = Command::new("taskset").arg("--version").output().is_ok_and(|o| o.status.success());
        if !wanted {
            return Self { cores: None, reason: "not pinned (--no-pin): servers and load generator share every core".into() };
        }
        if cores < 2 || !taskset {
            return Self {
                cores: None,
                reason: format!("not pinned ({} core(s), taskset {}found)", cores, if taskset { "" } else { "not " }),
            };
        }
        let half = cores / 2;
        let list = |range: std::ops::Range<usize>| range.map(|c| c.to_string()).collect::<Vec<_>>().join(",");
        let (server, load) = (list(0..half), list(half..cores));
        let reason = format!("pinned with taskset: servers on core(s) {server}, load generator on core(s) {load}");
        Self { cores: Some((server, load)), reason }
    }

    pub fn describe(&self) -> &str {
        &self.reason
    }

    pub fn command(&self, program: &Path, side: Side) -> Command {
        match &self.cores {
            Some((server, load)) => {
                let mut command = Command::new("taskset");
                command.args(["-c", match side {
                    Side::Server => server,
                    Side::LoadGenerator => load,
                }]);
                command.arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// Where `side` runs, for a sentence: "on core(s) 0" or "not pinned".
    pub fn where_is(&self, side: Side) -> String {
        match (&self.cores, side) {
            (Some((server, _)), Side::Server) => format!("on core(s) {server}"),
            (Some((_, load)), Side::LoadGenerator) => format!("on core(s) {load}"),
            (None, _) => "not pinned".into(),
        }
    }

    /// Pins the calling thread to `side`'s cores (`taskset -p` on its
    /// thread id), when pinning is on: for a measurement this process makes
    /// itself, such as Redis's round trip seen from the servers' cores.
    pub fn pin_this_thread(&self, side: Side) -> Result<()> {
        let Some((server, load)) = &self.cores else { return Ok(()) };
        // `/proc/thread-self` links to `PID/task/TID`.
        let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
        let tid = link.file_name().and_then(|name| name.to_str()).with_context(|| format!("no thread id in {}", link.display()))?;
        let cores = match side {
            Side::Server => server,
            Side::LoadGenerator => load,
        };
        let status = Command::new("taskset").args(["-p", "-c", cores, tid]).stdout(Stdio::null()).status().context("running taskset -p")?;
        if !status.success() {
            bail!("taskset -p -c {cores} {tid} failed: {status}");
        }
        Ok(())
    }
}

/// A server process, stopped when dropped.
pub struct Process {
    child: Child,
    name: String,
}

impl Process {
    /// Starts `command` and waits for a stdout line starting with `ready`;
    /// returns the process, the rest of that line and how long it took.
    fn start(mut command: Command, name: &str, ready: &str) -> Result<(Self, String, Duration)> {
        let started = Instant::now();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut process = Self { child, name: name.to_owned() };
        let mut lines = BufReader::new(stdout).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with(ready) => break line,
                Some(Ok(_)) => continue,
                _ => bail!("{name} exited before listening"),
            }
        };
        let startup = started.elapsed();
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        process.check_alive()?;
        Ok((process, line[ready.len()..].trim().to_owned(), startup))
    }

    /// The process id, for `/proc` and `strace -p`.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} stopped during the benchmark ({status})", self.name);
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
