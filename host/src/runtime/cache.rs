//! Compiled code, kept by content hash, so that a version seen before (a
//! swap back, a restart) is not compiled again.
//!
//! Two levels: components in memory (a clone is a reference count), and,
//! when a directory is given, serialized components on disk named by the
//! source's SHA-256 and the engine's compatibility tag, so a restart or an
//! engine with other settings never picks up code that does not fit it.
//!
//! Cached code is native code that runs outside the sandbox, so nothing on
//! disk is trusted by its name:
//! - the directory must belong to the server's user and be writable by no
//!   one else, or it is refused (and code is kept in memory only);
//! - each entry carries an HMAC-SHA256, under a key the server keeps in the
//!   directory (`key`, mode 0600, created exclusively), over the engine's
//!   tag, the source's SHA-256 and the code. An entry copied under another
//!   plugin's name, written by another engine or altered fails the check and
//!   is removed before anything is loaded from it;
//! - an entry is written to a new file of an unpredictable name (created
//!   exclusively, so a planted symbolic link is never followed), synced,
//!   renamed into place, and the directory synced;
//! - the directory is kept under `[runtime] cache-max-size`, evicting the
//!   least recently used entries first (an entry's modification time is
//!   set when it is read).
//!
//! The same directory keeps Cranelift's compiled functions, one by one, in
//! packs authenticated the same way ([`super::functions`]): a component
//! that is not cached whole compiles only the functions no earlier compile
//! made.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::files::{self, Links, TEMP_PREFIX};

/// A component's SHA-256: the key of its compiled code.
use crate::digest::Digest;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// Components kept in memory; the oldest are dropped past this count.
const MEMORY_ENTRIES: usize = 64;

/// The first bytes of an entry: the format, then the MAC, then the code.
const MAGIC: &[u8; 8] = b"wasmuxC1";
pub(super) const MAC_LEN: usize = 32;
const HEADER_LEN: usize = MAGIC.len() + MAC_LEN;

/// The secret key's file in the cache directory, and its length.
const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;

/// Names of entries (files being written begin with [`TEMP_PREFIX`]).
const ENTRY_SUFFIX: &str = ".cwasm";

/// Names of the packs of compiled functions ([`super::functions`]), evicted
/// with the entries.
pub(super) const PACK_SUFFIX: &str = ".functions";

/// A file being written that is older than this was left by a process that
/// stopped half-way; eviction removes it.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeOrigin {
    /// Compiled just now.
    Compiled,
    /// Compiled earlier by this process.
    Memory,
    /// Compiled by an earlier run, read from the cache directory.
    Disk,
}

pub(super) struct ComponentCache {
    memory: Mutex<Memory>,
    disk: Option<Arc<DiskCache>>,
    /// Distinguishes code compiled under other engine settings or versions.
    engine_tag: String,
}

#[derive(Default)]
struct Memory {
    components: HashMap<Digest, Component>,
    order: VecDeque<Digest>,
}

/// The cache directory, checked, and its key.
pub(super) struct DiskCache {
    pub(super) dir: PathBuf,
    key: [u8; KEY_LEN],
    /// The most the entries may take together.
    pub(super) max_size: u64,
    /// One eviction sweep at a time in this process.
    sweeping: Mutex<()>,
}

impl ComponentCache {
    /// A cache in memory, and on `disk` (if given).
    pub(super) fn new(engine: &Engine, disk: Option<Arc<DiskCache>>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self { memory: Mutex::default(), disk, engine_tag: format!("{:016x}", hasher.finish()) }
    }

    /// The cache directory in use, if one was given and accepted.
    #[cfg(test)]
    fn disk_dir(&self) -> Option<&Path> {
        self.disk.as_ref().map(|disk| disk.dir.as_path())
    }

    /// Whether the code of `digest` is in memory or on disk (unchecked: a
    /// damaged entry on disk is compiled again when loaded).
    pub(super) fn has(&self, digest: &Digest) -> bool {
        self.lock().components.contains_key(digest) || self.disk.as_ref().is_some_and(|disk| disk.path(&self.engine_tag, digest).is_file())
    }

