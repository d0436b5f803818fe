//! Finds the fenced code blocks of a Markdown file and the annotations
//! written right before them.
//!
//! The file is read as CommonMark (pulldown-cmark), so a fence inside a
//! list item or a longer fence counts as a reader's renderer would count
//! it, and an example of the syntax inside a code block is not taken for
//! the real thing. An annotation belongs to the block that follows it,
//! with nothing but blank lines or other annotations in between; one that
//! is followed by anything else is an error, so that a misplaced
//! annotation cannot silently do nothing.

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

use crate::annotation::{self, Attribute};

/// A fenced code block.
#[derive(Clone, Debug)]
pub struct Fence {
    /// The line of its opening fence, from 1.
    pub line: usize,
    /// The first word of the info string (`console`, `toml`, …).
    pub lang: String,
    /// Its content, every line ending with a new line, as the reader sees
    /// it (a list item's indentation taken off).
    pub body: String,
    /// The attributes of the annotations before it, in order.
    pub attributes: Vec<Attribute>,
    /// The line of its first annotation, if any.
    pub annotation_line: Option<usize>,
    /// The paragraph that follows it in the source, where a visible note
    /// about how test-docs runs it goes.
    pub note_after: String,
}

/// The fenced blocks of `source`, or every error found (with its line).
pub fn fences(source: &str) -> Result<Vec<Fence>, Vec<(usize, String)>> {
    let lines = LineIndex::new(source);
    let mut fences = Vec::new();
    let mut errors = Vec::new();
    // Annotations read and not yet given to a block: (line, attributes).
    let mut pending: Vec<(usize, Vec<Attribute>)> = Vec::new();
    let mut html: Option<(usize, String)> = None;
    let mut code: Option<Fence> = None;
    let mut code_end = 0;
    for (event, range) in Parser::new_ext(source, Options::empty()).into_offset_iter() {
        match event {
            Event::Start(Tag::HtmlBlock) => html = Some((lines.line_of(range.start), String::new())),
            Event::Html(text) => {
                if let Some((_, block)) = html.as_mut() {
                    block.push_str(&text);
                }
            }
            Event::End(TagEnd::HtmlBlock) => {
                let Some((line, block)) = html.take() else { continue };
                match annotation::parse_comment(&block) {
                    Ok(Some(attributes)) => pending.push((line, attributes)),
                    Ok(None) => dangling(&mut pending, &mut errors, "an HTML block"),
                    Err(e) => errors.push((line, format!("malformed annotation: {e}"))),
                }
            }
            Event::InlineHtml(text) => {
                if matches!(annotation::parse_comment(&text), Ok(Some(_)) | Err(_)) {
                    errors.push((lines.line_of(range.start), "an annotation must be a block of its own: start it on a new line".into()));
                }
            }
            Event::Start(Tag::CodeBlock(kind)) => {
                let lang = match &kind {
                    CodeBlockKind::Fenced(info) => info.split_whitespace().next().unwrap_or_default().to_owned(),
                    CodeBlockKind::Indented => String::new(),
                };
                let annotation_line = pending.first().map(|(line, _)| *line);
                let attributes = pending.drain(..).flat_map(|(_, attributes)| attributes).collect();
                if matches!(kind, CodeBlockKind::Indented) && annotation_line.is_some() {
                    errors.push((lines.line_of(range.start), "annotations describe fenced blocks (```), not indented ones".into()));
                }
                code_end = range.end;
                code = Some(Fence {
                    line: lines.line_of(range.start),
                    lang,
                    body: String::new(),
                    attributes,
                    annotation_line,
                    note_after: String::new(),
                });
            }
            Event::Text(text) => {
                if let Some(fence) = code.as_mut() {
                    fence.body.push_str(&text);
                }
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some(mut fence) = code.take() {
                    fence.note_after = next_paragraph(&source[code_end.min(source.len())..]).to_owned();
                    fences.push(fence);
                }
            }
            Event::Start(_) => dangling(&mut pending, &mut errors, "another element"),
            _ => {}
        }
    }
    dangling(&mut pending, &mut errors, "the end of the file");
    if errors.is_empty() { Ok(fences) } else { Err(errors) }
}

/// Annotations followed by something that is not a code block.
fn dangling(pending: &mut Vec<(usize, Vec<Attribute>)>, errors: &mut Vec<(usize, String)>, what: &str) {
    for (line, _) in pending.drain(..) {
        errors.push((line, format!("this annotation is followed by {what}, not by the fenced block it should describe")));
    }
}

/// The first paragraph of `rest`: blank lines skipped, then every line up
/// to the next blank one.
fn next_paragraph(rest: &str) -> &str {
    let start = rest.len() - rest.trim_start_matches(['\n', '\r', ' ', '\t']).len();
    let rest = &rest[start..];
    let end = rest.find("\n\n").unwrap_or(rest.len());
    &rest[..end]
}

/// Byte offsets to line numbers.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(source: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    /// The line (from 1) holding byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_get_their_annotations_and_lines() {
        let source = "# Title\n\nText.\n\n<!-- docs-test: skip=\"why\" -->\n```console\n$ true\n```\n\nA note.\nMore.\n\nLater.\n\n```toml\na = 1\n```\n";
        let fences = fences(source).unwrap();
        assert_eq!(fences.len(), 2);
        assert_eq!(fences[0].line, 6);
        assert_eq!(fences[0].lang, "console");
        assert_eq!(fences[0].body, "$ true\n");
        assert_eq!(fences[0].annotation_line, Some(5));
        assert_eq!(fences[0].attributes[0].key, "skip");
        assert_eq!(fences[0].note_after, "A note.\nMore.");
        assert_eq!(fences[1].lang, "toml");
        assert!(fences[1].attributes.is_empty());
    }

    #[test]
    fn blocks_inside_list_items_and_longer_fences() {
        let source = "- item\n\n  <!-- docs-test: cwd=tmp -->\n  ```console\n  $ pwd\n  ```\n\n````markdown\n<!-- docs-test: skip=\"an example\" -->\n```console\n$ nothing\n```\n````\n";
        let fences = fences(source).unwrap();
        assert_eq!(fences.len(), 2);
        assert_eq!(fences[0].body, "$ pwd\n");
        assert_eq!(fences[0].attributes[0].key, "cwd");
        assert_eq!(fences[1].lang, "markdown");
        assert!(fences[1].attributes.is_empty());
    }

    #[test]
    fn misplaced_annotations_are_errors() {
        let errors = fences("<!-- docs-test: skip=\"x\" -->\n\nA paragraph.\n\n```console\n$ true\n```\n").unwrap_err();
        assert_eq!(errors[0].0, 1);
        assert!(fences("Text <!-- docs-test: skip=\"x\" --> more.\n").is_err());
        assert!(fences("Text.\n\n<!-- docs-test: skip=\"x\" -->\n").is_err());
        assert!(fences("<!-- docs-test: skip=\"x -->\n```console\n```\n").is_err());
    }
}
