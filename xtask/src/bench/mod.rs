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
//!   component is there (`target/lang-plugins/search-js.wasm`,
//!   `target/lang-plugins/search-py.wasm`, or the paths given), fresh and
//!   reused;
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
//!
//! `--only` and `--modes` measure part of that; `--baseline PATH` adds,
//! beside the rows `wasm`, `wasm-reuse` and `native`, the same served by
//! another `wasmux` binary (one built from an older commit), each right
//! after its twin in every round, and a table of their ratios. Such a run
//! writes into `target/bench-report/` unless `--out` says otherwise, so
//! that it never overwrites the published figures.
//!
//! This file plans the run (which servers, with which plugins and
//! settings) and writes the files; the rest has a file of its own, none
//! importing from this one:
//!
//! - `options.rs`: what the task was asked for;
//! - `process.rs`: the servers under test, their processes and pinning;
//! - `rounds.rs`: driving them with `wasmux bench`, rounds interleaved;
//! - `costs.rs`: CPU time and system calls per request;
//! - `machine.rs`: the machine and its load average;
//! - `markdown.rs`: the report, and splicing it into `benchmarks.md`;
//! - `svg.rs`: the chart;
//! - `baseline.rs`: the baseline's rows and their ratios to the current ones;
//! - `keyvalue.rs`: the key-value store's rows (`--only kv`), a section of
//!   their own;
//! - `languages.rs`: `cargo xtask bench-languages`, which shares them.

mod baseline;
mod costs;
mod keyvalue;
pub mod languages;
mod machine;
mod markdown;
mod options;
mod process;
mod rounds;
mod svg;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use baseline::{Baseline, NATIVE_BASELINE, TWINS, compare, twin};
use costs::{Costs, measure_costs};
use machine::load_average;
use markdown::{Results, keep_measured, render_markdown, with_section};
pub use options::Options;
use options::Selection;
use process::{Pinning, Subject};
use rounds::run_rounds;
use svg::render_svg;

