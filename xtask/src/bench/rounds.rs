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