    /// The component for `bytes`, compiled only if no cache has it.
    pub(super) fn get_or_compile(&self, engine: &Engine, digest: Digest, bytes: &[u8]) -> wasmtime::Result<(Component, CodeOrigin)> {
        if let Some(component) = self.lock().components.get(&digest) {
            return Ok((component.clone(), CodeOrigin::Memory));
        }
        let from_disk = self.disk.as_ref().and_then(|disk| disk.read(engine, &self.engine_tag, &digest));
        let (component, origin) = match from_disk {
            Some(component) => (component, CodeOrigin::Disk),
            None => {
                let component = Component::new(engine, bytes)?;
                if let Some(disk) = &self.disk {
                    disk.write(&self.engine_tag, &digest, &component);
                }
                (component, CodeOrigin::Compiled)
            }
        };
        let mut memory = self.lock();
        if memory.components.insert(digest, component.clone()).is_none() {
            memory.order.push_back(digest);
        }
        while memory.order.len() > MEMORY_ENTRIES {
            if let Some(oldest) = memory.order.pop_front() {
                memory.components.remove(&oldest);
            }
        }
        Ok((component, origin))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        // The map stays consistent even if a holder panicked.
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DiskCache {
    /// The cache directory `dir`, kept under `max_size` bytes, if it can be
    /// trusted; if not, a log line says why, and code is kept in memory only.
    pub(super) fn open_or_log(dir: &Path, max_size: u64) -> Option<Arc<Self>> {
        match Self::open(dir, max_size) {
            Ok(disk) => Some(Arc::new(disk)),
            Err(e) => {
                tracing::error!(
                    "compile cache {} refused: {e:#}. Compiled code is kept in memory only, so every start compiles every plugin",
                    dir.display()
                );
                None
            }
        }
    }

    fn open(dir: &Path, max_size: u64) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .context("cannot create it")?;
        check_private_dir(dir)?;
        let key = read_or_create_key(dir)?;
        let disk = Self { dir: dir.to_path_buf(), key, max_size, sweeping: Mutex::new(()) };
        disk.evict();
        Ok(disk)
    }

    fn path(&self, engine_tag: &str, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}-{engine_tag}{ENTRY_SUFFIX}", digest.hex()))
    }

    /// The MAC of `code`, compiled by an engine of `engine_tag` from the
    /// source whose SHA-256 is `digest`.
    fn mac(&self, engine_tag: &str, digest: &Digest, code: &[u8]) -> HmacSha256 {
        self.mac_of(&[MAGIC, engine_tag.as_bytes(), &digest.bytes(), code])
    }

