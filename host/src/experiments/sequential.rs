//! Results that stay valid while you watch: anytime-valid confidence
//! sequences for rates and for latency quantiles, computed from counts.
//!
//! # The guarantee
//!
//! A *confidence sequence* at level `1 − α` is a sequence of intervals, one
//! for every number of requests `n`, that contain the true value **at every
//! `n` at once** with probability at least `1 − α`. So the page may be looked
//! at after every request, an experiment may be stopped the first time it
//! says "significant", and a canary may roll back at the first sign of
//! trouble: the chance of ever calling a difference that is not there stays
//! at most `α`. A fixed-sample interval (Newcombe's, [`super::stats`]) gives
//! that only for one look at a sample size chosen in advance; looked at after
//! every request it finds differences that are not there in a large share
//! of A/A experiments (the tests below show both). The guarantee is
//! nonasymptotic: it holds at 20 requests as at 20 million, with no normal
//! approximation.
//!
//! # The method: conjugate (beta-binomial) mixture martingales
//!
//! For requests that succeed with probability `p` (an error, an outcome),
//! with `s` successes and `f` failures among `n = s + f`, the *mixture
//! likelihood ratio* against `p` is
//!
//! ```text
//! M(p) = ∫ r^s (1 − r)^f dBeta(r; a, b)  /  p^s (1 − p)^f
//!      = B(a + s, b + f) / B(a, b)  /  p^s (1 − p)^f
//! ```
//!
//! Under `p`, `M(p)` is a nonnegative martingale with `M = 1` before any
//! request, so by Ville's inequality it ever reaches `1/α` with probability
//! at most `α`. The set `{p : M(p) < 1/α}` is therefore a confidence
//! sequence: Robbins' method of mixtures (H. Robbins, "Statistical methods
//! related to the law of the iterated logarithm", Ann. Math. Statist. 41,
//! 1970), in the form of the beta-binomial conjugate mixture of S. R. Howard,
//! A. Ramdas, J. McAuliffe and J. Sekhon, "Time-uniform, nonparametric,
//! nonasymptotic confidence sequences", Annals of Statistics 49 (2021).
//! The tests check the mixture against the values of their reference
//! implementation (the `confseq` library's `BetaBinomialMixture`).
//!
//! The mixing distribution is the Jeffreys prior Beta(½, ½) for rates: it
//! weighs like one observation, so the intervals are useful from the first
//! few requests (a candidate that fails every request is caught after a
//! handful), and at rates near 0 (errors) it is tighter than the uniform
//! prior of Robbins' original. Howard et al. also tune the mixture for a
//! chosen sample size; that narrows the interval there by about a quarter
//! but makes it useless at small counts, which is where a canary must act.
//!
//! # Two arms
//!
//! The two arms' martingales multiply: `M₁(p₁)·M₂(p₂)` is again a
//! nonnegative martingale under the true `(p₁, p₂)` (each request moves one
//! factor; which arm it goes to does not depend on its outcome), so
//! `{(p₁, p₂) : M₁(p₁)·M₂(p₂) < 1/α}` is a joint confidence sequence at
//! `1 − α`, and its projection onto `p₂ − p₁` one for the difference. That
//! is narrower than intersecting each arm's own sequence at `α/2`. A
//! difference is *significant* when 0 is outside it, i.e. when the smallest
//! value of the product over `p₁ = p₂` reaches `1/α`; that smallest value
//! has a closed form (the pooled rate maximizes the denominator), the
//! "universal inference" statistic of Wasserman, Ramdas and Balakrishnan
//! (PNAS 117, 2020) with a mixture in the numerator.
//!
//! # Latency quantiles
//!
//! A bound on an arm's p99 is a bound on a rate (S. R. Howard and
//! A. Ramdas, "Sequential estimation of quantiles with applications to A/B
//! testing and best-arm identification", Bernoulli 28, 2022): if the true
//! p99 is `ξ`, at most 99 % of latencies are below `ξ`, so a bucket edge `x`
//! below which more than 99 % of the arm's latencies fall *for sure* (the
//! rate's lower confidence bound exceeds 0.99) is an upper bound on `ξ`.
//! Only one rate is tested (that of `X < ξ`), and counting below a lower
//! edge only lowers it, so no correction for scanning many buckets is
//! needed. Here the mixture is centred on the quantile, Beta(q, 1 − q),
//! again of the weight of one observation: an upper bound on p99 then
//! exists from 305 latencies at α = 5 % (one-sided; 374 for the two-sided
//! bounds of [`LatencyHistogram::p99_bounds`]), against 299 for a
//! fixed-sample bound and 680 with the Jeffreys prior. The lower bound uses
//! the rate of `X > ξ` (at most 1 %) the same way.
//!
//! Latencies are counted in a [`LatencyHistogram`], whose buckets are those
//! of Prometheus' native histograms (and OpenTelemetry's exponential ones)
//! at schema 2: four per doubling, each 19 % wider than the last. Bounds and
//! percentiles fall on bucket edges, so they are exact to within a bucket:
//! at most 19 % high (an upper bound or a percentile) or low (a lower bound).
//!
//! # Functions of counts only
//!
//! Everything here is a function of counts (successes and trials, requests
//! per bucket), never of the order the requests came in. Counts summed
//! across a fleet, or kept in Redis, give exactly the answer one server
//! would give had it seen all the requests, and the guarantee carries over
//! to each server: its views (its own counts live, the others' as last
//! read) each hold the one before, so they are prefixes of one sequence of
//! requests (order them by the first view that includes them), and the
//! martingale of that one sequence covers all of them at once. Two
//! servers' views are not nested (each is ahead on its own requests): a
//! decision any of N servers may take holds at level `1 − N·α` (a union
//! bound).
//! Betting confidence sequences (Waudby-Smith and Ramdas, JRSS-B 2023) can
//! be tighter but depend on the order of the requests: a fleet's summed
//! counts are not the wealth of any one bettor, so merging them would need
//! every request's outcome in order. The assumption that remains is the
//! usual one: requests are alike over time (independent, with fixed rates
//! and latency distributions), and which arm a request goes to does not
//! depend on how it would turn out.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The error rate the page and the canaries' guards allow, over an
/// experiment's whole life however often it is looked at.
pub const ALPHA: f64 = 0.05;

