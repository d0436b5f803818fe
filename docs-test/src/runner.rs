//! The whole run: plan every document, check the listings, run the
//! sessions (each in a child process, in a network namespace of its own
//! when the machine allows), and print the summary.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use crate::plan::{self, Network, Plan, Session};

#[derive(Clone, Debug)]
pub struct Options {
    /// The repository root; documents and `cwd="repo"` are relative to it.
    pub root: PathBuf,
    /// Put first on PATH for every command.
    pub bin_dir: PathBuf,
    /// Markdown files (relative to root); empty: README.md and docs/**/*.md.
    pub files: Vec<PathBuf>,
    /// Sessions run at once.
    pub jobs: usize,
    /// Run every session in the machine's own network, one at a time.
    pub no_netns: bool,
    /// Only the sessions of these places: `FILE` or `FILE:LINE` (a block's fence line).
    pub only: Vec<String>,
    /// Print every session's report, not only failing ones.
    pub verbose: bool,
    /// This program, started again for each session.
    pub exe: PathBuf,
}

/// The counts the summary prints.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub run: usize,
    pub failed: usize,
    pub not_run: usize,
    pub listings: usize,
    pub listing_failures: usize,
    pub links: usize,
    pub broken_links: usize,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.listing_failures == 0 && self.broken_links == 0
    }
}

/// Plans every document; annotation mistakes are an error listing them all.
pub fn plan_all(root: &Path, files: &[PathBuf]) -> anyhow::Result<Plan> {
    let mut all = Plan::default();
    for file in files {
        let plan = plan::plan_file(root, file);
        all.sessions.extend(plan.sessions);
        all.not_run.extend(plan.not_run);
        all.listings.extend(plan.listings);
        all.errors.extend(plan.errors);
    }
    if !all.errors.is_empty() {
        anyhow::bail!("the documents' annotations have mistakes:\n  {}", all.errors.join("\n  "));
    }
    Ok(all)
}

fn selected(session: &Session, only: &[String]) -> bool {
    only.is_empty()
        || only.iter().any(|place| {
            let (file, line) = match place.rsplit_once(':') {
                Some((file, line)) if line.parse::<usize>().is_ok() => (file, line.parse().ok()),
                _ => (place.as_str(), None),
            };
            Path::new(file) == session.file && line.is_none_or(|line| session.transcripts.iter().any(|t| t.line == line))
        })
}

