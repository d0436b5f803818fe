//! `[kv]`, `[tenants.NAME.kv]` and `[plugins.NAME] kv-buckets`, validated:
//! where plugins' state is kept (`wasi:keyvalue`), what each tenant may
//! store, and which buckets beyond `default` a plugin may open.
//!
//! ```toml
//! [kv]
//! url = "redis://127.0.0.1:6379"   # a Redis that a fleet shares (restart); --kv wins
//! sync = false                     # embedded store: fdatasync before a write returns (restart)
//! max-key-size = 256               # the defaults, for every tenant (reload)
//! max-value-size = "1 MiB"
//! max-keys = 100000
//! max-bytes = "64 MiB"
//! operations-per-request = 100
//!
//! [tenants.alpha.kv]               # this tenant's own, per key (reload)
//! max-keys = 1000
//!
//! [plugins.search]
//! kv-buckets = ["shared"]          # the host's key: buckets beyond `default` (reload)
//! ```
//!
//! What applies when: the limits and the bucket grants are read on every
//! reload (each request takes them from the settings in force); where the
//! state is kept — `url`, `sync`, and `--data-dir` — is fixed when the
//! store is opened, so a change takes effect at the next start (a reload
//! says so in the log).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use bytesize::ByteSize;

use super::file::{ConfigValue, KvFile, KvLimitsFile};
use crate::kv::{BucketGrants, DEFAULT_BUCKET, Durability, KvLimits, MAX_BUCKET_NAME, StoreConfig, default_data_dir, plugin_base};

/// The key of a `[plugins.NAME]` table that grants buckets: the host's,
/// never seen by the plugin through `config`.
pub const KV_BUCKETS_KEY: &str = "kv-buckets";

impl KvLimitsFile {
    /// `base` with what this table sets replaced; `table` names it in errors.
    pub(super) fn over(&self, base: KvLimits, table: &str) -> anyhow::Result<KvLimits> {
        let size = |key: &str, value: Option<ByteSize>, base: usize| -> anyhow::Result<usize> {
            match value {
                None => Ok(base),
                Some(v) => {
                    let bytes = usize::try_from(v.as_u64()).ok().filter(|&b| b > 0);
                    bytes.with_context(|| format!("{table} {key} must be more than 0 bytes (got {v})"))
                }
            }
        };
        let count = |key: &str, value: Option<u64>, base: u64| -> anyhow::Result<u64> {
            match value {
                None => Ok(base),
                Some(0) => anyhow::bail!("{table} {key} must be at least 1"),
                Some(n) => Ok(n),
            }
        };
        let limits = KvLimits {
            max_key: size("max-key-size", self.max_key_size, base.max_key)?,
            max_value: size("max-value-size", self.max_value_size, base.max_value)?,
            max_keys: count("max-keys", self.max_keys, base.max_keys)?,
            max_bytes: match self.max_bytes {
                None => base.max_bytes,
                Some(v) if v.as_u64() > 0 => v.as_u64(),
                Some(v) => anyhow::bail!("{table} max-bytes must be more than 0 bytes (got {v})"),
            },
            operations_per_request: u32::try_from(count("operations-per-request", self.operations_per_request.map(u64::from), base.operations_per_request.into())?)
                .unwrap_or(u32::MAX),
        };
        Ok(limits)
    }
}

/// `[kv]` and the bucket grants, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvSettings {
    /// `[kv] url`: a Redis instead of the embedded store. Read at
    /// start-up only (`--kv` overrides it).
    pub url: Option<String>,
    /// `[kv] sync`. Read at start-up only.
    pub sync: bool,
    /// Every tenant's limits unless its own say otherwise (each tenant's,
    /// merged, is `Tenant::kv_limits`).
    pub limits: KvLimits,
    /// `[plugins.NAME] kv-buckets`, by plugin name.
    buckets: BTreeMap<String, BucketGrants>,
}

impl KvSettings {
    /// The buckets beyond `default` plugin `name` may open: its own
    /// `kv-buckets`, or, for a variant (`search@fuzzy`) without its own,
    /// its base name's (the variant shares the base's state).
    pub fn buckets_for(&self, name: &str) -> BucketGrants {
        self.buckets.get(name).or_else(|| self.buckets.get(plugin_base(name))).cloned().unwrap_or_default()
    }

