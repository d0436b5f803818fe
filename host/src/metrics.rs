//! Counters and histograms for `/metrics`, in Prometheus text format
//! (prometheus-client).
//!
//! Labels are shared strings ([`Label`]), so counting a request clones
//! reference counts rather than allocating.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::experiments::Report;
use crate::experiments::canary::{CanaryState, Guard};
use crate::kv::{KvMetrics, Operation, Outcome, PluginKvMetrics};
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

/// The request series of each plugin version, so that those of versions
/// swapped out longer ago than the last swap can be dropped
/// ([`Metrics::serving`]).
#[derive(Default)]
struct VersionSeries {
    /// Per plugin: the version it serves, and the one it served before.
    recent: HashMap<String, [Option<String>; 2]>,
    /// Per plugin and version: the labels of its series.
    series: HashMap<(String, String), HashSet<RequestLabels>>,
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
    kv_plugins: RwLock<KvPlugins>,
    versions: Mutex<VersionSeries>,
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
            kv_plugins: RwLock::default(),
            versions: Mutex::default(),
        }
    }

    /// Counts one answered request, and how long it took.
    pub fn request(&self, labels: &RequestLabels, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // The series exist (nearly always): their families' read locks only.
        let counted = self.requests.get(labels).map(|count| count.inc()).is_some();
        if counted && self.durations.get(labels).map(|histogram| histogram.observe(seconds)).is_some() {
            return;
        }
        self.first_of(labels, !counted, Some(seconds));
    }

    /// Counts a message refused before it was dispatched (it has no
    /// duration worth a histogram: it never reached a plugin).
    pub fn refused(&self, labels: &RequestLabels) {
        if self.requests.get(labels).map(|count| count.inc()).is_none() {
            self.first_of(labels, true, None);
        }
    }

    /// Makes the series of `labels`, counting the request (if `count`) and
    /// observing its duration (if any), and notes them under their plugin's
    /// version; under the lock [`Self::serving`] drops them with, so that
    /// no series is made and missed.
    fn first_of(&self, labels: &RequestLabels, count: bool, seconds: Option<f64>) {
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        let version = (labels.plugin.as_str().to_owned(), labels.version.as_str().to_owned());
        versions.series.entry(version).or_default().insert(labels.clone());
        if count {
            self.requests.get_or_create(labels).inc();
        }
        if let Some(seconds) = seconds {
            self.durations.get_or_create(labels).observe(seconds);
        }
    }

    /// Plugin `plugin` now serves `version`. The request series of its
    /// versions other than this one and the one it served until now are
    /// dropped: a server swapping a plugin for weeks (`wasmux dev`, a
    /// registry's new tags) keeps two versions' series per plugin, not
    /// every one's. Requests still running on the version before count in
    /// its series; a request that finishes on an older one makes its
    /// series again, dropped at the next swap.
    pub fn serving(&self, plugin: &str, version: &str) {
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        let VersionSeries { recent, series } = &mut *versions;
        let recent = recent.entry(plugin.to_owned()).or_default();
        if recent[0].as_deref() == Some(version) {
            return;
        }
        recent[1] = recent[0].replace(version.to_owned());
        series.retain(|(of, at), labels| {
            let dropped = of == plugin && !recent.iter().flatten().any(|kept| kept == at);
            if dropped {
                for labels in labels.iter() {
                    self.requests.remove(labels);
                    self.durations.remove(labels);
                }
            }
            !dropped
        });
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

    /// Everything, and the experiments of `report` (each split's and
    /// canary's arms, each canary's state): `/metrics`.
    pub fn encode_with(&self, report: &Report) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut experiments = Registry::default();
        experiments.register_collector(Box::new(ExperimentMetrics(report.clone())));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &experiments);
        let _ = encode_eof(&mut out);
        out
    }
}

