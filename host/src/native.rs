//! The guide's two handlers compiled into the host, with the plugins'
//! contract. `wasmux serve --native` serves these instead of the Wasm
//! components: same framing, routing and scheduling, no sandbox. That is
//! the ceiling the benchmarks hold the Wasm path up against.

use wasmux_guide::SearchError;

use crate::message::{HandlerError, Message};

/// A handler compiled into the host, with a plugin's contract.
pub type NativeHandler = fn(&Message) -> Result<Message, HandlerError>;

/// Native `search` and `binary-echo`, under the plugins' names.
pub const GUIDE_HANDLERS: [(&str, NativeHandler); 2] = [("search", search), ("binary-echo", binary_echo)];

fn search(request: &Message) -> Result<Message, HandlerError> {
    match wasmux_guide::search(&request.content, &request.header.content_encoding) {
        Ok(content) => Ok(Message::new("text/json", "utf-8", content)),
        Err(e @ SearchError::UnknownEncoding(_)) => Err(HandlerError::Unsupported(e.to_string())),
        Err(e) => Err(HandlerError::BadRequest(e.to_string())),
    }
}

fn binary_echo(request: &Message) -> Result<Message, HandlerError> {
    Ok(Message::new(wasmux_guide::BINARY_RESPONSE_TYPE, "binary", wasmux_guide::binary_echo(&request.content)))
}
