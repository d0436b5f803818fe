//! Seeing the bytes, as the guide teaches: with `-v`, `wasmux serve` and
//! `wasmux send` log every message they receive exactly as it arrived, and
//! every message they send, as Python's `repr()` prints bytes
//! (`b'\x00g{"byteorder": …}…'`), under the log target [`TARGET`].
//!
//! The codec consumes a message's header as soon as the header is complete,
//! before the content has arrived, so the bytes of a message that arrives in
//! pieces are gone from the read buffer by the time the message is decoded.
//! [`WireTap`] keeps them as the decoder consumes them.
//!
//! Credentials never reach the log: the header is decoded and the raw JSON
//! of its `authorization` field's value (the name in any case, the value
//! however escaped) is shown as `"Bearer ***"`.

use std::borrow::Cow;
use std::fmt::{self, Display};
use std::ops::Range;

use bytes::BytesMut;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokio_util::codec::Decoder;
use wasmux_guide::python;

use crate::codec::PREFIX_LEN;
use crate::message::AUTHORIZATION_FIELD;

/// Log target of the wire log, shown with `-v`.
pub const TARGET: &str = "wasmux::wire";

/// True if the wire log is on.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

/// Logs the bytes of a message sent to `peer`, at most `limit` of them.
pub fn log_sent(bytes: &[u8], peer: &str, limit: usize) {
    tracing::debug!(target: TARGET, "sending {} to {peer}", wire_repr(bytes, limit));
}

/// Records the bytes a decoder consumes, and logs each decoded message's
/// bytes, as received, under [`TARGET`].
#[derive(Debug)]
pub struct WireTap {
    /// The first `limit` bytes of the message under way.
    head: Vec<u8>,
    /// How many bytes of the message under way were consumed in all.
    total: usize,
    /// Longest prefix of a message that is shown.
    limit: usize,
    /// Who sent the bytes, for the log line.
    peer: String,
}

impl WireTap {
    /// A tap for messages from `peer`, if the wire log is enabled; showing
    /// at most `limit` bytes of each message.
    pub fn if_enabled(peer: impl Display, limit: usize) -> Option<Self> {
        enabled().then(|| Self::new(peer, limit))
    }

    pub fn new(peer: impl Display, limit: usize) -> Self {
        Self { head: Vec::new(), total: 0, limit, peer: peer.to_string() }
    }

    /// `decoder.decode(src)`, logging the message's bytes when it completes one.
    pub fn decode<D: Decoder>(&mut self, decoder: &mut D, src: &mut BytesMut) -> Result<Option<D::Item>, D::Error> {
        let (decoded, shown) = self.record(src, |src| decoder.decode(src));
        self.log(shown);
        decoded
    }

    /// `decoder.decode_eof(src)`, logging the message's bytes when it completes one.
    pub fn decode_eof<D: Decoder>(&mut self, decoder: &mut D, src: &mut BytesMut) -> Result<Option<D::Item>, D::Error> {
        let (decoded, shown) = self.record(src, |src| decoder.decode_eof(src));
        self.log(shown);
        decoded
    }

    fn log(&self, shown: Option<String>) {
        if let Some(shown) = shown {
            tracing::debug!(target: TARGET, "received {shown} from {}", self.peer);
        }
    }

    /// Runs one decoding step and keeps what it consumed. When the step
    /// completes an item, also returns the item's bytes as the guide prints them.
    fn record<T, E>(
        &mut self,
        src: &mut BytesMut,
        decode: impl FnOnce(&mut BytesMut) -> Result<Option<T>, E>,
    ) -> (Result<Option<T>, E>, Option<String>) {
        // Decoders only take bytes from the front of the buffer: copy the
        // front (no more than will be shown, but the whole header, which is
        // decoded to hide credentials), see how much went, keep that.
        let mut prefix = self.head.iter().chain(src.iter()).copied();
        let keep = match (prefix.next(), prefix.next()) {
            (Some(high), Some(low)) => PREFIX_LEN + usize::from(u16::from_be_bytes([high, low])),
            _ => PREFIX_LEN,
        };
        let room = self.limit.max(keep).saturating_sub(self.head.len());
        let front = src[..room.min(src.len())].to_vec();
        let before = src.len();
        let decoded = decode(src);
        let consumed = before.saturating_sub(src.len());
        self.head.extend_from_slice(&front[..consumed.min(front.len())]);
        self.total += consumed;
        let shown = match &decoded {
            Ok(Some(_)) => Some(self.take()),
            Ok(None) => None,
            Err(_) => {
                self.take();
                None
            }
        };
        (decoded, shown)
    }

    /// The bytes of the message just completed, as the guide prints them;
    /// the tap starts over for the next message.
    fn take(&mut self) -> String {
        let text = display_bytes(&self.head, self.total, self.limit);
        self.head.clear();
        self.total = 0;
        text
    }
}

/// A message's bytes as the guide prints them (`b'\x00g{"byteorder": …}…'`),
/// cut after `limit` bytes, with the credential hidden.
pub fn wire_repr(bytes: &[u8], limit: usize) -> String {
    display_bytes(bytes, bytes.len(), limit)
}

