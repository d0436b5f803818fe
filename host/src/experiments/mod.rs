//! A/B experiments: what each arm of a split did, and whether the arms
//! differ.
//!
//! Every split route owns an [`Experiment`] (the router creates it with the
//! split), with one [`Arm`] per plugin of the split. The service tells an arm
//! about each request routed to it ([`ArmRef::record`]): how it ended (`ok`
//! or an error code), how long it took, which plugin version answered and
//! which outcomes the plugin counted. Counting takes the arm's lock for a
//! few counter increments; it allocates only the first time an arm meets a
//! version or an outcome name.
//!
//! An experiment counts from the moment its split was made: when the server
//! started, or when a configuration reload changed the split's arms, weights
//! or sticky field. A reload that leaves the split as it was keeps the
//! experiment ([`crate::router::Routes::keep_experiments_from`]).
//!
//! Besides the totals, each arm keeps its last [`HISTORY`] windows of
//! [`WINDOW`] (requests, errors, outcomes, p99) for the live page, rolled
//! lazily when a request or a report comes.
//!
//! [`Report`] is what `/experiments` serves and `wasmux experiments` prints:
//! per arm the totals and latency percentiles, and for each arm against the
//! first the difference in each outcome's rate and in the error rate with
//! an anytime-valid 95 % interval ([`sequential`] says how, and why that
//! way: the page is looked at every 2 seconds).

pub mod canary;
mod merge;
pub mod rollout;
pub mod sequential;
pub mod stats;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use canary::Transition;
use rollout::{CanaryReport, Rollout};
use sequential::LatencyHistogram;

/// The length of one window of an arm's recent history.
pub const WINDOW: Duration = Duration::from_secs(2);

/// Windows of recent history kept per arm (five minutes).
pub const HISTORY: usize = 150;

/// Distinct outcome names an arm keeps. A plugin that names more (by a bug,
/// or by putting a user id in a name) cannot grow the server's memory: the
/// further names are counted as dropped.
pub const MAX_OUTCOME_NAMES: usize = 16;

/// Distinct plugin versions an arm counts its requests by; requests served
/// by further versions are counted under the last one kept.
const MAX_VERSIONS: usize = 16;

/// Latencies are kept in microseconds, from 1 µs to a minute, to two
/// significant figures (within 1 %).
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// The requests of one split (or canary), arm by arm.
pub struct Experiment {
    /// When the split was made: where its counts start.
    since: SystemTime,
    started: Instant,
    arms: Box<[Arm]>,
    /// For a canary's route: the canary, its arms stable (0) and candidate
    /// (1), their weights its share.
    canary: Option<Rollout>,
}

/// One plugin of a split, and what its requests did.
struct Arm {
    plugin: Arc<str>,
    weight: u32,
    tally: Mutex<Tally>,
}

impl fmt::Debug for Experiment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arms: Vec<(&str, u32)> = self.arms.iter().map(|arm| (&*arm.plugin, arm.weight)).collect();
        f.debug_struct("Experiment").field("since", &self.since).field("arms", &arms).finish()
    }
}

impl Experiment {
    /// An experiment between `arms` (plugin, weight), counting from now.
    pub fn new(arms: &[(Arc<str>, u32)]) -> Self {
        let arms = arms.iter().map(|(plugin, weight)| Arm { plugin: Arc::clone(plugin), weight: *weight, tally: Mutex::new(Tally::new()) });
        Self { since: SystemTime::now(), started: Instant::now(), arms: arms.collect(), canary: None }
    }

    /// The experiment of a canary's route: stable (arm 0) and candidate
    /// (arm 1), counted as a split's arms are, and the canary judging them.
    pub fn canary(rollout: Rollout) -> Self {
        let config = rollout.config();
        let mut experiment = Self::new(&[(Arc::from(config.stable.as_str()), 0), (Arc::from(config.candidate.as_str()), 0)]);
        experiment.canary = Some(rollout);
        experiment
    }

    /// The canary of a canary's route.
    pub fn rollout(&self) -> Option<&Rollout> {
        self.canary.as_ref()
    }

    /// The arm at `index` (as the split numbers its arms), to record into.
    pub fn arm(self: &Arc<Self>, index: usize) -> Option<ArmRef> {
        (index < self.arms.len()).then(|| ArmRef { experiment: Arc::clone(self), index })
    }

