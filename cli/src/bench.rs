//! `wasmux bench`: the guide's multi-connection client grown into a load
//! generator for any server of the guide's protocol.
//!
//! It opens `--connections` clients, each sending requests from a mix
//! (`search`, `binary`, `custom`) in one of three ways: a new connection per
//! request (`connect`, what the guide's client does), one request at a time
//! on a kept connection (`persistent`), or up to `--depth` requests in
//! flight on a kept connection (`pipelined`). Every answer is checked: the
//! guide's requests must get the guide's answers byte for byte, a custom
//! request at least a well-formed message that is not an error answer.
//!
//! Requests are encoded once before the run and expected answers computed
//! once, so the generator spends its time on sockets, not on JSON: on a
//! shared machine, a load generator that burns CPU hides the server's cost.

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::codec::Encoder;
use wasmux::client::{self, guide_request};
use wasmux::codec::{DecodeError, Inbound, MessageCodec};
use serde_json::Value;
use wasmux::connection::{ClientConnection, MessageReader};
use wasmux::message::{AUTHORIZATION_FIELD, DEFAULT_MAX_CONTENT_LENGTH, Message};
use wasmux::net;
use wasmux::router::SmoothRoundRobin;
use wasmux::tls::TlsClient;

use crate::TlsArgs;

/// Values the `search` requests cycle through: three hits and a miss, the
/// guide's examples.
const SEARCH_VALUES: [&str; 4] = ["morpheus", "ring", "\u{1f436}", "neo"];

/// Contents the `binary` requests cycle through: shorter and longer than
/// the ten bytes the guide's server echoes.
const BINARY_VALUES: [&str; 2] = ["\u{1f603}", " and more than ten bytes of content"];

/// Pause after a failed connect, so a server that is down is not hammered
/// by a hot loop of refused connections.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Latencies above this are recorded as this (the histogram's range).
const MAX_RECORDED_LATENCY: Duration = Duration::from_secs(60);

/// How the load generator uses its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A new connection for every request, closed after the answer (the guide's client).
    Connect,
    /// One request at a time on a kept connection.
    Persistent,
    /// Up to --depth requests in flight on a kept connection.
    Pipelined,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Persistent => "persistent",
            Self::Pipelined => "pipelined",
        })
    }
}

/// `wasmux bench`'s command line.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server address: HOST:PORT or [IPv6]:PORT.
    #[arg(default_value = "127.0.0.1:65432")]
    pub addr: String,
    /// Clients sending at once.
    #[arg(long, short, default_value_t = 32)]
    pub connections: usize,
    /// How long to send requests (default 10s, unless --requests is given).
    #[arg(long, short, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Send this many requests (after the warm-up), then stop.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Send requests for this long before measuring; warm-up answers are
    /// checked but not counted in the figures.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// A new connection per request, one request at a time per connection, or pipelined.
    #[arg(long, short, value_enum, default_value_t = Mode::Persistent)]
    pub mode: Mode,
    /// Requests in flight per connection in pipelined mode.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// Request kinds and their weights: search, binary (the guide's client's
    /// requests) and custom (see --content-type), e.g. search=3,binary=1.
    #[arg(long, default_value = "search=1,binary=1")]
    pub mix: String,
    /// Content-type of the `custom` requests.
    #[arg(long, short = 't')]
    pub content_type: Option<String>,
    /// Content-encoding of the `custom` requests.
    #[arg(long, short, default_value = "binary")]
    pub encoding: String,
    /// Content of the `custom` requests, as text.
    #[arg(long, conflicts_with = "content_file")]
    pub content: Option<String>,
    /// Content of the `custom` requests, read from a file.
    #[arg(long)]
    pub content_file: Option<PathBuf>,
    /// In connect mode, close each connection with a reset instead of a
    /// FIN: no TIME_WAIT sockets pile up on this side, whose search for a
    /// free local port otherwise limits a loopback run to ~15k
    /// connections/s and adds tens of milliseconds to the p99.
    #[arg(long)]
    pub reset_close: bool,
    /// A request without an answer after this long counts as a timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Send "authorization": "Bearer TOKEN" with every request, to load a tenant.
    #[arg(long, env = "WASMUX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An extra header field for every request, NAME=VALUE; VALUE is JSON
    /// if it parses as JSON, else a string.
    #[arg(long = "field", short = 'f', value_name = "NAME=VALUE")]
    pub fields: Vec<String>,
    /// Send at most this many requests per second, all connections
    /// together (a tenant's limit, a realistic load); default: as fast as
    /// the server answers.
    #[arg(long)]
    pub rate: Option<std::num::NonZeroU32>,
    /// Print the report as JSON (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// Runs `wasmux bench`: the load, then the report on stdout. Fails if any