    /// The MAC, under the directory's key, of `parts` one after the other.
    pub(super) fn mac_of(&self, parts: &[&[u8]]) -> HmacSha256 {
        // HMAC takes a key of any length; a 32-byte one cannot be refused.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// The entry for `digest`, if there is one and it is authentic. A
    /// missing entry is a miss; one that fails its check is logged and
    /// removed; one that cannot be read (permissions, I/O, not a regular
    /// file) is logged and left alone.
    fn read(&self, engine: &Engine, engine_tag: &str, digest: &Digest) -> Option<Component> {
        let path = self.path(engine_tag, digest);
        let (file, bytes) = self.read_entry(&path, "cached code")?;
        let Some(code) = self.authentic(&bytes, engine_tag, digest) else {
            return self.discard(&path, "it fails its authentication (altered, truncated, or another plugin's or engine's code)");
        };
        // SAFETY: deserializing loads native code. `code` is exactly the
        // bytes whose MAC was just checked, under a key that only this
        // user can read; the MAC was computed by `write` below, over the
        // output of `Component::serialize` of an engine with the same
        // compatibility tag, for the source with this SHA-256. The file is
        // not read again after the check.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(component) => {
                // Used now: the last to be evicted.
                if let Err(e) = file.set_modified(SystemTime::now()) {
                    tracing::debug!("cannot mark cached code {} as used: {e}", path.display());
                }
                Some(component)
            }
            Err(e) => self.discard(&path, &format!("it cannot be loaded: {e:#}")),
        }
    }

    /// An entry's file (not a link) and its bytes; `None` if it is absent,
    /// cannot be read (a warning naming it as `what`), or is over the size
    /// cap (removed).
    pub(super) fn read_entry(&self, path: &Path, what: &str) -> Option<(std::fs::File, Vec<u8>)> {
        let read = files::open_regular(path, Links::Refuse).and_then(|(file, metadata)| Ok((files::read_capped(&file, &metadata, self.max_size)?, file)));
        match read {
            Ok((bytes, file)) => Some((file, bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => self.discard(path, &format!("it is {e}")),
            Err(e) => {
                tracing::warn!("cannot read {what} {}: {e}; compiling instead", path.display());
                None
            }
        }
    }

    /// The code of an entry's `bytes`, if their MAC is right.
    fn authentic<'a>(&self, bytes: &'a [u8], engine_tag: &str, digest: &Digest) -> Option<&'a [u8]> {
        let (magic, rest) = bytes.split_at_checked(MAGIC.len())?;
        let (tag, code) = rest.split_at_checked(MAC_LEN)?;
        (magic == MAGIC).then_some(())?;
        // Compared in constant time.
        self.mac(engine_tag, digest, code).verify_slice(tag).ok()?;
        Some(code)
    }

    pub(super) fn discard<T>(&self, path: &Path, why: &str) -> Option<T> {
        tracing::warn!("removing cached code {}: {why}; compiling instead", path.display());
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
        None
    }

    /// Writes `component`'s code, then evicts what no longer fits. Failures
    /// are logged: the cache is only an optimisation.
    fn write(&self, engine_tag: &str, digest: &Digest, component: &Component) {
        let path = self.path(engine_tag, digest);
        match self.write_entry(&path, engine_tag, digest, component) {
            Ok(true) => self.evict(),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot cache compiled code at {}: {e:#}", path.display()),
        }
    }

    /// Returns false if the entry would not fit the cache at all.
    fn write_entry(&self, path: &Path, engine_tag: &str, digest: &Digest, component: &Component) -> anyhow::Result<bool> {
        let code = component.serialize()?;
        let size = (HEADER_LEN + code.len()) as u64;
        if size > self.max_size {
            tracing::info!("compiled code of {size} bytes not cached: larger than cache-max-size ({} bytes)", self.max_size);
            return Ok(false);
        }
        let mac = self.mac(engine_tag, digest, &code).finalize().into_bytes();
        files::write_atomically(path, 0o600, |file| {
            file.write_all(MAGIC)?;
            file.write_all(&mac)?;
            file.write_all(&code)
        })?;
        Ok(true)
    }

    /// Removes the least recently used entries until the rest fit
    /// `max_size`, and files left half-written long ago.
    pub(super) fn evict(&self) {
        let _sweeping = self.sweeping.lock().unwrap_or_else(|e| e.into_inner());
        match evict(&self.dir, self.max_size) {
            Ok((0, _)) => {}
            Ok((count, bytes)) => tracing::info!(
                "compile cache {}: evicted {count} least recently used entries ({bytes} bytes) to stay under cache-max-size ({} bytes)",
                self.dir.display(),
                self.max_size
            ),
            Err(e) => tracing::warn!("compile cache {}: cannot evict: {e}", self.dir.display()),
        }
    }
}

/// Refuses a directory that anyone but this user could write to.
fn check_private_dir(dir: &Path) -> anyhow::Result<()> {
    let metadata = std::fs::metadata(dir).context("cannot read its metadata")?;
    anyhow::ensure!(metadata.is_dir(), "it is not a directory");
    let me = rustix::process::geteuid().as_raw();
    anyhow::ensure!(
        metadata.uid() == me,
        "it belongs to user id {}, not to the user running the server ({me}); whoever owns it could plant code that runs in this server",
        metadata.uid()
    );
    let mode = metadata.mode() & 0o7777;
    anyhow::ensure!(
        mode & 0o022 == 0,
        "group or others may write to it (mode {mode:o}); whoever can write there could plant code that runs in this server (chmod go-w {})",
        dir.display()
    );
    Ok(())
}

