//! `wasmux serve`: the library's parts composed into a server. Settings and
//! the runtime first, then the plugins (a directory, an OCI registry, or
//! the native handlers), the service, the watcher, the listeners, the
//! admin endpoint and HAProxy's agent; then serving until a signal.
//!
//! Signals: SIGTERM drains (the agent answers `drain`, the server keeps
//! accepting for `--drain-delay` so that HAProxy notices, then stops
//! accepting, answers the requests in flight and closes each connection at
//! a message boundary, within `--drain-timeout`); SIGINT (Ctrl-C) does the
//! same without the delay; SIGHUP reloads the configuration file.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use wasmux::agent::{Agent, AgentState};
use wasmux::config::Settings;
use wasmux::kv::{OnDemand, StoreConfig};
use wasmux::metrics::Metrics;
use wasmux::native::GUIDE_HANDLERS;
use wasmux::plugins::{Plugin, Plugins};
use wasmux::runtime::{CompileMode, Runtime, RuntimeSettings};
use wasmux::service::Service;
use wasmux::source::PluginSource;
use wasmux::{admin, net, reload, server, tls};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on: HOST:PORT, [IPv6]:PORT, or :PORT for every
    /// interface. A host name listens on every address it resolves to.
    /// Repeat to listen on several.
    #[arg(long, short, default_value = "127.0.0.1:65432")]
    listen: Vec<String>,
    /// Where plugins come from: a directory (every NAME.wasm component in it
    /// is served as plugin NAME) or an OCI registry repository,
    /// oci://REGISTRY/REPO (every tag is a plugin). Overrides the
    /// configuration's [source] plugins.
    #[arg(long, short)]
    plugins: Option<String>,
    /// How often an OCI registry is asked for new plugin versions.
    /// Overrides the configuration's [source] poll-interval (default 2s).
    #[arg(long, value_parser = wasmux::config::parse_duration)]
    poll_interval: Option<Duration>,
    /// Configuration file (TOML): routes, limits, tenants, plugin settings.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Serve /metrics, /plugins, /experiments, the experiments' live page (/)
    /// and /healthz over HTTP on this address (a bare port means
    /// 127.0.0.1:PORT). Off loopback it needs a token.
    #[arg(long)]
    admin: Option<String>,
    /// A file holding the admin endpoint's bearer token (on its first line);
    /// the configuration's [admin] token-sha256 is the other way to set one.
    #[arg(long, env = "WASMUX_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Answer HAProxy's agent check on this address (a bare port means
    /// 127.0.0.1:PORT): `up ready`, or `drain` once SIGTERM arrives.
    #[arg(long)]
    agent: Option<String>,
    /// On SIGTERM, keep accepting connections this long while the agent
    /// answers `drain`, so that HAProxy stops sending new ones first
    /// (default: 2s with --agent, else 0s).
    #[arg(long, value_parser = wasmux::config::parse_duration)]
    drain_delay: Option<Duration>,
    /// After it stops accepting, how long the server waits for the requests
    /// in flight before it exits anyway.
    #[arg(long, default_value = "10s", value_parser = wasmux::config::parse_duration)]
    drain_timeout: Duration,
    /// Share every port (listeners, --admin, --agent) with a running server
    /// started with --take-over, and take every new connection from it: to
    /// replace the binary or its options without refusing a connection.
    /// Once this one says where it listens, stop the old one (SIGTERM): it
    /// finishes what it has and exits. Linux only.
    #[arg(long)]
    take_over: bool,
    /// Do not watch the plugin directory and the configuration file for changes.
    #[arg(long)]
    no_watch: bool,
    /// Directory for compiled plugin code (and plugins pulled from a
    /// registry), so restarts do not compile or pull again.
    #[arg(long, env = "WASMUX_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not cache compiled plugin code on disk, even with WASMUX_CACHE_DIR set.
    #[arg(long)]
    no_cache: bool,
    /// Where plugins' state is kept (wasi:keyvalue, the embedded store),
    /// locked by this server; opened only when a plugin that imports the
    /// store is loaded [default: $XDG_DATA_HOME/wasmux, else
    /// ~/.local/share/wasmux]. Read at start-up.
    #[arg(long, env = "WASMUX_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep plugins' state in this Redis, redis://HOST:PORT, which every
    /// server given it shares, instead of the data directory. Overrides
    /// the configuration's [kv] url. Read at start-up.
    #[arg(long, value_name = "URL")]
    kv: Option<String>,
    /// Keep plugins' state in this process's memory (`wasmux dev` without
    /// --data-dir).
    #[arg(skip)]
    kv_in_memory: bool,
    /// Serve TLS on every listener, with this certificate chain (PEM, the
    /// server's certificate first).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Serve the guide's search and binary-echo handlers compiled into the
    /// host instead of plugins: the native baseline for benchmarks.
    #[arg(long, conflicts_with = "plugins")]
    native: bool,
    /// Log each connection and show every message's bytes, as the guide prints them.
    #[arg(long, short)]
    pub verbose: bool,
}

