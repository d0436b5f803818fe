//! What the server does with one decoded request: take out the fields the
//! host consumes, find the tenant, admit the request under the tenant's
//! limits, route it, call the plugin, count it (and, on a split or a
//! canary, count it in its arm's experiment, where a canary judges it),
//! and turn every failure into an error answer for the client. The socket
//! side ([`crate::server`]) never sees a plugin; this side never sees a
//! byte stream.
//!
//! Canaries are kept in the service's key-value store ([`Service::store`]:
//! in memory, the data directory, or a Redis shared by a fleet), in a
//! place no plugin can open ([`crate::experiments::store`]). A canary that
//! comes in force waits, its candidate getting nothing, until its state has
//! been read from there (a canary rolled back before a restart stays
//! rolled back); [`Service::keep_canaries`] syncs them every
//! [`SYNC_INTERVAL`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::config::Settings;
use crate::experiments::canary::{CanaryConfig, CanaryState, Transition};
use crate::experiments::rollout::describe;
use crate::experiments::store::{CanaryStore, SYNC_INTERVAL};
use crate::experiments::{ArmRef, Entry, Report, Served};
use crate::kv::{NoKvMetrics, OnDemand, StoreConfig};
use crate::message::{AUTHORIZATION_FIELD, ErrorCode, HandlerError, Message, ProtocolError};
use crate::metrics::{Label, Metrics, RequestLabels};
use crate::plugins::Plugins;
use crate::runtime::{CallContext, CallLimits, Outcomes, PluginError};
use crate::throttle::LogThrottle;

/// The answer to one request, and whether the connection must close after it.
#[derive(Debug)]
pub struct Answer {
    pub message: Message,
    /// Set when the sender may not go on (an unknown token).
    pub close: bool,
}

/// Routes requests to plugins under the current settings.
pub struct Service {
    plugins: Arc<Plugins>,
    /// Swapped whole when the configuration is reloaded.
    settings: ArcSwap<Settings>,
    metrics: Arc<Metrics>,
    /// The most memory a plugin call may be given: the instance pool was
    /// sized for it at start-up, so a reload cannot raise it.
    max_plugin_memory: usize,
    /// Log lines that requests cause (refusals, plugins failing on them),
    /// rate-limited server-wide.
    request_log: LogThrottle,
    /// The key-value store (plugins' state, and any other state the server
    /// keeps), opened the first time something needs it: the runtime's
    /// when the plugins run on one.
    store: Arc<OnDemand>,
    /// This server's name among those that keep canaries in the same
    /// store (drawn at random at start-up).
    canary_server: String,
}

/// Where a request got to, for its metrics labels and its experiment.
struct Progress {
    tenant: Label,
    route: Label,
    plugin: Label,
    version: Label,
    /// The split arm it was sent to, if its route is a split.
    arm: Option<ArmRef>,
    /// What the plugin counted with the `outcome` import.
    outcomes: Outcomes,
}

impl Progress {
    fn new() -> Self {
        let empty = Label::Static("");
        Self { tenant: empty.clone(), route: empty.clone(), plugin: empty.clone(), version: empty, arm: None, outcomes: Outcomes::default() }
    }
}

impl Service {
    /// The service of `plugins` under `settings`. Its store is the one the
    /// plugins' runtime keeps their state in, or, without a runtime (native
    /// handlers only), one in memory ([`Service::with_store`] gives another).
    pub fn new(plugins: Arc<Plugins>, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let max_plugin_memory = settings.max_plugin_memory();
        let store = match plugins.runtime() {
            Some(runtime) => Arc::clone(runtime.store()),
            None => Arc::new(OnDemand::new(StoreConfig::Memory, Arc::new(NoKvMetrics))),
        };
        let canary_server = CanaryStore::random_name();
        Self { plugins, settings: ArcSwap::from_pointee(settings), metrics, max_plugin_memory, request_log: LogThrottle::default(), store, canary_server }
    }

    /// This service with `store` as its key-value store (for a server
    /// whose plugins run natively, say; the runtime's plugins keep theirs
    /// in the store the runtime was made with).
    pub fn with_store(mut self, store: Arc<OnDemand>) -> Self {
        self.store = store;
        self
    }

    /// The key-value store: plugins' state, and whatever else the server
    /// keeps (opened on first use: [`OnDemand::get`]).
    pub fn store(&self) -> &Arc<OnDemand> {
        &self.store
    }