/// The cache's secret key: read, or made if there is none yet. Two servers
/// starting at once on one directory end up with the same key: the key is
/// written to a new file and linked into place only if no key is there.
fn read_or_create_key(dir: &Path) -> anyhow::Result<[u8; KEY_LEN]> {
    let path = dir.join(KEY_FILE);
    match read_key(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other.with_context(|| format!("key {}", path.display())),
    }
    let mut key = [0; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("cannot make a key: {e}"))?;
    // Written to a new file and linked into place only if no key is there.
    if files::create_atomically(&path, 0o600, |file| file.write_all(&key)).with_context(|| format!("cannot create the key {}", path.display()))? {
        Ok(key)
    } else {
        // Another server made one meanwhile.
        read_key(&path).with_context(|| format!("key {}", path.display()))
    }
}

/// Reads the key, refusing a file that is not a regular file of ours that
/// only we can read.
fn read_key(path: &Path) -> io::Result<[u8; KEY_LEN]> {
    let refuse = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
    let (file, metadata) = files::open_regular(path, Links::Refuse)?;
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me {
        return Err(refuse(format!("belongs to user id {}, not to the user running the server ({me})", metadata.uid())));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!("others may read or write it (mode {mode:o}); it must be 600")));
    }
    let bytes = files::read_capped(&file, &metadata, KEY_LEN as u64)?;
    bytes.try_into().map_err(|bytes: Vec<u8>| refuse(format!("holds {} bytes, not {KEY_LEN}", bytes.len())))
}

