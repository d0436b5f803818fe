//! Cranelift's incremental cache: each function Cranelift compiled, by its
//! key (a hash of the function's code and of the compiler's target, settings
//! and version), so that compiling a component compiles only the functions
//! no earlier compile made. A Python or JavaScript plugin is an interpreter
//! whose code is the same from one build to the next (the program is data):
//! its second build compiles in a fraction of the first one's time.
//!
//! In memory for `wasmux dev` ([`CompileMode::Incremental`], kept between
//! compiles), and on disk in the compiled-code cache's directory whenever one
//! is in use, as packs: files of (key, code) records, each pack
//! authenticated as the compiled components beside it are (an HMAC-SHA256,
//! under the directory's key, over the whole pack, checked before anything
//! in it is used), written whole or not at all, and evicted with them, least
//! recently used first, under `cache-max-size`.
//!
//! A compile reads the packs at its first lookup and, when it ends, writes
//! what it compiled as a new pack; past [`MAX_PACKS`] packs, the one written
//! holds them all, merged, and the merged ones are removed. One process
//! merges at a time (it holds [`MERGE_LOCK`]), and only packs that are all
//! still there: a process that finds the lock taken, or a pack it read gone
//! (merged or evicted by another), writes what it compiled as a pack of its
//! own and leaves the merge to a later compile. When no compile
//! is under way, the functions are dropped from memory, or, if they are kept
//! (`wasmux dev`), all but those this process used (its plugin's).
//!
//! [`CompileMode::Incremental`]: super::CompileMode::Incremental

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use hmac::Mac as _;

use super::cache::{DiskCache, MAC_LEN, PACK_SUFFIX};
use crate::files::{self, Links};

/// The first bytes of a pack: the format, then the MAC, then the records.
const MAGIC: &[u8; 8] = b"wasmuxF1";

/// Past this many packs, the next one written merges them all.
const MAX_PACKS: usize = 16;

/// The file in the cache directory that a process merging packs holds
/// locked (an advisory lock of the operating system's, released when the
/// process ends, however it ends).
const MERGE_LOCK: &str = "functions.lock";

/// A merged pack larger than this share of `cache-max-size` keeps only the
/// functions the compiles of this process used.
const MERGED_SHARE: u64 = 4;

pub(super) struct FunctionCache {
    disk: Option<Arc<DiskCache>>,
    /// Keep the functions in memory between compiles.
    keep: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The functions, by key; `None` until a lookup needs them.
    functions: Option<HashMap<Vec<u8>, Function>>,
    /// The packs they were read from.
    packs: Vec<PathBuf>,
    /// Keys compiled since the last pack was written.
    fresh: Vec<Vec<u8>>,
    /// Whether a lookup found a function since the packs were read.
    hit: bool,
    /// Compiles under way.
    compiling: usize,
}

struct Function {
    code: Arc<[u8]>,
    /// Looked up or compiled by this process.
    used: bool,
}

impl std::fmt::Debug for FunctionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("FunctionCache")
            .field("dir", &self.disk.as_ref().map(|disk| &disk.dir))
            .field("keep", &self.keep)
            .field("functions", &state.functions.as_ref().map(HashMap::len))
            .field("packs", &state.packs.len())
            .finish()
    }
}

/// A compile under way: what it compiled is written when this is dropped.
pub(super) struct Compiling<'a>(&'a FunctionCache);

impl FunctionCache {
    /// Functions in memory only, kept for the life of the runtime.
    pub(super) fn in_memory() -> Self {
        Self { disk: None, keep: true, state: Mutex::default() }
    }

    /// Functions in the packs of `disk`; also kept in memory between
    /// compiles if `keep`.
    pub(super) fn on_disk(disk: Arc<DiskCache>, keep: bool) -> Self {
        Self { disk: Some(disk), keep, state: Mutex::default() }
    }

