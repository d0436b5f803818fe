//! Counters and histograms for `/metrics`, in Prometheus text format
//! (prometheus-client).
//!
//! Labels are shared strings ([`Label`]), so counting a request clones
//! reference counts rather than allocating.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::kv::{KvMetrics, Operation, Outcome};
use crate::runtime::{InstanceEvents, Retirement};

/// A label value: a static string or a shared one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Label {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Label {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Shared(s) => s,
        }
    }
}

impl From<&'static str> for Label {
    fn from(s: &'static str) -> Self {
        Self::Static(s)
    }
}

impl From<Arc<str>> for Label {
    fn from(s: Arc<str>) -> Self {
        Self::Shared(s)
    }
}

impl From<&Arc<str>> for Label {
    fn from(s: &Arc<str>) -> Self {
        Self::Shared(Arc::clone(s))
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Labels of a request: who asked, which route and plugin version answered,
/// and how it ended (`ok` or an error code).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: Label,
    pub route: Label,
    pub plugin: Label,
    pub version: Label,
    pub outcome: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginLabels {
    plugin: Label,
}

/// Labels of a key-value operation: whose state (tenant, plugin base
/// name), which operation, and how it ended (`ok`, `limit`, `unavailable`,
/// …).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KvLabels {
    tenant: Label,
    plugin: Label,
    operation: Label,
    outcome: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TenantPluginLabels {
    tenant: Label,
    plugin: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RetiredLabels {
    plugin: Label,
    cause: Label,
}

/// Requests served per instance: 1 to 65536, by powers of two.
fn instance_requests_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 17))
}