/// The quantile the latency bounds are about.
pub const P99: f64 = 0.99;

/// Latencies an arm needs before [`LatencyHistogram::p99_bounds`] at
/// [`ALPHA`] can give an upper bound (checked by a test against
/// [`min_samples_for_quantile_upper_bound`]`(P99, ALPHA / 2)`).
pub const P99_MIN_SAMPLES: u64 = 374;

/// An interval `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// True if the interval lies wholly on one side of 0.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// `ln(1/α)`, the level a log mixture must reach to reject. An `alpha`
/// outside (0, 1) is taken at the nearest end, NaN as the strictest.
fn threshold(alpha: f64) -> f64 {
    let alpha = if alpha >= 1.0 {
        1.0
    } else if alpha > 0.0 {
        alpha
    } else {
        f64::MIN_POSITIVE
    };
    -alpha.ln()
}

fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

/// `s·ln p + f·ln(1 − p)`, with `0·ln 0 = 0` (and `−∞` where a count
/// meets a probability of 0).
fn log_likelihood(successes: f64, failures: f64, p: f64) -> f64 {
    let mut sum = 0.0;
    if successes > 0.0 {
        sum += successes * p.ln();
    }
    if failures > 0.0 {
        // ln(1 − p), accurate for small rates.
        sum += failures * (-p).ln_1p();
    }
    sum
}

/// A Beta(a, b) mixing distribution over the alternative rate.
#[derive(Debug, Clone, Copy)]
struct BetaMixture {
    a: f64,
    b: f64,
    ln_beta_ab: f64,
}

impl BetaMixture {
    fn new(a: f64, b: f64) -> Self {
        Self { a, b, ln_beta_ab: ln_beta(a, b) }
    }

    /// Jeffreys' prior, for rates.
    fn jeffreys() -> Self {
        Self::new(0.5, 0.5)
    }

    /// The weight of one observation, centred on `rate`: for the rate of
    /// latencies below a quantile, which is tested only near the quantile.
    fn centred_on(rate: f64) -> Self {
        Self::new(rate, 1.0 - rate)
    }

    /// The log of the mixture's probability of the counts (in any order).
    fn log_marginal(&self, successes: f64, failures: f64) -> f64 {
        ln_beta(self.a + successes, self.b + failures) - self.ln_beta_ab
    }

    /// `ln M(p)`: the log evidence of the counts against the rate `p`.
    fn log_evidence(&self, successes: f64, failures: f64, p: f64) -> f64 {
        self.log_marginal(successes, failures) - log_likelihood(successes, failures, p)
    }
}

/// Counts as `(successes, failures)`, successes capped at the trials.
fn split((successes, trials): (u64, u64)) -> (f64, f64) {
    let successes = successes.min(trials);
    (successes as f64, (trials - successes) as f64)
}

/// Bisections halve an interval this many times: more than enough for the
/// 52 bits of an `f64` in (0, 1).
const BISECTIONS: usize = 64;

/// The anytime-valid confidence interval for the rate `successes / trials`
/// at level `1 − alpha`: it holds at every number of trials at once. With
/// no trials it is `[0, 1]`.
pub fn rate_interval(successes: u64, trials: u64, alpha: f64) -> Interval {
    if trials == 0 {
        return Interval { low: 0.0, high: 1.0 };
    }
    let (s, f) = split((successes, trials));
    let mixture = BetaMixture::jeffreys();
    let level = mixture.log_marginal(s, f) - threshold(alpha);
    // `p` is rejected when ln M(p) ≥ ln(1/α), i.e. when its log likelihood
    // is at most `level`. The likelihood is largest at s/n, where no `p`
    // is rejected (the mixture never beats the best fit); it falls away on
    // both sides, so each bound is one crossing, found by bisection. Each
    // bound is returned on its rejected side: the interval errs wide.
    let rejected = |p: f64| log_likelihood(s, f, p) <= level;
    let estimate = s / (s + f);
    let low = if s > 0.0 { crossing(0.0, estimate, rejected) } else { 0.0 };
    let high = if f > 0.0 { crossing(1.0, estimate, rejected) } else { 1.0 };
    Interval { low, high }
}

/// The point between `out` (rejected) and `inside` (not) where `rejected`
/// changes, found by bisection and returned on its rejected side, so that
/// an interval bounded by it errs wide.
fn crossing(mut out: f64, mut inside: f64, rejected: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..BISECTIONS {
        let mid = 0.5 * (out + inside);
        if rejected(mid) { out = mid } else { inside = mid }
    }
    out
}

/// Two arms' counts, each `(successes, trials)`: the first arm (the
/// baseline, stable) and the other (the variant, the candidate).
#[derive(Debug, Clone, Copy)]
struct TwoArms {
    first: (f64, f64),
    other: (f64, f64),
    /// `ln` of both mixtures' probabilities of the counts.
    log_marginals: f64,
}

impl TwoArms {
    /// `None` if either arm has no trials.
    fn new(first: (u64, u64), other: (u64, u64)) -> Option<Self> {
        if first.1 == 0 || other.1 == 0 {
            return None;
        }
        let (first, other) = (split(first), split(other));
        let mixture = BetaMixture::jeffreys();
        let log_marginals = mixture.log_marginal(first.0, first.1) + mixture.log_marginal(other.0, other.1);
        Some(Self { first, other, log_marginals })
    }

