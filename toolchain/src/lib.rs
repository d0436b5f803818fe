//! What turns a plugin's source into a WebAssembly component, shared by
//! `cargo xtask plugins` (the plugins of this repository) and the `wasmux`
//! command (plugins written anywhere).
//!
//! - [`rust`]: a compiler that can build `wasm32-unknown-unknown` guests,
//!   found on this machine or installed;
//! - [`componentize`]: a core module carrying its WIT world (as wit-bindgen
//!   leaves it) wrapped into a component, written atomically;
//! - [`debian`]: Debian packages installed with apt-get, for these and for
//!   the tests (headless Chromium, for the admin page's test).

pub mod debian;
pub mod rust;

use std::path::Path;

use anyhow::{Context, Result};

/// Wraps the core module at `core` into a component at `out`; returns false
/// if `out` already held exactly that component (so a server watching the
/// directory sees no change).
pub fn componentize(core: &Path, out: &Path) -> Result<bool> {
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("the module carries no valid WIT world (was it built with wit-bindgen?)")?
        .validate(true)
        .encode()
        .context("encoding the component")?;
    write_if_changed(out, &component)
}

/// Writes `bytes` to `out` unless it already holds them, beside and then
/// renamed, so that a server watching the directory never reads a
/// half-written file. Returns whether it wrote.
pub fn write_if_changed(out: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(out).is_ok_and(|existing| existing == bytes) {
        return Ok(false);
    }
    let dir = out.parent().context("output path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", out.file_name().and_then(|n| n.to_str()).unwrap_or("plugin")));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(true)
}
