//! A guarded canary: a candidate plugin takes a growing share of a route's
//! traffic, step by step, and is rolled back on its own as soon as it is
//! shown to fail more often or to be slower than the stable plugin by more
//! than the configured margins.
//!
//! ```toml
//! [routes."text/json".canary]
//! stable = "search"
//! candidate = "search@fuzzy"
//! steps = [10, 50, 100]         # the candidate's share, percent, in order
//! step-after = "1s"             # least time at a step
//! min-requests = 20             # least candidate requests at a step before it may advance
//! max-extra-error-rate = 0.01   # roll back when the candidate's error rate is worse than stable's by more than this
//! max-p99-ratio = 3.0           # roll back when the candidate's p99 is more than this times stable's
//! ```
//!
//! This module is the decision alone, with no I/O and no clock: the caller
//! counts requests into [`CanaryCounts`] and calls [`Canary::advance`] with
//! the time, as often as it likes (after every request is fine: the guards
//! are anytime-valid, and cheap). A [`Canary`] is
//!
//! - **stepping** at a step, the candidate getting that step's share. It
//!   advances when it has been at the step for `step-after` and the
//!   candidate has had `min-requests` requests there, and no guard is
//!   breached. Entering the last step (100) is promotion, and waits also
//!   for the latency guard to be able to judge, so that no candidate is
//!   promoted unjudged.
//! - **promoted**: the candidate gets everything; the guards are done.
//! - **rolled back**, by a guard, with the figures that breached it: the
//!   candidate gets nothing until the canary's configuration changes.
//!
//! The guards judge the counts since the canary began (both arms over the
//! same time), with the anytime-valid methods of [`super::sequential`], at
//! any time, before `min-requests` too:
//!
//! - **error rate**: breached when the candidate's error rate exceeds
//!   stable's by more than `max-extra-error-rate` for sure, i.e. the lower
//!   bound of the difference's confidence sequence is above it. Against a
//!   stable arm without errors, a candidate that fails every request is
//!   rolled back after 2 failed requests at a 10 % share (once stable has
//!   had 25 requests), after 5 at 50 %; against one that fails 1 % of its
//!   requests, after at most 4 at 10 % (50 simulated canaries).
//! - **latency**: breached when a lower bound on the candidate's p99
//!   exceeds `max-p99-ratio` times an upper bound on stable's. It judges
//!   once each arm has [`LATENCY_GUARD_MIN_SAMPLES`] (443) latencies, the
//!   number at which an upper bound on p99 exists at its error rate; a
//!   candidate's first requests are often slow while it warms up, and a
//!   handful of them must not decide.
//!
//! A candidate within both margins is rolled back by mistake at most 5 %
//! of the time ([`ALPHA`], half to each guard), however long the canary
//! runs and however often it is judged. Bounds fall on latency bucket
//! edges, each up to 19 % on the safe side, so a candidate may need to be
//! up to 1.41 times beyond `max-p99-ratio` before the latency guard can
//! show it.
//!
//! Counts add up across servers ([`CanaryCounts::merge`]), and everything
//! here is a function of counts and time: servers that share their counts
//! (through Redis) take the same decisions, and states merge
//! ([`Canary::merge`]) by taking the one furthest along, a rollback over
//! all. [`Canary`] and its counts are serde values, to keep in the data
//! directory across restarts.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::sequential::{self, ALPHA, LatencyHistogram, P99, RateComparison};

/// The error guard's share of [`ALPHA`].
pub const ERROR_GUARD_ALPHA: f64 = ALPHA / 2.0;

/// The latency guard's share of [`ALPHA`], split between a lower bound on
/// the candidate's p99 and an upper bound on stable's.
pub const LATENCY_GUARD_ALPHA: f64 = ALPHA / 2.0;

/// Latencies each arm needs before the latency guard judges: the least at
/// which an upper bound on p99 exists at `LATENCY_GUARD_ALPHA / 2` (a test
/// checks it against [`sequential::min_samples_for_quantile_upper_bound`]).
pub const LATENCY_GUARD_MIN_SAMPLES: u64 = 443;