    fn rate(counts: (f64, f64)) -> f64 {
        counts.0 / (counts.0 + counts.1)
    }

    /// The observed difference, the other arm's rate minus the first's.
    fn difference(&self) -> f64 {
        Self::rate(self.other) - Self::rate(self.first)
    }

    /// `ln` of the smallest `M₁(p₁)·M₂(p₂)` over `p₂ − p₁ = d`: the
    /// evidence against the difference `d`. Convex in `d`, below 0 at the
    /// observed difference.
    fn log_evidence_against(&self, d: f64) -> f64 {
        let ((s1, f1), (s2, f2)) = (self.first, self.other);
        // Minimize −ln L₁(x) − ln L₂(x + d) over x; its derivative grows
        // with x, so bisect on its sign.
        let (mut lo, mut hi) = ((-d).max(0.0), (1.0 - d).min(1.0));
        if lo > hi {
            return f64::INFINITY;
        }
        let slope = |x: f64| {
            let y = x + d;
            let part = |s: f64, f: f64, p: f64| {
                let mut v = 0.0;
                if s > 0.0 {
                    v -= s / p;
                }
                if f > 0.0 {
                    v += f / (1.0 - p);
                }
                v
            };
            part(s1, f1, x) + part(s2, f2, y)
        };
        for _ in 0..BISECTIONS {
            let mid = 0.5 * (lo + hi);
            if slope(mid) > 0.0 { hi = mid } else { lo = mid }
        }
        let x = 0.5 * (lo + hi);
        self.log_marginals - log_likelihood(s1, f1, x) - log_likelihood(s2, f2, (x + d).clamp(0.0, 1.0))
    }

    /// `ln` of the smallest product over `p₁ = p₂`, in closed form: the
    /// pooled rate maximizes the likelihood of both arms at one rate.
    fn log_evidence_against_equal(&self) -> f64 {
        let (s, f) = (self.first.0 + self.other.0, self.first.1 + self.other.1);
        self.log_marginals - log_likelihood(s, f, s / (s + f))
    }

    /// The confidence sequence for the difference at `ln(1/α) = level`.
    fn interval(&self, level: f64) -> Interval {
        let estimate = self.difference();
        let rejected = |d: f64| self.log_evidence_against(d) >= level;
        let low = if rejected(-1.0) { crossing(-1.0, estimate, rejected) } else { -1.0 };
        let high = if rejected(1.0) { crossing(1.0, estimate, rejected) } else { 1.0 };
        Interval { low, high }
    }
}

/// One arm's rate against another's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateComparison {
    /// The other arm's rate minus the first's.
    pub difference: f64,
    /// Anytime-valid bounds on the true difference.
    pub interval: Interval,
    /// The bounds exclude 0 ([`rates_differ`]).
    pub significant: bool,
}

/// The rate `x₂/n₂` of the `other` arm against `x₁/n₁` of the `first`,
/// each given as `(successes, trials)`, with anytime-valid bounds on the
/// difference at level `1 − alpha`; `None` while either arm has no trials.
pub fn compare_rates(first: (u64, u64), other: (u64, u64), alpha: f64) -> Option<RateComparison> {
    let arms = TwoArms::new(first, other)?;
    let level = threshold(alpha);
    Some(RateComparison {
        difference: arms.difference(),
        interval: arms.interval(level),
        significant: arms.log_evidence_against_equal() >= level,
    })
}

/// Whether the two arms' rates differ at level `alpha`: 0 is outside the
/// bounds of [`compare_rates`]. Cheap (a closed form): fit to be asked
/// after every request.
pub fn rates_differ(first: (u64, u64), other: (u64, u64), alpha: f64) -> bool {
    TwoArms::new(first, other).is_some_and(|arms| arms.log_evidence_against_equal() >= threshold(alpha))
}

/// Whether the `other` arm's rate is, for sure at level `alpha`, more than
/// `margin` above the `first` arm's: the lower bound of [`compare_rates`]
/// exceeds `margin`. One-sided use of the same bounds; cheap enough to ask
/// after every request.
pub fn rate_exceeds(first: (u64, u64), other: (u64, u64), margin: f64, alpha: f64) -> bool {
    let Some(arms) = TwoArms::new(first, other) else {
        return false;
    };
    // The evidence falls towards the observed difference, so the least
    // evidence against "at most `margin` above" is at `margin` itself.
    margin < 1.0 && arms.difference() > margin && arms.log_evidence_against(margin.max(-1.0)) >= threshold(alpha)
}

/// Whether `k` of `n` observations below some value shows, at level
/// `ln(1/α) = level`, that more than the share `q` of all observations lie
/// below it. Holds from some least `k` on (the evidence grows with `k`
/// above `q·n`).
fn share_exceeds(k: u64, n: u64, q: f64, level: f64) -> bool {
    let (k, n) = (k as f64, n as f64);
    k > q * n && BetaMixture::centred_on(q).log_evidence(k, n - k, q) >= level
}

/// The least number of observations at which an anytime-valid upper bound
/// on the `q` quantile exists at all at level `1 − alpha` (one-sided): with
/// fewer, even all of them below a value does not show that the quantile
/// is below it. 305 for p99 at α = 5 %, 374 at 2.5 %, 443 at 1.25 %.
/// `u64::MAX` for a `q` outside (0, 1).
pub fn min_samples_for_quantile_upper_bound(q: f64, alpha: f64) -> u64 {
    if !(q > 0.0 && q < 1.0) {
        return u64::MAX;
    }
    let level = threshold(alpha);
    // The evidence of n out of n grows with n (from n = 2 on): double,
    // then bisect.
    let mut high = 1u64;
    while !share_exceeds(high, high, q, level) {
        if high > u64::MAX / 4 {
            return u64::MAX;
        }
        high *= 2;
    }
    let mut low = high / 2;
    while low + 1 < high {
        let mid = low + (high - low) / 2;
        if share_exceeds(mid, mid, q, level) { high = mid } else { low = mid }
    }
    high
}

