//! Values written the way the guide's Python programs write them.
//!
//! - JSON as `json.dumps(obj, ensure_ascii=False)` writes it: `", "` between
//!   items and `": "` after keys, non-ASCII text left as UTF-8. The guide
//!   writes every header and JSON content this way, so matching it makes
//!   wasmux's messages byte for byte the guide's.
//! - `str()` of a decoded JSON value, as the guide's f-strings show it.
//! - `repr()` of bytes (`b'\x00g{"byteorder": …'`), as the guide prints what
//!   goes over the wire.

use std::io;

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};

/// A `serde_json` formatter with Python's default separators.
#[derive(Debug, Default, Clone, Copy)]
pub struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// Appends `value`, serialized as Python would, to `out`.
pub fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    value.serialize(&mut Serializer::with_formatter(out, PythonFormatter))
}

/// Serializes `value` as Python would.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    write(&mut out, value)?;
    Ok(out)
}

/// What kind of value a JSON value is, in words for an error message, with
/// Python's names for the containers: `a string`, `a list`, `an object`.
pub fn kind_of(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Renders a JSON value the way Python's `str()` renders the decoded object,
/// as the guide's f-strings do: `None`, `True`, `3`, `abc`, `['a', 1]`.
pub fn str_of(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(s) => s.clone(),
        other => repr_of(other),
    }
}

fn repr_of(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => str_ofing_repr(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(repr_of).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", str_ofing_repr(k), repr_of(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// Python's `repr()` of a string: single quotes unless the text holds a
/// single quote and no double quote.
fn str_ofing_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr()` of a bytes object: `b'...'` with printable ASCII as
/// is, `\t \n \r \\` escaped, and every other byte as `\xNN`.
pub fn bytes_repr(bytes: &[u8]) -> String {
    let quote = if bytes.contains(&b'\'') && !bytes.contains(&b'"') { b'"' } else { b'\'' };
    let mut out = String::with_capacity(bytes.len() + 3);
    out.push('b');
    out.push(char::from(quote));
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b if b == quote => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            b => {
                use std::fmt::Write;
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push(char::from(quote));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn separators_match_python() {
        let v = json!({"byteorder": "little", "content-length": 43, "list": [1, 2]});
        assert_eq!(
            to_vec(&v).unwrap(),
            br#"{"byteorder": "little", "content-length": 43, "list": [1, 2]}"#.to_vec()
        );
    }

    #[test]
    fn non_ascii_stays_utf8_and_controls_are_escaped() {
        let v = json!({"result": "Follow the white rabbit. 🐰\n\u{1}"});
        assert_eq!(
            to_vec(&v).unwrap(),
            "{\"result\": \"Follow the white rabbit. 🐰\\n\\u0001\"}".as_bytes().to_vec()
        );
    }

    #[test]
    fn bytes_repr_matches_python() {
        assert_eq!(
            bytes_repr(b"\x00g{\"byteorder\": \"big\"}"),
            r#"b'\x00g{"byteorder": "big"}'"#
        );
        assert_eq!(
            bytes_repr("First 10 bytes of request: binary😃".as_bytes()),
            r"b'First 10 bytes of request: binary\xf0\x9f\x98\x83'"
        );
        assert_eq!(bytes_repr(b"it's"), r#"b"it's""#);
        assert_eq!(bytes_repr(b"'\"\\\n"), r#"b'\'"\\\n'"#);
    }

    #[test]
    fn str_of_of_values() {
        assert_eq!(str_of(&json!(null)), "None");
        assert_eq!(str_of(&json!(true)), "True");
        assert_eq!(str_of(&json!(12)), "12");
        assert_eq!(str_of(&json!(1.5)), "1.5");
        assert_eq!(str_of(&json!("neo")), "neo");
        assert_eq!(str_of(&json!(["a", 1, null])), "['a', 1, None]");
        assert_eq!(str_of(&json!({"k": "it's"})), "{'k': \"it's\"}");
    }
}
