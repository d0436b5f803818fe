//! Test support: a real `wasmux serve` process on a loopback port chosen by
//! the OS, and raw-socket helpers that see exactly the bytes on the wire.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod certificates;
pub mod haproxy;
pub mod prometheus;
pub mod redis;
pub mod registry;

/// How long any single network step in a test may take.
pub const STEP: Duration = Duration::from_secs(10);

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// The components built by `cargo xtask plugins`.
pub fn plugins_dir() -> PathBuf {
    let dir = root().join("target/plugins");
    assert!(
        dir.join("search.wasm").is_file() && dir.join("binary-echo.wasm").is_file(),
        "the plugins are not built: run `cargo xtask plugins` (or `cargo xtask test`) first"
    );
    dir
}

/// The misbehaving test plugins built by `cargo xtask plugins`.
pub fn fixtures_dir() -> PathBuf {
    let dir = root().join("target/test-plugins");
    assert!(dir.is_dir(), "the test plugins are not built: run `cargo xtask plugins` first");
    dir
}

/// Fixtures that import `wasi:keyvalue`: a server that loads one opens its
/// data directory (by default the user's, locked by one server at a time),
/// so they are served only by tests that give a directory of their own
/// (`keyvalue.rs`).
pub const STATEFUL_FIXTURES: &[&str] = &["kv-counter.wasm"];

/// A temporary plugin directory holding the guide's plugins and the test
/// fixtures (which `cargo xtask plugins` keeps apart, in `target/test-plugins`),
/// but for the [`STATEFUL_FIXTURES`].
pub fn plugins_and_fixtures() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for source in [plugins_dir(), fixtures_dir()] {
        for entry in std::fs::read_dir(&source).expect("read a plugin directory") {
            let path = entry.expect("directory entry").path();
            let stateful = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| STATEFUL_FIXTURES.contains(&n));
            if path.extension().is_some_and(|e| e == "wasm") && !stateful {
                std::fs::copy(&path, dir.path().join(path.file_name().expect("file name"))).expect("copy a plugin");
            }
        }
    }
    dir
}

/// A running `wasmux serve`, stopped (SIGTERM, then kill) when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// Every address it listens on (`addr` is the first).
    pub addrs: Vec<SocketAddr>,
    /// The admin endpoint, when started with `--admin`.
    pub admin: Option<SocketAddr>,
    /// HAProxy's agent check, when started with `--agent`.
    pub agent: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    /// The thread that reads the server's standard error into `log`: it
    /// ends once the server has exited and everything it wrote is read.
    log_reader: Option<std::thread::JoinHandle<()>>,
    /// Files the server reads (its configuration, its plugins), kept until
    /// it stops.
    files: Vec<tempfile::TempDir>,
    /// The configuration file written for it, if any.
    config: Option<PathBuf>,
}

impl Server {
    /// `wasmux serve --plugins target/plugins` on a free loopback port.
    pub fn start() -> Self {
        Self::start_with(&["--plugins", plugins_dir().to_str().expect("utf-8 path")])
    }

