//! `wasmux dev`'s runtimes for Python and JavaScript plugins: a save
//! served without a build.
//!
//! Building a Python or JavaScript component takes the pinned tools about
//! 5 s, and compiling it to machine code as long again (an interpreter of
//! 12 to 32 MB): a save would answer after 6 to 10 s. But the interpreter
//! is the same from one save to the next; only the plugin's source
//! changes. So `wasmux dev` builds, once per WIT and tool version, a *dev
//! runtime*: the interpreter, the sandbox the built component has, and a
//! loader, with no plugin in it ([`runtime`]). It serves the project's
//! source, read from disk at each save ([`sources`]), through the host's
//! `config` import: the setting [`SOURCES_KEY`] of the plugin, which the
//! loader reads and runs as the plugin's module when an instance answers
//! its first request. A save is then a reload of the server's settings;
//! the runtime's compiled code stays in the compiled-code cache.
//!
//! The loader answers as the built component does (the same standard
//! library and refusals, the same answer to an uncaught exception, the
//! same file names in tracebacks). What differs is when the plugin's
//! module-level code runs: in each instance, before its first request,
//! instead of once when the component is built; docs/plugins.md says what
//! that changes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::javascript::{COMPONENTIZE_JS_VERSION, ComponentizeJs};
use crate::python::{COMPONENTIZE_PY_VERSION, ComponentizePy};
use crate::{BuildOptions, Language, Project};

/// The plugin's setting that carries its source to the dev runtime.
pub const SOURCES_KEY: &str = "wasmux:dev-sources";

/// The setting that makes the dev runtime only load the plugin and answer
/// a report, `{"error": TEXT or null, "warnings": [TEXT, …]}`: what `wasmux
/// dev` checks before it serves a save.
pub const CHECK_KEY: &str = "wasmux:dev-check";

/// The most source text a project may send to the dev runtime. A project
/// with more (vendored packages, say) is served built (`wasmux dev
/// --build`).
pub const MAX_SOURCES: usize = 8 << 20;

/// Whether `language` has a dev runtime (Rust plugins rebuild in well
/// under a second: they are served built).
pub fn has_runtime(language: Language) -> bool {
    matches!(language, Language::Python | Language::JavaScript)
}

/// The dev runtime for `project`'s language, WIT, world and `wasi`
/// setting: the one in the cache directory, or built there first (a line
/// on standard error says so, and how long it took). A plugin of the world
/// `stateful-handler` gets a runtime of that world (which imports
/// `wasi:keyvalue`, so the server opens a store for it), a plain one a
/// runtime of `handler` (no store): each is built once and kept.
pub fn runtime(project: &Project, options: &BuildOptions) -> Result<PathBuf> {
    let (language, tool) = match project.language {
        Language::Python => ("python", format!("componentize-py {COMPONENTIZE_PY_VERSION}")),
        Language::JavaScript => ("js", format!("componentize-js {COMPONENTIZE_JS_VERSION}")),
        Language::Rust => bail!("Rust plugins have no dev runtime: they are rebuilt"),
    };
    let dir = options.cache_dir.join("dev-runtimes");
    let path = dir.join(format!("{language}-{}.wasm", runtime_key(project)?));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = match project.language {
        Language::Python => "Python",
        _ => "JavaScript",
    };
    eprintln!(
        "wasmux: building the {name} dev runtime for the world {} with {tool} (the interpreter and a loader for the plugin's source; \
         once for this WIT, so that a save is served without a build)",
        project.world
    );
    let started = Instant::now();
    for suffix in [".scratch", ".wasm"] {
        crate::remove_abandoned(&dir, &format!(".{language}."), suffix);
    }
    let scratch = Scratch(dir.join(format!(".{language}.{}.scratch", std::process::id())));
    let built = dir.join(format!(".{language}.{}.wasm", std::process::id()));
    let result = match project.language {
        Language::Python => ComponentizePy::find_or_install(&options.cache_dir)?.componentize_dev_runtime(&project.wit_dir(), &project.world, project.wasi, &built, &scratch.0),
        _ => ComponentizeJs::find_or_install(&options.cache_dir)?.componentize_dev_runtime(&project.wit_dir(), &project.world, project.wasi, &built, &scratch.0),
    };
    let result = result.and_then(|()| std::fs::rename(&built, &path).with_context(|| format!("moving the dev runtime to {}", path.display())));
    if result.is_err() {
        let _ = std::fs::remove_file(&built);
    }
    result?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    eprintln!("wasmux: built the {name} dev runtime ({:.1} MB) in {:.1} s", size as f64 / 1e6, started.elapsed().as_secs_f64());
    Ok(path)
}

