//! A plugin project: a directory whose own manifest says its language and
//! name. Each ecosystem's manifest is the project file, so a project is an
//! ordinary crate, Python project or npm package that its own tools (cargo,
//! an IDE, `npm test`) understand too:
//!
//! | language | manifest | plugin name | wasmux settings |
//! | --- | --- | --- | --- |
//! | Rust | `Cargo.toml` | `[package] name` | `[package.metadata.wasmux] plugin-name` |
//! | Python | `pyproject.toml` | `[project] name` | `[tool.wasmux] plugin-name`, `module` (default `app`), `wasi` (default true), `world` (default `handler`) |
//! | JavaScript | `package.json` | `name` | `"wasmux": {"plugin-name", "wasi", "world"}`; the module is `main` (default `app.js`) |
//!
//! Every project has its WIT in `wit/`. A Python or JavaScript plugin is
//! built for one world of it, `handler` unless its manifest names another
//! (`stateful-handler`, for a plugin that keeps state): those tools import
//! every interface of the world, so the world is the plugin's choice. A
//! Rust plugin names its world in its own `generate!`. [`build_project`] turns a
//! project into `OUT/NAME.wasm`; [`new_project`] writes one from the
//! templates embedded in this binary.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::javascript::ComponentizeJs;
use crate::python::ComponentizePy;
use crate::rust::{TARGET, Toolchain};
use crate::{WORLD, templates};

/// A plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Rust,
    Python,
    JavaScript,
}

impl Language {
    /// Every language, in the order detection tries their manifests.
    pub const ALL: [Language; 3] = [Language::Rust, Language::Python, Language::JavaScript];

    /// The file that makes a directory a project of this language.
    pub fn manifest(self) -> &'static str {
        match self {
            Self::Rust => "Cargo.toml",
            Self::Python => "pyproject.toml",
            Self::JavaScript => "package.json",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rust => "rust",
            Self::Python => "python",
            Self::JavaScript => "js",
        })
    }
}

impl FromStr for Language {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "rust" | "rs" => Ok(Self::Rust),
            "python" | "py" => Ok(Self::Python),
            "js" | "javascript" | "node" => Ok(Self::JavaScript),
            _ => bail!("unknown language {s:?}: use rust, python or js"),
        }
    }
}

/// A plugin project, as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub dir: PathBuf,
    pub language: Language,
    /// The plugin's name when served: the component is `NAME.wasm`.
    pub name: String,
    /// Python: the module defining `WitWorld`; JavaScript: the module file
    /// (relative to `dir`); Rust: empty (cargo knows).
    pub entry: String,
    /// Whether the component may import the host's WASI subset (Python and
    /// JavaScript; Rust plugins never need it).
    pub wasi: bool,
    /// The world of the WIT the component is built for (Python and
    /// JavaScript; a Rust plugin's `generate!` names its own):
    /// [`crate::WORLD`] unless the manifest says `world`.
    pub world: String,
}

impl Project {
    /// Reads the project in `dir` from its manifest. With manifests of more
    /// than one language, the one with a wasmux section wins.
    pub fn open(dir: &Path) -> Result<Self> {
        // Else a mistyped path is said to be "not a plugin project".
        if !dir.is_dir() {
            match std::fs::metadata(dir) {
                Ok(_) => bail!("{} is not a directory: give a plugin project's directory", dir.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{} does not exist: give a plugin project's directory", dir.display()),
                Err(e) => bail!("cannot read {}: {e}", dir.display()),
            }
        }
        let found: Vec<Language> = Language::ALL.into_iter().filter(|l| dir.join(l.manifest()).is_file()).collect();
        let language = match found.as_slice() {
            [] => bail!(
                "{} is not a plugin project: it has no Cargo.toml, pyproject.toml or package.json (`wasmux new NAME` makes one)",
                dir.display()
            ),
            [one] => *one,
            several => {
                let marked: Vec<Language> = several.iter().copied().filter(|&l| has_wasmux_section(dir, l)).collect();
                match marked.as_slice() {
                    [one] => *one,
                    _ => bail!(
                        "{} has {}: say which is the plugin with a wasmux section in it ([package.metadata.wasmux], [tool.wasmux] or \"wasmux\": {{}})",
                        dir.display(),
                        several.iter().map(|l| l.manifest()).collect::<Vec<_>>().join(" and ")
                    ),
                }
            }
        };
        let manifest = dir.join(language.manifest());
        let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        let mut project = parse_manifest(language, &text).with_context(|| format!("in {}", manifest.display()))?;
        // Absolute, since the tools run in other directories.
        project.dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
        check_plugin_name(&project.name).with_context(|| format!("in {}", manifest.display()))?;
        if !project.dir.join("wit").is_dir() {
            bail!("{} has no wit/ directory with the plugin world (`wasmux new` writes one)", dir.display());
        }
        Ok(project)
    }

    /// The WIT directory.
    pub fn wit_dir(&self) -> PathBuf {
        self.dir.join("wit")
    }

    /// Whether a change to `path` (inside the project) calls for a rebuild:
    /// sources, manifests and WIT, not build output, dependencies or
    /// editors' files.
    pub fn is_build_input(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.dir) else {
            return false;
        };
        let mut parts = relative.components().map(|c| c.as_os_str().to_string_lossy());
        let Some(first) = parts.next() else {
            return false;
        };
        if matches!(first.as_ref(), "target" | "dist" | "node_modules" | "__pycache__" | "wit_world" | crate::javascript::ENTRY_DIR) {
            return false;
        }
        let name = relative.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        if name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp") || relative.components().any(|c| c.as_os_str().to_string_lossy().starts_with('.')) {
            return false;
        }
        let extension = relative.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
        match self.language {
            Language::Rust => matches!(extension.as_str(), "rs" | "toml" | "lock" | "wit"),
            Language::Python => matches!(extension.as_str(), "py" | "toml" | "wit"),
            Language::JavaScript => matches!(extension.as_str(), "js" | "mjs" | "json" | "wit"),
        }
    }
}