/// The experiments' figures as metrics, read from a report when scraped:
/// the same counts `/experiments` shows, so that Prometheus, summing a
/// fleet's, gets what `wasmux experiments --admin A --admin B` merges.
///
/// - `wasmux_experiment_requests_total`, `…_errors_total` (by `code`) and
///   `…_outcomes_total` (by `outcome`), per `tenant`, `route` and `plugin`
///   (the arm). They count from when the split or canary was made (a
///   reload that changes it starts them afresh, which Prometheus reads as
///   a counter reset).
/// - `wasmux_experiment_latency_seconds`: a histogram per arm whose
///   buckets are those of the experiments' own histograms, four per
///   doubling (Prometheus' native schema 2), from 7.6 µs to 64 s. A
///   `histogram_quantile` over them falls in the bucket of the true
///   percentile, each bucket 19 % wider than the last, as `wasmux
///   experiments` does: the two agree to within that bucket.
/// - `wasmux_canary_state` (1 for the state it is in, 0 for the others),
///   `wasmux_canary_candidate_share` (percent), and
///   `wasmux_canary_guard_breached` (1 for the guard that rolled it back).
#[derive(Debug)]
struct ExperimentMetrics(Report);

/// The lowest bucket edge exported: 2^(−68/4) s, 7.6 µs (a request's
/// latency is never below it; the buckets below add nothing).
const LOWEST_EXPORTED_EDGE: f64 = 7.6e-6;

