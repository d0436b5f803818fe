//! The store against real backends: a map, fjall in a temporary
//! directory, and a `redis-server` started for the test on a free
//! loopback port (installed by `examples/cluster/install-deps.sh` when
//! missing; a test that needs it fails without it).

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// A generous deadline for operations that should succeed.
const SOON: Duration = Duration::from_secs(5);

fn soon() -> Instant {
    Instant::now() + SOON
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// A `redis-server` with no persistence, its working directory temporary,
/// on a free loopback port; killed when dropped.
pub(super) struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        ensure_redis_installed();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temporary directory");
            match spawn_redis(port, dir.path()) {
                Ok(child) => return Self { child: Some(child), port, dir },
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: there is no persistence).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + SOON;
        loop {
            match spawn_redis(self.port, self.dir.path()) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                // The port may linger a moment after the kill.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("could not restart redis-server on port {}: {e}", self.port),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_redis(port: u16, dir: &Path) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run redis-server: {e}"))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + SOON;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut log = String::new();
            if let Some(out) = child.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut BufReader::new(out), &mut log);
            }
            return Err(format!("redis-server exited ({status}): {}", log.lines().last().unwrap_or_default()));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            // Its log is not read from here on: drain it so it never blocks.
            if let Some(out) = child.stdout.take() {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut BufReader::new(out), &mut std::io::sink());
                });
            }
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("redis-server did not listen on {addr} within {SOON:?}"))
}