fn parse_manifest(language: Language, text: &str) -> Result<Project> {
    let project = |name: &str, entry: String, wasi: bool, world: &str| Project {
        dir: PathBuf::new(),
        language,
        name: name.to_owned(),
        entry,
        wasi,
        world: world.to_owned(),
    };
    match language {
        Language::Rust => {
            let manifest: toml::Table = toml::from_str(text)?;
            let package = manifest.get("package").and_then(|p| p.as_table()).context("no [package] section")?;
            let name = match package.get("metadata").and_then(|m| m.get("wasmux")).and_then(|w| w.get("plugin-name")) {
                Some(name) => name.as_str().context("[package.metadata.wasmux] plugin-name is not a string")?,
                None => package.get("name").and_then(|n| n.as_str()).context("[package] has no name")?,
            };
            Ok(project(name, String::new(), false, WORLD))
        }
        Language::Python => {
            let manifest: toml::Table = toml::from_str(text)?;
            let wasmux = manifest.get("tool").and_then(|t| t.get("wasmux"));
            let setting = |key: &str| wasmux.and_then(|w| w.get(key));
            let name = match setting("plugin-name") {
                Some(name) => name.as_str().context("[tool.wasmux] plugin-name is not a string")?,
                None => manifest
                    .get("project")
                    .and_then(|p| p.get("name"))
                    .and_then(|n| n.as_str())
                    .context("no [project] name (nor [tool.wasmux] plugin-name)")?,
            };
            let module = match setting("module") {
                Some(module) => module.as_str().context("[tool.wasmux] module is not a string")?,
                None => "app",
            };
            if module.is_empty() || !module.split('.').all(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_')) {
                bail!("[tool.wasmux] module {module:?} is not a Python module name");
            }
            let wasi = match setting("wasi") {
                Some(wasi) => wasi.as_bool().context("[tool.wasmux] wasi is not true or false")?,
                None => true,
            };
            let world = match setting("world") {
                Some(world) => world.as_str().context("[tool.wasmux] world is not a string")?,
                None => WORLD,
            };
            check_world(world).context("[tool.wasmux] world")?;
            Ok(project(name, module.to_owned(), wasi, world))
        }
        Language::JavaScript => {
            let manifest: Value = serde_json::from_str(text)?;
            let wasmux = &manifest["wasmux"];
            let name = match &wasmux["plugin-name"] {
                Value::Null => manifest["name"].as_str().context("no \"name\" (nor \"wasmux\": {\"plugin-name\"})")?,
                name => name.as_str().context("\"wasmux\": {\"plugin-name\"} is not a string")?,
            };
            // An npm scope is no part of the plugin's name.
            let name = name.rsplit('/').next().unwrap_or(name);
            let main = match &manifest["main"] {
                Value::Null => "app.js",
                main => main.as_str().context("\"main\" is not a string")?,
            };
            let wasi = match &wasmux["wasi"] {
                Value::Null => true,
                wasi => wasi.as_bool().context("\"wasmux\": {\"wasi\"} is not true or false")?,
            };
            let world = match &wasmux["world"] {
                Value::Null => WORLD,
                world => world.as_str().context("\"wasmux\": {\"world\"} is not a string")?,
            };
            check_world(world).context("\"wasmux\": {\"world\"}")?;
            Ok(project(name, main.to_owned(), wasi, world))
        }
    }
}

