//! `[limits]`, validated: what a connection, a message and a plugin call
//! may use.

use std::time::Duration;

use anyhow::Context as _;
use bytesize::ByteSize;

use super::file::LimitsFile;
use crate::message::DEFAULT_MAX_CONTENT_LENGTH;
use crate::runtime::CallLimits;

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
    /// The content all connections may be reading at once (messages of
    /// up to 64 KiB do not count); past it, connections wait before
    /// reading more. Read at start-up only.
    pub max_buffered: usize,
    /// Plugin calls in flight at once; sizes the instance pool. Read at
    /// start-up only.
    pub max_concurrent_calls: u32,
    /// Limits for each plugin call.
    pub call: CallLimits,
    /// Largest plugin file read; a larger one is refused unread.
    pub max_plugin_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_length: DEFAULT_MAX_CONTENT_LENGTH,
            message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_buffered: 256 << 20,
            max_concurrent_calls: 256,
            call: CallLimits::default(),
            max_plugin_size: DEFAULT_MAX_PLUGIN_SIZE,
        }
    }
}

/// The default of `max-plugin-size`: room for components that carry a
/// language runtime (a Python component is about 30.5 MiB, a JavaScript
/// one 11.5 MiB).
pub const DEFAULT_MAX_PLUGIN_SIZE: u64 = 64 << 20;

impl Default for LimitsFile {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_content_length: ByteSize::b(limits.max_content_length as u64),
            message_timeout: limits.message_timeout,
            idle_timeout: limits.idle_timeout,
            max_connections: limits.max_connections,
            max_buffered: ByteSize::b(limits.max_buffered as u64),
            max_concurrent_calls: limits.max_concurrent_calls,
            plugin_deadline: limits.call.deadline,
            plugin_memory: ByteSize::b(limits.call.memory as u64),
            max_response: ByteSize::b(limits.call.max_response as u64),
            max_plugin_size: ByteSize::b(limits.max_plugin_size),
        }
    }
}

pub(super) fn validate_limits(file: &LimitsFile) -> anyhow::Result<Limits> {
    let size = |name: &str, value: ByteSize| -> anyhow::Result<usize> {
        let bytes = usize::try_from(value.as_u64()).ok().filter(|&b| b > 0);
        bytes.with_context(|| format!("limits.{name} must be more than 0 bytes (got {value})"))
    };
    let time = |name: &str, value: Duration| super::checked_duration(&format!("limits.{name}"), value);
    anyhow::ensure!(file.max_connections > 0, "limits.max-connections must be at least 1");
    anyhow::ensure!(file.max_concurrent_calls > 0, "limits.max-concurrent-calls must be at least 1");
    let memory = size("plugin-memory", file.plugin_memory)?;
    let max_plugin_size = size("max-plugin-size", file.max_plugin_size)? as u64;
    anyhow::ensure!(memory >= 64 * 1024, "limits.plugin-memory must be at least 64 KiB, one WebAssembly page");
    let max_content_length = size("max-content-length", file.max_content_length)?;
    let max_buffered = size("max-buffered", file.max_buffered)?;
    anyhow::ensure!(
        max_buffered >= max_content_length,
        "limits.max-buffered ({}) must be at least limits.max-content-length ({})",
        file.max_buffered,
        file.max_content_length
    );
    Ok(Limits {
        max_content_length,
        message_timeout: time("message-timeout", file.message_timeout)?,
        idle_timeout: time("idle-timeout", file.idle_timeout)?,
        max_connections: file.max_connections,
        max_buffered,
        max_concurrent_calls: file.max_concurrent_calls,
        call: CallLimits {
            deadline: time("plugin-deadline", file.plugin_deadline)?,
            memory,
            max_response: size("max-response", file.max_response)?,
        },
        max_plugin_size,
    })
}
