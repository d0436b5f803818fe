//! Plugins in an OCI registry: push, pull (verified), list, and poll.
//!
//! A registry repository plays the part of a plugin directory. Each tag of
//! `oci://REGISTRY/REPO` is one plugin, as each `NAME.wasm` file of a
//! directory is: tag `search` serves as plugin `search`, tag
//! `search__fuzzy` as `search@fuzzy` ([`PluginTag`] says why `__`).
//!
//! Components are stored in the CNCF Wasm OCI artifact layout, the one
//! `wkg oci push` writes (through the same crate, `oci-wasm`): an OCI image
//! manifest whose config has media type `application/vnd.wasm.config.v0+json`
//! and whose one layer, `application/wasm`, is the component's bytes. So a
//! component pushed by wasmux loads in other runtimes, and one pushed by
//! another tool of that layout loads here.
//!
//! Nothing pulled is handed out unchecked: the layer's bytes are hashed as
//! they arrive and compared with the SHA-256 digest the manifest names for
//! that layer, and they are refused when they do not match or grow past the
//! size the manifest declared. The layer digest is the SHA-256 of the
//! component, the same hash wasmux already names plugin versions and keys
//! its compile cache by, so a component pulled from a registry and the same
//! file in a directory are one version.
//!
//! [`Poller`] follows a repository: at each poll it lists the tags (one
//! request), asks each tag's manifest digest (one `HEAD` each), and pulls
//! only what changed. What it pulled is kept in a cache directory, so a
//! server that starts while the registry is down serves what it had.
//!
//! Registries on a loopback host (`localhost`, `127.0.0.0/8`, `[::1]`) are
//! spoken to over plain HTTP, as Debian's `docker-registry` serves by
//! default; every other registry over HTTPS.
//!
//! This module depends on crates and std only, not on the rest of wasmux:
//! the caller decides what a pulled component becomes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_wasm::{WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_CONFIG_MEDIA_TYPE, WasmClient, WasmConfig};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

/// The scheme that marks a registry repository where a plugin directory
/// could be given: `--plugins oci://127.0.0.1:5000/wasmux`.
pub const SCHEME: &str = "oci://";

/// The largest component accepted from a registry by default. A registry
/// decides how much it sends; without a cap a broken or hostile one could
/// make a server buffer without end.
pub const DEFAULT_MAX_COMPONENT_SIZE: u64 = 64 * 1024 * 1024;

/// The most tags read from one repository. Each is a plugin, and each costs
/// a request per poll; far more than any server routes to.
pub const MAX_TAGS: usize = 1000;

/// How many tags' manifest digests a poll asks for at once.
const CONCURRENT_HEADS: usize = 8;

/// How long one poll may take in all, so that a registry that accepts
/// connections and then trickles does not stall a poller for ever.
const POLL_DEADLINE: Duration = Duration::from_secs(60);

// ───────────────────────────── digests ─────────────────────────────

/// A SHA-256 content digest, the only algorithm wasmux accepts: it is the
/// one every registry supports, and the one plugin versions are named by.
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

// ───────────────────────── tags and plugin names ─────────────────────────

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

// ───────────────────────────── a repository ─────────────────────────────

/// How to reach a registry.
#[derive(Clone, Debug)]
pub struct Options {
    /// Credentials; anonymous by default.
    pub auth: Auth,
    /// Components larger than this are refused before they are read.
    pub max_component_size: u64,
    /// To open a connection to the registry.
    pub connect_timeout: Duration,
    /// Between two reads of one answer.
    pub read_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auth: Auth::Anonymous,
            max_component_size: DEFAULT_MAX_COMPONENT_SIZE,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// Registry credentials. `Debug` does not show secrets.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic { user: String, password: String },
    Bearer(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => write!(f, "Anonymous"),
            Self::Basic { user, .. } => write!(f, "Basic({user}, ***)"),
            Self::Bearer(_) => write!(f, "Bearer(***)"),
        }
    }
}

