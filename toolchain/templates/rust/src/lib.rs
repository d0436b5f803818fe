//! {{name}}: a wasmux plugin.

use wasmux_sdk::{Guest, HandlerError, Level, Request, Response, export, log};

struct Plugin;

impl Guest for Plugin {
    /// Answers every request with `Hello, ` + its content + `!`, as text.
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let name = request.text_lossy();
        log(Level::Info, &format!("greeting {name}"));
        Ok(Response::text(format!("Hello, {name}!")))
    }
}

export!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_hello() {
        let request = Request {
            content_type: "text/plain".into(),
            content_encoding: "utf-8".into(),
            byteorder: "little".into(),
            fields: Vec::new(),
            content: b"world".to_vec(),
        };
        let response = Plugin::handle(request).expect("an answer");
        assert_eq!(response.content_type, "text/plain");
        assert_eq!(response.content_encoding, "utf-8");
        assert_eq!(response.content, b"Hello, world!");
    }
}
