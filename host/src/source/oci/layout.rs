//! The CNCF Wasm OCI artifact layout (the one `wkg oci push` writes and
//! reads): an OCI image manifest whose config has media type
//! `application/vnd.wasm.config.v0+json` and whose one layer,
//! `application/wasm`, is the component's bytes.
//!
//! The config describes the component: when it was made, `architecture`
//! `wasm`, `os` `wasip2` (a component), the layer's digest, and the names
//! of the component's top-level imports and exports (for
//! `wasmux:plugin/handler`, `wasmux:plugin/host@0.1.1` among the imports
//! and `handle` among the exports). Those names are read with wasmparser,
//! the parser wasmtime itself uses, without compiling the component.

use std::collections::BTreeMap;
use std::time::SystemTime;

use anyhow::{Context as _, bail, ensure};
use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use serde::{Deserialize, Serialize};
use wasmparser::{Encoding, Parser, Payload};

use crate::digest::Digest;

/// The media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of the manifest's config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The media type of the one layer, the component.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";

/// The manifest's config, as the layout defines it (its field names in
/// camelCase).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// RFC 3339.
    pub created: String,
    pub author: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a component.
    pub os: String,
    pub layer_digests: Vec<String>,
    pub component: Option<ComponentSummary>,
}

/// What a component imports and exports, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSummary {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    pub target: Option<String>,
}

impl ComponentSummary {
    /// The names of `bytes`' top-level imports and exports; an error if the
    /// bytes are not a WebAssembly component (a core module, or not Wasm).
    pub fn read(bytes: &[u8]) -> anyhow::Result<Self> {
        // One line (what `wasmux push` prints): wasmparser's messages
        // spread what they expected over several (`expected=[\n    0x0, …]`).
        Self::read_all(bytes).map_err(|e| anyhow::anyhow!("{}", crate::plugins::one_line(&format!("{e:#}"))))
    }

    fn read_all(bytes: &[u8]) -> anyhow::Result<Self> {
        let (mut imports, mut exports) = (Vec::new(), Vec::new());
        // Nested modules and components come out of `parse_all` too, each
        // between its own `Version` and `End`: only depth 1 is the
        // component's own interface.
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.context("not a WebAssembly component")? {
                Payload::Version { encoding, .. } => {
                    ensure!(depth > 0 || encoding == Encoding::Component, "not a WebAssembly component (a core module?)");
                    depth += 1;
                }
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::ComponentImportSection(reader) if depth == 1 => {
                    for import in reader {
                        imports.push(import.context("reading the component's imports")?.name.name.to_owned());
                    }
                }
                Payload::ComponentExportSection(reader) if depth == 1 => {
                    for export in reader {
                        exports.push(export.context("reading the component's exports")?.name.name.to_owned());
                    }
                }
                _ => {}
            }
        }
        ensure!(depth == 0, "not a WebAssembly component (it ends in the middle)");
        Ok(Self { exports, imports, target: None })
    }
}

/// The config and the layer that push `component` (whose digest is
/// `digest`) in this layout.
pub fn artifact(component: Vec<u8>, digest: &Digest) -> anyhow::Result<(Config, ImageLayer)> {
    let summary = ComponentSummary::read(&component)?;
    let config = WasmConfig {
        created: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        author: None,
        architecture: "wasm".to_owned(),
        os: "wasip2".to_owned(),
        layer_digests: vec![digest.to_string()],
        component: Some(summary),
    };
    let config = Config { data: serde_json::to_vec(&config).context("encoding the config")?.into(), media_type: CONFIG_MEDIA_TYPE.to_owned(), annotations: None };
    let layer = ImageLayer { data: component.into(), media_type: LAYER_MEDIA_TYPE.to_owned(), annotations: None };
    Ok((config, layer))
}

/// The manifest of `config` and `layer`, titled `title` (the file name a
/// directory would hold it under).
pub fn manifest(config: &Config, layer: &ImageLayer, title: &str) -> OciImageManifest {
    let annotations = BTreeMap::from([("org.opencontainers.image.title".to_owned(), title.to_owned())]);
    let mut manifest = OciImageManifest::build(std::slice::from_ref(layer), config, Some(annotations));
    manifest.media_type = Some(MANIFEST_MEDIA_TYPE.to_owned());
    manifest
}