/// A route's canary, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CanaryConfig {
    pub stable: String,
    pub candidate: String,
    /// The candidate's share at each step, in percent, rising to 100.
    pub steps: Vec<u32>,
    /// The least time at a step.
    #[serde(with = "humantime_serde")]
    pub step_after: Duration,
    /// The least candidate requests at a step before it may advance.
    pub min_requests: u64,
    /// How much worse than stable's the candidate's error rate may be.
    pub max_extra_error_rate: f64,
    /// How many times stable's p99 the candidate's p99 may be.
    pub max_p99_ratio: f64,
    /// A header field that keeps a user on one arm while the share grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
}

/// Why a canary's configuration cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CanaryConfigError {
    #[error("a canary's {0} plugin name is empty")]
    EmptyName(&'static str),
    #[error("a canary's stable and candidate are the same plugin ({0:?})")]
    SamePlugin(String),
    #[error("a canary's steps must rise, in percent, from above 0 to a last step of 100, with at least one step below 100 (got {0:?})")]
    BadSteps(Vec<u32>),
    #[error("max-extra-error-rate must be at least 0 and below 1 (got {0})")]
    BadErrorRate(f64),
    #[error("max-p99-ratio must be a finite number of at least 1 (got {0})")]
    BadP99Ratio(f64),
    #[error("a canary's sticky field name is empty")]
    EmptySticky,
}

impl CanaryConfig {
    pub fn validate(&self) -> Result<(), CanaryConfigError> {
        if self.stable.trim().is_empty() {
            return Err(CanaryConfigError::EmptyName("stable"));
        }
        if self.candidate.trim().is_empty() {
            return Err(CanaryConfigError::EmptyName("candidate"));
        }
        if self.stable == self.candidate {
            return Err(CanaryConfigError::SamePlugin(self.stable.clone()));
        }
        let rising = self.steps.windows(2).all(|pair| pair[0] < pair[1]);
        if self.steps.len() < 2 || !rising || self.steps.first() == Some(&0) || self.steps.last() != Some(&100) {
            return Err(CanaryConfigError::BadSteps(self.steps.clone()));
        }
        if !(0.0..1.0).contains(&self.max_extra_error_rate) {
            return Err(CanaryConfigError::BadErrorRate(self.max_extra_error_rate));
        }
        if !(self.max_p99_ratio >= 1.0 && self.max_p99_ratio.is_finite()) {
            return Err(CanaryConfigError::BadP99Ratio(self.max_p99_ratio));
        }
        if self.sticky.as_deref().is_some_and(|field| field.trim().is_empty()) {
            return Err(CanaryConfigError::EmptySticky);
        }
        Ok(())
    }
}

/// What one arm's requests did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmCounts {
    pub requests: u64,
    /// Error answers (counted beyond `requests`, they count as `requests`).
    pub errors: u64,
    pub latency: LatencyHistogram,
}

impl ArmCounts {
    /// Counts one request.
    pub fn record(&mut self, failed: bool, latency: Duration) {
        self.requests = self.requests.saturating_add(1);
        self.errors = self.errors.saturating_add(u64::from(failed));
        self.latency.record(latency);
    }

    /// Adds another server's counts of the same arm.
    pub fn merge(&mut self, other: &ArmCounts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency.merge(&other.latency);
    }

    fn errors_of_requests(&self) -> (u64, u64) {
        (self.errors, self.requests)
    }
}

/// Both arms' requests since the canary began.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryCounts {
    pub stable: ArmCounts,
    pub candidate: ArmCounts,
}

impl CanaryCounts {
    pub fn merge(&mut self, other: &CanaryCounts) {
        self.stable.merge(&other.stable);
        self.candidate.merge(&other.candidate);
    }
}

/// Where a canary is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum CanaryState {
    /// At step `step` (from 0, never the last), the candidate getting
    /// `share` percent, since `since_ms` (milliseconds since the Unix
    /// epoch), when the candidate had had `candidate_requests_before`.
    Stepping { step: usize, share: u32, since_ms: u64, candidate_requests_before: u64 },
    /// The candidate gets everything, since `at_ms`.
    Promoted { at_ms: u64 },
    /// The candidate gets nothing, since `at_ms`: `guard` was breached
    /// with these `figures`.
    RolledBack { guard: Guard, figures: GuardFigures, at_ms: u64 },
}

impl CanaryState {
    /// For merging: how far along (a rollback is final over all).
    fn rank(&self) -> (u8, usize) {
        match self {
            Self::Stepping { step, .. } => (0, *step),
            Self::Promoted { .. } => (1, 0),
            Self::RolledBack { .. } => (2, 0),
        }
    }
}

