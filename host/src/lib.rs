//! wasmux: a server for the guide's framed TCP protocol whose request
//! handlers are WebAssembly components, loaded and swapped while it runs.
//!
//! One request's path, each step its own module:
//!
//! ```text
//! server (sockets, limits) ─▶ codec (bytes ⇄ Message) ─▶ service
//!   ─▶ tenancy (who is asking; their limits) ─▶ router (content-type ─▶ route ─▶ plugin, A/B arm)
//!   ─▶ registry (name ─▶ current version) ─▶ runtime (fresh instance, deadline, memory cap)
//!   ─▶ Message ─▶ codec ─▶ bytes
//! ```
//!
//! Beside the path: [`config`] (TOML ─▶ validated settings), [`watcher`]
//! (files ─▶ registry and settings updates), [`metrics`] and [`admin`]
//! (`/metrics`, `/plugins`, `/healthz`), [`net`] (addresses and socket
//! errors), [`client`] (what `wasmux send` and the tests use), [`wire`]
//! (each message's bytes in the `-v` log), [`native`] (the guide's
//! handlers compiled in, for comparison), [`bench`] (the load generator of
//! `wasmux bench`).

pub mod admin;
pub mod agent;
pub mod bench;
pub mod client;
pub mod codec;
pub mod config;
pub mod metrics;
pub mod native;
pub mod net;
pub mod oci;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod server;
pub mod service;
pub mod tenancy;
pub mod watcher;
pub mod wire;
