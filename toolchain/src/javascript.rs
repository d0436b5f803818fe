//! JavaScript plugins: componentize-js at a pinned version, installed once
//! from npm into a folder of the cache directory.
//!
//! The folder holds a `package.json` naming componentize-js 0.23.0, the
//! `package-lock.json` that pins every package below it (both embedded in
//! this binary, so `npm ci` installs the same tree everywhere), and
//! `build.mjs`, the script that calls `componentize()`. It is made beside
//! its final place and renamed into it when complete.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Project;

/// The componentize-js release every JavaScript plugin is built with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

const PACKAGE_JSON: &str = include_str!("javascript/package.json");
const PACKAGE_LOCK: &str = include_str!("javascript/package-lock.json");
const BUILD_SCRIPT: &str = include_str!("javascript/build.mjs");
/// `wasmux dev`'s: a plugin's modules checked and bundled into one script
/// for the dev runtime ([`crate::dev`]).
const DEV_SCRIPT: &str = include_str!("javascript/dev.mjs");
/// The syntax check both scripts run first.
const CHECK_SCRIPT: &str = include_str!("javascript/check.mjs");

/// The scripts wasmux keeps beside the installed node_modules, by name.
const SCRIPTS: [(&str, &str); 3] = [("build.mjs", BUILD_SCRIPT), ("dev.mjs", DEV_SCRIPT), ("check.mjs", CHECK_SCRIPT)];

/// The module componentize-js builds, around the plugin's own, and what it
/// runs first; written into [`ENTRY_DIR`] of the project (componentize-js
/// maps the project's folder to the component's `/`, so the plugin's
/// relative imports and the file names in its stack traces stay as they
/// are).
const ENTRY_MODULE: &str = include_str!("javascript/entry.js");
const SANDBOX_MODULE: &str = include_str!("javascript/sandbox.js");
/// What [`ENTRY_MODULE`] and [`DEV_MODULE`] share: uncaught exceptions
/// answered as handler errors.
const GUARD_MODULE: &str = include_str!("javascript/guard.js");
/// The module of `wasmux dev`'s JavaScript runtime ([`crate::dev`]): the
/// same sandbox and guard, around a plugin it evaluates from the script
/// `wasmux dev` sends when it runs.
const DEV_MODULE: &str = include_str!("javascript/dev-entry.js");
pub const ENTRY_DIR: &str = ".wasmux";

/// componentize-js's WASI features, each of which a plugin may keep or
/// drop. `http` and `fetch-event` are always dropped (a plugin has no
/// network); the other three need the host's WASI subset.
const WASI_FEATURES: [&str; 3] = ["stdio", "random", "clocks"];
const ALWAYS_DISABLED: [&str; 2] = ["http", "fetch-event"];

/// componentize-js, installed.
#[derive(Debug, Clone)]
pub struct ComponentizeJs {
    node: PathBuf,
    /// The folder of the installation and of [`SCRIPTS`].
    dir: PathBuf,
}

impl ComponentizeJs {
    /// The installation in `cache_dir`, made first if missing (one line on
    /// standard error says so; it takes about 25 s and needs npm's
    /// registry). Later calls run offline.
    pub fn find_or_install(cache_dir: &Path) -> Result<Self> {
        let node = find_node()?;
        let dir = cache_dir.join("toolchains").join(format!("componentize-js-{COMPONENTIZE_JS_VERSION}"));
        let script = dir.join("build.mjs");
        let installed = ["@bytecodealliance/componentize-js", "rolldown"].iter().all(|package| dir.join("node_modules").join(package).join("package.json").is_file());
        if script.is_file() && installed {
            // The scripts are ours: keep them current with this binary.
            for (name, text) in SCRIPTS {
                crate::write_if_changed(&dir.join(name), text.as_bytes())?;
            }
            return Ok(Self { node, dir });
        }
        let npm = find_npm()?;
        eprintln!(
            "wasmux: installing componentize-js {COMPONENTIZE_JS_VERSION} from npm into {} (once; later builds run offline)",
            dir.display()
        );
        crate::install_into(&dir, &script, |partial| {
            std::fs::create_dir_all(partial).with_context(|| format!("creating {}", partial.display()))?;
            std::fs::write(partial.join("package.json"), PACKAGE_JSON)?;
            std::fs::write(partial.join("package-lock.json"), PACKAGE_LOCK)?;
            for (name, text) in SCRIPTS {
                std::fs::write(partial.join(name), text)?;
            }
            crate::run_quietly(
                &format!("install componentize-js {COMPONENTIZE_JS_VERSION} from npm"),
                Command::new(&npm)
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(partial),
            )
        })?;
        Ok(Self { node, dir })
    }