/// `head` (the start of a message of `total` bytes, its whole header at
/// least) as the wire log shows it: the credential hidden, then cut after
/// `limit` bytes.
fn display_bytes(head: &[u8], total: usize, limit: usize) -> String {
    let redacted = redact(head);
    let shown = &redacted[..redacted.len().min(limit)];
    let text = python::bytes_repr(shown);
    if shown.len() < redacted.len() || total > head.len() { format!("{text}… ({total} bytes in all)") } else { text }
}

/// `message` with the value of its header's `authorization` field replaced.
fn redact(message: &[u8]) -> Cow<'_, [u8]> {
    let Some(&[high, low]) = message.get(..PREFIX_LEN) else { return Cow::Borrowed(message) };
    let end = PREFIX_LEN + usize::from(u16::from_be_bytes([high, low]));
    let Some(header) = message.get(PREFIX_LEN..end) else { return redact_raw(message) };
    let Some(spans) = std::str::from_utf8(header).ok().and_then(|text| credential_spans(text).ok()) else {
        // Not a JSON object, so the server reads no credential from it; a
        // broken client may still have put one there.
        return redact_raw(message);
    };
    if spans.is_empty() {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len());
    out.extend_from_slice(&message[..PREFIX_LEN]);
    let mut copied = 0;
    for (span, replacement) in spans {
        out.extend_from_slice(&header[copied..span.start]);
        out.extend_from_slice(replacement.as_bytes());
        copied = span.end;
    }
    out.extend_from_slice(&header[copied..]);
    out.extend_from_slice(&message[end..]);
    Cow::Owned(out)
}

/// Where in the JSON object `header` the values of its `authorization`
/// fields (the name in any case) are, in order, each with what to show
/// instead: `"Bearer ***"` for a bearer credential, `"***"` for anything else.
fn credential_spans(header: &str) -> serde_json::Result<Vec<(Range<usize>, &'static str)>> {
    struct Fields<'a>(&'a str);

    impl<'de> Visitor<'de> for Fields<'de> {
        type Value = Vec<(Range<usize>, &'static str)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut spans = Vec::new();
            while let Some((name, value)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                if !name.eq_ignore_ascii_case(AUTHORIZATION_FIELD) {
                    continue;
                }
                let raw = value.get();
                // The raw value is a slice of the header text.
                let start = (raw.as_ptr() as usize).wrapping_sub(self.0.as_ptr() as usize);
                if start.checked_add(raw.len()).is_none_or(|end| end > self.0.len()) {
                    return Err(serde::de::Error::custom("a raw value outside the header"));
                }
                let bearer = serde_json::from_str::<String>(raw)
                    .is_ok_and(|value| value.trim_start().get(..7).is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer ")));
                spans.push((start..start + raw.len(), if bearer { "\"Bearer ***\"" } else { "\"***\"" }));
            }
            Ok(spans)
        }
    }

    serde_json::Deserializer::from_str(header).deserialize_map(Fields(header))
}