    /// The window `at` falls in, counted from the experiment's start.
    fn window_at(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.started);
        u64::try_from(elapsed.as_nanos() / WINDOW.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// An arm of an experiment, held by a request until it is answered.
#[derive(Debug, Clone)]
pub struct ArmRef {
    experiment: Arc<Experiment>,
    index: usize,
}

/// How one request routed to an arm ended.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// The plugin version that answered (empty if none was loaded).
    pub version: &'a str,
    /// `None` for an answer, the error code for an error answer.
    pub error: Option<&'static str>,
    /// From the request's decoding to its answer.
    pub latency: Duration,
}

impl ArmRef {
    /// Counts one request and the outcomes its plugin counted; on a
    /// canary's route, the canary judges it at `now` and says what it
    /// decided, if anything.
    pub fn record<'o>(&self, served: Served<'_>, outcomes: impl IntoIterator<Item = &'o str>, now: SystemTime) -> Option<Transition> {
        let experiment = &self.experiment;
        let window = experiment.window_at(Instant::now());
        {
            let mut tally = experiment.arms[self.index].lock();
            tally.roll(window);
            tally.count(served, outcomes);
        }
        let rollout = experiment.canary.as_ref()?;
        rollout.record(self.index == 1, served.error.is_some(), served.latency, now)
    }

    /// The canary this request's arm belongs to, if any.
    pub fn rollout(&self) -> Option<&Rollout> {
        self.experiment.canary.as_ref()
    }
}

impl Arm {
    fn lock(&self) -> MutexGuard<'_, Tally> {
        // Counters stay meaningful even if a holder panicked.
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An arm's counts.
struct Tally {
    requests: u64,
    /// Error answers by code.
    errors: Vec<(&'static str, u64)>,
    /// Microseconds.
    latency: Histogram<u64>,
    /// The same latencies in buckets that add up across servers, and
    /// their sum in seconds (for `/metrics` and the fleet's view).
    buckets: LatencyHistogram,
    latency_sum: f64,
    /// Outcome names in the order first counted (at most
    /// [`MAX_OUTCOME_NAMES`]), and requests that counted each.
    outcome_names: Vec<Box<str>>,
    outcomes: Vec<u64>,
    /// Outcome names not kept, each time one was counted.
    outcomes_dropped: u64,
    /// Requests by the plugin version that answered them.
    versions: Vec<(Box<str>, u64)>,
    /// The version that answered the latest request.
    latest_version: Option<usize>,
    current: Window,
    history: VecDeque<WindowSummary>,
}

/// The window being counted.
struct Window {
    index: u64,
    requests: u64,
    errors: u64,
    /// Per outcome name, as indexed in [`Tally::outcome_names`].
    outcomes: Vec<u64>,
    latency: Histogram<u64>,
}

/// A finished window, for the page's charts.
#[derive(Debug, Clone, Default)]
struct WindowSummary {
    requests: u64,
    errors: u64,
    /// Per outcome name; shorter when fewer names were known then.
    outcomes: Vec<u64>,
    p99_micros: Option<u64>,
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 2).unwrap_or_else(|_| unreachable!("1 µs to a minute at 2 figures is a valid range"))
}

impl Tally {
    fn new() -> Self {
        Self {
            requests: 0,
            errors: Vec::new(),
            latency: latency_histogram(),
            buckets: LatencyHistogram::new(),
            latency_sum: 0.0,
            outcome_names: Vec::new(),
            outcomes: Vec::new(),
            outcomes_dropped: 0,
            versions: Vec::new(),
            latest_version: None,
            current: Window { index: 0, requests: 0, errors: 0, outcomes: Vec::new(), latency: latency_histogram() },
            history: VecDeque::new(),
        }
    }

    fn count<'o>(&mut self, served: Served<'_>, outcomes: impl IntoIterator<Item = &'o str>) {
        let micros = u64::try_from(served.latency.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_LATENCY_MICROS);
        self.requests += 1;
        self.current.requests += 1;
        // Saturating: a value is within the histogram's range by the clamp.
        self.latency.saturating_record(micros);
        self.current.latency.saturating_record(micros);
        self.buckets.record(served.latency);
        self.latency_sum += served.latency.as_secs_f64();
        if let Some(code) = served.error {
            self.current.errors += 1;
            match self.errors.iter_mut().find(|(known, _)| *known == code) {
                Some((_, count)) => *count += 1,
                None => self.errors.push((code, 1)),
            }
        }
        if !served.version.is_empty() {
            self.count_version(served.version);
        }
        for name in outcomes {
            let index = match self.outcome_names.iter().position(|known| **known == *name) {
                Some(index) => index,
                None if self.outcome_names.len() < MAX_OUTCOME_NAMES => {
                    self.outcome_names.push(name.into());
                    self.outcomes.push(0);
                    self.outcome_names.len() - 1
                }
                None => {
                    self.outcomes_dropped += 1;
                    continue;
                }
            };
            self.outcomes[index] += 1;
            if self.current.outcomes.len() <= index {
                self.current.outcomes.resize(index + 1, 0);
            }
            self.current.outcomes[index] += 1;
        }
    }

