//! `counter-kv`: named counters kept in the server's key-value store
//! (`wasi:keyvalue`, through `wasmux_sdk::keyvalue`). A `text/plain`
//! request is one command:
//!
//! - `incr NAME` adds one to counter NAME, atomically (also across a fleet
//!   of servers on one Redis), and answers `NAME=N`, N the new count;
//! - `get NAME` answers `NAME=N`, `NAME=0` when the counter was never
//!   incremented.
//!
//! Anything else is a `bad-request` answer saying what is understood; a
//! store error (a limit, Redis unreachable) is an `internal` answer
//! naming the store, so the client sees what went wrong. The counts
//! belong to the tenant that asks and survive hot swaps and restarts.

use wasmux_sdk::keyvalue::{atomics, store};
use wasmux_sdk::{Guest, HandlerError, Request, Response, export};

struct CounterKv;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Increment(&'a str),
    Get(&'a str),
}

/// The longest counter name: well under the store's key-size limit.
const MAX_NAME: usize = 128;

const USAGE: &str = "send `incr NAME` or `get NAME` (NAME: 1 to 128 bytes, no spaces)";

fn parse(text: &str) -> Result<Command<'_>, HandlerError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (command, name) = match words.as_slice() {
        ["incr", name] => (Command::Increment(*name), *name),
        ["get", name] => (Command::Get(*name), *name),
        [] => return Err(HandlerError::bad_request(format!("empty request: {USAGE}"))),
        _ => return Err(HandlerError::bad_request(format!("unknown command {text:?}: {USAGE}"))),
    };
    if name.len() > MAX_NAME {
        return Err(HandlerError::bad_request(format!("the name is {} bytes: {USAGE}", name.len())));
    }
    Ok(command)
}

/// A counter's value as `get` reads it: the decimal ASCII `increment`
/// keeps, or 0 when absent.
fn count(value: Option<Vec<u8>>) -> Result<u64, HandlerError> {
    let Some(bytes) = value else { return Ok(0) };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| HandlerError::internal(format!("the stored value {:?} is not a count", String::from_utf8_lossy(&bytes))))
}

impl Guest for CounterKv {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        if request.content_type != "text/plain" {
            return Err(HandlerError::unsupported(format!("content-type {:?}: counter-kv answers text/plain ({USAGE})", request.content_type)));
        }
        let command = parse(request.text()?)?;
        // `?` on a store call: a store error becomes an `internal` error
        // answer that names the store and says what it said.
        let bucket = store::open("default")?;
        let (name, n) = match command {
            Command::Increment(name) => (name, atomics::increment(&bucket, name, 1)?),
            Command::Get(name) => (name, count(bucket.get(name)?)?),
        };
        Ok(Response::text(format!("{name}={n}")))
    }
}

export!(CounterKv);

#[cfg(test)]
mod tests {
    //! The parts that run natively; the store exists only in a component
    //! served by wasmux (`cli/tests/keyvalue.rs` serves this one).

    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse("incr visits"), Ok(Command::Increment("visits")));
        assert_eq!(parse("  get   visits \n"), Ok(Command::Get("visits")));
        for bad in ["", "incr", "incr a b", "decr visits", "INCR visits", "get"] {
            assert!(matches!(parse(bad), Err(HandlerError::BadRequest(ref m)) if m.contains("incr NAME")), "{bad:?}: {:?}", parse(bad));
        }
        assert!(parse(&format!("incr {}", "n".repeat(MAX_NAME))).is_ok());
        assert!(parse(&format!("incr {}", "n".repeat(MAX_NAME + 1))).is_err());
    }

    #[test]
    fn counts_as_stored() {
        assert_eq!(count(None), Ok(0));
        assert_eq!(count(Some(b"42".to_vec())), Ok(42));
        assert!(matches!(count(Some(b"x".to_vec())), Err(HandlerError::Internal(_))));
    }

    #[test]
    fn other_content_types_are_unsupported() {
        let request = Request {
            content_type: "text/json".into(),
            content_encoding: "utf-8".into(),
            byteorder: "little".into(),
            fields: Vec::new(),
            content: b"incr visits".to_vec(),
        };
        assert!(matches!(CounterKv::handle(request), Err(HandlerError::Unsupported(_))));
    }
}