    /// Marks a compile as under way until the guard is dropped.
    pub(super) fn compiling(&self) -> Compiling<'_> {
        self.lock().compiling += 1;
        Compiling(self)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The map stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The functions, read from the packs on first use.
    fn functions<'s>(&self, state: &'s mut State) -> &'s mut HashMap<Vec<u8>, Function> {
        if state.functions.is_none() {
            let (functions, packs) = match &self.disk {
                Some(disk) => read_packs(disk),
                None => (HashMap::new(), Vec::new()),
            };
            state.packs = packs;
            state.hit = false;
            state.functions = Some(functions);
        }
        state.functions.get_or_insert_with(HashMap::new)
    }

    /// A compile ended: writes what was compiled since the last pack, and
    /// drops the functions from memory if no other compile is under way and
    /// they are not kept.
    fn compiled(&self) {
        let mut state = self.lock();
        state.compiling = state.compiling.saturating_sub(1);
        if let Some(disk) = &self.disk {
            write_pack(disk, &mut state);
        }
        if state.compiling == 0 {
            if self.keep {
                // Kept: only the functions this process used (its plugin's),
                // not every pack's. The packs stay on disk, and are no longer
                // this process's to merge.
                if let Some(functions) = &mut state.functions {
                    functions.retain(|_, function| function.used);
                }
                state.packs.clear();
            } else {
                *state = State::default();
            }
        }
    }
}

impl Drop for Compiling<'_> {
    fn drop(&mut self) {
        self.0.compiled();
    }
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let mut state = self.lock();
        let function = self.functions(&mut state).get_mut(key)?;
        function.used = true;
        let code = Arc::clone(&function.code);
        state.hit = true;
        Some(Cow::Owned(code.to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let mut state = self.lock();
        self.functions(&mut state).insert(key.to_vec(), Function { code: value.into(), used: true });
        state.fresh.push(key.to_vec());
        true
    }
}

/// Every authentic pack of `disk`, read: the functions, and the packs they
/// came from. A pack that fails its check is removed; one that cannot be
/// read is left alone (another process may be evicting or merging it).
fn read_packs(disk: &DiskCache) -> (HashMap<Vec<u8>, Function>, Vec<PathBuf>) {
    let mut functions = HashMap::new();
    let mut packs = Vec::new();
    let listing = match std::fs::read_dir(&disk.dir) {
        Ok(listing) => listing,
        Err(e) => {
            tracing::warn!("cannot list compiled functions in {}: {e}; compiling them", disk.dir.display());
            return (functions, packs);
        }
    };
    for path in listing.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
        if !path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.ends_with(PACK_SUFFIX)) {
            continue;
        }
        let Some((_, bytes)) = disk.read_entry(&path, "compiled functions") else { continue };
        let Some(records) = authentic(disk, &bytes).and_then(parse) else {
            disk.discard::<()>(&path, "it fails its authentication (altered or truncated)");
            continue;
        };
        for (key, code) in records {
            functions.entry(key.to_vec()).or_insert_with(|| Function { code: code.into(), used: false });
        }
        packs.push(path);
    }
    (functions, packs)
}

/// The records of a pack's `bytes`, if its MAC is right.
fn authentic<'a>(disk: &DiskCache, bytes: &'a [u8]) -> Option<&'a [u8]> {
    let (magic, rest) = bytes.split_at_checked(MAGIC.len())?;
    let (tag, records) = rest.split_at_checked(MAC_LEN)?;
    (magic == MAGIC).then_some(())?;
    // Compared in constant time.
    disk.mac_of(&[MAGIC, records]).verify_slice(tag).ok()?;
    Some(records)
}

/// The (key, code) records: each a little-endian u32 length and that many
/// bytes, twice. `None` if they do not fill `records` exactly.
fn parse(mut records: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    fn field<'a>(records: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (len, rest) = records.split_at_checked(4)?;
        let len = usize::try_from(u32::from_le_bytes(len.try_into().ok()?)).ok()?;
        let (value, rest) = rest.split_at_checked(len)?;
        *records = rest;
        Some(value)
    }
    let mut parsed = Vec::new();
    while !records.is_empty() {
        let key = field(&mut records)?;
        let code = field(&mut records)?;
        parsed.push((key, code));
    }
    Some(parsed)
}