    /// The server-wide budget of log lines that peers cause: every line a
    /// request, a refused message or a connection can make the server
    /// write goes through it.
    pub fn request_log(&self) -> &LogThrottle {
        &self.request_log
    }

    pub fn plugins(&self) -> &Arc<Plugins> {
        &self.plugins
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Replaces the settings with ones read from a changed configuration
    /// file, refusing (and keeping the current ones) if they ask for more
    /// than the server was started with. Settings read only at start-up
    /// are reported as such; tenants whose limits did not change keep
    /// their request counts. Requests already under way keep the old
    /// settings; reused instances made under them are retired.
    pub fn reload(&self, mut settings: Settings) -> anyhow::Result<()> {
        let max_memory = self.max_plugin_memory;
        if let Some(tenant) = settings.tenants.iter().find(|t| t.plugin_memory > max_memory) {
            anyhow::bail!(
                "tenant {}: plugin-memory is {} bytes, over the {max_memory} the instance pool was sized for at start-up; restart the server to raise it",
                tenant.name,
                tenant.plugin_memory
            );
        }
        let current = self.settings();
        let (old, new) = (&current.limits, &settings.limits);
        if (old.max_connections, old.max_concurrent_calls, old.max_buffered) != (new.max_connections, new.max_concurrent_calls, new.max_buffered) {
            tracing::warn!("limits.max-connections, limits.max-concurrent-calls and limits.max-buffered take effect at the next start");
        }
        let (old, new) = (&current.runtime, &settings.runtime);
        if (old.spectre_hardening, old.cache_max_size, old.allocator) != (new.spectre_hardening, new.cache_max_size, new.allocator) || current.source != settings.source {
            tracing::warn!("[runtime] settings other than reuse, and [source], take effect at the next start");
        }
        if current.wasi_refused != settings.wasi_refused {
            tracing::warn!("[plugins.NAME] wasi takes effect at the next start");
        }
        if (&current.kv.url, current.kv.sync) != (&settings.kv.url, settings.kv.sync) {
            tracing::warn!(
                "[kv] url and sync take effect at the next start: the key-value store stays {} (its limits and kv-buckets apply now)",
                self.store.config()
            );
        }
        self.warn_about_unloaded_targets(&settings);
        settings.tenants.share_default_of(current.limits.max_concurrent_calls);
        settings.tenants.keep_counts_from(&current.tenants);
        let generation = settings.generation;
        self.settings.store(Arc::new(settings));
        // Instances made under the old settings serve no further request.
        if let Some(runtime) = self.plugins.runtime() {
            runtime.retire_generations_before(generation);
        }
        Ok(())
    }

    /// Logs every route target that no loaded plugin answers.
    pub fn warn_about_unloaded_targets(&self, settings: &Settings) {
        for target in settings.plugin_targets() {
            if self.plugins.get(target).is_none() {
                tracing::warn!("a route points at plugin {target}, which is not loaded");
            }
        }
    }

    /// Answers one request. Never fails: failures become error messages.
    pub async fn handle(&self, request: Message) -> Answer {
        let started = Instant::now();
        let mut progress = Progress::new();
        let outcome = self.dispatch(request, &mut progress).await;
        let (message, error, close) = match outcome {
            Ok(message) => (message, None, false),
            Err(error) => (error.to_message(), Some(error.code.as_str()), error.code == ErrorCode::Unauthorized),
        };
        let elapsed = started.elapsed();
        let Progress { tenant, route, plugin, version, arm, outcomes } = progress;
        if let Some(arm) = arm
            && let Some(transition) = arm.record(Served { version: version.as_str(), error, latency: elapsed }, outcomes.iter(), SystemTime::now())
            && let Some(rollout) = arm.rollout()
        {
            log_canary(tenant.as_str(), route.as_str(), rollout.config(), rollout.canary().state(), Some(transition), "");
        }
        let outcome = Label::Static(error.unwrap_or("ok"));
        self.metrics.request(&RequestLabels { tenant, route, plugin, version, outcome }, elapsed);
        Answer { message, close }
    }

    /// Counts a message refused before it could be dispatched (bad header,
    /// bad frame, timeout).
    pub fn count_refused(&self, error: &ProtocolError) {
        let Progress { tenant, route, plugin, version, .. } = Progress::new();
        let labels = RequestLabels { tenant, route, plugin, version, outcome: Label::Static(error.code.as_str()) };
        self.metrics.refused(&labels);
    }

    async fn dispatch(&self, mut request: Message, progress: &mut Progress) -> Result<Message, ProtocolError> {
        // Credentials are the host's business, never a plugin's.
        let credential = request.header.take_field(AUTHORIZATION_FIELD);
        // A full Arc, not a guard: it is held across the plugin call.
        let settings = self.settings.load_full();
        let tenant = settings.tenants.identify(credential.as_ref())?;
        progress.tenant = Label::from(&tenant.name);
        let _admitted = tenant.admit()?;

        let content_type = &request.header.content_type;
        let route = tenant.routes.resolve(content_type).ok_or_else(|| {
            ProtocolError::new(ErrorCode::NoRoute, format!("no route for content-type \"{content_type}\""))
        })?;
        progress.route = Label::from(&route.pattern);
        let choice = route.choose(&request.header);
        let name = choice.plugin;
        progress.arm = choice.arm;
        progress.plugin = Label::from(name);
        let plugin = self
            .plugins
            .get(name)
            .ok_or_else(|| ProtocolError::new(ErrorCode::NoPlugin, format!("no plugin {name} is loaded")))?;
        progress.version = Label::from(&plugin.version_label);

        let context = CallContext {
            tenant: Arc::clone(&tenant.name),
            config: tenant.config_for(name),
            limits: CallLimits { deadline: tenant.plugin_deadline, memory: tenant.plugin_memory, ..settings.limits.call },
            reuse: settings.runtime.reuse.for_plugin(name),
            generation: settings.generation,
            kv_limits: tenant.kv_limits,
            kv_buckets: settings.kv.buckets_for(name),
        };
        let (answer, outcomes) = plugin.call(&request, &context).await.map_err(|error| {
            if is_plugin_fault(&error) {
                self.request_log.log(|| {
                    tracing::warn!(plugin = %plugin.name, version = %plugin.version_label, tenant = %tenant.name, "plugin {} {error}", plugin.name);
                });
            }
            to_protocol_error(&error, name)
        })?;
        progress.outcomes = outcomes;
        Ok(answer)
    }

    /// Every split and canary route of every tenant in the settings in
    /// force: what each arm did, how it compares with the first, and each
    /// canary's state.
    pub fn experiments(&self) -> Report {
        let settings = self.settings();
        let entries = settings.tenants.iter().flat_map(|tenant| {
            tenant.routes.experiments().map(move |(route, sticky, experiment)| Entry { tenant: &tenant.name, route: &route.pattern, sticky, experiment })
        });
        Report::new(entries, |plugin| self.plugins.get(plugin).map(|p| p.version.short()))
    }

    /// Syncs every canary in force with the store (nothing without one):
    /// writes this server's counts and decisions, reads the others' and
    /// the states saved (a restart's, another server's), and logs what
    /// that changed.
    pub async fn sync_canaries(&self) {
        let settings = self.settings();
        let mut opened = None;
        for tenant in settings.tenants.iter() {
            for (route, canary) in tenant.routes.canaries() {
                let rollout = canary.rollout();
                // Opened (the data directory locked) only for a canary.
                let store = match &opened {
                    Some(store) => store,
                    None => match self.store.get() {
                        Ok(store) => opened.insert(CanaryStore::named(store, &self.canary_server)),
                        Err(error) => {
                            self.request_log.log(|| {
                                tracing::warn!("canaries: the key-value store cannot be opened, so no canary's candidate gets a request: {error:#}");
                            });
                            return;
                        }
                    },
                };
                match store.sync(&tenant.name, &route.pattern, rollout, SystemTime::now()).await {
                    Ok(absorbed) => {
                        let state = rollout.canary().state().clone();
                        if absorbed.adopted.is_some() {
                            let whence = if absorbed.started { " (restored from the store)" } else { " (decided by another server)" };
                            log_canary(&tenant.name, &route.pattern, rollout.config(), &state, None, whence);
                        } else if absorbed.started {
                            log_canary(&tenant.name, &route.pattern, rollout.config(), &state, None, " (started)");
                        }
                        if let Some(transition) = absorbed.transition {
                            log_canary(&tenant.name, &route.pattern, rollout.config(), &state, Some(transition), " (on every server's counts)");
                        }
                    }
                    Err(error) => {
                        let waiting = if rollout.is_known() { "" } else { "; its candidate gets no request until it can be read" };
                        self.request_log.log(|| {
                            tracing::warn!(tenant = %tenant.name, route = %route.pattern, "canary: cannot sync with the store: {error}{waiting}");
                        });
                    }
                }
            }
        }
    }

    /// Syncs the canaries every [`SYNC_INTERVAL`] until `stop` completes.
    pub async fn keep_canaries(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let mut ticks = tokio::time::interval(SYNC_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = ticks.tick() => self.sync_canaries().await,
            }
        }
        // What changed since the last tick, for the next run.
        self.sync_canaries().await;
    }
}

