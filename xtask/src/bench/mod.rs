//! `cargo xtask bench`: the comparison behind `docs/benchmarks.md`, in one
//! go on one machine.
//!
//! It builds the plugins and the release server, starts servers of the
//! guide's protocol on their own loopback ports:
//!
//! - `wasmux serve` with the Wasm components `search` and `binary-echo`: a
//!   fresh instance per request (the default), with instances reused
//!   (`[runtime] reuse`), and with Spectre hardening off;
//! - the same with `search` written in JavaScript or Python, when such a
//!   component is there (`target/plugins/search-js.wasm`,
//!   `target/plugins/search-py.wasm`, or the paths given), fresh and reused;
//! - `wasmux serve --native` (the same two handlers compiled in: the ceiling
//!   for wasmux's framing and scheduling),
//! - the guide's Python app-server (`examples/python/app_server.py`), if it
//!   is there; it closes each connection after answering, so it is measured
//!   in `connect` mode only,
//!
//! then drives each with `wasmux bench --json` in each mode, rounds
//! interleaved so that a slow moment of the machine hits every server alike.
//! After the rounds it measures each server's cost per request in each mode
//! with a fixed number of requests: its CPU time (from
//! `/proc/PID/task/*/schedstat`), and its system calls (`strace -c -f`
//! attached to it, when strace is installed). It writes the table
//! (`docs/benchmarks.md`, with the notes of `bench-notes.md`) and the chart
//! (`docs/benchmarks.svg`). With two or more cores, the servers and the
//! load generator are pinned to separate halves of them with `taskset`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub mod languages;

/// What `cargo xtask bench` was asked for.
pub struct Options {
    pub duration: String,
    pub warmup: String,
    pub connections: u32,
    pub depth: u32,
    pub rounds: u32,
    pub mix: String,
    pub pin: bool,
    pub python_server: PathBuf,
    /// A `search` component in JavaScript, measured when the file exists.
    pub search_js: PathBuf,
    /// A `search` component in Python, measured when the file exists.
    pub search_py: PathBuf,
    /// Requests an instance serves in the reuse rows.
    pub reuse: u32,
    /// Requests per server and mode for the cost (CPU, system calls)
    /// measurement; 0 skips it.
    pub cost_requests: u64,
    pub out: PathBuf,
}

const MODES: [&str; 3] = ["connect", "persistent", "pipelined"];

/// A server under test.
struct Subject {
    /// Short name for the table.
    name: &'static str,
    /// The row whose ratio it is judged against (the native server, or the
    /// Wasm server for rows with plugins in other languages).
    /// What it is, for the table.
    what: String,
    addr: String,
    /// The modes it can serve.
    modes: Vec<&'static str>,
    process: Process,
    /// Time from start to listening.
    startup: Duration,
}

/// One bench run's figures.
#[derive(Clone)]
struct Figures {
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    errors: u64,
}

impl Figures {
    fn of(report: &Value) -> Self {
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let l = &report["latency_ms"];
        Self {
            rps: f(&report["requests_per_second"]),
            p50: f(&l["p50"]),
            p90: f(&l["p90"]),
            p99: f(&l["p99"]),
            max: f(&l["max"]),
            errors: report["errors"].as_u64().unwrap_or(0),
        }
    }
}

/// One cell of the table: a server in a mode, over every round.
struct Cell {
    server: &'static str,
    mode: &'static str,
    rounds: Vec<Figures>,
}

impl Cell {
    /// The round with the median throughput: the figures the table shows.
    fn median(&self) -> Option<Figures> {
        let mut rounds = self.rounds.clone();
        rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        rounds.get(rounds.len() / 2).cloned()
    }

    fn range(&self) -> (f64, f64) {
        let rps = self.rounds.iter().map(|f| f.rps);
        (rps.clone().fold(f64::INFINITY, f64::min), rps.fold(0.0, f64::max))
    }

    fn errors(&self) -> u64 {
        self.rounds.iter().map(|f| f.errors).sum()
    }
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    crate::plugins::build_all(root, true)?;
    // The search in JavaScript and Python, built by `wasmux build` (the
    // debug binary) as `cargo xtask test` builds them.
    crate::run(Command::new(crate::cargo()).current_dir(root).args(["build", "-p", "wasmux", "--bin", "wasmux"]))?;
    crate::plugins::build_examples(root)?;
    crate::run(Command::new(crate::cargo()).current_dir(root).args(["build", "--release", "--locked", "-p", "wasmux"]))?;
    let wasmux = root.join("target/release/wasmux");
    let pinning = Pinning::plan(options.pin);
    eprintln!("xtask: {}", pinning.describe());