    /// Builds the project's ES module (`entry`, relative to its folder) into
    /// the component `out`, for `world` of its WIT, through the entry
    /// module ([`ENTRY_MODULE`]) written into its `.wasmux/`. With
    /// `wasi`, `console.log` (stdio), `Math.random` / `crypto` (random) and
    /// `Date.now` (clocks) work through the host's WASI subset; without it
    /// the component imports no WASI at all, and those fail or trap.
    pub fn componentize(&self, project: &Project, world: &str, out: &Path) -> Result<()> {
        let (project_dir, entry, wit, wasi) = (&project.dir, &project.entry, &project.wit_dir(), project.wasi);
        let version = wit_package_version(wit)?;
        let dir = project_dir.join(ENTRY_DIR);
        let module = format!("../{}", entry.trim_start_matches("./"));
        let source = write_modules(&dir, ENTRY_MODULE.replace("{{module}}", &module), &version)?;
        // Its folder is the component's `/` (see [`ENTRY_MODULE`]).
        self.run_componentize(&source, project_dir, &[&project_dir.join(entry)], Target { wit, world, wasi, out })
    }

    /// Builds `wasmux dev`'s JavaScript runtime for `world` of the WIT in
    /// `wit` into `out`, from [`DEV_MODULE`] written into `scratch`, an
    /// empty folder of the caller's. No project is in it: the runtime
    /// evaluates the script it is sent, so one build serves every project
    /// of this WIT.
    pub fn componentize_dev_runtime(&self, wit: &Path, world: &str, wasi: bool, out: &Path, scratch: &Path) -> Result<()> {
        let version = wit_package_version(wit)?;
        let source = write_modules(scratch, DEV_MODULE.to_owned(), &version)?;
        crate::write_if_changed(&scratch.join("imports.js"), dev_imports_module(wit, world)?.as_bytes())?;
        self.run_componentize(&source, scratch, &[], Target { wit, world, wasi, out })
    }

    /// Runs build.mjs on the entry module `source` in the folder `root`
    /// (the component's `/`), checking `modules` for syntax errors too.
    fn run_componentize(&self, source: &Path, root: &Path, modules: &[&Path], Target { wit, world, wasi, out }: Target<'_>) -> Result<()> {
        let mut disabled: Vec<&str> = ALWAYS_DISABLED.to_vec();
        if !wasi {
            disabled.extend(WASI_FEATURES);
        }
        let disabled = serde_json::to_string(&disabled)?;
        let mut command = Command::new(&self.node);
        command.arg(self.dir.join("build.mjs")).arg(source).arg(wit).arg(world).arg(out).arg(disabled).args(modules);
        command.current_dir(root);
        crate::run_tool("componentize-js", &mut command)?;
        if !out.is_file() {
            bail!("componentize-js reported success but wrote no {}", out.display());
        }
        Ok(())
    }

    /// The project's modules, checked for syntax errors and bundled into
    /// one script for `wasmux dev`'s runtime, as JSON (dev.mjs says what
    /// it holds). Errors are shown on standard error, as a build's are.
    pub fn dev_script(&self, project: &Project) -> Result<String> {
        let entry = project.dir.join(&project.entry);
        if !entry.is_file() {
            bail!("{} does not exist (package.json's \"main\")", entry.display());
        }
        let mut command = Command::new(&self.node);
        command.arg(self.dir.join("dev.mjs")).arg(&project.entry).current_dir(&project.dir);
        let script = crate::run_tool("the dev runtime's bundler (rolldown)", &mut command)?;
        String::from_utf8(script).context("the bundler wrote something that is not UTF-8")
    }
}

/// What a componentize-js build makes: a component of `world` of the WIT
/// in `wit`, with or without WASI, at `out`.
struct Target<'a> {
    wit: &'a Path,
    world: &'a str,
    wasi: bool,
    out: &'a Path,
}

/// The texts `wasmux dev`'s JavaScript runtime is built from: what
/// decides, with the WIT and the tool's version, whether a runtime built
/// before is still the one to serve.
pub fn dev_runtime_modules() -> [&'static str; 3] {
    [DEV_MODULE, SANDBOX_MODULE, GUARD_MODULE]
}