fn encode<'a>(records: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (key, code) in records {
        for field in [key, code] {
            // A key is a 32-byte hash and a function's code far below 4 GiB.
            bytes.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_le_bytes());
            bytes.extend_from_slice(field);
        }
    }
    bytes
}

/// Writes the functions compiled since the last pack as a new pack (all of
/// them, merged, past [`MAX_PACKS`] packs), and marks the packs a lookup
/// used as recently used. Failures are logged: the cache is an optimisation.
fn write_pack(disk: &DiskCache, state: &mut State) {
    let State { functions: Some(functions), packs, fresh, hit, .. } = state else { return };
    if *hit {
        for pack in packs.iter() {
            if let Err(e) = std::fs::File::open(pack).and_then(|file| file.set_modified(SystemTime::now())) {
                tracing::debug!("cannot mark compiled functions {} as used: {e}", pack.display());
            }
        }
        *hit = false;
    }
    if fresh.is_empty() {
        return;
    }
    // Held until the merged packs are removed.
    let merging = if packs.len() >= MAX_PACKS { lock_for_merge(disk, packs) } else { None };
    let merge = merging.is_some();
    let records = if merge {
        let mut all = encode(functions.iter().map(|(key, f)| (key.as_slice(), &*f.code)));
        if all.len() as u64 > disk.max_size / MERGED_SHARE {
            all = encode(functions.iter().filter(|(_, f)| f.used).map(|(key, f)| (key.as_slice(), &*f.code)));
        }
        all
    } else {
        encode(fresh.iter().filter_map(|key| functions.get(key).map(|f| (key.as_slice(), &*f.code))))
    };
    let mut name = [0u8; 8];
    if let Err(e) = getrandom::fill(&mut name) {
        tracing::warn!("compiled functions not kept: cannot name a pack: {e}");
        return;
    }
    let path = disk.dir.join(format!("{}{PACK_SUFFIX}", hex::encode(name)));
    if (MAGIC.len() + MAC_LEN + records.len()) as u64 > disk.max_size {
        tracing::info!("compiled functions not kept: {} bytes, larger than cache-max-size ({} bytes)", records.len(), disk.max_size);
        fresh.clear();
        return;
    }
    let mac = disk.mac_of(&[MAGIC, &records]).finalize().into_bytes();
    let written = files::write_atomically(&path, 0o600, |file| {
        file.write_all(MAGIC)?;
        file.write_all(&mac)?;
        file.write_all(&records)
    });
    match written {
        Ok(()) => {
            tracing::debug!("compiled functions: {} new, written to {} ({} bytes)", fresh.len(), path.display(), records.len());
            fresh.clear();
            if merge {
                for pack in packs.drain(..) {
                    // Another process may have merged or evicted it first.
                    if let Err(e) = std::fs::remove_file(&pack)
                        && e.kind() != io::ErrorKind::NotFound
                    {
                        tracing::warn!("cannot remove merged compiled functions {}: {e}", pack.display());
                    }
                }
            }
            packs.push(path);
            disk.evict();
        }
        Err(e) => tracing::warn!("cannot keep compiled functions at {}: {e}", path.display()),
    }
}

/// The merge lock, if this process may merge `packs`: no other process is
/// merging, and every pack it read is still there. Otherwise two processes
/// would each write a merged pack holding much the same functions.
fn lock_for_merge(disk: &DiskCache, packs: &[PathBuf]) -> Option<std::fs::File> {
    let path = disk.dir.join(MERGE_LOCK);
    // Never written; a link planted in its place is refused.
    let lock = match files::try_lock(&path, Links::Refuse) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            tracing::debug!("compiled functions not merged: another process is merging them");
            return None;
        }
        Err(e) => {
            tracing::warn!("compiled functions not merged: cannot lock {}: {e}", path.display());
            return None;
        }
    };
    if let Some(gone) = packs.iter().find(|pack| std::fs::symlink_metadata(pack).is_err()) {
        tracing::debug!("compiled functions not merged: {} was merged or evicted by another process", gone.display());
        return None;
    }
    Some(lock)
}