/// answer was wrong or missing, so scripts notice.
pub async fn main(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let plan = Plan::from_args(&args).await?;
    let progress = !args.json && std::io::stderr().is_terminal();
    let report = run(&plan, progress).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.errors == 0 && report.ok > 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

/// When the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    After(Duration),
    Requests(u64),
}

/// A validated benchmark: where, how, what.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    /// The address as the user wrote it, for the report.
    pub target: String,
    pub connections: usize,
    pub stop: Stop,
    pub warmup: Duration,
    pub mode: Mode,
    /// Requests in flight per connection (1 unless pipelined).
    pub depth: usize,
    pub mix: Mix,
    pub timeout: Duration,
    /// Close connect-mode connections with a reset (SO_LINGER 0).
    pub reset_close: bool,
    /// Connect over TLS.
    pub tls: Option<TlsClient>,
    /// Requests per second, all connections together, if limited.
    pub rate: Option<std::num::NonZeroU32>,
}

impl Plan {
    pub async fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
        if args.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if args.mode == Mode::Pipelined && args.depth == 0 {
            bail!("--depth must be at least 1");
        }
        let stop = match (args.duration, args.requests) {
            (_, Some(0)) => bail!("--requests must be at least 1"),
            (_, Some(n)) => Stop::Requests(n),
            (Some(d), None) if d.is_zero() => bail!("--duration must be more than 0"),
            (Some(d), None) => Stop::After(d),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        let custom = match &args.content_type {
            Some(content_type) => {
                let content = match (&args.content, &args.content_file) {
                    (Some(text), _) => text.clone().into_bytes(),
                    (None, Some(path)) => client::read_content(path)?,
                    (None, None) => Vec::new(),
                };
                Some(Message::new(content_type.clone(), args.encoding.clone(), content))
            }
            None if args.content.is_some() || args.content_file.is_some() => {
                bail!("--content and --content-file describe custom requests: give --content-type too")
            }
            None => None,
        };
        let mut fields = Vec::new();
        if let Some(token) = &args.token {
            fields.push((AUTHORIZATION_FIELD.to_owned(), Value::String(format!("Bearer {token}"))));
        }
        for field in &args.fields {
            let (name, value) = field.split_once('=').with_context(|| format!("--field {field}: write NAME=VALUE"))?;
            fields.push((name.to_owned(), serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()))));
        }
        let mix = Mix::parse(&args.mix, custom, &fields)?;
        let addr = *net::resolve(&args.addr)
            .await?
            .first()
            .with_context(|| format!("\"{}\" resolves to no address", args.addr))?;
        Ok(Self {
            addr,
            target: args.addr.clone(),
            connections: args.connections,
            stop,
            warmup: args.warmup,
            mode: args.mode,
            depth: if args.mode == Mode::Pipelined { args.depth } else { 1 },
            mix,
            timeout: args.timeout,
            reset_close: args.reset_close,
            tls: args.tls.client(&args.addr)?,
            rate: args.rate,
        })
    }
}

/// One request, encoded once, and what its answer must be.
#[derive(Debug, Clone)]
pub struct Case {
    /// The request's bytes on the wire.
    pub bytes: Bytes,
    pub expect: Expect,
}

/// What makes an answer right.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// This content-type, encoding and content exactly (the guide's answers).
    Exact { content_type: String, content_encoding: String, content: Bytes },
    /// Any message that is not an error answer.
    NotAnError,
}

impl Case {
    /// `request` with the extra header `fields`, encoded.
    fn new(request: &Message, expect: Expect, fields: &[(String, Value)]) -> anyhow::Result<Self> {
        let mut request = request.clone();
        request.header.extra.extend(fields.iter().cloned());
        let mut bytes = BytesMut::new();
        MessageCodec::default().encode(&request, &mut bytes).context("the custom request cannot be encoded")?;
        Ok(Self { bytes: bytes.freeze(), expect })
    }

