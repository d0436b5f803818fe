//! wasmux: a server for the guide's framed TCP protocol whose request
//! handlers are WebAssembly components, loaded and swapped while it runs.
//! This crate is the server as a library, with no command line: the
//! `wasmux` binary (package `wasmux-cli`) composes its parts.
//!
//! One request's path, each step its own module, none reaching back up,
//! no two modules importing each other in a circle (`docs/architecture.md`
//! draws the map and names every file; the unit test `architecture`
//! checks it against the sources):
//!
//! ```text
//! server (listener, handler) ─▶ connection (codec: bytes ⇄ Message, wire tap)
//!   ─▶ service (consumed fields, errors ─▶ answers, metrics)
//!     ─▶ tenancy (who is asking; their limits) ─▶ router (content-type ─▶ route ─▶ plugin, A/B arm)
//!     ─▶ plugins (name ─▶ current Plugin version)
//!     ─▶ runtime (an instance, fresh or reused; deadline, memory cap)
//!   ─▶ Message ─▶ connection ─▶ bytes
//! ```
//!
//! Every step speaks [`message`]: [`message::Message`] and the error
//! vocabulary. Beside the path:
//!
//! - [`config`] (TOML ─▶ validated settings) and [`reload`] (the
//!   configuration file ─▶ new settings while serving);
//! - [`source`] (where plugins come from: a directory or an OCI registry,
//!   each reporting the same [`source::Change`]s, applied to [`plugins`] by
//!   [`source::apply`]), [`watcher`] (debounced file watching) and
//!   [`digest`] (a plugin's SHA-256);
//! - [`kv`] (plugins' state, behind `wasi:keyvalue`: in memory, embedded,
//!   or Redis);
//! - [`experiments`] (each split arm's counts, how the arms compare,
//!   canaries), [`metrics`], [`admin`] (`/metrics`, `/plugins`,
//!   `/experiments`, the live page, `/healthz`) and [`agent`] (HAProxy's
//!   agent check);
//! - [`net`] (addresses and socket errors), [`tls`], [`throttle`] (log
//!   lines peers cause), [`client`] (what `wasmux send` and the tests use),
//!   [`native`] (the guide's handlers compiled in, for comparison) and
//!   [`files`] (the crate `wasmux-files`: reading files others may have
//!   put in place, writing atomically).
//!
//! The WIT contract's host side is generated in the crate
//! `wasmux-bindings`.
//!
//! A request through the service, with a handler compiled in (no Wasm):
//!
//! ```
//! # use std::sync::Arc;
//! # use wasmux::{config::Settings, message::Message, metrics::Metrics};
//! # use wasmux::plugins::{Plugin, Plugins};
//! # use wasmux::service::Service;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let metrics = Arc::new(Metrics::new());
//! let plugins = Arc::new(Plugins::new(None, Arc::clone(&metrics)));
//! for (name, handler) in wasmux::native::GUIDE_HANDLERS {
//!     plugins.insert(Plugin::native(name, handler));
//! }
//! let service = Service::new(plugins, Settings::guide(), metrics);
//! let answer = service.handle(Message::new("text/json", "utf-8", r#"{"action": "search", "value": "ring"}"#)).await;
//! assert_eq!(&answer.message.content[..], "{\"result\": \"In the caves beneath the Misty Mountains. 💍\"}".as_bytes());
//! # });
//! ```

#[cfg(test)]
mod architecture;

pub mod admin;
pub mod agent;
pub mod client;
pub mod codec;
pub mod config;
pub mod connection;
pub mod digest;
pub mod experiments;
pub use wasmux_files as files;
pub mod kv;
pub mod message;
pub mod metrics;
pub mod native;
pub mod net;
pub mod plugins;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod server;
pub mod service;
pub mod source;
pub mod tenancy;
pub mod throttle;
pub mod tls;
pub mod watcher;
pub mod wire;
