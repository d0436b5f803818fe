//! Write [wasmux](https://github.com/) plugins in Rust.
//!
//! A plugin implements [`Guest`] (one function, `handle`) and names its type
//! with [`export!`]:
//!
//! ```ignore
//! use wasmux_sdk::{Guest, HandlerError, Request, Response, export};
//!
//! struct Hello;
//!
//! impl Guest for Hello {
//!     fn handle(request: Request) -> Result<Response, HandlerError> {
//!         Ok(Response::text(format!("Hello, {}!", request.text_lossy())))
//!     }
//! }
//!
//! export!(Hello);
//! ```
//!
//! The crate holds the bindings of the `wasmux:plugin/stateful-handler`
//! world (`wit/wasmux.wit`: `handler` and `wasi:keyvalue`), generated once
//! by wit-bindgen, so a plugin needs no WIT path and no `generate!` of its
//! own, plus small helpers:
//!
//! - [`Request::text`], [`Request::text_lossy`]: the content as UTF-8 text;
//! - [`Request::field`], [`Request::field_str`]: header fields beyond the
//!   four the protocol requires (their values are JSON text);
//! - [`Response::new`], [`Response::text`], [`Response::with_field`],
//!   [`Response::with_str_field`]: build the answer;
//! - [`HandlerError::bad_request`] and its siblings;
//! - [`log`], [`config`], [`outcome`]: the host's imports;
//! - [`keyvalue`]: state kept between requests (`wasi:keyvalue`'s
//!   `store`, `atomics` and `batch`), and `?` from a store call in
//!   `handle` (a store error becomes [`HandlerError::Internal`] naming it).
//!
//! ## Plugins that remember
//!
//! The bindings are those of the world `stateful-handler`: `handler` plus
//! the key-value store. A plugin that calls the store imports it; one that
//! never does imports none of it (wit-component keeps only the imports a
//! module uses), and the server opens no store for it.
//!
//! ```ignore
//! use wasmux_sdk::keyvalue::{atomics, store};
//! use wasmux_sdk::{Guest, HandlerError, Request, Response, export};
//!
//! struct Visits;
//!
//! impl Guest for Visits {
//!     fn handle(_request: Request) -> Result<Response, HandlerError> {
//!         let bucket = store::open("default")?;
//!         let n = atomics::increment(&bucket, "visits", 1)?;
//!         Ok(Response::text(format!("visit {n}")))
//!     }
//! }
//!
//! export!(Visits);
//! ```
//!
//! The store exists only in a component served by wasmux: natively
//! (`cargo test`) a store call panics, so test it through `wasmux call`.
//!
//! Build a plugin crate (`crate-type = ["cdylib"]`) for
//! `wasm32-unknown-unknown`; `wasmux build` does it and turns the result
//! into a component.

#![warn(missing_docs)]

/// The bindings wit-bindgen generates for the world, as they come.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        // `handler` plus `wasi:keyvalue`: a plugin that never calls the
        // store imports none of it, so one world serves both kinds.
        world: "stateful-handler",
        path: "../wit",
        // The keyvalue interfaces are another package's (`wit/deps/`).
        generate_all,
        // `export!` is this crate's (at its root), usable from the plugin
        // crate, and the code it expands to refers to the bindings here.
        pub_export_macro: true,
        default_bindings_module: "wasmux_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::wasmux::plugin::host::Level;
pub use bindings::wasmux::plugin::types::Field;
pub use bindings::{Guest, HandlerError, Request, Response, export};

/// Writes `message` to the server's log at `level`, tagged with the
/// plugin's name, version and tenant (at most 64 lines per request, each
/// cut at 1 KiB). In a native build (`cargo test`), to standard error.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::wasmux::plugin::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{level:?}: {message}");
}

/// The value of `key` in the plugin's configuration (`[plugins.NAME]` in
/// the server's, or `wasmux call --config KEY=VALUE`), if set. In a native
/// build (`cargo test`), always `None`.
pub fn config(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return bindings::wasmux::plugin::host::config(key);
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        None
    }
}

/// Counts the outcome `name` of this request for the A/B experiment it is
/// part of (`hit`, `miss`, `converted`, …): `/experiments` on the server's
/// admin endpoint shows each arm's rate of each outcome. A name is 1 to 32
/// bytes of `a-z`, `0-9`, `-` and `_`; a request keeps its first 8 names,
/// an arm 16 distinct ones; what is refused is logged, never an error. In a
/// native build (`cargo test`), written to standard error.
pub fn outcome(name: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::wasmux::plugin::host::outcome(name);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("outcome: {name}");
}

