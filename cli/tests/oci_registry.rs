//! Plugins in a real OCI registry (Debian's `docker-registry`, on a free
//! loopback port, storage in a temporary directory): push, verified pull,
//! tags as plugin names, and a poller that follows the repository, refuses
//! what it cannot use, and keeps serving from its cache when the registry
//! is gone.


use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::common::plugins_dir;
use crate::common::registry::LocalRegistry;
use oci_client::client::{Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use wasmux::source::oci::{self, Digest, Options, PluginTag, Poller, PullCache, Repository};
use wasmux::source::{Change, Provenance};

fn component(name: &str) -> Vec<u8> {
    std::fs::read(plugins_dir().join(format!("{name}.wasm"))).expect("read a built plugin")
}

fn tag(name: &str) -> PluginTag {
    PluginTag::from_plugin_name(name).expect("a plugin name with a tag")
}

/// The plugins an event list loads, by name, with their digests.
fn loaded(events: &[Change]) -> BTreeMap<String, Digest> {
    events
        .iter()
        .filter_map(|e| match e {
            Change::Load { name, digest, .. } => Some((name.clone(), *digest)),
            _ => None,
        })
        .collect()
}

/// A plain oci-client, for what wasmux itself would never push.
fn raw_client() -> Client {
    Client::try_from(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    })
    .expect("an OCI client")
}

/// `DELETE /v2/NAME/manifests/DIGEST`, which oci-client does not offer.
fn delete_manifest(registry: &LocalRegistry, repository: &str, digest: &Digest) {
    let mut stream = std::net::TcpStream::connect(registry.addr).expect("connect to the registry");
    stream.set_read_timeout(Some(crate::common::STEP)).expect("timeout");
    write!(
        stream,
        "DELETE /v2/{repository}/manifests/{digest} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        registry.addr
    )
    .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "delete refused: {answer}");
}

