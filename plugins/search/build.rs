//! Links the plugin with an initial memory of 2 MiB: 1 MiB of stack, the
//! static data, and about 900 KiB of heap that `initial_heap` hands out
//! before it grows memory. A request that fits never grows memory, so the
//! host makes no `mprotect` call for it.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        let bytes = std::env::var("WASMUX_PLUGIN_INITIAL_MEMORY").unwrap_or_else(|_| "2097152".into());
        println!("cargo::rustc-link-arg-cdylib=--initial-memory={bytes}");
    }
    println!("cargo::rerun-if-env-changed=WASMUX_PLUGIN_INITIAL_MEMORY");
}
