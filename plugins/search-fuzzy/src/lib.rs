//! `search@fuzzy`: the guide's search, matching more loosely. A second
//! version of `search` to run A/B experiments with.
//!
//! The configuration key `match` (set per tenant under
//! `[tenants.NAME.plugins."search@fuzzy"]`) chooses how a query matches a
//! dictionary key: `case-insensitive`, `prefix`, or `prefix,case-insensitive`
//! (the default). Answers are the guide's answers otherwise. Each lookup
//! counts the outcome `hit` or `miss`, as `search` does, so the two can be
//! compared.

use wasmux_guide::SearchError;
use wasmux_sdk::{Guest, HandlerError, Level, Request, Response, export, outcome};

struct SearchFuzzy;

/// How a query is compared with a dictionary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Matching {
    prefix: bool,
    case_insensitive: bool,
}

impl Matching {
    /// Reads the `match` setting; an unknown word is logged and ignored.
    fn configured() -> Self {
        let Some(setting) = wasmux_sdk::config("match") else {
            return Self { prefix: true, case_insensitive: true };
        };
        let mut matching = Self { prefix: false, case_insensitive: false };
        for word in setting.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "prefix" => matching.prefix = true,
                "case-insensitive" => matching.case_insensitive = true,
                "exact" => {}
                other => wasmux_sdk::log(Level::Warn, &format!("ignoring unknown match mode {other:?}")),
            }
        }
        matching
    }

    fn matches(self, key: &str, query: &str) -> bool {
        if query.is_empty() {
            return false;
        }
        let (key, query) = if self.case_insensitive { (key.to_lowercase(), query.to_lowercase()) } else { (key.to_owned(), query.to_owned()) };
        if self.prefix { key.starts_with(&query) } else { key == query }
    }

    fn find(self, query: &str) -> Option<&'static str> {
        wasmux_guide::entries().find(|(key, _)| self.matches(key, query)).map(|(_, answer)| answer)
    }
}

impl Guest for SearchFuzzy {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let matching = Matching::configured();
        match wasmux_guide::search_reporting(&request.content, &request.content_encoding, |query| matching.find(query)) {
            Ok(searched) => {
                if let Some(name) = searched.outcome() {
                    outcome(name);
                }
                Ok(Response::new("text/json", "utf-8", searched.content))
            }
            Err(e @ SearchError::UnknownEncoding(_)) => Err(HandlerError::unsupported(e)),
            Err(e) => Err(HandlerError::bad_request(e)),
        }
    }
}

export!(SearchFuzzy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_modes() {
        let both = Matching { prefix: true, case_insensitive: true };
        assert_eq!(both.find("MORPH"), Some("Follow the white rabbit. \u{1f430}"));
        assert_eq!(both.find(""), None);
        let prefix = Matching { prefix: true, case_insensitive: false };
        assert_eq!(prefix.find("MORPH"), None);
        assert_eq!(prefix.find("ri"), Some("In the caves beneath the Misty Mountains. \u{1f48d}"));
        let insensitive = Matching { prefix: false, case_insensitive: true };
        assert_eq!(insensitive.find("Ring"), Some("In the caves beneath the Misty Mountains. \u{1f48d}"));
        assert_eq!(insensitive.find("rin"), None);
    }
}
