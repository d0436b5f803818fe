//! wasmux: a server for the guide's framed TCP protocol whose request
//! handlers are WebAssembly components, loaded and swapped while it runs.
//!
//! One request's path, each step its own module:
//!
//! ```text
//! server (sockets, limits) ─▶ codec (bytes ⇄ Message) ─▶ service
//!   ─▶ router (content-type ─▶ plugin name) ─▶ registry (name ─▶ current version)
//!   ─▶ runtime (fresh instance, deadline, memory cap) ─▶ Message ─▶ codec ─▶ bytes
//! ```
//!
//! Beside the path: [`config`] (TOML ─▶ validated settings), [`net`]
//! (addresses and socket errors), [`client`] (what `wasmux send` and the
//! tests use), [`bench`] (the load generator of `wasmux bench`).

pub mod bench;
pub mod client;
pub mod codec;
pub mod config;
pub mod native;
pub mod net;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod server;
pub mod service;
