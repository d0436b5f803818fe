//! What the store reports: each operation, by tenant and plugin, with its
//! outcome and the bytes it read and wrote. [`KvMetrics`] is what the
//! server's metrics implement; [`KvCounters`] keeps totals in memory (for
//! tests, and for a page that shows them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// Told of every store operation. Called on the request's path: keep it
/// to counter increments.
pub trait KvMetrics: Send + Sync {
    /// `plugin` is the base name (before `@`), as state is kept. `read`
    /// and `written` are the values' bytes (and keys', for `list-keys`)
    /// of an operation that succeeded, else 0. The names are shared
    /// strings, so that a metric label costs a reference count, not an
    /// allocation.
    fn operation(&self, tenant: &Arc<str>, plugin: &Arc<str>, operation: Operation, outcome: Outcome, read: u64, written: u64);
}

/// Reports nothing.
pub struct NoKvMetrics;

impl KvMetrics for NoKvMetrics {
    fn operation(&self, _: &Arc<str>, _: &Arc<str>, _: Operation, _: Outcome, _: u64, _: u64) {}
}

/// Totals of one (tenant, plugin, operation, outcome).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: u64,
    pub read: u64,
    pub written: u64,
}

/// Totals kept in memory.
#[derive(Default)]
pub struct KvCounters {
    totals: Mutex<HashMap<(String, String, Operation, Outcome), Totals>>,
}

impl KvCounters {
    /// The totals of `tenant`'s `plugin` for `operation` ending in `outcome`.
    pub fn get(&self, tenant: &str, plugin: &str, operation: Operation, outcome: Outcome) -> Totals {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.get(&(tenant.to_owned(), plugin.to_owned(), operation, outcome)).copied().unwrap_or_default()
    }
}

impl KvMetrics for KvCounters {
    fn operation(&self, tenant: &Arc<str>, plugin: &Arc<str>, operation: Operation, outcome: Outcome, read: u64, written: u64) {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let entry = totals.entry((tenant.to_string(), plugin.to_string(), operation, outcome)).or_default();
        entry.count += 1;
        entry.read += read;
        entry.written += written;
    }
}
