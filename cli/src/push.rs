//! `wasmux push FILE.wasm REGISTRY/REPO[:TAG]`: a plugin component into an
//! OCI registry, in the CNCF Wasm artifact layout, where `wasmux serve
//! --plugins oci://REGISTRY/REPO` (and other runtimes) find it.

use std::path::PathBuf;

use clap::Args;
use wasmux::source::oci;

#[derive(Args)]
pub struct PushArgs {
    /// The component to push: NAME.wasm (or NAME@VERSION.wasm).
    file: PathBuf,
    /// REGISTRY/REPO, or REGISTRY/REPO:TAG. Without a tag, the file's name
    /// picks it: search.wasm is tag `search`, search@fuzzy.wasm tag
    /// `search__fuzzy` (OCI tags cannot hold `@`).
    target: String,
}

pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let pushed = oci::push(&args.file, &args.target, &oci::Options::default()).await?;
    let (repository, _) = oci::split_target(&args.target)?;
    println!(
        "pushed {} to {repository}:{} as plugin {} (version {}, manifest {})",
        args.file.display(),
        pushed.tag.tag(),
        pushed.tag.name(),
        pushed.component.short(),
        pushed.manifest
    );
    Ok(())
}
