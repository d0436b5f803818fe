//! Plugin state: the key-value store behind `wasi:keyvalue` (the
//! `stateful-handler` world of `wit/wasmux.wit`).
//!
//! A [`Store`] holds buckets of keys and values. A bucket belongs to a
//! tenant and to a plugin's base name (before `@`), so `search` and
//! `search@fuzzy`, and every version of a plugin, share their state, and
//! two tenants never do ([`BucketId`]). Three backends:
//!
//! - [`Store::in_memory`]: a map in the process, gone when it exits (for
//!   `wasmux call` and `wasmux dev` without `--data-dir`, and tests);
//! - [`Store::embedded`]: fjall, a pure-Rust log-structured store, in a data
//!   directory that one server holds at a time (`embedded.rs` says why
//!   fjall and what its durability is);
//! - [`Store::redis`]: a Redis that a fleet of servers shares; `increment`
//!   is atomic across them (`redis.rs`).
//!
//! Whatever the backend:
//! - **Counters** are the decimal ASCII of a signed 64-bit number, which is
//!   what Redis's `HINCRBY` keeps: `increment` of a missing key by 5 stores
//!   the bytes `5`, and `get` reads those bytes back from every backend. A
//!   counter stays within `0 ..= i64::MAX` (the interface returns a `u64`;
//!   Redis counts in an `i64`); `increment` of a value that is not such a
//!   number, or past that range, fails and changes nothing
//!   ([`parse_counter`]).
//! - **Limits** ([`KvLimits`]): a written key's and value's size, and the
//!   keys and bytes (keys and values together) one tenant stores, are
//!   checked here and in each backend together with the write, so a refused write
//!   changes nothing. A write that shrinks what a tenant holds is never
//!   refused, even over a lowered limit. Operations per request are
//!   counted by [`KvCall`].
//! - **Deadlines**: every operation takes the instant by which it must
//!   answer (the request's deadline); past it, it fails with
//!   [`KvError::Timeout`]. A write that times out may still have been
//!   applied (as with any store across a network): its outcome is unknown,
//!   never half-done.
//! - **Errors** are values ([`KvError`]), which the guest side maps to the
//!   interface's `error` (`no-such-store`, `access-denied`, `other`):
//!   nothing here panics on what a plugin, a file or a peer controls.
//! - **The guest** calls it through `wasi:keyvalue`'s host traits,
//!   implemented on [`KvCall`] (`guest.rs`): one instance's open buckets,
//!   its tenant and plugin, and its request's deadline and operations.
//! - **Metrics**: every operation a plugin makes is reported by its
//!   [`KvCall`] to its tenant's and plugin's [`PluginKvMetrics`], looked
//!   up once per instance from the store's [`KvMetrics`] (operation,
//!   outcome, bytes read and written).

mod call;
mod embedded;
mod guest;
mod memory;
mod metrics;
mod redis;

pub use self::redis::redacted as redacted_url;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub use call::{BucketGrants, KvCall, MAX_BUCKET_NAME, MAX_OPEN_BUCKETS};
pub use embedded::{Durability, OpenError};
pub use guest::to_wasi;
pub use metrics::{KvCounters, KvMetrics, NoKvMetrics, Operation, Outcome, PluginKvMetrics, Totals};

/// The bucket every plugin may open without a grant.
pub const DEFAULT_BUCKET: &str = "default";

/// Keys returned by one `list-keys` page.
pub const LIST_PAGE: usize = 256;

/// Which bucket: a tenant's, of one plugin (by its base name), by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketId {
    pub tenant: Arc<str>,
    /// The plugin's name before `@`.
    pub plugin: Arc<str>,
    pub bucket: Arc<str>,
}

impl BucketId {
    /// The bucket `bucket` of `tenant` for plugin `plugin`, where `plugin`
    /// may name a variant (`search@fuzzy`): its state is the base name's.
    pub fn new(tenant: &str, plugin: &str, bucket: &str) -> Self {
        Self { tenant: tenant.into(), plugin: plugin_base(plugin).into(), bucket: bucket.into() }
    }
}

impl fmt::Display for BucketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bucket {:?} of plugin {} (tenant {})", self.bucket, self.plugin, self.tenant)
    }
}

