//! The admin endpoint (`wasmux serve --admin ADDR`), over HTTP:
//!
//! - `/metrics`: every metric, in Prometheus text format;
//! - `/plugins`: the loaded plugins, their versions and load times, and the
//!   last error of each plugin file that was refused;
//! - `/experiments`: every split route of every tenant, arm by arm, and how
//!   each arm compares with the first ([`crate::experiments::Report`]);
//! - `/`: a live page of the experiments, charts drawn in the browser from
//!   `/experiments` (HTML, CSS and JavaScript built into the binary: no
//!   build step, nothing fetched from elsewhere);
//! - `/healthz`: `ok` while the server runs.
//!
//! `/metrics`, `/plugins` and `/experiments` tell whoever can reach them
//! what the server runs, for whom. With a token (`[admin] token-sha256` in
//! the configuration, or `wasmux serve --admin-token-file`), they ask for
//! `Authorization: Bearer TOKEN`, compared by its SHA-256 in constant time;
//! `/healthz` never does, so health checks need no secret, and neither does
//! the page, which holds no data (it asks its user for the token when
//! `/experiments` wants one, and keeps it for the browser tab only). Without a token
//! the endpoint may only listen on loopback ([`Access::new`] refuses
//! anything else), and if a reload removes the only token while it listens
//! elsewhere, it refuses every request rather than open up.
//!
//! A client gets the endpoint for a while, not for as long as it likes: at
//! most [`MAX_CLIENTS`] connections at once (others wait to be accepted),
//! a request's headers within [`HEADER_TIMEOUT`], a connection asked to
//! close after [`CONNECTION_LIFETIME`], and at shutdown at most
//! [`SHUTDOWN_GRACE`] to finish. Without these, one client that sent half a
//! request kept the server from exiting, and a few hundred silent ones took
//! every file descriptor the server had for its own clients.

use std::collections::BTreeMap;
use std::path::Path;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use futures::future::{FutureExt as _, Shared};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::files::{self, Links};
use crate::experiments::Report;
use crate::runtime::CodeOrigin;
use crate::service::Service;
use crate::tenancy::{TokenHash, bearer_token};

/// Who may read the admin endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The hash of the token read from `--admin-token-file` at start-up; the
    /// configuration's `[admin] token-sha256` is read at each request, so a
    /// reload can rotate it.
    file_token: Option<TokenHash>,
    /// True when a listener is off loopback: then a token is required.
    exposed: bool,
}

impl Access {
    /// Access to an endpoint listening on `listening`, refused if one is off
    /// loopback and neither `file_token` nor `settings` gives a token.
    pub fn new(listening: &[SocketAddr], file_token: Option<TokenHash>, settings: &Settings) -> anyhow::Result<Self> {
        let mut exposed = Vec::new();
        for addr in listening {
            if !addr.ip().to_canonical().is_loopback() {
                exposed.push(addr.to_string());
            }
        }
        anyhow::ensure!(
            exposed.is_empty() || file_token.is_some() || settings.admin_token.is_some(),
            "the admin endpoint would listen on {} (off loopback) without a token: anyone who can reach it would see \
             the plugins, tenants and traffic. Give it one (--admin-token-file FILE, or [admin] token-sha256 from \
             `wasmux token`), or listen on loopback (--admin PORT)",
            exposed.join(", ")
        );
        Ok(Self { file_token, exposed: !exposed.is_empty() })
    }
}

/// Reads an admin token from `path`: the token itself, on its first line,
/// kept only as its SHA-256.
pub fn read_token_file(path: &Path) -> anyhow::Result<TokenHash> {
    read_token(path).map(|token| TokenHash::of(&token))
}

/// The admin token written on the first line of `path`, for a client of
/// the endpoint (`wasmux experiments`) or [`read_token_file`].
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let bytes = files::read_regular(path, 4096, Links::Follow).with_context(|| format!("cannot read the admin token file {}", path.display()))?;
    let text = String::from_utf8(bytes).ok().with_context(|| format!("the admin token file {} is not text", path.display()))?;
    let token = text.lines().next().map(str::trim).unwrap_or_default();
    anyhow::ensure!(!token.is_empty(), "the admin token file {} is empty", path.display());
    let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(path)?);
    if mode & 0o004 != 0 {
        tracing::warn!("the admin token file {} may be read by any user (mode {:o}); chmod o-r it", path.display(), mode & 0o7777);
    }
    Ok(token.to_owned())
}

