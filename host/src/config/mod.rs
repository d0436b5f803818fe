//! Configuration: a TOML file ─▶ a validated, typed [`Settings`].
//!
//! Every key is optional; with no file at all, wasmux behaves as the guide's
//! server. The file may be reloaded while serving: a new [`Settings`] is
//! built and swapped in whole, or refused whole with the reason.
//!
//! An empty file is refused, at start-up and on reload, rather than read as
//! the built-in configuration: a file is empty for a moment while a writer
//! rewrites it in place, and the built-in configuration serves requests
//! without a token. For the same reason a reload without a `[tenants]`
//! section is refused while the running configuration requires a token
//! ([`Settings::check_reload_of`]).
//!
//! ```toml
//! [limits]
//! max-content-length = "8 MiB"   # larger messages are refused
//! message-timeout = "10s"        # to finish a message once it has begun
//! idle-timeout = "60s"           # between messages on a kept-alive connection
//! max-connections = 1024         # more wait in the listen backlog
//! max-buffered = "256 MiB"       # content all connections may be reading at once
//! plugin-deadline = "100ms"      # per plugin call
//! plugin-memory = "64 MiB"       # per plugin instance
//! max-response = "8 MiB"         # largest content a plugin may return
//! max-plugin-size = "64 MiB"     # larger plugin files are not read
//!
//! [routes]                       # replaces the guide's routes when present
//! "text/json" = "search"
//! "image/*" = "thumbnails"
//! "*" = "binary-echo"
//!
//! [plugins.search]               # read by the plugin with the `config` import
//! greeting = "hello"
//! wasi = false                   # the one key the host takes: refuse WASI to this plugin (start-up only)
//!
//! [tenants.default]              # requests without authorization
//!
//! [tenants.alpha]
//! token-sha256 = "…"             # `wasmux token` makes a token and its hash
//! limits = { concurrent-requests = 8, requests-per-second = 100, plugin-deadline = "50ms" }
//! routes."text/json" = { split = { "search" = 90, "search@fuzzy" = 10 }, sticky = "user" }
//! plugins."search@fuzzy" = { match = "prefix" }
//!
//! [tenants.alpha.routes."image/*".canary]   # a guarded canary (docs/tenants.md)
//! stable = "thumbnails"
//! candidate = "thumbnails@v2"
//! steps = [10, 50, 100]          # the candidate's share, percent, in order
//! step-after = "1m"              # least time at a step
//! min-requests = 100             # least candidate requests at a step
//! max-extra-error-rate = 0.01    # roll back when its error rate is worse by more
//! max-p99-ratio = 3.0            # roll back when its p99 is more than this times stable's
//! sticky = "user"                # optional: a user stays on one arm
//!
//! [admin]
//! token-sha256 = "…"             # the admin endpoint's bearer token
//!
//! [runtime]
//! spectre-hardening = true       # false: faster calls, for trusted plugins only (read at start-up)
//! cache-max-size = "1 GiB"       # compiled code kept on disk (read at start-up)
//! max-core-instances-per-plugin = 64   # the instance pool's shape: what one
//! max-memories-per-plugin = 2          # plugin instance may hold (the
//! max-tables-per-plugin = 4            # defaults fit Rust, Python and
//! max-table-elements = 100000          # JavaScript plugins; read at start-up)
//! reuse = { requests = 64, idle = "1s" }   # every plugin: an instance serves up to 64 requests
//!
//! [runtime.plugins."search@fuzzy"]  # one plugin's own: replaces the [runtime] reuse
//! reuse = { requests = "1..64" }    # a random count per instance, 1 to 64
//!
//! [source]                       # read at start-up only; --plugins overrides it
//! plugins = "oci://127.0.0.1:5000/wasmux"   # or a directory
//! poll-interval = "2s"
//!
//! [kv]                           # plugins' state (wasi:keyvalue), `kv.rs`
//! url = "redis://127.0.0.1:6379" # a Redis a fleet shares (start-up; --kv wins)
//! sync = false                   # embedded store: sync each write (start-up)
//! max-keys = 100000              # limits for every tenant (reloaded)
//!
//! [tenants.alpha.kv]             # a tenant's own limits, key by key
//! max-keys = 1000
//!
//! [plugins.counter]
//! kv-buckets = ["shared"]        # the host's key: buckets beyond `default`
//! ```
//!
//! How plugins are *run* (instance reuse) is set per plugin under
//! `[runtime.plugins.NAME]`, beside the server-wide `[runtime]`, and not in
//! `[plugins.NAME]`: those tables are the values a plugin reads through its
//! `config` import, any key allowed, so a `reuse` there would be the
//! plugin's business. It is per plugin, not per route, because an instance
//! belongs to one plugin version whichever route (or arm of a split) sent
//! the request, and because whether a plugin tolerates reuse is a property
//! of its code.

mod file;
mod kv;
mod limits;
mod runtime;


use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use crate::files::{self, Links};
use crate::router::{CanaryRoute, Routes, Split, Target};
use crate::tenancy::{ServerDefaults, TenantLimits, TenantSpec, Tenants, TokenHash};