/// The module `imports.js` of the dev runtime for `world` of the WIT in
/// `wit`: it imports every interface of the world that has functions
/// (`wasi:keyvalue/store@0.2.0-draft`, …) and exports them as `modules`,
/// by name, which the runtime's `require` answers the plugin's imports
/// from. componentize-js links an import only where a module imports it,
/// and the plugin's imports are unknown when the runtime is built: so the
/// runtime imports them all, as a built plugin of that world imports them.
pub fn dev_imports_module(wit: &Path, world: &str) -> Result<String> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(wit).with_context(|| format!("reading the WIT in {}", wit.display()))?;
    let world_id = resolve.select_world(&[package], Some(world)).with_context(|| format!("the WIT in {} has no world {world}", wit.display()))?;
    let mut imports = String::from("// Written by `wasmux dev`: every interface the runtime's world imports, by name.\n");
    let mut names = Vec::new();
    for item in resolve.worlds[world_id].imports.values() {
        let wit_parser::WorldItem::Interface { id, .. } = item else { continue };
        if resolve.interfaces[*id].functions.is_empty() {
            continue;
        }
        let Some(name) = resolve.id_of(*id) else { continue };
        imports.push_str(&format!("import * as import{} from {};\n", names.len(), serde_json::to_string(&name)?));
        names.push(name);
    }
    imports.push_str("export const modules = {\n");
    for (index, name) in names.iter().enumerate() {
        imports.push_str(&format!("  {}: import{index},\n", serde_json::to_string(name)?));
    }
    imports.push_str("};\n");
    Ok(imports)
}

/// Writes the entry module `entry` and the modules it imports into `dir`
/// (made if missing), for the WIT package `version`; returns the entry's
/// path.
fn write_modules(dir: &Path, entry: String, version: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = dir.join("entry.js");
    crate::write_if_changed(&source, entry.replace("{{version}}", version).as_bytes())?;
    crate::write_if_changed(&dir.join("sandbox.js"), SANDBOX_MODULE.as_bytes())?;
    crate::write_if_changed(&dir.join("guard.js"), GUARD_MODULE.replace("{{version}}", version).as_bytes())?;
    Ok(source)
}

/// The version of the `wasmux:plugin` package in the WIT folder `wit`
/// (`package wasmux:plugin@0.1.1;`), which the entry module's import of the
/// host names.
pub fn wit_package_version(wit: &Path) -> Result<String> {
    for entry in std::fs::read_dir(wit).with_context(|| format!("reading {}", wit.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "wit") {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if let Some(version) = package_version(&text) {
            return Ok(version);
        }
    }
    bail!("{} declares no `package wasmux:plugin@VERSION;`", wit.display())
}

fn package_version(wit: &str) -> Option<String> {
    wit.lines()
        .filter_map(|line| line.trim().strip_prefix("package wasmux:plugin@"))
        .map(|rest| rest.trim_end_matches(';').trim().to_owned())
        .find(|version| !version.is_empty())
}

/// Node.js, installed from Debian's packages if missing.
fn find_node() -> Result<PathBuf> {
    if let Some(node) = crate::debian::which("node").or_else(|| crate::debian::which("nodejs")) {
        return Ok(node);
    }
    eprintln!("wasmux: no node on PATH; installing Debian's nodejs and npm with apt-get");
    crate::debian::install(&["nodejs", "npm"]).context("JavaScript plugins are built with componentize-js, a Node.js package")?;
    crate::debian::which("node").or_else(|| crate::debian::which("nodejs")).context("apt-get installed nodejs, but node is not on PATH")
}

fn find_npm() -> Result<PathBuf> {
    if let Some(npm) = crate::debian::which("npm") {
        return Ok(npm);
    }
    eprintln!("wasmux: no npm on PATH; installing Debian's npm with apt-get");
    crate::debian::install(&["npm"]).context("componentize-js is installed from npm")?;
    crate::debian::which("npm").context("apt-get installed npm, but it is not on PATH")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_runtime_imports_what_its_world_imports() {
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let plain = dev_imports_module(&wit, "handler").unwrap();
        assert!(plain.contains("import * as import0 from \"wasmux:plugin/host@0.1.1\";\n"), "{plain}");
        assert!(!plain.contains("keyvalue") && !plain.contains("wasmux:plugin/types"), "{plain}");
        let stateful = dev_imports_module(&wit, "stateful-handler").unwrap();
        for name in ["wasmux:plugin/host@0.1.1", "wasi:keyvalue/store@0.2.0-draft", "wasi:keyvalue/atomics@0.2.0-draft", "wasi:keyvalue/batch@0.2.0-draft"] {
            assert!(stateful.contains(&format!(" from \"{name}\";\n")) && stateful.contains(&format!("  \"{name}\": import")), "{name}: {stateful}");
        }
        assert!(dev_imports_module(&wit, "no-such-world").is_err());
    }

    #[test]
    fn the_package_version_of_the_plugin_world() {
        assert_eq!(package_version(crate::WIT), Some(crate::WIT_VERSION.to_owned()));
        assert_eq!(package_version("/// x\npackage wasmux:plugin@0.1.0;\n"), Some("0.1.0".to_owned()));
        assert_eq!(package_version("package other:thing@1.0.0;"), None);
    }
}
