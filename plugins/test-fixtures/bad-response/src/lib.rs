//! **Test fixture: never serve this plugin.** It answers with responses the
//! host must refuse, so that the host's tests can show each becomes a clear
//! `plugin-bad-response` error and nothing is sent that the protocol cannot
//! carry. `cargo xtask plugins` builds it into `target/test-plugins/`, apart
//! from the plugins meant to be served.
//!
//! The request's content chooses the response:
//! - `size N`: a valid `application/octet-stream` response of N bytes (the
//!   tests pick N over or under the server's `max-response`);
//! - `reserved-field`: sets the header field `content-length` itself;
//! - `reserved-field-other-case`: sets `Content-Length` and `Content-Type`
//!   (the required fields in another case) beside a field of its own, `note`,
//!   and answers `hello` (a response the host sends, leaving those two out);
//! - `not-json-field`: a header field whose value is not JSON text;
//! - `duplicate-field`: the same header field twice;
//! - `empty-content-type`: an empty content-type;
//! - `long-header`: a header field so long that the JSON header would not
//!   fit in the 65535 bytes its 2-byte length can announce;
//! - `long-error N`: the handler error `internal` with a message of N bytes;
//! - anything else: the handler error `bad-request`.

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

use wasmux::plugin::types::Field;

struct BadResponse;

fn response(fields: Vec<(&str, String)>, content: Vec<u8>) -> Response {
    Response {
        content_type: "application/octet-stream".into(),
        content_encoding: "binary".into(),
        fields: fields.into_iter().map(|(name, value)| Field { name: name.into(), value }).collect(),
        content,
    }
}

fn number(text: &str) -> Result<usize, HandlerError> {
    text.trim().parse().map_err(|e| HandlerError::BadRequest(format!("{text:?} is not a size: {e}")))
}

impl Guest for BadResponse {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let command = String::from_utf8_lossy(&request.content).into_owned();
        if let Some(n) = command.strip_prefix("size ") {
            return Ok(response(vec![], vec![b'x'; number(n)?]));
        }
        if let Some(n) = command.strip_prefix("long-error ") {
            return Err(HandlerError::Internal("e".repeat(number(n)?)));
        }
        match command.as_str() {
            "reserved-field" => Ok(response(vec![("content-length", "5".into())], b"hello".to_vec())),
            "reserved-field-other-case" => Ok(response(
                vec![("Content-Length", "999".into()), ("Content-Type", "\"text/html\"".into()), ("note", "\"kept\"".into())],
                b"hello".to_vec(),
            )),
            "not-json-field" => Ok(response(vec![("user", "ann".into())], b"hello".to_vec())),
            "duplicate-field" => Ok(response(vec![("user", "1".into()), ("user", "2".into())], b"hello".to_vec())),
            "empty-content-type" => Ok(Response { content_type: String::new(), ..response(vec![], b"hello".to_vec()) }),
            "long-header" => Ok(response(vec![("padding", format!("\"{}\"", "p".repeat(70_000)))], b"hello".to_vec())),
            other => Err(HandlerError::BadRequest(format!("unknown command {other:?}"))),
        }
    }
}

export!(BadResponse);
