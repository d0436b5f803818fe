//! The embedded backend: fjall, a pure-Rust log-structured store, in a
//! data directory that one server holds at a time.
//!
//! Why fjall (and not redb, the other pure-Rust candidate): durability
//! that matches what a server needs, at the cost of a write(2).
//! - fjall writes each batch to its journal and, with
//!   [`PersistMode::Buffer`], hands it to the kernel before returning: a
//!   write the plugin saw succeed survives `kill -9` of the server (the
//!   kernel writes it out), without an fsync. With `[kv] sync = true`
//!   ([`Durability::Sync`]) the journal is also `fdatasync`ed before the
//!   write returns, so it survives a machine crash, at the disk's cost.
//! - redb has two levels: `Durability::None` keeps the commit in the
//!   process (lost on `kill -9`) and `Durability::Immediate` fsyncs every
//!   commit. Surviving a process crash would cost an fsync per write.
//!
//! Layout of the directory: `wasmux.lock` (held locked while a server
//! uses the directory, with its process id inside, so a second server is
//! refused with a message naming `--data-dir`), and `kv/`, fjall's
//! database with two keyspaces: `data` (each entry under its bucket's
//! prefix, [`data_key`]) and `usage` (each tenant's [`Usage`], under its
//! name, [`usage_key`]).
//!
//! fjall holds keys of 1 to 65 535 bytes and panics on others: an entry's
//! stored key (its bucket's names and the key) longer than that is refused
//! as a limit ([`MAX_STORED_KEY`]), and the tenant named `""` has a usage
//! key of its own.
//!
//! Writes of one tenant are serialized by a lock (striped by tenant), so
//! that a read-modify-write (`increment`, the usage a write changes) is
//! atomic: the directory's lock means no other process writes. Reads take
//! no lock.
//!
//! fjall makes a write wait in the writing thread when flushing or
//! compaction falls behind (its write stall): it sleeps while 4 memtables
//! wait to be written out or 30 runs of tables wait in level 0 (and spins
//! from 20), and a flush begins with an fsync of the journal under the
//! lock every write takes. A write that may wait so
//! ([`EmbeddedStore::backed_up`]) runs on a blocking thread, bounded by the
//! request's deadline, and does not hold up the server's thread and the
//! other requests on it.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use fjall::{AbstractTree as _, Database, DatabaseBuilder, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{BucketId, KvError, KvLimits, LIST_PAGE, Usage, add_to_counter, entry_size};
use crate::files::{self, Links};

/// How durable an acknowledged write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Handed to the kernel before the write returns: survives the
    /// server's crash or `kill -9`, not the machine's.
    #[default]
    Process,
    /// Synced to the disk before the write returns (`[kv] sync = true`):
    /// survives a machine crash too.
    Sync,
}

/// Why the data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the data directory {} is in use by another wasmux server{}: give each server its own with --data-dir DIR (or WASMUX_DATA_DIR), or use a shared store (--kv redis://HOST:PORT)",
        dir.display(),
        holder.as_ref().map(|pid| format!(" (process {pid})")).unwrap_or_default()
    )]
    InUse { dir: PathBuf, holder: Option<String> },
    #[error("cannot open the data directory {} (--data-dir): {source}", dir.display())]
    Io { dir: PathBuf, source: std::io::Error },
    #[error("cannot open the key-value store in {} (--data-dir): {message}", dir.display())]
    Store { dir: PathBuf, message: String },
}

/// fjall holds writes back while this many memtables wait to be flushed
/// (fjall 3.1's `Keyspace::local_backpressure`)...
#[cfg(test)]
const STALLING_SEALED_MEMTABLES: usize = 4;

/// ... or slows them down while this many runs of tables wait in level 0
/// (counted here as tables, at least as many as runs), and holds them back
/// from 30.
const STALLING_L0_TABLES: usize = 20;

/// A keyspace's memtable is sealed, and flushed, when it holds this much
/// (fjall's default, which the keyspaces were made with)...
const MEMTABLE_BYTES: u64 = 64 << 20;

/// ... and writes go off the server's thread from this much short of it:
/// more than the writes in place between two samples add
/// ([`SAMPLE_EVERY`] × [`IN_PLACE_BYTES`], and fjall's own bytes per entry).
const MEMTABLE_MARGIN: u64 = 2 << 20;