/// Logs a canary's change: a rollback as a warning, with its figures.
fn log_canary(tenant: &str, route: &str, config: &CanaryConfig, state: &CanaryState, transition: Option<Transition>, whence: &str) {
    let sentence = describe(config, state);
    let transition = transition.map(|t| serde_json::to_value(t).ok().and_then(|v| v["transition"].as_str().map(str::to_owned)).unwrap_or_default());
    let transition = transition.as_deref().unwrap_or("restored");
    if matches!(state, CanaryState::RolledBack { .. }) {
        tracing::warn!(tenant, route, transition, "canary: {sentence}{whence}");
    } else {
        tracing::info!(tenant, route, transition, "canary: {sentence}{whence}");
    }
}

/// The error answer for the client when plugin `plugin` did not answer.
fn to_protocol_error(error: &PluginError, plugin: &str) -> ProtocolError {
    let (code, message) = match error {
        PluginError::Handler(HandlerError::BadRequest(m)) => (ErrorCode::BadRequest, format!("bad request for plugin {plugin}: {m}")),
        PluginError::Handler(HandlerError::Unsupported(m)) => {
            (ErrorCode::Unsupported, format!("plugin {plugin} does not support this request: {m}"))
        }
        PluginError::Handler(HandlerError::Internal(m)) => (ErrorCode::PluginFailed, format!("plugin {plugin} failed: {m}")),
        PluginError::Trap(_) | PluginError::Instantiate(_) => (ErrorCode::PluginFailed, format!("plugin {plugin} {error}")),
        PluginError::Timeout(_) => (ErrorCode::PluginTimeout, format!("plugin {plugin} {error}")),
        PluginError::OutOfMemory { .. } => (ErrorCode::PluginMemory, format!("plugin {plugin} {error}")),
        PluginError::BadResponse(_) | PluginError::InvalidData(_) | PluginError::TooMuchData { .. } => {
            (ErrorCode::PluginBadResponse, format!("plugin {plugin} {error}"))
        }
        PluginError::NoSlot(_) => (ErrorCode::Overloaded, format!("plugin {plugin} {error}; retry later")),
        PluginError::ShuttingDown => (ErrorCode::Internal, error.to_string()),
    };
    ProtocolError::new(code, message)
}

