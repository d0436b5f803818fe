//! The map of `docs/architecture.md`, checked against the code: which
//! module may use which. Read from the sources (`use crate::…`,
//! `super::…` paths outside the test modules), so a change that breaks the
//! map fails here, not in a reviewer's reading.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path below the crate root: `["runtime", "reuse"]`.
type Module = Vec<String>;

/// Every module of the crate and the modules it uses.
fn imports() -> BTreeMap<Module, BTreeSet<Module>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    collect(&root, &root, &mut sources);
    let modules: BTreeSet<Module> = sources.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, source) in &sources {
        let mut used = BTreeSet::new();
        for path in paths(source) {
            let absolute = match path.first().map(String::as_str) {
                Some("crate") => path[1..].to_vec(),
                Some("super") => {
                    let mut base = module[..module.len().saturating_sub(1)].to_vec();
                    let mut rest = &path[..];
                    while rest.first().map(String::as_str) == Some("super") {
                        rest = &rest[1..];
                        if rest.first().map(String::as_str) == Some("super") {
                            base.pop();
                        }
                    }
                    base.extend(rest.iter().cloned());
                    base
                }
                _ => continue,
            };
            // The longest module the path starts with.
            if let Some(target) = (1..=absolute.len()).rev().map(|n| absolute[..n].to_vec()).find(|m| modules.contains(m))
                && target != *module
            {
                used.insert(target);
            }
        }
        graph.insert(module.clone(), used);
    }
    graph
}

fn collect(root: &Path, dir: &Path, sources: &mut BTreeMap<Module, String>) {
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path: PathBuf = entry.expect("an entry").path();
        if path.is_dir() {
            collect(root, &path, sources);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") || path.file_stem().is_some_and(|s| s == "architecture") {
            continue;
        }
        let relative = path.strip_prefix(root).expect("below src").with_extension("");
        let mut module: Module = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
        if module.last().is_some_and(|last| last == "mod" || last == "lib") {
            module.pop();
        }
        let text = std::fs::read_to_string(&path).expect("read a source file");
        // The code, without its unit tests.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default().to_owned();
        sources.insert(module, code);
    }
}

/// Every `crate::a::b` and `super::a` path in `source`, comments left out.
fn paths(source: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
            if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: Vec<String> = code[at..]
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or_default()
                .split("::")
                .filter(|part| !part.is_empty())
                .map(str::to_owned)
                .collect();
            found.push(path);
        }
    }
    found
}

fn name(module: &Module) -> String {
    if module.is_empty() { "lib".to_owned() } else { module.join("::") }
}

#[test]
fn no_module_imports_in_a_circle() {
    let graph = imports();
    // Depth-first search: a module met again while still open is a circle.
    fn visit(module: &Module, graph: &BTreeMap<Module, BTreeSet<Module>>, open: &mut Vec<Module>, done: &mut BTreeSet<Module>, circles: &mut Vec<String>) {
        if done.contains(module) {
            return;
        }
        if let Some(at) = open.iter().position(|m| m == module) {
            let circle: Vec<String> = open[at..].iter().chain(std::iter::once(module)).map(name).collect();
            circles.push(circle.join(" -> "));
            return;
        }
        open.push(module.clone());
        for next in graph.get(module).into_iter().flatten() {
            visit(next, graph, open, done, circles);
        }
        open.pop();
        done.insert(module.clone());
    }
    let (mut done, mut circles) = (BTreeSet::new(), Vec::new());
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "modules importing in a circle:\n{}", circles.join("\n"));
}

/// The "knows nothing about" column of docs/architecture.md.
#[test]
fn each_step_knows_nothing_of_what_the_map_says() {
    let graph = imports();
    let rules: &[(&str, &[&str])] = &[
        ("server", &["plugins", "runtime", "tenancy", "router", "source"]),
        ("connection", &["service", "plugins", "runtime", "tenancy", "router"]),
        ("codec", &["connection", "server", "net", "service"]),
        ("message", &["codec", "connection", "server", "service", "runtime", "plugins"]),
        ("service", &["server", "connection", "codec", "net", "source"]),
        ("tenancy", &["plugins", "runtime", "service", "server"]),
        ("router", &["tenancy", "plugins", "runtime", "service"]),
        ("plugins", &["router", "tenancy", "service", "server", "source"]),
        ("runtime", &["tenancy", "router", "plugins", "service", "server", "connection", "codec", "config", "source"]),
        ("source", &["service", "server", "router", "tenancy", "runtime"]),
        ("experiments", &["service", "server", "runtime", "plugins"]),
    ];
    let mut broken = Vec::new();
    for (module, imports) in &graph {
        let Some(top) = module.first() else { continue };
        for (step, unknown) in rules {
            if top != step {
                continue;
            }
            for used in imports {
                if used.first().is_some_and(|u| unknown.contains(&u.as_str())) {
                    broken.push(format!("{} uses {}", name(module), name(used)));
                }
            }
        }
    }
    assert!(broken.is_empty(), "the map says these know nothing of each other:\n{}", broken.join("\n"));
}

#[test]
fn the_reader_sees_imports() {
    let found = paths("use crate::runtime::{CallContext, CallLimits};\n// use crate::server;\nlet x = super::call::hostcall_fuel(l);");
    assert_eq!(found, [vec!["crate", "runtime"], vec!["super", "call", "hostcall_fuel"]]);
}