/// The guard that rolled a canary back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guard {
    ErrorRate,
    Latency,
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ErrorRate => "error-rate",
            Self::Latency => "latency",
        })
    }
}

/// What the guards see in the counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardFigures {
    pub error_rate: ErrorRateFigures,
    pub latency: LatencyFigures,
}

/// The error guard: the candidate's error rate against stable's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorRateFigures {
    pub stable_requests: u64,
    pub stable_errors: u64,
    pub candidate_requests: u64,
    pub candidate_errors: u64,
    /// The candidate's error rate minus stable's, with anytime-valid bounds
    /// at [`ERROR_GUARD_ALPHA`]; `None` while either arm has no request.
    pub extra_error_rate: Option<RateComparison>,
    /// `max-extra-error-rate`.
    pub limit: f64,
    /// The lower bound of `extra_error_rate` is above `limit`.
    pub breached: bool,
}

/// The latency guard: the candidate's p99 against stable's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyFigures {
    pub stable_latencies: u64,
    pub candidate_latencies: u64,
    /// Latencies each arm needs before the guard judges.
    pub needed: u64,
    /// An anytime-valid upper bound on stable's p99, in seconds.
    pub stable_p99_upper_seconds: Option<f64>,
    /// An anytime-valid lower bound on the candidate's p99, in seconds.
    pub candidate_p99_lower_seconds: Option<f64>,
    /// `max-p99-ratio`.
    pub limit: f64,
    /// Both arms have the latencies needed.
    pub judging: bool,
    /// Judging, and the candidate's lower bound is above `limit` times
    /// stable's upper bound.
    pub breached: bool,
}

/// A change of a canary's state, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "transition", rename_all = "kebab-case")]
pub enum Transition {
    Advanced { step: usize, share: u32 },
    Promoted,
    RolledBack { guard: Guard },
}

/// A canary: its configuration and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CanaryRecord")]
pub struct Canary {
    config: CanaryConfig,
    state: CanaryState,
}

/// A canary as stored, before it is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryRecord {
    config: CanaryConfig,
    state: CanaryState,
}

impl TryFrom<CanaryRecord> for Canary {
    type Error = String;

