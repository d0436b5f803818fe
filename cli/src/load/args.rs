//! `wasmux bench`'s command line.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::{RetryArgs, TlsArgs};

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
    #[arg(long, short, value_parser = wasmux::config::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Send this many requests (after the warm-up), then stop.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Send requests for this long before measuring; warm-up answers are
    /// checked but not counted in the figures.
    #[arg(long, default_value = "0s", value_parser = wasmux::config::parse_duration)]
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
    #[arg(long, default_value = "5s", value_parser = wasmux::config::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub retry: RetryArgs,
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