/// A plugin's name before `@`: the name its state is kept under.
pub fn plugin_base(plugin: &str) -> &str {
    plugin.split_once('@').map_or(plugin, |(base, _)| base)
}

/// What one tenant may store and do. The defaults are in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key a write takes, in bytes. Reads and deletes take any
    /// key: one written under a higher limit stays reachable.
    pub max_key: usize,
    /// Largest value, in bytes.
    pub max_value: usize,
    /// Keys the tenant stores, over all its plugins and buckets.
    pub max_keys: u64,
    /// Bytes (keys plus values) the tenant stores, over all its plugins
    /// and buckets.
    pub max_bytes: u64,
    /// Store operations one request may make; a batch operation counts one
    /// for each key, `open` counts one.
    pub operations_per_request: u32,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self { max_key: 256, max_value: 1 << 20, max_keys: 100_000, max_bytes: 64 << 20, operations_per_request: 100 }
    }
}

/// What a tenant stores: kept by each backend with its data, and changed
/// in the same step as the write it accounts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub keys: u64,
    /// Keys plus values, in bytes.
    pub bytes: u64,
}

impl Usage {
    /// The usage after replacing `old` (the entry's size, if the key
    /// exists) by `new` (if it will exist), or the limit it would break.
    /// Growing past a limit is refused; shrinking never is.
    fn after(self, old: Option<u64>, new: Option<u64>, limits: &KvLimits) -> Result<Usage, KvError> {
        let keys = self.keys.saturating_sub(u64::from(old.is_some())).saturating_add(u64::from(new.is_some()));
        let bytes = self.bytes.saturating_sub(old.unwrap_or(0)).saturating_add(new.unwrap_or(0));
        if keys > self.keys && keys > limits.max_keys {
            return Err(KvError::Limit(format!("the tenant stores {} keys, its limit (kv max-keys)", self.keys)));
        }
        if bytes > self.bytes && bytes > limits.max_bytes {
            return Err(KvError::Limit(format!(
                "the write would bring the tenant's stored bytes to {bytes}, over its limit of {} (kv max-bytes)",
                limits.max_bytes
            )));
        }
        Ok(Usage { keys, bytes })
    }
}

/// The size a key and its value count for in [`Usage`].
fn entry_size(key: &str, value_len: usize) -> u64 {
    (key.len() as u64).saturating_add(value_len as u64)
}

/// Why a store operation failed. The guest side answers the plugin with
/// the interface's error: [`KvError::NoSuchStore`] and
/// [`KvError::AccessDenied`] as themselves, the others as `other` with
/// their message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A bucket name the plugin was not granted.
    #[error("no such store")]
    NoSuchStore,
    #[error("access denied")]
    AccessDenied,
    /// A limit of the tenant's was reached; the message names it.
    #[error("{0}")]
    Limit(String),
    /// The operation's deadline passed.
    #[error("the key-value store did not answer within the request's deadline")]
    Timeout,
    /// The store cannot be reached (Redis down) or failed (I/O).
    #[error("the key-value store is unavailable: {0}")]
    Unavailable(String),
    /// `increment` of a value that is not a counter, or past its range.
    #[error("{0}")]
    NotACounter(String),
}

/// Where the state is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Memory,
    Embedded { dir: std::path::PathBuf, durability: Durability },
    Redis { url: String },
    /// The embedded store, where no data directory is known (no
    /// `--data-dir`, `WASMUX_DATA_DIR`, `XDG_DATA_HOME` or `HOME`):
    /// opening it fails, saying how to give one.
    NoDataDir,
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("in memory (gone when the process exits)"),
            Self::Embedded { dir, durability: Durability::Process } => {
                write!(f, "embedded in {} (a write survives the server's crash; sync = false)", dir.display())
            }
            Self::Embedded { dir, durability: Durability::Sync } => {
                write!(f, "embedded in {} (a write is synced to the disk before it returns; sync = true)", dir.display())
            }
            Self::Redis { url } => write!(f, "in the Redis at {}", redacted_url(url)),
            Self::NoDataDir => f.write_str("embedded, in no directory (none given)"),
        }
    }
}