/// Writes on blocking threads at once; others wait (asynchronously) for
/// their turn, until their deadline. They are serialized by the journal's
/// lock anyway: more threads would only wait there.
const OFF_THREAD_WRITES: usize = 16;

/// The memtables' sizes and level 0 are read at every this many writes
/// (reading them costs a tenth of a write)...
const SAMPLE_EVERY: u32 = 16;

/// ... and, as each flush adds a table to level 0, a write is sent off
/// the server's thread from this many tables short of the stall.
const L0_MARGIN: usize = 4;

/// The most bytes a write runs in place: far less than the margin a
/// memtable leaves ([`MEMTABLE_MARGIN`]), so that no write in place fills
/// one.
const IN_PLACE_BYTES: usize = 64 << 10;

/// The most bytes a counter's value takes (`i64::MIN` in decimal).
const COUNTER_BYTES: usize = 20;

/// Locks striping the tenants' writes.
const WRITE_LOCKS: usize = 16;

/// Keys a listing passes over on the server's own thread: a few pages.
const SKIPPED_IN_PLACE: usize = 4 * LIST_PAGE;

/// A listing looks at the clock after passing this many keys.
const DEADLINE_EVERY: usize = 1024;

pub(super) struct EmbeddedStore {
    db: Database,
    data: Keyspace,
    usage: Keyspace,
    mode: PersistMode,
    durability: Durability,
    writers: [Mutex<()>; WRITE_LOCKS],
    /// Writes so far, to sample fjall's state at every [`SAMPLE_EVERY`]th.
    writes: AtomicU32,
    /// Whether a memtable was nearly full, or level 0 near the stall, at
    /// the last sample.
    near_full: AtomicBool,
    /// Turns to write on a blocking thread.
    off_thread: Arc<tokio::sync::Semaphore>,
    /// Held (locked) for as long as the store is open.
    _lock: File,
}

impl EmbeddedStore {
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, OpenError> {
        Self::open_with(dir, durability, |builder| builder)
    }

