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
    assert_eq!((tags.tags.as_slice(), tags.complete), (&["search".to_owned(), "search__fuzzy".to_owned()][..], true));
    let (plugins, complete) = repo.plugins().await.expect("plugins");
    assert!(complete);
    let names: Vec<String> = plugins.iter().map(|p| p.name().to_owned()).collect();
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
    assert_eq!(
        format!("{error:#}"),
        // oci-client checks the digest as the blob streams in, before the
        // repository's own check of the whole (which stays, not to depend
        // on it): its words, after ours.
        format!(
            "reading {}:search (component {}): Invalid digest. Expected {}, got {}",
            repo.name(),
            pushed.component.short(),
            pushed.component,
            Digest::of(&stored)
        )
    );
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

/// Prints what a pull and a poll cost on loopback (`cargo test -p
/// wasmux-cli --test suite -- oci_registry::figures --nocapture`; the
/// figures in examples/cluster/README.md come from such a run, a debug
/// build).
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

/// `GET PATH` from the registry (`Accept: ACCEPT`): the body's bytes.
fn registry_get(registry: &LocalRegistry, path: &str, accept: &str) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(registry.addr).expect("connect to the registry");
    stream.set_read_timeout(Some(crate::common::STEP)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n", registry.addr).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the registry's answer");
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "GET {path}: a chunked answer: {head}");
    answer[split + 4..].to_vec()
}

/// `sha256:HEX` of `bytes`, computed here (not by the code under test).
fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// What `wasmux push` stores is the CNCF Wasm OCI artifact layout as `wkg
/// oci push` writes it (bytecodealliance's oci-wasm): the manifest and the
/// config, read back from the registry byte for byte and checked field by
/// field against the layout's literal media types and field names, in
/// oci-wasm's order. (`wkg` itself is not installed by the project: a
/// test that needs it could not run in CI. Reading another tool's push is
/// `artifacts_of_other_tools_load_and_bad_ones_are_refused`.)
#[test]
fn wasmux_push_writes_the_cncf_wasm_artifact_layout() {
    let registry = LocalRegistry::start();
    let repository = registry.repository("layout");
    let file = plugins_dir().join("binary-echo.wasm");
    push_with_wasmux(&file, &repository);
    let component = component("binary-echo");

    let manifest_bytes = registry_get(&registry, "/v2/layout/manifests/binary-echo", "application/vnd.oci.image.manifest.v1+json");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).expect("the manifest is JSON");
    let config_digest = manifest["config"]["digest"].as_str().expect("the config's digest").to_owned();
    let config_bytes = registry_get(&registry, &format!("/v2/layout/blobs/{config_digest}"), "*/*");
    assert_eq!(config_digest, sha256(&config_bytes), "the config's digest is its bytes' SHA-256");
    assert_eq!(
        manifest,
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": [{"mediaType": "application/wasm", "digest": sha256(&component), "size": component.len()}],
            "annotations": {"org.opencontainers.image.title": "binary-echo.wasm"},
        }),
        "{}",
        String::from_utf8_lossy(&manifest_bytes)
    );
    // The layer is the component, byte for byte.
    assert_eq!(registry_get(&registry, &format!("/v2/layout/blobs/{}", sha256(&component)), "*/*"), component);

    // The config: oci-wasm's fields, in its order, a component's.
    let config: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&config_bytes).expect("the config is a JSON object");
    let keys: Vec<&str> = config.keys().map(String::as_str).collect();
    assert_eq!(keys, ["created", "author", "architecture", "os", "layerDigests", "component"], "{}", String::from_utf8_lossy(&config_bytes));
    let created = config["created"].as_str().expect("created is text");
    assert!(humantime::parse_rfc3339(created).is_ok(), "created is not RFC 3339: {created}");
    let mut rest = config.clone();
    rest.remove("created");
    assert_eq!(
        serde_json::Value::Object(rest),
        serde_json::json!({
            "author": null,
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [sha256(&component)],
            // A world's names as oci-wasm lists them: its interfaces and the
            // types it uses at the top level.
            "component": {"exports": ["handle"], "imports": ["wasmux:plugin/types@0.1.1", "request", "response", "handler-error"], "target": null},
        }),
        "{}",
        String::from_utf8_lossy(&config_bytes)
    );
}

/// `wasmux push FILE TARGET`.
fn push_with_wasmux(file: &Path, target: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmux")).arg("push").arg(file).arg(target).output().expect("run wasmux push");
    assert!(out.status.success(), "wasmux push failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// `[source]` in the configuration says where the plugins come from and how
/// often to poll (`plugins`, `poll-interval`); `--plugins` and
/// `--poll-interval` override it; the interval is 2 s unless given
/// (docs/running.md, docs/fleet.md).
#[test]
fn the_source_table_and_poll_interval_choose_the_registry_and_how_often() {
    use crate::common::{STEP, Server, search};
    let registry = LocalRegistry::start();
    let repository = registry.repository("source");
    push_with_wasmux(&plugins_dir().join("search.wasm"), &repository);
    let dir = tempfile::tempdir().expect("a configuration directory");
    let config = dir.path().join("wasmux.toml");
    std::fs::write(&config, format!("[source]\nplugins = \"oci://{repository}\"\npoll-interval = \"300ms\"\n")).expect("write the configuration");
    let config = config.to_str().expect("utf-8");
    let polled_every = |interval: &str| format!("{repository}: polled every {interval} for new versions");

    // The configuration alone: its registry, at its interval.
    let from_config = Server::start_with(&["--config", config]);
    assert!(from_config.wait_for_log(&polled_every("300ms"), STEP), "{}", from_config.log());
    assert_eq!(from_config.connect().request(&search("morpheus")).result(), "Follow the white rabbit. 🐰");
    // A new version pushed under the tag is polled and served.
    push_with_wasmux(&plugins_dir().join("binary-echo.wasm"), &format!("{repository}:search"));
    crate::common::wait_until("the pushed version serves", || from_config.connect().request(&search("ring")).content.starts_with(b"First 10 bytes of request: "));

    // --poll-interval overrides the configuration's.
    let overridden = Server::start_with(&["--config", config, "--poll-interval", "1s"]);
    assert!(overridden.wait_for_log(&polled_every("1s"), STEP), "{}", overridden.log());

    // Without either, 2 s.
    let plugins = format!("oci://{repository}");
    let default = Server::start_with(&["--plugins", &plugins]);
    assert!(default.wait_for_log(&polled_every("2s"), STEP), "{}", default.log());
    assert!(default.connect().request(&search("ring")).content.starts_with(b"First 10 bytes of request: "));
}
