//! Links between the documents: every relative link must name a file of
//! the repository, and a link to a heading (`file.md#anchor`, `#anchor`)
//! a heading that exists, spelled as GitHub and mdBook spell anchors.
//! Moving a section from one file to another breaks the links to it; this
//! is what notices.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// A link found in a document.
#[derive(Clone, Debug)]
pub struct Link {
    pub line: usize,
    pub url: String,
}

/// The links of `source` and the anchors of its headings.
pub fn read(source: &str) -> (Vec<Link>, Vec<String>) {
    let starts: Vec<usize> = std::iter::once(0).chain(source.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let line_of = |offset: usize| starts.partition_point(|&s| s <= offset);
    let mut links = Vec::new();
    let mut anchors = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut heading: Option<String> = None;
    for (event, range) in Parser::new_ext(source, Options::ENABLE_TABLES).into_offset_iter() {
        match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                links.push(Link { line: line_of(range.start), url: dest_url.into_string() });
            }
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(text) | Event::Code(text) => {
                if let Some(heading) = heading.as_mut() {
                    heading.push_str(&text);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(text) = heading.take() {
                    let slug = slug(&text);
                    // A repeated heading gets -1, -2, … as on GitHub.
                    let count = seen.entry(slug.clone()).or_insert(0);
                    anchors.push(if *count == 0 { slug.clone() } else { format!("{slug}-{count}") });
                    *count += 1;
                }
            }
            _ => {}
        }
    }
    (links, anchors)
}

/// A heading's anchor: lower case, spaces to `-`, and only letters,
/// digits, `-` and `_` kept.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Checks every relative link of `files` (relative to `root`); returns the
/// number of links checked and a `FILE:LINE: …` line for each broken one.
pub fn check(root: &Path, files: &[PathBuf]) -> (usize, Vec<String>) {
    let mut anchors_of: BTreeMap<PathBuf, Option<Vec<String>>> = BTreeMap::new();
    let mut anchors = |file: &Path| -> Option<Vec<String>> {
        anchors_of
            .entry(file.to_owned())
            .or_insert_with(|| std::fs::read_to_string(root.join(file)).ok().map(|source| read(&source).1))
            .clone()
    };
    let mut checked = 0;
    let mut broken = Vec::new();
    for file in files {
        let Ok(source) = std::fs::read_to_string(root.join(file)) else { continue };
        for link in read(&source).0 {
            if link.url.contains("://") || link.url.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match link.url.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (link.url.as_str(), None),
            };
            let target = if path.is_empty() { file.clone() } else { normalize(&file.parent().unwrap_or(Path::new("")).join(path)) };
            let place = format!("{}:{}", file.display(), link.line);
            if target.components().next() == Some(Component::ParentDir) || !root.join(&target).exists() {
                broken.push(format!("{place}: the link `{}` names {}, which does not exist", link.url, target.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                match anchors(&target) {
                    Some(found) if found.iter().any(|a| a == anchor) => {}
                    Some(_) => broken.push(format!("{place}: the link `{}`: {} has no heading whose anchor is #{anchor}", link.url, target.display())),
                    None => broken.push(format!("{place}: the link `{}` has an anchor, but {} is not a readable document", link.url, target.display())),
                }
            }
        }
    }
    (checked, broken)
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_are_spelled_as_github_spells_them() {
        assert_eq!(slug("The guide's programs and the protocol"), "the-guides-programs-and-the-protocol");
        assert_eq!(slug("Walk-through: two tenants and an A/B test"), "walk-through-two-tenants-and-an-ab-test");
        let (_, anchors) = read("# One request, no server: `wasmux call`\n\n## Notes\n\n## Notes\n");
        assert_eq!(anchors, ["one-request-no-server-wasmux-call", "notes", "notes-1"]);
    }

    #[test]
    fn links_are_found_with_their_lines() {
        let (links, _) = read("Text [a](b.md#c)\nand ![i](x.png), <https://example.com>.\n\n| t | [l](#h) |\n| - | - |\n");
        let urls: Vec<_> = links.iter().map(|l| (l.line, l.url.as_str())).collect();
        assert_eq!(urls, [(1, "b.md#c"), (2, "x.png"), (2, "https://example.com"), (4, "#h")]);
    }

    #[test]
    fn broken_links_and_anchors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("docs")).unwrap();
        std::fs::write(dir.path().join("README.md"), "[ok](docs/a.md#part) [gone](docs/b.md) [bad](docs/a.md#nothing) [self](#top)\n# Top\n").unwrap();
        std::fs::write(dir.path().join("docs/a.md"), "# A\n## Part\n[up](../README.md#top) [out](../../x)\n").unwrap();
        let (checked, broken) = check(dir.path(), &[PathBuf::from("README.md"), PathBuf::from("docs/a.md")]);
        assert_eq!(checked, 6);
        assert_eq!(broken.len(), 3, "{broken:?}");
        assert!(broken[0].contains("docs/b.md, which does not exist"), "{broken:?}");
        assert!(broken[1].contains("no heading whose anchor is #nothing"), "{broken:?}");
        assert!(broken[2].starts_with("docs/a.md:3"), "{broken:?}");
    }
}
