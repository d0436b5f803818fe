//! Plugins in an OCI registry: push, pull (verified), list, and poll.
//!
//! A registry repository plays the part of a plugin directory. Each tag of
//! `oci://REGISTRY/REPO` is one plugin, as each `NAME.wasm` file of a
//! directory is: tag `search` serves as plugin `search`, tag
//! `search__fuzzy` as `search@fuzzy` ([`PluginTag`] says why `__`).
//!
//! Components are stored in the CNCF Wasm OCI artifact layout, the one
//! `wkg oci push` writes ([`layout`]): an OCI image manifest whose config
//! has media type `application/vnd.wasm.config.v0+json` and whose one
//! layer, `application/wasm`, is the component's bytes. So a component
//! pushed by wasmux loads in other runtimes, and one pushed by another tool
//! of that layout loads here.
//!
//! Nothing pulled is handed out unchecked: the layer's bytes are hashed as
//! they arrive and compared with the SHA-256 digest the manifest names for
//! that layer, and they are refused when they do not match or grow past the
//! size the manifest declared. The layer digest is the SHA-256 of the
//! component, the [`Digest`] wasmux names plugin versions and keys its
//! compile cache by, so a component pulled from a registry and the same
//! file in a directory are one version, hashed once.
//!
//! [`Poller`] follows a repository: at each poll it lists the tags (one
//! request), asks each tag's manifest digest (one `HEAD` each), and pulls
//! only what changed, reporting each as a [`Change`](super::Change). What it
//! pulled is kept in a [`PullCache`] directory, so a server that starts
//! while the registry is down serves what it had.
//!
//! Registries on a loopback host (`localhost`, `127.0.0.0/8`, `[::1]`) are
//! spoken to over plain HTTP, as Debian's `docker-registry` serves by
//! default; every other registry over HTTPS (rustls with ring).
//!
//! | file | what |
//! | --- | --- |
//! | `tag.rs` | [`PluginTag`]: a tag and the plugin name it serves as |
//! | `layout.rs` | the CNCF Wasm artifact layout: media types, the config, which manifests are accepted |
//! | `repository.rs` | [`Repository`]: list, resolve, pull (verified), push; `wasmux push`'s [`push`] |
//! | `cache.rs` | [`PullCache`]: what was pulled, on disk |
//! | `poller.rs` | [`Poller`]: follows a repository, reports changes |

mod cache;
pub mod layout;
mod poller;
mod repository;
mod tag;

pub use cache::{PullCache, Seen};
pub use poller::Poller;
pub use repository::{Auth, DEFAULT_MAX_COMPONENT_SIZE, MAX_TAGS, Options, Pulled, Pushed, Repository, SCHEME, is_loopback, pull, push, split_target};
pub use tag::PluginTag;

pub use crate::digest::Digest;
