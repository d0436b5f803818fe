//! Instances and their lifetimes: a fresh instance per request (the
//! default), or bounded reuse.
//!
//! Every live instance, busy or idle, holds one permit of the pool's
//! semaphore, sized like wasmtime's pooling allocator
//! (`max-concurrent-calls`), because it holds a component slot, its
//! memories, tables and a fiber stack. A request that finds no permit free
//! retires the idle instance unused the longest (`evicted`) before it waits.
//!
//! With reuse, a request's own task takes an idle instance out of the pool,
//! so an instance serves one request at a time, and puts it back after a
//! clean answer. Instances are kept apart by [`ReuseKey`]: one loaded plugin
//! version, one tenant, one generation of the settings. So nothing a request
//! leaves in a guest's globals reaches another tenant, another version of
//! the plugin, or a request served under other settings.
//!
//! An instance is retired (dropped, its slot returned to wasmtime's pool) on
//! a trap, a deadline, the memory limit, a bad response, invalid data or
//! any other host error, a request dropped in the middle of its call, its
//! request count, `idle` unused, a hot swap or unload of its version, a
//! reload of the settings, eviction, and shutdown: see [`Retirement`].
//! Nothing is retired while the pool's lock is held: dropping an instance
//! resets its memory, which takes microseconds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use wasmtime::Store;

use super::call::{Reuse, ReuseCount};
use super::error::PluginError;
use super::state::CallState;
use wasmux_bindings::Handler;

/// Why an instance was retired: the `cause` label of
/// `wasmux_instances_retired_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retirement {
    /// It served its count of requests (1 without reuse).
    Count,
    /// It was not used for its `idle` time.
    Idle,
    /// The guest trapped (a panic, an abort, an invalid operation).
    Trap,
    /// The call ran past its deadline.
    Timeout,
    /// The guest asked for more memory than its limit.
    Memory,
    /// The guest answered something the host will not send.
    BadResponse,
    /// The host could not read what the guest handed it, or instantiating
    /// or calling failed otherwise.
    HostError,
    /// The request was dropped in the middle of its call (its connection
    /// or the server went away).
    Dropped,
    /// Its plugin version was swapped out or unloaded.
    Swap,
    /// The settings were reloaded (its tenant's limits or plugin values may
    /// have changed).
    Reload,
    /// It was idle and its slot was wanted by another request.
    Evicted,
    /// The server is stopping.
    Shutdown,
}

impl Retirement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Idle => "idle",
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::BadResponse => "bad-response",
            Self::HostError => "host-error",
            Self::Dropped => "dropped",
            Self::Swap => "swap",
            Self::Reload => "reload",
            Self::Evicted => "evicted",
            Self::Shutdown => "shutdown",
        }
    }

    /// Why a call's outcome ends its instance; `None` when the guest
    /// returned normally (a handler error is an answer) and the instance
    /// may serve again.
    pub(super) fn after<T>(result: &Result<T, PluginError>) -> Option<Self> {
        match result {
            Ok(_) | Err(PluginError::Handler(_)) => None,
            Err(PluginError::Trap(_)) => Some(Self::Trap),
            Err(PluginError::Timeout(_)) => Some(Self::Timeout),
            Err(PluginError::OutOfMemory { .. }) => Some(Self::Memory),
            Err(PluginError::BadResponse(_)) => Some(Self::BadResponse),
            Err(PluginError::InvalidData(_) | PluginError::TooMuchData { .. } | PluginError::Instantiate(_)) => Some(Self::HostError),
            Err(PluginError::ShuttingDown) => Some(Self::Shutdown),
            // Comes from the wait for a slot, before there is an instance;
            // listed so that a new error must be placed here.
            Err(PluginError::NoSlot(_)) => Some(Self::HostError),
        }
    }
}

/// Told when instances are created and retired (the metrics listen).
pub trait InstanceEvents: Send + Sync {
    fn created(&self, plugin: &Arc<str>);
    /// `served`: the requests it answered (or began) in its life.
    fn retired(&self, plugin: &Arc<str>, cause: Retirement, served: u32);
}

/// For a runtime nobody watches.
pub struct Unobserved;

impl InstanceEvents for Unobserved {
    fn created(&self, _plugin: &Arc<str>) {}
    fn retired(&self, _plugin: &Arc<str>, _cause: Retirement, _served: u32) {}
}

/// Which idle instances a request may take: those of its loaded plugin
/// version, its tenant, and the settings it runs under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ReuseKey {
    /// One load of one plugin version ([`Instances::register_load`]): two
    /// names serving the same bytes, or a version swapped out and back in,
    /// are different loads.
    pub load: u64,
    pub tenant: Arc<str>,
    pub generation: u64,
}

/// A live instance and what it has done.
pub(super) struct Instance {
    pub store: Store<CallState>,
    pub handler: Handler,
    /// Requests it has served (counted as each ends).
    served: u32,
    /// Requests it may serve.
    limit: u32,
    idle: Duration,
    /// Its share of the pool, given back after the store (fields drop in
    /// order), so that a request waiting for a slot finds wasmtime's slot
    /// free too.
    _permit: OwnedSemaphorePermit,
}