pub fn run(root: &Path, options: &Options) -> Result<()> {
    let selection = options.selection()?;
    let mut baseline = options.baseline.as_deref().map(|path| Baseline::find(root, path)).transpose()?;
    let twinned = TWINS.map(|(current, _)| current);
    if baseline.is_some() && !selection.wants_any(&twinned) {
        bail!("--baseline compares the rows {}, and --only chose none of them", twinned.join(", "));
    }
    let out = root.join(options.out_dir(&selection));
    crate::plugins::build(root, true, crate::plugins::Which::All)?;
    // The search in JavaScript and Python, built by `wasmux build` (the
    // debug binary) as `cargo xtask test` builds them; only for their rows.
    if selection.wants_any(&["js", "js-reuse", "py", "py-reuse"]) {
        crate::run(crate::cargo().current_dir(root).args(["build", "-p", "wasmux-cli", "--bin", "wasmux"]))?;
        crate::plugins::build_examples(root)?;
    }
    crate::run(crate::cargo().current_dir(root).args(["build", "--release", "--locked", "-p", "wasmux-cli"]))?;
    let wasmux = root.join("target/release/wasmux");
    let pinning = Pinning::plan(options.pin);
    eprintln!("xtask: {}", pinning.describe());

    let work = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
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
    // Each binary compiles into a cache of its own.
    let current = Binary { program: wasmux.clone(), cache: work.join("cache") };
    let baseline_binary = baseline.as_ref().map(|b| Binary { program: b.path.clone(), cache: work.join("cache-baseline") });
    let wasm = |dir: &Path, config: Option<&Path>, cache: &Path| {
        let mut args = vec![OsString::from("--plugins"), dir.into(), "--cache-dir".into(), cache.into()];
        if let Some(config) = config {
            args.extend([OsString::from("--config"), config.into()]);
        }
        args
    };
    // Once with an empty compiled-code cache, to show what the cache saves.
    let cold_start = |binary: &Binary| -> Result<Duration> {
        let cold = Subject::wasmux(&binary.program, &pinning, &wasm(&rust, None, &binary.cache), "wasm", "wasmux, Wasm plugins")?;
        Ok(cold.startup)
    };
    let cold_startup = if selection.wants_any(&["wasm", "wasm-reuse", "wasm-unhardened"]) { Some(cold_start(&current)?) } else { None };
    if let (Some(baseline), Some(binary)) = (&mut baseline, &baseline_binary)
        && selection.wants_any(&["wasm", "wasm-reuse"])
    {
        baseline.cold_startup = Some(cold_start(binary)?);
    }

    let mut lineup = Lineup { subjects: Vec::new(), pinning: &pinning, selection: &selection, current: &current, baseline: baseline_binary.as_ref() };
    lineup.wasmux("wasm", "wasmux, Wasm plugins, a fresh instance per request", |cache| wasm(&rust, None, cache))?;
    let reuse_what = format!("Wasm, instances reused (requests = {})", options.reuse);
    lineup.wasmux("wasm-reuse", &reuse_what, |cache| wasm(&rust, Some(&reused), cache))?;
    // Without wasmtime's Spectre hardening of bounds checks (for trusted
    // plugins only): what the hardening costs.
    lineup.wasmux("wasm-unhardened", "Wasm, Spectre hardening off", |cache| wasm(&rust, Some(&unhardened), cache))?;
    lineup.wasmux("native", "wasmux --native", |_| vec!["--native".into()])?;
    let mut notes = Vec::new();
    let languages: [(&Path, &str, [&'static str; 2]); 2] =
        [(&options.search_js, "JavaScript", ["js", "js-reuse"]), (&options.search_py, "Python", ["py", "py-reuse"])];
    for (component, language, [fresh, reuse]) in languages {
        if !selection.wants_any(&[fresh, reuse]) {
            continue;
        }
        let component = root.join(component);
        if !component.is_file() {
            notes.push(format!("no `search` in {language} ({} is missing), so none was measured", component.display()));
            continue;
        }
        let dir = plugin_dir(&work.join(fresh), &component, &built)?;
        let what = format!("Wasm, search in {language}, binary-echo in Rust");
        lineup.wasmux(fresh, &format!("{what}, fresh"), |cache| wasm(&dir, None, cache))?;
        lineup.wasmux(reuse, &format!("{what}, reused"), |cache| wasm(&dir, Some(&reused), cache))?;
    }
    if selection.wants("python") {
        let python_path = root.join(&options.python_server);
        if !selection.modes.contains(&"connect") {
            notes.push("the Python server serves connect mode only, which --modes left out, so it was not measured".into());
        } else if python_path.is_file() {
            lineup.subjects.push(Subject::python(&python_path, &pinning)?);
        } else {
            notes.push(format!("{} is missing, so the Python server was not measured", options.python_server.display()));
        }
    }
    if selection.wants("kv") {
        notes.push("**kv**: the key-value store's rows, a plugin's `get` and `increment` against its call without the store, in their own section, [The key-value store](#the-key-value-store)".into());
    }
    for note in &notes {
        eprintln!("xtask: {note}");
    }
    let mut subjects = lineup.subjects;

    let load_before = load_average();
    let load = options.load();
    let modes = &selection.modes;
    let cells = run_rounds(&wasmux, &pinning, &mut subjects, modes, &load)?;
    let costs = if options.cost_requests > 0 {
        measure_costs(&wasmux, &pinning, &mut subjects, modes, &load, options.cost_requests, &work)?
    } else {
        Costs::default()
    };
    let comparisons = compare(&cells, &costs, modes);
    let kv_section = if selection.wants("kv") { Some(keyvalue::measure(root, &wasmux, &pinning, &work, options.rounds)?) } else { None };

    std::fs::create_dir_all(&out)?;
    let busy = format!("{load_before} before, {} after", load_average());
    let results = Results {
        pinning: &pinning,
        subjects: &subjects,
        modes,
        cells: &cells,
        costs: &costs,
        cold_startup,
        baseline: baseline.as_ref().map(|b| (b, comparisons.as_slice())),
        notes: &notes,
        load_average: busy,
        whole: options.is_whole(&selection),
    };
    let markdown = render_markdown(root, options, &results)?;
    let md_path = out.join("benchmarks.md");
    // What was measured otherwise stays: `cargo xtask bench-languages`'s
    // section, and the sections measured by hand after the marker.
    let old = std::fs::read_to_string(&md_path).unwrap_or_default();
    let markdown = keep_measured(&old, markdown, &[languages::HEADING, keyvalue::HEADING]);
    let markdown = match &kv_section {
        Some(section) => with_section(&markdown, keyvalue::HEADING, section),
        None => markdown,
    };
    std::fs::write(&md_path, markdown).with_context(|| format!("writing {}", md_path.display()))?;
    let svg_path = out.join("benchmarks.svg");
    std::fs::write(&svg_path, render_svg(&subjects, modes, &cells, options)).with_context(|| format!("writing {}", svg_path.display()))?;
    if baseline.is_some() {
        eprint!("xtask: the current binary against the baseline:\n{}", baseline::table(&comparisons));
    }
    eprintln!("xtask: wrote {} and {}", md_path.display(), svg_path.display());
    Ok(())
}

/// A `wasmux` binary that serves rows, and the compiled-code cache it
/// fills (one per binary, so neither reads what the other compiled).
struct Binary {
    program: PathBuf,
    cache: PathBuf,
}

/// The servers of the run, started in the order they are measured.
struct Lineup<'a> {
    subjects: Vec<Subject>,
    pinning: &'a Pinning,
    selection: &'a Selection,
    current: &'a Binary,
    /// The baseline binary, when one is compared.
    baseline: Option<&'a Binary>,
}

impl Lineup<'_> {
    /// Starts the row `name`, if selected: `wasmux serve` with the
    /// arguments `args` gives for a binary's cache; right after it, its
    /// baseline twin served by the baseline binary, if it has one.
    fn wasmux(&mut self, name: &'static str, what: &str, args: impl Fn(&Path) -> Vec<OsString>) -> Result<()> {
        if !self.selection.wants(name) {
            return Ok(());
        }
        let current = self.current;
        self.subjects.push(Subject::wasmux(&current.program, self.pinning, &args(&current.cache), name, what)?);
        if let (Some(baseline), Some(twin)) = (self.baseline, twin(name)) {
            let what = format!("{what}; the baseline binary");
            let subject = Subject::wasmux(&baseline.program, self.pinning, &args(&baseline.cache), twin, &what)?;
            self.subjects.push(subject.judged_against(NATIVE_BASELINE));
        }
        Ok(())
    }
}

/// A plugin directory at `dir` serving `search` (the component at `search`)
/// and the Rust `binary-echo` from `built`.
fn plugin_dir(dir: &Path, search: &Path, built: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (from, name) in [(search.to_path_buf(), "search.wasm"), (built.join("binary-echo.wasm"), "binary-echo.wasm")] {
        std::fs::copy(&from, dir.join(name)).with_context(|| format!("copying {} into {}", from.display(), dir.display()))?;
    }
    Ok(dir.to_path_buf())
}
