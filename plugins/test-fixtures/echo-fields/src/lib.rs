//! TEST FIXTURE — never serve it. Answers with the request exactly as the
//! plugin received it through the WIT interface, as JSON:
//! `{"content-type": …, "content-encoding": …, "byteorder": …,
//!   "fields": [[name, value-json-text], …], "content-length": N}`,
//! so tests can check what the host passes to plugins (and what it keeps
//! from them, such as credentials).

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

struct EchoFields;

/// A JSON string literal (the fixture avoids pulling in a JSON crate).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Guest for EchoFields {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let fields: Vec<String> =
            request.fields.iter().map(|f| format!("[{}, {}]", quoted(&f.name), quoted(&f.value))).collect();
        let body = format!(
            "{{\"content-type\": {}, \"content-encoding\": {}, \"byteorder\": {}, \"fields\": [{}], \"content-length\": {}}}",
            quoted(&request.content_type),
            quoted(&request.content_encoding),
            quoted(&request.byteorder),
            fields.join(", "),
            request.content.len()
        );
        Ok(Response {
            content_type: "text/json".into(),
            content_encoding: "utf-8".into(),
            fields: vec![wasmux::plugin::types::Field { name: "x-echoed-by".into(), value: "\"echo-fields\"".into() }],
            content: body.into_bytes(),
        })
    }
}

export!(EchoFields);