/// Checks a manifest is this layout and returns its component layer.
pub fn component_layer(manifest: &OciManifest) -> anyhow::Result<&OciDescriptor> {
    let OciManifest::Image(image) = manifest else {
        bail!("it is an image index (several platforms), not one component");
    };
    image_component_layer(image)
}

fn image_component_layer(image: &OciImageManifest) -> anyhow::Result<&OciDescriptor> {
    ensure!(image.config.media_type == CONFIG_MEDIA_TYPE, "its config is {:?}, not {CONFIG_MEDIA_TYPE:?}", image.config.media_type);
    let [layer] = image.layers.as_slice() else {
        bail!("it has {} layers, not the one component layer", image.layers.len());
    };
    ensure!(layer.media_type == LAYER_MEDIA_TYPE, "its layer is {:?}, not {LAYER_MEDIA_TYPE:?}", layer.media_type);
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_of(config: &str, layers: &[&str]) -> OciImageManifest {
        let descriptor = |media_type: &str| OciDescriptor {
            media_type: media_type.to_owned(),
            digest: Digest::of(media_type.as_bytes()).to_string(),
            size: 1,
            ..OciDescriptor::default()
        };
        OciImageManifest { config: descriptor(config), layers: layers.iter().map(|m| descriptor(m)).collect(), ..OciImageManifest::default() }
    }

    #[test]
    fn only_the_wasm_artifact_layout_is_accepted() {
        let good = manifest_of(CONFIG_MEDIA_TYPE, &[LAYER_MEDIA_TYPE]);
        assert!(image_component_layer(&good).is_ok());
        let image = manifest_of("application/vnd.oci.image.config.v1+json", &["application/vnd.oci.image.layer.v1.tar+gzip"]);
        assert_eq!(
            image_component_layer(&image).expect_err("refused").to_string(),
            "its config is \"application/vnd.oci.image.config.v1+json\", not \"application/vnd.wasm.config.v0+json\""
        );
        let two = manifest_of(CONFIG_MEDIA_TYPE, &[LAYER_MEDIA_TYPE, LAYER_MEDIA_TYPE]);
        assert_eq!(image_component_layer(&two).expect_err("refused").to_string(), "it has 2 layers, not the one component layer");
    }

    /// The smallest component: the header and nothing else.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";
    /// The smallest core module.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn a_component_is_summarized_and_a_module_is_refused() {
        assert_eq!(ComponentSummary::read(EMPTY_COMPONENT).expect("a component"), ComponentSummary { exports: vec![], imports: vec![], target: None });
        assert_eq!(ComponentSummary::read(EMPTY_MODULE).expect_err("a module").to_string(), "not a WebAssembly component (a core module?)");
        assert!(ComponentSummary::read(b"not wasm").is_err());
    }

    #[test]
    fn the_config_names_the_layer_and_the_manifest_its_title() {
        let digest = Digest::of(EMPTY_COMPONENT);
        let (config, layer) = artifact(EMPTY_COMPONENT.to_vec(), &digest).expect("an artifact");
        let parsed: WasmConfig = serde_json::from_slice(&config.data).expect("JSON");
        assert_eq!((parsed.architecture.as_str(), parsed.os.as_str()), ("wasm", "wasip2"));
        assert_eq!(parsed.layer_digests, [digest.to_string()]);
        let json: serde_json::Value = serde_json::from_slice(&config.data).expect("JSON");
        assert!(json.get("layerDigests").is_some(), "camelCase field names: {json}");
        let manifest = manifest(&config, &layer, "search.wasm");
        assert_eq!(manifest.media_type.as_deref(), Some(MANIFEST_MEDIA_TYPE));
        assert_eq!(manifest.layers[0].digest, digest.to_string());
        assert_eq!(manifest.annotations.expect("annotations")["org.opencontainers.image.title"], "search.wasm");
        assert!(image_component_layer(&manifest_of(CONFIG_MEDIA_TYPE, &[LAYER_MEDIA_TYPE])).is_ok());
    }
}
