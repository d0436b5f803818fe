//! **Test fixture: never serve this plugin.** It misbehaves on purpose, so
//! that the host's tests can show a runaway plugin is stopped at its deadline
//! without slowing other requests. `cargo xtask plugins` builds it into
//! `target/test-plugins/`, apart from the plugins meant to be served.
//!
//! The request's content chooses what it does:
//! - `forever` (or anything not listed): a busy loop that never ends;
//! - `logging`: a loop that never ends and calls the host's `log` each turn,
//!   so that most of its time is spent in host calls;
//! - `answer`: answers `spin: answered` at once;
//! - `long-line`: logs one line of 5000 characters, then answers;
//! - `count N`: counts to N in a busy loop, then answers `spin: counted N`
//!   (a request that takes a while, then succeeds).

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

use std::hint::black_box;

use wasmux::plugin::host::{Level, log};

struct Spin;

impl Guest for Spin {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        if let Some(n) = request.content.strip_prefix(b"count ") {
            let n: u64 = std::str::from_utf8(n).ok().and_then(|n| n.parse().ok()).unwrap_or(0);
            let mut turn = 0_u64;
            while turn < n {
                turn = black_box(turn + 1);
            }
            return Ok(Response {
                content_type: "text/plain".into(),
                content_encoding: "utf-8".into(),
                fields: Vec::new(),
                content: format!("spin: counted {turn}").into_bytes(),
            });
        }
        match request.content.as_slice() {
            b"answer" => Ok(Response {
                content_type: "text/plain".into(),
                content_encoding: "utf-8".into(),
                fields: Vec::new(),
                content: b"spin: answered".to_vec(),
            }),
            b"long-line" => {
                log(Level::Info, &format!("spin: long line {}", "x".repeat(5000)));
                Ok(Response {
                    content_type: "text/plain".into(),
                    content_encoding: "utf-8".into(),
                    fields: Vec::new(),
                    content: b"spin: logged".to_vec(),
                })
            }
            b"logging" => {
                let mut turn = 0_u64;
                loop {
                    turn = black_box(turn + 1);
                    log(Level::Debug, &format!("spin: turn {turn}"));
                }
            }
            _ => {
                let mut turn = 0_u64;
                loop {
                    turn = black_box(turn.wrapping_add(1));
                }
            }
        }
    }
}

export!(Spin);
