//! The current `wasmux` against a baseline binary (one built from another
//! commit) in the same run: which rows the baseline serves too, and each
//! pair's ratio in each mode. Both binaries' rows run in the same rounds,
//! one right after the other, so a slow moment of the machine hits both.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::costs::Costs;
use super::rounds::{Cell, Figures};

/// The rows the baseline serves too: (the current binary's row, the
/// baseline's). The other rows measure plugins and settings, not the
/// binary, so they are not doubled.
pub const TWINS: [(&str, &str); 3] = [("wasm", "wasm-baseline"), ("wasm-reuse", "wasm-reuse-baseline"), ("native", NATIVE_BASELINE)];

/// The baseline's native row: what its other rows' "vs native" ratios are
/// taken against.
pub const NATIVE_BASELINE: &str = "native-baseline";

/// The baseline's row beside the current binary's row `current`, if it
/// has one.
pub fn twin(current: &str) -> Option<&'static str> {
    TWINS.iter().find(|(c, _)| *c == current).map(|(_, baseline)| *baseline)
}

/// The baseline binary, and what it measured outside the table.
pub struct Baseline {
    pub path: PathBuf,
    /// What `--version` says.
    pub version: String,
    /// Start-up of its Wasm server with an empty compiled-code cache (its
    /// own cache, apart from the current binary's).
    pub cold_startup: Option<Duration>,
}

impl Baseline {
    /// The binary at `path` (relative to `root`), checked to run.
    pub fn find(root: &Path, path: &Path) -> Result<Self> {
        let path = root.join(path);
        if !path.is_file() {
            bail!("--baseline: {} is not a file (build one with `cargo build --release` in a worktree of the older commit)", path.display());
        }
        let output = Command::new(&path).arg("--version").output().with_context(|| format!("--baseline: running {}", path.display()))?;
        if !output.status.success() {
            bail!("--baseline: {} --version failed ({}): is it a wasmux binary?", path.display(), output.status);
        }
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Ok(Self { path, version, cold_startup: None })
    }
}

/// One row of the current binary and its baseline twin, in one mode.
pub struct Comparison {
    /// The current binary's row.
    pub server: &'static str,
    pub mode: &'static str,
    /// The rounds with the median throughput.
    current: Figures,
    baseline: Figures,
    /// The lowest and highest ratio of one round's pair (run one right
    /// after the other).
    round_ratios: (f64, f64),
    /// CPU µs per request, (current, baseline), when costs were measured.
    cpu_us: Option<(f64, f64)>,
}

impl Comparison {
    /// Requests per second, current ÷ baseline.
    pub fn ratio(&self) -> f64 {
        self.current.rps / self.baseline.rps
    }
}

/// Every pair of [`TWINS`] measured in each of `modes`, in that order.
pub fn compare(cells: &[Cell], costs: &Costs, modes: &[&'static str]) -> Vec<Comparison> {
    let cell = |server: &str, mode: &str| cells.iter().find(|c| c.server == server && c.mode == mode);
    let mut comparisons = Vec::new();
    for &mode in modes {
        for (current, baseline) in TWINS {
            let (Some(now), Some(then)) = (cell(current, mode), cell(baseline, mode)) else { continue };
            let (Some(current_figures), Some(baseline_figures)) = (now.median(), then.median()) else { continue };
            let ratios = now.rounds.iter().zip(&then.rounds).map(|(n, t)| n.rps / t.rps);
            let round_ratios = (ratios.clone().fold(f64::INFINITY, f64::min), ratios.fold(0.0, f64::max));
            let cpu_us = costs.of(current, mode).zip(costs.of(baseline, mode)).map(|(n, t)| (n.cpu_us, t.cpu_us));
            comparisons.push(Comparison {
                server: current,
                mode,
                current: current_figures,
                baseline: baseline_figures,
                round_ratios,
                cpu_us,
            });
        }
    }
    comparisons
}

/// The table of `comparisons` and a line with the lowest and highest
/// ratio: what the report shows and the task prints at the end.
pub fn table(comparisons: &[Comparison]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| server | mode | requests/s, current | requests/s, baseline | current ÷ baseline | per round | p99 ms, current / baseline | CPU µs/request, current / baseline | CPU, current ÷ baseline |"
    );
    let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for c in comparisons {
        let (cpu, cpu_ratio) = match c.cpu_us {
            Some((now, then)) => (format!("{now:.1} / {then:.1}"), format!("{:.2}×", now / then)),
            None => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | **{:.2}×** | {:.2}–{:.2}× | {:.3} / {:.3} | {cpu} | {cpu_ratio} |",
            c.server,
            c.mode,
            c.current.rps,
            c.baseline.rps,
            c.ratio(),
            c.round_ratios.0,
            c.round_ratios.1,
            c.current.p99,
            c.baseline.p99
        );
    }
    let lowest = comparisons.iter().min_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let highest = comparisons.iter().max_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    if let (Some(low), Some(high)) = (lowest, highest) {
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "Requests/s, current ÷ baseline: lowest {:.2}× ({}, {}), highest {:.2}× ({}, {}).",
            low.ratio(),
            low.server,
            low.mode,
            high.ratio(),
            high.server,
            high.mode
        );
    }
    md
}

