//! One OCI repository holding plugins: list its tags, resolve a tag to a
//! manifest, pull a component (verified against the manifest), push one.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest as _;

use super::layout;
use super::tag::PluginTag;
use crate::digest::Digest;

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
        crate::tls::install_crypto_provider();
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

    /// Every tag of the repository, at most [`MAX_TAGS`], page by page
    /// ([`list_pages`]).
    pub async fn tags(&self) -> anyhow::Result<Tags> {
        list_pages(MAX_TAGS, |last| async move {
            let page = self
                .client
                .list_tags(&self.reference, &self.auth, Some(MAX_TAGS), last.as_deref())
                .await
                .with_context(|| format!("cannot list the tags of {}", self.name()))?;
            Ok(page.tags)
        })
        .await
    }

    /// Every tag, as the plugin it serves as, sorted by plugin name; and
    /// whether that is all of them.
    pub async fn plugins(&self) -> anyhow::Result<(Vec<PluginTag>, bool)> {
        let listed = self.tags().await?;
        let mut plugins = Vec::new();
        for tag in listed.tags {
            // A registry answers only valid tags; one that does not is
            // skipped rather than failing the whole listing.
            match PluginTag::from_tag(&tag) {
                Ok(plugin) => plugins.push(plugin),
                Err(e) => tracing::warn!("{}: skipping tag {tag:?}: {e:#}", self.name()),
            }
        }
        plugins.sort_by(|a, b| a.name().cmp(b.name()));
        Ok((plugins, listed.complete))
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
    pub(super) async fn component_layer(&self, tag: &PluginTag, digest: &Digest) -> Result<(Digest, u64), Failure> {
        let (manifest, _) = self
            .client
            .pull_manifest(&self.at_digest(digest), &self.auth)
            .await
            .with_context(|| format!("cannot pull the manifest of {}:{}", self.name(), tag.tag()))
            .map_err(Failure::Transfer)?;
        let unusable = |e: anyhow::Error| Failure::Unusable(e.context(format!("{}:{} is not a usable Wasm component artifact", self.name(), tag.tag())));
        let layer = layout::component_layer(&manifest).map_err(unusable)?;
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
        let (component, size) = self.component_layer(tag, &manifest).await?;
        let bytes = self.pull_component(tag, component, size).await?;
        Ok(Pulled { tag: tag.clone(), manifest, component, bytes })
    }

    /// Reads the component blob, hashing as it goes; never more than the
    /// manifest declared. (oci-client checks the digest too; this check
    /// does not depend on it, and bounds the memory a registry can take.)
    pub(super) async fn pull_component(&self, tag: &PluginTag, digest: Digest, size: u64) -> Result<Vec<u8>, Failure> {
        let descriptor = OciDescriptor {
            media_type: layout::LAYER_MEDIA_TYPE.to_owned(),
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
        let got = Digest::from_bytes(hasher.finalize().into());
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
        let (config, layer) = layout::artifact(component, &digest)?;
        let manifest = layout::manifest(&config, &layer, &format!("{}.wasm", tag.name()));
        self.client
            .push(&self.at(tag), &[layer], config, &self.auth, Some(manifest))
            .await
            .with_context(|| format!("cannot push to {}:{}", self.name(), tag.tag()))?;
        // Ask the registry rather than re-serialize the manifest: its digest
        // is of the exact bytes it stored.
        let manifest = self.manifest_digest(tag).await?;
        Ok(Pushed { tag: tag.clone(), manifest, component: digest })
    }
}

/// A repository's tags, as far as they were listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    /// In the registry's order, each once.
    pub tags: Vec<String>,
    /// False when the repository holds more than the bound: tags not
    /// listed are not known to be gone.
    pub complete: bool,
}

/// Lists tags page by page: `page(last)` is the page after tag `last`
/// (`?n=…&last=…`), the first page after `None`. A registry may answer
/// fewer tags than asked for and say in a `Link` header that more follow
/// (the OCI distribution spec allows it); oci-client gives no headers, so
/// the pages are asked for until one brings no tag not seen before: an
/// empty page after the last tag, or the whole list again from a registry
/// that ignores `last`. Every page brings a new tag or ends the listing,
/// so at most `max` + 1 pages are asked for; past `max` tags the listing
/// stops, incomplete. A page that fails fails the listing.
pub async fn list_pages<F, Fut>(max: usize, mut page: F) -> anyhow::Result<Tags>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<String>>>,
{
    let mut tags = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut last = None;
    loop {
        let listed = page(last.take()).await?;
        let before = tags.len();
        last = listed.last().cloned();
        tags.extend(listed.into_iter().filter(|tag| seen.insert(tag.clone())));
        if tags.len() == before {
            return Ok(Tags { tags, complete: true });
        }
        if tags.len() > max {
            tags.truncate(max);
            return Ok(Tags { tags, complete: false });
        }
    }
}

/// Why a pull failed, which decides whether a poller tries it again.
pub(super) enum Failure {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry's tags `t00`… served `page_size` at a time whatever `n`
    /// asks, after `last` as the spec says; the page after `fail_after`
    /// fails.
    fn registry(count: usize, page_size: usize, fail_after: Option<&'static str>) -> impl FnMut(Option<String>) -> std::future::Ready<anyhow::Result<Vec<String>>> {
        let all: Vec<String> = (0..count).map(|i| format!("t{i:02}")).collect();
        move |last: Option<String>| {
            if last.is_some() && last.as_deref() == fail_after {
                return std::future::ready(Err(anyhow!("connection reset")));
            }
            let after = all.iter().filter(|tag| last.as_ref().is_none_or(|last| *tag > last));
            std::future::ready(Ok(after.take(page_size).cloned().collect()))
        }
    }

    #[tokio::test]
    async fn tags_are_listed_page_by_page_however_short_the_pages() {
        let every = |count: usize| (0..count).map(|i| format!("t{i:02}")).collect::<Vec<_>>();
        for page_size in [1, 2, 7, 25, 1000] {
            let listed = list_pages(1000, registry(25, page_size, None)).await.expect("listed");
            assert_eq!(listed, Tags { tags: every(25), complete: true }, "pages of {page_size}");
        }
        assert_eq!(list_pages(1000, registry(0, 10, None)).await.expect("listed"), Tags { tags: Vec::new(), complete: true });
        // Past the bound: cut, and said to be incomplete.
        assert_eq!(list_pages(10, registry(25, 3, None)).await.expect("listed"), Tags { tags: every(10), complete: false });
        assert_eq!(list_pages(10, registry(10, 3, None)).await.expect("listed"), Tags { tags: every(10), complete: true });
        // A page that fails fails the listing: no partial list.
        assert!(list_pages(1000, registry(25, 2, Some("t03"))).await.is_err());
        // A registry that ignores `last` and answers the whole list each time.
        let mut asked = 0;
        let whole = list_pages(1000, |_| {
            asked += 1;
            std::future::ready(Ok(every(5)))
        })
        .await
        .expect("listed");
        assert_eq!((whole, asked), (Tags { tags: every(5), complete: true }, 2));
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
}