#[cfg(test)]
mod tests {
    use wasmtime::CacheStore as _;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn packs(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> =
            std::fs::read_dir(dir).expect("read the cache").filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.to_string_lossy().ends_with(PACK_SUFFIX)).collect();
        paths.sort();
        paths
    }

    fn disk(dir: &std::path::Path) -> Arc<DiskCache> {
        DiskCache::open_or_log(dir, GIB).expect("a private cache directory")
    }

    /// One compile that looks `key` up and, missing it, compiles `code`.
    fn compile(cache: &FunctionCache, key: &[u8], code: &[u8]) -> bool {
        let _compiling = cache.compiling();
        let found = cache.get(key).is_some_and(|found| *found == *code);
        if !found {
            cache.insert(key, code.to_vec());
        }
        found
    }

    #[test]
    fn a_later_process_finds_what_an_earlier_one_compiled() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let first = FunctionCache::on_disk(disk(dir.path()), false);
        assert!(!compile(&first, b"k1", b"code one"));
        assert_eq!(packs(dir.path()).len(), 1);
        assert!(first.lock().functions.is_none(), "the functions stayed in memory between compiles");
        // Found again: nothing new, no new pack.
        assert!(compile(&first, b"k1", b"code one"));
        assert_eq!(packs(dir.path()).len(), 1);

        let later = FunctionCache::on_disk(disk(dir.path()), false);
        assert!(compile(&later, b"k1", b"code one"), "a restart compiled again");
        assert!(!compile(&later, b"k2", b"code two"));
        assert_eq!(packs(dir.path()).len(), 2);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&packs(dir.path())[0]).expect("metadata").permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_pack_altered_or_cut_short_is_removed_not_used() {
        let dir = tempfile::tempdir().expect("temporary directory");
        compile(&FunctionCache::on_disk(disk(dir.path()), false), b"key", b"native code");
        let pack = packs(dir.path()).remove(0);
        let genuine = std::fs::read(&pack).expect("read");

        let mut altered = genuine.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        for bytes in [altered, genuine[..genuine.len() - 1].to_vec(), genuine[..MAGIC.len() + 3].to_vec()] {
            std::fs::write(&pack, &bytes).expect("write");
            assert!(!compile(&FunctionCache::on_disk(disk(dir.path()), false), b"key", b"native code"), "an altered pack was used");
            assert!(!pack.exists(), "the altered pack was kept");
            // The compile above wrote the function again, in a pack of its own.
            let written = packs(dir.path()).remove(0);
            std::fs::rename(written, &pack).expect("rename");
        }

        // Authentic packs under another key (another directory's) fail too.
        let other = tempfile::tempdir().expect("temporary directory");
        std::fs::copy(&pack, other.path().join(format!("copied{PACK_SUFFIX}"))).expect("copy");
        assert!(!compile(&FunctionCache::on_disk(disk(other.path()), false), b"key", b"native code"));
    }

    #[test]
    fn past_the_most_packs_they_are_merged_into_one() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for n in 0..MAX_PACKS {
            compile(&FunctionCache::on_disk(disk(dir.path()), false), format!("k{n}").as_bytes(), b"code");
        }
        assert_eq!(packs(dir.path()).len(), MAX_PACKS);
        let cache = FunctionCache::on_disk(disk(dir.path()), false);
        assert!(!compile(&cache, b"one more", b"code"));
        assert_eq!(packs(dir.path()).len(), 1, "the packs were not merged");
        let merged = FunctionCache::on_disk(disk(dir.path()), false);
        for n in 0..MAX_PACKS {
            assert!(compile(&merged, format!("k{n}").as_bytes(), b"code"), "k{n} was lost in the merge");
        }
        assert!(compile(&merged, b"one more", b"code"));
    }

    /// How many functions the pack at `path` holds.
    fn records_in(dir: &std::path::Path, path: &std::path::Path) -> usize {
        let bytes = std::fs::read(path).expect("read a pack");
        authentic(&disk(dir), &bytes).and_then(parse).map_or(0, |records| records.len())
    }

    #[test]
    fn one_process_merges_at_a_time_and_only_packs_still_there() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for n in 0..MAX_PACKS {
            compile(&FunctionCache::on_disk(disk(dir.path()), false), format!("k{n}").as_bytes(), b"code");
        }
        // Three processes read the same packs, then each compiles a function.
        let processes: Vec<FunctionCache> = (0..3).map(|_| FunctionCache::on_disk(disk(dir.path()), false)).collect();
        let mut compiles: Vec<Option<Compiling<'_>>> = Vec::new();
        for (n, process) in processes.iter().enumerate() {
            compiles.push(Some(process.compiling()));
            let key = format!("new {n}");
            assert!(process.get(key.as_bytes()).is_none());
            process.insert(key.as_bytes(), b"code".to_vec());
        }
        let pack_sizes = || {
            let mut sizes: Vec<usize> = packs(dir.path()).iter().map(|pack| records_in(dir.path(), pack)).collect();
            sizes.sort();
            sizes
        };

        // Another process is merging (it holds the lock): the first writes
        // its function alone.
        let held = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(dir.path().join(MERGE_LOCK)).expect("open the lock");
        held.try_lock().expect("take the lock");
        compiles[0] = None;
        assert_eq!(pack_sizes(), [vec![1; MAX_PACKS], vec![1]].concat(), "merged while another process held the lock");
        held.unlock().expect("release the lock");

        // The lock free, the second merges the packs it read, and its own.
        compiles[1] = None;
        assert_eq!(pack_sizes(), [1, MAX_PACKS + 1]);

        // The packs the third read are merged already: it does not merge
        // them a second time.
        compiles[2] = None;
        assert_eq!(pack_sizes(), [1, 1, MAX_PACKS + 1], "two merged packs");

        let later = FunctionCache::on_disk(disk(dir.path()), false);
        for key in (0..MAX_PACKS).map(|n| format!("k{n}")).chain((0..3).map(|n| format!("new {n}"))) {
            assert!(compile(&later, key.as_bytes(), b"code"), "{key} was lost");
        }
    }

    #[test]
    fn kept_functions_stay_in_memory_between_compiles() {
        let cache = FunctionCache::in_memory();
        assert!(!compile(&cache, b"k", b"code"));
        assert!(compile(&cache, b"k", b"code"));
        let dir = tempfile::tempdir().expect("temporary directory");
        let earlier = FunctionCache::on_disk(disk(dir.path()), false);
        compile(&earlier, b"another plugin's", b"code");
        compile(&earlier, b"k", b"code");
        let kept = FunctionCache::on_disk(disk(dir.path()), true);
        assert!(compile(&kept, b"k", b"code"));
        assert!(!compile(&kept, b"new", b"code"));
        // In memory: what it used, not every pack's functions.
        let functions = kept.lock().functions.as_ref().map(|f| f.keys().cloned().collect::<std::collections::BTreeSet<_>>());
        assert_eq!(functions, Some([b"k".to_vec(), b"new".to_vec()].into()));
        // And the packs it did not merge stay.
        assert!(compile(&FunctionCache::on_disk(disk(dir.path()), false), b"another plugin's", b"code"));
    }

    #[test]
    fn records_that_do_not_fill_the_pack_exactly_are_refused() {
        let records = encode([(&b"key"[..], &b"code"[..]), (b"k2", b"")].into_iter());
        assert_eq!(parse(&records), Some(vec![(&b"key"[..], &b"code"[..]), (b"k2", b"")]));
        assert_eq!(parse(&records[..records.len() - 1]), None);
        let mut longer = records.clone();
        longer.push(0);
        assert_eq!(parse(&longer), None);
        assert_eq!(parse(&[0xff, 0xff, 0xff, 0xff, 1]), None);
    }
}