#[derive(Clone)]
struct AdminState {
    service: Arc<Service>,
    access: Access,
}

/// The live page of the experiments, and what it loads.
const PAGE: &str = include_str!("admin/page.html");
const PAGE_SCRIPT: &str = include_str!("admin/page.js");
const PAGE_STYLE: &str = include_str!("admin/page.css");

/// `9090` or `:9090`-less port numbers mean loopback; anything else is an
/// address as `--listen` takes it.
pub fn admin_address(spec: &str) -> String {
    if spec.parse::<u16>().is_ok() { format!("127.0.0.1:{spec}") } else { spec.to_owned() }
}

/// The admin endpoint a client asks (`wasmux experiments --admin`): what
/// [`admin_address`] takes, or the endpoint's URL as `wasmux serve` prints
/// it (`wasmux admin on http://127.0.0.1:9090`), which users paste:
/// `http://` and a trailing `/` are dropped. Any other URL is left for the
/// address parser to refuse as one (the endpoint speaks plain HTTP, so an
/// `https://` would not be answered).
pub fn admin_endpoint(spec: &str) -> String {
    let bare = spec.strip_prefix("http://").map_or(spec, |rest| rest.strip_suffix('/').unwrap_or(rest));
    admin_address(bare)
}

/// Serves the admin endpoint on `listeners` to those `access` lets in,
/// until `shutdown` completes.
pub async fn run(
    listeners: Vec<TcpListener>,
    service: Arc<Service>,
    access: Access,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AdminState { service: Arc::clone(&service), access };
    let app = Router::new()
        .route("/experiments", get(experiments))
        .route("/metrics", get(metrics))
        .route("/plugins", get(plugins))
        .route_layer(middleware::from_fn_with_state(state, authorize))
        // Neither health checks nor the page (code, no data: it asks for
        // the token itself when /experiments wants one) need a token.
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(|| async { Html(PAGE) }))
        .route("/page.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], PAGE_SCRIPT) }))
        .route("/page.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], PAGE_STYLE) }))
        .with_state(service);
    let shutdown: Stop = (Box::pin(shutdown) as Pin<Box<dyn Future<Output = ()> + Send>>).shared();
    let (places, connections) = (Arc::new(Semaphore::new(MAX_CLIENTS)), TaskTracker::new());
    let mut accepting = Vec::new();
    for listener in listeners {
        tracing::info!("admin endpoint on http://{}", listener.local_addr()?);
        accepting.push(tokio::spawn(accept(listener, app.clone(), Arc::clone(&places), connections.clone(), shutdown.clone())));
    }
    for accept in accepting {
        accept.await?;
    }
    // Each connection ends within SHUTDOWN_GRACE of the shutdown.
    connections.close();
    connections.wait().await;
    Ok(())
}

/// At most this many admin clients at once (within the descriptors the
/// server keeps for more than its own clients); more wait to be accepted.
pub const MAX_CLIENTS: usize = 16;

/// A client sends each request's headers within this time, or its
/// connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection is asked to close after this long (after the answer under
/// way, if any); the page and Prometheus connect again.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// At shutdown, what a connection may take to finish its answer.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

type Stop = Shared<Pin<Box<dyn Future<Output = ()> + Send>>>;

/// Accepts admin clients on `listener`, each once a place is free, until
/// `shutdown`.
async fn accept(listener: TcpListener, app: Router, places: Arc<Semaphore>, connections: TaskTracker, shutdown: Stop) {
    loop {
        let place = tokio::select! {
            place = Arc::clone(&places).acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => return,
            },
            () = shutdown.clone() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: the next accept may succeed.
                    tracing::warn!("admin endpoint: accept failed: {e}; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = shutdown.clone() => return,
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        connections.spawn(async move {
            let _place = place;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), hyper_util::service::TowerToHyperService::new(app));
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!("admin endpoint: a connection ended: {e}");
                    }
                    return;
                }
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                () = shutdown => {}
            }
            // Finishes the answer under way, if any, then closes.
            connection.as_mut().graceful_shutdown();
            if tokio::time::timeout(SHUTDOWN_GRACE, connection).await.is_err() {
                tracing::debug!("admin endpoint: a connection did not finish within {SHUTDOWN_GRACE:?}; closed");
            }
        });
    }
}