    /// `wasmux serve --listen 127.0.0.1:0 ARGS`.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_listening(&["127.0.0.1:0"], 1, args)
    }

    /// `wasmux serve --listen L… ARGS`, once it has announced `listeners`
    /// listening addresses.
    ///
    /// Unless ARGS choose a cache (`--cache-dir`, `--no-cache`), the
    /// compiled-code cache `target/test-cache` is shared by every test
    /// server: compiling a plugin takes most of a second in a debug build,
    /// loading it from the cache a few milliseconds.
    pub fn start_listening(listen: &[&str], listeners: usize, args: &[&str]) -> Self {
        Self::start_logging(listen, listeners, args, "wasmux=debug", &[], |_| {})
    }

    /// `wasmux serve --listen 127.0.0.1:0 ARGS`, allowing it `within` to
    /// start listening: for plugins that take seconds to compile the first
    /// time (Python, JavaScript), before the shared cache has them.
    pub fn start_slow(args: &[&str], within: Duration) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
        command.arg("serve").args(["--listen", "127.0.0.1:0"]).args(Self::cache_args(args, &[])).args(args).env("RUST_LOG", "wasmux=debug");
        Self::launch(command, 1, args, within, |_| {})
    }

    /// [`Server::start_slow`], running `meanwhile` while the server starts,
    /// before it listens (it may have started listening by the time
    /// `meanwhile` returns), with a function that returns its log so far.
    pub fn start_slow_meanwhile(args: &[&str], within: Duration, meanwhile: impl FnOnce(&dyn Fn() -> String)) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
        command.arg("serve").args(["--listen", "127.0.0.1:0"]).args(Self::cache_args(args, &[])).args(args).env("RUST_LOG", "wasmux=debug");
        Self::launch(command, 1, args, within, meanwhile)
    }

    /// `wasmux dev DIR --listen 127.0.0.1:0` with the test cache, allowing
    /// `within` for the first build.
    pub fn start_dev(dir: &Path, within: Duration) -> Self {
        Self::start_dev_with(dir, &[], within)
    }

    /// [`Server::start_dev`] with more arguments for `wasmux dev`.
    pub fn start_dev_with(dir: &Path, args: &[&str], within: Duration) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
        command.arg("dev").arg(dir).args(["--listen", "127.0.0.1:0"]).args(args).envs(tool_env()).env("RUST_LOG", "wasmux=debug");
        Self::launch(command, 1, &[], within, |_| {})
    }

    /// Keeps `dir` (the server's plugins, say) until the server stops.
    pub fn keeping(mut self, dir: tempfile::TempDir) -> Self {
        self.files.push(dir);
        self
    }

    /// The shared cache unless `args` or `env` choose one.
    fn cache_args(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        let chooses_cache = args.contains(&"--cache-dir") || args.contains(&"--no-cache") || env.iter().any(|(name, _)| *name == "XDG_CACHE_HOME");
        if chooses_cache { Vec::new() } else { vec!["--cache-dir".into(), test_cache().display().to_string()] }
    }

    /// `wasmux serve --listen 127.0.0.1:0 ARGS` logging with `RUST_LOG=filter`.
    pub fn start_with_log(filter: &str, args: &[&str]) -> Self {
        Self::start_logging(&["127.0.0.1:0"], 1, args, filter, &[], |_| {})
    }

    /// `wasmux serve --listen 127.0.0.1:0 ARGS` with these environment
    /// variables set. With `XDG_CACHE_HOME` among them, the server finds
    /// its cache directory itself.
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_logging(&["127.0.0.1:0"], 1, args, "wasmux=debug", env, |_| {})
    }

    /// `wasmux serve ARGS` under the open-file limits `soft` and `hard`.
    pub fn start_with_open_file_limit(soft: u64, hard: u64, args: &[&str]) -> Self {
        Self::start_logging(&["127.0.0.1:0"], 1, args, "wasmux=debug", &[], |command| {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe, and the closure
            // touches nothing else of the parent's between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = rustix::process::Rlimit { current: Some(soft), maximum: Some(hard) };
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).map_err(std::io::Error::from)
                });
            }
        })
    }

    /// [`Server::start_listening`] logging with `RUST_LOG=filter`, with
    /// these environment variables, the command adjusted by `adjust`
    /// before it starts.
    fn start_logging(listen: &[&str], listeners: usize, args: &[&str], filter: &str, env: &[(&str, &str)], adjust: impl FnOnce(&mut Command)) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
        command
            .arg("serve")
            .args(listen.iter().flat_map(|spec| ["--listen", spec]))
            .args(Self::cache_args(args, env))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", filter);
        adjust(&mut command);
        Self::launch(command, listeners, args, STEP, |_| {})
    }

    /// Starts `command` (a `wasmux serve` or `wasmux dev`) and waits, up to
    /// `within`, for it to announce `listeners` addresses (and its admin
    /// endpoint and agent, if `args` ask for them), running `meanwhile`
    /// first.
    fn launch(mut command: Command, listeners: usize, args: &[&str], within: Duration, meanwhile: impl FnOnce(&dyn Fn() -> String)) -> Self {
        command.env("NO_COLOR", "1").stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start wasmux serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        // Stdout lines come through a channel, so that waiting for them has
        // a bound: a server that prints fewer addresses than expected (no
        // IPv6 here, say) fails the test instead of hanging it.
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, printed) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Once the test stops listening, keep draining so the server
                // never blocks on a full pipe.
                let _ = lines.send(line);
            }
        });
        meanwhile(&|| log.lock().unwrap_or_else(|e| e.into_inner()).clone());
        let deadline = Instant::now() + within;
        let mut next_line = |what: &str| -> String {
            match printed.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(200));
                    panic!("wasmux printed no {what} ({e}); its log:\n{}", log.lock().unwrap_or_else(|e| e.into_inner()));
                }
            }
        };
        let mut addrs = Vec::new();
        while addrs.len() < listeners {
            let line = next_line(&format!("listening address ({} of {listeners})", addrs.len() + 1));
            match line.trim().strip_prefix("wasmux listening on ").and_then(|a| a.parse().ok()) {
                Some(addr) => addrs.push(addr),
                None => panic!("wasmux printed {line:?} where a listening address was expected"),
            }
        }
        let addr = addrs[0];
        let mut admin = None;
        if args.contains(&"--admin") {
            let line = next_line("admin address");
            admin = line.trim().strip_prefix("wasmux admin on http://").and_then(|a| a.parse().ok());
            assert!(admin.is_some(), "no admin address printed: {line:?}");
        }
        let mut agent = None;
        if args.contains(&"--agent") {
            let line = next_line("agent address");
            agent = line.trim().strip_prefix("wasmux agent on ").and_then(|a| a.parse().ok());
            assert!(agent.is_some(), "no agent address printed: {line:?}");
        }
        Self { child, addr, addrs, admin, agent, log, log_reader: Some(log_reader), files: Vec::new(), config: None }
    }

    /// `wasmux serve` with the configuration `config` (TOML) and the
    /// plugins in `plugins`.
    pub fn start_configured(config: &str, plugins: &Path) -> Self {
        Self::start_configured_with(config, plugins, &[])
    }

    /// [`Server::start_configured`] with more arguments for `wasmux serve`.
    /// The configuration file is at [`Server::config_path`], to rewrite.
    pub fn start_configured_with(config: &str, plugins: &Path, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("wasmux.toml");
        std::fs::write(&path, config).expect("write the configuration");
        let mut args = vec!["--config", path.to_str().expect("utf-8 path"), "--plugins", plugins.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        let mut server = Self::start_with(&args);
        server.config = Some(path.clone());
        server.files.push(dir);
        server
    }

    /// The configuration file of a server from [`Server::start_configured`].
    pub fn config_path(&self) -> &Path {
        self.config.as_deref().expect("the server was started with a configuration")
    }

    /// Like [`Server::start_configured`], serving the guide's plugins and
    /// the misbehaving test fixtures side by side.
    pub fn start_with_fixtures(config: &str) -> Self {
        Self::start_with_fixtures_and(config, &[])
    }

    /// [`Server::start_with_fixtures`] with more arguments for `wasmux serve`.
    pub fn start_with_fixtures_and(config: &str, extra: &[&str]) -> Self {
        let plugins = plugins_and_fixtures();
        let mut server = Self::start_configured_with(config, plugins.path(), extra);
        server.files.push(plugins);
        server
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The most memory the server process has held at once (VmHWM), in bytes.
    pub fn peak_memory(&self) -> u64 {
        self.status_bytes("VmHWM")
    }

    /// The memory the server process holds now (VmRSS), in bytes: unlike
    /// [`Server::peak_memory`], it goes down when the server gives memory back.
    pub fn resident_memory(&self) -> u64 {
        self.status_bytes("VmRSS")
    }

    /// The largest the server's address space has been (VmPeak), in bytes:
    /// memory reserved counts here even if it was never touched.
    pub fn peak_virtual_memory(&self) -> u64 {
        self.status_bytes("VmPeak")
    }

    /// A `/proc/PID/status` figure given in kB, in bytes.
    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/PID/status");
        let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("no {field} in /proc/PID/status"));
        let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{field} in kB"));
        kib * 1024
    }

    /// Asserts that the server answers a normal request on a new connection
    /// at once: whatever happened elsewhere did not harm anyone else.
    pub fn assert_serves_others(&self) {
        let mut other = self.connect();
        let answer = other.request(&search("ring"));
        assert_eq!(answer.result(), "In the caves beneath the Misty Mountains. 💍", "another client was not served");
    }

    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it
    /// exited successfully.
    pub fn terminate(&mut self) -> bool {
        self.stop_with("TERM")
    }

    /// Sends `signal` (`TERM`, `INT`, …) and waits (up to [`STEP`]) for the
    /// process to exit; returns whether it exited successfully.
    pub fn stop_with(&mut self, signal: &str) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args([&format!("-{signal}"), &pid]).status();
        let end = Instant::now() + STEP;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.read_the_whole_log(end);
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Once the server has exited: waits, up to `end`, until the log holds
    /// every line it wrote, so that a test reading the log after a stop
    /// finds its last lines.
    fn read_the_whole_log(&mut self, end: Instant) {
        while self.log_reader.as_ref().is_some_and(|reader| !reader.is_finished()) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(reader) = self.log_reader.take_if(|reader| reader.is_finished()) {
            let _ = reader.join();
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `GET path` on the admin endpoint: (status code, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        self.admin_get_with_token(path, None)
    }

    /// `GET path` on the admin endpoint, with `Authorization: Bearer TOKEN`
    /// if a token is given: (status code, body).
    pub fn admin_get_with_token(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let addr = self.admin.expect("the server was started with --admin");
        let mut stream = TcpStream::connect_timeout(&addr, STEP).expect("connect to the admin endpoint");
        stream.set_read_timeout(Some(STEP)).expect("read timeout");
        let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n").expect("send HTTP request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read HTTP response");
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// The 12-digit version `/plugins` shows for `plugin`.
    pub fn plugin_version(&self, plugin: &str) -> String {
        let (_, plugins) = self.admin_get("/plugins");
        let plugins: serde_json::Value = serde_json::from_str(&plugins).expect("/plugins is JSON");
        let entry = plugins.as_array().and_then(|all| all.iter().find(|p| p["name"] == plugin));
        entry.and_then(|p| p["version"].as_str()).unwrap_or_else(|| panic!("{plugin} not in /plugins: {plugins}")).to_owned()
    }

    /// A raw connection to the server.
    pub fn connect(&self) -> Raw {
        Raw::connect(self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.is_running() && !self.terminate() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The cache directory of every `wasmux` the tests run (test servers'
/// compiled code; `wasmux build`'s tools and Rust target directory): shared
/// by the tests of a run, so that each is installed, built or compiled once.
pub fn test_cache() -> PathBuf {
    root().join("target/test-cache")
}

/// The environment for `wasmux build`, `call` and `dev` in tests: the
/// shared cache, and no log filter or colours from outside.
pub fn tool_env() -> Vec<(&'static str, std::ffi::OsString)> {
    vec![("WASMUX_CACHE_DIR", test_cache().into_os_string()), ("NO_COLOR", "1".into())]
}

/// `wasmux ARGS` with [`tool_env`], run to its end within `within`.
pub fn wasmux_tool(args: &[&std::ffi::OsStr], within: Duration) -> Finished {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
    command.args(args).envs(tool_env()).env_remove("RUST_LOG");
    Process::run(&mut command, within)
}

/// The search plugins of each language that `cargo xtask test` builds
/// with `wasmux build` (`plugins/search`, `examples/plugins/search-py`,
/// `examples/plugins/search-js`), and the stateful Rust example
/// (`examples/plugins/counter-kv`): `target/lang-plugins/NAME.wasm`.
pub fn lang_plugin(name: &str) -> PathBuf {
    let path = root().join("target/lang-plugins").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is not built: run `cargo xtask plugins --examples` (or `cargo xtask test`) first", path.display());
    path
}

/// A blocking loopback connection that reads and writes raw bytes.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, STEP).expect("connect to wasmux");
        stream.set_read_timeout(Some(STEP)).expect("read timeout");
        stream.set_write_timeout(Some(STEP)).expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        Self { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to wasmux");
    }

    /// Reads one whole message and returns its bytes exactly as received.
    pub fn read_message(&mut self) -> Vec<u8> {
        self.try_read_message().expect("read a message from wasmux")
    }

    pub fn try_read_message(&mut self) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0; 2];
        self.stream.read_exact(&mut bytes)?;
        let header_len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        bytes.resize(2 + header_len, 0);
        self.stream.read_exact(&mut bytes[2..])?;
        let header: serde_json::Value = serde_json::from_slice(&bytes[2..]).map_err(std::io::Error::other)?;
        let content_len = header["content-length"].as_u64().ok_or_else(|| std::io::Error::other("no content-length"))? as usize;
        let start = bytes.len();
        bytes.resize(start + content_len, 0);
        self.stream.read_exact(&mut bytes[start..])?;
        Ok(bytes)
    }

    /// Sends a message and reads the answer's bytes, or says why not.
    pub fn try_read_message_after(&mut self, message: &[u8]) -> std::io::Result<Vec<u8>> {
        self.stream.write_all(message)?;
        self.try_read_message()
    }

    /// Sends a message and reads the answer, decoded.
    pub fn request(&mut self, message: &[u8]) -> Answer {
        self.send(message);
        Answer::parse(&self.read_message())
    }

    /// Reads with a short timeout; true if nothing came (the server is
    /// making this peer wait).
    pub fn nothing_arrives(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).expect("read timeout");
        let mut byte = [0; 1];
        let waiting = matches!(self.stream.read(&mut byte), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        self.stream.set_read_timeout(Some(STEP)).expect("read timeout");
        waiting
    }

    /// True if the server has closed the connection: the next read finds
    /// the end of the stream or a reset, within [`STEP`]. Bytes arriving
    /// instead, or nothing, mean it is open.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Err(e) => matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted),
            Ok(_) => false,
        }
    }
}

/// The value of the sample `series` (a metric's name and, if it has any,
/// its labels exactly as written: `name{a="x",b="y"}`) in Prometheus text.
/// Matched whole, so `wasmux_open_connections 1` is not found in `… 10`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// The bytes of a message whose header is `header` exactly as written.
pub fn raw(header: &[u8], content: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(header.len()).expect("a header under 64 KiB").to_be_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(content);
    out
}

/// Runs `wasmux ARGS` to its end (logging nothing unless asked).
pub fn wasmux(args: &[&str]) -> Finished {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmux"));
    command.args(args).env_remove("RUST_LOG").env("NO_COLOR", "1");
    Process::run(&mut command, STEP)
}

/// A message built the way the guide's Python client builds one.
pub fn message(header: serde_json::Value, content: &[u8]) -> Vec<u8> {
    let mut header = header;
    if let Some(map) = header.as_object_mut() {
        map.entry("content-length").or_insert(content.len().into());
    }
    let header = wasmux_guide::python::to_vec(&header).expect("serializable header");
    let mut out = (header.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(content);
    out
}

/// The guide client's search request.
pub fn search(value: &str) -> Vec<u8> {
    let content = wasmux_guide::python::to_vec(&serde_json::json!({"action": "search", "value": value})).expect("json");
    message(
        serde_json::json!({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8"}),
        &content,
    )
}

/// The guide client's binary request.
pub fn binary(content: &[u8]) -> Vec<u8> {
    message(
        serde_json::json!({"byteorder": "little", "content-type": "binary/custom-client-binary-type", "content-encoding": "binary"}),
        content,
    )
}

/// A decoded answer.
#[derive(Debug)]
pub struct Answer {
    pub header: serde_json::Value,
    pub content: Vec<u8>,
}

impl Answer {
    pub fn parse(bytes: &[u8]) -> Self {
        let header_len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        let header: serde_json::Value = serde_json::from_slice(&bytes[2..2 + header_len]).expect("JSON header");
        Self { header, content: bytes[2 + header_len..].to_vec() }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.content).unwrap_or_else(|e| panic!("content is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.content)))
    }

    /// The `result` string of a JSON answer.
    pub fn result(&self) -> String {
        self.json()["result"].as_str().unwrap_or_else(|| panic!("no result string in {:?}", self.json())).to_owned()
    }

    /// The `error.code` of an error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error answer: {:?}", self.json())).to_owned()
    }
}

/// Any other program a test runs (the guide's Python programs, the example
/// binaries, `wasmux send`): its output is collected as it comes, and it is
/// killed if still running when dropped, so no test leaves one behind.
pub struct Process {
    child: Child,
    name: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// How a [`Process`] ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Finished {
    /// The stdout lines that start with `prefix`.
    pub fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.stdout.iter().map(String::as_str).filter(|line| line.starts_with(prefix)).collect()
    }
}

impl Process {
    /// Starts `command` with stdout and stderr piped.
    pub fn spawn(command: &mut Command) -> Self {
        let name = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let (lines, text) = (Arc::clone(&stdout), Arc::clone(&stderr));
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }),
            std::thread::spawn(move || {
                let mut all = String::new();
                let _ = BufReader::new(err).read_to_string(&mut all);
                text.lock().unwrap_or_else(|e| e.into_inner()).push_str(&all);
            }),
        ];
        Self { child, name, stdout, stderr, readers }
    }

    /// Runs `command` to its end, within `within`.
    pub fn run(command: &mut Command, within: Duration) -> Finished {
        Self::spawn(command).finish(within)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a stdout line starts with `prefix`, and returns it.
    pub fn wait_for_line(&mut self, prefix: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        let mut exited = false;
        loop {
            if let Some(line) = self.stdout().into_iter().find(|line| line.starts_with(prefix)) {
                return line;
            }
            if exited || Instant::now() > end {
                panic!("{} printed no line starting with {prefix:?}; stdout {:?}", self.name, self.stdout());
            }
            // Once it has exited, look once more after its last lines are read.
            exited = !self.is_running();
            std::thread::sleep(Duration::from_millis(if exited { 100 } else { 10 }));
        }
    }

    /// Waits until `count` stdout lines start with `prefix`.
    pub fn wait_for_lines(&self, prefix: &str, count: usize, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.stdout().iter().filter(|line| line.starts_with(prefix)).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits for the process to exit (killing it after `within`) and
    /// returns all it printed.
    pub fn finish(mut self, within: Duration) -> Finished {
        let end = Instant::now() + within;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("{} did not finish within {within:?}; stdout {:?}", self.name, self.stdout());
                }
            }
        };
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        Finished { status, stdout: self.stdout(), stderr: self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone() }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback port that was free a moment ago, for programs that cannot be
/// told to pick one (port 0); callers retry if it was taken meanwhile.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A loopback port on which nothing listens, and nothing can until the
/// returned socket is dropped: the socket holds the port bound (without
/// `SO_REUSEADDR`, so no other socket can bind it) but never listens, so
/// a connection to it is refused. Unlike a port freed a moment ago, no
/// other process can start listening on it meanwhile.
pub fn refusing_port() -> (socket2::Socket, u16) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind a loopback port");
    let port = socket.local_addr().ok().and_then(|a| a.as_socket()).map(|a| a.port()).expect("the bound port");
    (socket, port)
}

