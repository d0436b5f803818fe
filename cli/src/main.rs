//! The `wasmux` command: `serve`, `send`, `bench`, `experiments`, `token`,
//! `push`, and the plugin author's `new`, `build`, `dev` and `call`. The
//! server itself is the `wasmux` library, and building plugins is
//! `wasmux-toolchain`'s; this binary parses the command line, composes
//! their parts, and holds the load generator.

mod load;
mod admin_client;
mod build;
mod call;
mod dev;
mod experiments;
mod new;
mod push;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use serde_json::Value;
use tracing_subscriber::EnvFilter;
use wasmux::client::{self, Client};
use wasmux::message::{AUTHORIZATION_FIELD, Message, consumed_field};
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
    Bench(load::BenchArgs),
    /// Show a running server's A/B experiments: each arm's numbers, and whether arms differ.
    Experiments(experiments::ExperimentsArgs),
    /// Make a tenant token and the hash that goes in the configuration.
    Token(TokenArgs),
    /// Push a plugin component to an OCI registry, in the CNCF Wasm layout.
    Push(push::PushArgs),
    /// Write a new plugin project (Rust, Python or JavaScript) from a template.
    New(new::NewArgs),
    /// Build a plugin project into a component, DIR/dist/NAME.wasm.
    Build(build::BuildArgs),
    /// Build and serve a plugin project; rebuild and swap it in on every save.
    Dev(dev::DevArgs),
    /// Run one request on a plugin component, with no server, and print the answer.
    Call(call::CallArgs),
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
    // Conflicts with each option of a custom request, not only with
    // --content-type: clap lets a `requires` go unchecked when the required
    // argument conflicts with one given, so `send search x --content hi`
    // sent the search and dropped the content without a word. And not
    // required when any of them is given, so that `send --content hi` is
    // told only of the missing --content-type.
    #[arg(
        required_unless_present_any = ["content_type", "content", "content_file", "encoding"],
        conflicts_with_all = ["content_type", "content", "content_file", "encoding"]
    )]
    action: Option<String>,
    /// The search's value, or the bytes after ACTION (the guide's client's
    /// third argument; empty if left out).
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
    /// Not the header's own (content-type, …; -t and -e give those) nor authorization (--token).
    #[arg(long = "field", short = 'f', value_name = "NAME=VALUE")]
    fields: Vec<String>,
    /// Give up after this long without an answer.
    #[arg(long, default_value = "10s", value_parser = wasmux::config::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    retry: RetryArgs,
    #[command(flatten)]
    tls: TlsArgs,
    /// Show the bytes sent and received, as the guide prints them.
    #[arg(long, short)]
    verbose: bool,
}

/// When a client sends a request again (`send`, `bench`): once, on a new
/// connection, when the server ended the connection with a FIN before any
/// byte of the answer. By default only the guide's search and binary
/// requests, which may run twice; a custom content-type may run a plugin
/// that counts or charges, and a FIN does not prove the request did not run
/// (behind a proxy whose backend crashed, it may have).
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct RetryArgs {
    /// Send custom requests (--content-type) again too, if the server
    /// closes before answering: say they are idempotent.
    #[arg(long, conflicts_with = "no_retry")]
    retry: bool,
    /// Never send a request again.
    #[arg(long)]
    no_retry: bool,
}