/// True if the fault is the plugin's (worth a warning in the log), not the
/// request's.
fn is_plugin_fault(error: &PluginError) -> bool {
    !matches!(
        error,
        PluginError::Handler(HandlerError::BadRequest(_) | HandlerError::Unsupported(_)) | PluginError::NoSlot(_) | PluginError::ShuttingDown
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    use crate::native::GUIDE_HANDLERS;
    use crate::plugins::Plugin;
    use crate::tenancy::TokenHash;

    /// A service with the guide's native handlers and two of the tests' own,
    /// under the configuration `config` (TOML).
    fn service(config: &str) -> Service {
        let metrics = Arc::new(Metrics::new());
        let plugins = Arc::new(Plugins::new(None, Arc::clone(&metrics)));
        for (name, handler) in GUIDE_HANDLERS {
            plugins.insert(Plugin::native(name, handler));
        }
        plugins.insert(Plugin::native("fields", echo_fields));
        plugins.insert(Plugin::native("failing", |_| Err(HandlerError::Internal("out of luck".into()))));
        Service::new(plugins, Settings::parse(config).expect("a valid configuration"), metrics)
    }

    /// Answers with the request's extra header fields, as JSON text.
    fn echo_fields(request: &Message) -> Result<Message, HandlerError> {
        let names: Vec<String> = request.header.extra.iter().map(|(name, value)| format!("{name}={value}")).collect();
        Ok(Message::new("text/plain", "utf-8", names.join(",")))
    }

    fn search(value: &str) -> Message {
        Message::new("text/json", "utf-8", format!(r#"{{"action": "search", "value": "{value}"}}"#))
    }

    fn with_field(mut message: Message, name: &str, value: &str) -> Message {
        message.header.extra.insert(name.into(), Value::String(value.into()));
        message
    }

    fn result(answer: &Answer) -> String {
        let body: Value = serde_json::from_slice(&answer.message.content).expect("a JSON answer");
        body["result"].as_str().expect("a result").to_owned()
    }

    fn code(answer: &Answer) -> Option<String> {
        answer.message.as_error().map(|(code, _)| code)
    }

    fn tenants_config() -> String {
        format!(
            r#"
            [tenants.default]
            [tenants.alpha]
            token-sha256 = "{}"
            limits = {{ concurrent-requests = 1 }}
            routes."text/plain" = "fields"
            routes."x/fail" = "failing"
            routes."x/none" = "missing"
            "#,
            TokenHash::of("alpha-token")
        )
    }

    #[tokio::test]
    async fn routes_by_content_type_to_the_guides_handlers() {
        let service = service("");
        let answer = service.handle(search("morpheus")).await;
        assert_eq!(result(&answer), "Follow the white rabbit. 🐰");
        assert!(!answer.close);
        let answer = service.handle(Message::new("binary/x", "binary", &b"0123456789abc"[..])).await;
        assert_eq!(&answer.message.content[..], b"First 10 bytes of request: 0123456789");
    }

    #[tokio::test]
    async fn no_route_and_no_plugin_are_error_answers_that_keep_the_connection() {
        let service = service(&tenants_config());
        let token = "Bearer alpha-token";
        let answer = service.handle(with_field(Message::new("x/none", "binary", ""), AUTHORIZATION_FIELD, token)).await;
        assert_eq!((code(&answer).as_deref(), answer.close), (Some("no-plugin"), false));
        let service = self::service("[routes]\n\"text/json\" = \"search\"\n");
        let answer = service.handle(Message::new("image/png", "binary", "")).await;
        assert_eq!((code(&answer).as_deref(), answer.close), (Some("no-route"), false));
    }

    #[tokio::test]
    async fn tokens_pick_the_tenant_and_never_reach_the_plugin() {
        let service = service(&tenants_config());
        let request = with_field(with_field(Message::new("text/plain", "utf-8", "hi"), "user", "ann"), AUTHORIZATION_FIELD, "Bearer alpha-token");
        let answer = service.handle(request).await;
        assert_eq!(&answer.message.content[..], br#"user="ann""#, "the credential was passed on");

        let answer = service.handle(with_field(search("ring"), AUTHORIZATION_FIELD, "Bearer wrong")).await;
        assert_eq!((code(&answer).as_deref(), answer.close), (Some("unauthorized"), true));
        // No token: the default tenant, which has the server's routes.
        assert_eq!(result(&service.handle(search("ring")).await), "In the caves beneath the Misty Mountains. 💍");
    }

    #[tokio::test]
    async fn the_credential_is_taken_out_whatever_the_case_of_its_name() {
        let service = service(&tenants_config());
        let request = with_field(with_field(Message::new("text/plain", "utf-8", "hi"), "user", "ann"), "Authorization", "Bearer alpha-token");
        let answer = service.handle(request).await;
        assert_eq!(&answer.message.content[..], br#"user="ann""#, "not alpha's route, or the credential was passed on");
    }

    #[tokio::test]
    async fn plugin_failures_name_the_plugin() {
        let service = service(&tenants_config());
        let answer = service.handle(with_field(Message::new("x/fail", "binary", ""), AUTHORIZATION_FIELD, "Bearer alpha-token")).await;
        assert_eq!(code(&answer).as_deref(), Some("plugin-failed"));
        assert_eq!(result(&answer), "Error: plugin failing failed: out of luck");
        let answer = service.handle(Message::new("text/json", "utf-8", "not json")).await;
        assert_eq!(code(&answer).as_deref(), Some("bad-request"));
        assert!(result(&answer).starts_with("Error: bad request for plugin search: "), "{}", result(&answer));
    }

    #[tokio::test]
    async fn requests_are_counted_by_tenant_route_plugin_and_outcome() {
        let service = service(&tenants_config());
        service.handle(search("ring")).await;
        service.handle(search("ring")).await;
        service.handle(with_field(search("ring"), AUTHORIZATION_FIELD, "Bearer wrong")).await;
        let text = service.metrics().encode();
        let version = service.plugins().get("search").map(|p| p.version.short()).unwrap_or_default();
        let ok = format!(r#"wasmux_requests_total{{tenant="default",route="text/json",plugin="search",version="{version}",outcome="ok"}} 2"#);
        assert!(text.lines().any(|line| line == ok), "{ok} not in\n{text}");
        let refused = r#"wasmux_requests_total{tenant="",route="",plugin="",version="",outcome="unauthorized"} 1"#;
        assert!(text.lines().any(|line| line == refused), "{refused} not in\n{text}");
    }

    #[tokio::test]
    async fn requests_on_a_split_are_counted_in_their_arm_per_tenant() {
        let config = format!("[routes]\n\"text/json\" = {{ split = {{ \"search\" = 1, \"failing\" = 1 }} }}\n{}", tenants_config());
        let service = service(&config);
        for _ in 0..4 {
            service.handle(search("ring")).await;
        }
        service.handle(with_field(search("ring"), AUTHORIZATION_FIELD, "Bearer alpha-token")).await;
        let report = service.experiments();
        let counts: Vec<(&str, &str, &str, u64, u64)> = report
            .tenants
            .iter()
            .flat_map(|t| t.routes.iter().flat_map(move |r| r.arms.iter().map(move |a| (&*t.tenant, &*r.route, &*a.plugin, a.requests, a.errors))))
            .collect();
        assert_eq!(
            counts,
            [("alpha", "text/json", "failing", 1, 1), ("alpha", "text/json", "search", 0, 0), ("default", "text/json", "failing", 2, 2), ("default", "text/json", "search", 2, 0)]
        );
        let failing = &report.tenants[1].routes[0].arms[0];
        assert_eq!(failing.errors_by_code, std::collections::BTreeMap::from([("plugin-failed".to_owned(), 2)]));
    }

    const FAILING_CANARY: &str = "[routes.\"text/json\".canary]\nstable = \"search\"\ncandidate = \"failing\"\nsteps = [10, 50, 100]\n\
        step-after = \"1s\"\nmin-requests = 20\nmax-extra-error-rate = 0.01\nmax-p99-ratio = 3.0\n";

    #[tokio::test]
    async fn a_canary_to_a_failing_candidate_rolls_back_after_a_few_failed_requests() {
        let service = service(FAILING_CANARY);
        // Until its state is read from the store, the candidate gets nothing.
        for _ in 0..30 {
            assert_eq!(result(&service.handle(search("ring")).await), "In the caves beneath the Misty Mountains. 💍");
        }
        service.sync_canaries().await;
        let mut failed = 0;
        for _ in 0..300 {
            let answer = service.handle(search("ring")).await;
            failed += usize::from(code(&answer).as_deref() == Some("plugin-failed"));
        }
        assert!((1..=3).contains(&failed), "{failed} requests reached the failing candidate");
        let report = service.experiments();
        let route = &report.tenants[0].routes[0];
        let canary = route.canary.as_ref().expect("a canary's report");
        assert!(matches!(canary.state, CanaryState::RolledBack { guard: crate::experiments::canary::Guard::ErrorRate, .. }), "{canary:?}");
        assert_eq!((canary.share, route.arms[1].weight, route.arms[0].weight), (0, 0, 100));
        assert_eq!((route.arms[1].plugin.as_str(), route.arms[1].requests, route.arms[0].requests), ("failing", failed as u64, 330 - failed as u64));
        // A reload that leaves the canary alone keeps it rolled back.
        service.reload(Settings::parse(&format!("{FAILING_CANARY}[plugins.search]\ngreeting = \"hi\"\n")).expect("valid")).expect("reloaded");
        service.sync_canaries().await;
        assert_eq!(service.experiments().tenants[0].routes[0].canary.as_ref().map(|c| c.share), Some(0));
        // One that changes it starts it afresh.
        service.reload(Settings::parse(&FAILING_CANARY.replace("0.01", "0.02")).expect("valid")).expect("reloaded");
        service.sync_canaries().await;
        assert_eq!(service.experiments().tenants[0].routes[0].canary.as_ref().map(|c| c.share), Some(10));
    }

    #[tokio::test]
    async fn a_tenant_over_its_concurrent_requests_is_told_it_is_overloaded() {
        let service = service(&tenants_config());
        let settings = service.settings();
        let alpha = settings.tenants.get("alpha").expect("tenant alpha");
        let _held = alpha.admit().expect("the first request is admitted");
        let answer = service.handle(with_field(Message::new("text/plain", "utf-8", ""), AUTHORIZATION_FIELD, "Bearer alpha-token")).await;
        assert_eq!((code(&answer).as_deref(), answer.close), (Some("overloaded"), false));
        assert!(result(&answer).contains("at its limit of 1 concurrent requests"), "{}", result(&answer));
    }

    #[tokio::test]
    async fn a_reload_may_not_raise_plugin_memory_past_the_pool() {
        let service = service("");
        let raised = Settings::parse("[tenants.default]\nlimits = { plugin-memory = \"1 GiB\" }\n").expect("valid");
        let error = service.reload(raised).expect_err("refused").to_string();
        assert!(error.contains("the instance pool was sized for at start-up"), "{error}");
        let routes = Settings::parse("[routes]\n\"*\" = \"binary-echo\"\n").expect("valid");
        service.reload(routes).expect("accepted");
        let answer = service.handle(search("ring")).await;
        assert!(answer.message.content.starts_with(b"First 10 bytes of request: "), "the new routes are not in force");
    }

    /// `max-concurrent-calls` takes effect at the next start, and so does
    /// the `default` tenant's share of it: a reload that raises it leaves
    /// anonymous clients half the slots the server has (they were given
    /// half the new value, more than the server has, so all of them).
    #[tokio::test]
    async fn a_reload_of_max_concurrent_calls_keeps_the_default_tenants_share() {
        let share = |service: &Service| service.settings().tenants.get("default").and_then(|t| t.limits.concurrent_requests).map(std::num::NonZeroU32::get);
        let service = service(&format!("[limits]\nmax-concurrent-calls = 2\n{}", tenants_config()));
        assert_eq!(share(&service), Some(1));
        service.reload(Settings::parse(&format!("[limits]\nmax-concurrent-calls = 1000\n{}", tenants_config())).expect("valid")).expect("reloaded");
        assert_eq!(share(&service), Some(1), "the share of the slots in effect");
        let default = service.settings().tenants.get("default").cloned().expect("the default tenant");
        let _held = default.admit().expect("one request is admitted");
        assert!(default.admit().is_err(), "a second is over the share");
        // A share the file sets is the file's.
        let own = tenants_config().replace("[tenants.default]", "[tenants.default]\nlimits = { concurrent-requests = 7 }");
        service.reload(Settings::parse(&format!("[limits]\nmax-concurrent-calls = 1000\n{own}")).expect("valid")).expect("reloaded");
        assert_eq!(share(&service), Some(7));
    }

    /// Where the state is kept is fixed at start-up; the limits and the
    /// bucket grants are the reloaded settings'. And a server whose
    /// plugins need no store never opens its data directory.
    #[tokio::test]
    async fn a_reload_keeps_the_store_and_applies_limits_and_grants() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let embedded = StoreConfig::Embedded { dir: dir.path().to_path_buf(), durability: crate::kv::Durability::Process };
        let service = service("").with_store(Arc::new(OnDemand::new(embedded.clone(), Arc::new(NoKvMetrics))));
        let reloaded = Settings::parse(
            "[kv]\nurl = \"redis://127.0.0.1:1\"\nsync = true\nmax-keys = 7\n[plugins.search]\nkv-buckets = [\"shared\"]\n",
        )
        .expect("valid");
        service.reload(reloaded).expect("a change of [kv] url and sync is accepted, for the next start");
        assert_eq!(service.store().config(), &embedded, "the store in use stays");
        let settings = service.settings();
        assert_eq!(settings.tenants.get("default").map(|t| t.kv_limits.max_keys), Some(7), "the limits apply now");
        assert!(settings.kv.buckets_for("search").contains("shared"), "the grants apply now");
        service.handle(search("ring")).await;
        assert!(!service.store().is_open(), "nothing needed the store, so nothing opened the data directory");
        assert!(std::fs::read_dir(dir.path()).expect("the directory").next().is_none(), "the data directory was touched");
    }
}
