//! The pooling allocator's shape: what one plugin instance may hold
//! ([`AllocatorLimits`], the `[runtime]` keys), the pool built from it, and a
//! refusal that names the limit a component exceeds and the setting that
//! raises it.
//!
//! wasmtime sets the pool's slots aside when the engine is made, so the
//! limits are fixed for the life of a [`super::Runtime`], and a component
//! is checked against them as it is compiled or read from the cache: they
//! cannot follow each component a server loads. So they come from the
//! configuration, with defaults that fit the components of every language
//! wasmux builds; `wasmux call`, which runs one instance at a time, takes
//! limits no plugin reaches ([`AllocatorLimits::for_one_instance`]).

use std::fmt;

use wasmtime::PoolingAllocationConfig;

/// What one plugin instance may hold, for the pooling allocator.
///
/// The defaults fit the components of all three languages with room
/// (measured with `cargo bench --bench plugin_languages`): a Rust plugin
/// made by wit-component needs 3 core instances, 1 memory and 1 table;
/// componentize-py 0.25.1 14 core instances (38 when built with
/// `--stub-wasi`, whose stubs are modules too), 1 memory and 2 tables;
/// componentize-js 0.23.0 4 core instances, 1 memory and 2 tables. Raising
/// a limit costs address space (memories, tables) reserved when the server
/// starts, not resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorLimits {
    /// `[runtime] max-core-instances-per-plugin`.
    pub core_instances: u32,
    /// `[runtime] max-memories-per-plugin`.
    pub memories: u32,
    /// `[runtime] max-tables-per-plugin`.
    pub tables: u32,
    /// `[runtime] max-table-elements`: the most elements one table may
    /// start with or grow to.
    pub table_elements: usize,
}

impl Default for AllocatorLimits {
    fn default() -> Self {
        Self { core_instances: 64, memories: 2, tables: 4, table_elements: 100_000 }
    }
}

/// The most bytes of instance state (a core instance's functions, globals
/// and table descriptions; a component's, all its core instances
/// together). An interpreter's is much larger than a Rust plugin's; it is
/// allocated per instance, not reserved.
const MAX_INSTANCE_STATE: usize = 16 << 20;

impl AllocatorLimits {
    /// The pooling allocator for `calls` instances at once, each with at
    /// most `max_memory` bytes of linear memory.
    pub(super) fn config(self, calls: u32, max_memory: usize) -> PoolingAllocationConfig {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(calls)
            .max_core_instances_per_component(self.core_instances)
            .total_core_instances(calls.saturating_mul(self.core_instances))
            .max_memories_per_component(self.memories)
            .max_tables_per_component(self.tables)
            // Every call may hold its plugin's most; a slot costs address
            // space, and pages only when used.
            .total_memories(calls.saturating_mul(self.memories))
            .max_memories_per_module(self.memories)
            .total_tables(calls.saturating_mul(self.tables))
            .max_tables_per_module(self.tables)
            .table_elements(self.table_elements)
            .max_core_instance_size(MAX_INSTANCE_STATE)
            .max_component_instance_size(MAX_INSTANCE_STATE)
            .total_stacks(calls)
            .max_memory_size(max_memory);
        pool
    }

    /// Limits for a runtime that runs one instance at a time of a
    /// component it has not seen (`wasmux call`): far above what any
    /// plugin needs. With one slot, the address space they reserve is
    /// small.
    pub fn for_one_instance() -> Self {
        Self { core_instances: 1024, memories: 16, tables: 64, table_elements: 1 << 20 }
    }

    /// The value of `limit` now, for a refusal.
    fn value_of(self, limit: Limit) -> String {
        match limit {
            Limit::CoreInstances => self.core_instances.to_string(),
            Limit::Memories => self.memories.to_string(),
            Limit::Tables => self.tables.to_string(),
            Limit::TableElements => self.table_elements.to_string(),
            Limit::InstanceState => MAX_INSTANCE_STATE.to_string(),
        }
    }
}

/// A limit of the pool that a component may exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    CoreInstances,
    Memories,
    Tables,
    TableElements,
    /// Not a setting: a bound no real plugin comes near.
    InstanceState,
}

impl Limit {
    /// The `[runtime]` key that raises it.
    fn setting(self) -> Option<&'static str> {
        match self {
            Self::CoreInstances => Some("max-core-instances-per-plugin"),
            Self::Memories => Some("max-memories-per-plugin"),
            Self::Tables => Some("max-tables-per-plugin"),
            Self::TableElements => Some("max-table-elements"),
            Self::InstanceState => None,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CoreInstances => "core instances per plugin",
            Self::Memories => "linear memories per plugin",
            Self::Tables => "tables per plugin",
            Self::TableElements => "elements of one table",
            Self::InstanceState => "instance state",
        })
    }
}

/// wasmtime's words for each limit of the pool when a component exceeds it
/// (its error type is private, so its text is all there is to match; the
/// tests load real components over each limit, so a wasmtime that words
/// them otherwise fails them).
const REFUSALS: [(&str, Limit); 7] = [
    ("core module instances, which exceeds", Limit::CoreInstances),
    ("linear memories, which exceeds", Limit::Memories),
    ("defined memories count of", Limit::Memories),
    ("tables, which exceeds", Limit::Tables),
    ("defined tables count of", Limit::Tables),
    ("minimum element size of", Limit::TableElements),
    ("instance allocation for this", Limit::InstanceState),
];

/// Which limit of the pool `error` (from compiling or deserializing a
/// component) says the component exceeds, if any.
pub(super) fn exceeded_limit(error: &wasmtime::Error) -> Option<Limit> {
    let text = format!("{error:#}");
    REFUSALS.iter().find(|(words, _)| text.contains(words)).map(|&(_, limit)| limit)
}

/// `error` with what to do about it in front: the limit exceeded and the
/// setting that raises it, or, for any other error, what it means.
pub(super) fn explain_refusal(error: wasmtime::Error, limits: AllocatorLimits) -> wasmtime::Error {
    match exceeded_limit(&error) {
        Some(limit) => match limit.setting() {
            Some(setting) => error.context(format!(
                "the component needs more {limit} than this server's instance pool allows: raise [runtime] {setting} (now {})",
                limits.value_of(limit)
            )),
            None => error.context(format!("the component needs more {limit} than wasmtime's pool allows ({} bytes)", limits.value_of(limit))),
        },
        None => error.context("not a valid WebAssembly component, or one outside this server's limits"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasmtimes_words_name_the_setting() {
        let cases = [
            ("The component transitively contains 38 core module instances, which exceeds the configured maximum of 8 in the pooling allocator", "max-core-instances-per-plugin (now 64)"),
            ("The component transitively contains 3 Wasm linear memories, which exceeds the configured maximum of 2 in the pooling allocator", "max-memories-per-plugin (now 2)"),
            ("The component transitively contains 5 tables, which exceeds the configured maximum of 4 in the pooling allocator", "max-tables-per-plugin (now 4)"),
            ("table index 0 has a minimum element size of 200000 which exceeds the limit of 100000", "max-table-elements (now 100000)"),
        ];
        for (words, setting) in cases {
            let explained = explain_refusal(wasmtime::format_err!("{words}"), AllocatorLimits::default());
            let text = format!("{explained:#}");
            assert!(text.contains(&format!("raise [runtime] {setting}")), "{text}");
            assert!(text.contains(words), "{text}");
        }
        let other = format!("{:#}", explain_refusal(wasmtime::format_err!("magic header not detected"), AllocatorLimits::default()));
        assert!(other.starts_with("not a valid WebAssembly component"), "{other}");
    }
}