    fn try_from(record: CanaryRecord) -> Result<Self, String> {
        record.config.validate().map_err(|e| e.to_string())?;
        if let CanaryState::Stepping { step, share, .. } = record.state
            && (step + 1 >= record.config.steps.len() || record.config.steps[step] != share)
        {
            return Err(format!("a stepping canary at step {step} with a share of {share} does not fit the steps {:?}", record.config.steps));
        }
        Ok(Self { config: record.config, state: record.state })
    }
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Canary {
    /// A canary at its first step from `now`.
    pub fn new(config: CanaryConfig, now: SystemTime) -> Result<Self, CanaryConfigError> {
        config.validate()?;
        let state = CanaryState::Stepping { step: 0, share: config.steps[0], since_ms: millis(now), candidate_requests_before: 0 };
        Ok(Self { config, state })
    }

    pub fn config(&self) -> &CanaryConfig {
        &self.config
    }

    pub fn state(&self) -> &CanaryState {
        &self.state
    }

    /// The candidate's share of the traffic now, in percent.
    pub fn candidate_share(&self) -> u32 {
        match self.state {
            CanaryState::Stepping { share, .. } => share,
            CanaryState::Promoted { .. } => 100,
            CanaryState::RolledBack { .. } => 0,
        }
    }

    /// The guards' figures on `counts`, for reports.
    pub fn guards(&self, counts: &CanaryCounts) -> GuardFigures {
        GuardFigures { error_rate: self.error_figures(counts), latency: self.latency_figures(counts) }
    }

    /// Judges `counts` at `now`: rolls back if a guard is breached, else
    /// advances a step if the step's time and requests are reached.
    /// Returns the change, if any. A promoted or rolled-back canary stays.
    pub fn advance(&mut self, counts: &CanaryCounts, now: SystemTime) -> Option<Transition> {
        let CanaryState::Stepping { step, since_ms, candidate_requests_before, .. } = self.state else {
            return None;
        };
        let now_ms = millis(now);
        // The cheap test first; the full figures only for the record.
        let errors = sequential::rate_exceeds(
            counts.stable.errors_of_requests(),
            counts.candidate.errors_of_requests(),
            self.config.max_extra_error_rate,
            ERROR_GUARD_ALPHA,
        );
        let latency = self.latency_figures(counts);
        let breached = if errors {
            Some(Guard::ErrorRate)
        } else if latency.breached {
            Some(Guard::Latency)
        } else {
            None
        };
        if let Some(guard) = breached {
            let figures = GuardFigures { error_rate: self.error_figures(counts), latency };
            self.state = CanaryState::RolledBack { guard, figures, at_ms: now_ms };
            return Some(Transition::RolledBack { guard });
        }
        // Counts below those at the step's start were reset (a restart that
        // kept the state but not the counts): count the step from zero.
        let at_step = counts.candidate.requests.checked_sub(candidate_requests_before).unwrap_or(counts.candidate.requests);
        let step_after = u64::try_from(self.config.step_after.as_millis()).unwrap_or(u64::MAX);
        if now_ms.saturating_sub(since_ms) < step_after || at_step < self.config.min_requests {
            return None;
        }
        let next = step + 1;
        if next + 1 == self.config.steps.len() {
            if !latency.judging {
                return None;
            }
            self.state = CanaryState::Promoted { at_ms: now_ms };
            return Some(Transition::Promoted);
        }
        let share = self.config.steps[next];
        self.state = CanaryState::Stepping { step: next, share, since_ms: now_ms, candidate_requests_before: counts.candidate.requests };
        Some(Transition::Advanced { step: next, share })
    }

    /// Takes `other`'s state (another server's, or the one shared in Redis)
    /// if it is further along: a rollback over all, then promotion, then
    /// the later step, and at the same step the earlier start. Only between
    /// canaries of the same configuration; returns whether this one changed.
    pub fn merge(&mut self, other: &Canary) -> bool {
        if self.config != other.config {
            return false;
        }
        let further = match (&self.state, &other.state) {
            (CanaryState::Stepping { step: mine, since_ms: my_start, .. }, CanaryState::Stepping { step: theirs, since_ms: their_start, .. }) => {
                (theirs, std::cmp::Reverse(their_start)) > (mine, std::cmp::Reverse(my_start))
            }
            (mine, theirs) => theirs.rank() > mine.rank(),
        };
        if further {
            self.state = other.state.clone();
        }
        further
    }

    fn error_figures(&self, counts: &CanaryCounts) -> ErrorRateFigures {
        let (stable, candidate) = (counts.stable.errors_of_requests(), counts.candidate.errors_of_requests());
        let extra_error_rate = sequential::compare_rates(stable, candidate, ERROR_GUARD_ALPHA);
        ErrorRateFigures {
            stable_requests: counts.stable.requests,
            stable_errors: counts.stable.errors,
            candidate_requests: counts.candidate.requests,
            candidate_errors: counts.candidate.errors,
            extra_error_rate,
            limit: self.config.max_extra_error_rate,
            breached: sequential::rate_exceeds(stable, candidate, self.config.max_extra_error_rate, ERROR_GUARD_ALPHA),
        }
    }

    fn latency_figures(&self, counts: &CanaryCounts) -> LatencyFigures {
        let (stable, candidate) = (&counts.stable.latency, &counts.candidate.latency);
        let alpha = LATENCY_GUARD_ALPHA / 2.0;
        let stable_p99_upper_seconds = stable.quantile_upper_bound(P99, alpha);
        let candidate_p99_lower_seconds = candidate.quantile_lower_bound(P99, alpha);
        let judging = stable.count() >= LATENCY_GUARD_MIN_SAMPLES && candidate.count() >= LATENCY_GUARD_MIN_SAMPLES;
        let limit = self.config.max_p99_ratio;
        let breached = judging
            && match (candidate_p99_lower_seconds, stable_p99_upper_seconds) {
                (Some(candidate), Some(stable)) => candidate > limit * stable,
                _ => false,
            };
        LatencyFigures {
            stable_latencies: stable.count(),
            candidate_latencies: candidate.count(),
            needed: LATENCY_GUARD_MIN_SAMPLES,
            stable_p99_upper_seconds,
            candidate_p99_lower_seconds,
            limit,
            judging,
            breached,
        }
    }
}

/// What the canary tests of `experiments` share: the issue's example
/// configuration and a clock.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::{Duration, SystemTime};

    use super::CanaryConfig;

