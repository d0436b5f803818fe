//! One view of a fleet: the reports of several servers as one
//! ([`Report::merge`]), for `wasmux experiments --admin A --admin B …`.
//!
//! Counts add up exactly (requests, errors by code, outcomes, versions),
//! and so do the latency histograms, whose buckets are the same on every
//! server; percentiles are read from the summed buckets, so they are as
//! close as one server's (the upper edge of their bucket, at most 19 %
//! above). The comparisons are computed afresh on the sums: the
//! anytime-valid statistics are functions of counts, and the sum of
//! counts that only grow is a view of one sequence of requests
//! ([`super::sequential`]). Canaries are not merged: each server's (its
//! state, share and guards) is listed side by side, since without a
//! shared store each decides alone.

use std::collections::BTreeMap;

use super::{ArmReport, FleetRoute, Percentiles, Report, RouteReport, Series, ServerCanary, TenantReport, compare_with_first};

impl Report {
    /// The reports of several servers, each with a name for it (its admin
    /// address), as one: routes matched by tenant and pattern, arms by
    /// plugin, in the order the first server to report them gives.
    pub fn merge(reports: Vec<(String, Report)>) -> Report {
        let mut merged = Report { window_seconds: reports.first().map_or(super::WINDOW.as_secs_f64(), |(_, r)| r.window_seconds), tenants: Vec::new() };
        for (server, report) in reports {
            for tenant in report.tenants {
                let index = match merged.tenants.iter().position(|t| t.tenant == tenant.tenant) {
                    Some(index) => index,
                    None => {
                        merged.tenants.push(TenantReport { tenant: tenant.tenant.clone(), routes: Vec::new() });
                        merged.tenants.len() - 1
                    }
                };
                let routes = &mut merged.tenants[index].routes;
                for route in tenant.routes {
                    match routes.iter_mut().find(|r| r.route == route.route) {
                        Some(into) => add_route(into, &server, route),
                        None => routes.push(first_route(&server, route)),
                    }
                }
            }
        }
        for route in merged.tenants.iter_mut().flat_map(|t| t.routes.iter_mut()) {
            for arm in &mut route.arms {
                arm.latency_ms = percentiles(arm);
                arm.against_first = None;
            }
            compare_with_first(&mut route.arms);
        }
        merged
    }
}

/// A route as the first server reports it, its canary moved to the
/// fleet's list.
fn first_route(server: &str, mut route: RouteReport) -> RouteReport {
    let mut fleet = FleetRoute { servers: vec![server.to_owned()], canaries: Vec::new() };
    if let Some(canary) = route.canary.take() {
        fleet.canaries.push(ServerCanary { server: server.to_owned(), canary });
    }
    route.fleet = Some(fleet);
    route
}

fn add_route(into: &mut RouteReport, server: &str, route: RouteReport) {
    let fleet = into.fleet.get_or_insert_with(FleetRoute::default);
    fleet.servers.push(server.to_owned());
    if let Some(canary) = route.canary {
        fleet.canaries.push(ServerCanary { server: server.to_owned(), canary });
    }
    if route.since < into.since {
        into.since = route.since;
    }
    into.seconds = into.seconds.max(route.seconds);
    into.series_end_ms = into.series_end_ms.max(route.series_end_ms);
    for arm in route.arms {
        match into.arms.iter_mut().find(|a| a.plugin == arm.plugin) {
            Some(mine) => add_arm(mine, arm),
            None => into.arms.push(arm),
        }
    }
}

fn add_arm(into: &mut ArmReport, arm: ArmReport) {
    let add = |into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>| {
        for (name, count) in from {
            let slot = into.entry(name).or_default();
            *slot = slot.saturating_add(count);
        }
    };
    if into.version.is_none() {
        into.version = arm.version;
    }
    add(&mut into.versions, arm.versions);
    into.requests = into.requests.saturating_add(arm.requests);
    into.errors = into.errors.saturating_add(arm.errors);
    add(&mut into.errors_by_code, arm.errors_by_code);
    add(&mut into.outcomes, arm.outcomes);
    into.outcomes_dropped = into.outcomes_dropped.saturating_add(arm.outcomes_dropped);
    into.latency_histogram.merge(&arm.latency_histogram);
    into.latency_sum_seconds += arm.latency_sum_seconds;
    add_series(&mut into.series, arm.series);
}