impl RetryArgs {
    /// Whether a request of the guide's kinds (`guide`) or a custom one is
    /// sent again.
    pub fn resend(self, guide: bool) -> client::Resend {
        if !self.no_retry && (guide || self.retry) { client::Resend::Once } else { client::Resend::Never }
    }
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
    let cli = parse();
    let filter = match &cli.command {
        Command::Serve(args) => log_filter(args.verbose),
        Command::Send(args) => log_filter(args.verbose),
        Command::Dev(args) => log_filter(args.verbose),
        // The plugin's lines, and warnings. (Not `trace`: that would turn on
        // the trace checks of every crate logging through `log`, Cranelift's
        // too, and slow compiling down.)
        // (`wasmux::plugins`, the loading lines, starts with the same name.)
        Command::Call(_) => "wasmux=warn,wasmux::plugin=info,wasmux::plugins=warn",
        // Its own lines say what it compiled into the cache.
        Command::Build(_) => "wasmux=warn",
        Command::Token(_) | Command::Push(_) | Command::Bench(_) | Command::Experiments(_) | Command::New(_) => log_filter(false),
    };
    // `call` prints one request's log lines: no time, no module.
    init_logging(filter, !matches!(cli.command, Command::Call(_)));
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
            Command::Bench(args) => load::main(args).await,
            Command::Experiments(args) => experiments::main(args).await.map(|()| ExitCode::SUCCESS),
            Command::New(args) => new::new(args).map(|()| ExitCode::SUCCESS),
            Command::Build(args) => build::build(args).await.map(|()| ExitCode::SUCCESS),
            Command::Dev(args) => dev::dev(args).await.map(|()| ExitCode::SUCCESS),
            Command::Call(args) => call::call(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<wasmux_toolchain::ToolFailed>() {
                // The tool's own messages (the compiler's errors) are above:
                // one line, not a stack of wrappers around them.
                Some(failed) => eprintln!("wasmux: {failed}"),
                None => eprintln!("wasmux: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// The command line, parsed. `--no-cache` (`serve`, `call`) is checked
/// against `--cache-dir` here rather than with clap's `conflicts_with`,
/// which counts a value from the environment as given: with
/// `WASMUX_CACHE_DIR` set, `--no-cache` was refused although the user never
/// wrote `--cache-dir`. Now `--no-cache` wins over the variable, and only
/// both options on the command line are refused.
fn parse() -> Cli {
    let mut command = Cli::command();
    let matches = command.get_matches_mut();
    if let Some((name, given)) = matches.subcommand()
        && given.try_get_one::<bool>("no_cache").ok().flatten() == Some(&true)
        && given.value_source("cache_dir") == Some(ValueSource::CommandLine)
        && let Some(subcommand) = command.find_subcommand_mut(name)
    {
        subcommand
            .error(clap::error::ErrorKind::ArgumentConflict, "the argument '--no-cache' cannot be used with '--cache-dir <CACHE_DIR>': give one of them")
            .exit();
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The log filter of `serve`, `send` and `dev`, with or without `-v`.
fn log_filter(verbose: bool) -> &'static str {
    if verbose { "wasmux=debug,wasmux::wire=debug" } else { "wasmux=info" }
}

fn init_logging(default: &str, full: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: a log sent to a file or a pipe shows the
    // wire bytes (`-v`) as plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if full {
        log.init();
    } else {
        log.without_time().with_target(false).init();
    }
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
        if token.trim().is_empty() {
            bail!("the token is empty (--token or WASMUX_TOKEN): give the tenant's token, or neither to be served as the default tenant");
        }
        request.header.extra.insert(AUTHORIZATION_FIELD.to_owned(), Value::String(format!("Bearer {token}")));
    }
    add_fields(&mut request, &args.fields, FieldsFor::Send)?;
    let tls = args.tls.client(&args.addr)?;
    let resend = args.retry.resend(args.action.is_some());
    let mut client = Client::connect(&args.addr, tls.as_ref(), args.timeout).await?;
    let answer = client.request(&request, resend).await?;
    Ok(print_answer(&answer))
}

/// The command whose `--field`s are added: what to use instead of a
/// field the host reads itself differs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldsFor {
    Send,
    Call,
}

/// Adds each `--field NAME=VALUE` to `request`'s header: VALUE is JSON if
/// it parses as JSON, else a string (`wasmux send` and `wasmux call`).
///
/// Refuses a field with no name, or one the host reads itself, in any case
/// ([`CONSUMED_FIELDS`](wasmux::message::CONSUMED_FIELDS)): a header field
/// (`content-type`, …) would be dropped as the header is written, and
/// `wasmux call` would try a plugin on a field no server passes to one.
fn add_fields(request: &mut Message, fields: &[String], of: FieldsFor) -> anyhow::Result<()> {
    for field in fields {
        let (name, value) = field.split_once('=').with_context(|| format!("--field {field}: write NAME=VALUE"))?;
        if name.is_empty() {
            bail!("--field {field}: the field has no name: write NAME=VALUE");
        }
        if let Some(consumed) = consumed_field(name) {
            let instead = match (consumed, of) {
                ("content-type", _) => "give the content-type with -t (--content-type)",
                ("content-encoding", _) => "give the content-encoding with -e (--encoding)",
                ("content-length", _) => "it is the content's length: give the content with --content or --content-file",
                ("byteorder", FieldsFor::Send) => "wasmux send sends this machine's",
                ("byteorder", FieldsFor::Call) => "wasmux call sends this machine's",
                (_, FieldsFor::Send) => "give the tenant's token with --token (or WASMUX_TOKEN), which sends it as \"Bearer TOKEN\"",
                (_, FieldsFor::Call) => "a server takes it as a tenant's credential (`wasmux send --token`), and `wasmux call` serves the default tenant",
            };
            let what = if of == FieldsFor::Call { "never reaches a plugin as a field" } else { "is not sent as a field of its own" };
            bail!("--field {field}: {name} is read by the host and {what}; {instead}");
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        request.header.extra.insert(name.to_owned(), value);
    }
    Ok(())
}

/// Prints an answer as the guide's client does (`wasmux send` and `wasmux
/// call`); the exit code is a failure for an error answer.
fn print_answer(answer: &Message) -> ExitCode {
    println!("{}", client::describe_answer(answer));
    if answer.as_error().is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let token = match args.hash {
        Some(token) if token.trim().is_empty() => bail!("the token is empty: no client can send it as \"Bearer TOKEN\""),
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
