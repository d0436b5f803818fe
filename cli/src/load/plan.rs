//! A validated benchmark: where, how, and what, each request encoded once
//! with the answer it must get.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio_util::codec::Encoder;
use wasmux::client::{self, Resend, guide_request};
use wasmux::codec::MessageCodec;
use wasmux::message::{AUTHORIZATION_FIELD, Message};
use wasmux::net;
use wasmux::router::SmoothRoundRobin;
use wasmux::tls::TlsClient;

use super::args::{BenchArgs, Mode};
use crate::RetryArgs;

/// Values the `search` requests cycle through: three hits and a miss, the
/// guide's examples.
const SEARCH_VALUES: [&str; 4] = ["morpheus", "ring", "\u{1f436}", "neo"];

/// Contents the `binary` requests cycle through: shorter and longer than
/// the ten bytes the guide's server echoes.
const BINARY_VALUES: [&str; 2] = ["\u{1f603}", " and more than ten bytes of content"];

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
        let mix = Mix::parse(&args.mix, custom, &fields, args.retry)?;
        let addrs = net::resolve(&args.addr).await?;
        let first = *addrs.first().with_context(|| format!("\"{}\" resolves to no address", args.addr))?;
        // A client tries each address in turn (docs/protocol.md, Addresses):
        // `:PORT` is [::] then 0.0.0.0, and a server may listen on only one
        // of them. The bench tries them once, here, and sends every request
        // to the first that accepts a connection, so that the run measures
        // the server and not a refused address per connection. When none
        // accepts, every request goes to the first, and each reports why it
        // could not connect, as with one address. (With one address there
        // is nothing to choose, and no connection is opened here.)
        let addr = match addrs.len() {
            1 => first,
            _ => net::connect_first(&addrs, args.timeout).await.map_or(first, |(_, addr)| addr),
        };
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
    /// Whether it is sent again on a new connection when the server ends
    /// the connection with a FIN before any byte of its answer: the
    /// guide's requests may run twice; custom ones only with --retry.
    pub resend: Resend,
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
    pub(super) fn new(request: &Message, expect: Expect, fields: &[(String, Value)], resend: Resend) -> anyhow::Result<Self> {
        let mut request = request.clone();
        request.header.extra.extend(fields.iter().cloned());
        let mut bytes = BytesMut::new();
        MessageCodec::default().encode(&request, &mut bytes).context("the custom request cannot be encoded")?;
        Ok(Self { bytes: bytes.freeze(), expect, resend })
    }

    /// The guide client's search for `value`, and the guide server's answer.
    pub(super) fn search(value: &str, fields: &[(String, Value)], resend: Resend) -> anyhow::Result<Self> {
        let request = guide_request("search", value);
        let content = wasmux_guide::search(&request.content, "utf-8").map_err(|e| anyhow::anyhow!("{e}"))?;
        let expect = Expect::Exact { content_type: "text/json".into(), content_encoding: "utf-8".into(), content: content.into() };
        Self::new(&request, expect, fields, resend)
    }

    /// The guide client's binary request (`binary` + `value`), and the answer.
    pub(super) fn binary(value: &str, fields: &[(String, Value)], resend: Resend) -> anyhow::Result<Self> {
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
            resend,
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
pub(super) struct Kind {
    cases: Vec<Case>,
}

/// Largest sum of weights: the schedule is that long.
const MAX_TOTAL_WEIGHT: u32 = 10_000;

impl Mix {
    /// Parses `search=3,binary=1,custom=1` (a kind without `=N` has weight 1).
    /// `custom` needs the custom request. Every request carries `fields`;
    /// `retry` says which are sent again when the server closes before
    /// answering.
    pub fn parse(spec: &str, custom: Option<Message>, fields: &[(String, Value)], retry: RetryArgs) -> anyhow::Result<Self> {
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
                "search" => SEARCH_VALUES.iter().map(|v| Case::search(v, fields, retry.resend(true))).collect::<anyhow::Result<Vec<_>>>()?,
                "binary" => BINARY_VALUES.iter().map(|v| Case::binary(v, fields, retry.resend(true))).collect::<anyhow::Result<Vec<_>>>()?,
                "custom" => {
                    let Some(request) = &custom else {
                        bail!("--mix {spec}: custom requests need --content-type (and --content or --content-file)");
                    };
                    vec![Case::new(request, Expect::NotAnError, fields, retry.resend(false))?]
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
    pub(super) fn cursor(&self, connection: usize) -> Cursor {
        Cursor { position: connection, turns: vec![connection; self.kinds.len()] }
    }

    /// The next request for a connection.
    pub(super) fn next(&self, cursor: &mut Cursor) -> &Case {
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

pub(super) struct Cursor {
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
    /// The server ended the connection (a FIN) before any byte of the
    /// answer, and the request was not (or could not be) sent again.
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
    pub(super) fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }

    pub(super) fn io(error: &std::io::Error) -> Self {
        Self::new(FailureKind::Io, net::explain(error))
    }

    /// The server ended the connection before any byte of the answer.
    pub(super) fn closed() -> Self {
        Self::new(FailureKind::Closed, "the server closed the connection without answering")
    }

    pub(super) fn timeout(timeout: Duration) -> Self {
        Self::new(FailureKind::Timeout, format!("no answer within {timeout:?}"))
    }
}