/// Request latency buckets, in seconds: 50 µs to 5 s.
const DURATION_BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric wasmux exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    loads: Family<PluginLabels, Counter>,
    load_failures: Family<PluginLabels, Counter>,
    connections: Gauge,
    instances_created: Family<PluginLabels, Counter>,
    instances_retired: Family<RetiredLabels, Counter>,
    instance_requests: Family<PluginLabels, Histogram, fn() -> Histogram>,
    kv_operations: Family<KvLabels, Counter>,
    kv_read: Family<TenantPluginLabels, Counter>,
    kv_written: Family<TenantPluginLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let loads = Family::<PluginLabels, Counter>::default();
        let load_failures = Family::<PluginLabels, Counter>::default();
        let connections = Gauge::default();
        registry.register("wasmux_requests", "Requests answered, by tenant, route, plugin, version and outcome", requests.clone());
        registry.register(
            "wasmux_request_duration_seconds",
            "Time from a request's decoding to its answer, by tenant, route, plugin, version and outcome",
            durations.clone(),
        );
        registry.register("wasmux_plugin_loads", "Plugin versions loaded (at start-up or swapped in)", loads.clone());
        registry.register("wasmux_plugin_load_failures", "Plugin files refused (not a component, wrong world, …)", load_failures.clone());
        registry.register("wasmux_open_connections", "Client connections open now", connections.clone());
        let instances_created = Family::<PluginLabels, Counter>::default();
        let instances_retired = Family::<RetiredLabels, Counter>::default();
        let instance_requests =
            Family::<PluginLabels, Histogram, fn() -> Histogram>::new_with_constructor(instance_requests_histogram);
        registry.register("wasmux_instances_created", "Plugin instances created, by plugin", instances_created.clone());
        registry.register(
            "wasmux_instances_retired",
            "Plugin instances retired, by plugin and cause (count, idle, trap, timeout, memory, bad-response, host-error, dropped, swap, reload, evicted, shutdown)",
            instances_retired.clone(),
        );
        registry.register(
            "wasmux_instance_requests",
            "Requests each plugin instance served in its life, observed when it is retired",
            instance_requests.clone(),
        );
        let kv_operations = Family::<KvLabels, Counter>::default();
        let kv_read = Family::<TenantPluginLabels, Counter>::default();
        let kv_written = Family::<TenantPluginLabels, Counter>::default();
        registry.register(
            "wasmux_kv_operations",
            "Key-value operations plugins made, by tenant, plugin (its name before @), operation and outcome (ok, denied, limit, timeout, unavailable, not-a-counter)",
            kv_operations.clone(),
        );
        registry.register("wasmux_kv_read_bytes", "Bytes of values (and of keys listed) plugins read from the key-value store, by tenant and plugin", kv_read.clone());
        registry.register("wasmux_kv_written_bytes", "Bytes of values plugins wrote to the key-value store, by tenant and plugin", kv_written.clone());
        Self {
            registry,
            requests,
            durations,
            loads,
            load_failures,
            connections,
            instances_created,
            instances_retired,
            instance_requests,
            kv_operations,
            kv_read,
            kv_written,
        }
    }

    /// Counts one answered request, and how long it took.
    pub fn request(&self, labels: &RequestLabels, elapsed: Duration) {
        self.requests.get_or_create(labels).inc();
        self.durations.get_or_create(labels).observe(elapsed.as_secs_f64());
    }

    /// Counts a message refused before it was dispatched (it has no
    /// duration worth a histogram: it never reached a plugin).
    pub fn refused(&self, labels: &RequestLabels) {
        self.requests.get_or_create(labels).inc();
    }

    pub fn plugin_loaded(&self, plugin: &str) {
        self.loads.get_or_create(&PluginLabels { plugin: Label::Shared(plugin.into()) }).inc();
    }

    pub fn plugin_load_failed(&self, plugin: &str) {
        self.load_failures.get_or_create(&PluginLabels { plugin: Label::Shared(plugin.into()) }).inc();
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Everything, in the Prometheus text exposition format.
    ///
    /// (Instances are counted through [`InstanceEvents`], which the
    /// runtime calls.)
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl InstanceEvents for Metrics {
    fn created(&self, plugin: &Arc<str>) {
        self.instances_created.get_or_create(&PluginLabels { plugin: Label::from(plugin) }).inc();
    }

    fn retired(&self, plugin: &Arc<str>, cause: Retirement, served: u32) {
        let labels = RetiredLabels { plugin: Label::from(plugin), cause: Label::Static(cause.as_str()) };
        self.instances_retired.get_or_create(&labels).inc();
        self.instance_requests.get_or_create(&PluginLabels { plugin: Label::from(plugin) }).observe(f64::from(served));
    }
}

impl KvMetrics for Metrics {
    fn operation(&self, tenant: &Arc<str>, plugin: &Arc<str>, operation: Operation, outcome: Outcome, read: u64, written: u64) {
        let labels = KvLabels { tenant: Label::from(tenant), plugin: Label::from(plugin), operation: Label::Static(operation.name()), outcome: Label::Static(outcome.name()) };
        self.kv_operations.get_or_create(&labels).inc();
        if read > 0 || written > 0 {
            let labels = TenantPluginLabels { tenant: Label::from(tenant), plugin: Label::from(plugin) };
            if read > 0 {
                self.kv_read.get_or_create(&labels).inc_by(read);
            }
            if written > 0 {
                self.kv_written.get_or_create(&labels).inc_by(written);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_operations_and_bytes_by_tenant_and_plugin() {
        let metrics = Metrics::new();
        let (alpha, counter): (Arc<str>, Arc<str>) = ("alpha".into(), "counter".into());
        metrics.operation(&alpha, &counter, Operation::Increment, Outcome::Ok, 0, 2);
        metrics.operation(&alpha, &counter, Operation::Get, Outcome::Ok, 5, 0);
        metrics.operation(&alpha, &counter, Operation::Get, Outcome::Ok, 3, 0);
        metrics.operation(&alpha, &counter, Operation::Set, Outcome::Limit, 0, 0);
        let text = metrics.encode();
        for line in [
            r#"wasmux_kv_operations_total{tenant="alpha",plugin="counter",operation="increment",outcome="ok"} 1"#,
            r#"wasmux_kv_operations_total{tenant="alpha",plugin="counter",operation="get",outcome="ok"} 2"#,
            r#"wasmux_kv_operations_total{tenant="alpha",plugin="counter",operation="set",outcome="limit"} 1"#,
            r#"wasmux_kv_read_bytes_total{tenant="alpha",plugin="counter"} 8"#,
            r#"wasmux_kv_written_bytes_total{tenant="alpha",plugin="counter"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn requests_are_counted_with_their_labels() {
        let metrics = Metrics::new();
        let labels = RequestLabels {
            tenant: "default".into(),
            route: "text/json".into(),
            plugin: Label::Shared("search".into()),
            version: "0123456789ab".into(),
            outcome: "ok".into(),
        };
        metrics.request(&labels, Duration::from_micros(300));
        metrics.request(&labels, Duration::from_micros(300));
        metrics.connection_opened();
        metrics.plugin_loaded("search");
        let text = metrics.encode();
        assert!(
            text.contains(r#"wasmux_requests_total{tenant="default",route="text/json",plugin="search",version="0123456789ab",outcome="ok"} 2"#),
            "{text}"
        );
        assert!(text.contains("wasmux_request_duration_seconds_bucket{"), "{text}");
        assert!(text.contains("wasmux_open_connections 1"), "{text}");
        assert!(text.contains(r#"wasmux_plugin_loads_total{plugin="search"} 1"#), "{text}");
    }

    #[test]
    fn instances_are_counted_by_plugin_and_cause() {
        let metrics = Metrics::new();
        let plugin: Arc<str> = "counter".into();
        metrics.created(&plugin);
        metrics.created(&plugin);
        metrics.retired(&plugin, Retirement::Count, 3);
        metrics.retired(&plugin, Retirement::Trap, 1);
        let text = metrics.encode();
        for line in [
            r#"wasmux_instances_created_total{plugin="counter"} 2"#,
            r#"wasmux_instances_retired_total{plugin="counter",cause="count"} 1"#,
            r#"wasmux_instances_retired_total{plugin="counter",cause="trap"} 1"#,
            r#"wasmux_instance_requests_sum{plugin="counter"} 4.0"#,
            r#"wasmux_instance_requests_count{plugin="counter"} 2"#,
            r#"wasmux_instance_requests_bucket{le="2.0",plugin="counter"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn refusals_are_counted_but_not_timed() {
        let metrics = Metrics::new();
        let labels = RequestLabels {
            tenant: "".into(),
            route: "".into(),
            plugin: "".into(),
            version: "".into(),
            outcome: "bad-frame".into(),
        };
        metrics.refused(&labels);
        let text = metrics.encode();
        assert!(text.contains(r#"outcome="bad-frame"} 1"#), "{text}");
        assert!(!text.contains("wasmux_request_duration_seconds_count{"), "a refusal was timed:\n{text}");
    }
}