    fn count_version(&mut self, version: &str) {
        let index = match self.versions.iter().position(|(known, _)| **known == *version) {
            Some(index) => index,
            None if self.versions.len() < MAX_VERSIONS => {
                self.versions.push((version.into(), 0));
                self.versions.len() - 1
            }
            None => self.versions.len() - 1,
        };
        self.versions[index].1 += 1;
        self.latest_version = Some(index);
    }

    /// Closes the windows before `window`: the current one goes into the
    /// history, followed by an empty one for each window nothing came in.
    fn roll(&mut self, window: u64) {
        let current = &mut self.current;
        if window <= current.index {
            return;
        }
        let summary = WindowSummary {
            requests: current.requests,
            errors: current.errors,
            outcomes: std::mem::take(&mut current.outcomes),
            p99_micros: (current.requests > 0).then(|| current.latency.value_at_quantile(0.99)),
        };
        let empty = (window - current.index - 1).min(HISTORY as u64);
        current.index = window;
        current.requests = 0;
        current.errors = 0;
        current.latency.reset();
        for summary in std::iter::once(summary).chain(std::iter::repeat_n(WindowSummary::default(), empty as usize)) {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(summary);
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.iter().map(|(_, count)| count).sum()
    }
}

/// What `/experiments` serves: every split route of every tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The length of one window of the arms' `series`, in seconds.
    pub window_seconds: f64,
    pub tenants: Vec<TenantReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantReport {
    pub tenant: String,
    pub routes: Vec<RouteReport>,
}

/// One split route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteReport {
    /// The route's pattern (`text/json`).
    pub route: String,
    /// The header field that keeps a sender on one arm, if any.
    pub sticky: Option<String>,
    /// When counting began (RFC 3339), and how long ago, in seconds.
    pub since: String,
    pub seconds: f64,
    /// When the last window of the arms' `series` ended, in milliseconds
    /// since the Unix epoch.
    pub series_end_ms: u64,
    pub arms: Vec<ArmReport>,
    /// A canary's route: its state, share and guards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryReport>,
    /// In a fleet's merged report ([`Report::merge`]): the servers that
    /// report the route, and each one's canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetRoute>,
}

/// A route as a fleet reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetRoute {
    /// The servers (as named to [`Report::merge`]) that report the route.
    pub servers: Vec<String>,
    /// Each server's canary, side by side, for a canary's route.
    pub canaries: Vec<ServerCanary>,
}

/// One server's view of a canary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerCanary {
    pub server: String,
    pub canary: CanaryReport,
}

/// One arm: its totals, its recent history, and how it compares with the
/// first arm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmReport {
    pub plugin: String,
    /// The version that answered the arm's latest request, or else the one
    /// loaded now; `None` if neither.
    pub version: Option<String>,
    /// Requests by the version that answered them (several if the plugin
    /// was swapped during the experiment).
    pub versions: BTreeMap<String, u64>,
    pub weight: u32,
    pub requests: u64,
    /// Error answers, all codes together, and by code.
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    /// `None` until the arm has had a request.
    pub latency_ms: Option<Percentiles>,
    /// The latencies in buckets that add up across servers (schema 2 of
    /// Prometheus' native histograms: four per doubling), and their sum in
    /// seconds.
    #[serde(default)]
    pub latency_histogram: LatencyHistogram,
    #[serde(default)]
    pub latency_sum_seconds: f64,
    /// Requests that counted each outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Outcome names counted beyond the [`MAX_OUTCOME_NAMES`] an arm keeps.
    pub outcomes_dropped: u64,
    /// For every arm but the first.
    pub against_first: Option<Comparison>,
    pub series: Series,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// An arm against the first arm of its split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// The first arm's plugin.
    pub against: String,
    /// For each outcome either arm counted.
    pub outcomes: BTreeMap<String, Difference>,
    pub error_rate: Difference,
}