fn has_wasmux_section(dir: &Path, language: Language) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(language.manifest())) else {
        return false;
    };
    match language {
        Language::Rust => toml::from_str::<toml::Table>(&text)
            .is_ok_and(|m| m.get("package").and_then(|p| p.get("metadata")).and_then(|m| m.get("wasmux")).is_some()),
        Language::Python => toml::from_str::<toml::Table>(&text).is_ok_and(|m| m.get("tool").and_then(|t| t.get("wasmux")).is_some()),
        Language::JavaScript => serde_json::from_str::<Value>(&text).is_ok_and(|m| m.get("wasmux").is_some()),
    }
}

/// A world's name as WIT writes it (`handler`, `stateful-handler`): the
/// tools are given it as an argument, so nothing else gets through.
fn check_world(world: &str) -> Result<()> {
    let valid = !world.is_empty()
        && world.split('-').all(|word| word.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    if !valid {
        bail!("{world:?} is not the name of a world of the WIT (`handler`, or `stateful-handler` for a plugin that keeps state)");
    }
    Ok(())
}

/// A plugin's name becomes a file name, `NAME.wasm`, in a directory the
/// server watches, which skips a file of any name its rule refuses
/// ([`wasmux_files::is_plugin_name`], the server's own): a build must not
/// make a plugin no server serves.
fn check_plugin_name(name: &str) -> Result<()> {
    if !wasmux_files::is_plugin_name(name) || name.len() > 128 {
        bail!(
            "{name:?} cannot be a plugin's name: a server serves only names of ASCII letters, digits and `-_.@`, not starting with `.`, \
             up to 128 bytes (choose another with plugin-name in the manifest's wasmux section)"
        );
    }
    Ok(())
}

/// Where and how [`build_project_with`] builds.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where installed tools and shared build output live
    /// ([`crate::default_cache_dir`]).
    pub cache_dir: PathBuf,
    /// The cargo target directory for Rust projects: `CARGO_TARGET_DIR` if
    /// set, else one shared by every project, `CACHE/rust-target`, so that
    /// the standard library built for wasm32 (`-Zbuild-std`) and the SDK's
    /// dependencies are built once for all of them.
    pub rust_target_dir: Option<PathBuf>,
}

impl BuildOptions {
    pub fn new(cache_dir: PathBuf) -> Self {
        Self { cache_dir, rust_target_dir: None }
    }

    fn rust_target_dir(&self) -> PathBuf {
        if let Some(dir) = &self.rust_target_dir {
            return dir.clone();
        }
        match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => self.cache_dir.join("rust-target"),
        }
    }
}

/// Builds the project in `dir` into `out_dir/NAME.wasm` with the default
/// cache directory; returns that path. See [`build_project_with`].
pub fn build_project(dir: &Path, out_dir: &Path) -> Result<PathBuf> {
    build_project_with(dir, out_dir, &BuildOptions::new(crate::default_cache_dir()?))
}

/// Builds the project in `dir` into `out_dir/NAME.wasm`; returns that path.
///
/// Installs the language's tools first if this machine lacks them (one
/// line on standard error says so). The tools' own messages (compiler
/// errors) go to standard error as they come; a failed tool is a
/// [`crate::ToolFailed`] error that only names it. The component is written
/// beside its final name and renamed, and not at all if unchanged, so a
/// server watching `out_dir` sees whole files and no spurious changes.
pub fn build_project_with(dir: &Path, out_dir: &Path, options: &BuildOptions) -> Result<PathBuf> {
    let project = Project::open(dir)?;
    let out_dir = &std::path::absolute(out_dir).with_context(|| format!("resolving {}", out_dir.display()))?;
    let out = out_dir.join(format!("{}.wasm", project.name));
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for suffix in [".python", ".build"] {
        crate::remove_abandoned(out_dir, &format!(".{}.", project.name), suffix);
    }
    match project.language {
        Language::Rust => {
            let core = build_rust(&project, options)?;
            crate::componentize(&core, &out)?;
        }
        Language::Python => {
            let tool = ComponentizePy::find_or_install(&options.cache_dir)?;
            // Seconds with no output of its own: say what runs.
            eprintln!("wasmux: building {} with componentize-py {} ...", project.name, crate::python::COMPONENTIZE_PY_VERSION);
            let scratch = Scratch::new(out_dir, &project.name);
            let entry_dir = ScratchDir(out_dir.join(format!(".{}.{}.python", project.name, std::process::id())));
            let warnings = tool.componentize(&project, &project.world, &scratch.0, &entry_dir.0)?;
            for warning in warnings {
                eprintln!("wasmux: warning: {warning}");
            }
            scratch.publish(&out)?;
        }
        Language::JavaScript => {
            let tool = ComponentizeJs::find_or_install(&options.cache_dir)?;
            let source = project.dir.join(&project.entry);
            if !source.is_file() {
                bail!("{} does not exist (package.json's \"main\")", source.display());
            }
            let scratch = Scratch::new(out_dir, &project.name);
            eprintln!("wasmux: building {} with componentize-js {} ...", project.name, crate::javascript::COMPONENTIZE_JS_VERSION);
            tool.componentize(&project, &project.world, &scratch.0)?;
            scratch.publish(&out)?;
        }
    }
    Ok(out)
}

