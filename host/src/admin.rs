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
//! Keep it on loopback (the default when only a port is given): it tells
//! anyone who can reach it what the server runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::experiments::Report;
use crate::runtime::Origin;
use crate::service::Service;

/// The live page of the experiments, and what it loads.
const PAGE: &str = include_str!("admin/page.html");
const PAGE_SCRIPT: &str = include_str!("admin/page.js");
const PAGE_STYLE: &str = include_str!("admin/page.css");

/// `9090` or `:9090`-less port numbers mean loopback; anything else is an
/// address as `--listen` takes it.
pub fn admin_address(spec: &str) -> String {
    if spec.parse::<u16>().is_ok() { format!("127.0.0.1:{spec}") } else { spec.to_owned() }
}

/// Serves the admin endpoint on `listeners` until `shutdown` completes.
pub async fn run(listeners: Vec<TcpListener>, service: Arc<Service>, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/page.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], PAGE_SCRIPT) }))
        .route("/page.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], PAGE_STYLE) }))
        .route("/experiments", get(experiments))
        .route("/metrics", get(metrics))
        .route("/plugins", get(plugins))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(service);
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let mut servers = Vec::new();
    for listener in listeners {
        tracing::info!("admin endpoint on http://{}", listener.local_addr()?);
        let serve = axum::serve(listener, app.clone()).with_graceful_shutdown(shutdown.clone());
        servers.push(tokio::spawn(async move { serve.await }));
    }
    for server in servers {
        server.await??;
    }
    Ok(())
}

async fn experiments(State(service): State<Arc<Service>>) -> Json<Report> {
    Json(service.experiments())
}

async fn metrics(State(service): State<Arc<Service>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], service.metrics().encode())
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
    let registry = service.registry();
    let mut refusals = registry.refusals();
    let mut all: BTreeMap<String, PluginInfo> = BTreeMap::new();
    for plugin in registry.list() {
        let last_error = refusals.remove(&plugin.name).map(|r| LastError { message: r.error, at: timestamp(r.at) });
        all.insert(
            plugin.name.clone(),
            PluginInfo {
                name: plugin.name.clone(),
                loaded: true,
                version: Some(plugin.version.to_string()),
                sha256: Some(plugin.version.full_hex()),
                native: plugin.is_native(),
                size: Some(plugin.size),
                loaded_at: Some(timestamp(plugin.loaded_at)),
                compile_ms: Some(plugin.compile_time.as_secs_f64() * 1e3),
                code_from: Some(match plugin.origin {
                    Origin::Compiled => "compiled",
                    Origin::Memory => "memory-cache",
                    Origin::Disk => "disk-cache",
                }),
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
}
