//! TEST FIXTURE — never serve it. Calls the `outcome` import once for each
//! whitespace-separated word of the request's content, as given (valid
//! names, invalid ones, repeats, too many), then answers `counted N`; with
//! the word `!fail` it answers an error instead, after counting. Tests use it
//! to check the bounds the host puts on outcomes.

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

use wasmux::plugin::host::outcome;

struct Outcomes;

impl Guest for Outcomes {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let text = String::from_utf8_lossy(&request.content).into_owned();
        let words: Vec<&str> = text.split_whitespace().filter(|w| *w != "!fail").collect();
        for word in &words {
            outcome(word);
        }
        if text.split_whitespace().any(|w| w == "!fail") {
            return Err(HandlerError::Internal("failing as asked".into()));
        }
        Ok(Response {
            content_type: "text/plain".into(),
            content_encoding: "utf-8".into(),
            fields: Vec::new(),
            content: format!("counted {}", words.len()).into_bytes(),
        })
    }
}

export!(Outcomes);