    /// The issue's example.
    pub const EXAMPLE: &str = r#"
        stable = "search"
        candidate = "search@fuzzy"
        steps = [10, 50, 100]
        step-after = "1s"
        min-requests = 20
        max-extra-error-rate = 0.01
        max-p99-ratio = 3.0
    "#;

    pub fn config() -> CanaryConfig {
        toml::from_str(EXAMPLE).expect("the example parses")
    }

    /// `ms` milliseconds after the epoch.
    pub fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    pub const MS: Duration = Duration::from_millis(1);
}

#[cfg(test)]
mod tests {
    use super::testing::{EXAMPLE, at, config};
    use super::*;

    /// How an arm's requests go: their error rate and mean latency
    /// (exponential).
    #[derive(Clone, Copy)]
    struct Behaviour {
        error_rate: f64,
        mean_ms: f64,
    }

    const HEALTHY: Behaviour = Behaviour { error_rate: 0.01, mean_ms: 1.0 };

    /// Requests through a canary, one a millisecond, each routed by the
    /// canary's share (the candidate gets every request at which the sum
    /// of shares passes another 100), the canary judging after each.
    struct Traffic {
        canary: Canary,
        counts: CanaryCounts,
        rng: fastrand::Rng,
        clock_ms: u64,
        credit: u32,
        /// Each change, with the counts when it came.
        transitions: Vec<(Transition, CanaryCounts)>,
    }

    impl Traffic {
        fn new(config: CanaryConfig, seed: u64) -> Self {
            let canary = Canary::new(config, at(0)).expect("a valid canary");
            Self { canary, counts: CanaryCounts::default(), rng: fastrand::Rng::with_seed(seed), clock_ms: 0, credit: 0, transitions: Vec::new() }
        }

        /// Sends up to `requests`, stopping early at a rollback if `until_rollback`.
        fn send(&mut self, requests: u64, stable: Behaviour, candidate: Behaviour, until_rollback: bool) {
            for _ in 0..requests {
                self.credit += self.canary.candidate_share();
                let (arm, behaviour) = if self.credit >= 100 {
                    self.credit -= 100;
                    (&mut self.counts.candidate, candidate)
                } else {
                    (&mut self.counts.stable, stable)
                };
                let failed = self.rng.f64() < behaviour.error_rate;
                let latency = -behaviour.mean_ms * (1.0 - self.rng.f64()).ln();
                arm.record(failed, Duration::from_secs_f64(latency / 1000.0));
                self.clock_ms += 1;
                if let Some(transition) = self.canary.advance(&self.counts, at(self.clock_ms)) {
                    self.transitions.push((transition, self.counts.clone()));
                    if until_rollback && matches!(transition, Transition::RolledBack { .. }) {
                        return;
                    }
                }
            }
        }
    }

    const FAILING: Behaviour = Behaviour { error_rate: 1.0, mean_ms: 1.0 };
    const FLAWLESS: Behaviour = Behaviour { error_rate: 0.0, mean_ms: 1.0 };

    #[test]
    fn a_candidate_that_fails_every_request_is_rolled_back_after_two() {
        let mut traffic = Traffic::new(config(), 1);
        traffic.send(1000, FLAWLESS, FAILING, true);
        let [(Transition::RolledBack { guard: Guard::ErrorRate }, counts)] = &traffic.transitions[..] else {
            panic!("{:?}", traffic.transitions);
        };
        // At a 10 % share: 2 failed requests, once stable has had 25.
        assert_eq!((counts.candidate.errors, counts.stable.requests), (2, 25));
        let CanaryState::RolledBack { guard, figures, at_ms } = traffic.canary.state() else { panic!("{:?}", traffic.canary.state()) };
        assert_eq!((*guard, *at_ms), (Guard::ErrorRate, 27));
        let extra = figures.error_rate.extra_error_rate.expect("both arms had requests");
        assert!(figures.error_rate.breached && extra.interval.low > 0.01, "{figures:?}");
        assert!(!figures.latency.judging);

        // Everything after goes to stable, and the canary stays rolled back
        // however well the candidate would do.
        traffic.send(5000, HEALTHY, HEALTHY, false);
        assert_eq!(traffic.canary.candidate_share(), 0);
        assert_eq!(traffic.counts.candidate.requests, 2);
        assert_eq!(traffic.transitions.len(), 1);
    }

