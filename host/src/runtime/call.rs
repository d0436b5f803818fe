//! What one call is given: who is calling, the plugin's values, and the
//! limits it runs under.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::kv::{BucketGrants, KvLimits};
use crate::message::DEFAULT_MAX_CONTENT_LENGTH;

/// What the host may copy out of a guest at once beyond a response's
/// content: its content-type, encoding and header fields. A header is at
/// most 64 KiB on the wire, but each field costs the host more than its
/// bytes, so this leaves room for any header that can be sent.
const HEADER_FUEL: usize = 1 << 20;

/// Limits for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Wall-clock time the call may take, the wait for an instance slot
    /// and instantiation included.
    pub deadline: Duration,
    /// Linear memory the instance may grow to.
    pub memory: usize,
    /// Largest response content the plugin may return.
    pub max_response: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self { deadline: Duration::from_millis(100), memory: 64 << 20, max_response: DEFAULT_MAX_CONTENT_LENGTH }
    }
}

/// Who is calling, for the plugin's log lines and configuration, and
/// under which settings.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    pub tenant: Arc<str>,
    /// Values the plugin reads through the `config` import.
    pub config: Arc<BTreeMap<String, String>>,
    pub limits: CallLimits,
    /// How long an instance may serve (one request by default).
    pub reuse: Reuse,
    /// The settings' generation: an instance serves only requests under
    /// the settings it was made under.
    pub generation: u64,
    /// What the tenant may store and do in the key-value store (a plugin
    /// of the `stateful-handler` world).
    pub kv_limits: KvLimits,
    /// Buckets beyond `default` the plugin may open (`[plugins.NAME]
    /// kv-buckets`).
    pub kv_buckets: BucketGrants,
}

/// What the host may copy out of the guest at once under `limits`.
pub(super) fn hostcall_fuel(limits: CallLimits) -> usize {
    limits.max_response.saturating_add(HEADER_FUEL)
}

/// How long one instance may serve requests: the `reuse` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one instance serves before it is retired.
    pub requests: ReuseCount,
    /// An idle instance unused this long is retired.
    pub idle: Duration,
}

impl Reuse {
    /// One fresh instance per request: the default.
    pub const FRESH: Self = Self { requests: ReuseCount::Fixed(NonZeroU32::MIN), idle: Self::DEFAULT_IDLE };

    /// The idle time when a `reuse` setting names none (as `wasmtime serve`).
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(1);

    /// True when every instance serves one request only.
    pub fn is_fresh(&self) -> bool {
        self.requests == ReuseCount::Fixed(NonZeroU32::MIN)
    }
}

impl Default for Reuse {
    fn default() -> Self {
        Self::FRESH
    }
}

/// Requests per instance: a fixed count, or one drawn at random for each
/// instance, so that a plugin's author sees it fresh and reused in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReuseCount {
    Fixed(NonZeroU32),
    /// From the first to the second, both included.
    Between(NonZeroU32, NonZeroU32),
}