/// One bucket of a latency histogram: `count` latencies in `(low, high]`
/// seconds (`high` is infinite for the last bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub low: f64,
    pub high: f64,
    pub count: u64,
}

/// An anytime-valid upper bound, in seconds, on the `q` quantile of the
/// latencies counted in `buckets` (in ascending order), at level
/// `1 − alpha` (one-sided); `None` while there is none (too few latencies,
/// or the bound would be the unbounded last bucket).
pub fn quantile_upper_bound(buckets: &[Bucket], q: f64, alpha: f64) -> Option<f64> {
    upper_bound(buckets.iter().copied(), q, alpha)
}

/// An anytime-valid lower bound, in seconds, on the `q` quantile of the
/// latencies counted in `buckets` (in ascending order), at level
/// `1 − alpha` (one-sided); `None` while there is none above 0.
pub fn quantile_lower_bound(buckets: &[Bucket], q: f64, alpha: f64) -> Option<f64> {
    lower_bound(buckets.iter().copied(), q, alpha)
}

fn upper_bound(buckets: impl Iterator<Item = Bucket> + Clone, q: f64, alpha: f64) -> Option<f64> {
    if !(q > 0.0 && q < 1.0) {
        return None;
    }
    let total: u64 = buckets.clone().map(|b| b.count).fold(0, u64::saturating_add);
    let level = threshold(alpha);
    // The first edge below which the share of latencies exceeds q for sure.
    let mut below = 0u64;
    for bucket in buckets {
        below = below.saturating_add(bucket.count);
        if bucket.count > 0 && share_exceeds(below, total, q, level) {
            return bucket.high.is_finite().then_some(bucket.high);
        }
    }
    None
}

fn lower_bound(buckets: impl DoubleEndedIterator<Item = Bucket> + Clone, q: f64, alpha: f64) -> Option<f64> {
    if !(q > 0.0 && q < 1.0) {
        return None;
    }
    let total: u64 = buckets.clone().map(|b| b.count).fold(0, u64::saturating_add);
    let level = threshold(alpha);
    // The last edge above which the share of latencies exceeds 1 − q for
    // sure.
    let mut above = 0u64;
    for bucket in buckets.rev() {
        above = above.saturating_add(bucket.count);
        if bucket.count > 0 && share_exceeds(above, total, 1.0 - q, level) {
            return (bucket.low > 0.0).then_some(bucket.low);
        }
    }
    None
}

/// Anytime-valid bounds on a quantile, in seconds; `None` where there is no
/// bound yet (a lower bound of 0, an upper bound of infinity).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantileBounds {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

/// Buckets per doubling of the latency: Prometheus' native histogram
/// schema 2 (OpenTelemetry's exponential histogram scale 2).
const BUCKETS_PER_DOUBLING: i32 = 4;

/// The lowest bucket ends at 2^(−80/4) s (0.95 µs) and holds everything
/// shorter.
const LOWEST_INDEX: i32 = -80;

/// The highest bounded bucket ends at 2^(24/4) = 64 s; longer latencies are
/// counted above it.
const HIGHEST_INDEX: i32 = 24;

/// Bounded buckets, and one above them.
const BUCKETS: usize = (HIGHEST_INDEX - LOWEST_INDEX + 1) as usize + 1;

/// The upper edge, in seconds, of the bucket with Prometheus index `index`.
fn upper_edge(index: i32) -> f64 {
    (f64::from(index) / f64::from(BUCKETS_PER_DOUBLING)).exp2()
}