/// State kept between requests: the key-value store of `wasi:keyvalue`
/// 0.2.0-draft, as wit-bindgen generates it.
///
/// - [`store::open`]`("default")` opens the plugin's own bucket (other
///   names only when the server's configuration grants them, else
///   [`store::Error::NoSuchStore`]); a [`store::Bucket`] has `get`, `set`,
///   `delete`, `exists` and `list_keys`;
/// - [`atomics::increment`]`(&bucket, key, delta)` adds atomically (across
///   a fleet on one Redis too) and returns the new value, kept as its
///   decimal ASCII (`get` reads back `b"42"`);
/// - [`batch`]: `get_many`, `set_many`, `delete_many` (not atomic).
///
/// State belongs to the tenant and to the plugin's name before `@`, and
/// outlives requests, hot swaps and restarts (docs/keyvalue.md). Every
/// call answers an error value, never a trap: a limit, a bucket not
/// granted, a store that cannot be reached. `?` in `handle` turns one into
/// [`HandlerError::Internal`] (`key-value store: …`); match on
/// [`store::Error`] to answer otherwise.
pub mod keyvalue {
    pub use crate::bindings::wasi::keyvalue::{atomics, batch, store};
    pub use store::{Bucket, Error};

    /// What `error` says, for a person: `no such store`, `access denied`,
    /// or the store's own message (a limit, `the key-value store is
    /// unavailable: …`).
    pub fn describe(error: &Error) -> String {
        match error {
            Error::NoSuchStore => "no such store".to_owned(),
            Error::AccessDenied => "access denied".to_owned(),
            Error::Other(why) => why.clone(),
        }
    }
}

impl From<keyvalue::Error> for HandlerError {
    /// A store error as the handler's `internal` error, `key-value store:
    /// ` and what the store said: the client's error answer names it.
    fn from(error: keyvalue::Error) -> Self {
        Self::Internal(format!("key-value store: {}", keyvalue::describe(&error)))
    }
}

impl Request {
    /// The content as UTF-8 text, or a `bad-request` error saying why not.
    pub fn text(&self) -> Result<&str, HandlerError> {
        std::str::from_utf8(&self.content)
            .map_err(|e| HandlerError::bad_request(format!("content is not valid UTF-8: {e}")))
    }

    /// The content as UTF-8 text, with each invalid sequence replaced by
    /// U+FFFD (as Python's `errors="replace"` and JavaScript's
    /// `TextDecoder` do).
    pub fn text_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.content)
    }

    /// The value of header field `name` as JSON text (`"ann"` with its
    /// quotes, `3`, `true`, `{"a": 1}`), or `None` if the request has no
    /// such field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|f| f.name == name).map(|f| f.value.as_str())
    }

    /// The value of header field `name` if it is a JSON string, decoded
    /// (`"ann"` gives `ann`); `None` if there is no such field or its
    /// value is not a string.
    pub fn field_str(&self, name: &str) -> Option<String> {
        self.field(name).and_then(json::decode_string)
    }
}

impl Response {
    /// A response with the given content-type, content-encoding and
    /// content, and no extra header fields.
    pub fn new(content_type: impl Into<String>, content_encoding: impl Into<String>, content: impl Into<Vec<u8>>) -> Self {
        Self {
            content_type: content_type.into(),
            content_encoding: content_encoding.into(),
            fields: Vec::new(),
            content: content.into(),
        }
    }

    /// A `text/plain` response in `utf-8`.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new("text/plain", "utf-8", text.into().into_bytes())
    }

    /// Adds header field `name` whose value is the JSON text `json`
    /// (`3`, `true`, `"ann"` with its quotes). The host refuses a response
    /// whose field is not valid JSON or repeats a name.
    pub fn with_field(mut self, name: impl Into<String>, json: impl Into<String>) -> Self {
        self.fields.push(Field { name: name.into(), value: json.into() });
        self
    }

    /// Adds header field `name` whose value is the string `value`
    /// (written as a JSON string).
    pub fn with_str_field(self, name: impl Into<String>, value: &str) -> Self {
        self.with_field(name, json::encode_string(value))
    }
}

impl HandlerError {
    /// The request is not valid for this handler: the sender's fault.
    pub fn bad_request(message: impl std::fmt::Display) -> Self {
        Self::BadRequest(message.to_string())
    }

    /// The handler does not handle this content-type or encoding.
    pub fn unsupported(message: impl std::fmt::Display) -> Self {
        Self::Unsupported(message.to_string())
    }

    /// The handler failed for a reason of its own.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::Internal(message.to_string())
    }
}

