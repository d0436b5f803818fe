//! The files `wasmux new` writes, embedded in the binary: one template per
//! language, each answering any request with `Hello, ` + its content + `!`,
//! plus the WIT world and, for Rust, a copy of `wasmux-sdk`; and for Python
//! and JavaScript a stateful template (`wasmux new --stateful`), built for
//! the world `stateful-handler`, that counts with `wasi:keyvalue`.
//!
//! `{{name}}` in a template stands for the project's name.

use crate::Language;

/// A file of a new project: its path in the project, and its text.
pub(crate) struct File {
    pub path: &'static str,
    pub text: &'static str,
}

const fn file(path: &'static str, text: &'static str) -> File {
    File { path, text }
}

const RUST: &[File] = &[
    file("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    file("Cargo.lock", include_str!("../templates/rust/Cargo.lock")),
    file("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    file("README.md", include_str!("../templates/rust/README.md")),
    file(".gitignore", include_str!("../templates/rust/gitignore")),
    // The SDK as this repository has it: the manifest has no workspace
    // inheritance, and `path: "../wit"` finds the project's own WIT.
    file("sdk/Cargo.toml", include_str!("../../sdk/Cargo.toml")),
    file("sdk/src/lib.rs", include_str!("../../sdk/src/lib.rs")),
];

const PYTHON: &[File] = &[
    file("pyproject.toml", include_str!("../templates/python/pyproject.toml")),
    file("app.py", include_str!("../templates/python/app.py")),
    file("test_app.py", include_str!("../templates/python/test_app.py")),
    file("README.md", include_str!("../templates/python/README.md")),
    file(".gitignore", include_str!("../templates/python/gitignore")),
];

const JAVASCRIPT: &[File] = &[
    file("package.json", include_str!("../templates/js/package.json")),
    file("app.js", include_str!("../templates/js/app.js")),
    file("app.test.js", include_str!("../templates/js/app.test.js")),
    file("README.md", include_str!("../templates/js/README.md")),
    file(".gitignore", include_str!("../templates/js/gitignore")),
];

/// The stateful templates: `incr NAME` and `get NAME` on a counter kept in
/// the plugin's bucket `default`. Their `.gitignore` adds `/state/`, the
/// data directory their README and `wasmux new`'s "Next:" call with.
const PYTHON_STATEFUL: &[File] = &[
    file("pyproject.toml", include_str!("../templates/python/stateful/pyproject.toml")),
    file("app.py", include_str!("../templates/python/stateful/app.py")),
    file("test_app.py", include_str!("../templates/python/stateful/test_app.py")),
    file("README.md", include_str!("../templates/python/stateful/README.md")),
    file(".gitignore", include_str!("../templates/python/stateful/gitignore")),
];

const JAVASCRIPT_STATEFUL: &[File] = &[
    file("package.json", include_str!("../templates/js/stateful/package.json")),
    file("app.js", include_str!("../templates/js/stateful/app.js")),
    file("app.test.js", include_str!("../templates/js/stateful/app.test.js")),
    file("README.md", include_str!("../templates/js/stateful/README.md")),
    file(".gitignore", include_str!("../templates/js/stateful/gitignore")),
];

/// Whether `language` has a stateful template.
pub(crate) fn has_stateful(language: Language) -> bool {
    matches!(language, Language::Python | Language::JavaScript)
}

/// The WIT every project gets: the package, and the packages it uses
/// (`wasi:keyvalue`, which the world `stateful-handler` imports). Without
/// its dependencies the package does not resolve, for any world of it.
const WIT: &[File] = &[
    file("wit/wasmux.wit", crate::WIT),
    file("wit/deps/keyvalue/atomic.wit", include_str!("../../wit/deps/keyvalue/atomic.wit")),
    file("wit/deps/keyvalue/batch.wit", include_str!("../../wit/deps/keyvalue/batch.wit")),
    file("wit/deps/keyvalue/store.wit", include_str!("../../wit/deps/keyvalue/store.wit")),
    file("wit/deps/keyvalue/watch.wit", include_str!("../../wit/deps/keyvalue/watch.wit")),
    file("wit/deps/keyvalue/world.wit", include_str!("../../wit/deps/keyvalue/world.wit")),
];

/// Every file of a new project in `language`, stateful or not, the WIT
/// included. Rust has no stateful template ([`has_stateful`]): its plain
/// one is given.
pub(crate) fn files(language: Language, stateful: bool) -> impl Iterator<Item = File> {
    let own = match (language, stateful) {
        (Language::Rust, _) => RUST,
        (Language::Python, false) => PYTHON,
        (Language::Python, true) => PYTHON_STATEFUL,
        (Language::JavaScript, false) => JAVASCRIPT,
        (Language::JavaScript, true) => JAVASCRIPT_STATEFUL,
    };
    own.iter().chain(WIT).map(|f| File { path: f.path, text: f.text })
}

/// A template's text for the project `name`.
pub(crate) fn render(text: &str, name: &str) -> String {
    text.replace("{{name}}", name)
}
