//! Routing: a request's content-type ─▶ a [`Route`] ─▶ the plugin that answers.
//!
//! A route's pattern is an exact media type (`text/json`), a whole top-level
//! type (`image/*`), or everything (`*`); the most specific match wins.
//! Media types compare case-insensitively and parameters are ignored, so
//! `Text/JSON; charset=utf-8` is routed as `text/json`.
//!
//! A route's target is one plugin, or an experiment: a [`Split`] of traffic
//! between plugins (or versions of one, `search` and `search@fuzzy`) by
//! weight, optionally sticky on a header field so that one user always sees
//! the same arm. Each split carries its [`Experiment`], where the service
//! counts what each arm's requests did.
//!
//! The third target is a guarded canary ([`CanaryRoute`]): a stable plugin
//! and a candidate, the candidate getting the share its [`Rollout`] says
//! now (stepping up, everything once promoted, nothing once rolled back),
//! interleaved or sticky on a header field (a user stays on their arm
//! while the share grows).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::experiments::canary::{CanaryConfig, CanaryConfigError};
use crate::experiments::rollout::Rollout;
use crate::experiments::{ArmRef, Experiment};
use crate::message::Header;

/// The guide's behaviour: searches for `text/json`, binary echo for the rest.
pub const GUIDE_ROUTES: [(&str, &str); 2] = [("text/json", "search"), ("*", "binary-echo")];

/// What a route sends requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Plugin(Arc<str>),
    Split(Arc<Split>),
    Canary(Arc<CanaryRoute>),
}

impl Target {
    pub fn plugin(name: &str) -> Self {
        Self::Plugin(name.into())
    }

