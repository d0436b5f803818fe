//! What a poller pulled, on disk.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::files;

/// What a poller pulled, on disk, so that a server started while its
/// registry is down serves the plugins it had.
///
/// `DIR/tags.json` maps each tag to its manifest and component digests;
/// `DIR/blobs/HEX.wasm` holds each component by its SHA-256, checked again
/// when read. Like the compiled-code cache, the directory must be writable
/// only by the user running the server.
pub struct PullCache {
    dir: PathBuf,
}

/// One tag as last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub manifest: Digest,
    pub component: Digest,
}

impl PullCache {
    /// The cache of `repository` under `root` (made when first written):
    /// each repository gets its own directory, named after it.
    pub fn new(root: &Path, repository: &str) -> Self {
        let safe: String = repository.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        // Two repositories whose names differ only in replaced characters
        // still get different directories.
        let hash = Digest::of(repository.as_bytes()).short();
        Self { dir: root.join(format!("{safe}-{hash}")) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join(format!("{}.wasm", digest.hex()))
    }

    /// The tags last saved; empty when there is no cache yet.
    pub fn tags(&self) -> anyhow::Result<BTreeMap<String, Seen>> {
        let path = self.dir.join("tags.json");
        match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The component `digest`, if cached and intact.
    pub fn read(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let path = self.blob(digest);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        ensure!(Digest::of(&bytes) == *digest, "{} is damaged (its hash is not its name)", path.display());
        Ok(bytes)
    }

    /// Stores a component, whole or not at all: a crash leaves no
    /// half-written blob under a valid name.
    pub fn write(&self, digest: &Digest, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.blob(digest);
        let dir = self.dir.join("blobs");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_whole(&path, bytes)
    }

    /// Saves the tag map, then deletes blobs no tag refers to.
    pub fn save(&self, tags: &BTreeMap<String, Seen>) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let json = serde_json::to_vec_pretty(tags).context("encode the tag map")?;
        write_whole(&self.dir.join("tags.json"), &json)?;
        let keep: Vec<PathBuf> = tags.values().map(|seen| self.blob(&seen.component)).collect();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("blobs")) {
            for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                if !keep.contains(&path) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }
}

/// Writes `bytes` at `path` whole or not at all.
fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    files::write_atomically(path, 0o600, |file| file.write_all(bytes)).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_what_a_tag_points_at_and_checks_it_when_read() {
        let root = tempfile::tempdir().expect("temporary directory");
        let cache = PullCache::new(root.path(), "127.0.0.1:5000/wasmux");
        assert!(cache.tags().expect("no cache yet").is_empty());
        let (old, new) = (b"old component".to_vec(), b"new component".to_vec());
        let (d_old, d_new) = (Digest::of(&old), Digest::of(&new));
        cache.write(&d_old, &old).expect("write");
        cache.write(&d_new, &new).expect("write");
        let tags = BTreeMap::from([("search".to_owned(), Seen { manifest: Digest::of(b"m"), component: d_new })]);
        cache.save(&tags).expect("save");
        assert_eq!(cache.tags().expect("read"), tags);
        assert_eq!(cache.read(&d_new).expect("intact"), new);
        assert!(cache.read(&d_old).is_err(), "blobs no tag refers to are deleted");
        std::fs::write(cache.blob(&d_new), b"tampered").expect("overwrite");
        assert!(cache.read(&d_new).expect_err("damaged").to_string().contains("damaged"));
    }
}