impl Auth {
    fn to_oci(&self) -> RegistryAuth {
        match self {
            Self::Anonymous => RegistryAuth::Anonymous,
            Self::Basic { user, password } => RegistryAuth::Basic(user.clone(), password.clone()),
            Self::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// One OCI repository holding plugins: `127.0.0.1:5000/wasmux`. Cloning it
/// is cheap (the HTTP client is shared).
#[derive(Clone)]
pub struct Repository {
    /// The repository, with a placeholder tag that is never used.
    reference: Reference,
    client: Client,
    auth: RegistryAuth,
    max_component_size: u64,
}

/// What a push stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub tag: PluginTag,
    /// The manifest's digest: `REPO@DIGEST` pulls exactly this push.
    pub manifest: Digest,
    /// The component's digest: the plugin version wasmux will name.
    pub component: Digest,
}

/// A component pulled and verified.
#[derive(Clone)]
pub struct Pulled {
    pub tag: PluginTag,
    pub manifest: Digest,
    /// SHA-256 of `bytes`, checked against the manifest.
    pub component: Digest,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Pulled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pulled")
            .field("tag", &self.tag)
            .field("manifest", &self.manifest)
            .field("component", &self.component)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Repository {
    /// Opens `oci://REGISTRY/REPO` (the `oci://` is optional). Nothing is
    /// sent until a method is called.
    pub fn open(spec: &str, options: &Options) -> anyhow::Result<Self> {
        let spec = spec.strip_prefix(SCHEME).unwrap_or(spec).trim_end_matches('/');
        ensure!(
            !spec.contains('@') && !last_segment_has_tag(spec),
            "{spec:?}: give a repository, without a tag or digest (REGISTRY/REPO)"
        );
        let parsed = Reference::from_str(spec).with_context(|| format!("{spec:?} is not a registry repository (REGISTRY/REPO)"))?;
        ensure!(
            spec.starts_with(parsed.registry()),
            "{spec:?} names no registry: write it out, as in 127.0.0.1:5000/{spec}"
        );
        let registry = parsed.resolve_registry().to_owned();
        let reference = Reference::with_tag(parsed.registry().to_owned(), parsed.repository().to_owned(), "latest".to_owned());
        let protocol = if is_loopback(&registry) { ClientProtocol::HttpsExcept(vec![registry]) } else { ClientProtocol::Https };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(options.connect_timeout),
            read_timeout: Some(options.read_timeout),
            // An index (a multi-platform image) is never a plugin: refuse it
            // rather than pick a platform.
            platform_resolver: None,
            ..ClientConfig::default()
        };
        // `Client::new` would fall back to a default client (HTTPS only) on
        // an error; `try_from` says what went wrong.
        let client = Client::try_from(config).context("cannot set up the registry client")?;
        Ok(Self { reference, client, auth: options.auth.to_oci(), max_component_size: options.max_component_size })
    }

    /// `REGISTRY/REPO`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.reference.registry(), self.reference.repository())
    }

    /// Whether it is spoken to over plain HTTP (a loopback registry).
    pub fn is_plain_http(&self) -> bool {
        is_loopback(self.reference.resolve_registry())
    }

    fn at(&self, tag: &PluginTag) -> Reference {
        Reference::with_tag(self.reference.registry().to_owned(), self.reference.repository().to_owned(), tag.tag().to_owned())
    }

    fn at_digest(&self, digest: &Digest) -> Reference {
        Reference::with_digest(self.reference.registry().to_owned(), self.reference.repository().to_owned(), digest.to_string())
    }

    /// Every tag of the repository, at most [`MAX_TAGS`].
    pub async fn tags(&self) -> anyhow::Result<Vec<String>> {
        let mut tags: Vec<String> = Vec::new();
        loop {
            let last = tags.last().cloned();
            let page = self
                .client
                .list_tags(&self.reference, &self.auth, Some(MAX_TAGS), last.as_deref())
                .await
                .with_context(|| format!("cannot list the tags of {}", self.name()))?;
            let full = page.tags.len() >= MAX_TAGS;
            tags.extend(page.tags);
            if !full || tags.len() >= MAX_TAGS {
                break;
            }
        }
        tags.truncate(MAX_TAGS);
        Ok(tags)
    }

    /// Every tag, as the plugin it serves as, sorted by plugin name.
    pub async fn plugins(&self) -> anyhow::Result<Vec<PluginTag>> {
        let mut plugins = Vec::new();
        for tag in self.tags().await? {
            // A registry answers only valid tags; one that does not is
            // skipped rather than failing the whole listing.
            match PluginTag::from_tag(&tag) {
                Ok(plugin) => plugins.push(plugin),
                Err(e) => tracing::warn!("{}: skipping tag {tag:?}: {e:#}", self.name()),
            }
        }
        plugins.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(plugins)
    }

    /// The digest of the manifest `tag` points at now (one `HEAD`).
    pub async fn manifest_digest(&self, tag: &PluginTag) -> anyhow::Result<Digest> {
        let digest = self
            .client
            .fetch_manifest_digest(&self.at(tag), &self.auth)
            .await
            .with_context(|| format!("cannot read the manifest digest of {}:{}", self.name(), tag.tag()))?;
        Digest::parse(&digest)
    }

    /// The manifest with digest `digest`, checked to be the Wasm artifact
    /// layout: its component layer's digest and size.
    async fn wasm_layer(&self, tag: &PluginTag, digest: &Digest) -> Result<(Digest, u64), Failure> {
        let (manifest, _) = self
            .client
            .pull_manifest(&self.at_digest(digest), &self.auth)
            .await
            .with_context(|| format!("cannot pull the manifest of {}:{}", self.name(), tag.tag()))
            .map_err(Failure::Transfer)?;
        let unusable = |e: anyhow::Error| Failure::Unusable(e.context(format!("{}:{} is not a usable Wasm component artifact", self.name(), tag.tag())));
        let layer = wasm_layer(&manifest).map_err(unusable)?;
        let component = Digest::parse(&layer.digest).context("its component layer's digest").map_err(unusable)?;
        let size = u64::try_from(layer.size).map_err(|_| unusable(anyhow!("its component layer has a negative size ({})", layer.size)))?;
        if size > self.max_component_size {
            return Err(unusable(anyhow!("the component is {size} bytes, over the limit of {} bytes", self.max_component_size)));
        }
        Ok((component, size))
    }

    /// Pulls the component tagged `tag`: resolves the tag to a manifest
    /// digest, reads that manifest, then the component layer, whose SHA-256
    /// must be the digest the manifest gives it.
    pub async fn pull(&self, tag: &PluginTag) -> anyhow::Result<Pulled> {
        let manifest = self.manifest_digest(tag).await?;
        self.pull_manifest(tag, manifest).await
    }

    /// [`Repository::pull`] of a manifest already resolved (`REPO@DIGEST`):
    /// what was compared is what is pulled, even if the tag moves meanwhile.
    pub async fn pull_manifest(&self, tag: &PluginTag, manifest: Digest) -> anyhow::Result<Pulled> {
        let (component, size) = self.wasm_layer(tag, &manifest).await?;
        let bytes = self.pull_component(tag, component, size).await?;
        Ok(Pulled { tag: tag.clone(), manifest, component, bytes })
    }

    /// Reads the component blob, hashing as it goes; never more than the
    /// manifest declared. (oci-client checks the digest too; this check
    /// does not depend on it, and bounds the memory a registry can take.)
    async fn pull_component(&self, tag: &PluginTag, digest: Digest, size: u64) -> Result<Vec<u8>, Failure> {
        let descriptor = OciDescriptor {
            media_type: WASM_LAYER_MEDIA_TYPE.to_owned(),
            digest: digest.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let what = || format!("{}:{} (component {})", self.name(), tag.tag(), digest.short());
        let mut stream = self
            .client
            .pull_blob_stream(&self.at(tag), &descriptor)
            .await
            .with_context(|| format!("cannot pull {}", what()))
            .map_err(Failure::Transfer)?;
        // `size` is at most `max_component_size`, checked with the manifest.
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = stream.stream.next().await {
            let chunk = chunk.with_context(|| format!("reading {}", what())).map_err(Failure::Transfer)?;
            if (bytes.len() + chunk.len()) as u64 > size {
                return Err(Failure::Unusable(anyhow!("{} is longer than the {size} bytes its manifest declares; refused", what())));
            }
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != size {
            return Err(Failure::Transfer(anyhow!("{}: got {} of the {size} bytes the manifest declares", what(), bytes.len())));
        }
        let got = Digest(hasher.finalize().into());
        if got != digest {
            return Err(Failure::Unusable(anyhow!("{}: the bytes received hash to {got}, not to the manifest's digest; refused", what())));
        }
        Ok(bytes)
    }

    /// Pushes `component` as `tag` in the Wasm artifact layout. The bytes
    /// must be a WebAssembly component (its imports and exports are written
    /// into the config, as `wkg` does).
    pub async fn push(&self, tag: &PluginTag, component: Vec<u8>) -> anyhow::Result<Pushed> {
        let digest = Digest::of(&component);
        let (config, layer): (WasmConfig, ImageLayer) =
            WasmConfig::from_raw_component(component, None).context("not a WebAssembly component")?;
        let mut annotations = BTreeMap::new();
        annotations.insert("org.opencontainers.image.title".to_owned(), format!("{}.wasm", tag.name()));
        let client = WasmClient::new(self.client.clone());
        let reference = self.at(tag);
        client
            .push(&reference, &self.auth, layer, config, Some(annotations))
            .await
            .with_context(|| format!("cannot push to {}:{}", self.name(), tag.tag()))?;
        // Ask the registry rather than re-serialize the manifest: its digest
        // is of the exact bytes it stored.
        let manifest = self.manifest_digest(tag).await?;
        Ok(Pushed { tag: tag.clone(), manifest, component: digest })
    }
}

/// Why a pull failed, which decides whether a poller tries it again.
enum Failure {
    /// The network or the registry failed: try again at the next poll.
    Transfer(anyhow::Error),
    /// The content itself cannot be used (not the Wasm layout, too large, a
    /// digest that does not match): not pulled again until the tag moves.
    Unusable(anyhow::Error),
}

impl From<Failure> for anyhow::Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Transfer(e) | Failure::Unusable(e) => e,
        }
    }
}

