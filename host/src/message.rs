//! The vocabulary every step of a request's path speaks: a [`Message`] (a
//! [`Header`] and its content), and what can go wrong with one
//! ([`ErrorCode`], [`ProtocolError`], and the error answer the guide's client
//! can show).
//!
//! Nothing here reads or writes a byte stream; [`crate::codec`] does that.
//! The one piece of wire knowledge kept here is how a header is written as
//! JSON ([`Header::write_json`]), because both the codec and the check of a
//! plugin's answer ([`Header::check_fits`]) need it.

use std::fmt;
use std::io;

use bytes::Bytes;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Map, Value};
use wasmux_guide::python;

/// The default cap on a message's `content-length`.
pub const DEFAULT_MAX_CONTENT_LENGTH: usize = 8 * 1024 * 1024;

/// The byte order of this machine, as Python's `sys.byteorder` names it.
pub const NATIVE_BYTEORDER: &str = if cfg!(target_endian = "little") { "little" } else { "big" };

/// Header fields every message must carry; any others are extra fields.
pub const REQUIRED_FIELDS: [&str; 4] = ["byteorder", "content-type", "content-encoding", "content-length"];

/// The header field that carries a tenant's credential (`"Bearer TOKEN"`).
/// The host consumes it; plugins never see it, and logs never show it.
pub const AUTHORIZATION_FIELD: &str = "authorization";

/// The header fields the host reads. Their names are matched without regard
/// to ASCII case (`"Authorization"` is the credential), so that no spelling
/// of one can reach a plugin, or a client, as something else.
pub const CONSUMED_FIELDS: [&str; 5] = ["byteorder", "content-type", "content-encoding", "content-length", AUTHORIZATION_FIELD];

/// The canonical name of a field the host consumes, if `name` is one in any case.
pub fn consumed_field(name: &str) -> Option<&'static str> {
    CONSUMED_FIELDS.into_iter().find(|field| field.eq_ignore_ascii_case(name))
}

/// The longest JSON header the 2-byte length prefix can announce.
pub const MAX_HEADER_LEN: usize = u16::MAX as usize;

/// The JSON header, minus `content-length` (which is the content's length).
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub byteorder: String,
    pub content_type: String,
    pub content_encoding: String,
    /// Every other field, in the order the sender wrote them.
    pub extra: Map<String, Value>,
}

/// One message of the protocol: a request or a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub header: Header,
    pub content: Bytes,
}

impl Message {
    /// A message from this machine (native `byteorder`) with no extra fields.
    pub fn new(content_type: impl Into<String>, content_encoding: impl Into<String>, content: impl Into<Bytes>) -> Self {
        Self {
            header: Header {
                byteorder: NATIVE_BYTEORDER.to_owned(),
                content_type: content_type.into(),
                content_encoding: content_encoding.into(),
                extra: Map::new(),
            },
            content: content.into(),
        }
    }

    /// The error answer the guide's client can display: `text/json` content
    /// `{"result": "Error: …", "error": {"code": …, "message": …}}`.
    pub fn error(code: ErrorCode, message: &str) -> Self {
        #[derive(Serialize)]
        struct Detail<'a> {
            code: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            result: String,
            error: Detail<'a>,
        }
        let body = Body { result: format!("Error: {message}"), error: Detail { code: code.as_str(), message } };
        // Serializing a struct of strings cannot fail.
        let content = python::to_vec(&body).unwrap_or_default();
        Self::new("text/json", "utf-8", content)
    }

    /// The `(code, message)` of an error answer made by [`Message::error`]
    /// (by this server or another wasmux), if this is one.
    pub fn as_error(&self) -> Option<(String, String)> {
        if self.header.content_type != "text/json" {
            return None;
        }
        let body: Value = serde_json::from_slice(&self.content).ok()?;
        let error = body.get("error")?;
        Some((error.get("code")?.as_str()?.to_owned(), error.get("message")?.as_str()?.to_owned()))
    }
}

impl Header {
    /// Takes the field `name` out of the extra fields, whatever the case of
    /// its name.
    pub fn take_field(&mut self, name: &str) -> Option<Value> {
        if let Some(value) = self.extra.shift_remove(name) {
            return Some(value);
        }
        let spelled = self.extra.keys().find(|key| key.eq_ignore_ascii_case(name))?.clone();
        self.extra.shift_remove(&spelled)
    }

    /// Writes this header as JSON the way the guide's Python programs do
    /// (`json.dumps`): the required fields first, in the guide's order, with
    /// `content-length`, then the extra fields in their order.
    pub fn write_json(&self, content_length: usize, out: &mut impl io::Write) -> serde_json::Result<()> {
        JsonHeader { header: self, content_length }.serialize(&mut serde_json::Serializer::with_formatter(out, python::PythonFormatter))
    }

    /// Checks that this header can be sent: that its JSON fits in the
    /// [`MAX_HEADER_LEN`] bytes the 2-byte prefix can announce.
    pub fn check_fits(&self) -> Result<(), HeaderTooLong> {
        // JSON escaping at most sextuples a string, so short headers always fit.
        let strings = self.byteorder.len() + self.content_type.len() + self.content_encoding.len();
        if self.extra.is_empty() && strings < 4096 {
            return Ok(());
        }
        let mut counter = CountingWriter(0);
        // Writing to a counter fails only on a value JSON cannot hold, which
        // a `serde_json::Value` never is.
        let _ = self.write_json(usize::MAX, &mut counter);
        if counter.0 > MAX_HEADER_LEN { Err(HeaderTooLong(counter.0)) } else { Ok(()) }
    }
}

