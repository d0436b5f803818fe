//! `binary-echo`: the guide's answer to any request that is not a search,
//! `First 10 bytes of request: ` and the first ten bytes of its content, as
//! `binary/custom-server-binary-type`.

/// Requests fit in the initial memory (see build.rs): no memory growth.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static HEAP: initial_heap::InitialHeap = initial_heap::InitialHeap::new();

use wasmux_sdk::{Guest, HandlerError, Request, Response, export};

struct BinaryEcho;

impl Guest for BinaryEcho {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        Ok(Response::new(wasmux_guide::BINARY_RESPONSE_TYPE, "binary", wasmux_guide::binary_echo(&request.content)))
    }
}

export!(BinaryEcho);