/// Checks a manifest is the Wasm artifact layout and returns its layer.
fn wasm_layer(manifest: &OciManifest) -> anyhow::Result<&OciDescriptor> {
    let OciManifest::Image(image) = manifest else {
        bail!("it is an image index (several platforms), not one component");
    };
    wasm_image_layer(image)
}

fn wasm_image_layer(image: &OciImageManifest) -> anyhow::Result<&OciDescriptor> {
    ensure!(
        image.config.media_type == WASM_MANIFEST_CONFIG_MEDIA_TYPE,
        "its config is {:?}, not {WASM_MANIFEST_CONFIG_MEDIA_TYPE:?}",
        image.config.media_type
    );
    let [layer] = image.layers.as_slice() else {
        bail!("it has {} layers, not the one component layer", image.layers.len());
    };
    ensure!(layer.media_type == WASM_LAYER_MEDIA_TYPE, "its layer is {:?}, not {WASM_LAYER_MEDIA_TYPE:?}", layer.media_type);
    Ok(layer)
}

/// Whether the last path segment carries `:TAG` (a registry's `:PORT` is in
/// the first segment, so only the last one is looked at).
fn last_segment_has_tag(spec: &str) -> bool {
    spec.rsplit_once('/').is_some_and(|(_, last)| last.contains(':'))
}

