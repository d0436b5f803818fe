//! The configuration file as written: the TOML's tables and keys, each
//! optional, with their defaults. [`super::Settings`] validates them.

use std::collections::BTreeMap;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::experiments::canary::CanaryConfig;
use crate::runtime::{AllocatorLimits, DEFAULT_CACHE_MAX_SIZE};

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    #[serde(default)]
    pub limits: LimitsFile,
    /// `pattern = "plugin"` or a split; when present, replaces the guide's routes.
    pub routes: Option<BTreeMap<String, RouteFile>>,
    /// `[plugins.NAME]` tables of values for each plugin.
    #[serde(default)]
    pub plugins: BTreeMap<String, BTreeMap<String, ConfigValue>>,
    /// `[tenants.NAME]`; without any, every request is the `default` tenant's.
    pub tenants: Option<BTreeMap<String, TenantFile>>,
    #[serde(default)]
    pub runtime: RuntimeFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub source: SourceFile,
    /// `[kv]`: plugins' state (`config/kv.rs`).
    #[serde(default)]
    pub kv: KvFile,
}

/// `[source]`: where the plugins come from. Read at start-up only;
/// `--plugins` and `--poll-interval` override it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SourceFile {
    /// A directory of `NAME.wasm` files, or `oci://REGISTRY/REPO`.
    pub plugins: Option<String>,
    /// How often an OCI registry is asked for new versions.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for SourceFile {
    fn default() -> Self {
        Self { plugins: None, poll_interval: Duration::from_secs(2) }
    }
}

/// `[runtime]`: how plugins are run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RuntimeFile {
    /// wasmtime's Spectre hardening of memory bounds checks (on by default).
    /// Read at start-up only.
    pub spectre_hardening: bool,
    /// The most the compiled-code cache directory may hold.
    pub cache_max_size: ByteSize,
    /// Core instances one plugin instance may hold (a Python plugin has 14).
    pub max_core_instances_per_plugin: u32,
    /// Linear memories one plugin instance may hold.
    pub max_memories_per_plugin: u32,
    /// Tables one plugin instance may hold.
    pub max_tables_per_plugin: u32,
    /// Elements one table may start with or grow to.
    pub max_table_elements: u32,
    /// Instance reuse for every plugin; without it, a fresh instance per
    /// request.
    pub reuse: Option<ReuseFile>,
    /// `[runtime.plugins.NAME]`: one plugin's own settings.
    pub plugins: BTreeMap<String, PluginRuntimeFile>,
}

impl Default for RuntimeFile {
    fn default() -> Self {
        let pool = AllocatorLimits::default();
        Self {
            spectre_hardening: true,
            cache_max_size: ByteSize::b(DEFAULT_CACHE_MAX_SIZE),
            max_core_instances_per_plugin: pool.core_instances,
            max_memories_per_plugin: pool.memories,
            max_tables_per_plugin: pool.tables,
            max_table_elements: u32::try_from(pool.table_elements).unwrap_or(u32::MAX),
            reuse: None,
            plugins: BTreeMap::new(),
        }
    }
}

/// The key of a `[plugins.NAME]` table the host takes for itself: the
/// plugin never sees it through `config`.
pub const WASI_KEY: &str = "wasi";

/// `[admin]`: the admin endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminFile {
    /// Hex SHA-256 of the bearer token the admin endpoint asks for.
    pub token_sha256: Option<String>,
}

/// `[runtime.plugins.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginRuntimeFile {
    /// Replaces `[runtime] reuse` for this plugin.
    pub reuse: Option<ReuseFile>,
}

/// `reuse = { requests = N, idle = "1s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReuseFile {
    /// Requests an instance serves: a number (1 is a fresh instance per
    /// request), or `"LOW..HIGH"`, a random count per instance.
    pub requests: RequestsFile,
    /// How long an idle instance is kept (default 1 s).
    #[serde(default, with = "humantime_serde")]
    pub idle: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a number of requests (at least 1), or a range \"LOW..HIGH\" such as \"1..64\"")]
pub enum RequestsFile {
    Count(u32),
    Range(String),
}

/// A route's target as written: a plugin name, a split, or a canary.
#[derive(Debug)]
pub enum RouteFile {
    Plugin(String),
    Split(SplitFile),
    /// `[routes."TYPE".canary]`.
    Canary(CanaryConfig),
}