    /// [`Self::open`], with fjall's options changed by `configure`.
    fn open_with(dir: &Path, durability: Durability, configure: impl FnOnce(DatabaseBuilder<Database>) -> DatabaseBuilder<Database>) -> Result<Self, OpenError> {
        let io = |source| OpenError::Io { dir: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = lock_directory(dir)?;
        let store = |e: fjall::Error| OpenError::Store { dir: dir.to_owned(), message: e.to_string() };
        let db = configure(Database::builder(dir.join("kv"))).open().map_err(store)?;
        let data = db.keyspace("data", KeyspaceCreateOptions::default).map_err(store)?;
        let usage = db.keyspace("usage", KeyspaceCreateOptions::default).map_err(store)?;
        let mode = match durability {
            Durability::Process => PersistMode::Buffer,
            Durability::Sync => PersistMode::SyncData,
        };
        Ok(Self { db, data, usage, mode, durability, writers: Default::default(), writes: AtomicU32::new(0), near_full: AtomicBool::new(false), off_thread: Arc::new(tokio::sync::Semaphore::new(OFF_THREAD_WRITES)), _lock: lock })
    }

    pub fn get(&self, bucket: &BucketId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let value = self.data.get(data_key(bucket, key)?).map_err(unavailable)?;
        Ok(value.map(|v| v.to_vec()))
    }

    pub fn exists(&self, bucket: &BucketId, key: &str) -> Result<bool, KvError> {
        self.data.contains_key(data_key(bucket, key)?).map_err(unavailable)
    }

    /// The cursor is the number of keys already listed: a page is found
    /// by skipping that many of the bucket's keys (in byte order), which
    /// costs as much as the cursor is large. A page deep in a bucket is
    /// therefore found on a blocking thread, not the server's, and no
    /// listing goes on past the request's deadline.
    pub async fn list_keys(this: &Arc<Self>, bucket: &BucketId, cursor: Option<u64>, deadline: Instant) -> Result<(Vec<String>, Option<u64>), KvError> {
        let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        if skip <= SKIPPED_IN_PLACE {
            return this.list_page(bucket, skip, deadline);
        }
        let (store, bucket) = (Arc::clone(this), bucket.clone());
        let task = tokio::task::spawn_blocking(move || store.list_page(&bucket, skip, deadline));
        match tokio::time::timeout_at(deadline.into(), task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(KvError::Unavailable(format!("listing the keys failed: {e}"))),
            Err(_) => Err(KvError::Timeout),
        }
    }

    /// The page of the bucket's keys after the first `skip`, unless
    /// `deadline` passes first.
    fn list_page(&self, bucket: &BucketId, skip: usize, deadline: Instant) -> Result<(Vec<String>, Option<u64>), KvError> {
        let prefix = bucket_prefix(bucket);
        let mut keys = Vec::new();
        let mut more = false;
        for (passed, entry) in self.data.prefix(&prefix).enumerate() {
            if passed % DEADLINE_EVERY == DEADLINE_EVERY - 1 && Instant::now() >= deadline {
                return Err(KvError::Timeout);
            }
            if passed < skip {
                continue;
            }
            if keys.len() == LIST_PAGE {
                more = true;
                break;
            }
            let key = entry.key().map_err(unavailable)?;
            keys.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        let next = more.then(|| skip.saturating_add(keys.len()) as u64);
        Ok((keys, next))
    }

    pub async fn set_many(this: &Arc<Self>, bucket: &BucketId, pairs: Vec<(String, Vec<u8>)>, limits: &KvLimits, deadline: Instant) -> Result<(), KvError> {
        let (bucket, limits) = (bucket.clone(), *limits);
        let bytes = pairs.iter().map(|(key, value)| key.len() + value.len()).sum();
        Self::write(this, deadline, bytes, move |store, late| {
            // One batch per pair: a refused pair leaves those before it
            // written, as the interface allows, and one journal write
            // holds the value and the usage it changes.
            pairs.into_iter().try_for_each(|(key, value)| store.put(&bucket, &key, Some(value), &limits, late))
        })
        .await
    }

    pub async fn delete_many(this: &Arc<Self>, bucket: &BucketId, keys: Vec<String>, deadline: Instant) -> Result<(), KvError> {
        let bucket = bucket.clone();
        let unlimited = KvLimits { max_keys: u64::MAX, max_bytes: u64::MAX, ..KvLimits::default() };
        let bytes = keys.iter().map(String::len).sum();
        Self::write(this, deadline, bytes, move |store, late| keys.iter().try_for_each(|key| store.put(&bucket, key, None, &unlimited, late))).await
    }

    pub async fn increment(this: &Arc<Self>, bucket: &BucketId, key: &str, delta: i64, limits: &KvLimits, deadline: Instant) -> Result<u64, KvError> {
        let (bucket, key, limits) = (bucket.clone(), key.to_owned(), *limits);
        Self::write(this, deadline, key.len() + COUNTER_BYTES, move |store, late| {
            let _writer = store.writer(&bucket.tenant, late)?;
            let stored = data_key(&bucket, &key)?;
            let old = store.data.get(&stored).map_err(unavailable)?;
            let (sum, bytes) = add_to_counter(old.as_deref(), delta)?;
            store.replace(&bucket, &key, stored, old.map(|v| v.len()), Some(bytes), &limits)?;
            Ok(sum)
        })
        .await
    }

    pub fn usage(&self, tenant: &str) -> Result<Usage, KvError> {
        let value = self.usage.get(usage_key(tenant)).map_err(unavailable)?;
        Ok(value.as_deref().map(decode_usage).unwrap_or_default())
    }

    /// Runs the write `job`, of about `bytes` (keys and values): in place
    /// when it only hands a few kilobytes to the kernel (microseconds);
    /// else on a blocking thread (at most [`OFF_THREAD_WRITES`] at once),
    /// and no longer than until `deadline`: when it syncs to the disk
    /// (milliseconds), is larger, or fjall may hold it back. The job gets
    /// the deadline to check once it holds the tenant's lock
    /// ([`Self::writer`]), off the server's thread only.
    async fn write<T: Send + 'static>(this: &Arc<Self>, deadline: Instant, bytes: usize, job: impl FnOnce(&Self, Option<Instant>) -> Result<T, KvError> + Send + 'static) -> Result<T, KvError> {
        if this.durability == Durability::Process && bytes <= IN_PLACE_BYTES && !this.backed_up() {
            return job(this, None);
        }
        Box::pin(Self::write_off_thread(Arc::clone(this), deadline, job)).await
    }

    /// [`Self::write`] on a blocking thread. Boxed by its caller, so that
    /// a write made in place (most of them) carries none of its state.
    async fn write_off_thread<T: Send + 'static>(store: Arc<Self>, deadline: Instant, job: impl FnOnce(&Self, Option<Instant>) -> Result<T, KvError> + Send + 'static) -> Result<T, KvError> {
        let waiting = async move {
            let permit = Arc::clone(&store.off_thread).acquire_owned().await.map_err(|_| KvError::Unavailable("the store is closed".into()))?;
            let task = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                job(&store, Some(deadline))
            });
            task.await.map_err(|e| KvError::Unavailable(format!("the write failed: {e}")))?
        };
        // A write that was waiting for its lock when the deadline passed is
        // not made; one already under way may still land: its outcome is
        // unknown, never half-done.
        tokio::time::timeout_at(deadline.into(), waiting).await.unwrap_or(Err(KvError::Timeout))
    }

    /// Whether fjall may hold the next write back, or make it wait: a
    /// memtable nearly full (about to be sealed) or sealed and not yet
    /// flushed (a flush starts with an fsync of the journal, under the
    /// lock every write takes), or level 0 near its limit. Reads fjall's
    /// own counts (hidden in its documentation, and pinned with it in
    /// Cargo.lock); a unit test makes fjall stall.
    fn backed_up(&self) -> bool {
        let keyspaces = [&self.data, &self.usage];
        if self.writes.fetch_add(1, Ordering::Relaxed).is_multiple_of(SAMPLE_EVERY) {
            let near = keyspaces.iter().any(|keyspace| {
                keyspace.tree.active_memtable().size() + MEMTABLE_MARGIN >= MEMTABLE_BYTES || keyspace.l0_table_count() + L0_MARGIN >= STALLING_L0_TABLES
            });
            self.near_full.store(near, Ordering::Relaxed);
        }
        self.near_full.load(Ordering::Relaxed) || keyspaces.iter().any(|keyspace| keyspace.sealed_memtable_count() > 0)
    }

    /// The lock serializing `tenant`'s writes; refused once it is held if
    /// `late` (off the server's thread: the write's deadline) has passed
    /// meanwhile, so that a write its caller was told timed out is not
    /// made after the writes that followed it.
    fn writer(&self, tenant: &str, late: Option<Instant>) -> Result<MutexGuard<'_, ()>, KvError> {
        let mut hasher = std::hash::DefaultHasher::new();
        tenant.hash(&mut hasher);
        let stripe = (hasher.finish() % WRITE_LOCKS as u64) as usize;
        // The lock guards no data of its own: a panic under it leaves nothing half-done.
        let guard = self.writers[stripe].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match late {
            Some(deadline) if Instant::now() >= deadline => Err(KvError::Timeout),
            _ => Ok(guard),
        }
    }

    /// Writes `value` at `key` (or deletes it, for `None`) with the tenant's
    /// new usage, in one journal write, or refuses it whole.
    fn put(&self, bucket: &BucketId, key: &str, value: Option<Vec<u8>>, limits: &KvLimits, late: Option<Instant>) -> Result<(), KvError> {
        let _writer = self.writer(&bucket.tenant, late)?;
        let stored = data_key(bucket, key)?;
        let old = self.data.get(&stored).map_err(unavailable)?.map(|v| v.len());
        self.replace(bucket, key, stored, old, value, limits)
    }

    /// [`Self::put`], under the tenant's write lock, of the entry stored at
    /// `stored` whose value is now `old_len` bytes long (none: absent).
    fn replace(&self, bucket: &BucketId, key: &str, stored: Vec<u8>, old_len: Option<usize>, value: Option<Vec<u8>>, limits: &KvLimits) -> Result<(), KvError> {
        let old = old_len.map(|len| entry_size(key, len));
        if old.is_none() && value.is_none() {
            return Ok(());
        }
        if let Some(value) = value.as_ref().filter(|v| u32::try_from(v.len()).is_err()) {
            return Err(KvError::Limit(format!("a value of {} bytes is too large for the embedded store (at most 4 GiB)", value.len())));
        }
        let new = value.as_ref().map(|v| entry_size(key, v.len()));
        // An entry replaced by one of the same size (most increments) leaves
        // the tenant's usage as it is: nothing to check, read or write.
        let usage = if old == new { None } else { Some(self.usage(&bucket.tenant)?.after(old, new, limits)?) };
        let value = match (value, &usage, self.durability) {
            // One entry, with no usage: fjall's single write, handed to the
            // kernel before it returns, is cheaper than a batch of one.
            (Some(value), None, Durability::Process) => return self.data.insert(stored, value).map_err(unavailable),
            (value, _, _) => value,
        };
        let mut batch = self.db.batch().durability(Some(self.mode));
        match value {
            Some(value) => batch.insert(&self.data, stored, value),
            None => batch.remove(&self.data, stored),
        }
        if let Some(usage) = usage {
            batch.insert(&self.usage, usage_key(&bucket.tenant), encode_usage(usage));
        }
        batch.commit().map_err(unavailable)
    }
}

