//! The wire format, and nothing else: bytes ⇄ [`Message`] (the message
//! vocabulary itself is [`crate::message`]).
//!
//! A message of the guide's protocol is
//!
//! ```text
//! +----------+----------------------------+---------------------------+
//! | u16 (BE) | JSON header (UTF-8)        | content                   |
//! | hdr len  | {"byteorder": …,           | content-length bytes      |
//! |          |  "content-type": …,        |                           |
//! |          |  "content-encoding": …,    |                           |
//! |          |  "content-length": N, …}   |                           |
//! +----------+----------------------------+---------------------------+
//! ```
//!
//! [`MessageCodec`] is a tokio-util [`Decoder`]/[`Encoder`]. Decoding never
//! trusts the peer: the announced content length is checked against a
//! maximum before anything is reserved, and a header whose frame is intact
//! but whose fields are wrong yields [`Inbound::Invalid`] (the content is
//! skipped, the connection can go on) rather than an error that ends it.
//! Nor does it let a header mean two things: a name given twice in an object
//! is a lost frame (`bad-frame`), at any depth, and the names of the fields
//! the host reads ([`CONSUMED_FIELDS`](crate::message::CONSUMED_FIELDS)) are matched without regard to case,
//! so `"Content-Length"` beside `"content-length"` is given twice too.
//! Headers are written the way the guide's Python programs write them, so
//! that wasmux's bytes on the wire are the guide's.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};
use tokio_util::codec::{Decoder, Encoder};
use wasmux_guide::python;

use crate::message::{
    DEFAULT_MAX_CONTENT_LENGTH, ErrorCode, Header, HeaderTooLong, Message, ProtocolError, consumed_field,
};

/// Bytes of the fixed-length prefix holding the JSON header's length (big
/// endian): the protocol's one fixed field, defined here only.
pub const PREFIX_LEN: usize = 2;

/// How much buffer to reserve ahead for content still to come. The rest
/// grows as bytes arrive, so a peer that announces a large message and then
/// stalls holds little memory.
const MAX_RESERVE_AHEAD: usize = 64 * 1024;

/// One decoded unit of the byte stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A well-formed message.
    Message(Message),
    /// A message whose frame was intact but whose header was not valid. Its
    /// content has been skipped; the next message can follow.
    Invalid(ProtocolError),
}

/// Why the byte stream cannot be read any further.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message boundary is lost (for example the header is not JSON, so
    /// its content-length is unknown). The sender may be told, then the
    /// connection must close.
    #[error(transparent)]
    Frame(#[from] ProtocolError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why a message could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    HeaderTooLong(#[from] HeaderTooLong),
    #[error("the header could not be serialized: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where the decoder is within the current message.
#[derive(Debug, Default)]
enum State {
    /// Waiting for the 2-byte prefix and the JSON header.
    #[default]
    Header,
    /// Header read; waiting for `length` bytes of content.
    Content { header: Header, length: usize },
    /// The header was invalid but announced a length: discarding the content.
    Skip { remaining: usize, error: ProtocolError },
}

/// The tokio-util codec for the guide's messages (both directions).
#[derive(Debug)]
pub struct MessageCodec {
    max_content_length: usize,
    state: State,
}

impl Default for MessageCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONTENT_LENGTH)
    }
}

impl MessageCodec {
    pub fn new(max_content_length: usize) -> Self {
        Self { max_content_length, state: State::Header }
    }

    /// The content length of the message under way, once its header has
    /// been read and until its content is complete.
    pub fn content_length(&self) -> Option<usize> {
        match self.state {
            State::Content { length, .. } => Some(length),
            State::Header | State::Skip { .. } => None,
        }
    }

    /// True if part of a message has been consumed but not yet produced:
    /// together with a non-empty read buffer, this says a message is under way.
    pub fn is_mid_message(&self) -> bool {
        !matches!(self.state, State::Header)
    }
}

