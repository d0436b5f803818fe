//! **Test fixture: never serve this plugin.** It takes memory on purpose, so
//! that the host's tests can show the per-call memory cap holds and that a
//! plugin hitting it gets a clear error, not the server's memory.
//! `cargo xtask plugins` builds it into `target/test-plugins/`, apart from
//! the plugins meant to be served.
//!
//! The request's content chooses what it does:
//! - `grow` (or anything not listed): allocates and fills 1 MiB blocks and
//!   never frees them, until an allocation fails (Rust then aborts: a trap);
//! - `take N`: allocates and fills N MiB, then answers `took N MiB`;
//! - `grow-raw`: asks for one more Wasm page at a time with `memory.grow`
//!   until the host refuses, then answers `refused at N bytes` with the size
//!   its memory had reached: a plugin that copes with a refusal answers.

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

use std::hint::black_box;

struct MemoryHog;

const MIB: usize = 1 << 20;

fn answer(text: String) -> Result<Response, HandlerError> {
    Ok(Response {
        content_type: "text/plain".into(),
        content_encoding: "utf-8".into(),
        fields: Vec::new(),
        content: text.into_bytes(),
    })
}

impl Guest for MemoryHog {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let command = String::from_utf8_lossy(&request.content).into_owned();
        if let Some(mib) = command.strip_prefix("take ") {
            let mib: usize = mib.trim().parse().map_err(|e| HandlerError::BadRequest(format!("take N: {e}")))?;
            let blocks: Vec<Vec<u8>> = (0..mib).map(|i| vec![i as u8 | 1; MIB]).collect();
            black_box(&blocks);
            return answer(format!("took {mib} MiB"));
        }
        if command == "grow-raw" {
            return answer(format!("refused at {} bytes", grow_raw()));
        }
        let mut blocks = Vec::new();
        loop {
            blocks.push(vec![1_u8; MIB]);
            black_box(&blocks);
        }
    }
}

/// Grows the memory page by page until `memory.grow` fails; returns the
/// memory's size in bytes then.
#[cfg(target_arch = "wasm32")]
fn grow_raw() -> usize {
    use core::arch::wasm32::{memory_grow, memory_size};
    while memory_grow(0, 1) != usize::MAX {}
    memory_size(0) * 65536
}

#[cfg(not(target_arch = "wasm32"))]
fn grow_raw() -> usize {
    unreachable!("a WebAssembly fixture")
}

export!(MemoryHog);