    let work = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let cache = work.join("cache");
    let built = root.join("target/plugins");
    // Only the two plugins the load asks for: other components in
    // target/plugins (a 12 MB JavaScript one) would slow every start-up.
    let rust = plugin_dir(&work.join("rust"), &built.join("search.wasm"), &built)?;
    let config = |name: &str, text: String| -> Result<PathBuf> {
        let path = work.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let unhardened = config("unhardened.toml", "[runtime]\nspectre-hardening = false\n".into())?;
    let reused = config("reuse.toml", format!("[runtime]\nreuse = {{ requests = {}, idle = \"1s\" }}\n", options.reuse))?;
    let wasm = |dir: &Path, config: Option<&Path>| {
        let mut args = vec![OsString::from("--plugins"), dir.into(), "--cache-dir".into(), cache.clone().into()];
        if let Some(config) = config {
            args.extend([OsString::from("--config"), config.into()]);
        }
        args
    };
    // Once with an empty compiled-code cache, to show what the cache saves.
    let cold = Subject::wasmux(&wasmux, &pinning, &wasm(&rust, None), "wasm", "wasmux, Wasm plugins")?;
    let cold_startup = cold.startup;
    drop(cold);
    let reuse_what = format!("Wasm, instances reused (requests = {})", options.reuse);
    let mut subjects = vec![
        Subject::wasmux(&wasmux, &pinning, &wasm(&rust, None), "wasm", "wasmux, Wasm plugins, a fresh instance per request")?,
        Subject::wasmux(&wasmux, &pinning, &wasm(&rust, Some(&reused)), "wasm-reuse", &reuse_what)?,
        // Without wasmtime's Spectre hardening of bounds checks (for trusted
        // plugins only): what the hardening costs.
        Subject::wasmux(&wasmux, &pinning, &wasm(&rust, Some(&unhardened)), "wasm-unhardened", "Wasm, Spectre hardening off")?,
        Subject::wasmux(&wasmux, &pinning, &["--native".into()], "native", "wasmux --native")?,
    ];
    let mut notes = Vec::new();
    let languages: [(&Path, &str, [&'static str; 2]); 2] =
        [(&options.search_js, "JavaScript", ["js", "js-reuse"]), (&options.search_py, "Python", ["py", "py-reuse"])];
    for (component, language, [fresh, reuse]) in languages {
        let component = root.join(component);
        if !component.is_file() {
            notes.push(format!("no `search` in {language} ({} is missing), so none was measured", component.display()));
            continue;
        }
        let dir = plugin_dir(&work.join(fresh), &component, &built)?;
        let what = format!("Wasm, search in {language}, binary-echo in Rust");
        subjects.push(Subject::wasmux(&wasmux, &pinning, &wasm(&dir, None), fresh, &format!("{what}, fresh"))?);
        subjects.push(Subject::wasmux(&wasmux, &pinning, &wasm(&dir, Some(&reused)), reuse, &format!("{what}, reused"))?);
    }
    let python_path = root.join(&options.python_server);
    if python_path.is_file() {
        subjects.push(Subject::python(&python_path, &pinning)?);
    } else {
        notes.push(format!("{} is missing, so the Python server was not measured", options.python_server.display()));
    }
    for note in &notes {
        eprintln!("xtask: {note}");
    }

    let load_before = load_average();
    let cells = run_rounds(&wasmux, &pinning, &mut subjects, &MODES, options)?;
    let costs = if options.cost_requests > 0 { measure_costs(&wasmux, &pinning, &mut subjects, options, &work)? } else { Costs::default() };

    std::fs::create_dir_all(root.join(&options.out))?;
    let load = format!("{load_before} before, {} after", load_average());
    let results = Results { pinning: &pinning, subjects: &subjects, cells: &cells, costs: &costs, cold_startup, notes: &notes, load };
    let markdown = render_markdown(root, options, &results)?;
    let md_path = root.join(&options.out).join("benchmarks.md");
    // What was measured otherwise stays: `cargo xtask bench-languages`'s
    // section, and the sections measured by hand after the marker.
    let old = std::fs::read_to_string(&md_path).unwrap_or_default();
    let kept = old.find(KEPT_MARKER).map(|at| &old[at..]);
    let mut markdown = markdown;
    if let Some(languages) = section(&old, languages::HEADING)
        && !kept.is_some_and(|kept| kept.contains(languages.trim_end()))
    {
        markdown = with_section(&markdown, languages::HEADING, languages);
    }
    if let Some(kept) = kept {
        markdown = format!("{}\n\n{kept}", markdown.trim_end());
    }
    std::fs::write(&md_path, markdown).with_context(|| format!("writing {}", md_path.display()))?;
    let svg_path = root.join(&options.out).join("benchmarks.svg");
    std::fs::write(&svg_path, render_svg(&subjects, &cells, options)).with_context(|| format!("writing {}", svg_path.display()))?;
    eprintln!("xtask: wrote {} and {}", md_path.display(), svg_path.display());
    Ok(())
}

/// What follows this line in `benchmarks.md` was measured by hand and is
/// kept when the file is written again.
const KEPT_MARKER: &str = "<!-- measured by hand: cargo xtask bench keeps what follows -->";

/// A plugin directory at `dir` serving `search` (the component at `search`)
/// and the Rust `binary-echo` from `built`.
fn plugin_dir(dir: &Path, search: &Path, built: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (from, name) in [(search.to_path_buf(), "search.wasm"), (built.join("binary-echo.wasm"), "binary-echo.wasm")] {
        std::fs::copy(&from, dir.join(name)).with_context(|| format!("copying {} into {}", from.display(), dir.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// What one server costs per request in one mode.
struct Cost {
    server: &'static str,
    mode: &'static str,
    /// CPU time of the server (all its threads), in microseconds.
    cpu_us: f64,
    /// System calls per request, or why they were not counted.
    syscalls: Result<Syscalls, String>,
}

/// `strace -c -f` over a known number of requests.
struct Syscalls {
    per_request: f64,
    /// The most frequent calls, per request, most frequent first.
    top: Vec<(String, f64)>,
}

#[derive(Default)]
struct Costs {
    list: Vec<Cost>,
    requests: u64,
    /// Why no system calls were counted, if none were.
    strace_note: Option<String>,
}

impl Costs {
    fn of(&self, server: &str, mode: &str) -> Option<&Cost> {
        self.list.iter().find(|c| c.server == server && c.mode == mode)
    }
}

/// For every server and mode: CPU time per request over
/// `options.cost_requests` requests, then as many again under `strace -c
/// -f` (which slows every system call, so that run is not timed).
fn measure_costs(wasmux: &Path, pinning: &Pinning, subjects: &mut [Subject], options: &Options, work: &Path) -> Result<Costs> {
    let n = options.cost_requests;
    let strace = Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success());
    let mut costs = Costs { list: Vec::new(), requests: n, strace_note: None };
    if !strace {
        let note = "strace is not installed here (apt-get install strace), so system calls were not counted";
        eprintln!("xtask: {note}");
        costs.strace_note = Some(note.into());
    }
    for mode in MODES {
        for subject in subjects.iter_mut().filter(|s| s.modes.contains(&mode)) {
            eprintln!("xtask: cost of {} in {mode} mode: {n} requests", subject.name);
            let pid = subject.process.child.id();
            let before = cpu_time(pid);
            bench(wasmux, pinning, subject, mode, options, Some(n))?;
            let cpu_us = cpu_time(pid).saturating_sub(before) as f64 / 1e3 / n as f64;
            let syscalls = if strace {
                let summary = work.join(format!("strace-{}-{mode}.txt", subject.name));
                count_syscalls(wasmux, pinning, subject, mode, options, &summary).unwrap_or_else(|e| Err(format!("{e:#}")))
            } else {
                Err("strace is not installed".into())
            };
            subject.process.check_alive()?;
            costs.list.push(Cost { server: subject.name, mode, cpu_us, syscalls });
        }
    }
    Ok(costs)
}

/// CPU time of every thread of process `pid` so far, in nanoseconds.
fn cpu_time(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
        .sum()
}

/// `options.cost_requests` requests under `strace -c -f -p PID`, which
/// writes its summary to `summary`.
fn count_syscalls(
    wasmux: &Path,
    pinning: &Pinning,
    subject: &Subject,
    mode: &str,
    options: &Options,
    summary: &Path,
) -> Result<Result<Syscalls, String>> {
    let pid = subject.process.child.id().to_string();
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-o"])
        .arg(summary)
        .args(["-p", &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting strace")?;
    let stderr = strace.stderr.take().context("piped stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    // strace says when it has attached to the process and its threads.
    let attached = lines.by_ref().map_while(Result::ok).any(|line| line.contains("attached"));
    std::thread::spawn(move || lines.for_each(drop));
    if !attached {
        let _ = strace.wait();
        return Ok(Err("strace could not attach to the server (is ptrace allowed?)".into()));
    }
    let run = bench(wasmux, pinning, subject, mode, options, Some(options.cost_requests));
    let _ = Command::new("kill").args(["-INT", &strace.id().to_string()]).status();
    let _ = strace.wait();
    run?;
    let text = std::fs::read_to_string(summary).with_context(|| format!("reading {}", summary.display()))?;
    Ok(parse_strace_summary(&text, options.cost_requests).ok_or_else(|| format!("no strace summary in {}", summary.display())))
}

/// The table `strace -c` writes: `% time, seconds, usecs/call, calls,
/// [errors,] syscall`, one line a call, then a `total` line.
fn parse_strace_summary(text: &str, requests: u64) -> Option<Syscalls> {
    let mut calls: Vec<(String, u64)> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = *fields.last()?;
            if fields.len() < 5 || name == "total" || fields[0].parse::<f64>().is_err() {
                return None;
            }
            Some((name.to_owned(), fields[3].parse().ok()?))
        })
        .collect();
    if calls.is_empty() || requests == 0 {
        return None;
    }
    calls.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let per = |n: u64| n as f64 / requests as f64;
    let total: u64 = calls.iter().map(|(_, n)| n).sum();
    Some(Syscalls { per_request: per(total), top: calls.into_iter().take(6).map(|(name, n)| (name, per(n))).collect() })
}

/// `options.rounds` rounds of every subject in every one of `modes` it
/// serves, interleaved, so that a slow moment of the machine hits every
/// server alike.
fn run_rounds(wasmux: &Path, pinning: &Pinning, subjects: &mut [Subject], modes: &[&'static str], options: &Options) -> Result<Vec<Cell>> {
    let mut cells: Vec<Cell> = Vec::new();
    for round in 1..=options.rounds {
        for &mode in modes {
            for subject in subjects.iter_mut().filter(|s| s.modes.contains(&mode)) {
                eprintln!("xtask: round {round}/{}: {} in {mode} mode", options.rounds, subject.name);
                let report = bench(wasmux, pinning, subject, mode, options, None)?;
                let figures = Figures::of(&report);
                eprintln!("xtask:   {:.0} requests/s, p99 {:.3} ms, {} errors", figures.rps, figures.p99, figures.errors);
                match cells.iter_mut().find(|c| c.server == subject.name && c.mode == mode) {
                    Some(cell) => cell.rounds.push(figures),
                    None => cells.push(Cell { server: subject.name, mode, rounds: vec![figures] }),
                }
                subject.process.check_alive()?;
            }
        }
    }
    Ok(cells)
}

/// Runs `wasmux bench --json` once: for the options' duration, or for
/// `requests` requests without a warm-up.
fn bench(wasmux: &Path, pinning: &Pinning, subject: &Subject, mode: &str, options: &Options, requests: Option<u64>) -> Result<Value> {
    let mut command = pinning.command(wasmux, Side::LoadGenerator);
    command.args(["bench", &subject.addr, "--json", "--mode", mode]);
    command.args(["--connections", &options.connections.to_string(), "--mix", &options.mix]);
    match requests {
        Some(n) => command.args(["--requests", &n.to_string()]),
        None => command.args(["--duration", &options.duration, "--warmup", &options.warmup]),
    };
    command.args(["--depth", &options.depth.to_string()]);
    if mode == "connect" {
        // Otherwise the load generator's own TIME_WAIT sockets are what is measured.
        command.arg("--reset-close");
    }
    let output = command.output().context("running wasmux bench")?;
    // A run with errors exits non-zero but still reports: the table shows them.
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "wasmux bench against {} ({mode}) printed no report: {}",
            subject.name,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[derive(Clone, Copy)]
enum Side {
    Server,
    LoadGenerator,
}

/// Which cores the servers and the load generator run on.
struct Pinning {
    /// (server cores, load generator cores) as taskset lists, or none.
    cores: Option<(String, String)>,
    reason: String,
}

impl Pinning {
    fn plan(wanted: bool) -> Self {
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

    fn describe(&self) -> &str {
        &self.reason
    }

    fn command(&self, program: &Path, side: Side) -> Command {
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
}

/// A server process, stopped when dropped.
struct Process {
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

    fn check_alive(&mut self) -> Result<()> {
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

impl Subject {
    fn wasmux(program: &Path, pinning: &Pinning, args: &[OsString], name: &'static str, what: &str) -> Result<Self> {
        let mut command = pinning.command(program, Side::Server);
        command.args(["serve", "--listen", "127.0.0.1:0"]).args(args).env("RUST_LOG", "warn");
        let (process, addr, startup) = Process::start(command, what, "wasmux listening on ")?;
        Ok(Self { name, what: what.to_owned(), addr, modes: MODES.to_vec(), process, startup })
    }

    fn python(script: &Path, pinning: &Pinning) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = pinning.command(Path::new("python3"), Side::Server);
        command.arg(script).args(["127.0.0.1", &port.to_string()]).env("PYTHONUNBUFFERED", "1");
        let (process, _, startup) = Process::start(command, "the Python app-server", "listening on")?;
        let version = Command::new("python3").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        Ok(Self {
            name: "python",
            what: format!("the guide's app-server ({})", version.unwrap_or_else(|_| "python3".into())),
            addr: format!("127.0.0.1:{port}"),
            modes: vec!["connect"],
            process,
            startup,
        })
    }
}

/// The 1, 5 and 15 minute load averages: other work on the machine during
/// the run shows up in the figures, so the table says how busy it was.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The machine, as the table's caption describes it.
fn machine(root: &Path) -> Vec<(String, String)> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_default();
    let memory = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let output = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    };
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let wasmtime = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "unknown".into());
    vec![
        ("CPU".into(), cpu),
        ("cores (nproc)".into(), cores),
        ("memory".into(), memory),
        ("kernel".into(), output("uname", &["-sr"])),
        ("rustc".into(), output("rustc", &["--version"])),
        ("wasmtime".into(), wasmtime),
        ("python".into(), output("python3", &["--version"])),
    ]
}

/// The section of `markdown` under the level-2 `heading`, up to the next
/// level-2 heading or the end.
fn section<'a>(markdown: &'a str, heading: &str) -> Option<&'a str> {
    let start = markdown.find(&format!("\n{heading}\n"))? + 1;
    let rest = &markdown[start..];
    let end = rest[heading.len()..].find("\n## ").map(|i| heading.len() + i + 1).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `markdown` with the section under `heading` replaced by `new` (which
/// starts with that heading), or with `new` added at the end.
fn with_section(markdown: &str, heading: &str, new: &str) -> String {
    let new = format!("{}\n", new.trim_end());
    match section(markdown, heading) {
        Some(old) => {
            let start = old.as_ptr() as usize - markdown.as_ptr() as usize;
            let end = start + old.len();
            let gap = if end < markdown.len() { "\n" } else { "" };
            format!("{}{new}{gap}{}", &markdown[..start], &markdown[end..])
        }
        None => format!("{}\n\n{new}", markdown.trim_end()),
    }
}

/// Everything a run measured, for the report.
struct Results<'a> {
    pinning: &'a Pinning,
    subjects: &'a [Subject],
    cells: &'a [Cell],
    costs: &'a Costs,
    /// Start-up of the Wasm server with an empty compiled-code cache.
    cold_startup: Duration,
    /// What was not measured, and why.
    notes: &'a [String],
    load: String,
}

/// The targets of issue 12: (what, server, mode, least ratio to native).
const TARGETS: [(&str, &str, &str, f64); 5] = [
    ("reuse, persistent connections", "wasm-reuse", "persistent", 0.90),
    ("reuse, pipelined", "wasm-reuse", "pipelined", 0.60),
    ("a fresh instance per request, persistent connections", "wasm", "persistent", 0.60),
    ("one connection per request, fresh instances", "wasm", "connect", 0.95),
    ("one connection per request, reuse", "wasm-reuse", "connect", 0.95),
];

/// The p99 latency the Rust plugins should stay under on persistent
/// connections, in milliseconds.
const P99_TARGET_MS: f64 = 1.0;

/// What was measured and why the figures are what they are: the leads
/// tried on the fresh path, kept by hand beside this file.
const NOTES: &str = include_str!("../bench-notes.md");

fn render_markdown(root: &Path, options: &Options, results: &Results<'_>) -> Result<String> {
    let &Results { pinning, subjects, cells, costs, cold_startup, notes, ref load } = results;
    let mut md = String::new();
    let find = |server: &str, mode: &str| cells.iter().find(|c| c.server == server && c.mode == mode);
    writeln!(md, "# Benchmarks")?;
    writeln!(md)?;
    writeln!(md, "Written by `cargo xtask bench`; run it again to measure your machine.")?;
    writeln!(md)?;
    writeln!(md, "![requests per second and p99 latency](benchmarks.svg)")?;
    writeln!(md)?;
    writeln!(md, "## The servers")?;
    writeln!(md)?;
    for s in subjects {
        writeln!(md, "- **{}**: {} (ready {:.0} ms after start)", s.name, s.what, s.startup.as_secs_f64() * 1e3)?;
    }
    writeln!(
        md,
        "- The Wasm server started in {:.0} ms with an empty compiled-code cache; the figure above is with the cache filled.",
        cold_startup.as_secs_f64() * 1e3
    )?;
    for note in notes {
        writeln!(md, "- {note}.")?;
    }
    writeln!(md)?;
    writeln!(md, "## The load")?;
    writeln!(md)?;
    writeln!(
        md,
        "`wasmux bench` on the same machine: {} connections, mix `{}` (the guide's searches and binary requests, every answer checked byte for byte), {} per run after a {} warm-up, {} rounds interleaved across servers; each cell shows the round with the median throughput. Pipelined runs keep {} requests in flight per connection; in connect mode the load generator closes each connection with a reset (`--reset-close`), since with a normal close its own TIME_WAIT sockets limit it to about 15k connections/s on loopback. {}.",
        options.connections, options.mix, options.duration, options.warmup, options.rounds, options.depth, pinning.describe()
    )?;
    writeln!(md)?;
    writeln!(md, "| server | mode | requests/s | range over rounds | p50 ms | p90 ms | p99 ms | max ms | errors | vs native |")?;
    writeln!(md, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for mode in MODES {
        for s in subjects {
            let Some(cell) = find(s.name, mode) else {
                if s.name == "python" {
                    writeln!(md, "| {} | {mode} | — | | | | | | | closes after each answer: connect mode only |", s.name)?;
                }
                continue;
            };
            let Some(m) = cell.median() else { continue };
            let (low, high) = cell.range();
            let ratio = find("native", mode).and_then(Cell::median).map(|n| format!("{:.2}×", m.rps / n.rps)).unwrap_or_default();
            writeln!(
                md,
                "| {} | {mode} | {:.0} | {:.0}–{:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {ratio} |",
                s.name, m.rps, low, high, m.p50, m.p90, m.p99, m.max, cell.errors()
            )?;
        }
    }
    writeln!(md)?;
    render_costs(&mut md, subjects, costs)?;
    render_targets(&mut md, cells, costs)?;
    md.push_str(NOTES);
    writeln!(md)?;
    writeln!(md, "## The machine")?;
    writeln!(md)?;
    writeln!(md, "| | |")?;
    writeln!(md, "| --- | --- |")?;
    for (what, value) in machine(root) {
        writeln!(md, "| {what} | {value} |")?;
    }
    writeln!(md, "| load average (1, 5, 15 min) | {load} |")?;
    writeln!(md)?;
    writeln!(md, "## Reproduce")?;
    writeln!(md)?;
    writeln!(md, "```sh")?;
    writeln!(
        md,
        "cargo xtask bench --duration {} --warmup {} --connections {} --depth {} --rounds {} --mix {} --reuse {} --cost-requests {}",
        options.duration, options.warmup, options.connections, options.depth, options.rounds, options.mix, options.reuse, options.cost_requests
    )?;
    writeln!(md, "```")?;
    Ok(md)
}

fn render_costs(md: &mut String, subjects: &[Subject], costs: &Costs) -> Result<()> {
    if costs.list.is_empty() {
        return Ok(());
    }
    writeln!(md, "## Cost per request")?;
    writeln!(md)?;
    writeln!(
        md,
        "Each server after the rounds, in each mode: {} requests (no warm-up), its CPU time (all threads, from `/proc/PID/task/*/schedstat`) divided by the requests; then as many again under `strace -c -f` attached to it, its system calls divided by the requests. \"vs native, CPU\" is native's CPU per request over the row's: the throughput ratio the server would reach if it alone limited throughput. System calls include the epoch ticker's sleep (one a millisecond, however many requests).",
        costs.requests
    )?;
    if let Some(note) = &costs.strace_note {
        writeln!(md)?;
        writeln!(md, "{note}.")?;
    }
    writeln!(md)?;
    writeln!(md, "| server | mode | CPU µs/request | vs native, CPU | system calls/request | most frequent, per request |")?;
    writeln!(md, "| --- | --- | ---: | ---: | ---: | --- |")?;
    for mode in MODES {
        let native = costs.of("native", mode).map(|c| c.cpu_us);
        for s in subjects {
            let Some(cost) = costs.of(s.name, mode) else { continue };
            let ratio = native.map(|n| format!("{:.2}×", n / cost.cpu_us)).unwrap_or_default();
            let (calls, top) = match &cost.syscalls {
                Ok(calls) => {
                    let top: Vec<String> = calls.top.iter().map(|(name, n)| format!("{name} {n:.2}")).collect();
                    (format!("{:.2}", calls.per_request), top.join(", "))
                }
                Err(why) => ("—".to_owned(), why.clone()),
            };
            writeln!(md, "| {} | {mode} | {:.1} | {ratio} | {calls} | {top} |", s.name, cost.cpu_us)?;
        }
    }
    writeln!(md)?;
    Ok(())
}

fn render_targets(md: &mut String, cells: &[Cell], costs: &Costs) -> Result<()> {
    let rps = |server: &str, mode: &str| cells.iter().find(|c| c.server == server && c.mode == mode).and_then(Cell::median);
    let cpu = |server: &str, mode: &str| costs.of(server, mode).map(|c| c.cpu_us);
    writeln!(md, "## Targets")?;
    writeln!(md)?;
    writeln!(md, "Issue 12's targets, as ratios to the native server in this run (requests/s from the table above; CPU from the cost table).")?;
    writeln!(md)?;
    writeln!(md, "| target | wanted | requests/s ratio | CPU ratio | met (requests/s) |")?;
    writeln!(md, "| --- | ---: | ---: | ---: | --- |")?;
    for (what, server, mode, wanted) in TARGETS {
        let ratio = rps(server, mode).zip(rps("native", mode)).map(|(row, native)| row.rps / native.rps);
        let cpu_ratio = cpu(server, mode).zip(cpu("native", mode)).map(|(row, native)| native / row);
        let show = |r: Option<f64>| r.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "—".into());
        let met = match ratio {
            Some(r) if r >= wanted => "yes",
            Some(_) => "no",
            None => "not measured",
        };
        writeln!(md, "| {what} | ≥ {wanted:.2}× | {} | {} | {met} |", show(ratio), show(cpu_ratio))?;
    }
    for server in ["wasm", "wasm-reuse"] {
        if let Some(f) = rps(server, "persistent") {
            let met = if f.p99 < P99_TARGET_MS { "yes" } else { "no" };
            writeln!(md, "| p99 of {server}, persistent | < {P99_TARGET_MS:.0} ms | {:.3} ms | | {met} |", f.p99)?;
        }
    }
    writeln!(md)?;
    Ok(())
}

/// A grouped bar chart, by hand: requests/s and p99 latency per mode,
/// one bar per server.
fn render_svg(subjects: &[Subject], cells: &[Cell], options: &Options) -> String {
    const COLORS: [&str; 8] = ["#4c72b0", "#64b5cd", "#8172b3", "#dd8452", "#55a868", "#c44e52", "#937860", "#da8bc3"];
    const LEGEND_COLUMNS: usize = 4;
    let legend_rows = subjects.len().div_ceil(LEGEND_COLUMNS) as f64;
    let (width, height) = (900.0, 350.0 + 16.0 * legend_rows);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    /// A chart panel: its title, the figure it shows, its left edge.
    type Panel = (&'static str, fn(&Figures) -> f64, f64);
    let panels: [Panel; 2] =
        [("requests/s (higher is better)", |f| f.rps, 20.0), ("p99 latency, ms (lower is better)", |f| f.p99, 470.0)];
    for (title, value, left) in panels {
        let (plot_w, plot_h, top) = (400.0, 260.0, 40.0);
        let _ = writeln!(svg, r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{title}</text>"#, left + plot_w / 2.0);
        let max = cells.iter().filter_map(Cell::median).map(|f| value(&f)).filter(|v| v.is_finite()).fold(0.0, f64::max);
        let max = if max > 0.0 { max * 1.15 } else { 1.0 };
        let _ = writeln!(svg, r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, top + plot_h, left + plot_w, top + plot_h);
        let group_w = plot_w / MODES.len() as f64;
        for (g, mode) in MODES.iter().enumerate() {
            let x0 = left + g as f64 * group_w;
            let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{mode}</text>"#, x0 + group_w / 2.0, top + plot_h + 18.0);
            let bar_w = (group_w - 20.0) / subjects.len() as f64;
            for (i, s) in subjects.iter().enumerate() {
                let Some(f) = cells.iter().find(|c| c.server == s.name && c.mode == *mode).and_then(Cell::median) else { continue };
                let v = value(&f);
                let h = if v.is_finite() { v / max * plot_h } else { 0.0 };
                let x = x0 + 10.0 + i as f64 * bar_w;
                let y = top + plot_h - h;
                let _ = writeln!(svg, r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#, bar_w - 2.0, COLORS[i % COLORS.len()]);
                let label = if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") };
                let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{label}</text>"#, x + bar_w / 2.0 - 1.0, y - 4.0);
            }
        }
    }
    for (i, s) in subjects.iter().enumerate() {
        let x = 20.0 + (i % LEGEND_COLUMNS) as f64 * 220.0;
        let y = 330.0 + (i / LEGEND_COLUMNS) as f64 * 16.0;
        let _ = writeln!(svg, r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/>"#, y - 10.0, COLORS[i % COLORS.len()]);
        let _ = writeln!(svg, r#"<text x="{}" y="{y}">{}</text>"#, x + 18.0, xml_escape(s.name));
    }
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{}" font-size="10" fill="dimgray">{} connections, mix {}, {} per run, median of {} rounds; pipelined depth {}</text>"#,
        height - 8.0,
        options.connections,
        xml_escape(&options.mix),
        xml_escape(&options.duration),
        options.rounds,
        options.depth
    );
    svg.push_str("</svg>\n");
    svg
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADING: &str = "## Plugins by language";

    #[test]
    fn strace_summaries_are_read_per_request() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 61.02    0.120000           6     20000           sendto
 30.51    0.060000           2     20800       800 recvfrom
  8.47    0.016667           8      2000           clock_nanosleep
------ ----------- ----------- --------- --------- ----------------
100.00    0.196667           4     42800       800 total
";
        let calls = parse_strace_summary(text, 10000).expect("a summary");
        assert!((calls.per_request - 4.28).abs() < 1e-9, "{}", calls.per_request);
        let top: Vec<(&str, f64)> = calls.top.iter().map(|(name, n)| (name.as_str(), *n)).collect();
        assert_eq!(top, [("recvfrom", 2.08), ("sendto", 2.0), ("clock_nanosleep", 0.2)]);
        assert!(parse_strace_summary("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n", 10).is_none());
    }

    #[test]
    fn a_section_is_replaced_between_its_neighbours() {
        let md = "# Benchmarks\n\n## The load\n\nold load\n\n## Plugins by language\n\nold\n\n## Reproduce\n\nsh\n";
        assert_eq!(section(md, HEADING), Some("## Plugins by language\n\nold\n\n"));
        let new = with_section(md, HEADING, "## Plugins by language\n\nnew\n");
        assert_eq!(new, "# Benchmarks\n\n## The load\n\nold load\n\n## Plugins by language\n\nnew\n\n## Reproduce\n\nsh\n");
    }

    #[test]
    fn a_missing_section_is_added_at_the_end_and_a_last_one_replaced() {
        let md = "# Benchmarks\n\n## The load\n";
        assert_eq!(section(md, HEADING), None);
        let added = with_section(md, HEADING, "## Plugins by language\n\nfirst\n");
        assert_eq!(added, "# Benchmarks\n\n## The load\n\n## Plugins by language\n\nfirst\n");
        let replaced = with_section(&added, HEADING, "## Plugins by language\n\nsecond\n");
        assert_eq!(replaced, "# Benchmarks\n\n## The load\n\n## Plugins by language\n\nsecond\n");
    }
}
