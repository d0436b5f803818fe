//! What the server does with one decoded request: route it, call the
//! plugin, and turn every failure into an error message for the client.
//! The socket side ([`crate::server`]) never sees a plugin; this side never
//! sees a byte stream.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::codec::{ErrorCode, Message, ProtocolError};
use crate::config::Settings;
use crate::registry::PluginRegistry;
use crate::runtime::CallContext;

/// Name of the tenant every request belongs to until tenants are configured.
pub const DEFAULT_TENANT: &str = "default";

/// Routes requests to plugins under the current settings.
pub struct Service {
    registry: Arc<PluginRegistry>,
    /// Swapped whole when the configuration is reloaded.
    settings: ArcSwap<Settings>,
    default_tenant: Arc<str>,
}

impl Service {
    pub fn new(registry: Arc<PluginRegistry>, settings: Settings) -> Self {
        Self { registry, settings: ArcSwap::from_pointee(settings), default_tenant: DEFAULT_TENANT.into() }
    }

    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
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
    /// are reported as such.
    pub fn reload(&self, settings: Settings) -> anyhow::Result<()> {
        let max_memory = self.registry.runtime().settings().max_memory;
        anyhow::ensure!(
            settings.limits.call.memory <= max_memory,
            "limits.plugin-memory is {} bytes, over the {max_memory} the instance pool was sized for at start-up; restart the server to raise it",
            settings.limits.call.memory
        );
        let current = self.settings();
        let (old, new) = (&current.limits, &settings.limits);
        if (old.max_connections, old.max_concurrent_calls) != (new.max_connections, new.max_concurrent_calls) {
            tracing::warn!("limits.max-connections and limits.max-concurrent-calls take effect at the next start");
        }
        for target in settings.routes.targets() {
            if self.registry.get(target).is_none() {
                tracing::warn!("a route points at plugin {target}, which is not loaded");
            }
        }
        self.set_settings(settings);
        Ok(())
    }

    /// Answers one request. Never fails: failures become error messages.
    pub async fn handle(&self, request: &Message) -> Message {
        match self.dispatch(request).await {
            Ok(response) => response,
            Err(error) => error.to_message(),
        }
    }

    async fn dispatch(&self, request: &Message) -> Result<Message, ProtocolError> {
        // A full Arc, not a guard: it is held across the plugin call.
        let settings = self.settings.load_full();
        let content_type = &request.header.content_type;
        let name = settings.routes.resolve(content_type).ok_or_else(|| {
            ProtocolError::new(ErrorCode::NoRoute, format!("no route for content-type \"{content_type}\""))
        })?;
        let plugin = self
            .registry
            .get(name)
            .ok_or_else(|| ProtocolError::new(ErrorCode::NoPlugin, format!("no plugin {name} is loaded")))?;
        let context = CallContext {
            tenant: Arc::clone(&self.default_tenant),
            config: settings.config_for(name),
            limits: settings.limits.call,
        };
        self.registry.runtime().call(&plugin, request, &context).await.map_err(|error| {
            if error.is_plugin_fault() {
                tracing::warn!(plugin = %plugin.name, version = %plugin.version, "plugin {} {error}", plugin.name);
            }
            error.to_protocol_error(name)
        })
    }
}
