//! Canaries kept in the key-value store ([`crate::kv`]): across restarts
//! (the embedded store, in the data directory) and across a fleet (servers
//! sharing a Redis share their canaries' counts and states).
//!
//! Each canary has a bucket of its own, in a place no plugin can open: the
//! bucket's plugin name is [`CANARY_PLUGIN`], which no plugin can be named
//! (plugin names are letters, digits, `-`, `_`, `.` and `@`: a file's name,
//! an OCI tag). The bucket is the tenant's, named after the route and a
//! digest of the canary's configuration, so a canary whose configuration
//! changes starts afresh, and one whose configuration stays, across
//! reloads and restarts, goes on where it was. In it:
//!
//! - `counts/SERVER`: each server's own counts (requests, errors,
//!   latency buckets of both arms), written whole, never incremented:
//!   a write that times out and is retried counts nothing twice. A server
//!   is a name drawn at random when the process starts, so an earlier run's
//!   counts stay and add up with the new run's.
//! - `state/step/N`, `state/promoted`, `state/rolled-back`: the canary
//!   (its configuration and state) as each server that took it there
//!   wrote it. Keys are only ever added, one per state: a server that has
//!   not yet seen a rollback cannot overwrite it with an earlier step, and
//!   every server takes the state furthest along ([`Canary::merge`]).
//!
//! [`CanaryStore::sync`] writes what changed here, reads the rest and
//! hands it to the [`Rollout`]; the service calls it for every canary
//! every [`SYNC_INTERVAL`], so a decision one server takes is every
//! server's within that time (and the next request's on the server that
//! took it).

use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

use super::canary::{Canary, CanaryConfig, CanaryCounts, CanaryState};
use super::rollout::{Absorbed, Rollout};
use crate::kv::{BucketId, KvError, KvLimits, Store};

/// The plugin name of canaries' buckets, which no plugin can have.
pub const CANARY_PLUGIN: &str = "wasmux:canary";

/// How often each canary is synced with the store.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// What one sync may take.
pub const SYNC_DEADLINE: Duration = Duration::from_secs(2);

/// The store's limits for canaries' keys: the host's own, never refused
/// for size (a canary's counts are a few kilobytes).
const LIMITS: KvLimits = KvLimits { max_key: 256, max_value: 1 << 20, max_keys: u64::MAX, max_bytes: u64::MAX, operations_per_request: u32::MAX };

const COUNTS: &str = "counts/";
const STATE: &str = "state/";

/// Where this server keeps its canaries.
#[derive(Clone)]
pub struct CanaryStore {
    store: Store,
    /// This process's name among the servers sharing the store.
    server: String,
}

impl std::fmt::Debug for CanaryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanaryStore").field("store", &self.store).field("server", &self.server).finish()
    }
}

impl CanaryStore {
    /// A name for this server among those sharing a store, drawn at random.
    pub fn random_name() -> String {
        let random = getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15);
        format!("{random:016x}")
    }

    /// Canaries kept in `store`, as the server `server`.
    pub fn named(store: Store, server: &str) -> Self {
        // The host's own calls are not a plugin's: the store reports none.
        Self { store, server: server.to_owned() }
    }

    /// This server's name in the store.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Writes what changed of `rollout` here, reads what every server
    /// wrote, and hands it to `rollout`, which judges the sum at `now`.
    pub async fn sync(&self, tenant: &str, route: &str, rollout: &Rollout, now: SystemTime) -> Result<Absorbed, KvError> {
        let deadline = Instant::now() + SYNC_DEADLINE;
        let bucket = bucket(tenant, route, rollout.config());
        self.write(&bucket, rollout, deadline).await?;
        let (others, states) = self.read(&bucket, deadline).await?;
        let absorbed = rollout.absorb(others, &states, now);
        if absorbed.transition.is_some() {
            // A decision on the sum: the others' at once, not a sync later.
            self.write(&bucket, rollout, deadline).await?;
        }
        Ok(absorbed)
    }

    /// Writes this server's counts and the state, if they changed.
    async fn write(&self, bucket: &BucketId, rollout: &Rollout, deadline: Instant) -> Result<(), KvError> {
        let unsaved = rollout.take_unsaved();
        let mut pairs = Vec::new();
        if let Some(counts) = &unsaved.counts {
            pairs.push((format!("{COUNTS}{}", self.server), to_json(counts)?));
        }
        if let Some(canary) = &unsaved.state {
            pairs.push((state_key(canary.state()), to_json(canary)?));
        }
        if pairs.is_empty() {
            return Ok(());
        }
        let written = self.store.set_many(bucket, pairs, &LIMITS, deadline).await;
        if written.is_err() {
            rollout.not_saved(&unsaved);
        }
        written
    }

    /// Every other server's counts, summed, and every state saved.
    async fn read(&self, bucket: &BucketId, deadline: Instant) -> Result<(CanaryCounts, Vec<Canary>), KvError> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = self.store.list_keys(bucket, cursor, deadline).await?;
            keys.extend(page.into_iter().filter(|key| key.starts_with(STATE) || (key.starts_with(COUNTS) && key[COUNTS.len()..] != *self.server)));
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut others = CanaryCounts::default();
        let mut states = Vec::new();
        if keys.is_empty() {
            return Ok((others, states));
        }
        for (key, value) in self.store.get_many(bucket, keys, deadline).await?.into_iter().flatten() {
            if key.starts_with(COUNTS) {
                match serde_json::from_slice::<CanaryCounts>(&value) {
                    Ok(counts) => others.merge(&counts),
                    Err(e) => tracing::warn!("canary counts {key} in {bucket} are unreadable, left out: {e}"),
                }
            } else {
                match serde_json::from_slice::<Canary>(&value) {
                    Ok(canary) => states.push(canary),
                    Err(e) => tracing::warn!("canary state {key} in {bucket} is unreadable, left out: {e}"),
                }
            }
        }
        Ok((others, states))
    }
}

