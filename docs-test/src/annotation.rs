//! The annotation language: `<!-- docs-test: KEY="VALUE" KEY=VALUE FLAG -->`.
//!
//! An annotation is an HTML comment, which a reader of the rendered page
//! never sees, placed right before the fenced block it describes. Its body
//! is a list of attributes separated by white space (new lines included):
//! `key="a value"` (with `\"` and `\\` inside the quotes), `key=word`, or a
//! bare `flag`. What each key means is [`crate::plan`]'s business; this
//! module only reads the list.

/// The prefix that marks an HTML comment as an annotation.
pub const PREFIX: &str = "docs-test:";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub key: String,
    /// `None` for a bare flag.
    pub value: Option<String>,
}

/// Reads an HTML comment. `Ok(None)` if it is not an annotation (any other
/// comment); an error says what is malformed.
pub fn parse_comment(comment: &str) -> Result<Option<Vec<Attribute>>, String> {
    let text = comment.trim();
    let Some(inner) = text.strip_prefix("<!--") else { return Ok(None) };
    let inner = inner.trim_start();
    let Some(body) = inner.strip_prefix(PREFIX) else { return Ok(None) };
    let Some(body) = body.trim_end().strip_suffix("-->") else {
        return Err("an annotation must end with --> on its own (one comment per annotation)".into());
    };
    parse_attributes(body).map(Some)
}

/// Parses `key="value" key=value flag …`.
pub fn parse_attributes(body: &str) -> Result<Vec<Attribute>, String> {
    let mut attributes = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(attributes);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '-') {
            key.push(c);
        }
        if key.is_empty() {
            let rest: String = chars.collect();
            return Err(format!("expected an attribute name at `{}`", rest.trim()));
        }
        if chars.next_if_eq(&'=').is_none() {
            match chars.peek() {
                None => {}
                Some(c) if c.is_whitespace() => {}
                Some(c) => return Err(format!("after `{key}`: expected `=`, a space or the end, found `{c}`")),
            }
            attributes.push(Attribute { key, value: None });
            continue;
        }
        let value = if chars.next_if_eq(&'"').is_some() {
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("the value of `{key}` has no closing quote")),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\')) => value.push(c),
                        Some(c) => return Err(format!("in the value of `{key}`: `\\{c}` is not an escape (only \\\" and \\\\ are)")),
                        None => return Err(format!("the value of `{key}` has no closing quote")),
                    },
                    Some(c) => value.push(c),
                }
            }
            if let Some(c) = chars.peek()
                && !c.is_whitespace()
            {
                return Err(format!("after the value of `{key}`: expected a space, found `{c}`"));
            }
            value
        } else {
            let mut value = String::new();
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
            if value.is_empty() {
                return Err(format!("`{key}=` needs a value"));
            }
            value
        };
        attributes.push(Attribute { key, value: Some(value) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(key: &str, value: Option<&str>) -> Attribute {
        Attribute { key: key.into(), value: value.map(Into::into) }
    }

    #[test]
    fn reads_quoted_bare_and_flag_attributes() {
        let parsed = parse_comment("<!-- docs-test: server=\"wasmux serve --listen 127.0.0.1:65432\" wait=65432\n  background -->").unwrap().unwrap();
        assert_eq!(
            parsed,
            vec![attr("server", Some("wasmux serve --listen 127.0.0.1:65432")), attr("wait", Some("65432")), attr("background", None)]
        );
    }

    #[test]
    fn escapes_inside_quotes() {
        let parsed = parse_attributes(r#"setup="echo \"a\\b\"""#).unwrap();
        assert_eq!(parsed, vec![attr("setup", Some(r#"echo "a\b""#))]);
    }

    #[test]
    fn other_comments_are_not_annotations() {
        assert_eq!(parse_comment("<!-- measured by hand: keep -->").unwrap(), None);
        assert_eq!(parse_comment("<!--docs-test: skip=\"x\"-->").unwrap(), Some(vec![attr("skip", Some("x"))]));
    }

    #[test]
    fn malformed_annotations_are_errors() {
        assert!(parse_attributes("skip=\"no end").is_err());
        assert!(parse_attributes("skip=").is_err());
        assert!(parse_attributes("=x").is_err());
        assert!(parse_attributes("a=\"x\"b").is_err());
        assert!(parse_attributes(r#"a="\n""#).is_err());
    }
}