    /// Every plugin this target may send a request to.
    pub fn plugins(&self) -> Vec<&Arc<str>> {
        match self {
            Self::Plugin(name) => vec![name],
            Self::Split(split) => split.arms.iter().map(|(name, _)| name).collect(),
            Self::Canary(canary) => vec![&canary.stable, &canary.candidate],
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plugin(name) => f.write_str(name),
            Self::Split(split) => {
                let arms: Vec<String> = split.arms.iter().map(|(name, weight)| format!("{name} {weight}")).collect();
                write!(f, "split [{}]", arms.join(", "))?;
                match &split.sticky {
                    Some(field) => write!(f, " sticky on {field}"),
                    None => Ok(()),
                }
            }
            Self::Canary(canary) => {
                let config = canary.config();
                write!(f, "canary {} -> {} steps {:?}", config.stable, config.candidate, config.steps)?;
                match &config.sticky {
                    Some(field) => write!(f, " sticky on {field}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A guarded canary between a stable plugin (arm 0) and a candidate (arm
/// 1): the candidate gets its rollout's share of the requests.
#[derive(Debug)]
pub struct CanaryRoute {
    stable: Arc<str>,
    candidate: Arc<str>,
    /// Requests routed without a sticky value, for interleaving.
    turns: AtomicU64,
    /// The arms' counts and the rollout deciding the share.
    experiment: Arc<Experiment>,
}

impl PartialEq for CanaryRoute {
    fn eq(&self, other: &Self) -> bool {
        self.config() == other.config()
    }
}

impl Eq for CanaryRoute {}

impl CanaryRoute {
    /// A canary of `config` at its first step from `now`, its state not yet
    /// known (the candidate gets nothing until it is, [`Rollout`]).
    pub fn new(config: CanaryConfig, now: SystemTime) -> Result<Self, CanaryConfigError> {
        let (stable, candidate) = (Arc::from(config.stable.as_str()), Arc::from(config.candidate.as_str()));
        let rollout = Rollout::new(config, now)?;
        Ok(Self { stable, candidate, turns: AtomicU64::new(0), experiment: Arc::new(Experiment::canary(rollout)) })
    }

    pub fn config(&self) -> &CanaryConfig {
        self.rollout().config()
    }

    pub fn rollout(&self) -> &Rollout {
        // Made with one in `new`.
        self.experiment.rollout().unwrap_or_else(|| unreachable!("a canary's experiment has its rollout"))
    }

    pub fn experiment(&self) -> &Experiment {
        &self.experiment
    }

    /// The same canary, starting afresh (a tenant's copy of the server's).
    fn fresh(&self) -> Self {
        let now = SystemTime::now();
        // The configuration was valid when this one was made.
        Self::new(self.config().clone(), now).unwrap_or_else(|e| unreachable!("a valid canary configuration became invalid: {e}"))
    }

    /// 0 for stable, 1 for the candidate.
    fn pick_arm(&self, header: &Header) -> usize {
        let share = u64::from(self.rollout().share().min(100));
        if share == 0 || share == 100 {
            return usize::from(share == 100);
        }
        if let Some(value) = self.config().sticky.as_deref().and_then(|field| header.extra.get(field)) {
            // The same users stay on the candidate as its share grows: a
            // user at point p is on it from the first share above p.
            return usize::from(stable_hash(value) % 100 < share);
        }
        // The candidate takes the turns at which `share` per 100 passes
        // another whole request: evenly spread, as a split's arms are.
        let turn = self.turns.fetch_add(1, Ordering::Relaxed);
        usize::from((turn + 1) * share / 100 > turn * share / 100)
    }
}

/// Traffic divided between plugins by weight.
#[derive(Debug)]
pub struct Split {
    arms: Vec<(Arc<str>, u32)>,
    total: u64,
    /// A header field whose value picks the arm, so it is the same for the
    /// same value (`user`); without it, or when a request lacks it, arms
    /// take turns by smooth weighted round-robin.
    sticky: Option<String>,
    turns: Mutex<SmoothRoundRobin>,
    /// What each arm's requests did, since the split was made (or since a
    /// reload that changed it).
    experiment: Arc<Experiment>,
}

/// nginx's smooth weighted round-robin: indices `0..weights.len()`, each as
/// often as its weight, interleaved as evenly as possible. With weights
/// 50/50 the two alternate; with 90/10 the second comes once in every ten,
/// in every window of ten. (A plain `turn % total` walk gives runs of 50.)
#[derive(Debug, Clone)]
pub struct SmoothRoundRobin {
    weights: Vec<i64>,
    current: Vec<i64>,
    total: i64,
}

impl SmoothRoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        Self { current: vec![0; weights.len()], total: weights.iter().sum(), weights }
    }
}

impl Iterator for SmoothRoundRobin {
    type Item = usize;

    /// Each index gains its weight; the one with the most is picked and
    /// pays the total back. `None` only if every weight is 0.
    fn next(&mut self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        for (current, weight) in self.current.iter_mut().zip(&self.weights) {
            *current += weight;
        }
        // The first index wins ties, so the order is the same in every run.
        let (best, _) = self.current.iter().enumerate().max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))?;
        self.current[best] -= self.total;
        Some(best)
    }
}

impl PartialEq for Split {
    fn eq(&self, other: &Self) -> bool {
        self.arms == other.arms && self.sticky == other.sticky
    }
}

impl Eq for Split {}

impl Split {
    pub fn new(arms: Vec<(Arc<str>, u32)>, sticky: Option<String>) -> Result<Self, RouteError> {
        let total: u64 = arms.iter().map(|(_, weight)| u64::from(*weight)).sum();
        if total == 0 {
            return Err(RouteError::BadSplit("a split needs at least one arm with a weight above 0".into()));
        }
        if let Some((name, _)) = arms.iter().find(|(name, _)| name.trim().is_empty()) {
            return Err(RouteError::BadSplit(format!("a split arm has an empty plugin name ({name:?})")));
        }
        if sticky.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err(RouteError::BadSplit("the sticky field name is empty".into()));
        }
        Ok(Self::with_experiment(arms, total, sticky, None))
    }

    fn with_experiment(arms: Vec<(Arc<str>, u32)>, total: u64, sticky: Option<String>, experiment: Option<Arc<Experiment>>) -> Self {
        let weights: Vec<u32> = arms.iter().map(|(_, weight)| *weight).collect();
        let experiment = experiment.unwrap_or_else(|| Arc::new(Experiment::new(&arms)));
        Self { turns: Mutex::new(SmoothRoundRobin::new(&weights)), arms, total, sticky, experiment }
    }

    /// The same split with an experiment of its own, counting from now.
    pub fn fresh(&self) -> Self {
        Self::with_experiment(self.arms.clone(), self.total, self.sticky.clone(), None)
    }

    /// The same split carrying on `previous`'s experiment, if `previous` is
    /// the same split (arms, weights and sticky field): a reload that did
    /// not change a split keeps its counts.
    fn continuing(&self, previous: &Split) -> Option<Self> {
        (self == previous).then(|| Self::with_experiment(self.arms.clone(), self.total, self.sticky.clone(), Some(Arc::clone(&previous.experiment))))
    }

    pub fn experiment(&self) -> &Experiment {
        &self.experiment
    }

    /// The header field that keeps a sender on one arm, if any.
    pub fn sticky(&self) -> Option<&str> {
        self.sticky.as_deref()
    }

    /// The arm for a request.
    pub fn pick(&self, header: &Header) -> &Arc<str> {
        &self.arms[self.pick_arm(header)].0
    }

    /// The index of the arm for a request.
    fn pick_arm(&self, header: &Header) -> usize {
        if let Some(value) = self.sticky.as_deref().and_then(|field| header.extra.get(field)) {
            return self.arm_at(stable_hash(value) % self.total);
        }
        // The state stays consistent even if a holder panicked.
        let turn = self.turns.lock().unwrap_or_else(|e| e.into_inner()).next();
        // `total > 0`, so some arm has a weight and there is a turn.
        turn.unwrap_or(0)
    }

    fn arm_at(&self, mut point: u64) -> usize {
        for (index, (_, weight)) in self.arms.iter().enumerate() {
            if point < u64::from(*weight) {
                return index;
            }
            point -= u64::from(*weight);
        }
        // `point < total` and the weights sum to `total`.
        self.arms.len() - 1
    }
}

/// A hash of a header value that is the same in every run and every
/// version of wasmux, so a user stays on their arm across restarts.
fn stable_hash(value: &Value) -> u64 {
    let digest = match value {
        Value::String(s) => Sha256::digest(s.as_bytes()),
        other => Sha256::digest(other.to_string().as_bytes()),
    };
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A pattern and its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The pattern as normalized (`text/json`, `image/*`, `*`): the `route`
    /// label of metrics.
    pub pattern: Arc<str>,
    pub target: Target,
}

/// Where a request goes.
#[derive(Debug)]
pub struct Choice<'a> {
    pub plugin: &'a Arc<str>,
    /// For a split, the arm of its experiment the request counts in.
    pub arm: Option<ArmRef>,
}

