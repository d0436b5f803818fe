//! Follows one repository and reports what changed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::anyhow;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::cache::{PullCache, Seen};
use super::repository::{Failure, MAX_TAGS, Repository};
use super::tag::PluginTag;
use crate::digest::Digest;
use crate::source::change::{Change, Provenance};

/// How many tags' manifest digests a poll asks for at once.
const CONCURRENT_HEADS: usize = 8;

/// How long one poll may take in all, so that a registry that accepts
/// connections and then trickles does not stall a poller for ever.
const POLL_DEADLINE: Duration = Duration::from_secs(60);

/// Follows one repository: every poll lists its tags, asks each one's
/// manifest digest, and pulls only what changed.
///
/// A poll costs a `GET` per page of the tag list (two for up to 1000
/// tags: the second, empty, says the list ended; see
/// [`super::repository::list_pages`]) and one `HEAD` per tag (up to eight
/// at once); a pull
/// follows only when a tag's manifest digest changed, and a download only
/// when its component changed too (a re-push of the same bytes moves the
/// manifest, whose config carries a creation time, but not the component).
pub struct Poller {
    repository: Repository,
    cache: Option<PullCache>,
    /// Each tag as last loaded.
    seen: BTreeMap<String, Seen>,
    /// The last error reported for a tag, so that it is reported once; and
    /// for unusable content, the manifest digest not to pull again.
    refused: HashMap<String, (String, Option<Digest>)>,
    /// Whether the last listing succeeded (`None` before the first).
    reachable: Option<bool>,
    /// Whether the last listing held every tag (not cut at [`MAX_TAGS`]).
    complete: bool,
}

impl Poller {
    /// A poller of `repository`, keeping what it pulls under `cache` (see
    /// [`Cache`]) unless that is `None`.
    pub fn new(repository: Repository, cache: Option<PullCache>) -> Self {
        Self { repository, cache, seen: BTreeMap::new(), refused: HashMap::new(), reachable: None, complete: true }
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// Where `plugin`'s bytes came from, for the log.
    fn provenance(&self, plugin: &PluginTag, cached: bool) -> Provenance {
        let (repository, tag) = (self.repository.name(), plugin.tag().to_owned());
        if cached { Provenance::PullCache { repository, tag } } else { Provenance::Registry { repository, tag } }
    }

    /// The plugins loaded, with their digests.
    pub fn seen(&self) -> &BTreeMap<String, Seen> {
        &self.seen
    }

    /// What the cache holds: one [`Change::Load`] per intact cached
    /// plugin (damaged ones are left for the registry to replace). Call it
    /// once, before the first poll, to serve at once and without the
    /// registry.
    pub fn load_cache(&mut self) -> Vec<Change> {
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
                    events.push(Change::Load { name: plugin.name().to_owned(), digest: seen.component, bytes, from: self.provenance(&plugin, true) });
                }
                Err(e) => tracing::warn!("{}: cached {plugin} not used: {e:#}", self.repository.name()),
            }
        }
        events
    }

    /// One poll. Every tag is looked at even if some fail; a repository
    /// that cannot be listed changes nothing.
    pub async fn poll(&mut self) -> Vec<Change> {
        match tokio::time::timeout(POLL_DEADLINE, self.poll_inner()).await {
            Ok(events) => events,
            Err(_) => self.unreachable(anyhow!("the poll took longer than {POLL_DEADLINE:?}")),
        }
    }

    async fn poll_inner(&mut self) -> Vec<Change> {
        let (plugins, complete) = match self.repository.plugins().await {
            Ok(listed) => listed,
            Err(e) => return self.unreachable(e),
        };
        let mut events = Vec::new();
        if complete != self.complete {
            self.complete = complete;
            if !complete {
                tracing::warn!(
                    "{} has more than {MAX_TAGS} tags: only the first {MAX_TAGS} are served, and no plugin is unloaded while the list is cut",
                    self.repository.name()
                );
            }
        }
        if self.reachable != Some(true) {
            if self.reachable == Some(false) {
                events.push(Change::Reachable { source: self.repository.name() });
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
                        events.push(Change::Refused { name: plugin.name().to_owned(), digest: None, error: text, from: self.provenance(plugin, false) });
                    }
                }
            }
        }
        for tag in gone(&self.seen, &plugins, complete) {
            self.seen.remove(&tag);
            self.refused.remove(&tag);
            changed = true;
            if let Ok(plugin) = PluginTag::from_tag(&tag) {
                let why = format!("the tag {} is gone from {}", plugin.tag(), self.repository.name());
                events.push(Change::Unload { name: plugin.name().to_owned(), why });
            }
        }
        if changed && let Some(cache) = &self.cache && let Err(e) = cache.save(&self.seen) {
            tracing::warn!("{}: cannot save the plugin cache: {e:#}", self.repository.name());
        }
        events
    }

    fn unreachable(&mut self, error: anyhow::Error) -> Vec<Change> {
        let first = self.reachable != Some(false);
        self.reachable = Some(false);
        if first {
            vec![Change::Unreachable { source: self.repository.name(), error: format!("{error:#}"), serving: self.seen.len() }]
        } else {
            tracing::debug!("{} still unreachable: {error:#}", self.repository.name());
            Vec::new()
        }
    }

    /// Looks at one tag, now at `manifest`: `Ok(None)` when nothing changed. An error carries
    /// the manifest digest when the content itself is unusable (so that it
    /// is not pulled again until the tag moves), `None` when the transfer
    /// failed (tried again at the next poll).
    async fn check(&mut self, plugin: &PluginTag, manifest: Digest) -> Result<Option<Change>, (anyhow::Error, Option<Digest>)> {
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
        let (component, size) = self.repository.component_layer(plugin, &manifest).await.map_err(classify)?;
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
        Ok(Some(Change::Load { name: plugin.name().to_owned(), digest: component, bytes, from: self.provenance(plugin, false) }))
    }

    /// Polls every `interval` until `cancel`, handing every event to
    /// `on_event`. The first poll is one interval from now: a server loads
    /// the cache ([`Poller::load_cache`]) and polls once before it starts
    /// serving, then hands the poller to this.
    pub async fn run(mut self, interval: Duration, cancel: CancellationToken, mut on_change: impl FnMut(Change) + Send) {
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
            for change in events {
                on_change(change);
            }
        }
    }
}