/// JSON strings, the one JSON value the helpers read and write themselves
/// (so that a plugin pays for no JSON library it does not use).
pub mod json {
    /// `value` as a JSON string, quotes included, escaped as Python's
    /// `json.dumps(value, ensure_ascii=False)` escapes it.
    pub fn encode_string(value: &str) -> String {
        let mut out = String::with_capacity(value.len() + 2);
        out.push('"');
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// The string a JSON string literal (quotes included, surrounding
    /// white space allowed) stands for; `None` if `json` is not exactly one
    /// JSON string.
    pub fn decode_string(json: &str) -> Option<String> {
        let inner = json.trim().strip_prefix('"')?.strip_suffix('"')?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return None,
                c if (c as u32) < 0x20 => return None,
                '\\' => match chars.next()? {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    '/' => out.push('/'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'u' => {
                        let high = hex4(&mut chars)?;
                        let code = if (0xd800..0xdc00).contains(&high) {
                            if chars.next()? != '\\' || chars.next()? != 'u' {
                                return None;
                            }
                            let low = hex4(&mut chars)?;
                            if !(0xdc00..0xe000).contains(&low) {
                                return None;
                            }
                            0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
                        } else {
                            high
                        };
                        out.push(char::from_u32(code)?);
                    }
                    _ => return None,
                },
                c => out.push(c),
            }
        }
        Some(out)
    }

    fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
        let mut value = 0;
        for _ in 0..4 {
            value = value * 16 + chars.next()?.to_digit(16)?;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(fields: &[(&str, &str)], content: &[u8]) -> Request {
        Request {
            content_type: "text/plain".into(),
            content_encoding: "utf-8".into(),
            byteorder: "little".into(),
            fields: fields.iter().map(|(n, v)| Field { name: (*n).into(), value: (*v).into() }).collect(),
            content: content.to_vec(),
        }
    }

    #[test]
    fn text_of_the_content() {
        assert_eq!(request(&[], "wörld".as_bytes()).text(), Ok("wörld"));
        assert!(matches!(request(&[], b"\xff").text(), Err(HandlerError::BadRequest(_))));
        assert_eq!(request(&[], b"a\xffb").text_lossy(), "a\u{fffd}b");
    }

    #[test]
    fn fields_are_json_text() {
        let r = request(&[("user", "\"ann\""), ("n", "3"), ("tab", r#""a\tb\u00e9\ud83d\udc36""#)], b"");
        assert_eq!(r.field("user"), Some("\"ann\""));
        assert_eq!(r.field_str("user").as_deref(), Some("ann"));
        assert_eq!(r.field("n"), Some("3"));
        assert_eq!(r.field_str("n"), None);
        assert_eq!(r.field_str("tab").as_deref(), Some("a\tbé🐶"));
        assert_eq!(r.field("missing"), None);
    }

    #[test]
    fn strings_round_trip() {
        for s in ["", "ann", "say \"hi\"\\", "line\nfeed\u{1}", "🐰 café"] {
            assert_eq!(json::decode_string(&json::encode_string(s)).as_deref(), Some(s));
        }
        assert_eq!(json::encode_string("a\"\u{1f}é"), "\"a\\\"\\u001fé\"");
        for bad in ["ann", "\"a\"b\"", "\"\\x\"", "\"\\ud800\"", "\"\\u12\"", "\"tab\there\""] {
            assert_eq!(json::decode_string(bad), None, "{bad}");
        }
    }

    #[test]
    fn responses() {
        let r = Response::text("hi").with_str_field("user", "ann").with_field("n", "3");
        assert_eq!((r.content_type.as_str(), r.content_encoding.as_str()), ("text/plain", "utf-8"));
        assert_eq!(r.content, b"hi");
        assert_eq!(r.fields, vec![Field { name: "user".into(), value: "\"ann\"".into() }, Field { name: "n".into(), value: "3".into() }]);
        assert_eq!(HandlerError::bad_request("x"), HandlerError::BadRequest("x".into()));
    }

    #[test]
    fn store_errors_become_internal_errors_naming_the_store() {
        let error = |e: keyvalue::Error| -> HandlerError { e.into() };
        assert_eq!(error(keyvalue::Error::NoSuchStore), HandlerError::Internal("key-value store: no such store".into()));
        assert_eq!(error(keyvalue::Error::AccessDenied), HandlerError::Internal("key-value store: access denied".into()));
        assert_eq!(
            error(keyvalue::Error::Other("kv max-keys (5) reached".into())),
            HandlerError::Internal("key-value store: kv max-keys (5) reached".into())
        );
    }
}
