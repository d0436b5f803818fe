//! What the store reports: each operation, by tenant and plugin, with its
//! outcome and the bytes it read and wrote. [`KvMetrics`] is what the
//! server's metrics implement; [`KvCounters`] keeps totals in memory (for
//! tests).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use super::KvError;

/// A store operation, as the plugin called it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    Open,
    Get,
    Set,
    Delete,
    Exists,
    ListKeys,
    Increment,
    GetMany,
    SetMany,
    DeleteMany,
}

impl Operation {
    /// How many there are (the last is the highest).
    pub const COUNT: usize = Self::DeleteMany as usize + 1;

    /// The interface's name for it, a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Get => "get",
            Self::Set => "set",
            Self::Delete => "delete",
            Self::Exists => "exists",
            Self::ListKeys => "list-keys",
            Self::Increment => "increment",
            Self::GetMany => "get-many",
            Self::SetMany => "set-many",
            Self::DeleteMany => "delete-many",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// `no-such-store` or `access-denied`.
    Denied,
    /// A limit of the tenant's refused it.
    Limit,
    Timeout,
    /// The store could not be reached, or failed.
    Unavailable,
    /// `increment` of a value that is not a counter.
    NotACounter,
}

impl Outcome {
    /// How many there are (the last is the highest).
    pub const COUNT: usize = Self::NotACounter as usize + 1;

    /// How `result` ended.
    pub fn of<T>(result: &Result<T, KvError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(KvError::NoSuchStore | KvError::AccessDenied) => Self::Denied,
            Err(KvError::Limit(_)) => Self::Limit,
            Err(KvError::Timeout) => Self::Timeout,
            Err(KvError::Unavailable(_)) => Self::Unavailable,
            Err(KvError::NotACounter(_)) => Self::NotACounter,
        }
    }

    /// A metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Limit => "limit",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::NotACounter => "not-a-counter",
        }
    }
}

/// Where the server's metrics take the store's operations.
pub trait KvMetrics: Send + Sync {
    /// What `tenant`'s `plugin` (its base name, before `@`, as state is
    /// kept) reports its operations to. Looked up when an instance is
    /// made, so that an operation costs a counter's increment, not a
    /// lookup of its labels.
    fn plugin(&self, tenant: &Arc<str>, plugin: &Arc<str>) -> Arc<dyn PluginKvMetrics>;
}

/// Told of every store operation of one tenant's plugin. Called on the
/// request's path: keep it to counter increments.
pub trait PluginKvMetrics: Send + Sync {
    /// `read` and `written` are the values' bytes (and keys', for
    /// `list-keys`) of an operation that succeeded, else 0.
    fn operation(&self, operation: Operation, outcome: Outcome, read: u64, written: u64);
}

/// Reports nothing.
pub struct NoKvMetrics;

impl KvMetrics for NoKvMetrics {
    fn plugin(&self, _: &Arc<str>, _: &Arc<str>) -> Arc<dyn PluginKvMetrics> {
        static NOTHING: LazyLock<Arc<NoKvMetrics>> = LazyLock::new(|| Arc::new(NoKvMetrics));
        NOTHING.clone()
    }
}

impl PluginKvMetrics for NoKvMetrics {
    fn operation(&self, _: Operation, _: Outcome, _: u64, _: u64) {}
}

/// Totals of one (tenant, plugin, operation, outcome).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: u64,
    pub read: u64,
    pub written: u64,
}

type TotalsByLabels = Mutex<HashMap<(String, String, Operation, Outcome), Totals>>;

/// Totals kept in memory.
#[derive(Default)]
pub struct KvCounters {
    totals: Arc<TotalsByLabels>,
}

impl KvCounters {
    /// The totals of `tenant`'s `plugin` for `operation` ending in `outcome`.
    pub fn get(&self, tenant: &str, plugin: &str, operation: Operation, outcome: Outcome) -> Totals {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.get(&(tenant.to_owned(), plugin.to_owned(), operation, outcome)).copied().unwrap_or_default()
    }
}

impl KvMetrics for KvCounters {
    fn plugin(&self, tenant: &Arc<str>, plugin: &Arc<str>) -> Arc<dyn PluginKvMetrics> {
        Arc::new(PluginCounters { totals: Arc::clone(&self.totals), tenant: tenant.to_string(), plugin: plugin.to_string() })
    }
}

/// One plugin's share of [`KvCounters`].
struct PluginCounters {
    totals: Arc<TotalsByLabels>,
    tenant: String,
    plugin: String,
}

impl PluginKvMetrics for PluginCounters {
    fn operation(&self, operation: Operation, outcome: Outcome, read: u64, written: u64) {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let entry = totals.entry((self.tenant.clone(), self.plugin.clone(), operation, outcome)).or_default();
        entry.count += 1;
        entry.read += read;
        entry.written += written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts size the server's table of kept counters.
    #[test]
    fn the_counts_cover_every_operation_and_outcome() {
        use Operation::*;
        use Outcome::*;
        let operations = [Open, Get, Set, Delete, Exists, ListKeys, Increment, GetMany, SetMany, DeleteMany];
        let outcomes = [Ok, Denied, Limit, Timeout, Unavailable, NotACounter];
        // Exhaustive: a new variant does not compile until it is listed above.
        for operation in operations {
            match operation {
                Open | Get | Set | Delete | Exists | ListKeys | Increment | GetMany | SetMany | DeleteMany => assert!((operation as usize) < Operation::COUNT),
            }
        }
        for outcome in outcomes {
            match outcome {
                Ok | Denied | Limit | Timeout | Unavailable | NotACounter => assert!((outcome as usize) < Outcome::COUNT),
            }
        }
        assert_eq!((operations.len(), outcomes.len()), (Operation::COUNT, Outcome::COUNT));
    }
}