    /// Where the state is kept: `--kv` (`url_flag`) wins over `[kv] url`;
    /// without either, the embedded store in `data_dir` (`--data-dir`,
    /// `WASMUX_DATA_DIR`), else in `$XDG_DATA_HOME/wasmux` or
    /// `~/.local/share/wasmux`.
    pub fn store_config(&self, url_flag: Option<&str>, data_dir: Option<PathBuf>) -> anyhow::Result<StoreConfig> {
        if let Some(url) = url_flag.or(self.url.as_deref()) {
            check_url(url).with_context(|| if url_flag.is_some() { "--kv".to_owned() } else { "[kv] url".to_owned() })?;
            return Ok(StoreConfig::Redis { url: url.to_owned() });
        }
        let durability = if self.sync { Durability::Sync } else { Durability::Process };
        let dir = data_dir.or_else(|| default_data_dir(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME")));
        Ok(match dir {
            Some(dir) => StoreConfig::Embedded { dir, durability },
            None => StoreConfig::NoDataDir,
        })
    }
}

/// A Redis URL the client takes: `redis://HOST:PORT`, optionally `/DB`.
fn check_url(url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(url.starts_with("redis://") && url.len() > "redis://".len(), "{:?} is not a Redis URL: write redis://HOST:PORT", crate::kv::redacted_url(url));
    Ok(())
}

/// Validates `[kv]` and takes `kv-buckets` out of each `[plugins.NAME]`
/// table.
pub(super) fn kv_settings(file: KvFile, plugins: &mut BTreeMap<String, BTreeMap<String, ConfigValue>>) -> anyhow::Result<KvSettings> {
    if let Some(url) = &file.url {
        check_url(url).context("[kv] url")?;
    }
    let limits = file.limits.over(KvLimits::default(), "[kv]")?;
    let mut buckets = BTreeMap::new();
    for (name, values) in plugins.iter_mut() {
        let Some(value) = values.remove(KV_BUCKETS_KEY) else { continue };
        let ConfigValue::List(names) = value else {
            anyhow::bail!("[plugins.{name}] kv-buckets must be a list of bucket names, such as [\"shared\"] (it is the host's setting, not a value for the plugin)");
        };
        let mut granted = BTreeSet::new();
        for bucket in names {
            anyhow::ensure!(
                !bucket.is_empty() && bucket.len() <= MAX_BUCKET_NAME,
                "[plugins.{name}] kv-buckets: a bucket name is 1 to {MAX_BUCKET_NAME} bytes (got {bucket:?})"
            );
            if bucket != DEFAULT_BUCKET {
                granted.insert(bucket);
            }
        }
        buckets.insert(name.clone(), Arc::new(granted));
    }
    Ok(KvSettings { url: file.url, sync: file.sync, limits, buckets })
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;

    #[test]
    fn defaults_without_a_kv_table() {
        let settings = Settings::parse("").unwrap();
        assert_eq!(settings.kv, KvSettings::default());
        assert_eq!(settings.tenants.get("default").unwrap().kv_limits, KvLimits::default());
        assert!(settings.kv.buckets_for("search").is_empty());
    }

    #[test]
    fn server_limits_and_tenant_overrides() {
        let hash = crate::tenancy::TokenHash::of("a");
        let settings = Settings::parse(&format!(
            r#"
            [kv]
            max-key-size = 64
            max-value-size = "4 KiB"
            max-keys = 500
            max-bytes = "1 MiB"
            operations-per-request = 10

            [tenants.default]

            [tenants.alpha]
            token-sha256 = "{hash}"
            kv = {{ max-keys = 3, operations-per-request = 2 }}
            "#
        ))
        .unwrap();
        let server = KvLimits { max_key: 64, max_value: 4096, max_keys: 500, max_bytes: 1 << 20, operations_per_request: 10 };
        assert_eq!(settings.kv.limits, server);
        assert_eq!(settings.tenants.get("default").unwrap().kv_limits, server);
        let alpha = settings.tenants.get("alpha").unwrap().kv_limits;
        assert_eq!(alpha, KvLimits { max_keys: 3, operations_per_request: 2, ..server }, "the tenant's keys replace the server's, the others stay");
    }

    #[test]
    fn bucket_grants_are_the_hosts_key() {
        let settings = Settings::parse("[plugins.search]\nkv-buckets = [\"shared\", \"default\"]\ngreeting = \"hi\"\n").unwrap();
        assert_eq!(*settings.kv.buckets_for("search"), BTreeSet::from(["shared".to_owned()]));
        assert_eq!(*settings.kv.buckets_for("search@fuzzy"), BTreeSet::from(["shared".to_owned()]), "a variant without its own takes its base's");
        assert!(settings.kv.buckets_for("other").is_empty());
        let default = settings.tenants.get("default").unwrap();
        assert_eq!(default.config_for("search").get(KV_BUCKETS_KEY), None, "the plugin never sees it");
        assert_eq!(default.config_for("search").get("greeting").map(String::as_str), Some("hi"));

        let own = Settings::parse("[plugins.search]\nkv-buckets = [\"a\"]\n[plugins.\"search@fuzzy\"]\nkv-buckets = []\n").unwrap();
        assert!(own.kv.buckets_for("search@fuzzy").is_empty(), "a variant's own list wins");
    }

    #[test]
    fn mistakes_are_refused_naming_the_key() {
        for (text, error) in [
            ("[kv]\nurl = \"http://x\"\n", "not a Redis URL"),
            ("[kv]\nmax-keys = 0\n", "[kv] max-keys must be at least 1"),
            ("[kv]\nmax-value-size = 0\n", "[kv] max-value-size must be more than 0 bytes"),
            ("[kv]\noperations-per-request = 0\n", "[kv] operations-per-request must be at least 1"),
            ("[kv]\nsync = \"yes\"\n", "invalid type"),
            ("[kv]\nmax-key = 3\n", "unknown field `max-key`"),
            ("[plugins.p]\nkv-buckets = \"shared\"\n", "[plugins.p] kv-buckets must be a list"),
            ("[plugins.p]\nkv-buckets = [\"\"]\n", "a bucket name is 1 to 128 bytes"),
            ("[plugins.p]\nother = [\"a\"]\n", "[plugins.p] other: a list is only for kv-buckets"),
            ("[tenants.default]\nkv = { max-keys = 0 }\n", "[tenants.default.kv] max-keys must be at least 1"),
            ("[tenants.default]\nplugins.p = { kv-buckets = [\"a\"] }\n", "under [plugins.p]"),
        ] {
            let message = format!("{:#}", Settings::parse(text).unwrap_err());
            assert!(message.contains(error), "{text}: {message}");
        }
    }

    #[test]
    fn where_the_state_is_kept() {
        let settings = Settings::parse("[kv]\nurl = \"redis://127.0.0.1:6379\"\nsync = true\n").unwrap();
        assert_eq!(settings.kv.store_config(None, None).unwrap(), StoreConfig::Redis { url: "redis://127.0.0.1:6379".into() });
        assert_eq!(
            settings.kv.store_config(Some("redis://10.0.0.1:7000"), None).unwrap(),
            StoreConfig::Redis { url: "redis://10.0.0.1:7000".into() },
            "--kv wins over [kv] url"
        );
        let error = format!("{:#}", settings.kv.store_config(Some("10.0.0.1:7000"), None).unwrap_err());
        assert!(error.contains("--kv") && error.contains("redis://HOST:PORT"), "{error}");

        let embedded = Settings::parse("[kv]\nsync = true\n").unwrap();
        assert_eq!(
            embedded.kv.store_config(None, Some("/srv/wasmux".into())).unwrap(),
            StoreConfig::Embedded { dir: "/srv/wasmux".into(), durability: Durability::Sync }
        );
        let default = Settings::parse("").unwrap();
        assert!(matches!(
            default.kv.store_config(None, Some("/d".into())).unwrap(),
            StoreConfig::Embedded { durability: Durability::Process, .. }
        ));
    }
}