impl Route {
    /// The plugin for this request.
    pub fn pick(&self, header: &Header) -> &Arc<str> {
        self.choose(header).plugin
    }

    /// The plugin for this request, and for a split, its arm.
    pub fn choose(&self, header: &Header) -> Choice<'_> {
        match &self.target {
            Target::Plugin(name) => Choice { plugin: name, arm: None },
            Target::Split(split) => {
                let index = split.pick_arm(header);
                Choice { plugin: &split.arms[index].0, arm: split.experiment.arm(index) }
            }
            Target::Canary(canary) => {
                let index = canary.pick_arm(header);
                let plugin = if index == 0 { &canary.stable } else { &canary.candidate };
                Choice { plugin, arm: canary.experiment.arm(index) }
            }
        }
    }
}

/// A routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    exact: HashMap<String, Route>,
    /// Keyed by the top-level type, from `type/*` patterns.
    by_type: HashMap<String, Route>,
    fallback: Option<Route>,
}

/// A route that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route \"{0}\": a pattern is a media type (text/json), a type with any subtype (image/*), or *")]
    BadPattern(String),
    #[error("route \"{0}\": the plugin name is empty")]
    EmptyTarget(String),
    #[error("route \"{0}\" is given twice (patterns compare case-insensitively)")]
    Duplicate(String),
    #[error("{0}")]
    BadSplit(String),
}