    /// The guide client's search for `value`, and the guide server's answer.
    fn search(value: &str, fields: &[(String, Value)]) -> anyhow::Result<Self> {
        let request = guide_request("search", value);
        let content = wasmux_guide::search(&request.content, "utf-8").map_err(|e| anyhow::anyhow!("{e}"))?;
        Self::new(&request, Expect::Exact { content_type: "text/json".into(), content_encoding: "utf-8".into(), content: content.into() }, fields)
    }

    /// The guide client's binary request (`binary` + `value`), and the answer.
    fn binary(value: &str, fields: &[(String, Value)]) -> anyhow::Result<Self> {
        let request = guide_request("binary", value);
        let content = wasmux_guide::binary_echo(&request.content);
        Self::new(
            &request,
            Expect::Exact {
                content_type: wasmux_guide::BINARY_RESPONSE_TYPE.into(),
                content_encoding: "binary".into(),
                content: content.into(),
            },
            fields,
        )
    }

    /// Checks an answer to this request.
    pub fn check(&self, answer: &Message) -> Result<(), Failure> {
        if let Expect::Exact { content_type, content_encoding, content } = &self.expect {
            let h = &answer.header;
            if h.content_type == *content_type && h.content_encoding == *content_encoding && answer.content == *content {
                return Ok(());
            }
        }
        if let Some((code, message)) = answer.as_error() {
            return Err(Failure::new(FailureKind::ErrorAnswer(code), message));
        }
        match &self.expect {
            Expect::NotAnError => Ok(()),
            Expect::Exact { content_type, content_encoding, content } => Err(Failure::new(
                FailureKind::WrongAnswer,
                format!(
                    "expected {content_type} ({content_encoding}) {}, got {} ({}) {}",
                    wasmux_guide::python::bytes_repr(content),
                    answer.header.content_type,
                    answer.header.content_encoding,
                    wasmux_guide::python::bytes_repr(&answer.content),
                ),
            )),
        }
    }
}

/// The request kinds of a run, with their weights.
#[derive(Debug, Clone)]
pub struct Mix {
    /// `name=weight` as given, for the report.
    pub spec: String,
    kinds: Vec<Kind>,
    /// The order kinds are sent in: each kind as often as its weight,
    /// spread evenly (smooth weighted round-robin).
    schedule: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Kind {
    cases: Vec<Case>,
}

/// Largest sum of weights: the schedule is that long.
const MAX_TOTAL_WEIGHT: u32 = 10_000;

impl Mix {
    /// Parses `search=3,binary=1,custom=1` (a kind without `=N` has weight 1).
    /// `custom` needs the custom request. Every request carries `fields`.
    pub fn parse(spec: &str, custom: Option<Message>, fields: &[(String, Value)]) -> anyhow::Result<Self> {
        let mut kinds = Vec::new();
        let mut weights = Vec::new();
        let mut names = Vec::new();
        let mut given = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((name, weight)) => {
                    let weight = weight.trim().parse::<u32>().with_context(|| {
                        format!("--mix {spec}: the weight of {name} (\"{weight}\") is not a whole number")
                    })?;
                    (name.trim(), weight)
                }
                None => (part, 1),
            };
            if names.contains(&name) {
                bail!("--mix {spec}: {name} is given twice");
            }
            names.push(name);
            given.push(format!("{name}={weight}"));
            if weight == 0 {
                continue;
            }
            let cases = match name {
                "search" => SEARCH_VALUES.iter().map(|v| Case::search(v, fields)).collect::<anyhow::Result<Vec<_>>>()?,
                "binary" => BINARY_VALUES.iter().map(|v| Case::binary(v, fields)).collect::<anyhow::Result<Vec<_>>>()?,
                "custom" => {
                    let Some(request) = &custom else {
                        bail!("--mix {spec}: custom requests need --content-type (and --content or --content-file)");
                    };
                    vec![Case::new(request, Expect::NotAnError, fields)?]
                }
                other => bail!("--mix {spec}: unknown request kind \"{other}\" (use search, binary or custom)"),
            };
            kinds.push(Kind { cases });
            weights.push(weight);
        }
        if custom.is_some() && !names.contains(&"custom") {
            bail!("--content-type describes custom requests: add custom=N to --mix (e.g. --mix custom=1)");
        }
        let total: u32 = weights.iter().sum();
        if total == 0 {
            bail!("--mix {spec}: no request kind has a weight above 0");
        }
        if total > MAX_TOTAL_WEIGHT {
            bail!("--mix {spec}: the weights add up to {total}; keep them under {MAX_TOTAL_WEIGHT}");
        }
        Ok(Self { spec: given.join(","), kinds, schedule: SmoothRoundRobin::new(&weights).take(total as usize).collect() })
    }

    /// Where a connection starts in the schedule: connections start at
    /// different places so the server sees the mix at every moment.
    fn cursor(&self, connection: usize) -> Cursor {
        Cursor { position: connection, turns: vec![connection; self.kinds.len()] }
    }

    /// The next request for a connection.
    fn next(&self, cursor: &mut Cursor) -> &Case {
        let kind = self.schedule[cursor.position % self.schedule.len()];
        cursor.position = cursor.position.wrapping_add(1);
        let cases = &self.kinds[kind].cases;
        let case = &cases[cursor.turns[kind] % cases.len()];
        cursor.turns[kind] = cursor.turns[kind].wrapping_add(1);
        case
    }
}