/// The bucket of `tenant`'s canary `config` on `route`.
pub fn bucket(tenant: &str, route: &str, config: &CanaryConfig) -> BucketId {
    BucketId::new(tenant, CANARY_PLUGIN, &format!("{route} {}", config_digest(config)))
}

/// The first 16 hex digits of the SHA-256 of the configuration's JSON:
/// the same configuration has the same digest in every run and version.
pub fn config_digest(config: &CanaryConfig) -> String {
    let json = serde_json::to_vec(config).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

fn state_key(state: &CanaryState) -> String {
    match state {
        CanaryState::Stepping { step, .. } => format!("{STATE}step/{step}"),
        CanaryState::Promoted { .. } => format!("{STATE}promoted"),
        CanaryState::RolledBack { .. } => format!("{STATE}rolled-back"),
    }
}

fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>, KvError> {
    serde_json::to_vec(value).map_err(|e| KvError::Unavailable(format!("cannot write a canary as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::canary::{Guard, Transition};

    use crate::experiments::canary::testing::{MS, at, config};

    /// Requests as routing would send them at the rollout's share: the
    /// candidate fails every one.
    fn send(rollout: &Rollout, requests: u64, at_ms: u64) -> Option<Transition> {
        let mut decided = None;
        for i in 0..requests {
            let candidate = rollout.share() > 0 && i % (100 / u64::from(rollout.share())) == 0;
            decided = decided.or(rollout.record(candidate, candidate, MS, at(at_ms)));
        }
        decided
    }

    #[tokio::test]
    async fn servers_sharing_a_store_share_counts_and_a_rollback() {
        let shared = Store::in_memory();
        let (one, two) = (CanaryStore::named(shared.clone(), "one"), CanaryStore::named(shared.clone(), "two"));
        let (a, b) = (Rollout::new(config(), at(0)).expect("valid"), Rollout::new(config(), at(0)).expect("valid"));
        // Nothing stored yet: both start at the first step.
        for (store, rollout) in [(&one, &a), (&two, &b)] {
            let absorbed = store.sync("alpha", "text/json", rollout, at(1)).await.expect("synced");
            assert!(absorbed.started && absorbed.adopted.is_none(), "{absorbed:?}");
            assert_eq!(rollout.share(), 10);
        }
        // Server one sees too few failures alone to decide; nor does two.
        assert_eq!(send(&a, 12, 10), None);
        assert_eq!(send(&b, 12, 10), None);
        for (store, rollout) in [(&one, &a), (&two, &b), (&one, &a)] {
            store.sync("alpha", "text/json", rollout, at(20)).await.expect("synced");
        }
        // Together they do: the first to judge the sum rolls back, and the
        // other takes the rollback from the store.
        let report = a.report();
        assert_eq!((report.requests.stable, report.requests.stable_here), (20, 10), "{report:?}");
        let decided = [a.canary(), b.canary()].iter().filter(|c| matches!(c.state(), CanaryState::RolledBack { .. })).count();
        assert!(decided >= 1, "the sum of 4 failures against 20 requests rolls back: {report:?}");
        let absorbed = two.sync("alpha", "text/json", &b, at(30)).await.expect("synced");
        assert!(matches!(b.canary().state(), CanaryState::RolledBack { guard: Guard::ErrorRate, .. }), "{absorbed:?}");
        assert_eq!((a.share(), b.share()), (0, 0));

        // A restart: a new rollout of the same configuration is rolled back
        // before it serves anything, and its counts start from the others'.
        let restarted = Rollout::new(config(), at(1000)).expect("valid");
        let again = CanaryStore::named(shared.clone(), "three");
        assert_eq!(restarted.share(), 0);
        let absorbed = again.sync("alpha", "text/json", &restarted, at(1001)).await.expect("synced");
        assert!(absorbed.started && matches!(absorbed.adopted, Some(CanaryState::RolledBack { .. })), "{absorbed:?}");
        assert_eq!((restarted.share(), restarted.report().requests.stable), (0, 20));

        // Another tenant, route or configuration is another canary.
        let mut changed = config();
        changed.max_p99_ratio = 4.0;
        for (tenant, route, config) in [("beta", "text/json", config()), ("alpha", "text/plain", config()), ("alpha", "text/json", changed)] {
            let fresh = Rollout::new(config, at(2000)).expect("valid");
            again.sync(tenant, route, &fresh, at(2001)).await.expect("synced");
            assert_eq!((fresh.share(), fresh.report().requests.stable), (10, 0), "{tenant} {route}");
        }
    }

    #[test]
    fn the_digest_is_the_same_in_every_run() {
        assert_eq!(config_digest(&config()), config_digest(&config()));
        // Pinned: a change of the digest would start every canary afresh
        // after an upgrade.
        assert_eq!(config_digest(&config()), "7fd269829601f6c7");
        let bucket = bucket("alpha", "text/json", &config());
        assert_eq!((&*bucket.tenant, &*bucket.plugin), ("alpha", CANARY_PLUGIN));
        assert!(bucket.bucket.starts_with("text/json "), "{bucket}");
    }
}