impl Routes {
    /// Builds a table from `(pattern, plugin)` pairs.
    pub fn new<P: AsRef<str>, T: AsRef<str>>(table: impl IntoIterator<Item = (P, T)>) -> Result<Self, RouteError> {
        let mut routes = Self::default();
        for (pattern, plugin) in table {
            routes.add(pattern.as_ref(), Target::plugin(plugin.as_ref()))?;
        }
        Ok(routes)
    }

    /// The guide's routes ([`GUIDE_ROUTES`]).
    pub fn guide() -> Self {
        Self::new(GUIDE_ROUTES).unwrap_or_default()
    }

    /// Adds a route, refusing a pattern already present.
    pub fn add(&mut self, pattern: &str, target: Target) -> Result<(), RouteError> {
        if self.set(pattern, target, false)? { Ok(()) } else { Err(RouteError::Duplicate(pattern.to_owned())) }
    }

    /// Adds a route, replacing any with the same pattern.
    pub fn set_route(&mut self, pattern: &str, target: Target) -> Result<(), RouteError> {
        self.set(pattern, target, true).map(|_| ())
    }

    fn set(&mut self, pattern: &str, target: Target, replace: bool) -> Result<bool, RouteError> {
        if target.plugins().iter().any(|name| name.trim().is_empty()) {
            return Err(RouteError::EmptyTarget(pattern.to_owned()));
        }
        let normalized = pattern.trim().to_ascii_lowercase();
        let (map, key, shown) = match parse_pattern(&normalized) {
            Some(Pattern::Any) => {
                if self.fallback.is_some() && !replace {
                    return Ok(false);
                }
                self.fallback = Some(Route { pattern: "*".into(), target });
                return Ok(true);
            }
            Some(Pattern::Type(ty)) => (&mut self.by_type, ty, format!("{ty}/*")),
            Some(Pattern::Exact(ty)) => (&mut self.exact, ty, ty.to_owned()),
            None => return Err(RouteError::BadPattern(pattern.to_owned())),
        };
        if !replace && map.contains_key(key) {
            return Ok(false);
        }
        map.insert(key.to_owned(), Route { pattern: shown.into(), target });
        Ok(true)
    }

