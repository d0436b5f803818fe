//! The `wasmux` command: `serve`, `send`, `bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use tracing_subscriber::EnvFilter;
use wasmux::client::{self, Client};
use wasmux::codec::Message;
use wasmux::config::Settings;
use wasmux::registry::PluginRegistry;
use wasmux::runtime::{Runtime, RuntimeSettings};
use wasmux::service::Service;
use tokio_util::sync::CancellationToken;
use wasmux::admin;
use wasmux::metrics::Metrics;
use wasmux::tenancy::{AUTHORIZATION_FIELD, TokenHash};
use wasmux::watcher::{self, Watched};
use wasmux::{net, server};

#[derive(Parser)]
#[command(name = "wasmux", version, about = "A server for the guide's framed TCP protocol whose handlers are hot-swappable WebAssembly components")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the protocol, routing each request by content-type to a plugin.
    Serve(ServeArgs),
    /// Send one request and print the answer, as the guide's client does.
    Send(SendArgs),
    /// Load a server with requests, check every answer, report throughput and latency.
    Bench(wasmux::bench::BenchArgs),
    /// Make a tenant token and the hash that goes in the configuration.
    Token(TokenArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// Print the hash of this existing token instead of making a new one.
    #[arg(long)]
    hash: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on: HOST:PORT, [IPv6]:PORT, or :PORT for every
    /// interface. A host name listens on every address it resolves to.
    /// Repeat to listen on several.
    #[arg(long, short, default_value = "127.0.0.1:65432")]
    listen: Vec<String>,
    /// Directory of plugins: every NAME.wasm component in it is served as plugin NAME.
    #[arg(long, short)]
    plugins: Option<PathBuf>,
    /// Configuration file (TOML): routes, limits, plugin settings.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Serve /metrics, /plugins and /healthz over HTTP on this address (a
    /// bare port means 127.0.0.1:PORT).
    #[arg(long)]
    admin: Option<String>,
    /// Do not watch the plugin directory and the configuration file for changes.
    #[arg(long)]
    no_watch: bool,
    /// Directory for compiled plugin code, so restarts do not compile again.
    #[arg(long, env = "WASMUX_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not cache compiled plugin code on disk.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Serve the guide's search and binary-echo handlers compiled into the
    /// host instead of plugins: the native baseline for benchmarks.
    #[arg(long, conflicts_with = "plugins")]
    native: bool,
    /// Log each connection and show every message's bytes, as the guide prints them.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Args)]
struct SendArgs {
    /// Server address: HOST:PORT or [IPv6]:PORT.
    #[arg(long, short, default_value = "127.0.0.1:65432")]
    addr: String,
    /// `search` sends a text/json search for VALUE; any other action sends
    /// ACTION+VALUE as binary/custom-client-binary-type (the guide's client).
    #[arg(required_unless_present = "content_type", conflicts_with = "content_type")]
    action: Option<String>,
    #[arg(requires = "action")]
    value: Option<String>,
    /// Send this content-type instead (with --content or --content-file).
    #[arg(long, short = 't')]
    content_type: Option<String>,
    /// The content-encoding to declare with --content-type.
    #[arg(long, short, default_value = "binary", requires = "content_type")]
    encoding: String,
    /// The content, as text.
    #[arg(long, requires = "content_type", conflicts_with = "content_file")]
    content: Option<String>,
    /// The content, read from a file.
    #[arg(long, requires = "content_type")]
    content_file: Option<PathBuf>,
    /// Send "authorization": "Bearer TOKEN", to be served as a tenant.
    #[arg(long, env = "WASMUX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An extra header field, NAME=VALUE; VALUE is JSON if it parses as JSON, else a string.
    #[arg(long = "field", short = 'f', value_name = "NAME=VALUE")]
    fields: Vec<String>,
    /// Give up after this long without an answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Show the bytes sent and received, as the guide prints them.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = match &cli.command {
        Command::Serve(args) => args.verbose,
        Command::Send(args) => args.verbose,
        Command::Token(_) => false,
        Command::Bench(_) => false,
    };
    init_logging(verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wasmux: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Send(args) => send(args).await,
            Command::Token(args) => token(args).map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => wasmux::bench::main(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasmux: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: bool) {
    let default = if verbose { "wasmux=debug,wasmux::wire=debug" } else { "wasmux=info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: a log sent to a file or a pipe shows the
    // wire bytes (`-v`) as plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = match &args.config {
        Some(path) => Settings::load(path)?,
        None => Settings::guide(),
    };
    let cache_dir = if args.no_cache { None } else { args.cache_dir.clone().or_else(default_cache_dir) };
    let runtime = Runtime::new(RuntimeSettings {
        max_concurrent_calls: settings.limits.max_concurrent_calls,
        max_memory: settings.max_plugin_memory(),
        cache_dir,
        spectre_hardening: settings.runtime.spectre_hardening,
        // Prototype (issue 11): the config's [runtime] keys are not wired yet.
        pool: Default::default(),
    })?;
    if !settings.runtime.spectre_hardening {
        tracing::warn!("runtime.spectre-hardening is off: serve only plugins you trust");
    }
    let registry = Arc::new(PluginRegistry::new(Arc::new(runtime)).with_metrics(Arc::new(Metrics::new())));
    match &args.plugins {
        Some(dir) => {
            let loaded = registry.load_dir(dir).await?;
            tracing::info!("{loaded} plugins loaded from {}", dir.display());
        }
        None if args.native => {
            for plugin in wasmux::native::guide_plugins() {
                tracing::info!("plugin {}: native handler", plugin.name);
                registry.insert(plugin);
            }
        }
        None => tracing::warn!("no --plugins directory given: every request will be answered \"no plugin is loaded\""),
    }
    tracing::info!("{}", settings.describe_routes());
    let service = Arc::new(Service::new(registry, settings));
    service.warn_about_unloaded_targets(&service.settings());
    let _watcher = if args.no_watch {
        None
    } else {
        let watched = Watched { plugins: args.plugins.clone(), config: args.config.clone() };
        Some(watcher::watch(watched, Arc::clone(&service))?)
    };

    let mut listeners = Vec::new();
    for spec in &args.listen {
        listeners.extend(net::bind_all(spec).await?);
    }
    let admin_listeners = match &args.admin {
        Some(spec) => net::bind_all(&admin::admin_address(spec)).await?,
        None => Vec::new(),
    };
    for listener in &listeners {
        // On stdout, so scripts (and the tests) can find a port chosen by the OS.
        println!("wasmux listening on {}", listener.local_addr()?);
    }
    for listener in &admin_listeners {
        println!("wasmux admin on http://{}", listener.local_addr()?);
    }

    let shutdown = CancellationToken::new();
    let admin = (!admin_listeners.is_empty())
        .then(|| tokio::spawn(admin::run(admin_listeners, Arc::clone(&service), shutdown.clone().cancelled_owned())));
    let signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    server::run(listeners, service, shutdown.cancelled_owned()).await?;
    if let Some(admin) = admin {
        admin.await??;
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wasmux"))
}

async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let mut request = match (&args.action, &args.content_type) {
        (Some(action), _) => client::guide_request(action, args.value.as_deref().unwrap_or_default()),
        (None, Some(content_type)) => {
            let content = match (&args.content, &args.content_file) {
                (Some(text), _) => text.clone().into_bytes(),
                (None, Some(path)) => client::read_content(path)?,
                (None, None) => Vec::new(),
            };
            Message::new(content_type.clone(), args.encoding.clone(), content)
        }
        (None, None) => bail!("give ACTION VALUE, or --content-type with --content or --content-file"),
    };
    if let Some(token) = &args.token {
        request.header.extra.insert(AUTHORIZATION_FIELD.to_owned(), Value::String(format!("Bearer {token}")));
    }
    for field in &args.fields {
        let (name, value) = field.split_once('=').with_context(|| format!("--field {field}: write NAME=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        request.header.extra.insert(name.to_owned(), value);
    }
    let mut client = Client::connect(&args.addr, args.timeout).await?;
    let answer = client.request(&request).await?;
    println!("{}", client::describe_answer(&answer));
    Ok(if client::error_of(&answer).is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let token = match args.hash {
        Some(token) => token,
        None => {
            let mut bytes = [0u8; 24];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            println!("token: {token}");
            eprintln!("  (the client sends \"authorization\": \"Bearer {token}\"; `wasmux send --token {token}`)");
            token
        }
    };
    println!("token-sha256 = \"{}\"", TokenHash::of(&token));
    eprintln!("  (put this line in the tenant's table: [tenants.NAME])");
    Ok(())
}
