//! Seeing the bytes, as the guide teaches: with `-v`, `wasmux serve` and
//! `wasmux send` log every message they receive exactly as it arrived, and
//! every message they send, as Python's `repr()` prints bytes
//! (`b'\x00g{"byteorder": …}…'`), under the log target [`TARGET`].
//!
//! The codec consumes a message's header as soon as the header is complete,
//! before the content has arrived, so the bytes of a message that arrives in
//! pieces are gone from the read buffer by the time the message is decoded.
//! [`WireTap`] keeps them as the decoder consumes them.

use std::fmt::Display;

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use wasmux_guide::python;

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
        // front (no more than will be shown), see how much went, keep that.
        let room = self.limit.saturating_sub(self.head.len());
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
        let text = display_bytes(&self.head, self.total);
        self.head.clear();
        self.total = 0;
        text
    }
}

/// A message's bytes as the guide prints them (`b'\x00g{"byteorder": …}…'`),
/// cut after `limit` bytes, with bearer tokens blanked out so that logs
/// never hold credentials.
pub fn wire_repr(bytes: &[u8], limit: usize) -> String {
    display_bytes(&bytes[..bytes.len().min(limit)], bytes.len())
}

/// `head` (the start of a message of `total` bytes) as the wire log shows it.
fn display_bytes(head: &[u8], total: usize) -> String {
    let shown = python::bytes_repr(&redact_bearer_tokens(head));
    if total > head.len() { format!("{shown}… ({total} bytes in all)") } else { shown }
}

/// Replaces the token of every `Bearer TOKEN` with `***`.
fn redact_bearer_tokens(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let starts: Vec<usize> = bytes
        .windows(SCHEME.len())
        .enumerate()
        .filter(|(_, w)| w.eq_ignore_ascii_case(SCHEME))
        .map(|(i, _)| i + SCHEME.len())
        .collect();
    if starts.is_empty() {
        return std::borrow::Cow::Borrowed(bytes);
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
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::MessageCodec;

    #[test]
    fn wire_repr_hides_bearer_tokens() {
        assert_eq!(
            wire_repr(br#"{"authorization": "Bearer s3cret", "x": "BEARER two"}"#, 100),
            r#"b'{"authorization": "Bearer ***", "x": "BEARER ***"}'"#
        );
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
