//! Compiled code, kept by content hash, so that a version seen before (a
//! swap back, a restart) is not compiled again.
//!
//! Two levels: components in memory (a clone is a reference count), and,
//! when a directory is given, serialized components on disk named by the
//! content hash and the engine's compatibility hash, so a restart or an
//! engine with other settings never picks up code that does not fit it.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use wasmtime::Engine;
use wasmtime::component::Component;

/// A component's SHA-256: the key of its compiled code.
type Digest = [u8; 32];

/// Components kept in memory; the oldest are dropped past this count.
const MEMORY_ENTRIES: usize = 64;

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled just now.
    Compiled,
    /// Compiled earlier by this process.
    Memory,
    /// Compiled by an earlier run, read from the cache directory.
    Disk,
}

pub(super) struct ComponentCache {
    memory: Mutex<Memory>,
    dir: Option<PathBuf>,
    /// Distinguishes code compiled under other engine settings or versions.
    engine_tag: String,
}

#[derive(Default)]
struct Memory {
    components: HashMap<Digest, Component>,
    order: VecDeque<Digest>,
}

impl ComponentCache {
    pub(super) fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self { memory: Mutex::default(), dir, engine_tag: format!("{:016x}", hasher.finish()) }
    }

    /// The component for `bytes`, compiled only if no cache has it.
    pub(super) fn get_or_compile(&self, engine: &Engine, digest: Digest, bytes: &[u8]) -> wasmtime::Result<(Component, Origin)> {
        if let Some(component) = self.lock().components.get(&digest) {
            return Ok((component.clone(), Origin::Memory));
        }
        let (component, origin) = match self.read_disk(engine, digest) {
            Some(component) => (component, Origin::Disk),
            None => {
                let component = Component::new(engine, bytes)?;
                self.write_disk(digest, &component);
                (component, Origin::Compiled)
            }
        };
        let mut memory = self.lock();
        if memory.components.insert(digest, component.clone()).is_none() {
            memory.order.push_back(digest);
        }
        while memory.order.len() > MEMORY_ENTRIES {
            if let Some(oldest) = memory.order.pop_front() {
                memory.components.remove(&oldest);
            }
        }
        Ok((component, origin))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        // The map stays consistent even if a holder panicked.
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, digest: Digest) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{}-{}.cwasm", hex::encode(digest), self.engine_tag)))
    }

    fn read_disk(&self, engine: &Engine, digest: Digest) -> Option<Component> {
        let path = self.path(digest)?;
        if !path.is_file() {
            return None;
        }
        // SAFETY: deserializing runs native code from the file. Files in the
        // cache directory are written only by `write_disk` below, from
        // `Component::serialize` of an engine with the same compatibility
        // hash (it is in the file name), and renamed into place whole. The
        // directory must be writable only by the user running the server,
        // as the README says; whoever can write it can already replace the
        // server's binary.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!("ignoring unusable cached code {}: {e:#}", path.display());
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    fn write_disk(&self, digest: Digest, component: &Component) {
        let Some(path) = self.path(digest) else { return };
        if let Err(e) = write_atomically(&path, component) {
            tracing::warn!("cannot cache compiled code at {}: {e:#}", path.display());
        }
    }
}

fn write_atomically(path: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    let dir = path.parent().ok_or_else(|| anyhow::anyhow!("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("code"), std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