    /// The route for `content_type`, if any matches.
    pub fn resolve(&self, content_type: &str) -> Option<&Route> {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        let lowered;
        let essence = if essence.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = essence.to_ascii_lowercase();
            lowered.as_str()
        } else {
            essence
        };
        self.exact
            .get(essence)
            .or_else(|| essence.split_once('/').and_then(|(ty, _)| self.by_type.get(ty)))
            .or(self.fallback.as_ref())
    }

    /// Every route, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        let mut exact: Vec<_> = self.exact.values().collect();
        let mut by_type: Vec<_> = self.by_type.values().collect();
        exact.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        by_type.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        exact.into_iter().chain(by_type).chain(self.fallback.iter())
    }

    /// The names of every plugin some route points at.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.iter().flat_map(|route| route.target.plugins()).map(|name| &**name)
    }

    /// Every split route, with its split.
    pub fn splits(&self) -> impl Iterator<Item = (&Route, &Split)> {
        self.iter().filter_map(|route| match &route.target {
            Target::Split(split) => Some((route, &**split)),
            Target::Plugin(_) | Target::Canary(_) => None,
        })
    }

    /// Every canary route, with its canary.
    pub fn canaries(&self) -> impl Iterator<Item = (&Route, &CanaryRoute)> {
        self.iter().filter_map(|route| match &route.target {
            Target::Canary(canary) => Some((route, &**canary)),
            Target::Plugin(_) | Target::Split(_) => None,
        })
    }

    /// Every route that is an experiment (a split or a canary): its
    /// pattern, sticky field and experiment.
    pub fn experiments(&self) -> impl Iterator<Item = (&Route, Option<&str>, &Experiment)> {
        self.iter().filter_map(|route| match &route.target {
            Target::Split(split) => Some((route, split.sticky(), split.experiment())),
            Target::Canary(canary) => Some((route, canary.config().sticky.as_deref(), canary.experiment())),
            Target::Plugin(_) => None,
        })
    }

    /// The same table with experiments of its own for its splits: what each
    /// tenant gets of the server's routes, so that tenants are counted apart.
    pub fn with_own_experiments(&self) -> Self {
        let mut routes = self.clone();
        routes.replace_splits(|_, split| Some(split.fresh()));
        routes.replace_canaries(|_, canary| Some(Arc::new(canary.fresh())));
        routes
    }

    /// Keeps the experiment of every split that `previous` has, unchanged,
    /// on the same pattern: a reload that does not touch a split goes on
    /// counting where it was. So does a canary whose configuration is the
    /// same: it goes on at its step, or stays promoted or rolled back.
    pub fn keep_experiments_from(&mut self, previous: &Routes) {
        self.replace_splits(|pattern, split| match previous.route_of(pattern).map(|route| &route.target) {
            Some(Target::Split(old)) => split.continuing(old),
            _ => None,
        });
        self.replace_canaries(|pattern, canary| match previous.route_of(pattern).map(|route| &route.target) {
            Some(Target::Canary(old)) if **old == *canary => Some(Arc::clone(old)),
            _ => None,
        });
    }

    /// The route of a normalized pattern, as [`Route::pattern`] shows it.
    fn route_of(&self, pattern: &str) -> Option<&Route> {
        match parse_pattern(pattern)? {
            Pattern::Any => self.fallback.as_ref(),
            Pattern::Type(ty) => self.by_type.get(ty),
            Pattern::Exact(ty) => self.exact.get(ty),
        }
    }

    /// Replaces each canary by what `replace` makes of it (pattern,
    /// canary), if anything.
    fn replace_canaries(&mut self, replace: impl Fn(&str, &CanaryRoute) -> Option<Arc<CanaryRoute>>) {
        for route in self.exact.values_mut().chain(self.by_type.values_mut()).chain(self.fallback.iter_mut()) {
            if let Target::Canary(canary) = &route.target
                && let Some(replaced) = replace(&route.pattern, canary)
            {
                route.target = Target::Canary(replaced);
            }
        }
    }

    /// Replaces each split by what `replace` makes of it (pattern, split),
    /// if anything.
    fn replace_splits(&mut self, replace: impl Fn(&str, &Split) -> Option<Split>) {
        for route in self.exact.values_mut().chain(self.by_type.values_mut()).chain(self.fallback.iter_mut()) {
            if let Target::Split(split) = &route.target
                && let Some(replaced) = replace(&route.pattern, split)
            {
                route.target = Target::Split(Arc::new(replaced));
            }
        }
    }
}

impl fmt::Display for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, route) in self.iter().enumerate() {
            write!(f, "{}{} -> {}", if i == 0 { "" } else { ", " }, route.pattern, route.target)?;
        }
        Ok(())
    }
}

