//! A canary running on this server: the decisions of [`super::canary`]
//! fed with the requests the service answers, and the candidate's share
//! that routing reads.
//!
//! A [`Rollout`] counts each request of its route into [`CanaryCounts`]
//! and asks its [`Canary`] to judge them after each one, so a guard acts
//! on the request that breaches it. Routing reads the candidate's share
//! without a lock ([`Rollout::share`]).
//!
//! Counts come in two parts: this server's own (`own`, since the rollout
//! began here) and everyone else's (`others`: other servers sharing a
//! store, and this server's earlier runs), which the store's sync
//! replaces whole each time it reads them ([`Rollout::absorb`]); the
//! guards judge their sum. A rollout starts **unknown**: the candidate gets
//! nothing until its state has been read from the store (a canary rolled
//! back before a restart must not see a request after it), or until it is
//! started afresh ([`Rollout::start`], for a canary kept nowhere).
//!
//! Recording a request and judging the counts take about 1 to 3 µs (the
//! error guard's bound is a 64-step bisection; the latency guard's bounds
//! a scan of the buckets), under the rollout's lock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::canary::{Canary, CanaryConfig, CanaryConfigError, CanaryCounts, CanaryState, GuardFigures, Transition};

/// The candidate's share while a rollout's state is not known yet.
const UNKNOWN: u32 = 0;

/// A canary and the counts it judges.
#[derive(Debug)]
pub struct Rollout {
    config: CanaryConfig,
    /// The candidate's share now, in percent: 0 until the state is known.
    share: AtomicU32,
    live: Mutex<Live>,
}

#[derive(Debug)]
struct Live {
    canary: Canary,
    /// The state has been read from the store, or started afresh.
    known: bool,
    /// This server's requests since the rollout began here.
    own: CanaryCounts,
    /// Everyone else's, as last read from the store.
    others: CanaryCounts,
    /// `own` plus `others`: what the guards judge.
    total: CanaryCounts,
    /// Changed here since last handed to the store.
    unsaved_state: bool,
    unsaved_counts: bool,
}

/// What the store should keep of a rollout: this server's counts and its
/// state, each if it changed since it was last handed over.
#[derive(Debug, Clone, Default)]
pub struct Unsaved {
    pub counts: Option<CanaryCounts>,
    pub state: Option<Canary>,
}

/// What reading the store changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Absorbed {
    /// The state was known for the first time.
    pub started: bool,
    /// A state taken from the store, further along than this server's: a
    /// decision another server (or an earlier run) took.
    pub adopted: Option<CanaryState>,
    /// A decision taken here on the counts read.
    pub transition: Option<Transition>,
}

/// A canary as `/experiments` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryReport {
    /// The canary's table, as configured.
    pub config: CanaryConfig,
    /// `stepping` (with `step`, `share`, `since_ms`), `promoted` or
    /// `rolled-back` (with the `guard` and the `figures` that breached it).
    pub state: CanaryState,
    /// The candidate's share of the route's requests now, in percent.
    pub share: u32,
    /// False until the state was read from the store (the candidate gets
    /// nothing meanwhile).
    pub known: bool,
    /// What the guards see now, on the counts of every server that shares
    /// them (this one's alone without a shared store).
    pub guards: GuardFigures,
    /// Requests the guards judge (every server's), and this server's own.
    pub requests: CanaryRequests,
}

/// Requests counted by the canary, per arm.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CanaryRequests {
    pub stable: u64,
    pub candidate: u64,
    pub stable_here: u64,
    pub candidate_here: u64,
}

impl Rollout {
    /// A rollout of `config` whose first step begins `now`, not yet known.
    pub fn new(config: CanaryConfig, now: SystemTime) -> Result<Self, CanaryConfigError> {
        let canary = Canary::new(config.clone(), now)?;
        let live = Live {
            canary,
            known: false,
            own: CanaryCounts::default(),
            others: CanaryCounts::default(),
            total: CanaryCounts::default(),
            unsaved_state: true,
            unsaved_counts: false,
        };
        Ok(Self { config, share: AtomicU32::new(UNKNOWN), live: Mutex::new(live) })
    }

    pub fn config(&self) -> &CanaryConfig {
        &self.config
    }

