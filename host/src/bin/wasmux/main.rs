//! The `wasmux` command: `serve`, `send`, `bench`, `experiments`, `token`. The server
//! itself is the `wasmux` library; this binary parses the command line,
//! composes the library's parts, and holds the load generator.

mod bench;
mod experiments;
mod push;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use tracing_subscriber::EnvFilter;
use wasmux::client::{self, Client};
use wasmux::message::{AUTHORIZATION_FIELD, Message};
use wasmux::tenancy::TokenHash;
use wasmux::tls::TlsClient;

#[derive(Parser)]
#[command(name = "wasmux", version, about = "A server for the guide's framed TCP protocol whose handlers are hot-swappable WebAssembly components")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the protocol, routing each request by content-type to a plugin.
    Serve(serve::ServeArgs),
    /// Send one request and print the answer, as the guide's client does.
    Send(SendArgs),
    /// Load a server with requests, check every answer, report throughput and latency.
    Bench(bench::BenchArgs),
    /// Show a running server's A/B experiments: each arm's numbers, and whether arms differ.
    Experiments(experiments::ExperimentsArgs),
    /// Make a tenant token and the hash that goes in the configuration.
    Token(TokenArgs),
    /// Push a plugin component to an OCI registry, in the CNCF Wasm layout.
    Push(push::PushArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// Print the hash of this existing token instead of making a new one.
    #[arg(long)]
    hash: Option<String>,
}

#[derive(Args)]
struct SendArgs {
    /// Server address: HOST:PORT or [IPv6]:PORT.
    #[arg(long, short, default_value = "127.0.0.1:65432")]
    addr: String,
    /// `search` sends a text/json search for VALUE; any other action sends
    /// ACTION+VALUE as binary/custom-client-binary-type (the guide's client).
    #[arg(required_unless_present = "content_type", conflicts_with = "content_type")]
    action: Option<String>,
    #[arg(requires = "action")]
    value: Option<String>,
    /// Send this content-type instead (with --content or --content-file).
    #[arg(long, short = 't')]
    content_type: Option<String>,
    /// The content-encoding to declare with --content-type.
    #[arg(long, short, default_value = "binary", requires = "content_type")]
    encoding: String,
    /// The content, as text.
    #[arg(long, requires = "content_type", conflicts_with = "content_file")]
    content: Option<String>,
    /// The content, read from a file.
    #[arg(long, requires = "content_type")]
    content_file: Option<PathBuf>,
    /// Send "authorization": "Bearer TOKEN", to be served as a tenant.
    #[arg(long, env = "WASMUX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An extra header field, NAME=VALUE; VALUE is JSON if it parses as JSON, else a string.
    #[arg(long = "field", short = 'f', value_name = "NAME=VALUE")]
    fields: Vec<String>,
    /// Give up after this long without an answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tls: TlsArgs,
    /// Show the bytes sent and received, as the guide prints them.
    #[arg(long, short)]
    verbose: bool,
}

/// How a client reaches a TLS server (`send`, `bench`).
#[derive(Args, Clone, Debug)]
pub struct TlsArgs {
    /// Connect over TLS; the server's certificate must be valid for the
    /// address's host.
    #[arg(long)]
    tls: bool,
    /// With --tls: trust the CA certificates of this PEM file instead of the system's.
    #[arg(long, requires = "tls", value_name = "FILE")]
    ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS client for `addr`, if --tls was given.
    pub fn client(&self, addr: &str) -> anyhow::Result<Option<TlsClient>> {
        self.tls.then(|| TlsClient::new(addr, self.ca.as_deref())).transpose()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = match &cli.command {
        Command::Serve(args) => args.verbose,
        Command::Send(args) => args.verbose,
        Command::Token(_) | Command::Push(_) => false,
        Command::Bench(_) | Command::Experiments(_) => false,
    };
    init_logging(verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wasmux: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Push(args) => push::push(args).await.map(|()| ExitCode::SUCCESS),
            Command::Send(args) => send(args).await,
            Command::Token(args) => token(args).map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => bench::main(args).await,
            Command::Experiments(args) => experiments::main(args).await.map(|()| ExitCode::SUCCESS),
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasmux: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: bool) {
    let default = if verbose { "wasmux=debug,wasmux::wire=debug" } else { "wasmux=info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: a log sent to a file or a pipe shows the
    // wire bytes (`-v`) as plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let mut request = match (&args.action, &args.content_type) {
        (Some(action), _) => client::guide_request(action, args.value.as_deref().unwrap_or_default()),
        (None, Some(content_type)) => {
            let content = match (&args.content, &args.content_file) {
                (Some(text), _) => text.clone().into_bytes(),
                (None, Some(path)) => client::read_content(path)?,
                (None, None) => Vec::new(),
            };
            Message::new(content_type.clone(), args.encoding.clone(), content)
        }
        (None, None) => bail!("give ACTION VALUE, or --content-type with --content or --content-file"),
    };
    if let Some(token) = &args.token {
        request.header.extra.insert(AUTHORIZATION_FIELD.to_owned(), Value::String(format!("Bearer {token}")));
    }
    for field in &args.fields {
        let (name, value) = field.split_once('=').with_context(|| format!("--field {field}: write NAME=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        request.header.extra.insert(name.to_owned(), value);
    }
    let tls = args.tls.client(&args.addr)?;
    let mut client = Client::connect(&args.addr, tls.as_ref(), args.timeout).await?;
    let answer = client.request(&request).await?;
    println!("{}", client::describe_answer(&answer));
    Ok(if answer.as_error().is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let token = match args.hash {
        Some(token) => token,
        None => {
            let mut bytes = [0u8; 24];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            println!("token: {token}");
            eprintln!("  (the client sends \"authorization\": \"Bearer {token}\"; `wasmux send --token {token}`)");
            token
        }
    };
    println!("token-sha256 = \"{}\"", TokenHash::of(&token));
    eprintln!("  (put this line in the tenant's table: [tenants.NAME])");
    Ok(())
}