/// A tool's output file beside the component, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(out_dir: &Path, name: &str) -> Self {
        Self(out_dir.join(format!(".{name}.{}.build", std::process::id())))
    }

    fn publish(&self, out: &Path) -> Result<()> {
        let bytes = std::fs::read(&self.0).with_context(|| format!("reading {}", self.0.display()))?;
        crate::write_if_changed(out, &bytes)?;
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A folder for a tool's own files beside the component, removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `cargo build --release` for wasm32; returns the core module.
fn build_rust(project: &Project, options: &BuildOptions) -> Result<PathBuf> {
    let toolchain = Toolchain::find_or_install()?;
    let manifest = project.dir.join("Cargo.toml");
    let target_dir = options.rust_target_dir();
    let cargo = |args: &[&str]| {
        let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        command.args(args).arg("--manifest-path").arg(&manifest).env("CARGO_TARGET_DIR", &target_dir);
        toolchain.configure(&mut command, &target_dir);
        command
    };
    let mut build = cargo(&["build", "--release", "--lib", "--message-format=json-render-diagnostics"]);
    // The first build with these flags compiles the standard library too:
    // one line says so instead of some 60 `Compiling` lines.
    let std_built = toolchain.builds_std().then(|| target_dir.join(std_marker(&build)));
    let first = std_built.as_ref().is_some_and(|marker| !marker.exists());
    if first {
        eprintln!(
            "wasmux: building Rust's standard library for {TARGET} once for this machine \
             (1 to 4 minutes on 2 cores; later builds take seconds)"
        );
        build.arg("--quiet");
    }
    let started = std::time::Instant::now();
    let stdout = crate::run_tool_with("cargo build", &mut build, false)?;
    if let (true, Some(marker)) = (first, &std_built) {
        let _ = std::fs::write(marker, b"");
        eprintln!("wasmux: built the standard library in {:.0} s; it is kept in {} for every plugin", started.elapsed().as_secs_f64(), target_dir.display());
    }
    let built = cdylib_artifact(&stdout, &manifest)
        .with_context(|| format!("cargo built no library for {}: is `crate-type = [\"cdylib\"]` under [lib]?", manifest.display()))?;
    // The project as the note names it: one path however it was reached.
    let owner = manifest.canonicalize().unwrap_or_else(|_| manifest.clone());
    if !built.fresh || owns(&target_dir, &built.path, &owner) {
        claim(&target_dir, &built.path, &owner);
        return Ok(built.path);
    }
    // Another project built a library of this name since this one did:
    // cargo names a cdylib by its crate name alone, so two projects called
    // `hello` (or `a-b` and `a_b`) write one file in the shared target
    // directory, and cargo, finding this project's sources unchanged,
    // handed back the other's. Its build is forgotten, and it is built again.
    let mut clean = cargo(&["clean", "--release", "--quiet", "-p", &built.package]);
    crate::run_tool_with("cargo clean", &mut clean, false)?;
    let stdout = crate::run_tool_with("cargo build", &mut build, false)?;
    let built = cdylib_artifact(&stdout, &manifest).with_context(|| format!("cargo built no library for {} the second time", manifest.display()))?;
    claim(&target_dir, &built.path, &owner);
    Ok(built.path)
}

/// Where [`claim`] notes which project last built the library `artifact`
/// in `target_dir`.
fn owner_note(target_dir: &Path, artifact: &Path) -> PathBuf {
    let name = artifact.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target_dir.join(".wasmux-built-by").join(name)
}

/// True if the project of `manifest` built `artifact` last, or if no one
/// is noted (a target directory from before the note was kept).
fn owns(target_dir: &Path, artifact: &Path, manifest: &Path) -> bool {
    std::fs::read(owner_note(target_dir, artifact)).map_or(true, |owner| owner == manifest.as_os_str().as_encoded_bytes())
}

/// Notes that the project of `manifest` built `artifact` last. A note
/// that cannot be written only costs a rebuild later.
fn claim(target_dir: &Path, artifact: &Path, manifest: &Path) {
    let note = owner_note(target_dir, artifact);
    if let Some(dir) = note.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(note, manifest.as_os_str().as_encoded_bytes());
}

/// The name of the file that says the standard library was built, in the
/// target directory, for the compiler and flags of `build`: a change of
/// either rebuilds it, and shows the notice again.
fn std_marker(build: &Command) -> String {
    let mut text = String::new();
    for (key, value) in build.get_envs() {
        if matches!(key.to_str(), Some("RUSTC" | "CARGO_ENCODED_RUSTFLAGS")) {
            text.push_str(&format!("{key:?}={value:?};"));
        }
    }
    let rustc = build.get_envs().find(|(k, _)| *k == "RUSTC").and_then(|(_, v)| v).map(|v| v.to_os_string()).unwrap_or_else(|| "rustc".into());
    if let Ok(version) = Command::new(rustc).arg("-vV").output() {
        text.push_str(&String::from_utf8_lossy(&version.stdout));
    }
    // FNV-1a: stable across builds of wasmux, unlike the standard hasher.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!(".wasmux-std-built-{hash:016x}")
}

/// The `.wasm` of the package at `manifest`, from cargo's JSON messages.
fn cdylib_artifact(messages: &[u8], manifest: &Path) -> Option<Artifact> {
    let manifest = manifest.canonicalize().unwrap_or_else(|_| manifest.to_path_buf());
    String::from_utf8_lossy(messages)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        // Both sides resolved: through a symbolic link, cargo may name the
        // manifest by the link's path or by the real one.
        .filter(|m| m["manifest_path"].as_str().is_some_and(|p| Path::new(p).canonicalize().unwrap_or_else(|_| PathBuf::from(p)) == manifest))
        .filter(|m| m["target"]["crate_types"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib")))
        .find_map(|m| {
            let path = m["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .find(|f| f.extension().is_some_and(|e| e == "wasm") && f.components().any(|c| c.as_os_str() == TARGET))?;
            Some(Artifact { path, fresh: m["fresh"] == true, package: m["package_id"].as_str().unwrap_or_default().to_owned() })
        })
}

/// The library cargo reported for the project.
struct Artifact {
    path: PathBuf,
    /// Not built this time: cargo found the project's sources unchanged.
    fresh: bool,
    /// Its package ID, as `cargo clean -p` takes it.
    package: String,
}

/// Writes a new project `name` in `language` into `dir` (which must not
/// exist, or be empty), from the templates embedded in this binary; returns
/// the files written, relative to `dir`.
pub fn new_project(name: &str, language: Language, dir: &Path) -> Result<Vec<PathBuf>> {
    new_project_with(name, language, false, dir)
}

/// [`new_project`]; with `stateful`, the template of a plugin that keeps
/// state (Python and JavaScript): built for the world `stateful-handler`,
/// it counts with `wasi:keyvalue`.
pub fn new_project_with(name: &str, language: Language, stateful: bool, dir: &Path) -> Result<Vec<PathBuf>> {
    check_new_name(name)?;
    if stateful && !templates::has_stateful(language) {
        bail!(
            "there is no stateful {language} template yet: start from `wasmux new {name} --lang {language}` and build for the world \
             `stateful-handler` (docs/keyvalue.md says how)"
        );
    }
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).with_context(|| format!("{} exists and is not a directory", dir.display()))?;
        if entries.next().is_some() {
            bail!("{} exists and is not empty: choose another directory with --dir", dir.display());
        }
    }
    let mut written = Vec::new();
    for file in templates::files(language, stateful) {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, templates::render(file.text, name)).with_context(|| format!("writing {}", path.display()))?;
        written.push(PathBuf::from(file.path));
    }
    Ok(written)
}

/// A new project's name is a crate, Python project and npm package name as
/// well as a plugin's: lower-case letters, digits, `-` and `_`, starting
/// with a letter.
fn check_new_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64;
    if !valid {
        bail!("{name:?} cannot name a plugin project: use lower-case letters, digits, - and _, starting with a letter (e.g. hello-world)");
    }
    // A Rust project is a workspace with the SDK in it, a package of this
    // name: cargo refuses two (the other templates would take it, but a
    // name should not depend on the language).
    if name == SDK_PACKAGE {
        bail!("{name:?} cannot name a plugin project: it is the name of the SDK package a Rust project holds; choose another (e.g. my-plugin)");
    }
    Ok(())
}