/// What the dev runtime is built from: the language's tool and loader,
/// the world, whether it has WASI, and every file of the WIT. A change of
/// any of them builds a new one.
fn runtime_key(project: &Project) -> Result<String> {
    let mut hash = Sha256::new();
    let mut add = |part: &[u8]| {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    };
    match project.language {
        Language::Python => {
            add(COMPONENTIZE_PY_VERSION.as_bytes());
            crate::python::dev_runtime_modules().iter().for_each(|m| add(m.as_bytes()));
        }
        _ => {
            add(COMPONENTIZE_JS_VERSION.as_bytes());
            crate::javascript::dev_runtime_modules().iter().for_each(|m| add(m.as_bytes()));
            add(crate::javascript::dev_imports_module(&project.wit_dir(), &project.world)?.as_bytes());
        }
    }
    add(project.world.as_bytes());
    add(&[u8::from(project.wasi)]);
    let wit = project.wit_dir();
    for file in files_under(&wit, &|path| path.extension().is_some_and(|e| e == "wit"))? {
        let relative = file.strip_prefix(&wit).unwrap_or(&file);
        add(relative.to_string_lossy().as_bytes());
        add(&std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?);
    }
    let digest = hash.finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The value of [`SOURCES_KEY`] for `project` as it is on disk now:
/// Python, `{"module": NAME, "files": {PATH: TEXT, …}}` with every Python
/// file of the project; JavaScript, the plugin's modules checked and
/// bundled into one script (`dev.mjs` says how). A syntax error of a
/// JavaScript module fails here, its message on standard error as a
/// build's; a Python one is found by the check ([`CHECK_KEY`]).
pub fn sources(project: &Project, options: &BuildOptions) -> Result<String> {
    let value = match project.language {
        Language::Python => python_sources(project)?,
        Language::JavaScript => ComponentizeJs::find_or_install(&options.cache_dir)?.dev_script(project)?,
        Language::Rust => bail!("Rust plugins have no dev runtime: they are rebuilt"),
    };
    if value.len() > MAX_SOURCES {
        bail!(
            "the plugin's source is {:.1} MB, over the {} MB wasmux dev sends its runtime: serve the built component with `wasmux dev --build`",
            value.len() as f64 / 1e6,
            MAX_SOURCES >> 20
        );
    }
    Ok(value)
}

/// Every Python file of the project that is a build input (not in `dist/`,
/// `__pycache__/`, hidden folders or a virtual environment), by its path
/// relative to the project, as the built component's path finds them.
fn python_sources(project: &Project) -> Result<String> {
    let mut files = serde_json::Map::new();
    let mut total = 0;
    let wanted = |path: &Path| path.extension().is_some_and(|e| e == "py") && project.is_build_input(path);
    for path in files_under(&project.dir, &wanted)? {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {} (Python source is UTF-8)", path.display()))?;
        total += text.len();
        if total > MAX_SOURCES {
            bail!(
                "the project's Python files are over the {} MB wasmux dev sends its runtime: serve the built component with `wasmux dev --build`",
                MAX_SOURCES >> 20
            );
        }
        let relative = path.strip_prefix(&project.dir).unwrap_or(&path);
        let relative: Vec<String> = relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        files.insert(relative.join("/"), text.into());
    }
    Ok(serde_json::json!({ "module": project.entry, "files": files }).to_string())
}

/// The files under `dir` that `wanted` keeps, sorted; symbolic links to
/// folders and virtual environments (a folder with `pyvenv.cfg`) are not
/// entered.
fn files_under(dir: &Path, wanted: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        if folder != dir && folder.join("pyvenv.cfg").exists() {
            continue;
        }
        for entry in std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))? {
            let entry = entry.with_context(|| format!("reading {}", folder.display()))?;
            let path = entry.path();
            let kind = entry.file_type().with_context(|| format!("reading {}", path.display()))?;
            if kind.is_dir() {
                folders.push(path);
            } else if (kind.is_file() || (kind.is_symlink() && path.is_file())) && wanted(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// A folder for a tool's own files, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python_project(dir: &Path) -> Project {
        crate::new_project("hello", Language::Python, dir).unwrap();
        Project::open(dir).unwrap()
    }

    #[test]
    fn python_sources_are_the_projects_python_files() {
        let tmp = tempfile::tempdir().unwrap();
        let project = python_project(&tmp.path().join("hello"));
        let dir = &project.dir;
        std::fs::create_dir_all(dir.join("helpers")).unwrap();
        std::fs::write(dir.join("helpers/__init__.py"), "X = 1\n").unwrap();
        for skipped in ["dist/x.py", "__pycache__/app.py", ".hidden/x.py", "venv/lib/x.py", "wit_world/__init__.py"] {
            let path = dir.join(skipped);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        std::fs::write(dir.join("venv/pyvenv.cfg"), "").unwrap();
        let sources: serde_json::Value = serde_json::from_str(&python_sources(&project).unwrap()).unwrap();
        assert_eq!(sources["module"], "app");
        let files: Vec<&str> = sources["files"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(files, ["app.py", "helpers/__init__.py", "test_app.py"]);
        assert_eq!(sources["files"]["app.py"], std::fs::read_to_string(dir.join("app.py")).unwrap());
    }

    #[test]
    fn the_runtime_key_follows_the_wit_and_wasi() {
        let tmp = tempfile::tempdir().unwrap();
        let mut project = python_project(&tmp.path().join("hello"));
        let key = runtime_key(&project).unwrap();
        assert_eq!(runtime_key(&project).unwrap(), key);
        // Another project of the same WIT shares it.
        let other = python_project(&tmp.path().join("other"));
        assert_eq!(runtime_key(&other).unwrap(), key);
        project.wasi = false;
        assert_ne!(runtime_key(&project).unwrap(), key);
        project.wasi = true;
        // A stateful plugin's runtime is another (built for its world).
        project.world = "stateful-handler".into();
        let stateful = runtime_key(&project).unwrap();
        assert_ne!(stateful, key);
        project.world = crate::WORLD.into();
        assert_eq!(runtime_key(&project).unwrap(), key);
        std::fs::write(project.wit_dir().join("extra.wit"), "package a:b;\n").unwrap();
        assert_ne!(runtime_key(&project).unwrap(), key);
    }
}
