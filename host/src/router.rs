//! Routing: a request's content-type ─▶ the name of the plugin that answers it.
//!
//! A route's pattern is an exact media type (`text/json`), a whole top-level
//! type (`image/*`), or everything (`*`); the most specific match wins.
//! Media types compare case-insensitively and parameters are ignored, so
//! `Text/JSON; charset=utf-8` is routed as `text/json`.

use std::collections::HashMap;
use std::fmt;

/// The guide's behaviour: searches for `text/json`, binary echo for the rest.
pub const GUIDE_ROUTES: [(&str, &str); 2] = [("text/json", "search"), ("*", "binary-echo")];

/// A routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    exact: HashMap<String, String>,
    /// Keyed by the top-level type, from `type/*` patterns.
    by_type: HashMap<String, String>,
    fallback: Option<String>,
}

/// A route that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route \"{0}\": a pattern is a media type (text/json), a type with any subtype (image/*), or *")]
    BadPattern(String),
    #[error("route \"{0}\": the plugin name is empty")]
    EmptyTarget(String),
    #[error("route \"{0}\" is given twice (patterns compare case-insensitively)")]
    Duplicate(String),
}

impl Routes {
    /// Builds a table from `(pattern, plugin)` pairs.
    pub fn new<P: AsRef<str>, T: AsRef<str>>(table: impl IntoIterator<Item = (P, T)>) -> Result<Self, RouteError> {
        let mut routes = Self::default();
        for (pattern, target) in table {
            routes.add(pattern.as_ref(), target.as_ref())?;
        }
        Ok(routes)
    }

    /// The guide's routes ([`GUIDE_ROUTES`]).
    pub fn guide() -> Self {
        Self::new(GUIDE_ROUTES).unwrap_or_default()
    }

    /// Adds a route, refusing a pattern already present.
    pub fn add(&mut self, pattern: &str, target: &str) -> Result<(), RouteError> {
        let inserted = self.set(pattern, target, false)?;
        if inserted { Ok(()) } else { Err(RouteError::Duplicate(pattern.to_owned())) }
    }

    /// Adds a route, replacing any with the same pattern.
    pub fn set_route(&mut self, pattern: &str, target: &str) -> Result<(), RouteError> {
        self.set(pattern, target, true).map(|_| ())
    }

    fn set(&mut self, pattern: &str, target: &str, replace: bool) -> Result<bool, RouteError> {
        if target.trim().is_empty() {
            return Err(RouteError::EmptyTarget(pattern.to_owned()));
        }
        let normalized = pattern.trim().to_ascii_lowercase();
        let slot = match parse_pattern(&normalized) {
            Some(Pattern::Any) => &mut self.fallback,
            Some(Pattern::Type(ty)) => return Ok(insert(&mut self.by_type, ty, target, replace)),
            Some(Pattern::Exact(ty)) => return Ok(insert(&mut self.exact, ty, target, replace)),
            None => return Err(RouteError::BadPattern(pattern.to_owned())),
        };
        if slot.is_some() && !replace {
            return Ok(false);
        }
        *slot = Some(target.to_owned());
        Ok(true)
    }

    /// The plugin for `content_type`, if any route matches.
    pub fn resolve(&self, content_type: &str) -> Option<&str> {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        let lowered;
        let essence = if essence.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = essence.to_ascii_lowercase();
            lowered.as_str()
        } else {
            essence
        };
        self.exact
            .get(essence)
            .or_else(|| essence.split_once('/').and_then(|(ty, _)| self.by_type.get(ty)))
            .or(self.fallback.as_ref())
            .map(String::as_str)
    }

    /// Every route as `(pattern, plugin)`, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = (String, &str)> {
        let mut exact: Vec<_> = self.exact.iter().map(|(p, t)| (p.clone(), t.as_str())).collect();
        let mut by_type: Vec<_> = self.by_type.iter().map(|(p, t)| (format!("{p}/*"), t.as_str())).collect();
        exact.sort();
        by_type.sort();
        exact.into_iter().chain(by_type).chain(self.fallback.iter().map(|t| ("*".to_owned(), t.as_str())))
    }

    /// The names of every plugin some route points at.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.exact.values().chain(self.by_type.values()).chain(self.fallback.iter()).map(String::as_str)
    }
}

impl fmt::Display for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (pattern, target) in self.iter() {
            write!(f, "{}{pattern} -> {target}", if first { "" } else { ", " })?;
            first = false;
        }
        Ok(())
    }
}

fn insert(map: &mut HashMap<String, String>, key: &str, target: &str, replace: bool) -> bool {
    if !replace && map.contains_key(key) {
        return false;
    }
    map.insert(key.to_owned(), target.to_owned());
    true
}

enum Pattern<'a> {
    Any,
    Type(&'a str),
    Exact(&'a str),
}

fn parse_pattern(pattern: &str) -> Option<Pattern<'_>> {
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"*/;\"".contains(&b));
    if pattern == "*" || pattern == "*/*" {
        return Some(Pattern::Any);
    }
    let (ty, sub) = pattern.split_once('/')?;
    if !token(ty) {
        return None;
    }
    if sub == "*" {
        Some(Pattern::Type(ty))
    } else if token(sub) {
        Some(Pattern::Exact(pattern))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guide_routes() {
        let routes = Routes::guide();
        assert_eq!(routes.resolve("text/json"), Some("search"));
        assert_eq!(routes.resolve("binary/custom-client-binary-type"), Some("binary-echo"));
        assert_eq!(routes.resolve(""), Some("binary-echo"));
    }

    #[test]
    fn most_specific_wins() {
        let routes = Routes::new([("image/*", "images"), ("image/png", "png"), ("*", "other")]).unwrap();
        assert_eq!(routes.resolve("image/png"), Some("png"));
        assert_eq!(routes.resolve("image/gif"), Some("images"));
        assert_eq!(routes.resolve("imagex/gif"), Some("other"));
        assert_eq!(routes.resolve("image"), Some("other"));
    }

    #[test]
    fn case_and_parameters_are_ignored() {
        let routes = Routes::new([("Text/JSON", "search")]).unwrap();
        assert_eq!(routes.resolve("text/json; charset=utf-8"), Some("search"));
        assert_eq!(routes.resolve("TEXT/Json"), Some("search"));
        assert_eq!(routes.resolve("text/plain"), None);
    }

    #[test]
    fn bad_patterns_are_refused() {
        for pattern in ["", "text", "*/json", "te*t/json", "text/js*", "text/json/x", "a b/c"] {
            assert_eq!(Routes::new([(pattern, "p")]), Err(RouteError::BadPattern(pattern.into())), "{pattern:?}");
        }
        assert_eq!(Routes::new([("a/b", " ")]), Err(RouteError::EmptyTarget("a/b".into())));
        assert_eq!(Routes::new([("a/b", "x"), ("A/B", "y")]), Err(RouteError::Duplicate("A/B".into())));
    }

    #[test]
    fn set_route_replaces() {
        let mut routes = Routes::guide();
        routes.set_route("*", "other").unwrap();
        assert_eq!(routes.resolve("x/y"), Some("other"));
        assert_eq!(routes.to_string(), "text/json -> search, * -> other");
    }
}
