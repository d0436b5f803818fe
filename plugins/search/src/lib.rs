//! `search`: the guide's search request handler as a wasmux plugin.
//!
//! Answers `{"action": "search", "value": …}` from the guide's dictionary
//! with `{"result": …}` as `text/json` in UTF-8, exactly as the guide's
//! server does; any other action gets the guide's `Error: invalid action`.
//! Each lookup counts the outcome `hit` or `miss`, for A/B experiments.

/// Requests fit in the initial memory (see build.rs): no memory growth.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static HEAP: initial_heap::InitialHeap = initial_heap::InitialHeap::new();

use wasmux_guide::SearchError;
use wasmux_sdk::{Guest, HandlerError, Request, Response, export, outcome};

struct Search;

impl Guest for Search {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        match wasmux_guide::search_reporting(&request.content, &request.content_encoding, wasmux_guide::lookup) {
            Ok(searched) => {
                if let Some(name) = searched.outcome() {
                    outcome(name);
                }
                Ok(Response::new("text/json", "utf-8", searched.content))
            }
            Err(e @ SearchError::UnknownEncoding(_)) => Err(HandlerError::unsupported(e)),
            Err(e) => Err(HandlerError::bad_request(e)),
        }
    }
}

export!(Search);
