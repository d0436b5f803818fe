//! The integration tests: each module starts real `wasmux` processes (or
//! uses the library directly) and talks to them over loopback sockets.
//! One test binary, so wasmtime is linked once for all of them.

mod common;

mod admin_page;
mod authoring;
mod bench;
mod canary;
mod cli;
mod close_paths;
mod compile_cache;
mod examples;
mod experiments;
mod fleet;
mod guide;
mod haproxy;
mod hostile;
mod hot_swap;
mod interop;
mod isolation;
mod keyvalue;
mod oci_registry;
mod operations;
mod plugin_faults;
mod plugin_languages;
mod resources;
mod stateful_templates;
mod resend;
mod reuse;
mod tenants;
mod tls;