/// A header whose JSON would not fit the protocol's 2-byte length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the JSON header would be {0} bytes; the protocol allows at most 65535")]
pub struct HeaderTooLong(pub usize);

/// Counts bytes instead of keeping them.
struct CountingWriter(usize);

impl io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The JSON header as it goes on the wire.
struct JsonHeader<'a> {
    header: &'a Header,
    content_length: usize,
}

impl Serialize for JsonHeader<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let h = self.header;
        let mut map = serializer.serialize_map(Some(REQUIRED_FIELDS.len() + h.extra.len()))?;
        map.serialize_entry("byteorder", &h.byteorder)?;
        map.serialize_entry("content-type", &h.content_type)?;
        map.serialize_entry("content-encoding", &h.content_encoding)?;
        map.serialize_entry("content-length", &self.content_length)?;
        // An extra field spelled like a required one, in any case, would give
        // the reader two values for it: it is left out.
        let required = |name: &str| REQUIRED_FIELDS.iter().any(|field| field.eq_ignore_ascii_case(name));
        for (name, value) in h.extra.iter().filter(|(name, _)| !required(name)) {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Why a handler answered no response: what the WIT contract's
/// `handler-error` says (a plugin returns it), in the host's own terms, so
/// that the service and the native handlers need not know the bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// The request is malformed for this handler.
    BadRequest(String),
    /// The handler does not support what was asked (an encoding, say).
    Unsupported(String),
    /// The handler failed.
    Internal(String),
}

/// The machine-readable `error.code` of an error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame could not be read: the header is not a JSON object, or its
    /// length fields are wrong. The connection is closed after the answer.
    BadFrame,
    /// The header is a JSON object but a required field is missing or of
    /// the wrong type.
    BadHeader,
    /// `content-length` is over the server's maximum.
    TooLarge,
    /// A message was started but not finished in time.
    Timeout,
    /// The connection ended in the middle of a message.
    Truncated,
    /// The content is not valid for its content-type or encoding.
    BadRequest,
    /// The handler does not handle this content-type or encoding.
    Unsupported,
    /// No route matches the content-type.
    NoRoute,
    /// The route names a plugin that is not loaded.
    NoPlugin,
    /// The plugin trapped or failed.
    PluginFailed,
    /// The plugin ran past its deadline.
    PluginTimeout,
    /// The plugin tried to use more memory than it may.
    PluginMemory,
    /// The plugin returned a response that cannot be sent.
    PluginBadResponse,
    /// The bearer token matches no tenant.
    Unauthorized,
    /// The tenant is over its request limits.
    Overloaded,
    /// Something went wrong in the server itself.
    Internal,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad-frame",
            Self::BadHeader => "bad-header",
            Self::TooLarge => "too-large",
            Self::Timeout => "timeout",
            Self::Truncated => "truncated",
            Self::BadRequest => "bad-request",
            Self::Unsupported => "unsupported",
            Self::NoRoute => "no-route",
            Self::NoPlugin => "no-plugin",
            Self::PluginFailed => "plugin-failed",
            Self::PluginTimeout => "plugin-timeout",
            Self::PluginMemory => "plugin-memory",
            Self::PluginBadResponse => "plugin-bad-response",
            Self::Unauthorized => "unauthorized",
            Self::Overloaded => "overloaded",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is wrong with a message, as told to its sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// This error as an answer for the client.
    pub fn to_message(&self) -> Message {
        Message::error(self.code, &self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_what_the_guides_client_shows() {
        let m = Message::error(ErrorCode::NoRoute, "no route for content-type \"x/y\"");
        assert_eq!(m.header.content_type, "text/json");
        assert_eq!(
            std::str::from_utf8(&m.content).unwrap(),
            r#"{"result": "Error: no route for content-type \"x/y\"", "error": {"code": "no-route", "message": "no route for content-type \"x/y\""}}"#
        );
        assert_eq!(m.as_error(), Some(("no-route".into(), "no route for content-type \"x/y\"".into())));
        assert_eq!(Message::new("text/json", "utf-8", &b"{\"result\": \"x\"}"[..]).as_error(), None);
    }

    #[test]
    fn headers_are_written_as_the_guides_json_dumps() {
        let mut m = Message::new("text/json", "utf-8", Bytes::new());
        m.header.byteorder = "little".into();
        m.header.extra.insert("user".into(), Value::String("änn".into()));
        let mut out = Vec::new();
        m.header.write_json(43, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 43, "user": "änn"}"#
        );
    }

    #[test]
    fn oversized_headers_do_not_fit() {
        let mut header = Message::new("a/b", "binary", Bytes::new()).header;
        assert_eq!(header.check_fits(), Ok(()));
        header.extra.insert("big".into(), Value::String("x".repeat(65_500)));
        assert!(matches!(header.check_fits(), Err(HeaderTooLong(n)) if n > MAX_HEADER_LEN));
        header.extra.insert("big".into(), Value::String("x".repeat(65_000)));
        assert_eq!(header.check_fits(), Ok(()));
    }
}
