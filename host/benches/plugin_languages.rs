//! What a plugin costs by the language it is written in: for each component
//! given, its size, compile time, the core instances, memories and tables
//! it needs from the pooling allocator, and the cost of one call on a fresh
//! instance; the answer is checked.
//!
//! `cargo bench -p wasmux --bench plugin_languages -- FILE.wasm...`
//! (`search*` files get a guide search for morpheus, others `text/plain`
//! `world`). Under `cargo test` (no files) it does nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use wasmux::client::guide_request;
use wasmux::message::Message;
use wasmux::plugins::Plugin;
use wasmux::runtime::{CallContext, AllocatorLimits, Runtime, RuntimeSettings, Wasi};

fn main() {
    let files: Vec<PathBuf> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).map(PathBuf::from).collect();
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let mut context = CallContext::default();
    context.limits.deadline = Duration::from_secs(10);
    println!("| component | size | compile | core instances | memories | tables | table elements | fresh-instance call | answer |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for file in files {
        let bytes = std::fs::read(&file).expect("a readable component");
        let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let needs = |limits: AllocatorLimits, what: &str| -> String {
            let runtime = Runtime::new(RuntimeSettings { max_concurrent_calls: 1, allocator: limits, ..RuntimeSettings::default() }).expect("a runtime");
            match Plugin::load(&runtime, &name, wasmux::digest::Digest::of(&bytes), &bytes, Wasi::Allowed) {
                Ok(_) => "≤ 1".into(),
                Err(e) => {
                    let text = format!("{e:#}");
                    ["contains ", "minimum element size of "]
                        .iter()
                        .find_map(|words| text.split(words).nth(1).and_then(|t| t.split(' ').next()))
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("? ({what}: {text})"))
                }
            }
        };
        // Each limit at 1, the others far above any plugin's needs: the
        // refusal says what the component needs.
        let big = AllocatorLimits::for_one_instance();
        let instances = needs(AllocatorLimits { core_instances: 1, ..big }, "instances");
        let memories = needs(AllocatorLimits { memories: 1, ..big }, "memories");
        let tables = needs(AllocatorLimits { tables: 1, ..big }, "tables");
        let elements = needs(AllocatorLimits { table_elements: 1, ..big }, "table elements");

        let runtime = Runtime::new(RuntimeSettings { max_concurrent_calls: 4, ..RuntimeSettings::default() }).expect("a runtime");
        let started = Instant::now();
        let plugin = match Plugin::load(&runtime, &name, wasmux::digest::Digest::of(&bytes), &bytes, Wasi::Allowed) {
            Ok(plugin) => plugin,
            Err(e) => {
                println!("| {name} | refused: {e:#} |");
                continue;
            }
        };
        let compile = started.elapsed();
        let request = if name.starts_with("search") {
            guide_request("search", "morpheus")
        } else {
            Message::new("text/plain", "utf-8", b"world".to_vec())
        };
        let call = || async {
            match plugin.call(&request, &context).await {
                Ok((answer, _)) => String::from_utf8_lossy(&answer.content).into_owned(),
                Err(e) => format!("error: {e}"),
            }
        };
        let answer = tokio.block_on(call());
        let rounds = if bytes.len() > 1 << 20 { 200 } else { 5_000 };
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(tokio.block_on(call()));
        }
        let per_call = started.elapsed() / rounds;
        println!(
            "| {name} | {:.2} MB | {:.2} s | {instances} | {memories} | {tables} | {elements} | {:.0} µs | {answer} |",
            bytes.len() as f64 / 1e6,
            compile.as_secs_f64(),
            per_call.as_secs_f64() * 1e6,
        );
    }
}
