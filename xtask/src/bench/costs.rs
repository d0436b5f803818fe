//! What a server spends per request: its CPU time (from
//! `/proc/PID/task/*/schedstat`) and its system calls (`strace -c -f`
//! attached to it), each over a fixed number of requests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::process::{Pinning, Subject};
use super::rounds::{Load, drive};

/// What one server costs per request in one mode.
pub struct Cost {
    pub server: &'static str,
    pub mode: &'static str,
    /// CPU time of the server (all its threads), in microseconds.
    pub cpu_us: f64,
    /// System calls per request, or why they were not counted.
    pub syscalls: Result<Syscalls, String>,
}

/// `strace -c -f` over a known number of requests.
pub struct Syscalls {
    pub per_request: f64,
    /// The most frequent calls, per request, most frequent first.
    pub top: Vec<(String, f64)>,
}

#[derive(Default)]
pub struct Costs {
    pub list: Vec<Cost>,
    pub requests: u64,
    /// Why no system calls were counted, if none were.
    pub strace_note: Option<String>,
}

impl Costs {
    pub fn of(&self, server: &str, mode: &str) -> Option<&Cost> {
        self.list.iter().find(|c| c.server == server && c.mode == mode)
    }
}

/// For every server and every one of `modes` it serves: CPU time per
/// request over `requests` requests, then as many again under `strace -c
/// -f` (which slows every system call, so that run is not timed). strace's
/// summaries are written into `work`.
pub fn measure_costs(
    wasmux: &Path,
    pinning: &Pinning,
    subjects: &mut [Subject],
    modes: &[&'static str],
    load: &Load,
    requests: u64,
    work: &Path,
) -> Result<Costs> {
    let n = requests;
    let strace = Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success());
    let mut costs = Costs { list: Vec::new(), requests: n, strace_note: None };
    if !strace {
        let note = "strace is not installed here (apt-get install strace), so system calls were not counted";
        eprintln!("xtask: {note}");
        costs.strace_note = Some(note.into());
    }
    for &mode in modes {
        for subject in subjects.iter_mut().filter(|s| s.modes.contains(&mode)) {
            eprintln!("xtask: cost of {} in {mode} mode: {n} requests", subject.name);
            let pid = subject.process.id();
            let before = cpu_time(pid);
            drive(wasmux, pinning, subject, mode, load, Some(n))?;
            let cpu_us = cpu_time(pid).saturating_sub(before) as f64 / 1e3 / n as f64;
            let syscalls = if strace {
                let summary = work.join(format!("strace-{}-{mode}.txt", subject.name));
                count_syscalls(wasmux, pinning, subject, mode, load, n, &summary).unwrap_or_else(|e| Err(format!("{e:#}")))
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
pub fn cpu_time(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
        .sum()
}

/// `requests` requests under `strace -c -f -p PID`, which writes its
/// summary to `summary`.
fn count_syscalls(
    wasmux: &Path,
    pinning: &Pinning,
    subject: &Subject,
    mode: &str,
    load: &Load,
    requests: u64,
    summary: &Path,
) -> Result<Result<Syscalls, String>> {
    let pid = subject.process.id().to_string();
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
    let run = drive(wasmux, pinning, subject, mode, load, Some(requests));
    let _ = Command::new("kill").args(["-INT", &strace.id().to_string()]).status();
    let _ = strace.wait();
    run?;
    let text = std::fs::read_to_string(summary).with_context(|| format!("reading {}", summary.display()))?;
    Ok(parse_strace_summary(&text, requests).ok_or_else(|| format!("no strace summary in {}", summary.display())))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn only_the_six_most_frequent_calls_are_named_but_all_are_counted() {
        let calls = ["epoll_wait", "read", "write", "futex", "ioctl", "mprotect", "madvise", "close"];
        let mut text = String::from("% time     seconds  usecs/call     calls    errors syscall\n------ ----------- ----------- --------- --------- ----------------\n");
        for (i, name) in calls.iter().enumerate() {
            // No errors column: strace leaves it blank when a call never failed.
            text.push_str(&format!("  1.00    0.000100           1     {}           {name}\n", 1000 * (i + 1)));
        }
        text.push_str("------ ----------- ----------- --------- --------- ----------------\n100.00    0.000800           1     36000           total\n");
        let counted = parse_strace_summary(&text, 1000).expect("a summary");
        assert_eq!(counted.per_request, 36.0);
        let named: Vec<&str> = counted.top.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(named, ["close", "madvise", "mprotect", "ioctl", "futex", "write"]);
        assert_eq!(counted.top[0].1, 8.0);
        assert!(parse_strace_summary(&text, 0).is_none(), "no requests, no figure per request");
    }
}
