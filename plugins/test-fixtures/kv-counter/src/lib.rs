//! TEST FIXTURE: a plugin of the `stateful-handler` world that keeps
//! counters in `wasi:keyvalue`. A `text/plain` request is one command:
//!
//! - `incr NAME` adds one to counter NAME (atomically) and answers `NAME=N`;
//! - `get NAME` answers `NAME=N` (`NAME=0` when absent);
//! - `delete NAME` removes it and answers `deleted NAME`;
//! - `put NAME SIZE` stores SIZE bytes under NAME and answers `put NAME`
//!   (to run into the value-size limit);
//! - `fill N` stores keys `k0` … `kN-1` one by one and answers `filled N`
//!   (to run into the key-count limit);
//! - `open BUCKET` opens that bucket and answers `opened BUCKET`;
//! - `ping` answers `pong` without touching the store (the same plugin's
//!   call without the store, which `cargo xtask bench` compares `get` and
//!   `incr` with).
//!
//! Every command but `open` works in the bucket `default`. A store error
//! is answered as the handler's `internal` error naming it, so a client
//! sees what the store said.

wit_bindgen::generate!({ world: "stateful-handler", path: "../../../wit", generate_all });

use wasi::keyvalue::{atomics, store};

struct KvCounter;

fn text(content: String) -> Response {
    Response { content_type: "text/plain".into(), content_encoding: "utf-8".into(), fields: Vec::new(), content: content.into_bytes() }
}

fn describe(error: store::Error) -> HandlerError {
    HandlerError::Internal(match error {
        store::Error::NoSuchStore => "key-value store: no such store".into(),
        store::Error::AccessDenied => "key-value store: access denied".into(),
        store::Error::Other(why) => format!("key-value store: {why}"),
    })
}

fn run(command: &str) -> Result<String, HandlerError> {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        ["ping"] => Ok("pong".into()),
        ["open", bucket] => store::open(bucket).map(|_| format!("opened {bucket}")).map_err(describe),
        ["incr", name] => {
            let bucket = store::open("default").map_err(describe)?;
            let n = atomics::increment(&bucket, name, 1).map_err(describe)?;
            Ok(format!("{name}={n}"))
        }
        ["get", name] => {
            let bucket = store::open("default").map_err(describe)?;
            let value = bucket.get(name).map_err(describe)?;
            let n = value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_else(|| "0".into());
            Ok(format!("{name}={n}"))
        }
        ["delete", name] => {
            let bucket = store::open("default").map_err(describe)?;
            bucket.delete(name).map_err(describe)?;
            Ok(format!("deleted {name}"))
        }
        ["put", name, size] => {
            let size: usize = size.parse().map_err(|_| HandlerError::BadRequest(format!("not a size: {size}")))?;
            let bucket = store::open("default").map_err(describe)?;
            bucket.set(name, &vec![b'x'; size]).map_err(describe)?;
            Ok(format!("put {name}"))
        }
        ["fill", n] => {
            let n: u32 = n.parse().map_err(|_| HandlerError::BadRequest(format!("not a count: {n}")))?;
            let bucket = store::open("default").map_err(describe)?;
            for i in 0..n {
                bucket.set(&format!("k{i}"), b"1").map_err(describe)?;
            }
            Ok(format!("filled {n}"))
        }
        _ => Err(HandlerError::BadRequest(format!("unknown command {command:?}: incr NAME, get NAME, delete NAME, put NAME SIZE, fill N, open BUCKET, ping"))),
    }
}

impl Guest for KvCounter {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let command = String::from_utf8(request.content).map_err(|_| HandlerError::BadRequest("the command is not UTF-8".into()))?;
        run(command.trim()).map(text)
    }
}

export!(KvCounter);
