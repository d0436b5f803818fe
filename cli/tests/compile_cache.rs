//! The compiled-code cache against a real `wasmux serve`: nothing found in
//! the cache directory is run unless the server wrote it, the directory is
//! refused if others can write it, nothing planted there is written
//! through, and it stays under its bound.
//!
//! Every test has its own cache directory (`--cache-dir`) and plugin copies.


use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::common::Server;
use sha2::{Digest as _, Sha256};

const RING: &str = "In the caves beneath the Misty Mountains. 💍";
const WAIT: Duration = Duration::from_secs(20);

/// A plugin directory holding copies of the built plugins `names`.
fn plugin_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for name in names {
        let file = format!("{name}.wasm");
        std::fs::copy(crate::common::plugins_dir().join(&file), dir.path().join(&file)).expect("copy a plugin");
    }
    dir
}

fn serve(plugins: &Path, cache: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--plugins", plugins.to_str().expect("utf-8"), "--cache-dir", cache.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

fn wait_loaded(server: &Server, names: &[&str]) {
    for name in names {
        assert!(server.wait_for_log(&format!("plugin {name}: loaded"), WAIT), "{name} not loaded:\n{}", server.log());
    }
}

/// The compiled-code entries in `cache`, sorted.
fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(cache)
        .expect("read the cache directory")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    paths.sort();
    paths
}

/// The cache entry of the built plugin `name`: named by its source's SHA-256.
fn entry_of(cache: &Path, name: &str) -> PathBuf {
    let source = std::fs::read(crate::common::plugins_dir().join(format!("{name}.wasm"))).expect("read a plugin");
    let hex = hex::encode(Sha256::digest(&source));
    let found = entries(cache).into_iter().find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&hex)));
    found.unwrap_or_else(|| panic!("no cache entry for {name} in {:?}", entries(cache)))
}

/// The attack: the cached code of `binary-echo`, copied over the
/// entry of `search` (whose name `/plugins` publishes), must not answer for
/// `search` after a restart.
#[test]
fn another_plugins_code_under_a_plugins_entry_name_is_never_run() {
    let plugins = plugin_dir(&["search", "binary-echo"]);
    let cache = tempfile::tempdir().expect("cache directory");
    {
        let server = serve(plugins.path(), cache.path(), &[]);
        wait_loaded(&server, &["search", "binary-echo"]);
    }
    let (search, echo) = (entry_of(cache.path(), "search"), entry_of(cache.path(), "binary-echo"));
    std::fs::copy(&echo, &search).expect("replace the entry of search");

    let server = serve(plugins.path(), cache.path(), &[]);
    wait_loaded(&server, &["search", "binary-echo"]);
    let answer = server.connect().request(&crate::common::search("ring"));
    assert!(!answer.content.starts_with(b"First 10 bytes"), "binary-echo's code answered for search:\n{}", server.log());
    assert_eq!(answer.result(), RING);
    let log = server.log();
    assert!(log.contains("removing cached code") && log.contains("fails its authentication"), "{log}");
    // Compiled again, and cached again under a good MAC.
    let line = log.lines().find(|l| l.contains("plugin search: loaded")).unwrap_or_default();
    assert!(line.contains("(compile ") && !line.contains("from the cache"), "{line}");
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    let plugins = plugin_dir(&["search"]);
    let cache = tempfile::tempdir().expect("cache directory");
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o775)).expect("chmod");
    let server = serve(plugins.path(), cache.path(), &[]);
    wait_loaded(&server, &["search"]);
    let log = server.log();
    assert!(log.contains("refused: group or others may write to it (mode 775)"), "{log}");
    assert!(log.contains("Compiled code is kept in memory only"), "{log}");
    assert_eq!(server.connect().request(&crate::common::search("ring")).result(), RING);
    let left: Vec<_> = std::fs::read_dir(cache.path()).expect("read").collect();
    assert!(left.is_empty(), "the refused directory was written: {left:?}");
}

/// The old code wrote to `.NAME.PID.tmp` through whatever was there. A
/// link planted at that name must not be followed (nor at any name: the
/// server's temporary names are random and created exclusively).
#[test]
fn a_link_planted_at_a_predictable_temporary_name_is_not_followed() {
    let plugins = plugin_dir(&["binary-echo"]);
    let cache = tempfile::tempdir().expect("cache directory");
    let server = serve(plugins.path(), cache.path(), &[]);
    wait_loaded(&server, &["binary-echo"]);
    // The engine's tag is the end of every entry's name.
    let echo = entry_of(cache.path(), "binary-echo");
    let echo_name = echo.file_name().and_then(|n| n.to_str()).expect("a name");
    let tag = echo_name.split_once('-').map(|(_, tag)| tag).expect("HASH-TAG.cwasm");
    let source = std::fs::read(crate::common::plugins_dir().join("search.wasm")).expect("read a plugin");
    let search_name = format!("{}-{tag}", hex::encode(Sha256::digest(&source)));

    let elsewhere = tempfile::tempdir().expect("another directory");
    let victim = elsewhere.path().join("victim");
    std::fs::write(&victim, b"precious").expect("write");
    std::os::unix::fs::symlink(&victim, cache.path().join(format!(".{search_name}.{}.tmp", server.pid()))).expect("plant a link");

    let tmp = plugins.path().join(".search.wasm.tmp");
    std::fs::write(&tmp, &source).expect("write");
    std::fs::rename(&tmp, plugins.path().join("search.wasm")).expect("rename");
    wait_loaded(&server, &["search"]);
    assert_eq!(std::fs::read(&victim).expect("read"), b"precious", "the server wrote through a planted link");
    let entry = cache.path().join(&search_name);
    assert!(entry.symlink_metadata().expect("search's entry").is_file(), "search's entry is not a regular file");
    assert_eq!(server.connect().request(&crate::common::search("ring")).result(), RING);
}

#[test]
fn eviction_keeps_the_directory_under_its_bound_least_recently_used_first() {
    const BOUND: u64 = 1 << 20;
    let plugins = plugin_dir(&["search", "binary-echo", "search@fuzzy"]);
    let cache = tempfile::tempdir().expect("cache directory");
    // An entry left by an earlier run, used long ago, that fills the bound.
    let stale = cache.path().join(format!("{}-0000000000000000.cwasm", "0".repeat(64)));
    let file = std::fs::File::create(&stale).expect("create");
    file.set_len(BOUND).expect("size");
    file.set_modified(SystemTime::now() - Duration::from_secs(86_400)).expect("mtime");
    drop(file);

    let config = tempfile::tempdir().expect("config directory");
    let config_path = config.path().join("wasmux.toml");
    std::fs::write(&config_path, format!("[runtime]\ncache-max-size = {BOUND}\n")).expect("write");
    let server = serve(plugins.path(), cache.path(), &["--config", config_path.to_str().expect("utf-8")]);
    wait_loaded(&server, &["search", "binary-echo", "search@fuzzy"]);

    assert!(!stale.exists(), "the least recently used entry was kept:\n{}", server.log());
    let sizes: Vec<u64> = entries(cache.path()).iter().map(|p| std::fs::metadata(p).expect("metadata").len()).collect();
    assert!(!sizes.is_empty(), "nothing cached:\n{}", server.log());
    assert!(sizes.iter().sum::<u64>() <= BOUND, "{sizes:?} is over {BOUND}:\n{}", server.log());
    assert!(server.log().contains("evicted"), "{}", server.log());
}