/// The tags loaded before that a listing no longer holds: their plugins
/// are unloaded. None when the listing is `complete` only in part: a tag
/// not listed may be one past the cut, still there.
fn gone(seen: &BTreeMap<String, Seen>, listed: &[PluginTag], complete: bool) -> Vec<String> {
    if !complete {
        return Vec::new();
    }
    seen.keys().filter(|tag| !listed.iter().any(|p| p.tag() == tag.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::oci::Options;

    #[test]
    fn only_a_complete_listing_unloads() {
        let seen = |tags: &[&str]| tags.iter().map(|tag| (tag.to_string(), Seen { manifest: Digest::of(b"m"), component: Digest::of(b"c") })).collect();
        let listed: Vec<PluginTag> = ["a", "c"].iter().map(|tag| PluginTag::from_tag(tag).expect("a tag")).collect();
        assert_eq!(gone(&seen(&["a", "b", "c"]), &listed, true), ["b"]);
        assert!(gone(&seen(&["a", "b", "c", "d"]), &listed, false).is_empty(), "cut at the bound: b and d may be past it");
    }

    #[tokio::test]
    async fn an_unreachable_registry_changes_nothing_and_is_reported_once() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let root = tempfile::tempdir().expect("temporary directory");
        let name = format!("127.0.0.1:{port}/wasmux");
        let cache = PullCache::new(root.path(), &name);
        let bytes = b"a cached component".to_vec();
        let digest = Digest::of(&bytes);
        cache.write(&digest, &bytes).expect("write");
        cache.save(&BTreeMap::from([("search".to_owned(), Seen { manifest: Digest::of(b"m"), component: digest })])).expect("save");

        let options = Options { connect_timeout: Duration::from_secs(2), ..Options::default() };
        let mut poller = Poller::new(Repository::open(&name, &options).expect("opens"), Some(cache));
        let cached = poller.load_cache();
        assert!(
            matches!(cached.as_slice(), [Change::Load { name, from: Provenance::PullCache { .. }, digest: d, .. }] if name == "search" && *d == digest),
            "{cached:?}"
        );
        let first = poller.poll().await;
        assert!(matches!(first.as_slice(), [Change::Unreachable { serving: 1, .. }]), "{first:?}");
        assert!(poller.poll().await.is_empty(), "reported once");
        assert_eq!(poller.seen().len(), 1, "nothing forgotten");
    }
}
