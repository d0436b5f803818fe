//! The guide's application logic, written once and used twice: by the
//! `search` and `binary-echo` plugins (compiled to WebAssembly) and by the
//! host's native handlers (the baseline the benchmarks compare against).
//!
//! Everything here is pure: bytes in, bytes out, no I/O.

pub mod python;

mod search;

pub use search::{SearchError, Searched, entries, lookup, search, search_answer, search_reporting, search_with};

/// Content-type of the guide's binary responses.
pub const BINARY_RESPONSE_TYPE: &str = "binary/custom-server-binary-type";

/// Content-type the guide's client uses for anything but a search.
pub const BINARY_REQUEST_TYPE: &str = "binary/custom-client-binary-type";

/// The guide's answer to a binary request: `First 10 bytes of request: `
/// followed by (at most) the first ten bytes of the request's content.
pub fn binary_echo(content: &[u8]) -> Vec<u8> {
    const PREFIX: &[u8] = b"First 10 bytes of request: ";
    let head = &content[..content.len().min(10)];
    let mut out = Vec::with_capacity(PREFIX.len() + head.len());
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(head);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_echo_keeps_ten_bytes() {
        assert_eq!(
            binary_echo("binary😃 and more".as_bytes()),
            b"First 10 bytes of request: binary\xf0\x9f\x98\x83".to_vec()
        );
    }

    #[test]
    fn binary_echo_of_short_and_empty_content() {
        assert_eq!(binary_echo(b"abc"), b"First 10 bytes of request: abc".to_vec());
        assert_eq!(binary_echo(b""), b"First 10 bytes of request: ".to_vec());
    }
}