/// Removes entries of `dir` (compiled components and packs of functions),
/// least recently modified first, until they
/// take at most `max_size` bytes; also removes files left half-written
/// more than [`STALE_TEMP`] ago. Returns how many entries were evicted and
/// their bytes.
fn evict(dir: &Path, max_size: u64) -> io::Result<(usize, u64)> {
    let now = SystemTime::now();
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Not followed: a link is not an entry.
        let Ok(metadata) = entry.metadata() else { continue };
        if !metadata.is_file() {
            continue;
        }
        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if name.ends_with(ENTRY_SUFFIX) || name.ends_with(PACK_SUFFIX) {
            entries.push((modified, metadata.len(), entry.path()));
        } else if name.starts_with(TEMP_PREFIX) && now.duration_since(modified).is_ok_and(|age| age > STALE_TEMP) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
    entries.sort();
    let (mut count, mut bytes) = (0, 0);
    for (_, size, path) in entries {
        if total <= max_size {
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                (count, bytes) = (count + 1, bytes + size);
            }
            // Another server sharing the directory evicted it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        total -= size;
    }
    Ok((count, bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// The smallest component: its preamble (magic, version 0x0d, layer 1).
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";
    const GIB: u64 = 1 << 30;

    fn digest(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("read the cache")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect();
        paths.sort();
        paths
    }

    fn cache(engine: &Engine, dir: &Path) -> ComponentCache {
        ComponentCache::new(engine, DiskCache::open_or_log(dir, GIB))
    }

    #[test]
    fn a_restart_reads_the_code_back_and_a_private_key_is_made() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().expect("temporary directory");
        let cache_dir = dir.path().join("cache");
        let (_, origin) = cache(&engine, &cache_dir).get_or_compile(&engine, digest(1), EMPTY_COMPONENT).expect("compiles");
        assert_eq!(origin, CodeOrigin::Compiled);
        let (_, origin) = cache(&engine, &cache_dir).get_or_compile(&engine, digest(1), EMPTY_COMPONENT).expect("loads");
        assert_eq!(origin, CodeOrigin::Disk);
        let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&cache_dir), 0o700);
        assert_eq!(mode(&cache_dir.join(KEY_FILE)), 0o600);
        assert_eq!(entries(&cache_dir).len(), 1);
    }

    #[test]
    fn an_entry_under_another_sources_name_is_removed_not_loaded() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().expect("temporary directory");
        let first = cache(&engine, dir.path());
        first.get_or_compile(&engine, digest(1), EMPTY_COMPONENT).expect("compiles");
        let disk = first.disk.as_ref().expect("a disk cache");
        let (genuine, forged) = (disk.path(&first.engine_tag, &digest(1)), disk.path(&first.engine_tag, &digest(2)));
        std::fs::copy(&genuine, &forged).expect("copy the entry under another name");

        let restarted = cache(&engine, dir.path());
        let disk = restarted.disk.as_ref().expect("a disk cache");
        assert!(disk.read(&engine, &restarted.engine_tag, &digest(2)).is_none(), "another source's code was loaded");
        assert!(!forged.exists(), "the forged entry was kept");
        assert!(disk.read(&engine, &restarted.engine_tag, &digest(1)).is_some(), "the genuine entry is still good");

        // A byte changed anywhere, or a file cut short, fails too.
        let mut bytes = std::fs::read(&genuine).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&genuine, &bytes).expect("write");
        assert!(disk.read(&engine, &restarted.engine_tag, &digest(1)).is_none());
        std::fs::write(&genuine, &bytes[..HEADER_LEN - 1]).expect("write");
        assert!(disk.read(&engine, &restarted.engine_tag, &digest(1)).is_none());
        assert!(!genuine.exists());
    }

    #[test]
    fn a_read_error_is_a_miss_that_leaves_the_file() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().expect("temporary directory");
        let cache = cache(&engine, dir.path());
        let disk = cache.disk.as_ref().expect("a disk cache");
        let path = disk.path(&cache.engine_tag, &digest(1));
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"not code").expect("write");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        assert!(disk.read(&engine, &cache.engine_tag, &digest(1)).is_none());
        assert!(path.symlink_metadata().is_ok(), "an unreadable entry was removed");
        // Writing replaces the link itself; what it pointed at is untouched.
        cache.get_or_compile(&engine, digest(1), EMPTY_COMPONENT).expect("compiles");
        assert!(path.symlink_metadata().expect("entry").is_file());
        assert_eq!(std::fs::read(&target).expect("read"), b"not code");
    }

    /// What both the code cache and the function packs read through.
    #[test]
    fn an_entry_over_the_size_cap_is_removed_and_an_absent_one_is_a_miss() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let disk = DiskCache::open_or_log(dir.path(), 16).expect("a disk cache");
        let (small, big) = (dir.path().join("small"), dir.path().join("big"));
        std::fs::write(&small, [1; 16]).expect("write");
        std::fs::write(&big, [1; 17]).expect("write");
        assert_eq!(disk.read_entry(&small, "test entry").map(|(_, bytes)| bytes), Some(vec![1; 16]));
        assert!(disk.read_entry(&big, "test entry").is_none());
        assert!(!big.exists(), "an entry over the cap was kept");
        assert!(disk.read_entry(&dir.path().join("absent"), "test entry").is_none());
        assert!(small.exists());
    }

    #[test]
    fn directories_and_keys_others_can_touch_are_refused() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).expect("chmod");
        assert!(cache(&engine, dir.path()).disk_dir().is_none(), "a group-writable directory was used");

        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(cache(&engine, dir.path()).disk_dir().is_some());
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(cache(&engine, dir.path()).disk_dir().is_none(), "a key others can read was used");

        std::fs::remove_file(&key).expect("remove the key");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, [7; KEY_LEN]).expect("write");
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::symlink(&elsewhere, &key).expect("symlink");
        assert!(cache(&engine, dir.path()).disk_dir().is_none(), "a key behind a link was used");
    }

    #[test]
    fn eviction_removes_the_least_recently_used_first() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let now = SystemTime::now();
        for (name, age) in [("old", 300), ("middle", 200), ("new", 100)] {
            let path = dir.path().join(format!("{name}{ENTRY_SUFFIX}"));
            let file = std::fs::File::create(&path).expect("create");
            file.set_len(1000).expect("size");
            file.set_modified(now - Duration::from_secs(age)).expect("mtime");
        }
        let stale = dir.path().join(format!("{TEMP_PREFIX}stale"));
        std::fs::File::create(&stale).expect("create").set_modified(now - 2 * STALE_TEMP).expect("mtime");
        std::fs::write(dir.path().join(KEY_FILE), [0; KEY_LEN]).expect("key");

        assert_eq!(evict(dir.path(), 2500).expect("evict"), (1, 1000));
        let left: Vec<String> = entries(dir.path()).iter().filter_map(|p| p.file_stem()?.to_str().map(str::to_owned)).collect();
        assert_eq!(left, ["middle", "new"]);
        assert!(!stale.exists(), "a stale half-written file was kept");
        assert!(dir.path().join(KEY_FILE).exists(), "the key was evicted");
        assert_eq!(evict(dir.path(), 0).expect("evict"), (2, 2000));
    }
}