    #[test]
    fn a_candidate_that_fails_every_request_at_half_the_traffic_is_rolled_back_after_five() {
        let mut config = config();
        config.steps = vec![50, 100];
        let mut traffic = Traffic::new(config, 2);
        traffic.send(1000, FLAWLESS, FAILING, true);
        let [(Transition::RolledBack { guard: Guard::ErrorRate }, counts)] = &traffic.transitions[..] else {
            panic!("{:?}", traffic.transitions);
        };
        assert_eq!((counts.candidate.errors, counts.stable.requests), (5, 5));
    }

    /// Against a stable arm that fails 1 % of its requests, a few more: the
    /// guard must first see that stable's rate is low.
    #[test]
    fn a_candidate_that_fails_every_request_is_rolled_back_after_a_handful_against_a_stable_arm_with_errors() {
        let mut most = 0;
        for seed in 0..50 {
            let mut traffic = Traffic::new(config(), seed);
            traffic.send(1000, HEALTHY, FAILING, true);
            let [(Transition::RolledBack { guard: Guard::ErrorRate }, counts)] = &traffic.transitions[..] else {
                panic!("{:?}", traffic.transitions);
            };
            most = most.max(counts.candidate.errors);
        }
        assert!(most <= 4, "{most}");
    }

    #[test]
    fn a_healthy_candidate_is_promoted_through_every_step() {
        let mut traffic = Traffic::new(config(), 3);
        traffic.send(20_000, HEALTHY, HEALTHY, false);
        let transitions: Vec<Transition> = traffic.transitions.iter().map(|(t, _)| *t).collect();
        assert_eq!(transitions, [Transition::Advanced { step: 1, share: 50 }, Transition::Promoted]);
        assert_eq!(traffic.canary.candidate_share(), 100);
        // The first step lasted its second (and had its 20 requests, ~100).
        let (_, at_50) = &traffic.transitions[0];
        assert_eq!(at_50.stable.requests + at_50.candidate.requests, 1000);
        // The second step too; by then the latency guard judges.
        let (_, at_100) = &traffic.transitions[1];
        assert!(at_100.candidate.latency.count() >= LATENCY_GUARD_MIN_SAMPLES && at_100.stable.latency.count() >= LATENCY_GUARD_MIN_SAMPLES);
        assert_eq!(traffic.canary.state(), &CanaryState::Promoted { at_ms: 2000 });
        // Promoted stays promoted, whatever comes next.
        traffic.send(2000, HEALTHY, Behaviour { error_rate: 1.0, mean_ms: 100.0 }, false);
        assert_eq!(traffic.transitions.len(), 2);
    }

    #[test]
    fn a_slow_candidate_trips_the_latency_guard() {
        let mut traffic = Traffic::new(config(), 4);
        // Ten times slower: so is its p99.
        traffic.send(20_000, HEALTHY, Behaviour { error_rate: 0.01, mean_ms: 10.0 }, true);
        let transitions: Vec<Transition> = traffic.transitions.iter().map(|(t, _)| *t).collect();
        assert_eq!(transitions, [Transition::Advanced { step: 1, share: 50 }, Transition::RolledBack { guard: Guard::Latency }]);
        let CanaryState::RolledBack { figures, .. } = traffic.canary.state() else { panic!() };
        let latency = &figures.latency;
        assert!(latency.judging && latency.breached, "{latency:?}");
        let (lower, upper) = (latency.candidate_p99_lower_seconds.expect("bound"), latency.stable_p99_upper_seconds.expect("bound"));
        assert!(lower > 3.0 * upper, "{latency:?}");
        assert!(latency.candidate_latencies >= LATENCY_GUARD_MIN_SAMPLES && latency.stable_latencies >= LATENCY_GUARD_MIN_SAMPLES);
        assert!(!figures.error_rate.breached);
    }