impl Decoder for MessageCodec {
    type Item = Inbound;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, DecodeError> {
        loop {
            match &mut self.state {
                State::Header => {
                    if src.len() < PREFIX_LEN {
                        return Ok(None);
                    }
                    let header_len = usize::from(u16::from_be_bytes([src[0], src[1]]));
                    if header_len == 0 {
                        return Err(frame_error(ErrorCode::BadFrame, "the JSON header length is 0; a header is required"));
                    }
                    // A TLS client's first record is its handshake: said at
                    // once, rather than wait for the rest of a header that
                    // never comes while the client waits for the server's
                    // handshake, until one of them times out.
                    if src[0] == HANDSHAKE_RECORD && looks_like_tls(src) {
                        return Err(frame_error(
                            ErrorCode::BadFrame,
                            "these bytes begin a TLS handshake: the peer speaks TLS, which this address does not serve (wasmux serve --tls-cert and --tls-key serve it)",
                        ));
                    }
                    if src.len() < PREFIX_LEN + header_len {
                        src.reserve(PREFIX_LEN + header_len - src.len());
                        return Ok(None);
                    }
                    let parsed = parse_header(&src[PREFIX_LEN..PREFIX_LEN + header_len], self.max_content_length)?;
                    src.advance(PREFIX_LEN + header_len);
                    self.state = match parsed {
                        (length, Ok(header)) => State::Content { header, length },
                        (remaining, Err(error)) => State::Skip { remaining, error },
                    };
                }
                State::Content { length, .. } => {
                    let length = *length;
                    if src.len() < length {
                        src.reserve((length - src.len()).min(MAX_RESERVE_AHEAD));
                        return Ok(None);
                    }
                    let content = src.split_to(length).freeze();
                    let State::Content { header, .. } = std::mem::take(&mut self.state) else {
                        unreachable!("state was just matched as Content");
                    };
                    return Ok(Some(Inbound::Message(Message { header, content })));
                }
                State::Skip { remaining, .. } => {
                    let skipped = (*remaining).min(src.len());
                    src.advance(skipped);
                    *remaining -= skipped;
                    if *remaining > 0 {
                        return Ok(None);
                    }
                    let State::Skip { error, .. } = std::mem::take(&mut self.state) else {
                        unreachable!("state was just matched as Skip");
                    };
                    return Ok(Some(Inbound::Invalid(error)));
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, DecodeError> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        if buf.is_empty() && !self.is_mid_message() {
            return Ok(None);
        }
        let detail = match &self.state {
            State::Header if buf.len() < PREFIX_LEN => "in the 2-byte header length".to_owned(),
            State::Header => {
                let want = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                let tls = if looks_like_tls(buf) { "; these bytes are a TLS record: the peer speaks TLS" } else { "" };
                format!("in the JSON header ({} of {want} bytes){tls}", buf.len() - PREFIX_LEN)
            }
            State::Content { length, .. } => format!("in the content ({} of {length} bytes)", buf.len()),
            State::Skip { remaining, .. } => format!("in the content ({remaining} bytes missing)"),
        };
        buf.clear();
        self.state = State::Header;
        Err(frame_error(ErrorCode::Truncated, &format!("the connection ended in the middle of a message, {detail}")))
    }
}

/// Whether `bytes` start as a TLS record does (RFC 8446, 5.1: a content
/// type from 20 to 23, version 3.x with x at most 4) rather than as a
/// message: the third byte would begin the JSON header, and no JSON text
/// starts with a byte below 5. A plain client of a TLS server reads the
/// server's alert this way, and a plain server a TLS client's handshake.
fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [20..=23, 3, 0..=4, ..])
}

/// The content type of a TLS handshake record, the first a client sends.
const HANDSHAKE_RECORD: u8 = 22;

fn frame_error(code: ErrorCode, message: &str) -> DecodeError {
    DecodeError::Frame(ProtocolError::new(code, message))
}

/// Parses a JSON header. `Err` means the frame is lost (the content length
/// is unknown or refused); `Ok((length, Err(_)))` means the header is wrong
/// but its `length` bytes of content can be skipped.
fn parse_header(raw: &[u8], max_content_length: usize) -> Result<(usize, Result<Header, ProtocolError>), ProtocolError> {
    let bad_frame = |message: String| ProtocolError::new(ErrorCode::BadFrame, message);
    let text = std::str::from_utf8(raw)
        .map_err(|e| bad_frame(format!("the JSON header is not valid UTF-8 (at byte {})", e.valid_up_to())))?;
    // serde_json refuses nesting deeper than 128 levels, and the header is at
    // most 64 KiB, so neither the stack nor memory is at risk here.
    let value = parse_strict(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => bad_frame(format!("the JSON header is ambiguous: {e}")),
        _ => bad_frame(format!("the JSON header is not valid JSON: {e}")),
    })?;
    let Value::Object(mut fields) = value else {
        return Err(bad_frame(format!("the JSON header must be an object, got {}", python::kind_of(&value))));
    };

