//! One plugin call through [`Plugin::call`]: a fresh store and instance
//! from the pooling allocator (or, with reuse, the instance of the call
//! before), the request lowered into the guest, the guest's answer lifted
//! and checked. The native handlers behind the same call are the
//! reference: the difference is what the sandbox costs.
//!
//! Needs the components built by `cargo xtask plugins`:
//! `cargo bench -p wasmux --bench plugin_call`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use criterion::{Criterion, Throughput};
use wasmux::client::guide_request;
use wasmux::message::Message;
use wasmux::native::GUIDE_HANDLERS;
use wasmux::plugins::Plugin;
use wasmux::runtime::{CallContext, Reuse, ReuseCount, Runtime, RuntimeSettings, Wasi};

fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins")
}

/// The plugins loaded by one runtime, and what to call them in the report.
struct Setup {
    label: &'static str,
    plugins: Vec<Plugin>,
    reuse: Reuse,
}

fn plugin_call(c: &mut Criterion, setups: &[Setup]) {
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    // A deadline far away: on a busy machine a descheduled call must not
    // fail the benchmark (the deadline's cost is the same whatever it is).
    let mut native_context = CallContext::default();
    native_context.limits.deadline = std::time::Duration::from_secs(10);
    let context_of = |reuse| CallContext { reuse, ..native_context.clone() };
    let natives: Vec<Plugin> = GUIDE_HANDLERS.iter().map(|(name, handler)| Plugin::native(name, *handler)).collect();
    let requests: [(&str, Message); 2] =
        [("search", guide_request("search", "morpheus")), ("binary-echo", guide_request("binary", "\u{1f603}"))];

    let mut group = c.benchmark_group("plugin call");
    group.throughput(Throughput::Elements(1));
    for (name, request) in &requests {
        let wasm = setups.iter().flat_map(|s| s.plugins.iter().map(move |p| (s.label, p, context_of(s.reuse))));
        let native = natives.iter().map(|p| ("native", p, native_context.clone()));
        for (backend, plugin, context) in wasm.chain(native) {
            if plugin.name != *name {
                continue;
            }
            group.bench_function(format!("{name} ({backend})"), |b| {
                b.to_async(&tokio).iter(|| async {
                    match plugin.call(black_box(request), &context).await {
                        Ok(answer) => black_box(answer),
                        Err(e) => panic!("plugin {name} failed: {e}"),
                    }
                })
            });
        }
    }
    group.finish();
}

fn main() -> ExitCode {
    let dir = plugins_dir();
    let mut setups = Vec::new();
    let reused = Reuse { requests: ReuseCount::Fixed(std::num::NonZeroU32::MAX), idle: std::time::Duration::from_secs(3600) };
    let variants = [
        ("wasm, fresh instance", true, Reuse::FRESH),
        ("wasm, reused instance", true, reused),
        ("wasm, fresh instance, no Spectre hardening", false, Reuse::FRESH),
    ];
    for (label, spectre_hardening, reuse) in variants {
        let runtime = match Runtime::new(RuntimeSettings { spectre_hardening, ..RuntimeSettings::default() }) {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("plugin_call: cannot start the runtime: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let mut plugins = Vec::new();
        for name in ["search", "binary-echo"] {
            let path = dir.join(format!("{name}.wasm"));
            let Ok(bytes) = std::fs::read(&path) else {
                eprintln!("plugin_call: {} is missing: build the plugins first with `cargo xtask plugins`", path.display());
                return ExitCode::FAILURE;
            };
            match Plugin::load(&runtime, name, wasmux::digest::Digest::of(&bytes), &bytes, Wasi::Allowed) {
                Ok(plugin) => plugins.push(plugin),
                Err(e) => {
                    eprintln!("plugin_call: cannot load {}: {e:#}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        setups.push(Setup { label, plugins, reuse });
    }
    let mut criterion = Criterion::default().configure_from_args();
    plugin_call(&mut criterion, &setups);
    criterion.final_summary();
    ExitCode::SUCCESS
}