    #[test]
    fn nothing_trips_the_latency_guard_before_both_arms_have_their_latencies() {
        let mut canary = Canary::new(config(), at(0)).expect("valid");
        let mut counts = CanaryCounts::default();
        for _ in 0..5000 {
            counts.stable.record(false, Duration::from_millis(1));
        }
        // A hundred times slower, one latency short.
        for _ in 0..LATENCY_GUARD_MIN_SAMPLES - 1 {
            counts.candidate.record(false, Duration::from_millis(100));
        }
        let figures = canary.guards(&counts).latency;
        assert!(!figures.judging && !figures.breached, "{figures:?}");
        assert!(figures.candidate_p99_lower_seconds.is_some_and(|l| l > 0.08), "the bound is there; the guard waits: {figures:?}");
        // Time and requests enough for the next step: it advances, unjudged.
        assert_eq!(canary.advance(&counts, at(1000)), Some(Transition::Advanced { step: 1, share: 50 }));
        // But it is not promoted unjudged either.
        assert_eq!(canary.advance(&counts, at(5000)), None);
        assert_eq!(canary.candidate_share(), 50);
        // The one latency more.
        counts.candidate.record(false, Duration::from_millis(100));
        assert_eq!(canary.advance(&counts, at(5001)), Some(Transition::RolledBack { guard: Guard::Latency }));

        // Nor with stable one short.
        let mut canary = Canary::new(config(), at(0)).expect("valid");
        let mut counts = CanaryCounts::default();
        for _ in 0..LATENCY_GUARD_MIN_SAMPLES - 1 {
            counts.stable.record(false, Duration::from_millis(1));
        }
        for _ in 0..5000 {
            counts.candidate.record(false, Duration::from_millis(100));
        }
        assert_eq!(canary.advance(&counts, at(10)), None);
        counts.stable.record(false, Duration::from_millis(1));
        assert_eq!(canary.advance(&counts, at(20)), Some(Transition::RolledBack { guard: Guard::Latency }));
    }

    #[test]
    fn the_latency_guard_needs_the_least_latencies_for_a_p99_bound() {
        assert_eq!(sequential::min_samples_for_quantile_upper_bound(P99, LATENCY_GUARD_ALPHA / 2.0), LATENCY_GUARD_MIN_SAMPLES);
    }

    #[test]
    fn a_step_waits_for_its_time_and_its_candidate_requests() {
        let mut canary = Canary::new(config(), at(1_000_000)).expect("valid");
        let mut counts = CanaryCounts::default();
        let record = |counts: &mut CanaryCounts, stable: u64, candidate: u64| {
            for _ in 0..stable {
                counts.stable.record(false, Duration::from_millis(1));
            }
            for _ in 0..candidate {
                counts.candidate.record(false, Duration::from_millis(1));
            }
        };
        record(&mut counts, 171, 19);
        assert_eq!(canary.advance(&counts, at(1_005_000)), None, "19 candidate requests");
        record(&mut counts, 9, 1);
        assert_eq!(canary.advance(&counts, at(1_000_999)), None, "999 ms");
        assert_eq!(canary.advance(&counts, at(1_001_000)), Some(Transition::Advanced { step: 1, share: 50 }));
        assert_eq!(
            canary.state(),
            &CanaryState::Stepping { step: 1, share: 50, since_ms: 1_001_000, candidate_requests_before: 20 }
        );
        // The next step counts its own requests.
        record(&mut counts, 10, 10);
        assert_eq!(canary.advance(&counts, at(1_010_000)), None);
        // Counts lower than at the step's start were reset: counted afresh.
        let mut reset = CanaryCounts::default();
        record(&mut reset, 5, 5);
        assert_eq!(canary.advance(&reset, at(1_010_000)), None);
        // A clock that went back is no time at the step.
        record(&mut counts, 10, 10);
        assert_eq!(canary.advance(&counts, at(0)), None);
    }