/// Takes `dir/wasmux.lock`, or says which process holds it.
fn lock_directory(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join("wasmux.lock");
    let io = |source| OpenError::Io { dir: dir.to_owned(), source };
    let Some(mut file) = files::try_lock(&path, Links::Follow).map_err(io)? else {
        // Who holds it, as that server wrote it.
        let holder = files::read_regular(&path, 64, Links::Follow).ok().map(|pid| String::from_utf8_lossy(&pid).trim().to_owned());
        return Err(OpenError::InUse { dir: dir.to_owned(), holder: holder.filter(|pid| !pid.is_empty()) });
    };
    // Who holds it, for the message a second server gets.
    file.set_len(0).and_then(|()| file.rewind()).and_then(|()| writeln!(file, "{}", std::process::id())).map_err(io)?;
    Ok(file)
}

/// A bucket's entries are stored under its prefix: the tenant's, the
/// plugin's and the bucket's names, each after its length (4 bytes, big
/// endian). No name can pass for another, whatever bytes it holds, and a
/// bucket's keys are one range.
fn bucket_prefix(bucket: &BucketId) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(12 + bucket.tenant.len() + bucket.plugin.len() + bucket.bucket.len());
    for part in [&*bucket.tenant, &*bucket.plugin, &*bucket.bucket] {
        prefix.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        prefix.extend_from_slice(part.as_bytes());
    }
    prefix
}

