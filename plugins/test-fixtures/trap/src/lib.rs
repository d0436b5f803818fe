//! **Test fixture: never serve this plugin.** It traps on purpose, so that
//! the host's tests can show a trap becomes a readable error message for the
//! client and a log line naming the plugin, and harms no one else.
//! `cargo xtask plugins` builds it into `target/test-plugins/`, apart from
//! the plugins meant to be served.
//!
//! The request's content chooses how:
//! - `panic` (or anything not listed): a Rust panic. Plugins are built with
//!   `panic = "abort"`, so the panic message would be lost in the trap; this
//!   fixture first installs a panic hook that writes it to the host's log at
//!   `error` level, as a real plugin may do;
//! - `unreachable`: Wasm's `unreachable` instruction;
//! - `deep-recursion`: recursion without end that keeps its frames in Wasm
//!   locals, so Wasm's own call stack runs out;
//! - `stack-overflow`: recursion without end with large frames, which Rust
//!   keeps on its shadow stack in linear memory; that stack runs off the
//!   bottom of the memory;
//! - `out-of-bounds`: a load far past the end of its memory;
//! - `internal`: no trap, but the handler error `internal`.

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

use std::hint::black_box;

use wasmux::plugin::host::{Level, log};

struct Trap;

impl Guest for Trap {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        match request.content.as_slice() {
            b"unreachable" => unreachable_instruction(),
            b"deep-recursion" => {
                black_box(recurse(black_box(1)));
                Err(HandlerError::Internal("the recursion ended".into()))
            }
            b"stack-overflow" => {
                black_box(recurse_with_big_frames(black_box(1)));
                Err(HandlerError::Internal("the recursion ended".into()))
            }
            b"out-of-bounds" => {
                black_box(read_far_away());
                Err(HandlerError::Internal("the load did not trap".into()))
            }
            b"internal" => Err(HandlerError::Internal("the fixture declined on purpose".into())),
            _ => {
                std::panic::set_hook(Box::new(|info| log(Level::Error, &info.to_string())));
                panic!("the trap fixture panicked on purpose");
            }
        }
    }
}

/// Two operations after the call, so that the compiler cannot turn the
/// recursion into a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_mul(3).wrapping_sub(depth)
}

#[allow(unconditional_recursion)]
fn recurse_with_big_frames(depth: u64) -> u64 {
    let mut frame = [depth; 512];
    black_box(&mut frame);
    recurse_with_big_frames(black_box(depth + 1)) + frame[black_box(3)]
}

#[cfg(target_arch = "wasm32")]
fn unreachable_instruction() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(target_arch = "wasm32")]
fn read_far_away() -> u8 {
    // Past the end of any memory this instance has (at most 4 GiB on wasm32
    // and far less under the host's cap): the load traps.
    let address = black_box(0xFFFF_FF00_usize) as *const u8;
    // SAFETY: not safe at all, on purpose; WebAssembly bounds-checks the
    // load and traps instead of reading.
    unsafe { core::ptr::read_volatile(address) }
}

#[cfg(not(target_arch = "wasm32"))]
fn unreachable_instruction() -> ! {
    unreachable!("a WebAssembly fixture")
}

#[cfg(not(target_arch = "wasm32"))]
fn read_far_away() -> u8 {
    unreachable!("a WebAssembly fixture")
}

export!(Trap);
