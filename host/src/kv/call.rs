//! One plugin instance's access to the store: whose state it is (tenant,
//! plugin), which buckets it may open, the buckets it has open, and, for
//! the request it is serving, its deadline and how many operations it has
//! left. The guest side (`wasi:keyvalue`'s host traits) works on this.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::{BucketId, DEFAULT_BUCKET, KvError, KvLimits, KvMetrics as _, NoKvMetrics, Operation, Outcome, PluginKvMetrics, Store, decimal_digits};

/// Bucket names, beyond `default`, that a plugin may open (from the
/// server's configuration).
pub type BucketGrants = Arc<BTreeSet<String>>;

/// Buckets an instance may hold open at once: a handle is a few bytes of
/// the host's memory, and a plugin needs one or two.
pub const MAX_OPEN_BUCKETS: usize = 32;

/// Longest bucket name.
pub const MAX_BUCKET_NAME: usize = 128;

pub struct KvCall {
    /// None for a plugin that imports no store, or a server without one:
    /// every bucket is then `no-such-store`.
    store: Option<Store>,
    /// The bucket `default` of the tenant's plugin (its base name), which
    /// every bucket opened shares all but its name with.
    default: BucketId,
    /// Where each operation is reported.
    metrics: Arc<dyn PluginKvMetrics>,
    grants: BucketGrants,
    limits: KvLimits,
    deadline: Instant,
    /// Operations of the current request so far.
    operations: u32,
    /// Open buckets by handle (the resource's representation); a closed
    /// one's slot is reused.
    open: Vec<Option<BucketId>>,
}

impl KvCall {
    /// The access of an instance of `plugin` (`name@variant` allowed)
    /// serving `tenant`. Call [`KvCall::begin`] before each request.
    pub fn new(store: Store, tenant: &str, plugin: &str, grants: BucketGrants, limits: KvLimits) -> Self {
        let default = BucketId::new(tenant, plugin, DEFAULT_BUCKET);
        let metrics = store.metrics_of(&default.tenant, &default.plugin);
        Self { store: Some(store), default, metrics, grants, limits, deadline: Instant::now(), operations: 0, open: Vec::new() }
    }

    /// The access of an instance that has no store: it opens nothing.
    /// Cheap (two names), for instances of plugins that import none.
    pub fn without_store(tenant: &str, plugin: &str) -> Self {
        let default = BucketId::new(tenant, plugin, DEFAULT_BUCKET);
        let metrics = NoKvMetrics.plugin(&default.tenant, &default.plugin);
        let limits = KvLimits::default();
        Self { store: None, default, metrics, grants: BucketGrants::default(), limits, deadline: Instant::now(), operations: 0, open: Vec::new() }
    }

    fn store(&self) -> Result<&Store, KvError> {
        self.store.as_ref().ok_or(KvError::NoSuchStore)
    }

    /// A request begins on this instance: it must answer by `deadline`
    /// and may make `limits.operations_per_request` operations. Buckets
    /// the plugin opened in an earlier request stay open (an instance
    /// serves one tenant).
    pub fn begin(&mut self, deadline: Instant, limits: KvLimits) {
        self.deadline = deadline;
        self.limits = limits;
        self.operations = 0;
    }