pub use file::{
    AdminFile, ConfigFile, ConfigValue, KvFile, KvLimitsFile, LimitsFile, PluginRuntimeFile, RequestsFile, ReuseFile, RouteFile, RuntimeFile, SourceFile, SplitFile,
    TenantFile, TenantLimitsFile, WASI_KEY,
};
pub use kv::{KV_BUCKETS_KEY, KvSettings};
pub use limits::{DEFAULT_MAX_PLUGIN_SIZE, Limits};
use limits::validate_limits;

/// The longest time a setting may give: a year. Longer is surely a
/// mistake, and a deadline that far from now is past what the clock's
/// `Instant` can hold (every request or connection would fail).
pub const LONGEST: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 60 * 60);

/// A time given on the command line (`10s`, `1m 30s`, as `humantime`
/// reads it), at most [`LONGEST`].
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let value = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if value > LONGEST {
        return Err(format!("{text} is over a year, the longest time wasmux takes"));
    }
    Ok(value)
}

/// `value` of the setting `name`, if it is longer than 0 and at most
/// [`LONGEST`].
fn checked_duration(name: &str, value: std::time::Duration) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(!value.is_zero(), "{name} must be longer than 0");
    anyhow::ensure!(value <= LONGEST, "{name} must be at most a year (got {})", humantime::format_duration(value));
    Ok(value)
}
pub use runtime::{ReusePolicy, RuntimeConfig};
use runtime::runtime_config;

/// The largest configuration file read.
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// Everything a running server reads per request, validated.
#[derive(Debug)]
pub struct Settings {
    pub limits: Limits,
    /// How plugins are run.
    pub runtime: RuntimeConfig,
    /// Where plugins come from; read at start-up only.
    pub source: SourceFile,
    /// Plugins refused WASI (`[plugins.NAME] wasi = false`); read at
    /// start-up only.
    pub wasi_refused: BTreeSet<String>,
    /// Plugins' state: where it is kept (read at start-up only), the
    /// default limits, and the buckets granted to each plugin.
    pub kv: KvSettings,
    /// Each tenant with its routes, plugin settings and limits merged.
    pub tenants: Tenants,
    /// True when the file has no `[tenants]` section, so every request is
    /// the `default` tenant's without the file saying so.
    pub implicit_tenants: bool,
    /// The SHA-256 of the admin endpoint's bearer token.
    pub admin_token: Option<TokenHash>,
    /// The SHA-256 of the file's text, when read from a file: tells a
    /// watcher whether the file changed since.
    pub source_sha256: Option<[u8; 32]>,
    /// Different for every `Settings` built, increasing: a reused instance
    /// serves only requests under the settings it was made under (a
    /// plugin may keep what it read through `config` in a global).
    pub generation: u64,
}

/// The next [`Settings::generation`].
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

impl Settings {
    /// The built-in configuration: the guide's routes, default limits, and
    /// one `default` tenant.
    pub fn guide() -> Self {
        Self::from_file(ConfigFile::default()).unwrap_or_else(|e| unreachable!("the built-in configuration is valid: {e:#}"))
    }

    /// Every plugin some tenant's route points at.
    pub fn plugin_targets(&self) -> BTreeSet<&str> {
        self.tenants.iter().flat_map(|t| t.routes.targets()).collect()
    }

    /// The routes of every tenant, for the log.
    pub fn describe_routes(&self) -> String {
        let tenants: Vec<String> = self.tenants.iter().map(|t| format!("tenant {}: {}", t.name, t.routes)).collect();
        tenants.join("; ")
    }

