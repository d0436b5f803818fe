//! `wasmux experiments`: what a running server's `/experiments` says, as a
//! table per split or canary route and a line per comparison of an arm
//! with the first; for a canary, its state. Given several servers
//! (`--admin A --admin B …`), their reports merged into one view of the
//! fleet ([`Report::merge`]: counts summed exactly, latencies read from
//! the summed histograms, each server's canary side by side).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use wasmux::admin::{admin_endpoint, read_token};
use wasmux::experiments::canary::CanaryState;
use wasmux::experiments::rollout::{CanaryReport, describe as describe_canary};
use wasmux::experiments::{ArmReport, Difference, Report, RouteReport};

use crate::admin_client;

#[derive(Debug, Clone, clap::Args)]
pub struct ExperimentsArgs {
    /// A server's admin endpoint (`wasmux serve --admin`): HOST:PORT, a
    /// bare port for 127.0.0.1, or the URL `wasmux serve` prints
    /// (http://HOST:PORT). Repeat it for a fleet: the servers' reports are
    /// merged into one.
    #[arg(long = "admin", default_value = "9090")]
    pub admins: Vec<String>,
    /// The admin token, on the first line of this file, if the endpoint
    /// has one (the file `wasmux serve --admin-token-file` reads). Once for
    /// every server, or once per `--admin`, in the same order.
    #[arg(long = "admin-token-file", env = "WASMUX_ADMIN_TOKEN_FILE")]
    pub admin_token_files: Vec<PathBuf>,
    /// Print the JSON report instead of tables (the server's as it came,
    /// or the fleet's merged one).
    #[arg(long)]
    pub json: bool,
    /// Give up after this long without an answer.
    #[arg(long, default_value = "10s", value_parser = wasmux::config::parse_duration)]
    pub timeout: Duration,
}

pub async fn main(args: ExperimentsArgs) -> anyhow::Result<()> {
    let tokens = tokens(&args)?;
    let addresses: Vec<String> = args.admins.iter().map(|admin| admin_endpoint(admin)).collect();
    // A server given twice would be counted twice in the fleet's sums.
    if let Some((i, twice)) = addresses.iter().enumerate().find(|(i, address)| addresses[..*i].contains(address)) {
        let first = addresses.iter().position(|address| address == twice).unwrap_or(i);
        bail!("--admin {} and --admin {} are the same server, {twice}: give each server once", args.admins[first], args.admins[i]);
    }
    // Every server asked at once: the view is of one moment.
    let asking: Vec<_> = addresses
        .iter()
        .zip(tokens)
        .map(|(address, token)| {
            let (address, timeout) = (address.clone(), args.timeout);
            tokio::spawn(async move { admin_client::get(&address, "/experiments", token.as_deref(), timeout).await })
        })
        .collect();
    let mut reports = Vec::with_capacity(addresses.len());
    for (address, asked) in addresses.iter().zip(asking) {
        let body = asked.await.context("asking a server")??;
        if args.json && addresses.len() == 1 {
            println!("{}", String::from_utf8_lossy(&body));
            return Ok(());
        }
        let report: Report =
            serde_json::from_slice(&body).with_context(|| format!("{address}/experiments did not answer the JSON of an experiments report"))?;
        reports.push((address.clone(), report));
    }
    let fleet = reports.len() > 1;
    let report = if fleet { Report::merge(reports) } else { reports.pop().map_or_else(|| Report::merge(Vec::new()), |(_, report)| report) };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("writing the merged report")?);
        return Ok(());
    }
    if fleet {
        println!("fleet of {} servers: {} (counts summed, latencies from the summed histograms)\n", addresses.len(), addresses.join(", "));
    }
    print!("{}", render(&report));
    Ok(())
}

/// Each server's token: none, one for all, or one per server.
fn tokens(args: &ExperimentsArgs) -> anyhow::Result<Vec<Option<String>>> {
    let read = |file: &PathBuf| read_token(file).map(Some);
    match args.admin_token_files.len() {
        0 => Ok(vec![None; args.admins.len()]),
        1 => Ok(vec![read(&args.admin_token_files[0])?; args.admins.len()]),
        n if n == args.admins.len() => args.admin_token_files.iter().map(read).collect(),
        n => bail!("{n} --admin-token-file for {} --admin: give one for every server, or one per --admin in the same order", args.admins.len()),
    }
}

/// Every route's table and comparisons.
fn render(report: &Report) -> String {
    let mut out = String::new();
    let routes: Vec<(&str, &RouteReport)> =
        report.tenants.iter().flat_map(|tenant| tenant.routes.iter().map(move |route| (tenant.tenant.as_str(), route))).collect();
    if routes.is_empty() {
        out.push_str("no route has a split or a canary: no experiment is running\n");
    }
    for (i, (tenant, route)) in routes.into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        render_route(&mut out, tenant, route);
    }
    out
}

