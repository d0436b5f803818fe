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
//! - `languages.rs`: `cargo xtask bench-languages`, which shares them.

mod costs;
pub mod languages;
mod machine;
mod markdown;
mod options;
mod process;
mod rounds;
mod svg;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use costs::{Costs, measure_costs};
use machine::load_average;
use markdown::{Results, keep_measured, render_markdown};
pub use options::Options;
use process::{MODES, Pinning, Subject};
use rounds::run_rounds;
use svg::render_svg;

pub fn run(root: &Path, options: &Options) -> Result<()> {
    crate::plugins::build_all(root, true)?;
    // The search in JavaScript and Python, built by `wasmux build` (the
    // debug binary) as `cargo xtask test` builds them.
    crate::run(Command::new(crate::cargo()).current_dir(root).args(["build", "-p", "wasmux-cli", "--bin", "wasmux"]))?;
    crate::plugins::build_examples(root)?;
    crate::run(Command::new(crate::cargo()).current_dir(root).args(["build", "--release", "--locked", "-p", "wasmux-cli"]))?;
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
    let load = options.load();
    let cells = run_rounds(&wasmux, &pinning, &mut subjects, &MODES, &load)?;
    let costs = if options.cost_requests > 0 {
        measure_costs(&wasmux, &pinning, &mut subjects, &MODES, &load, options.cost_requests, &work)?
    } else {
        Costs::default()
    };

    std::fs::create_dir_all(root.join(&options.out))?;
    let busy = format!("{load_before} before, {} after", load_average());
    let results = Results { pinning: &pinning, subjects: &subjects, cells: &cells, costs: &costs, cold_startup, notes: &notes, load_average: busy };
    let markdown = render_markdown(root, options, &results)?;
    let md_path = root.join(&options.out).join("benchmarks.md");
    // What was measured otherwise stays: `cargo xtask bench-languages`'s
    // section, and the sections measured by hand after the marker.
    let old = std::fs::read_to_string(&md_path).unwrap_or_default();
    let markdown = keep_measured(&old, markdown, &[languages::HEADING]);
    std::fs::write(&md_path, markdown).with_context(|| format!("writing {}", md_path.display()))?;
    let svg_path = root.join(&options.out).join("benchmarks.svg");
    std::fs::write(&svg_path, render_svg(&subjects, &cells, options)).with_context(|| format!("writing {}", svg_path.display()))?;
    eprintln!("xtask: wrote {} and {}", md_path.display(), svg_path.display());
    Ok(())
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
