//! Configuration: a TOML file ─▶ a validated, typed [`Settings`].
//!
//! Every key is optional; with no file at all, wasmux behaves as the guide's
//! server. The file may be reloaded while serving: a new [`Settings`] is
//! built and swapped in whole, or refused whole with the reason.
//!
//! ```toml
//! [limits]
//! max-content-length = "8 MiB"   # larger messages are refused
//! message-timeout = "10s"        # to finish a message once it has begun
//! idle-timeout = "60s"           # between messages on a kept-alive connection
//! max-connections = 1024         # more wait in the listen backlog
//! plugin-deadline = "100ms"      # per plugin call
//! plugin-memory = "64 MiB"       # per plugin instance
//! max-response = "8 MiB"         # largest content a plugin may return
//!
//! [routes]                       # replaces the guide's routes when present
//! "text/json" = "search"
//! "image/*" = "thumbnails"
//! "*" = "binary-echo"
//!
//! [plugins.search]               # read by the plugin with the `config` import
//! greeting = "hello"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytesize::ByteSize;
use serde::Deserialize;

use crate::codec::DEFAULT_MAX_CONTENT_LENGTH;
use crate::router::Routes;
use crate::runtime::CallLimits;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    #[serde(default)]
    pub limits: LimitsFile,
    /// `pattern = "plugin"`; when present, replaces the guide's routes.
    pub routes: Option<BTreeMap<String, String>>,
    /// `[plugins.NAME]` tables of values for each plugin.
    #[serde(default)]
    pub plugins: BTreeMap<String, BTreeMap<String, ConfigValue>>,
}

/// A plugin configuration value: the plugin reads it as a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

impl ConfigValue {
    fn into_string(self) -> String {
        match self {
            Self::String(s) => s,
            Self::Integer(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Boolean(b) => b.to_string(),
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
    pub max_concurrent_calls: u32,
    #[serde(with = "humantime_serde")]
    pub plugin_deadline: Duration,
    pub plugin_memory: ByteSize,
    pub max_response: ByteSize,
}

impl Default for LimitsFile {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_content_length: ByteSize::b(limits.max_content_length as u64),
            message_timeout: limits.message_timeout,
            idle_timeout: limits.idle_timeout,
            max_connections: limits.max_connections,
            max_concurrent_calls: limits.max_concurrent_calls,
            plugin_deadline: limits.call.deadline,
            plugin_memory: ByteSize::b(limits.call.memory as u64),
            max_response: ByteSize::b(limits.call.max_response as u64),
        }
    }
}

/// The server's limits, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `content-length` accepted.
    pub max_content_length: usize,
    /// Time to finish a message once its first byte has arrived.
    pub message_timeout: Duration,
    /// Time a connection may sit idle between messages.
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    /// Read at start-up only.
    pub max_connections: usize,
    /// Plugin calls in flight at once; sizes the instance pool. Read at
    /// start-up only.
    pub max_concurrent_calls: u32,
    /// Limits for each plugin call.
    pub call: CallLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_length: DEFAULT_MAX_CONTENT_LENGTH,
            message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_concurrent_calls: 256,
            call: CallLimits::default(),
        }
    }
}

/// Everything a running server reads per request, validated.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub limits: Limits,
    pub routes: Routes,
    /// Configuration values per plugin name.
    pub plugin_config: HashMap<String, Arc<BTreeMap<String, String>>>,
}

impl Settings {
    /// The built-in configuration: the guide's routes and default limits.
    pub fn guide() -> Self {
        Self { routes: Routes::guide(), ..Self::default() }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid configuration in {}", path.display()))
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: ConfigFile = toml::from_str(text)?;
        Self::from_file(file)
    }

    pub fn from_file(file: ConfigFile) -> anyhow::Result<Self> {
        let limits = validate_limits(&file.limits)?;
        let routes = match &file.routes {
            Some(table) => Routes::new(table)?,
            None => Routes::guide(),
        };
        let plugin_config = file
            .plugins
            .into_iter()
            .map(|(name, values)| {
                let values = values.into_iter().map(|(k, v)| (k, v.into_string())).collect();
                (name, Arc::new(values))
            })
            .collect();
        Ok(Self { limits, routes, plugin_config })
    }

    /// The values plugin `name` reads through its `config` import.
    pub fn config_for(&self, name: &str) -> Arc<BTreeMap<String, String>> {
        self.plugin_config.get(name).cloned().unwrap_or_default()
    }
}

fn validate_limits(file: &LimitsFile) -> anyhow::Result<Limits> {
    let size = |name: &str, value: ByteSize| -> anyhow::Result<usize> {
        let bytes = usize::try_from(value.as_u64()).ok().filter(|&b| b > 0);
        bytes.with_context(|| format!("limits.{name} must be more than 0 bytes (got {value})"))
    };
    let time = |name: &str, value: Duration| -> anyhow::Result<Duration> {
        anyhow::ensure!(!value.is_zero(), "limits.{name} must be longer than 0");
        Ok(value)
    };
    anyhow::ensure!(file.max_connections > 0, "limits.max-connections must be at least 1");
    anyhow::ensure!(file.max_concurrent_calls > 0, "limits.max-concurrent-calls must be at least 1");
    let memory = size("plugin-memory", file.plugin_memory)?;
    anyhow::ensure!(memory >= 64 * 1024, "limits.plugin-memory must be at least 64 KiB, one WebAssembly page");
    Ok(Limits {
        max_content_length: size("max-content-length", file.max_content_length)?,
        message_timeout: time("message-timeout", file.message_timeout)?,
        idle_timeout: time("idle-timeout", file.idle_timeout)?,
        max_connections: file.max_connections,
        max_concurrent_calls: file.max_concurrent_calls,
        call: CallLimits {
            deadline: time("plugin-deadline", file.plugin_deadline)?,
            memory,
            max_response: size("max-response", file.max_response)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_guide() {
        let settings = Settings::parse("").unwrap();
        assert_eq!(settings.routes, Routes::guide());
        assert_eq!(settings.limits, Limits::default());
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
        assert_eq!(settings.routes.resolve("image/png"), Some("thumbs"));
        assert_eq!(settings.routes.resolve("binary/x"), None);
        assert_eq!(settings.config_for("search").get("limit").map(String::as_str), Some("3"));
        assert!(settings.config_for("other").is_empty());
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
}