/// Installs Debian's `redis-server` with the project's script when it is
/// missing; fails the test if it cannot.
fn ensure_redis_installed() {
    let found = Command::new("sh").args(["-c", "command -v redis-server"]).stdout(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return;
    }
    let status = Command::new("bash")
        .arg(root().join("examples/cluster/install-deps.sh"))
        .arg("redis-server")
        .status()
        .expect("run examples/cluster/install-deps.sh");
    assert!(status.success(), "redis-server is missing and could not be installed: apt-get install redis-server as root");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// One store of each kind, with what keeps it alive.
struct Backends {
    stores: Vec<(&'static str, Store)>,
    _dir: tempfile::TempDir,
    _redis: RedisServer,
}

fn backends(durability: Durability) -> Backends {
    let dir = tempfile::tempdir().expect("temporary directory");
    let redis = RedisServer::start();
    let stores = vec![
        ("memory", Store::in_memory()),
        ("embedded", Store::embedded(dir.path(), durability).expect("open the embedded store")),
        ("redis", Store::redis(&redis.url()).expect("a Redis URL")),
    ];
    Backends { stores, _dir: dir, _redis: redis }
}

fn bucket(tenant: &str, plugin: &str) -> BucketId {
    BucketId::new(tenant, plugin, DEFAULT_BUCKET)
}

#[test]
fn counters_are_read_as_redis_reads_them() {
    assert_eq!(parse_counter(b"0"), Some(0));
    assert_eq!(parse_counter(b"42"), Some(42));
    assert_eq!(parse_counter(b"-7"), Some(-7));
    assert_eq!(parse_counter(b"9223372036854775807"), Some(i64::MAX));
    for not_a_counter in [&b""[..], b"+1", b"01", b" 1", b"1 ", b"-0", b"1.0", b"9223372036854775808", b"abc", b"\xff"] {
        assert_eq!(parse_counter(not_a_counter), None, "{:?}", String::from_utf8_lossy(not_a_counter));
    }
    assert_eq!(add_to_counter(None, 5).unwrap(), (5, b"5".to_vec()));
    assert_eq!(add_to_counter(Some(b"-3"), 5).unwrap(), (2, b"2".to_vec()));
    assert!(matches!(add_to_counter(Some(b"-3"), 1), Err(KvError::NotACounter(_))));
    assert!(matches!(add_to_counter(Some(b"9223372036854775807"), 1), Err(KvError::NotACounter(_))));
    assert!(matches!(add_to_counter(Some(b"x"), 1), Err(KvError::NotACounter(_))));
}

#[test]
fn plugin_variants_share_their_base_name() {
    assert_eq!(plugin_base("search@fuzzy"), "search");
    assert_eq!(plugin_base("search"), "search");
    assert_eq!(BucketId::new("t", "search@fuzzy", "default"), BucketId::new("t", "search", "default"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_gets_sets_deletes_and_lists() {
    let backends = backends(Durability::Process);
    let limits = KvLimits::default();
    for (name, store) in &backends.stores {
        let b = bucket("alpha", "notes");
        assert_eq!(store.get(&b, "k", soon()).await.unwrap(), None, "{name}");
        assert!(!store.exists(&b, "k", soon()).await.unwrap(), "{name}");
        store.set(&b, "k", b"v1".to_vec(), &limits, soon()).await.unwrap();
        assert_eq!(store.get(&b, "k", soon()).await.unwrap().as_deref(), Some(&b"v1"[..]), "{name}");
        assert!(store.exists(&b, "k", soon()).await.unwrap(), "{name}");
        store.set(&b, "k", b"".to_vec(), &limits, soon()).await.unwrap();
        assert_eq!(store.get(&b, "k", soon()).await.unwrap().as_deref(), Some(&b""[..]), "{name}: an empty value exists");
        assert!(store.exists(&b, "k", soon()).await.unwrap(), "{name}");
        store.delete(&b, "k", soon()).await.unwrap();
        store.delete(&b, "k", soon()).await.unwrap();
        assert_eq!(store.get(&b, "k", soon()).await.unwrap(), None, "{name}");

        // Enough keys that the last pages are found past SKIPPED_IN_PLACE
        // (off the server's thread, in the embedded store).
        let pairs: Vec<(String, Vec<u8>)> = (0..3000).map(|i| (format!("key-{i:04}"), format!("value {i}").into_bytes())).collect();
        store.set_many(&b, pairs.clone(), &limits, soon()).await.unwrap();
        let asked = vec!["key-0001".to_owned(), "missing".to_owned(), "key-0599".to_owned()];
        let got = store.get_many(&b, asked, soon()).await.unwrap();
        assert_eq!(got, vec![Some(("key-0001".to_owned(), b"value 1".to_vec())), None, Some(("key-0599".to_owned(), b"value 599".to_vec()))], "{name}");

        // Every key, page by page, each page bounded.
        let mut listed = BTreeSet::new();
        let mut cursor = None;
        for page in 0.. {
            assert!(page < 100, "{name}: list-keys does not end");
            let (keys, next) = store.list_keys(&b, cursor, soon()).await.unwrap();
            assert!(keys.len() <= 2 * LIST_PAGE, "{name}: a page of {}", keys.len());
            listed.extend(keys);
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let all: BTreeSet<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(listed, all, "{name}");

        store.delete_many(&b, (0..300).map(|i| format!("key-{i:04}")).collect(), soon()).await.unwrap();
        assert_eq!(store.get(&b, "key-0001", soon()).await.unwrap(), None, "{name}");
        assert!(store.exists(&b, "key-0300", soon()).await.unwrap(), "{name}");
        let usage = store.usage("alpha", soon()).await.unwrap();
        let expected: u64 = pairs[300..].iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        assert_eq!(usage, Usage { keys: pairs.len() as u64 - 300, bytes: expected }, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_the_same_bytes_in_every_backend() {
    let backends = backends(Durability::Process);
    let limits = KvLimits::default();
    let mut seen = Vec::new();
    for (name, store) in &backends.stores {
        let b = bucket("alpha", "counter");
        assert_eq!(store.increment(&b, "hits", 5, &limits, soon()).await.unwrap(), 5, "{name}");
        assert_eq!(store.increment(&b, "hits", 0, &limits, soon()).await.unwrap(), 5, "{name}");
        assert_eq!(store.increment(&b, "hits", 37, &limits, soon()).await.unwrap(), 42, "{name}");
        let hits = store.get(&b, "hits", soon()).await.unwrap();
        assert_eq!(hits.as_deref(), Some(&b"42"[..]), "{name}");

        // A number set by the plugin counts on.
        store.set(&b, "set", b"-3".to_vec(), &limits, soon()).await.unwrap();
        assert_eq!(store.increment(&b, "set", 10, &limits, soon()).await.unwrap(), 7, "{name}");
        store.set(&b, "big", b"9223372036854775800".to_vec(), &limits, soon()).await.unwrap();
        assert_eq!(store.increment(&b, "big", 7, &limits, soon()).await.unwrap(), i64::MAX as u64, "{name}");

        // Refused, and the value stays.
        for (key, value, delta) in [
            ("text", &b"abc"[..], 1),
            ("padded", b"01", 1),
            ("negative", b"-10", 3),
            ("full", b"9223372036854775807", 1),
            ("huge-delta", b"1", u64::MAX),
        ] {
            store.set(&b, key, value.to_vec(), &limits, soon()).await.unwrap();
            let refused = store.increment(&b, key, delta, &limits, soon()).await;
            assert!(matches!(refused, Err(KvError::NotACounter(_))), "{name}: increment of {key}: {refused:?}");
            assert_eq!(store.get(&b, key, soon()).await.unwrap().as_deref(), Some(value), "{name}: {key} changed");
        }
        let usage = store.usage("alpha", soon()).await.unwrap();
        let mut values = Vec::new();
        for key in ["hits", "set", "big", "text", "padded", "negative", "full", "huge-delta"] {
            values.push(store.get(&b, key, soon()).await.unwrap());
        }
        seen.push((name, values, usage));
    }
    for pair in seen.windows(2) {
        assert_eq!((&pair[0].1, pair[0].2), (&pair[1].1, pair[1].2), "{} and {} differ", pair[0].0, pair[1].0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_apart_and_plugin_variants_share() {
    let backends = backends(Durability::Process);
    let limits = KvLimits::default();
    for (name, store) in &backends.stores {
        store.set(&bucket("alpha", "search"), "k", b"alpha's".to_vec(), &limits, soon()).await.unwrap();
        store.set(&bucket("beta", "search"), "k", b"beta's".to_vec(), &limits, soon()).await.unwrap();
        let read = |tenant: &'static str, plugin: &'static str| {
            let store = store.clone();
            async move { store.get(&bucket(tenant, plugin), "k", soon()).await.unwrap() }
        };
        assert_eq!(read("alpha", "search").await.as_deref(), Some(&b"alpha's"[..]), "{name}");
        assert_eq!(read("beta", "search").await.as_deref(), Some(&b"beta's"[..]), "{name}");
        assert_eq!(read("alpha", "search@fuzzy").await.as_deref(), Some(&b"alpha's"[..]), "{name}: a variant shares");
        assert_eq!(read("alpha", "other").await, None, "{name}: another plugin does not");
        assert_eq!(read("gamma", "search").await, None, "{name}");
        let other_bucket = BucketId::new("alpha", "search", "cache");
        assert_eq!(store.get(&other_bucket, "k", soon()).await.unwrap(), None, "{name}: another bucket does not");
        assert_eq!(store.usage("alpha", soon()).await.unwrap().keys, 1, "{name}");
        assert_eq!(store.usage("beta", soon()).await.unwrap().keys, 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_refused_and_change_nothing() {
    let backends = backends(Durability::Process);
    let limits = KvLimits { max_key: 8, max_value: 16, max_keys: 3, max_bytes: 36, operations_per_request: 100 };
    for (name, store) in &backends.stores {
        let b = bucket("alpha", "p");
        let over_key = store.set(&b, "123456789", b"v".to_vec(), &limits, soon()).await;
        assert!(matches!(&over_key, Err(KvError::Limit(m)) if m.contains("max-key-size")), "{name}: {over_key:?}");
        let over_value = store.set(&b, "k", vec![b'x'; 17], &limits, soon()).await;
        assert!(matches!(&over_value, Err(KvError::Limit(m)) if m.contains("max-value-size")), "{name}: {over_value:?}");
        assert_eq!(store.get(&b, "123456789", soon()).await.unwrap(), None, "{name}: a key is read whatever its size");

        for key in ["a", "b", "c"] {
            store.set(&b, key, b"0123456789".to_vec(), &limits, soon()).await.unwrap();
        }
        assert_eq!(store.usage("alpha", soon()).await.unwrap(), Usage { keys: 3, bytes: 33 }, "{name}");
        let fourth = store.set(&b, "d", b"1".to_vec(), &limits, soon()).await;
        assert!(matches!(&fourth, Err(KvError::Limit(m)) if m.contains("max-keys")), "{name}: {fourth:?}");
        let fourth = store.increment(&b, "d", 1, &limits, soon()).await;
        assert!(matches!(&fourth, Err(KvError::Limit(m)) if m.contains("max-keys")), "{name}: {fourth:?}");
        assert_eq!(store.get(&b, "d", soon()).await.unwrap(), None, "{name}");
        // Another plugin of the tenant counts against the same limits.
        let other = store.set(&bucket("alpha", "q"), "d", b"1".to_vec(), &limits, soon()).await;
        assert!(matches!(other, Err(KvError::Limit(_))), "{name}");
        // Another tenant does not.
        store.set(&bucket("beta", "p"), "d", b"1".to_vec(), &limits, soon()).await.unwrap();

        let grow = store.set(&b, "a", b"0123456789ABCDEF".to_vec(), &limits, soon()).await;
        assert!(matches!(&grow, Err(KvError::Limit(m)) if m.contains("max-bytes")), "{name}: {grow:?}");
        assert_eq!(store.get(&b, "a", soon()).await.unwrap().as_deref(), Some(&b"0123456789"[..]), "{name}");
        // A batch stops at the refused pair: the ones before it are set.
        let sixteen = b"0123456789ABCDEF".to_vec();
        let batch = vec![("a".to_owned(), b"1".to_vec()), ("b".to_owned(), sixteen.clone()), ("a".to_owned(), sixteen.clone()), ("c".to_owned(), b"2".to_vec())];
        let refused = store.set_many(&b, batch, &limits, soon()).await;
        assert!(matches!(refused, Err(KvError::Limit(_))), "{name}: {refused:?}");
        assert_eq!(store.get(&b, "a", soon()).await.unwrap().as_deref(), Some(&b"1"[..]), "{name}");
        assert_eq!(store.get(&b, "b", soon()).await.unwrap(), Some(sixteen.clone()), "{name}");
        assert_eq!(store.get(&b, "c", soon()).await.unwrap().as_deref(), Some(&b"0123456789"[..]), "{name}");

        // Under lowered limits, shrinking is still allowed.
        let lowered = KvLimits { max_keys: 1, max_bytes: 5, ..limits };
        store.set(&b, "b", b"x".to_vec(), &lowered, soon()).await.unwrap();
        store.delete(&b, "c", soon()).await.unwrap();
        assert_eq!(store.usage("alpha", soon()).await.unwrap(), Usage { keys: 2, bytes: 4 }, "{name}");
        // A key written under a higher max-key-size stays readable and
        // deletable under a lower one (it was stranded, counting against
        // the tenant for good).
        let long = "a-longer-key";
        let raised = KvLimits { max_key: 16, max_keys: 3, max_bytes: 64, ..limits };
        store.set(&b, long, b"v".to_vec(), &raised, soon()).await.unwrap();
        assert_eq!(store.get(&b, long, soon()).await.unwrap().as_deref(), Some(&b"v"[..]), "{name}");
        assert!(store.exists(&b, long, soon()).await.unwrap(), "{name}");
        assert_eq!(store.get_many(&b, vec![long.to_owned()], soon()).await.unwrap().len(), 1, "{name}");
        store.delete(&b, long, soon()).await.unwrap();
        assert_eq!(store.usage("alpha", soon()).await.unwrap(), Usage { keys: 2, bytes: 4 }, "{name}");
    }
}

/// Many tasks increment one counter at once: no increment is lost.
async fn concurrent_increments(stores: &[Store], tasks: usize, each: u64) {
    let b = bucket("alpha", "counter");
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = stores[task % stores.len()].clone();
        let b = b.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..each {
                store.increment(&b, "hits", 1, &KvLimits::default(), soon()).await.expect("increment");
            }
        }));
    }
    for handle in handles {
        handle.await.expect("a task");
    }
    let total = (tasks as u64 * each).to_string();
    for store in stores {
        assert_eq!(store.get(&b, "hits", soon()).await.unwrap().as_deref(), Some(total.as_bytes()), "{store:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_give_the_exact_total() {
    let backends = backends(Durability::Process);
    for (_, store) in &backends.stores {
        concurrent_increments(std::slice::from_ref(store), 32, 100).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synced_increments_give_the_exact_total() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::embedded(dir.path(), Durability::Sync).unwrap();
    concurrent_increments(&[store], 8, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clients_of_one_redis_share_state_and_count_atomically() {
    let redis = RedisServer::start();
    let one = Store::redis(&redis.url()).unwrap();
    let two = Store::redis(&redis.url()).unwrap();
    let limits = KvLimits::default();
    let b = bucket("alpha", "shared");
    one.set(&b, "greeting", b"hello".to_vec(), &limits, soon()).await.unwrap();
    assert_eq!(two.get(&b, "greeting", soon()).await.unwrap().as_deref(), Some(&b"hello"[..]));
    concurrent_increments(&[one.clone(), two.clone()], 32, 100).await;
    // Both account the tenant's usage in the same place.
    assert_eq!(one.usage("alpha", soon()).await.unwrap(), two.usage("alpha", soon()).await.unwrap());
    assert_eq!(one.usage("alpha", soon()).await.unwrap(), Usage { keys: 2, bytes: "greeting".len() as u64 + 5 + "hits".len() as u64 + 4 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_gives_errors_then_recovers() {
    let mut redis = RedisServer::start();
    let store = Store::redis(&redis.url()).unwrap();
    let limits = KvLimits::default();
    let b = bucket("alpha", "p");
    store.set(&b, "k", b"before".to_vec(), &limits, soon()).await.unwrap();

    redis.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let failed = store.get(&b, "k", deadline).await;
        assert!(matches!(failed, Err(KvError::Unavailable(_) | KvError::Timeout)), "{failed:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "a call took {:?} past its deadline", started.elapsed());
        let failed = store.increment(&b, "n", 1, &limits, deadline).await;
        assert!(matches!(failed, Err(KvError::Unavailable(_) | KvError::Timeout)), "{failed:?}");
    }

    redis.restart();
    // Within a few calls the connection is remade (Redis came back empty).
    let until = Instant::now() + SOON;
    loop {
        match store.set(&b, "k", b"after".to_vec(), &limits, Instant::now() + Duration::from_millis(500)).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < until, "the store did not recover within {SOON:?}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(store.get(&b, "k", soon()).await.unwrap().as_deref(), Some(&b"after"[..]));
    assert_eq!(store.increment(&b, "n", 2, &limits, soon()).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_does_not_answer_is_bounded_by_the_deadline() {
    // Accepts connections (the kernel does, into the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let store = Store::redis(&url).unwrap();
    let started = Instant::now();
    let answer = store.get(&bucket("alpha", "p"), "k", started + Duration::from_millis(200)).await;
    let took = started.elapsed();
    assert_eq!(answer, Err(KvError::Timeout));
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2), "took {took:?}");
    // A deadline already past is refused before anything is sent.
    let past = store.get(&bucket("alpha", "p"), "k", Instant::now()).await;
    assert_eq!(past, Err(KvError::Timeout));
}

/// Forwards loopback connections to a port; [`SilencingProxy::silence`]
/// stops forwarding on the connections made so far, which stay open, as
/// behind a lost route, while new connections are forwarded.
struct SilencingProxy {
    addr: SocketAddr,
    /// Connections made so far.
    made: Arc<std::sync::atomic::AtomicU64>,
    /// Connections numbered below this are silent.
    silent_below: Arc<std::sync::atomic::AtomicU64>,
    accepting: tokio::task::JoinHandle<()>,
}

impl SilencingProxy {
    async fn to(port: u16) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent_below = Arc::new(AtomicU64::new(0));
        let made = Arc::new(AtomicU64::new(0));
        let (silent, counted) = (Arc::clone(&silent_below), Arc::clone(&made));
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let number = counted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { continue };
                let (silent, (client_read, client_write), (server_read, server_write)) = (Arc::clone(&silent), client.into_split(), server.into_split());
                let forward = move |mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, silent: Arc<AtomicU64>| async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut buffer = vec![0; 16 << 10];
                    while let Ok(n @ 1..) = from.read(&mut buffer).await {
                        if number < silent.load(Ordering::SeqCst) {
                            // Holds both sockets open, forwarding nothing.
                            return std::future::pending::<()>().await;
                        }
                        if to.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::spawn(forward(client_read, server_write, Arc::clone(&silent)));
                tokio::spawn(forward(server_read, client_write, silent));
            }
        });
        Self { addr, made, silent_below, accepting }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Silences every connection made so far.
    fn silence(&self) {
        self.silent_below.store(self.made.load(std::sync::atomic::Ordering::SeqCst), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for SilencingProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Would fail if a connection on which Redis went silent without an error
/// (nothing resets it) were kept: every call would time out until TCP gave
/// up, many minutes later; or if one timeout on an idle connection had it
/// remade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_redis_went_silent_on_is_remade() {
    let redis = RedisServer::start();
    let proxy = SilencingProxy::to(redis.port).await;
    let store = Store::redis(&proxy.url()).unwrap();
    let (b, limits) = (bucket("alpha", "p"), KvLimits::default());
    store.set(&b, "k", b"before".to_vec(), &limits, soon()).await.unwrap();

    // An idle connection is not a silent one: a call that times out on it
    // (a large write with a tight deadline) after a while without calls
    // leaves it be.
    tokio::time::sleep(super::redis::SILENCE + Duration::from_millis(200)).await;
    let large: Vec<_> = (0..100).map(|i| (format!("big{i}"), vec![b'x'; 64 << 10])).collect();
    let tight = store.set_many(&b, large, &limits, Instant::now() + Duration::from_millis(2)).await;
    assert_eq!(tight, Err(KvError::Timeout));
    assert_eq!(store.get(&b, "k", soon()).await.unwrap().as_deref(), Some(&b"before"[..]));
    assert_eq!(proxy.made.load(std::sync::atomic::Ordering::SeqCst), 1, "an idle connection was remade after one timeout");

    proxy.silence();
    let silenced = Instant::now();
    let mut timeouts = 0;
    let answer = loop {
        match store.get(&b, "k", Instant::now() + Duration::from_millis(200)).await {
            Ok(answer) => break answer,
            Err(KvError::Timeout) => timeouts += 1,
            Err(e) => panic!("a silent Redis gave {e:?}, not a timeout"),
        }
        assert!(silenced.elapsed() < SOON, "still no answer {SOON:?} after Redis went silent ({timeouts} calls timed out)");
    };
    assert_eq!(answer.as_deref(), Some(&b"before"[..]));
    assert!(timeouts >= 1, "no call timed out: the connection was not silenced");
    // Not before the silence had lasted a while (one call in it): a slow answer is no reason to reconnect.
    assert!(silenced.elapsed() >= super::redis::SILENCE, "remade after {:?}", silenced.elapsed());
    assert_eq!(store.increment(&b, "n", 1, &limits, soon()).await.unwrap(), 1);
}

/// Would fail if a page of keys carried the values beside them, as Redis
/// 7.0's `HSCAN` does: a listing would move the bucket's bytes across the
/// network, and into the server's memory, to return its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_leaves_the_values_in_redis() {
    let redis = RedisServer::start();
    let store = Store::redis(&redis.url()).unwrap();
    let (b, limits) = (bucket("alpha", "p"), KvLimits::default());
    let pairs: Vec<_> = (0..20).map(|i| (format!("k{i:02}"), vec![b'v'; 32 << 10])).collect();
    store.set_many(&b, pairs, &limits, soon()).await.unwrap();
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut sent = async || -> u64 {
        let info: String = ::redis::cmd("INFO").arg("stats").query_async(&mut connection).await.unwrap();
        info.lines().find_map(|line| line.strip_prefix("total_net_output_bytes:")).and_then(|n| n.trim().parse().ok()).expect("INFO stats has total_net_output_bytes")
    };
    let before = sent().await;
    let (mut keys, mut cursor) = (BTreeSet::new(), None);
    loop {
        let (page, next) = store.list_keys(&b, cursor, soon()).await.unwrap();
        keys.extend(page);
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let moved = sent().await - before;
    assert_eq!(keys, (0..20).map(|i| format!("k{i:02}")).collect::<BTreeSet<_>>());
    assert!(moved < 64 << 10, "listing 20 keys made Redis send {moved} bytes: the values (640 KiB) came with them");
}

#[tokio::test]
async fn state_outlives_the_store_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let limits = KvLimits::default();
    for durability in [Durability::Process, Durability::Sync] {
        let b = BucketId::new("alpha", "p", "default");
        {
            let store = Store::embedded(dir.path(), durability).unwrap();
            store.set(&b, "k", b"kept".to_vec(), &limits, soon()).await.unwrap();
            store.increment(&b, "n", 1, &limits, soon()).await.unwrap();
        }
        let store = Store::embedded(dir.path(), durability).unwrap();
        assert_eq!(store.get(&b, "k", soon()).await.unwrap().as_deref(), Some(&b"kept"[..]));
        let n = store.get(&b, "n", soon()).await.unwrap();
        assert!(n.is_some(), "{durability:?}");
    }
    let store = Store::embedded(dir.path(), Durability::Process).unwrap();
    assert_eq!(store.get(&BucketId::new("alpha", "p", "default"), "n", soon()).await.unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(store.usage("alpha", soon()).await.unwrap().keys, 2);
}

#[test]
fn a_second_server_on_the_directory_is_refused_naming_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::embedded(dir.path(), Durability::Process).unwrap();
    let second = Store::embedded(dir.path(), Durability::Process).unwrap_err();
    let message = second.to_string();
    assert!(matches!(second, OpenError::InUse { .. }), "{message}");
    assert!(message.contains("--data-dir") && message.contains(&dir.path().display().to_string()), "{message}");
    assert!(message.contains(&format!("process {}", std::process::id())), "{message}");
    drop(first);
    Store::embedded(dir.path(), Durability::Process).expect("free again once the first is closed");
}

#[test]
fn an_unusable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let error = Store::embedded(&file, Durability::Process).unwrap_err();
    assert!(error.to_string().contains("--data-dir"), "{error}");
    assert!(Store::redis("http://127.0.0.1:1").is_err());
    assert!(Store::redis("redis://[not an address").is_err());
}

/// The child of [`kill_9_keeps_acknowledged_writes`]: counts and writes in
/// the directory `WASMUX_KV_CHILD_DIR`, printing each write once it was
/// acknowledged, until it is killed.
#[tokio::test]
#[ignore = "run by kill_9_keeps_acknowledged_writes in a child process"]
async fn kill_9_child() {
    let Some(dir) = std::env::var_os("WASMUX_KV_CHILD_DIR") else { return };
    let store = Store::embedded(Path::new(&dir), Durability::Process).expect("open the store");
    let b = bucket("alpha", "p");
    let limits = KvLimits::default();
    for i in 0u64.. {
        let n = store.increment(&b, "n", 1, &limits, soon()).await.expect("increment");
        store.set(&b, &format!("key-{i}"), i.to_string().into_bytes(), &limits, soon()).await.expect("set");
        println!("acknowledged {n} {i}");
    }
}

#[test]
fn kill_9_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kv::tests::kill_9_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("WASMUX_KV_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last = None;
    let started = Instant::now();
    while let Some(Ok(line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("acknowledged ") {
            let mut numbers = rest.split(' ').map(|n| n.parse::<u64>().unwrap());
            last = Some((numbers.next().unwrap(), numbers.next().unwrap()));
            if last.is_some_and(|(n, _)| n >= 500) || started.elapsed() > SOON {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
    // What it printed before it died was acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("acknowledged ") {
            let mut numbers = rest.split(' ').map(|n| n.parse::<u64>().unwrap());
            last = Some((numbers.next().unwrap(), numbers.next().unwrap()));
        }
    }
    let (n, i) = last.expect("the child acknowledged writes");
    assert!(n > 0);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::embedded(dir.path(), Durability::Process).expect("reopen after kill -9");
        let b = bucket("alpha", "p");
        let counted = store.get(&b, "n", soon()).await.unwrap().and_then(|v| parse_counter(&v)).expect("the counter");
        // Acknowledged increments are there; one more may have been
        // applied and not yet printed.
        assert!(counted as u64 == n || counted as u64 == n + 1, "acknowledged {n}, found {counted}");
        for key in 0..=i {
            let value = store.get(&b, &format!("key-{key}"), soon()).await.unwrap();
            assert_eq!(value, Some(key.to_string().into_bytes()), "key-{key} of {i} acknowledged");
        }
        let usage = store.usage("alpha", soon()).await.unwrap();
        assert!(usage.keys == i + 2 || usage.keys == i + 3, "usage {usage:?} after {i} sets");
    });
}

#[tokio::test]
async fn a_call_counts_operations_and_opens_granted_buckets_only() {
    let counters = Arc::new(KvCounters::default());
    let store = Store::in_memory().with_metrics(counters.clone());
    let limits = KvLimits { operations_per_request: 5, ..KvLimits::default() };
    let grants: BucketGrants = Arc::new(["cache".to_owned()].into_iter().collect());
    let mut call = KvCall::new(store.clone(), "alpha", "search@fuzzy", grants, limits);
    call.begin(soon(), limits);

    let default = call.open("default").unwrap();
    let cache = call.open("cache").unwrap();
    assert_ne!(default, cache);
    assert_eq!(call.open("secret"), Err(KvError::NoSuchStore));
    assert_eq!(call.increment(default, "n", 2).await.unwrap(), 2);
    call.set(cache, "k", b"v".to_vec()).await.unwrap();
    // That was five: the sixth is refused, naming the limit.
    let refused = call.get(default, "n").await;
    assert!(matches!(&refused, Err(KvError::Limit(m)) if m.contains("operations-per-request")), "{refused:?}");

    // The next request on the instance starts again; its buckets stay open.
    call.begin(soon(), limits);
    assert_eq!(call.get(default, "n").await.unwrap().as_deref(), Some(&b"2"[..]));
    let batch = call.get_many(default, (0..5).map(|i| i.to_string()).collect()).await;
    assert!(matches!(batch, Err(KvError::Limit(_))), "a batch counts each key: {batch:?}");
    // The state is the base name's.
    assert_eq!(store.get(&BucketId::new("alpha", "search", "default"), "n", soon()).await.unwrap().as_deref(), Some(&b"2"[..]));

    // Handles are bounded and reused once dropped.
    call.begin(soon(), KvLimits { operations_per_request: 1000, ..limits });
    let mut handles = vec![default, cache];
    while handles.len() < MAX_OPEN_BUCKETS {
        handles.push(call.open("default").unwrap());
    }
    assert!(matches!(call.open("default"), Err(KvError::Limit(_))));
    call.close(cache);
    assert_eq!(call.open("default").unwrap(), cache);
    call.close(cache);
    assert!(call.get(cache, "k").await.is_err(), "a closed handle");

    let mut storeless = KvCall::without_store("alpha", "search");
    storeless.begin(soon(), limits);
    assert_eq!(storeless.open("default"), Err(KvError::NoSuchStore));

    assert_eq!(counters.get("alpha", "search", Operation::Open, Outcome::Ok).count, 2 + MAX_OPEN_BUCKETS as u64 - 2 + 1);
    assert_eq!(counters.get("alpha", "search", Operation::Open, Outcome::Denied).count, 1);
    assert_eq!(counters.get("alpha", "search", Operation::Open, Outcome::Limit).count, 1, "the open past MAX_OPEN_BUCKETS");
    assert_eq!(counters.get("alpha", "search", Operation::Increment, Outcome::Ok), Totals { count: 1, read: 0, written: 1 });
    assert_eq!(counters.get("alpha", "search", Operation::Set, Outcome::Ok), Totals { count: 1, read: 0, written: 1 });
    // The plugin's get; the test's own through the store is not a plugin's.
    assert_eq!(counters.get("alpha", "search", Operation::Get, Outcome::Ok), Totals { count: 1, read: 1, written: 0 });
    assert_eq!(counters.get("alpha", "search", Operation::Get, Outcome::Limit).count, 1);
    assert_eq!(counters.get("alpha", "search", Operation::GetMany, Outcome::Limit).count, 1);
}

#[test]
fn the_data_directory_defaults_to_xdg_data_home() {
    let dir = |xdg: Option<&str>, home: Option<&str>| default_data_dir(xdg.map(Into::into), home.map(Into::into));
    assert_eq!(dir(Some("/data"), Some("/home/a")), Some(PathBuf::from("/data/wasmux")));
    assert_eq!(dir(None, Some("/home/a")), Some(PathBuf::from("/home/a/.local/share/wasmux")));
    assert_eq!(dir(Some(""), Some("/home/a")), Some(PathBuf::from("/home/a/.local/share/wasmux")));
    assert_eq!(dir(Some("relative"), Some("/home/a")), Some(PathBuf::from("/home/a/.local/share/wasmux")));
    assert_eq!(dir(None, None), None);
}

#[tokio::test]
async fn a_store_on_demand_opens_its_directory_when_first_needed() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let config = StoreConfig::Embedded { dir: dir.clone(), durability: Durability::Process };
    let counters = Arc::new(KvCounters::default());
    let first = OnDemand::new(config.clone(), counters.clone());
    let second = OnDemand::new(config, Arc::new(NoKvMetrics));
    assert!(!dir.exists() && !first.is_open(), "nothing is opened before it is needed");

    let store = first.get().unwrap();
    let mut call = KvCall::new(store.clone(), "alpha", "p", BucketGrants::default(), KvLimits::default());
    call.begin(soon(), KvLimits::default());
    let default = call.open("default").unwrap();
    call.set(default, "k", b"v".to_vec()).await.unwrap();
    assert_eq!(counters.get("alpha", "p", Operation::Set, Outcome::Ok).count, 1, "its plugins report to its metrics");
    let refused = second.get().unwrap_err().to_string();
    assert!(refused.contains("--data-dir"), "{refused}");
    assert!(!second.is_open());
    drop((call, store, first));
    assert!(second.get().is_ok(), "tried again, and free now");
}

/// What a configuration may name but fjall cannot hold as a key (an empty
/// tenant name; a key past 65 535 bytes under a raised `max-key-size`) is
/// stored or refused as a limit, never a panic: fjall asserts on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_keys_fjall_cannot_hold_are_served_or_refused() {
    let backends = backends(Durability::Process);
    let raised = KvLimits { max_key: 1 << 20, ..KvLimits::default() };
    for (name, store) in &backends.stores {
        let unnamed = bucket("", "p");
        assert_eq!(store.increment(&unnamed, "n", 2, &raised, soon()).await.unwrap(), 2, "{name}");
        store.set(&unnamed, "k", b"v".to_vec(), &raised, soon()).await.unwrap();
        assert_eq!(store.get(&unnamed, "n", soon()).await.unwrap().as_deref(), Some(&b"2"[..]), "{name}");
        assert_eq!(store.usage("", soon()).await.unwrap(), Usage { keys: 2, bytes: 4 }, "{name}");
        assert_eq!(store.usage("alpha", soon()).await.unwrap(), Usage::default(), "{name}: the unnamed tenant is its own");

        let long = "k".repeat(70_000);
        let b = bucket("alpha", "p");
        let set = store.set(&b, &long, b"v".to_vec(), &raised, soon()).await;
        let increment = store.increment(&b, &long, 1, &raised, soon()).await;
        let get = store.get(&b, &long, soon()).await;
        if *name == "embedded" {
            for refused in [set.map(|_| ()), increment.map(|_| ()), get.map(|_| ())] {
                assert!(matches!(&refused, Err(KvError::Limit(m)) if m.contains("too long for the embedded store")), "{refused:?}");
            }
            assert_eq!(store.usage("alpha", soon()).await.unwrap(), Usage::default(), "a refused write changes nothing");
        } else {
            set.unwrap();
            assert!(matches!(increment, Err(KvError::NotACounter(_))), "{name}: {increment:?}");
            assert_eq!(get.unwrap().as_deref(), Some(&b"v"[..]), "{name}");
        }
    }
}

/// The embedded store leaves the usage alone when an entry keeps its size
/// (most increments): the usage must still follow every change of size,
/// and a growth past a limit still be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_follows_counters_through_every_change_of_size() {
    let backends = backends(Durability::Process);
    for (name, store) in &backends.stores {
        let b = bucket("alpha", "p");
        // "n" plus "99": 3 bytes; "100" would make 4.
        let limits = KvLimits { max_bytes: 3, ..KvLimits::default() };
        for expected in 1..=99 {
            assert_eq!(store.increment(&b, "n", 1, &limits, soon()).await.unwrap(), expected, "{name}");
        }
        assert_eq!(store.usage("alpha", soon()).await.unwrap(), Usage { keys: 1, bytes: 3 }, "{name}");
        let grown = store.increment(&b, "n", 1, &limits, soon()).await;
        assert!(matches!(&grown, Err(KvError::Limit(m)) if m.contains("max-bytes")), "{name}: {grown:?}");
        assert_eq!(store.get(&b, "n", soon()).await.unwrap().as_deref(), Some(&b"99"[..]), "{name}: refused, unchanged");
        // Same size: allowed at the limit, usage unchanged; then a shrink.
        store.set(&b, "n", b"42".to_vec(), &limits, soon()).await.unwrap();
        assert_eq!(store.usage("alpha", soon()).await.unwrap(), Usage { keys: 1, bytes: 3 }, "{name}");
        store.set(&b, "n", b"7".to_vec(), &limits, soon()).await.unwrap();
        assert_eq!(store.usage("alpha", soon()).await.unwrap(), Usage { keys: 1, bytes: 2 }, "{name}");
        let roomy = KvLimits::default();
        for _ in 0..993 {
            store.increment(&b, "n", 1, &roomy, soon()).await.unwrap();
        }
        assert_eq!(store.get(&b, "n", soon()).await.unwrap().as_deref(), Some(&b"1000"[..]), "{name}");
        assert_eq!(store.usage("alpha", soon()).await.unwrap(), Usage { keys: 1, bytes: 5 }, "{name}");
        store.delete(&b, "n", soon()).await.unwrap();
        assert_eq!(store.usage("alpha", soon()).await.unwrap(), Usage::default(), "{name}");
    }
}

/// wasmtime allocates a store call's future on every call a plugin makes:
/// a call to the store (whatever its backend: the future's type is the
/// same) must not carry room for Redis's.
#[test]
fn a_store_call_carries_no_room_for_redis() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let embedded = Store::embedded(dir.path(), Durability::Process).expect("open the embedded store");
    let redis = Store::redis("redis://127.0.0.1:1").expect("a Redis URL");
    let Backend::Redis(r) = &redis.inner.backend else { panic!("not Redis") };
    let (b, limits) = (bucket("t", "p"), KvLimits::default());
    let store_increment = std::mem::size_of_val(&embedded.increment(&b, "k", 1, &limits, soon()));
    let redis_increment = std::mem::size_of_val(&r.increment(&b, "k", 1, &limits, soon()));
    assert!(store_increment < redis_increment, "an increment's future is {store_increment} bytes, Redis's own {redis_increment}");
    let store_get = std::mem::size_of_val(&embedded.get(&b, "k", soon()));
    let redis_get = std::mem::size_of_val(&r.get(&b, "k", soon()));
    assert!(store_get < redis_get, "a get's future is {store_get} bytes, Redis's own {redis_get}");
}

#[test]
fn a_counters_length_is_its_decimal_digits() {
    for n in [0, 9, 10, 99, 100, 12_345, u64::MAX / 10, u64::MAX] {
        assert_eq!(decimal_digits(n), n.to_string().len(), "{n}");
    }
}

/// The README and the guide give the limits' defaults: they are the code's.
#[test]
fn the_documented_limit_defaults_are_the_codes() {
    let d = KvLimits::default();
    let thousands = |n: u64| n.to_string().as_bytes().rchunks(3).rev().map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ");
    let expected = [
        ("max-key-size", format!("{} bytes", d.max_key)),
        ("max-value-size", format!("{} MiB", d.max_value >> 20)),
        ("max-keys", thousands(d.max_keys)),
        ("max-bytes", format!("{} MiB", d.max_bytes >> 20)),
        ("operations-per-request", d.operations_per_request.to_string()),
    ];
    for doc in ["README.md", "docs/keyvalue.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap_or_else(|e| panic!("read {doc}: {e}"));
        for (name, default) in &expected {
            let row = text.lines().find(|line| line.starts_with(&format!("| `{name}`"))).unwrap_or_else(|| panic!("{doc} has no row for {name}"));
            assert!(row.contains(&format!("| {default} |")), "{doc}: {name} defaults to {default}, the row says: {row}");
        }
    }
}