    /// The candidate's share of requests now, in percent (0 to 100).
    pub fn share(&self) -> u32 {
        self.share.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        // Counts and state stay meaningful even if a holder panicked.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a rollout whose state no store holds: as configured, from
    /// its first step. Nothing if it is known already.
    pub fn start(&self) {
        let mut live = self.lock();
        if !live.known {
            live.known = true;
            self.share.store(live.canary.candidate_share(), Ordering::Relaxed);
        }
    }

    /// Whether the state is known (read from the store, or started).
    pub fn is_known(&self) -> bool {
        self.lock().known
    }

    /// The canary now.
    pub fn canary(&self) -> Canary {
        self.lock().canary.clone()
    }

    /// Counts a request answered by the candidate (or by stable), failed or
    /// not, and judges the counts at `now`; returns the decision, if one
    /// was taken.
    pub fn record(&self, candidate: bool, failed: bool, latency: Duration, now: SystemTime) -> Option<Transition> {
        let mut live = self.lock();
        let live = &mut *live;
        let (own, total) = if candidate { (&mut live.own.candidate, &mut live.total.candidate) } else { (&mut live.own.stable, &mut live.total.stable) };
        own.record(failed, latency);
        total.record(failed, latency);
        live.unsaved_counts = true;
        if !live.known {
            return None;
        }
        let transition = live.canary.advance(&live.total, now)?;
        live.unsaved_state = true;
        self.share.store(live.canary.candidate_share(), Ordering::Relaxed);
        Some(transition)
    }

    /// What the store should be given: the counts and state changed since
    /// the last call (whose handing over is then taken as done; give them
    /// back with [`Self::not_saved`] if it failed).
    pub fn take_unsaved(&self) -> Unsaved {
        let mut live = self.lock();
        let counts = std::mem::take(&mut live.unsaved_counts).then(|| live.own.clone());
        // Only a known state is saved: an unknown one is a guess.
        let state = (live.known && std::mem::take(&mut live.unsaved_state)).then(|| live.canary.clone());
        Unsaved { counts, state }
    }

    /// The store did not take `unsaved`: it is to be handed over again.
    pub fn not_saved(&self, unsaved: &Unsaved) {
        let mut live = self.lock();
        live.unsaved_counts |= unsaved.counts.is_some();
        live.unsaved_state |= unsaved.state.is_some();
    }

    /// Takes what the store holds: everyone else's counts (replacing those
    /// read before) and the states saved by any server (the one furthest
    /// along wins, [`Canary::merge`]); the rollout is then known, and
    /// judges the new sum at `now`.
    pub fn absorb(&self, others: CanaryCounts, stored: &[Canary], now: SystemTime) -> Absorbed {
        let mut live = self.lock();
        let live = &mut *live;
        let mut absorbed = Absorbed { started: !live.known, ..Absorbed::default() };
        live.known = true;
        let mut total = others.clone();
        total.merge(&live.own);
        live.others = others;
        live.total = total;
        for canary in stored {
            if live.canary.merge(canary) {
                absorbed.adopted = Some(live.canary.state().clone());
            }
        }
        absorbed.transition = live.canary.advance(&live.total, now);
        if absorbed.transition.is_some() {
            live.unsaved_state = true;
        }
        self.share.store(live.canary.candidate_share(), Ordering::Relaxed);
        absorbed
    }

    /// The canary's state, share, and what its guards see now.
    pub fn report(&self) -> CanaryReport {
        let live = self.lock();
        CanaryReport {
            config: self.config.clone(),
            state: live.canary.state().clone(),
            share: self.share(),
            known: live.known,
            guards: live.canary.guards(&live.total),
            requests: CanaryRequests {
                stable: live.total.stable.requests,
                candidate: live.total.candidate.requests,
                stable_here: live.own.stable.requests,
                candidate_here: live.own.candidate.requests,
            },
        }
    }
}

/// A sentence for the log about a canary's change: what it is now, and
/// for a rollback, the figures that breached the guard.
pub fn describe(config: &CanaryConfig, state: &CanaryState) -> String {
    let (stable, candidate) = (&config.stable, &config.candidate);
    match state {
        CanaryState::Stepping { step, share, .. } => {
            format!("candidate {candidate} at step {} of {} ({share} % of the requests, {stable} the rest)", step + 1, config.steps.len())
        }
        CanaryState::Promoted { .. } => format!("candidate {candidate} promoted: it answers every request ({stable} none)"),
        CanaryState::RolledBack { guard, figures, .. } => {
            let errors = &figures.error_rate;
            let latency = &figures.latency;
            let detail = match guard {
                super::canary::Guard::ErrorRate => format!(
                    "{candidate} failed {} of {} requests, {stable} {} of {}; the candidate's error rate is above stable's by more than max-extra-error-rate {}{}",
                    errors.candidate_errors,
                    errors.candidate_requests,
                    errors.stable_errors,
                    errors.stable_requests,
                    errors.limit,
                    errors.extra_error_rate.map(|c| format!(" (at least {:+.4}, 95 % anytime-valid)", c.interval.low)).unwrap_or_default()
                ),
                super::canary::Guard::Latency => format!(
                    "{candidate}'s p99 is at least {} against at most {} for {stable}, more than max-p99-ratio {} times ({} and {} latencies)",
                    seconds(latency.candidate_p99_lower_seconds),
                    seconds(latency.stable_p99_upper_seconds),
                    latency.limit,
                    latency.candidate_latencies,
                    latency.stable_latencies
                ),
            };
            format!("candidate {candidate} rolled back by the {guard} guard: {detail}; every request goes to {stable} until the canary's configuration changes")
        }
    }
}

fn seconds(value: Option<f64>) -> String {
    match value {
        Some(s) if s < 1.0 => format!("{:.3} ms", s * 1e3),
        Some(s) => format!("{s:.3} s"),
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::canary::Guard;

    use crate::experiments::canary::testing::{MS, at, config};

    #[test]
    fn the_candidate_gets_nothing_until_the_state_is_known() {
        let rollout = Rollout::new(config(), at(0)).expect("valid");
        assert_eq!((rollout.share(), rollout.is_known()), (0, false));
        // Counted, but not judged: failures before the start decide nothing.
        for _ in 0..50 {
            assert_eq!(rollout.record(true, true, MS, at(10)), None);
        }
        assert_eq!(rollout.take_unsaved().state, None, "an unknown state is not saved");
        rollout.start();
        assert_eq!(rollout.share(), 10);
        // Judged from the next request on, with what was counted before.
        let transition = (0..30).find_map(|_| rollout.record(false, false, MS, at(30)));
        assert_eq!(transition, Some(Transition::RolledBack { guard: Guard::ErrorRate }));
        assert_eq!(rollout.share(), 0);
        let report = rollout.report();
        assert!(matches!(report.state, CanaryState::RolledBack { guard: Guard::ErrorRate, .. }), "{report:?}");
        assert_eq!((report.requests.candidate, report.requests.candidate_here), (50, 50));
        let sentence = describe(rollout.config(), &report.state);
        assert!(sentence.starts_with("candidate search@fuzzy rolled back by the error-rate guard: search@fuzzy failed 50 of 50 requests, search 0 of "), "{sentence}");
    }

    #[test]
    fn a_rollback_read_from_the_store_is_taken_and_counts_add_up() {
        let rollout = Rollout::new(config(), at(5000)).expect("valid");
        // An earlier run rolled it back.
        let mut before = Canary::new(config(), at(0)).expect("valid");
        let mut counts = CanaryCounts::default();
        for _ in 0..30 {
            counts.stable.record(false, MS);
            counts.candidate.record(true, MS);
        }
        assert!(matches!(before.advance(&counts, at(100)), Some(Transition::RolledBack { .. })));
        let absorbed = rollout.absorb(counts.clone(), std::slice::from_ref(&before), at(6000));
        assert!(absorbed.started && absorbed.transition.is_none());
        assert!(matches!(absorbed.adopted, Some(CanaryState::RolledBack { .. })), "{absorbed:?}");
        assert_eq!(rollout.share(), 0);
        // The adopted state is the store's already: nothing to save but counts.
        rollout.record(false, false, MS, at(6001));
        let unsaved = rollout.take_unsaved();
        assert_eq!(unsaved.counts.as_ref().map(|c| (c.stable.requests, c.candidate.requests)), Some((1, 0)));
        assert!(unsaved.state.is_some(), "the rollout's first state is saved once known");
        assert!(rollout.take_unsaved().counts.is_none(), "handed over");
        rollout.not_saved(&unsaved);
        assert!(rollout.take_unsaved().counts.is_some(), "given back");
        let report = rollout.report();
        assert_eq!((report.requests.stable, report.requests.stable_here), (31, 1));
    }

    #[test]
    fn a_step_saved_by_another_server_is_taken_at_its_start() {
        let rollout = Rollout::new(config(), at(5000)).expect("valid");
        rollout.start();
        let mut other = Canary::new(config(), at(0)).expect("valid");
        let mut counts = CanaryCounts::default();
        for _ in 0..180 {
            counts.stable.record(false, MS);
        }
        for _ in 0..20 {
            counts.candidate.record(false, MS);
        }
        assert_eq!(other.advance(&counts, at(1000)), Some(Transition::Advanced { step: 1, share: 50 }));
        let absorbed = rollout.absorb(counts, &[other.clone()], at(5001));
        assert_eq!(absorbed.adopted.as_ref(), Some(other.state()));
        assert_eq!(rollout.share(), 50);
        assert!(!absorbed.started);
    }
}
