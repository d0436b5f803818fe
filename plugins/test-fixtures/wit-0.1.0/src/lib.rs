//! TEST FIXTURE — never serve it. A plugin built against
//! `wasmux:plugin@0.1.0`, the first published version of the WIT world,
//! from the copy frozen in `wit/` beside this crate (never update it: it is
//! what plugins built in the 0.1.0 days import). It uses both imports
//! 0.1.0 had and answers `built against 0.1.0; greeting=VALUE`, so the tests
//! can check that a host of a newer 0.1.x loads it, links its imports and
//! serves it.

wit_bindgen::generate!({ world: "handler", path: "wit" });

use wasmux::plugin::host::{Level, config, log};

struct Old;

impl Guest for Old {
    fn handle(_request: Request) -> Result<Response, HandlerError> {
        log(Level::Info, "answering as a 0.1.0 plugin");
        let greeting = config("greeting").unwrap_or_else(|| "unset".into());
        Ok(Response {
            content_type: "text/plain".into(),
            content_encoding: "utf-8".into(),
            fields: Vec::new(),
            content: format!("built against 0.1.0; greeting={greeting}").into_bytes(),
        })
    }
}

export!(Old);