/// A TCP socket of this machine as `/proc/net/tcp` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSocket {
    /// Bytes sent and not yet acknowledged (for a listening socket, 0).
    pub send_queue: u64,
    /// Bytes received that the owner has not read yet; for a listening
    /// socket, the connections waiting to be accepted.
    pub receive_queue: u64,
    /// Whether it is a listening socket.
    pub listening: bool,
}

/// The IPv4 socket whose local address is `local` and, unless `None`, whose
/// peer is `remote` (a listening socket has none), as the kernel sees it:
/// what it holds that its owner has not read or accepted yet.
pub fn kernel_socket(local: SocketAddr, remote: Option<SocketAddr>) -> Option<KernelSocket> {
    fn hex(addr: SocketAddr) -> String {
        match addr {
            SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
            SocketAddr::V6(_) => String::new(),
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let (local, remote) = (hex(local), remote.map(hex));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (&at, &peer, &state, &queues) = (fields.get(1)?, fields.get(2)?, fields.get(3)?, fields.get(4)?);
        let listening = state == "0A";
        if at != local || remote.as_deref().is_some_and(|r| r != peer) || (remote.is_none() && !listening) {
            return None;
        }
        let (send, receive) = queues.split_once(':')?;
        Some(KernelSocket { send_queue: u64::from_str_radix(send, 16).ok()?, receive_queue: u64::from_str_radix(receive, 16).ok()?, listening })
    })
}

/// Waits, up to [`STEP`], until `condition` holds; says `what` if it never does.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + STEP;
    while !condition() {
        assert!(Instant::now() < end, "{what}: not within {STEP:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The sum of the samples of metric `name` (every label set) whose labels
/// include `label` (`outcome="bad-frame"`), matched as a whole label.
pub fn metric_total(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?.strip_prefix('{')?.strip_suffix('}')?;
            labels.split(',').any(|l| l == label).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

impl Server {
    /// Sends `signal` (`TERM`, `INT`, `HUP`) and returns at once.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `within` for the process to exit; its exit status, or
    /// `None` if it is still running.
    pub fn wait_for_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.read_the_whole_log(Instant::now() + STEP);
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