impl Instance {
    fn plugin(&self) -> &Arc<str> {
        &self.store.data().log.plugin
    }
}

/// An instance in the pool, waiting for a request.
struct IdleInstance {
    instance: Instance,
    last_used: Instant,
}

impl IdleInstance {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_used) >= self.instance.idle
    }
}

#[derive(Default)]
struct PoolState {
    /// Most recently used last.
    idle: HashMap<ReuseKey, Vec<IdleInstance>>,
    /// Loads swapped out or unloaded whose handler still exists (calls in
    /// flight finish on it): their instances are not kept.
    retired_loads: HashSet<u64>,
    /// Instances of settings generations below this are not kept.
    oldest_generation: u64,
    /// Set at shutdown: nothing is kept.
    closed: bool,
}

impl PoolState {
    /// Takes out every idle instance of the keys `matches` picks.
    fn take_keys(&mut self, matches: impl Fn(&ReuseKey) -> bool) -> Vec<IdleInstance> {
        let keys: Vec<ReuseKey> = self.idle.keys().filter(|k| matches(k)).cloned().collect();
        keys.into_iter().filter_map(|k| self.idle.remove(&k)).flatten().collect()
    }

    /// Why an instance of `key` may not go back to the pool, if it may not.
    fn refuses(&self, key: &ReuseKey) -> Option<Retirement> {
        if self.closed {
            Some(Retirement::Shutdown)
        } else if self.retired_loads.contains(&key.load) {
            Some(Retirement::Swap)
        } else if key.generation < self.oldest_generation {
            Some(Retirement::Reload)
        } else {
            None
        }
    }
}

/// The instances of every plugin, and the permits they hold.
pub(super) struct Instances {
    slots: Arc<Semaphore>,
    state: Mutex<PoolState>,
    /// Requests waiting for a permit. While any wait, an instance finishing
    /// its call is retired rather than kept idle on a permit they need.
    waiting: AtomicUsize,
    next_load: AtomicU64,
    /// State of the generator drawing random request counts.
    random: AtomicU64,
    events: Arc<dyn InstanceEvents>,
}

impl Instances {
    pub fn new(slots: usize, events: Arc<dyn InstanceEvents>) -> Self {
        // Only for drawing request counts: a fixed seed is a fallback, not a flaw.
        let seed = getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15);
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            state: Mutex::default(),
            waiting: AtomicUsize::new(0),
            next_load: AtomicU64::new(1),
            random: AtomicU64::new(seed),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new identity for a loaded plugin version.
    pub fn register_load(&self) -> u64 {
        self.next_load.fetch_add(1, Ordering::Relaxed)
    }

