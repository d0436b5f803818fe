//! `search`: the guide's search request handler as a wasmux plugin.
//!
//! Answers `{"action": "search", "value": …}` from the guide's dictionary
//! with `{"result": …}` as `text/json` in UTF-8, exactly as the guide's
//! server does; any other action gets the guide's `Error: invalid action`.

use wasmux_guide::SearchError;
use wasmux_sdk::{Guest, HandlerError, Request, Response, export};

struct Search;

impl Guest for Search {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        match wasmux_guide::search(&request.content, &request.content_encoding) {
            Ok(content) => Ok(Response::new("text/json", "utf-8", content)),
            Err(e @ SearchError::UnknownEncoding(_)) => Err(HandlerError::unsupported(e)),
            Err(e) => Err(HandlerError::bad_request(e)),
        }
    }
}

export!(Search);