    /// Counts `n` operations against the request's allowance.
    fn spend(&mut self, n: usize) -> Result<(), KvError> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let total = self.operations.saturating_add(n);
        if total > self.limits.operations_per_request {
            return Err(KvError::Limit(format!(
                "this request has made {} of its {} key-value operations (kv operations-per-request)",
                self.operations, self.limits.operations_per_request
            )));
        }
        self.operations = total;
        Ok(())
    }

    /// Reports `operation`, which read `read` bytes and wrote `written` if
    /// it succeeded.
    fn report<T>(&self, operation: Operation, result: &Result<T, KvError>, read: usize, written: usize) {
        let (read, written) = if result.is_ok() { (read as u64, written as u64) } else { (0, 0) };
        self.metrics.operation(operation, Outcome::of(result), read, written);
    }

    /// Starts `operation` on the bucket behind `handle`: checks the handle,
    /// then counts `n` operations against the request's allowance
    /// ([`KvCall::spend`]), reporting a refusal.
    fn start(&mut self, handle: u32, operation: Operation, n: usize) -> Result<(), KvError> {
        self.bucket(handle)?;
        let spent = self.spend(n);
        if spent.is_err() {
            self.report(operation, &spent, 0, 0);
        }
        spent
    }

    /// Opens bucket `name`: `default`, or one the configuration grants;
    /// any other is `no-such-store`. Returns its handle.
    pub fn open(&mut self, name: &str) -> Result<u32, KvError> {
        if self.store.is_none() {
            return Err(KvError::NoSuchStore);
        }
        let result = self.open_bucket(name);
        self.report(Operation::Open, &result, 0, 0);
        result
    }

    fn open_bucket(&mut self, name: &str) -> Result<u32, KvError> {
        self.spend(1)?;
        let bucket = if name == DEFAULT_BUCKET {
            self.default.clone()
        } else if name.len() <= MAX_BUCKET_NAME && self.grants.contains(name) {
            BucketId { bucket: name.into(), ..self.default.clone() }
        } else {
            return Err(KvError::NoSuchStore);
        };
        let slot = match self.open.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.open.len() < MAX_OPEN_BUCKETS => {
                self.open.push(None);
                self.open.len() - 1
            }
            None => {
                return Err(KvError::Limit(format!("the plugin holds {MAX_OPEN_BUCKETS} buckets open, the most it may: drop one first")));
            }
        };
        self.open[slot] = Some(bucket);
        u32::try_from(slot).map_err(|_| KvError::Limit("too many buckets open".into()))
    }

    /// The bucket behind `handle`. A handle comes from [`KvCall::open`]
    /// through wasmtime, which checks the guest's handles: an unknown one
    /// is the host's bug, answered as an error, not a trap.
    fn bucket(&self, handle: u32) -> Result<&BucketId, KvError> {
        let slot = usize::try_from(handle).ok().and_then(|i| self.open.get(i));
        slot.and_then(Option::as_ref).ok_or_else(|| KvError::Unavailable(format!("no open bucket has handle {handle}")))
    }

    /// Drops the bucket handle `handle`.
    pub fn close(&mut self, handle: u32) {
        if let Some(slot) = usize::try_from(handle).ok().and_then(|i| self.open.get_mut(i)) {
            *slot = None;
        }
    }

    // Each operation is started (its handle checked, then counted) before
    // its bucket is borrowed, not copied, for the store's call.

    pub async fn get(&mut self, handle: u32, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.start(handle, Operation::Get, 1)?;
        let result = self.store()?.get(self.bucket(handle)?, key, self.deadline).await;
        self.report(Operation::Get, &result, result.as_ref().map_or(0, |v| v.as_ref().map_or(0, Vec::len)), 0);
        result
    }

    pub async fn set(&mut self, handle: u32, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        self.start(handle, Operation::Set, 1)?;
        let written = value.len();
        let result = self.store()?.set(self.bucket(handle)?, key, value, &self.limits, self.deadline).await;
        self.report(Operation::Set, &result, 0, written);
        result
    }

    pub async fn delete(&mut self, handle: u32, key: &str) -> Result<(), KvError> {
        self.start(handle, Operation::Delete, 1)?;
        let result = self.store()?.delete(self.bucket(handle)?, key, self.deadline).await;
        self.report(Operation::Delete, &result, 0, 0);
        result
    }

    pub async fn exists(&mut self, handle: u32, key: &str) -> Result<bool, KvError> {
        self.start(handle, Operation::Exists, 1)?;
        let result = self.store()?.exists(self.bucket(handle)?, key, self.deadline).await;
        self.report(Operation::Exists, &result, 0, 0);
        result
    }

    pub async fn list_keys(&mut self, handle: u32, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), KvError> {
        self.start(handle, Operation::ListKeys, 1)?;
        let result = self.store()?.list_keys(self.bucket(handle)?, cursor, self.deadline).await;
        self.report(Operation::ListKeys, &result, result.as_ref().map_or(0, |(keys, _)| keys.iter().map(String::len).sum()), 0);
        result
    }

    pub async fn increment(&mut self, handle: u32, key: &str, delta: u64) -> Result<u64, KvError> {
        self.start(handle, Operation::Increment, 1)?;
        let result = self.store()?.increment(self.bucket(handle)?, key, delta, &self.limits, self.deadline).await;
        self.report(Operation::Increment, &result, 0, result.as_ref().map_or(0, |n| decimal_digits(*n)));
        result
    }

    /// Counts one operation for each key (at least one).
    pub async fn get_many(&mut self, handle: u32, keys: Vec<String>) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        self.start(handle, Operation::GetMany, keys.len().max(1))?;
        let result = self.store()?.get_many(self.bucket(handle)?, keys, self.deadline).await;
        self.report(Operation::GetMany, &result, result.as_ref().map_or(0, |pairs| pairs.iter().flatten().map(|(_, v)| v.len()).sum()), 0);
        result
    }

    pub async fn set_many(&mut self, handle: u32, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        self.start(handle, Operation::SetMany, pairs.len().max(1))?;
        let written = pairs.iter().map(|(_, v)| v.len()).sum();
        let result = self.store()?.set_many(self.bucket(handle)?, pairs, &self.limits, self.deadline).await;
        self.report(Operation::SetMany, &result, 0, written);
        result
    }

    pub async fn delete_many(&mut self, handle: u32, keys: Vec<String>) -> Result<(), KvError> {
        self.start(handle, Operation::DeleteMany, keys.len().max(1))?;
        let result = self.store()?.delete_many(self.bucket(handle)?, keys, self.deadline).await;
        self.report(Operation::DeleteMany, &result, 0, 0);
        result
    }
}