/// The data directory when none is given (`--data-dir`, `WASMUX_DATA_DIR`):
/// `$XDG_DATA_HOME/wasmux`, or `$HOME/.local/share/wasmux` when
/// `XDG_DATA_HOME` is unset, empty or relative (as the XDG base directory
/// specification says); none without a home either.
pub fn default_data_dir(xdg_data_home: Option<std::ffi::OsString>, home: Option<std::ffi::OsString>) -> Option<std::path::PathBuf> {
    let xdg = xdg_data_home.map(std::path::PathBuf::from).filter(|dir| dir.is_absolute());
    let base = xdg.or_else(|| home.map(std::path::PathBuf::from).filter(|dir| dir.is_absolute()).map(|home| home.join(".local/share")))?;
    Some(base.join("wasmux"))
}

/// A store opened the first time something needs it: a server whose
/// plugins import no store never opens (or locks) its data directory, so
/// servers that need none start side by side. A failed opening (the
/// directory in use) is tried again at the next need.
pub struct OnDemand {
    config: StoreConfig,
    metrics: Arc<dyn KvMetrics>,
    opened: std::sync::Mutex<Option<Store>>,
    /// Why the last try to open it failed, until one succeeds.
    failure: std::sync::Mutex<Option<String>>,
}

impl OnDemand {
    pub fn new(config: StoreConfig, metrics: Arc<dyn KvMetrics>) -> Self {
        Self { config, metrics, opened: std::sync::Mutex::new(None), failure: std::sync::Mutex::new(None) }
    }

    /// What it was configured with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The store, opened now if it is not yet.
    pub fn get(&self) -> anyhow::Result<Store> {
        let mut opened = self.opened.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(store) = &*opened {
            return Ok(store.clone());
        }
        let mut failure = self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let store = match Store::open(&self.config) {
            Ok(store) => store.with_metrics(Arc::clone(&self.metrics)),
            Err(e) => {
                *failure = Some(format!("{e:#}"));
                return Err(e);
            }
        };
        *failure = None;
        tracing::info!("key-value store: {}", self.config);
        *opened = Some(store.clone());
        Ok(store)
    }

    /// Why it could not be opened when last needed, if it could not (and
    /// has not been since): a server that needs its store at start-up and
    /// cannot have it refuses to start with this.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Whether it has been opened.
    pub fn is_open(&self) -> bool {
        self.opened.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some()
    }
}

/// The key-value store plugins' state is kept in. Cloning it is cheap.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    metrics: Arc<dyn KvMetrics>,
}

/// Cloning shares the data.
///
/// A store call's future is allocated on the heap for every call a plugin
/// makes (wasmtime boxes each async host call), and an `async` match holds
/// room for its largest arm. Redis's futures, several times the embedded
/// store's, are therefore boxed on their own, on the path where a round
/// trip dwarfs the allocation: a call to the embedded store stays small
/// enough for the allocator's per-thread cache.
#[derive(Clone)]
enum Backend {
    Memory(memory::MemoryStore),
    Embedded(Arc<embedded::EmbeddedStore>),
    Redis(redis::RedisStore),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner.backend {
            Backend::Memory(_) => "Store(memory)",
            Backend::Embedded(_) => "Store(embedded)",
            Backend::Redis(_) => "Store(redis)",
        })
    }
}

impl Store {
    /// Opens the store `config` describes: for a data directory, takes its
    /// lock (a second server on the same directory is refused, naming
    /// `--data-dir`); for Redis, checks the URL only (the connection is
    /// made on first use and remade after a failure).
    pub fn open(config: &StoreConfig) -> anyhow::Result<Self> {
        match config {
            StoreConfig::Memory => Ok(Self::in_memory()),
            StoreConfig::Embedded { dir, durability } => Ok(Self::embedded(dir, *durability)?),
            StoreConfig::Redis { url } => Self::redis(url),
            StoreConfig::NoDataDir => anyhow::bail!(
                "no data directory for the key-value store: give one with --data-dir DIR (or WASMUX_DATA_DIR), \
                 set XDG_DATA_HOME or HOME, or use a shared store (--kv redis://HOST:PORT)"
            ),
        }
    }

    /// A store in this process's memory only.
    pub fn in_memory() -> Self {
        Self::with_backend(Backend::Memory(memory::MemoryStore::default()))
    }

