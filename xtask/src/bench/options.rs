//! What `cargo xtask bench` was asked for.

use std::path::PathBuf;

use super::rounds::Load;

/// What `cargo xtask bench` was asked for.
pub struct Options {
    pub duration: String,
    pub warmup: String,
    pub connections: u32,
    pub depth: u32,
    pub rounds: u32,
    pub mix: String,
    pub pin: bool,
    pub python_server: PathBuf,
    /// A `search` component in JavaScript, measured when the file exists.
    pub search_js: PathBuf,
    /// A `search` component in Python, measured when the file exists.
    pub search_py: PathBuf,
    /// Requests an instance serves in the reuse rows.
    pub reuse: u32,
    /// Requests per server and mode for the cost (CPU, system calls)
    /// measurement; 0 skips it.
    pub cost_requests: u64,
    pub out: PathBuf,
}

impl Options {
    /// The load every run applies.
    pub fn load(&self) -> Load {
        Load {
            duration: self.duration.clone(),
            warmup: self.warmup.clone(),
            connections: self.connections,
            depth: self.depth,
            mix: self.mix.clone(),
            rounds: self.rounds,
        }
    }
}