/// Windows summed from the newest back (the servers' windows are of the
/// same length, not of the same instants: each is within a window of the
/// others'); a window's p99 is the highest server's.
fn add_series(into: &mut Series, from: Series) {
    fn add_from_end<T: Copy>(into: &mut Vec<T>, from: &[T], add: impl Fn(T, T) -> T, empty: T) {
        if from.len() > into.len() {
            let missing = from.len() - into.len();
            into.splice(0..0, std::iter::repeat_n(empty, missing));
        }
        let offset = into.len() - from.len();
        for (slot, value) in into[offset..].iter_mut().zip(from) {
            *slot = add(*slot, *value);
        }
    }
    add_from_end(&mut into.requests, &from.requests, u64::saturating_add, 0);
    add_from_end(&mut into.errors, &from.errors, u64::saturating_add, 0);
    let higher = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    add_from_end(&mut into.p99_ms, &from.p99_ms, higher, None);
    for (name, counts) in from.outcomes {
        add_from_end(into.outcomes.entry(name).or_default(), &counts, u64::saturating_add, 0);
    }
}

/// Percentiles read from the summed buckets, in milliseconds.
fn percentiles(arm: &ArmReport) -> Option<Percentiles> {
    let histogram = &arm.latency_histogram;
    let ms = |q: f64| histogram.quantile(q).map(|seconds| seconds * 1e3);
    Some(Percentiles { p50: ms(0.50)?, p90: ms(0.90)?, p99: ms(0.99)? })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::experiments::{Entry, Experiment, Served};

    fn report(requests: &[(usize, Option<&'static str>, u64, &'static str)]) -> Report {
        let experiment = Arc::new(Experiment::new(&[(Arc::from("search"), 1), (Arc::from("search@fuzzy"), 1)]));
        for &(arm, error, micros, outcome) in requests {
            let served = Served { version: "v1", error, latency: Duration::from_micros(micros) };
            experiment.arm(arm).expect("arm").record(served, [outcome], SystemTime::now());
        }
        Report::new([Entry { tenant: "default", route: "text/json", sticky: None, experiment: &experiment }], |_| None)
    }

    #[test]
    fn counts_and_buckets_add_up_and_comparisons_are_made_on_the_sums() {
        let a = report(&[(0, None, 100, "hit"), (1, Some("plugin-failed"), 2000, "miss"), (1, None, 300, "hit")]);
        let b = report(&[(0, None, 150, "miss"), (0, None, 90_000, "hit"), (1, None, 300, "hit")]);
        let merged = Report::merge(vec![("a".into(), a.clone()), ("b".into(), b.clone())]);
        let route = &merged.tenants[0].routes[0];
        assert_eq!(route.fleet.as_ref().map(|f| f.servers.clone()), Some(vec!["a".to_owned(), "b".to_owned()]));
        let [stable, candidate] = &route.arms[..] else { panic!("{route:?}") };
        assert_eq!((stable.requests, stable.errors, candidate.requests, candidate.errors), (3, 0, 3, 1));
        assert_eq!(stable.outcomes, BTreeMap::from([("hit".into(), 2), ("miss".into(), 1)]));
        assert_eq!(candidate.errors_by_code, BTreeMap::from([("plugin-failed".into(), 1)]));
        assert_eq!(stable.versions, BTreeMap::from([("v1".into(), 3)]));
        let mut sum = a.tenants[0].routes[0].arms[0].latency_histogram.clone();
        sum.merge(&b.tenants[0].routes[0].arms[0].latency_histogram);
        assert_eq!(stable.latency_histogram, sum);
        assert!((stable.latency_sum_seconds - 0.09025).abs() < 1e-9, "{}", stable.latency_sum_seconds);
        // The p99 is the slowest request's bucket: 90 ms within 19 %.
        let p99 = stable.latency_ms.expect("latencies").p99;
        assert!((90.0..=90.0 * 1.19).contains(&p99), "{p99}");
        let versus = candidate.against_first.as_ref().expect("compared");
        assert_eq!((versus.error_rate.first_rate, versus.error_rate.rate), (Some(0.0), Some(1.0 / 3.0)));
    }

    #[test]
    fn routes_and_arms_only_one_server_has_are_kept() {
        let a = report(&[(0, None, 100, "hit")]);
        let mut b = report(&[(1, None, 100, "hit")]);
        b.tenants[0].routes[0].arms[1].plugin = "other".into();
        let mut c = report(&[(1, None, 100, "hit")]);
        c.tenants[0].tenant = "alpha".into();
        let merged = Report::merge(vec![("a".into(), a), ("b".into(), b), ("c".into(), c)]);
        let tenants: Vec<&str> = merged.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(tenants, ["default", "alpha"]);
        let arms: Vec<(&str, u64)> = merged.tenants[0].routes[0].arms.iter().map(|a| (a.plugin.as_str(), a.requests)).collect();
        assert_eq!(arms, [("search", 1), ("search@fuzzy", 0), ("other", 1)]);
        assert!(Report::merge(Vec::new()).tenants.is_empty());
    }
}