/// Whether a registry (`HOST[:PORT]`) is on a loopback address.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(host, _)| host)
    } else {
        registry.rsplit_once(':').map_or(registry, |(host, _)| host)
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Splits `[oci://]REGISTRY/REPO[:TAG]` into the repository and the tag
/// (`None` without one). The tag may be written as a plugin name
/// (`REPO:search@fuzzy`) or as a tag (`REPO:search__fuzzy`).
pub fn split_target(target: &str) -> anyhow::Result<(String, Option<PluginTag>)> {
    let target = target.strip_prefix(SCHEME).unwrap_or(target);
    let (dir, last) = target.rsplit_once('/').ok_or_else(|| anyhow!("{target:?}: write REGISTRY/REPO[:TAG]"))?;
    match last.split_once(':') {
        Some((repo, tag)) => Ok((format!("{dir}/{repo}"), Some(PluginTag::parse(tag)?))),
        None => Ok((target.to_owned(), None)),
    }
}

/// `wasmux push FILE.wasm REGISTRY/REPO[:TAG]`: pushes a component file.
/// Without a tag, the file's name says the plugin (`search@fuzzy.wasm` is
/// pushed as `search__fuzzy`), as a plugin directory would serve it.
pub async fn push(file: &Path, target: &str, options: &Options) -> anyhow::Result<Pushed> {
    let (repository, tag) = split_target(target)?;
    let tag = match tag {
        Some(tag) => tag,
        None => {
            let stem = file
                .file_stem()
                .and_then(|s| s.to_str())
                .ok_or_else(|| anyhow!("{}: no plugin name in the file name; give REPO:TAG", file.display()))?;
            PluginTag::from_plugin_name(stem)?
        }
    };
    let bytes = tokio::fs::read(file).await.with_context(|| format!("cannot read {}", file.display()))?;
    let size = bytes.len() as u64;
    ensure!(size <= options.max_component_size, "{} is {size} bytes, over the limit of {}", file.display(), options.max_component_size);
    Repository::open(&repository, options)?.push(&tag, bytes).await
}

/// Pulls `REGISTRY/REPO:TAG`, verified.
pub async fn pull(target: &str, options: &Options) -> anyhow::Result<Pulled> {
    let (repository, tag) = split_target(target)?;
    let tag = tag.ok_or_else(|| anyhow!("{target:?}: which tag? write REGISTRY/REPO:TAG"))?;
    Repository::open(&repository, options)?.pull(&tag).await
}

// ───────────────────────────── the cache ─────────────────────────────

/// What a poller pulled, on disk, so that a server started while its
/// registry is down serves the plugins it had.
///
/// `DIR/tags.json` maps each tag to its manifest and component digests;
/// `DIR/blobs/HEX.wasm` holds each component by its SHA-256, checked again
/// when read. Like the compiled-code cache, the directory must be writable
/// only by the user running the server.
pub struct Cache {
    dir: PathBuf,
}

/// One tag as last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub manifest: Digest,
    pub component: Digest,
}