/// The registry's file for a blob (the storage layout of distribution 2.x).
fn blob_file(registry: &LocalRegistry, digest: &Digest) -> std::path::PathBuf {
    let hex = digest.hex();
    registry.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_list_and_poll() {
    let registry = LocalRegistry::start();
    let name = registry.repository("wasmux");
    let options = Options::default();
    let repo = Repository::open(&format!("oci://{name}"), &options).expect("open the repository");

    // Push as `wasmux push` will: the tag from the file name, or given.
    let search = component("search");
    let pushed = oci::push(&plugins_dir().join("search.wasm"), &name, &options).await.expect("push search");
    assert_eq!(pushed.tag.tag(), "search");
    assert_eq!(pushed.component, Digest::of(&search), "the layer digest is the component's SHA-256");
    let fuzzy = oci::push(&plugins_dir().join("search@fuzzy.wasm"), &format!("{name}:search@fuzzy"), &options)
        .await
        .expect("push search@fuzzy");
    assert_eq!(fuzzy.tag.tag(), "search__fuzzy");

    let tags = repo.tags().await.expect("list tags");
    assert_eq!(tags, ["search", "search__fuzzy"]);
    let names: Vec<String> = repo.plugins().await.expect("plugins").iter().map(|p| p.name().to_owned()).collect();
    assert_eq!(names, ["search", "search@fuzzy"]);

    // A pull gives back exactly the bytes pushed, and says which they are.
    let pulled = oci::pull(&format!("{name}:search"), &options).await.expect("pull");
    assert_eq!(pulled.bytes, search);
    assert_eq!((pulled.manifest, pulled.component), (pushed.manifest, pushed.component));

    // A poller loads every tag once, then nothing until something changes.
    let cache_root = tempfile::tempdir().expect("temporary directory");
    let mut poller = Poller::new(Repository::open(&name, &options).expect("open"), Some(PullCache::new(cache_root.path(), &name)));
    assert!(poller.load_cache().is_empty(), "nothing cached yet");
    let first = poller.poll().await;
    assert_eq!(
        loaded(&first),
        BTreeMap::from([("search".to_owned(), pushed.component), ("search@fuzzy".to_owned(), fuzzy.component)])
    );
    assert!(first.iter().all(|e| matches!(e, Change::Load { from: Provenance::Registry { .. }, .. })), "{first:?}");
    assert!(poller.poll().await.is_empty(), "no change, no event");

    // A new component under a tag is pulled; the same bytes pushed again
    // (a new manifest: the config carries a creation time) are not.
    let echo = component("binary-echo");
    let moved = repo.push(&tag("search"), echo.clone()).await.expect("push over search");
    let events = poller.poll().await;
    assert_eq!(loaded(&events), BTreeMap::from([("search".to_owned(), Digest::of(&echo))]));
    let again = repo.push(&tag("search"), echo.clone()).await.expect("push the same bytes");
    assert_ne!(again.manifest, moved.manifest, "a second push makes a new manifest");
    assert!(poller.poll().await.is_empty(), "the same component is not loaded again");

    // Deleting a tag's manifest unloads that plugin only.
    delete_manifest(&registry, "wasmux", &fuzzy.manifest);
    let events = poller.poll().await;
    assert!(matches!(events.as_slice(), [Change::Unload { name, .. }] if name == "search@fuzzy"), "{events:?}");

    // The registry goes away: nothing is unloaded, it is said once, and a
    // new poller (a restarted server) serves from the cache.
    let mut registry = registry;
    registry.stop();
    let events = poller.poll().await;
    assert!(matches!(events.as_slice(), [Change::Unreachable { serving: 1, .. }]), "{events:?}");
    assert!(poller.poll().await.is_empty(), "said once");
    let mut restarted = Poller::new(Repository::open(&name, &options).expect("open"), Some(PullCache::new(cache_root.path(), &name)));
    let cached = restarted.load_cache();
    assert_eq!(loaded(&cached), BTreeMap::from([("search".to_owned(), Digest::of(&echo))]));
    assert!(cached.iter().all(|e| matches!(e, Change::Load { from: Provenance::PullCache { .. }, .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_of_other_tools_load_and_bad_ones_are_refused() {
    let registry = LocalRegistry::start();
    let name = registry.repository("shared");
    let options = Options::default();
    let repo = Repository::open(&name, &options).expect("open");
    let client = raw_client();
    let at = |tag: &str| Reference::with_tag(registry.addr.to_string(), "shared".to_owned(), tag.to_owned());
    let echo = component("binary-echo");

    // Another tool's push of the Wasm layout: its own config (no component
    // description), no annotations. It loads.
    let config = Config {
        data: format!(r#"{{"architecture":"wasm","os":"wasip2","layerDigests":["{}"]}}"#, Digest::of(&echo)).into_bytes().into(),
        media_type: oci::layout::CONFIG_MEDIA_TYPE.to_owned(),
        annotations: None,
    };
    let layer = ImageLayer::new(echo.clone(), oci::layout::LAYER_MEDIA_TYPE.to_owned(), None);
    client.push(&at("binary-echo"), &[layer], config, &RegistryAuth::Anonymous, None).await.expect("push by another tool");
    let pulled = repo.pull(&tag("binary-echo")).await.expect("pull");
    assert_eq!(pulled.bytes, echo);

    // A container image under a tag: not a plugin; refused once, the other
    // plugins load.
    let config = Config { data: b"{}".to_vec().into(), media_type: "application/vnd.oci.image.config.v1+json".to_owned(), annotations: None };
    let layer = ImageLayer::new(b"not wasm".to_vec(), "application/vnd.oci.image.layer.v1.tar".to_owned(), None);
    client.push(&at("image"), &[layer], config, &RegistryAuth::Anonymous, None).await.expect("push an image");
    let mut poller = Poller::new(Repository::open(&name, &options).expect("open"), None);
    let events = poller.poll().await;
    assert_eq!(loaded(&events).keys().collect::<Vec<_>>(), ["binary-echo"]);
    let refused: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Change::Refused { name, error, .. } => Some((name.as_str(), error.as_str())),
            _ => None,
        })
        .inspect(|(_, error)| assert!(error.contains("application/vnd.oci.image.config.v1+json"), "{error}"))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(refused, ["image"]);
    assert!(poller.poll().await.is_empty(), "refused once, not at every poll");

    // Bytes that do not match the manifest's digest are never handed out:
    // flip one byte of the stored component, keeping its length.
    let search = component("search");
    let pushed = repo.push(&tag("search"), search.clone()).await.expect("push");
    let file = blob_file(&registry, &pushed.component);
    let mut stored = std::fs::read(&file).expect("the registry's blob file");
    assert_eq!(stored, search);
    stored[1000] ^= 0xff;
    std::fs::write(&file, &stored).expect("tamper");
    let error = repo.pull(&tag("search")).await.expect_err("a tampered component is refused");
    assert!(format!("{error:#}").contains("digest") || format!("{error:#}").contains("hash"), "{error:#}");
    let events = poller.poll().await;
    assert!(
        matches!(events.as_slice(), [Change::Refused { name, .. }] if name == "search"),
        "the poller refuses it too: {events:?}"
    );

    // Too large for the limit: refused from the manifest, before any byte.
    let small = Options { max_component_size: 1000, ..Options::default() };
    let error = Repository::open(&name, &small).expect("open").pull(&tag("binary-echo")).await.expect_err("too large");
    assert!(format!("{error:#}").contains("over the limit"), "{error:#}");
}

/// docker-registry lists a repository whose every tag was deleted as
/// `"tags": null`, which oci-client 0.17 cannot read. The poller then
/// changes nothing, on the safe side: the last plugin stays loaded, and the
/// failure is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_last_tag_keeps_the_plugin_loaded() {
    let registry = LocalRegistry::start();
    let name = registry.repository("last");
    let options = Options::default();
    let repo = Repository::open(&name, &options).expect("open");
    let pushed = repo.push(&tag("search"), component("search")).await.expect("push");
    let mut poller = Poller::new(Repository::open(&name, &options).expect("open"), None);
    assert_eq!(loaded(&poller.poll().await).len(), 1);
    delete_manifest(&registry, "last", &pushed.manifest);
    let events = poller.poll().await;
    assert!(
        matches!(events.as_slice(), [Change::Unreachable { serving: 1, error, .. }] if error.contains("null")),
        "{events:?}"
    );
    assert_eq!(poller.seen().len(), 1);
}

#[test]
fn the_registry_helper_stops_the_registry() {
    let mut registry = LocalRegistry::start();
    let addr = registry.addr;
    assert!(std::net::TcpStream::connect(addr).is_ok());
    registry.stop();
    assert!(std::net::TcpStream::connect(addr).is_err(), "stopped");
    assert!(Path::new(registry.storage()).is_dir(), "storage kept until dropped");
}

/// The median of some timings.
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Prints what a pull and a poll cost on loopback (`cargo test --test
/// oci_registry figures -- --nocapture`; the figures in the report come
/// from a release build: `--release`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures() {
    let registry = LocalRegistry::start();
    let name = registry.repository("figures");
    let options = Options::default();
    let repo = Repository::open(&name, &options).expect("open");
    let search = component("search");
    repo.push(&tag("search"), search.clone()).await.expect("push");

    let started = Instant::now();
    Repository::open(&name, &options).expect("open").pull(&tag("search")).await.expect("pull");
    let cold = started.elapsed();
    let mut warm = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let pulled = repo.pull(&tag("search")).await.expect("pull");
        warm.push(started.elapsed());
        assert_eq!(pulled.bytes.len(), search.len());
    }
    let started = Instant::now();
    let _ = Digest::of(&search);
    let hash = started.elapsed();
    eprintln!(
        "figures: pull and verify search.wasm ({} bytes): first {:.1} ms (new client), then median {:.2} ms; its SHA-256 alone {:.2} ms",
        search.len(),
        cold.as_secs_f64() * 1e3,
        median(warm).as_secs_f64() * 1e3,
        hash.as_secs_f64() * 1e3
    );

    for tags in [3usize, 30] {
        let fresh = format!("{name}{tags}");
        let fresh_repo = Repository::open(&fresh, &options).expect("open");
        let names: Vec<PluginTag> = (0..tags).map(|i| tag(&format!("p{i}"))).collect();
        let pushes: Vec<_> = names.iter().map(|t| fresh_repo.push(t, search.clone())).collect();
        for pushed in join_all(pushes).await {
            pushed.expect("push");
        }
        let mut poller = Poller::new(Repository::open(&fresh, &options).expect("open"), None);
        let started = Instant::now();
        let events = poller.poll().await;
        let first = started.elapsed();
        assert_eq!(loaded(&events).len(), tags);
        let mut idle = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            assert!(poller.poll().await.is_empty());
            idle.push(started.elapsed());
        }
        eprintln!(
            "figures: poll of {tags} tags: first (pulls all) {:.1} ms; unchanged median {:.2} ms (1 GET + {tags} HEAD)",
            first.as_secs_f64() * 1e3,
            median(idle).as_secs_f64() * 1e3
        );
    }
}

/// Interoperability with `wkg` (bytecodealliance/wasm-pkg-tools), which CI
/// does not have: `cargo install wkg --locked`, then
/// `WKG=~/.cargo/bin/wkg cargo test -p wasmux --test oci_registry wkg -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs wkg: set WKG to its path and pass --ignored"]
async fn components_pushed_by_wkg_load_and_ours_pull_with_wkg() {
    let wkg = std::env::var("WKG").expect("WKG=path to the wkg binary");
    let registry = LocalRegistry::start();
    let addr = registry.addr.to_string();
    let name = registry.repository("interop");
    let options = Options::default();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&wkg).args(args).output().expect("run wkg");
        assert!(out.status.success(), "wkg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };

    // wkg pushes search@fuzzy under its tag; wasmux pulls and polls it.
    let fuzzy = plugins_dir().join("search@fuzzy.wasm");
    run(&["oci", "push", "--insecure", &addr, &format!("{name}:search__fuzzy"), fuzzy.to_str().expect("utf-8")]);
    let pulled = Repository::open(&name, &options).expect("open").pull(&tag("search@fuzzy")).await.expect("pull wkg's push");
    assert_eq!(pulled.bytes, component("search@fuzzy"));
    let mut poller = Poller::new(Repository::open(&name, &options).expect("open"), None);
    assert_eq!(loaded(&poller.poll().await).keys().collect::<Vec<_>>(), ["search@fuzzy"]);

    // wasmux pushes; wkg pulls the same bytes.
    oci::push(&plugins_dir().join("binary-echo.wasm"), &name, &options).await.expect("push");
    let out = tempfile::tempdir().expect("temporary directory");
    let file = out.path().join("pulled.wasm");
    run(&["oci", "pull", "--insecure", &addr, &format!("{name}:binary-echo"), "-o", file.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(&file).expect("wkg's output"), component("binary-echo"));
}
