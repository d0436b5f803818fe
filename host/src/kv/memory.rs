//! The in-memory backend: buckets in a map behind one lock, gone when the
//! process exits. For `wasmux call` and `wasmux dev` without a data
//! directory, where state lasts as long as the command.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{BucketId, KvError, KvLimits, LIST_PAGE, Usage, add_to_counter, entry_size};

#[derive(Clone, Default)]
pub(super) struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Each bucket's keys in byte order, so that a page of `list-keys` is
    /// a range.
    buckets: HashMap<BucketId, BTreeMap<String, Vec<u8>>>,
    usage: HashMap<Arc<str>, Usage>,
}

impl State {
    /// Puts `value` at `key` (or removes it, for `None`), accounting for
    /// it in the tenant's usage, or refuses it whole.
    fn put(&mut self, bucket: &BucketId, key: &str, value: Option<Vec<u8>>, limits: &KvLimits) -> Result<(), KvError> {
        let old = self.buckets.get(bucket).and_then(|b| b.get(key)).map(|v| entry_size(key, v.len()));
        let new = value.as_ref().map(|v| entry_size(key, v.len()));
        let usage = self.usage.get(&bucket.tenant).copied().unwrap_or_default().after(old, new, limits)?;
        self.usage.insert(Arc::clone(&bucket.tenant), usage);
        match value {
            Some(value) => {
                self.buckets.entry(bucket.clone()).or_default().insert(key.to_owned(), value);
            }
            None => {
                if let Some(keys) = self.buckets.get_mut(bucket) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.buckets.remove(bucket);
                    }
                }
            }
        }
        Ok(())
    }
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole entries (each change
        // is one insert or remove after the checks): keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, bucket: &BucketId, key: &str) -> Option<Vec<u8>> {
        self.lock().buckets.get(bucket).and_then(|b| b.get(key)).cloned()
    }

    pub fn exists(&self, bucket: &BucketId, key: &str) -> bool {
        self.lock().buckets.get(bucket).is_some_and(|b| b.contains_key(key))
    }

    /// The cursor is the number of keys already listed.
    pub fn list_keys(&self, bucket: &BucketId, cursor: Option<u64>) -> (Vec<String>, Option<u64>) {
        let state = self.lock();
        let Some(keys) = state.buckets.get(bucket) else { return (Vec::new(), None) };
        let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        let page: Vec<String> = keys.keys().skip(skip).take(LIST_PAGE).cloned().collect();
        let next = skip.saturating_add(page.len());
        let cursor = (next < keys.len()).then_some(next as u64);
        (page, cursor)
    }

    pub fn set_many(&self, bucket: &BucketId, pairs: Vec<(String, Vec<u8>)>, limits: &KvLimits) -> Result<(), KvError> {
        let mut state = self.lock();
        pairs.into_iter().try_for_each(|(key, value)| state.put(bucket, &key, Some(value), limits))
    }

    pub fn delete_many(&self, bucket: &BucketId, keys: Vec<String>) -> Result<(), KvError> {
        let mut state = self.lock();
        // Deleting only shrinks what a tenant holds: no limit applies.
        let unlimited = KvLimits { max_keys: u64::MAX, max_bytes: u64::MAX, ..KvLimits::default() };
        keys.iter().try_for_each(|key| state.put(bucket, key, None, &unlimited))
    }

    pub fn increment(&self, bucket: &BucketId, key: &str, delta: i64, limits: &KvLimits) -> Result<u64, KvError> {
        let mut state = self.lock();
        let old = state.buckets.get(bucket).and_then(|b| b.get(key));
        let (sum, bytes) = add_to_counter(old.map(Vec::as_slice), delta)?;
        state.put(bucket, key, Some(bytes), limits)?;
        Ok(sum)
    }

    pub fn usage(&self, tenant: &str) -> Usage {
        self.lock().usage.get(tenant).copied().unwrap_or_default()
    }
}
