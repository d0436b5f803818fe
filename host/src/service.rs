//! What the server does with one decoded request: find its tenant, admit
//! it under the tenant's limits, route it, call the plugin, count it, and
//! turn every failure into an error message for the client. The socket side
//! ([`crate::server`]) never sees a plugin; this side never sees a byte
//! stream.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::codec::{ErrorCode, Message, ProtocolError};
use crate::config::Settings;
use crate::metrics::{Label, Metrics, RequestLabels};
use crate::registry::PluginRegistry;
use crate::runtime::CallContext;

/// The answer to one request, and whether the connection must close after it.
#[derive(Debug)]
pub struct Answer {
    pub message: Message,
    /// Set when the sender may not go on (an unknown token).
    pub close: bool,
}

/// Routes requests to plugins under the current settings.
pub struct Service {
    registry: Arc<PluginRegistry>,
    /// Swapped whole when the configuration is reloaded.
    settings: ArcSwap<Settings>,
    metrics: Arc<Metrics>,
}

/// Where a request got to, for its metrics labels.
struct Progress {
    tenant: Label,
    route: Label,
    plugin: Label,
    version: Label,
}

impl Progress {
    fn new() -> Self {
        Self { tenant: Label::Static(""), route: Label::Static(""), plugin: Label::Static(""), version: Label::Static("") }
    }
}

impl Service {
    pub fn new(registry: Arc<PluginRegistry>, settings: Settings) -> Self {
        let metrics = Arc::clone(registry.metrics());
        Self { registry, settings: ArcSwap::from_pointee(settings), metrics }
    }

    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Replaces the settings; requests already under way keep the old ones.
    pub fn set_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// Replaces the settings with ones read from a changed configuration
    /// file, refusing (and keeping the current ones) if they ask for more
    /// than the server was started with. Settings read only at start-up
    /// are reported as such; tenants whose limits did not change keep
    /// their request counts.
    pub fn reload(&self, mut settings: Settings) -> anyhow::Result<()> {
        let max_memory = self.registry.runtime().settings().max_memory;
        if let Some(tenant) = settings.tenants.iter().find(|t| t.call_limits.memory > max_memory) {
            anyhow::bail!(
                "tenant {}: plugin-memory is {} bytes, over the {max_memory} the instance pool was sized for at start-up; restart the server to raise it",
                tenant.name,
                tenant.call_limits.memory
            );
        }
        let current = self.settings();
        let (old, new) = (&current.limits, &settings.limits);
        if (old.max_connections, old.max_concurrent_calls) != (new.max_connections, new.max_concurrent_calls) {
            tracing::warn!("limits.max-connections and limits.max-concurrent-calls take effect at the next start");
        }
        if current.runtime != settings.runtime {
            tracing::warn!("[runtime] settings take effect at the next start");
        }
        self.warn_about_unloaded_targets(&settings);
        settings.tenants.keep_counts_from(&current.tenants);
        self.set_settings(settings);
        Ok(())
    }

    /// Logs every route target that no loaded plugin answers.
    pub fn warn_about_unloaded_targets(&self, settings: &Settings) {
        for target in settings.plugin_targets() {
            if self.registry.get(target).is_none() {
                tracing::warn!("a route points at plugin {target}, which is not loaded");
            }
        }
    }

    /// Answers one request. Never fails: failures become error messages.
    pub async fn handle(&self, request: &Message) -> Answer {
        let started = Instant::now();
        let mut progress = Progress::new();
        let outcome = self.dispatch(request, &mut progress).await;
        let (message, outcome, close) = match outcome {
            Ok(message) => (message, Label::Static("ok"), false),
            Err(error) => (error.to_message(), Label::Static(error.code.as_str()), error.code == ErrorCode::Unauthorized),
        };
        let Progress { tenant, route, plugin, version } = progress;
        self.metrics.request(&RequestLabels { tenant, route, plugin, version, outcome }, started.elapsed());
        Answer { message, close }
    }

    /// Counts a message refused before it could be dispatched (bad header,
    /// bad frame, timeout).
    pub fn count_refused(&self, error: &ProtocolError) {
        let Progress { tenant, route, plugin, version } = Progress::new();
        let labels = RequestLabels { tenant, route, plugin, version, outcome: Label::Static(error.code.as_str()) };
        self.metrics.refused(&labels);
    }

    async fn dispatch(&self, request: &Message, progress: &mut Progress) -> Result<Message, ProtocolError> {
        // A full Arc, not a guard: it is held across the plugin call.
        let settings = self.settings.load_full();
        let tenant = settings.tenants.identify(&request.header)?;
        progress.tenant = Label::from(&tenant.name);
        let _admitted = tenant.admit()?;

        let content_type = &request.header.content_type;
        let route = tenant.routes.resolve(content_type).ok_or_else(|| {
            ProtocolError::new(ErrorCode::NoRoute, format!("no route for content-type \"{content_type}\""))
        })?;
        progress.route = Label::from(&route.pattern);
        let name = route.pick(&request.header);
        progress.plugin = Label::from(name);
        let plugin = self
            .registry
            .get(name)
            .ok_or_else(|| ProtocolError::new(ErrorCode::NoPlugin, format!("no plugin {name} is loaded")))?;
        progress.version = Label::from(&plugin.version_label);

        let context = CallContext { tenant: Arc::clone(&tenant.name), config: tenant.config_for(name), limits: tenant.call_limits };
        self.registry.runtime().call(&plugin, request, &context).await.map_err(|error| {
            if error.is_plugin_fault() {
                tracing::warn!(plugin = %plugin.name, version = %plugin.version, tenant = %tenant.name, "plugin {} {error}", plugin.name);
            }
            error.to_protocol_error(name)
        })
    }
}
