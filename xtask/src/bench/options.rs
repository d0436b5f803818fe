//! What `cargo xtask bench` was asked for: the load, which servers and
//! modes, a baseline binary to compare with, and where the report goes.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::process::MODES;
use super::rounds::Load;

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
    /// Only these servers (names from [`SUBJECTS`]); empty: all of them.
    pub only: Vec<String>,
    /// Only these modes (names from [`MODES`]); empty: all of them.
    pub modes: Vec<String>,
    /// A `wasmux` binary built from another commit, whose rows run beside
    /// the current binary's in the same rounds.
    pub baseline: Option<PathBuf>,
    /// Where the report goes; see [`Options::out_dir`].
    pub out: Option<PathBuf>,
}

/// The servers `cargo xtask bench` can measure, in the order it measures
/// them: the names `--only` takes.
/// `kv` is the key-value store's rows (`keyvalue.rs`), a section of
/// their own.
pub const SUBJECTS: [&str; 10] = ["wasm", "wasm-reuse", "wasm-unhardened", "native", "js", "js-reuse", "py", "py-reuse", "python", "kv"];

/// Where a run that measures only part of the table, or compares with a
/// baseline, writes its report unless told: not over `docs/benchmarks.md`.
pub const PARTIAL_OUT: &str = "target/bench-report";

impl Options {
    /// The load every run applies.
    pub fn load(&self) -> Load {
        Load {
            duration: self.duration.clone(),
            warmup: self.warmup.clone(),
            connections: self.connections,
            depth: self.depth,
            mix: self.mix.clone(),
            rounds: self.rounds,
        }
    }

    /// The servers and modes asked for, checked.
    pub fn selection(&self) -> Result<Selection> {
        Selection::parse(&self.only, &self.modes)
    }

    /// Whether this run measures what `docs/benchmarks.md` shows: every
    /// server and mode, and no baseline.
    pub fn is_whole(&self, selection: &Selection) -> bool {
        selection.is_everything() && self.baseline.is_none()
    }

    /// Where the report goes, relative to the repository root: `--out` if
    /// given, else `docs` for a whole run and [`PARTIAL_OUT`] for any other,
    /// so that a comparison never overwrites the published figures.
    pub fn out_dir(&self, selection: &Selection) -> PathBuf {
        match &self.out {
            Some(out) => out.clone(),
            None if self.is_whole(selection) => PathBuf::from("docs"),
            None => PathBuf::from(PARTIAL_OUT),
        }
    }

    /// The command line that measures the same again.
    pub fn reproduce(&self) -> String {
        let mut line = format!(
            "cargo xtask bench --duration {} --warmup {} --connections {} --depth {} --rounds {} --mix {} --reuse {} --cost-requests {}",
            self.duration, self.warmup, self.connections, self.depth, self.rounds, self.mix, self.reuse, self.cost_requests
        );
        if !self.only.is_empty() {
            line.push_str(&format!(" --only {}", self.only.join(",")));
        }
        if !self.modes.is_empty() {
            line.push_str(&format!(" --modes {}", self.modes.join(",")));
        }
        if let Some(baseline) = &self.baseline {
            line.push_str(&format!(" --baseline {}", baseline.display()));
        }
        line
    }
}

/// Which servers and modes a run measures.
#[derive(Debug, PartialEq)]
pub struct Selection {
    /// In the order of [`SUBJECTS`].
    subjects: Vec<&'static str>,
    /// In the order of [`MODES`].
    pub modes: Vec<&'static str>,
}