/// A histogram of latencies that adds up across servers: counts per bucket
/// of fixed edges, `(2^((i−1)/4), 2^(i/4)]` seconds for index `i` (those of
/// Prometheus' native histograms at schema 2), from 1 µs to 64 s, and a
/// count above. A percentile read from it is the upper edge of its bucket:
/// at most 19 % above the true one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SparseHistogram", try_from = "SparseHistogram")]
pub struct LatencyHistogram {
    /// By position: index `LOWEST_INDEX + position`, the last above all.
    counts: Box<[u64; BUCKETS]>,
    total: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { counts: Box::new([0; BUCKETS]), total: 0 }
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sparse = SparseHistogram::from(self.clone());
        f.debug_struct("LatencyHistogram").field("total", &self.total).field("buckets", &sparse.buckets).field("above", &sparse.above).finish()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// The position of the bucket holding `seconds`.
    fn position(seconds: f64) -> usize {
        // Not above the lowest edge, or not comparable (NaN): the first.
        if seconds.partial_cmp(&upper_edge(LOWEST_INDEX)) != Some(std::cmp::Ordering::Greater) {
            return 0;
        }
        if seconds > upper_edge(HIGHEST_INDEX) {
            return BUCKETS - 1;
        }
        // The edge is irrational but for whole doublings; a rounding error
        // in the logarithm is put right against the edges themselves.
        let mut index = (seconds.log2() * f64::from(BUCKETS_PER_DOUBLING)).ceil() as i32;
        index = index.clamp(LOWEST_INDEX, HIGHEST_INDEX);
        if upper_edge(index) < seconds {
            index += 1;
        } else if index > LOWEST_INDEX && upper_edge(index - 1) >= seconds {
            index -= 1;
        }
        (index - LOWEST_INDEX) as usize
    }

    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        self.record_seconds(latency.as_secs_f64(), 1);
    }

    /// Counts `count` latencies of `seconds`.
    pub fn record_seconds(&mut self, seconds: f64, count: u64) {
        let slot = &mut self.counts[Self::position(seconds)];
        *slot = slot.saturating_add(count);
        self.total = self.total.saturating_add(count);
    }

    /// Adds another histogram's counts (another server's, another window's).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.total = self.total.saturating_add(other.total);
    }

    /// Latencies counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Every bucket, empty ones too, in ascending order; the last is the
    /// one above 64 s, with an infinite `high`.
    pub fn buckets(&self) -> impl DoubleEndedIterator<Item = Bucket> + Clone + '_ {
        self.counts.iter().enumerate().map(|(position, &count)| {
            let index = LOWEST_INDEX + position as i32;
            let low = if position == 0 { 0.0 } else { upper_edge(index - 1) };
            let high = if position == BUCKETS - 1 { f64::INFINITY } else { upper_edge(index) };
            Bucket { low, high, count }
        })
    }

    /// The `q` quantile as the upper edge of its bucket, in seconds (at most
    /// 19 % above the true one; 64 s if it is above the buckets); `None`
    /// while empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut below = 0u64;
        for bucket in self.buckets() {
            below = below.saturating_add(bucket.count);
            if below >= rank {
                return Some(if bucket.high.is_finite() { bucket.high } else { bucket.low });
            }
        }
        None
    }

    /// Anytime-valid bounds on the `q` quantile that hold together at level
    /// `1 − alpha` (each side at `alpha / 2`).
    pub fn quantile_bounds(&self, q: f64, alpha: f64) -> QuantileBounds {
        QuantileBounds { lower: self.quantile_lower_bound(q, alpha / 2.0), upper: self.quantile_upper_bound(q, alpha / 2.0) }
    }

    /// [`Self::quantile_bounds`] of the p99. The upper bound needs
    /// [`P99_MIN_SAMPLES`] latencies at [`ALPHA`].
    pub fn p99_bounds(&self, alpha: f64) -> QuantileBounds {
        self.quantile_bounds(P99, alpha)
    }

    /// One-sided: see [`quantile_upper_bound`].
    pub fn quantile_upper_bound(&self, q: f64, alpha: f64) -> Option<f64> {
        upper_bound(self.buckets(), q, alpha)
    }

    /// One-sided: see [`quantile_lower_bound`].
    pub fn quantile_lower_bound(&self, q: f64, alpha: f64) -> Option<f64> {
        lower_bound(self.buckets(), q, alpha)
    }
}

/// How a [`LatencyHistogram`] is stored and sent: only the buckets with a
/// count.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SparseHistogram {
    /// `[index, count]`: `count` latencies in `(2^((index−1)/4),
    /// 2^(index/4)]` seconds; the lowest index (−80) holds everything
    /// shorter too.
    buckets: Vec<(i32, u64)>,
    /// Latencies above 64 s.
    above: u64,
}

impl From<LatencyHistogram> for SparseHistogram {
    fn from(histogram: LatencyHistogram) -> Self {
        let bounded = &histogram.counts[..BUCKETS - 1];
        let buckets = bounded.iter().enumerate().filter(|(_, c)| **c > 0).map(|(position, &count)| (LOWEST_INDEX + position as i32, count)).collect();
        Self { buckets, above: histogram.counts[BUCKETS - 1] }
    }
}

impl TryFrom<SparseHistogram> for LatencyHistogram {
    type Error = String;