/// A connection's place in the mix.
#[derive(Debug)]
struct Cursor {
    position: usize,
    /// Per kind: which of its cases comes next.
    turns: Vec<usize>,
}

/// What went wrong with one request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// The connection could not be opened.
    Connect,
    /// No answer within --timeout.
    Timeout,
    /// The server closed the connection before answering.
    Closed,
    /// Reading or writing failed (reset, …).
    Io,
    /// The answer is not a readable message of the protocol.
    BadFrame,
    /// A well-formed answer that is not the expected one.
    WrongAnswer,
    /// An error answer, by its `error.code`.
    ErrorAnswer(String),
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect => f.write_str("connect"),
            Self::Timeout => f.write_str("timeout"),
            Self::Closed => f.write_str("closed"),
            Self::Io => f.write_str("io"),
            Self::BadFrame => f.write_str("bad-frame"),
            Self::WrongAnswer => f.write_str("wrong-answer"),
            Self::ErrorAnswer(code) => write!(f, "error-answer:{code}"),
        }
    }
}

/// A failed request: its kind and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl Failure {
    fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }

    fn io(error: &std::io::Error) -> Self {
        let kind = match error.kind() {
            std::io::ErrorKind::UnexpectedEof => FailureKind::Closed,
            _ => FailureKind::Io,
        };
        Self::new(kind, net::explain(error))
    }

    fn timeout(timeout: Duration) -> Self {
        Self::new(FailureKind::Timeout, format!("no answer within {timeout:?}"))
    }
}

/// What one connection saw.
struct Tally {
    latency: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<FailureKind, ErrorCount>,
}

impl Tally {
    fn new() -> Self {
        let max = u64::try_from(MAX_RECORDED_LATENCY.as_nanos()).unwrap_or(u64::MAX);
        // 3 significant figures from 1 ns to a minute: a few hundred KiB.
        let latency = Histogram::new_with_bounds(1, max, 3).unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid")));
        Self { latency, ok: 0, errors: BTreeMap::new() }
    }

    fn failure(&mut self, failure: Failure) {
        let count = self.errors.entry(failure.kind).or_insert_with(|| ErrorCount { count: 0, first: failure.detail });
        count.count += 1;
    }

    fn merge(&mut self, other: Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
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

/// Whether a request falls in the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ticket {
    Warmup,
    Measured,
}

/// State every connection task shares.
struct Shared {
    plan: Plan,
    started: Instant,
    /// When measuring starts (after the warm-up).
    window_start: Instant,
    /// With `Stop::After`, when sending stops.
    deadline: Option<Instant>,
    /// Measured requests handed out so far (for `Stop::Requests`).
    issued: AtomicU64,
    /// Paces all connections together under `--rate`.
    pace: Option<governor::DefaultDirectRateLimiter>,
    /// Requests answered so far, right or wrong, and errors: for the progress bar.
    answered: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    /// May another request be sent, and is it measured? Under `--rate`,
    /// waits for its turn first.
    async fn ticket(&self) -> Option<Ticket> {
        if let Some(pace) = &self.pace {
            pace.until_ready().await;
        }
        let now = Instant::now();
        if now < self.window_start {
            return Some(Ticket::Warmup);
        }
        match self.plan.stop {
            Stop::After(_) => (now < self.deadline.unwrap_or(now)).then_some(Ticket::Measured),
            Stop::Requests(n) => (self.issued.fetch_add(1, Ordering::Relaxed) < n).then_some(Ticket::Measured),
        }
    }

