//! `[runtime]` and `[runtime.plugins.NAME]`, validated: the pooling
//! allocator's shape and how long each plugin's instances serve.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use anyhow::Context as _;
use bytesize::ByteSize;

use super::file::{RequestsFile, ReuseFile, RuntimeFile};
use crate::runtime::{AllocatorLimits, Reuse, ReuseCount};

impl RuntimeFile {
    /// The instance pool's shape these settings ask for.
    pub fn allocator_limits(&self) -> AllocatorLimits {
        AllocatorLimits {
            core_instances: self.max_core_instances_per_plugin,
            memories: self.max_memories_per_plugin,
            tables: self.max_tables_per_plugin,
            table_elements: self.max_table_elements as usize,
        }
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.cache_max_size.as_u64() > 0, "runtime.cache-max-size must be more than 0 bytes; use --no-cache to keep no code on disk");
        for (key, value) in [
            ("max-core-instances-per-plugin", self.max_core_instances_per_plugin),
            ("max-memories-per-plugin", self.max_memories_per_plugin),
            ("max-tables-per-plugin", self.max_tables_per_plugin),
            ("max-table-elements", self.max_table_elements),
        ] {
            anyhow::ensure!(value > 0, "runtime.{key} must be at least 1");
        }
        Ok(())
    }
}

/// `[runtime]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Read at start-up only.
    pub spectre_hardening: bool,
    /// The most the compiled-code cache directory may hold; read at
    /// start-up only.
    pub cache_max_size: ByteSize,
    /// The shape of wasmtime's pooling allocator; read at start-up only.
    pub allocator: AllocatorLimits,
    /// Reloaded with the rest of the file.
    pub reuse: ReusePolicy,
}

impl RuntimeConfig {
    /// The pooling allocator's shape these settings ask for.
    pub fn allocator_limits(&self) -> AllocatorLimits {
        self.allocator
    }
}

/// How long each plugin's instances serve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReusePolicy {
    /// For every plugin without its own.
    every: Reuse,
    /// By plugin name.
    plugins: BTreeMap<String, Reuse>,
}

impl ReusePolicy {
    pub fn for_plugin(&self, name: &str) -> Reuse {
        self.plugins.get(name).copied().unwrap_or(self.every)
    }
}

pub(super) fn runtime_config(file: RuntimeFile) -> anyhow::Result<RuntimeConfig> {
    file.validate()?;
    let allocator = file.allocator_limits();
    let every = match file.reuse {
        Some(reuse) => validate_reuse(reuse).context("[runtime] reuse")?,
        None => Reuse::FRESH,
    };
    let mut plugins = BTreeMap::new();
    for (name, plugin) in file.plugins {
        if let Some(reuse) = plugin.reuse {
            plugins.insert(name.clone(), validate_reuse(reuse).with_context(|| format!("[runtime.plugins.\"{name}\"] reuse"))?);
        }
    }
    Ok(RuntimeConfig { spectre_hardening: file.spectre_hardening, cache_max_size: file.cache_max_size, allocator, reuse: ReusePolicy { every, plugins } })
}

fn validate_reuse(file: ReuseFile) -> anyhow::Result<Reuse> {
    let at_least_one = |n: u32| NonZeroU32::new(n).context("requests must be at least 1 (1: a fresh instance per request)");
    let requests = match file.requests {
        RequestsFile::Count(n) => ReuseCount::Fixed(at_least_one(n)?),
        RequestsFile::Range(text) => {
            let bounds = text.split_once("..").and_then(|(low, high)| Some((low.trim().parse::<u32>().ok()?, high.trim().parse::<u32>().ok()?)));
            let (low, high) = bounds.with_context(|| format!("requests = \"{text}\": write a range as \"LOW..HIGH\", such as \"1..64\""))?;
            anyhow::ensure!(low <= high, "requests = \"{text}\": the low end is above the high end");
            ReuseCount::Between(at_least_one(low)?, at_least_one(high)?)
        }
    };
    let idle = file.idle.unwrap_or(Reuse::DEFAULT_IDLE);
    super::checked_duration("idle", idle)?;
    Ok(Reuse { requests, idle })
}