impl Selection {
    /// `only` and `modes` as given on the command line (each empty for
    /// all); an unknown name is an error that lists the known ones.
    pub fn parse(only: &[String], modes: &[String]) -> Result<Self> {
        let pick = |given: &[String], known: &[&'static str], flag: &str, what: &str| -> Result<Vec<&'static str>> {
            if let Some(unknown) = given.iter().find(|name| !known.contains(&name.as_str())) {
                bail!("{flag}: no {what} is called `{unknown}` (one of: {})", known.join(", "));
            }
            Ok(known.iter().copied().filter(|name| given.is_empty() || given.iter().any(|g| g == name)).collect())
        };
        Ok(Self { subjects: pick(only, &SUBJECTS, "--only", "server")?, modes: pick(modes, &MODES, "--modes", "mode")? })
    }

    pub fn wants(&self, subject: &str) -> bool {
        self.subjects.contains(&subject)
    }

    /// Whether any of `subjects` is selected.
    pub fn wants_any(&self, subjects: &[&str]) -> bool {
        subjects.iter().any(|s| self.wants(s))
    }

    pub fn is_everything(&self) -> bool {
        self.subjects.len() == SUBJECTS.len() && self.modes.len() == MODES.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    fn options(only: &[&str], modes: &[&str], baseline: Option<&str>, out: Option<&str>) -> Options {
        Options {
            duration: "10s".into(),
            warmup: "1s".into(),
            connections: 32,
            depth: 8,
            rounds: 3,
            mix: "search=1,binary=1".into(),
            pin: true,
            python_server: "examples/python/app_server.py".into(),
            search_js: "target/lang-plugins/search-js.wasm".into(),
            search_py: "target/lang-plugins/search-py.wasm".into(),
            reuse: 1000,
            cost_requests: 20000,
            only: strings(only),
            modes: strings(modes),
            baseline: baseline.map(PathBuf::from),
            out: out.map(PathBuf::from),
        }
    }

    #[test]
    fn nothing_chosen_is_everything_and_goes_to_docs() {
        let options = options(&[], &[], None, None);
        let selection = options.selection().expect("valid");
        assert!(selection.is_everything());
        assert_eq!(selection.modes, MODES);
        assert!(SUBJECTS.iter().all(|s| selection.wants(s)));
        assert_eq!(options.out_dir(&selection), PathBuf::from("docs"));
        assert_eq!(
            options.reproduce(),
            "cargo xtask bench --duration 10s --warmup 1s --connections 32 --depth 8 --rounds 3 --mix search=1,binary=1 --reuse 1000 --cost-requests 20000"
        );
    }

    #[test]
    fn a_choice_keeps_the_tables_order_and_stays_out_of_docs() {
        let options = options(&["native", "wasm"], &["pipelined", "persistent"], None, None);
        let selection = options.selection().expect("valid");
        assert_eq!(selection, Selection { subjects: vec!["wasm", "native"], modes: vec!["persistent", "pipelined"] });
        assert!(!selection.wants("python") && selection.wants_any(&["python", "native"]));
        assert_eq!(options.out_dir(&selection), PathBuf::from(PARTIAL_OUT));
        assert!(options.reproduce().ends_with(" --only native,wasm --modes pipelined,persistent"), "{}", options.reproduce());
    }

    #[test]
    fn a_baseline_stays_out_of_docs_unless_told() {
        let compared = options(&[], &[], Some("/tmp/old/wasmux"), None);
        let selection = compared.selection().expect("valid");
        assert!(selection.is_everything() && !compared.is_whole(&selection));
        assert_eq!(compared.out_dir(&selection), PathBuf::from(PARTIAL_OUT));
        assert!(compared.reproduce().ends_with(" --baseline /tmp/old/wasmux"));
        let told = options(&[], &[], Some("/tmp/old/wasmux"), Some("docs"));
        assert_eq!(told.out_dir(&selection), PathBuf::from("docs"));
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_known_ones() {
        let error = Selection::parse(&strings(&["wasm", "wasm-pooled"]), &[]).expect_err("unknown server");
        assert_eq!(
            error.to_string(),
            "--only: no server is called `wasm-pooled` (one of: wasm, wasm-reuse, wasm-unhardened, native, js, js-reuse, py, py-reuse, python, kv)"
        );
        let error = Selection::parse(&[], &strings(&["keepalive"])).expect_err("unknown mode");
        assert_eq!(error.to_string(), "--modes: no mode is called `keepalive` (one of: connect, persistent, pipelined)");
    }
}