impl ServeArgs {
    /// What `wasmux dev` serves with: the plugins in `plugins` (watched),
    /// if any, on `listen`, with the configuration file `config` if any.
    /// Plugins' state is kept in `data_dir`, or in memory without one.
    pub fn dev(listen: Vec<String>, plugins: Option<&Path>, config: Option<PathBuf>, data_dir: Option<PathBuf>, verbose: bool) -> Self {
        Self {
            listen,
            plugins: plugins.map(|dir| dir.display().to_string()),
            poll_interval: None,
            config,
            admin: None,
            admin_token_file: None,
            agent: None,
            drain_delay: None,
            drain_timeout: Duration::from_secs(10),
            take_over: false,
            no_watch: false,
            cache_dir: None,
            no_cache: false,
            kv_in_memory: data_dir.is_none(),
            data_dir,
            kv: None,
            tls_cert: None,
            tls_key: None,
            native: false,
            verbose,
        }
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = match &args.config {
        Some(path) => Settings::load(path)?,
        None => Settings::guide(),
    };
    serve_with(args, settings, Serving::default()).await
}

/// What a server does beyond its arguments: `wasmux serve`'s by default;
/// `wasmux dev` changes it.
pub struct Serving {
    /// How plugins are compiled.
    pub compile: CompileMode,
    /// What the configuration file's text is made into, at a reload too.
    pub parse: reload::Parse,
    /// Supplies plugins once the service exists, before the listeners
    /// open, besides (or instead of) `--plugins`; its error stops the
    /// server.
    pub supply: Option<Supply>,
}

/// [`Serving::supply`].
pub type Supply = Box<dyn FnOnce(Arc<Service>) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send>;

impl Default for Serving {
    fn default() -> Self {
        Self { compile: CompileMode::Serve, parse: reload::parse_file(), supply: None }
    }
}

/// Serves under `settings` (read from `args.config`, or made by the
/// caller), as `serving` says.
pub async fn serve_with(args: ServeArgs, settings: Settings, serving: Serving) -> anyhow::Result<()> {
    let Serving { compile, parse, supply } = serving;
    match server::raise_open_file_limit() {
        Ok((before, now)) if now > before => tracing::info!("open-file limit raised from {before} to {now}"),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let spec = args.plugins.clone().or_else(|| settings.source.plugins.clone());
    let poll_interval = args.poll_interval.unwrap_or(settings.source.poll_interval);
    let cache_dir = if args.no_cache { None } else { args.cache_dir.clone().or_else(|| wasmux_toolchain::default_cache_dir().ok()) };
    let metrics = Arc::new(Metrics::new());
    let store_config = if args.kv_in_memory { StoreConfig::Memory } else { settings.kv.store_config(args.kv.as_deref(), args.data_dir.clone())? };
    // Opened when a plugin that imports the store is loaded: a server
    // without one never touches (or locks) the data directory.
    let store = Arc::new(OnDemand::new(store_config, Arc::clone(&metrics) as _));
    let runtime_settings = RuntimeSettings {
        max_concurrent_calls: settings.limits.max_concurrent_calls,
        max_memory: settings.max_plugin_memory(),
        cache_dir: cache_dir.clone(),
        cache_max_size: settings.runtime.cache_max_size.as_u64(),
        spectre_hardening: settings.runtime.spectre_hardening,
        allocator: settings.runtime.allocator_limits(),
        compile,
    };
    // The metrics count the instances the runtime creates and retires.
    let runtime = Runtime::with_store(runtime_settings, Arc::clone(&metrics) as _, Arc::clone(&store))?;
    if !settings.runtime.spectre_hardening {
        tracing::warn!("runtime.spectre-hardening is off: serve only plugins you trust");
    }
    let plugins = Arc::new(Plugins::new(Some(runtime), Arc::clone(&metrics)).refusing_wasi_to(settings.wasi_refused.clone()));
    let routes = settings.describe_routes();
    let service = Arc::new(Service::new(Arc::clone(&plugins), settings, metrics).with_store(store));
    let stop = CancellationToken::new();
    // Canaries: their states read from the store before their candidates
    // get a request, synced every quarter second, and once more at the end.
    let canaries = tokio::spawn(Arc::clone(&service).keep_canaries(stop.clone().cancelled_owned()));
    match spec {
        Some(spec) => {
            let limits = Arc::clone(&service);
            let source = PluginSource::open(&spec, cache_dir.as_deref(), poll_interval, move || limits.settings().limits.max_plugin_size)?;
            source.serve(Arc::clone(&plugins), !args.no_watch, stop.clone()).await?;
            // A plugin that keeps state was loaded, and its store cannot be
            // opened (the data directory is another server's): refuse to
            // start rather than serve without it. A plugin that needs the
            // store later is refused alone, and the server goes on.
            if let Some(why) = service.store().failure() {
                anyhow::bail!("{why}");
            }
        }
        None if args.native => {
            for (name, handler) in GUIDE_HANDLERS {
                tracing::info!("plugin {name}: native handler");
                plugins.insert(Plugin::native(name, handler));
            }
        }
        None if supply.is_some() => {}
        None => tracing::warn!("no plugins given (--plugins DIR or oci://REGISTRY/REPO): every request will be answered \"no plugin is loaded\""),
    }
    if let Some(supply) = supply {
        supply(Arc::clone(&service)).await?;
    }
    tracing::info!("{routes}");
    service.warn_about_unloaded_targets(&service.settings());
    let _config_watch = match &args.config {
        Some(path) if !args.no_watch => Some(reload::watch(path, Arc::clone(&service), Arc::clone(&parse)).await?),
        _ => None,
    };

    // Every port is bound first, and listened on once nothing else can
    // fail: a server taking the ports over from another (`--take-over`)
    // takes no connection from it unless it starts.
    let sharing = if args.take_over { net::Sharing::TakeOver } else { net::Sharing::Alone };
    let mut bound = Vec::new();
    for spec in &args.listen {
        bound.push(net::bind_all_sharing(spec, sharing).await?);
    }
    let admin_bound = match &args.admin {
        Some(spec) => Some(net::bind_all_sharing(&admin::admin_address(spec), sharing).await?),
        None => None,
    };
    // Read only for an endpoint that is served: a token file set in the
    // environment does not stop a server without one.
    let admin_token = match (&args.admin, &args.admin_token_file) {
        (Some(_), Some(path)) => Some(admin::read_token_file(path)?),
        _ => None,
    };
    let admin_addrs = admin_bound.as_ref().map(net::Bound::local_addrs).unwrap_or_default();
    let admin_access = admin::Access::new(&admin_addrs, admin_token, &service.settings())?;
    let agent_state = AgentState::new();
    let agent_bound = match &args.agent {
        Some(spec) => {
            let addr = net::resolve(&admin::admin_address(spec)).await?.into_iter().next().context("--agent: no address")?;
            Some(net::bind_one(addr, sharing).context("--agent")?)
        }
        None => None,
    };
    // Before saying where it listens: a SIGTERM sent as soon as the address
    // is printed (by a process manager, a script, a test) must drain the
    // server, not kill it as an unhandled signal would.
    let signals = Signals::listen()?;
    let mut listeners = Vec::new();
    for bound in bound {
        listeners.extend(bound.listen()?);
    }
    let admin_listeners = admin_bound.map(net::Bound::listen).transpose()?.unwrap_or_default();
    let agent = match agent_bound {
        Some(bound) => bound.listen()?.into_iter().next().map(|listener| Agent::on(listener, Arc::clone(&agent_state))),
        None => None,
    };
    for listener in &listeners {
        // On stdout, so scripts (and the tests) can find a port chosen by the OS.
        println!("wasmux listening on {}", listener.local_addr()?);
    }
    if tls.is_some() {
        tracing::info!("serving TLS on every listener");
    } else if service.settings().tenants.has_tokens() {
        for addr in listeners.iter().filter_map(|l| l.local_addr().ok()).filter(|addr| !addr.ip().is_loopback()) {
            tracing::warn!(
                "{addr} is not a loopback address and serves plain TCP: tenants' bearer tokens would cross the network readable; serve with --tls-cert and --tls-key"
            );
        }
    }
    for listener in &admin_listeners {
        println!("wasmux admin on http://{}", listener.local_addr()?);
    }
    if let Some(agent) = &agent {
        println!("wasmux agent on {}", agent.local_addr()?);
    }

    let admin = (!admin_listeners.is_empty())
        .then(|| tokio::spawn(admin::run(admin_listeners, Arc::clone(&service), admin_access, stop.clone().cancelled_owned())));
    // The agent answers until the process exits: while it says `drain`,
    // HAProxy keeps this server out of rotation.
    let agent_stop = CancellationToken::new();
    let agent = agent.map(|agent| tokio::spawn(agent.serve(agent_stop.clone())));
    let drain_delay = args.drain_delay.unwrap_or(if args.agent.is_some() { Duration::from_secs(2) } else { Duration::ZERO });
    let shutdown = stop.clone();
    tokio::spawn(handle_signals(signals, shutdown, agent_state, drain_delay, args.config.clone(), Arc::clone(&service), parse));

    server::run(listeners, tls, Arc::clone(&service), stop.clone().cancelled_owned(), args.drain_timeout).await?;
    stop.cancel();
    let _ = canaries.await;
    if let Some(runtime) = plugins.runtime() {
        runtime.shutdown();
    }
    if let Some(admin) = admin {
        admin.await??;
    }
    agent_stop.cancel();
    if let Some(agent) = agent {
        let _ = agent.await;
    }
    Ok(())
}

/// The signals the server answers, each listened for from the moment this
/// is made (until then, the default action applies: the process ends).
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        let listen = |kind: SignalKind, name: &str| signal(kind).with_context(|| format!("cannot listen for {name}"));
        Ok(Self {
            terminate: listen(SignalKind::terminate(), "SIGTERM")?,
            interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
            hangup: listen(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// SIGTERM: drain, then stop. SIGINT: stop. SIGHUP: reload the configuration.
async fn handle_signals(
    mut signals: Signals,
    stop: CancellationToken,
    agent: Arc<AgentState>,
    drain_delay: Duration,
    config: Option<PathBuf>,
    service: Arc<Service>,
    parse: reload::Parse,
) {
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => {
                tracing::info!("SIGINT: stopping");
                break;
            }
            _ = signals.terminate.recv() => {
                agent.set_draining();
                if !drain_delay.is_zero() {
                    tracing::info!("SIGTERM: draining; the agent answers `drain`, still accepting for {drain_delay:?}");
                    tokio::time::sleep(drain_delay).await;
                }
                break;
            }
            _ = signals.hangup.recv() => match &config {
                Some(path) => reload::reload_now(path, &service, &parse).await,
                None => tracing::info!("SIGHUP: no --config file to reload"),
            },
        }
    }
    stop.cancel();
}