    /// The embedded store in `dir` (created if missing), locked for this
    /// process.
    pub fn embedded(dir: &Path, durability: Durability) -> Result<Self, OpenError> {
        Ok(Self::with_backend(Backend::Embedded(Arc::new(embedded::EmbeddedStore::open(dir, durability)?))))
    }

    /// The Redis at `url` (`redis://HOST:PORT`, optionally `/DB`).
    pub fn redis(url: &str) -> anyhow::Result<Self> {
        Ok(Self::with_backend(Backend::Redis(redis::RedisStore::new(url)?)))
    }

    fn with_backend(backend: Backend) -> Self {
        Self { inner: Arc::new(Inner { backend, metrics: Arc::new(NoKvMetrics) }) }
    }

    /// The same store (its data shared), whose plugins' operations are
    /// reported to `metrics`.
    pub fn with_metrics(self, metrics: Arc<dyn KvMetrics>) -> Self {
        Self { inner: Arc::new(Inner { backend: self.inner.backend.clone(), metrics }) }
    }

    /// The value of `key`, if any.
    pub async fn get(&self, bucket: &BucketId, key: &str, deadline: Instant) -> Result<Option<Vec<u8>>, KvError> {
        before(deadline)?;
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.get(bucket, key)),
            Backend::Embedded(e) => e.get(bucket, key),
            Backend::Redis(r) => Box::pin(r.get(bucket, key, deadline)).await,
        }
    }

    /// Sets `key` to `value`.
    pub async fn set(&self, bucket: &BucketId, key: &str, value: Vec<u8>, limits: &KvLimits, deadline: Instant) -> Result<(), KvError> {
        self.set_many(bucket, vec![(key.to_owned(), value)], limits, deadline).await
    }

    /// Deletes `key` (nothing if it does not exist).
    pub async fn delete(&self, bucket: &BucketId, key: &str, deadline: Instant) -> Result<(), KvError> {
        self.delete_many(bucket, vec![key.to_owned()], deadline).await
    }

    /// Whether `key` exists.
    pub async fn exists(&self, bucket: &BucketId, key: &str, deadline: Instant) -> Result<bool, KvError> {
        before(deadline)?;
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.exists(bucket, key)),
            Backend::Embedded(e) => e.exists(bucket, key),
            Backend::Redis(r) => Box::pin(r.exists(bucket, key, deadline)).await,
        }
    }

    /// One page of the bucket's keys (at most [`LIST_PAGE`]) from `cursor`
    /// (none: the first page), and the cursor of the next page (none: this
    /// was the last). The cursor is the backend's own.
    pub async fn list_keys(&self, bucket: &BucketId, cursor: Option<u64>, deadline: Instant) -> Result<(Vec<String>, Option<u64>), KvError> {
        before(deadline)?;
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.list_keys(bucket, cursor)),
            Backend::Embedded(e) => embedded::EmbeddedStore::list_keys(e, bucket, cursor, deadline).await,
            Backend::Redis(r) => Box::pin(r.list_keys(bucket, cursor, deadline)).await,
        }
    }

    /// Adds `delta` to the counter `key` (missing: 0) and returns the sum.
    pub async fn increment(&self, bucket: &BucketId, key: &str, delta: u64, limits: &KvLimits, deadline: Instant) -> Result<u64, KvError> {
        check_key(key, limits)?;
        let delta = i64::try_from(delta).map_err(|_| KvError::NotACounter(format!("cannot increment by {delta}: a counter holds at most {}", i64::MAX)))?;
        before(deadline)?;
        match &self.inner.backend {
            Backend::Memory(m) => m.increment(bucket, key, delta, limits),
            Backend::Embedded(e) => embedded::EmbeddedStore::increment(e, bucket, key, delta, limits, deadline).await,
            Backend::Redis(r) => Box::pin(r.increment(bucket, key, delta, limits, deadline)).await,
        }
    }

    /// The values of `keys`, in their order (none where a key is missing).
    pub async fn get_many(&self, bucket: &BucketId, keys: Vec<String>, deadline: Instant) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        before(deadline)?;
        let values = match &self.inner.backend {
            Backend::Memory(m) => Ok(keys.iter().map(|key| m.get(bucket, key)).collect()),
            Backend::Embedded(e) => keys.iter().map(|key| e.get(bucket, key)).collect(),
            Backend::Redis(r) => Box::pin(r.get_many(bucket, &keys, deadline)).await,
        }?;
        Ok(keys.into_iter().zip(values).map(|(key, value)| value.map(|v| (key, v))).collect())
    }

    /// Sets each key to its value, in order; on an error, the pairs before
    /// the failing one are set and the rest are not.
    pub async fn set_many(&self, bucket: &BucketId, pairs: Vec<(String, Vec<u8>)>, limits: &KvLimits, deadline: Instant) -> Result<(), KvError> {
        for (key, value) in &pairs {
            check_key(key, limits)?;
            if value.len() > limits.max_value {
                return Err(KvError::Limit(format!(
                    "a value of {} bytes is over the limit of {} (kv max-value-size)",
                    value.len(),
                    limits.max_value
                )));
            }
        }
        before(deadline)?;
        match &self.inner.backend {
            Backend::Memory(m) => m.set_many(bucket, pairs, limits),
            Backend::Embedded(e) => embedded::EmbeddedStore::set_many(e, bucket, pairs, limits, deadline).await,
            Backend::Redis(r) => Box::pin(r.set_many(bucket, pairs, limits, deadline)).await,
        }
    }

    /// Deletes each key; missing keys are skipped.
    pub async fn delete_many(&self, bucket: &BucketId, keys: Vec<String>, deadline: Instant) -> Result<(), KvError> {
        before(deadline)?;
        match &self.inner.backend {
            Backend::Memory(m) => m.delete_many(bucket, keys),
            Backend::Embedded(e) => embedded::EmbeddedStore::delete_many(e, bucket, keys, deadline).await,
            Backend::Redis(r) => Box::pin(r.delete_many(bucket, keys, deadline)).await,
        }
    }

    /// What `tenant` stores now, as the backend accounts it.
    pub async fn usage(&self, tenant: &str, deadline: Instant) -> Result<Usage, KvError> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.usage(tenant)),
            Backend::Embedded(e) => e.usage(tenant),
            Backend::Redis(r) => Box::pin(r.usage(tenant, deadline)).await,
        }
    }

    /// What `tenant`'s `plugin` reports its operations to.
    pub fn metrics_of(&self, tenant: &Arc<str>, plugin: &Arc<str>) -> Arc<dyn PluginKvMetrics> {
        self.inner.metrics.plugin(tenant, plugin)
    }
}

