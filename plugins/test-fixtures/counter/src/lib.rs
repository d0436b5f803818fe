//! TEST FIXTURE — never serve it. Counts, in a global, the requests its
//! instance has answered, and answers `count N`. On a fresh instance per
//! request every answer is `count 1`; an instance that is reused answers
//! `count 2`, `count 3`, … — what a plugin author must expect when reuse is
//! turned on. A request whose content is `trap` panics instead (a trap),
//! after counting, so a test can see that the instance is not used again.

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

use std::sync::atomic::{AtomicU64, Ordering};

static ANSWERED: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl Guest for Counter {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let count = ANSWERED.fetch_add(1, Ordering::Relaxed) + 1;
        if request.content == b"trap" {
            panic!("asked to trap at count {count}");
        }
        Ok(Response {
            content_type: "text/plain".into(),
            content_encoding: "utf-8".into(),
            fields: Vec::new(),
            content: format!("count {count}").into_bytes(),
        })
    }
}

export!(Counter);