impl Cache {
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

    /// Stores a component (write to a temporary name, then rename, so a
    /// crash leaves no half-written blob under a valid name).
    pub fn write(&self, digest: &Digest, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.blob(digest);
        let dir = self.dir.join("blobs");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomically(&path, bytes)
    }

    /// Saves the tag map, then deletes blobs no tag refers to.
    pub fn save(&self, tags: &BTreeMap<String, Seen>) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let json = serde_json::to_vec_pretty(tags).context("encode the tag map")?;
        write_atomically(&self.dir.join("tags.json"), &json)?;
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

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

// ───────────────────────────── the poller ─────────────────────────────

/// What a [`Poller`] reports.
#[derive(Debug)]
pub enum Event {
    /// A plugin is new or its component changed: load `bytes`. Their
    /// SHA-256 is `component`, already checked.
    Plugin { tag: PluginTag, component: Digest, bytes: Vec<u8>, from: Origin },
    /// The tag is gone from the repository: unload the plugin.
    Removed { tag: PluginTag },
    /// The tag points at something that cannot be used (not the Wasm
    /// layout, a digest that does not match, too large, or a transfer that
    /// failed). What was loaded for it before keeps serving. Reported once
    /// per distinct error.
    Refused { tag: PluginTag, error: String },
    /// The repository could not be listed (registry down, refused, or
    /// answering nonsense, which includes docker-registry's `"tags": null`
    /// for a repository whose last tag was deleted: oci-client 0.17 cannot
    /// read it); nothing was changed or unloaded. `serving` is
    /// how many plugins stay as they were. Reported when it starts failing,
    /// not at every poll.
    Unreachable { error: String, serving: usize },
    /// The repository can be listed again after [`Event::Unreachable`].
    Reachable,
}

/// Where a plugin's bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Registry,
    /// The poller's cache, at start-up, before the registry was asked.
    Cache,
}