/// The report's section on the baseline.
pub fn section(baseline: &Baseline, comparisons: &[Comparison]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Against the baseline");
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "The current `wasmux` against `{}` ({}), each of its rows right after the current binary's twin in every round, with the same plugins and settings (a compiled-code cache of its own) and the current binary's load generator. \"current ÷ baseline\" is the ratio of the median rounds' requests/s (above 1: the current binary serves more); \"per round\" is the lowest and highest ratio of one round's pair; for CPU per request, below 1 means the current binary spends less.",
        baseline.path.display(),
        baseline.version
    );
    let _ = writeln!(md);
    if comparisons.is_empty() {
        let _ = writeln!(md, "No pair was measured.");
    } else {
        md.push_str(&table(comparisons));
    }
    let _ = writeln!(md);
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::costs::Cost;

    fn figures(rps: f64, p99: f64) -> Figures {
        Figures { rps, p50: 0.1, p90: 0.2, p99, max: 1.0, errors: 0, error_kinds: Vec::new() }
    }

    fn cell(server: &'static str, mode: &'static str, rps: &[f64]) -> Cell {
        Cell { server, mode, rounds: rps.iter().map(|&r| figures(r, 0.5)).collect() }
    }

    fn cost(server: &'static str, mode: &'static str, cpu_us: f64) -> Cost {
        Cost { server, mode, cpu_us, syscalls: Err("not counted".into()) }
    }

    #[test]
    fn each_row_has_its_twin_and_only_those_rows() {
        assert_eq!(twin("wasm"), Some("wasm-baseline"));
        assert_eq!(twin("native"), Some("native-baseline"));
        assert_eq!(twin("python"), None);
        assert_eq!(twin("wasm-baseline"), None);
    }

    #[test]
    fn pairs_are_compared_by_their_median_rounds_and_round_by_round() {
        let cells = [
            cell("wasm", "persistent", &[100.0, 90.0, 110.0]),
            cell("wasm-baseline", "persistent", &[80.0, 100.0, 100.0]),
            cell("native", "persistent", &[200.0]),
            cell("native-baseline", "persistent", &[250.0]),
            // A pair with one side only is not compared.
            cell("wasm-reuse", "persistent", &[150.0]),
            cell("wasm", "connect", &[55.0]),
            cell("wasm-baseline", "connect", &[50.0]),
        ];
        let costs = Costs { list: vec![cost("wasm", "persistent", 18.0), cost("wasm-baseline", "persistent", 20.0)], requests: 1000, strace_note: None };
        let comparisons = compare(&cells, &costs, &["connect", "persistent"]);
        let shown: Vec<(&str, &str, f64)> = comparisons.iter().map(|c| (c.server, c.mode, c.ratio())).collect();
        assert_eq!(shown, [("wasm", "connect", 1.1), ("wasm", "persistent", 1.0), ("native", "persistent", 0.8)]);
        let wasm = &comparisons[1];
        assert_eq!((wasm.current.rps, wasm.baseline.rps), (100.0, 100.0));
        assert_eq!(wasm.round_ratios, (0.9, 1.25));
        assert_eq!(wasm.cpu_us, Some((18.0, 20.0)));
        assert_eq!(comparisons[2].cpu_us, None);

        let table = table(&comparisons);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[3], "| wasm | persistent | 100 | 100 | **1.00×** | 0.90–1.25× | 0.500 / 0.500 | 18.0 / 20.0 | 0.90× |");
        assert_eq!(lines[4], "| native | persistent | 200 | 250 | **0.80×** | 0.80–0.80× | 0.500 / 0.500 | — | — |");
        assert_eq!(lines[6], "Requests/s, current ÷ baseline: lowest 0.80× (native, persistent), highest 1.10× (wasm, connect).");
    }

    #[test]
    fn modes_not_asked_for_are_left_out() {
        let cells = [cell("wasm", "pipelined", &[100.0]), cell("wasm-baseline", "pipelined", &[100.0])];
        assert!(compare(&cells, &Costs::default(), &["persistent"]).is_empty());
        let baseline = Baseline { path: "/old/wasmux".into(), version: "wasmux 0.1.0".into(), cold_startup: None };
        let section = section(&baseline, &[]);
        assert!(section.starts_with("## Against the baseline\n\nThe current `wasmux` against `/old/wasmux` (wasmux 0.1.0)"), "{section}");
        assert!(section.ends_with("No pair was measured.\n\n"), "{section}");
    }

    #[test]
    fn a_missing_baseline_binary_is_a_clear_error() {
        let error = Baseline::find(Path::new("/nonexistent-root"), Path::new("old/wasmux")).err().expect("no such file");
        assert!(error.to_string().starts_with("--baseline: /nonexistent-root/old/wasmux is not a file"), "{error}");
    }
}