fn render_route(out: &mut String, tenant: &str, route: &RouteReport) {
    let split: Vec<String> = route.arms.iter().map(|arm| format!("{} {}", arm.plugin, arm.weight)).collect();
    let sticky = route.sticky.as_deref().map_or_else(|| "interleaved".to_owned(), |field| format!("sticky on {field}"));
    let canaries: Vec<(Option<&str>, &CanaryReport)> = match (&route.canary, &route.fleet) {
        (Some(canary), _) => vec![(None, canary)],
        (None, Some(fleet)) => fleet.canaries.iter().map(|c| (Some(c.server.as_str()), &c.canary)).collect(),
        (None, None) => Vec::new(),
    };
    match canaries.first() {
        Some((_, canary)) => {
            let steps: Vec<String> = canary.config.steps.iter().map(u32::to_string).collect();
            let _ = writeln!(
                out,
                "tenant {tenant}, route {}: canary {} -> {} (steps {} %, {sticky})",
                route.route,
                canary.config.stable,
                canary.config.candidate,
                steps.join(" / ")
            );
        }
        None => {
            let _ = writeln!(out, "tenant {tenant}, route {}: split {} ({sticky})", route.route, split.join(" / "));
        }
    }
    for (server, canary) in &canaries {
        let on = server.map(|server| format!("on {server}: ")).unwrap_or_default();
        let _ = writeln!(out, "{on}{}", canary_line(canary));
    }
    if let Some(fleet) = &route.fleet {
        let _ = writeln!(out, "reported by {}", fleet.servers.join(", "));
    }
    let _ = writeln!(out, "counting since {} ({})", route.since, humantime::format_duration(Duration::from_secs(route.seconds as u64)));
    out.push('\n');

    let names: Vec<&String> = {
        let mut names: Vec<&String> = route.arms.iter().flat_map(|arm| arm.outcomes.keys()).collect();
        names.sort();
        names.dedup();
        names
    };
    let mut header: Vec<String> = ["arm", "version", "weight", "requests", "errors", "p50 ms", "p90 ms", "p99 ms"].map(str::to_owned).to_vec();
    header.extend(names.iter().map(|name| name.to_string()));
    let mut rows = vec![header];
    for arm in &route.arms {
        let latency = |pick: fn(&wasmux::experiments::Percentiles) -> f64| arm.latency_ms.as_ref().map_or_else(|| "-".to_owned(), |l| format!("{:.3}", pick(l)));
        let mut row = vec![
            arm.plugin.clone(),
            arm.version.clone().unwrap_or_else(|| "-".into()),
            arm.weight.to_string(),
            arm.requests.to_string(),
            rate_and_count(arm, arm.errors, 2),
            latency(|l| l.p50),
            latency(|l| l.p90),
            latency(|l| l.p99),
        ];
        row.extend(names.iter().map(|name| rate_and_count(arm, arm.outcomes.get(*name).copied().unwrap_or(0), 1)));
        rows.push(row);
    }
    table(out, &rows);

    for arm in &route.arms {
        if !arm.errors_by_code.is_empty() {
            let codes: Vec<String> = arm.errors_by_code.iter().map(|(code, n)| format!("{code} {n}")).collect();
            let _ = writeln!(out, "errors of {}: {}", arm.plugin, codes.join(", "));
        }
    }
    for arm in route.arms.iter().skip(1) {
        let Some(versus) = &arm.against_first else { continue };
        let _ = writeln!(out, "\n{} against {}:", arm.plugin, versus.against);
        // Error rates are small: two decimals.
        let lines: Vec<(String, &Difference, usize)> = versus
            .outcomes
            .iter()
            .map(|(name, d)| (format!("{name} rate"), d, 1))
            .chain(std::iter::once(("error rate".to_owned(), &versus.error_rate, 2)))
            .collect();
        let width = lines.iter().map(|(name, _, _)| name.len()).max().unwrap_or(0);
        for (name, difference, digits) in lines {
            let _ = writeln!(out, "  {name:<width$}  {}", describe(difference, digits));
        }
    }
}

/// A canary's state in one line: `stepping` (its step and share),
/// `promoted` or `rolled-back` (the guard and its figures), and since when.
fn canary_line(canary: &CanaryReport) -> String {
    if !canary.known {
        return "state not read from the store yet: the candidate gets no request meanwhile".to_owned();
    }
    let (state, at_ms) = match &canary.state {
        CanaryState::Stepping { since_ms, .. } => ("stepping", *since_ms),
        CanaryState::Promoted { at_ms } => ("promoted", *at_ms),
        CanaryState::RolledBack { at_ms, .. } => ("rolled-back", *at_ms),
    };
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at_ms));
    let requests = canary.requests;
    format!(
        "{state} since {at}: {}; requests judged {} stable, {} candidate",
        describe_canary(&canary.config, &canary.state),
        requests.stable,
        requests.candidate
    )
}

/// `60.0% (724)`.
fn rate_and_count(arm: &ArmReport, count: u64, digits: usize) -> String {
    if arm.requests == 0 {
        return "-".to_owned();
    }
    format!("{:.digits$}% ({count})", count as f64 * 100.0 / arm.requests as f64)
}

/// `60.0% -> 79.8%: +19.8 points (95% anytime-valid CI +16.2 to +23.1),
/// significant`,
/// with `digits` after the decimal point.
fn describe(difference: &Difference, digits: usize) -> String {
    let (Some(first), Some(rate), Some(d), Some([low, high])) = (difference.first_rate, difference.rate, difference.difference, difference.ci95) else {
        return "no requests on one side yet".to_owned();
    };
    let verdict = if difference.significant { "significant" } else { "not significant" };
    let points = |fraction: f64| {
        let text = format!("{:+.digits$}", fraction * 100.0);
        // Rounded to zero, a negative difference reads "+0.0", not "-0.0".
        if text.trim_start_matches(['+', '-']).trim_start_matches(['0', '.']).is_empty() { text.replacen('-', "+", 1) } else { text }
    };
    format!(
        "{:.digits$}% -> {:.digits$}%: {} points (95% anytime-valid CI {} to {}), {verdict}",
        first * 100.0,
        rate * 100.0,
        points(d),
        points(low),
        points(high)
    )
}

/// Columns padded to their widest cell: text to the left in the first two,
/// numbers to the right after.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns).map(|c| rows.iter().filter_map(|row| row.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| if c < 2 { format!("{cell:<w$}", w = widths[c]) } else { format!("{cell:>w$}", w = widths[c]) })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
}