    fn record(&self, tally: &mut Tally, ticket: Ticket, sent: Instant, outcome: Result<(), Failure>) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(()) if ticket == Ticket::Measured => {
                let nanos = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(nanos.max(1));
                tally.ok += 1;
            }
            Ok(()) => {}
            // Failures count even in the warm-up: a wrong answer is never hidden.
            Err(failure) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tally.failure(failure);
            }
        }
    }
}

/// Runs the plan and reports. `progress` shows a progress bar on stderr.
pub async fn run(plan: &Plan, progress: bool) -> Report {
    let started = Instant::now();
    let window_start = started + plan.warmup;
    let deadline = match plan.stop {
        Stop::After(d) => Some(window_start + d),
        Stop::Requests(_) => None,
    };
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        started,
        window_start,
        deadline,
        issued: AtomicU64::new(0),
        // A burst of one: requests spread evenly over each second.
        pace: plan.rate.map(|rate| governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(std::num::NonZeroU32::MIN))),
        answered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let bar = progress_bar(plan, progress);
    let ticker = {
        let shared = Arc::clone(&shared);
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                update_bar(&bar, &shared);
            }
        })
    };

    let tasks: Vec<_> = (0..plan.connections)
        .map(|id| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                match shared.plan.mode {
                    Mode::Connect | Mode::Persistent => one_at_a_time(&shared, id).await,
                    Mode::Pipelined => pipelined(&shared, id).await,
                }
            })
        })
        .collect();
    let mut total = Tally::new();
    let mut lost = 0;
    for task in tasks {
        match task.await {
            Ok(tally) => total.merge(tally),
            Err(_) => lost += 1,
        }
    }
    let finished = Instant::now();
    ticker.abort();
    update_bar(&bar, &shared);
    bar.finish_and_clear();
    if lost > 0 {
        total.failure(Failure::new(FailureKind::Io, format!("{lost} load-generator tasks failed")));
    }
    Report::new(plan, &total, finished.saturating_duration_since(window_start))
}

fn progress_bar(plan: &Plan, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let (length, template) = match plan.stop {
        Stop::After(d) => (
            u64::try_from((plan.warmup + d).as_millis()).unwrap_or(u64::MAX),
            "{spinner} [{elapsed_precise}] {wide_bar} {msg}",
        ),
        Stop::Requests(n) => (n, "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}"),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr_with_hz(10));
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn update_bar(bar: &ProgressBar, shared: &Shared) {
    if bar.is_hidden() {
        return;
    }
    let answered = shared.answered.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    match shared.plan.stop {
        Stop::After(_) => {
            let elapsed = Instant::now().saturating_duration_since(shared.started);
            bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        }
        Stop::Requests(_) => bar.set_position(shared.issued.load(Ordering::Relaxed)),
    }
    bar.set_message(format!("{answered} answers, {failed} errors"));
}

/// Opens a connection to the server under test (TLS too, if planned).
async fn open(plan: &Plan) -> Result<ClientConnection, Failure> {
    let (addr, timeout) = (plan.addr, plan.timeout);
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Failure::new(FailureKind::Connect, format!("cannot connect to {addr}: {}", net::explain(&e)))),
        Err(_) => return Err(Failure::new(FailureKind::Connect, format!("cannot connect to {addr}: timed out after {timeout:?}"))),
    };
    if plan.reset_close && plan.mode == Mode::Connect {
        let _ = stream.set_zero_linger();
    }
    let Some(tls) = &plan.tls else {
        return Ok(ClientConnection::plain(stream, addr, DEFAULT_MAX_CONTENT_LENGTH));
    };
    match tokio::time::timeout(timeout, tls.connect(stream)).await {
        Ok(Ok(stream)) => Ok(ClientConnection::tls(stream, addr, DEFAULT_MAX_CONTENT_LENGTH)),
        Ok(Err(e)) => Err(Failure::new(FailureKind::Connect, format!("TLS handshake with {addr} failed: {e}"))),
        Err(_) => Err(Failure::new(FailureKind::Connect, format!("TLS handshake with {addr}: no answer within {timeout:?}"))),
    }
}