/// The package name of the Rust SDK a new Rust project holds in `sdk/`.
const SDK_PACKAGE: &str = "wasmux-sdk";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_by_name() {
        assert_eq!("rust".parse::<Language>().ok(), Some(Language::Rust));
        assert_eq!("Py".parse::<Language>().ok(), Some(Language::Python));
        assert_eq!("javascript".parse::<Language>().ok(), Some(Language::JavaScript));
        assert!("go".parse::<Language>().is_err());
    }

    #[test]
    fn every_template_opens_as_its_language_with_its_name() {
        for language in Language::ALL {
            let dir = tempfile::tempdir().unwrap();
            let project_dir = dir.path().join("hello");
            let files = new_project("hello-there", language, &project_dir).unwrap();
            assert!(files.iter().any(|f| f == Path::new("wit/wasmux.wit")));
            assert!(files.iter().any(|f| f == Path::new("README.md")));
            assert!(files.iter().any(|f| f == Path::new(".gitignore")));
            let project = Project::open(&project_dir).unwrap();
            assert_eq!((project.language, project.name.as_str()), (language, "hello-there"));
            assert_eq!(std::fs::read_to_string(project_dir.join("wit/wasmux.wit")).unwrap(), crate::WIT);
            for file in &files {
                let text = std::fs::read_to_string(project_dir.join(file)).unwrap();
                assert!(!text.contains("{{"), "{} keeps a placeholder", file.display());
            }
            // Nothing refers back to this repository.
            for file in &files {
                let text = std::fs::read_to_string(project_dir.join(file)).unwrap();
                assert!(!text.contains("../../"), "{} has a path out of the project", file.display());
            }
        }
    }

    #[test]
    fn the_stateful_templates_are_built_for_the_stateful_world() {
        for language in [Language::Python, Language::JavaScript] {
            let dir = tempfile::tempdir().unwrap();
            let project_dir = dir.path().join("counter");
            let files = new_project_with("counter", language, true, &project_dir).unwrap();
            let project = Project::open(&project_dir).unwrap();
            assert_eq!((project.language, project.name.as_str(), project.world.as_str()), (language, "counter", "stateful-handler"));
            for file in &files {
                let text = std::fs::read_to_string(project_dir.join(file)).unwrap();
                assert!(!text.contains("{{"), "{} keeps a placeholder", file.display());
            }
            // `wasmux new`'s "Next:" and the README keep the state in `state/`.
            let ignored = std::fs::read_to_string(project_dir.join(".gitignore")).unwrap();
            assert!(ignored.lines().any(|line| line == "/state/"), "{language}: .gitignore does not ignore state/:\n{ignored}");
            let app = std::fs::read_to_string(project_dir.join(&project.entry).with_extension(if language == Language::Python { "py" } else { "js" })).unwrap();
            assert!(app.contains("increment(") && (app.contains("open(\"default\")") || app.contains("open('default')")), "{app}");
            // The plain template stays on `handler`: no store for it.
            let plain = dir.path().join("plain");
            new_project("plain", language, &plain).unwrap();
            assert_eq!(Project::open(&plain).unwrap().world, crate::WORLD);
        }
        let error = new_project_with("counter", Language::Rust, true, &tempfile::tempdir().unwrap().path().join("x")).unwrap_err();
        assert!(error.to_string().contains("no stateful rust template"), "{error}");
    }

    /// Each template's README shows the host's three functions in a code
    /// block (which the authoring tests build and call), and JavaScript's
    /// import names the WIT package's current version.
    #[test]
    fn template_readmes_show_every_host_function_at_the_current_version() {
        for language in Language::ALL {
            let readme = templates::files(language, false).find(|f| f.path == "README.md").map(|f| f.text).unwrap();
            let example = readme.split("## The host's functions").nth(1).and_then(|rest| rest.split("```").nth(1)).unwrap_or_default();
            for function in ["log", "config", "outcome"] {
                assert!(example.contains(&format!("{function}(")), "{language}: the README's example does not call {function}");
            }
            if language == Language::JavaScript {
                assert!(example.contains(&format!("'wasmux:plugin/host@{}'", crate::WIT_VERSION)), "{example}");
            }
            assert!(!readme.contains("@0.1.0"), "{language}: the README names an old version");
        }
    }

    /// The README's example of the host's functions is not the template's
    /// module (which reads no setting and always says `Hello`): the README
    /// must not promise the example's `Howdy` of the module itself.
    #[test]
    fn template_readmes_do_not_promise_the_example_of_the_template() {
        for language in Language::ALL {
            let files: Vec<templates::File> = templates::files(language, false).collect();
            let text = |path: &str| files.iter().find(|f| f.path == path).map(|f| f.text).unwrap();
            let module = match language {
                Language::Rust => "src/lib.rs",
                Language::Python => "app.py",
                Language::JavaScript => "app.js",
            };
            let readme = text("README.md");
            let example = readme.split("## The host's functions").nth(1).and_then(|rest| rest.split("```").nth(1)).unwrap_or_default();
            assert!(example.contains("\"greeting\"") || example.contains("'greeting'"), "{language}: the example reads the setting `greeting`");
            if !text(module).contains("greeting\"") && !text(module).contains("greeting'") {
                let intro = readme.split("## The host's functions").nth(1).and_then(|rest| rest.split("```").next()).unwrap_or_default();
                let said = intro.split_whitespace().collect::<Vec<_>>().join(" ");
                assert!(!said.contains(&format!("This `{module}` uses")), "{language}: the README says the template's {module} reads the setting: {said}");
                assert!(said.contains(&format!("The template's `{module}`")), "{language}: the README does not say what the template's {module} does: {said}");
            }
        }
    }

    #[test]
    fn new_refuses_bad_names_and_full_directories() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "Hello", "1st", "a/b", "search@fuzzy", "a b"] {
            assert!(new_project(bad, Language::Rust, &dir.path().join("x")).is_err(), "{bad:?}");
        }
        // The SDK's own name: accepted, it made a project cargo refused to
        // build ("two packages named 'wasmux-sdk' in this workspace").
        for language in Language::ALL {
            let error = new_project("wasmux-sdk", language, &dir.path().join("sdk")).unwrap_err();
            assert!(error.to_string().contains("the name of the SDK package"), "{error}");
        }
        assert!(!dir.path().join("sdk").exists());
        std::fs::write(dir.path().join("taken"), "").unwrap();
        let error = new_project("hello", Language::Python, dir.path()).unwrap_err();
        assert!(error.to_string().contains("not empty"), "{error}");
    }

    /// Every name a server skips is refused by the build (the cases of
    /// wasmux-files' own test of the rule): a plugin-name of "my plugin"
    /// built dist/my plugin.wasm, which `wasmux dev` and `serve` skipped.
    #[test]
    fn the_build_refuses_a_plugin_name_the_server_skips() {
        for good in ["search", "binary-echo", "search@v2", "my_plugin.v1", "A9"] {
            assert!(check_plugin_name(good).is_ok(), "{good:?}");
        }
        for bad in ["", ".hidden", "my plugin", "a/b", "a\\b", "caf\u{e9}", "a:b", "a\0b", "tab\t", &"x".repeat(129)] {
            assert!(check_plugin_name(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let project_dir = dir.path().join("spaced");
        new_project("spaced", Language::Rust, &project_dir).unwrap();
        let manifest = project_dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, format!("{text}\n[package.metadata.wasmux]\nplugin-name = \"my plugin\"\n")).unwrap();
        let error = build_project_with(&project_dir, &project_dir.join("dist"), &BuildOptions::new(dir.path().join("cache"))).unwrap_err();
        assert!(format!("{error:#}").contains("\"my plugin\" cannot be a plugin's name: a server serves only names of ASCII letters"), "{error:#}");
        assert!(!project_dir.join("dist").exists());
    }

    fn manifest(language: Language, text: &str) -> Result<Project> {
        parse_manifest(language, text)
    }

    #[test]
    fn names_and_settings_from_each_manifest() {
        let rust = manifest(Language::Rust, "[package]\nname = \"search-fuzzy\"\n[package.metadata.wasmux]\nplugin-name = \"search@fuzzy\"\n").unwrap();
        assert_eq!(rust.name, "search@fuzzy");
        let python = manifest(Language::Python, "[project]\nname = \"s\"\n[tool.wasmux]\nmodule = \"pkg.app\"\nwasi = false\n").unwrap();
        assert_eq!((python.name.as_str(), python.entry.as_str(), python.wasi), ("s", "pkg.app", false));
        let python = manifest(Language::Python, "[project]\nname = \"s\"\n").unwrap();
        assert_eq!((python.entry.as_str(), python.wasi), ("app", true));
        assert!(manifest(Language::Python, "[project]\nname = \"s\"\n[tool.wasmux]\nmodule = \"a-b\"\n").is_err());
        let js = manifest(Language::JavaScript, r#"{"name": "@me/search", "main": "src/index.js", "wasmux": {"wasi": false}}"#).unwrap();
        assert_eq!((js.name.as_str(), js.entry.as_str(), js.wasi), ("search", "src/index.js", false));
        let js = manifest(Language::JavaScript, r#"{"name": "x", "wasmux": {"plugin-name": "search@js"}}"#).unwrap();
        assert_eq!((js.name.as_str(), js.entry.as_str(), js.wasi), ("search@js", "app.js", true));
        assert!(manifest(Language::JavaScript, r#"{"version": "1"}"#).is_err());
        assert_eq!(js.world, "handler");
        let stateful = manifest(Language::JavaScript, r#"{"name": "x", "wasmux": {"world": "stateful-handler"}}"#).unwrap();
        assert_eq!(stateful.world, "stateful-handler");
        let stateful = manifest(Language::Python, "[project]\nname = \"s\"\n[tool.wasmux]\nworld = \"stateful-handler\"\n").unwrap();
        assert_eq!(stateful.world, "stateful-handler");
        for bad in ["", "Handler", "a b", "-x", "x--y", "x;rm"] {
            assert!(manifest(Language::Python, &format!("[project]\nname = \"s\"\n[tool.wasmux]\nworld = {bad:?}\n")).is_err(), "{bad:?}");
        }
        assert!(manifest(Language::Rust, "[workspace]\n").is_err());
    }

    #[test]
    fn a_missing_directory_is_said_to_be_missing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nonexistent");
        assert_eq!(Project::open(&missing).unwrap_err().to_string(), format!("{} does not exist: give a plugin project's directory", missing.display()));
        let file = dir.path().join("Cargo.toml");
        std::fs::write(&file, "").unwrap();
        assert_eq!(Project::open(&file).unwrap_err().to_string(), format!("{} is not a directory: give a plugin project's directory", file.display()));
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(Project::open(&empty).unwrap_err().to_string().contains("is not a plugin project"));
    }

    #[test]
    fn several_manifests_need_a_wasmux_section() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("wit")).unwrap();
        std::fs::write(dir.path().join("package.json"), r#"{"name": "tools"}"#).unwrap();
        std::fs::write(dir.path().join("pyproject.toml"), "[project]\nname = \"p\"\n").unwrap();
        assert!(Project::open(dir.path()).is_err());
        std::fs::write(dir.path().join("pyproject.toml"), "[project]\nname = \"p\"\n[tool.wasmux]\n").unwrap();
        assert_eq!(Project::open(dir.path()).unwrap().language, Language::Python);
        assert!(Project::open(&dir.path().join("nowhere")).is_err());
    }

    #[test]
    fn build_inputs() {
        let project = Project { dir: PathBuf::from("/p"), language: Language::Python, name: "x".into(), entry: "app".into(), wasi: true, world: WORLD.into() };
        assert!(project.is_build_input(Path::new("/p/app.py")));
        assert!(project.is_build_input(Path::new("/p/wit/wasmux.wit")));
        assert!(!project.is_build_input(Path::new("/p/dist/x.wasm")));
        assert!(!project.is_build_input(Path::new("/p/.app.py.swp")));
        assert!(!project.is_build_input(Path::new("/p/__pycache__/app.cpython-311.pyc")));
        assert!(!project.is_build_input(Path::new("/elsewhere/app.py")));
    }

    #[test]
    fn finds_the_cdylib_among_cargo_messages() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("Cargo.toml");
        std::fs::write(&manifest, "").unwrap();
        let manifest = manifest.canonicalize().unwrap();
        let messages = format!(
            "{}\n{}\nnot json\n",
            serde_json::json!({"reason": "compiler-artifact", "manifest_path": "/elsewhere/Cargo.toml", "target": {"crate_types": ["cdylib"]}, "filenames": ["/t/wasm32-unknown-unknown/release/other.wasm"]}),
            serde_json::json!({"reason": "compiler-artifact", "manifest_path": manifest, "target": {"crate_types": ["cdylib"]}, "filenames": ["/t/wasm32-unknown-unknown/release/hello.wasm"]}),
        );
        assert_eq!(
            cdylib_artifact(messages.as_bytes(), &manifest).map(|a| a.path),
            Some(PathBuf::from("/t/wasm32-unknown-unknown/release/hello.wasm"))
        );
        assert!(cdylib_artifact(b"", &manifest).is_none());
    }

    #[test]
    fn finds_the_cdylib_of_a_project_reached_through_a_symbolic_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/Cargo.toml"), "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let wasm = "/t/wasm32-unknown-unknown/release/hello.wasm";
        // Asked by the link's path, cargo naming the real one, and the other way round.
        for (asked, named) in [("link", "real"), ("real", "link")] {
            let message = serde_json::json!({
                "reason": "compiler-artifact",
                "manifest_path": dir.path().join(named).join("Cargo.toml"),
                "target": {"crate_types": ["cdylib"]},
                "filenames": [wasm],
            });
            let found = cdylib_artifact(format!("{message}\n").as_bytes(), &dir.path().join(asked).join("Cargo.toml")).map(|a| a.path);
            assert_eq!(found, Some(PathBuf::from(wasm)), "asked for {asked}, cargo named {named}");
        }
    }
}