/// Refuses a key to write over the tenant's limit (empty keys are
/// allowed, as in Redis).
fn check_key(key: &str, limits: &KvLimits) -> Result<(), KvError> {
    if key.len() > limits.max_key {
        return Err(KvError::Limit(format!("a key of {} bytes is over the limit of {} (kv max-key-size)", key.len(), limits.max_key)));
    }
    Ok(())
}

/// The length of `n` written in decimal, as a counter is stored.
fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Fails if `deadline` has passed.
fn before(deadline: Instant) -> Result<(), KvError> {
    if Instant::now() >= deadline { Err(KvError::Timeout) } else { Ok(()) }
}

/// The counter `value` holds, read as Redis reads one: the decimal ASCII
/// of an `i64`, an optional `-` then digits, without a `+`, spaces or
/// leading zeros (`0` itself excepted); anything else is not a counter.
pub fn parse_counter(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let number: i64 = text.parse().ok()?;
    // Redis's `string2ll` accepts exactly the text it would write.
    (number.to_string() == text).then_some(number)
}

/// `old` (the value of the key, if any) plus `delta`, as a counter:
/// the new value and its bytes.
fn add_to_counter(old: Option<&[u8]>, delta: i64) -> Result<(u64, Vec<u8>), KvError> {
    let current = match old {
        None => 0,
        Some(bytes) => parse_counter(bytes).ok_or_else(|| KvError::NotACounter("the value is not a counter (the decimal ASCII of an integer)".into()))?,
    };
    let sum = current.checked_add(delta).ok_or_else(|| KvError::NotACounter(format!("the counter would pass {}", i64::MAX)))?;
    let sum = u64::try_from(sum).map_err(|_| KvError::NotACounter(format!("the counter holds {current}, and a counter returned by increment cannot be negative")))?;
    Ok((sum, sum.to_string().into_bytes()))
}

#[cfg(test)]
mod tests;