/// Lets a request through if it carries a token the endpoint accepts, or
/// if no token is set and the endpoint listens on loopback only.
async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let tokens: Vec<TokenHash> = state.access.file_token.into_iter().chain(state.service.settings().admin_token).collect();
    if tokens.is_empty() {
        if state.access.exposed {
            let why = "forbidden: the admin endpoint listens off loopback and its token was removed from the configuration\n";
            return (StatusCode::FORBIDDEN, why).into_response();
        }
        return next.run(request).await;
    }
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(bearer_token);
    match presented {
        Some(token) if TokenHash::of(token).is_among(&tokens) => next.run(request).await,
        _ => (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized: send Authorization: Bearer TOKEN\n").into_response(),
    }
}

async fn experiments(State(service): State<Arc<Service>>) -> Json<Report> {
    Json(service.experiments())
}

async fn metrics(State(service): State<Arc<Service>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], service.metrics().encode_with(&service.experiments()))
}

/// One entry of `/plugins`.
#[derive(Serialize)]
struct PluginInfo {
    name: String,
    /// Loaded and serving.
    loaded: bool,
    /// The short version (12 hex digits of the SHA-256), and the whole hash.
    version: Option<String>,
    sha256: Option<String>,
    native: bool,
    size: Option<usize>,
    loaded_at: Option<String>,
    compile_ms: Option<f64>,
    /// `compiled`, `memory-cache` or `disk-cache`.
    code_from: Option<&'static str>,
    /// Whether the component imports the WASI subset.
    wasi: Option<bool>,
    last_error: Option<LastError>,
}

#[derive(Serialize)]
struct LastError {
    message: String,
    at: String,
}

fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

async fn plugins(State(service): State<Arc<Service>>) -> Json<Vec<PluginInfo>> {
    let plugins = service.plugins();
    let mut refusals = plugins.refusals();
    let mut all: BTreeMap<String, PluginInfo> = BTreeMap::new();
    for plugin in plugins.list() {
        let last_error = refusals.remove(&plugin.name).map(|r| LastError { message: r.error, at: timestamp(r.at) });
        all.insert(
            plugin.name.clone(),
            PluginInfo {
                name: plugin.name.clone(),
                loaded: true,
                version: Some(plugin.version.short()),
                sha256: Some(plugin.version.hex()),
                native: plugin.is_native(),
                size: Some(plugin.size),
                loaded_at: Some(timestamp(plugin.loaded_at)),
                compile_ms: Some(plugin.compile_time.as_secs_f64() * 1e3),
                code_from: Some(match plugin.origin {
                    CodeOrigin::Compiled => "compiled",
                    CodeOrigin::Memory => "memory-cache",
                    CodeOrigin::Disk => "disk-cache",
                }),
                wasi: Some(plugin.imports_wasi),
                last_error,
            },
        );
    }
    for (name, refusal) in refusals {
        all.insert(
            name.clone(),
            PluginInfo {
                name,
                loaded: false,
                version: None,
                sha256: None,
                native: false,
                size: None,
                loaded_at: None,
                compile_ms: None,
                code_from: None,
                wasi: None,
                last_error: Some(LastError { message: refusal.error, at: timestamp(refusal.at) }),
            },
        );
    }
    Json(all.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_means_loopback() {
        assert_eq!(admin_address("9090"), "127.0.0.1:9090");
        assert_eq!(admin_address(":9090"), ":9090");
        assert_eq!(admin_address("[::1]:9090"), "[::1]:9090");
    }

    #[test]
    fn a_client_takes_the_url_serve_prints() {
        assert_eq!(admin_endpoint("http://127.0.0.1:9090"), "127.0.0.1:9090");
        assert_eq!(admin_endpoint("http://[::1]:9090/"), "[::1]:9090");
        assert_eq!(admin_endpoint("9090"), "127.0.0.1:9090");
        assert_eq!(admin_endpoint("localhost:9090"), "localhost:9090");
        // Left for the address parser to refuse, as a URL.
        assert_eq!(admin_endpoint("https://127.0.0.1:9090"), "https://127.0.0.1:9090");
    }
}
