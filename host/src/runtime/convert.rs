//! Between a [`Message`] and the WIT records: the request handed to a
//! plugin, and the check of the response it hands back before it may go on
//! the wire.

use serde_json::{Map, Value};

use wasmux_bindings::{Field, Request, Response};
use crate::message::{Header, Message, NATIVE_BYTEORDER, REQUIRED_FIELDS};

/// The request as the plugin receives it: every extra header field, its
/// value as JSON text. (Fields the host consumes, such as a credential, are
/// taken out before a request reaches the runtime.)
pub(super) fn to_request(message: &Message) -> Request {
    let h = &message.header;
    Request {
        content_type: h.content_type.clone(),
        content_encoding: h.content_encoding.clone(),
        byteorder: h.byteorder.clone(),
        fields: h.extra.iter().map(|(name, value)| Field { name: name.clone(), value: value.to_string() }).collect(),
        content: message.content.to_vec(),
    }
}

/// Checks a plugin's response and turns it into a message.
pub(super) fn into_message(response: Response, max_content: usize) -> Result<Message, String> {
    if response.content.len() > max_content {
        return Err(format!("its content is {} bytes, over the limit of {max_content}", response.content.len()));
    }
    if response.content_type.is_empty() {
        return Err("its content-type is empty".into());
    }
    let mut extra = Map::new();
    for Field { name, value } in response.fields {
        if REQUIRED_FIELDS.contains(&name.as_str()) {
            return Err(format!("it sets the header field \"{name}\", which the host sets"));
        }
        let value: Value =
            serde_json::from_str(&value).map_err(|e| format!("header field \"{name}\" is not JSON text: {e}"))?;
        if extra.insert(name.clone(), value).is_some() {
            return Err(format!("it sets the header field \"{name}\" twice"));
        }
    }
    let message = Message {
        header: Header {
            byteorder: NATIVE_BYTEORDER.to_owned(),
            content_type: response.content_type,
            content_encoding: response.content_encoding,
            extra,
        },
        content: response.content.into(),
    };
    message.header.check_fits().map_err(|e| e.to_string())?;
    Ok(message)
}
