//! Driving the servers with `wasmux bench --json`: one run, and rounds of
//! runs interleaved across servers, kept as cells of the table.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::process::{Pinning, Side, Subject};

/// The load `wasmux bench` applies in every run.
pub struct Load {
    /// Measured time per run.
    pub duration: String,
    /// Warm-up before each run.
    pub warmup: String,
    pub connections: u32,
    /// Requests in flight per connection in pipelined mode.
    pub depth: u32,
    pub mix: String,
    /// Runs per server and mode.
    pub rounds: u32,
}

/// One bench run's figures.
#[derive(Clone)]
pub struct Figures {
    pub rps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub errors: u64,
    /// The errors by kind (`wasmux bench`'s `error_kinds`): the kind, how
    /// many, and the first one's message.
    pub error_kinds: Vec<(String, u64, String)>,
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
            error_kinds: report["error_kinds"]
                .as_object()
                .map(|kinds| {
                    kinds
                        .iter()
                        .map(|(kind, v)| (kind.clone(), v["count"].as_u64().unwrap_or(0), v["first"].as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// One cell of the table: a server in a mode, over every round.
pub struct Cell {
    pub server: &'static str,
    pub mode: &'static str,
    /// In the order they were run.
    pub rounds: Vec<Figures>,
}

impl Cell {
    /// The round with the median throughput: the figures the table shows.
    pub fn median(&self) -> Option<Figures> {
        let mut rounds = self.rounds.clone();
        rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        rounds.get(rounds.len() / 2).cloned()
    }

    pub fn range(&self) -> (f64, f64) {
        let rps = self.rounds.iter().map(|f| f.rps);
        (rps.clone().fold(f64::INFINITY, f64::min), rps.fold(0.0, f64::max))
    }

    pub fn errors(&self) -> u64 {
        self.rounds.iter().map(|f| f.errors).sum()
    }

    /// The errors of every round by kind, with the first message of each:
    /// `4 error-answer:plugin-timeout ("plugin search ran past …")`.
    pub fn error_kinds(&self) -> String {
        let mut kinds: Vec<(&str, u64, &str)> = Vec::new();
        for (kind, count, first) in self.rounds.iter().flat_map(|f| &f.error_kinds) {
            match kinds.iter_mut().find(|(k, _, _)| k == kind) {
                Some((_, total, _)) => *total += count,
                None => kinds.push((kind, *count, first)),
            }
        }
        kinds.iter().map(|(kind, count, first)| format!("{count} `{kind}` ({first:?})")).collect::<Vec<_>>().join(", ")
    }
}

/// Below a table: what the errors it counts were, cell by cell (`what`
/// names a cell's server), or nothing when there were none.
pub fn errors_note(cells: &[Cell], what: impl Fn(&Cell) -> String) -> String {
    let lines: Vec<String> = cells.iter().filter(|c| c.errors() > 0).map(|c| format!("- {}, {}: {}", what(c), c.mode, c.error_kinds())).collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "The errors, over every round, by kind (`error-answer:plugin-timeout` is an answer saying the plugin ran past its deadline, 100 ms by default: wall-clock time, in which an instance waiting for the core counts):\n\n{}\n\n",
        lines.join("\n")
    )
}

/// `load.rounds` rounds of every subject in every one of `modes` it
/// serves, interleaved, so that a slow moment of the machine hits every
/// server alike.
pub fn run_rounds(wasmux: &Path, pinning: &Pinning, subjects: &mut [Subject], modes: &[&'static str], load: &Load) -> Result<Vec<Cell>> {
    let mut cells: Vec<Cell> = Vec::new();
    for round in 1..=load.rounds {
        for &mode in modes {
            for subject in subjects.iter_mut().filter(|s| s.modes.contains(&mode)) {
                eprintln!("xtask: round {round}/{}: {} in {mode} mode", load.rounds, subject.name);
                let report = drive(wasmux, pinning, subject, mode, load, None)?;
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

/// Runs `wasmux bench --json` once against `subject`: for the load's
/// duration, or for `requests` requests without a warm-up.
pub fn drive(wasmux: &Path, pinning: &Pinning, subject: &Subject, mode: &str, load: &Load, requests: Option<u64>) -> Result<Value> {
    let mut command = pinning.command(wasmux, Side::LoadGenerator);
    command.args(["bench", &subject.addr, "--json", "--mode", mode]);
    command.args(["--connections", &load.connections.to_string(), "--mix", &load.mix]);
    match requests {
        Some(n) => command.args(["--requests", &n.to_string()]),
        None => command.args(["--duration", &load.duration, "--warmup", &load.warmup]),
    };
    command.args(["--depth", &load.depth.to_string()]);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn round(errors: &[(&str, u64, &str)]) -> Figures {
        let kinds = errors.iter().map(|(k, n, first)| (k.to_string(), *n, first.to_string())).collect();
        Figures { rps: 1.0, p50: 0.1, p90: 0.2, p99: 0.3, max: 1.0, errors: errors.iter().map(|e| e.1).sum(), error_kinds: kinds }
    }

    #[test]
    fn the_errors_note_adds_up_each_kind_over_the_rounds_and_keeps_the_first_message() {
        let timeout = "error-answer:plugin-timeout";
        let cells = [
            Cell { server: "py", mode: "connect", rounds: vec![round(&[(timeout, 3, "ran past")]), round(&[]), round(&[(timeout, 1, "later"), ("closed", 2, "closed")])] },
            Cell { server: "wasm", mode: "connect", rounds: vec![round(&[])] },
        ];
        let note = errors_note(&cells, |c| c.server.to_uppercase());
        assert!(note.contains("- PY, connect: 4 `error-answer:plugin-timeout` (\"ran past\"), 2 `closed` (\"closed\")\n"), "{note}");
        assert!(!note.contains("WASM"), "{note}");
        assert_eq!(errors_note(&cells[1..], |c| c.server.to_owned()), "");
    }
}