/// A rate in this arm against the same rate in the first, their
/// difference (this arm's minus the first's) and its anytime-valid 95 %
/// interval ([`sequential`]): it holds at every moment at once, however
/// often the report is read, so "significant" may be acted on the first
/// time it shows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Difference {
    pub rate: Option<f64>,
    pub first_rate: Option<f64>,
    pub difference: Option<f64>,
    /// `[low, high]`, a confidence sequence's interval at 95 %; `None`
    /// while either arm has no request.
    pub ci95: Option<[f64; 2]>,
    /// The interval excludes 0.
    pub significant: bool,
}

impl Difference {
    /// `x / n` in this arm against `first` = `(x₁, n₁)`.
    pub fn between(first: (u64, u64), this: (u64, u64)) -> Self {
        let rate = |(x, n): (u64, u64)| (n > 0).then(|| x as f64 / n as f64);
        let compared = sequential::compare_rates(first, this, sequential::ALPHA);
        Self {
            rate: rate(this),
            first_rate: rate(first),
            difference: compared.map(|c| c.difference),
            ci95: compared.map(|c| [c.interval.low, c.interval.high]),
            significant: compared.is_some_and(|c| c.significant),
        }
    }
}

/// An arm's last windows, oldest first, all of the same length across the
/// arms of a split; the last ended at the route's `series_end_ms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Series {
    pub requests: Vec<u64>,
    pub errors: Vec<u64>,
    /// `None` for a window without requests.
    pub p99_ms: Vec<Option<f64>>,
    /// Requests that counted each outcome, per window.
    pub outcomes: BTreeMap<String, Vec<u64>>,
}

/// A split route to report on.
pub struct Entry<'a> {
    pub tenant: &'a str,
    pub route: &'a str,
    pub sticky: Option<&'a str>,
    pub experiment: &'a Experiment,
}

impl Report {
    /// The report on `entries`; `loaded_version` names the version of a
    /// plugin loaded now, for arms that have served nothing yet.
    pub fn new<'a>(entries: impl IntoIterator<Item = Entry<'a>>, loaded_version: impl Fn(&str) -> Option<String>) -> Self {
        let mut tenants: Vec<TenantReport> = Vec::new();
        for entry in entries {
            let route = route_report(&entry, &loaded_version);
            match tenants.iter_mut().find(|t| t.tenant == entry.tenant) {
                Some(tenant) => tenant.routes.push(route),
                None => tenants.push(TenantReport { tenant: entry.tenant.to_owned(), routes: vec![route] }),
            }
        }
        Self { window_seconds: WINDOW.as_secs_f64(), tenants }
    }
}

fn route_report(entry: &Entry<'_>, loaded_version: &impl Fn(&str) -> Option<String>) -> RouteReport {
    let experiment = entry.experiment;
    let now = Instant::now();
    let window = experiment.window_at(now);
    // Each arm is locked in turn, not all at once: requests go on meanwhile,
    // so the arms' totals are each exact but not of one instant.
    let mut arms: Vec<ArmReport> = experiment
        .arms
        .iter()
        .map(|arm| {
            let mut tally = arm.lock();
            tally.roll(window);
            arm_report(arm, &tally, loaded_version)
        })
        .collect();
    compare_with_first(&mut arms);
    let canary = experiment.canary.as_ref().map(Rollout::report);
    if let (Some(canary), [stable, candidate]) = (&canary, &mut arms[..]) {
        stable.weight = 100 - canary.share.min(100);
        candidate.weight = canary.share;
    }
    let window_start = experiment.started + WINDOW.saturating_mul(u32::try_from(window).unwrap_or(u32::MAX));
    let series_end = SystemTime::now() - now.saturating_duration_since(window_start);
    RouteReport {
        route: entry.route.to_owned(),
        sticky: entry.sticky.map(str::to_owned),
        since: humantime::format_rfc3339_seconds(experiment.since).to_string(),
        seconds: now.saturating_duration_since(experiment.started).as_secs_f64(),
        series_end_ms: series_end.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        arms,
        canary,
        fleet: None,
    }
}

