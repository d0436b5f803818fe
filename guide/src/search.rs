//! The guide's search: a `text/json` request `{"action": "search", "value": …}`
//! looked up in a small dictionary, answered with `{"result": …}`.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Value};

use crate::python;

/// The guide's dictionary.
const ENTRIES: [(&str, &str); 3] = [
    ("morpheus", "Follow the white rabbit. \u{1f430}"),
    ("ring", "In the caves beneath the Misty Mountains. \u{1f48d}"),
    ("\u{1f436}", "\u{1f43e} Playing ball! \u{1f3d0}"),
];

/// Why a search request could not be answered: always the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchError {
    /// `content-encoding` names an encoding this handler does not decode.
    UnknownEncoding(String),
    /// The content is not valid text in its declared encoding.
    BadText { encoding: String, detail: String },
    /// The text is not JSON.
    BadJson(String),
    /// The JSON is not an object.
    NotAnObject(&'static str),
}

impl fmt::Display for SearchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownEncoding(e) => {
                write!(f, "unsupported content-encoding \"{e}\" (use utf-8, ascii or latin-1)")
            }
            Self::BadText { encoding, detail } => write!(f, "content is not valid {encoding}: {detail}"),
            Self::BadJson(detail) => write!(f, "content is not valid JSON: {detail}"),
            Self::NotAnObject(kind) => write!(f, "request must be a JSON object, got {kind}"),
        }
    }
}

impl std::error::Error for SearchError {}

/// Answers a search request: decodes `content` as JSON text in `encoding`,
/// and returns the response content, `{"result": …}` as UTF-8 JSON written
/// as the guide's Python server writes it.
pub fn search(content: &[u8], encoding: &str) -> Result<Vec<u8>, SearchError> {
    search_with(content, encoding, lookup)
}

/// [`search`] with another dictionary lookup, for variants that match
/// differently.
pub fn search_with(
    content: &[u8],
    encoding: &str,
    find: impl Fn(&str) -> Option<&'static str>,
) -> Result<Vec<u8>, SearchError> {
    let text = decode_text(content, encoding)?;
    let request: Value = serde_json::from_str(&text).map_err(|e| SearchError::BadJson(e.to_string()))?;
    let Value::Object(request) = request else {
        return Err(SearchError::NotAnObject(crate::python::kind_of(&request)));
    };
    let result = search_answer(&request, find);
    let mut response = Map::with_capacity(1);
    response.insert("result".into(), Value::String(result));
    python::to_vec(&response).map_err(|e| SearchError::BadJson(e.to_string()))
}

/// What [`search_reporting`] found besides the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Searched {
    /// The response content, as [`search`] returns it.
    pub content: Vec<u8>,
    /// Whether the dictionary had the value; `None` when nothing was looked
    /// up (another action, or a value that is not a string).
    pub found: Option<bool>,
}

impl Searched {
    /// `hit` or `miss`, the outcome an A/B experiment counts, if a lookup
    /// was made.
    pub fn outcome(&self) -> Option<&'static str> {
        self.found.map(|found| if found { "hit" } else { "miss" })
    }
}

/// [`search_with`], telling also whether the lookup found the value.
pub fn search_reporting(
    content: &[u8],
    encoding: &str,
    find: impl Fn(&str) -> Option<&'static str>,
) -> Result<Searched, SearchError> {
    let found = std::cell::Cell::new(None);
    let content = search_with(content, encoding, |query| {
        let answer = find(query);
        found.set(Some(answer.is_some()));
        answer
    })?;
    Ok(Searched { content, found: found.get() })
}

/// The `result` text for a decoded request object, as the guide computes it,
/// with `find` doing the dictionary lookup (so variants can match otherwise).
pub fn search_answer(request: &Map<String, Value>, find: impl Fn(&str) -> Option<&'static str>) -> String {
    let action = request.get("action").unwrap_or(&Value::Null);
    if action != "search" {
        return format!("Error: invalid action \"{}\".", python::str_of(action));
    }
    let value = request.get("value").unwrap_or(&Value::Null);
    match value.as_str().and_then(&find) {
        Some(answer) => answer.to_owned(),
        None => format!("No match for \"{}\".", python::str_of(value)),
    }
}

/// The guide's exact-match lookup.
pub fn lookup(query: &str) -> Option<&'static str> {
    ENTRIES.iter().find(|(key, _)| *key == query).map(|(_, answer)| *answer)
}

/// Every entry of the dictionary, for variants that match differently.
pub fn entries() -> impl Iterator<Item = (&'static str, &'static str)> {
    ENTRIES.into_iter()
}