    fn try_from(sparse: SparseHistogram) -> Result<Self, String> {
        let mut histogram = LatencyHistogram::new();
        for (index, count) in sparse.buckets {
            if !(LOWEST_INDEX..=HIGHEST_INDEX).contains(&index) {
                return Err(format!("latency bucket index {index} is outside {LOWEST_INDEX}..={HIGHEST_INDEX}"));
            }
            let slot = &mut histogram.counts[(index - LOWEST_INDEX) as usize];
            *slot = slot.saturating_add(count);
            histogram.total = histogram.total.saturating_add(count);
        }
        histogram.counts[BUCKETS - 1] = sparse.above;
        histogram.total = histogram.total.saturating_add(sparse.above);
        Ok(histogram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::stats;

    /// The mixture of `confseq`'s `BetaBinomialMixture` (the reference
    /// implementation of Howard et al.), two-sided, for the rate `g` under
    /// test: over the alternative rate, Beta(r/h, r/g) with h = 1 − g,
    /// r = ρ − g·h and ρ = v_opt / (2 ln(1/α_opt) + ln(1 + 2 ln(1/α_opt))).
    /// Its arguments are the centred sum s = S − g·n and v = g·h·n.
    fn confseq_mixture(v_opt: f64, alpha_opt: f64, g: f64) -> BetaMixture {
        let h = 1.0 - g;
        let l = (1.0 / alpha_opt).ln();
        let rho = v_opt / (2.0 * l + (1.0 + 2.0 * l).ln());
        let r = (rho - g * h).max(1e-3 * g * h);
        BetaMixture::new(r / h, r / g)
    }

    /// `confseq`'s test/uniform_boundaries_unittest.cpp,
    /// `TestTwoSidedBetaBinomialMixture` (its values come from the
    /// authors' R implementation): with v_opt = 100, α_opt = 0.05,
    /// g = 0.2, h = 0.8, `log_superMG(s = 10, v = 100)` is −0.6941012 and
    /// the boundary `bound(v = 100, ln 20)` is 31.4308.
    #[test]
    fn the_mixture_matches_the_reference_implementation() {
        let (g, v) = (0.2, 100.0);
        let mixture = confseq_mixture(100.0, 0.05, g);
        let n = v / (g * (1.0 - g)); // 625 trials
        let evidence = |s: f64| mixture.log_evidence(g * n + s, n - g * n - s, g);
        assert!((evidence(10.0) - -0.6941012).abs() < 1e-6, "{}", evidence(10.0));
        // The boundary: the centred sum at which the evidence reaches ln 20.
        let out = crossing(v / g, 0.0, |s| evidence(s) >= 20f64.ln());
        assert!((out - 31.4308).abs() < 1e-4, "{out}");
    }

    /// With the uniform prior the mixture is Robbins' (1970): `M(p) =
    /// 1 / ((n + 1)·C(n, s)·p^s·(1 − p)^(n − s))`.
    #[test]
    fn with_a_uniform_mixture_it_is_robbins_1970() {
        let uniform = BetaMixture::new(1.0, 1.0);
        // n = 10, s = 3, p = ½: (n + 1)·C(10, 3)/2¹⁰ = 11·120/1024.
        assert!((uniform.log_evidence(3.0, 7.0, 0.5) + (11.0 * 120.0 / 1024.0f64).ln()).abs() < 1e-12);
        // n = 20, s = 0, p = 0.1: 21·0.9²⁰.
        assert!((uniform.log_evidence(0.0, 20.0, 0.1) + (21.0 * 0.9f64.powi(20)).ln()).abs() < 1e-12);
    }

    #[test]
    fn rate_intervals_hold_the_estimate_and_reach_the_edges_only_with_no_events() {
        assert_eq!(rate_interval(0, 0, ALPHA), Interval { low: 0.0, high: 1.0 });
        for (s, n) in [(0, 1), (1, 1), (0, 50), (3, 50), (50, 1000), (500, 1000), (999, 1000), (1000, 1000)] {
            let interval = rate_interval(s, n, ALPHA);
            let estimate = s as f64 / n as f64;
            assert!(interval.low <= estimate && estimate <= interval.high, "{s}/{n}: {interval:?}");
            assert_eq!(interval.low == 0.0, s == 0, "{s}/{n}: {interval:?}");
            assert_eq!(interval.high == 1.0, s == n, "{s}/{n}: {interval:?}");
        }
        // More trials at the same rate: narrower.
        let widths: Vec<f64> = [100, 1000, 10_000, 100_000].iter().map(|&n| rate_interval(n / 20, n, ALPHA)).map(|i| i.high - i.low).collect();
        assert!(widths.windows(2).all(|w| w[1] < w[0]), "{widths:?}");
        // Successes beyond the trials count as all of them.
        assert_eq!(rate_interval(7, 5, ALPHA), rate_interval(5, 5, ALPHA));
    }

    /// Figures from the same formula evaluated in Python (math.lgamma and
    /// bisection): 50 of 1000 and 500 of 1000 at α = 5 %, against the
    /// fixed-sample Wilson intervals, which are narrower (the price of
    /// looking at any time).
    #[test]
    fn rate_intervals_are_wider_than_fixed_sample_ones_by_the_price_of_watching() {
        for ((s, n), (low, high)) in [((50, 1000), (0.0287, 0.0792)), ((500, 1000), (0.4424, 0.5576)), ((1, 20), (0.0002, 0.3307))] {
            let interval = rate_interval(s, n, ALPHA);
            assert!((interval.low - low).abs() < 1e-4 && (interval.high - high).abs() < 1e-4, "{s}/{n}: {interval:?}");
            let wilson = stats::wilson(s, n, stats::Z95).expect("trials");
            assert!(interval.low < wilson.low && interval.high > wilson.high, "{s}/{n}: {interval:?} against {wilson:?}");
        }
    }

    #[test]
    fn comparisons_are_significant_exactly_when_their_bounds_exclude_zero() {
        let sizes = [1u64, 5, 20, 100, 1000];
        let mut significant = 0;
        for &n1 in &sizes {
            for &n2 in &sizes {
                for x1 in [0, n1 / 10, n1 / 2, n1] {
                    for x2 in [0, n2 / 20, n2 / 3, n2 - n2 / 10, n2] {
                        let compared = compare_rates((x1, n1), (x2, n2), ALPHA).expect("trials");
                        let interval = compared.interval;
                        assert!(interval.low <= compared.difference && compared.difference <= interval.high, "{compared:?}");
                        assert_eq!(compared.significant, interval.excludes_zero(), "{x1}/{n1} against {x2}/{n2}: {compared:?}");
                        assert_eq!(compared.significant, rates_differ((x1, n1), (x2, n2), ALPHA));
                        significant += usize::from(compared.significant);
                    }
                }
            }
        }
        assert!(significant > 50, "the grid has clear differences too ({significant})");
        assert_eq!(compare_rates((0, 0), (1, 2), ALPHA), None);
        assert!(!rates_differ((1, 2), (0, 0), ALPHA));
    }

    #[test]
    fn two_arms_together_are_narrower_than_each_arm_at_half_the_error_rate() {
        let (first, other) = ((50, 1000), (80, 1000));
        let joint = compare_rates(first, other, ALPHA).expect("trials").interval;
        let (a, b) = (rate_interval(first.0, first.1, ALPHA / 2.0), rate_interval(other.0, other.1, ALPHA / 2.0));
        let union = Interval { low: b.low - a.high, high: b.high - a.low };
        assert!(joint.low > union.low && joint.high < union.high, "{joint:?} against {union:?}");
        // Clear at large counts, not at small ones.
        assert!(rates_differ((600, 1000), (800, 1000), ALPHA));
        assert!(!rates_differ((6, 10), (8, 10), ALPHA));
    }

    /// The error guard's question, at the canary's 2.5 %: two failed
    /// requests out of two show the candidate's error rate to be more than
    /// one point worse than that of a stable arm with no error in 25
    /// requests, not yet in 18.
    #[test]
    fn a_rate_exceeds_another_by_a_margin_after_a_handful_of_events() {
        let alpha = ALPHA / 2.0;
        assert!(!rate_exceeds((0, 18), (2, 2), 0.01, alpha));
        assert!(!rate_exceeds((0, 24), (2, 2), 0.01, alpha));
        assert!(rate_exceeds((0, 25), (2, 2), 0.01, alpha));
        assert!(!rate_exceeds((0, 10_000), (1, 1), 0.01, alpha), "one failure is never enough");
        assert!(rate_exceeds((0, 27), (3, 3), 0.01, alpha));
        // The same as the lower bound of the comparison exceeding the margin.
        for (first, other) in [((0, 27), (3, 3)), ((10, 1000), (40, 1000)), ((10, 1000), (25, 1000)), ((5, 100), (5, 100))] {
            let low = compare_rates(first, other, alpha).expect("trials").interval.low;
            assert_eq!(rate_exceeds(first, other, 0.01, alpha), low > 0.01, "{first:?} {other:?}: low {low}");
        }
        assert!(!rate_exceeds((0, 0), (3, 3), 0.01, alpha), "nothing to compare with");
        assert!(!rate_exceeds((0, 1000), (1000, 1000), 1.0, alpha), "no rate is more than 1 above another");
    }

    /// Runs of an A/A experiment (two arms of the same `rate`, requests
    /// alternating between them), with `significant` asked after every
    /// request: the share of runs in which it ever said yes.
    fn peeking_false_alarms(runs: usize, requests: usize, rate: f64, seed: u64, significant: impl Fn((u64, u64), (u64, u64)) -> bool) -> f64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut alarms = 0;
        for _ in 0..runs {
            let mut arms = [(0u64, 0u64); 2];
            for request in 0..requests {
                let arm = &mut arms[request % 2];
                arm.1 += 1;
                arm.0 += u64::from(rng.f64() < rate);
                if significant(arms[0], arms[1]) {
                    alarms += 1;
                    break;
                }
            }
        }
        alarms as f64 / runs as f64
    }

    const AA_RUNS: usize = 1000;
    const AA_REQUESTS: usize = 2000;
    const AA_RATE: f64 = 0.05;

    /// The issue's point: 1000 A/A experiments at a 5 % rate, 2000 requests
    /// each, looked at after every request.
    #[test]
    fn a_a_experiments_watched_after_every_request_rarely_find_a_difference() {
        let share = peeking_false_alarms(AA_RUNS, AA_REQUESTS, AA_RATE, 25, |a, b| rates_differ(a, b, ALPHA));
        eprintln!("anytime-valid comparison, watched after every request: a difference in {:.1} % of A/A runs", share * 100.0);
        assert!(share <= ALPHA, "{share}");
    }

    /// The same runs judged by the fixed-sample Newcombe interval of
    /// `stats`: looked at after every request, it finds differences that are
    /// not there far more often than one time in twenty.
    #[test]
    fn the_fixed_sample_interval_watched_the_same_way_finds_differences_that_are_not_there() {
        let newcombe = |a: (u64, u64), b: (u64, u64)| stats::difference(a, b, stats::Z95).is_some_and(|(_, i)| i.excludes_zero());
        let share = peeking_false_alarms(AA_RUNS, AA_REQUESTS, AA_RATE, 25, newcombe);
        eprintln!("fixed-sample Newcombe interval, watched after every request: a difference in {:.1} % of A/A runs", share * 100.0);
        assert!(share > ALPHA, "{share}");
    }

    /// And the comparison is not blind: a rate of 5 % against 10 % is found
    /// within 6000 requests in nearly every run.
    #[test]
    fn a_real_difference_is_found() {
        let mut rng = fastrand::Rng::with_seed(7);
        let runs = 200;
        let mut found = 0;
        let mut requests_to_find = Vec::new();
        for _ in 0..runs {
            let mut arms = [(0u64, 0u64); 2];
            for request in 0..6000 {
                let arm = request % 2;
                arms[arm].1 += 1;
                arms[arm].0 += u64::from(rng.f64() < [0.05, 0.10][arm]);
                if rates_differ(arms[0], arms[1], ALPHA) {
                    found += 1;
                    requests_to_find.push(request + 1);
                    break;
                }
            }
        }
        requests_to_find.sort_unstable();
        let median = requests_to_find.get(requests_to_find.len() / 2).copied().unwrap_or(0);
        eprintln!("5 % against 10 %: found in {found} of {runs} runs, after a median of {median} requests");
        assert!(found >= runs * 9 / 10, "{found} of {runs}");
    }

    /// One arm's interval, asked after every request, covers the true rate
    /// at every count in at least 95 % of runs.
    #[test]
    fn rate_intervals_cover_the_true_rate_at_every_count() {
        let mut rng = fastrand::Rng::with_seed(3);
        let (runs, requests, rate) = (200, 1000, AA_RATE);
        let mut misses = 0;
        for _ in 0..runs {
            let mut successes = 0;
            for n in 1..=requests {
                successes += u64::from(rng.f64() < rate);
                let interval = rate_interval(successes, n, ALPHA);
                if !(interval.low <= rate && rate <= interval.high) {
                    misses += 1;
                    break;
                }
            }
        }
        assert!(misses as f64 <= ALPHA * runs as f64, "{misses} of {runs}");
    }

    #[test]
    fn latencies_fall_in_buckets_of_four_per_doubling() {
        let at = |seconds: f64| {
            let mut histogram = LatencyHistogram::new();
            histogram.record_seconds(seconds, 1);
            histogram.buckets().find(|b| b.count == 1).expect("one bucket")
        };
        // Whole doublings are edges, and an edge belongs to the bucket below.
        assert_eq!((at(1.0).low, at(1.0).high), ((-0.25f64).exp2(), 1.0));
        assert_eq!(at(1.000_001).low, 1.0);
        assert_eq!((at(0.001).low, at(0.001).high), (2f64.powi(-10), 2f64.powf(-9.75)));
        // Below a microsecond, nothing; above 64 s, the unbounded bucket.
        assert_eq!((at(0.0).low, at(1e-9).low), (0.0, 0.0));
        assert_eq!((at(64.0).high, at(64.5).high), (64.0, f64::INFINITY));
        assert_eq!(at(f64::NAN).low, 0.0);
        // Every latency lies in its bucket, and each bucket is 2^¼ wide.
        for i in 0..2000 {
            let seconds = 1e-6 * 1.01f64.powi(i);
            let bucket = at(seconds);
            assert!(bucket.low < seconds && seconds <= bucket.high, "{seconds}: {bucket:?}");
            if seconds < 64.0 {
                assert!((bucket.high / bucket.low - 2f64.powf(0.25)).abs() < 1e-12, "{bucket:?}");
            }
        }
        let histogram = LatencyHistogram::new();
        assert_eq!(histogram.buckets().count(), BUCKETS);
        assert_eq!(histogram.quantile(0.5), None);
    }

    #[test]
    fn histograms_add_up_and_travel_as_json() {
        let (mut a, mut b) = (LatencyHistogram::new(), LatencyHistogram::new());
        for ms in 1..=100 {
            a.record(Duration::from_millis(ms));
            b.record(Duration::from_millis(ms * 2));
        }
        b.record(Duration::from_secs(100));
        let mut sum = a.clone();
        sum.merge(&b);
        assert_eq!(sum.count(), 201);
        assert!(sum.buckets().zip(a.buckets().zip(b.buckets())).all(|(s, (a, b))| s.count == a.count + b.count));
        // The median of 1..=100 ms is 50 ms: its bucket's upper edge, within 19 %.
        let median = a.quantile(0.5).expect("latencies");
        assert!((0.050..0.050 * 1.19).contains(&median), "{median}");
        assert_eq!(sum.quantile(1.0), Some(64.0), "above the buckets: their top");

        let json = serde_json::to_value(&sum).expect("serializes");
        assert_eq!(json["above"], 1);
        assert_eq!(json["buckets"][0], serde_json::json!([-39, 1]), "1 ms is in (2^(−40/4), 2^(−39/4)] s");
        let back: LatencyHistogram = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, sum);
        let bad_ones = [r#"{"buckets": [[25, 1]], "above": 0}"#, r#"{"buckets": [[-81, 1]], "above": 0}"#, r#"{"buckets": [], "above": -1}"#, r#"{"buckets": []}"#];
        for bad in bad_ones {
            assert!(serde_json::from_str::<LatencyHistogram>(bad).is_err(), "{bad}");
        }
    }

    /// The least latencies for an upper bound on p99: 305 at 5 % one-sided
    /// (a fixed-sample bound needs 299: 0.99²⁹⁹ < 0.05 ≤ 0.99²⁹⁸), 374 for
    /// the two-sided bounds at 5 % ([`P99_MIN_SAMPLES`]), 443 at 1.25 %
    /// (the canary's latency guard).
    #[test]
    fn an_upper_bound_on_p99_needs_a_few_hundred_latencies() {
        assert_eq!(min_samples_for_quantile_upper_bound(P99, ALPHA), 305);
        assert_eq!(min_samples_for_quantile_upper_bound(P99, ALPHA / 2.0), P99_MIN_SAMPLES);
        assert_eq!(min_samples_for_quantile_upper_bound(P99, ALPHA / 4.0), 443);
        assert_eq!(min_samples_for_quantile_upper_bound(0.5, ALPHA), 7);
        assert_eq!(min_samples_for_quantile_upper_bound(1.0, ALPHA), u64::MAX);
        // The number is where the bound appears, for latencies all alike.
        let mut histogram = LatencyHistogram::new();
        histogram.record_seconds(0.001, P99_MIN_SAMPLES - 1);
        assert_eq!(histogram.p99_bounds(ALPHA).upper, None);
        histogram.record_seconds(0.001, 1);
        let upper = histogram.p99_bounds(ALPHA).upper.expect("a bound");
        assert!((0.001..0.00119).contains(&upper), "{upper}");
    }

    fn exponential(rng: &mut fastrand::Rng, mean: f64) -> f64 {
        -mean * (1.0 - rng.f64()).ln()
    }

    /// Latencies with a known p99 (exponential, mean 1 ms: p99 = ln 100 ms),
    /// bounds asked every 10 latencies: they hold the true p99 at every look
    /// in at least 95 % of runs, and close in on it.
    #[test]
    fn p99_bounds_hold_the_true_p99_at_every_look() {
        let true_p99 = 0.001 * 100f64.ln();
        let mut rng = fastrand::Rng::with_seed(99);
        let (runs, latencies) = (200, 3000);
        let mut misses = 0;
        for _ in 0..runs {
            let mut histogram = LatencyHistogram::new();
            for n in 1..=latencies {
                histogram.record_seconds(exponential(&mut rng, 0.001), 1);
                if n % 10 == 0 {
                    let bounds = histogram.p99_bounds(ALPHA);
                    if bounds.lower.is_some_and(|l| l > true_p99) || bounds.upper.is_some_and(|u| u < true_p99) {
                        misses += 1;
                        break;
                    }
                }
            }
        }
        assert!(misses as f64 <= ALPHA * runs as f64, "{misses} of {runs}");

        let mut histogram = LatencyHistogram::new();
        for _ in 0..100_000 {
            histogram.record_seconds(exponential(&mut rng, 0.001), 1);
        }
        let bounds = histogram.p99_bounds(ALPHA);
        let (lower, upper) = (bounds.lower.expect("a lower bound"), bounds.upper.expect("an upper bound"));
        assert!(lower <= true_p99 && true_p99 <= upper && upper / lower < 1.6, "{bounds:?} around {true_p99}");
        // The generic functions on the same buckets agree.
        let buckets: Vec<Bucket> = histogram.buckets().collect();
        assert_eq!(quantile_upper_bound(&buckets, P99, ALPHA / 2.0), bounds.upper);
        assert_eq!(quantile_lower_bound(&buckets, P99, ALPHA / 2.0), bounds.lower);
    }
}