    let length = match fields.shift_remove("content-length") {
        None => return Err(bad_frame("the header has no \"content-length\"".into())),
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
        Some(other) => {
            return Err(bad_frame(format!(
                "\"content-length\" must be a non-negative integer, got {}",
                describe(&other)
            )));
        }
    };
    let length = match usize::try_from(length) {
        Ok(length) if length <= max_content_length => length,
        _ => {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!("\"content-length\" {length} is over this server's limit of {max_content_length} bytes"),
            ));
        }
    };

    let mut take = |name: &str| match fields.shift_remove(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ProtocolError::new(
            ErrorCode::BadHeader,
            format!("\"{name}\" must be a string, got {}", describe(&other)),
        )),
        None => Err(ProtocolError::new(ErrorCode::BadHeader, format!("the header has no \"{name}\""))),
    };
    let header = (|| {
        Ok(Header {
            byteorder: take("byteorder")?,
            content_type: take("content-type")?,
            content_encoding: take("content-encoding")?,
            extra: Map::new(),
        })
    })();
    Ok((length, header.map(|header| Header { extra: fields, ..header })))
}

/// Parses JSON text as [`Value`] does, but refuses an object that gives a
/// name twice (serde_json keeps the last one silently, as Python's
/// `json.loads` does). In the outermost object, the names of the fields the
/// host consumes are matched without regard to case and spelled as the host
/// spells them.
fn parse_strict(text: &str) -> serde_json::Result<Value> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Strict { outermost: true }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// The [`Visitor`] of [`parse_strict`].
#[derive(Clone, Copy)]
struct Strict {
    outermost: bool,
}

impl Strict {
    const INNER: Self = Self { outermost: false };
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = seq.next_element_seed(Self::INNER)? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let consumed = if self.outermost { consumed_field(&name) } else { None };
            let name = consumed.map_or(name, str::to_owned);
            let value = map.next_value_seed(Self::INNER)?;
            match fields.entry(name) {
                Entry::Vacant(entry) => {
                    entry.insert(value);
                }
                Entry::Occupied(entry) if consumed.is_some() => {
                    return Err(de::Error::custom(format_args!(
                        "\"{}\" is given more than once (in any case: the server reads it)",
                        entry.key()
                    )));
                }
                Entry::Occupied(entry) => {
                    return Err(de::Error::custom(format_args!("\"{}\" is given more than once", entry.key())));
                }
            }
        }
        Ok(Value::Object(fields))
    }
}

/// A short description of a value for an error message: `a string ("12")`.
fn describe(value: &Value) -> String {
    if value.is_null() {
        return "null".into();
    }
    let mut text = value.to_string();
    if text.len() > 40 {
        let cut = (0..=40).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    format!("{} ({text})", python::kind_of(value))
}

impl Encoder<&Message> for MessageCodec {
    type Error = EncodeError;

    /// Writes `message`; on error nothing is written.
    fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.reserve(PREFIX_LEN + 128 + message.content.len());
        write_header(&message.header, message.content.len(), dst)?;
        dst.extend_from_slice(&message.content);
        Ok(())
    }
}