/// The longest key fjall holds (its keys are 1 to 65 535 bytes).
pub const MAX_STORED_KEY: usize = u16::MAX as usize;

/// Where `key` of `bucket` is stored, or a refusal if that is longer than
/// fjall holds (a long key under a raised `max-key-size`, or long names).
fn data_key(bucket: &BucketId, key: &str) -> Result<Vec<u8>, KvError> {
    let mut stored = bucket_prefix(bucket);
    stored.extend_from_slice(key.as_bytes());
    if stored.len() > MAX_STORED_KEY {
        return Err(KvError::Limit(format!(
            "a key of {} bytes is too long for the embedded store: with its tenant's, plugin's and bucket's names it is {} bytes, over the {MAX_STORED_KEY} the store holds",
            key.len(),
            stored.len()
        )));
    }
    Ok(stored)
}

/// Where `tenant`'s usage is stored: its name, except for the tenant named
/// `""` (fjall holds no empty key), whose usage is under the byte 0xFF,
/// which no name (UTF-8) is.
fn usage_key(tenant: &str) -> &[u8] {
    if tenant.is_empty() { &[0xFF] } else { tenant.as_bytes() }
}

fn encode_usage(usage: Usage) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&usage.keys.to_le_bytes());
    bytes[8..].copy_from_slice(&usage.bytes.to_le_bytes());
    bytes
}

fn decode_usage(bytes: &[u8]) -> Usage {
    let number = |range: std::ops::Range<usize>| bytes.get(range).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
    Usage { keys: number(0..8), bytes: number(8..16) }
}

