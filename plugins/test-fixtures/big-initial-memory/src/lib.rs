//! **Test fixture: never serve this plugin.** Its memory starts 32 MiB large
//! (a zeroed static, which the linker counts into the initial memory without
//! putting it in the file), so that the host's tests can show the memory cap
//! also holds for the memory an instance is created with, not only for what
//! it grows later. `cargo xtask plugins` builds it into `target/test-plugins/`,
//! apart from the plugins meant to be served.
//!
//! Under a cap of 32 MiB or more it answers `big-initial-memory: N bytes`,
//! N being the size of its static (which it writes to, so it exists).

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};

const SIZE: usize = 32 << 20;

/// Zeroed, so it lives in the initial memory but not in the file. Atomics
/// make it a `static` that may be written without `unsafe`.
static BIG: [AtomicU8; SIZE] = [const { AtomicU8::new(0) }; SIZE];

struct BigInitialMemory;

impl Guest for BigInitialMemory {
    fn handle(_request: Request) -> Result<Response, HandlerError> {
        // Through black_box, so that the compiler cannot drop the static.
        let big = black_box(&BIG);
        big[black_box(SIZE - 1)].store(1, Ordering::Relaxed);
        Ok(Response {
            content_type: "text/plain".into(),
            content_encoding: "utf-8".into(),
            fields: Vec::new(),
            content: format!("big-initial-memory: {} bytes", big.len()).into_bytes(),
        })
    }
}

export!(BigInitialMemory);