enum Pattern<'a> {
    Any,
    Type(&'a str),
    Exact(&'a str),
}

fn parse_pattern(pattern: &str) -> Option<Pattern<'_>> {
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"*/;\"".contains(&b));
    if pattern == "*" || pattern == "*/*" {
        return Some(Pattern::Any);
    }
    let (ty, sub) = pattern.split_once('/')?;
    if !token(ty) {
        return None;
    }
    if sub == "*" {
        Some(Pattern::Type(ty))
    } else if token(sub) {
        Some(Pattern::Exact(pattern))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn plugin_for(routes: &Routes, content_type: &str) -> Option<String> {
        let header = Message::new(content_type, "binary", Vec::new()).header;
        routes.resolve(content_type).map(|route| route.pick(&header).to_string())
    }

    #[test]
    fn guide_routes() {
        let routes = Routes::guide();
        assert_eq!(plugin_for(&routes, "text/json").as_deref(), Some("search"));
        assert_eq!(plugin_for(&routes, "binary/custom-client-binary-type").as_deref(), Some("binary-echo"));
        assert_eq!(plugin_for(&routes, "").as_deref(), Some("binary-echo"));
    }

    #[test]
    fn most_specific_wins() {
        let routes = Routes::new([("image/*", "images"), ("image/png", "png"), ("*", "other")]).unwrap();
        assert_eq!(plugin_for(&routes, "image/png").as_deref(), Some("png"));
        assert_eq!(plugin_for(&routes, "image/gif").as_deref(), Some("images"));
        assert_eq!(routes.resolve("image/gif").map(|r| &*r.pattern), Some("image/*"));
        assert_eq!(plugin_for(&routes, "imagex/gif").as_deref(), Some("other"));
        assert_eq!(plugin_for(&routes, "image").as_deref(), Some("other"));
    }

    #[test]
    fn case_and_parameters_are_ignored() {
        let routes = Routes::new([("Text/JSON", "search")]).unwrap();
        assert_eq!(plugin_for(&routes, "text/json; charset=utf-8").as_deref(), Some("search"));
        assert_eq!(plugin_for(&routes, "TEXT/Json").as_deref(), Some("search"));
        assert_eq!(plugin_for(&routes, "text/plain"), None);
    }

    #[test]
    fn bad_patterns_are_refused() {
        for pattern in ["", "text", "*/json", "te*t/json", "text/js*", "text/json/x", "a b/c"] {
            assert_eq!(Routes::new([(pattern, "p")]), Err(RouteError::BadPattern(pattern.into())), "{pattern:?}");
        }
        assert_eq!(Routes::new([("a/b", " ")]), Err(RouteError::EmptyTarget("a/b".into())));
        assert_eq!(Routes::new([("a/b", "x"), ("A/B", "y")]), Err(RouteError::Duplicate("A/B".into())));
    }

    #[test]
    fn set_route_replaces() {
        let mut routes = Routes::guide();
        routes.set_route("*", Target::plugin("other")).unwrap();
        assert_eq!(plugin_for(&routes, "x/y").as_deref(), Some("other"));
        assert_eq!(routes.to_string(), "text/json -> search, * -> other");
    }

    fn split(arms: &[(&str, u32)], sticky: Option<&str>) -> Split {
        Split::new(arms.iter().map(|(n, w)| (Arc::from(*n), *w)).collect(), sticky.map(str::to_owned)).unwrap()
    }

    fn header_with(field: &str, value: Value) -> Header {
        let mut header = Message::new("text/json", "utf-8", Vec::new()).header;
        header.extra.insert(field.into(), value);
        header
    }

    fn picks(split: &Split, n: usize) -> String {
        let header = Message::new("text/json", "utf-8", Vec::new()).header;
        (0..n).map(|_| split.pick(&header).to_string()).collect()
    }

    #[test]
    fn splits_interleave_their_arms_by_weight() {
        // 50/50: the arms alternate, never twice in a row.
        assert_eq!(picks(&split(&[("a", 50), ("b", 50)], None), 8), "abababab");
        // 90/10: b once in every ten, in every window of ten.
        let tenths = picks(&split(&[("a", 90), ("b", 10)], None), 1000);
        for window in tenths.as_bytes().windows(10) {
            assert_eq!(window.iter().filter(|&&arm| arm == b'b').count(), 1, "{tenths}");
        }
        // 3:1 and 1:1:2 spread evenly.
        assert_eq!(picks(&split(&[("a", 3), ("b", 1)], None), 8), "aabaaaba");
        assert_eq!(picks(&split(&[("a", 1), ("b", 1), ("c", 2)], None), 8), "cabccabc");
        assert_eq!(SmoothRoundRobin::new(&[5, 1, 1]).take(7).collect::<Vec<_>>(), [0, 0, 1, 0, 2, 0, 0]);
        // An arm of weight 0 never comes up.
        assert_eq!(picks(&split(&[("a", 0), ("b", 1)], None), 4), "bbbb");
    }

    #[test]
    fn without_the_sticky_field_a_sticky_split_interleaves() {
        let split = split(&[("a", 1), ("b", 1)], Some("user"));
        assert_eq!(picks(&split, 6), "ababab");
    }

    #[test]
    fn sticky_splits_keep_a_user_on_one_arm() {
        let split = split(&[("a", 50), ("b", 50)], Some("user"));
        let mut seen = std::collections::HashSet::new();
        for user in 0..200 {
            let header = header_with("user", Value::String(format!("user-{user}")));
            let first = split.pick(&header).to_string();
            for _ in 0..5 {
                assert_eq!(split.pick(&header).to_string(), first);
            }
            seen.insert(first);
        }
        assert_eq!(seen.len(), 2, "200 users should land on both arms");
    }

    /// Users stay on their arm across restarts and versions of wasmux: the
    /// arms are pinned here as literals (docs/tenants.md's walk-through shows the
    /// same users on the same arms), so a change of the hash fails.
    #[test]
    fn sticky_arms_are_the_same_in_every_version() {
        let even = split(&[("a", 50), ("b", 50)], Some("user"));
        let three = split(&[("a", 1), ("b", 1), ("c", 2)], Some("user"));
        for (user, on_even, on_three) in [("ann", "b", "c"), ("bob", "b", "c"), ("cid", "a", "b"), ("dan", "a", "b"), ("eve", "b", "c")] {
            let header = header_with("user", Value::String(user.into()));
            assert_eq!((&**even.pick(&header), &**three.pick(&header)), (on_even, on_three), "{user}");
        }
        // A value that is not a string is hashed as its JSON text.
        assert_eq!(&**even.pick(&header_with("user", Value::from(7))), "a");
    }

    #[test]
    fn a_reload_keeps_the_experiment_of_a_split_it_leaves_alone() {
        let table = |weight: u32| {
            let mut routes = Routes::default();
            routes.add("text/json", Target::Split(Arc::new(split(&[("a", 1), ("b", weight)], None)))).unwrap();
            routes.add("*", Target::Split(Arc::new(split(&[("c", 1), ("d", 1)], Some("user"))))).unwrap();
            routes.add("image/*", Target::plugin("e")).unwrap();
            routes
        };
        let experiment = |routes: &Routes, pattern: &str| -> *const Experiment {
            routes.splits().find(|(route, _)| &*route.pattern == pattern).map_or(std::ptr::null(), |(_, split)| split.experiment())
        };
        let old = table(1);
        let mut same = table(1);
        same.keep_experiments_from(&old);
        assert_eq!(experiment(&same, "text/json"), experiment(&old, "text/json"));
        let mut changed = table(2);
        changed.keep_experiments_from(&old);
        assert_ne!(experiment(&changed, "text/json"), experiment(&old, "text/json"), "new weights, new experiment");
        assert_eq!(experiment(&changed, "*"), experiment(&old, "*"), "the other split was left alone");
        // A tenant's copy of the server's routes counts on its own.
        let own = old.with_own_experiments();
        assert_eq!(own, old);
        assert_ne!(experiment(&own, "*"), experiment(&old, "*"));
        assert_eq!(old.splits().count(), 2);
    }

    fn canary_config(sticky: Option<&str>) -> CanaryConfig {
        let mut config: CanaryConfig = toml::from_str(
            "stable = \"a\"\ncandidate = \"b\"\nsteps = [10, 50, 100]\nstep-after = \"1s\"\nmin-requests = 5\nmax-extra-error-rate = 0.01\nmax-p99-ratio = 3.0\n",
        )
        .unwrap();
        config.sticky = sticky.map(str::to_owned);
        config
    }

    fn canary_picks(canary: &CanaryRoute, n: usize) -> String {
        let header = Message::new("text/json", "utf-8", Vec::new()).header;
        (0..n).map(|_| if canary.pick_arm(&header) == 0 { 'a' } else { 'b' }).collect()
    }

    /// Healthy requests through the canary until its share is `share`.
    fn step_to(canary: &CanaryRoute, share: u32) {
        let at = |s: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let mut second = 10;
        while canary.rollout().share() < share {
            second += 2;
            for i in 0..200 {
                canary.rollout().record(i % 2 == 0, false, std::time::Duration::from_millis(1), at(second));
            }
            assert!(second < 100, "the canary does not step up: {:?}", canary.rollout().report());
        }
    }

    #[test]
    fn a_canary_sends_its_share_to_the_candidate_once_started() {
        let canary = CanaryRoute::new(canary_config(None), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(canary_picks(&canary, 20), "aaaaaaaaaaaaaaaaaaaa", "nothing to the candidate before the state is known");
        canary.rollout().start();
        // 10 %: the candidate once in every ten, spread evenly.
        let tenths = canary_picks(&canary, 1000);
        for window in tenths.as_bytes().windows(10) {
            assert_eq!(window.iter().filter(|&&arm| arm == b'b').count(), 1, "{tenths}");
        }
        step_to(&canary, 50);
        let halves = canary_picks(&canary, 10);
        assert!(halves == "ababababab" || halves == "bababababa", "{halves}");
        let target = Target::Canary(Arc::new(canary));
        assert_eq!(target.plugins(), [&Arc::from("a"), &Arc::from("b")]);
        assert_eq!(target.to_string(), "canary a -> b steps [10, 50, 100]");
    }

    #[test]
    fn a_sticky_canary_keeps_its_users_on_the_candidate_as_the_share_grows() {
        let canary = CanaryRoute::new(canary_config(Some("user")), SystemTime::UNIX_EPOCH).unwrap();
        canary.rollout().start();
        let arm = |user: usize| canary.pick_arm(&header_with("user", Value::String(format!("user-{user}"))));
        let at_ten: Vec<usize> = (0..1000).map(arm).collect();
        let on_candidate = at_ten.iter().filter(|&&a| a == 1).count();
        assert!((60..140).contains(&on_candidate), "about a tenth of the users: {on_candidate}");
        assert!((0..1000).all(|user| arm(user) == at_ten[user]), "the same user, the same arm");
        step_to(&canary, 50);
        let at_half: Vec<usize> = (0..1000).map(arm).collect();
        assert!((0..1000).all(|user| at_ten[user] == 0 || at_half[user] == 1), "a user on the candidate at 10 % is on it at 50 %");
        assert!((400..600).contains(&at_half.iter().filter(|&&a| a == 1).count()));
        // Without the field, requests interleave.
        assert_eq!(canary_picks(&canary, 4).len(), 4);
    }

    #[test]
    fn a_reload_keeps_a_canary_whose_configuration_is_the_same() {
        let table = |ratio: f64| {
            let mut config = canary_config(None);
            config.max_p99_ratio = ratio;
            let mut routes = Routes::default();
            routes.add("text/json", Target::Canary(Arc::new(CanaryRoute::new(config, SystemTime::UNIX_EPOCH).unwrap()))).unwrap();
            routes
        };
        let rollout = |routes: &Routes| -> *const Rollout { routes.canaries().next().map_or(std::ptr::null(), |(_, c)| c.rollout()) };
        let old = table(3.0);
        let mut same = table(3.0);
        same.keep_experiments_from(&old);
        assert_eq!(rollout(&same), rollout(&old));
        let mut changed = table(4.0);
        changed.keep_experiments_from(&old);
        assert_ne!(rollout(&changed), rollout(&old), "a new configuration, a new canary");
        let own = old.with_own_experiments();
        assert_eq!(own, old);
        assert_ne!(rollout(&own), rollout(&old), "each tenant's canary is its own");
        assert_eq!(old.experiments().count(), 1);
        assert_eq!(old.splits().count(), 0);
    }

    #[test]
    fn bad_splits_are_refused() {
        assert!(Split::new(vec![("a".into(), 0)], None).is_err());
        assert!(Split::new(vec![], None).is_err());
        assert!(Split::new(vec![("a".into(), 1)], Some(" ".into())).is_err());
    }
}
