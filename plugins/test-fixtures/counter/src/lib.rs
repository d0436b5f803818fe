//! TEST FIXTURE — never serve it. Counts, in a global, the requests its
//! instance has answered, and answers `count N`. On a fresh instance per
//! request every answer is `count 1`; an instance that is reused answers
//! `count 2`, `count 3`, … — what a plugin author must expect when reuse is
//! turned on. Every request is counted before anything else, so a request
//! that fails counts too.
//!
//! It also reads the host's clocks (the WASI subset's `wasi:clocks`), which
//! is how it can take a given time whatever the machine's speed. The
//! request's content chooses what else it does:
//! - empty (or anything not listed): answers `count N`;
//! - `trap`: panics (a trap), so a test can see the instance is not used
//!   again;
//! - `wait MS` (and, after a space, any padding): logs `counter: waiting
//!   MS ms at count N`, then spins on the monotonic clock for MS
//!   milliseconds, then answers `count N`;
//! - `grow MIB`: allocates MIB MiB more and keeps them in a global for the
//!   instance's life, then answers `count N, holding TOTAL MiB`;
//! - `log LINES`: writes LINES log lines `counter: request N, line K`,
//!   then answers `count N`;
//! - `size BYTES`: answers BYTES bytes of `x`, with the count in the
//!   header field `count` (what the host copies out of it counts against
//!   the request's copy cap);
//! - `error`: the handler error `bad-request` (a clean answer);
//! - `bad-response`: an answer with an empty content-type, which the host
//!   refuses to send;
//! - `clock`: answers `wall-clock SECONDS.NANOSECONDS, monotonic-clock
//!   NANOSECONDS`.

wit_bindgen::generate!({
    inline: "
        package wasmux-test:counter;
        world counter {
            include wasmux:plugin/handler@0.1.1;
            import wasi:clocks/monotonic-clock@0.2.0;
            import wasi:clocks/wall-clock@0.2.0;
        }
    ",
    path: ["../../../wit", "wit/clocks.wit"],
    generate_all,
});

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wasi::clocks::{monotonic_clock, wall_clock};
use wasmux::plugin::host::{Level, log};

static ANSWERED: AtomicU64 = AtomicU64::new(0);

/// What `grow` keeps: never freed while the instance lives.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

const MIB: usize = 1 << 20;

struct Counter;

fn text(content: String) -> Response {
    Response { content_type: "text/plain".into(), content_encoding: "utf-8".into(), fields: Vec::new(), content: content.into_bytes() }
}

fn number(text: &str) -> Result<u64, HandlerError> {
    text.trim().parse().map_err(|e| HandlerError::BadRequest(format!("{text:?} is not a number: {e}")))
}

impl Guest for Counter {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let count = ANSWERED.fetch_add(1, Ordering::Relaxed) + 1;
        let command = String::from_utf8_lossy(&request.content).into_owned();
        if let Some(rest) = command.strip_prefix("wait ") {
            // What follows the number is padding, for a big request.
            let ms = number(rest.split_whitespace().next().unwrap_or_default())?;
            log(Level::Info, &format!("counter: waiting {ms} ms at count {count}"));
            let end = monotonic_clock::now().saturating_add(ms.saturating_mul(1_000_000));
            while monotonic_clock::now() < end {
                black_box(count);
            }
            return Ok(text(format!("count {count}")));
        }
        if let Some(mib) = command.strip_prefix("grow ") {
            let mib = number(mib)? as usize;
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            held.extend((0..mib).map(|i| vec![i as u8 | 1; MIB]));
            return Ok(text(format!("count {count}, holding {} MiB", held.len())));
        }
        if let Some(bytes) = command.strip_prefix("size ") {
            let count_field = wasmux::plugin::types::Field { name: "count".into(), value: count.to_string() };
            return Ok(Response { fields: vec![count_field], ..text("x".repeat(number(bytes)? as usize)) });
        }
        if let Some(lines) = command.strip_prefix("log ") {
            for line in 1..=number(lines)? {
                log(Level::Info, &format!("counter: request {count}, line {line}"));
            }
            return Ok(text(format!("count {count}")));
        }
        match command.as_str() {
            "trap" => panic!("asked to trap at count {count}"),
            "error" => Err(HandlerError::BadRequest(format!("asked for an error at count {count}"))),
            "bad-response" => Ok(Response { content_type: String::new(), ..text(format!("count {count}")) }),
            "clock" => {
                let wall = wall_clock::now();
                Ok(text(format!("wall-clock {}.{:09}, monotonic-clock {}", wall.seconds, wall.nanoseconds, monotonic_clock::now())))
            }
            _ => Ok(text(format!("count {count}"))),
        }
    }
}

export!(Counter);