fn unavailable(e: fjall::Error) -> KvError {
    KvError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Most writes are made in place: their future (allocated by wasmtime
    /// for every call a plugin makes) carries no room for a blocking
    /// thread's wait.
    #[test]
    fn a_write_made_in_place_carries_no_room_for_a_blocking_thread() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Arc::new(EmbeddedStore::open(dir.path(), Durability::Process).expect("open"));
        let b = BucketId::new("t", "p", "default");
        let deadline = Instant::now() + Duration::from_secs(30);
        let increment = std::mem::size_of_val(&EmbeddedStore::increment(&store, &b, "k", 1, &KvLimits::default(), deadline));
        // The job an increment hands over holds its bucket, key and limits.
        let job = (b.clone(), String::from("k"), KvLimits::default());
        let off_thread = std::mem::size_of_val(&EmbeddedStore::write_off_thread(Arc::clone(&store), deadline, move |_, _| Ok(job.1.len())));
        assert!(increment < off_thread, "an increment's future is {increment} bytes, a wait for a blocking thread {off_thread}");
    }

    #[test]
    fn prefixes_of_different_buckets_never_overlap() {
        // A separator could be forged ("a:b" + "c" against "a" + "b:c");
        // lengths cannot.
        let a = BucketId::new("t", "a:b", "c");
        let b = BucketId::new("t", "a", "b:c");
        assert!(!data_key(&a, "k").unwrap().starts_with(&bucket_prefix(&b)));
        assert!(!data_key(&b, "k").unwrap().starts_with(&bucket_prefix(&a)));
        let default = BucketId::new("t", "p", "default");
        let longer = BucketId::new("t", "p", "defaultx");
        assert!(!data_key(&longer, "").unwrap().starts_with(&bucket_prefix(&default)));
    }

    /// A listing from far into a bucket (a cursor as large as a plugin
    /// likes) stops at the request's deadline instead of passing over
    /// every key.
    #[tokio::test]
    async fn a_listing_stops_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), Durability::Process).unwrap());
        let b = BucketId::new("t", "p", "default");
        let pairs = (0..3 * DEADLINE_EVERY).map(|i| (format!("k{i:05}"), b"v".to_vec())).collect();
        EmbeddedStore::set_many(&store, &b, pairs, &KvLimits::default(), Instant::now() + std::time::Duration::from_secs(30)).await.unwrap();
        let later = Instant::now() + std::time::Duration::from_secs(30);
        let (first, next) = store.list_page(&b, 0, later).unwrap();
        assert_eq!((first.len(), next), (LIST_PAGE, Some(LIST_PAGE as u64)));
        assert!(matches!(store.list_page(&b, usize::MAX, Instant::now()), Err(KvError::Timeout)));
        let (past_the_end, next) = EmbeddedStore::list_keys(&store, &b, Some(u64::MAX), later).await.unwrap();
        assert!(past_the_end.is_empty() && next.is_none());
        let (last, next) = EmbeddedStore::list_keys(&store, &b, Some((3 * DEADLINE_EVERY - 10) as u64), later).await.unwrap();
        assert_eq!((last.len(), next), (10, None));
    }

    /// A write that fjall holds back (here nothing flushes, and 4
    /// memtables wait) ends at the request's deadline, as a timeout, and
    /// the thread that asked goes on with its other tasks. In place, the
    /// write would sleep in fjall, holding the thread, until a flush.
    #[test]
    fn a_write_fjall_holds_back_ends_at_the_deadline_and_holds_up_no_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open_with(dir.path(), Durability::Process, |fjall| fjall.worker_threads_unchecked(0)).unwrap());
        let (sent, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let result = runtime.block_on(async {
                let (b, limits) = (BucketId::new("t", "p", "default"), KvLimits::default());
                let later = || Instant::now() + Duration::from_secs(30);
                for _ in 0..STALLING_SEALED_MEMTABLES {
                    EmbeddedStore::increment(&store, &b, "n", 1, &limits, later()).await.unwrap();
                    assert!(store.data.rotate_memtable().unwrap());
                }
                assert!(store.backed_up());
                let ticker = tokio::spawn(async {
                    let mut ticks = 0;
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        ticks += 1;
                        if ticks == 10 {
                            return ticks;
                        }
                    }
                });
                let started = Instant::now();
                let write = EmbeddedStore::increment(&store, &b, "n", 1, &limits, started + Duration::from_millis(300)).await;
                (write, started.elapsed(), ticker.is_finished())
            });
            // The held-back write's thread sleeps on in fjall: do not wait for it.
            runtime.shutdown_background();
            sent.send(result).unwrap();
        });
        let (write, took, ticked) = outcome.recv_timeout(Duration::from_secs(10)).expect("the write held its thread up");
        assert!(matches!(write, Err(KvError::Timeout)), "{write:?}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
        assert!(ticked, "the other task did not run while the write waited");
    }

    /// A write off the server's thread that waits for its tenant's lock
    /// past its deadline is not made: its caller was told it timed out,
    /// and the writes after it must not be overwritten by it later.
    #[tokio::test]
    async fn a_write_that_waited_past_its_deadline_is_not_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), Durability::Process).unwrap());
        let (b, limits) = (BucketId::new("t", "p", "default"), KvLimits::default());
        let (held, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let holder = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let _writer = store.writer("t", None).unwrap();
                held.0.send(()).unwrap();
                release.1.recv().unwrap();
            })
        };
        held.1.recv().unwrap();
        // Larger than a write in place: it goes to a blocking thread and waits there for the lock.
        let big = vec![b'x'; IN_PLACE_BYTES + 1];
        let write = EmbeddedStore::set_many(&store, &b, vec![("late".into(), big)], &limits, Instant::now() + Duration::from_millis(100)).await;
        assert!(matches!(write, Err(KvError::Timeout)), "{write:?}");
        release.0.send(()).unwrap();
        holder.join().unwrap();
        // The blocking thread gets the lock now: wait for its job to end.
        let until = Instant::now() + Duration::from_secs(10);
        while store.off_thread.available_permits() < OFF_THREAD_WRITES {
            assert!(Instant::now() < until, "the write's job did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.get(&b, "late").unwrap(), None, "the write its caller was told timed out was made");
        EmbeddedStore::set_many(&store, &b, vec![("on time".into(), b"v".to_vec())], &limits, Instant::now() + Duration::from_secs(30)).await.unwrap();
        assert_eq!(store.get(&b, "on time").unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// Writes off the server's thread take turns: with every turn taken,
    /// a write waits for one (holding no thread) and ends at its deadline,
    /// unmade.
    #[tokio::test]
    async fn writes_off_the_servers_thread_wait_their_turn_until_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), Durability::Process).unwrap());
        let (b, limits) = (BucketId::new("t", "p", "default"), KvLimits::default());
        let turns = Arc::clone(&store.off_thread).acquire_many_owned(OFF_THREAD_WRITES as u32).await.unwrap();
        let big = vec![b'x'; IN_PLACE_BYTES + 1];
        let started = Instant::now();
        let write = EmbeddedStore::set_many(&store, &b, vec![("waited".into(), big)], &limits, started + Duration::from_millis(100)).await;
        assert!(matches!(write, Err(KvError::Timeout)), "{write:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        drop(turns);
        assert_eq!(store.get(&b, "waited").unwrap(), None, "a write that never had its turn was made");
        EmbeddedStore::set_many(&store, &b, vec![("had its turn".into(), vec![b'x'; IN_PLACE_BYTES + 1])], &limits, Instant::now() + Duration::from_secs(30)).await.unwrap();
        assert!(store.get(&b, "had its turn").unwrap().is_some());
    }

    /// Writes go off the server's thread while a memtable is nearly full
    /// (its flush, an fsync under the journal's lock, is near), and while
    /// one waits to be flushed; a fresh store writes in place.
    #[tokio::test]
    async fn writes_leave_the_servers_thread_near_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open_with(dir.path(), Durability::Process, |fjall| fjall.worker_threads_unchecked(0)).unwrap());
        let sampled = |store: &EmbeddedStore| (0..SAMPLE_EVERY).map(|_| store.backed_up()).last().unwrap_or(false);
        assert!(!sampled(&store), "a fresh store is backed up");
        let (b, limits) = (BucketId::new("t", "p", "default"), KvLimits { max_bytes: u64::MAX, ..KvLimits::default() });
        let later = Instant::now() + Duration::from_secs(60);
        let full = (MEMTABLE_BYTES - MEMTABLE_MARGIN / 2) as usize;
        let value = vec![b'v'; limits.max_value];
        let pairs = (0..full / value.len()).map(|i| (format!("k{i}"), value.clone())).collect();
        EmbeddedStore::set_many(&store, &b, pairs, &limits, later).await.unwrap();
        assert!(store.data.tree.active_memtable().size() + MEMTABLE_MARGIN >= MEMTABLE_BYTES, "the memtable holds {}", store.data.tree.active_memtable().size());
        assert_eq!(store.data.sealed_memtable_count(), 0);
        assert!(sampled(&store), "a nearly full memtable is not seen");
        assert!(store.data.rotate_memtable().unwrap());
        // A memtable waits to be flushed (nothing flushes here); the new one is empty.
        assert!(sampled(&store), "a memtable waiting to be flushed is not seen");
        assert_eq!(EmbeddedStore::increment(&store, &b, "n", 1, &limits, later).await.unwrap(), 1);
    }

    #[test]
    fn usage_round_trips() {
        let usage = Usage { keys: 3, bytes: u64::MAX - 1 };
        assert_eq!(decode_usage(&encode_usage(usage)), usage);
        assert_eq!(decode_usage(b"short"), Usage::default());
    }
}