    /// An idle instance of `key` that has not outlived its idle time, most
    /// recently used first (its memory is warm in the caches).
    pub fn take(&self, key: &ReuseKey) -> Option<Lease<'_>> {
        let now = Instant::now();
        let (found, expired) = {
            let mut state = self.lock();
            let list = state.idle.get_mut(key)?;
            match list.pop() {
                // One idle time per key: if the newest has expired, so have all.
                Some(newest) if newest.expired(now) => {
                    let mut expired = std::mem::take(list);
                    expired.push(newest);
                    (None, expired)
                }
                newest => (newest, Vec::new()),
            }
        };
        self.retire_all(expired, Retirement::Idle);
        found.map(|idle| Lease { pool: self, key: key.clone(), instance: Some(idle.instance) })
    }

    /// A permit for a new instance. When none is free, the idle instance
    /// unused the longest is retired to make room; when none is idle, this
    /// waits for a call to end.
    pub async fn permit(&self) -> Result<OwnedSemaphorePermit, PluginError> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(permit);
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        // Announced before looking at the idle instances: an instance put
        // back after this look sees the waiter and is retired instead.
        loop {
            match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(permit) => return Ok(permit),
                Err(TryAcquireError::Closed) => return Err(PluginError::ShuttingDown),
                Err(TryAcquireError::NoPermits) => {}
            }
            if !self.evict_least_recently_used() {
                break;
            }
        }
        Arc::clone(&self.slots).acquire_owned().await.map_err(|_| PluginError::ShuttingDown)
    }

    /// A lease on a new instance, which will serve at most `limit` requests.
    pub fn lease(&self, key: ReuseKey, store: Store<CallState>, handler: Handler, reuse: Reuse, permit: OwnedSemaphorePermit) -> Lease<'_> {
        let limit = self.draw(reuse.requests);
        let instance = Instance { store, handler, served: 0, limit, idle: reuse.idle, _permit: permit };
        self.events.created(instance.plugin());
        Lease { pool: self, key, instance: Some(instance) }
    }

    fn draw(&self, count: ReuseCount) -> u32 {
        match count {
            ReuseCount::Fixed(n) => n.get(),
            ReuseCount::Between(low, high) => {
                let (low, high) = (low.get(), high.get().max(low.get()));
                let span = u64::from(high - low) + 1;
                low + (self.next_random() % span) as u32
            }
        }
    }

    /// splitmix64: plenty for spreading request counts.
    fn next_random(&self) -> u64 {
        let mut z = self.random.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Puts `instance` back for the next request of `key`, or retires it.
    fn give_back(&self, key: ReuseKey, instance: Instance) {
        if instance.served >= instance.limit {
            return self.retire(instance, Retirement::Count);
        }
        let refused = {
            let mut state = self.lock();
            let refused = state.refuses(&key).or_else(|| (self.waiting.load(Ordering::Relaxed) > 0).then_some(Retirement::Evicted));
            match refused {
                Some(cause) => Some((instance, cause)),
                None => {
                    state.idle.entry(key).or_default().push(IdleInstance { instance, last_used: Instant::now() });
                    None
                }
            }
        };
        if let Some((instance, cause)) = refused {
            self.retire(instance, cause);
        }
    }

    fn retire(&self, instance: Instance, cause: Retirement) {
        self.events.retired(instance.plugin(), cause, instance.served);
        drop(instance);
    }

    fn retire_all(&self, idle: Vec<IdleInstance>, cause: Retirement) {
        for idle in idle {
            self.retire(idle.instance, cause);
        }
    }

    /// Retires the idle instance unused the longest; false if none is idle.
    fn evict_least_recently_used(&self) -> bool {
        let victim = {
            let mut state = self.lock();
            let oldest = state
                .idle
                .iter()
                .filter_map(|(key, list)| list.first().map(|idle| (idle.last_used, key)))
                .min_by_key(|(last_used, _)| *last_used)
                .map(|(_, key)| key.clone());
            oldest.and_then(|key| {
                let list = state.idle.get_mut(&key)?;
                let victim = list.remove(0);
                if list.is_empty() {
                    state.idle.remove(&key);
                }
                Some(victim)
            })
        };
        match victim {
            Some(idle) => {
                self.retire(idle.instance, Retirement::Evicted);
                true
            }
            None => false,
        }
    }

    /// Retires the instances idle for longer than their idle time (the
    /// epoch ticker calls this now and then; a request also finds them
    /// expired when it looks).
    pub fn retire_expired(&self) {
        let now = Instant::now();
        let expired: Vec<IdleInstance> = {
            let mut state = self.lock();
            let mut expired = Vec::new();
            state.idle.retain(|_, list| {
                // Oldest first: the expired ones are at the front.
                let keep_from = list.iter().position(|idle| !idle.expired(now)).unwrap_or(list.len());
                expired.extend(list.drain(..keep_from));
                !list.is_empty()
            });
            expired
        };
        self.retire_all(expired, Retirement::Idle);
    }

    /// At a hot swap or unload: the idle instances of `load` are retired,
    /// and those of its calls in flight will be when they end.
    pub fn retire_load(&self, load: u64) {
        let idle = {
            let mut state = self.lock();
            state.retired_loads.insert(load);
            state.take_keys(|key| key.load == load)
        };
        self.retire_all(idle, Retirement::Swap);
    }

    /// When the handler of `load` is gone: nothing of it can be in flight.
    pub fn forget_load(&self, load: u64) {
        let idle = {
            let mut state = self.lock();
            state.retired_loads.remove(&load);
            state.take_keys(|key| key.load == load)
        };
        self.retire_all(idle, Retirement::Swap);
    }

    /// At a reload of the settings: instances of older generations are
    /// retired, idle or when their call ends.
    pub fn retire_generations_before(&self, generation: u64) {
        let idle = {
            let mut state = self.lock();
            state.oldest_generation = state.oldest_generation.max(generation);
            state.take_keys(|key| key.generation < generation)
        };
        self.retire_all(idle, Retirement::Reload);
    }

    /// At shutdown: every idle instance is retired, and no other is kept.
    pub fn close(&self) {
        let idle = {
            let mut state = self.lock();
            state.closed = true;
            state.take_keys(|_| true)
        };
        self.retire_all(idle, Retirement::Shutdown);
    }
}

/// Decrements the waiting count when a wait for a permit ends, however it ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request's hold on one instance. [`Lease::end`] gives it back or
/// retires it; a lease dropped before that (the request's future was
/// dropped mid-call) retires it as `dropped`.
pub(super) struct Lease<'a> {
    pool: &'a Instances,
    key: ReuseKey,
    /// `None` once ended.
    instance: Option<Instance>,
}

impl Lease<'_> {
    /// The instance the request runs on.
    pub fn instance(&mut self) -> &mut Instance {
        // Only `end` and `drop` take it out, and both consume the lease.
        self.instance.as_mut().expect("a lease holds its instance until it ends")
    }

    /// Ends the request: `cause` retires the instance; `None` (a clean
    /// answer) puts it back if it may serve again.
    pub fn end(mut self, cause: Option<Retirement>) {
        let Some(mut instance) = self.instance.take() else { return };
        instance.served += 1;
        match cause {
            Some(cause) => self.pool.retire(instance, cause),
            None => self.pool.give_back(self.key.clone(), instance),
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(mut instance) = self.instance.take() {
            instance.served += 1;
            self.pool.retire(instance, Retirement::Dropped);
        }
    }
}