/// Decodes text as Python's codecs would for the common encoding names.
fn decode_text<'a>(content: &'a [u8], encoding: &str) -> Result<Cow<'a, str>, SearchError> {
    let normalized = encoding.trim().to_ascii_lowercase().replace(['_', ' '], "-");
    let bad = |detail: String| SearchError::BadText { encoding: encoding.to_owned(), detail };
    match normalized.as_str() {
        "utf-8" | "utf8" | "u8" | "utf" => std::str::from_utf8(content)
            .map(Cow::Borrowed)
            .map_err(|e| bad(e.to_string())),
        "ascii" | "us-ascii" | "646" => match content.iter().position(|b| !b.is_ascii()) {
            None => Ok(Cow::Borrowed(std::str::from_utf8(content).map_err(|e| bad(e.to_string()))?)),
            Some(at) => Err(bad(format!("byte 0x{:02x} at offset {at} is not ASCII", content[at]))),
        },
        "latin-1" | "latin1" | "iso-8859-1" | "iso8859-1" | "l1" => {
            Ok(Cow::Owned(content.iter().map(|&b| char::from(b)).collect()))
        }
        _ => Err(SearchError::UnknownEncoding(encoding.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_reports_whether_it_found_the_value() {
        let report = |body: &str| search_reporting(body.as_bytes(), "utf-8", lookup).map(|s| (s.found, s.outcome()));
        assert_eq!(report(r#"{"action": "search", "value": "morpheus"}"#), Ok((Some(true), Some("hit"))));
        assert_eq!(report(r#"{"action": "search", "value": "neo"}"#), Ok((Some(false), Some("miss"))));
        // Nothing looked up: another action, or a value that is no string.
        assert_eq!(report(r#"{"action": "find", "value": "morpheus"}"#), Ok((None, None)));
        assert_eq!(report(r#"{"action": "search", "value": 7}"#), Ok((None, None)));
        let answer = search_reporting(br#"{"action": "search", "value": "ring"}"#, "utf-8", lookup).map(|s| s.content);
        assert_eq!(answer, search(br#"{"action": "search", "value": "ring"}"#, "utf-8"));
    }

    fn answer(request: &str) -> String {
        String::from_utf8(search(request.as_bytes(), "utf-8").unwrap()).unwrap()
    }

    #[test]
    fn the_three_entries() {
        assert_eq!(
            answer(r#"{"action": "search", "value": "morpheus"}"#),
            "{\"result\": \"Follow the white rabbit. 🐰\"}"
        );
        assert_eq!(
            answer(r#"{"action": "search", "value": "ring"}"#),
            "{\"result\": \"In the caves beneath the Misty Mountains. 💍\"}"
        );
        assert_eq!(
            answer(r#"{"action": "search", "value": "🐶"}"#),
            "{\"result\": \"🐾 Playing ball! 🏐\"}"
        );
    }

    #[test]
    fn miss_and_invalid_action() {
        assert_eq!(answer(r#"{"action": "search", "value": "neo"}"#), r#"{"result": "No match for \"neo\"."}"#);
        assert_eq!(answer(r#"{"action": "find", "value": "neo"}"#), r#"{"result": "Error: invalid action \"find\"."}"#);
        assert_eq!(answer(r#"{"value": "neo"}"#), r#"{"result": "Error: invalid action \"None\"."}"#);
        assert_eq!(answer(r#"{"action": "search"}"#), r#"{"result": "No match for \"None\"."}"#);
    }

    #[test]
    fn encodings() {
        let latin = b"{\"action\": \"search\", \"value\": \"caf\xe9\"}";
        assert_eq!(
            String::from_utf8(search(latin, "latin-1").unwrap()).unwrap(),
            r#"{"result": "No match for \"café\"."}"#
        );
        assert!(matches!(search(latin, "utf-8"), Err(SearchError::BadText { .. })));
        assert!(matches!(search(latin, "ascii"), Err(SearchError::BadText { .. })));
        assert!(matches!(search(b"{}", "utf-16"), Err(SearchError::UnknownEncoding(_))));
        assert!(search(b"{}", "UTF8").is_ok());
    }

    #[test]
    fn bad_requests() {
        assert!(matches!(search(b"{nope", "utf-8"), Err(SearchError::BadJson(_))));
        assert_eq!(search(b"[1]", "utf-8"), Err(SearchError::NotAnObject("a list")));
        let deep = "[".repeat(100_000);
        assert!(matches!(search(deep.as_bytes(), "utf-8"), Err(SearchError::BadJson(_))));
    }
}
