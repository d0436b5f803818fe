//! Is a difference between two arms real? Confidence intervals for a
//! proportion and for the difference of two.
//!
//! An arm's outcome rate (the share of its requests that counted `hit`) and
//! its error rate are proportions `x / n`. Each arm is compared with the
//! first by the difference of the two proportions, with a 95 % confidence
//! interval by **Newcombe's hybrid score method** (Newcombe 1998, "Interval
//! estimation for the difference between independent proportions:
//! comparison of eleven methods", Statistics in Medicine 17, 873–890, his
//! method 10): each proportion gets its Wilson score interval, and the two
//! are combined into an interval for the difference.
//!
//! Why this one and not the textbook Wald interval (`d ± 1.96·√(p₁q₁/n₁ +
//! p₂q₂/n₂)`): error rates sit near 0 and outcome rates often near 0 or 1,
//! where Wald is at its worst. With no error in either arm Wald has zero
//! width ("certainly no difference" after ten requests), and with few
//! events it covers the true difference far less often than it claims.
//! Newcombe's interval keeps close to its nominal 95 % coverage at small
//! counts and at the edges, never leaves [-1, 1], needs no continuity
//! correction, and is a closed formula cheap enough to compute on every
//! page refresh. With large counts and rates away from the edges it agrees
//! with Wald.
//!
//! A difference is called significant when its interval excludes 0. That
//! holds for one comparison looked at once: comparing several arms or
//! outcomes, or looking again and again while an experiment runs and
//! stopping when it first says "significant", finds differences that are
//! not there more often than one time in twenty.

/// The standard normal quantile for a two-sided 95 % interval.
pub const Z95: f64 = 1.959_963_984_540_054;

pub use super::sequential::Interval;

/// Wilson's score interval for the proportion `successes / trials` at
/// normal quantile `z`; `None` when there are no trials.
pub fn wilson(successes: u64, trials: u64, z: f64) -> Option<Interval> {
    if trials == 0 {
        return None;
    }
    let n = trials as f64;
    let p = successes.min(trials) as f64 / n;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(Interval { low: (centre - half).max(0.0), high: (centre + half).min(1.0) })
}

/// The difference `x₂/n₂ − x₁/n₁` (an arm against the first), and its
/// Newcombe hybrid score interval at normal quantile `z`; `None` when either
/// side has no trials.
pub fn difference(first: (u64, u64), other: (u64, u64), z: f64) -> Option<(f64, Interval)> {
    let (x1, n1) = first;
    let (x2, n2) = other;
    let (w1, w2) = (wilson(x1, n1, z)?, wilson(x2, n2, z)?);
    let p1 = x1.min(n1) as f64 / n1 as f64;
    let p2 = x2.min(n2) as f64 / n2 as f64;
    let d = p2 - p1;
    let low = d - ((p2 - w2.low).powi(2) + (w1.high - p1).powi(2)).sqrt();
    let high = d + ((w2.high - p2).powi(2) + (p1 - w1.low).powi(2)).sqrt();
    Some((d, Interval { low: low.max(-1.0), high: high.min(1.0) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() < 0.00005
    }

    /// Newcombe's own worked examples (Table II of the paper, method 10),
    /// given there as p₁ − p₂ for x₁/n₁ against x₂/n₂; here the first pair
    /// is the "other" arm.
    #[test]
    fn matches_newcombes_published_intervals() {
        let examples = [
            ((56, 70), (48, 80), 0.0524, 0.3339),
            ((9, 10), (3, 10), 0.1705, 0.8090),
            ((5, 56), (0, 29), -0.0381, 0.1926),
            ((0, 10), (0, 20), -0.1611, 0.2775),
            ((0, 10), (0, 10), -0.2775, 0.2775),
            ((10, 10), (0, 20), 0.6791, 1.0),
            ((10, 10), (0, 10), 0.6075, 1.0),
        ];
        for (other, first, low, high) in examples {
            let (_, interval) = difference(first, other, Z95).expect("trials on both sides");
            assert!(close(interval.low, low) && close(interval.high, high), "{other:?} vs {first:?}: {interval:?}, expected [{low}, {high}]");
        }
    }

    /// Wilson intervals from Newcombe's companion paper on single
    /// proportions (Statistics in Medicine 17, 857–872, method 3).
    #[test]
    fn matches_published_wilson_intervals() {
        let examples = [((81, 263), 0.2553, 0.3662), ((15, 148), 0.0624, 0.1605), ((0, 20), 0.0, 0.1611), ((1, 29), 0.0061, 0.1718)];
        for ((x, n), low, high) in examples {
            let interval = wilson(x, n, Z95).expect("trials");
            assert!(close(interval.low, low) && close(interval.high, high), "{x}/{n}: {interval:?}, expected [{low}, {high}]");
        }
    }

    #[test]
    fn no_trials_no_interval() {
        assert_eq!(wilson(0, 0, Z95), None);
        assert_eq!(difference((0, 0), (1, 2), Z95), None);
        assert_eq!(difference((1, 2), (0, 0), Z95), None);
    }

    #[test]
    fn significance_is_an_interval_that_excludes_zero() {
        let (d, clear) = difference((600, 1000), (800, 1000), Z95).expect("trials");
        assert!(close(d, 0.2) && clear.excludes_zero(), "{clear:?}");
        let (_, unclear) = difference((6, 10), (8, 10), Z95).expect("trials");
        assert!(!unclear.excludes_zero(), "{unclear:?}");
        // With no event on either side, the interval still has a width.
        let (d, none) = difference((0, 50), (0, 50), Z95).expect("trials");
        assert!(d == 0.0 && none.low < -0.05 && none.high > 0.05, "{none:?}");
        // Large counts: close to the Wald interval.
        let (d, large) = difference((30_000, 100_000), (31_000, 100_000), Z95).expect("trials");
        let wald = Z95 * (0.3 * 0.7 / 1e5 + 0.31 * 0.69 / 1e5_f64).sqrt();
        assert!((large.low - (d - wald)).abs() < 1e-4 && (large.high - (d + wald)).abs() < 1e-4, "{large:?}");
    }
}
