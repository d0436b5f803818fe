//! `docs/benchmarks.md`: the report of a run rendered as markdown, and the
//! splicing that keeps what other runs and people wrote in that file.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::baseline::{self, Baseline, Comparison};
use super::costs::Costs;
use super::machine::machine;
use super::options::Options;
use super::process::{Pinning, Subject};
use super::rounds::Cell;

/// What follows this line in `benchmarks.md` was measured by hand and is
/// kept when the file is written again.
const KEPT_MARKER: &str = "<!-- measured by hand: cargo xtask bench keeps what follows -->";

/// `old` (the file as it was) rewritten as `new`, keeping what was
/// measured otherwise: the sections under `headings` (another task's, such
/// as `cargo xtask bench-languages`'s) and everything after the marker
/// (measured by hand).
pub fn keep_measured(old: &str, new: String, headings: &[&str]) -> String {
    let kept = old.find(KEPT_MARKER).map(|at| &old[at..]);
    let mut markdown = new;
    for heading in headings {
        if let Some(other) = section(old, heading)
            && !kept.is_some_and(|kept| kept.contains(other.trim_end()))
        {
            markdown = with_section(&markdown, heading, other);
        }
    }
    if let Some(kept) = kept {
        markdown = format!("{}\n\n{kept}", markdown.trim_end());
    }
    markdown
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
pub fn with_section(markdown: &str, heading: &str, new: &str) -> String {
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
pub struct Results<'a> {
    pub pinning: &'a Pinning,
    pub subjects: &'a [Subject],
    /// The modes measured, in the table's order.
    pub modes: &'a [&'static str],
    pub cells: &'a [Cell],
    pub costs: &'a Costs,
    /// Start-up of the Wasm server with an empty compiled-code cache, if
    /// a Wasm row was measured.
    pub cold_startup: Option<Duration>,
    /// The baseline binary and its rows' comparisons, when one was compared.
    pub baseline: Option<(&'a Baseline, &'a [Comparison])>,
    /// What was not measured, and why.
    pub notes: &'a [String],
    /// The load averages before and after the run.
    pub load_average: String,
    /// Whether the run measured the whole table (and no baseline): only
    /// then do the notes on the published figures belong with it.
    pub whole: bool,
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
/// tried on the fresh path, kept by hand in `xtask/src/bench-notes.md`.
const NOTES: &str = include_str!("../bench-notes.md");

pub fn render_markdown(root: &Path, options: &Options, results: &Results<'_>) -> Result<String> {
    let &Results { pinning, subjects, modes, cells, costs, cold_startup, baseline, notes, ref load_average, whole } = results;
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
    if let Some(cold_startup) = cold_startup {
        writeln!(
            md,
            "- The Wasm server started in {:.0} ms with an empty compiled-code cache; the figure above is with the cache filled.",
            cold_startup.as_secs_f64() * 1e3
        )?;
    }
    if let Some((baseline, _)) = baseline {
        writeln!(md, "- The rows ending in `-baseline` are served by `{}` ({}).", baseline.path.display(), baseline.version)?;
        if let Some(cold_startup) = baseline.cold_startup {
            writeln!(md, "- The baseline's Wasm server started in {:.0} ms with an empty compiled-code cache.", cold_startup.as_secs_f64() * 1e3)?;
        }
    }
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
    for &mode in modes {
        for s in subjects {
            let Some(cell) = find(s.name, mode) else {
                if s.name == "python" {
                    writeln!(md, "| {} | {mode} | — | | | | | | | closes after each answer: connect mode only |", s.name)?;
                }
                continue;
            };
            let Some(m) = cell.median() else { continue };
            let (low, high) = cell.range();
            let ratio = find(s.native, mode).and_then(Cell::median).map(|n| format!("{:.2}×", m.rps / n.rps)).unwrap_or_default();
            writeln!(
                md,
                "| {} | {mode} | {:.0} | {:.0}–{:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {ratio} |",
                s.name, m.rps, low, high, m.p50, m.p90, m.p99, m.max, cell.errors()
            )?;
        }
    }
    writeln!(md)?;
    md.push_str(&super::rounds::errors_note(cells, |c| c.server.to_owned()));
    render_costs(&mut md, subjects, modes, costs)?;
    if let Some((baseline, comparisons)) = baseline {
        md.push_str(&baseline::section(baseline, comparisons));
    }
    render_targets(&mut md, cells, costs)?;
    if whole {
        md.push_str(NOTES);
        writeln!(md)?;
    }
    writeln!(md, "## The machine")?;
    writeln!(md)?;
    writeln!(md, "| | |")?;
    writeln!(md, "| --- | --- |")?;
    for (what, value) in machine(root) {
        writeln!(md, "| {what} | {value} |")?;
    }
    writeln!(md, "| load average (1, 5, 15 min) | {load_average} |")?;
    writeln!(md)?;
    writeln!(md, "## Reproduce")?;
    writeln!(md)?;
    writeln!(md, "```sh")?;
    writeln!(md, "{}", options.reproduce())?;
    writeln!(md, "```")?;
    Ok(md)
}

fn render_costs(md: &mut String, subjects: &[Subject], modes: &[&str], costs: &Costs) -> Result<()> {
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
    for &mode in modes {
        for s in subjects {
            let Some(cost) = costs.of(s.name, mode) else { continue };
            let native = costs.of(s.native, mode).map(|c| c.cpu_us);
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

#[cfg(test)]
mod tests {
    use super::*;

    const HEADING: &str = "## Plugins by language";

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

    #[test]
    fn another_tasks_section_and_the_hand_measured_part_survive_a_new_run() {
        let old = format!(
            "# Benchmarks\n\nold table\n\n## Plugins by language\n\nby language\n\n## Reproduce\n\nold\n\n{KEPT_MARKER}\n## TLS\n\nby hand\n"
        );
        let new = "# Benchmarks\n\nnew table\n\n## Reproduce\n\nnew\n".to_owned();
        assert_eq!(
            keep_measured(&old, new, &[HEADING]),
            format!("# Benchmarks\n\nnew table\n\n## Reproduce\n\nnew\n\n## Plugins by language\n\nby language\n\n{KEPT_MARKER}\n## TLS\n\nby hand\n")
        );
    }

    #[test]
    fn a_section_inside_the_hand_measured_part_is_not_copied_twice() {
        let old = format!("# Benchmarks\n\nold\n\n{KEPT_MARKER}\n## TLS\n\nby hand\n\n## Plugins by language\n\nby language\n");
        let new = "# Benchmarks\n\nnew\n".to_owned();
        let written = keep_measured(&old, new, &[HEADING]);
        assert_eq!(written, format!("# Benchmarks\n\nnew\n\n{KEPT_MARKER}\n## TLS\n\nby hand\n\n## Plugins by language\n\nby language\n"));
        assert_eq!(written.matches(HEADING).count(), 1);
    }

    #[test]
    fn a_first_run_writes_only_its_own_report() {
        assert_eq!(keep_measured("", "# Benchmarks\n\nnew\n".to_owned(), &[HEADING]), "# Benchmarks\n\nnew\n");
    }
}