impl prometheus_client::collector::Collector for ExperimentMetrics {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        type Labels = Vec<(&'static str, String)>;
        let mut requests: Vec<(Labels, u64)> = Vec::new();
        let mut errors: Vec<(Labels, u64)> = Vec::new();
        let mut outcomes: Vec<(Labels, u64)> = Vec::new();
        // Each arm's labels, sum of seconds, count, and (upper edge, count) buckets.
        type Latencies = (Labels, f64, u64, Vec<(f64, u64)>);
        let mut latencies: Vec<Latencies> = Vec::new();
        let mut states: Vec<(Labels, i64)> = Vec::new();
        let mut shares: Vec<(Labels, i64)> = Vec::new();
        let mut breaches: Vec<(Labels, i64)> = Vec::new();
        for tenant in &self.0.tenants {
            for route in &tenant.routes {
                let base = || vec![("tenant", tenant.tenant.clone()), ("route", route.route.clone())];
                for arm in &route.arms {
                    let labels = || {
                        let mut labels = base();
                        labels.push(("plugin", arm.plugin.clone()));
                        labels
                    };
                    requests.push((labels(), arm.requests));
                    for (code, count) in &arm.errors_by_code {
                        let mut labels = labels();
                        labels.push(("code", code.clone()));
                        errors.push((labels, *count));
                    }
                    for (name, count) in &arm.outcomes {
                        let mut labels = labels();
                        labels.push(("outcome", name.clone()));
                        outcomes.push((labels, *count));
                    }
                    let mut buckets: Vec<(f64, u64)> = Vec::new();
                    for bucket in arm.latency_histogram.buckets() {
                        let high = if bucket.high.is_finite() { bucket.high } else { f64::MAX };
                        match buckets.last_mut() {
                            // Below the lowest edge exported: into it.
                            Some((edge, count)) if *edge < LOWEST_EXPORTED_EDGE => {
                                *edge = high;
                                *count += bucket.count;
                            }
                            _ => buckets.push((high, bucket.count)),
                        }
                    }
                    latencies.push((labels(), arm.latency_sum_seconds, arm.latency_histogram.count(), buckets));
                }
                if let Some(canary) = &route.canary {
                    let mut labels = base();
                    labels.push(("stable", canary.config.stable.clone()));
                    labels.push(("candidate", canary.config.candidate.clone()));
                    let (current, guard) = match &canary.state {
                        CanaryState::Stepping { .. } => ("stepping", None),
                        CanaryState::Promoted { .. } => ("promoted", None),
                        CanaryState::RolledBack { guard, .. } => ("rolled-back", Some(*guard)),
                    };
                    for state in ["stepping", "promoted", "rolled-back"] {
                        let mut labels = labels.clone();
                        labels.push(("state", state.to_owned()));
                        states.push((labels, i64::from(state == current)));
                    }
                    shares.push((labels.clone(), i64::from(canary.share)));
                    for name in [Guard::ErrorRate, Guard::Latency] {
                        let mut labels = labels.clone();
                        labels.push(("guard", name.to_string()));
                        breaches.push((labels, i64::from(guard == Some(name))));
                    }
                }
            }
        }
        let counters = [
            ("wasmux_experiment_requests", "Requests of each arm of a split or canary, by tenant, route and plugin", &requests),
            ("wasmux_experiment_errors", "Error answers of each arm of a split or canary, by code", &errors),
            ("wasmux_experiment_outcomes", "Requests of each arm of a split or canary that counted an outcome, by outcome", &outcomes),
        ];
        for (name, help, series) in counters {
            if series.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, value) in series {
                ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
            }
        }
        if !latencies.is_empty() {
            let help = "Latency of each arm of a split or canary, in the experiments' buckets (four per doubling)";
            let mut family = encoder.encode_descriptor("wasmux_experiment_latency_seconds", help, None, MetricType::Histogram)?;
            for (labels, sum, count, buckets) in &latencies {
                family.encode_family(labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(*sum, *count, buckets, None)?;
            }
        }
        let gauges = [
            ("wasmux_canary_state", "Each canary's state: 1 for the one it is in (stepping, promoted, rolled-back)", &states),
            ("wasmux_canary_candidate_share", "The percent of a canary route's requests its candidate gets now", &shares),
            ("wasmux_canary_guard_breached", "1 for the guard (error-rate, latency) that rolled a canary back", &breaches),
        ];
        for (name, help, series) in gauges {
            if series.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, value) in series {
                ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
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
    fn plugin(&self, tenant: &Arc<str>, plugin: &Arc<str>) -> Arc<dyn PluginKvMetrics> {
        let known = self.kv_plugins.read().unwrap_or_else(PoisonError::into_inner).get(tenant).and_then(|plugins| plugins.get(plugin)).cloned();
        if let Some(known) = known {
            return known;
        }
        let mut plugins = self.kv_plugins.write().unwrap_or_else(PoisonError::into_inner);
        let counters = plugins.entry(Arc::clone(tenant)).or_default().entry(Arc::clone(plugin)).or_insert_with(|| {
            let labels = TenantPluginLabels { tenant: Label::from(tenant), plugin: Label::from(plugin) };
            Arc::new(PluginKvCounters {
                operations: self.kv_operations.clone(),
                read: (self.kv_read.clone(), OnceLock::new()),
                written: (self.kv_written.clone(), OnceLock::new()),
                each: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
                labels,
            })
        });
        Arc::clone(counters) as Arc<dyn PluginKvMetrics>
    }
}

/// Each tenant's plugins' key-value counters, by tenant and plugin.
type KvPlugins = HashMap<Arc<str>, HashMap<Arc<str>, Arc<PluginKvCounters>>>;

/// One tenant's plugin's key-value counters, each taken from its family
/// the first time it counts and kept: an operation then costs an atomic
/// increment, with no lookup of its labels.
struct PluginKvCounters {
    labels: TenantPluginLabels,
    operations: Family<KvLabels, Counter>,
    /// By operation, then outcome.
    each: [[OnceLock<Counter>; Outcome::COUNT]; Operation::COUNT],
    read: (Family<TenantPluginLabels, Counter>, OnceLock<Counter>),
    written: (Family<TenantPluginLabels, Counter>, OnceLock<Counter>),
}

impl PluginKvCounters {
    fn bytes(&self, (family, counter): &(Family<TenantPluginLabels, Counter>, OnceLock<Counter>), bytes: u64) {
        if bytes > 0 {
            counter.get_or_init(|| family.get_or_create(&self.labels).clone()).inc_by(bytes);
        }
    }
}

impl PluginKvMetrics for PluginKvCounters {
    fn operation(&self, operation: Operation, outcome: Outcome, read: u64, written: u64) {
        let counter = || {
            let labels = KvLabels { tenant: self.labels.tenant.clone(), plugin: self.labels.plugin.clone(), operation: Label::Static(operation.name()), outcome: Label::Static(outcome.name()) };
            self.operations.get_or_create(&labels).clone()
        };
        // Every variant has its place (a unit test of `Operation::COUNT`
        // and `Outcome::COUNT`); were one missing, it would count uncached.
        match self.each.get(operation as usize).and_then(|outcomes| outcomes.get(outcome as usize)) {
            Some(kept) => kept.get_or_init(counter).inc(),
            None => counter().inc(),
        };
        self.bytes(&self.read, read);
        self.bytes(&self.written, written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_operations_and_bytes_by_tenant_and_plugin() {
        let metrics = Metrics::new();
        let (alpha, counter): (Arc<str>, Arc<str>) = ("alpha".into(), "counter".into());
        let instance = metrics.plugin(&alpha, &counter);
        instance.operation(Operation::Increment, Outcome::Ok, 0, 2);
        instance.operation(Operation::Get, Outcome::Ok, 5, 0);
        // Another instance of the plugin (its names shared by value, not by
        // reference) counts in the same series, and so does the last
        // operation with the last outcome.
        let other = metrics.plugin(&"alpha".into(), &"counter".into());
        other.operation(Operation::Get, Outcome::Ok, 3, 0);
        other.operation(Operation::Set, Outcome::Limit, 0, 0);
        other.operation(Operation::DeleteMany, Outcome::NotACounter, 0, 0);
        let beta = metrics.plugin(&"beta".into(), &counter);
        beta.operation(Operation::Get, Outcome::Ok, 7, 0);
        let text = metrics.encode();
        for line in [
            r#"wasmux_kv_operations_total{tenant="alpha",plugin="counter",operation="increment",outcome="ok"} 1"#,
            r#"wasmux_kv_operations_total{tenant="alpha",plugin="counter",operation="get",outcome="ok"} 2"#,
            r#"wasmux_kv_operations_total{tenant="alpha",plugin="counter",operation="set",outcome="limit"} 1"#,
            r#"wasmux_kv_read_bytes_total{tenant="alpha",plugin="counter"} 8"#,
            r#"wasmux_kv_written_bytes_total{tenant="alpha",plugin="counter"} 2"#,
            r#"wasmux_kv_operations_total{tenant="alpha",plugin="counter",operation="delete-many",outcome="not-a-counter"} 1"#,
            r#"wasmux_kv_operations_total{tenant="beta",plugin="counter",operation="get",outcome="ok"} 1"#,
            r#"wasmux_kv_read_bytes_total{tenant="beta",plugin="counter"} 7"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(!text.contains(r#"wasmux_kv_written_bytes_total{tenant="beta""#), "a series only once it counts:\n{text}");
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

    /// A plugin swapped again and again keeps the series of the version it
    /// serves and of the one before, each with its counts; the older ones'
    /// are dropped, requests and durations alike, and no other plugin's.
    #[test]
    fn a_swap_drops_the_series_of_versions_before_the_last() {
        let metrics = Metrics::new();
        let labels = |plugin: &'static str, version: &'static str, outcome: &'static str| RequestLabels {
            tenant: "default".into(),
            route: "text/json".into(),
            plugin: Label::Shared(plugin.into()),
            version: Label::Shared(version.into()),
            outcome: outcome.into(),
        };
        let count = |text: &str, plugin: &str, version: &str, outcome: &str| {
            let series = format!(r#"wasmux_requests_total{{tenant="default",route="text/json",plugin="{plugin}",version="{version}",outcome="{outcome}"}} "#);
            text.lines().find_map(|line| line.strip_prefix(&series)).map(str::to_owned)
        };
        let durations = |text: &str, version: &str| text.lines().filter(|line| line.starts_with("wasmux_request_duration_seconds") && line.contains(&format!(r#"version="{version}""#))).count();
        metrics.serving("search", "v1");
        metrics.serving("echo", "e1");
        metrics.request(&labels("search", "v1", "ok"), Duration::from_micros(300));
        metrics.request(&labels("search", "v1", "internal"), Duration::from_micros(300));
        metrics.request(&labels("echo", "e1", "ok"), Duration::from_micros(300));
        metrics.serving("search", "v2");
        metrics.request(&labels("search", "v2", "ok"), Duration::from_micros(300));
        metrics.request(&labels("search", "v2", "ok"), Duration::from_micros(300));
        // The version before keeps its series while requests finish on it.
        let text = metrics.encode();
        assert_eq!(count(&text, "search", "v1", "ok").as_deref(), Some("1"), "{text}");
        assert_eq!(count(&text, "search", "v2", "ok").as_deref(), Some("2"), "{text}");
        metrics.serving("search", "v3");
        metrics.request(&labels("search", "v3", "ok"), Duration::from_micros(300));
        let text = metrics.encode();
        assert_eq!(count(&text, "search", "v1", "ok"), None, "{text}");
        assert_eq!(count(&text, "search", "v1", "internal"), None, "{text}");
        assert_eq!(durations(&text, "v1"), 0, "{text}");
        assert_eq!(count(&text, "search", "v2", "ok").as_deref(), Some("2"), "{text}");
        assert!(durations(&text, "v2") > 0, "{text}");
        assert_eq!(count(&text, "search", "v3", "ok").as_deref(), Some("1"), "{text}");
        assert_eq!(count(&text, "echo", "e1", "ok").as_deref(), Some("1"), "{text}");
        // Swapping back to the version before drops nothing; a request that
        // finishes late on a dropped version counts until the next swap.
        metrics.serving("search", "v2");
        metrics.request(&labels("search", "v1", "ok"), Duration::from_micros(300));
        let text = metrics.encode();
        assert_eq!(count(&text, "search", "v3", "ok").as_deref(), Some("1"), "{text}");
        assert_eq!(count(&text, "search", "v1", "ok").as_deref(), Some("1"), "{text}");
        metrics.serving("search", "v4");
        let text = metrics.encode();
        assert_eq!(count(&text, "search", "v1", "ok"), None, "{text}");
        assert_eq!(count(&text, "search", "v3", "ok"), None, "{text}");
        assert_eq!(count(&text, "search", "v2", "ok").as_deref(), Some("2"), "{text}");
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
    fn experiments_are_exported_per_arm_with_their_latency_buckets_and_canary_state() {
        use crate::experiments::{Entry, Experiment, Served};
        use std::time::SystemTime;
        let experiment = Arc::new(Experiment::new(&[(Arc::from("search"), 1), (Arc::from("search@fuzzy"), 1)]));
        for (arm, error, micros) in [(0, None, 100), (0, None, 3000), (1, Some("plugin-failed"), 200)] {
            let served = Served { version: "v", error, latency: Duration::from_micros(micros) };
            experiment.arm(arm).expect("arm").record(served, ["hit"], SystemTime::now());
        }
        let report = Report::new([Entry { tenant: "default", route: "text/json", sticky: None, experiment: &experiment }], |_| None);
        let text = Metrics::new().encode_with(&report);
        for line in [
            r#"wasmux_experiment_requests_total{tenant="default",route="text/json",plugin="search"} 2"#,
            r#"wasmux_experiment_requests_total{tenant="default",route="text/json",plugin="search@fuzzy"} 1"#,
            r#"wasmux_experiment_errors_total{tenant="default",route="text/json",plugin="search@fuzzy",code="plugin-failed"} 1"#,
            r#"wasmux_experiment_outcomes_total{tenant="default",route="text/json",plugin="search",outcome="hit"} 2"#,
            r#"wasmux_experiment_latency_seconds_count{tenant="default",route="text/json",plugin="search"} 2"#,
            r#"wasmux_experiment_latency_seconds_bucket{le="+Inf",tenant="default",route="text/json",plugin="search"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // Cumulative buckets, the first at 7.6 µs, 93 edges to 64 s and +Inf.
        let buckets: Vec<(f64, u64)> = text
            .lines()
            .filter(|l| l.starts_with("wasmux_experiment_latency_seconds_bucket{") && l.contains(r#"plugin="search"}"#))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let count = l.rsplit(' ').next()?.parse().ok()?;
                Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, count))
            })
            .collect();
        assert_eq!(buckets.len(), 94, "{buckets:?}");
        assert!((buckets[0].0 - 7.629e-6).abs() < 1e-8, "{buckets:?}");
        let at = |seconds: f64| buckets.iter().find(|(edge, _)| *edge >= seconds).map(|(_, count)| *count);
        assert_eq!((at(0.0001), at(0.0025), at(0.0036)), (Some(1), Some(1), Some(2)), "{buckets:?}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
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