/// Reads the next answer.
async fn read_answer<R: AsyncRead + Unpin>(reader: &mut MessageReader<R>) -> Result<Message, Failure> {
    match reader.next().await {
        Ok(Some(Inbound::Message(message))) => Ok(message),
        Ok(Some(Inbound::Invalid(e))) | Err(DecodeError::Frame(e)) => Err(Failure::new(FailureKind::BadFrame, e.to_string())),
        Err(DecodeError::Io(e)) => Err(Failure::io(&e)),
        Ok(None) => Err(Failure::new(FailureKind::Closed, "the server closed the connection without answering")),
    }
}

/// `connect` and `persistent`: send a request, wait for its answer, repeat.
async fn one_at_a_time(shared: &Shared, id: usize) -> Tally {
    let plan = &shared.plan;
    let mut tally = Tally::new();
    let mut cursor = plan.mix.cursor(id);
    let mut kept: Option<ClientConnection> = None;
    while let Some(ticket) = shared.ticket().await {
        let case = plan.mix.next(&mut cursor);
        let sent = Instant::now();
        let exchange = async {
            let mut connection = match kept.take() {
                Some(connection) => connection,
                None => open(plan).await?,
            };
            connection.writer.queue_encoded(&case.bytes);
            connection.writer.flush().await.map_err(|e| Failure::io(&e))?;
            let answer = read_answer(&mut connection.reader).await?;
            Ok::<_, Failure>((connection, answer))
        };
        let outcome = match tokio::time::timeout(plan.timeout, exchange).await {
            Ok(Ok((connection, answer))) => {
                // In connect mode the connection closes here (with a
                // reset if asked: its linger was set when it was opened).
                if plan.mode == Mode::Persistent {
                    kept = Some(connection);
                }
                case.check(&answer)
            }
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::timeout(plan.timeout)),
        };
        let refused = matches!(&outcome, Err(f) if f.kind == FailureKind::Connect);
        shared.record(&mut tally, ticket, sent, outcome);
        if refused {
            tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
        }
    }
    tally
}

/// A request on the wire, waiting for its answer.
struct InFlight<'a> {
    sent: Instant,
    ticket: Ticket,
    case: &'a Case,
}

/// `pipelined`: keep up to `depth` requests in flight on each connection,
/// reconnecting after a failure.
async fn pipelined(shared: &Shared, id: usize) -> Tally {
    let plan = &shared.plan;
    let mut tally = Tally::new();
    let mut cursor = plan.mix.cursor(id);
    loop {
        let connection = match open(plan).await {
            Ok(connection) => connection,
            Err(failure) => {
                let Some(ticket) = shared.ticket().await else { break };
                shared.record(&mut tally, ticket, Instant::now(), Err(failure));
                tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
                continue;
            }
        };
        if pipeline(shared, connection, &mut cursor, &mut tally).await {
            break;
        }
    }
    tally
}

