//! Fuzzes the wire decoder: arbitrary bytes, cut into arbitrary chunks, with
//! an arbitrary maximum content length.
//!
//! Invariants checked on every input:
//! - decoding never panics, and every call consumes bytes or asks for more;
//! - the items (messages, invalid-but-framed headers, the error that ends
//!   the stream) are the same however the bytes are split;
//! - a message's content is exactly the `content-length` bytes its header
//!   announced, right after that header, and within the maximum;
//! - a decoded message encodes and decodes back to itself.

#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};
use wasmux::codec::{Inbound, MessageCodec};
use wasmux::message::Message;

#[derive(Debug, Arbitrary)]
struct Input {
    max_content_length: u16,
    chunks: Vec<u8>,
    bytes: Vec<u8>,
}

/// One decoded item, with the bytes consumed by the call that produced it.
type Item = (Result<Inbound, String>, Vec<u8>);

/// Decodes `bytes` fed in chunks of the given sizes (cycled; 0, or no sizes
/// at all, means "the rest").
fn decode(bytes: &[u8], chunks: &[u8], max_content_length: usize) -> Vec<Item> {
    let mut codec = MessageCodec::new(max_content_length);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().map(|&n| usize::from(n)).cycle();
    let mut consumed = 0;
    while !rest.is_empty() {
        let take = match sizes.next() {
            Some(0) | None => rest.len(),
            Some(n) => n.min(rest.len()),
        };
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        loop {
            let (before, start) = (buf.len(), consumed);
            let result = codec.decode(&mut buf);
            assert!(buf.len() <= before, "decoding grew the buffer");
            consumed += before - buf.len();
            let call = bytes[start..consumed].to_vec();
            match result {
                Ok(Some(item)) => items.push((Ok(item), call)),
                Ok(None) => break,
                Err(e) => {
                    items.push((Err(e.to_string()), call));
                    return items;
                }
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(item)) => items.push((Ok(item), Vec::new())),
        Ok(None) => {}
        Err(e) => items.push((Err(e.to_string()), Vec::new())),
    }
    items
}

/// Checks that `frame` is exactly the 2-byte prefix, a header announcing
/// the message's content length, and that content.
fn check_frame(message: &Message, frame: &[u8]) {
    let header_len = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
    let header: serde_json::Value = serde_json::from_slice(&frame[2..2 + header_len]).expect("a decoded header is JSON");
    assert_eq!(header["content-length"].as_u64(), Some(message.content.len() as u64), "content length differs from the header's");
    assert_eq!(frame.len(), 2 + header_len + message.content.len(), "the frame is not header plus content");
    assert_eq!(&frame[2 + header_len..], &message.content[..], "the content is not the bytes after the header");
}

fuzz_target!(|input: Input| {
    let max = usize::from(input.max_content_length);
    let whole = decode(&input.bytes, &[], max);
    let split = decode(&input.bytes, &input.chunks, max);
    let items = |list: &[Item]| list.iter().map(|(item, _)| item.clone()).collect::<Vec<_>>();
    assert_eq!(items(&whole), items(&split), "the items depend on how the bytes were split");

    for (item, frame) in &whole {
        let Ok(Inbound::Message(message)) = item else { continue };
        assert!(message.content.len() <= max, "a message over the maximum");
        // With the input whole, each call starts at a frame's first byte and
        // consumes the frame.
        check_frame(message, frame);
        let mut again = BytesMut::new();
        MessageCodec::new(max).encode(message, &mut again).expect("a decoded message encodes");
        let decoded = decode(&again, &[], max);
        assert_eq!(items(&decoded), vec![Ok(Inbound::Message(message.clone()))], "re-encoding changed the message");
    }
});