/// Follows one repository: every poll lists its tags, asks each one's
/// manifest digest, and pulls only what changed.
///
/// A poll costs one `GET` of the tag list and one `HEAD` per tag (up to
/// eight at once); a pull
/// follows only when a tag's manifest digest changed, and a download only
/// when its component changed too (a re-push of the same bytes moves the
/// manifest, whose config carries a creation time, but not the component).
pub struct Poller {
    repository: Repository,
    cache: Option<Cache>,
    /// Each tag as last loaded.
    seen: BTreeMap<String, Seen>,
    /// The last error reported for a tag, so that it is reported once; and
    /// for unusable content, the manifest digest not to pull again.
    refused: HashMap<String, (String, Option<Digest>)>,
    /// Whether the last listing succeeded (`None` before the first).
    reachable: Option<bool>,
}

impl Poller {
    /// A poller of `repository`, keeping what it pulls under `cache` (see
    /// [`Cache`]) unless that is `None`.
    pub fn new(repository: Repository, cache: Option<Cache>) -> Self {
        Self { repository, cache, seen: BTreeMap::new(), refused: HashMap::new(), reachable: None }
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// The plugins loaded, with their digests.
    pub fn seen(&self) -> &BTreeMap<String, Seen> {
        &self.seen
    }

    /// What the cache holds: one [`Event::Plugin`] per intact cached
    /// plugin (damaged ones are left for the registry to replace). Call it
    /// once, before the first poll, to serve at once and without the
    /// registry.
    pub fn load_cache(&mut self) -> Vec<Event> {
        let Some(cache) = &self.cache else { return Vec::new() };
        let tags = match cache.tags() {
            Ok(tags) => tags,
            Err(e) => {
                tracing::warn!("{}: ignoring the plugin cache: {e:#}", self.repository.name());
                return Vec::new();
            }
        };
        let mut events = Vec::new();
        for (tag, seen) in tags {
            let Ok(plugin) = PluginTag::from_tag(&tag) else { continue };
            match cache.read(&seen.component) {
                Ok(bytes) => {
                    self.seen.insert(tag, seen);
                    events.push(Event::Plugin { tag: plugin, component: seen.component, bytes, from: Origin::Cache });
                }
                Err(e) => tracing::warn!("{}: cached {plugin} not used: {e:#}", self.repository.name()),
            }
        }
        events
    }

    /// One poll. Every tag is looked at even if some fail; a repository
    /// that cannot be listed changes nothing.
    pub async fn poll(&mut self) -> Vec<Event> {
        match tokio::time::timeout(POLL_DEADLINE, self.poll_inner()).await {
            Ok(events) => events,
            Err(_) => self.unreachable(anyhow!("the poll took longer than {POLL_DEADLINE:?}")),
        }
    }

    async fn poll_inner(&mut self) -> Vec<Event> {
        let plugins = match self.repository.plugins().await {
            Ok(plugins) => plugins,
            Err(e) => return self.unreachable(e),
        };
        let mut events = Vec::new();
        if self.reachable != Some(true) {
            if self.reachable == Some(false) {
                events.push(Event::Reachable);
            }
            self.reachable = Some(true);
        }
        // The HEADs go out a few at a time: an unchanged poll costs about
        // one round trip per CONCURRENT_HEADS tags.
        // Each lookup owns what it uses: a future borrowing from the poller
        // through a closure is not provably `Send`, and the poller runs in
        // a spawned task.
        let lookups = plugins.clone().into_iter().map(|plugin| {
            let repository = self.repository.clone();
            async move { repository.manifest_digest(&plugin).await }
        });
        let digests: Vec<anyhow::Result<Digest>> = futures::stream::iter(lookups).buffered(CONCURRENT_HEADS).collect().await;
        let mut changed = false;
        for (plugin, manifest) in plugins.iter().zip(digests) {
            let checked = match manifest {
                Ok(manifest) => self.check(plugin, manifest).await,
                Err(e) => Err((e, None)),
            };
            match checked {
                Ok(Some(event)) => {
                    changed = true;
                    self.refused.remove(plugin.tag());
                    events.push(event);
                }
                Ok(None) => {
                    self.refused.remove(plugin.tag());
                }
                Err((error, unusable)) => {
                    let text = format!("{error:#}");
                    let again = self.refused.get(plugin.tag()).is_some_and(|(last, _)| *last == text);
                    self.refused.insert(plugin.tag().to_owned(), (text.clone(), unusable));
                    if !again {
                        events.push(Event::Refused { tag: plugin.clone(), error: text });
                    }
                }
            }
        }
        let gone: Vec<String> = self.seen.keys().filter(|tag| !plugins.iter().any(|p| p.tag() == tag.as_str())).cloned().collect();
        for tag in gone {
            self.seen.remove(&tag);
            self.refused.remove(&tag);
            changed = true;
            if let Ok(plugin) = PluginTag::from_tag(&tag) {
                events.push(Event::Removed { tag: plugin });
            }
        }
        if changed && let Some(cache) = &self.cache && let Err(e) = cache.save(&self.seen) {
            tracing::warn!("{}: cannot save the plugin cache: {e:#}", self.repository.name());
        }
        events
    }

    fn unreachable(&mut self, error: anyhow::Error) -> Vec<Event> {
        let first = self.reachable != Some(false);
        self.reachable = Some(false);
        if first {
            vec![Event::Unreachable { error: format!("{error:#}"), serving: self.seen.len() }]
        } else {
            tracing::debug!("{} still unreachable: {error:#}", self.repository.name());
            Vec::new()
        }
    }

    /// Looks at one tag, now at `manifest`: `Ok(None)` when nothing changed. An error carries
    /// the manifest digest when the content itself is unusable (so that it
    /// is not pulled again until the tag moves), `None` when the transfer
    /// failed (tried again at the next poll).
    async fn check(&mut self, plugin: &PluginTag, manifest: Digest) -> Result<Option<Event>, (anyhow::Error, Option<Digest>)> {
        let seen = self.seen.get(plugin.tag()).copied();
        if seen.is_some_and(|s| s.manifest == manifest) {
            return Ok(None);
        }
        if let Some((error, Some(refused))) = self.refused.get(plugin.tag())
            && *refused == manifest
        {
            return Err((anyhow!("{error}"), Some(manifest)));
        }
        let classify = |failure: Failure| match failure {
            Failure::Transfer(e) => (e, None),
            Failure::Unusable(e) => (e, Some(manifest)),
        };
        let (component, size) = self.repository.wasm_layer(plugin, &manifest).await.map_err(classify)?;
        if seen.is_some_and(|s| s.component == component) {
            // Pushed again with the same bytes: nothing to load.
            self.seen.insert(plugin.tag().to_owned(), Seen { manifest, component });
            return Ok(None);
        }
        let cached = self.cache.as_ref().and_then(|c| c.read(&component).ok());
        let bytes = match cached {
            Some(bytes) => bytes,
            None => {
                let bytes = self.repository.pull_component(plugin, component, size).await.map_err(classify)?;
                if let Some(cache) = &self.cache
                    && let Err(e) = cache.write(&component, &bytes)
                {
                    tracing::warn!("{}: cannot cache {plugin}: {e:#}", self.repository.name());
                }
                bytes
            }
        };
        self.seen.insert(plugin.tag().to_owned(), Seen { manifest, component });
        Ok(Some(Event::Plugin { tag: plugin.clone(), component, bytes, from: Origin::Registry }))
    }

    /// Polls every `interval` until `cancel`, handing every event to
    /// `on_event`. The first poll is one interval from now: a server loads
    /// the cache ([`Poller::load_cache`]) and polls once before it starts
    /// serving, then hands the poller to this.
    pub async fn run(mut self, interval: Duration, cancel: CancellationToken, mut on_event: impl FnMut(Event) + Send) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let events = tokio::select! {
                () = cancel.cancelled() => return,
                events = self.poll() => events,
            };
            for event in events {
                on_event(event);
            }
        }
    }
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

    #[test]
    fn loopback_registries_get_plain_http() {
        for registry in ["localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "LOCALHOST"] {
            assert!(is_loopback(registry), "{registry}");
        }
        for registry in ["ghcr.io", "10.0.0.1:5000", "example.com:5000", "localhost.example.com"] {
            assert!(!is_loopback(registry), "{registry}");
        }
    }

    #[test]
    fn targets() {
        let (repo, tag) = split_target("oci://127.0.0.1:5000/wasmux:search@fuzzy").expect("parses");
        assert_eq!(repo, "127.0.0.1:5000/wasmux");
        assert_eq!(tag.expect("a tag").tag(), "search__fuzzy");
        let (repo, tag) = split_target("127.0.0.1:5000/team/plugins").expect("parses");
        assert_eq!((repo.as_str(), tag), ("127.0.0.1:5000/team/plugins", None));
        assert!(split_target("127.0.0.1:5000/wasmux:a__b@c").is_err());
    }

    #[test]
    fn repositories_need_a_registry_and_no_tag() {
        let options = Options::default();
        let repo = Repository::open("oci://127.0.0.1:5000/wasmux", &options).expect("opens");
        assert_eq!(repo.name(), "127.0.0.1:5000/wasmux");
        assert!(repo.is_plain_http());
        assert!(!Repository::open("ghcr.io/acme/plugins", &options).expect("opens").is_plain_http());
        assert!(Repository::open("wasmux", &options).is_err(), "no registry");
        assert!(Repository::open("127.0.0.1:5000/wasmux:search", &options).is_err(), "a tag");
        assert!(Repository::open("127.0.0.1:5000/wasmux@sha256:00", &options).is_err(), "a digest");
    }

    fn manifest(config: &str, layers: &[&str]) -> OciImageManifest {
        let descriptor = |media_type: &str| OciDescriptor {
            media_type: media_type.to_owned(),
            digest: Digest::of(media_type.as_bytes()).to_string(),
            size: 1,
            ..OciDescriptor::default()
        };
        OciImageManifest {
            config: descriptor(config),
            layers: layers.iter().map(|m| descriptor(m)).collect(),
            ..OciImageManifest::default()
        }
    }

    #[test]
    fn only_the_wasm_artifact_layout_is_accepted() {
        let good = manifest(WASM_MANIFEST_CONFIG_MEDIA_TYPE, &[WASM_LAYER_MEDIA_TYPE]);
        assert!(wasm_image_layer(&good).is_ok());
        let image = manifest("application/vnd.oci.image.config.v1+json", &["application/vnd.oci.image.layer.v1.tar+gzip"]);
        assert!(wasm_image_layer(&image).expect_err("refused").to_string().contains("config"));
        let two = manifest(WASM_MANIFEST_CONFIG_MEDIA_TYPE, &[WASM_LAYER_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE]);
        assert!(wasm_image_layer(&two).expect_err("refused").to_string().contains("2 layers"));
    }

    #[test]
    fn the_cache_keeps_what_a_tag_points_at_and_checks_it_when_read() {
        let root = tempfile::tempdir().expect("temporary directory");
        let cache = Cache::new(root.path(), "127.0.0.1:5000/wasmux");
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

    #[tokio::test]
    async fn an_unreachable_registry_changes_nothing_and_is_reported_once() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let root = tempfile::tempdir().expect("temporary directory");
        let name = format!("127.0.0.1:{port}/wasmux");
        let cache = Cache::new(root.path(), &name);
        let bytes = b"a cached component".to_vec();
        let digest = Digest::of(&bytes);
        cache.write(&digest, &bytes).expect("write");
        cache.save(&BTreeMap::from([("search".to_owned(), Seen { manifest: Digest::of(b"m"), component: digest })])).expect("save");

        let options = Options { connect_timeout: Duration::from_secs(2), ..Options::default() };
        let mut poller = Poller::new(Repository::open(&name, &options).expect("opens"), Some(cache));
        let cached = poller.load_cache();
        assert!(
            matches!(cached.as_slice(), [Event::Plugin { tag, from: Origin::Cache, component, .. }] if tag.name() == "search" && *component == digest),
            "{cached:?}"
        );
        let first = poller.poll().await;
        assert!(matches!(first.as_slice(), [Event::Unreachable { serving: 1, .. }]), "{first:?}");
        assert!(poller.poll().await.is_empty(), "reported once");
        assert_eq!(poller.seen().len(), 1, "nothing forgotten");
    }
}