const ROUTE_EXPECTED: &str =
    "a plugin name, or { split = { PLUGIN = WEIGHT, … }, sticky = \"FIELD\" }, or a canary table ([routes.\"TYPE\".canary] with stable, candidate, steps, …)";

impl<'de> Deserialize<'de> for RouteFile {
    /// A string is a plugin; a table is told by its keys, so that a
    /// mistake inside a split or a canary is reported as such, with its
    /// line (an untagged enum would say only that nothing matched).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RouteFile;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(ROUTE_EXPECTED)
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<RouteFile, E> {
                Ok(RouteFile::Plugin(name.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RouteFile, A::Error> {
                use serde::de::Error as _;
                let table = RouteTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                match table {
                    RouteTable { split: Some(split), sticky, canary: None } => Ok(RouteFile::Split(SplitFile { split, sticky })),
                    RouteTable { split: None, sticky: None, canary: Some(canary) } => Ok(RouteFile::Canary(canary)),
                    RouteTable { split: None, sticky: Some(_), canary: Some(_) } => {
                        Err(A::Error::custom("a canary's sticky field goes inside its table: [routes.\"TYPE\".canary] sticky = \"FIELD\""))
                    }
                    RouteTable { split: Some(_), canary: Some(_), .. } => Err(A::Error::custom("a route is a split or a canary, not both")),
                    RouteTable { split: None, canary: None, .. } => Err(A::Error::custom(format!("a route's table needs `split` or `canary`: {ROUTE_EXPECTED}"))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A route's table, before it is told a split from a canary.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteTable {
    split: Option<BTreeMap<String, u32>>,
    sticky: Option<String>,
    canary: Option<CanaryConfig>,
}

#[derive(Debug)]
pub struct SplitFile {
    /// Plugin name ─▶ weight.
    pub split: BTreeMap<String, u32>,
    /// A header field whose value keeps a sender on one arm.
    pub sticky: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TenantFile {
    /// Hex SHA-256 of the tenant's bearer token.
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteFile>,
    #[serde(default)]
    pub plugins: BTreeMap<String, BTreeMap<String, ConfigValue>>,
    #[serde(default)]
    pub limits: TenantLimitsFile,
    /// `[tenants.NAME.kv]`: this tenant's key-value limits, each replacing
    /// the `[kv]` one.
    #[serde(default)]
    pub kv: KvLimitsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TenantLimitsFile {
    pub concurrent_requests: Option<u32>,
    pub requests_per_second: Option<u32>,
    pub burst: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub plugin_deadline: Option<Duration>,
    pub plugin_memory: Option<ByteSize>,
}

/// `[kv]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KvFile {
    /// `redis://HOST:PORT` (optionally `/DB`): keep the state in this
    /// Redis instead of the embedded store.
    pub url: Option<String>,
    /// The embedded store syncs each write to the disk before it returns.
    #[serde(default)]
    pub sync: bool,
    /// Every tenant's limits, unless its own `[tenants.NAME.kv]` says
    /// otherwise.
    #[serde(flatten)]
    pub limits: KvLimitsFile,
}

/// The limits of `[kv]` and `[tenants.NAME.kv]`, each optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KvLimitsFile {
    pub max_key_size: Option<ByteSize>,
    pub max_value_size: Option<ByteSize>,
    pub max_keys: Option<u64>,
    pub max_bytes: Option<ByteSize>,
    pub operations_per_request: Option<u32>,
}

/// A plugin configuration value: the plugin reads it as a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Only for the host's `kv-buckets`: a plugin's values are single.
    List(Vec<String>),
}

impl ConfigValue {
    /// The value as the plugin reads it; `None` for a list.
    pub(super) fn into_string(self) -> Option<String> {
        match self {
            Self::String(s) => Some(s),
            Self::Integer(i) => Some(i.to_string()),
            Self::Float(f) => Some(f.to_string()),
            Self::Boolean(b) => Some(b.to_string()),
            Self::List(_) => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LimitsFile {
    pub max_content_length: ByteSize,
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_buffered: ByteSize,
    pub max_concurrent_calls: u32,
    #[serde(with = "humantime_serde")]
    pub plugin_deadline: Duration,
    pub plugin_memory: ByteSize,
    pub max_response: ByteSize,
    pub max_plugin_size: ByteSize,
}
