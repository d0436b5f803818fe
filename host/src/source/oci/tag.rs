//! A tag of a plugin repository and the plugin name it serves as.

use std::fmt;

use anyhow::ensure;


/// A tag of a plugin repository and the plugin it serves as.
///
/// Plugin names are file names (`search`, `search@fuzzy`: letters, digits
/// and `-_.@`), but an OCI tag may only hold letters, digits and `_.-`
/// (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`). `-`, `.` and `_` already occur in
/// plugin names, so none of them alone can stand for `@` without two names
/// sharing a tag. A tag therefore writes `@` as two underscores:
///
/// | plugin | tag |
/// | --- | --- |
/// | `search` | `search` |
/// | `search@fuzzy` | `search__fuzzy` |
/// | `binary-echo@v1.2` | `binary-echo__v1.2` |
///
/// Every tag reads as exactly one plugin name (each `__` is an `@`, left to
/// right). A plugin name has a tag when reading that tag gives the name
/// back: names with two underscores in a row, or an underscore right before
/// `@`, have none and are refused by [`PluginTag::from_plugin_name`] with a
/// message saying so.
///
/// Why one repository with a tag per plugin, rather than a repository per
/// plugin with its versions as tags (`REPO/search:fuzzy`): a server is told
/// one place, `oci://REGISTRY/REPO`, as it is told one directory today, and
/// finds every plugin by listing that repository's tags — one request, part
/// of the distribution spec's pull API that every registry serves. Finding
/// the repositories under a path needs `/v2/_catalog`, which most hosted
/// registries do not offer, and a request per plugin per poll; and a
/// repository per plugin leaves no tag for the unversioned `search` but
/// `latest`, which other tools move by default.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginTag {
    tag: String,
    name: String,
}

impl PluginTag {
    /// The plugin that tag `tag` serves as. Fails only for a string that is
    /// not an OCI tag.
    pub fn from_tag(tag: &str) -> anyhow::Result<Self> {
        ensure!(is_oci_tag(tag), "{tag:?} is not an OCI tag (letters, digits and `_.-`, at most 128, not starting with `.` or `-`)");
        Ok(Self { tag: tag.to_owned(), name: tag.replace("__", "@") })
    }

    /// The tag that plugin `name` is pushed as.
    pub fn from_plugin_name(name: &str) -> anyhow::Result<Self> {
        ensure!(
            !name.is_empty()
                && !name.starts_with('.')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)),
            "{name:?} is not a plugin name (letters, digits and `-_.@`, not starting with `.`)"
        );
        let tag = name.replace('@', "__");
        ensure!(is_oci_tag(&tag), "plugin {name:?} has no OCI tag: {tag:?} is not a valid tag (at most 128 characters, not starting with `-`)");
        let back = tag.replace("__", "@");
        ensure!(
            back == name,
            "plugin {name:?} has no OCI tag: tags write `@` as `__`, so {tag:?} would read as {back:?}; \
             rename it without `__` and without `_` right before `@`"
        );
        Ok(Self { tag, name: name.to_owned() })
    }

    /// Reads either form: a plugin name when it holds `@`, a tag otherwise
    /// (the two agree wherever both are valid). What `wasmux push` accepts
    /// after `REPO:`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.contains('@') { Self::from_plugin_name(text) } else { Self::from_tag(text) }
    }

    /// The OCI tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The plugin's full name, as routes name it: `search@fuzzy`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin without its version: `search` for `search@fuzzy`.
    pub fn plugin(&self) -> &str {
        self.name.split_once('@').map_or(self.name.as_str(), |(plugin, _)| plugin)
    }

    /// The version after `@`, if any: `fuzzy` for `search@fuzzy`.
    pub fn version(&self) -> Option<&str> {
        self.name.split_once('@').map(|(_, version)| version)
    }
}

impl fmt::Display for PluginTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tag == self.name { write!(f, "{}", self.name) } else { write!(f, "{} (tag {})", self.name, self.tag) }
    }
}

impl fmt::Debug for PluginTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The OCI distribution spec's tag grammar.
fn is_oci_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    first_ok && tag.len() <= 128 && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_plugin_names() {
        let fuzzy = PluginTag::from_plugin_name("search@fuzzy").expect("valid");
        assert_eq!(fuzzy.tag(), "search__fuzzy");
        assert_eq!((fuzzy.plugin(), fuzzy.version()), ("search", Some("fuzzy")));
        assert_eq!(PluginTag::from_tag("search__fuzzy").expect("valid"), fuzzy);
        assert_eq!(PluginTag::parse("search@fuzzy").expect("valid"), fuzzy);
        assert_eq!(PluginTag::parse("search__fuzzy").expect("valid"), fuzzy);

        let plain = PluginTag::from_tag("binary-echo").expect("valid");
        assert_eq!((plain.name(), plain.plugin(), plain.version()), ("binary-echo", "binary-echo", None));
        assert_eq!(PluginTag::from_plugin_name("binary-echo@v1.2").expect("valid").tag(), "binary-echo__v1.2");
        assert_eq!(PluginTag::from_plugin_name("a@_b").expect("valid").tag(), "a___b");
        assert_eq!(PluginTag::from_tag("a___b").expect("valid").name(), "a@_b");
        assert_eq!(PluginTag::from_tag("snake_case").expect("valid").name(), "snake_case");
    }

    #[test]
    fn names_without_a_tag_are_refused_with_the_reason() {
        for name in ["a__b", "a_@b", "", ".hidden", "sp ace", "-dash", "x".repeat(129).as_str()] {
            assert!(PluginTag::from_plugin_name(name).is_err(), "{name:?} should have no tag");
        }
        let error = PluginTag::from_plugin_name("a__b").expect_err("refused").to_string();
        assert!(error.contains("would read as \"a@b\""), "{error}");
        for tag in ["", ".x", "-x", "a@b", "a:b", "a/b"] {
            assert!(PluginTag::from_tag(tag).is_err(), "{tag:?} is not a tag");
        }
    }

    #[test]
    fn every_tag_reads_back_as_itself() {
        // The mapping is a bijection between tags and the names it accepts.
        let alphabet = ["a", "_", "@", ".", "-"];
        let mut names = vec![String::from("a")];
        for _ in 0..4 {
            names = names.iter().flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}"))).collect();
            for name in &names {
                if let Ok(plugin) = PluginTag::from_plugin_name(name) {
                    assert_eq!(PluginTag::from_tag(plugin.tag()).expect("a tag").name(), name);
                }
                if let Ok(plugin) = PluginTag::from_tag(name) {
                    assert_eq!(PluginTag::from_plugin_name(plugin.name()).expect("a name").tag(), name);
                }
            }
        }
    }
}
