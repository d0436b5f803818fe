//! What a run measured.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::plan::{Failure, FailureKind, Plan};
use super::args::Mode;

/// Latencies above this are recorded as this (the histogram's range).
const MAX_RECORDED_LATENCY: Duration = Duration::from_secs(60);

/// What one connection saw.
pub(super) struct Tally {
    pub(super) latency: Histogram<u64>,
    pub(super) ok: u64,
    /// Requests sent again on a new connection (not errors: each then got
    /// its answer, or counts among the errors).
    pub(super) resent: u64,
    errors: BTreeMap<FailureKind, ErrorCount>,
}

impl Tally {
    pub(super) fn new() -> Self {
        let max = u64::try_from(MAX_RECORDED_LATENCY.as_nanos()).unwrap_or(u64::MAX);
        // 3 significant figures from 1 ns to a minute: a few hundred KiB.
        let latency = Histogram::new_with_bounds(1, max, 3).unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid")));
        Self { latency, ok: 0, resent: 0, errors: BTreeMap::new() }
    }

    pub(super) fn failure(&mut self, failure: Failure) {
        let count = self.errors.entry(failure.kind).or_insert_with(|| ErrorCount { count: 0, first: failure.detail });
        count.count += 1;
    }

    pub(super) fn merge(&mut self, other: Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.resent += other.resent;
        for (kind, count) in other.errors {
            let mine = self.errors.entry(kind).or_insert_with(|| ErrorCount { count: 0, first: count.first.clone() });
            mine.count += count.count;
        }
    }
}

/// How often an error kind was seen, and the first occurrence's detail.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub count: u64,
    pub first: String,
}

/// The figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub mode: Mode,
    /// Requests in flight per connection (1 unless pipelined).
    pub depth: usize,
    pub connections: usize,
    pub mix: String,
    /// Connect mode: connections were closed with a reset.
    pub reset_close: bool,
    /// Over TLS.
    pub tls: bool,
    /// The measured window (after the warm-up), in seconds.
    pub seconds: f64,
    /// Right answers in the measured window.
    pub ok: u64,
    /// Failed requests, warm-up included.
    pub errors: u64,
    /// Requests sent again, once, on a new connection, because the server
    /// ended their connection with a FIN before any byte of the answer
    /// (warm-up included). Not errors: a request sent again that fails
    /// counts among the errors too.
    pub resent: u64,
    /// Right answers per second.
    pub requests_per_second: f64,
    /// Latency of right answers, from writing the request (connecting too,
    /// in `connect` mode) to decoding the answer, in milliseconds.
    pub latency_ms: Latency,
    /// Failures by kind (`timeout`, `wrong-answer`, `error-answer:CODE`, …).
    pub error_kinds: BTreeMap<String, ErrorCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Report {
    pub(super) fn new(plan: &Plan, tally: &Tally, window: Duration) -> Self {
        let h = &tally.latency;
        let ms = |nanos: u64| nanos as f64 / 1e6;
        let quantile = |q: f64| if h.is_empty() { 0.0 } else { ms(h.value_at_quantile(q)) };
        let seconds = window.as_secs_f64();
        Self {
            target: plan.target.clone(),
            mode: plan.mode,
            depth: plan.depth,
            connections: plan.connections,
            mix: plan.mix.spec.clone(),
            reset_close: plan.reset_close && plan.mode == Mode::Connect,
            tls: plan.tls.is_some(),
            seconds,
            ok: tally.ok,
            errors: tally.errors.values().map(|e| e.count).sum(),
            resent: tally.resent,
            requests_per_second: if seconds > 0.0 { tally.ok as f64 / seconds } else { 0.0 },
            latency_ms: Latency {
                mean: if h.is_empty() { 0.0 } else { h.mean() / 1e6 },
                p50: quantile(0.5),
                p90: quantile(0.9),
                p99: quantile(0.99),
                p999: quantile(0.999),
                max: if h.is_empty() { 0.0 } else { ms(h.max()) },
            },
            error_kinds: tally.errors.iter().map(|(kind, count)| (kind.to_string(), count.clone())).collect(),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Pipelined => format!("pipelined (depth {})", self.depth),
            Mode::Connect if self.reset_close => "connect (closed with a reset)".into(),
            mode => mode.to_string(),
        };
        let tls = if self.tls { ", TLS" } else { "" };
        writeln!(f, "{}: {mode}{tls}, {} connections, mix {}, {:.1} s", self.target, self.connections, self.mix, self.seconds)?;
        writeln!(f, "  requests    {} answered right, {} errors, {} sent again", self.ok, self.errors, self.resent)?;
        writeln!(f, "  throughput  {:.0} requests/s", self.requests_per_second)?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "  latency     p50 {:.3} ms   p90 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        for (kind, count) in &self.error_kinds {
            writeln!(f, "  error       {kind}: {} (first: {})", count.count, count.first)?;
        }
        Ok(())
    }
}
