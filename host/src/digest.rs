//! A plugin's identity: the SHA-256 of its component's bytes.
//!
//! One type for every place that names a component by its hash: a plugin
//! version served (shown as its first 12 hex digits), the compiled-code
//! cache's key, and an OCI registry's layer and manifest digests (written
//! `sha256:` and 64 hex digits). A component pulled from a registry and the
//! same file in a directory are one version, hashed once, where their bytes
//! arrive.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context as _, anyhow, ensure};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// A SHA-256 content digest, the only algorithm wasmux accepts: the one
/// every registry supports. Shown as `sha256:HEX` ([`Digest::short`] for
/// the 12 digits that name a version in logs, metrics and reports).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(sha2::Sha256::digest(bytes).into())
    }

    /// Parses `sha256:` followed by 64 lowercase hex digits, as registries
    /// write digests.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow!("digest {text:?} is not a sha256 digest (only sha256 is supported)"))?;
        ensure!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "digest {text:?} is not 64 lowercase hex digits"
        );
        let mut bytes = [0; 32];
        hex::decode_to_slice(hex, &mut bytes).with_context(|| format!("digest {text:?}"))?;
        Ok(Self(bytes))
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits: how wasmux names a plugin version in logs.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }

    /// The raw 32 bytes.
    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// A digest computed elsewhere (a hasher fed as bytes arrived).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Self::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(Digest::parse(&d.to_string()).expect("parses"), d);
        assert_eq!(d.short(), "e3b0c44298fc");
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse("sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855").is_err());
        assert!(Digest::parse("sha256:e3b0").is_err());
    }
}