fn arm_report(arm: &Arm, tally: &Tally, loaded_version: &impl Fn(&str) -> Option<String>) -> ArmReport {
    let ms = |micros: u64| micros as f64 / 1000.0;
    let latency_ms = (tally.requests > 0).then(|| Percentiles {
        p50: ms(tally.latency.value_at_quantile(0.50)),
        p90: ms(tally.latency.value_at_quantile(0.90)),
        p99: ms(tally.latency.value_at_quantile(0.99)),
    });
    let mut series = Series::default();
    for window in &tally.history {
        series.requests.push(window.requests);
        series.errors.push(window.errors);
        series.p99_ms.push(window.p99_micros.map(ms));
    }
    for (index, name) in tally.outcome_names.iter().enumerate() {
        let counts = tally.history.iter().map(|w| w.outcomes.get(index).copied().unwrap_or(0)).collect();
        series.outcomes.insert(name.to_string(), counts);
    }
    ArmReport {
        plugin: arm.plugin.to_string(),
        version: tally.latest_version.map(|i| tally.versions[i].0.to_string()).or_else(|| loaded_version(&arm.plugin)),
        versions: tally.versions.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
        weight: arm.weight,
        requests: tally.requests,
        errors: tally.error_count(),
        errors_by_code: tally.errors.iter().map(|(code, n)| ((*code).to_owned(), *n)).collect(),
        latency_ms,
        latency_histogram: tally.buckets.clone(),
        latency_sum_seconds: tally.latency_sum,
        outcomes: tally.outcome_names.iter().zip(&tally.outcomes).map(|(name, n)| (name.to_string(), *n)).collect(),
        outcomes_dropped: tally.outcomes_dropped,
        against_first: None,
        series,
    }
}