/// For bytes that are not a JSON header: replaces the token of every
/// `Bearer TOKEN` written plainly with `***`.
fn redact_raw(bytes: &[u8]) -> Cow<'_, [u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let starts: Vec<usize> = bytes
        .windows(SCHEME.len())
        .enumerate()
        .filter(|(_, w)| w.eq_ignore_ascii_case(SCHEME))
        .map(|(i, _)| i + SCHEME.len())
        .collect();
    if starts.is_empty() {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for start in starts {
        if start < copied {
            continue;
        }
        let end = bytes[start..].iter().position(|&b| b == b'"' || b == b'\\').map_or(bytes.len(), |p| start + p);
        out.extend_from_slice(&bytes[copied..start]);
        out.extend_from_slice(b"***");
        copied = end;
    }
    out.extend_from_slice(&bytes[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::MessageCodec;

    /// A message whose JSON header is `header` exactly as written.
    fn framed(header: &str, content: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(header.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(content);
        out
    }

    fn shown_header(header: &str) -> String {
        let shown = wire_repr(&framed(header, b"hi"), 4096);
        assert!(shown.ends_with("}hi'"), "{shown}");
        shown
    }

    #[test]
    fn the_credential_is_hidden_however_it_is_written() {
        let plain = shown_header(r#"{"authorization": "Bearer s3cret", "x": "y"}"#);
        assert!(plain.contains(r#"{"authorization": "Bearer ***", "x": "y"}"#), "{plain}");
        for header in [
            // Escapes that the decoder reads as a space, as letters, as the name.
            r#"{"authorization": "Bearer\u0020s3cret"}"#,
            r#"{"authorization": "Bearer \u0073\u0033cret"}"#,
            r#"{"authorization":"bearer s3cret\"still\\s3cret"}"#,
            r#"{"Authorization": "Bearer s3cret"}"#,
            r#"{"AUTHORIZATION" :  "Bearer s3cret" }"#,
            r#"{"\u0061uthorization": "Bearer s3cret"}"#,
            r#"{"authorization": ["Bearer", "s3cret"]}"#,
            r#"{"authorization": {"token": "s3cret"}}"#,
            r#"{"authorization": "s3cret"}"#,
        ] {
            let shown = shown_header(header);
            assert!(!shown.contains("s3cret") && !shown.contains("\\u0073"), "{header} shown as {shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        let both = shown_header(r#"{"authorization": "Bearer one1", "n": 1, "Authorization": "Bearer two2"}"#);
        assert!(both.contains(r#""authorization": "Bearer ***", "n": 1, "Authorization": "Bearer ***""#), "{both}");
    }

    #[test]
    fn other_fields_and_the_content_are_shown_as_sent() {
        let shown = shown_header(r#"{"user": "Bearer of news", "x-authorization": "kept"}"#);
        assert!(shown.contains(r#""user": "Bearer of news", "x-authorization": "kept""#), "{shown}");
    }

    #[test]
    fn a_header_that_is_not_json_hides_plain_bearer_tokens() {
        let shown = wire_repr(&framed(r#"{"authorization": "Bearer s3cret""#, b""), 4096);
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_credential_past_the_cut_is_hidden_before_cutting() {
        let header = format!(r#"{{"pad": "{}", "authorization": "Bearer s3cret"}}"#, "p".repeat(40));
        let limit = header.find("s3cret").unwrap() + 2 + 3;
        let shown = wire_repr(&framed(&header, b""), limit);
        assert!(!shown.contains("s3c"), "{shown}");
    }

    #[test]
    fn wire_repr_cuts_long_messages() {
        assert_eq!(wire_repr(b"\x00d{", 10), r"b'\x00d{'");
        assert_eq!(wire_repr(b"abcdef", 3), "b'abc'… (6 bytes in all)");
    }

    const SEARCH: &[u8] = b"\x00d{\"byteorder\": \"big\", \"content-type\": \"text/json\", \"content-encoding\": \"utf-8\", \"content-length\": 41}{\"action\": \"search\", \"value\": \"morpheus\"}";
    const SEARCH_SHOWN: &str = r#"b'\x00d{"byteorder": "big", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 41}{"action": "search", "value": "morpheus"}'"#;

    /// Feeds `chunks` one after another, decoding all it can after each;
    /// returns each decoded message's bytes as the tap shows them.
    fn shown(chunks: &[&[u8]], limit: usize) -> Vec<String> {
        let mut tap = WireTap::new("peer", limit);
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::new();
        let mut shown = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match tap.record(&mut buf, |src| codec.decode(src)) {
                    (Ok(Some(_)), Some(text)) => shown.push(text),
                    (Ok(None), None) => break,
                    other => panic!("unexpected {:?}", other.1),
                }
            }
        }
        shown
    }

    #[test]
    fn a_message_in_one_piece() {
        assert_eq!(shown(&[SEARCH], 4096), [SEARCH_SHOWN]);
    }

    #[test]
    fn a_message_in_single_bytes_is_shown_whole() {
        // The header is consumed long before the message completes.
        let bytes: Vec<&[u8]> = SEARCH.chunks(1).collect();
        assert_eq!(shown(&bytes, 4096), [SEARCH_SHOWN]);
    }

    #[test]
    fn pipelined_messages_are_shown_one_by_one() {
        let two = [SEARCH, SEARCH].concat();
        let (first, second) = two.split_at(SEARCH.len() + 30);
        assert_eq!(shown(&[&two], 4096), [SEARCH_SHOWN, SEARCH_SHOWN]);
        assert_eq!(shown(&[first, second], 4096), [SEARCH_SHOWN, SEARCH_SHOWN]);
    }

    #[test]
    fn long_messages_are_cut() {
        let bytes: Vec<&[u8]> = SEARCH.chunks(7).collect();
        let expected = format!("b'\\x00d{{\"b'… ({} bytes in all)", SEARCH.len());
        assert_eq!(shown(&bytes, 5), std::slice::from_ref(&expected));
        assert_eq!(shown(&[SEARCH], 5), [expected]);
    }

    #[test]
    fn the_tap_keeps_the_whole_header_to_hide_the_credential() {
        let header = format!(
            r#"{{"byteorder": "big", "content-type": "x", "content-encoding": "binary", "content-length": 2, "pad": "{}", "Authorization": "Bearer\u0020s3cret"}}"#,
            "p".repeat(200)
        );
        let message = framed(&header, b"hi");
        let limit = message.len() - 4;
        for chunk in [1, 7, message.len()] {
            let chunks: Vec<&[u8]> = message.chunks(chunk).collect();
            let shown = shown(&chunks, limit);
            assert_eq!(shown.len(), 1);
            assert!(!shown[0].contains("s3cret") && shown[0].contains("Bearer ***"), "{}", shown[0]);
        }
    }

    #[test]
    fn a_broken_message_starts_the_tap_over() {
        let mut tap = WireTap::new("peer", 4096);
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::from(&SEARCH[..SEARCH.len() - 5]);
        assert!(matches!(tap.record(&mut buf, |src| codec.decode(src)), (Ok(None), None)));
        assert!(tap.total > 0);
        assert!(tap.record(&mut buf, |src| codec.decode_eof(src)).0.is_err());
        assert_eq!((tap.head.len(), tap.total), (0, 0));
    }
}
