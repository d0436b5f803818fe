//! `wasmux call FILE.wasm [--content-type T] [--encoding E] [--content C |
//! --content-file F] [--field NAME=VALUE] [--config KEY=VALUE]`: one
//! request on a plugin component, with no server, answered and printed as
//! `wasmux send` prints a server's answer.
//!
//! The request goes through the library's service, as a server's would
//! (every content-type routed to the plugin, the server's default limits),
//! so the answer, error answers included, is the one a server would send.
//! The plugin's log lines go to standard error. The exit code is 0 for an
//! answer, 1 for an error answer (a handler error, a trap, a timeout) or a
//! component that cannot be loaded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use wasmux::config::{ConfigFile, ConfigValue, RouteFile, Settings};
use wasmux::message::Message;
use wasmux::metrics::Metrics;
use wasmux::digest::Digest;
use wasmux::plugins::{COMPILE_NOTICE_SIZE, Plugins, megabytes};
use wasmux::source::dir::plugin_name;
use wasmux::kv::{Durability, OnDemand, StoreConfig};
use wasmux::runtime::{AllocatorLimits, CompileMode, Runtime, RuntimeSettings, Unobserved};
use wasmux::service::Service;

#[derive(Args)]
pub struct CallArgs {
    /// The plugin component.
    file: PathBuf,
    /// The request's content-type.
    #[arg(long, short = 't', default_value = "text/plain")]
    content_type: String,
    /// The request's content-encoding.
    #[arg(long, short, default_value = "utf-8")]
    encoding: String,
    /// The content, as text.
    #[arg(long, conflicts_with = "content_file")]
    content: Option<String>,
    /// The content, read from a file.
    #[arg(long)]
    content_file: Option<PathBuf>,
    /// An extra header field, NAME=VALUE; VALUE is JSON if it parses as JSON, else a string.
    #[arg(long = "field", short = 'f', value_name = "NAME=VALUE")]
    fields: Vec<String>,
    /// A value the plugin reads with `config(KEY)`, as [plugins.NAME] gives it in a server.
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Where compiled plugin code is kept, so the next call of the same
    /// component does not compile it again.
    #[arg(long, env = "WASMUX_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not keep compiled plugin code on disk, even with WASMUX_CACHE_DIR set.
    #[arg(long)]
    no_cache: bool,
    /// Keep the plugin's state (wasi:keyvalue) in this directory, so that
    /// the next call sees what this one stored; without it, the state
    /// lives for this one call.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// How long the call may run, as `plugin-deadline` in a server's
    /// `[limits]` (default 100ms, the server's): raise it to try a plugin
    /// on a busy machine, or one whose first call is slow.
    #[arg(long, value_name = "DURATION", value_parser = wasmux::config::parse_duration)]
    deadline: Option<std::time::Duration>,
}

pub async fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let bytes = tokio::fs::read(&args.file).await.with_context(|| format!("cannot read {}", args.file.display()))?;
    let name = plugin_name(&args.file).unwrap_or_else(|| "plugin".to_owned());

    let mut values = BTreeMap::new();
    for setting in &args.config {
        let (key, value) = setting.split_once('=').with_context(|| format!("--config {setting}: write KEY=VALUE"))?;
        values.insert(key.to_owned(), ConfigValue::String(value.to_owned()));
    }
    let mut file = ConfigFile {
        routes: Some(BTreeMap::from([("*".to_owned(), RouteFile::Plugin(name.clone()))])),
        plugins: BTreeMap::from([(name.clone(), values)]),
        ..ConfigFile::default()
    };
    if let Some(deadline) = args.deadline {
        // Checked here, not by the settings, which would name the key of a
        // configuration file (limits.plugin-deadline) the user never wrote.
        anyhow::ensure!(!deadline.is_zero(), "--deadline must be longer than 0");
        file.limits.plugin_deadline = deadline;
    }
    let settings = Settings::from_file(file)?;

    let cache_dir = match (args.no_cache, args.cache_dir) {
        (true, _) => None,
        (false, Some(dir)) => Some(dir),
        (false, None) => wasmux_toolchain::default_cache_dir().ok(),
    };
    let metrics = Arc::new(Metrics::new());
    let store = match args.data_dir {
        Some(dir) => StoreConfig::Embedded { dir, durability: Durability::Process },
        None => StoreConfig::Memory,
    };
    let store = Arc::new(OnDemand::new(store, Arc::clone(&metrics) as _));
    let runtime = runtime_for_one_call(&settings, cache_dir, store)?;
    let plugins = Arc::new(Plugins::new(Some(runtime), Arc::clone(&metrics)));
    let digest = Digest::of(&bytes);
    // Seconds for a Python or JavaScript component: say so, and when done.
    let compiling = bytes.len() >= COMPILE_NOTICE_SIZE && plugins.runtime().is_some_and(|runtime| !runtime.is_compiled(digest));
    let started = Instant::now();
    if compiling {
        eprintln!(
            "wasmux: compiling {} ({}) for this machine; the compiled code is kept for its next calls",
            args.file.display(),
            megabytes(bytes.len())
        );
    }
    // One line, as `Plugins::load` makes its refusals.
    plugins.load(&name, digest, bytes, &args.file.display().to_string()).await?;
    if compiling {
        eprintln!("wasmux: compiled in {:.1} s", started.elapsed().as_secs_f64());
    }
    let service = Service::new(plugins, settings, metrics);

    let content = match (&args.content, &args.content_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => wasmux::client::read_content(path)?,
        (None, None) => Vec::new(),
    };
    let mut request = Message::new(args.content_type, args.encoding, content);
    crate::add_fields(&mut request, &args.fields, crate::FieldsFor::Call)?;
    let answer = service.handle(request).await;
    Ok(crate::print_answer(&answer.message))
}

/// The runtime of one `wasmux call`: one call at a time, so the pool can
/// hold whatever any plugin needs. `wasmux build` compiles into the cache
/// with it, so that the first call of a new build finds the code compiled.
pub fn runtime_for_one_call(settings: &Settings, cache_dir: Option<PathBuf>, store: Arc<OnDemand>) -> anyhow::Result<Runtime> {
    let settings = RuntimeSettings {
        max_concurrent_calls: 1,
        max_memory: settings.max_plugin_memory(),
        cache_dir,
        cache_max_size: settings.runtime.cache_max_size.as_u64(),
        spectre_hardening: true,
        allocator: AllocatorLimits::for_one_instance(),
        compile: CompileMode::Serve,
    };
    Ok(Runtime::with_store(settings, Arc::new(Unobserved), store)?)
}