/// Fills in `against_first` for every arm after the first.
pub(crate) fn compare_with_first(arms: &mut [ArmReport]) {
    let Some((first, others)) = arms.split_first_mut() else {
        return;
    };
    for arm in others {
        let names: BTreeSet<&String> = first.outcomes.keys().chain(arm.outcomes.keys()).collect();
        let count = |report: &ArmReport, name: &str| report.outcomes.get(name).copied().unwrap_or(0);
        let outcomes = names
            .into_iter()
            .map(|name| (name.clone(), Difference::between((count(first, name), first.requests), (count(arm, name), arm.requests))))
            .collect();
        arm.against_first = Some(Comparison {
            against: first.plugin.clone(),
            outcomes,
            error_rate: Difference::between((first.errors, first.requests), (arm.errors, arm.requests)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(arms: &[(&str, u32)]) -> Arc<Experiment> {
        let arms: Vec<(Arc<str>, u32)> = arms.iter().map(|(name, weight)| (Arc::from(*name), *weight)).collect();
        Arc::new(Experiment::new(&arms))
    }

    fn served(error: Option<&'static str>, micros: u64) -> Served<'static> {
        Served { version: "0123456789ab", error, latency: Duration::from_micros(micros) }
    }

    fn report(experiment: &Experiment) -> RouteReport {
        let entry = Entry { tenant: "alpha", route: "text/json", sticky: Some("user"), experiment };
        let mut report = Report::new([entry], |_| Some("loaded".into()));
        report.tenants.remove(0).routes.remove(0)
    }

    #[test]
    fn arms_count_requests_errors_latency_and_outcomes() {
        let experiment = experiment(&[("search", 50), ("search@fuzzy", 50)]);
        let (first, second) = (experiment.arm(0).expect("arm 0"), experiment.arm(1).expect("arm 1"));
        assert!(experiment.arm(2).is_none());
        for i in 0..100 {
            first.record(served(None, 100 + i), [if i < 30 { "hit" } else { "miss" }], SystemTime::now());
            second.record(served(None, 1000), [if i < 80 { "hit" } else { "miss" }], SystemTime::now());
        }
        second.record(served(Some("plugin-timeout"), 100_000), [], SystemTime::now());
        second.record(served(Some("bad-request"), 50), [], SystemTime::now());

        let route = report(&experiment);
        assert_eq!((route.route.as_str(), route.sticky.as_deref()), ("text/json", Some("user")));
        let [a, b] = &route.arms[..] else { panic!("two arms: {route:?}") };
        assert_eq!((a.plugin.as_str(), a.weight, a.requests, a.errors), ("search", 50, 100, 0));
        assert_eq!((b.requests, b.errors), (102, 2));
        assert_eq!(b.errors_by_code, BTreeMap::from([("bad-request".into(), 1), ("plugin-timeout".into(), 1)]));
        assert_eq!(a.outcomes, BTreeMap::from([("hit".into(), 30), ("miss".into(), 70)]));
        assert_eq!(a.version.as_deref(), Some("0123456789ab"));
        assert_eq!(a.versions, BTreeMap::from([("0123456789ab".into(), 100)]));
        let latency = a.latency_ms.expect("latency");
        assert!((0.149..=0.151).contains(&latency.p50) && latency.p99 <= 0.2, "{latency:?}");
        assert!(a.against_first.is_none());

        let versus = b.against_first.as_ref().expect("compared with the first");
        assert_eq!(versus.against, "search");
        let hit = versus.outcomes["hit"];
        assert_eq!((hit.first_rate, hit.rate), (Some(0.3), Some(80.0 / 102.0)));
        let (low, high) = hit.ci95.map(|[l, h]| (l, h)).expect("an interval");
        assert!(low > 0.0 && high > low && hit.significant, "{hit:?}");
        assert_eq!(versus.error_rate.rate, Some(2.0 / 102.0));
        assert!(!versus.error_rate.significant, "2 errors in 102 against none in 100 is no clear difference");
    }

    #[test]
    fn an_arm_without_requests_has_no_rates_and_no_interval() {
        let experiment = experiment(&[("a", 1), ("b", 1)]);
        experiment.arm(0).expect("arm").record(served(None, 10), ["hit"], SystemTime::now());
        let route = report(&experiment);
        let b = &route.arms[1];
        assert_eq!((b.requests, b.latency_ms.is_none(), b.version.as_deref()), (0, true, Some("loaded")));
        let hit = b.against_first.as_ref().expect("compared").outcomes["hit"];
        assert_eq!((hit.rate, hit.ci95, hit.significant), (None, None, false));
    }

    #[test]
    fn an_arm_keeps_a_bounded_number_of_outcome_names() {
        let experiment = experiment(&[("a", 1)]);
        let arm = experiment.arm(0).expect("arm");
        let names: Vec<String> = (0..MAX_OUTCOME_NAMES + 4).map(|i| format!("o{i}")).collect();
        for name in &names {
            arm.record(served(None, 10), [name.as_str()], SystemTime::now());
        }
        let route = report(&experiment);
        assert_eq!(route.arms[0].outcomes.len(), MAX_OUTCOME_NAMES);
        assert_eq!(route.arms[0].outcomes_dropped, 4);
    }

    #[test]
    fn windows_roll_into_the_history_with_empty_ones_for_quiet_spells() {
        let mut tally = Tally::new();
        // Below 256 µs the histogram is exact to the microsecond.
        tally.count(served(None, 100), ["hit"]);
        tally.count(served(Some("plugin-failed"), 250), []);
        tally.roll(3);
        tally.count(served(None, 100), ["miss"]);
        tally.roll(4);
        let summaries: Vec<(u64, u64, Vec<u64>)> = tally.history.iter().map(|w| (w.requests, w.errors, w.outcomes.clone())).collect();
        assert_eq!(summaries, [(2, 1, vec![1]), (0, 0, vec![]), (0, 0, vec![]), (1, 0, vec![0, 1])]);
        assert_eq!(tally.history[0].p99_micros, Some(250));
        assert_eq!(tally.history[1].p99_micros, None);
        // Rolling back or to the same window changes nothing.
        tally.roll(2);
        tally.roll(4);
        assert_eq!(tally.history.len(), 4);
        // A long quiet spell keeps "the last five minutes in 2-second
        // windows" (docs/running.md), the guide's figures, not the constants.
        assert_eq!(WINDOW, Duration::from_secs(2));
        tally.roll(10_000);
        assert_eq!(tally.history.len(), 150);
        assert!(tally.history.iter().all(|w| w.requests == 0));
        assert_eq!(tally.requests, 3, "the totals are not windowed");
    }

    #[test]
    fn the_report_is_json_both_ways() {
        let experiment = experiment(&[("a", 1), ("b", 1)]);
        experiment.arm(1).expect("arm").record(served(None, 10), ["hit"], SystemTime::now());
        let entry = Entry { tenant: "t", route: "*", sticky: None, experiment: &experiment };
        let report = Report::new([entry], |_| None);
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["tenants"][0]["routes"][0]["arms"][1]["outcomes"]["hit"], 1);
        assert_eq!(json["tenants"][0]["routes"][0]["arms"][1]["against_first"]["outcomes"]["hit"]["first_rate"], serde_json::Value::Null);
        let back: Report = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back.tenants[0].routes[0].arms.len(), 2);
    }
}
