//! `cargo xtask plugins`: every plugin crate becomes a component file.
//!
//! Plugins are the `cdylib` crates of the `plugins/` workspace. Each is built
//! for wasm32 (a core module carrying its WIT world in a custom section, put
//! there by wit-bindgen) and then wrapped into a component by wit-component.
//! Crates under `plugins/test-fixtures/` are misbehaving plugins for the
//! test suite; they go to `target/test-plugins/` so that no one serves them
//! by accident.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use wasmux_toolchain::componentize;
use wasmux_toolchain::rust::{TARGET, Toolchain};

struct Plugin {
    /// The cargo package.
    package: String,
    /// The plugin's name when served: the package name, or
    /// `[package.metadata.wasmux] plugin-name` (e.g. `search@fuzzy`, a second
    /// version of `search`).
    name: String,
    fixture: bool,
}

/// Which plugin crates to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The plugins `cargo xtask serve` serves (search, search@fuzzy,
    /// binary-echo): a newcomer's first build builds nothing more.
    Served,
    /// Those and the test fixtures.
    All,
}

pub fn build(root: &Path, release: bool, which: Which) -> Result<()> {
    let started = Instant::now();
    let manifest = root.join("plugins/Cargo.toml");
    let mut plugins = list(root, &manifest)?;
    if which == Which::Served {
        plugins.retain(|plugin| !plugin.fixture);
    }
    let toolchain = Toolchain::find_or_install()?;
    eprintln!("xtask: building {} plugins with {}", plugins.len(), toolchain.describe());

    let target_dir = root.join("target/wasm");
    let mut build = crate::cargo();
    build
        .arg("build")
        .arg("--locked")
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target_dir);
    if release {
        build.arg("--release");
    }
    for plugin in &plugins {
        build.args(["-p", &plugin.package]);
    }
    toolchain.configure(&mut build, &target_dir);
    crate::run(&mut build)?;

    let profile = if release { "release" } else { "debug" };
    let artifacts = target_dir.join(TARGET).join(profile);
    for plugin in &plugins {
        let core = artifacts.join(format!("{}.wasm", plugin.package.replace('-', "_")));
        let out_dir = root.join(if plugin.fixture { "target/test-plugins" } else { "target/plugins" });
        let out = out_dir.join(format!("{}.wasm", plugin.name));
        let written = componentize(&core, &out).with_context(|| format!("plugin {}", plugin.name))?;
        eprintln!("xtask: {} {}", if written { "wrote" } else { "unchanged" }, out.display());
    }
    eprintln!("xtask: plugins ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The guide's search in each language, as a newcomer builds a plugin:
/// `wasmux build` (the release binary, built before) of `plugins/search`,
/// `examples/plugins/search-py` and `examples/plugins/search-js` into
/// `target/lang-plugins/`; beside them the Rust example that keeps state,
/// `examples/plugins/counter-kv`. The tools and build output are kept in the
/// test cache (`target/test-cache`, as `WASMUX_CACHE_DIR`) that the tests
/// use too. `plugins/search` reuses `target/wasm`, where [`build`] built
/// it; `counter-kv` builds where the tests' Rust projects (the template's
/// profile) build, `target/test-cache/rust-target`, so that the standard
/// library for that profile is built once for both, not once each.
pub fn build_examples(root: &Path) -> Result<()> {
    let started = Instant::now();
    let wasmux = root.join("target/release/wasmux");
    let out = root.join("target/lang-plugins");
    // Each project, and the target directory a Rust one builds in (none:
    // the test cache's, as for the tests' projects).
    let projects = [
        ("plugins/search", Some("target/wasm")),
        ("examples/plugins/search-py", None),
        ("examples/plugins/search-js", None),
        ("examples/plugins/counter-kv", None),
    ];
    for (dir, target_dir) in projects {
        let mut build = Command::new(&wasmux);
        build
            .arg("build")
            .arg(root.join(dir))
            .arg("--out")
            .arg(&out)
            .env("WASMUX_CACHE_DIR", root.join("target/test-cache"));
        match target_dir {
            Some(target_dir) => build.env("CARGO_TARGET_DIR", root.join(target_dir)),
            None => build.env_remove("CARGO_TARGET_DIR"),
        };
        crate::run(&mut build).with_context(|| format!("building {dir}"))?;
    }
    eprintln!("xtask: example plugins ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The test fixtures' packages (`plugins/test-fixtures/`): misbehaving
/// plugins for the host's tests, with no tests of their own, so that the
/// plugins' native tests can leave them out. A fixture's source with a
/// `#[test]` in it is refused, rather than its tests silently not run.
pub fn fixture_packages(root: &Path) -> Result<Vec<String>> {
    let fixtures = root.join("plugins/test-fixtures");
    crate::refuse_tests_in(&fixtures, "the test fixtures' tests are not run: move them to the host's tests")?;
    let plugins = list(root, &root.join("plugins/Cargo.toml"))?;
    Ok(plugins.into_iter().filter(|plugin| plugin.fixture).map(|plugin| plugin.package).collect())
}

/// The plugin crates: `cdylib` packages of the plugins workspace.
fn list(root: &Path, manifest: &Path) -> Result<Vec<Plugin>> {
    let out = crate::cargo()
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(manifest)
        .output()
        .context("could not run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let metadata: Value = serde_json::from_slice(&out.stdout).context("cargo metadata printed invalid JSON")?;
    let fixtures = root.join("plugins/test-fixtures");
    let mut plugins = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let is_cdylib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["crate_types"].as_array().into_iter().flatten().any(|k| k == "cdylib"));
        if !is_cdylib {
            continue;
        }
        let package_name = package["name"].as_str().context("package without a name")?.to_owned();
        let name = match package["metadata"]["wasmux"]["plugin-name"].as_str() {
            Some(name) => name.to_owned(),
            None => package_name.clone(),
        };
        let manifest_path = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
        plugins.push(Plugin { package: package_name, name, fixture: manifest_path.starts_with(&fixtures) });
    }
    if plugins.is_empty() {
        bail!("no plugin crates (crate-type cdylib) in {}", manifest.display());
    }
    Ok(plugins)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fixtures_here_have_no_tests() {
        assert_eq!(crate::first_with_tests(&crate::workspace_root().join("plugins/test-fixtures")).expect("read"), None);
    }
}