    #[test]
    fn canaries_travel_as_json_and_merge_towards_the_furthest() {
        let mut stepping = Canary::new(config(), at(0)).expect("valid");
        let mut counts = CanaryCounts::default();
        for _ in 0..30 {
            counts.stable.record(false, Duration::from_millis(1));
            counts.candidate.record(true, Duration::from_millis(1));
        }
        let json = serde_json::to_value(&stepping).expect("serializes");
        assert_eq!(json["state"]["state"], "stepping");
        assert_eq!(json["config"]["step-after"], "1s");
        assert_eq!(serde_json::from_value::<Canary>(json.clone()).expect("deserializes"), stepping);

        let mut rolled_back = stepping.clone();
        assert_eq!(rolled_back.advance(&counts, at(100)), Some(Transition::RolledBack { guard: Guard::ErrorRate }));
        let json = serde_json::to_value(&rolled_back).expect("serializes");
        assert_eq!(json["state"]["state"], "rolled-back");
        assert_eq!(json["state"]["guard"], "error-rate");
        assert_eq!(serde_json::from_value::<Canary>(json).expect("deserializes"), rolled_back);
        let counts_json = serde_json::to_string(&counts).expect("serializes");
        assert_eq!(serde_json::from_str::<CanaryCounts>(&counts_json).expect("deserializes"), counts);

        // A stored state that does not fit its steps is refused.
        let mut bad = serde_json::to_value(&stepping).expect("serializes");
        bad["state"]["step"] = 2.into();
        assert!(serde_json::from_value::<Canary>(bad).is_err());
        let mut bad = serde_json::to_value(&stepping).expect("serializes");
        bad["config"]["steps"] = serde_json::json!([10, 5, 100]);
        assert!(serde_json::from_value::<Canary>(bad).is_err());

        // A rollback wins over any step; a later step over an earlier; the
        // same state changes nothing; another configuration is ignored.
        let mut later = stepping.clone();
        later.state = CanaryState::Stepping { step: 1, share: 50, since_ms: 2000, candidate_requests_before: 20 };
        let mut promoted = stepping.clone();
        promoted.state = CanaryState::Promoted { at_ms: 3000 };
        let mut other_config = rolled_back.clone();
        other_config.config.max_p99_ratio = 4.0;
        assert!(!stepping.merge(&other_config));
        assert!(!stepping.merge(&stepping.clone()));
        assert!(stepping.merge(&later) && stepping == later);
        assert!(!stepping.merge(&Canary::new(config(), at(0)).expect("valid")));
        assert!(stepping.merge(&promoted) && stepping == promoted);
        assert!(stepping.merge(&rolled_back) && stepping == rolled_back);
        assert!(!stepping.merge(&promoted));
        assert_eq!(stepping.candidate_share(), 0);
        // At the same step, the earlier start.
        let mut earlier = later.clone();
        earlier.state = CanaryState::Stepping { step: 1, share: 50, since_ms: 1500, candidate_requests_before: 15 };
        assert!(later.merge(&earlier) && later == earlier);

        // Counts add up.
        let mut sum = counts.clone();
        sum.merge(&counts);
        assert_eq!((sum.stable.requests, sum.candidate.errors, sum.candidate.latency.count()), (60, 60, 60));
    }

    #[test]
    fn bad_configurations_are_refused_with_a_reason() {
        let with = |change: fn(&mut CanaryConfig)| {
            let mut config = config();
            change(&mut config);
            config.validate()
        };
        assert_eq!(with(|_| ()), Ok(()));
        assert_eq!(with(|c| c.candidate = "search".into()), Err(CanaryConfigError::SamePlugin("search".into())));
        assert_eq!(with(|c| c.stable = " ".into()), Err(CanaryConfigError::EmptyName("stable")));
        for steps in [vec![], vec![100], vec![10, 50], vec![0, 100], vec![50, 10, 100], vec![10, 10, 100], vec![10, 100, 100], vec![10, 150]] {
            let mut config = config();
            config.steps = steps.clone();
            assert_eq!(config.validate(), Err(CanaryConfigError::BadSteps(steps)));
        }
        assert!(matches!(with(|c| c.max_extra_error_rate = -0.1), Err(CanaryConfigError::BadErrorRate(_))));
        assert!(matches!(with(|c| c.max_extra_error_rate = f64::NAN), Err(CanaryConfigError::BadErrorRate(_))));
        assert!(matches!(with(|c| c.max_p99_ratio = 0.5), Err(CanaryConfigError::BadP99Ratio(_))));
        assert!(matches!(with(|c| c.max_p99_ratio = f64::INFINITY), Err(CanaryConfigError::BadP99Ratio(_))));
        assert_eq!(with(|c| c.sticky = Some(String::new())), Err(CanaryConfigError::EmptySticky));
        let message = Canary::new(CanaryConfig { steps: vec![10], ..config() }, at(0)).expect_err("refused").to_string();
        assert!(message.contains("[10]"), "{message}");
        // Unknown keys are refused, sticky is optional.
        assert!(toml::from_str::<CanaryConfig>(&format!("{EXAMPLE}\nmax-errors = 3")).is_err());
        let sticky: CanaryConfig = toml::from_str(&format!("{EXAMPLE}\nsticky = \"user\"")).expect("parses");
        assert_eq!(sticky.sticky.as_deref(), Some("user"));
    }
}