pub fn run(options: &Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let files = if options.files.is_empty() { plan::documents(&options.root)? } else { options.files.clone() };
    let plan = plan_all(&options.root, &files)?;
    let mut summary = Summary::default();
    let mut out = std::io::stdout().lock();

    let (links, broken) = crate::links::check(&options.root, &files);
    summary.links = links;
    summary.broken_links = broken.len();
    for broken in &broken {
        writeln!(out, "FAIL {broken}")?;
    }

    for listing in &plan.listings {
        summary.listings += 1;
        let place = format!("{}:{}", listing.file.display(), listing.line);
        match std::fs::read(options.root.join(&listing.path)) {
            Ok(bytes) if bytes == listing.body.as_bytes() => {}
            Ok(bytes) => {
                summary.listing_failures += 1;
                let diff = snapbox::Assert::new()
                    .normalize_paths(false)
                    .palette(snapbox::report::Palette::plain())
                    .try_eq(
                        Some(&listing.path.display()),
                        snapbox::Data::text(String::from_utf8_lossy(&bytes).into_owned()).raw(),
                        snapbox::Data::text(listing.body.clone()).raw(),
                    )
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "(they differ in bytes a text comparison does not show: line endings?)".into());
                writeln!(out, "FAIL {place}: the listing is not {} byte for byte:\n{diff}", listing.path.display())?;
            }
            Err(e) => {
                summary.listing_failures += 1;
                writeln!(out, "FAIL {place}: cannot read {}: {e}", listing.path.display())?;
            }
        }
    }

    let sessions: Vec<Session> = plan.sessions.into_iter().filter(|s| selected(s, &options.only)).collect();
    let isolated = if options.no_netns {
        false
    } else {
        match crate::netns::available(&options.exe) {
            Ok(()) => true,
            Err(why) => {
                writeln!(out, "network namespaces are not available here ({why}): sessions run one at a time on this machine's own ports")?;
                false
            }
        }
    };
    let jobs = if isolated { options.jobs.max(1) } else { 1 };
    let queue = Arc::new(Mutex::new(sessions.into_iter().collect::<VecDeque<_>>()));
    // Sessions on the machine's network could clash on ports: one at a time.
    let host_network = Arc::new(Mutex::new(()));
    let (results, finished) = mpsc::channel();
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let queue = Arc::clone(&queue);
        let host_network = Arc::clone(&host_network);
        let results = results.clone();
        let options = options.clone();
        workers.push(std::thread::spawn(move || {
            loop {
                let Some(session) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else { break };
                let _one_at_a_time =
                    (session.network == Network::Host).then(|| host_network.lock().unwrap_or_else(|e| e.into_inner()));
                let result = run_child(&options, &session, isolated && session.network == Network::Isolated);
                if results.send((session, result)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(results);
    for (session, result) in finished {
        let transcripts = session.transcripts.iter().filter(|t| !t.commands.is_empty()).count();
        summary.run += transcripts;
        match result {
            Ok(child) => {
                summary.failed += child.failed;
                let verdict = if child.failed == 0 { "ok  " } else { "FAIL" };
                writeln!(
                    out,
                    "{verdict} {} ({} transcript{}, {:.1} s)",
                    session.place(),
                    transcripts,
                    if transcripts == 1 { "" } else { "s" },
                    child.seconds
                )?;
                if child.failed > 0 || options.verbose {
                    write!(out, "{}", child.report)?;
                }
            }
            Err(e) => {
                summary.failed += transcripts;
                writeln!(out, "FAIL {}: {e:#}", session.place())?;
            }
        }
    }
    for worker in workers {
        let _ = worker.join();
    }

    writeln!(out)?;
    writeln!(out, "{} transcripts run, {} marked not run", summary.run, plan.not_run.len())?;
    summary.not_run = plan.not_run.len();
    for not_run in &plan.not_run {
        writeln!(out, "  not run: {}:{}: {}", not_run.file.display(), not_run.line, not_run.reason)?;
    }
    writeln!(out, "{} code listings checked against their files, {} links checked", summary.listings, summary.links)?;
    if !summary.ok() {
        writeln!(
            out,
            "FAILED: {} transcripts, {} listings, {} links",
            summary.failed, summary.listing_failures, summary.broken_links
        )?;
    }
    writeln!(out, "test-docs took {:.1} s", started.elapsed().as_secs_f64())?;
    Ok(summary)
}

/// What a session's child process reported.
struct ChildResult {
    failed: usize,
    report: String,
    seconds: f64,
}

/// Runs `session` in a child process of this program (`session`
/// subcommand), in a new network namespace when `isolated`.
fn run_child(options: &Options, session: &Session, isolated: bool) -> anyhow::Result<ChildResult> {
    let started = Instant::now();
    let mut command = if isolated {
        let mut command = Command::new("unshare");
        command.args(crate::netns::unshare_args()).arg(&options.exe);
        command
    } else {
        Command::new(&options.exe)
    };
    command
        .arg("session")
        .arg("--root")
        .arg(&options.root)
        .arg("--bin-dir")
        .arg(&options.bin_dir)
        .arg("--file")
        .arg(&session.file)
        .arg("--index")
        .arg(session.index.to_string())
        .stdin(Stdio::null());
    if isolated {
        command.arg("--loopback-up");
    }
    let output = command.output()?;
    let report = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let failed = report
        .lines()
        .find_map(|line| line.strip_prefix("docs-test result: failed="))
        .and_then(|n| n.trim().parse().ok());
    let failed = match failed {
        Some(failed) => failed,
        None => anyhow::bail!("the session's process ended without a result ({}):\n{report}", output.status),
    };
    let report = report.lines().filter(|l| !l.starts_with("docs-test result:")).map(|l| format!("{l}\n")).collect();
    Ok(ChildResult { failed, report, seconds: started.elapsed().as_secs_f64() })
}

/// The child's side: runs session `index` of `file` and prints its report
/// and a last line `docs-test result: failed=N`.
pub fn run_session(root: &Path, bin_dir: &Path, file: &Path, index: usize, loopback_up: bool) -> anyhow::Result<bool> {
    if loopback_up {
        crate::netns::loopback_up().map_err(|e| anyhow::anyhow!("cannot bring up the loopback interface of the new network namespace: {e}"))?;
    }
    let plan = plan::plan_file(root, file);
    if !plan.errors.is_empty() {
        anyhow::bail!("{}", plan.errors.join("\n"));
    }
    let session = plan
        .sessions
        .into_iter()
        .find(|s| s.index == index)
        .ok_or_else(|| anyhow::anyhow!("{} has no session {index}", file.display()))?;
    let env = crate::session::Environment { root: root.to_owned(), bin_dir: bin_dir.to_owned() };
    let outcome = crate::session::run(&session, &env);
    let mut out = std::io::stdout().lock();
    write!(out, "{}", outcome.report)?;
    writeln!(out, "docs-test result: failed={}", outcome.failed)?;
    Ok(outcome.failed == 0)
}