/// Runs one pipelined connection until the plan stops (true) or the
/// connection fails (false; every request in flight counts as failed).
///
/// A writer and a reader share the connection: the writer sends whenever a
/// slot is free (several requests in one write when several are), the
/// reader matches answers to requests in order and frees their slots.
/// Running both at once means a large request never deadlocks against a
/// server busy writing answers.
async fn pipeline(shared: &Shared, connection: ClientConnection, cursor: &mut Cursor, tally: &mut Tally) -> bool {
    let plan = &shared.plan;
    let slots = Semaphore::new(plan.depth);
    let (queue, mut in_flight) = mpsc::unbounded_channel::<InFlight<'_>>();
    let ClientConnection { mut reader, mut writer } = connection;
    let outcome = {
        let slots = &slots;
        let write = async move {
            let written = loop {
                let Ok(permit) = slots.acquire().await else { break Ok(()) };
                permit.forget();
                let mut free = 1;
                while let Ok(permit) = slots.try_acquire() {
                    permit.forget();
                    free += 1;
                }
                let mut more = true;
                for _ in 0..free {
                    let Some(ticket) = shared.ticket().await else {
                        more = false;
                        break;
                    };
                    let case = plan.mix.next(cursor);
                    writer.queue_encoded(&case.bytes);
                    let _ = queue.send(InFlight { sent: Instant::now(), ticket, case });
                }
                if let Err(e) = writer.flush().await {
                    break Err(Failure::io(&e));
                }
                if !more {
                    break Ok(());
                }
            };
            // Closing the queue tells the reader to stop once it is drained.
            drop(queue);
            written
        };
        let read = async {
            while let Some(request) = in_flight.recv().await {
                let answer = tokio::time::timeout_at(request.sent + plan.timeout, read_answer(&mut reader))
                    .await
                    .unwrap_or_else(|_| Err(Failure::timeout(plan.timeout)));
                match answer {
                    Ok(answer) => {
                        shared.record(tally, request.ticket, request.sent, request.case.check(&answer));
                        slots.add_permits(1);
                    }
                    Err(failure) => {
                        shared.record(tally, request.ticket, request.sent, Err(failure.clone()));
                        return Err(failure);
                    }
                }
            }
            Ok(())
        };
        tokio::pin!(write, read);
        let mut writing = true;
        loop {
            tokio::select! {
                written = &mut write, if writing => match written {
                    Ok(()) => writing = false,
                    Err(failure) => break Err(failure),
                },
                read = &mut read => break read,
            }
        }
    };
    match outcome {
        Ok(()) => true,
        Err(failure) => {
            // The rest of the requests in flight are lost with the connection.
            while let Ok(request) = in_flight.try_recv() {
                shared.record(tally, request.ticket, request.sent, Err(failure.clone()));
            }
            false
        }
    }
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
    fn new(plan: &Plan, tally: &Tally, window: Duration) -> Self {
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
        writeln!(f, "  requests    {} answered right, {} errors", self.ok, self.errors)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_sends_each_kind_by_weight_and_cycles_its_values() {
        let mix = Mix::parse("search=3, binary", None, &[]).unwrap();
        assert_eq!(mix.spec, "search=3,binary=1");
        let mut cursor = mix.cursor(0);
        let sent: Vec<_> = (0..8).map(|_| mix.next(&mut cursor).bytes.clone()).collect();
        let is_search = |b: &Bytes| b.windows(9).any(|w| w == b"text/json");
        assert_eq!(sent.iter().filter(|b| is_search(b)).count(), 6);
        // Four different search values, and both binary values.
        let mut distinct = sent.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 6);
    }

    #[test]
    fn bad_mixes_are_explained() {
        let error = |spec: &str| Mix::parse(spec, None, &[]).unwrap_err().to_string();
        assert!(error("search=1,search=2").contains("search is given twice"));
        assert!(error("search=0").contains("no request kind has a weight above 0"));
        assert!(error("search=9000,binary=9000").contains("keep them under"));
        assert!(error("custom").contains("need --content-type"));
        let custom = Message::new("a/b", "binary", &b"x"[..]);
        assert!(Mix::parse("search", Some(custom), &[]).unwrap_err().to_string().contains("add custom=N"));
    }

    #[test]
    fn answers_are_checked() {
        let case = Case::search("morpheus", &[]).unwrap();
        let right = Message::new("text/json", "utf-8", "{\"result\": \"Follow the white rabbit. \u{1f430}\"}".as_bytes());
        assert_eq!(case.check(&right), Ok(()));
        let mut other_order = right.clone();
        other_order.header.byteorder = "big".into();
        assert_eq!(case.check(&other_order), Ok(()), "the byte order is the server's own");
        let wrong = Message::new("text/json", "utf-8", &b"{\"result\": \"nope\"}"[..]);
        assert_eq!(case.check(&wrong).unwrap_err().kind, FailureKind::WrongAnswer);
        let error = Message::error(wasmux::message::ErrorCode::NoPlugin, "no plugin search is loaded");
        let failure = case.check(&error).unwrap_err();
        assert_eq!(failure.kind, FailureKind::ErrorAnswer("no-plugin".into()));
        assert_eq!(failure.kind.to_string(), "error-answer:no-plugin");
        assert_eq!(failure.detail, "no plugin search is loaded");

        let custom = Case::new(&Message::new("a/b", "binary", &b"x"[..]), Expect::NotAnError, &[]).unwrap();
        assert_eq!(custom.check(&wrong), Ok(()));
        assert!(custom.check(&error).is_err());
    }
}