    /// Reads and validates a configuration file; an empty one is refused.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::from_text(&read_text(path)?).with_context(|| format!("invalid configuration in {}", path.display()))
    }

    /// Validates the text of a configuration file (from [`read_text`]); an
    /// empty one is refused.
    pub fn from_text(text: &str) -> anyhow::Result<Self> {
        Self::from_text_with(text, |_| ())
    }

    /// [`Settings::from_text`], with `edit` applied to the file as parsed
    /// before it is validated: how a server adds settings it owns (`wasmux
    /// dev`, the source it serves) to the file's.
    pub fn from_text_with(text: &str, edit: impl FnOnce(&mut ConfigFile)) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !text.trim().is_empty(),
            "the file is empty. It is not read as the built-in configuration, which serves requests without a token: \
             a file is empty for a moment while it is rewritten in place. To run with the built-in configuration, \
             leave out --config, or write a comment in the file"
        );
        let mut file: ConfigFile = toml::from_str(text)?;
        edit(&mut file);
        let mut settings = Self::from_file(file)?;
        settings.source_sha256 = Some(Sha256::digest(text.as_bytes()).into());
        Ok(settings)
    }

    /// Refuses these settings as a reload of `running` if they would serve
    /// requests without a token where `running` requires one, without the
    /// file saying so: a file with no `[tenants]` section, such as a file
    /// cut short while being written. A file that means it says
    /// `[tenants.default]`.
    pub fn check_reload_of(&self, running: &Settings) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.implicit_tenants || running.tenants.has_default(),
            "it has no [tenants] section, so every request would be served without a token, where the running \
             configuration requires one (a file cut short while being written looks like this). To serve requests \
             without a token, say so with a [tenants.default] table"
        );
        Ok(())
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: ConfigFile = toml::from_str(text)?;
        Self::from_file(file)
    }

    pub fn from_file(file: ConfigFile) -> anyhow::Result<Self> {
        let limits = validate_limits(&file.limits)?;
        let routes = match file.routes {
            Some(table) => build_routes(table).context("in [routes]")?,
            None => Routes::guide(),
        };
        // The plugins named by settings tables, before the tables are
        // taken apart: each is checked against the routes below.
        let server_tables: Vec<String> = file.plugins.keys().cloned().collect();
        let runtime_tables: Vec<String> = file.runtime.plugins.keys().cloned().collect();
        let mut tenant_tables: Vec<(String, Vec<String>)> = Vec::new();
        let mut plugins = file.plugins;
        let wasi_refused = take_wasi_settings(&mut plugins)?;
        let kv = kv::kv_settings(file.kv, &mut plugins)?;
        let plugin_config = plugin_values(plugins)?;
        let server = ServerDefaults {
            routes: &routes,
            plugin_config: &plugin_config,
            plugin_deadline: limits.call.deadline,
            plugin_memory: limits.call.memory,
            max_concurrent_calls: limits.max_concurrent_calls,
            kv_limits: kv.limits,
        };
        let implicit_tenants = file.tenants.is_none();
        let tenants = match file.tenants {
            None => Tenants::only_default(&server)?,
            Some(tenants) => {
                let specs = tenants
                    .into_iter()
                    .map(|(name, tenant)| tenant_spec(&name, tenant, kv.limits).with_context(|| format!("in [tenants.{name}]")))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                tenant_tables = specs.iter().map(|spec| (spec.name.clone(), spec.plugin_config.keys().cloned().collect())).collect();
                Tenants::build(specs, &server)?
            }
        };
        let admin_token = match &file.admin.token_sha256 {
            Some(hex) => Some(TokenHash::from_hex(hex).context("[admin] token-sha256 must be 64 hex digits (see `wasmux token`)")?),
            None => None,
        };
        checked_duration("source.poll-interval", file.source.poll_interval)?;
        let runtime = runtime_config(file.runtime)?;
        // At warn, the default level: at each start and each reload.
        for warning in unrouted_plugin_settings(&tenants, &server_tables, &runtime_tables, &tenant_tables) {
            tracing::warn!("{warning}");
        }
        Ok(Self {
            limits,
            runtime,
            source: file.source,
            wasi_refused,
            kv,
            tenants,
            implicit_tenants,
            admin_token,
            source_sha256: None,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The most memory any tenant's plugin calls may use: what the instance
    /// pool is sized for.
    pub fn max_plugin_memory(&self) -> usize {
        self.tenants.iter().map(|t| t.plugin_memory).max().unwrap_or(self.limits.call.memory)
    }
}

/// The text of the configuration file at `path`: a regular file (a FIFO
/// or a device is not opened), at most [`MAX_CONFIG_SIZE`], in UTF-8.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = files::read_regular(path, MAX_CONFIG_SIZE, Links::Follow).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

fn build_routes(table: BTreeMap<String, RouteFile>) -> anyhow::Result<Routes> {
    let mut routes = Routes::default();
    for (pattern, target) in table {
        let target = match target {
            RouteFile::Plugin(name) => Target::plugin(&name),
            RouteFile::Split(SplitFile { split, sticky }) => {
                let arms = split.into_iter().map(|(name, weight)| (Arc::from(name), weight)).collect();
                Target::Split(Arc::new(Split::new(arms, sticky).with_context(|| format!("route \"{pattern}\""))?))
            }
            RouteFile::Canary(config) => {
                let canary = CanaryRoute::new(config, SystemTime::now()).with_context(|| format!("route \"{pattern}\": canary"))?;
                Target::Canary(Arc::new(canary))
            }
        };
        routes.add(&pattern, target)?;
    }
    Ok(routes)
}

/// A line for each settings table of a plugin that no route names:
/// `[plugins.NAME]` and `[runtime.plugins.NAME]` against every tenant's
/// routes, a tenant's own `[tenants.T.plugins.NAME]` against that tenant's.
/// Such a table applies to nothing, and is most likely a misspelt name,
/// which would leave the plugin meant with the defaults: `wasi = false`
/// under `[plugins.serch]` leaves `search` free to import WASI.
fn unrouted_plugin_settings(tenants: &Tenants, server: &[String], runtime: &[String], own: &[(String, Vec<String>)]) -> Vec<String> {
    fn listed(names: &BTreeSet<&str>) -> String {
        if names.is_empty() { "no plugin".to_owned() } else { names.iter().copied().collect::<Vec<_>>().join(", ") }
    }
    let routed: BTreeSet<&str> = tenants.iter().flat_map(|t| t.routes.targets()).collect();
    let (whose, they) = match tenants.iter().map(|t| &*t.name).collect::<Vec<_>>().as_slice() {
        [only] => (format!("tenant {only}'s routes"), "its routes"),
        _ => ("the routes of any tenant".to_owned(), "the routes"),
    };
    let mut warnings = Vec::new();
    for (table, names) in [("plugins", server), ("runtime.plugins", runtime)] {
        for name in names.iter().filter(|name| !routed.contains(name.as_str())) {
            warnings.push(format!(
                "[{table}.{}]: none of {whose} use plugin {name}, so these settings apply to nothing (is the name misspelt?); {they} use {}",
                toml_key(name),
                listed(&routed)
            ));
        }
    }
    for (tenant, names) in own {
        let Some(routes) = tenants.get(tenant).map(|t| &t.routes) else { continue };
        let its: BTreeSet<&str> = routes.targets().collect();
        for name in names.iter().filter(|name| !its.contains(name.as_str())) {
            warnings.push(format!(
                "[tenants.{}.plugins.{}]: none of tenant {tenant}'s routes use plugin {name}, so these settings apply to nothing (is the name misspelt?); its routes use {}",
                toml_key(tenant),
                toml_key(name),
                listed(&its)
            ));
        }
    }
    warnings
}

/// `name` as a TOML key: bare when it can be, else quoted (`"search@fuzzy"`).
fn toml_key(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') { name.to_owned() } else { format!("{name:?}") }
}

/// Takes `wasi` out of each `[plugins.NAME]` table; returns the plugins
/// that may not import WASI.
fn take_wasi_settings(plugins: &mut BTreeMap<String, BTreeMap<String, ConfigValue>>) -> anyhow::Result<BTreeSet<String>> {
    let mut refused = BTreeSet::new();
    for (name, values) in plugins.iter_mut() {
        match values.remove(WASI_KEY) {
            None | Some(ConfigValue::Boolean(true)) => {}
            Some(ConfigValue::Boolean(false)) => {
                refused.insert(name.clone());
            }
            Some(_) => anyhow::bail!("[plugins.{name}] wasi must be true or false (it is the host's setting, not a value for the plugin)"),
        }
    }
    Ok(refused)
}

/// The values each plugin reads through `config`; a list (which only the
/// host's `kv-buckets` may be) is refused.
fn plugin_values(plugins: BTreeMap<String, BTreeMap<String, ConfigValue>>) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    plugins
        .into_iter()
        .map(|(name, values)| {
            let values = values
                .into_iter()
                .map(|(key, value)| match value.into_string() {
                    Some(text) => Ok((key, text)),
                    None => anyhow::bail!("[plugins.{name}] {key}: a list is only for {KV_BUCKETS_KEY}; a plugin's value is a string, number or boolean"),
                })
                .collect::<anyhow::Result<_>>()?;
            Ok((name, values))
        })
        .collect()
}

fn tenant_spec(name: &str, file: TenantFile, kv_limits: crate::kv::KvLimits) -> anyhow::Result<TenantSpec> {
    let token = match &file.token_sha256 {
        Some(hex) => Some(TokenHash::from_hex(hex).context("token-sha256 must be 64 hex digits (see `wasmux token`)")?),
        None => None,
    };
    let positive = |key: &str, value: Option<u32>| -> anyhow::Result<Option<NonZeroU32>> {
        value.map(|v| NonZeroU32::new(v).with_context(|| format!("limits.{key} must be at least 1"))).transpose()
    };
    let limits = &file.limits;
    if let Some(deadline) = limits.plugin_deadline {
        checked_duration("limits.plugin-deadline", deadline)?;
    }
    let plugin_memory = match limits.plugin_memory {
        Some(memory) => {
            let bytes = usize::try_from(memory.as_u64()).unwrap_or(usize::MAX);
            anyhow::ensure!(bytes >= 64 * 1024, "limits.plugin-memory must be at least 64 KiB, one WebAssembly page");
            Some(bytes)
        }
        None => None,
    };
    if let Some(plugin) = file.plugins.iter().find_map(|(plugin, values)| values.contains_key(WASI_KEY).then_some(plugin)) {
        anyhow::bail!("plugins.\"{plugin}\".wasi: whether a plugin may import WASI is decided for the whole server, under [plugins.{plugin}]");
    }
    if let Some(plugin) = file.plugins.iter().find_map(|(plugin, values)| values.contains_key(KV_BUCKETS_KEY).then_some(plugin)) {
        anyhow::bail!(
            "plugins.\"{plugin}\".{KV_BUCKETS_KEY}: which buckets a plugin may open is decided for the whole server (its state is the tenant's either way), under [plugins.{plugin}]"
        );
    }
    let kv_limits = file.kv.over(kv_limits, &format!("[tenants.{name}.kv]"))?;
    Ok(TenantSpec {
        name: name.to_owned(),
        token,
        routes: build_routes(file.routes).context("in routes")?,
        plugin_config: plugin_values(file.plugins)?,
        limits: TenantLimits {
            concurrent_requests: positive("concurrent-requests", limits.concurrent_requests)?,
            requests_per_second: positive("requests-per-second", limits.requests_per_second)?,
            burst: positive("burst", limits.burst)?,
        },
        plugin_deadline: limits.plugin_deadline,
        plugin_memory,
        kv_limits: Some(kv_limits),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::{AllocatorLimits, Reuse, ReuseCount};

    fn plugin_for(settings: &Settings, tenant: &str, content_type: &str) -> Option<String> {
        let header = crate::message::Message::new(content_type, "binary", Vec::new()).header;
        let tenant = settings.tenants.get(tenant)?;
        tenant.routes.resolve(content_type).map(|r| r.pick(&header).to_string())
    }

    #[test]
    fn no_keys_is_the_guide() {
        let settings = Settings::parse("").unwrap();
        let default = settings.tenants.get("default").unwrap();
        assert_eq!(default.routes, Routes::guide());
        assert_eq!(settings.limits, Limits::default());
        assert!(settings.tenants.has_default());
        assert_eq!(default.limits, TenantLimits::default(), "a lone default tenant has the whole server");
        assert_eq!(Settings::from_text("# the built-in configuration\n").unwrap().limits, Limits::default());
    }

    /// The defaults the user guide gives, read from it: the `[limits]` of
    /// "Every setting" (docs/configuration.md) and the default column of
    /// its table of limits are exactly what a file without keys means. A
    /// default changed in the code but not in the guide, or the other way
    /// round, fails here.
    #[test]
    fn the_defaults_the_guide_gives_are_the_defaults() {
        let guide = include_str!("../../../docs/configuration.md");
        let defaults = Settings::parse("").unwrap().limits;

        let every_setting = guide.split("```toml\n").find(|block| block.starts_with("[limits]\n")).expect("the guide's [limits] block");
        let limits_block = every_setting.split("\n\n").next().expect("the [limits] lines");
        let keys = limits_block.lines().filter(|line| line.contains(" = ")).count();
        assert_eq!(keys, 10, "every limit is in the guide's block:\n{limits_block}");
        assert_eq!(Settings::parse(limits_block).unwrap().limits, defaults, "the guide's block:\n{limits_block}");

        // | `message-timeout` | 10 s | … : each default, as TOML.
        let mut table = String::from("[limits]\n");
        for row in guide.lines().filter(|line| line.starts_with("| `")) {
            let cells: Vec<&str> = row.split(" | ").collect();
            let (Some(key), Some(default)) = (cells[0].strip_prefix("| `").and_then(|k| k.strip_suffix('`')), cells.get(1)) else { continue };
            let value = match default.parse::<u64>() {
                Ok(number) => number.to_string(),
                // "10 s", "100 ms" are durations as the file writes them.
                Err(_) if default.ends_with(" s") || default.ends_with(" ms") => format!("\"{}\"", default.replace(' ', "")),
                Err(_) => format!("\"{default}\""),
            };
            table.push_str(&format!("{key} = {value}\n"));
        }
        assert_eq!(table.lines().count(), 11, "a row for every limit:\n{table}");
        assert_eq!(Settings::parse(&table).unwrap().limits, defaults, "the guide's table:\n{table}");

        // The [runtime] keys the block gives with their defaults ("see
        // below" and "least recently used" are its comments).
        let runtime = every_setting.split("[runtime]\n").nth(1).expect("the guide's [runtime] lines");
        let keys = ["spectre-hardening", "cache-max-size", "max-core-instances-per-plugin", "max-memories-per-plugin", "max-tables-per-plugin", "max-table-elements"];
        let documented: String = runtime.lines().filter(|line| keys.iter().any(|key| line.starts_with(&format!("{key} ")))).map(|line| format!("{line}\n")).collect();
        assert_eq!(documented.lines().count(), keys.len(), "{runtime}");
        assert_eq!(Settings::parse(&format!("[runtime]\n{documented}")).unwrap().runtime, Settings::parse("").unwrap().runtime, "{documented}");
    }

    #[test]
    fn an_empty_file_is_refused() {
        for text in ["", " \n\t\n"] {
            let error = format!("{:#}", Settings::from_text(text).unwrap_err());
            assert!(error.contains("the file is empty"), "{error}");
        }
    }

    /// Beside several tenants, a server-wide table is checked against all
    /// their routes (a plugin only one tenant routes to is used), and a
    /// tenant's own table against that tenant's.
    #[test]
    fn settings_for_plugins_no_route_names_are_found_per_table() {
        let hash = TokenHash::of("alpha-token");
        let settings = Settings::parse(&format!(
            "[tenants.default]\n[tenants.alpha]\ntoken-sha256 = \"{hash}\"\nroutes = {{ \"a/b\" = \"search@fuzzy\" }}\n[tenants.alpha.plugins.search]\nx = 1\n[tenants.default.plugins.\"search@fuzzy\"]\nx = 1\n"
        ))
        .unwrap();
        let server = ["search@fuzzy".to_owned(), "serch".to_owned()];
        let own = [("alpha".to_owned(), vec!["search".to_owned()]), ("default".to_owned(), vec!["search@fuzzy".to_owned()])];
        assert_eq!(
            unrouted_plugin_settings(&settings.tenants, &server, &[], &own),
            [
                "[plugins.serch]: none of the routes of any tenant use plugin serch, so these settings apply to nothing (is the name misspelt?); the routes use binary-echo, search, search@fuzzy",
                "[tenants.default.plugins.\"search@fuzzy\"]: none of tenant default's routes use plugin search@fuzzy, so these settings apply to nothing (is the name misspelt?); its routes use binary-echo, search",
            ]
        );
    }

    #[test]
    fn a_reload_may_not_drop_token_authentication_by_omission() {
        let hash = TokenHash::of("alpha-token");
        let running = Settings::parse(&format!("[tenants.alpha]\ntoken-sha256 = \"{hash}\"\n")).unwrap();
        let cut_short = Settings::parse("[limits]\nplugin-deadline = \"1s\"\n").unwrap();
        let error = format!("{:#}", cut_short.check_reload_of(&running).unwrap_err());
        assert!(error.contains("no [tenants] section"), "{error}");
        let explicit = Settings::parse("[tenants.default]\n").unwrap();
        explicit.check_reload_of(&running).expect("said explicitly");
        let open = Settings::guide();
        cut_short.check_reload_of(&open).expect("the running configuration required no token either");
    }

    #[test]
    fn the_default_tenant_gets_half_the_calls_beside_other_tenants() {
        let hash = TokenHash::of("alpha-token");
        let settings = Settings::parse(&format!(
            "[limits]\nmax-concurrent-calls = 10\n[tenants.default]\n[tenants.alpha]\ntoken-sha256 = \"{hash}\"\n"
        ))
        .unwrap();
        let default = settings.tenants.get("default").unwrap();
        assert_eq!(default.limits.concurrent_requests.map(NonZeroU32::get), Some(5));
        assert_eq!(settings.tenants.get("alpha").unwrap().limits, TenantLimits::default());
        let settings = Settings::parse(&format!(
            "[tenants.default]\nlimits = {{ concurrent-requests = 9 }}\n[tenants.alpha]\ntoken-sha256 = \"{hash}\"\n"
        ))
        .unwrap();
        let default = settings.tenants.get("default").unwrap();
        assert_eq!(default.limits.concurrent_requests.map(NonZeroU32::get), Some(9), "configured limits win");
        let alone = Settings::parse("[tenants.default]\n").unwrap();
        assert_eq!(alone.tenants.get("default").unwrap().limits, TenantLimits::default());
    }

    #[test]
    fn full_file() {
        let settings = Settings::parse(
            r#"
            [limits]
            max-content-length = "1 MiB"
            message-timeout = "2s"
            idle-timeout = "5m"
            max-connections = 10
            plugin-deadline = "50ms"
            plugin-memory = "16 MiB"
            max-response = 4096

            [routes]
            "text/json" = "search"
            "image/*" = "thumbs"

            [plugins.search]
            greeting = "hi"
            limit = 3
            "#,
        )
        .unwrap();
        assert_eq!(settings.limits.max_content_length, 1 << 20);
        assert_eq!(settings.limits.message_timeout, Duration::from_secs(2));
        assert_eq!(settings.limits.idle_timeout, Duration::from_secs(300));
        assert_eq!(settings.limits.call.deadline, Duration::from_millis(50));
        assert_eq!(settings.limits.call.memory, 16 << 20);
        assert_eq!(settings.limits.call.max_response, 4096);
        assert_eq!(plugin_for(&settings, "default", "image/png").as_deref(), Some("thumbs"));
        assert_eq!(plugin_for(&settings, "default", "binary/x"), None);
        let default = settings.tenants.get("default").unwrap();
        assert_eq!(default.config_for("search").get("limit").map(String::as_str), Some("3"));
        assert!(default.config_for("other").is_empty());
    }

    #[test]
    fn tenants_splits_and_limits() {
        let hash = TokenHash::of("alpha-token");
        let settings = Settings::parse(&format!(
            r#"
            [plugins."search@fuzzy"]
            match = "prefix"

            [tenants.default]

            [tenants.alpha]
            token-sha256 = "{hash}"
            limits = {{ concurrent-requests = 4, requests-per-second = 50, plugin-deadline = "20ms", plugin-memory = "8 MiB" }}
            routes."text/json" = {{ split = {{ "search" = 1, "search@fuzzy" = 1 }}, sticky = "user" }}
            plugins."search@fuzzy" = {{ match = "case-insensitive" }}
            "#
        ))
        .unwrap();
        let alpha = settings.tenants.get("alpha").unwrap();
        assert_eq!(alpha.plugin_deadline, Duration::from_millis(20));
        assert_eq!(alpha.plugin_memory, 8 << 20);
        assert_eq!(alpha.limits.concurrent_requests.map(|n| n.get()), Some(4));
        assert_eq!(alpha.config_for("search@fuzzy")["match"], "case-insensitive");
        assert_eq!(settings.tenants.get("default").unwrap().config_for("search@fuzzy")["match"], "prefix");
        assert_eq!(
            alpha.routes.resolve("text/json").map(|r| r.target.to_string()).as_deref(),
            Some("split [search 1, search@fuzzy 1] sticky on user")
        );
        assert_eq!(settings.plugin_targets(), BTreeSet::from(["binary-echo", "search", "search@fuzzy"]));
        assert_eq!(settings.max_plugin_memory(), 64 << 20);
    }

    #[test]
    fn canaries_on_the_servers_routes_and_a_tenants() {
        let canary = "stable = \"search\"\ncandidate = \"search@fuzzy\"\nsteps = [10, 50, 100]\nstep-after = \"1s\"\nmin-requests = 20\nmax-extra-error-rate = 0.01\nmax-p99-ratio = 3.0\n";
        let settings = Settings::parse(&format!(
            "[routes.\"text/json\".canary]\n{canary}\n[routes]\n\"*\" = \"binary-echo\"\n\
             [tenants.default]\n[tenants.alpha]\ntoken-sha256 = \"{}\"\n[tenants.alpha.routes.\"text/plain\".canary]\n{canary}sticky = \"user\"\n",
            TokenHash::of("alpha-token")
        ))
        .unwrap();
        let default = settings.tenants.get("default").unwrap();
        let alpha = settings.tenants.get("alpha").unwrap();
        let describe = |tenant: &crate::tenancy::Tenant, ty: &str| tenant.routes.resolve(ty).map(|r| r.target.to_string());
        assert_eq!(describe(default, "text/json").as_deref(), Some("canary search -> search@fuzzy steps [10, 50, 100]"));
        assert_eq!(describe(alpha, "text/json").as_deref(), Some("canary search -> search@fuzzy steps [10, 50, 100]"));
        assert_eq!(describe(alpha, "text/plain").as_deref(), Some("canary search -> search@fuzzy steps [10, 50, 100] sticky on user"));
        assert_eq!(alpha.routes.canaries().count(), 2);
        assert_eq!(settings.plugin_targets(), BTreeSet::from(["binary-echo", "search", "search@fuzzy"]));

        for (table, error) in [
            (format!("[routes.\"a/b\".canary]\n{canary}steps = [10]\n"), "duplicate key"),
            (canary.replace("steps = [10, 50, 100]", "steps = [50, 10, 100]"), "steps must rise"),
            (canary.replace("max-p99-ratio = 3.0", "max-p99-ratio = 0.5"), "max-p99-ratio must be"),
            (canary.replace("min-requests = 20", "min-request = 20"), "unknown field `min-request`"),
            (canary.replace("step-after = \"1s\"", "step-after = \"soon\""), "step-after"),
        ] {
            let text = if table.starts_with('[') { table.clone() } else { format!("[routes.\"a/b\".canary]\n{table}") };
            let message = format!("{:#}", Settings::parse(&text).unwrap_err());
            assert!(message.contains(error), "{text}: {message}");
        }
        let message = format!("{:#}", Settings::parse(&format!("[routes.\"a/b\"]\nsticky = \"user\"\n[routes.\"a/b\".canary]\n{canary}")).unwrap_err());
        assert!(message.contains("a canary's sticky field goes inside its table"), "{message}");
        let message = format!("{:#}", Settings::parse("[routes.\"a/b\"]\nsticky = \"user\"\n").unwrap_err());
        assert!(message.contains("needs `split` or `canary`"), "{message}");
        let message = format!("{:#}", Settings::parse("[routes]\n\"a/b\" = { split = { a = 1 }, spilt = 2 }\n").unwrap_err());
        assert!(message.contains("unknown field `spilt`") && message.contains("line 2"), "{message}");
    }

    #[test]
    fn tenant_mistakes_name_the_tenant() {
        let error = format!("{:#}", Settings::parse("[tenants.alpha]\ntoken-sha256 = \"12\"\n").unwrap_err());
        assert!(error.contains("[tenants.alpha]") && error.contains("64 hex digits"), "{error}");
        let error = format!("{:#}", Settings::parse("[tenants.alpha]\nlimits = { requests-per-second = 0 }\n").unwrap_err());
        assert!(error.contains("requests-per-second must be at least 1"), "{error}");
        let error = format!("{:#}", Settings::parse("[routes]\n\"*\" = { split = { a = 0 } }\n").unwrap_err());
        assert!(error.contains("weight above 0"), "{error}");
        let error = format!("{:#}", Settings::parse("[routes]\n\"*\" = 3\n").unwrap_err());
        assert!(error.contains("a plugin name, or { split"), "{error}");
    }

    #[test]
    fn reuse_for_every_plugin_and_per_plugin() {
        let settings = Settings::parse(
            r#"
            [runtime]
            reuse = { requests = 64, idle = "250ms" }
            [runtime.plugins."search@fuzzy"]
            reuse = { requests = "1..8" }
            [runtime.plugins.counter]
            reuse = { requests = 1 }
            "#,
        )
        .unwrap();
        let reuse = &settings.runtime.reuse;
        let n = |n| NonZeroU32::new(n).unwrap();
        assert_eq!(reuse.for_plugin("search"), Reuse { requests: ReuseCount::Fixed(n(64)), idle: Duration::from_millis(250) });
        assert_eq!(reuse.for_plugin("search@fuzzy"), Reuse { requests: ReuseCount::Between(n(1), n(8)), idle: Reuse::DEFAULT_IDLE });
        assert!(reuse.for_plugin("counter").is_fresh());
        assert!(Settings::parse("").unwrap().runtime.reuse.for_plugin("search").is_fresh(), "reuse is opt-in");
        assert!(settings.generation < Settings::parse("").unwrap().generation, "each Settings built has a newer generation");
    }

    #[test]
    fn reuse_mistakes_are_refused() {
        for (runtime, error) in [
            ("reuse = { requests = 0 }", "requests must be at least 1"),
            ("reuse = { requests = \"5..2\" }", "the low end is above the high end"),
            ("reuse = { requests = \"1-64\" }", "write a range as \"LOW..HIGH\""),
            ("reuse = { requests = \"0..4\" }", "requests must be at least 1"),
            ("reuse = { requests = 4, idle = \"0s\" }", "idle must be longer than 0"),
            ("reuse = { idle = \"1s\" }", "missing field `requests`"),
            ("reuse = { requests = -1 }", "a number of requests (at least 1), or a range"),
            ("[runtime.plugins.x]\nreuse = { requests = 0 }", "[runtime.plugins.\"x\"] reuse"),
            ("[runtime.plugins.x]\nrequests = 3", "unknown field `requests`"),
        ] {
            let error_text = format!("{:#}", Settings::parse(&format!("[runtime]\n{runtime}\n")).unwrap_err());
            assert!(error_text.contains(error), "{runtime}: {error_text}");
        }
    }

    #[test]
    fn wasi_is_the_hosts_key() {
        let settings = Settings::parse("[plugins.py]\nwasi = false\ngreeting = \"hi\"\n[plugins.js]\nwasi = true\n").unwrap();
        assert_eq!(settings.wasi_refused, BTreeSet::from(["py".to_owned()]));
        let default = settings.tenants.get("default").unwrap();
        assert_eq!(default.config_for("py").get("greeting").map(String::as_str), Some("hi"));
        assert_eq!(default.config_for("py").get("wasi"), None);
        assert_eq!(default.config_for("js").get("wasi"), None);
        let error = format!("{:#}", Settings::parse("[plugins.py]\nwasi = \"no\"\n").unwrap_err());
        assert!(error.contains("[plugins.py] wasi must be true or false"), "{error}");
        let error = format!("{:#}", Settings::parse("[tenants.a]\nplugins.py = { wasi = false }\n").unwrap_err());
        assert!(error.contains("under [plugins.py]"), "{error}");
    }

    #[test]
    fn allocator_limits_from_the_runtime_table() {
        let settings = Settings::parse("[runtime]\nmax-core-instances-per-plugin = 40\nmax-table-elements = 7\n").unwrap();
        let pool = settings.runtime.allocator_limits();
        assert_eq!((pool.core_instances, pool.memories, pool.tables, pool.table_elements), (40, 2, 4, 7));
        assert_eq!(Settings::guide().runtime.allocator_limits(), AllocatorLimits::default());
        let error = format!("{:#}", Settings::parse("[runtime]\nmax-tables-per-plugin = 0\n").unwrap_err());
        assert!(error.contains("runtime.max-tables-per-plugin must be at least 1"), "{error}");
    }

    #[test]
    fn errors_name_the_line() {
        let error = format!("{:#}", Settings::parse("[routes]\n\"text/json\" = \n").unwrap_err());
        assert!(error.contains("line 2"), "{error}");
        let error = format!("{:#}", Settings::parse("[limits]\nplugin-deadline = \"soon\"\n").unwrap_err());
        assert!(error.contains("line 2"), "{error}");
        let error = format!("{:#}", Settings::parse("[limit]\n").unwrap_err());
        assert!(error.contains("unknown field `limit`"), "{error}");
        let error = format!("{:#}", Settings::parse("[routes]\n\"*/x\" = \"a\"\n").unwrap_err());
        assert!(error.contains("a pattern is a media type"), "{error}");
        let error = format!("{:#}", Settings::parse("[limits]\nplugin-deadline = \"0s\"\n").unwrap_err());
        assert!(error.contains("plugin-deadline must be longer than 0"), "{error}");
    }

    /// A time so long that a deadline from now overflows the clock made
    /// every request (or connection) panic: it is refused instead.
    #[test]
    fn a_time_over_a_year_is_refused() {
        let tenant = "[tenants.alpha]\ntoken-sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n[tenants.alpha.limits]\n";
        for (config, name) in [
            ("[limits]\nplugin-deadline = \"300000000000y\"\n".to_owned(), "limits.plugin-deadline"),
            ("[limits]\nmessage-timeout = \"366days\"\n".to_owned(), "limits.message-timeout"),
            ("[limits]\nidle-timeout = \"300000000000y\"\n".to_owned(), "limits.idle-timeout"),
            (format!("{tenant}plugin-deadline = \"2y\"\n"), "limits.plugin-deadline"),
            ("[source]\npoll-interval = \"300000000000y\"\n".to_owned(), "source.poll-interval"),
            ("[runtime]\nreuse = { requests = 4, idle = \"300000000000y\" }\n".to_owned(), "idle"),
        ] {
            let error = format!("{:#}", Settings::parse(&config).unwrap_err());
            assert!(error.contains(&format!("{name} must be at most a year")), "{config}: {error}");
        }
        let settings = Settings::parse("[limits]\nidle-timeout = \"365days\"\n").unwrap();
        assert_eq!(settings.limits.idle_timeout, LONGEST);
        assert_eq!(parse_duration("365days"), Ok(LONGEST));
        assert_eq!(parse_duration("366days").unwrap_err(), "366days is over a year, the longest time wasmux takes");
        assert!(parse_duration("soon").is_err());
    }
}