/// Writes the 2-byte prefix and the JSON header; on error nothing is written.
fn write_header(header: &Header, content_length: usize, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let start = dst.len();
    dst.put_u16(0);
    let mut writer = dst.writer();
    let written = header.write_json(content_length, &mut writer);
    let dst = writer.into_inner();
    let header_len = dst.len() - start - PREFIX_LEN;
    let prefix = match written {
        Ok(()) => u16::try_from(header_len).map_err(|_| EncodeError::HeaderTooLong(HeaderTooLong(header_len))),
        Err(e) => Err(e.into()),
    };
    match prefix {
        Ok(prefix) => {
            dst[start..start + PREFIX_LEN].copy_from_slice(&prefix.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            dst.truncate(start);
            Err(e)
        }
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = EncodeError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode(&message, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::AUTHORIZATION_FIELD;
    use bytes::Bytes;
    use serde_json::json;

    /// A request exactly as the guide's client writes it.
    const GUIDE_SEARCH: &[u8] = b"\x00d{\"byteorder\": \"big\", \"content-type\": \"text/json\", \"content-encoding\": \"utf-8\", \"content-length\": 41}{\"action\": \"search\", \"value\": \"morpheus\"}";

    fn encode(message: &Message) -> BytesMut {
        let mut out = BytesMut::new();
        MessageCodec::default().encode(message, &mut out).unwrap();
        out
    }

    fn raw(header: &str, content: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(content);
        out
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<Inbound, String>> {
        let mut codec = MessageCodec::new(1024);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(item)) => out.push(Ok(item)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    fn expect_message(item: &Result<Inbound, String>) -> &Message {
        match item {
            Ok(Inbound::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn decodes_the_guides_request() {
        let items = decode_all(GUIDE_SEARCH);
        assert_eq!(items.len(), 1);
        let m = expect_message(&items[0]);
        assert_eq!(m.header.byteorder, "big");
        assert_eq!(m.header.content_type, "text/json");
        assert_eq!(m.header.content_encoding, "utf-8");
        assert!(m.header.extra.is_empty());
        assert_eq!(&m.content[..], br#"{"action": "search", "value": "morpheus"}"#);
    }

    #[test]
    fn encodes_the_guides_response_byte_for_byte() {
        let mut m = Message::new("text/json", "utf-8", "{\"result\": \"Follow the white rabbit. 🐰\"}".as_bytes().to_vec());
        m.header.byteorder = "little".into();
        let expected = b"\x00g{\"byteorder\": \"little\", \"content-type\": \"text/json\", \"content-encoding\": \"utf-8\", \"content-length\": 43}{\"result\": \"Follow the white rabbit. \xf0\x9f\x90\xb0\"}";
        assert_eq!(&encode(&m)[..], &expected[..]);

        let mut m = Message::new("binary/custom-server-binary-type", "binary", b"First 10 bytes of request: binary\xf0\x9f\x98\x83".to_vec());
        m.header.byteorder = "little".into();
        let expected = b"\x00\x7f{\"byteorder\": \"little\", \"content-type\": \"binary/custom-server-binary-type\", \"content-encoding\": \"binary\", \"content-length\": 37}First 10 bytes of request: binary\xf0\x9f\x98\x83";
        assert_eq!(&encode(&m)[..], &expected[..]);
    }

    #[test]
    fn every_split_point_decodes_the_same() {
        let mut stream = GUIDE_SEARCH.to_vec();
        stream.extend_from_slice(&raw(
            r#"{"byteorder": "little", "content-type": "binary/x", "content-encoding": "binary", "content-length": 3, "user": "ann"}"#,
            b"\x00\xff\x01",
        ));
        let whole = decode_all(&stream);
        assert_eq!(whole.len(), 2);
        for split in 0..=stream.len() {
            let mut codec = MessageCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                buf.extend_from_slice(chunk);
                while let Some(item) = codec.decode(&mut buf).unwrap() {
                    got.push(Ok(item));
                }
            }
            assert_eq!(got, whole, "split at {split}");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::new();
        let mut got = 0;
        for &b in GUIDE_SEARCH.iter().cycle().take(GUIDE_SEARCH.len() * 5) {
            buf.put_u8(b);
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                assert_eq!(expect_message(&Ok(item)).content.len(), 41);
                got += 1;
            }
        }
        assert_eq!(got, 5);
    }

    #[test]
    fn back_to_back_messages_in_one_buffer() {
        let items = decode_all(&GUIDE_SEARCH.repeat(100));
        assert_eq!(items.len(), 100);
        items.iter().for_each(|i| assert_eq!(expect_message(i).header.content_type, "text/json"));
    }

    #[test]
    fn extra_fields_keep_their_order_and_round_trip() {
        let bytes = raw(
            r#"{"user": "ann", "byteorder": "little", "content-type": "a/b", "n": [1, {"x": null}], "content-encoding": "binary", "content-length": 0}"#,
            b"",
        );
        let items = decode_all(&bytes);
        let m = expect_message(&items[0]);
        assert_eq!(m.header.extra.keys().collect::<Vec<_>>(), ["user", "n"]);
        assert_eq!(m.header.extra["n"], json!([1, {"x": null}]));
        let again = decode_all(&encode(m));
        assert_eq!(expect_message(&again[0]), m);
    }

    #[test]
    fn zero_length_content() {
        let items = decode_all(&raw(r#"{"byteorder": "big", "content-type": "x", "content-encoding": "binary", "content-length": 0}"#, b""));
        assert!(expect_message(&items[0]).content.is_empty());
    }

    fn error_of(bytes: &[u8]) -> String {
        match decode_all(bytes).pop() {
            Some(Err(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn lost_frames_are_errors() {
        assert!(error_of(b"\x00\x00").contains("length is 0"));
        // A TLS ClientHello's first bytes: said at once.
        assert!(error_of(b"\x16\x03\x01\x02\x00\x01").contains("these bytes begin a TLS handshake: the peer speaks TLS"));
        assert!(error_of(&raw("not json", b"")).contains("not valid JSON"));
        assert!(error_of(&raw("[1, 2]", b"")).contains("must be an object, got a list"));
        assert!(error_of(b"\x00\x02\xff\xfe").contains("not valid UTF-8"));
        let header = |len: &str| format!(r#"{{"byteorder": "big", "content-type": "x", "content-encoding": "binary", "content-length": {len}}}"#);
        assert!(error_of(&raw(&header("-1"), b"")).contains("non-negative integer, got a number (-1)"));
        assert!(error_of(&raw(&header("\"12\""), b"")).contains("got a string (\"12\")"));
        assert!(error_of(&raw(&header("1.5"), b"")).contains("non-negative integer"));
        assert!(error_of(&raw(&header("null"), b"")).ends_with("non-negative integer, got null"));
        assert!(error_of(&raw(&header("18446744073709551616"), b"")).contains("non-negative integer"));
        assert!(error_of(&raw(&header("1099511627776"), b"")).contains("over this server's limit of 1024"));
        assert!(error_of(&raw(&header("1025"), b"")).contains("over this server's limit"));
        assert!(error_of(&raw(r#"{"byteorder": "big"}"#, b"")).contains("no \"content-length\""));
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(error_of(&raw(&deep, b"")).contains("recursion limit"));
    }

    #[test]
    fn a_name_given_twice_loses_the_frame() {
        let fields = r#""byteorder": "big", "content-type": "x", "content-encoding": "binary""#;
        let twice = |more: &str| error_of(&raw(&format!("{{{fields}, {more}}}"), b"hello"));
        // serde_json (and Python) would read 5 bytes: the last one wins.
        let error = twice(r#""content-length": 0, "content-length": 5"#);
        assert!(error.contains("the JSON header is ambiguous: \"content-length\" is given more than once"), "{error}");
        let error = twice(r#""Content-Length": 0, "content-length": 5"#);
        assert!(error.contains("\"content-length\" is given more than once (in any case"), "{error}");
        let error = twice(r#""content-length": 5, "Authorization": "Bearer a", "AUTHORIZATION": "Bearer b""#);
        assert!(error.contains("\"authorization\" is given more than once"), "{error}");
        let error = twice(r#""content-length": 5, "user": "ann", "user": "bob""#);
        assert!(error.contains("\"user\" is given more than once"), "{error}");
        let error = twice(r#""content-length": 5, "deep": [{"a": 1, "a": 2}]"#);
        assert!(error.contains("\"a\" is given more than once"), "{error}");
        let error = twice(r#""content-length": 5, "Byteorder": "little""#);
        assert!(error.contains("\"byteorder\" is given more than once"), "{error}");
    }

    #[test]
    fn the_names_of_fields_the_host_reads_are_matched_in_any_case() {
        let bytes = raw(
            r#"{"BYTEORDER": "big", "Content-Type": "text/json", "content-Encoding": "utf-8", "Content-Length": 2, "Authorization": "Bearer t", "User": "ann", "user": "bob"}"#,
            b"{}",
        );
        let items = decode_all(&bytes);
        let m = expect_message(&items[0]);
        assert_eq!((m.header.byteorder.as_str(), m.header.content_type.as_str(), m.header.content_encoding.as_str()), ("big", "text/json", "utf-8"));
        assert_eq!(&m.content[..], b"{}");
        // Other names keep their spelling; only the host's own are its.
        assert_eq!(m.header.extra.keys().collect::<Vec<_>>(), [AUTHORIZATION_FIELD, "User", "user"]);
    }

    #[test]
    fn truncated_streams_are_errors() {
        assert!(error_of(b"\x00").contains("2-byte header length"));
        assert!(error_of(&GUIDE_SEARCH[..20]).contains("in the JSON header (18 of 100 bytes)"));
        assert!(error_of(&GUIDE_SEARCH[..GUIDE_SEARCH.len() - 1]).contains("in the content (40 of 41 bytes)"));
    }

    #[test]
    fn a_tls_alert_read_as_a_message_says_so() {
        // What a TLS server sends a client that does not speak TLS: an
        // alert record (decode_error), which reads as a 5379-byte header.
        let alert = b"\x15\x03\x03\x00\x02\x02\x32";
        let error = error_of(alert);
        assert!(error.contains("in the JSON header (5 of 5379 bytes); these bytes are a TLS record: the peer speaks TLS"), "{error}");
        assert!(!error_of(&GUIDE_SEARCH[..20]).contains("TLS"));
        // 0x15 0x03 then a JSON header is a message, not TLS.
        assert!(!looks_like_tls(b"\x15\x03{"));
    }

    #[test]
    fn invalid_headers_with_intact_frames_are_skipped() {
        let mut stream = raw(r#"{"byteorder": "big", "content-encoding": "utf-8", "content-length": 5}"#, b"hello");
        stream.extend_from_slice(&raw(r#"{"byteorder": 1, "content-type": "x", "content-encoding": "utf-8", "content-length": 2}"#, b"hi"));
        stream.extend_from_slice(GUIDE_SEARCH);
        let items = decode_all(&stream);
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[0],
            Ok(Inbound::Invalid(ProtocolError::new(ErrorCode::BadHeader, "the header has no \"content-type\"")))
        );
        assert_eq!(
            items[1],
            Ok(Inbound::Invalid(ProtocolError::new(ErrorCode::BadHeader, "\"byteorder\" must be a string, got a number (1)")))
        );
        assert_eq!(expect_message(&items[2]).content.len(), 41);
    }

    #[test]
    fn oversized_headers_are_refused_without_writing() {
        let mut m = Message::new("a/b", "binary", Bytes::new());
        m.header.extra.insert("big".into(), Value::String("x".repeat(70_000)));
        let mut out = BytesMut::from(&b"keep"[..]);
        assert!(matches!(MessageCodec::default().encode(&m, &mut out), Err(EncodeError::HeaderTooLong(_))));
        assert_eq!(&out[..], b"keep");
    }

    /// Property tests: any message survives encode → arbitrary splits →
    /// decode; any byte stream, split anyhow, decodes without panicking and
    /// to the same items.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// JSON values as a header's extra fields may hold them: any
        /// unicode text, integers, finite floats, nesting.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(Value::from),
                any::<String>().prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec((any::<String>(), inner), 0..4).prop_map(|fields| Value::Object(fields.into_iter().collect())),
                ]
            })
        }

        fn header() -> impl Strategy<Value = Header> {
            let extra_name = any::<String>().prop_filter("not a field the host reads", |name| consumed_field(name).is_none());
            (any::<String>(), any::<String>(), any::<String>(), prop::collection::vec((extra_name, json_value()), 0..5)).prop_map(
                |(byteorder, content_type, content_encoding, extra)| Header {
                    byteorder,
                    content_type,
                    content_encoding,
                    extra: extra.into_iter().collect(),
                },
            )
        }

        fn message() -> impl Strategy<Value = Message> {
            (header(), prop::collection::vec(any::<u8>(), 0..512)).prop_map(|(header, content)| Message { header, content: content.into() })
        }

        /// Feeds `bytes` to a decoder in chunks of the given sizes (cycled),
        /// collecting every item, and the error that ends the stream if any.
        fn decode_in_chunks(bytes: &[u8], chunks: &[usize], max_content_length: usize) -> Vec<Result<Inbound, String>> {
            let mut codec = MessageCodec::new(max_content_length);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut rest = bytes;
            let mut sizes = chunks.iter().copied().cycle();
            while !rest.is_empty() {
                let take = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                loop {
                    let before = buf.len();
                    match codec.decode(&mut buf) {
                        Ok(Some(item)) => {
                            if let Inbound::Message(m) = &item {
                                assert!(m.content.len() <= max_content_length, "a message over the maximum");
                            }
                            out.push(Ok(item));
                        }
                        Ok(None) => {
                            assert!(buf.len() <= before, "the buffer grew while decoding");
                            break;
                        }
                        Err(e) => {
                            out.push(Err(e.to_string()));
                            return out;
                        }
                    }
                }
            }
            match codec.decode_eof(&mut buf) {
                Ok(Some(item)) => out.push(Ok(item)),
                Ok(None) => {}
                Err(e) => out.push(Err(e.to_string())),
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn encode_split_decode_round_trips(
                messages in prop::collection::vec(message(), 1..6),
                chunks in prop::collection::vec(1_usize..80, 1..20),
            ) {
                let mut codec = MessageCodec::default();
                let mut bytes = BytesMut::new();
                let mut sent = Vec::new();
                for message in messages {
                    let before = bytes.len();
                    match codec.encode(&message, &mut bytes) {
                        Ok(()) => sent.push(message),
                        // A header too long for the 2-byte prefix is refused whole.
                        Err(EncodeError::HeaderTooLong(_)) => prop_assert_eq!(bytes.len(), before),
                        Err(e) => return Err(TestCaseError::fail(format!("encoding failed: {e}"))),
                    }
                }
                let received = decode_in_chunks(&bytes, &chunks, DEFAULT_MAX_CONTENT_LENGTH);
                prop_assert_eq!(received.len(), sent.len());
                for (got, want) in received.iter().zip(&sent) {
                    let Ok(Inbound::Message(got)) = got else {
                        return Err(TestCaseError::fail(format!("expected a message, got {got:?}")));
                    };
                    prop_assert_eq!(got, want);
                    // Extra fields keep the sender's order.
                    prop_assert!(got.header.extra.keys().eq(want.header.extra.keys()));
                }
            }

            #[test]
            fn arbitrary_bytes_decode_the_same_however_split(
                bytes in prop::collection::vec(any::<u8>(), 0..2048),
                chunks in prop::collection::vec(1_usize..64, 1..20),
            ) {
                let whole = decode_in_chunks(&bytes, &[bytes.len().max(1)], 1024);
                let split = decode_in_chunks(&bytes, &chunks, 1024);
                prop_assert_eq!(&whole, &split);
            }

            /// Real frames with the last one damaged (bytes changed, cut,
            /// or added): the intact frames before it decode to exactly what
            /// was sent, however the stream is split; whatever the damaged
            /// bytes decode to decodes the same however split, and
            /// re-encodes to bytes that decode to the same message.
            #[test]
            fn damaged_frames_do_not_disturb_the_frames_before_them(
                messages in prop::collection::vec(message(), 1..5),
                damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0_u8..3), 1..4),
                chunks in prop::collection::vec(1_usize..64, 1..20),
            ) {
                let mut intact = BytesMut::new();
                let mut sent = Vec::new();
                for message in &messages[..messages.len() - 1] {
                    if MessageCodec::new(1024).encode(message, &mut intact).is_ok() {
                        sent.push(message.clone());
                    }
                }
                let mut last = BytesMut::new();
                prop_assume!(MessageCodec::new(1024).encode(&messages[messages.len() - 1], &mut last).is_ok());
                let mut last = last.to_vec();
                for (at, byte, how) in damage {
                    if last.is_empty() {
                        break;
                    }
                    let at = at.index(last.len());
                    match how {
                        0 => last[at] = byte,
                        1 => last.truncate(at),
                        _ => last.insert(at, byte),
                    }
                }
                let mut stream = intact.to_vec();
                stream.extend_from_slice(&last);

                let whole = decode_in_chunks(&stream, &[stream.len().max(1)], 1024);
                prop_assert_eq!(&whole, &decode_in_chunks(&stream, &chunks, 1024));
                prop_assert!(whole.len() >= sent.len(), "intact frames were lost: {whole:?}");
                for (got, want) in whole.iter().zip(&sent) {
                    prop_assert_eq!(got, &Ok(Inbound::Message(want.clone())));
                }
                for item in &whole[sent.len()..] {
                    if let Ok(Inbound::Message(message)) = item {
                        let mut again = BytesMut::new();
                        MessageCodec::new(1024).encode(message, &mut again).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(decode_in_chunks(&again, &[again.len()], 1024), vec![Ok(Inbound::Message(message.clone()))]);
                    }
                }
            }

            #[test]
            fn headers_of_valid_frames_decode_the_same_however_split(
                header in prop::collection::vec(
                    prop_oneof![Just("{".to_string()), Just("}".to_string()), Just("\"content-length\": 3".to_string()),
                        Just("\"byteorder\": \"big\"".to_string()), Just(", ".to_string()), Just("[".to_string()),
                        Just("\"content-type\": 1".to_string()), any::<String>()],
                    0..12,
                ),
                content in prop::collection::vec(any::<u8>(), 0..8),
                chunks in prop::collection::vec(1_usize..16, 1..10),
            ) {
                // Near-JSON headers with a correct 2-byte prefix: the decoder
                // gets past the prefix and has to judge the header itself.
                let header = header.concat();
                prop_assume!(header.len() <= usize::from(u16::MAX));
                let bytes = raw(&header, &content);
                let whole = decode_in_chunks(&bytes, &[bytes.len()], 1024);
                prop_assert_eq!(&whole, &decode_in_chunks(&bytes, &chunks, 1024));
                prop_assert!(!whole.is_empty(), "a complete frame decoded to nothing");
            }
        }
    }
}
