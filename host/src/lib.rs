//! wasmux: a server for the guide's framed TCP protocol whose request
//! handlers are WebAssembly components, loaded and swapped while it runs.
//!
//! One request's path, each step its own module, none reaching back up
//! (`docs/architecture.md` draws it):
//!
//! ```text
//! server (listener, handler) ─▶ connection (codec: bytes ⇄ Message, wire tap)
//!   ─▶ service (consumed fields, errors ─▶ answers, metrics)
//!     ─▶ tenancy (who is asking; their limits) ─▶ router (content-type ─▶ route ─▶ plugin, A/B arm)
//!     ─▶ registry (name ─▶ current Plugin version) ─▶ runtime (fresh instance, deadline, memory cap)
//!   ─▶ Message ─▶ connection ─▶ bytes
//! ```
//!
//! Every step speaks [`message`]: [`message::Message`] and the error
//! vocabulary. Beside the path: [`config`] (TOML ─▶ validated settings),
//! [`watcher`] (files ─▶ registry and settings updates), [`files`] (reading
//! files others may have put in place), [`kv`] (plugins' state, behind
//! `wasi:keyvalue`: in memory, embedded, or Redis), [`metrics`] and
//! [`admin`] (`/metrics`, `/plugins`, `/experiments`, the live page,
//! `/healthz`), [`experiments`] (each split arm's counts and how the arms
//! compare), [`net`] (addresses and
//! socket errors), [`client`] (what `wasmux send` and the tests use),
//! [`native`] (the guide's handlers compiled in, for comparison). The WIT
//! contract's host side is generated in the crate `wasmux-bindings`.
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
//! let registry = Arc::new(Plugins::new(None, Arc::clone(&metrics)));
//! for (name, handler) in wasmux::native::GUIDE_HANDLERS {
//!     registry.insert(Plugin::native(name, handler));
//! }
//! let service = Service::new(registry, Settings::guide(), metrics);
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
pub mod experiments;
pub mod digest;
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
